"""The reference's tokenizer options: keep_counts, use_h5ad_index, tokenize_data's input_identifier and
use_generator, .zarr input; checked against values worked out in the test."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from datasets import load_from_disk
from helpers.tokenizer import oracle_cell, write_h5ad

from mindformer_gf.tokenizer import TokenizerInputError, TranscriptomeTokenizer, native

BACKENDS = ["native", "numpy"] if native.is_available() else ["numpy"]


@pytest.fixture(scope="module")
def cells(v1_tokens):
    genes = [g for g in v1_tokens if g.startswith("ENSG")][:300]
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 6, size=(6, len(genes))).astype(np.float32) * (rng.random((6, len(genes))) < 0.2)
    counts[:, 5] = 7.0  # one gene in every cell
    n_counts = counts.sum(axis=1) + 50.0
    return genes, counts, n_counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_counts_follows_the_tokens(tmp_path, cells, v1_tokens, v1_medians, backend):
    genes, counts, n_counts = cells
    path = write_h5ad(tmp_path / "c.h5ad", counts, genes, obs={"n_counts": n_counts})
    tk = TranscriptomeTokenizer(
        model_version="V1",
        keep_counts=True,
        model_input_size=20,
        progress=False,
        backend=backend,
        nproc=2,
        chunk_size=2,
    )
    tk.tokenize_data(path, tmp_path, "kept", file_format="h5ad")
    dataset = load_from_disk(str(tmp_path / "kept.dataset"))
    for row in range(len(counts)):
        by_gene = {g: float(c) for g, c in zip(genes, counts[row], strict=True) if c}
        tokens = oracle_cell(by_gene, n_counts[row], v1_tokens, v1_medians, 20)
        assert dataset[row]["input_ids"] == tokens
        gene_of = {v1_tokens[g]: g for g in by_gene}
        expected = [by_gene[gene_of[t]] / n_counts[row] * 10_000 for t in tokens]
        np.testing.assert_allclose(dataset[row]["counts"], expected, rtol=1e-12)


def test_keep_counts_is_zero_at_cls_and_eos(tmp_path, cells):
    from helpers.tokenizer import write_v2_dictionaries

    genes, counts, n_counts = cells
    files = write_v2_dictionaries(tmp_path / "v2", genes, np.ones(len(genes)), {g: g for g in genes})
    path = write_h5ad(tmp_path / "c.h5ad", counts, genes, obs={"n_counts": n_counts})
    tk = TranscriptomeTokenizer(keep_counts=True, model_input_size=10, progress=False, **files)
    tk.tokenize_data(path, tmp_path, "v2", file_format="h5ad")
    first = load_from_disk(str(tmp_path / "v2.dataset"))[0]
    assert first["input_ids"][0] == 2 and first["input_ids"][-1] == 3 and len(first["counts"]) == 10
    assert first["counts"][0] == 0.0 and first["counts"][-1] == 0.0
    # medians of 1: the order of input_ids is the order of the counts, descending
    assert first["counts"][1:-1] == sorted(first["counts"][1:-1], reverse=True)


def test_h5ad_index_identifier_generator_and_zarr(tmp_path, cells, v1_tokens, v1_medians):
    genes, counts, n_counts = cells
    directory = tmp_path / "inputs"
    directory.mkdir()
    obs = pd.DataFrame({"n_counts": n_counts}, index=[f"c{i}" for i in range(len(counts))])
    # genes as the var index (no ensembl_id column): use_h5ad_index=True
    anndata.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(
        directory / "sample_keep.h5ad"
    )
    anndata.AnnData(X=sp.csr_matrix(counts[:2]), obs=obs.iloc[:2], var=pd.DataFrame(index=genes)).write_h5ad(
        directory / "other.h5ad"
    )
    with pytest.raises(TokenizerInputError, match="no gene attribute 'ensembl_id'"):
        TranscriptomeTokenizer(model_version="V1", progress=False).tokenize_data(
            directory, tmp_path, "x", file_format="h5ad"
        )
    tk = TranscriptomeTokenizer(model_version="V1", use_h5ad_index=True, progress=False)
    tk.tokenize_data(directory, tmp_path, "kept", file_format="h5ad", input_identifier="keep", use_generator=True)
    dataset = load_from_disk(str(tmp_path / "kept.dataset"))
    assert len(dataset) == len(counts)  # other.h5ad left out by input_identifier
    by_gene = {g: float(c) for g, c in zip(genes, counts[4], strict=True) if c}
    assert dataset[4]["input_ids"] == oracle_cell(by_gene, n_counts[4], v1_tokens, v1_medians, 2048)
    # the same cells as a .zarr store (a directory), read by anndata
    zarr_dir = tmp_path / "zarr_inputs"
    zarr_dir.mkdir()
    anndata.read_h5ad(directory / "sample_keep.h5ad").write_zarr(zarr_dir / "sample.zarr")
    tk.tokenize_data(zarr_dir, tmp_path, "from_zarr", file_format="zarr")
    assert load_from_disk(str(tmp_path / "from_zarr.dataset"))["input_ids"] == dataset["input_ids"]
    with pytest.raises(TokenizerInputError, match="with 'nothing' in the name"):
        tk.tokenize_data(directory, tmp_path, "y", file_format="h5ad", input_identifier="nothing")


def test_in_memory_steps_equal_tokenize_data(tmp_path, cells, v1_tokens, v1_medians):
    """tokenize_anndata / tokenize_loom + create_dataset (the reference's steps) give tokenize_data's cells."""
    import loompy

    genes, counts, n_counts = cells
    counts = counts.copy()
    counts[2] = 0.0  # an empty cell: dropped by both paths
    kinds = np.asarray(["a", "b", "c", "d", "e", "f"])
    path = write_h5ad(tmp_path / "c.h5ad", counts, genes, obs={"n_counts": n_counts, "kind": kinds})
    tk = TranscriptomeTokenizer(
        {"kind": "kind"}, model_version="V1", keep_counts=True, model_input_size=12, progress=False
    )
    with pytest.warns(UserWarning, match="dropped 1"):
        tokenized, metadata, tokenized_counts = tk.tokenize_anndata(path)
    assert metadata == {"kind": ["a", "b", "d", "e", "f"]} and len(tokenized) == len(tokenized_counts) == 5
    by_gene = {g: float(c) for g, c in zip(genes, counts[3], strict=True) if c}
    assert list(tokenized[2]) == oracle_cell(by_gene, n_counts[3], v1_tokens, v1_medians, 10**6)  # uncropped
    dataset = tk.create_dataset(tokenized, metadata, tokenized_counts, keep_uncropped_input_ids=True)
    with pytest.warns(UserWarning, match="dropped 1"):
        tk.tokenize_data(path, tmp_path, "streamed", file_format="h5ad")
    streamed = load_from_disk(str(tmp_path / "streamed.dataset"))
    assert dataset["input_ids"] == streamed["input_ids"] and dataset["length"] == streamed["length"]
    np.testing.assert_allclose(np.concatenate(dataset["counts"]), np.concatenate(streamed["counts"]), rtol=1e-12)
    assert dataset["kind"] == streamed["kind"] and dataset["input_ids_uncropped"][2] == list(tokenized[2])
    # the same cells from a .loom file
    loompy.create(
        str(tmp_path / "c.loom"),
        sp.csr_matrix(counts).T.tocsr(),
        {"ensembl_id": np.asarray(genes)},
        {"n_counts": n_counts, "kind": kinds},
    )
    with pytest.warns(UserWarning, match="dropped 1"):
        from_loom, _, _ = tk.tokenize_loom(tmp_path / "c.loom")
    assert [list(c) for c in from_loom] == [list(c) for c in tokenized]


def test_tokenize_files_earlier_name(tmp_path, cells):
    genes, counts, n_counts = cells
    path = write_h5ad(tmp_path / "c.h5ad", counts, genes, obs={"n_counts": n_counts})
    tk = TranscriptomeTokenizer(model_version="V1", progress=False)
    with pytest.warns(DeprecationWarning, match=r"tokenize_files\(inputs=...\) is now data_directory="):
        result = tk.tokenize_files(inputs=[path], output_directory=tmp_path, output_prefix="old")
    assert result.cells_written == len(counts)
