"""Tiny models and corpora shared by the training tests (seconds, not minutes)."""

from __future__ import annotations

import numpy as np

TINY_MODEL = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
SPECIAL_TOKENS = {"<pad>": 0, "<mask>": 1}


def write_corpus(directory, num_cells: int, min_length: int, max_length: int, vocab_size: int, seed: int = 0):
    """A tokenized-dataset directory of random cells (genes drawn from a skewed distribution, so there is
    something to learn) with `input_ids` and `length` columns, as `gf tokenize` writes them."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    genes = np.arange(2, vocab_size)
    weights = 1.0 / np.arange(1, genes.size + 1)
    weights /= weights.sum()
    lengths = rng.integers(min_length, max_length + 1, size=num_cells)
    cells = [rng.choice(genes, size=min(int(n), genes.size), replace=False, p=weights).tolist() for n in lengths]
    Dataset.from_dict({"input_ids": cells, "length": [len(c) for c in cells]}).save_to_disk(str(directory))
    return directory
