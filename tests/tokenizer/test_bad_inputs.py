"""Every malformed input gets its own clear error or warning, and never a silently wrong dataset."""

from __future__ import annotations

import argparse
import shutil
import warnings
from pathlib import Path

import anndata
import loompy
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from datasets import load_from_disk
from helpers.tokenizer import cell_counts, oracle_cell, write_h5ad

from mindformer_gf.cli.tokenize import add_tokenize_arguments, run_tokenize
from mindformer_gf.tokenizer import TokenizerInputError, TokenizerWarning, read_dictionary_metadata, tokenize

SYMBOLS = ["CD3E", "MS4A1", "LYZ", "GNLY", "NKG7", "CD14", "FCGR3A", "PPBP"]


@pytest.fixture(scope="module")
def genes(v1_tokens) -> list[str]:
    return [g for g in v1_tokens if g.startswith("ENSG")][100:140]


def counts_matrix(n_cells: int = 5, n_genes: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n_cells, n_genes)) < 0.5) * rng.integers(1, 9, (n_cells, n_genes)).astype(np.float32)


def input_ids(result) -> list[list[int]]:
    return load_from_disk(str(result.path))["input_ids"]


def quiet_tokenize(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenizerWarning)
        return tokenize(*args, progress=False, **kwargs)


def test_missing_gene_column_names_the_columns_found(tmp_path: Path, genes) -> None:
    path = write_h5ad(tmp_path / "x.h5ad", counts_matrix(), genes, {"n_counts": [1000] * 5}, var_column="gene_ids")
    with pytest.raises(
        TokenizerInputError, match=r"no gene attribute 'ensembl_id'; var columns found: \['gene_ids'\]"
    ) as e:
        tokenize(path, tmp_path, "out", progress=False)
    assert "gene_id_attr='gene_ids'" in str(e.value)
    assert len(input_ids(tokenize(path, tmp_path, "out", gene_id_attr="gene_ids", progress=False))) == 5


def test_missing_n_counts_is_computed_with_a_warning(tmp_path: Path, genes, v1_tokens, v1_medians) -> None:
    counts = counts_matrix()
    path = write_h5ad(tmp_path / "x.h5ad", counts, genes)
    with pytest.warns(TokenizerWarning, match="no cell attribute 'n_counts'.*must be the total over ALL genes"):
        result = tokenize(path, tmp_path, "out", progress=False)
    matrix = sp.csr_matrix(counts)
    expected = [
        oracle_cell(cell_counts(matrix, r, genes), counts[r].sum(), v1_tokens, v1_medians, 2048) for r in range(5)
    ]
    assert input_ids(result) == expected
    assert read_dictionary_metadata(result.path)["inputs"][0]["n_counts_computed"] is True


def test_gene_symbols_in_the_ensembl_column(tmp_path: Path, genes) -> None:
    path = write_h5ad(tmp_path / "x.h5ad", counts_matrix(n_genes=8), SYMBOLS, {"n_counts": [1000] * 5})
    with pytest.raises(
        TokenizerInputError, match=r"none of the 8 genes matched.*8 other names, e\.g\. gene symbols"
    ) as e:
        tokenize(path, tmp_path, "out", progress=False)
    assert "--gene-id symbol" in str(e.value)
    mixed = write_h5ad(tmp_path / "mixed.h5ad", counts_matrix(n_genes=48), genes + SYMBOLS, {"n_counts": [1000] * 5})
    with pytest.warns(TokenizerWarning, match=r"40 of 48 genes matched .* 8 other names"):
        tokenize(mixed, tmp_path, "mixed", progress=False)


def test_mouse_ids(tmp_path: Path) -> None:
    mouse = [f"ENSMUSG{i:011d}" for i in range(1, 9)]
    path = write_h5ad(tmp_path / "x.h5ad", counts_matrix(n_genes=8), mouse, {"n_counts": [1000] * 5})
    with pytest.raises(TokenizerInputError, match=r"8 mouse Ensembl IDs \(ENSMUSG\).*human orthologs"):
        tokenize(path, tmp_path, "out", progress=False)


def test_no_gene_in_the_dictionary(tmp_path: Path) -> None:
    unknown = [f"ENSG9{i:010d}" for i in range(3)]
    path = write_h5ad(tmp_path / "x.h5ad", counts_matrix(n_genes=3), unknown, {"n_counts": [1000] * 5})
    with pytest.raises(TokenizerInputError, match=r"none of the 3 genes matched .*\(V1 or V2\)"):
        tokenize(path, tmp_path, "out", progress=False)


def test_symbols_mode_warns_when_few_symbols_are_known(tmp_path: Path, genes) -> None:
    path = write_h5ad(tmp_path / "x.h5ad", counts_matrix(), genes, {"n_counts": [1000] * 5})
    # var index of write_h5ad is g0, g1, ...: not symbols
    with pytest.raises(TokenizerInputError, match="none of the 40 genes matched"):
        with pytest.warns(TokenizerWarning, match="only 0 of 40 gene symbols"):
            tokenize(path, tmp_path, "out", gene_id="symbol", progress=False)
    with pytest.warns(TokenizerWarning, match="only 0 of 40 gene symbols.*Most look like Ensembl IDs"):
        with pytest.raises(TokenizerInputError):
            tokenize(path, tmp_path, "out", gene_id="symbol", gene_id_attr="ensembl_id", progress=False)


