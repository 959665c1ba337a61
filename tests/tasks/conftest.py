"""Fixtures of the task tests: the shipped PBMC cells (real, 10 annotated types) tokenized to their top 64 genes,
and a tiny randomly initialised Geneformer (2 layers, hidden 32) saved as a model directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.tasks import tiny_config as tiny_config_of
from helpers.tasks import tiny_pretrained_model, tokenized_pbmc

TOKENS_PER_CELL = 64


@pytest.fixture(scope="session")
def pbmc_dataset_dir(tmp_path_factory) -> Path:
    return tokenized_pbmc(tmp_path_factory.mktemp("pbmc"), TOKENS_PER_CELL)


@pytest.fixture(scope="session")
def pbmc_dataset(pbmc_dataset_dir):
    from datasets import load_from_disk

    return load_from_disk(str(pbmc_dataset_dir))


@pytest.fixture(scope="session")
def tiny_config():
    return tiny_config_of(TOKENS_PER_CELL)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_config) -> Path:
    """A pretrained-format (masked-LM) model directory with random weights, as transformers' save_pretrained
    lays it out (config.json + model.safetensors)."""
    return tiny_pretrained_model(tmp_path_factory.mktemp("models") / "tiny_pretrained", tiny_config)


@pytest.fixture(scope="session")
def tiny_weights(tiny_model_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(tiny_model_dir / "model.safetensors"))
