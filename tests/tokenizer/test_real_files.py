"""The tokenizer on the shipped real files, checked cell by cell against a plain per-cell loop."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata
import loompy
import numpy as np
import pytest
import scipy.sparse as sp
from datasets import Dataset, Features, load_from_disk
from helpers.tokenizer import cell_counts, oracle_cell

from mindformer_gf.resources import example_cells_path
from mindformer_gf.tokenizer import (
    DictionaryMismatchError,
    TokenizerWarning,
    check_dataset_matches_vocab,
    read_dictionary_metadata,
    tokenize,
)


def columns(path: Path) -> dict:
    return load_from_disk(str(path)).to_dict()


@pytest.fixture(scope="module")
def chr21_dataset(tmp_path_factory: pytest.TempPathFactory, chr21_path: Path) -> Path:
    output = tmp_path_factory.mktemp("chr21")
    result = tokenize(chr21_path, output, "chr21", custom_attr_name_dict={"barcode": "cell_barcode"}, progress=False)
    return result.path


def test_chr21_every_cell_matches_the_per_cell_loop(chr21_dataset: Path, chr21, v1_tokens, v1_medians) -> None:
    data = columns(chr21_dataset)
    matrix = sp.csr_matrix(chr21.X)
    gene_ids = [g.upper() for g in chr21.var["ensembl_id"]]
    expected = [
        oracle_cell(cell_counts(matrix, row, gene_ids), chr21.obs["n_counts"].iloc[row], v1_tokens, v1_medians, 2048)
        for row in range(chr21.n_obs)
    ]
    kept = [row for row in range(chr21.n_obs) if expected[row]]
    assert data["input_ids"] == [expected[row] for row in kept]
    assert data["length"] == [len(expected[row]) for row in kept]
    assert data["cell_barcode"] == [chr21.obs["barcode"].iloc[row] for row in kept]


def test_chr21_hand_checked_first_cell(chr21_dataset: Path, chr21, v1_tokens, v1_medians) -> None:
    # The first cell written out: its genes, counts and medians, and the order they give.
    first = sp.csr_matrix(chr21.X[0])
    genes = [(chr21.var["ensembl_id"].iloc[j], float(x)) for j, x in zip(first.indices, first.data, strict=True)]
    in_dictionary = [(g, x) for g, x in genes if g in v1_tokens]
    n_counts = float(chr21.obs["n_counts"].iloc[0])
    assert n_counts == 36.0
    values = sorted(((x / n_counts * 10000 / v1_medians[g], -v1_tokens[g]) for g, x in in_dictionary), reverse=True)
    first_row = load_from_disk(str(chr21_dataset))[0]
    assert first_row["input_ids"] == [-t for _, t in values]
    assert first_row["length"] == len(in_dictionary) == 25


def test_chr21_h5ad_and_loom_give_identical_datasets(
    tmp_path: Path, chr21_path: Path, chr21_dataset: Path, chr21
) -> None:
    loom = tmp_path / "chr21.loom"
    loompy.create(
        str(loom),
        sp.csr_matrix(chr21.X).T.tocoo(),
        row_attrs={"ensembl_id": np.asarray(chr21.var["ensembl_id"]), "Gene": np.asarray(chr21.var_names)},
        col_attrs={"n_counts": np.asarray(chr21.obs["n_counts"]), "barcode": np.asarray(chr21.obs["barcode"])},
    )
    result = tokenize(loom, tmp_path, "from_loom", custom_attr_name_dict={"barcode": "cell_barcode"}, progress=False)
    assert columns(result.path) == columns(chr21_dataset)


def test_workers_and_chunks_do_not_change_the_dataset(tmp_path: Path, chr21_path: Path, chr21_dataset: Path) -> None:
    result = tokenize(
        [chr21_path, chr21_path],
        tmp_path,
        "twice",
        custom_attr_name_dict={"barcode": "cell_barcode"},
        nproc=2,
        chunk_size=100,
        progress=False,
    )
    single = columns(chr21_dataset)
    assert columns(result.path) == {key: values + values for key, values in single.items()}
    assert len(list(result.path.glob("data-*.arrow"))) >= 2


def test_dataset_layout_is_save_to_disk_layout(tmp_path: Path, chr21_dataset: Path) -> None:
    ours = load_from_disk(str(chr21_dataset))
    reference_dir = tmp_path / "plain"
    Dataset.from_dict(ours.to_dict(), features=ours.features).save_to_disk(str(reference_dir))
    for name in ("state.json", "dataset_info.json"):
        ours_json = json.loads((chr21_dataset / name).read_text())
        plain_json = json.loads((reference_dir / name).read_text())
        assert sorted(ours_json) == sorted(plain_json)
        for key in ours_json:
            if key == "features":  # ours in the older Sequence form (test_datasets_compat.py), read as the same
                assert Features.from_dict(ours_json[key]) == Features.from_dict(plain_json[key])
            elif key not in ("_fingerprint", "description"):
                assert ours_json[key] == plain_json[key], key
    assert ours.features["input_ids"].feature.dtype == "int32"


def test_metadata_and_vocabulary_check(tmp_path: Path, chr21_dataset: Path) -> None:
    record = read_dictionary_metadata(chr21_dataset)
    assert record["dictionary"]["vocab_size"] == 25426
    assert record["dictionary"]["model_version"] == "V1"
    assert record["dictionary"]["special_tokens"] == {"<pad>": 0, "<mask>": 1}
    assert record["model_input_size"] == 2048 and record["special_token"] is False
    assert record["inputs"][0]["cells_written"] == 1107 and record["inputs"][0]["genes_matched"] == 240
    assert read_dictionary_metadata(load_from_disk(str(chr21_dataset))) == record
    check_dataset_matches_vocab(chr21_dataset, 25426)
    with pytest.raises(DictionaryMismatchError, match=r"V1 dictionary .* V2 \(20275 tokens\).*--model-version V2"):
        check_dataset_matches_vocab(chr21_dataset, 20275)
    # a dataset from elsewhere, without the record: token ids are checked
    foreign = Dataset.from_dict({"input_ids": [[5, 25000]], "length": [2]})
    assert read_dictionary_metadata(foreign) is None
    check_dataset_matches_vocab(foreign, 25426)
    with pytest.raises(DictionaryMismatchError, match="token id 25000, beyond .* V2 .*likely tokenized for V1"):
        check_dataset_matches_vocab(foreign, 20275)


def test_pbmc68k_through_gene_symbols(tmp_path: Path, v1_tokens, v1_medians, v1_names) -> None:
    reduced = anndata.read_h5ad(example_cells_path("pbmc68k_reduced"))
    # .raw.X is log1p of normalised counts; expm1 gives values proportional to counts within a cell
    counts = sp.csr_matrix(reduced.raw.X).expm1()
    symbols = list(reduced.raw.var_names)
    cells = anndata.AnnData(X=counts, obs=reduced.obs[["bulk_labels"]].copy())
    cells.var_names = symbols
    path = tmp_path / "pbmc68k_counts.h5ad"
    cells.write_h5ad(path)
    with pytest.warns(TokenizerWarning) as caught:
        result = tokenize(
            path,
            tmp_path,
            "pbmc68k",
            gene_id="symbol",
            custom_attr_name_dict={"bulk_labels": "cell_type"},
            progress=False,
        )
    messages = " ".join(str(w.message) for w in caught)
    assert "no cell attribute 'n_counts'" in messages and "non-integer values" in messages
    upper_names = {k.upper(): v for k, v in v1_names.items()}
    gene_ids = [upper_names.get(s.upper(), "") for s in symbols]
    n_counts = np.asarray(counts.sum(axis=1)).ravel()
    expected = [
        oracle_cell(cell_counts(counts, r, gene_ids), n_counts[r], v1_tokens, v1_medians, 2048) for r in range(700)
    ]
    data = columns(result.path)
    assert data["input_ids"] == [cell for cell in expected if cell]
    assert data["cell_type"] == [str(reduced.obs["bulk_labels"].iloc[r]) for r in range(700) if expected[r]]
    assert min(data["length"]) > 50
    # the same cells from a loom file, symbols in the loom convention's 'Gene' row attribute
    loom = tmp_path / "pbmc68k.loom"
    loompy.create(
        str(loom),
        counts.T.tocoo(),
        {"Gene": np.array(symbols)},
        {"bulk_labels": np.asarray(reduced.obs["bulk_labels"].astype(str))},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenizerWarning)
        from_loom = tokenize(
            loom, tmp_path, "loom", gene_id="symbol", custom_attr_name_dict={"bulk_labels": "cell_type"}, progress=False
        )
    assert columns(from_loom.path) == data
    # the rank order does not depend on the per-cell scale: the stored (original) n_counts give the same lists
    with_totals = anndata.AnnData(X=counts, obs=reduced.obs[["n_counts"]].copy())
    with_totals.var_names = symbols
    with_totals.write_h5ad(tmp_path / "with_totals.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenizerWarning)
        again = tokenize(tmp_path / "with_totals.h5ad", tmp_path, "totals", gene_id="symbol", progress=False)
    assert columns(again.path)["input_ids"] == data["input_ids"]
