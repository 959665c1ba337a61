"""The fused attention kernel (kernels/cpu/flash_attention.cc) against float64 numpy, finite differences and the
composed MindSpore path, in graph mode, on both instruction-set paths."""

from __future__ import annotations

import ctypes

import mindspore as ms
import numpy as np
import pytest
from helpers.fused_ops import TOLERANCE, AttentionLoss, random_problem, run_forward, run_gradients
from helpers.oracles import attention_backward, attention_forward, relative_error
from mindspore import Tensor, nn

from mindformer_gf.ops import cpu, dispatch

# (length, head_dim, per-cell lengths): not multiples of the 64 x 128 tiles or of the 16-wide panels, a block boundary
# crossed by one key (129), length 1, and a cell that is all padding.
CASES = [
    (200, 64, [200, 129, 1, 0]),
    (77, 32, [77, 50, 0]),
    (1, 64, [1, 0]),
    (130, 40, [130, 17]),
]


@pytest.mark.parametrize("sequence_major", [False, True])
@pytest.mark.parametrize(("length", "head_dim", "lengths"), CASES)
def test_forward_matches_float64(cpu_isa, length, head_dim, lengths, sequence_major):
    q, k, v, mask = random_problem(len(lengths), 3, length, head_dim, lengths)
    out, lse = run_forward(q, k, v, mask, sequence_major=sequence_major)
    expected_out, expected_lse = attention_forward(q, k, v, mask)
    assert relative_error(out, expected_out) <= TOLERANCE
    has_keys = np.array(lengths) > 0
    assert relative_error(lse[has_keys], expected_lse[has_keys]) <= TOLERANCE
    # No valid key: zeros out, a finite LSE, no NaN anywhere.
    assert np.all(out[~has_keys] == 0.0)
    assert np.all(np.isfinite(lse)) and np.all(np.isfinite(out))


@pytest.mark.parametrize("sequence_major", [False, True])
@pytest.mark.parametrize(("length", "head_dim", "lengths"), CASES)
def test_backward_matches_float64(cpu_isa, length, head_dim, lengths, sequence_major):
    q, k, v, mask = random_problem(len(lengths), 2, length, head_dim, lengths, seed=1)
    rng = np.random.default_rng(2)
    w_out = rng.standard_normal(q.shape).astype(np.float32)
    w_lse = rng.standard_normal(q.shape[:-1]).astype(np.float32)
    dq, dk, dv = run_gradients(q, k, v, mask, w_out, w_lse, sequence_major=sequence_major)
    expected = attention_backward(q, k, v, mask, w_out, d_lse=w_lse)
    for actual, reference in zip((dq, dk, dv), expected, strict=True):
        assert np.all(np.isfinite(actual))
        assert relative_error(actual, reference) <= TOLERANCE


@pytest.mark.parametrize(("heads", "sequence_major"), [(1, False), (2, True)])
def test_long_cell_forward_and_backward(heads, sequence_major):
    """L = 4096 with 3999 valid keys: many key blocks, a partial last one, query rows past the cell's length; few
    (cell, head) pairs, so the backward splits key blocks across threads and sums partial dQ copies."""
    q, k, v, mask = random_problem(1, heads, 4096, 64, [3999], seed=3)
    out, lse = run_forward(q, k, v, mask, sequence_major=sequence_major)
    expected_out, expected_lse = attention_forward(q, k, v, mask)
    assert relative_error(out, expected_out) <= TOLERANCE
    assert relative_error(lse, expected_lse) <= TOLERANCE
    w_out = np.random.default_rng(4).standard_normal(q.shape).astype(np.float32)
    w_lse = np.zeros(q.shape[:-1], np.float32)
    grads = run_gradients(q, k, v, mask, w_out, w_lse, sequence_major=sequence_major)
    for actual, reference in zip(grads, attention_backward(q, k, v, mask, w_out), strict=True):
        assert relative_error(actual, reference) <= TOLERANCE


