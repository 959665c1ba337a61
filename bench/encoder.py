"""Encoder inference throughput: this package's MindSpore model vs transformers.BertModel (torch, sdpa).

Same weights, same cells (B x L, no padding), V1-10M configuration by default. Prints JSON lines; the last one is
the summary {"ours_cells_per_s", "composed_cells_per_s", "hf_cells_per_s", "ratio"} with ratio = ours / HF, where
"ours" is the backend `attention_impl="auto"` picks on this machine.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import best_seconds, emit


def bench_mindspore(config, weights: dict, ids: np.ndarray, impl: str, repeats: int) -> float:
    import mindspore as ms

    from mindformer_gf.model import BertModel

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    model = BertModel(config.replace(attention_impl=impl), add_pooling_layer=False)
    model.load_weights(weights)
    model.set_train(False)
    input_ids, mask = ms.Tensor(ids), ms.Tensor(np.ones_like(ids))
    seconds = best_seconds(lambda: model(input_ids, mask)[0].asnumpy(), repeats)
    return seconds, model(input_ids, mask)[0].asnumpy()


def bench_transformers(config, weights: dict, ids: np.ndarray, repeats: int) -> float:
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

    seconds = best_seconds(run, repeats)
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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = GeneformerConfig.from_preset(args.preset)
    weights = init_weights(config, "BertModel", seed=0)
    weights = {k: v for k, v in weights.items() if not k.startswith("pooler.")}
    ids = np.random.default_rng(0).integers(2, config.vocab_size, size=(args.batch, args.length)).astype(np.int32)
    setting = {"preset": args.preset, "batch": args.batch, "length": args.length}

    cells_per_s, outputs = {}, {}
    for impl in ("fused", "composed"):
        try:
            resolve_impl(impl)
        except NotImplementedError as err:
            emit({"backend": f"mindformer_gf/{impl}", "skipped": str(err)})
            continue
        seconds, outputs[impl] = bench_mindspore(config, weights, ids, impl, args.repeats)
        cells_per_s[impl] = args.batch / seconds
        emit({"backend": f"mindformer_gf/{impl}", **setting, "seconds": seconds, "cells_per_s": cells_per_s[impl]})
    seconds, hf_output = bench_transformers(config, weights, ids, args.repeats)
    hf = args.batch / seconds
    emit({"backend": "transformers/sdpa", **setting, "seconds": seconds, "cells_per_s": hf})
    # The speeds only compare if the outputs agree: same weights, same cells.
    for impl, output in outputs.items():
        difference = float(np.abs(output - hf_output).max() / np.abs(hf_output).max())
        emit({"backend": f"mindformer_gf/{impl}", "max_relative_difference_vs_hf": difference})
        if difference > 1e-3:
            raise SystemExit(f"{impl} output differs from transformers by {difference:.2e}: not benchmarking a bug")
    ours = cells_per_s[resolve_impl("auto")]
    emit(
        {
            "ours_cells_per_s": ours,
            "ours_impl": resolve_impl("auto"),
            "composed_cells_per_s": cells_per_s["composed"],
            "hf_cells_per_s": hf,
            "ratio": ours / hf,
        }
    )


if __name__ == "__main__":
    main()
