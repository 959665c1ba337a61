"""A tensor of a checkpoint file known by its header only; its bytes are read on request, one tensor at a time.
Also the open file behind the readers and writers of every format (safetensors, MindSpore, PyTorch)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

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


class CheckpointFileReader:
    """One checkpoint file, held open because its tensors' readers read from it on request; close it (or use
    `with`) when done. A subclass indexes the file in `_index_file()`, which sets `tensors`."""

    tensors: dict[str, TensorInfo]

    def __init__(self, path: str | os.PathLike, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self._handle: IO[bytes] = open(self.path, "rb")  # closed by close()
        try:
            self._index_file()
        except BaseException:
            # the caller never gets the reader, so nobody else could close the file
            self.close()
            raise

    def _index_file(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CheckpointFileWriter:
    """A checkpoint file being written through `_handle`; `close()` makes it durable. Leaving a `with` block on an
    exception only abandons it: the file is incomplete, and close()'s checks would hide the original error."""

    _handle: IO[bytes]

    def _flush_to_disk(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def _abandon(self) -> None:
        self._handle.close()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abandon()
