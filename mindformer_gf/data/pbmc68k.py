"""The shipped PBMC cells (scanpy's pbmc68k_reduced: 700 cells of 10 annotated types) as inputs: a count matrix the
tokenizer reads, the tokenized dataset, and the expression profiles a baseline model takes. Used by the demo
(`mindformer_gf.tasks.pbmc_demo`), the tests and the benchmarks.

`.raw.X` holds log1p of per-cell normalised counts by gene symbol, so expm1 recovers values proportional to counts
(ranking within a cell is what the tokenizer uses, and a per-cell scale does not change it); symbols map to Ensembl
IDs through the shipped V1 gene name dictionary.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from mindformer_gf.io import atomic_file
from mindformer_gf.resources import example_cells_path
from mindformer_gf.tokenizer import TokenizerWarning, tokenize

CELL_TYPE = "cell_type"


def counts_h5ad(source: Path, target: Path) -> Path:
    """Write `source`'s expm1(.raw.X) (proportional to counts) with gene symbols as the var index and the cell
    annotations as obs columns: an input the tokenizer reads like any count matrix."""
    adata = anndata.read_h5ad(source)
    if adata.raw is None:
        raise ValueError(f"{source} has no .raw: expected scanpy's pbmc68k_reduced layout")
    matrix = sp.csr_matrix(adata.raw.X, dtype=np.float32)
    matrix.data = np.expm1(matrix.data)
    obs = pd.DataFrame(
        {
            "barcode": np.asarray(adata.obs_names, dtype=str),
            CELL_TYPE: adata.obs["bulk_labels"].astype(str).to_numpy(),
            "louvain": adata.obs["louvain"].astype(str).to_numpy(),
            "phase": adata.obs["phase"].astype(str).to_numpy(),
            "percent_mito": adata.obs["percent_mito"].astype(np.float64).to_numpy(),
            "n_genes": adata.obs["n_genes"].astype(np.int64).to_numpy(),
            "n_counts": np.asarray(matrix.sum(axis=1)).ravel(),
        },
        index=adata.obs_names,
    )
    counts = anndata.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=adata.raw.var_names.astype(str)))
    with atomic_file(target) as tmp:
        counts.write_h5ad(tmp)
    return target


def tokenize_pbmc68k(
    output_dir: str | os.PathLike,
    prefix: str,
    attributes: dict[str, str] | None = None,
    progress: bool = False,
    genes_per_cell: int | None = None,
) -> Any:
    """The shipped pbmc68k_reduced cells (700) tokenized with the V1 dictionaries: the `TokenizeResult` of
    `output_dir/prefix.dataset`, read from the counts file `output_dir/prefix_counts.h5ad` (see `counts_h5ad`) it
    writes first; `attributes` ({column of counts_h5ad: dataset column}) carries cell annotations over;
    `genes_per_cell` keeps only each cell's top-ranked genes (default: the tokenizer's V1 limit, 2,048)."""
    output_dir = Path(output_dir)
    counts = counts_h5ad(example_cells_path("pbmc68k_reduced"), output_dir / f"{prefix}_counts.h5ad")
    with warnings.catch_warnings():
        # expm1(raw.X) is normalised, so not integer: expected here, and ranking is all the tokenizer needs
        warnings.filterwarnings("ignore", message=".*non-integer values.*", category=TokenizerWarning)
        return tokenize(
            counts,
            output_dir,
            prefix,
            overwrite=True,
            gene_id="symbol",
            custom_attr_name_dict=attributes,
            progress=progress,
            **({} if genes_per_cell is None else {"model_input_size": genes_per_cell}),
        )


def expression_profile(source: Path, barcodes: np.ndarray) -> np.ndarray:
    """log1p of normalised counts (the file's .raw.X) of the cells `barcodes`, in that order."""
    adata = anndata.read_h5ad(source)
    position = {b: i for i, b in enumerate(np.asarray(adata.obs_names, dtype=str))}
    matrix = adata.raw.X
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    return matrix[[position[b] for b in barcodes]].astype(np.float64)
