"""MLM training step at a fixed shape (B=4, L=2048, V1-10M): ours vs transformers.BertForMaskedLM + AdamW.

The fixed-shape twin of bench/pretrain.py (which uses realistic varied lengths), sharing its two runners: ours is
`mindformer_gf.train.Trainer` in graph mode (fused kernels when built, logits only at the masked positions), the
reference is transformers' BertForMaskedLM with torch AdamW and logits at every position. Each side runs in its own
process, so each peak resident memory is its own. Ours uses a static-shape graph (one shape here; a dynamic-shape
graph holds more memory on the CPU) and reports its resident memory at each stage (`memory_mib`). JSON lines; the
last one is the summary {"ours_cells_per_s", "hf_cells_per_s", "ratio", "ours_peak_mb", "hf_peak_mb",
"memory_ratio", "ours_memory_mib", "load_averages", "ours_fraction_of_gemm", "hf_fraction_of_gemm"} (fractions of
the machine's fp32 GEMM rate, measured in the run: bench/common.py).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from common import emit, fraction_of_gemm, gemm_rate, merge_gemm_rates
from pretrain import draw_cells, in_child_process, run_ours, run_reference


def main() -> None:
    from mindformer_gf.config import GeneformerConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side (after one untimed warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="bench-train-run", help="scratch directory for our run's metrics")
    args = parser.parse_args()

    config = GeneformerConfig.from_preset("Geneformer-V1-10M")
    lengths = np.full(args.steps * args.batch_size, args.length, np.int64)
    cells = draw_cells(lengths, config.vocab_size, args.seed)
    emit({"preset": "Geneformer-V1-10M", "batch_size": args.batch_size, "length": args.length, "steps": args.steps})
    loads = {"before_ours": os.getloadavg()}
    gemm = [gemm_rate()]  # the machine's fp32 GEMM rate, before and after the two sides (bench/common.py)
    ours = in_child_process(run_ours, config, cells, lengths, args.batch_size, 1, args.seed, args.output_dir)
    loads["after_ours"] = os.getloadavg()
    emit({"ours": ours})
    hf = in_child_process(run_reference, config, cells, lengths, args.batch_size, args.seed)
    loads["after_hf"] = os.getloadavg()
    gemm = merge_gemm_rates(*gemm, gemm_rate())
    emit({"hf": hf})
    emit(
        {
            "ours_cells_per_s": ours["cells_per_s"],
            "hf_cells_per_s": hf["cells_per_s"],
            "ratio": ours["cells_per_s"] / hf["cells_per_s"],
            "ours_peak_mb": ours["peak_rss_gib"] * 1024,
            "hf_peak_mb": hf["peak_rss_gib"] * 1024,
            "memory_ratio": ours["peak_rss_gib"] / hf["peak_rss_gib"],
            "ours_memory_mib": ours["memory_mib"],
            "attention_impl": ours["attention_impl"],
            "load_averages": loads,
            "ours_fraction_of_gemm": fraction_of_gemm(ours["gflops_per_s"] * 1e9, 1.0, gemm),
            "hf_fraction_of_gemm": fraction_of_gemm(hf["gflops_per_s"] * 1e9, 1.0, gemm),
            **gemm,
            "goals": {"ratio >= 3": ours["cells_per_s"] / hf["cells_per_s"] >= 3.0},
        }
    )


if __name__ == "__main__":
    main()
