"""Readers of single-cell count files (.h5ad through anndata in backed mode, .loom through loompy), block by block.

Every reader gives the same view: cells x genes blocks as CSR matrices, gene attributes (var columns / loom row
attributes) and cell attributes (obs columns / loom column attributes). Memory is bounded by one block: an .h5ad is
opened in backed mode and a block of rows is read from the CSR arrays; a loom block is a slab of columns.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

SUPPORTED_FORMATS = ("h5ad", "loom", "zarr")


class TokenizerInputError(ValueError):
    """An input the tokenizer cannot turn into a correct dataset; the message names the file and the fix."""


class TokenizerWarning(UserWarning):
    """Something about an input that may make the dataset differ from what the user expects."""


def file_format_of(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in SUPPORTED_FORMATS:
        raise TokenizerInputError(
            f"{path}: unsupported file type '.{suffix}'; the tokenizer reads .h5ad, .loom and .zarr (AnnData)"
        )
    return suffix


def _corrupt(path: Path, kind: str, error: BaseException) -> TokenizerInputError:
    return TokenizerInputError(
        f"{path}: cannot be read as {kind} ({type(error).__name__}: {error}). The file is corrupt or truncated "
        "(an interrupted download or copy?): re-create or re-download it."
    )


class CellFile:
    """A cells x genes count file opened for reading in blocks of cells."""

    path: Path
    format: str
    n_cells: int
    n_genes: int

    def gene_attribute_names(self) -> list[str]:
        raise NotImplementedError

    def gene_attribute(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def gene_index(self) -> np.ndarray | None:
        """The .h5ad var index (gene names); None for formats without one."""
        return None

    def cell_attribute_names(self) -> list[str]:
        raise NotImplementedError

    def cell_attribute(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def read_block(self, start: int, stop: int) -> sp.csr_matrix:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> CellFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class H5adFile(CellFile):
    format = "h5ad"

    def __init__(self, path: Path) -> None:
        import anndata

        self.path = path
        try:
            self._adata = anndata.read_h5ad(path, backed="r")
        except Exception as error:  # h5py raises OSError, anndata KeyError/ValueError on damaged layouts
            raise _corrupt(path, ".h5ad", error) from error
        self.n_cells, self.n_genes = (int(n) for n in self._adata.shape)
        self._matrix = self._adata.X
        self._in_memory = None
        self._csr_arrays = None
        if self._matrix is None:
            raise TokenizerInputError(f"{path}: the file has no X matrix; the tokenizer needs raw counts in X")
        group = self._adata.file["X"]
        if getattr(self._matrix, "format", None) == "csr" and all(k in group for k in ("data", "indices", "indptr")):
            # Slicing the three CSR arrays with h5py directly: anndata's row slicing adds ~10 ms of checks per call.
            self._csr_arrays = (group["data"], group["indices"], group["indptr"])
        if getattr(self._matrix, "format", None) == "csc":
            warnings.warn(
                f"{path}: X is stored column-wise (CSC), which cannot be read in blocks of cells; loading it whole, "
                "so memory is not bounded. Save it as CSR (adata.X = adata.X.tocsr(); adata.write_h5ad(...)) "
                "for large files.",
                TokenizerWarning,
                stacklevel=3,
            )
            self._in_memory = sp.csr_matrix(self._read(lambda: self._matrix.to_memory(), 0, self.n_cells))

    def _read(self, reader: Any, start: int, stop: int) -> Any:
        try:
            return reader()
        except Exception as error:
            raise TokenizerInputError(
                f"{self.path}: reading cells {start}..{stop - 1} failed ({type(error).__name__}: {error}). The file "
                "is corrupt or truncated: re-create or re-download it."
            ) from error

    def gene_attribute_names(self) -> list[str]:
        return [str(c) for c in self._adata.var.columns]

    def gene_attribute(self, name: str) -> np.ndarray:
        return np.asarray(self._adata.var[name].astype(str))

    def gene_index(self) -> np.ndarray:
        return np.asarray(self._adata.var_names.astype(str))

    def cell_attribute_names(self) -> list[str]:
        return [str(c) for c in self._adata.obs.columns]

    def cell_attribute(self, name: str) -> np.ndarray:
        column = self._adata.obs[name]
        if hasattr(column, "cat"):
            # categories become their values, as the reference's obs[k].tolist() gives them
            return np.asarray(column.astype(column.cat.categories.dtype))
        return np.asarray(column)

    def read_block(self, start: int, stop: int) -> sp.csr_matrix:
        if self._in_memory is not None:
            return self._in_memory[start:stop]
        if self._csr_arrays is not None:
            data, indices, indptr = self._csr_arrays

            def read_csr() -> sp.csr_matrix:
                offsets = indptr[start : stop + 1].astype(np.int64)
                first, last = int(offsets[0]), int(offsets[-1])
                return sp.csr_matrix(
                    (data[first:last], indices[first:last], offsets - first), shape=(stop - start, self.n_genes)
                )

            return self._read(read_csr, start, stop)
        block = self._read(lambda: self._matrix[start:stop], start, stop)
        return block if isinstance(block, sp.csr_matrix) else sp.csr_matrix(block)

    def close(self) -> None:
        if getattr(self._adata, "isbacked", False):
            self._adata.file.close()


class ZarrFile(H5adFile):
    """An AnnData .zarr store (a directory). anndata reads it whole (it has no backed mode for zarr), as the
    reference does: memory grows with the file; convert large ones to .h5ad (adata.write_h5ad) to read in blocks."""

    format = "zarr"

    def __init__(self, path: Path) -> None:
        import anndata

        self.path = path
        try:
            self._adata = anndata.read_zarr(str(path))
        except Exception as error:
            raise _corrupt(path, ".zarr", error) from error
        self.n_cells, self.n_genes = (int(n) for n in self._adata.shape)
        self._matrix = self._adata.X
        self._csr_arrays = None
        if self._matrix is None:
            raise TokenizerInputError(f"{path}: the store has no X matrix; the tokenizer needs raw counts in X")
        self._in_memory = sp.csr_matrix(self._matrix)

    def close(self) -> None:
        self._adata = None


class LoomFile(CellFile):
    format = "loom"

    def __init__(self, path: Path) -> None:
        import loompy

        self.path = path
        try:
            self._connection = loompy.connect(str(path), mode="r", validate=False)
            self.n_genes, self.n_cells = (int(n) for n in self._connection.shape)
        except Exception as error:
            raise _corrupt(path, ".loom", error) from error

    def gene_attribute_names(self) -> list[str]:
        return list(self._connection.ra.keys())

    def gene_attribute(self, name: str) -> np.ndarray:
        return np.asarray(self._connection.ra[name]).astype(str)

    def cell_attribute_names(self) -> list[str]:
        return list(self._connection.ca.keys())

    def cell_attribute(self, name: str) -> np.ndarray:
        return np.asarray(self._connection.ca[name])

    def read_block(self, start: int, stop: int) -> sp.csr_matrix:
        try:
            slab = self._connection[:, start:stop]
        except Exception as error:
            raise TokenizerInputError(
                f"{self.path}: reading cells {start}..{stop - 1} failed ({type(error).__name__}: {error}). The file "
                "is corrupt or truncated: re-create or re-download it."
            ) from error
        return sp.csr_matrix(slab.T)

    def close(self) -> None:
        self._connection.close()


def open_cell_file(path: str | os.PathLike[str]) -> CellFile:
    """Open an .h5ad, .loom or .zarr file for block reading; errors name the file and what is wrong with it."""
    path = Path(path)
    file_format = file_format_of(path)
    if file_format == "zarr":  # a zarr store is a directory
        if not path.is_dir():
            raise TokenizerInputError(f"{path}: no such .zarr store (a directory)")
        return ZarrFile(path)
    if not path.is_file():
        raise TokenizerInputError(f"{path}: no such file")
    if file_format == "h5ad":
        return H5adFile(path)
    return LoomFile(path)
