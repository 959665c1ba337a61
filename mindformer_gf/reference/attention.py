"""Attention in numpy, written from the plain formulas (full score matrices, no tiling): the one oracle of the
attention formula, forward (with the log-sum-exp of each row) and backward, with or without the dropout mask.

    S = Q K^T / sqrt(d) over the valid keys (mask 1),   P = softmax(S) row by row,   O = (P o Z / (1 - p)) V
    LSE_i = log sum_j exp(S_ij)   (0 for a row without any valid key, whose O is 0 too)

The reference model (`reference.bert`) runs it in the dtype of its inputs; the kernel tests and tools run it in
float64 (the default of `attention_forward` / `attention_backward`). Independent of the kernels' algorithm: the
backward uses D = rowsum(P o dP) rather than the kernels' rowsum(dO o O). Row chunks only bound the memory at
L = 4096.
"""

from __future__ import annotations

import numpy as np

from mindformer_gf.reference.attention_dropout import keep_mask, keep_scale

ROW_CHUNK = 1024


def _probabilities(q: np.ndarray, k: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, row max, row sum of exp(S - row max)) of the rows in q; rows without a valid key have P = 0."""
    scores = np.where(valid, q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]), -np.inf)
    row_max = scores.max(-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0).astype(scores.dtype)
    weights = np.exp(scores - row_max)
    total = weights.sum(-1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0), row_max, total


def _cast(dtype: type | None, *arrays: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(a) if dtype is None else np.asarray(a, dtype) for a in arrays]


def _row_chunks(q: np.ndarray, k: np.ndarray, mask: np.ndarray):
    """(rows, P, row max, row sum) for each chunk of query rows (the chunks only bound the memory)."""
    valid = np.asarray(mask).astype(bool)[:, None, None, :]
    for start in range(0, q.shape[2], ROW_CHUNK):
        rows = slice(start, start + ROW_CHUNK)
        yield (rows, *_probabilities(q[:, :, rows], k, valid))


def attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray,
    keep: np.ndarray | None = None,
    keep_scale: float = 1.0,
    dtype: type | None = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """O [B, H, L, D] and LSE [B, H, L] (LSE = 0 where a row has no valid key); keep: dropout mask [B, H, L, L],
    kept entries scaled by keep_scale. In `dtype` (None: the inputs' own)."""
    q, k, v = _cast(dtype, q, k, v)
    out = np.zeros(q.shape[:-1] + v.shape[-1:], q.dtype)
    lse = np.zeros(q.shape[:-1], q.dtype)
    for rows, probs, row_max, total in _row_chunks(q, k, mask):
        if keep is not None:
            probs = probs * keep[:, :, rows] * keep_scale
        out[:, :, rows] = probs @ v
        lse[:, :, rows] = np.where(total[..., 0] > 0, row_max[..., 0] + np.log(np.maximum(total[..., 0], 1e-300)), 0.0)
    return out, lse


def attention_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray,
    d_out: np.ndarray,
    keep: np.ndarray | None = None,
    keep_scale: float = 1.0,
    d_lse: np.ndarray | None = None,
    dtype: type | None = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dQ, dK, dV of O = (softmax(s Q K^T + mask) o Z) V (and LSE) for upstream gradients d_out (and d_lse)."""
    q, k, v, d_out = _cast(dtype, q, k, v, d_out)
    scale = 1.0 / np.sqrt(q.shape[-1])
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for rows, probs, _, _ in _row_chunks(q, k, mask):
        factor = 1.0 if keep is None else keep[:, :, rows] * keep_scale
        dv += np.swapaxes(probs * factor, -1, -2) @ d_out[:, :, rows]
        d_probs = (d_out[:, :, rows] @ np.swapaxes(v, -1, -2)) * factor
        d_scores = probs * (d_probs - (probs * d_probs).sum(-1, keepdims=True))
        if d_lse is not None:
            # d LSE_i / d S_ij = P_ij
            d_scores += probs * np.asarray(d_lse, q.dtype)[:, :, rows, None]
        dq[:, :, rows] = scale * d_scores @ k
        dk += scale * np.swapaxes(d_scores, -1, -2) @ q[:, :, rows]
    return dq, dk, dv


def scaled_dot_product_attention(
    query: np.ndarray, key: np.ndarray, value: np.ndarray, attention_mask: np.ndarray
) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) v over [batch, heads, length, d] in the inputs' dtype, keys with mask 0 excluded.

    A row whose cell has no valid key at all (length 0) attends to nothing and returns 0.
    """
    return attention_forward(query, key, value, attention_mask, dtype=None)[0]


def attention_with_dropout(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    attention_mask: np.ndarray,
    drop_probability: float,
    seed: int,
) -> np.ndarray:
    """Training-mode attention in float64 with the kernels' dropout mask (`reference.attention_dropout`)."""
    if drop_probability <= 0.0:
        return attention_forward(query, key, value, attention_mask)[0]
    batch, heads, length, _ = np.shape(query)
    keep = keep_mask(seed, drop_probability, batch, heads, length, length)
    return attention_forward(query, key, value, attention_mask, keep, keep_scale(drop_probability))[0]
