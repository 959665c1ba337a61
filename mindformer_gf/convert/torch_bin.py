"""`pytorch_model.bin` read without PyTorch, and without trusting the file.

A PyTorch checkpoint is a pickle whose tensors point at raw storages stored beside it: in the zip format (PyTorch
>= 1.6) as `<archive>/data.pkl` plus one member `<archive>/data/<key>` per storage; in the legacy format as a
sequence of pickles (magic number, protocol version, system info, the state dict, the storage keys) followed by each
storage's element count and bytes. The pickle is read with `RestrictedUnpickler`, which admits only the globals a
state dict is made of, each replaced by a function of ours that only records where the bytes are. Tensor bytes are
read later, one storage at a time, and shaped with numpy from the recorded offset, size and stride.
"""

from __future__ import annotations

import collections
import math
import os
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from mindformer_gf.convert.dtypes import STORAGE_DTYPES
from mindformer_gf.convert.tensors import CheckpointError, CheckpointFileReader, TensorInfo
from mindformer_gf.safe_pickle import RestrictedUnpickler, UnsafePickleError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
ZIP_LOCAL_HEADER = b"PK\x03\x04"
ZIP_LOCAL_HEADER_SIZE = 30
LEGACY_PROTOCOL_VERSION = 1001


@dataclass(frozen=True, slots=True)
class StorageType:
    """What a `torch.<X>Storage` global stands for here: the element type of a storage."""

    torch_name: str
    dtype: str


# The PyTorch storage classes that can hold a state dict's tensors -> element type.
STORAGE_TYPES = {
    name: StorageType(name, dtype)
    for name, dtype in {
        "DoubleStorage": "F64",
        "FloatStorage": "F32",
        "HalfStorage": "F16",
        "BFloat16Storage": "BF16",
        "LongStorage": "I64",
        "IntStorage": "I32",
        "ShortStorage": "I16",
        "CharStorage": "I8",
        "ByteStorage": "U8",
        "BoolStorage": "BOOL",
    }.items()
}


class StorageRef:
    """A storage named by the pickle: its key, element type and element count. Holds no data."""

    __slots__ = ("key", "dtype", "numel", "view_offset")

    def __init__(self, key: str, dtype: str, numel: int, view_offset: int = 0) -> None:
        self.key, self.dtype, self.numel, self.view_offset = key, dtype, numel, view_offset

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("the pickle tries to modify a storage object; a state dict never does that")


