"""Inputs of the notebook tests (tests/notebooks): the shipped PBMC cells tokenized with a "disease" column in the
notebooks' values (dcm / nf / hcm, assigned by row), a tiny random 3-class cell classifier, and the numpy reference's
mean-pooled cell embedding."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mindformer_gf import reference

CELL_TYPES = ["CD14+ Monocyte", "CD19+ B", "CD56+ NK"]  # stand-ins for the notebooks' Cardiomyocyte1..3
DISEASES = ["dcm", "nf", "hcm"]


def pbmc_disease_dataset(root: Path, genes_per_cell: int) -> Path:
    """`root/pbmc.dataset`: the 700 shipped cells, top `genes_per_cell` genes, columns cell_type and disease."""
    from datasets import load_from_disk

    from mindformer_gf.data.pbmc68k import tokenize_pbmc68k

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = tokenize_pbmc68k(root, "pbmc_plain", {"cell_type": "cell_type"}, genes_per_cell=genes_per_cell)
    dataset = load_from_disk(str(result.path))
    dataset = dataset.add_column("disease", [DISEASES[i % 3] for i in range(len(dataset))])
    target = root / "pbmc.dataset"
    dataset.save_to_disk(str(target))
    # the tokenizer's record (dictionary, special tokens) travels with the dataset's info
    return target


def tiny_classifier_dir(root: Path, max_positions: int, num_labels: int = 3) -> Path:
    """A randomly initialised 2-layer BertForSequenceClassification model directory (config + safetensors)."""
    from mindformer_gf.config import GeneformerConfig
    from mindformer_gf.model import build_model
    from mindformer_gf.train.checkpoint import save_model_dir

    config = GeneformerConfig.from_preset(
        "Geneformer-V1-10M",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        architectures=["BertForSequenceClassification"],
        id2label={i: f"LABEL_{i}" for i in range(num_labels)},
    )
    return save_model_dir(build_model(config, "BertForSequenceClassification", seed=11), root / "classifier")


def encoder_weights(model_dir: Path) -> tuple[dict[str, np.ndarray], object]:
    from safetensors.numpy import load_file

    from mindformer_gf.config import GeneformerConfig

    weights = load_file(str(model_dir / "model.safetensors"))
    config = GeneformerConfig.from_json_file(model_dir / "config.json")
    return {k[len("bert.") :]: v for k, v in weights.items() if k.startswith("bert.")}, config


def reference_cell_embedding(weights: dict, config: object, cell: list[int] | np.ndarray, layer: int) -> np.ndarray:
    """Hidden state `layer` (0 = embeddings output) of the numpy reference, mean over the cell's genes (float64)."""
    ids = np.asarray(cell, np.int64)[None]
    _, hidden = reference.forward(weights, ids, np.ones_like(ids), config, "BertModel")
    return hidden[layer][0].astype(np.float64).mean(axis=0)
