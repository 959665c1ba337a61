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