class TensorRef:
    """A tensor named by the pickle: a view (offset, size, stride in elements) of a storage. Holds no data."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: StorageRef, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("the pickle tries to modify a tensor object; a state dict never does that")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UnsafePickleError(f"tensor {what} must be a tuple of integers, got {value!r}")
    return value


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
    """Stands in for torch._utils._rebuild_tensor_v2 (and the older _rebuild_tensor): records the view only.

    The trailing arguments (requires_grad, backward hooks, metadata) do not change a tensor's values.
    """
    if not isinstance(storage, StorageRef):
        raise UnsafePickleError(f"a tensor must be rebuilt from a storage, got {type(storage).__name__}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise UnsafePickleError(f"invalid storage offset {storage_offset!r}")
    shape, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(stride) or any(d < 0 for d in shape) or any(s < 0 for s in stride):
        raise UnsafePickleError(f"invalid tensor size {shape} / stride {stride}")
    return TensorRef(storage, storage_offset, shape, stride)


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    # Only the empty call (`OrderedDict()`, then filled by SETITEMS) occurs in a state dict.
    if args:
        raise UnsafePickleError("OrderedDict is only ever created empty in a state dict")
    return collections.OrderedDict()


class SealedCallable:
    """A function that pickle's BUILD opcode cannot modify: a crafted file could otherwise set attributes (even
    `__defaults__`) on the allow-listed functions and change how every later file in the process is read."""

    __slots__ = ("_function",)

    def __init__(self, function: Any) -> None:
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name: str, value: Any) -> None:
        raise UnsafePickleError("the pickle tries to modify an allow-listed function; a state dict never does that")

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)


# Every global a state dict pickle may name, mapped to what stands in for it. Nothing else is ever imported.
TORCH_STATE_DICT_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): SealedCallable(_ordered_dict),
    ("torch._utils", "_rebuild_tensor_v2"): SealedCallable(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor"): SealedCallable(_rebuild_tensor),
    **{("torch", name): storage_type for name, storage_type in STORAGE_TYPES.items()},
}


def _storage_from_persistent_id(pid: Any, legacy: bool) -> StorageRef:
    """A `('storage', storage_type, key, location, numel[, view_metadata])` persistent id as a StorageRef."""
    expected_length = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == expected_length and pid[0] in ("storage", b"storage")):
        raise UnsafePickleError(f"unexpected persistent id {pid!r}: a state dict only refers to storages")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, StorageType):
        raise UnsafePickleError(f"storage type {storage_type!r} is not one of torch's tensor storages")
    if not isinstance(key, str | int) or not isinstance(numel, int) or numel < 0:
        raise UnsafePickleError(f"malformed storage reference {pid!r}")
    view_offset = 0
    if legacy and pid[5] is not None:
        view = pid[5]
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int | str) for v in view)):
            raise UnsafePickleError(f"malformed storage view {view!r}")
        _view_key, view_offset, numel = view
        if not isinstance(view_offset, int) or not isinstance(numel, int):
            raise UnsafePickleError(f"malformed storage view {view!r}")
        return StorageRef(str(key), storage_type.dtype, numel, view_offset)
    return StorageRef(str(key), storage_type.dtype, numel)


def _load_state_dict_pickle(handle: IO[bytes], name: str, legacy: bool) -> dict[str, TensorRef]:
    unpickler = RestrictedUnpickler(
        handle, TORCH_STATE_DICT_GLOBALS, persistent_load=lambda pid: _storage_from_persistent_id(pid, legacy)
    )
    try:
        state_dict = unpickler.load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{name}: {err}") from None
    except Exception as err:  # a damaged or crafted pickle fails in many ways; none of them ran code
        raise CheckpointError(f"{name}: not a readable PyTorch state dict ({type(err).__name__}: {err})") from None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{name}: holds a {type(state_dict).__name__}, not a state dict (name -> tensor)")
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, TensorRef)]
    if not_tensors or not all(isinstance(key, str) for key in state_dict):
        raise CheckpointError(f"{name}: entries that are not named tensors: {not_tensors[:10]}")
    return state_dict


def _check_view(name: str, key: str, ref: TensorRef) -> None:
    """The view must lie inside its storage, or numpy would read beyond the buffer."""
    if math.prod(ref.shape) == 0:
        return
    last = ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))
    if last >= ref.storage.numel:
        raise CheckpointError(
            f"{name}: {key} reaches element {last} of a storage of {ref.storage.numel}; the file is damaged"
        )


def _view(storage: np.ndarray, ref: TensorRef) -> np.ndarray:
    itemsize = storage.dtype.itemsize
    strided = np.lib.stride_tricks.as_strided(
        storage[ref.offset :], shape=ref.shape, strides=tuple(s * itemsize for s in ref.stride)
    )
    # np.ascontiguousarray would turn a 0-d tensor into shape (1,).
    return strided if strided.flags.c_contiguous else strided.copy()


class TorchBinReader(CheckpointFileReader):
    """The tensors of one `pytorch_model.bin` (zip or legacy format); keep it open while reading them."""

    _zip: zipfile.ZipFile | None = None

    def _index_file(self) -> None:
        # torch.load decides by the first bytes too: zipfile.is_zipfile looks for a directory record near the
        # end, which the raw storages of a legacy file can contain by chance.
        if self._handle.read(4) == ZIP_LOCAL_HEADER:
            self.format = "zip"
            self.tensors = self._open_zip()
        else:
            self.format = "legacy"
            self.tensors = self._open_legacy()

    # ---- zip format (torch.save default since PyTorch 1.6) -------------------------------------------------
    def _open_zip(self) -> dict[str, TensorInfo]:
        self._handle.seek(0)
        self._zip = zipfile.ZipFile(self._handle)
        pickles = [n for n in self._zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(
                f"{self.name}: a zip archive without exactly one <archive>/data.pkl; it is not a torch.save file"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_member = prefix + "byteorder"
        if byteorder_member in self._zip.namelist() and self._zip.read(byteorder_member).strip() != b"little":
            raise CheckpointError(f"{self.name}: written on a big-endian machine, which this converter does not read")
        with self._zip.open(pickles[0]) as handle:
            state_dict = _load_state_dict_pickle(handle, self.name, legacy=False)
        members = set(self._zip.namelist())
        tensors = {}
        for key, ref in state_dict.items():
            member = f"{prefix}data/{ref.storage.key}"
            if member not in members:
                raise CheckpointError(f"{self.name}: {key} refers to storage {member}, which the archive lacks")
            _check_view(self.name, key, ref)
            tensors[key] = self._tensor_info(key, ref, self._zip_reader(member, ref))
        return tensors

    def _zip_reader(self, member: str, ref: TensorRef):
        def read() -> np.ndarray:
            dtype = STORAGE_DTYPES[ref.storage.dtype]
            size = ref.storage.numel * dtype.itemsize
            assert self._zip is not None
            if self._zip.getinfo(member).file_size != size:
                raise CheckpointError(
                    f"{self.name}: storage {member} has {self._zip.getinfo(member).file_size} bytes, the pickle "
                    f"says {size}; the file is damaged"
                )
            buffer = bytearray(size)
            info = self._zip.getinfo(member)
            if info.compress_type == zipfile.ZIP_STORED:
                # torch.save stores storages uncompressed: read the bytes straight into one buffer (zipfile's
                # reader would copy them twice, and the copies fragment the heap of a long conversion).
                self._handle.seek(self._member_data_offset(info))
                count = self._handle.readinto(buffer)
            else:
                with self._zip.open(member) as handle:
                    count = handle.readinto(buffer)
            if count != size:
                raise CheckpointError(f"{self.name}: storage {member} is truncated")
            return _view(np.frombuffer(buffer, dtype=dtype), ref)

        return read

    def _member_data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a member's bytes start: after its local header, whose name and extra field lengths it gives."""
        self._handle.seek(info.header_offset)
        header = self._handle.read(ZIP_LOCAL_HEADER_SIZE)
        if len(header) != ZIP_LOCAL_HEADER_SIZE or header[:4] != ZIP_LOCAL_HEADER:
            raise CheckpointError(f"{self.name}: the zip entry of {info.filename} is damaged")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        return info.header_offset + ZIP_LOCAL_HEADER_SIZE + name_length + extra_length

    # ---- legacy format (torch.save(..., _use_new_zipfile_serialization=False)) ---------------------------
    def _open_legacy(self) -> dict[str, TensorInfo]:
        self._handle.seek(0)
        if tarfile.is_tarfile(self._handle):
            raise CheckpointError(
                f"{self.name}: a tar-format PyTorch checkpoint (PyTorch < 0.4), which this converter does not "
                "read; load it with that PyTorch and save it again with torch.save"
            )
        self._handle.seek(0)
        # torch.save pickles with protocol 2 or later, whose first opcode is PROTO (0x80).
        if self._handle.read(1) != b"\x80":
            raise CheckpointError(
                f"{self.name}: neither a zip archive nor a legacy PyTorch checkpoint; is it a PyTorch file?"
            )
        self._handle.seek(0)
        header = []
        for _ in range(3):
            try:
                header.append(RestrictedUnpickler(self._handle, {}).load())
            except UnsafePickleError as err:
                raise UnsafePickleError(f"{self.name}: {err}") from None
            except Exception:
                raise CheckpointError(
                    f"{self.name}: neither a zip archive nor a legacy PyTorch checkpoint; is it a PyTorch file?"
                ) from None
        magic, protocol, sys_info = header
        if magic != LEGACY_MAGIC_NUMBER or protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{self.name}: not a PyTorch checkpoint (magic number {magic!r})")
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise CheckpointError(f"{self.name}: written on a big-endian machine, which this converter does not read")
        state_dict = _load_state_dict_pickle(self._handle, self.name, legacy=True)
        try:
            storage_keys = RestrictedUnpickler(self._handle, {}).load()
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{self.name}: {err}") from None
        except Exception as err:
            raise CheckpointError(f"{self.name}: the list of storages is unreadable ({err})") from None
        if not isinstance(storage_keys, list):
            raise CheckpointError(f"{self.name}: the list of storages is a {type(storage_keys).__name__}")
        # Storages follow in the order of that list: an int64 element count, then the bytes. Record where each
        # one's bytes are instead of reading them.
        element_sizes = {}
        for ref in state_dict.values():
            element_sizes[ref.storage.key] = STORAGE_DTYPES[ref.storage.dtype].itemsize
        storage_offsets: dict[str, tuple[int, int]] = {}
        file_size = os.fstat(self._handle.fileno()).st_size
        position = self._handle.tell()
        for key in map(str, storage_keys):
            self._handle.seek(position)
            count = self._handle.read(8)
            if len(count) != 8 or key not in element_sizes:
                raise CheckpointError(f"{self.name}: storage {key} is missing or unknown; the file is damaged")
            (numel,) = struct.unpack("<q", count)
            size = numel * element_sizes[key]
            if numel < 0 or position + 8 + size > file_size:
                raise CheckpointError(f"{self.name}: storage {key} runs past the end of the file; it is truncated")
            storage_offsets[key] = (position + 8, numel)
            position += 8 + size
        tensors = {}
        for key, ref in state_dict.items():
            if ref.storage.key not in storage_offsets:
                raise CheckpointError(f"{self.name}: {key} refers to storage {ref.storage.key}, which the file lacks")
            start, root_numel = storage_offsets[ref.storage.key]
            if ref.storage.view_offset + ref.storage.numel > root_numel:
                raise CheckpointError(f"{self.name}: {key} is a view beyond its storage; the file is damaged")
            _check_view(self.name, key, ref)
            tensors[key] = self._tensor_info(key, ref, self._legacy_reader(start, ref))
        return tensors

    def _legacy_reader(self, start: int, ref: TensorRef):
        def read() -> np.ndarray:
            dtype = STORAGE_DTYPES[ref.storage.dtype]
            size = ref.storage.numel * dtype.itemsize
            buffer = bytearray(size)
            self._handle.seek(start + ref.storage.view_offset * dtype.itemsize)
            if self._handle.readinto(buffer) != size:
                raise CheckpointError(f"{self.name}: storage {ref.storage.key} is truncated")
            return _view(np.frombuffer(buffer, dtype=dtype), ref)

        return read

    def _tensor_info(self, key: str, ref: TensorRef, reader) -> TensorInfo:
        identity = (self.name, ref.storage.key, ref.storage.view_offset, ref.offset, ref.shape, ref.stride)
        return TensorInfo(key, ref.storage.dtype, ref.shape, self.name, reader, identity)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        super().close()
