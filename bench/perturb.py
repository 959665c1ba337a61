"""In silico deletion throughput: this package's perturbation engine vs the reference's approach, in one run.

Both sides: V1-10M configuration, the same random weights, the same cells of `--genes` genes, delete each gene in
turn (genes_to_perturb="all"), emb_layer -1, the "cell_emb" value (mean of the gene-matched per-gene cosines).
- reference approach (written here from its description): `transformers.BertForMaskedLM` with
  `output_hidden_states=True`, the original cell run alone, then the cell's perturbed copies in minibatches of
  `--batch` rows, every layer and the full-vocabulary MLM logits computed, hidden state `n_layers - 1` compared
  with the original (its deleted row removed) by torch's cosine similarity;
- ours: `PerturbationEngine` (mindformer_gf.tasks.perturb.engine): no MLM head, the encoder stopped at the used
  layer, each original once, copies batched across cells at a padded width, the cosines inside the graph.
To keep the run short each side perturbs the first `--perturbations` genes of each cell (the cost of one perturbed
copy does not depend on which gene is deleted). Each side runs in its own process, so its peak resident memory is
its own. Prints one JSON line per side and the summary last: perturbed cells/s, ratio = ours / reference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from common import emit


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

    def hidden(ids: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(np.asarray(ids, np.int64))
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
        start = time.perf_counter()
        values = [v for cell in cells for v in perturb_cell(cell, args.perturbations)]
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "values": values}


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
    buckets = choose_bucket_widths(np.asarray([args.genes - 1, args.genes]), 1, config.max_position_embeddings)
    engine = PerturbationEngine(encoder, config.num_hidden_layers - 1, "mean", True, args.batch, buckets, 0, [0, 1])

    def run(cells_to_run) -> list[float]:
        originals = engine.original_states(cells_to_run)
        layouts = [CellLayout.of(c, None, None) for c in cells_to_run]
        jobs = (
            Job(k, delete(layout, [i], [int(layout.genes[i])]), originals[k])
            for k, layout in enumerate(layouts)
            for i in range(args.perturbations)
        )
        return [result.mean_cosine for _, result in engine.run(jobs)]

    run(cells[:1])  # warm-up: compiles the graph
    start = time.perf_counter()
    values = run(cells)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="Geneformer-V1-10M")
    parser.add_argument("--genes", type=int, default=1000, help="genes per cell")
    parser.add_argument("--cells", type=int, default=2)
    parser.add_argument("--perturbations", type=int, default=48, help="deleted genes measured per cell")
    parser.add_argument("--batch", type=int, default=16, help="forward batch rows, both sides")
    parser.add_argument("--side", choices=("ours", "reference"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = side_ours(args) if args.side == "ours" else side_reference(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    setting = {"preset": args.preset, "genes": args.genes, "cells": args.cells, "batch": args.batch}
    setting["perturbed_cells"] = args.cells * args.perturbations
    results = {}
    for side in ("reference", "ours"):
        load = os.getloadavg()[0]
        output = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--side", side], capture_output=True, text=True, check=True
        ).stdout
        results[side] = json.loads(output.strip().splitlines()[-1])
        rate = setting["perturbed_cells"] / results[side]["seconds"]
        emit({"side": side, **setting, "seconds": results[side]["seconds"], "perturbed_cells_per_s": rate,
              "peak_rss_mb": results[side]["peak_rss_mb"], "load_before": load})  # fmt: skip
    difference = np.abs(np.asarray(results["ours"]["values"]) - np.asarray(results["reference"]["values"])).max()
    ours = setting["perturbed_cells"] / results["ours"]["seconds"]
    reference = setting["perturbed_cells"] / results["reference"]["seconds"]
    emit(
        {
            "summary": "perturb",
            **setting,
            "ours_perturbed_cells_per_s": ours,
            "reference_perturbed_cells_per_s": reference,
            "ratio": ours / reference,
            "ours_peak_rss_mb": results["ours"]["peak_rss_mb"],
            "reference_peak_rss_mb": results["reference"]["peak_rss_mb"],
            "max_abs_difference_of_values": float(difference),
            "load_after": os.getloadavg()[0],
        }
    )


if __name__ == "__main__":
    main()
