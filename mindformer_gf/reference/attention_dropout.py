"""The attention-dropout mask of the fused kernels, in numpy: the specification both kernels (CPU and Ascend) follow.

For a drop probability p and a uint64 seed, the probability P[b, h, i, j] (cell b, head h of H, query row i, key
column j) is kept iff the 32-bit word

    head_key  = mix32(seed_lo ^ mix32(seed_hi ^ mix32(b * H + h)))     once per (seed, head)
    row_key   = mix32(head_key ^ mix32(i))                               once per row
    code_j    = mix32(head_key + j)                                      once per (head, column)
    word      = mix32(row_key + code_j)                                  per entry: one add and one mix32

(seed_lo, seed_hi = seed mod 2^32, seed div 2^32; all arithmetic modulo 2^32) satisfies

    word >> 8  >=  floor(p * 2^24)

with p taken as float32 and the product formed in float64; what is kept is multiplied by 1 / (1 - p) (in float32).

mix32 is the 32-bit multiply-xorshift finaliser x ^= x >> 16; x *= 0x45D9F3B; x ^= x >> 16; x *= 0x45D9F3B;
x ^= x >> 16, an integer hash found by Thomas Mueller's search ("hash-prospector" lists it among the good 32-bit
finalisers): a bijection of 32-bit words with good avalanche. Why this generator: the Ascend A2 vector unit, where
the mask is made, has 32-bit add, low-half multiply by a scalar, shifts and 16-bit and/or, but no xor and no
high-half or 64-bit multiply. Philox4x32-10 (used before) needs ten rounds of 32 x 32 -> 64-bit products, about 550
vector instructions per chunk of rows; here the per-entry work is one add and one mix32 (two multiplies, three
xorshifts with xor as (a | b) - (a & b)), about 20 instructions, and the keys of heads and rows are a few scalar
operations. The 24-bit threshold makes the keep test on Ascend an exact fp32 compare (word >> 8 < 2^24 converts to
fp32 exactly). The CPU kernels compute the same words, so a seed drops the same entries on both devices.
Why the column codes depend on the head: row keys are 32-bit, so among the ~1e6 (head, row) pairs of a step (64
cells x 4 heads x 4,096 rows) about a hundred pairs share a row key. Within a head that cannot happen (i -> row_key
is a bijection); across heads, codes of their own make two rows with the same key still draw different masks. The
head's offset costs nothing per entry: the codes of a key block are mix32 of (head_key + first column) + lane.

The mask is applied to the normalised probabilities before they multiply V, so
O = (softmax(S) * keep / (1 - p)) V; `reference.attention.attention_with_dropout` is that composition in float64.
"""

from __future__ import annotations

import numpy as np

MIX_MULTIPLIER = 0x45D9F3B
LOW32 = 0xFFFFFFFF
THRESHOLD_BITS = 24


def mix32(x):
    """The multiply-xorshift finaliser of the low 32 bits of x: a Python int for an int, else uint32 numpy values.

    The multiplier is below 2^27, so every product fits a signed 64-bit integer, as it must in the training graph's
    int64 arithmetic (mindformer_gf.model.dropout); numpy values are worked in uint64 for the same reason."""
    low32, multiplier, shift = LOW32, MIX_MULTIPLIER, 16
    if not isinstance(x, int):
        x = np.asarray(x).astype(np.uint64)
        low32, multiplier, shift = np.uint64(LOW32), np.uint64(MIX_MULTIPLIER), np.uint64(16)
    x = x & low32
    x = (((x >> shift) ^ x) * multiplier) & low32
    x = (((x >> shift) ^ x) * multiplier) & low32
    x = (x >> shift) ^ x
    return x if isinstance(x, int) else x.astype(np.uint32)


def head_key(seed: int, outer) -> np.ndarray:
    """The key of head `outer` (= b * H + h) under `seed` (uint64): uint32, outer's shape."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return mix32((seed & LOW32) ^ mix32((seed >> 32) ^ mix32(np.asarray(outer))))


def row_key(seed: int, outer, row) -> np.ndarray:
    """The key of query row `row` of head `outer`: uint32, the broadcast shape of outer and row."""
    return mix32(head_key(seed, outer) ^ mix32(np.asarray(row)))


def column_code(head, column) -> np.ndarray:
    """The code of key column `column` in the head whose key is `head` (a head_key): uint32."""
    return mix32(np.asarray(head).astype(np.uint64) + np.asarray(column).astype(np.uint64))


def dropout_words(seed: int, outer, row, column) -> np.ndarray:
    """The 32-bit word that decides P[outer, row, column]: uint32, the broadcast shape of the three indices."""
    codes = column_code(head_key(seed, outer), column)
    return mix32(row_key(seed, outer, row).astype(np.uint64) + codes)


def keep_threshold(drop_probability: float) -> int:
    """floor(p * 2^24) for p as float32: an entry whose word >> 8 is at or above it is kept."""
    scaled = np.floor(np.float64(np.float32(drop_probability)) * 2.0**THRESHOLD_BITS)
    return min(int(scaled), 1 << THRESHOLD_BITS)


def keep_mask(seed: int, drop_probability: float, batch: int, heads: int, rows: int, columns: int) -> np.ndarray:
    """Boolean [batch, heads, rows, columns]: True where the kernel keeps P[b, h, i, j]."""
    outer = np.arange(batch * heads, dtype=np.uint32).reshape(batch, heads, 1, 1)
    row = np.arange(rows, dtype=np.uint32).reshape(rows, 1)
    column = np.arange(columns, dtype=np.uint32)
    words = dropout_words(seed, outer, row, column)
    return (words >> np.uint32(32 - THRESHOLD_BITS)) >= np.uint32(keep_threshold(drop_probability))


def keep_scale(drop_probability: float) -> float:
    """1 / (1 - p) as the kernels compute it, in float32."""
    return float(np.float32(1.0) / (np.float32(1.0) - np.float32(drop_probability)))
