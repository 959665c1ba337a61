"""The length-grouped plan: every cell once per epoch, one bucket per step, deterministic per step, rank shares."""

from __future__ import annotations

import numpy as np
import pytest

from mindformer_gf.data import LengthBuckets, LengthGroupedPlan

BUCKETS = LengthBuckets((16, 32, 64))


@pytest.fixture(scope="module")
def lengths():
    return np.random.default_rng(0).integers(1, 65, size=203)


def test_every_cell_once_per_epoch_in_a_bucket_it_fits(lengths):
    plan = LengthGroupedPlan(lengths, BUCKETS, batch_size=4, group_size=3, seed=5)
    for epoch in (0, 1):
        seen = []
        for step in range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch):
            micro = plan.step(step)
            assert len(micro) == 3
            widths = {m.width for m in micro}
            assert len(widths) == 1  # all micro-batches of a step share one bucket (ranks finish together)
            for m in micro:
                assert m.epoch == epoch and m.cell_indices.size <= 4
                assert (lengths[m.cell_indices] <= m.width).all()
                seen.extend(m.cell_indices.tolist())
        assert sorted(seen) == list(range(lengths.size))


def test_only_the_last_group_is_partial(lengths):
    plan = LengthGroupedPlan(lengths, BUCKETS, batch_size=4, group_size=3, seed=5)
    sizes = [sum(m.cell_indices.size for m in plan.step(s)) for s in range(plan.steps_per_epoch)]
    assert sorted(sizes)[1:] == [12] * (len(sizes) - 1)
    assert sum(sizes) == lengths.size
    # leftovers only move up, so all of them end in one partial group: 16 full groups of 12 and one of 11
    assert plan.steps_per_epoch == 17


def test_step_is_a_pure_function_of_the_step_number(lengths):
    first = LengthGroupedPlan(lengths, BUCKETS, batch_size=4, group_size=2, seed=1)
    second = LengthGroupedPlan(lengths, BUCKETS, batch_size=4, group_size=2, seed=1)
    for step in (37, 0, 5, 2 * first.steps_per_epoch + 3):
        a, b = first.step(step), second.step(step)
        assert all((x.cell_indices == y.cell_indices).all() and x.width == y.width for x, y in zip(a, b, strict=True))
    shuffled = LengthGroupedPlan(lengths, BUCKETS, batch_size=4, group_size=2, seed=2)
    assert any(not np.array_equal(first.step(s)[0].cell_indices, shuffled.step(s)[0].cell_indices) for s in range(5))


def test_rank_shares_partition_the_step(lengths):
    plan = LengthGroupedPlan(lengths, BUCKETS, batch_size=4, group_size=4, seed=0)
    for step in range(3):
        shares = [plan.rank_share(step, rank, 2) for rank in range(2)]
        assert [m.cell_indices.tolist() for m in shares[0] + shares[1]] == [
            m.cell_indices.tolist() for m in plan.step(step)
        ]
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        plan.rank_share(0, 0, 3)


def test_padding_waste_counts_partial_rows_by_hand():
    lengths = np.array([3, 3, 3, 10, 10])
    plan = LengthGroupedPlan(lengths, LengthBuckets((4, 16)), batch_size=2, group_size=1, seed=0, shuffle=False)
    # bucket 4: cells 0,1 -> one batch [4 wide x 2 rows]; cell 2 moves up to bucket 16 with cells 3,4:
    # batches (2 rows x 16) twice, the last one holding one cell. Real 29 tokens of 8 + 64 fed.
    assert plan.steps_per_epoch == 3
    assert plan.step_tokens(0) == (2, 6, 8)
    assert plan.padding_waste() == pytest.approx(1 - 29 / 72)
