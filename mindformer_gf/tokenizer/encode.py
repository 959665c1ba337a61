"""Rank value encoding of a block of cells, vectorised over the CSR arrays of the block.

Order within a cell: genes by normalised value `count / n_counts * target_sum / gene_median`, descending, computed in
float64 exactly as written (true divisions, left to right). Equal values are ordered by token id, ascending. The
reference sorts with an unstable quicksort (`np.argsort(-x)`), so its order among equal values is arbitrary; apart
from that, the orders agree.

How: each non-zero gets one 64-bit sort key, `value` mapped to an unsigned integer whose ascending order is the
value's descending order, with its lowest bits replaced by the token id. Sorting keys therefore sorts by (value
descending, token ascending) and the token falls out of the key with a mask, without an argsort. Rows are sorted
as a padded 2-D array (`np.sort(axis=1)`, numpy's vectorised sort), grouped into width classes so padding stays
small. The bits given to the token cost the value precision: two values that differ only in those bits (relative
difference below about 2**-37 for the V1 dictionary) land in token order, so every row holding such a pair is
re-sorted exactly on (value, token), which makes the result exact whatever the data.

That is the numpy code; by default the native kernel (`native.py`, kernels/tokenizer) computes the same result several
times faster, and this code runs where the kernel is not built.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from mindformer_gf.tokenizer import native

TARGET_SUM = 10_000.0
_SIGN_FLIP = np.uint64(0x7FFF_FFFF_FFFF_FFFF)
_PAD_KEY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
# Quarter-octave width classes: a row is padded to at most 2**0.25 (19%) of its length.
_WIDTH_CLASSES_PER_OCTAVE = 4
# Padded cells per sorted group: 2**17 x 8 bytes = 1 MB per working array, small enough to stay in cache.
_GROUP_ELEMENTS = 1 << 17
BACKENDS = ("auto", "native", "numpy")
NON_FINITE_MESSAGE = "counts hold NaN or infinite values; tokenization needs finite counts"


class RankedCells(NamedTuple):
    """Token lists of a block of cells, CSR-like: cell i is `tokens[offsets[i]:offsets[i + 1]]`."""

    offsets: np.ndarray  # int64, n_cells + 1
    tokens: np.ndarray  # int32

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def cell(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of `arange(starts[i], starts[i] + lengths[i])` over i, without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.asarray(starts, dtype=np.int64) - (np.cumsum(lengths) - lengths)
    return np.repeat(shifts, lengths) + np.arange(total, dtype=np.int64)


def row_groups(lengths: np.ndarray, max_elements: int = _GROUP_ELEMENTS) -> list[tuple[slice | np.ndarray, int]]:
    """Rows to sort together as one padded 2-D array: (a slice or an index array of rows, padded width).

    Rows of similar length share a group, so padding stays small; a group holds about `max_elements` cells of the
    padded array, so its working arrays stay in cache. Empty rows are in no group.
    """
    nonempty = lengths > 0
    if not nonempty.any():
        return []
    classes = np.ceil(np.log2(np.maximum(lengths, 1)) * _WIDTH_CLASSES_PER_OCTAVE).astype(np.int64)
    present = np.unique(classes[nonempty])
    groups: list[tuple[slice | np.ndarray, int]] = []
    if len(present) == 1:
        # one class: contiguous runs of rows, no gathers (empty rows inside a run are all padding)
        rows_per_group = max(1, max_elements // int(lengths.max()))
        for start in range(0, len(lengths), rows_per_group):
            stop = min(start + rows_per_group, len(lengths))
            width = int(lengths[start:stop].max())
            if width:
                groups.append((slice(start, stop), width))
        return groups
    for width_class in present:
        rows = np.flatnonzero((classes == width_class) & nonempty)
        rows_per_group = max(1, max_elements // int(lengths[rows].max()))
        for start in range(0, len(rows), rows_per_group):
            part = rows[start : start + rows_per_group]
            groups.append((part, int(lengths[part].max())))
    return groups


def resolve_backend(backend: str) -> str:
    """The backend that runs for `backend`: "auto" is "native" when the kernel is built, else "numpy" (one warning)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy":
        return backend
    if native.is_available():
        return "native"
    if backend == "native":
        raise RuntimeError(f"the tokenizer's native kernel is not built; {native.BUILD_HINT}")
    native.warn_missing_once()
    return "numpy"


