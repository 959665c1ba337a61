"""The dropout seed both fused backends (CPU and Ascend) draw when the caller passes none."""

from __future__ import annotations

import mindspore as ms
from mindspore import ops


def random_seed() -> ms.Tensor:
    """A fresh int64 dropout seed [1] on every execution, also inside a compiled graph (31 random bits per word)."""
    words = ops.randint(0, 2**31 - 1, (2,), dtype=ms.int64)
    return words[0:1] * 4294967296 + words[1:2]
