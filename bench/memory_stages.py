"""Where the MLM training step's memory goes: resident memory after each stage of bench/train.py's ours side.

One process, static shapes (B=4, L=2048 by default, V1-10M): imports, model, trainer (AdamW moments, gradient
buffer), compiling the forward/backward graph, compiling the update graph (each with `Cell.compile`, so compilation
and the first run are measured apart), the first run of each, then `--steps` more steps. `--graph-update` uses the
graph AdamW (MindSpore ops over the flat buffers) instead of the in-place kernel, for the comparison in
docs/performance.md. JSON lines; the last one holds `memory_mib` (stage -> MiB resident) and `peak_mb`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import emit
from pretrain import draw_cells, peak_rss_gib, rss_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3, help="steps after the first")
    parser.add_argument("--graph-update", action="store_true", help="the graph AdamW instead of the in-place kernel")
    parser.add_argument("--output-dir", default="bench-memory-run", help="scratch directory for the run's metrics")
    args = parser.parse_args()

    memory = {"start": rss_mib()}
    import mindspore as ms
    from datasets import Dataset
    from mindspore import Tensor

    from mindformer_gf.config import GeneformerConfig
    from mindformer_gf.data import (
        LengthGroupedPlan,
        MaskedLMCollator,
        MaskingSpec,
        PlannedBatches,
        choose_bucket_widths,
    )
    from mindformer_gf.model import build_model
    from mindformer_gf.reference.dropout import step_seed
    from mindformer_gf.train import MaskedLMObjective, Trainer, TrainSettings

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    memory["imports (MindSpore, datasets, ours)"] = rss_mib()
    config = GeneformerConfig.from_preset("Geneformer-V1-10M")
    batch_size, steps = args.batch_size, args.steps + 1
    lengths = np.full(steps * batch_size, args.length, np.int64)
    model = build_model(config, "BertForMaskedLM", seed=0)
    memory["model built (weights)"] = rss_mib()
    spec = MaskingSpec(config.vocab_size, 1, (0, 1))
    cells = draw_cells(lengths, config.vocab_size, 0)
    dataset = Dataset.from_dict({"input_ids": [c.tolist() for c in cells], "length": lengths.tolist()})
    plan = LengthGroupedPlan(lengths, choose_bucket_widths(lengths, 1, args.length), batch_size, 1, 0)
    source = PlannedBatches(
        plan, MaskedLMCollator(dataset, spec, batch_size, 0), items_per_batch=batch_size * spec.mask_slots(args.length)
    )
    settings = TrainSettings(
        output_dir=args.output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        device="CPU",
        progress_bar=False,
    )
    trainer = Trainer(model, MaskedLMObjective(model), source, settings)
    if args.graph_update:
        trainer.apply_step.fused_update = False
    memory["trainer built (+ AdamW moments, gradient buffer)"] = rss_mib()

    scale = Tensor(1.0 / source.items_per_batch, ms.float32)
    lr, inverse_scale = Tensor(1e-4, ms.float32), Tensor(float(source.items_per_batch), ms.float32)

    def inputs(step: int) -> list:
        batch = source.batches(step)[0]
        return [Tensor([step_seed(0, step, 0)], ms.int64), *(Tensor(batch[n]) for n in trainer.objective.input_names)]

    trainer.micro_step.compile(scale, *inputs(0))
    memory["forward/backward graph compiled"] = rss_mib()
    trainer.apply_step.compile(lr, inverse_scale)
    memory["update graph compiled"] = rss_mib()
    trainer.micro_step(scale, *inputs(0))
    memory["forward/backward first run"] = rss_mib()
    trainer.apply_step(lr, inverse_scale)[1].asnumpy()
    memory["update first run"] = rss_mib()
    seconds = []
    for step in range(1, steps):
        tick = time.perf_counter()
        trainer.micro_step(scale, *inputs(step))
        trainer.apply_step(lr, inverse_scale)[1].asnumpy()
        seconds.append(time.perf_counter() - tick)
    memory[f"after {steps - 1} more steps"] = rss_mib()
    emit(
        {
            "update": "graph" if args.graph_update else "in place (kernels/cpu/adamw.cc)",
            "batch_size": batch_size,
            "length": args.length,
            "memory_mib": {k: round(v) for k, v in memory.items()},
            "peak_mb": peak_rss_gib() * 1024,
            "step_seconds": seconds,
        }
    )


if __name__ == "__main__":
    main()