def test_negative_and_non_integer_values_warn(tmp_path: Path, genes) -> None:
    counts = counts_matrix()
    counts[0, :3] = [-1.0, 2.5, 3.0]
    path = write_h5ad(tmp_path / "x.h5ad", counts, genes, {"n_counts": [1000] * 5})
    with pytest.warns(TokenizerWarning) as caught:
        tokenize(path, tmp_path, "out", progress=False)
    messages = [str(w.message) for w in caught]
    assert any("1 negative values where raw counts are expected" in m for m in messages)
    assert any("1 non-integer values where raw counts are expected" in m for m in messages)


def test_empty_cells_are_dropped_and_counted(tmp_path: Path, genes) -> None:
    counts = counts_matrix()
    counts[[1, 3]] = 0
    path = write_h5ad(tmp_path / "x.h5ad", counts, genes, {"n_counts": [1000] * 5, "name": list("abcde")})
    with pytest.warns(TokenizerWarning, match="dropped 2 of 5 cells with no expressed gene"):
        result = tokenize(path, tmp_path, "out", custom_attr_name_dict={"name": "name"}, progress=False)
    assert load_from_disk(str(result.path))["name"] == ["a", "c", "e"]
    assert read_dictionary_metadata(result.path)["inputs"][0]["cells_empty_dropped"] == 2


def test_filter_pass_is_honoured(tmp_path: Path, genes, v1_tokens, v1_medians) -> None:
    counts = counts_matrix()
    obs = {"n_counts": [1000] * 5, "filter_pass": [1, 0, 1, 0, 1], "name": list("abcde")}
    path = write_h5ad(tmp_path / "x.h5ad", counts, genes, obs)
    result = tokenize(path, tmp_path, "out", custom_attr_name_dict={"name": "name"}, progress=False)
    dataset = load_from_disk(str(result.path))
    assert dataset["name"] == ["a", "c", "e"]
    matrix = sp.csr_matrix(counts)
    assert dataset["input_ids"] == [
        oracle_cell(cell_counts(matrix, r, genes), 1000, v1_tokens, v1_medians, 2048) for r in (0, 2, 4)
    ]
    assert read_dictionary_metadata(result.path)["inputs"][0]["cells_filtered_out"] == 2


