"""Encoder inference throughput: this package's MindSpore model vs transformers.BertModel (torch, sdpa).

Same weights, same cells (B x L, no padding), V1-10M configuration by default. The sides are timed in `--repeats`
interleaved rounds (bench/common.py `interleaved_rounds`): each round calls our fused model, our composed model and
transformers once, back to back, then one numpy fp32 GEMM. Ratios and fractions of the GEMM rate are taken within
each round (a shared machine's speed drifts between minutes, much less between seconds) and reported as the median
over rounds with their range. Prints JSON lines; the last one is the summary {"ours_cells_per_s",
"composed_cells_per_s", "hf_cells_per_s", "ratio", "ratio_range", "ours_fraction_of_gemm", "hf_fraction_of_gemm",
"gemm_gflops", "goals"} with ratio = ours / HF, where "ours" is the backend `attention_impl="auto"` picks on this
machine, and the fractions of the GEMM rate from the encoder's FLOPs (bench/flops.py). Goals: ratio >= 1.2 and ours
>= 0.7 of the GEMM rate.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import numpy as np
from common import emit, fraction_per_round, interleaved_rounds, paired, speedup_per_round
from flops import encoder_forward_flops


def mindspore_encoder(config, weights: dict, ids: np.ndarray, impl: str) -> Callable[[], np.ndarray]:
    """Our encoder in graph mode with `impl` attention: a call returns the last hidden state."""
    import mindspore as ms

    from mindformer_gf.model import BertModel

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    model = BertModel(config.replace(attention_impl=impl), add_pooling_layer=False)
    model.load_weights(weights)
    model.set_train(False)
    input_ids, mask = ms.Tensor(ids), ms.Tensor(np.ones_like(ids))
    return lambda: model(input_ids, mask)[0].asnumpy()


def transformers_encoder(config, weights: dict, ids: np.ndarray) -> Callable[[], np.ndarray]:
    """transformers.BertModel (sdpa attention) with the same weights: a call returns the last hidden state."""
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

    def run() -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=input_ids, attention_mask=mask).last_hidden_state.numpy()

    return run


def main() -> None:
    from mindformer_gf.config import GeneformerConfig
    from mindformer_gf.ops import resolve_impl
    from mindformer_gf.reference import init_weights

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="Geneformer-V1-10M")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median and range)")
    args = parser.parse_args()

    config = GeneformerConfig.from_preset(args.preset)
    weights = init_weights(config, "BertModel", seed=0)
    weights = {k: v for k, v in weights.items() if not k.startswith("pooler.")}
    ids = np.random.default_rng(0).integers(2, config.vocab_size, size=(args.batch, args.length)).astype(np.int32)
    setting = {"preset": args.preset, "batch": args.batch, "length": args.length}
    flops = encoder_forward_flops(config, args.batch, args.length)

    calls = {}
    for impl in ("fused", "composed"):
        try:
            resolve_impl(impl)
        except NotImplementedError as err:
            emit({"backend": f"mindformer_gf/{impl}", "skipped": str(err)})
            continue
        calls[impl] = mindspore_encoder(config, weights, ids, impl)
    calls["hf"] = transformers_encoder(config, weights, ids)
    # The speeds only compare if the outputs agree: same weights, same cells.
    hf_output = calls["hf"]()
    for impl in calls.keys() - {"hf"}:
        difference = float(np.abs(calls[impl]() - hf_output).max() / np.abs(hf_output).max())
        emit({"backend": f"mindformer_gf/{impl}", "max_relative_difference_vs_hf": difference})
        if difference > 1e-3:
            raise SystemExit(f"{impl} output differs from transformers by {difference:.2e}: not benchmarking a bug")

    seconds, gemm_gflops = interleaved_rounds(calls, args.repeats)
    names = {"fused": "mindformer_gf/fused", "composed": "mindformer_gf/composed", "hf": "transformers/sdpa"}
    cells_per_s = {}
    for side, times in seconds.items():
        cells_per_s[side] = paired([args.batch / t for t in times])
        emit({"backend": names[side], **setting, "cells_per_s": cells_per_s[side][0], "range": cells_per_s[side][1]})
    auto = resolve_impl("auto")
    ratio, ratio_range = paired(speedup_per_round(seconds[auto], seconds["hf"]))
    fraction = {side: paired(fraction_per_round(flops, times, gemm_gflops)) for side, times in seconds.items()}
    gemm, gemm_range = paired(gemm_gflops)
    emit(
        {
            "ours_cells_per_s": cells_per_s[auto][0],
            "ours_cells_per_s_range": cells_per_s[auto][1],
            "ours_impl": auto,
            "composed_cells_per_s": cells_per_s["composed"][0] if "composed" in cells_per_s else None,
            "hf_cells_per_s": cells_per_s["hf"][0],
            "hf_cells_per_s_range": cells_per_s["hf"][1],
            "ratio": ratio,
            "ratio_range": ratio_range,
            "gflops_per_cell": flops / args.batch / 1e9,
            "ours_fraction_of_gemm": fraction[auto][0],
            "ours_fraction_of_gemm_range": fraction[auto][1],
            "hf_fraction_of_gemm": fraction["hf"][0],
            "hf_fraction_of_gemm_range": fraction["hf"][1],
            "gemm_gflops": gemm,
            "gemm_gflops_range": gemm_range,
            "goals": {"ratio >= 1.2": ratio >= 1.2, "ours_fraction_of_gemm >= 0.7": fraction[auto][0] >= 0.7},
            "load_average": os.getloadavg(),
        }
    )


if __name__ == "__main__":
    main()
