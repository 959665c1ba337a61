"""The fused residual add + LayerNorm kernels (kernels/cpu/add_layer_norm.cc) against float64 numpy, finite
differences and the composed MindSpore path, in graph mode, on both instruction-set paths."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from helpers.oracles import layer_norm_backward, layer_norm_forward, relative_error
from mindspore import Tensor, nn

from mindformer_gf.ops import cpu, dispatch

TOLERANCE = 1e-5
EPS = 1e-12


class AddLayerNormOp(nn.Cell):
    """The raw operator, with its saved statistics: (y, mean, rstd)."""

    def construct(self, x, residual, weight, bias, eps):
        return cpu._kernels().add_layer_norm_forward(x, residual, weight, bias, eps)


class StatisticsLoss(nn.Cell):
    """sum(y w) + sum(mean w_mean) + sum(rstd w_rstd): reaches every output's gradient path in the backward."""

    def construct(self, x, residual, weight, bias, eps, w, w_mean, w_rstd):
        y, mean, rstd = cpu._kernels().add_layer_norm_forward(x, residual, weight, bias, eps)
        return (y * w).sum() + (mean * w_mean).sum() + (rstd * w_rstd).sum()


class Loss(nn.Cell):
    def __init__(self, impl: str, with_residual: bool):
        super().__init__()
        self.impl = impl
        self.with_residual = with_residual

    def construct(self, x, residual, weight, bias, w):
        if self.with_residual:
            y = dispatch.add_layer_norm(x, residual, weight, bias, EPS, impl=self.impl)
        else:
            y = dispatch.layer_norm(x, weight, bias, EPS, impl=self.impl)
        return (y * w).sum()


def random_rows(shape, seed=0):
    rng = np.random.default_rng(seed)
    width = shape[-1]
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)
    residual = rng.standard_normal(shape).astype(np.float32)
    weight = (1.0 + 0.1 * rng.standard_normal(width)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(width)).astype(np.float32)
    w = rng.standard_normal(shape).astype(np.float32)
    return x, residual, weight, bias, w


