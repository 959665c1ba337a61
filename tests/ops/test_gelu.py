"""The exact-GELU kernels (kernels/cpu/gelu.cc) against float64 math.erfc, on every instruction-set path.

Oracle: Phi(x) = erfc(-x / sqrt 2) / 2 in float64 (math.erfc: no cancellation in either tail, unlike 1 + erf), so
GELU(x) = x Phi(x) and its derivative Phi(x) + x phi(x) are known to ~1e-16 relative, far below a float32 ulp.
Errors are counted in float32 ulps of the exact value (np.spacing); where the exact GELU is subnormal (x < -13.2)
the kernels may flush to 0, allowed as an absolute error below the smallest normal float (2^-126).

The avx512 and avx512emu tables hold the AVX2 GELU functions (kernels/cpu/README.md, "Exact GELU"), so their cases
run the AVX2 code: the shared skip message of an "avx512" case, about the 16-lane emulation, does not apply here."""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn
from mindspore import ops as msops

from mindformer_gf.ops import cpu, dispatch

SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)
# Measured worst case of the AVX2 evaluation over the dense grid below: see kernels/cpu/README.md ("Exact GELU").
MAX_ULPS = 5.0

_erfc = np.vectorize(math.erfc, otypes=[np.float64])
_exp = np.vectorize(math.exp, otypes=[np.float64])


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * _erfc(-x.astype(np.float64) / math.sqrt(2.0))


def gelu_float64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) * normal_cdf(x)


def gelu_slope_float64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return normal_cdf(x) + x * _exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def ulp_errors(
    actual: np.ndarray, exact: np.ndarray, scale: np.ndarray | None = None, atol: float | np.ndarray = SMALLEST_NORMAL
) -> np.ndarray:
    """|actual - exact| in float32 ulps of `scale` (default |exact|); 0 where the exact value is subnormal and the
    result is within SMALLEST_NORMAL of it (MindSpore's CPU runtime flushes subnormals to zero: even the portable
    table's double-precision result is stored as 0 there)."""
    scale = np.abs(exact) if scale is None else scale
    error = np.abs(actual.astype(np.float64) - exact)
    ulp = np.spacing(np.maximum(scale, SMALLEST_NORMAL).astype(np.float32)).astype(np.float64)
    return np.where((np.abs(exact) < atol) & (error < atol), 0.0, error / ulp)


def dense_grid() -> np.ndarray:
    """Every float32 step of 2^-12 over [-16, 16] (the erf regions' joins at +-0.75 included), a log-spaced sweep of
    magnitudes 1e-45 .. 3e38 of both signs, and random normal values (the encoder's pre-activations)."""
    steps = np.arange(-16.0, 16.0, 2.0**-12, dtype=np.float64).astype(np.float32)
    magnitudes = np.logspace(-45, 38.5, 20000).astype(np.float32)
    joins = np.nextafter(np.float32(0.75), np.array([0.0, 1.0], np.float32))
    rng = np.random.default_rng(0)
    return np.concatenate(
        [steps, magnitudes, -magnitudes, joins, -joins, [0.75, -0.75], rng.standard_normal(50001).astype(np.float32)]
    ).astype(np.float32)


class GeluOp(nn.Cell):
    def construct(self, x):
        return cpu.gelu(x)


class GeluBackwardOp(nn.Cell):
    def construct(self, dy, x):
        return cpu._kernels().gelu_backward(dy, x)


class Loss(nn.Cell):
    def __init__(self, impl: str):
        super().__init__()
        self.impl = impl

    def construct(self, x, w):
        return (dispatch.gelu(x, self.impl) * w).sum()


def test_forward_within_a_few_ulps_of_float64(cpu_isa):
    x = dense_grid()
    y = GeluOp()(Tensor(x)).asnumpy()
    errors = ulp_errors(y, gelu_float64(x))
    print(f"{cpu_isa}: max {errors.max():.2f} ulp at x = {x[errors.argmax()]!r} over {x.size} values")
    assert errors.max() <= MAX_ULPS


def test_forward_edge_values(cpu_isa):
    x = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 10.0, -10.0, np.inf, -np.inf, np.nan], np.float32)
    y = GeluOp()(Tensor(x)).asnumpy()
    # +-0 keep their sign; tiny x give x / 2 (subnormal, which the runtime may flush to 0); GELU(10) = 10 to
    # float32; the limits at +-inf; NaN propagates.
    print(y)
    np.testing.assert_array_equal(np.signbit(y[:2]), [False, True])
    assert y[0] == 0.0 and y[1] == 0.0
    np.testing.assert_allclose(y[2:6], x[2:6].astype(np.float64) / 2, rtol=0, atol=SMALLEST_NORMAL)
    assert y[6] == 10.0
    assert ulp_errors(y[7:8], gelu_float64(x[7:8])).max() <= MAX_ULPS  # -7.6e-23, a tail value
    assert y[8] == np.inf and y[9] == 0.0 and np.signbit(y[9])
    assert np.isnan(y[10])


