"""A tensor of a checkpoint file known by its header only; its bytes are read on request, one tensor at a time."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from mindformer_gf.convert.dtypes import STORAGE_DTYPES, itemsize


class CheckpointError(ValueError):
    """A checkpoint or model directory the converter cannot use; the message names the problem and the fix."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint: name, type, shape and where its bytes are, without the bytes."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    reader: Callable[[], np.ndarray] = field(compare=False, repr=False)
    # Equal identities mean the same bytes: PyTorch files store tied weights once, as one shared storage.
    identity: Hashable | None = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)

    def read(self) -> np.ndarray:
        """The tensor's values in its storage type (BF16 as uint16 bit patterns), C-contiguous."""
        array = self.reader()
        if array.dtype != STORAGE_DTYPES[self.dtype] or tuple(array.shape) != self.shape:
            raise CheckpointError(
                f"{self.file}: {self.key} holds {array.dtype}{tuple(array.shape)} where its header promises "
                f"{self.dtype}{self.shape}; the file is damaged"
            )
        return array
