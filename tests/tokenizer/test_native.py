"""The native kernel against the numpy code and a plain per-cell loop: random blocks full of ties, long rows (V1 and
V2 truncation), empty and all-zero rows, odd dtypes, malformed CSR, the shipped real files, and the numpy fallback."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
from datasets import load_from_disk
from helpers.tokenizer import cell_counts, oracle_cell

from mindformer_gf.resources import example_cells_path
from mindformer_gf.tokenizer import TokenizerWarning, native, rank_value_encode, read_dictionary_metadata, tokenize
from mindformer_gf.tokenizer.encode import resolve_backend

pytestmark = pytest.mark.skipif(not native.is_available(), reason="the native tokenizer kernel is not built")

V1_LIMIT = 2048
V2_LIMIT = 4094  # 4096 minus <cls> and <eos>
CLS, EOS = 2, 3


def loop_encode(matrix: sp.csr_matrix, n_counts, tokens, medians, limit: int) -> list[list[int]]:
    """Per cell, from the dense row: non-zeros with a token (>= 0), (value descending, token ascending), first `limit`.

    Values are x / n * 10000 / median as Python floats, compared with Python's float order (-0.0 == 0.0).
    """
    dense = matrix.toarray()
    cells = []
    for row in range(dense.shape[0]):
        pairs = [
            (-(float(x) / float(n_counts[row]) * 10000.0 / float(medians[j])), int(tokens[j]))
            for j, x in enumerate(dense[row])
            if x != 0 and tokens[j] >= 0
        ]
        cells.append([t for _, t in sorted(pairs)][:limit])
    return cells


def lists(offsets: np.ndarray, tokens: np.ndarray) -> list[list[int]]:
    return [tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def tie_heavy_block(seed: int, n_genes: int, lengths: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Rows of the given lengths; counts 1..4 and 5 distinct medians: at most 20 distinct values per row, so long rows
    are mostly ties, which only the token orders."""
    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    # columns unsorted within a row, as CSR allows
    indices = np.concatenate([rng.choice(n_genes, length, replace=False) for length in lengths]).astype(np.int32)
    data = rng.integers(1, 5, int(indptr[-1])).astype(np.float32)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(len(lengths), n_genes))
    medians = rng.choice(np.array([0.5, 1.0, 1.5, 2.0, 3.0]), n_genes)
    n_counts = np.asarray(matrix.sum(axis=1)).ravel() + rng.integers(1, 100, len(lengths))
    return matrix, medians, n_counts


@pytest.mark.parametrize("token_order", ["ascending", "shuffled"])
def test_random_blocks_with_ties_long_empty_and_zero_rows(token_order: str) -> None:
    n_genes = 9000
    # empty rows, a row of explicit zeros only, short rows (sorted without radix passes), rows around and well
    # beyond both truncation lengths
    lengths = np.array([0, 5, 40, 49, 300, 2047, 2048, 2049, 4094, 4095, 8000, 0, 6000, 1])
    matrix, medians, n_counts = tie_heavy_block(1, n_genes, lengths)
    matrix.data[matrix.indptr[1] : matrix.indptr[2]] = 0  # row 1: stored zeros only
    rng = np.random.default_rng(2)
    tokens = rng.permutation(np.arange(4, 30000))[:n_genes]
    if token_order == "ascending":
        tokens = np.sort(tokens)
    for limit in (V1_LIMIT, V2_LIMIT, 7):
        expected = loop_encode(matrix, n_counts, tokens, medians, limit)
        numpy_result = rank_value_encode(matrix, n_counts, tokens, medians, max_length=limit, backend="numpy")
        native_result = rank_value_encode(matrix, n_counts, tokens, medians, max_length=limit, backend="native")
        assert lists(*native_result) == lists(*numpy_result) == expected
        assert native_result.tokens.dtype == np.int32 and native_result.offsets.dtype == np.int64
    assert [len(cell) for cell in expected] == [0, 0, 7, 7, 7, 7, 7, 7, 7, 7, 7, 0, 7, 1]


