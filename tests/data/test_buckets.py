"""Bucket widths: optimal padding over the grid (checked by exhaustive search), assignment, padding waste by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mindformer_gf.data import LengthBuckets, choose_bucket_widths


def brute_force_waste(lengths: np.ndarray, num_buckets: int, top: int, granularity: int) -> float:
    grid = range(granularity, top, granularity)
    best = LengthBuckets((top,)).padding_waste(lengths)
    for k in range(1, num_buckets):
        for widths in itertools.combinations(grid, k):
            best = min(best, LengthBuckets((*widths, top)).padding_waste(lengths))
    return best


@pytest.mark.parametrize("num_buckets", [1, 2, 3, 4])
def test_chosen_widths_are_optimal_on_the_grid(num_buckets):
    rng = np.random.default_rng(num_buckets)
    lengths = np.clip(rng.lognormal(np.log(30), 0.6, size=300).astype(int), 3, 96)
    buckets = choose_bucket_widths(lengths, num_buckets, max_length=96, granularity=8)
    assert len(buckets.widths) <= num_buckets
    assert buckets.max_width >= lengths.max()
    assert all(w % 8 == 0 for w in buckets.widths)
    assert buckets.padding_waste(lengths) == pytest.approx(brute_force_waste(lengths, num_buckets, 96, 8), abs=1e-12)


def test_assignment_and_waste_by_hand():
    buckets = LengthBuckets((4, 8))
    lengths = np.array([1, 4, 5, 8])
    assert buckets.assign(lengths).tolist() == [0, 0, 1, 1]
    # padded to 4, 4, 8, 8 = 24 tokens of which 18 real
    assert buckets.padding_waste(lengths) == pytest.approx(6 / 24)


def test_last_width_capped_at_max_length_and_unused_widths_dropped():
    lengths = np.array([10, 11, 12, 100])
    buckets = choose_bucket_widths(lengths, 6, max_length=100, granularity=64)
    assert buckets.widths == (64, 100)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="widest bucket is 8"):
        LengthBuckets((4, 8)).assign(np.array([9]))
    with pytest.raises(ValueError, match="max_length=16"):
        choose_bucket_widths(np.array([20]), 2, max_length=16)
    with pytest.raises(ValueError, match="increasing"):
        LengthBuckets((8, 4))
