"""Attention dropout inside the fused kernel: the Philox stream, the exact mask, its keep rate, and forward/backward
consistency at a fixed seed."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from fused_harness import TOLERANCE, AttentionWithLse, random_problem, run_forward, run_gradients
from mindspore import Tensor, nn
from ops_oracle import attention_backward, relative_error

from mindformer_gf.ops import fused
from mindformer_gf.reference.attention_dropout import (
    attention_with_dropout,
    keep_mask,
    keep_scale,
    keep_threshold,
    philox4x32_10,
)

# Known-answer vectors of Philox4x32-10 from Random123's kat_vectors (counter, key, output).
PHILOX_KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

SEED = (123 << 32) + 456789  # both key words non-zero


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KNOWN_ANSWERS)
def test_reference_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32_10(np.array(counter, np.uint32), key)) == expected


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KNOWN_ANSWERS)
def test_kernel_philox_known_answers(counter, key, expected):
    words = np.array(counter, np.uint32)
    fused.native().MindformerGfPhilox4x32(words.ctypes.data, 1, *key)
    assert tuple(int(w) for w in words) == expected


def test_threshold_rule():
    """floor(p * 2^32) with p rounded to float32 first (0.1 in float32 is slightly above 0.1)."""
    assert keep_threshold(0.1) == 429496736
    assert keep_threshold(0.0) == 0
    assert keep_threshold(0.5) == 2**31


@pytest.mark.parametrize(("batch_head", "row", "col0", "columns"), [(0, 0, 0, 64), (5, 37, 128, 37), (2, 1000, 8, 3)])
def test_kernel_mask_rows_match_reference(cpu_isa, batch_head, row, col0, columns):
    """The vector (8 lanes) and scalar generators give the reference's mask word for word, tails included."""
    factors = np.empty(columns, np.float32)
    fused.native().MindformerGfDropoutFactors(
        factors.ctypes.data, columns, ctypes.c_uint64(SEED), ctypes.c_float(0.1), row, batch_head, col0
    )
    heads = batch_head + 1
    expected = keep_mask(SEED, 0.1, 1, heads, row + 1, col0 + columns)[0, batch_head, row, col0:]
    np.testing.assert_array_equal(factors != 0, expected)
    np.testing.assert_array_equal(factors[expected], np.float32(keep_scale(0.1)))


def reveal_mask(drop: float, seed: int, heads: int = 4, length: int = 256) -> np.ndarray:
    """The kernel's dropout mask read off its output: q = 0 makes P uniform (1/L), V = I makes O = P o Z."""
    q = np.zeros((1, heads, length, length), np.float32)
    v = np.broadcast_to(np.eye(length, dtype=np.float32), q.shape).copy()
    mask = np.ones((1, length), np.int32)
    out, _ = run_forward(q, q, v, mask, drop, seed)
    kept = out != 0
    np.testing.assert_allclose(out[kept], keep_scale(drop) / length, rtol=1e-6)
    return kept


@pytest.mark.parametrize("drop", [0.1, 0.5])
def test_keep_rate_and_exact_mask(drop):
    kept = reveal_mask(drop, SEED)
    np.testing.assert_array_equal(kept, keep_mask(SEED, drop, 1, 4, 256, 256))
    trials = kept.size
    expected = (1.0 - drop) * trials
    assert abs(kept.sum() - expected) < 5.0 * np.sqrt(trials * drop * (1.0 - drop))


def test_masks_depend_on_seed_head_and_both_key_words():
    kept = reveal_mask(0.5, SEED)
    assert not np.array_equal(kept[0, 0], kept[0, 1])
    for other_seed in (SEED + 1, SEED + (1 << 32)):
        other = reveal_mask(0.5, other_seed)
        # Independent masks at p = 0.5 agree on about half of the positions.
        assert 0.45 < (other == kept).mean() < 0.55


def test_forward_matches_reference(cpu_isa):
    q, k, v, mask = random_problem(2, 3, 150, 64, [150, 77], seed=20)
    out, _ = run_forward(q, k, v, mask, 0.1, SEED)
    assert relative_error(out, attention_with_dropout(q, k, v, mask, 0.1, SEED)) <= TOLERANCE


def test_backward_matches_reference(cpu_isa):
    q, k, v, mask = random_problem(2, 2, 150, 32, [150, 77], seed=21)
    rng = np.random.default_rng(22)
    w_out = rng.standard_normal(q.shape).astype(np.float32)
    w_lse = rng.standard_normal(q.shape[:-1]).astype(np.float32)
    grads = run_gradients(q, k, v, mask, w_out, w_lse, 0.1, SEED)
    keep = keep_mask(SEED, 0.1, 2, 2, 150, 150)
    expected = attention_backward(q, k, v, mask, w_out, keep, keep_scale(0.1), w_lse)
    for actual, reference in zip(grads, expected, strict=True):
        assert relative_error(actual, reference) <= TOLERANCE


def test_fresh_seed_per_call_without_a_seed():
    """In training without an explicit seed, every execution of the same graph draws a new mask."""

    class Net(nn.Cell):
        def construct(self, q, k, v, mask):
            return fused.attention(q, k, v, mask, 0.1, True)

    q, k, v, mask = random_problem(1, 2, 64, 16, [64], seed=23)
    net = Net()
    first, second = (net(Tensor(q), Tensor(k), Tensor(v), Tensor(mask)).asnumpy() for _ in range(2))
    assert not np.array_equal(first, second)


def test_inference_has_no_dropout():
    q, k, v, mask = random_problem(1, 2, 64, 16, [50], seed=24)
    cell = AttentionWithLse(0.1, False)
    out, _ = cell(Tensor(q), Tensor(k), Tensor(v), Tensor(mask), Tensor(np.array([SEED], np.int64)))
    assert relative_error(out.asnumpy(), attention_with_dropout(q, k, v, mask, 0.0, 0)) <= TOLERANCE
