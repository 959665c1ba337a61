"""Attention dropout inside the fused kernel: the mix32 hash against hand-computed words, the kernels' words, codes and
masks against the numpy specification (both instruction sets), statistical tests of the keep rate and of
independence between neighbouring columns, rows, heads and seeds, and forward/backward consistency at a fixed seed."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from helpers.fused_ops import TOLERANCE, AttentionWithLse, random_problem, run_forward, run_gradients
from helpers.oracles import attention_backward, relative_error
from mindspore import Tensor, nn
from scipy import stats

from mindformer_gf.ops import cpu
from mindformer_gf.reference.attention import attention_with_dropout
from mindformer_gf.reference.attention_dropout import (
    column_code,
    dropout_words,
    head_key,
    keep_mask,
    keep_scale,
    keep_threshold,
    mix32,
    row_key,
)

SEED = (123 << 32) + 456789  # both seed words non-zero


def mix32_by_hand(x: int) -> int:
    """The finaliser written out on Python ints, step by step: the oracle for the spec and the kernels."""
    x ^= x >> 16
    x = (x * 0x45D9F3B) % 2**32
    x ^= x >> 16
    x = (x * 0x45D9F3B) % 2**32
    return x ^ (x >> 16)


def word_by_hand(seed: int, outer: int, row: int, column: int) -> int:
    seed_lo, seed_hi = seed % 2**32, seed // 2**32
    head = mix32_by_hand(seed_lo ^ mix32_by_hand(seed_hi ^ mix32_by_hand(outer)))
    row_key = mix32_by_hand(head ^ mix32_by_hand(row))
    return mix32_by_hand((row_key + mix32_by_hand((head + column) % 2**32)) % 2**32)


WORD_CASES = [(0, 0, 0, 0), (SEED, 5, 37, 130), (2**64 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1)]


def test_mix32_known_answers():
    # 1 -> 0x45D9F3B after the first multiply; the rest follows the same three xorshifts and two multiplies.
    assert mix32_by_hand(0) == 0 and mix32_by_hand(1) == 824515495
    for x in (0, 1, 0x45D9F3B, 2**31, 2**32 - 1):
        assert mix32(x) == mix32_by_hand(x)
        assert int(mix32(np.array([x], np.uint32))[0]) == mix32_by_hand(x)


@pytest.mark.parametrize(("seed", "outer", "row", "column"), WORD_CASES)
def test_words_known_answers(seed, outer, row, column):
    expected = word_by_hand(seed, outer, row, column)
    assert int(dropout_words(seed, outer, row, column)) == expected
    words = np.empty(1, np.uint32)
    cpu.native().MindformerGfDropoutWords(words.ctypes.data, 1, ctypes.c_uint64(seed), outer, row, column)
    assert int(words[0]) == expected


def unmix32_by_hand(x: int) -> int:
    """The inverse of mix32: each xorshift by 16 undoes itself on 32 bits, each product the modular inverse's."""
    inverse = pow(0x45D9F3B, -1, 2**32)
    x ^= x >> 16
    x = (x * inverse) % 2**32
    x ^= x >> 16
    x = (x * inverse) % 2**32
    return x ^ (x >> 16)


def test_two_heads_sharing_a_row_key_still_draw_different_masks():
    """Row keys are 32-bit, so rows of different heads can share one (~100 pairs per large step); the head's own
    column codes must keep their masks apart. The colliding row is built by inverting mix32."""
    assert all(unmix32_by_hand(mix32_by_hand(x)) == x for x in (0, 1, 12345, 2**32 - 1))
    head_a, head_b, row_a = 3, 11, 17
    key_a, key_b = int(head_key(SEED, head_a)), int(head_key(SEED, head_b))
    row_b = unmix32_by_hand(key_a ^ key_b ^ mix32_by_hand(row_a))  # row_key(head_b, row_b) = row_key(head_a, row_a)
    assert int(row_key(SEED, head_b, row_b)) == int(row_key(SEED, head_a, row_a))
    columns = np.arange(128)
    words_a, words_b = dropout_words(SEED, head_a, row_a, columns), dropout_words(SEED, head_b, row_b, columns)
    assert np.count_nonzero(words_a == words_b) <= 1
    native = np.empty(128, np.uint32)
    cpu.native().MindformerGfDropoutWords(native.ctypes.data, 128, ctypes.c_uint64(SEED), head_b, row_b, 0)
    np.testing.assert_array_equal(native, words_b)


def test_threshold_rule():
    """floor(p * 2^24) with p rounded to float32 first (0.1 in float32 is slightly above 0.1)."""
    assert keep_threshold(0.1) == 1677721  # 0.100000001490116 * 2^24 = 1677721.625
    assert keep_threshold(0.02) == 335544  # 0.0199999995529652 * 2^24 = 335544.31
    assert keep_threshold(0.0) == 0
    assert keep_threshold(0.5) == 2**23


