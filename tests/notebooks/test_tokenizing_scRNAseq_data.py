"""The reference's examples/tokenizing_scRNAseq_data.ipynb, with only the import changed: the notebook's calls and
keywords on .loom files of the shipped PBMC cells (Ensembl IDs from the shipped name dictionary, an "organ_major"
column added), checked cell by cell against a rank value encoding written out by hand (helpers.tokenizer.oracle_cell).

The notebook's tokenizer is the reference's default V2 (packaged dictionaries); ours are not shipped, so the test
passes V2-layout dictionaries built from the shipped V1 genes and medians as files (the paths are the test's)."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
from datasets import load_from_disk
from helpers.tokenizer import oracle_cell, read_shipped, write_v2_dictionaries

from mindformer_gf import TranscriptomeTokenizer  # the notebook: from geneformer import TranscriptomeTokenizer
from mindformer_gf.data.pbmc68k import counts_h5ad
from mindformer_gf.resources import example_cells_path

N_CELLS = 40


@pytest.fixture(scope="module")
def loom_data_directory(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two .loom files (cells 0..19 and 20..39 of the shipped PBMC cells), genes as Ensembl IDs in 'ensembl_id'."""
    import loompy

    root = tmp_path_factory.mktemp("tokenizing_notebook")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = anndata.read_h5ad(counts_h5ad(example_cells_path("pbmc68k_reduced"), root / "counts.h5ad"))
    names = read_shipped("gene_name_id_dict.json.gz")
    keep = [i for i, symbol in enumerate(adata.var_names) if symbol in names]
    ensembl = [names[adata.var_names[i]] for i in keep]
    matrix = sp.csr_matrix(adata.X[:N_CELLS][:, keep], dtype=np.float32)
    matrix.data = np.round(matrix.data)  # raw-count-like integers, as the notebook's input
    n_counts = np.asarray(matrix.sum(axis=1)).ravel() + 100.0  # genes outside the file count too
    directory = root / "loom_data_directory"
    directory.mkdir()
    cell_type = adata.obs["cell_type"].astype(str).to_numpy()[:N_CELLS]
    for part, rows in enumerate((np.arange(0, 20), np.arange(20, N_CELLS))):
        loompy.create(
            str(directory / f"pbmc_part{part}.loom"),
            matrix[rows].T.tocsr(),
            {"ensembl_id": np.asarray(ensembl)},
            {
                "cell_type": cell_type[rows],
                "organ_major": np.asarray(["blood"] * rows.size),
                "n_counts": n_counts[rows],
            },
        )
    v1_tokens = read_shipped("token_dictionary.json.gz")
    v1_medians = read_shipped("gene_median_dictionary.json.gz")
    genes = [g for g in v1_tokens if g.startswith("ENSG")]
    medians = np.asarray([v1_medians[g] for g in genes])
    files = write_v2_dictionaries(root / "v2", genes, medians, {g: g for g in genes})
    truth = {
        "matrix": matrix,
        "ensembl": ensembl,
        "n_counts": n_counts,
        "cell_type": cell_type,
        "tokens": {g: 4 + i for i, g in enumerate(genes)},
        "medians": dict(zip(genes, medians, strict=True)),
    }
    return directory, {"files": files, "truth": truth}


def test_notebook_tokenizes_the_loom_directory(loom_data_directory, tmp_path: Path) -> None:
    data_directory, given = loom_data_directory
    output_directory = tmp_path / "output_directory"
    # notebook: TranscriptomeTokenizer({"cell_type": "cell_type", "organ_major": "organ"}, nproc=16)
    tk = TranscriptomeTokenizer(
        {"cell_type": "cell_type", "organ_major": "organ"}, nproc=16, progress=False, **given["files"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loom files hold a subset of the genes: expected notes
        tk.tokenize_data(str(data_directory), str(output_directory), "output_prefix", file_format="loom")

    dataset = load_from_disk(str(output_directory / "output_prefix.dataset"))
    assert {"input_ids", "length", "cell_type", "organ"} <= set(dataset.column_names)
    truth = given["truth"]
    assert len(dataset) == N_CELLS  # both files, in name order, every cell expresses dictionary genes
    for row in range(N_CELLS):
        start, stop = truth["matrix"].indptr[row], truth["matrix"].indptr[row + 1]
        counts = {}
        for column, value in zip(truth["matrix"].indices[start:stop], truth["matrix"].data[start:stop], strict=True):
            counts[truth["ensembl"][column]] = counts.get(truth["ensembl"][column], 0.0) + float(value)
        genes = oracle_cell(counts, truth["n_counts"][row], truth["tokens"], truth["medians"], 4094)
        assert dataset[row]["input_ids"] == [2, *genes, 3]  # <cls> genes <eos>, the V2 layout
        assert dataset[row]["length"] == len(genes) + 2
    assert dataset["cell_type"] == list(truth["cell_type"])
    assert set(dataset["organ"]) == {"blood"}
