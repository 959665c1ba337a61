"""The native rank value encoding kernel (kernels/tokenizer/rank_value_encode.cc) called through ctypes.

The library, `mindformer_gf/tokenizer/_rank_native.<python-suffix>.so`, is built with the package (`pip install -e .`
or `python setup.py build_ext --inplace`). One call encodes a CSR block: gene selection through per-column token and
median tables, normalisation, the exact (value descending, token ascending) order, truncation, the special tokens,
and the counts the tokenizer warns about. Its output is identical to that of the numpy code in `encode.py`, which
runs where the library is missing (with one warning per process).

Every array is checked here (dtype, contiguity, length) before the call, and the kernel checks the CSR structure
(indptr, column and slot bounds, output capacity), so a corrupt file gives an error, not a crash.
"""

from __future__ import annotations

import ctypes
import warnings
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

_LIBRARY_DIR = Path(__file__).resolve().parent
_LIBRARY_GLOB = "_rank_native*.so"
_ABI_VERSION = 2
_DATA_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}
_INDEX_TYPES = {np.dtype(np.int32): 0, np.dtype(np.int64): 1}
_STATUS = {
    1: "bad arguments",
    2: "indptr does not start at 0, decreases or points past the data",
    3: "a column index is outside the matrix",
    4: "the output buffer is too small",
    5: "out of memory",
}
BUILD_HINT = "build it with `pip install -e .` (or `python setup.py build_ext --inplace` in the repository; needs g++)"

_pointer = ctypes.c_void_p
_int32 = ctypes.c_int32
_int64 = ctypes.c_int64


class NativeBlock(NamedTuple):
    """A block encoded by the kernel: row r is `tokens[offsets[r]:offsets[r + 1]]` (special tokens included)."""

    offsets: np.ndarray  # int64, n_rows + 1; rows without an expressed gene are empty
    tokens: np.ndarray  # int32
    expressed: np.ndarray  # int64, n_rows: non-zero dictionary genes of each row before truncation
    negative_values: int
    non_integer_values: int
    non_finite_values: int  # among dictionary genes: a block with any is refused by the callers


def library_path() -> Path | None:
    candidates = sorted(_LIBRARY_DIR.glob(_LIBRARY_GLOB))
    return candidates[0] if candidates else None


@cache
def _library() -> ctypes.CDLL | None:
    path = library_path()
    if path is None:
        return None
    try:
        library = ctypes.CDLL(str(path))
        if library.gf_rank_value_encode_abi() != _ABI_VERSION:
            return None
    except (OSError, AttributeError):
        return None
    function = library.gf_rank_value_encode
    function.restype = _int32
    function.argtypes = [_pointer, _int32, _pointer, _int32, _pointer, _int64, _int64, _pointer, _pointer, _int64]
    function.argtypes += [_pointer, ctypes.c_double, _int64, _int32, _int32, _pointer, _int64, _pointer, _pointer]
    function.argtypes += [_pointer]
    return library


def is_available() -> bool:
    """Whether the kernel library is built and loads."""
    return _library() is not None


_warned_missing = False


