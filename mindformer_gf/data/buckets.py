"""Length buckets: a small fixed set of padded widths, so a graph-mode run compiles once per width, not per batch.

The widths are chosen from the corpus' length histogram to minimise the padded tokens (a dynamic programme over
candidate widths on a grid of `granularity` tokens); the last width always covers the longest cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LengthBuckets:
    """Sorted padded widths; a cell of length n goes to the narrowest width >= n."""

    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        widths = tuple(int(w) for w in self.widths)
        if not widths or any(w < 1 for w in widths) or list(widths) != sorted(set(widths)):
            raise ValueError(f"bucket widths must be distinct positive integers in increasing order, got {self.widths}")
        object.__setattr__(self, "widths", widths)

    @property
    def max_width(self) -> int:
        return self.widths[-1]

    def assign(self, lengths: np.ndarray) -> np.ndarray:
        """Bucket index of every length; a length above the widest bucket is an error naming the fix."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size and lengths.max() > self.max_width:
            raise ValueError(
                f"a cell has {int(lengths.max())} tokens but the widest bucket is {self.max_width}: raise the bucket "
                "widths (max_length) or truncate the cells when tokenizing"
            )
        return np.searchsorted(np.asarray(self.widths), lengths, side="left")

    def padding_waste(self, lengths: np.ndarray) -> float:
        """Padded tokens / all tokens when each cell is padded to its bucket's width (no partial-batch rows)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        padded = np.asarray(self.widths)[self.assign(lengths)].sum()
        return float(1.0 - lengths.sum() / padded) if padded else 0.0


def choose_bucket_widths(
    lengths: np.ndarray, num_buckets: int, max_length: int, granularity: int = 64
) -> LengthBuckets:
    """At most `num_buckets` widths (multiples of `granularity`, the last one covering the longest cell, capped at
    `max_length`) minimising the total padding of `lengths`.

    Optimal over the grid: a dynamic programme over the candidate widths g, 2g, ... where cost(a, b) is the padding
    of the cells whose lengths fall in (a, b] when padded to b.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        raise ValueError("cannot choose bucket widths for an empty corpus")
    if num_buckets < 1 or granularity < 1:
        raise ValueError(f"num_buckets and granularity must be positive, got {num_buckets}, {granularity}")
    longest = int(lengths.max())
    if longest > max_length:
        raise ValueError(f"a cell has {longest} tokens, more than max_length={max_length}: truncate when tokenizing")
    top = min(max_length, -(-longest // granularity) * granularity)
    candidates = sorted({*range(granularity, top, granularity), top})
    edges = np.asarray([0, *candidates])
    # counts/sums of lengths in each grid interval (edges[i], edges[i+1]]
    slot = np.searchsorted(edges[1:], lengths, side="left")
    count = np.bincount(slot, minlength=len(candidates)).astype(np.float64)
    total = np.bincount(slot, weights=lengths, minlength=len(candidates))
    cum_count, cum_total = np.concatenate([[0], count.cumsum()]), np.concatenate([[0], total.cumsum()])

    def cost(i: int, j: int) -> float:
        """Padding of the cells in grid intervals i..j-1 when padded to candidates[j - 1]."""
        n = cum_count[j] - cum_count[i]
        return float(n * candidates[j - 1] - (cum_total[j] - cum_total[i]))

    k_max = min(num_buckets, len(candidates))
    size = len(candidates)
    best = np.full((k_max + 1, size + 1), np.inf)
    back = np.zeros((k_max + 1, size + 1), np.int64)
    best[0, 0] = 0.0
    for k in range(1, k_max + 1):
        for j in range(1, size + 1):
            for i in range(k - 1, j):
                value = best[k - 1, i] + cost(i, j)
                if value < best[k, j]:
                    best[k, j], back[k, j] = value, i
    k_best = int(np.argmin(best[1:, size])) + 1
    widths, j = [], size
    for k in range(k_best, 0, -1):
        widths.append(candidates[j - 1])
        j = int(back[k, j])
    # Empty buckets cost nothing but a compilation: drop widths no cell uses.
    buckets = LengthBuckets(tuple(sorted(widths)))
    used = np.unique(buckets.assign(lengths))
    return LengthBuckets(tuple(buckets.widths[i] for i in used))
