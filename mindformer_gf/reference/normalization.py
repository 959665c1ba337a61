"""Residual add + LayerNorm in float64, written from the plain formulas: the one oracle of the fused add+LayerNorm
kernels (CPU and Ascend), forward with the row statistics the kernels return and the textbook backward. Named apart
from the function `reference.layer_norm`, which a submodule of that name would shadow.

    z = x + residual,   mean = E[z],   rstd = 1 / sqrt(Var[z] + eps),   y = (z - mean) rstd gamma + beta
    dz = rstd / H (H g - sum(g) - zhat sum(g zhat)),   g = dy gamma,   zhat = (z - mean) rstd
"""

from __future__ import annotations

import numpy as np


def add_layer_norm_forward(
    x: np.ndarray, residual: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y, mean, rstd of LayerNorm(x + residual) over the last axis (residual None: LayerNorm(x))."""
    z = np.asarray(x, np.float64) + (0.0 if residual is None else np.asarray(residual, np.float64))
    mean = z.mean(-1)
    rstd = 1.0 / np.sqrt(((z - mean[..., None]) ** 2).mean(-1) + eps)
    return (z - mean[..., None]) * rstd[..., None] * gamma + beta, mean, rstd


def add_layer_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    residual: np.ndarray | None,
    gamma: np.ndarray,
    eps: float,
    d_mean: np.ndarray | None = None,
    d_rstd: np.ndarray | None = None,
    statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (= d residual), dgamma, dbeta of sum(dy * y) + sum(d_mean * mean) + sum(d_rstd * rstd) for the forward's
    (y, mean, rstd); d mean / dz = 1 / H, d rstd / dz = -rstd^2 zhat / H. `statistics`: the (mean, rstd) the forward
    saved, as the kernels take them (default: recomputed here)."""
    dy = np.asarray(dy, np.float64)
    if statistics is None:
        _, mean, rstd = add_layer_norm_forward(x, residual, np.ones_like(gamma), np.zeros_like(gamma), eps)
    else:
        mean, rstd = (np.asarray(s, np.float64) for s in statistics)
    z = np.asarray(x, np.float64) + (0.0 if residual is None else np.asarray(residual, np.float64))
    zhat = (z - mean[..., None]) * rstd[..., None]
    width = z.shape[-1]
    g = dy * np.asarray(gamma, np.float64)
    dx = rstd[..., None] / width * (width * g - g.sum(-1, keepdims=True) - zhat * (g * zhat).sum(-1, keepdims=True))
    if d_mean is not None:
        dx = dx + np.asarray(d_mean, np.float64)[..., None] / width
    if d_rstd is not None:
        dx = dx - np.asarray(d_rstd, np.float64)[..., None] * rstd[..., None] ** 2 * zhat / width
    axes = tuple(range(dy.ndim - 1))
    return dx, (dy * zhat).sum(axes), dy.sum(axes)
