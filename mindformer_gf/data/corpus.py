"""A tokenized corpus (Hugging Face `datasets`, as `gf tokenize` writes it): lengths, rows, special tokens."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.tokenizer.writer import check_dataset_matches_vocab, read_dictionary_metadata, save_dataset

# Geneformer's dictionaries put <pad> at 0 and <mask> at 1 (V1 and V2); used only when a dataset does not say.
DEFAULT_SPECIAL_TOKENS = {"<pad>": 0, "<mask>": 1}


def load_corpus(dataset_or_dir: Any, vocab_size: int | None = None) -> Any:
    """The `datasets.Dataset` at `dataset_or_dir` (or the dataset itself), checked against the model's vocabulary."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if isinstance(dataset_or_dir, (str, os.PathLike)):
        path = Path(dataset_or_dir)
        if not path.exists():
            raise FileNotFoundError(f"no tokenized dataset at {path}; make one with `gf tokenize`")
        dataset = load_from_disk(str(path))
    else:
        dataset = dataset_or_dir
    if isinstance(dataset, DatasetDict):
        raise ValueError(f"{dataset_or_dir} holds several splits {list(dataset)}: pass the directory of one split")
    if not isinstance(dataset, Dataset) or "input_ids" not in dataset.column_names:
        raise ValueError(f"{dataset_or_dir} is not a tokenized dataset: it needs an `input_ids` column")
    if vocab_size is not None:
        check_dataset_matches_vocab(dataset, vocab_size)
    return dataset


def corpus_lengths(dataset: Any) -> np.ndarray:
    """Tokens per cell: the `length` column when present, else counted from `input_ids`."""
    if "length" in dataset.column_names:
        return np.asarray(dataset.with_format("numpy")["length"], dtype=np.int64)
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    return np.asarray(pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False), np.int64)


def read_cells(dataset: Any, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """The token arrays of rows `indices`, in that order (one Arrow take, no per-row Python objects)."""
    indices = [int(i) for i in indices]
    if not indices:
        return []
    column = dataset.with_format("arrow")[indices].column("input_ids").combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(indices))]


def corpus_special_tokens(dataset: Any) -> dict[str, int]:
    """The special tokens of the dictionary that tokenized `dataset` ({"<pad>": 0, "<mask>": 1, ...}).

    Read from the tokenizer's record; a dataset without one (e.g. made by the reference package) gets Geneformer's
    `<pad>`=0 and `<mask>`=1 with a warning, since <cls>/<eos> cannot then be known.
    """
    record = read_dictionary_metadata(dataset)
    if record and record.get("dictionary", {}).get("special_tokens"):
        return {str(k): int(v) for k, v in record["dictionary"]["special_tokens"].items()}
    warnings.warn(
        "the dataset does not record its dictionary's special tokens; assuming Geneformer's <pad>=0 and <mask>=1 "
        "(pass special_tokens explicitly if it also has <cls>/<eos>)",
        stacklevel=2,
    )
    return dict(DEFAULT_SPECIAL_TOKENS)


def compact_vocabulary(source: str | os.PathLike, target: str | os.PathLike) -> tuple[Path, int]:
    """Renumber the genes that occur in the dataset at `source` as 2..n+1 (keeping <pad>=0, <mask>=1) and save it
    at `target`; returns (target, n + 2). The same cells and ranks with an output layer of n + 2 tokens instead of
    the dictionary's ~25,000: a small model on a small corpus trains in seconds."""
    from datasets import Dataset, load_from_disk

    dataset = load_from_disk(str(source))
    cells = [np.asarray(c) for c in dataset["input_ids"]]
    genes = np.unique(np.concatenate(cells))
    renumber = np.zeros(genes.max() + 1, np.int64)
    renumber[genes] = np.arange(2, genes.size + 2)
    compact = Dataset.from_dict({"input_ids": [renumber[c].tolist() for c in cells], "length": [c.size for c in cells]})
    save_dataset(compact, target, overwrite=True)
    return Path(target), int(genes.size + 2)