def test_backward_kernel_matches_float64_derivative(cpu_isa):
    x = dense_grid()
    dy = np.random.default_rng(1).standard_normal(x.size).astype(np.float32)
    dx = GeluBackwardOp()(Tensor(dy), Tensor(x)).asnumpy()
    x64 = x.astype(np.float64)
    exact = dy * gelu_slope_float64(x)
    # Phi + x phi crosses 0 at x = -0.7518: the error is counted against the size of its two terms, the condition
    # of the sum (a float32 evaluation cannot do better than a few ulps of them).
    terms = np.abs(dy) * (normal_cdf(x) + np.abs(x64) * _exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi))
    # Below x = -13.2 exp(-x^2/2) underflows in the SIMD tables, so x phi(x) (< 16 * 2^-126 there) is dropped.
    errors = ulp_errors(dx, exact, terms, atol=16 * SMALLEST_NORMAL * np.maximum(np.abs(dy), 1.0))
    print(f"{cpu_isa}: max {errors.max():.2f} ulp of the terms at x = {x[errors.argmax()]!r}")
    assert errors.max() <= MAX_ULPS


def test_backward_edge_values(cpu_isa):
    x = np.array([0.0, -0.0, 10.0, -10.0, 20.0, -20.0, np.inf, -np.inf, np.nan], np.float32)
    dy = np.full(x.shape, 3.0, np.float32)
    dx = GeluBackwardOp()(Tensor(dy), Tensor(x)).asnumpy()
    np.testing.assert_array_equal(dx[:2], [1.5, 1.5])  # slope 1/2 at 0
    assert dx[2] == 3.0 and abs(dx[3]) < 1e-20  # slope 1 - 7.7e-22 at 10; -7.7e-22 at -10
    np.testing.assert_array_equal(dx[4:8], np.float32([3.0, 0.0, 3.0, 0.0]))
    assert np.isnan(dx[8])


@pytest.mark.parametrize("shape", [(3, 5, 77), (2, 130, 1024), (1,), (0, 4)])
def test_grad_through_the_operator(cpu_isa, shape):
    """ms.grad of sum(gelu(x) w) through the custom operator's bprop, odd sizes and several thread chunks."""
    rng = np.random.default_rng(2)
    x = (2.0 * rng.standard_normal(shape)).astype(np.float32)
    w = rng.standard_normal(shape).astype(np.float32)
    loss = Loss("fused")
    dx = ms.grad(loss, grad_position=0)(Tensor(x), Tensor(w)).asnumpy()
    assert dx.shape == shape
    exact_terms = np.abs(w) * (normal_cdf(x) + np.abs(x) * _exp(-0.5 * x.astype(np.float64) ** 2) / 2.5066)
    assert ulp_errors(dx, w * gelu_slope_float64(x), exact_terms).max(initial=0.0) <= MAX_ULPS
    if x.size == 0:
        assert GeluOp()(Tensor(x)).shape == shape  # (MindSpore's ReduceSum of an empty tensor is not 0 here)
        return
    value = float(loss(Tensor(x), Tensor(w)).asnumpy())
    assert value == pytest.approx(float((gelu_float64(x) * w).sum()), rel=1e-5, abs=1e-5)


def test_fused_and_composed_agree():
    """ops.gelu's two CPU backends: ours and MindSpore's ops.gelu(approximate="none"), values and gradients."""
    rng = np.random.default_rng(3)
    x = (3.0 * rng.standard_normal((4, 33, 256))).astype(np.float32)
    w = rng.standard_normal(x.shape).astype(np.float32)
    results = {}
    for impl in ("fused", "composed"):
        y = dispatch.gelu(Tensor(x), impl).asnumpy()
        dx = ms.grad(Loss(impl), grad_position=0)(Tensor(x), Tensor(w)).asnumpy()
        results[impl] = (y, dx)
    np.testing.assert_allclose(results["fused"][0], results["composed"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results["fused"][1], results["composed"][1], rtol=1e-5, atol=1e-5)
    # and the composed backend is MindSpore's own operator
    np.testing.assert_array_equal(results["composed"][0], msops.gelu(Tensor(x), approximate="none").asnumpy())


def test_float16_is_cast_in_and_out():
    x = np.linspace(-4, 4, 101).astype(np.float16)
    y = GeluOp()(Tensor(x))
    assert y.dtype == ms.float16
    np.testing.assert_allclose(y.asnumpy().astype(np.float64), gelu_float64(x), rtol=2e-3, atol=1e-3)
