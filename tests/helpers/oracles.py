"""Float64 numpy oracles for the fused kernels, written from the plain formulas.

The attention oracle (forward with log-sum-exp, backward) is the package's own, `mindformer_gf.reference.attention`;
the LayerNorm backward here is the textbook one.
"""

from __future__ import annotations

import numpy as np

from mindformer_gf.reference.attention import attention_backward, attention_forward

__all__ = [
    "attention_backward",
    "attention_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "relative_error",
]


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