def warn_missing_once() -> None:
    """One warning per process that the numpy fallback runs (same output, several times slower)."""
    global _warned_missing
    if not _warned_missing:
        _warned_missing = True
        where = library_path() or _LIBRARY_DIR / _LIBRARY_GLOB
        warnings.warn(
            f"the tokenizer's native kernel is not available ({where} missing or not loadable): using the numpy "
            f"code, which gives the same output several times slower; {BUILD_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )


def _contiguous(array: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=dtype)


def column_tables(
    column_slot: np.ndarray, slot_tokens: np.ndarray, slot_medians: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column token (-1 for columns left out) and median, from a column -> slot map (-1: left out)."""
    column_slot = np.asarray(column_slot, dtype=np.int64)
    slot_tokens = np.asarray(slot_tokens, dtype=np.int64)
    if slot_tokens.size and (slot_tokens.min() < 0 or slot_tokens.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids must be non-negative and fit in int32")
    kept = column_slot >= 0
    if kept.any() and column_slot.max() >= len(slot_tokens):
        raise ValueError(f"a column maps to slot {column_slot.max()} of {len(slot_tokens)}")
    slots = np.where(kept, column_slot, 0)
    tokens = np.where(kept, slot_tokens[slots] if slot_tokens.size else -1, -1).astype(np.int32)
    medians = np.where(kept, np.asarray(slot_medians, dtype=np.float64)[slots] if slot_tokens.size else 1.0, 1.0)
    return tokens, medians


def encode_csr(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    column_tokens: np.ndarray,
    column_medians: np.ndarray,
    n_counts: np.ndarray,
    target_sum: float,
    max_genes: int,
    special_tokens: tuple[int, int] | None = None,
) -> NativeBlock:
    """Rank value encode the CSR rows (data, indices, indptr) of a block with `len(column_tokens)` columns.

    Column c has token `column_tokens[c]` (negative: the column is left out) and median `column_medians[c]`.
    Explicit zeros are left out. At most `max_genes` genes per row, framed by `special_tokens` (cls, eos) when given.
    """
    library = _library()
    if library is None:
        raise RuntimeError(f"the tokenizer's native kernel is not built; {BUILD_HINT}")
    if data.dtype not in _DATA_TYPES:
        # numpy's own conversion, the one the numpy path makes when it copies values into float64
        data = data.astype(np.float64)
    data = _contiguous(data, data.dtype)
    if indices.dtype not in _INDEX_TYPES:
        indices = indices.astype(np.int64)
    indices = _contiguous(indices, indices.dtype)
    indptr = _contiguous(indptr, np.int64)
    column_tokens = _contiguous(column_tokens, np.int32)
    column_medians = _contiguous(column_medians, np.float64)
    n_counts = _contiguous(n_counts, np.float64)
    n_rows = len(indptr) - 1
    if n_rows < 0 or data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1 or len(data) != len(indices):
        raise ValueError(f"not a CSR block: {len(data)} values, {len(indices)} indices, {len(indptr)} indptr entries")
    if column_tokens.ndim != 1 or column_medians.shape != column_tokens.shape or n_counts.shape != (n_rows,):
        raise ValueError(
            f"{len(column_tokens)} column tokens and {len(column_medians)} medians; {n_rows} rows but "
            f"{len(n_counts)} n_counts"
        )
    max_genes = int(max_genes)
    if max_genes < 0:
        raise ValueError(f"max_genes must be non-negative, got {max_genes}")
    cls_token, eos_token = special_tokens if special_tokens is not None else (-1, -1)
    if special_tokens is not None and not all(0 <= t <= np.iinfo(np.int32).max for t in special_tokens):
        raise ValueError(f"special tokens must be non-negative int32 values, got {special_tokens}")
    # an upper bound: explicit zeros and columns left out take room they will not use
    row_sizes = np.minimum(np.diff(indptr), max_genes)
    capacity = int(row_sizes.sum()) + (2 * n_rows if special_tokens is not None else 0)
    tokens = np.empty(capacity, dtype=np.int32)
    offsets = np.empty(n_rows + 1, dtype=np.int64)
    expressed = np.empty(n_rows, dtype=np.int64)
    counts = np.zeros(3, dtype=np.int64)
    status = library.gf_rank_value_encode(
        data.ctypes.data,
        _DATA_TYPES[data.dtype],
        indices.ctypes.data,
        _INDEX_TYPES[indices.dtype],
        indptr.ctypes.data,
        n_rows,
        len(data),
        column_tokens.ctypes.data,
        column_medians.ctypes.data,
        len(column_tokens),
        n_counts.ctypes.data,
        float(target_sum),
        max_genes,
        cls_token,
        eos_token,
        tokens.ctypes.data,
        capacity,
        offsets.ctypes.data,
        expressed.ctypes.data,
        counts.ctypes.data,
    )
    if status != 0:
        raise ValueError(f"malformed sparse matrix: {_STATUS.get(status, f'kernel status {status}')}")
    return NativeBlock(
        offsets=offsets,
        tokens=tokens[: offsets[-1]],
        expressed=expressed,
        negative_values=int(counts[0]),
        non_integer_values=int(counts[1]),
        non_finite_values=int(counts[2]),
    )
