"""safetensors files read and written one tensor at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte range) and
the tensors' bytes. Reading a tensor here is one seek and one read of exactly its bytes, so memory holds one tensor,
and bfloat16 comes back as bit patterns (neither numpy nor the `safetensors` numpy backend has that type). Writing
needs every name, dtype and shape up front (the header comes first), then takes the tensors in that order.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np

from mindformer_gf.convert.dtypes import STORAGE_DTYPES, itemsize
from mindformer_gf.convert.tensors import CheckpointError, CheckpointFileReader, CheckpointFileWriter, TensorInfo

# A Geneformer header is tens of kilobytes; anything near this limit is not a model file.
MAX_HEADER_BYTES = 64 * 2**20


class SafetensorsReader(CheckpointFileReader):
    """The tensors of one safetensors file; keep it open while reading them (a context manager)."""

    def _index_file(self) -> None:
        self.metadata, self.tensors = self._read_header()

    def _read_header(self) -> tuple[dict[str, str], dict[str, TensorInfo]]:
        file_size = os.fstat(self._handle.fileno()).st_size
        prefix = self._handle.read(8)
        if len(prefix) != 8:
            raise CheckpointError(f"{self.name}: {file_size} bytes is too short for a safetensors file")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(MAX_HEADER_BYTES, file_size - 8):
            raise CheckpointError(
                f"{self.name}: header length {header_size} does not fit the file ({file_size} bytes); "
                "it is not a safetensors file or it is truncated"
            )
        try:
            header = json.loads(self._handle.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{self.name}: the safetensors header is not valid JSON ({err})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.name}: the safetensors header is not a JSON object")
        data_start = 8 + header_size
        data_size = file_size - data_start
        metadata = header.pop("__metadata__", None) or {}
        tensors: dict[str, TensorInfo] = {}
        for key, entry in header.items():
            try:
                dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            except (TypeError, KeyError, ValueError):
                raise CheckpointError(f"{self.name}: malformed header entry for {key!r}: {entry!r}") from None
            if dtype not in STORAGE_DTYPES:
                raise CheckpointError(
                    f"{self.name}: {key} has element type {dtype}, which this converter does not read "
                    f"(supported: {sorted(STORAGE_DTYPES)})"
                )
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise CheckpointError(f"{self.name}: {key} has an invalid shape {list(shape)}")
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_size):
                raise CheckpointError(
                    f"{self.name}: {key} claims bytes {begin}..{end} but the file holds {data_size} bytes of "
                    "data; it is truncated or damaged"
                )
            if end - begin != math.prod(shape) * itemsize(dtype):
                raise CheckpointError(
                    f"{self.name}: {key} is {dtype}{list(shape)} but spans {end - begin} bytes; the file is damaged"
                )
            tensors[key] = TensorInfo(
                key=key,
                dtype=dtype,
                shape=shape,
                file=self.name,
                reader=self._reader(data_start + begin, end - begin, dtype, shape),
                identity=(self.name, begin, end),
            )
        return {str(k): str(v) for k, v in metadata.items()}, tensors

    def _reader(self, offset: int, size: int, dtype: str, shape: tuple[int, ...]):
        def read() -> np.ndarray:
            buffer = bytearray(size)
            self._handle.seek(offset)
            if self._handle.readinto(buffer) != size:
                raise CheckpointError(f"{self.name}: file ended inside a tensor; it is truncated")
            return np.frombuffer(buffer, dtype=STORAGE_DTYPES[dtype]).reshape(shape)

        return read


class SafetensorsWriter(CheckpointFileWriter):
    """Writes a safetensors file whose entries are declared up front and then written in that order."""

    def __init__(
        self,
        path: str | os.PathLike,
        entries: Iterable[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._expected: list[tuple[str, str, tuple[int, ...], int]] = []
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, dtype, shape in entries:
            size = math.prod(shape) * itemsize(dtype)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._expected.append((name, dtype, tuple(shape), size))
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        # The format pads the header with spaces so that the data starts 8-byte aligned.
        encoded += b" " * (-len(encoded) % 8)
        self._handle: IO[bytes] = open(self.path, "wb")  # closed by close()
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)
        self._written = 0

    def write(self, name: str, array: np.ndarray, dtype: str) -> None:
        if self._written >= len(self._expected):
            raise ValueError(f"{self.path.name}: {name} was not declared")
        expected_name, expected_dtype, shape, size = self._expected[self._written]
        if (name, dtype, tuple(array.shape)) != (expected_name, expected_dtype, shape):
            raise ValueError(
                f"{self.path.name}: got {name} {dtype}{tuple(array.shape)}, expected {expected_name} "
                f"{expected_dtype}{shape} next"
            )
        data = np.ascontiguousarray(array, dtype=STORAGE_DTYPES[dtype])
        assert data.nbytes == size
        self._handle.write(memoryview(data).cast("B"))
        self._written += 1

    def close(self) -> None:
        """Flush to disk; every declared tensor must have been written."""
        try:
            if self._written != len(self._expected):
                missing = [name for name, *_ in self._expected[self._written :]]
                raise ValueError(f"{self.path.name}: not written: {missing}")
            self._flush_to_disk()
        finally:
            self._abandon()
