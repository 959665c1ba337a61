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


def tokenize_pbmc68k(directory):
    """The shipped pbmc68k_reduced cells (700) tokenized by `mindformer_gf.tokenizer` with the V1 dictionaries;
    returns the dataset directory.

    `.raw.X` holds log1p of per-cell normalised counts by gene symbol: expm1 gives values proportional to counts,
    which is all rank value encoding needs (a per-cell scale does not change the ranks).
    """
    import warnings
    from pathlib import Path

    import anndata
    import pandas as pd
    import scipy.sparse as sp

    from mindformer_gf.resources import RESOURCES_DIR
    from mindformer_gf.tokenizer import TokenizerWarning, tokenize

    directory = Path(directory)
    raw = anndata.read_h5ad(RESOURCES_DIR / "pbmc68k_reduced.h5ad").raw
    counts = sp.csr_matrix(raw.X, dtype=np.float32)
    counts.data = np.expm1(counts.data)
    obs = pd.DataFrame({"n_counts": np.asarray(counts.sum(axis=1)).ravel()}, index=raw.obs_names.astype(str))
    directory.parent.mkdir(parents=True, exist_ok=True)
    source = directory.parent / f"{directory.stem}_counts.h5ad"
    anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=raw.var_names.astype(str))).write_h5ad(source)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-integer.*", category=TokenizerWarning)
        result = tokenize(source, directory.parent, directory.stem, gene_id="symbol", overwrite=True, progress=False)
    return result.path


def compact_vocabulary(source, target):
    """Renumber the genes that occur in `source` as 2..n+1 (keeping <pad>=0, <mask>=1): the same cells and ranks
    with an output layer of n+2 tokens instead of 25,426, so a test model trains in seconds."""
    from datasets import Dataset, load_from_disk

    dataset = load_from_disk(str(source))
    cells = [np.asarray(c) for c in dataset["input_ids"]]
    genes = np.unique(np.concatenate(cells))
    renumber = np.zeros(genes.max() + 1, np.int64)
    renumber[genes] = np.arange(2, genes.size + 2)
    Dataset.from_dict(
        {"input_ids": [renumber[c].tolist() for c in cells], "length": [c.size for c in cells]}
    ).save_to_disk(str(target))
    return target, int(genes.size + 2)
