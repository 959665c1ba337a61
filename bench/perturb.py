"""In silico deletion throughput: this package's perturbation engine vs the reference's approach, in one run.

Both sides: V1-10M configuration, the same random weights, the same cells of `--genes` genes, delete each gene in
turn (genes_to_perturb="all"), emb_layer -1, the "cell_emb" value (mean of the gene-matched per-gene cosines).
- reference approach (written here from its description): `transformers.BertForMaskedLM` with
  `output_hidden_states=True`, the original cell run alone, then the cell's perturbed copies in minibatches of
  `--batch` rows, every layer and the full-vocabulary MLM logits computed, hidden state `n_layers - 1` compared
  with the original (its deleted row removed) by torch's cosine similarity;
- ours: `PerturbationEngine` (mindformer_gf.tasks.perturb.engine): no MLM head, the encoder stopped at the used
  layer, each original once, copies batched across cells at a padded width, the cosines inside the graph.
To keep the run short each side perturbs the first `--perturbations` genes of each of `--cells` cells (the cost of
one perturbed copy does not depend on which gene is deleted), `--repeats` timed passes over them after a warm-up
pass on one cell (which compiles our graphs). The sides run in their own processes, one pass each in turn
(reference, ours, reference, ...), so that a load changing on a shared machine weighs on both alike; each side's
figure is the median over its passes with the range, the ratio the median of the passes' ratios with its range.

Also printed: the FLOPs each side computes (bench/flops.py: ours the stopped encoder on its padded batches, the
reference every layer and the full-vocabulary logits on its batches), their rate as a fraction of the machine's fp32
GEMM rate (measured between the passes, bench/common.py), and where our time goes: in the graph calls (the
forward and its outputs' copy to numpy), preparing their inputs (padding, the originals' states), and the rest
(making the perturbations, reading the results), with the batches' padding (rows and width).

Prints one JSON line per pass and the summary last: perturbed cells/s, ratio = ours / reference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
from common import emit, gemm_rate, merge_gemm_rates
from flops import perturbation_flops, reference_perturbation_flops


def make_inputs(args):
    from mindformer_gf.config import GeneformerConfig
    from mindformer_gf.reference import init_weights

    config = GeneformerConfig.from_preset(args.preset)
    weights = init_weights(config, "BertForMaskedLM", seed=0)
    rng = np.random.default_rng(0)
    cells = [rng.choice(np.arange(2, config.vocab_size), args.genes, replace=False) for _ in range(args.cells)]
    return config, weights, cells


def side_reference(args) -> dict:
    import torch
    import transformers

    config, weights, cells = make_inputs(args)
    hf_config = transformers.BertConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})
    model = transformers.BertForMaskedLM(hf_config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    layer = config.num_hidden_layers - 1  # emb_layer -1
    cosine = torch.nn.CosineSimilarity(dim=2)

    flops = [0.0]

    def hidden(ids: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(np.asarray(ids, np.int64))
        flops[0] += reference_perturbation_flops(config, ids.shape[0], ids.shape[1])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        return out.hidden_states[layer]

    def perturb_cell(cell: np.ndarray, count: int) -> list[float]:
        original = hidden(cell[None])[0]
        values = []
        deletions = list(range(count))
        for start in range(0, len(deletions), args.batch):
            chunk = deletions[start : start + args.batch]
            copies = np.stack([np.delete(cell, i) for i in chunk])
            perturbed = hidden(copies)
            comparison = torch.stack([torch.cat([original[:i], original[i + 1 :]]) for i in chunk])
            values += cosine(perturbed, comparison).mean(1).tolist()
        return values

    with torch.inference_mode():
        perturb_cell(cells[0], args.batch)  # warm-up
        flops[0] = 0.0
        start = time.perf_counter()
        values = [v for cell in cells for v in perturb_cell(cell, args.perturbations)]
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "values": values, "flops": flops[0]}


def side_ours(args) -> dict:
    import mindspore as ms

    from mindformer_gf.data.buckets import choose_bucket_widths
    from mindformer_gf.model import BertModel
    from mindformer_gf.tasks.perturb.engine import Job, PerturbationEngine
    from mindformer_gf.tasks.perturb.plan import CellLayout, delete

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    config, weights, cells = make_inputs(args)
    encoder = BertModel(config, add_pooling_layer=False)
    encoder.load_weights({k[len("bert.") :]: v for k, v in weights.items() if k.startswith("bert.")})
    encoder.set_train(False)
    # the widths `gf perturb` chooses (its default 4 buckets) for cells of this length and their deleted copies
    lengths = np.asarray([args.genes - 1, args.genes])
    buckets = choose_bucket_widths(lengths, 4, config.max_position_embeddings)
    layers = config.num_hidden_layers - 1
    engine = PerturbationEngine(encoder, layers, "mean", True, args.batch, buckets, 0, [0, 1])

    # where the time goes: the graph calls, their inputs' preparation (the rest of `_forward`), the rest of the run
    clock = {"graph": 0.0, "forward": 0.0, "flops": 0.0, "batches": 0, "rows": 0, "rows_run": 0}
    clock.update({"tokens": 0, "tokens_run": 0})
    graph, prepare = engine.forward, engine._forward

    def timed_graph(*inputs):
        start = time.perf_counter()
        outputs = graph(*inputs)
        for output in outputs[:-1]:
            output.asnumpy()  # the copies `_forward` makes next: counted here, so the graph's time is all here
        clock["graph"] += time.perf_counter() - start
        return outputs

    def timed_forward(width, cells_in_batch, *more, **keywords):
        start = time.perf_counter()
        arrays = prepare(width, cells_in_batch, *more, **keywords)
        clock["forward"] += time.perf_counter() - start
        rows = keywords.get("rows") or args.batch  # the originals' batches have fewer rows
        clock["flops"] += perturbation_flops(config, rows, width, layers)
        clock["batches"] += 1
        clock["rows"] += len(cells_in_batch)
        clock["rows_run"] += rows
        clock["tokens"] += sum(len(c) for c in cells_in_batch)
        clock["tokens_run"] += rows * width
        return arrays

    engine.forward, engine._forward = timed_graph, timed_forward

    def run(cells_to_run) -> list[float]:
        originals = engine.original_states(cells_to_run)
        layouts = [CellLayout.of(c, None, None) for c in cells_to_run]
        jobs = (
            Job(k, delete(layout, [i], [int(layout.genes[i])]), originals[k])
            for k, layout in enumerate(layouts)
            for i in range(args.perturbations)
        )
        return [result.mean_cosine for _, result in engine.run(jobs)]

    run(cells[:1])  # warm-up: compiles the copies' graph
    engine.original_states(cells)  # and the graph of the originals' batch, whose rows follow the number of cells
    compiled = len(graph.compile_cache)
    clock.update({k: type(v)(0) for k, v in clock.items()})
    start = time.perf_counter()
    values = run(cells)
    seconds = time.perf_counter() - start
    profile = {
        "graph_seconds": clock["graph"],
        "input_seconds": clock["forward"] - clock["graph"],
        "other_seconds": seconds - clock["forward"],
        "batches": clock["batches"],
        "bucket_widths": list(buckets.widths),
        "row_fill": clock["rows"] / clock["rows_run"],
        "token_fill": clock["tokens"] / clock["tokens_run"],
        "graph_gflops_per_s": clock["flops"] / clock["graph"] / 1e9,
        "compilations_in_timed_pass": len(graph.compile_cache) - compiled,
    }
    return {"seconds": seconds, "values": values, "flops": clock["flops"], "profile": profile}


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "range": [min(values), max(values)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="Geneformer-V1-10M")
    parser.add_argument("--genes", type=int, default=1000, help="genes per cell")
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--perturbations", type=int, default=32, help="deleted genes measured per cell")
    parser.add_argument("--batch", type=int, default=16, help="forward batch rows, both sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side, alternating (median, range)")
    parser.add_argument("--side", choices=("ours", "reference"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = side_ours(args) if args.side == "ours" else side_reference(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    setting = {"preset": args.preset, "genes": args.genes, "cells": args.cells, "batch": args.batch}
    setting["perturbed_cells"] = args.cells * args.perturbations
    results: dict[str, list[dict]] = {"reference": [], "ours": []}
    gemm = [gemm_rate()]
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for side in ("reference", "ours"):
            load = os.getloadavg()[0]
            command = [sys.executable, __file__, *sys.argv[1:], "--side", side]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            results[side].append(result)
            rate = setting["perturbed_cells"] / result["seconds"]
            record = {"side": side, "pass": repeat, **setting, "seconds": result["seconds"]}
            record.update({"perturbed_cells_per_s": rate, "gflops_per_s": result["flops"] / result["seconds"] / 1e9})
            record.update({"peak_rss_mb": result["peak_rss_mb"], "load_before": load})
            emit({**record, **({"profile": result["profile"]} if side == "ours" else {})})
        gemm.append(gemm_rate())
        loads.append(os.getloadavg()[0])
    gemm_rates = merge_gemm_rates(*gemm)
    rates = {side: [setting["perturbed_cells"] / r["seconds"] for r in runs] for side, runs in results.items()}
    gflops = {side: [r["flops"] / r["seconds"] / 1e9 for r in runs] for side, runs in results.items()}
    ratios = [a / b for a, b in zip(rates["ours"], rates["reference"], strict=True)]
    difference = max(
        np.abs(np.asarray(o["values"]) - np.asarray(r["values"])).max()
        for o, r in zip(results["ours"], results["reference"], strict=True)
    )
    profiles = [r["profile"] for r in results["ours"]]
    profile = {k: statistics.median(p[k] for p in profiles) for k in profiles[0] if k != "bucket_widths"}
    flops_per_copy = {side: runs[0]["flops"] / setting["perturbed_cells"] for side, runs in results.items()}
    ratio = statistics.median(ratios)
    emit(
        {
            "summary": "perturb",
            **setting,
            "repeats": args.repeats,
            "ours_perturbed_cells_per_s": summarise(rates["ours"]),
            "reference_perturbed_cells_per_s": summarise(rates["reference"]),
            "ratio": ratio,
            "ratio_range": [min(ratios), max(ratios)],
            "goals": {"ratio >= 3": ratio >= 3.0},
            "ours_gflop_per_perturbed_cell": flops_per_copy["ours"] / 1e9,
            "reference_gflop_per_perturbed_cell": flops_per_copy["reference"] / 1e9,
            "flop_ratio_cap": flops_per_copy["reference"] / flops_per_copy["ours"],
            "ours_fraction_of_gemm": statistics.median(gflops["ours"]) / gemm_rates["gemm_gflops"],
            "reference_fraction_of_gemm": statistics.median(gflops["reference"]) / gemm_rates["gemm_gflops"],
            **gemm_rates,
            "ours_profile": {**profile, "bucket_widths": profiles[0]["bucket_widths"]},
            "ours_peak_rss_mb": max(r["peak_rss_mb"] for r in results["ours"]),
            "reference_peak_rss_mb": max(r["peak_rss_mb"] for r in results["reference"]),
            "max_abs_difference_of_values": float(difference),
            "load_averages": loads,
        }
    )


if __name__ == "__main__":
    main()
