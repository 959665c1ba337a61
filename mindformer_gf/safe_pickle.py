"""A restricted unpickler for files from strangers (Geneformer dictionaries, PyTorch checkpoints).

`pickle.load` runs whatever a file asks it to: any importable callable can be named by a GLOBAL opcode and called
by REDUCE. Here every global the file names is looked up in an allow-list first; anything else is refused with an
error that names it, before it is imported, so a crafted file executes nothing.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global that is not on the allow-list; nothing of it was executed."""


def _numpy_scalar(dtype: Any, data: bytes) -> Any:
    """Rebuild a numpy scalar (what `numpy.core.multiarray.scalar` does) without trusting any other global."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UnsafePickleError("numpy object scalars are not allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_dtype(name: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise UnsafePickleError("numpy object dtypes are not allowed")
    return dtype


# Globals that dictionaries of str/int/float/numpy scalars need. Values are the callables actually used.
DICTIONARY_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose `find_class` only returns allow-listed callables."""

    def __init__(
        self,
        file: IO[bytes],
        allowed: Mapping[tuple[str, str], Callable[..., Any]],
        persistent_load: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(file)
        self._allowed = dict(allowed)
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles name Python 2 modules (`__builtin__.set`): map them as pickle itself does. The
        # tables only hold Python 2 names, so Python 3 names pass through unchanged.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: it is not something this kind of file needs, and loading "
                "it could run code. Only open pickles from sources you trust with plain pickle."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError(f"unexpected persistent id {pid!r} in a file that should hold plain data")
        return self._persistent(pid)


def safe_load(
    source: str | bytes | IO[bytes],
    allowed: Mapping[tuple[str, str], Callable[..., Any]] | None = None,
    extra_allowed: Iterable[tuple[tuple[str, str], Callable[..., Any]]] = (),
) -> Any:
    """Load a pickle admitting only `allowed` globals (default: plain containers and numpy scalars)."""
    table = dict(DICTIONARY_GLOBALS if allowed is None else allowed)
    table.update(extra_allowed)
    if isinstance(source, bytes):
        return RestrictedUnpickler(io.BytesIO(source), table).load()
    if isinstance(source, str):
        with open(source, "rb") as handle:
            return RestrictedUnpickler(handle, table).load()
    return RestrictedUnpickler(source, table).load()
