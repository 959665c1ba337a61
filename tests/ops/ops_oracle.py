"""Float64 numpy oracles for the fused kernels, written from the plain formulas (full score matrices, no tiling).

Independent of the kernels' algorithm: the backward uses D = rowsum(P o dP) rather than the kernels' rowsum(dO o O),
and the LayerNorm backward is the textbook one. Row chunks only bound the memory at L = 4096.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1024


def attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray,
    keep: np.ndarray | None = None,
    keep_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """O [B, H, L, D] and LSE [B, H, L] (LSE = 0 where a row has no valid key); keep: dropout mask [B, H, L, L]."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1])
    valid = np.asarray(mask).astype(bool)[:, None, None, :]
    out = np.zeros_like(q)
    lse = np.zeros(q.shape[:-1])
    for start in range(0, q.shape[2], CHUNK):
        rows = slice(start, start + CHUNK)
        scores = np.where(valid, q[:, :, rows] @ np.swapaxes(k, -1, -2) * scale, -np.inf)
        row_max = scores.max(-1, keepdims=True)
        row_max = np.where(np.isfinite(row_max), row_max, 0.0)
        weights = np.exp(scores - row_max)
        total = weights.sum(-1, keepdims=True)
        probs = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dQ, dK, dV of O = (softmax(s Q K^T + mask) o Z) V (and LSE) for upstream gradients d_out (and d_lse)."""
    q, k, v, d_out = (np.asarray(t, np.float64) for t in (q, k, v, d_out))
    scale = 1.0 / np.sqrt(q.shape[-1])
    valid = np.asarray(mask).astype(bool)[:, None, None, :]
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for start in range(0, q.shape[2], CHUNK):
        rows = slice(start, start + CHUNK)
        scores = np.where(valid, q[:, :, rows] @ np.swapaxes(k, -1, -2) * scale, -np.inf)
        row_max = scores.max(-1, keepdims=True)
        row_max = np.where(np.isfinite(row_max), row_max, 0.0)
        weights = np.exp(scores - row_max)
        total = weights.sum(-1, keepdims=True)
        probs = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
        factor = 1.0 if keep is None else keep[:, :, rows] * keep_scale
        dv += np.swapaxes(probs * factor, -1, -2) @ d_out[:, :, rows]
        d_probs = (d_out[:, :, rows] @ np.swapaxes(v, -1, -2)) * factor
        d_scores = probs * (d_probs - (probs * d_probs).sum(-1, keepdims=True))
        if d_lse is not None:
            # d LSE_i / d S_ij = P_ij
            d_scores += probs * np.asarray(d_lse, np.float64)[:, :, rows, None]
        dq[:, :, rows] = scale * d_scores @ k
        dk += scale * np.swapaxes(d_scores, -1, -2) @ q[:, :, rows]
    return dq, dk, dv


def layer_norm_forward(
    x: np.ndarray, residual: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y, mean, rstd of LayerNorm(x + residual) over the last axis."""
    z = np.asarray(x, np.float64) + (0.0 if residual is None else np.asarray(residual, np.float64))
    mean = z.mean(-1)
    rstd = 1.0 / np.sqrt(((z - mean[..., None]) ** 2).mean(-1) + eps)
    return (z - mean[..., None]) * rstd[..., None] * gamma + beta, mean, rstd


def layer_norm_backward(
    dy: np.ndarray, x: np.ndarray, residual: np.ndarray | None, gamma: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (= dresidual), dgamma, dbeta of sum(dy * LayerNorm(x + residual))."""
    dy = np.asarray(dy, np.float64)
    _, mean, rstd = layer_norm_forward(x, residual, np.ones_like(gamma), np.zeros_like(gamma), eps)
    z = np.asarray(x, np.float64) + (0.0 if residual is None else np.asarray(residual, np.float64))
    zhat = (z - mean[..., None]) * rstd[..., None]
    width = z.shape[-1]
    g = dy * gamma
    dx = rstd[..., None] / width * (width * g - g.sum(-1, keepdims=True) - zhat * (g * zhat).sum(-1, keepdims=True))
    axes = tuple(range(dy.ndim - 1))
    return dx, (dy * zhat).sum(axes), dy.sum(axes)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: the normwise error of a whole tensor."""
    expected = np.asarray(expected, np.float64)
    scale = np.abs(expected).max()
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / (scale if scale > 0 else 1.0))