def rank_value_encode(
    counts: sp.csr_matrix,
    n_counts: np.ndarray,
    gene_tokens: np.ndarray,
    gene_medians: np.ndarray,
    max_length: int | None = None,
    target_sum: float = TARGET_SUM,
    backend: str = "auto",
) -> RankedCells:
    """Rank value encode a block of cells.

    counts: cells x genes, columns already restricted to dictionary genes (duplicate genes summed), any
    numeric dtype; column j has token `gene_tokens[j]` and median `gene_medians[j]`. Explicit zeros are dropped.
    n_counts: total counts of each cell (over all genes). max_length: keep at most this many top genes per cell.
    Cells without any non-zero gene get an empty list: callers decide whether to drop them.
    backend: "auto" (native kernel if built), "native" or "numpy"; all give the same result.
    """
    if not sp.issparse(counts):
        counts = sp.csr_matrix(counts)
    counts = counts.tocsr()
    n_cells = counts.shape[0]
    gene_tokens = np.asarray(gene_tokens, dtype=np.int64)
    gene_medians = np.asarray(gene_medians, dtype=np.float64)
    if counts.shape[1] != len(gene_tokens) or len(gene_tokens) != len(gene_medians):
        raise ValueError(
            f"counts has {counts.shape[1]} genes but {len(gene_tokens)} tokens and {len(gene_medians)} medians"
        )
    if gene_tokens.size and gene_tokens.min() < 0:
        raise ValueError("token ids must be non-negative")
    n_counts = np.asarray(n_counts, dtype=np.float64).reshape(-1)
    if len(n_counts) != n_cells:
        raise ValueError(f"n_counts has {len(n_counts)} entries for {n_cells} cells")
    if resolve_backend(backend) == "native":
        if gene_tokens.size and gene_tokens.max() > np.iinfo(np.int32).max:
            raise ValueError("token ids must fit in int32")
        encoded = native.encode_csr(
            counts.data,
            counts.indices,
            counts.indptr,
            gene_tokens,
            gene_medians,
            n_counts,
            target_sum,
            np.iinfo(np.int64).max if max_length is None else max_length,
        )
        if encoded.non_finite_values:
            raise ValueError(NON_FINITE_MESSAGE)
        return RankedCells(offsets=encoded.offsets, tokens=encoded.tokens)
    data, indices, indptr = counts.data, counts.indices, counts.indptr.astype(np.int64)
    smallest, largest = (data.min(), data.max()) if data.size else (1, 1)
    if not (np.isfinite(smallest) and np.isfinite(largest)):
        raise ValueError(NON_FINITE_MESSAGE)
    has_negatives = smallest < 0
    if smallest <= 0:
        nonzero = data != 0
        kept_before = np.concatenate([[0], np.cumsum(nonzero, dtype=np.int64)])
        data, indices, indptr = data[nonzero], indices[nonzero], kept_before[indptr]
    lengths = np.diff(indptr)
    out_lengths = lengths if max_length is None else np.minimum(lengths, max_length)
    out_offsets = np.concatenate([[0], np.cumsum(out_lengths)]).astype(np.int64)
    out_tokens = np.empty(int(out_offsets[-1]), dtype=np.int32)
    # The key's low bits hold the column when columns are in token order (the tokenizer's layout): ordering by column
    # is then ordering by token, and the column needs no more bits than the number of genes.
    columns_in_token_order = bool(np.all(np.diff(gene_tokens) > 0))
    largest_label = len(gene_tokens) - 1 if columns_in_token_order else int(gene_tokens.max(initial=0))
    token_bits = max(largest_label.bit_length(), 1)
    token_mask = np.uint64((1 << token_bits) - 1)
    labels = None if columns_in_token_order else gene_tokens.astype(np.uint64)
    tokens_i32 = gene_tokens.astype(np.int32)
    for rows, width in row_groups(lengths):
        row_lengths, row_n_counts, row_out_lengths = lengths[rows], n_counts[rows], out_lengths[rows]
        if isinstance(rows, slice):
            group_data = data[indptr[rows.start] : indptr[rows.stop]]
            group_columns = indices[indptr[rows.start] : indptr[rows.stop]]
        else:
            source = ragged_positions(indptr[rows], row_lengths)
            group_data, group_columns = data[source], indices[source]
        filled = np.arange(width) < row_lengths[:, None]
        columns = np.zeros(filled.shape, dtype=np.int32)
        columns[filled] = group_columns
        values = np.zeros(filled.shape, dtype=np.float64)
        values[filled] = group_data
        keys = _normalised_keys_inplace(values, row_n_counts, columns, gene_medians, target_sum, has_negatives)
        keys &= ~token_mask
        keys |= columns.astype(np.uint64) if labels is None else labels[columns]
        keys[~filled] = _PAD_KEY
        keys.sort(axis=1)
        kept_width = width if max_length is None else min(width, max_length)
        out_filled = np.arange(kept_width) < row_out_lengths[:, None]
        part = keys[:, :kept_width][out_filled] & token_mask
        part = tokens_i32[part] if labels is None else part.astype(np.int32)
        tied = _rows_with_truncation_ties(keys, filled, token_bits)
        if tied.size:
            # Exact order on (value descending, token ascending) for these rows, from recomputed values (`values`
            # now holds keys); padding sorts last.
            tied_filled = filled[tied]
            exact = np.zeros(tied_filled.shape, dtype=np.float64)
            exact[tied_filled] = group_data[ragged_positions(_row_starts(row_lengths)[tied], row_lengths[tied])]
            exact /= row_n_counts[tied][:, None]
            exact *= target_sum
            exact /= gene_medians[columns[tied]]
            tied_tokens = gene_tokens[columns[tied]]
            order = np.lexsort(
                (np.where(tied_filled, tied_tokens, np.iinfo(np.int64).max), np.where(tied_filled, -exact, np.inf)),
                axis=1,
            )
            exact_tokens = np.take_along_axis(tied_tokens, order, axis=1)[:, :kept_width]
            positions = ragged_positions(_row_starts(row_out_lengths)[tied], row_out_lengths[tied])
            part[positions] = exact_tokens[out_filled[tied]]
        if isinstance(rows, slice):
            out_tokens[out_offsets[rows.start] : out_offsets[rows.stop]] = part
        else:
            out_tokens[ragged_positions(out_offsets[rows], row_out_lengths)] = part
    return RankedCells(offsets=out_offsets, tokens=out_tokens)


