"""`gf embed` on 1 and 2 msrun workers: cells per second of the whole command and of the embedding itself, and the
scaling the cost model predicts for more devices.

The cells are the 700 shipped pbmc68k_reduced cells (V1 tokenization; real lengths), the model a V1-10M-shaped
encoder with random weights. Each configuration runs `--repeats` times; the median is reported. On a 2-core machine
expect no gain from 2 workers (they share the cores); the point is the mechanism's overhead: start-up (Python,
MindSpore, model, graph compilation) and rank 0's merge.

JSON lines: one per run {"workers", "wall_s", "cells_per_s", "embed_s_per_rank", ...}, one per device count of the
cost model {"cost", "batch", "groups", "devices", "predicted_speedup"} (ranks take whole batches of one
process's plan), then the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit

ROOT = Path(__file__).resolve().parents[1]


def prepare(work: Path, with_model: bool = True) -> tuple[Path, Path | None]:
    """The tokenized cells and a V1-10M-shaped model directory with random weights (None without `with_model`)."""
    from mindformer_gf.config import GeneformerConfig
    from mindformer_gf.data.pbmc68k import tokenize_pbmc68k
    from mindformer_gf.model import build_model
    from mindformer_gf.train.checkpoint import save_model_dir

    dataset = tokenize_pbmc68k(work, "pbmc", {"cell_type": "cell_type"}).path
    if not with_model:
        return dataset, None
    config = GeneformerConfig.from_preset("Geneformer-V1-10M", architectures=["BertForMaskedLM"])
    model = save_model_dir(build_model(config, "BertForMaskedLM", seed=0), work / "model")
    return dataset, model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_embed(workers: int, dataset: Path, model: Path, out: Path, cells: int, batch: int) -> dict:
    gf = Path(sys.executable).with_name("gf")
    arguments = ["embed", "--dataset", str(dataset), "--model", str(model), "--output-dir", str(out)]
    arguments += ["--max-cells", str(cells), "--batch-size", str(batch), "--no-progress", "--device", "CPU"]
    env = {
        **os.environ,
        "PATH": str(gf.parent) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    if workers == 1:
        command = [sys.executable, "-m", "mindformer_gf", *arguments]
    else:
        command = ["msrun", f"--worker_num={workers}", f"--local_worker_num={workers}", "--master_addr=127.0.0.1"]
        command += [f"--master_port={free_port()}", f"--log_dir={out / 'logs'}", "--join=True", str(gf), *arguments]
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}")
    record = json.loads((out / "embeddings_run.json").read_text())
    return {
        "workers": workers,
        "cells": record["cells"],
        "wall_s": round(wall, 2),
        "cells_per_s": round(record["cells"] / wall, 2),
        "embed_s_per_rank": record["seconds_per_rank"],
        "embed_cells_per_s": round(record["cells"] / max(record["seconds_per_rank"]), 2),
        "cells_per_rank": record["cells_per_rank"],
        "load": os.getloadavg()[0],
    }


def cost_model(lengths: np.ndarray, devices: list[int], cost: str, batch: int) -> list[dict]:
    """Speed-up the shares alone allow: total cost / the largest rank's cost (start-up and merge not counted).
    Ranks take whole groups of cells, as the commands do: for "genes" (`gf embed`) the batches of `batch` cells of
    one process's plan (4 buckets), for "genes_squared" (`gf perturb`, delete every gene) its windows of cells
    whose `batch`-copy batches run together."""
    from mindformer_gf.data.buckets import choose_bucket_widths
    from mindformer_gf.infer.batches import length_sorted_batches
    from mindformer_gf.infer.sharded import cell_costs, partition_groups
    from mindformer_gf.tasks.perturb.perturber import _windows

    costs = cell_costs(lengths, cost)
    if cost == "genes":
        buckets = choose_bucket_widths(lengths, 4, 2048)
        groups = [positions for _, positions in length_sorted_batches(lengths, buckets, batch)]
    else:
        order = np.argsort(-lengths, kind="stable")  # the perturber's order: longest cells first
        groups = [order[window] for window in _windows(lengths[order].tolist(), batch)]
    rows = []
    for n in devices:
        shares = partition_groups(costs, groups, n)
        largest = max(sum(costs[groups[g]].sum() for g in share) for share in shares)
        rows.append(
            {
                "cost": cost,
                "batch": batch,
                "groups": len(groups),
                "devices": n,
                "predicted_speedup": round(float(costs.sum() / largest), 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=300, help="cells to embed per run (of the 700)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--cost-model-only", action="store_true", help="print the cost model's predictions, no runs")
    args = parser.parse_args()

    from mindformer_gf.data import corpus_lengths
    from mindformer_gf.infer.datasets import open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset, model = prepare(work, with_model=not args.cost_model_only)
        lengths = corpus_lengths(open_dataset(dataset))
        # gf embed's default batch (32) and this benchmark's; gf perturb's default (100)
        for cost, batch in (("genes", 32), ("genes", args.batch), ("genes_squared", 100)):
            for row in cost_model(lengths, [1, 2, 8, 16, 64], cost, batch):
                emit(row)
        if args.cost_model_only:
            return
        medians = {}
        for repeat in range(args.repeats):
            for workers in (int(w) for w in args.workers.split(",")):  # alternate, so the load drifts evenly
                result = run_embed(workers, dataset, model, work / f"out{workers}", args.cells, args.batch)
                emit({**result, "repeat": repeat})
                medians.setdefault(workers, []).append(result)
    summary = {"cells": args.cells, "repeats": args.repeats}
    for workers, results in medians.items():
        walls = sorted(r["wall_s"] for r in results)
        embeds = sorted(max(r["embed_s_per_rank"]) for r in results)
        summary[f"workers{workers}_cells_per_s"] = round(args.cells / float(np.median(walls)), 2)
        summary[f"workers{workers}_wall_s_range"] = [walls[0], walls[-1]]
        summary[f"workers{workers}_embed_cells_per_s"] = round(args.cells / float(np.median(embeds)), 2)
        summary[f"workers{workers}_overhead_s"] = round(float(np.median(walls) - np.median(embeds)), 2)
    summary["load_after"] = os.getloadavg()[0]
    emit(summary)


if __name__ == "__main__":
    main()
