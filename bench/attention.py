"""The fused CPU attention kernel alone: forward and backward GFLOP/s against this machine's GEMM peak.

Runs the MindSpore custom operators in graph mode on random [batch, heads, length, head_dim] inputs (the backward
kernel called directly on the forward's outputs), and numpy's 2048^3 float32 GEMM in the same process for the rate:
`--repeats` interleaved rounds of forward, backward, GEMM (bench/common.py `interleaved_rounds`), each fraction of
the GEMM rate taken within its round, the median over rounds reported with the range. FLOPs (bench/flops.py): 4 L n
d per (cell, head) forward with n the valid keys (Q K^T and P V over the keys that count), 2.5 times that backward
(dV, dP, dQ, dK and the recomputed S). Prints JSON lines; the last one is the summary {"fwd_gflops", "bwd_gflops",
"gemm_gflops", "fwd_fraction_of_gemm", "bwd_fraction_of_gemm", "goals", ...} (goal: forward >= 0.8 of the GEMM
rate). Other work on the machine lowers every figure: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from common import emit, fraction_per_round, interleaved_rounds, paired
from flops import attention_backward_flops, attention_forward_flops


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--valid", type=int, default=None, help="valid keys per cell (default: all; the rest padding)")
    parser.add_argument("--dropout", type=float, default=0.0, help="attention dropout probability (training mode)")
    # "auto" or one of mindformer_gf.ops.cpu.CPU_ISAS (not imported here: it loads MindSpore)
    parser.add_argument("--isa", choices=("auto", "avx512", "avx2", "avx512emu", "portable"), default="auto")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median and range)")
    parser.add_argument("--gemm-size", type=int, default=2048)
    args = parser.parse_args(argv)

    import mindspore as ms
    from mindspore import Tensor, nn

    from mindformer_gf.ops import cpu

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    cpu.set_cpu_isa(args.isa)
    kernels = cpu._kernels()

    batch, heads, length, head_dim = args.batch, args.heads, args.length, args.head_dim
    valid = length if args.valid is None else args.valid
    rng = np.random.default_rng(0)
    shape = (batch, heads, length, head_dim)
    q, k, v, d_out = (Tensor(rng.standard_normal(shape, dtype=np.float32)) for _ in range(4))
    mask = np.zeros((batch, length), np.int32)
    mask[:, :valid] = 1
    mask = Tensor(mask)
    seed = Tensor(np.array([20261126], np.int64))
    drop = Tensor(np.array([args.dropout], np.float32))
    d_lse = Tensor(np.zeros((batch, heads, length), np.float32))

    class Forward(nn.Cell):
        def construct(self, q, k, v, mask, seed, drop):
            return kernels.attention_forward(q, k, v, mask, seed, drop)

    class Backward(nn.Cell):
        def construct(self, q, k, v, mask, seed, drop, out, lse, d_out, d_lse):
            return kernels.attention_backward(q, k, v, mask, seed, drop, out, lse, d_out, d_lse)

    forward, backward = Forward(), Backward()
    out, lse = forward(q, k, v, mask, seed, drop)
    fwd_flops = attention_forward_flops(batch, heads, length, head_dim, valid)
    bwd_flops = attention_backward_flops(batch, heads, length, head_dim, valid)
    config = {"batch": batch, "heads": heads, "length": length, "head_dim": head_dim, "valid": valid}
    config.update({"dropout": args.dropout, "isa": cpu.cpu_isa(), "threads": cpu.native().MindformerGfNumThreads()})

    calls = {
        "forward": lambda: forward(q, k, v, mask, seed, drop)[0].asnumpy(),
        "backward": lambda: backward(q, k, v, mask, seed, drop, out, lse, d_out, d_lse)[0].asnumpy(),
    }
    seconds, gemm_gflops = interleaved_rounds(calls, args.repeats, args.gemm_size)
    fwd_gflops, fwd_range = paired([fwd_flops / t / 1e9 for t in seconds["forward"]])
    bwd_gflops, bwd_range = paired([bwd_flops / t / 1e9 for t in seconds["backward"]])
    fwd_fraction, fwd_fraction_range = paired(fraction_per_round(fwd_flops, seconds["forward"], gemm_gflops))
    bwd_fraction, bwd_fraction_range = paired(fraction_per_round(bwd_flops, seconds["backward"], gemm_gflops))
    rate, rate_range = paired(gemm_gflops)

    def rounded(values: list[float], digits: int) -> list[float]:
        return [round(x, digits) for x in values]

    summary = {
        "fwd_gflops": round(fwd_gflops, 2),
        "fwd_gflops_range": rounded(fwd_range, 2),
        "bwd_gflops": round(bwd_gflops, 2),
        "bwd_gflops_range": rounded(bwd_range, 2),
        "gemm_gflops": round(rate, 2),
        "gemm_gflops_range": rounded(rate_range, 2),
        "fwd_fraction_of_gemm": round(fwd_fraction, 3),
        "fwd_fraction_of_gemm_range": rounded(fwd_fraction_range, 3),
        "bwd_fraction_of_gemm": round(bwd_fraction, 3),
        "bwd_fraction_of_gemm_range": rounded(bwd_fraction_range, 3),
        "goals": {"fwd_fraction_of_gemm >= 0.8": fwd_fraction >= 0.8},
        "load_average": os.getloadavg(),
        **config,
    }
    emit(summary)
    return summary


if __name__ == "__main__":
    main()