def test_v2_framing_truncation_and_column_tables() -> None:
    # file columns -> dictionary slots with columns left out (-1), as the tokenizer hands them to the kernel
    n_columns, n_slots = 7000, 5000
    lengths = np.array([4500, 0, 4094, 4095, 3, 6999])
    matrix, _, n_counts = tie_heavy_block(3, n_columns, lengths)
    rng = np.random.default_rng(4)
    column_slot = np.full(n_columns, -1)
    column_slot[rng.choice(n_columns, n_slots, replace=False)] = np.arange(n_slots)
    slot_tokens = np.arange(n_slots) + 4
    slot_medians = rng.choice(np.array([0.25, 1.0, 4.0]), n_slots)
    column_tokens, column_medians = native.column_tables(column_slot, slot_tokens, slot_medians)
    assert column_tokens.dtype == np.int32 and (column_tokens[column_slot < 0] == -1).all()
    encoded = native.encode_csr(
        matrix.data,
        matrix.indices,
        matrix.indptr,
        column_tokens,
        column_medians,
        n_counts,
        10_000.0,
        V2_LIMIT,
        special_tokens=(CLS, EOS),
    )
    unframed = loop_encode(matrix, n_counts, column_tokens, column_medians, 10**6)
    assert encoded.expressed.tolist() == [len(cell) for cell in unframed]
    assert lists(encoded.offsets, encoded.tokens) == [[CLS, *cell[:V2_LIMIT], EOS] if cell else [] for cell in unframed]
    assert max(encoded.expressed) > V2_LIMIT and encoded.offsets[-1] == len(encoded.tokens)


def test_value_counts_negative_values_and_signed_zeros() -> None:
    # row 0: values -1e-10 (token 11), 2.5e-10 (10), -3 (12), 1 (13): negatives after positives, by value
    # descending. Row 1: -5e-324 (token 10) and 5e-324 (11) underflow to -0.0 and +0.0 once divided by the 1e10
    # median; equal values, so the token decides: 10 before 11, after 7 (12)
    data = np.array([-1.0, 2.5, -3.0, 1.0, 0.0, -5e-324, 5e-324, 7.0])
    indices = np.array([0, 1, 2, 3, 4, 1, 0, 2])
    matrix = sp.csr_matrix((data, indices, [0, 5, 8]), shape=(2, 5))
    tokens = np.array([11, 10, 12, 13, 14])
    medians = np.array([1e10, 1e10, 1.0, 1.0, 1.0])
    n_counts = np.array([1.0, 1.0])
    expected = loop_encode(matrix, n_counts, tokens, medians, 100)
    assert expected == [[13, 10, 11, 12], [12, 10, 11]]
    for backend in ("native", "numpy"):
        assert lists(*rank_value_encode(matrix, n_counts, tokens, medians, backend=backend)) == expected
    encoded = native.encode_csr(data, indices, matrix.indptr, tokens.astype(np.int32), medians, n_counts, 1e4, 100)
    # negatives: -1, -3, -5e-324; non-integers: 2.5 and the two denormals
    assert (encoded.negative_values, encoded.non_integer_values, encoded.non_finite_values) == (3, 3, 0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        rank_value_encode(sp.csr_matrix(np.array([[1.0, np.inf]])), [1.0], [4, 5], [1.0, 1.0], backend="native")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint16])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_data_and_index_dtypes(dtype: type, index_dtype: type) -> None:
    matrix, medians, n_counts = tie_heavy_block(5, 600, np.array([300, 0, 120, 599]))
    matrix = sp.csr_matrix((matrix.data.astype(dtype), matrix.indices.astype(index_dtype), matrix.indptr), matrix.shape)
    tokens = np.arange(600) + 4
    expected = loop_encode(matrix, n_counts, tokens, medians, 200)
    for backend in ("native", "numpy"):
        assert lists(*rank_value_encode(matrix, n_counts, tokens, medians, max_length=200, backend=backend)) == expected


def test_malformed_csr_is_refused_not_read_past() -> None:
    tokens, medians = np.array([4, 5, 6], dtype=np.int32), np.ones(3)

    def encode(data, indices, indptr):
        return native.encode_csr(np.asarray(data, np.float32), np.asarray(indices), np.asarray(indptr), tokens, medians,
                                 np.ones(len(indptr) - 1), 1e4, 10)  # fmt: skip

    assert lists(*encode([1, 2], [0, 2], [0, 1, 2])[:2]) == [[4], [6]]
    with pytest.raises(ValueError, match="column index is outside"):
        encode([1, 2], [0, 3], [0, 1, 2])
    with pytest.raises(ValueError, match="column index is outside"):
        encode([1, 2], [-1, 0], [0, 1, 2])
    with pytest.raises(ValueError, match="indptr"):
        encode([1, 2], [0, 1], [0, 2, 1])
    with pytest.raises(ValueError, match="indptr"):
        encode([1, 2], [0, 1], [0, 1, 5])
    with pytest.raises(ValueError, match="indptr"):
        encode([1, 2], [0, 1], [1, 1, 2])
    with pytest.raises(ValueError, match="not a CSR block"):
        encode([1, 2], [0], [0, 1, 2])
    with pytest.raises(ValueError, match="n_counts"):
        native.encode_csr(np.ones(1), np.zeros(1, np.int32), np.array([0, 1]), tokens, medians, np.ones(2), 1e4, 10)
    with pytest.raises(ValueError, match="fit in int32"):
        native.column_tables(np.array([0]), np.array([2**31]), np.ones(1))


