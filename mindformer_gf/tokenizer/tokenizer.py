"""TranscriptomeTokenizer: .h5ad/.loom files of raw counts -> a Geneformer dataset of rank value encoded cells.

Flow: every input file is checked and planned first (gene mapping, n_counts, filter_pass, attributes), so bad input
fails before any work; then the cells, as contiguous ranges split over `nproc` worker processes, are read in blocks
of `chunk_size` cells, encoded (by the native kernel, `native.encode_csr`, which also selects the dictionary genes and
counts odd values in the same pass; or by the numpy code, `encode.rank_value_encode`, with identical output) and
written as Arrow shards under a temporary name; finally the shards are published as `{output_dir}/{prefix}.dataset`
in one rename. Output rows keep input order (files in the given order, cells in file order). Workers report counts
(empty cells, non-integer values, ...) and the parent turns them into warnings, so a run says the same with one
process or many.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import shutil
import traceback
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

import mindformer_gf
from mindformer_gf.io import staging_directory
from mindformer_gf.tokenizer import native
from mindformer_gf.tokenizer.dictionaries import (
    CLS_TOKEN,
    EOS_TOKEN,
    GeneDictionaries,
    load_gene_dictionaries,
)
from mindformer_gf.tokenizer.encode import (
    BACKENDS,
    NON_FINITE_MESSAGE,
    TARGET_SUM,
    RankedCells,
    add_special_tokens,
    drop_cells,
    rank_value_encode,
    resolve_backend,
    truncate_cells,
)
from mindformer_gf.tokenizer.genes import INDEX_ATTRIBUTE, GenePlan, plan_genes
from mindformer_gf.tokenizer.readers import (
    SUPPORTED_FORMATS,
    CellFile,
    TokenizerInputError,
    TokenizerWarning,
    file_format_of,
    open_cell_file,
)
from mindformer_gf.tokenizer.writer import (
    METADATA_FORMAT,
    METADATA_FORMAT_VERSION,
    RESERVED_COLUMNS,
    ShardWriter,
    cells_table,
    dataset_schema,
    publish_dataset,
)

logger = logging.getLogger(__name__)

TIE_BREAK_RULE = "equal normalised values are ordered by token id, ascending"
DEFAULT_MODEL_INPUT_SIZE = {"V1": 2048, "V2": 4096}
N_COUNTS = "n_counts"
FILTER_PASS = "filter_pass"
COUNTS = "counts"  # the keep_counts column


@dataclass
class FilePlan:
    """What the workers need to tokenize one file; built and checked in the parent."""

    path: str
    n_cells: int
    genes: GenePlan
    has_n_counts: bool
    has_filter_pass: bool


@dataclass
class Settings:
    """Per-run constants handed to every worker."""

    max_genes: int
    special_tokens: tuple[int, int] | None
    chunk_size: int
    attributes: dict[str, str]  # input cell attribute -> output column
    schema: pa.Schema
    backend: str = "native"  # "native" or "numpy", resolved in the parent
    keep_counts: bool = False  # a "counts" column beside input_ids (the reference's keep_counts)


STAT_KEYS = (
    "cells_read",
    "cells_filtered_out",
    "cells_empty_dropped",
    "cells_written",
    "cells_truncated",
    "negative_values",
    "non_integer_values",
    "cells_n_counts_below_total",
)


@dataclass
class TokenizeResult:
    """What a run produced: the dataset directory and per-file counts (keys in STAT_KEYS)."""

    path: Path
    cells_written: int
    files: dict[str, dict[str, int]] = field(default_factory=dict)


def _empty_stats() -> dict[str, int]:
    return dict.fromkeys(STAT_KEYS, 0)


def find_input_files(
    inputs: Iterable[str | os.PathLike[str]], file_format: str | None = None, input_identifier: str = ""
) -> list[Path]:
    """Input files in order: files as given, directories expanded to their .h5ad/.loom/.zarr files (sorted by name)
    whose names contain `input_identifier` (the reference's `*{input_identifier}*.{file_format}`)."""
    formats = SUPPORTED_FORMATS if file_format is None else (file_format,)
    if file_format is not None and file_format not in SUPPORTED_FORMATS:
        raise ValueError(f"file_format must be one of {SUPPORTED_FORMATS}, got {file_format!r}")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and path.suffix.lower() != ".zarr":
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower().lstrip(".") in formats
                and input_identifier in p.stem
                and (p.is_file() or (p.suffix.lower() == ".zarr" and p.is_dir()))
            )
            if not found:
                named = f" with '{input_identifier}' in the name" if input_identifier else ""
                kinds = " or ".join(formats) if len(formats) < 3 else f"{', '.join(formats[:-1])} or {formats[-1]}"
                raise TokenizerInputError(f"{path}: the directory holds no {kinds} files{named}")
            files.extend(found)
        elif path.exists():
            file_format_of(path)
            files.append(path)
        else:
            raise TokenizerInputError(f"{path}: no such file or directory")
    if not files:
        raise TokenizerInputError("no input files given")
    return files


