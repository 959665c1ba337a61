"""Helpers of the tokenizer tests: an independent oracle, file writers, the shipped dictionaries read plainly."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from mindformer_gf.resources import GENEFORMER_V1_DIR


def read_shipped(name: str) -> dict:
    """A shipped dictionary read with gzip + json only, independently of the package's reader."""
    with gzip.open(GENEFORMER_V1_DIR / name, "rt", encoding="utf-8") as handle:
        return json.load(handle)["entries"]


def oracle_cell(
    counts: dict[str, float], n_count: float, tokens: dict[str, int], medians: dict[str, float], limit: int
) -> list[int]:
    """The rank value encoding of one cell, written plainly: {Ensembl ID: count} -> token list.

    Value = count / n_count * 10000 / median; descending; equal values by token id ascending.
    """
    ranked = []
    for gene, count in counts.items():
        if gene in tokens and gene in medians and count != 0:
            ranked.append((-(float(count) / float(n_count) * 10000.0 / medians[gene]), tokens[gene]))
    ranked.sort()
    return [token for _, token in ranked[:limit]]


def cell_counts(matrix: sp.csr_matrix, row: int, gene_ids: list[str]) -> dict[str, float]:
    """{gene id: count} of one row; genes appearing twice are summed."""
    start, stop = matrix.indptr[row], matrix.indptr[row + 1]
    result: dict[str, float] = {}
    for column, value in zip(matrix.indices[start:stop], matrix.data[start:stop], strict=True):
        gene = gene_ids[column]
        result[gene] = result.get(gene, 0.0) + float(value)
    return result


def write_h5ad(path: Path, matrix, gene_ids, obs: dict | None = None, var_column: str = "ensembl_id") -> Path:
    matrix = sp.csr_matrix(matrix)
    obs_frame = pd.DataFrame(obs or {}, index=[f"c{i}" for i in range(matrix.shape[0])])
    var = pd.DataFrame({var_column: list(gene_ids)}, index=[f"g{i}" for i in range(matrix.shape[1])])
    anndata.AnnData(X=matrix, obs=obs_frame, var=var).write_h5ad(path)
    return path


def write_v2_dictionaries(directory: Path, genes: list[str], medians: np.ndarray, mapping: dict[str, str]) -> dict:
    """Pickles in the V2 layout: <pad>=0, <mask>=1, <cls>=2, <eos>=3, genes from 4, numpy scalar values."""
    directory.mkdir(parents=True, exist_ok=True)
    token = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    token.update({gene: np.int64(4 + i) for i, gene in enumerate(genes)})
    median = {gene: np.float64(m) for gene, m in zip(genes, medians, strict=True)}
    files = {
        "token_dictionary_file": directory / "token_dictionary_gc104M.pkl",
        "gene_median_file": directory / "gene_median_dictionary_gc104M.pkl",
        "gene_mapping_file": directory / "ensembl_mapping_dict_gc104M.pkl",
    }
    for key, content in zip(files, (token, median, mapping), strict=True):
        with open(files[key], "wb") as handle:
            pickle.dump(content, handle)
    return files
