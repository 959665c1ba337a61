"""The one atomic writer of the package: every file and directory it writes goes through here.

A file is written under a temporary name in its destination's directory and renamed onto the destination; a
directory is assembled in a hidden temporary sibling and renamed into place (an existing one is moved aside first,
since a directory rename cannot overwrite, and put back if the rename fails). An interrupted or failed write leaves
the previous file or directory, or nothing, never half of one; the temporary is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def ensure_dir(path: str | os.PathLike) -> Path:
    """`path` as a directory, created with its parents when missing."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- files ---------------------------------------------------------------------------------------------------------
@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "", mode: int | None = 0o644) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it when the block succeeds and removed when it fails.

    `suffix` (default: `path`'s own) ends the temporary name: writers that pick a format from the file name (numpy,
    matplotlib, anndata) need it. `mode` is given to the file before the rename (mkstemp creates it private, 0600;
    an output should be readable like any new file); None keeps it private.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix or path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if mode is not None:
            os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """`text` as UTF-8; `fsync` flushes it to the disk before the rename (a checkpoint's state must survive a crash)."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, sort_keys: bool = False, fsync: bool = False) -> Path:
    """`data` as indented JSON with a final newline (numpy scalars and arrays, and paths, written as plain values)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=_json_default) + "\n", fsync)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, without importing numpy here (config.json is written by a stdlib-only module)
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_csv(path: str | os.PathLike, frame: Any, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV."""
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=index)
    return Path(path)


def matplotlib_pyplot() -> Any:
    """pyplot on the non-interactive Agg backend (runs on machines without a display)."""
    # imported here: matplotlib is heavy (about a second), and only the jobs that plot need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(
    figure: Any, stem: str | os.PathLike, formats: tuple[str, ...] = ("png", "pdf"), **options: Any
) -> list[Path]:
    """Save a matplotlib figure as `stem.png` and `stem.pdf` (each atomically), close it, return the paths.
    `options` go to `savefig` (default: 150 dpi for PNG, a tight bounding box)."""
    written = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        settings = {"dpi": 150 if fmt == "png" else None, "bbox_inches": "tight", **options}
        with atomic_file(path) as tmp:
            figure.savefig(tmp, format=fmt, **settings)
        written.append(path)
    matplotlib_pyplot().close(figure)
    return written


# ---- directories -------------------------------------------------------------------------------------------------
def staging_directory(destination: str | os.PathLike) -> Path:
    """A fresh hidden directory beside `destination`, on the same file system so that the final rename is atomic."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any new directory
    return staging


def publish_directory(staging: Path, destination: str | os.PathLike, force: bool) -> Path:
    """Rename `staging` onto `destination`. An existing `destination` (allowed only with `force`) is moved aside
    first, put back if the rename fails, and removed after it succeeds."""
    destination = Path(destination)
    if not (destination.exists() or destination.is_symlink()):
        os.replace(staging, destination)
        return destination
    if not force:
        raise FileExistsError(
            f"{destination} appeared while it was being written; pass --force (force=True) to replace it"
        )
    retired = destination.with_name(f".{destination.name}.replaced-{uuid.uuid4().hex[:8]}")
    os.replace(destination, retired)
    try:
        os.replace(staging, destination)
    except BaseException:
        os.replace(retired, destination)
        raise
    if retired.is_dir() and not retired.is_symlink():
        shutil.rmtree(retired, ignore_errors=True)
    else:
        retired.unlink()
    return destination


@contextmanager
def atomic_directory(destination: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """A temporary directory beside `destination` for the block to fill, renamed onto `destination` when the block
    succeeds and removed when it fails. An existing `destination` is replaced only with `force`."""
    destination = Path(destination)
    if (destination.exists() or destination.is_symlink()) and not force:
        raise FileExistsError(f"{destination} already exists; pass --force (force=True) to replace it")
    staging = staging_directory(destination)
    try:
        yield staging
        publish_directory(staging, destination, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
