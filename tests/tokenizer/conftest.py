"""Fixtures of the tokenizer tests (helpers live in tests/helpers/tokenizer.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata
import pytest
from helpers.tokenizer import read_shipped

from mindformer_gf.resources import example_cells_path

warnings.filterwarnings("ignore", category=FutureWarning, module="anndata")


@pytest.fixture(scope="session")
def v1_tokens() -> dict[str, int]:
    return read_shipped("token_dictionary.json.gz")


@pytest.fixture(scope="session")
def v1_medians() -> dict[str, float]:
    return read_shipped("gene_median_dictionary.json.gz")


@pytest.fixture(scope="session")
def v1_names() -> dict[str, str]:
    return read_shipped("gene_name_id_dict.json.gz")


@pytest.fixture(scope="session")
def chr21_path() -> Path:
    return example_cells_path("pbmc_chr21")


@pytest.fixture(scope="session")
def chr21(chr21_path: Path) -> anndata.AnnData:
    return anndata.read_h5ad(chr21_path)