def dataset_columns(path: Path) -> dict:
    return load_from_disk(str(path)).to_dict()


def test_shipped_files_native_numpy_and_the_loop_agree(tmp_path: Path, chr21, v1_tokens, v1_medians, v1_names) -> None:
    # chr21: raw counts, Ensembl IDs, stored n_counts
    results = {
        backend: tokenize(example_cells_path("pbmc_chr21"), tmp_path, backend, backend=backend, progress=False)
        for backend in ("native", "numpy")
    }
    native_data, numpy_data = (dataset_columns(results[b].path) for b in ("native", "numpy"))
    assert native_data == numpy_data
    assert read_dictionary_metadata(results["native"].path) == read_dictionary_metadata(results["numpy"].path)
    matrix = sp.csr_matrix(chr21.X)
    gene_ids = list(chr21.var["ensembl_id"])
    n_counts = chr21.obs["n_counts"].to_numpy()
    expected = [
        oracle_cell(cell_counts(matrix, row, gene_ids), n_counts[row], v1_tokens, v1_medians, V1_LIMIT)
        for row in range(chr21.n_obs)
    ]
    assert native_data["input_ids"] == [cell for cell in expected if cell]

    # pbmc68k: non-integer values, symbols mapped to IDs, n_counts computed
    reduced = anndata.read_h5ad(example_cells_path("pbmc68k_reduced"))
    counts = sp.csr_matrix(reduced.raw.X).expm1()
    cells = anndata.AnnData(X=counts)
    cells.var_names = list(reduced.raw.var_names)
    cells.write_h5ad(tmp_path / "pbmc68k.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenizerWarning)
        results = {
            backend: tokenize(
                tmp_path / "pbmc68k.h5ad", tmp_path, f"p{backend}", gene_id="symbol", backend=backend, progress=False
            )
            for backend in ("native", "numpy")
        }
    native_data, numpy_data = (dataset_columns(results[b].path) for b in ("native", "numpy"))
    assert native_data == numpy_data
    native_record, numpy_record = (read_dictionary_metadata(results[b].path) for b in ("native", "numpy"))
    assert native_record == numpy_record and native_record["inputs"][0]["non_integer_values"] > 0
    upper_names = {k.upper(): v for k, v in v1_names.items()}
    symbol_ids = [upper_names.get(s.upper(), "") for s in cells.var_names]
    totals = np.asarray(counts.sum(axis=1)).ravel()
    expected = [
        oracle_cell(cell_counts(counts, row, symbol_ids), totals[row], v1_tokens, v1_medians, V1_LIMIT)
        for row in range(counts.shape[0])
    ]
    assert native_data["input_ids"] == [cell for cell in expected if cell]


def test_missing_library_falls_back_to_numpy_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chr21_path: Path
) -> None:
    assert resolve_backend("auto") == "native"  # the default wherever the library is built
    expected = dataset_columns(tokenize(chr21_path, tmp_path, "built", progress=False).path)
    monkeypatch.setattr(native, "_library", lambda: None)
    monkeypatch.setattr(native, "_warned_missing", False)
    assert not native.is_available()
    with pytest.warns(RuntimeWarning, match="native kernel is not available.*numpy") as caught:
        first = tokenize(chr21_path, tmp_path, "fallback", progress=False)
        second = rank_value_encode(sp.csr_matrix(np.array([[1.0, 2.0]])), [3.0], [4, 5], [1.0, 1.0])
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert dataset_columns(first.path) == expected
    assert lists(*second) == [[5, 4]]
    with pytest.raises(RuntimeError, match="not built.*build_ext"):
        tokenize(chr21_path, tmp_path, "refused", backend="native", progress=False)
