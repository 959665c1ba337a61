"""Dropout mask cost on the CPU: the fused HashDropout operator vs MindSpore's own CPU dropout vs the numpy
specification, and the attention forward with and without its in-kernel dropout.

Prints JSON lines; the last is the summary {"fused_ms", "mindspore_ms", "numpy_ms", "fused_vs_mindspore",
"attention_dropout_ms", "attention_no_dropout_ms", "attention_dropout_overhead", the attention cases' fractions of
the machine's fp32 GEMM rate (bench/common.py, bench/flops.py), "load_average"}: medians over
--repeats calls (ranges in the per-case lines). Run it with PYTHONPATH pointing at another checkout to compare
generators (the script only uses APIs both have).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from common import emit, gemm_rate, summary, timings_ms
from flops import attention_forward_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 2048, 256], help="activation shape for dropout")
    parser.add_argument("--drop", type=float, default=0.1)
    parser.add_argument("--attention", type=int, nargs=4, default=[2, 4, 1024, 64], metavar=("B", "H", "L", "D"))
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from mindformer_gf.ops import cpu
    from mindformer_gf.reference.dropout import keep_mask

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal(args.shape, dtype=np.float32))
    seed = Tensor(np.array([20261129], np.int64))

    class Fused(nn.Cell):
        def construct(self, x, seed):
            return cpu.dropout(x, args.drop, seed)

    class Builtin(nn.Cell):
        def construct(self, x):
            return ops.dropout(x, p=args.drop, training=True)

    fused_net, builtin_net = Fused(), Builtin()
    fused_ms = summary("fused HashDropout", timings_ms(lambda: fused_net(x, seed).asnumpy(), args.repeats))
    builtin_ms = summary("mindspore dropout", timings_ms(lambda: builtin_net(x).asnumpy(), args.repeats))
    numpy_ms = summary(
        "numpy keep_mask",
        timings_ms(lambda: keep_mask(20261129, args.drop, tuple(args.shape)), max(3, args.repeats // 5)),
    )

    batch, heads, length, head_dim = args.attention
    q, k, v = (Tensor(rng.standard_normal((batch, heads, length, head_dim), dtype=np.float32)) for _ in range(3))
    mask = Tensor(np.ones((batch, length), np.int32))
    kernels = cpu._kernels()

    class Forward(nn.Cell):
        def construct(self, q, k, v, mask, seed, drop):
            return kernels.attention_forward(q, k, v, mask, seed, drop)[0]

    forward = Forward()
    with_drop, no_drop = (Tensor(np.array([p], np.float32)) for p in (args.drop, 0.0))
    attention = {}
    for name, drop in (("attention_dropout_ms", with_drop), ("attention_no_dropout_ms", no_drop)):
        attention[name] = summary(
            f"attention forward B={batch} H={heads} L={length} D={head_dim} p={float(drop.asnumpy()[0])}",
            timings_ms(lambda drop=drop: forward(q, k, v, mask, seed, drop).asnumpy(), args.repeats),
        )
    # the attention cases as a fraction of the machine's fp32 GEMM rate (the dropout ones are memory-bound: no FLOPs)
    gemm = gemm_rate()
    flops = attention_forward_flops(batch, heads, length, head_dim)
    fractions = {
        key.replace("_ms", "_fraction_of_gemm"): round(flops / (value / 1e3) / 1e9 / gemm["gemm_gflops"], 3)
        for key, value in attention.items()
    }
    emit(
        {
            "shape": args.shape,
            "drop": args.drop,
            "fused_ms": round(fused_ms, 2),
            "mindspore_ms": round(builtin_ms, 2),
            "numpy_ms": round(numpy_ms, 2),
            "fused_vs_mindspore": round(builtin_ms / fused_ms, 2),
            **{key: round(value, 2) for key, value in attention.items()},
            "attention_dropout_overhead": round(
                attention["attention_dropout_ms"] / attention["attention_no_dropout_ms"], 3
            ),
            **fractions,
            **gemm,
            "load_average": [load_before, os.getloadavg()],
        }
    )


if __name__ == "__main__":
    main()
