"""Fixtures of the task tests: the shipped PBMC cells (real, 10 annotated types) tokenized to their top 64 genes,
and a tiny randomly initialised Geneformer (2 layers, hidden 32) saved as a model directory."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

TOKENS_PER_CELL = 64


@pytest.fixture(scope="session")
def pbmc_dataset_dir(tmp_path_factory) -> Path:
    from mindformer_gf.data.pbmc68k import counts_h5ad
    from mindformer_gf.resources import example_cells_path
    from mindformer_gf.tokenizer import tokenize

    root = tmp_path_factory.mktemp("pbmc")
    counts = counts_h5ad(example_cells_path("pbmc68k_reduced"), root / "pbmc_counts.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # expm1 of normalised values is not integer: expected
        result = tokenize(
            counts,
            root,
            "pbmc",
            gene_id="symbol",
            model_input_size=TOKENS_PER_CELL,
            custom_attr_name_dict={
                "barcode": "barcode",
                "cell_type": "cell_type",
                "louvain": "louvain",
                "phase": "phase",
                "percent_mito": "percent_mito",
            },
            progress=False,
        )
    return result.path


@pytest.fixture(scope="session")
def pbmc_dataset(pbmc_dataset_dir):
    from datasets import load_from_disk

    return load_from_disk(str(pbmc_dataset_dir))


@pytest.fixture(scope="session")
def tiny_config():
    from mindformer_gf.config import GeneformerConfig

    return GeneformerConfig.from_preset(
        "Geneformer-V1-10M",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=TOKENS_PER_CELL,
        architectures=["BertForMaskedLM"],
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_config) -> Path:
    """A pretrained-format (masked-LM) model directory with random weights, as transformers' save_pretrained
    lays it out (config.json + model.safetensors)."""
    from mindformer_gf.model import build_model
    from mindformer_gf.train.checkpoint import save_model_dir

    model = build_model(tiny_config, "BertForMaskedLM", seed=7)
    return save_model_dir(model, tmp_path_factory.mktemp("models") / "tiny_pretrained")


@pytest.fixture(scope="session")
def tiny_weights(tiny_model_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(tiny_model_dir / "model.safetensors"))
