"""Encoder inference throughput: this package's MindSpore model vs transformers.BertModel (torch, sdpa).

Same weights, same cells (B x L, no padding), V1-10M configuration by default. Each side's figure is the median of
`--repeats` timed calls (the range beside it). Prints JSON lines; the last one is the summary {"ours_cells_per_s",
"composed_cells_per_s", "hf_cells_per_s", "ratio", "ours_fraction_of_gemm", "hf_fraction_of_gemm", "gemm_gflops",
"goals"} with ratio = ours / HF, where "ours" is the backend `attention_impl="auto"` picks on this machine, and the
fractions of the machine's fp32 GEMM rate (measured before and after, in this run) from the encoder's FLOPs
(bench/flops.py). Goals: ratio >= 1.2 and ours >= 0.7 of the GEMM rate.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from common import emit, fraction_of_gemm, gemm_rate, median_seconds, merge_gemm_rates
from flops import encoder_forward_flops


def bench_mindspore(config, weights: dict, ids: np.ndarray, impl: str, repeats: int) -> tuple:
    import mindspore as ms

    from mindformer_gf.model import BertModel

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    model = BertModel(config.replace(attention_impl=impl), add_pooling_layer=False)
    model.load_weights(weights)
    model.set_train(False)
    input_ids, mask = ms.Tensor(ids), ms.Tensor(np.ones_like(ids))
    seconds = median_seconds(lambda: model(input_ids, mask)[0].asnumpy(), repeats)
    return seconds, model(input_ids, mask)[0].asnumpy()


def bench_transformers(config, weights: dict, ids: np.ndarray, repeats: int) -> tuple:
    import torch
    import transformers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    hf_config = transformers.BertConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})
    hf_config._attn_implementation = "sdpa"
    model = transformers.BertModel(hf_config, add_pooling_layer=False).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    input_ids = torch.from_numpy(ids).long()
    mask = torch.ones_like(input_ids)

    def run():
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=mask).last_hidden_state.numpy()

    seconds = median_seconds(run, repeats)
    with torch.inference_mode():
        return seconds, model(input_ids=input_ids, attention_mask=mask).last_hidden_state.numpy()


def main() -> None:
    from mindformer_gf.config import GeneformerConfig
    from mindformer_gf.ops import resolve_impl
    from mindformer_gf.reference import init_weights

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="Geneformer-V1-10M")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side (median and range)")
    args = parser.parse_args()

    config = GeneformerConfig.from_preset(args.preset)
    weights = init_weights(config, "BertModel", seed=0)
    weights = {k: v for k, v in weights.items() if not k.startswith("pooler.")}
    ids = np.random.default_rng(0).integers(2, config.vocab_size, size=(args.batch, args.length)).astype(np.int32)
    setting = {"preset": args.preset, "batch": args.batch, "length": args.length}
    flops = encoder_forward_flops(config, args.batch, args.length)
    gemm_before = gemm_rate()
    emit({"phase": "gemm_before", **gemm_before})

    def rates(timing: tuple[float, list[float]]) -> dict:
        median, times = timing
        return {
            "seconds": median,
            "cells_per_s": args.batch / median,
            "cells_per_s_range": [args.batch / max(times), args.batch / min(times)],
            "gflops_per_s": flops / median / 1e9,
        }

    cells_per_s, outputs, measured = {}, {}, {}
    for impl in ("fused", "composed"):
        try:
            resolve_impl(impl)
        except NotImplementedError as err:
            emit({"backend": f"mindformer_gf/{impl}", "skipped": str(err)})
            continue
        timing, outputs[impl] = bench_mindspore(config, weights, ids, impl, args.repeats)
        measured[impl] = rates(timing)
        cells_per_s[impl] = measured[impl]["cells_per_s"]
        emit({"backend": f"mindformer_gf/{impl}", **setting, **measured[impl]})
    timing, hf_output = bench_transformers(config, weights, ids, args.repeats)
    measured["hf"] = rates(timing)
    hf = measured["hf"]["cells_per_s"]
    emit({"backend": "transformers/sdpa", **setting, **measured["hf"]})
    gemm_after = gemm_rate()
    emit({"phase": "gemm_after", **gemm_after})
    gemm = merge_gemm_rates(gemm_before, gemm_after)
    # The speeds only compare if the outputs agree: same weights, same cells.
    for impl, output in outputs.items():
        difference = float(np.abs(output - hf_output).max() / np.abs(hf_output).max())
        emit({"backend": f"mindformer_gf/{impl}", "max_relative_difference_vs_hf": difference})
        if difference > 1e-3:
            raise SystemExit(f"{impl} output differs from transformers by {difference:.2e}: not benchmarking a bug")
    auto = resolve_impl("auto")
    ours = cells_per_s[auto]
    ours_fraction = fraction_of_gemm(flops, measured[auto]["seconds"], gemm)
    emit(
        {
            "ours_cells_per_s": ours,
            "ours_cells_per_s_range": measured[auto]["cells_per_s_range"],
            "ours_impl": auto,
            "composed_cells_per_s": cells_per_s["composed"],
            "hf_cells_per_s": hf,
            "hf_cells_per_s_range": measured["hf"]["cells_per_s_range"],
            "ratio": ours / hf,
            "gflops_per_cell": flops / args.batch / 1e9,
            "ours_gflops_per_s": measured[auto]["gflops_per_s"],
            "ours_fraction_of_gemm": ours_fraction,
            "hf_fraction_of_gemm": fraction_of_gemm(flops, measured["hf"]["seconds"], gemm),
            **gemm,
            "goals": {"ratio >= 1.2": ours / hf >= 1.2, "ours_fraction_of_gemm >= 0.7": ours_fraction >= 0.7},
            "load_average": os.getloadavg(),
        }
    )


if __name__ == "__main__":
    main()
