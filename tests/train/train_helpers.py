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
    """The shipped pbmc68k_reduced cells (700) rank-value encoded with the V1 dictionaries, as a dataset directory.

    A minimal stand-in for `gf tokenize` (Geneformer's recipe: normalised expression / gene median, genes ranked
    descending, V1 token ids): `.raw.X` holds log1p of per-cell normalised counts by gene symbol, so expm1 gives the
    normalised values (ranks do not depend on the per-cell total). Ties are broken by token id.
    """
    import gzip
    import json

    import anndata
    from datasets import Dataset

    from mindformer_gf.resources import GENEFORMER_V1_DIR, RESOURCES_DIR

    def entries(name):
        with gzip.open(GENEFORMER_V1_DIR / name, "rt", encoding="utf-8") as handle:
            return json.load(handle)["entries"]

    tokens, medians, symbols = (
        entries("token_dictionary.json.gz"),
        entries("gene_median_dictionary.json.gz"),
        entries("gene_name_id_dict.json.gz"),
    )
    raw = anndata.read_h5ad(RESOURCES_DIR / "pbmc68k_reduced.h5ad").raw
    ensembl = [symbols.get(symbol) for symbol in raw.var_names]
    keep = np.array([e is not None and e in tokens and e in medians for e in ensembl])
    gene_tokens = np.array([tokens[e] for e, k in zip(ensembl, keep, strict=True) if k])
    gene_medians = np.array([medians[e] for e, k in zip(ensembl, keep, strict=True) if k])
    values = np.expm1(raw.X[:, keep].toarray()) / gene_medians
    cells = []
    for row in values:
        genes = np.flatnonzero(row > 0)
        order = np.lexsort((gene_tokens[genes], -row[genes]))
        cells.append(gene_tokens[genes][order].tolist())
    Dataset.from_dict({"input_ids": cells, "length": [len(c) for c in cells]}).save_to_disk(str(directory))
    return directory


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
