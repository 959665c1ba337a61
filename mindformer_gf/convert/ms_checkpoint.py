"""MindSpore `.ckpt` files written and read one tensor at a time.

A `.ckpt` is a serialised protobuf `Checkpoint` message (mindspore/train/checkpoint.proto): a repeated field of
`Value {tag, TensorProto tensor}`. Protobuf concatenates repeated fields when messages are concatenated, and
`ms.save_checkpoint` itself writes one message per tensor slice back to back. So a checkpoint of any size is written
here by saving each tensor with `ms.save_checkpoint` into a scratch file and appending it, which keeps one tensor in
memory instead of the whole model, and read back by walking the top-level entries.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

import numpy as np

from mindformer_gf.convert.dtypes import MINDSPORE_TYPE_NAMES, STORAGE_DTYPES, bfloat16_bits_to_float32
from mindformer_gf.convert.tensors import CheckpointError, CheckpointFileReader, CheckpointFileWriter, TensorInfo

# Field 1 (`value`), wire type 2 (length-delimited): the tag byte that starts every top-level entry.
VALUE_FIELD_TAG = 0x0A
# `ms.save_checkpoint(..., crc_check=True)` appends this marker and a 10-byte checksum after the entries.
CRC_TRAILER = b"crc_num"


def _mindspore_tensor(array: np.ndarray, dtype: str):
    import mindspore as ms

    if dtype == "BF16":
        # The float32 value of a bfloat16 is exact, and so is its cast back: the bits are unchanged.
        return ms.Tensor(bfloat16_bits_to_float32(array)).astype(ms.bfloat16)
    return ms.Tensor.from_numpy(np.ascontiguousarray(array))


class MindSporeCheckpointWriter(CheckpointFileWriter):
    """Appends tensors to a `.ckpt`, each saved by `ms.save_checkpoint` on its own."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._scratch = self.path.with_name(self.path.stem + ".one-tensor.ckpt")
        self._handle: IO[bytes] = open(self.path, "wb")  # closed by close()

    def write(self, name: str, array: np.ndarray, dtype: str) -> None:
        import mindspore as ms

        ms.save_checkpoint([{"name": name, "data": _mindspore_tensor(array, dtype)}], str(self._scratch))
        with open(self._scratch, "rb") as scratch:
            shutil.copyfileobj(scratch, self._handle, 16 * 2**20)
        self._scratch.unlink()

    def close(self) -> None:
        try:
            self._flush_to_disk()
        finally:
            self._abandon()

    def _abandon(self) -> None:
        self._handle.close()
        self._scratch.unlink(missing_ok=True)


def _read_varint(handle: IO[bytes]) -> int | None:
    result, shift = 0, 0
    while True:
        byte = handle.read(1)
        if not byte:
            return None
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise CheckpointError("malformed length in a MindSpore checkpoint")


class MindSporeCheckpointReader(CheckpointFileReader):
    """The tensors of a `.ckpt`, indexed in one pass; each tensor's entries are parsed again when it is read."""

    def _index_file(self) -> None:
        self.tensors = self._index()

    def _entries(self):
        """(offset, length) of each top-level entry, in file order."""
        handle = self._handle
        handle.seek(0)
        file_size = os.fstat(handle.fileno()).st_size
        while True:
            start = handle.tell()
            tag = handle.read(1)
            if not tag:
                return
            if tag[0] != VALUE_FIELD_TAG:
                handle.seek(start)
                if handle.read(len(CRC_TRAILER)) == CRC_TRAILER:
                    return
                raise CheckpointError(f"{self.name}: unexpected byte at offset {start}; not a MindSpore checkpoint")
            length = _read_varint(handle)
            offset = handle.tell()
            if length is None or offset + length > file_size:
                raise CheckpointError(f"{self.name}: an entry runs past the end of the file; it is truncated")
            yield offset, length
            handle.seek(offset + length)

    def _parse(self, offset: int, length: int):
        from google.protobuf.message import DecodeError
        from mindspore.train.checkpoint_pb2 import Checkpoint

        self._handle.seek(offset)
        try:
            value = Checkpoint.Value.FromString(self._handle.read(length))
        except DecodeError as err:
            raise CheckpointError(f"{self.name}: damaged entry at offset {offset} ({err})") from None
        if not value.HasField("tensor"):
            raise CheckpointError(f"{self.name}: {value.tag} is a map tensor, which a Geneformer model never has")
        return value

    def _index(self) -> dict[str, TensorInfo]:
        chunks: dict[str, list[tuple[int, int]]] = {}
        layout: dict[str, tuple[str, tuple[int, ...]]] = {}
        for offset, length in self._entries():
            value = self._parse(offset, length)
            tensor_type = value.tensor.tensor_type
            if tensor_type not in MINDSPORE_TYPE_NAMES:
                raise CheckpointError(f"{self.name}: {value.tag} has type {tensor_type}, which is not a tensor type")
            layout.setdefault(value.tag, (MINDSPORE_TYPE_NAMES[tensor_type], tuple(value.tensor.dims)))
            chunks.setdefault(value.tag, []).append((offset, length))
        return {
            tag: TensorInfo(tag, dtype, shape, self.name, self._reader(tag, chunks[tag], dtype, shape), None)
            for tag, (dtype, shape) in layout.items()
        }

    def _reader(self, tag: str, chunks: list[tuple[int, int]], dtype: str, shape: tuple[int, ...]):
        def read() -> np.ndarray:
            # Large tensors are split into several entries with the same tag; their contents concatenate.
            content = b"".join(self._parse(offset, length).tensor.tensor_content for offset, length in chunks)
            array = np.frombuffer(content, dtype=STORAGE_DTYPES[dtype])
            if array.size != int(np.prod(shape)):
                raise CheckpointError(f"{self.name}: {tag} holds {array.size} values for shape {list(shape)}")
            return array.reshape(shape)

        return read
