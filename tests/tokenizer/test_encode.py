"""rank_value_encode (both backends) and the token-list helpers against values worked out by hand and a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mindformer_gf.tokenizer import encode, native
from mindformer_gf.tokenizer.encode import (
    RankedCells,
    add_special_tokens,
    drop_cells,
    rank_value_encode,
    row_groups,
    truncate_cells,
)


def loop_oracle(matrix: sp.csr_matrix, n_counts, tokens, medians, limit) -> list[list[int]]:
    """Per cell: (value descending, token ascending) with value = x / n * 10000 / median, non-zeros only."""
    dense = matrix.toarray()
    cells = []
    for row in range(dense.shape[0]):
        pairs = [
            (-(float(x) / float(n_counts[row]) * 10000.0 / float(medians[j])), int(tokens[j]))
            for j, x in enumerate(dense[row])
            if x != 0
        ]
        cells.append([t for _, t in sorted(pairs)][:limit])
    return cells


def as_lists(cells: RankedCells) -> list[list[int]]:
    return [cells.cell(i).tolist() for i in range(len(cells.offsets) - 1)]


@pytest.fixture(params=["native", "numpy"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "native" and not native.is_available():
        pytest.skip("the native tokenizer kernel is not built")
    return request.param


def test_hand_worked_cells(backend: str) -> None:
    # genes a, b, c, d with tokens 7, 3, 9, 4 and medians 2, 1, 4, 0.5
    # cell 0: counts a=4 b=1 c=8 d=0, n=20 -> values 4/2=2, 1/1=1, 8/4=2 (x 500): a and c tie at 1000, b 500
    #         -> tie broken by token: a(7) before c(9) -> [7, 9, 3]
    # cell 1: counts d=1 b=3, n=10 -> d: 1/10*1e4/0.5 = 2000, b: 3/10*1e4/1 = 3000 -> [3, 4]
    # cell 2: nothing expressed -> []
    counts = sp.csr_matrix(np.array([[4, 1, 8, 0], [0, 3, 0, 1], [0, 0, 0, 0]], dtype=np.float32))
    result = rank_value_encode(counts, [20, 10, 5], [7, 3, 9, 4], [2.0, 1.0, 4.0, 0.5], backend=backend)
    assert as_lists(result) == [[7, 9, 3], [3, 4], []]
    assert result.offsets.tolist() == [0, 3, 5, 5]
    assert result.tokens.dtype == np.int32
    assert as_lists(
        rank_value_encode(counts, [20, 10, 5], [7, 3, 9, 4], [2.0, 1.0, 4.0, 0.5], max_length=1, backend=backend)
    ) == [
        [7],
        [3],
        [],
    ]


@pytest.mark.parametrize("layout", ["uniform", "ragged", "with_empty_rows"])
@pytest.mark.parametrize("token_order", ["shuffled", "ascending"])
def test_matches_per_cell_loop(layout: str, token_order: str, backend: str) -> None:
    rng = np.random.default_rng({"uniform": 1, "ragged": 2, "with_empty_rows": 3}[layout])
    n_cells, n_genes = 60, 900
    if layout == "uniform":
        lengths = np.full(n_cells, 700)
    else:
        lengths = rng.integers(1, n_genes, n_cells)
    if layout == "with_empty_rows":
        lengths[::7] = 0
    rows, columns = [], []
    for row, length in enumerate(lengths):
        rows.append(np.full(length, row))
        columns.append(rng.choice(n_genes, length, replace=False))
    # small integer counts: many equal counts, plus a few duplicate medians, make exact ties common
    data = rng.geometric(0.4, int(lengths.sum())).astype(np.float32)
    matrix = sp.csr_matrix((data, (np.concatenate(rows), np.concatenate(columns))), shape=(n_cells, n_genes))
    tokens = rng.permutation(np.arange(2, 25426))[:n_genes]
    if token_order == "ascending":  # the tokenizer's layout: the sort key then holds the column, not the token
        tokens = np.sort(tokens)
    medians = rng.choice(rng.uniform(0.05, 40.0, 600), n_genes)
    n_counts = np.asarray(matrix.sum(axis=1)).ravel() + rng.integers(0, 50, n_cells)
    n_counts[n_counts == 0] = 1
    result = rank_value_encode(matrix, n_counts, tokens, medians, max_length=500, backend=backend)
    assert as_lists(result) == loop_oracle(matrix, n_counts, tokens, medians, 500)


def test_many_small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    # groups of a few rows: exercises the index-array and slice paths with several groups per block
    monkeypatch.setattr(encode, "_GROUP_ELEMENTS", 64)
    rng = np.random.default_rng(4)
    matrix = sp.random(40, 300, density=0.2, random_state=5, format="csr", dtype=np.float64)
    matrix.data = np.ceil(matrix.data * 5)
    tokens = rng.permutation(300) + 2
    medians = rng.uniform(0.5, 3.0, 300)
    n_counts = np.asarray(matrix.sum(axis=1)).ravel() + 1
    assert len(row_groups(np.diff(matrix.indptr), 64)) > 5
    result = rank_value_encode(matrix, n_counts, tokens, medians, backend="numpy")
    assert as_lists(result) == loop_oracle(matrix, n_counts, tokens, medians, 10**6)


def test_values_closer_than_key_precision_are_ordered_exactly(backend: str) -> None:
    # Keys keep value bits above the token bits: with a token id needing 15 bits, values within 2**-37 of each other
    # share a key prefix. Gene 0 (token 5) and gene 1 (token 9) differ by 2**-45 relative, gene 1 larger: the exact
    # order is [9, 5], whereas ordering by token on a tie would give [5, 9].
    medians = np.array([1.0, 1.0 - 2.0**-45, 2.0, 3.0])
    tokens = np.array([5, 9, 30000, 7])
    counts = sp.csr_matrix(np.array([[2.0, 2.0, 0.0, 0.0], [3.0, 0.0, 6.0, 9.0]]))
    result = rank_value_encode(counts, [10.0, 10.0], tokens, medians, backend=backend)
    # cell 1: 3/1 = 6/2 = 9/3: exact ties -> token order 7, 5, 30000
    assert as_lists(result) == [[9, 5], [5, 7, 30000]]
    # the same with columns in token order and 2**15 columns, so that the key holds a 15-bit column index
    n_columns = 1 << 15
    medians_wide = np.ones(n_columns)
    medians_wide[[0, 1]] = [1.0, 1.0 - 2.0**-45]
    wide = sp.csr_matrix((np.array([2.0, 2.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, n_columns))
    assert as_lists(rank_value_encode(wide, [10.0], np.arange(n_columns) + 2, medians_wide, backend=backend)) == [
        [3, 2]
    ]


def test_negative_values_rank_last(backend: str) -> None:
    counts = sp.csr_matrix(np.array([[-1.0, 2.0, -3.0, 1.0]]))
    result = rank_value_encode(counts, [1.0], [2, 3, 4, 5], [1.0, 1.0, 1.0, 1.0], backend=backend)
    assert as_lists(result) == [[3, 5, 2, 4]]


def test_explicit_zeros_are_dropped(backend: str) -> None:
    counts = sp.csr_matrix((np.array([0.0, 2.0, 0.0]), np.array([0, 1, 2]), np.array([0, 3])), shape=(1, 3))
    assert counts.nnz == 3
    assert as_lists(rank_value_encode(counts, [2.0], [4, 5, 6], [1.0, 1.0, 1.0], backend=backend)) == [[5]]


def test_bad_arguments(backend: str) -> None:
    counts = sp.csr_matrix(np.ones((2, 3)))
    with pytest.raises(ValueError, match="3 genes but 2 tokens"):
        rank_value_encode(counts, [1, 1], [1, 2], [1.0, 1.0], backend=backend)
    with pytest.raises(ValueError, match="n_counts has 1 entries for 2 cells"):
        rank_value_encode(counts, [1], [1, 2, 3], [1.0, 1.0, 1.0], backend=backend)
    counts.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rank_value_encode(counts, [1, 1], [1, 2, 3], [1.0, 1.0, 1.0], backend=backend)


def test_special_tokens_truncation_and_dropping() -> None:
    cells = RankedCells(offsets=np.array([0, 3, 3, 5]), tokens=np.array([10, 11, 12, 20, 21], dtype=np.int32))
    with_specials = add_special_tokens(cells, cls_token=2, eos_token=3)
    assert as_lists(with_specials) == [[2, 10, 11, 12, 3], [2, 3], [2, 20, 21, 3]]
    assert as_lists(truncate_cells(cells, 2)) == [[10, 11], [], [20, 21]]
    assert as_lists(drop_cells(cells, np.array([True, False, True]))) == [[10, 11, 12], [20, 21]]