def test_corrupt_and_truncated_files_are_named(tmp_path: Path, chr21_path: Path, chr21) -> None:
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(chr21_path.read_bytes()[: chr21_path.stat().st_size * 6 // 10])
    with pytest.raises(TokenizerInputError, match=r"truncated\.h5ad.*corrupt or truncated"):
        tokenize(truncated, tmp_path, "out", progress=False)
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_bytes(b"not an hdf5 file" * 100)
    with pytest.raises(TokenizerInputError, match=r"garbage\.h5ad: cannot be read as \.h5ad"):
        tokenize(garbage, tmp_path, "out", progress=False)
    loom = tmp_path / "cells.loom"
    loompy.create(
        str(loom),
        sp.csr_matrix(chr21.X).T.tocoo(),
        {"ensembl_id": np.asarray(chr21.var["ensembl_id"])},
        {"n_counts": np.asarray(chr21.obs["n_counts"])},
    )
    loom.write_bytes(loom.read_bytes()[: loom.stat().st_size // 2])
    with pytest.raises(TokenizerInputError, match=r"cells\.loom.*corrupt or truncated"):
        tokenize(loom, tmp_path, "out", progress=False)
    assert not list(tmp_path.glob(".out*")) and not (tmp_path / "out.dataset").exists()


def test_existing_output_needs_force(tmp_path: Path, genes) -> None:
    path = write_h5ad(tmp_path / "x.h5ad", counts_matrix(), genes, {"n_counts": [1000] * 5})
    first = tokenize(path, tmp_path, "out", progress=False)
    with pytest.raises(FileExistsError, match=r"out\.dataset already exists; pass force=True \(--force\)"):
        tokenize(path, tmp_path, "out", progress=False)
    other = write_h5ad(tmp_path / "y.h5ad", counts_matrix(n_cells=2, seed=5), genes, {"n_counts": [1000] * 2})
    second = tokenize(other, tmp_path, "out", overwrite=True, progress=False)
    assert second.path == first.path and len(input_ids(second)) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failure_midway_leaves_nothing_under_the_final_name(tmp_path: Path, genes) -> None:
    counts = counts_matrix(n_cells=40)
    counts[30, 0] = np.nan  # read in the fourth block of 10 cells
    path = write_h5ad(tmp_path / "x.h5ad", counts, genes, {"n_counts": [1000] * 40})
    for nproc in (1, 2):  # with workers, the worker's error reaches the caller unchanged
        with pytest.raises(TokenizerInputError, match=r"x\.h5ad, cells 30\.\.39: counts hold NaN"):
            tokenize(path, tmp_path, "out", chunk_size=10, nproc=nproc, progress=False)
        assert list(tmp_path.iterdir()) == [path]


def test_invalid_and_too_small_n_counts(tmp_path: Path, genes) -> None:
    counts = counts_matrix()
    path = write_h5ad(tmp_path / "x.h5ad", counts, genes, {"n_counts": [1000, 0, 1000, 1000, 1000]})
    with pytest.raises(TokenizerInputError, match=r"n_counts is zero, negative or missing for 1 cells .*cell 1"):
        tokenize(path, tmp_path, "out", progress=False)
    small = write_h5ad(tmp_path / "small.h5ad", counts, genes, {"n_counts": [1, 1000, 1000, 1000, 1000]})
    with pytest.warns(TokenizerWarning, match="for 1 cells n_counts is smaller than the sum of their counts"):
        tokenize(small, tmp_path, "small", progress=False)


def test_versioned_ids_are_matched_with_a_warning(tmp_path: Path, genes) -> None:
    counts = counts_matrix()
    plain = quiet_tokenize(write_h5ad(tmp_path / "a.h5ad", counts, genes, {"n_counts": [1000] * 5}), tmp_path, "a")
    versioned = write_h5ad(tmp_path / "b.h5ad", counts, [g + ".7" for g in genes], {"n_counts": [1000] * 5})
    with pytest.warns(TokenizerWarning, match=r"removed the version suffix of 40 Ensembl IDs"):
        result = tokenize(versioned, tmp_path, "b", progress=False)
    assert input_ids(result) == input_ids(plain)


def test_attributes_paths_and_formats(tmp_path: Path, genes) -> None:
    path = write_h5ad(tmp_path / "x.h5ad", counts_matrix(), genes, {"n_counts": [1000] * 5, "kind": list("aabba")})
    with pytest.raises(TokenizerInputError, match=r"custom attributes \['cell_type'\] not found; obs columns found"):
        tokenize(path, tmp_path, "out", custom_attr_name_dict={"cell_type": "cell_type"}, progress=False)
    with pytest.raises(ValueError, match="clash with the columns"):
        tokenize(path, tmp_path, "out", custom_attr_name_dict={"kind": "length"}, progress=False)
    (tmp_path / "cells.csv").write_text("a,b\n")
    with pytest.raises(TokenizerInputError, match=r"unsupported file type '\.csv'"):
        tokenize(tmp_path / "cells.csv", tmp_path, "out", progress=False)
    with pytest.raises(TokenizerInputError, match="no such file or directory"):
        tokenize(tmp_path / "missing.h5ad", tmp_path, "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerInputError, match="holds no h5ad, loom or zarr files"):
        tokenize(tmp_path / "empty", tmp_path, "out", progress=False)


def test_csc_and_dense_matrices_give_the_csr_result(tmp_path: Path, genes) -> None:
    counts = counts_matrix()
    csr = quiet_tokenize(write_h5ad(tmp_path / "a.h5ad", counts, genes, {"n_counts": [1000] * 5}), tmp_path, "a")
    obs = pd.DataFrame({"n_counts": [1000.0] * 5}, index=[f"c{i}" for i in range(5)])
    var = pd.DataFrame({"ensembl_id": genes}, index=[f"g{i}" for i in range(40)])
    anndata.AnnData(X=sp.csc_matrix(counts), obs=obs, var=var).write_h5ad(tmp_path / "csc.h5ad")
    with pytest.warns(TokenizerWarning, match=r"column-wise \(CSC\)"):
        result = tokenize(tmp_path / "csc.h5ad", tmp_path, "csc", progress=False)
    assert input_ids(result) == input_ids(csr)
    anndata.AnnData(X=counts, obs=obs, var=var).write_h5ad(tmp_path / "dense.h5ad")
    assert input_ids(tokenize(tmp_path / "dense.h5ad", tmp_path, "dense", chunk_size=2, progress=False)) == input_ids(
        csr
    )


def test_command_line(tmp_path: Path, chr21_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = add_tokenize_arguments(argparse.ArgumentParser())
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(chr21_path, folder / "chr21.h5ad")
    args = parser.parse_args(
        [str(folder), str(tmp_path / "out"), "--prefix", "cli", "--custom-attr", "barcode:cell", "--no-progress"]
    )
    assert args.custom_attr == [("barcode", "cell")] and args.model_version == "V1" and args.nproc == 1
    assert run_tokenize(args) == 0
    assert "wrote 1107 cells" in capsys.readouterr().out
    assert load_from_disk(str(tmp_path / "out" / "cli.dataset")).column_names == ["input_ids", "length", "cell"]
    with pytest.raises(FileExistsError):
        run_tokenize(args)
