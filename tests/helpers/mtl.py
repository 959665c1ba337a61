"""The reference MTLClassifier's three datasets from the shipped PBMC cells, and the numpy oracle of a saved multitask
model's class probabilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# the three most common cell types, and the two phases every one of them has enough cells of
CELL_TYPES = ("Dendritic", "CD14+ Monocyte", "CD19+ B")
PHASES = ("G1", "S")


def write_mtl_datasets(
    pbmc_dataset: Any, root: Path, per_stratum: tuple[int, int, int] = (12, 4, 4)
) -> dict[str, Path]:
    """train/val/test `.dataset` directories under `root` with a "unique_cell_id" column (the barcode): from each
    cell type x phase stratum, the first cells go to train, the next to val, the next to test, so that every class
    of both tasks ("cell_type", "phase") is in each split."""
    cell_types = np.asarray(pbmc_dataset["cell_type"])
    phases = np.asarray(pbmc_dataset["phase"])
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for cell_type in CELL_TYPES:
        for phase in PHASES:
            rows = np.flatnonzero((cell_types == cell_type) & (phases == phase))
            start = 0
            for name, count in zip(parts, per_stratum, strict=True):
                chosen = rows[start : start + count]
                assert chosen.size == count, (cell_type, phase, rows.size)
                parts[name] += chosen.tolist()
                start += count
    dataset = pbmc_dataset.add_column("unique_cell_id", list(pbmc_dataset["barcode"]))
    paths = {}
    for name, rows in parts.items():
        paths[name] = root / f"{name}.dataset"
        dataset.select(sorted(rows)).save_to_disk(str(paths[name]))
    return paths


def saved_model_probabilities(model_dir: Path, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Per task, the class probabilities a saved MTLClassifier model gives, in float64 numpy from its files: the
    reference BERT forward (mindformer_gf.reference.bert), pooling (position 0, or softmax over the real positions
    of w . h + b then the weighted sum), one linear head per task, softmax."""
    from safetensors.numpy import load_file

    from mindformer_gf.config import GeneformerConfig
    from mindformer_gf.reference import bert as reference_bert

    config = GeneformerConfig.from_pretrained(model_dir)
    task = json.loads((model_dir / "task.json").read_text())
    encoder_file = next(model_dir.glob("*model.safetensors"))
    weights = {k.removeprefix("bert."): v for k, v in load_file(str(encoder_file)).items()}
    extras = {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "task_extras.safetensors")).items()}
    hidden, _ = reference_bert.forward(weights, ids, mask, config, "BertModel")
    if task["pooling"] == "attention":
        scores = hidden @ extras["attention_pool.score.weight"][0] + extras["attention_pool.score.bias"][0]
        scores = np.where(mask > 0, scores, -np.inf)
        attention = np.exp(scores - scores.max(1, keepdims=True))
        attention /= attention.sum(1, keepdims=True)
        pooled = (attention[:, :, None] * hidden).sum(1)
    else:
        pooled = hidden[:, 0]
    probabilities = []
    for t in range(len(task["tasks"])):
        logits = pooled @ extras[f"heads.{t}.weight"].T + extras[f"heads.{t}.bias"]
        exp = np.exp(logits - logits.max(1, keepdims=True))
        probabilities.append(exp / exp.sum(1, keepdims=True))
    return probabilities


def parse_probabilities(column: Any) -> np.ndarray:
    """A "p0,p1,..." column of the reference's prediction files as an array [cells, classes]."""
    return np.asarray([[float(p) for p in text.split(",")] for text in column])


def tokenized_pbmc(root: Path, tokens_per_cell: int = 64) -> Any:
    """The shipped PBMC cells tokenized to their top genes with barcode, cell type and phase (as the task tests'
    fixture), opened."""
    import warnings

    from datasets import load_from_disk

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
            custom_attr_name_dict={"barcode": "barcode", "cell_type": "cell_type", "phase": "phase"},
            progress=False,
        )
    return load_from_disk(str(result.path))


def tiny_pretrained_model(directory: Path, max_length: int = 64) -> Path:
    """A pretrained-format (masked-LM) Geneformer with random weights, 2 layers of hidden size 32."""
    from mindformer_gf.config import GeneformerConfig
    from mindformer_gf.model import build_model
    from mindformer_gf.train.checkpoint import save_model_dir

    config = GeneformerConfig.from_preset(
        "Geneformer-V1-10M",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_length,
        architectures=["BertForMaskedLM"],
    )
    return save_model_dir(build_model(config, "BertForMaskedLM", seed=7), directory)
