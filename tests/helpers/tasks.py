"""Pieces shared by the task tests: the settings of a quick run on the tiny model, dataset cells as one padded
batch for calling a saved model directly, and a V2-style dataset built from token lists."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mindformer_gf.tasks import FineTuneSettings


def quick_settings(**options: Any) -> FineTuneSettings:
    """A test run's settings: no warmup (the runs are a few dozen steps), one padded width (one graph compilation),
    every test cell in one forward batch, no progress bar; `options` set the rest."""
    return FineTuneSettings(warmup_steps=0, num_buckets=1, forward_batch_size=64, progress_bar=False, **options)


def padded_rows(dataset: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, attention mask) of the dataset rows `rows`, right-padded with 0 to the longest of them."""
    cells = dataset.select(rows)["input_ids"]
    width = max(len(c) for c in cells)
    ids = np.zeros((len(cells), width), np.int32)
    mask = np.zeros_like(ids)
    for i, cell in enumerate(cells):
        ids[i, : len(cell)], mask[i, : len(cell)] = cell, 1
    return ids, mask


V2_CLS, V2_EOS = 2, 3  # as V2 dictionaries number <cls> and <eos>


def v2_dataset(cells: list[list[int]], vocab_size: int) -> Any:
    """A tokenized dataset of `cells` (each <cls> genes <eos>) whose record names the V2 special tokens."""
    from datasets import Dataset, DatasetInfo

    record = {
        "format": "mindformer_gf.tokenized_dataset",
        "format_version": 1,
        "dictionary": {
            "vocab_size": vocab_size,
            "special_tokens": {"<pad>": 0, "<mask>": 1, "<cls>": V2_CLS, "<eos>": V2_EOS},
        },
    }
    columns = {"input_ids": cells, "length": [len(c) for c in cells]}
    return Dataset.from_dict(columns, info=DatasetInfo(description=json.dumps(record)))


def tokenized_pbmc(root: Any, tokens_per_cell: int = 64) -> Any:
    """The shipped PBMC cells (10 annotated types) tokenized to their top `tokens_per_cell` genes under `root`: the
    dataset directory."""
    import warnings

    from mindformer_gf.data.pbmc68k import counts_h5ad
    from mindformer_gf.resources import example_cells_path
    from mindformer_gf.tokenizer import tokenize

    counts = counts_h5ad(example_cells_path("pbmc68k_reduced"), root / "pbmc_counts.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # expm1 of normalised values is not integer: expected
        result = tokenize(
            counts,
            root,
            "pbmc",
            gene_id="symbol",
            model_input_size=tokens_per_cell,
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


def tiny_config(max_position_embeddings: int = 64) -> Any:
    """A tiny Geneformer config (2 layers, hidden 32) with the V1 vocabulary."""
    from mindformer_gf.config import GeneformerConfig

    return GeneformerConfig.from_preset(
        "Geneformer-V1-10M",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
        architectures=["BertForMaskedLM"],
    )


def tiny_pretrained_model(directory: Any, config: Any, seed: int = 7) -> Any:
    """A pretrained-format (masked-LM) model directory with random weights (config.json + model.safetensors)."""
    from mindformer_gf.model import build_model
    from mindformer_gf.train.checkpoint import save_model_dir

    return save_model_dir(build_model(config, "BertForMaskedLM", seed=seed), directory)