def test_large_scores_do_not_overflow(cpu_isa):
    """Queries x100 give scores in the hundreds, far past exp's float32 overflow at 88: the online softmax must stay
    finite and exact."""
    q, k, v, mask = random_problem(2, 2, 150, 64, [150, 90], seed=5, scale=100.0)
    out, lse = run_forward(q, k, v, mask)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))
    assert np.abs(lse).max() > 200.0
    expected_out, expected_lse = attention_forward(q, k, v, mask)
    # Scores of ~400 carry fp32 rounding of ~5e-5 in the exponent, so P (hence O) is only about that exact.
    assert relative_error(out, expected_out) <= 1e-4
    assert relative_error(lse, expected_lse) <= TOLERANCE


def test_padding_does_not_change_valid_rows(cpu_isa):
    """Appending padding (filled with garbage) leaves every valid row's output and gradient bit-identical."""
    q, k, v, mask = random_problem(1, 2, 100, 64, [100], seed=6)
    rng = np.random.default_rng(7)
    padded = [
        np.concatenate([t, 50.0 * rng.standard_normal((1, 2, 157, 64)).astype(np.float32)], axis=2) for t in (q, k, v)
    ]
    padded_mask = np.concatenate([mask, np.zeros((1, 157), np.int32)], axis=1)
    out, lse = run_forward(q, k, v, mask)
    padded_out, padded_lse = run_forward(*padded, padded_mask)
    np.testing.assert_array_equal(padded_out[:, :, :100], out)
    np.testing.assert_array_equal(padded_lse[:, :, :100], lse)

    w_out = rng.standard_normal(q.shape).astype(np.float32)
    w_lse = np.zeros(q.shape[:-1], np.float32)
    padded_w = np.concatenate([w_out, np.zeros((1, 2, 157, 64), np.float32)], axis=2)
    grads = run_gradients(q, k, v, mask, w_out, w_lse)
    padded_grads = run_gradients(*padded, padded_mask, padded_w, np.zeros(padded[0].shape[:-1], np.float32))
    for grad, padded_grad in zip(grads, padded_grads, strict=True):
        np.testing.assert_array_equal(padded_grad[:, :, :100], grad)
    # Padding keys get no weight, hence no gradient.
    assert np.all(padded_grads[1][:, :, 100:] == 0.0) and np.all(padded_grads[2][:, :, 100:] == 0.0)


def test_mask_with_holes(cpu_isa):
    """Any key mask, not only right padding: same semantics as the composed path."""
    q, k, v, _ = random_problem(2, 2, 300, 64, [300, 300], seed=8)
    rng = np.random.default_rng(9)
    mask = (rng.random((2, 300)) < 0.6).astype(np.int32)
    mask[1, :140] = 0  # a whole key block without a valid key
    out, _ = run_forward(q, k, v, mask)
    assert relative_error(out, attention_forward(q, k, v, mask)[0]) <= TOLERANCE
    w_out = rng.standard_normal(q.shape).astype(np.float32)
    grads = run_gradients(q, k, v, mask, w_out, np.zeros(q.shape[:-1], np.float32))
    for actual, reference in zip(grads, attention_backward(q, k, v, mask, w_out), strict=True):
        assert relative_error(actual, reference) <= TOLERANCE


@pytest.mark.parametrize("sequence_major", [False, True])
@pytest.mark.parametrize("dropout_prob", [0.0, 0.3])
def test_gradients_match_finite_differences(cpu_isa, dropout_prob, sequence_major):
    """Directional derivatives of the loss vs central differences, with dropout at a fixed seed (a fixed mask)."""
    q, k, v, mask = random_problem(1, 2, 21, 8, [19], seed=10)
    rng = np.random.default_rng(11)
    w_out = rng.standard_normal(q.shape).astype(np.float32)
    w_lse = rng.standard_normal(q.shape[:-1]).astype(np.float32)
    seed = 987654321987
    loss = AttentionLoss(dropout_prob, dropout_prob > 0, sequence_major)

    def value(q_, k_, v_) -> float:
        args = [Tensor(q_), Tensor(k_), Tensor(v_), Tensor(mask), Tensor(np.array([seed], np.int64))]
        return float(loss(*args, Tensor(w_out), Tensor(w_lse)).asnumpy())

    grads = run_gradients(q, k, v, mask, w_out, w_lse, dropout_prob, seed, sequence_major)
    step = 1e-2
    for position in range(3):
        direction = rng.standard_normal(q.shape).astype(np.float32)
        plus = [q, k, v]
        minus = [q, k, v]
        plus[position] = plus[position] + step * direction
        minus[position] = minus[position] - step * direction
        numeric = (value(*plus) - value(*minus)) / (2 * step)
        analytic = float((grads[position].astype(np.float64) * direction).sum())
        assert analytic == pytest.approx(numeric, rel=2e-3, abs=2e-3)


