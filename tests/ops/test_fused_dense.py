"""The linear-layer kernels (kernels/cpu/dense.cc) against float64 numpy, on every instruction-set path.

Oracle: y = x W^T + b, dx = dy W, dW = dy^T x, db = sum of dy over the rows, in float64. A float32 product of depth
K is off by at most about K * 2^-24 * sum_p |a_ip b_pj| (the classical bound for a dot product); the tests allow
that bound, so a wrong element, panel or depth block (errors of the size of the values themselves) fails them.
The shapes cross every blocking edge of the kernels: rows past one 48-row task and not a multiple of the
micro-kernel's 6 or 12, columns past one 16-wide panel with a tail, depths past one 256-deep block, and for dW a
reduction over more than one 256-row block."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindformer_gf.ops import cpu, dispatch

UNIT_ROUNDOFF = 2.0**-24

# (leading shape of x, K, N)
SHAPES = [((1,), 1, 1), ((5,), 7, 3), ((49,), 17, 33), ((2, 50), 300, 20), ((600,), 70, 50), ((3, 4, 11), 513, 18)]


class DenseOp(nn.Cell):
    def construct(self, x, weight, bias):
        return cpu.dense(x, weight, bias)


class Loss(nn.Cell):
    """sum(dense(x, W, b) * g): its gradients are dx = g W, dW = g^T x, db = sum of g over the rows."""

    def __init__(self, impl: str = "fused"):
        super().__init__()
        self.impl = impl

    def construct(self, x, weight, bias, g):
        return (dispatch.dense(x, weight, bias, self.impl) * g).sum()


def random_case(leading: tuple[int, ...], k: int, n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*leading, k)).astype(np.float32)
    weight = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal((*leading, n)).astype(np.float32)
    return x, weight, bias, g


def assert_within_product_bound(actual: np.ndarray, a: np.ndarray, b: np.ndarray, extra: np.ndarray | float = 0.0):
    """actual = a @ b (+ extra) within depth * 2^-24 * (|a| @ |b|) + 2^-24 |extra|, all in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    exact = a @ b + extra
    bound = a.shape[-1] * UNIT_ROUNDOFF * (np.abs(a) @ np.abs(b)) + UNIT_ROUNDOFF * np.abs(extra) + 1e-30
    error = np.abs(actual.astype(np.float64) - exact)
    assert actual.shape == exact.shape
    assert (error <= bound).all(), f"worst error {error.max():.3g}, {(error / bound).max():.3g} of the bound"


@pytest.mark.parametrize(("leading", "k", "n"), SHAPES)
def test_forward_matches_float64(cpu_isa, leading, k, n):
    x, weight, bias, _ = random_case(leading, k, n, seed=k + n)
    y = DenseOp()(Tensor(x), Tensor(weight), Tensor(bias)).asnumpy()
    assert y.shape == (*leading, n)
    rows = x.reshape(-1, k)
    assert_within_product_bound(y.reshape(-1, n), rows, weight.T, bias.astype(np.float64))


@pytest.mark.parametrize(("leading", "k", "n"), SHAPES)
def test_gradients_match_float64(cpu_isa, leading, k, n):
    x, weight, bias, g = random_case(leading, k, n, seed=2 * k + n)
    dx, d_weight, d_bias = ms.grad(Loss(), grad_position=(0, 1, 2))(*map(Tensor, (x, weight, bias, g)))
    rows, g_rows = x.reshape(-1, k), g.reshape(-1, n)
    assert_within_product_bound(dx.asnumpy().reshape(-1, k), g_rows, weight)
    assert_within_product_bound(d_weight.asnumpy(), g_rows.T, rows)
    # db accumulates in double: one float32 rounding of the exact sum
    exact_bias = g_rows.astype(np.float64).sum(0)
    np.testing.assert_allclose(d_bias.asnumpy(), exact_bias, rtol=UNIT_ROUNDOFF, atol=1e-6)


def test_no_rows_gives_empty_output_and_zero_weight_gradients():
    x, weight, bias, g = random_case((0,), 8, 5, seed=1)
    assert DenseOp()(Tensor(x), Tensor(weight), Tensor(bias)).shape == (0, 5)
    dx, d_weight, d_bias = cpu._kernels().dense_backward(Tensor(g), Tensor(x), Tensor(weight))
    assert dx.shape == (0, 8)
    np.testing.assert_array_equal(d_weight.asnumpy(), np.zeros((5, 8), np.float32))
    np.testing.assert_array_equal(d_bias.asnumpy(), np.zeros(5, np.float32))


def test_fused_and_composed_agree():
    """ops.dense's two CPU backends (ours and MindSpore's MatMul + BiasAdd, as nn.Dense runs them): values and
    gradients at the encoder's kind of shape."""
    x, weight, bias, g = random_case((2, 130), 256, 512, seed=3)
    results = {}
    for impl in ("fused", "composed"):
        y = dispatch.dense(Tensor(x), Tensor(weight), Tensor(bias), impl).asnumpy()
        grads = ms.grad(Loss(impl), grad_position=(0, 1, 2))(*map(Tensor, (x, weight, bias, g)))
        results[impl] = (y, *(grad.asnumpy() for grad in grads))
    for fused, composed in zip(results["fused"], results["composed"], strict=True):
        np.testing.assert_allclose(fused, composed, rtol=1e-4, atol=1e-3)


def test_model_linear_is_nn_dense_with_the_same_parameters():
    """The model's Linear keeps nn.Dense's parameter names and values, so checkpoints and LoRA see a Dense."""
    from mindformer_gf.model.bert import Linear

    layer = Linear(6, 4, "fused")
    assert isinstance(layer, nn.Dense)
    assert sorted(name.split(".")[-1] for name in layer.parameters_dict()) == ["bias", "weight"]
    x = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
    expected = x.astype(np.float64) @ layer.weight.asnumpy().T.astype(np.float64) + layer.bias.asnumpy()
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_float16_is_cast_in_and_out():
    x, weight, bias, _ = random_case((7,), 9, 5, seed=5)
    y = DenseOp()(Tensor(x.astype(np.float16)), Tensor(weight), Tensor(bias))
    assert y.dtype == ms.float16
    exact = x.astype(np.float16).astype(np.float64) @ weight.T.astype(np.float64) + bias
    np.testing.assert_allclose(y.asnumpy().astype(np.float64), exact, rtol=2e-3, atol=2e-2)


def test_rejects_mismatched_depth(capfd):
    """MindSpore raises on the kernel's non-zero status; the kernel's own line on stderr names the problem."""
    x, weight, bias, _ = random_case((4,), 8, 3, seed=6)
    with pytest.raises(RuntimeError, match="DenseForward"):
        DenseOp()(Tensor(x), Tensor(weight[:, :5]), Tensor(bias))
    assert "x must be [..., K] and weight [N, K] with the same K, got [4, 8] and [3, 5]" in capfd.readouterr().err