def _row_starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _normalised_keys_inplace(
    values: np.ndarray,
    n_counts: np.ndarray,
    columns: np.ndarray,
    gene_medians: np.ndarray,
    target_sum: float,
    has_negatives: bool,
) -> np.ndarray:
    """Turn counts into normalised values and those into descending-order keys, in the same buffer."""
    values /= n_counts[:, None]
    values *= target_sum
    values /= gene_medians[columns]
    bits = values.view(np.uint64)
    if has_negatives:
        # -0.0 (a negative value that underflowed) must key as +0.0, which it equals
        values += 0.0
        # Negative floats: the raw bit pattern already grows as the value falls, and stays above all positives.
        np.copyto(bits, bits ^ _SIGN_FLIP, where=values >= 0)
    else:
        bits ^= _SIGN_FLIP
    return bits


def _rows_with_truncation_ties(keys: np.ndarray, filled: np.ndarray, token_bits: int) -> np.ndarray:
    """Rows in which two neighbouring sorted keys may share their value bits: their order needs the exact values.

    Sorted keys closer than one token unit may have equal value bits; a few false alarms only cost an exact sort.
    """
    if keys.shape[1] < 2:
        return np.zeros(0, dtype=np.int64)
    close = (keys[:, 1:] - keys[:, :-1]) < np.uint64(1 << token_bits)
    close &= filled[:, 1:]
    return np.flatnonzero(close.any(axis=1))


def truncate_cells(cells: RankedCells, max_length: int) -> RankedCells:
    """Every cell cut to its first `max_length` tokens."""
    lengths = cells.lengths
    if not lengths.size or lengths.max() <= max_length:
        return cells
    kept = np.minimum(lengths, max_length)
    tokens = cells.tokens[ragged_positions(cells.offsets[:-1], kept)]
    return RankedCells(offsets=np.concatenate([[0], np.cumsum(kept)]).astype(np.int64), tokens=tokens)


def add_special_tokens(cells: RankedCells, cls_token: int, eos_token: int) -> RankedCells:
    """Put `cls_token` before and `eos_token` after every cell's tokens (V2 layout)."""
    lengths = cells.lengths
    n_cells = len(lengths)
    offsets = cells.offsets + 2 * np.arange(n_cells + 1, dtype=np.int64)
    tokens = np.empty(cells.tokens.size + 2 * n_cells, dtype=np.int32)
    tokens[offsets[:-1]] = cls_token
    tokens[offsets[1:] - 1] = eos_token
    content = np.arange(cells.tokens.size, dtype=np.int64) + 1 + 2 * np.repeat(np.arange(n_cells), lengths)
    tokens[content] = cells.tokens
    return RankedCells(offsets=offsets, tokens=tokens)


def drop_cells(cells: RankedCells, keep: np.ndarray) -> RankedCells:
    """The cells where `keep` (boolean, one per cell) is true."""
    lengths = cells.lengths[keep]
    positions = ragged_positions(cells.offsets[:-1][keep], lengths)
    return RankedCells(
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), tokens=cells.tokens[positions]
    )