def select_genes(block: sp.csr_matrix, plan: GenePlan) -> sp.csr_matrix:
    """The block's dictionary genes as columns `0..n_slots-1`; genes mapping to one ID are summed."""
    slots = plan.column_slot[block.indices]
    keep = slots >= 0
    data, indptr = block.data, block.indptr
    if not keep.all():
        kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
        data, slots, indptr = data[keep], slots[keep], kept_before[indptr]
    selected = sp.csr_matrix((data, slots, indptr), shape=(block.shape[0], plan.n_slots))
    if plan.has_duplicates:
        selected.sum_duplicates()
    return selected


def _arrow_column(values: np.ndarray, dtype: pa.DataType | None, name: str, path: str) -> pa.Array:
    if values.dtype.kind == "U":
        values = values.astype(object)
    try:
        return pa.array(values, type=dtype, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise TokenizerInputError(
            f"{path}: cell attribute '{name}' has values that do not fit the column type {dtype} taken from the "
            f"first file ({error}); give it the same type in every input file"
        ) from error


class _FileCursor:
    """One open file and its per-cell columns, inside a worker."""

    def __init__(self, plan: FilePlan, settings: Settings) -> None:
        self.plan = plan
        self.file: CellFile = open_cell_file(plan.path)
        self.n_counts = self.file.cell_attribute(N_COUNTS).astype(np.float64) if plan.has_n_counts else None
        self.filter_pass = self.file.cell_attribute(FILTER_PASS) == 1 if plan.has_filter_pass else None
        self.attributes = {name: self.file.cell_attribute(name) for name in settings.attributes}
        genes = plan.genes
        # with duplicates the kernel sees the block after select_genes has summed them: its columns are the slots
        columns = np.arange(genes.n_slots) if genes.has_duplicates else genes.column_slot
        self.column_tokens, self.column_medians = native.column_tables(columns, genes.slot_tokens, genes.slot_medians)


def _count_values(data: np.ndarray, stats: dict[str, int]) -> None:
    if data.size:
        stats["negative_values"] += int((data < 0).sum())
        if data.dtype.kind == "f":
            stats["non_integer_values"] += int(np.count_nonzero(data != np.rint(data)))


def _rank_block_native(
    block: sp.csr_matrix, n_counts: np.ndarray, cursor: _FileCursor, settings: Settings, stats: dict[str, int]
) -> tuple[RankedCells, np.ndarray]:
    """Non-empty cells of the block, truncated and framed; and every cell's number of expressed genes."""
    if cursor.plan.genes.has_duplicates:
        _count_values(block.data, stats)
        block = select_genes(block, cursor.plan.genes)
    encoded = native.encode_csr(
        block.data,
        block.indices,
        block.indptr,
        cursor.column_tokens,
        cursor.column_medians,
        n_counts,
        TARGET_SUM,
        settings.max_genes,
        settings.special_tokens,
    )
    if encoded.non_finite_values:
        raise ValueError(NON_FINITE_MESSAGE)
    if not cursor.plan.genes.has_duplicates:
        stats["negative_values"] += encoded.negative_values
        stats["non_integer_values"] += encoded.non_integer_values
    expressed = encoded.expressed > 0
    # empty cells hold no token, so dropping them only drops their offsets
    offsets = encoded.offsets if expressed.all() else np.concatenate([[0], encoded.offsets[1:][expressed]])
    return RankedCells(offsets=offsets, tokens=encoded.tokens), encoded.expressed


def _rank_block_numpy(
    block: sp.csr_matrix, n_counts: np.ndarray, cursor: _FileCursor, settings: Settings, stats: dict[str, int]
) -> tuple[RankedCells, np.ndarray]:
    """What _rank_block_native returns, from the numpy code."""
    _count_values(block.data, stats)
    genes = cursor.plan.genes
    ranked = rank_value_encode(
        select_genes(block, genes), n_counts, genes.slot_tokens, genes.slot_medians, backend="numpy"
    )
    lengths = ranked.lengths
    expressed = lengths > 0
    if not expressed.all():
        ranked = drop_cells(ranked, expressed)
    ranked = truncate_cells(ranked, settings.max_genes)
    if settings.special_tokens is not None:
        ranked = add_special_tokens(ranked, *settings.special_tokens)
    return ranked, lengths


def _encode_block(
    cursor: _FileCursor, start: int, stop: int, settings: Settings, stats: dict[str, int]
) -> pa.Table | None:
    plan = cursor.plan
    block = cursor.file.read_block(start, stop)
    rows = np.arange(start, stop)
    stats["cells_read"] += stop - start
    if cursor.filter_pass is not None:
        passing = cursor.filter_pass[start:stop]
        if not passing.all():
            stats["cells_filtered_out"] += int((~passing).sum())
            rows = rows[passing]
            block = block[passing]
    if block.shape[0] == 0:
        return None
    totals = np.asarray(block.sum(axis=1), dtype=np.float64).reshape(-1)
    if cursor.n_counts is None:
        n_counts = totals
    else:
        n_counts = cursor.n_counts[rows]
        stats["cells_n_counts_below_total"] += int((n_counts < totals * (1 - 1e-6) - 1e-6).sum())
    valid_n_counts = np.isfinite(n_counts) & (n_counts > 0)
    rank_block = _rank_block_native if settings.backend == "native" else _rank_block_numpy
    try:
        ranked, expressed_genes = rank_block(block, np.where(valid_n_counts, n_counts, 1.0), cursor, settings, stats)
    except ValueError as error:
        raise TokenizerInputError(f"{plan.path}, cells {start}..{stop - 1}: {error}") from error
    expressed = expressed_genes > 0
    invalid = np.flatnonzero(expressed & ~valid_n_counts)
    if invalid.size:
        raise TokenizerInputError(
            f"{plan.path}: n_counts is zero, negative or missing for {invalid.size} cells with counts (first: cell "
            f"{int(rows[invalid[0]])}, n_counts={n_counts[invalid[0]]}); n_counts must be each cell's total count "
            "over all genes"
        )
    if not expressed.all():
        stats["cells_empty_dropped"] += int((~expressed).sum())
        rows = rows[expressed]
    if rows.size == 0:
        return None
    stats["cells_truncated"] += int((expressed_genes > settings.max_genes).sum())
    stats["cells_written"] += len(rows)
    schema = settings.schema
    attributes = {
        out: _arrow_column(cursor.attributes[name][rows], schema.field(out).type, name, plan.path)
        for name, out in settings.attributes.items()
    }
    if settings.keep_counts:
        positions = np.flatnonzero(expressed)
        attributes[COUNTS] = counts_column(block[positions], n_counts[positions], ranked, plan.genes)
    return cells_table(ranked, attributes, schema)


def counts_column(
    block: sp.csr_matrix, n_counts: np.ndarray, ranked: RankedCells, genes: GenePlan, target_sum: float = TARGET_SUM
) -> pa.Array:
    """The reference's keep_counts column: per cell, each token's count normalised to TARGET_SUM (count / n_counts
    * 10,000, not divided by the gene median), in the token order of input_ids; 0.0 at <cls>/<eos>. `block` holds
    the ranked cells' rows (empty cells dropped)."""
    selected = select_genes(block, genes)
    rows = np.repeat(np.arange(selected.shape[0], dtype=np.int64), np.diff(selected.indptr))
    tokens = genes.slot_tokens[selected.indices].astype(np.int64)
    values = selected.data.astype(np.float64) / n_counts[rows] * target_sum
    stride = int(max(tokens.max(initial=0), ranked.tokens.max(initial=0))) + 1
    keys = rows * stride + tokens
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    ranked_rows = np.repeat(np.arange(len(ranked.lengths), dtype=np.int64), ranked.lengths)
    wanted = ranked_rows * stride + ranked.tokens.astype(np.int64)
    found = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
    counts = np.where(keys.size and keys[found] == wanted, values[found] if keys.size else 0.0, 0.0)
    return pa.ListArray.from_arrays(pa.array(ranked.offsets.astype(np.int32)), pa.array(counts, pa.float64()))


def _run_segments(
    segments: Sequence[tuple[int, int, int]],
    plans: Sequence[FilePlan],
    settings: Settings,
    output_dir: Path,
    stem: str,
    report_progress: Any,
) -> tuple[list[tuple[str, int]], dict[str, dict[str, int]]]:
    """Tokenize cell ranges (file index, start, stop) into shards; the body of every worker."""
    writer = ShardWriter(output_dir, stem, settings.schema)
    stats: dict[str, dict[str, int]] = {}
    cursor: _FileCursor | None = None
    try:
        for file_index, start, stop in segments:
            plan = plans[file_index]
            if cursor is None or cursor.plan.path != plan.path:
                if cursor is not None:
                    cursor.file.close()
                cursor = _FileCursor(plan, settings)
            file_stats = stats.setdefault(plan.path, _empty_stats())
            for block_start in range(start, stop, settings.chunk_size):
                block_stop = min(block_start + settings.chunk_size, stop)
                table = _encode_block(cursor, block_start, block_stop, settings, file_stats)
                if table is not None:
                    writer.write(table)
                report_progress(block_stop - block_start)
    finally:
        if cursor is not None:
            cursor.file.close()
        shards = writer.close()
    return shards, stats


def _keep_freed_memory_for_reuse() -> None:
    """Ask glibc to keep freed memory instead of returning it to the system at once (worker processes only).

    Every block allocates and frees arrays of a few MB; by default glibc maps each afresh and unmaps it on free, so
    each block pays page faults for memory it just gave back (about 10% of the CPU time). Memory stays bounded by the
    largest block.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 512 * 1024 * 1024)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 256 * 1024 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: keep the defaults


def _worker_main(message_queue: Any, worker_index: int, *args: Any) -> None:
    """Entry point of a worker process: results and failures go back through `message_queue`."""
    _keep_freed_memory_for_reuse()
    try:
        result = _run_segments(*args, report_progress=lambda n: message_queue.put(("progress", worker_index, n)))
        message_queue.put(("done", worker_index, result))
    except BaseException as error:  # noqa: BLE001 - everything must reach the parent, which re-raises it
        try:
            message_queue.put(("error", worker_index, (error, traceback.format_exc())))
        except Exception:
            message_queue.put(("error", worker_index, (None, traceback.format_exc())))


def split_segments(n_cells: Sequence[int], n_parts: int) -> list[list[tuple[int, int, int]]]:
    """Split the concatenated cells of all files into `n_parts` contiguous runs of (file, start, stop) ranges."""
    total = sum(n_cells)
    bounds = [round(total * k / n_parts) for k in range(n_parts + 1)]
    parts: list[list[tuple[int, int, int]]] = []
    for part_start, part_stop in zip(bounds[:-1], bounds[1:], strict=True):
        segments = []
        offset = 0
        for file_index, count in enumerate(n_cells):
            start, stop = max(part_start - offset, 0), min(part_stop - offset, count)
            if start < stop:
                segments.append((file_index, start, stop))
            offset += count
        parts.append(segments)
    return parts


class TranscriptomeTokenizer:
    """Rank value encode single-cell transcriptomes into Geneformer input (the reference's class, faster and safe).

    custom_attr_name_dict: cell attributes to carry over, {input name: output column}.
    nproc: worker processes. chunk_size: cells read and encoded at a time (bounds memory).
    model_input_size: tokens per cell including special tokens (default 2048 for V1, 4096 for V2).
    special_token: add <cls>/<eos> (default: False for V1, True for V2). collapse_gene_ids: sum genes that map to
    the same Ensembl ID (else refuse them). use_h5ad_index: the .h5ad/.zarr var index holds the Ensembl IDs (the
    reference's; same as gene_id_attr="index"). keep_counts: also write a "counts" column, each token's count
    normalised to 10,000 per cell (not divided by the gene median), in input_ids' order, 0.0 at <cls>/<eos>.
    model_version: "V2" (the reference's default: pass the V2 files, which are not shipped: token_dictionary_file,
    gene_median_file and usually gene_mapping_file) or "V1" (the shipped dictionaries).
    gene_id: "ensembl" (IDs in the gene attribute `gene_id_attr`, default 'ensembl_id') or "symbol" (symbols in
    `gene_id_attr`, default the .h5ad var index / loom 'Gene', mapped through the gene name dictionary).
    backend: "auto" (the native kernel if built, else numpy with a warning), "native" or "numpy"; the datasets are
    identical, the native kernel is several times faster.
    """

    def __init__(
        self,
        custom_attr_name_dict: Mapping[str, str] | None = None,
        nproc: int = 1,
        chunk_size: int = 512,
        model_input_size: int | None = None,
        special_token: bool | None = None,
        collapse_gene_ids: bool = True,
        use_h5ad_index: bool = False,
        keep_counts: bool = False,
        model_version: str = "V2",
        gene_median_file: str | os.PathLike[str] | None = None,
        token_dictionary_file: str | os.PathLike[str] | None = None,
        gene_mapping_file: str | os.PathLike[str] | None = None,
        gene_name_file: str | os.PathLike[str] | None = None,
        gene_id: str = "ensembl",
        gene_id_attr: str | None = None,
        progress: bool = True,
        backend: str = "auto",
    ) -> None:
        if nproc < 1 or chunk_size < 1:
            raise ValueError(f"nproc and chunk_size must be at least 1, got {nproc} and {chunk_size}")
        self.dictionaries: GeneDictionaries = load_gene_dictionaries(
            model_version,
            token_dictionary_file=token_dictionary_file,
            gene_median_file=gene_median_file,
            gene_mapping_file=gene_mapping_file,
            gene_name_file=gene_name_file,
            load_gene_names=gene_id == "symbol",
        )
        self.model_version = model_version
        self.model_input_size = int(model_input_size or DEFAULT_MODEL_INPUT_SIZE[model_version])
        self.special_token = (model_version == "V2") if special_token is None else bool(special_token)
        token = self.dictionaries.token
        if self.special_token:
            missing = [t for t in (CLS_TOKEN, EOS_TOKEN) if t not in token]
            if missing:
                raise ValueError(
                    f"special_token=True needs {CLS_TOKEN} and {EOS_TOKEN} in the token dictionary, but "
                    f"{self.dictionaries.name} lacks {missing}: it is a V1 dictionary; use model_version='V1' or a "
                    "V2 dictionary"
                )
            if self.model_input_size < 3:
                raise ValueError(
                    f"model_input_size {self.model_input_size} leaves no room for genes between <cls>/<eos>"
                )
        elif CLS_TOKEN in token and EOS_TOKEN in token:
            warnings.warn(
                f"the token dictionary {self.dictionaries.name} has {CLS_TOKEN}/{EOS_TOKEN} but special_token=False: "
                "V2 models expect them (special_token=True)",
                TokenizerWarning,
                stacklevel=2,
            )
        self.custom_attr_name_dict = dict(custom_attr_name_dict or {})
        clashes = [out for out in self.custom_attr_name_dict.values() if out in RESERVED_COLUMNS]
        if clashes:
            raise ValueError(f"custom attribute output names {clashes} clash with the columns {RESERVED_COLUMNS}")
        self.nproc = int(nproc)
        self.chunk_size = int(chunk_size)
        self.collapse_gene_ids = collapse_gene_ids
        if use_h5ad_index and gene_id_attr not in (None, INDEX_ATTRIBUTE):
            raise ValueError(
                f"use_h5ad_index=True reads gene IDs from the var index, not gene_id_attr={gene_id_attr!r}"
            )
        if keep_counts and COUNTS in self.custom_attr_name_dict.values():
            raise ValueError(f"keep_counts=True writes the column {COUNTS!r}: rename that custom attribute")
        self.use_h5ad_index = bool(use_h5ad_index)
        self.keep_counts = bool(keep_counts)
        self.gene_id = gene_id
        self.gene_id_attr = gene_id_attr
        self.progress = progress
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend

    # -- planning ----------------------------------------------------------------------------------------------------
    def _plan_file(self, path: Path, attribute_types: dict[str, pa.DataType]) -> FilePlan:
        with open_cell_file(path) as cell_file:
            attribute = self.gene_id_attr
            if self.use_h5ad_index and cell_file.format != "loom":  # as the reference: the index of .h5ad/.zarr only
                attribute = INDEX_ATTRIBUTE
            genes = plan_genes(cell_file, self.dictionaries, self.gene_id, attribute, self.collapse_gene_ids)
            cell_attributes = cell_file.cell_attribute_names()
            missing = [name for name in self.custom_attr_name_dict if name not in cell_attributes]
            if missing:
                where = "obs columns" if cell_file.format != "loom" else "column attributes"
                raise TokenizerInputError(
                    f"{path}: custom attributes {missing} not found; {where} found: {cell_attributes or 'none'}"
                )
            for name, out in self.custom_attr_name_dict.items():
                values = cell_file.cell_attribute(name)
                dtype = _arrow_column(values[: min(len(values), 1000)], None, name, str(path)).type
                if out not in attribute_types or pa.types.is_null(attribute_types[out]):
                    attribute_types[out] = dtype
            has_n_counts = N_COUNTS in cell_attributes
            if not has_n_counts:
                warnings.warn(
                    f"{path}: no cell attribute '{N_COUNTS}'; computing it as each cell's total over the "
                    f"{cell_file.n_genes} genes in the file. It must be the total over ALL genes: if the file holds "
                    "a subset of genes (e.g. after feature selection), store the true totals in n_counts.",
                    TokenizerWarning,
                    stacklevel=3,
                )
            has_filter = FILTER_PASS in cell_attributes
            logger.info(
                "%s: %d cells, %d of %d genes in the dictionary",
                path,
                cell_file.n_cells,
                genes.n_matched,
                genes.n_genes,
            )
            return FilePlan(str(path), cell_file.n_cells, genes, has_n_counts, has_filter)

    # -- running -----------------------------------------------------------------------------------------------------
    def tokenize_files(
        self,
        data_directory: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        output_directory: str | os.PathLike[str] | None = None,
        output_prefix: str | None = None,
        file_format: str | None = None,
        overwrite: bool = False,
        input_identifier: str = "",
        inputs: Sequence[str | os.PathLike[str]] | None = None,
    ) -> TokenizeResult:
        """Tokenize files and directories of files (one path or a list) into
        `{output_directory}/{output_prefix}.dataset`. Unlike the reference's tokenize_files, which returns the token
        lists in memory for create_dataset, this streams them to the dataset. `inputs` is this method's earlier
        name for data_directory (DeprecationWarning)."""
        if inputs is not None:
            if data_directory is not None:
                raise TypeError("tokenize_files() got both 'inputs' and its reference name 'data_directory'")
            warnings.warn("tokenize_files(inputs=...) is now data_directory=", DeprecationWarning, stacklevel=2)
            data_directory = inputs
        if data_directory is None or output_directory is None or output_prefix is None:
            raise TypeError("tokenize_files() needs data_directory, output_directory and output_prefix")
        if not output_prefix or "/" in output_prefix or output_prefix.startswith("."):
            raise ValueError(f"output_prefix must be a plain file name, got {output_prefix!r}")
        inputs = [data_directory] if isinstance(data_directory, (str, os.PathLike)) else data_directory
        files = find_input_files(inputs, file_format, input_identifier)
        output_directory = Path(output_directory)
        final_dir = output_directory / f"{output_prefix}.dataset"
        if final_dir.exists() and not overwrite:
            raise FileExistsError(f"{final_dir} already exists; pass force=True (--force) to replace it")
        attribute_types: dict[str, pa.DataType] = {}
        plans = [self._plan_file(path, attribute_types) for path in files]
        columns = {COUNTS: pa.list_(pa.float64())} if self.keep_counts else {}
        columns.update({out: attribute_types[out] for out in self.custom_attr_name_dict.values()})
        schema = dataset_schema(columns)
        token = self.dictionaries.token
        settings = Settings(
            max_genes=self.model_input_size - (2 if self.special_token else 0),
            special_tokens=(token[CLS_TOKEN], token[EOS_TOKEN]) if self.special_token else None,
            chunk_size=self.chunk_size,
            attributes=self.custom_attr_name_dict,
            schema=schema,
            backend=resolve_backend(self.backend),
            keep_counts=self.keep_counts,
        )
        total_cells = sum(plan.n_cells for plan in plans)
        n_workers = max(1, min(self.nproc, -(-total_cells // self.chunk_size)))
        output_directory.mkdir(parents=True, exist_ok=True)
        temporary_dir = staging_directory(final_dir)
        try:
            shard_names, stats = self._run(plans, settings, temporary_dir, n_workers, total_cells)
            written = sum(s["cells_written"] for s in stats.values())
            self._warn_about(stats)
            if written == 0:
                raise TokenizerInputError(
                    f"no cell of {[str(f) for f in files]} has any expressed dictionary gene; nothing to write"
                )
            metadata = self._metadata(plans, stats)
            publish_dataset(temporary_dir, shard_names, schema, metadata, final_dir, overwrite)
        except BaseException:
            shutil.rmtree(temporary_dir, ignore_errors=True)
            raise
        return TokenizeResult(path=final_dir, cells_written=written, files=stats)

    def tokenize_data(
        self,
        data_directory: str | os.PathLike[str],
        output_directory: str | os.PathLike[str],
        output_prefix: str,
        file_format: str | None = None,
        input_identifier: str = "",
        use_generator: bool = False,
        overwrite: bool = False,
    ) -> TokenizeResult:
        """The reference's entry point: every `file_format` file in `data_directory` whose name contains
        `input_identifier` (or that one file) into `{output_directory}/{output_prefix}.dataset`. file_format None
        takes every supported format. use_generator is accepted for the reference's scripts: the reference builds
        the dataset in memory unless it is set; here cells are always streamed to the dataset in shards."""
        del use_generator  # always streamed: memory is bounded by chunk_size either way
        return self.tokenize_files(
            data_directory, output_directory, output_prefix, file_format, overwrite, input_identifier
        )

    # -- the reference's in-memory steps (tokenize_data streams instead; these serve scripts that call them) ------
    def tokenize_anndata(
        self, adata_file_path: str | os.PathLike[str], target_sum: float = 10_000, file_format: str = "h5ad"
    ) -> tuple[list[np.ndarray], dict[str, list] | None, list[np.ndarray]]:
        """The reference's per-file step for .h5ad / .zarr: (token arrays, {column: values} or None, count arrays
        with keep_counts else []), every cell's genes ranked, not yet truncated nor framed (create_dataset does
        that); filter_pass and empty cells as in tokenize_data. Held in memory: for large files use tokenize_data."""
        return self._tokenize_in_memory(adata_file_path, target_sum, file_format)

    def tokenize_loom(
        self, loom_file_path: str | os.PathLike[str], target_sum: float = 10_000, file_format: str = "loom"
    ) -> tuple[list[np.ndarray], dict[str, list] | None, list[np.ndarray]]:
        """The reference's per-file step for .loom (see tokenize_anndata)."""
        return self._tokenize_in_memory(loom_file_path, target_sum, file_format)

    def _tokenize_in_memory(
        self, path: str | os.PathLike[str], target_sum: float, file_format: str
    ) -> tuple[list[np.ndarray], dict[str, list] | None, list[np.ndarray]]:
        path = Path(path)
        if file_format_of(path) != file_format:
            raise TokenizerInputError(f"{path}: not a .{file_format} file (file_format={file_format!r})")
        plan = self._plan_file(path, {})
        genes = plan.genes
        cells: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        metadata: dict[str, list] = {out: [] for out in self.custom_attr_name_dict.values()}
        dropped = 0
        with open_cell_file(path) as cell_file:
            all_n_counts = cell_file.cell_attribute(N_COUNTS).astype(np.float64) if plan.has_n_counts else None
            passing = cell_file.cell_attribute(FILTER_PASS) == 1 if plan.has_filter_pass else None
            attributes = {name: cell_file.cell_attribute(name) for name in self.custom_attr_name_dict}
            for start in range(0, plan.n_cells, self.chunk_size):
                stop = min(start + self.chunk_size, plan.n_cells)
                rows, block = np.arange(start, stop), cell_file.read_block(start, stop)
                if passing is not None:
                    rows, block = rows[passing[start:stop]], block[passing[start:stop]]
                totals = np.asarray(block.sum(axis=1), dtype=np.float64).reshape(-1)
                n_counts = totals if all_n_counts is None else all_n_counts[rows]
                ranked = rank_value_encode(
                    select_genes(block, genes), n_counts, genes.slot_tokens, genes.slot_medians, target_sum=target_sum
                )
                expressed = ranked.lengths > 0
                dropped += int((~expressed).sum())
                kept = drop_cells(ranked, expressed)
                if self.keep_counts:
                    column = counts_column(block[expressed], n_counts[expressed], kept, genes, target_sum)
                    counts += [np.asarray(values, np.float64) for values in column.to_pylist()]
                cells += [kept.cell(i).astype(np.int64) for i in range(len(kept.lengths))]
                for name, out in self.custom_attr_name_dict.items():
                    metadata[out] += attributes[name][rows[expressed]].tolist()
        if dropped:
            warnings.warn(
                f"{path}: dropped {dropped} cells with no expressed gene of the dictionary", TokenizerWarning, 2
            )
        return cells, (metadata if self.custom_attr_name_dict else None), counts

    def create_dataset(
        self,
        tokenized_cells: Sequence[Sequence[int]],
        cell_metadata: Mapping[str, Sequence[Any]] | None,
        tokenized_counts: Sequence[Sequence[float]],
        use_generator: bool = False,
        keep_uncropped_input_ids: bool = False,
    ) -> Any:
        """The reference's last step: a `datasets.Dataset` (in memory) of the cells cut to model_input_size and
        framed with <cls>/<eos> when special_token (counts 0.0 there), with `length`, the metadata columns, `counts`
        with keep_counts, and with keep_uncropped_input_ids `input_ids_uncropped` / `length_uncropped`.
        use_generator is accepted (the table is built from lists either way)."""
        from datasets import Dataset, DatasetInfo

        del use_generator
        token = self.dictionaries.token
        limit = self.model_input_size - (2 if self.special_token else 0)
        columns: dict[str, list] = {"input_ids": [], "length": []}
        if keep_uncropped_input_ids:
            columns.update(input_ids_uncropped=[], length_uncropped=[])
        if self.keep_counts:
            columns["counts"] = []
        for index, cell in enumerate(tokenized_cells):
            genes = [int(t) for t in cell]
            if keep_uncropped_input_ids:
                columns["input_ids_uncropped"].append(genes)
                columns["length_uncropped"].append(len(genes))
            ids = genes[:limit]
            if self.special_token:
                ids = [token[CLS_TOKEN], *ids, token[EOS_TOKEN]]
            columns["input_ids"].append(ids)
            columns["length"].append(len(ids))
            if self.keep_counts:
                values = [float(v) for v in tokenized_counts[index]][:limit]
                columns["counts"].append([0.0, *values, 0.0] if self.special_token else values)
        for name, values in dict(cell_metadata or {}).items():
            if len(values) != len(tokenized_cells):
                raise ValueError(f"cell_metadata[{name!r}] has {len(values)} values for {len(tokenized_cells)} cells")
            columns[name] = list(values)
        record = json.dumps(self._metadata([], {}), sort_keys=True)
        return Dataset.from_dict(columns, info=DatasetInfo(description=record))

    def _run(
        self, plans: list[FilePlan], settings: Settings, temporary_dir: Path, n_workers: int, total_cells: int
    ) -> tuple[list[str], dict[str, dict[str, int]]]:
        # datasets (the shard writer's library) is imported before the workers fork, so that they share it instead
        # of each paying ~0.8 s of CPU to import it; the parent needs it anyway to publish the dataset
        import datasets.arrow_writer  # noqa: F401
        from tqdm.auto import tqdm

        parts = split_segments([plan.n_cells for plan in plans], n_workers)
        bar = tqdm(total=total_cells, unit=" cells", unit_scale=True, desc="tokenizing", disable=not self.progress)
        results: list[Any] = [None] * n_workers
        with bar:
            if n_workers == 1:
                results[0] = _run_segments(parts[0], plans, settings, temporary_dir, "part-00000", bar.update)
            else:
                self._run_workers(parts, plans, settings, temporary_dir, bar, results)
        shard_names = [name for shards, _ in results for name, rows in shards if rows > 0]
        stats: dict[str, dict[str, int]] = {plan.path: _empty_stats() for plan in plans}
        for _, worker_stats in results:
            for path, counts in worker_stats.items():
                for key, value in counts.items():
                    stats[path][key] += value
        return shard_names, stats

    @staticmethod
    def _run_workers(
        parts: list[list[tuple[int, int, int]]],
        plans: list[FilePlan],
        settings: Settings,
        temporary_dir: Path,
        bar: Any,
        results: list[Any],
    ) -> None:
        # fork where there is one: workers start at once, and scripts without an `if __name__ == "__main__"` guard
        # work (with spawn, each worker re-runs such a script). Every file is closed before this point and workers
        # open their own handles.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        messages = context.Queue()
        workers = [
            context.Process(
                target=_worker_main,
                args=(messages, index, part, plans, settings, temporary_dir, f"part-{index:05d}"),
                daemon=True,
            )
            for index, part in enumerate(parts)
        ]
        for worker in workers:
            worker.start()
        pending = set(range(len(workers)))
        try:
            while pending:
                try:
                    kind, index, payload = messages.get(timeout=1.0)
                except queue.Empty:
                    dead = [i for i in pending if not workers[i].is_alive() and workers[i].exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(
                            f"tokenizer worker {dead[0]} died (exit code {workers[dead[0]].exitcode}), e.g. killed "
                            "for lack of memory: try a smaller chunk_size or fewer workers"
                        ) from None
                    continue
                if kind == "progress":
                    bar.update(payload)
                elif kind == "done":
                    results[index] = payload
                    pending.discard(index)
                else:
                    error, text = payload
                    if isinstance(error, Exception):
                        raise error
                    raise RuntimeError(f"tokenizer worker {index} failed:\n{text}")
        finally:
            for worker in workers:
                if worker.is_alive() and pending:
                    worker.terminate()
                worker.join()

    # -- reporting ---------------------------------------------------------------------------------------------------
    def _warn_about(self, stats: dict[str, dict[str, int]]) -> None:
        for path, counts in stats.items():
            if counts["cells_empty_dropped"]:
                warnings.warn(
                    f"{path}: dropped {counts['cells_empty_dropped']} of {counts['cells_read']} cells with no "
                    "expressed gene of the dictionary",
                    TokenizerWarning,
                    stacklevel=3,
                )
            if counts["negative_values"]:
                warnings.warn(
                    f"{path}: {counts['negative_values']} negative values where raw counts are expected; is X "
                    "scaled or log-normalised? Tokenize raw counts (e.g. adata.raw or a 'counts' layer).",
                    TokenizerWarning,
                    stacklevel=3,
                )
            if counts["non_integer_values"]:
                warnings.warn(
                    f"{path}: {counts['non_integer_values']} non-integer values where raw counts are expected; is X "
                    "normalised? Geneformer's gene medians assume raw counts.",
                    TokenizerWarning,
                    stacklevel=3,
                )
            if counts["cells_n_counts_below_total"]:
                warnings.warn(
                    f"{path}: for {counts['cells_n_counts_below_total']} cells n_counts is smaller than the sum of "
                    "their counts in the file; n_counts must be each cell's total over all genes",
                    TokenizerWarning,
                    stacklevel=3,
                )
            if counts["cells_filtered_out"]:
                logger.info("%s: %d cells left out by filter_pass", path, counts["cells_filtered_out"])

    def _metadata(self, plans: list[FilePlan], stats: dict[str, dict[str, int]]) -> dict[str, Any]:
        return {
            "format": METADATA_FORMAT,
            "format_version": METADATA_FORMAT_VERSION,
            "producer": f"mindformer_gf {mindformer_gf.__version__}",
            "dictionary": self.dictionaries.metadata(),
            "model_input_size": self.model_input_size,
            "special_token": self.special_token,
            "tie_break": TIE_BREAK_RULE,
            "gene_id": self.gene_id,
            "collapse_gene_ids": self.collapse_gene_ids,
            "keep_counts": self.keep_counts,
            "inputs": [
                {
                    "file": Path(plan.path).name,
                    "gene_attribute": plan.genes.attribute,
                    "genes": plan.genes.n_genes,
                    "genes_matched": plan.genes.n_matched,
                    "n_counts_computed": not plan.has_n_counts,
                    **stats[plan.path],
                }
                for plan in plans
            ],
        }


def tokenize(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_directory: str | os.PathLike[str],
    output_prefix: str,
    overwrite: bool = False,
    file_format: str | None = None,
    **tokenizer_options: Any,
) -> TokenizeResult:
    """Tokenize .h5ad/.loom files (or directories of them) into `{output_directory}/{output_prefix}.dataset`.

    `tokenizer_options` are TranscriptomeTokenizer's arguments (model_version, nproc, gene_id, ...).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    # this function's default is the shipped V1 dictionaries; the class's is the reference's V2
    tokenizer_options.setdefault("model_version", "V1")
    tokenizer = TranscriptomeTokenizer(**tokenizer_options)
    return tokenizer.tokenize_files(inputs, output_directory, output_prefix, file_format, overwrite)
