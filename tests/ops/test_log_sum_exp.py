"""The row log-sum-exp kernels (kernels/cpu/log_sum_exp.cc) and the cross-entropy built on them, against float64.

Oracle: lse = m + log sum exp(x - m) in float64 with m the row maximum, its gradient d_lse * softmax(x), and the
cross-entropy lse - x[label] over labels != -100. The kernels use the attention kernels' exp (a few float32 ulps),
so the tolerances are a few 1e-7 relative to the row's scale; a wrong row, shift or scale is off by O(1)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindformer_gf.ops import cpu, dispatch
from mindformer_gf.train.objectives import IGNORE_INDEX, summed_cross_entropy


class Weighted(nn.Cell):
    def __init__(self, impl: str = "fused"):
        super().__init__()
        self.impl = impl

    def construct(self, x, g):
        return (dispatch.log_sum_exp(x, self.impl) * g).sum()


def lse_float64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shift = x.max(-1, keepdims=True)
    return (shift + np.log(np.exp(x - shift).sum(-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 4, 1000), (2, 25426)])
def test_values_and_gradient_match_float64(cpu_isa, shape):
    rng = np.random.default_rng(sum(shape))
    x = (4.0 * rng.standard_normal(shape)).astype(np.float32)
    g = rng.standard_normal(shape[:-1]).astype(np.float32)
    lse = cpu.log_sum_exp(Tensor(x)).asnumpy()
    exact = lse_float64(x)
    assert lse.shape == shape[:-1]
    np.testing.assert_allclose(lse, exact, rtol=1e-6, atol=1e-6)
    dx = ms.grad(Weighted())(Tensor(x), Tensor(g)).asnumpy()
    softmax = np.exp(x.astype(np.float64) - exact[..., None])
    np.testing.assert_allclose(dx, g[..., None] * softmax, rtol=1e-5, atol=1e-7)


def test_large_magnitudes_and_infinities():
    """The shift keeps huge logits finite; -inf entries take no probability; a row of -inf gives -inf and no
    gradient (MindSpore's logsumexp would give NaN there)."""
    x = np.array(
        [[1e30, 1e30 - 1e24, -1e30], [0.0, -np.inf, np.log(3.0)], [-np.inf, -np.inf, -np.inf]], dtype=np.float32
    )
    lse = cpu.log_sum_exp(Tensor(x)).asnumpy()
    assert lse[0] == pytest.approx(1e30, rel=1e-6)
    assert lse[1] == pytest.approx(np.log(4.0), rel=1e-6)
    assert lse[2] == -np.inf
    dx = ms.grad(Weighted())(Tensor(x), Tensor(np.ones(3, np.float32))).asnumpy()
    np.testing.assert_allclose(dx[1], [0.25, 0.0, 0.75], rtol=1e-6)
    np.testing.assert_array_equal(dx[2], np.zeros(3, np.float32))


def test_fused_and_composed_agree():
    rng = np.random.default_rng(5)
    x = (3.0 * rng.standard_normal((6, 300))).astype(np.float32)
    g = rng.standard_normal(6).astype(np.float32)
    results = [
        (dispatch.log_sum_exp(Tensor(x), impl).asnumpy(), ms.grad(Weighted(impl))(Tensor(x), Tensor(g)).asnumpy())
        for impl in ("fused", "composed")
    ]
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("impl", ["fused", "composed"])
def test_summed_cross_entropy_matches_float64(impl):
    """(sum of -log softmax[label], labelled count, correct argmax count) with -100 entries ignored, and the
    gradient softmax - onehot on the labelled rows only."""
    rng = np.random.default_rng(6)
    logits = (2.0 * rng.standard_normal((2, 5, 40))).astype(np.float32)
    labels = rng.integers(0, 40, (2, 5)).astype(np.int32)
    labels[0, 1] = labels[1, 4] = IGNORE_INDEX
    labels[1, 0] = int(logits[1, 0].argmax())  # at least one right prediction

    class Loss(nn.Cell):
        def construct(self, logits, labels):
            return summed_cross_entropy(logits, labels, impl)[0]

    loss, count, correct = (t.asnumpy() for t in summed_cross_entropy(Tensor(logits), Tensor(labels), impl))
    keep = labels != IGNORE_INDEX
    rows, rows_labels = logits[keep].astype(np.float64), labels[keep]
    exact = lse_float64(rows) - rows[np.arange(rows.shape[0]), rows_labels]
    assert float(loss) == pytest.approx(exact.sum(), rel=1e-6)
    assert float(count) == keep.sum()
    assert float(correct) == (rows.argmax(-1) == rows_labels).sum()
    grad = ms.grad(Loss())(Tensor(logits), Tensor(labels)).asnumpy()
    expected = np.zeros(logits.shape)
    softmax = np.exp(rows - lse_float64(rows)[:, None])
    softmax[np.arange(rows.shape[0]), rows_labels] -= 1.0
    expected[keep] = softmax
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
