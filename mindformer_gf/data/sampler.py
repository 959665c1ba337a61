"""Length-grouped sampling into fixed buckets: the whole run's order of batches as a pure function of a seed.

The reference sorts shuffled megabatches by length so that a batch holds cells of similar length; here every cell is
assigned to a length bucket (`LengthBuckets`) and a batch only ever holds cells of one bucket, padded to its width,
so there are as many batch shapes (and graph compilations) as buckets.

An optimisation step consumes `group_size` micro-batches (data-parallel ranks x gradient-accumulation steps), all
from the same bucket so that ranks finish their share at the same time. Per epoch: cells are shuffled, split by
bucket, and each bucket is cut into groups of group_size x batch_size cells; a bucket's leftover cells move up to
the next wider bucket (they fit), and the widest bucket's leftover forms one partial group whose missing rows are
padding. The groups are then shuffled. The number of steps per epoch depends only on the bucket sizes, so the plan
of step s is `step(s)`, whatever happened before: resuming needs nothing but the step number, and a run on 1 device
with group_size accumulation steps sees the very micro-batches that group_size devices see.

`pad_to_longest=True` (for a model compiled with dynamic shapes, where a new width costs no compilation): each bucket's
shuffled cells are cut into windows of `SORT_WINDOW_STEPS` steps, each window is ordered by length before it is cut
into groups, and every micro-batch is padded to its own longest cell: the reference's length-grouped sampler (shuffled
megabatches of 50 batches, each sorted by length), with the megabatches drawn within one bucket. Their lengths span
one bucket instead of the whole corpus, so the padding is lower than the reference's; and as in the reference, which
cells share a batch changes every epoch (sorting a whole bucket would fix it when lengths are distinct).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mindformer_gf.data.buckets import LengthBuckets

# With pad_to_longest, cells are sorted by length within windows of this many steps of one bucket's shuffled cells:
# the reference's megabatch (transformers' LengthGroupedSampler, megabatch_mult = 50).
SORT_WINDOW_STEPS = 50


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of the plan: which cells (possibly fewer than the batch size), at which padded width."""

    cell_indices: np.ndarray
    bucket: int
    width: int
    epoch: int


class LengthGroupedPlan:
    """The order of cells of a whole run, in steps of `group_size` micro-batches of `batch_size` cells."""

    def __init__(
        self,
        lengths: np.ndarray,
        buckets: LengthBuckets,
        batch_size: int,
        group_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        pad_to_longest: bool = False,
    ) -> None:
        if batch_size < 1 or group_size < 1:
            raise ValueError(f"batch_size and group_size must be positive, got {batch_size}, {group_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.size == 0:
            raise ValueError("the corpus is empty: no cells to train on")
        self.buckets = buckets
        self.bucket_of_cell = buckets.assign(self.lengths)
        self.batch_size = int(batch_size)
        self.group_size = int(group_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.pad_to_longest = pad_to_longest
        self._cached_epoch = lru_cache(maxsize=2)(self._epoch_groups)
        self.steps_per_epoch = len(self._cached_epoch(0))

    def fingerprint(self) -> dict:
        """What must not change for a resumed run to continue the same plan."""
        fingerprint = {
            "num_cells": int(self.lengths.size),
            "length_sum": int(self.lengths.sum()),
            "bucket_widths": list(self.buckets.widths),
            "batch_size": self.batch_size,
            "group_size": self.group_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "pad_to_longest": self.pad_to_longest,
        }
        if self.pad_to_longest:
            # runs saved before the windows (whole buckets sorted) planned other batches: they must not resume here
            fingerprint["sort_window_steps"] = SORT_WINDOW_STEPS
        return fingerprint

    def _epoch_groups(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """[(bucket, cell indices of one step)] for `epoch`, in training order."""
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch), 0x5A3F])
        order = rng.permutation(self.lengths.size) if self.shuffle else np.arange(self.lengths.size)
        per_step = self.batch_size * self.group_size
        groups: list[tuple[int, np.ndarray]] = []
        carried = np.zeros(0, np.int64)
        n_buckets = len(self.buckets.widths)
        for bucket in range(n_buckets):
            cells = np.concatenate([carried, order[self.bucket_of_cell[order] == bucket]])
            if self.pad_to_longest:
                cells = self._sorted_within_windows(cells, SORT_WINDOW_STEPS * per_step)
            full = (cells.size // per_step) * per_step
            groups += [(bucket, cells[i : i + per_step]) for i in range(0, full, per_step)]
            carried = cells[full:]
        if carried.size:
            groups.append((n_buckets - 1, carried))
        if self.shuffle:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        return groups

    def _sorted_within_windows(self, cells: np.ndarray, window: int) -> np.ndarray:
        """`cells` with each run of `window` consecutive cells ordered by length (equal lengths keep their order)."""
        chunks = [cells[i : i + window] for i in range(0, cells.size, window)]
        return np.concatenate([chunk[np.argsort(self.lengths[chunk], kind="stable")] for chunk in chunks] or [cells])

    def step(self, step: int) -> list[MicroBatch]:
        """The `group_size` micro-batches of optimisation step `step` (0-based, counting across epochs)."""
        epoch, index = divmod(int(step), self.steps_per_epoch)
        bucket, cells = self._cached_epoch(epoch)[index]
        shares = [cells[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.group_size)]
        if not self.pad_to_longest:
            width = self.buckets.widths[bucket]
            return [MicroBatch(share, bucket, width, epoch) for share in shares]
        # a micro-batch left empty by the partial group is all padding: it takes the group's width
        group_width = max(1, int(self.lengths[cells].max()))
        return [
            MicroBatch(share, bucket, int(self.lengths[share].max()) if share.size else group_width, epoch)
            for share in shares
        ]

    def rank_share(self, step: int, rank: int, world_size: int) -> list[MicroBatch]:
        """The micro-batches rank `rank` of `world_size` processes in step `step` (a contiguous 1/world share)."""
        if self.group_size % world_size:
            raise ValueError(
                f"{self.group_size} micro-batches per step cannot be shared by {world_size} ranks: use a gradient "
                f"accumulation count that makes group_size a multiple of the number of ranks"
            )
        per_rank = self.group_size // world_size
        return self.step(step)[rank * per_rank : (rank + 1) * per_rank]

    def step_tokens(self, step: int) -> tuple[int, int, int]:
        """(cells, real tokens, padded tokens fed) of step `step` over all ranks."""
        micro = self.step(step)
        cells = np.concatenate([m.cell_indices for m in micro])
        padded = sum(self.batch_size * m.width for m in micro)
        return int(cells.size), int(self.lengths[cells].sum()), int(padded)

    def padding_waste(self, epoch: int = 0) -> float:
        """Padded tokens / all tokens fed over one epoch (partial-group rows included)."""
        real = padded = 0
        for s in range(self.steps_per_epoch):
            _, tokens, fed = self.step_tokens(epoch * self.steps_per_epoch + s)
            real, padded = real + tokens, padded + fed
        return 1.0 - real / padded