@pytest.mark.parametrize("sequence_major", [False, True])
def test_fused_and_composed_agree(sequence_major):
    """dispatch.attention with impl="fused" and impl="composed": same outputs and same gradients, in both layouts
    (sequence-major inputs are just [batch, heads, length, head_dim] arrays read as [batch, length, heads, ...])."""
    q, k, v, mask = random_problem(2, 4, 160, 64, [160, 97], seed=12)
    if sequence_major:
        q, k, v = (np.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in (q, k, v))
    w_out = np.random.default_rng(13).standard_normal(q.shape).astype(np.float32)

    class Loss(nn.Cell):
        def __init__(self, impl):
            super().__init__()
            self.impl = impl

        def construct(self, q, k, v, mask, w):
            context = dispatch.attention(q, k, v, mask, 0.1, False, impl=self.impl, sequence_major=sequence_major)
            return (context * w).sum()

    results = {}
    for impl in ("fused", "composed"):
        loss = Loss(impl)
        args = [Tensor(t) for t in (q, k, v, mask.astype(np.float32), w_out)]
        out = ms.grad(loss, grad_position=(0, 1, 2))(*args)
        results[impl] = [float(loss(*args).asnumpy())] + [g.asnumpy() for g in out]
    assert results["fused"][0] == pytest.approx(results["composed"][0], rel=1e-5)
    for fused_grad, composed_grad in zip(results["fused"][1:], results["composed"][1:], strict=True):
        assert relative_error(fused_grad, composed_grad) <= TOLERANCE


def test_resolve_impl_prefers_fused_on_cpu():
    assert dispatch.resolve_impl("auto") == "fused"
    assert dispatch.resolve_impl("fused") == "fused"
    assert dispatch.resolve_impl("composed") == "composed"
    with pytest.raises(NotImplementedError, match="'builtin' is MindSpore's Ascend operators"):
        dispatch.resolve_impl("builtin")
    with pytest.raises(ValueError, match="not one of"):
        dispatch.resolve_impl("cuda")


def test_missing_library_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cpu, "library_path", lambda: None)
    assert dispatch.resolve_impl("auto") == "composed"
    with pytest.raises(cpu.KernelLibraryMissing, match=r"pip install -e \."):
        dispatch.resolve_impl("fused")


def test_wrong_rank_is_named_before_the_kernel_runs():
    class Net(nn.Cell):
        def construct(self, q, k, v, mask):
            return cpu.attention(q, k, v, mask)

    q, k, v, mask = random_problem(1, 2, 10, 8, [10])
    with pytest.raises(ValueError, match=r"must be \[batch, heads, length, head_dim\], got ranks 3, 3, 3"):
        Net()(Tensor(q[0]), Tensor(k[0]), Tensor(v[0]), Tensor(mask))
    with pytest.raises(ValueError, match=r"attention_mask must be \[batch, length\], got rank 1"):
        Net()(Tensor(q), Tensor(k), Tensor(v), Tensor(mask[0]))


def test_kernel_rejects_mismatched_shapes(capfd):
    """Called with a key of the wrong length, the kernel refuses (non-zero status) and says what is wrong."""
    library = cpu.native()
    q = np.zeros((1, 1, 8, 16), np.float32)
    k = np.zeros((1, 1, 9, 16), np.float32)
    arrays = [q, k, q, np.ones((1, 8), np.int32), np.zeros(1, np.int64), np.zeros(1, np.float32), q.copy(), q[..., 0]]
    count = len(arrays)
    shape_buffers = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
    status = library.FlashAttentionForward(
        count,
        (ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays]),
        (ctypes.c_int * count)(*[a.ndim for a in arrays]),
        (ctypes.POINTER(ctypes.c_int64) * count)(
            *[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in shape_buffers]
        ),
        (ctypes.c_char_p * count)(*[str(a.dtype).encode() for a in arrays]),
        None,
        None,
    )
    assert status != 0
    assert "must have the query's shape" in capfd.readouterr().err


