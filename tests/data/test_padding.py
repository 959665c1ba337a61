"""Padding of pretraining batches against the reference's length grouping on the same cells: transformers'
`get_length_grouped_indices` (what its LengthGroupedSampler, and so Geneformer's pretrainer, uses), every batch
padded to its own longest cell."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from mindformer_gf.data import LengthGroupedPlan, choose_bucket_widths
from mindformer_gf.data.sampler import SORT_WINDOW_STEPS


def genecorpus_like_lengths(count: int, seed: int) -> np.ndarray:
    """Log-normal around 900 genes, capped at 2,048 (about 7% of cells at the cap, as in Genecorpus-30M)."""
    lengths = np.random.default_rng(seed).lognormal(np.log(900), 0.55, size=count)
    return np.clip(np.rint(lengths), 64, 2048).astype(np.int64)


def reference_padding_waste(lengths: np.ndarray, batch_size: int, seed: int) -> float:
    order = get_length_grouped_indices(lengths.tolist(), batch_size, generator=torch.Generator().manual_seed(seed))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    padded = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
    return 1.0 - lengths.sum() / padded


@pytest.mark.parametrize(("count", "batch_size"), [(200, 4), (3000, 12)])
def test_batches_padded_to_their_longest_cell_waste_less_than_the_reference(count, batch_size):
    lengths = genecorpus_like_lengths(count, seed=count)
    buckets = choose_bucket_widths(lengths, 8, 2048)
    plan = LengthGroupedPlan(lengths, buckets, batch_size, group_size=1, seed=3, pad_to_longest=True)
    # the plan's own figure against a direct count: each micro-batch as wide as its longest cell, missing rows padded
    real = padded = 0
    for step in range(plan.steps_per_epoch):
        (micro,) = plan.step(step)
        assert micro.width == lengths[micro.cell_indices].max()
        real, padded = real + lengths[micro.cell_indices].sum(), padded + batch_size * micro.width
    ours = plan.padding_waste()
    assert ours == pytest.approx(1.0 - real / padded)
    references = [reference_padding_waste(lengths, batch_size, seed) for seed in range(5)]
    assert ours <= min(references)
    # the 8 fixed bucket widths (one compiled graph each) waste more than the reference on the same cells
    assert LengthGroupedPlan(lengths, buckets, batch_size, 1, seed=3).padding_waste() > max(references)


def test_pad_to_longest_keeps_every_cell_once_and_varies_batches_between_epochs():
    lengths = np.random.default_rng(1).integers(1, 9, size=101)  # many equal lengths: ties shuffle
    buckets = choose_bucket_widths(lengths, 3, 8, granularity=2)
    plan = LengthGroupedPlan(lengths, buckets, batch_size=4, group_size=3, seed=7, pad_to_longest=True)
    epochs = []
    for epoch in range(2):
        batches = [m for s in range(plan.steps_per_epoch) for m in plan.step(epoch * plan.steps_per_epoch + s)]
        seen = np.concatenate([m.cell_indices for m in batches])
        assert sorted(seen.tolist()) == list(range(lengths.size))
        for m in batches:
            assert m.width == (lengths[m.cell_indices].max() if m.cell_indices.size else m.width) >= 1
        epochs.append({tuple(sorted(m.cell_indices.tolist())) for m in batches})
    assert epochs[0] != epochs[1]
    assert plan.fingerprint()["pad_to_longest"] is True


def test_batches_change_between_epochs_when_every_length_is_distinct():
    """As the reference's shuffled megabatches: cells are sorted within windows of 50 steps of a shuffled bucket, so
    which cells share a batch changes every epoch even with no equal lengths (sorting a whole bucket would fix every
    batch), and each batch still holds cells of nearby lengths."""
    batch_size = 4
    lengths = np.random.default_rng(5).permutation(np.arange(1, 1001))  # 1,000 distinct lengths
    buckets = choose_bucket_widths(lengths, 2, 1000, granularity=8)
    plan = LengthGroupedPlan(lengths, buckets, batch_size, group_size=1, seed=11, pad_to_longest=True)
    epochs = []
    for epoch in range(2):
        batches = [plan.step(epoch * plan.steps_per_epoch + s)[0].cell_indices for s in range(plan.steps_per_epoch)]
        epochs.append({tuple(sorted(b.tolist())) for b in batches})
        # the reference's megabatch, 200 cells of all 1,000 lengths, spaces sorted neighbours ~5 apart: 4 cells span
        # ~15; ours draws its 200 from one bucket of ~500 lengths: ~2.5 apart, ~7.5 for 4 cells
        spreads = [int(np.ptp(lengths[b])) for b in batches if b.size == batch_size]
        assert np.median(spreads) <= 10
    assert len(epochs[0] & epochs[1]) < 0.1 * len(epochs[0])
    assert plan.fingerprint()["sort_window_steps"] == SORT_WINDOW_STEPS
