"""The builtin backend (MindSpore's `flash_attention_score` and `layer_norm`, what an Atlas user gets without our
operators), tested on the CPU, where neither operator has a kernel.

Two independent checks:
- MindSpore's own shape and type inference of the real operators accepts our arguments: compiling the builtin path
  on the CPU gets as far as kernel selection ("Unsupported op ... on CPU"); a wrong head count, layout or mask shape
  fails earlier, in inference (shown by the negative control).
- Semantics: with each operator replaced by an emulation of its DOCUMENTED behaviour whose signature is the installed
  MindSpore's (compared with inspect.signature of the real functions), the real call site compiled in graph mode
  gives the numpy reference's attention and LayerNorm: argument names and order, layout, the attn_mask convention
  (1 = discard), scale, keep probability (1 - dropout) and the output are all exercised.
"""

from __future__ import annotations

import inspect

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from mindformer_gf import reference
from mindformer_gf.ops import ascend, dispatch

# query/key/value go in as float16: one rounding of the inputs, fp32 arithmetic in the emulation
FP16_TOLERANCE = 3e-3


def emulated_flash_attention_score(
    query,
    key,
    value,
    head_num,
    real_shift=None,
    drop_mask=None,
    padding_mask=None,
    attn_mask=None,
    prefix=None,
    actual_seq_qlen=None,
    actual_seq_kvlen=None,
    keep_prob=1.0,
    scalar_value=1.0,
    pre_tokens=2147483647,
    next_tokens=2147483647,
    inner_precise=0,
    input_layout="BSH",
    sparse_mode=0,
):
    """flash_attention_score as its docstring defines it (MindSpore 2.10), for the arguments our backend uses:
    Dropout(Softmax(Mask(scalar_value * q k^T, attn_mask)), keep_prob) v, attn_mask 1/True = discard, drop_mask bit 1
    = keep (kept values scaled by 1 / keep_prob), float16/bfloat16 only; layouts BNSD and BSND. A row whose every
    score is discarded is undocumented: the emulation returns NaN there, the worst case."""
    if query.dtype != ms.float16 and query.dtype != ms.bfloat16:
        raise TypeError("flash_attention_score: query must be float16 or bfloat16")
    if input_layout == "BSND":
        query, key, value = query.swapaxes(1, 2), key.swapaxes(1, 2), value.swapaxes(1, 2)
    elif input_layout != "BNSD":
        raise ValueError("the emulation covers the BNSD and BSND layouts")
    if query.shape[1] != head_num:
        raise ValueError("flash_attention_score: query_shape[1] must be equal to attribute 'head_num'")
    scores = ops.matmul(query.astype(ms.float32), key.astype(ms.float32).swapaxes(-1, -2)) * scalar_value
    discard = ops.zeros(scores.shape, ms.bool_) if attn_mask is None else attn_mask.astype(ms.bool_)
    probs = ops.softmax(ops.masked_fill(scores, discard, float("-inf")), -1)
    probs = ops.masked_fill(probs, discard.all(-1, keep_dims=True), float("nan"))
    if keep_prob < 1.0:
        bits = drop_mask.astype(ms.int32)
        keep = ops.stack([ops.floor_divide(bits, 2**bit) % 2 for bit in range(8)], -1)
        probs = probs * keep.reshape(probs.shape).astype(ms.float32) / keep_prob
    out = ops.matmul(probs, value.astype(ms.float32)).astype(query.dtype)
    return out.swapaxes(1, 2) if input_layout == "BSND" else out