# Widths of the Geneformer models (256, 512) and one that is not a multiple of the 8-float vectors; 2-D and 3-D.
SHAPES = [(4, 37, 256), (130, 512), (3, 5, 77), (1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64(cpu_isa, shape):
    x, residual, weight, bias, _ = random_rows(shape)
    y, mean, rstd = (
        t.asnumpy() for t in AddLayerNormOp()(*map(Tensor, (x, residual, weight, bias)), Tensor([EPS], ms.float32))
    )
    expected_y, expected_mean, expected_rstd = layer_norm_forward(x, residual, weight, bias, EPS)
    assert y.shape == shape and mean.shape == shape[:-1] and rstd.shape == shape[:-1]
    if shape[-1] == 1:
        # One feature: z - mean is 0 and the output is the bias, with rstd = 1/sqrt(eps).
        np.testing.assert_allclose(y, np.broadcast_to(bias, shape), rtol=0, atol=0)
        return
    assert relative_error(y, expected_y) <= TOLERANCE
    assert relative_error(mean, expected_mean) <= TOLERANCE
    assert relative_error(rstd, expected_rstd) <= TOLERANCE


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("with_residual", [True, False])
def test_backward_matches_float64(cpu_isa, shape, with_residual):
    x, residual, weight, bias, w = random_rows(shape, seed=1)
    grads = ms.grad(Loss("fused", with_residual), grad_position=(0, 1, 2, 3))(
        *map(Tensor, (x, residual, weight, bias, w))
    )
    dx, dresidual, dweight, dbias = (g.asnumpy() for g in grads)
    expected_dx, expected_dweight, expected_dbias = layer_norm_backward(
        w, x, residual if with_residual else None, weight, EPS
    )
    assert relative_error(dx, expected_dx) <= TOLERANCE
    if with_residual:
        np.testing.assert_array_equal(dresidual, dx)
    else:
        assert np.all(dresidual == 0.0)
    assert relative_error(dweight, expected_dweight) <= TOLERANCE
    assert relative_error(dbias, expected_dbias) <= TOLERANCE


def test_all_outputs_match_finite_differences(cpu_isa):
    """Gradients through y and through the saved mean and rstd, against central differences."""
    x, residual, weight, bias, w = random_rows((3, 12), seed=2)
    rng = np.random.default_rng(3)
    w_mean, w_rstd = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    eps = np.array([1e-3], np.float32)  # rstd of order 1, so its term is as large as the others
    loss = StatisticsLoss()
    fixed = [Tensor(eps), Tensor(w), Tensor(w_mean), Tensor(w_rstd)]
    inputs = [x, residual, weight, bias]
    grads = [g.asnumpy() for g in ms.grad(loss, grad_position=(0, 1, 2, 3))(*map(Tensor, inputs), *fixed)]
    step = 1e-2
    for position in range(4):
        direction = rng.standard_normal(inputs[position].shape).astype(np.float32)
        plus, minus = list(inputs), list(inputs)
        plus[position] = plus[position] + step * direction
        minus[position] = minus[position] - step * direction
        numeric = (
            float(loss(*map(Tensor, plus), *fixed).asnumpy()) - float(loss(*map(Tensor, minus), *fixed).asnumpy())
        ) / (2 * step)
        analytic = float((grads[position].astype(np.float64) * direction).sum())
        assert analytic == pytest.approx(numeric, rel=2e-3, abs=2e-3)


@pytest.mark.parametrize("with_residual", [True, False])
def test_fused_and_composed_agree(with_residual):
    x, residual, weight, bias, w = random_rows((2, 50, 256), seed=4)
    results = {}
    for impl in ("fused", "composed"):
        loss = Loss(impl, with_residual)
        args = list(map(Tensor, (x, residual, weight, bias, w)))
        grads = ms.grad(loss, grad_position=(0, 2, 3))(*args)
        results[impl] = [float(loss(*args).asnumpy())] + [g.asnumpy() for g in grads]
    assert results["fused"][0] == pytest.approx(results["composed"][0], rel=1e-5)
    for fused_grad, composed_grad in zip(results["fused"][1:], results["composed"][1:], strict=True):
        assert relative_error(fused_grad, composed_grad) <= TOLERANCE


def test_dynamic_rows_compile_once():
    class Net(nn.Cell):
        def construct(self, x, residual, weight, bias):
            return dispatch.add_layer_norm(x, residual, weight, bias, EPS, impl="fused")

    net = Net()
    dynamic = Tensor(shape=[None, None, 64], dtype=ms.float32)
    net.set_inputs(dynamic, dynamic, Tensor(shape=[64], dtype=ms.float32), Tensor(shape=[64], dtype=ms.float32))
    for rows in (3, 17, 1):
        x, residual, weight, bias, _ = random_rows((2, rows, 64), seed=rows)
        y = net(*map(Tensor, (x, residual, weight, bias))).asnumpy()
        assert relative_error(y, layer_norm_forward(x, residual, weight, bias, EPS)[0]) <= TOLERANCE
    assert len(net.compile_cache) == 1


def test_dynamic_rows_gradients_compile_once():
    class Gradients(nn.Cell):
        def __init__(self):
            super().__init__()
            self.loss = Loss("fused", True)

        def construct(self, x, residual, weight, bias, w):
            return ms.grad(self.loss, grad_position=(0, 2, 3))(x, residual, weight, bias, w)

    net = Gradients()
    dynamic = Tensor(shape=[None, None, 64], dtype=ms.float32)
    parameter = Tensor(shape=[64], dtype=ms.float32)
    net.set_inputs(dynamic, dynamic, parameter, parameter, dynamic)
    for rows in (3, 17, 1):
        x, residual, weight, bias, w = random_rows((2, rows, 64), seed=rows)
        grads = net(*map(Tensor, (x, residual, weight, bias, w)))
        for actual, reference in zip(grads, layer_norm_backward(w, x, residual, weight, EPS), strict=True):
            assert relative_error(actual.asnumpy(), reference) <= TOLERANCE
    assert len(net.compile_cache) == 1


def test_wrong_weight_rank_is_named_before_the_kernel_runs():
    x, residual, weight, bias, w = random_rows((2, 8), seed=6)
    with pytest.raises(ValueError, match="weight, bias must be vectors, got ranks 2, 2, 1"):
        Loss("fused", True)(*map(Tensor, (x, residual, np.diag(weight), bias, w)))


def test_rejects_mismatched_weight(capfd):
    """MindSpore raises on the kernel's non-zero status; the kernel's own line on stderr names the problem."""
    x, residual, weight, bias, _ = random_rows((2, 8), seed=5)
    with pytest.raises(RuntimeError, match="AddLayerNormForward"):
        AddLayerNormOp()(*map(Tensor, (x, residual, weight[:4], bias)), Tensor([EPS], ms.float32))
    assert "weight and bias must be [8], got [4]" in capfd.readouterr().err