@pytest.mark.parametrize(("outer", "row", "col0", "columns"), [(0, 0, 0, 64), (5, 37, 128, 37), (2, 1000, 8, 3)])
def test_kernel_words_codes_and_mask_rows_match_reference(cpu_isa, outer, row, col0, columns):
    """Scalar words, the vector (8 lanes) or portable column codes and keep factors equal the reference's, tails
    included."""
    native = cpu.native()
    columns_range = np.arange(col0, col0 + columns)
    words = np.empty(columns, np.uint32)
    native.MindformerGfDropoutWords(words.ctypes.data, columns, ctypes.c_uint64(SEED), outer, row, col0)
    np.testing.assert_array_equal(words, dropout_words(SEED, outer, row, columns_range))
    codes = np.empty(columns, np.uint32)
    head = int(head_key(SEED, outer))
    native.MindformerGfDropoutColumnCodes(codes.ctypes.data, columns, head, col0)
    np.testing.assert_array_equal(codes, column_code(head, columns_range))
    for drop in (0.02, 0.1, 0.5):
        factors = np.empty(columns, np.float32)
        native.MindformerGfDropoutFactors(
            factors.ctypes.data, columns, ctypes.c_uint64(SEED), ctypes.c_float(drop), row, outer, col0
        )
        expected = keep_mask(SEED, drop, 1, outer + 1, row + 1, col0 + columns)[0, outer, row, col0:]
        np.testing.assert_array_equal(factors != 0, expected)
        np.testing.assert_array_equal(factors[expected], np.float32(keep_scale(drop)))


# Statistical tests on 2^20 draws per mask (16 heads x 256 x 256): the hash must look like independent coin flips.
HEADS, LENGTH = 16, 256


@pytest.mark.parametrize("drop", [0.02, 0.1, 0.5])
def test_keep_rate_within_binomial_bounds(drop):
    kept = keep_mask(SEED, drop, 1, HEADS, LENGTH, LENGTH)
    n, p_keep = kept.size, 1.0 - drop
    assert abs(kept.sum() - n * p_keep) < 5.0 * np.sqrt(n * p_keep * (1.0 - p_keep))


def assert_independent(a: np.ndarray, b: np.ndarray) -> None:
    """a and b: fair coins (p = 0.5) in [groups, n] pairs. Under independence each group's count of agreements is
    Binomial(n, 1/2), so sum((agree - n/2)^2 / (n/4)) over groups is chi-square with `groups` degrees of freedom (the
    sum of the groups' 2 x 2 tables); a dependence of either sign in many groups moves it far into one tail. The
    pooled agreement rate is checked against its own binomial bounds too."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    groups, n = a.shape
    agree = (a == b).sum(axis=1)
    statistic = float(((agree - n / 2.0) ** 2 / (n / 4.0)).sum())
    assert 1e-6 < stats.chi2.sf(statistic, groups) < 1 - 1e-6, statistic / groups
    total = groups * n
    assert abs(agree.sum() - total / 2.0) < 5.0 * np.sqrt(total / 4.0)


@pytest.fixture(scope="module")
def fair_mask() -> np.ndarray:
    return keep_mask(SEED, 0.5, 1, HEADS, LENGTH, LENGTH)[0]


def test_adjacent_columns_are_independent(fair_mask):
    assert_independent(fair_mask[..., :-1], fair_mask[..., 1:])


def test_adjacent_rows_are_independent(fair_mask):
    rows_first = np.swapaxes(fair_mask, -1, -2)  # groups: (head, row pair), pairs over the columns
    assert_independent(rows_first[..., :-1], rows_first[..., 1:])


def test_adjacent_heads_are_independent(fair_mask):
    assert_independent(fair_mask[:-1], fair_mask[1:])


@pytest.mark.parametrize("other_seed", [SEED + 1, SEED + (1 << 32)])
def test_neighbouring_seeds_are_independent(fair_mask, other_seed):
    assert_independent(fair_mask, keep_mask(other_seed, 0.5, 1, HEADS, LENGTH, LENGTH)[0])


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
            return cpu.attention(q, k, v, mask, 0.1, True)

    q, k, v, mask = random_problem(1, 2, 64, 16, [64], seed=23)
    net = Net()
    first, second = (net(Tensor(q), Tensor(k), Tensor(v), Tensor(mask)).asnumpy() for _ in range(2))
    assert not np.array_equal(first, second)


def test_inference_has_no_dropout():
    q, k, v, mask = random_problem(1, 2, 64, 16, [50], seed=24)
    cell = AttentionWithLse(0.1, False)
    out, _ = cell(Tensor(q), Tensor(k), Tensor(v), Tensor(mask), Tensor(np.array([SEED], np.int64)))
    assert relative_error(out.asnumpy(), attention_with_dropout(q, k, v, mask, 0.0, 0)) <= TOLERANCE
