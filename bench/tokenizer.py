"""Tokenizer benchmark: a generated sparse .h5ad tokenized end to end (read, encode, write the dataset).

    python bench/tokenizer.py                 # 200,000 cells x 20,000 genes, ~2,000 non-zero genes per cell
    python bench/tokenizer.py --cells 20000   # a quick run

Prints JSON lines; the last is the summary with `cells_per_s` and `peak_rss_mb` and the targets (>= 20,000 cells/s,
< 2,048 MB). The file is generated in streaming fashion (bounded memory) with Ensembl IDs of the V1 dictionary in
a shuffled order and integer counts, and synced to disk; tokenization runs in a separate process so the generator's
memory does not count. `peak_rss_mb` is the largest resident memory of the tokenizing process and its workers summed
at one instant (sampled every 50 ms from /proc; pages shared after fork count once per process, so it is an upper
bound).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import emit

TARGET_CELLS_PER_S = 20_000
TARGET_PEAK_RSS_MB = 2048
GENERATION_BLOCK = 10_000


def generate_h5ad(path: Path, n_cells: int, n_genes: int, nonzero_per_cell: int, seed: int = 0) -> dict:
    """Write a CSR .h5ad of integer counts block by block with h5py (memory bounded by one block)."""
    import anndata
    import h5py
    import pandas as pd

    from mindformer_gf.tokenizer.dictionaries import load_gene_dictionaries

    rng = np.random.default_rng(seed)
    genes = [g for g in load_gene_dictionaries("V1").token if g.startswith("ENSG")]
    if n_genes > len(genes):
        raise ValueError(f"at most {len(genes)} genes, asked for {n_genes}")
    # shuffled: the file's gene order is not the dictionary's, as in real files
    gene_ids = np.array(genes)[rng.permutation(len(genes))[:n_genes]]
    # gaps between consecutive non-zero genes, uniform on [1, max_gap]: sorted distinct columns, mean count as asked
    max_gap = max(1, (2 * n_genes) // nonzero_per_cell - 2)
    start_spread = max(1, n_genes - nonzero_per_cell * (max_gap + 1) // 2)
    totals = np.zeros(n_cells, dtype=np.float64)
    nnz = 0
    with h5py.File(path, "w") as handle:
        handle.attrs["encoding-type"] = "anndata"
        handle.attrs["encoding-version"] = "0.1.0"
        matrix = handle.create_group("X")
        matrix.attrs["encoding-type"] = "csr_matrix"
        matrix.attrs["encoding-version"] = "0.1.0"
        matrix.attrs["shape"] = (n_cells, n_genes)
        data = matrix.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 18,))
        indices = matrix.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,))
        indptr = [np.zeros(1, dtype=np.int64)]
        for start in range(0, n_cells, GENERATION_BLOCK):
            rows = min(GENERATION_BLOCK, n_cells - start)
            gaps = rng.integers(1, max_gap + 1, size=(rows, nonzero_per_cell), dtype=np.int32)
            columns = np.cumsum(gaps, axis=1, dtype=np.int32) + rng.integers(0, start_spread, size=(rows, 1)).astype(
                np.int32
            )
            inside = columns < n_genes
            per_row = inside.sum(axis=1)
            columns = columns[inside]
            values = rng.geometric(0.3, size=columns.size).astype(np.float32)
            offsets = np.concatenate([[0], np.cumsum(per_row)])
            totals[start : start + rows] = np.add.reduceat(values.astype(np.float64), offsets[:-1])
            data.resize((nnz + columns.size,))
            indices.resize((nnz + columns.size,))
            data[nnz:] = values
            indices[nnz:] = columns
            indptr.append(nnz + offsets[1:])
            nnz += columns.size
        matrix.create_dataset("indptr", data=np.concatenate(indptr))
        cells = pd.DataFrame({"n_counts": totals}, index=[f"cell{i}" for i in range(n_cells)])
        anndata.io.write_elem(handle, "obs", cells)
        anndata.io.write_elem(handle, "var", pd.DataFrame({"ensembl_id": gene_ids}, index=gene_ids))
        for group in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            anndata.io.write_elem(handle, group, {})
    # On disk before the measured run: otherwise the tokenizer's own writes queue behind ~3 GB of the generator's
    # dirty pages (the kernel throttles writers past its dirty-memory limit), which a real input file never has.
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return {"nnz": int(nnz), "file_mb": round(path.stat().st_size / 2**20, 1)}


class ProcessTreeMemory:
    """Samples the resident memory of this process and its descendants (from /proc) in a background thread.

    `peak_mb` is the largest sum over the tree at one instant: pages shared after fork count once per process, so it
    is an upper bound of what was resident at once.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.parent_peak_mb = 0.0
        self.parent_peak_at_s = 0.0
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _resident_mb(self, pid: int) -> float:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                return int(handle.read().split()[1]) * self._page_mb
        except (OSError, IndexError, ValueError):
            return 0.0

    def _descendants(self, pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                children = [int(c) for c in handle.read().split()]
        except OSError:
            return []
        return children + [d for c in children for d in self._descendants(c)]

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            own = self._resident_mb(me)
            total = own + sum(self._resident_mb(pid) for pid in self._descendants(me))
            self.peak_mb = max(self.peak_mb, total)
            if own > self.parent_peak_mb:
                self.parent_peak_mb, self.parent_peak_at_s = own, time.perf_counter() - self._started
            self._stop.wait(self.interval_s)

    def __enter__(self) -> ProcessTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_tokenizer(input_path: str, output_dir: str, nproc: int, chunk_size: int) -> None:
    """Body of the measured child process: prints one JSON line with its timings and peak memory."""
    started = time.perf_counter()
    from mindformer_gf.tokenizer import tokenize

    imported = time.perf_counter()
    with ProcessTreeMemory() as memory:
        result = tokenize(
            input_path, output_dir, "bench", overwrite=True, nproc=nproc, chunk_size=chunk_size, progress=False
        )
    finished = time.perf_counter()
    # CPU time only: ru_maxrss is no use here, Linux carries it over fork and exec from the generating process
    usages = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    cpu_s = sum(u.ru_utime + u.ru_stime for u in usages)
    emit(
        {
            "event": "tokenized",
            "cells_written": result.cells_written,
            "import_s": round(imported - started, 2),
            "tokenize_s": round(finished - imported, 2),
            "sampled_tree_peak_rss_mb": round(memory.peak_mb, 1),
            "sampled_parent_peak_rss_mb": round(memory.parent_peak_mb, 1),
            "sampled_parent_peak_at_s": round(memory.parent_peak_at_s, 2),
            "cpu_s": round(cpu_s, 2),
            "cpu_us_per_cell": round(cpu_s / max(result.cells_written, 1) * 1e6, 1),
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nonzero", type=int, default=2_000, help="non-zero genes per cell (about)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--workdir", type=Path, help="where to put the generated file and the dataset (temporary)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file and the dataset")
    parser.add_argument("--run-tokenizer", nargs=2, metavar=("INPUT", "OUTPUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_tokenizer:
        run_tokenizer(*args.run_tokenizer, nproc=args.nproc, chunk_size=args.chunk_size)
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gf-tokenizer-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    input_path = workdir / f"bench_{args.cells}x{args.genes}.h5ad"
    try:
        started = time.perf_counter()
        generated = generate_h5ad(input_path, args.cells, args.genes, args.nonzero)
        emit(
            {
                "event": "generated",
                "cells": args.cells,
                "genes": args.genes,
                **generated,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        command = [
            sys.executable,
            __file__,
            "--run-tokenizer",
            str(input_path),
            str(workdir / "out"),
            "--nproc",
            str(args.nproc),
            "--chunk-size",
            str(args.chunk_size),
        ]
        started = time.perf_counter()
        completed = subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - started
        child = json.loads(completed.stdout.strip().splitlines()[-1])
        emit(child)
        peak = child["sampled_tree_peak_rss_mb"]
        cells_per_s = args.cells / child["tokenize_s"]
        emit(
            {
                "event": "summary",
                "cells": args.cells,
                "genes": args.genes,
                "nnz_per_cell": round(generated["nnz"] / args.cells, 1),
                "nproc": args.nproc,
                "chunk_size": args.chunk_size,
                "cells_per_s": round(cells_per_s),
                "cells_per_s_with_startup": round(args.cells / wall),
                # what the CPU time allows when nproc cores are free (the machine is shared: wall time may be longer)
                "cells_per_s_if_cores_free": round(args.cells * args.nproc / child["cpu_s"]),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "peak_rss_mb": round(peak, 1),
                "target_cells_per_s": TARGET_CELLS_PER_S,
                "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
                "meets_targets": bool(cells_per_s >= TARGET_CELLS_PER_S and peak < TARGET_PEAK_RSS_MB),
                "cpu_count": os.cpu_count(),
            }
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