def test_dynamic_length_compiles_once():
    """A graph with [None, heads, None, head_dim] inputs runs three lengths from one compilation."""

    class Net(nn.Cell):
        def construct(self, q, k, v, mask):
            return dispatch.attention(q, k, v, mask, impl="fused")

    net = Net()
    dynamic = Tensor(shape=[None, 2, None, 32], dtype=ms.float32)
    net.set_inputs(dynamic, dynamic, dynamic, Tensor(shape=[None, None], dtype=ms.int32))
    for length in (40, 129, 7):
        q, k, v, mask = random_problem(2, 2, length, 32, [length, length // 2], seed=length)
        out = net(Tensor(q), Tensor(k), Tensor(v), Tensor(mask)).asnumpy()
        assert out.shape == q.shape
        assert relative_error(out, attention_forward(q, k, v, mask)[0]) <= TOLERANCE
    assert len(net.compile_cache) == 1

    static = Net()
    for length in (40, 129):
        q, k, v, mask = random_problem(1, 2, length, 32, [length], seed=length)
        static(Tensor(q), Tensor(k), Tensor(v), Tensor(mask))
    assert len(static.compile_cache) == 2, "the compile counter must see a recompilation per static shape"


def test_dynamic_length_gradients_compile_once():
    """The backward kernel's shape inference too: ms.grad inside a dynamic-shape graph, three lengths, one compile."""

    class Loss(nn.Cell):
        def construct(self, q, k, v, mask, w):
            return (dispatch.attention(q, k, v, mask, impl="fused") * w).sum()

    class Gradients(nn.Cell):
        def __init__(self):
            super().__init__()
            self.loss = Loss()

        def construct(self, q, k, v, mask, w):
            return ms.grad(self.loss, grad_position=(0, 1, 2))(q, k, v, mask, w)

    net = Gradients()
    dynamic = Tensor(shape=[None, 2, None, 32], dtype=ms.float32)
    net.set_inputs(dynamic, dynamic, dynamic, Tensor(shape=[None, None], dtype=ms.int32), dynamic)
    for length in (40, 129, 7):
        q, k, v, mask = random_problem(2, 2, length, 32, [length, length // 2], seed=length)
        w = np.random.default_rng(length).standard_normal(q.shape).astype(np.float32)
        grads = net(*map(Tensor, (q, k, v, mask, w)))
        for actual, reference in zip(grads, attention_backward(q, k, v, mask, w), strict=True):
            assert relative_error(actual.asnumpy(), reference) <= TOLERANCE
    assert len(net.compile_cache) == 1


def test_casts_other_dtypes():
    """float16 inputs are computed in float32 and returned as float16."""
    q, k, v, mask = random_problem(1, 2, 50, 32, [45], seed=14)

    class Net(nn.Cell):
        def construct(self, q, k, v, mask):
            return cpu.attention(q, k, v, mask)

    out = Net()(*(Tensor(t.astype(np.float16)) for t in (q, k, v)), Tensor(mask))
    assert out.dtype == ms.float16
    halves = [t.astype(np.float16).astype(np.float32) for t in (q, k, v)]
    assert relative_error(out.asnumpy(), attention_forward(*halves, mask)[0]) <= 1e-3


def test_input_mask_dtype_is_free():
    """The mask may come as int32, int64, float32 or bool: nonzero means a valid key."""
    q, k, v, mask = random_problem(1, 1, 20, 16, [13], seed=15)

    class Net(nn.Cell):
        def construct(self, q, k, v, mask):
            return cpu.attention(q, k, v, mask)

    expected = attention_forward(q, k, v, mask)[0]
    for dtype in (np.int64, np.float32, np.bool_):
        out = Net()(Tensor(q), Tensor(k), Tensor(v), Tensor(mask.astype(dtype))).asnumpy()
        assert relative_error(out, expected) <= TOLERANCE