def emulated_drop_gen_mask():
    """DropoutGenMask: bits kept with probability keep_prob, packed eight to a uint8."""

    def generate(shape, keep_prob):
        count = 1
        for size in shape:
            count *= size
        keep = (ops.rand((count // 8, 8)) < keep_prob).astype(ms.int32)
        weights = Tensor([1, 2, 4, 8, 16, 32, 64, 128], ms.int32)
        return (keep * weights).sum(-1).astype(ms.uint8)

    return generate


def emulated_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):  # noqa: A002 (MindSpore's names)
    """ops.layer_norm as documented: (x - E[x]) / sqrt(Var[x] + eps) * weight + bias over `normalized_shape`."""
    if len(normalized_shape) != 1 or normalized_shape[0] != input.shape[-1]:
        raise ValueError("the emulation covers normalisation over the last axis")
    mean = input.mean(-1, keep_dims=True)
    variance = ((input - mean) ** 2).mean(-1, keep_dims=True)
    return (input - mean) / ops.sqrt(variance + eps) * weight + bias


def test_emulations_have_the_installed_signatures():
    assert inspect.signature(emulated_flash_attention_score) == inspect.signature(ops.flash_attention_score)
    assert inspect.signature(emulated_layer_norm) == inspect.signature(ops.layer_norm)
    # the backend calls the real operators unless a test replaces them
    assert ascend.flash_attention_score is ops.flash_attention_score
    assert ascend.layer_norm_op is ops.layer_norm


def test_options_bind_to_the_installed_signature():
    options = ascend.flash_attention_options((2, 4, 128, 64), dropout_prob=0.1, training=True)
    assert options == {"head_num": 4, "keep_prob": pytest.approx(0.9), "scalar_value": 0.125, "input_layout": "BNSD"}
    bound = inspect.signature(ops.flash_attention_score).bind("q", "k", "v", attn_mask="m", drop_mask="d", **options)
    assert bound.arguments["keep_prob"] == pytest.approx(0.9) and bound.arguments["head_num"] == 4
    assert ascend.flash_attention_options((2, 4, 128, 64), 0.1, training=False)["keep_prob"] == 1.0
    with pytest.raises(ValueError, match="multiple of 16"):
        ascend.flash_attention_options((2, 4, 128, 40), 0.0, False)
    with pytest.raises(ValueError, match=r"dropout_prob must be in \[0, 1\)"):
        ascend.flash_attention_options((2, 4, 128, 64), 1.0, True)


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(ascend, "flash_attention_score", emulated_flash_attention_score)
    monkeypatch.setattr(ascend, "layer_norm_op", emulated_layer_norm)
    monkeypatch.setattr(ascend, "_drop_gen_mask", emulated_drop_gen_mask)


class Attention(nn.Cell):
    def __init__(self, sequence_major: bool, dropout_prob: float = 0.0, training: bool = False) -> None:
        super().__init__()
        self.sequence_major = sequence_major
        self.dropout_prob = dropout_prob
        self.training_mode = training

    def construct(self, query, key, value, attention_mask):
        return dispatch.attention(
            query,
            key,
            value,
            attention_mask,
            self.dropout_prob,
            self.training_mode,
            impl="builtin",
            sequence_major=self.sequence_major,
        )


def attention_inputs(lengths, heads=2, length=24, head_dim=16, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((len(lengths), heads, length, head_dim)).astype(np.float32) for _ in range(3))
    mask = (np.arange(length)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    return q, k, v, mask


def test_builtin_attention_matches_the_reference(emulated):
    """Through the model's route: [batch, length, heads, head_dim] in and out (dispatch transposes to BNSD)."""
    q, k, v, mask = attention_inputs([24, 7, 0])  # full, padded, and a cell without any gene
    expected = reference.scaled_dot_product_attention(q, k, v, mask)
    inputs = tuple(Tensor(t.transpose(0, 2, 1, 3)) for t in (q, k, v))
    out = Attention(sequence_major=True)(*inputs, Tensor(mask)).asnumpy().transpose(0, 2, 1, 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[2], 0.0)  # not NaN: the empty cell is selected away, not multiplied
    assert np.abs(out - expected).max() / np.abs(expected).max() < FP16_TOLERANCE
    # the oracle can fail: the opposite mask convention or an unscaled product is far off
    inverted = reference.scaled_dot_product_attention(q[:2], k[:2], v[:2], 1 - mask[:2])
    assert np.abs(out[1] - inverted[1]).max() > 0.1


def test_builtin_dropout_keeps_one_minus_p_and_rescales(emulated):
    """value = identity turns the output into the dropped probabilities themselves."""
    drop = 0.25
    batch, heads, length = 2, 2, 16
    q, k, _, mask = attention_inputs([length] * batch, heads, length, head_dim=16, seed=1)
    v = np.broadcast_to(np.eye(length, dtype=np.float32), q.shape).copy()
    probs = Attention(False, drop, training=True)(Tensor(q), Tensor(k), Tensor(v), Tensor(mask)).asnumpy()
    expected = reference.bert.softmax(q @ k.swapaxes(-1, -2) / 4.0)  # scale 1/sqrt(16)
    kept = probs != 0
    trials = kept.size
    dropped = trials - kept.sum()
    # binomial(trials, p): 5 standard deviations
    assert abs(dropped - drop * trials) < 5 * np.sqrt(trials * drop * (1 - drop))
    np.testing.assert_allclose(probs[kept], expected[kept] / (1 - drop), rtol=FP16_TOLERANCE)


def test_builtin_layer_norm_matches_the_reference(emulated):
    class AddLayerNorm(nn.Cell):
        def construct(self, x, residual, weight, bias):
            return dispatch.add_layer_norm(x, residual, weight, bias, 1e-12, impl="builtin"), dispatch.layer_norm(
                x, weight, bias, 1e-12, impl="builtin"
            )

    rng = np.random.default_rng(2)
    x, residual = (rng.standard_normal((3, 5, 32)).astype(np.float32) for _ in range(2))
    weight, bias = rng.standard_normal(32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    fused, plain = AddLayerNorm()(*(Tensor(t) for t in (x, residual, weight, bias)))
    np.testing.assert_allclose(
        fused.asnumpy(), reference.add_layer_norm(x, residual, weight, bias, 1e-12), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(plain.asnumpy(), reference.layer_norm(x, weight, bias, 1e-12), rtol=1e-4, atol=1e-5)


def compile_error(cell: nn.Cell, *inputs) -> str:
    with pytest.raises((RuntimeError, TypeError, ValueError)) as caught:
        cell(*inputs)
    return str(caught.value)


def test_mindspore_infers_the_real_operators_on_our_arguments():
    """Unpatched, the builtin path compiles on the CPU up to kernel selection: MindSpore's type and shape inference
    of FlashAttentionScore, DropoutGenMask and LayerNormExt accepted every argument."""
    q, k, v, mask = attention_inputs([16, 5], length=16)
    head_major = [Tensor(t) for t in (q, k, v)]
    sequence_major = [Tensor(t.transpose(0, 2, 1, 3)) for t in (q, k, v)]
    for cell, inputs, operators in [
        (Attention(True), sequence_major, ("FlashAttentionScore",)),
        (Attention(False, 0.1, training=True), head_major, ("FlashAttentionScore", "DropoutGenMask")),
    ]:
        message = compile_error(cell, *inputs, Tensor(mask))
        assert "Unsupported op [" in message and any(f"[{name}] on CPU" in message for name in operators), message

    class LayerNorm(nn.Cell):
        def construct(self, x, weight, bias):
            return dispatch.layer_norm(x, weight, bias, 1e-12, impl="builtin")

    x = Tensor(np.ones((2, 3, 32), np.float32))
    message = compile_error(LayerNorm(), x, Tensor(np.ones(32, np.float32)), Tensor(np.zeros(32, np.float32)))
    assert "Unsupported op [LayerNormExt] on CPU" in message, message

    # negative control: wrong arguments fail in inference, before kernel selection
    class WrongLayout(nn.Cell):
        def construct(self, query):
            query = query.astype(ms.float16)
            return ops.flash_attention_score(query, query, query, 2, input_layout="BSND")

    message = compile_error(WrongLayout(), head_major[0])
    assert "Unsupported op" not in message and "head_num" in message, message
