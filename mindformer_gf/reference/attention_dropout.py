"""The attention-dropout mask of the fused kernels, in numpy: the specification both kernels (CPU and Ascend) follow.

For a drop probability p and a uint64 seed, the probability P[b, h, i, j] (cell b, head h of H, query row i, key
column j) is kept iff

    word 0 of Philox4x32-10(counter = (j, i, b * H + h, 0), key = (seed mod 2^32, seed div 2^32)) >= floor(p * 2^32)

with p taken as float32 and the product formed in float64, and what is kept is multiplied by 1 / (1 - p) (in float32).
Philox4x32-10 is the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as
1, 2, 3" (SC'11): ten rounds of two 32 x 32 -> 64-bit multiplications, with a Weyl sequence on the key.

The mask is applied to the normalised probabilities before they multiply V, so
O = (softmax(S) * keep / (1 - p)) V; `attention_with_dropout` is that composition in float64.
"""

from __future__ import annotations

import numpy as np

PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of `counter` (uint32 [..., 4]) under `key` (two uint32 words): uint32 [..., 4]."""
    words = [np.asarray(counter, dtype=np.uint64)[..., index] for index in range(4)]
    key_lo, key_hi = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        product0 = np.uint64(PHILOX_MULTIPLIERS[0]) * words[0]
        product1 = np.uint64(PHILOX_MULTIPLIERS[1]) * words[2]
        words = [
            (product1 >> np.uint64(32)) ^ words[1] ^ np.uint64(key_lo),
            product1 & _LOW32,
            (product0 >> np.uint64(32)) ^ words[3] ^ np.uint64(key_hi),
            product0 & _LOW32,
        ]
        key_lo = (key_lo + PHILOX_WEYL[0]) & 0xFFFFFFFF
        key_hi = (key_hi + PHILOX_WEYL[1]) & 0xFFFFFFFF
    return np.stack(words, axis=-1).astype(np.uint32)


def keep_threshold(drop_probability: float) -> int:
    """floor(p * 2^32) for p as float32: a word at or above it keeps its probability."""
    return min(int(np.floor(np.float64(np.float32(drop_probability)) * 2.0**32)), 0xFFFFFFFF)


def keep_mask(seed: int, drop_probability: float, batch: int, heads: int, rows: int, columns: int) -> np.ndarray:
    """Boolean [batch, heads, rows, columns]: True where the kernel keeps P[b, h, i, j]."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    b, h, i, j = np.meshgrid(
        np.arange(batch, dtype=np.uint64),
        np.arange(heads, dtype=np.uint64),
        np.arange(rows, dtype=np.uint64),
        np.arange(columns, dtype=np.uint64),
        indexing="ij",
    )
    counter = np.stack([j, i, b * np.uint64(heads) + h, np.zeros_like(j)], axis=-1)
    word0 = philox4x32_10(counter, (seed & 0xFFFFFFFF, seed >> 32))[..., 0]
    return word0.astype(np.uint64) >= np.uint64(keep_threshold(drop_probability))


def keep_scale(drop_probability: float) -> float:
    """1 / (1 - p) as the kernels compute it, in float32."""
    return float(np.float32(1.0) / (np.float32(1.0) - np.float32(drop_probability)))


def attention_with_dropout(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    attention_mask: np.ndarray,
    drop_probability: float,
    seed: int,
) -> np.ndarray:
    """Training-mode attention in float64 with the kernels' dropout mask; a row with no valid key gives 0."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (query, key, value))
    batch, heads, length, head_dim = q.shape
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(head_dim)
    valid = np.asarray(attention_mask).astype(bool)[:, None, None, :]
    scores = np.where(valid, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.exp(scores - row_max)
    total = weights.sum(axis=-1, keepdims=True)
    probs = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    if drop_probability > 0.0:
        keep = keep_mask(seed, drop_probability, batch, heads, length, length)
        probs = probs * keep * keep_scale(drop_probability)
    return probs @ v
