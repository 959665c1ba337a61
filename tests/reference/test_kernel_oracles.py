"""The float64 oracles every fused kernel is judged by (`reference.attention`, `reference.normalization`): their
backward against central finite differences of their own forward, and the edge cases the kernels rely on."""

from __future__ import annotations

import numpy as np
import pytest

from mindformer_gf.reference.attention import attention_backward, attention_forward
from mindformer_gf.reference.attention_dropout import keep_mask, keep_scale
from mindformer_gf.reference.errors import relative_error
from mindformer_gf.reference.normalization import add_layer_norm_backward, add_layer_norm_forward


def _finite_difference(function, array: np.ndarray, step: float = 1e-6) -> np.ndarray:
    gradient = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + step
        plus = function()
        array[index] = saved - step
        minus = function()
        array[index] = saved
        gradient[index] = (plus - minus) / (2 * step)
    return gradient


@pytest.mark.parametrize("drop", [0.0, 0.25])
def test_attention_backward_matches_finite_differences_with_and_without_dropout(drop):
    rng = np.random.default_rng(1)
    q, k, v, d_out = (rng.standard_normal((1, 2, 5, 3)) for _ in range(4))
    d_lse = rng.standard_normal((1, 2, 5))
    mask = np.array([[1, 1, 0, 1, 0]], np.int32)
    keep = keep_mask(5, drop, 1, 2, 5, 5) if drop else None
    scale = keep_scale(drop) if drop else 1.0
    grads = attention_backward(q, k, v, mask, d_out, keep, scale, d_lse)

    def loss():
        out, lse = attention_forward(q, k, v, mask, keep, scale)
        return float((out * d_out).sum() + (lse * d_lse).sum())

    for actual, tensor in zip(grads, (q, k, v), strict=True):
        np.testing.assert_allclose(actual, _finite_difference(loss, tensor), rtol=1e-6, atol=1e-8)


def test_attention_of_a_cell_without_keys_is_zero_with_zero_lse():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 11, 4)) for _ in range(3))
    mask = (np.arange(11)[None, :] < np.array([7, 0])[:, None]).astype(np.int32)
    out, lse = attention_forward(q, k, v, mask)
    assert (out[1] == 0).all() and (lse[1] == 0).all()
    # LSE by hand for one row of the other cell: log sum over its 7 valid keys of exp(q.k / sqrt(d))
    scores = q[0, 1, 4] @ k[0, 1, :7].T / 2.0
    assert lse[0, 1, 4] == pytest.approx(np.log(np.exp(scores).sum()), abs=1e-12)


def test_add_layer_norm_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    x, residual, dy = (rng.standard_normal((3, 8)) for _ in range(3))
    weight, bias = rng.standard_normal(8), rng.standard_normal(8)
    y, mean, rstd = add_layer_norm_forward(x, residual, weight, bias, 1e-12)
    z = x + residual
    np.testing.assert_allclose(mean, z.mean(-1), atol=1e-12)
    np.testing.assert_allclose(rstd, 1.0 / z.std(-1), rtol=1e-12)
    dx, d_weight, d_bias = add_layer_norm_backward(dy, x, residual, weight, 1e-12)

    def loss():
        return float((add_layer_norm_forward(x, residual, weight, bias, 1e-12)[0] * dy).sum())

    np.testing.assert_allclose(dx, _finite_difference(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dx, _finite_difference(loss, residual), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_weight, _finite_difference(loss, weight), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_bias, _finite_difference(loss, bias), rtol=1e-5, atol=1e-7)


def test_add_layer_norm_backward_of_the_statistics_matches_finite_differences():
    rng = np.random.default_rng(3)
    x, residual, dy = (rng.standard_normal((3, 8)) for _ in range(3))
    weight, bias = rng.standard_normal(8), rng.standard_normal(8)
    d_mean, d_rstd = rng.standard_normal(3), rng.standard_normal(3)
    dx, _, _ = add_layer_norm_backward(dy, x, residual, weight, 1e-5, d_mean, d_rstd)

    def loss():
        y, mean, rstd = add_layer_norm_forward(x, residual, weight, bias, 1e-5)
        return float((y * dy).sum() + (mean * d_mean).sum() + (rstd * d_rstd).sum())

    np.testing.assert_allclose(dx, _finite_difference(loss, x), rtol=1e-5, atol=1e-7)
    # given the forward's own statistics, the same gradient
    _, mean, rstd = add_layer_norm_forward(x, residual, weight, bias, 1e-5)
    given = add_layer_norm_backward(dy, x, residual, weight, 1e-5, d_mean, d_rstd, statistics=(mean, rstd))
    np.testing.assert_allclose(given[0], dx, atol=1e-12)


def test_relative_error_is_the_normwise_error():
    assert relative_error(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == pytest.approx(0.25)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
