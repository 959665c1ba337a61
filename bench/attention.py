"""The fused CPU attention kernel alone: forward and backward GFLOP/s against this machine's GEMM peak.

Runs the MindSpore custom operators in graph mode on random [batch, heads, length, head_dim] inputs (the backward
kernel called directly on the forward's outputs), and numpy's 2048^3 float32 GEMM in the same process for the peak.
FLOPs: 4 L n d per (cell, head) forward with n the valid keys (Q K^T and P V over the keys that count), 2.5 times
that backward (dV, dP, dQ, dK and the recomputed S). Prints JSON lines; the last one is the summary
{"fwd_gflops", "bwd_gflops", "gemm_gflops", "fwd_fraction_of_gemm", ...}. Other work on the machine lowers every
figure: run it on an idle machine.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import best_seconds, emit


def gemm_gflops(size: int, repeats: int) -> float:
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = np.random.default_rng(1).random((size, size), dtype=np.float32)
    return 2.0 * size**3 / best_seconds(lambda: a @ b, repeats) / 1e9


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--valid", type=int, default=None, help="valid keys per cell (default: all; the rest padding)")
    parser.add_argument("--dropout", type=float, default=0.0, help="attention dropout probability (training mode)")
    parser.add_argument("--isa", choices=("auto", "avx2", "portable"), default="auto")
    parser.add_argument("--repeats", type=int, default=3)
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
    fwd_flops = 4.0 * batch * heads * length * valid * head_dim
    bwd_flops = 2.5 * fwd_flops
    config = {"batch": batch, "heads": heads, "length": length, "head_dim": head_dim, "valid": valid}
    config.update({"dropout": args.dropout, "isa": cpu.cpu_isa(), "threads": cpu.native().MindformerGfNumThreads()})

    fwd_seconds = best_seconds(lambda: forward(q, k, v, mask, seed, drop)[0].asnumpy(), args.repeats)
    emit({"phase": "forward", "seconds": fwd_seconds, "gflops": fwd_flops / fwd_seconds / 1e9, **config})
    bwd_seconds = best_seconds(
        lambda: backward(q, k, v, mask, seed, drop, out, lse, d_out, d_lse)[0].asnumpy(), args.repeats
    )
    emit({"phase": "backward", "seconds": bwd_seconds, "gflops": bwd_flops / bwd_seconds / 1e9, **config})
    gemm = gemm_gflops(args.gemm_size, args.repeats)
    emit({"phase": "gemm", "size": args.gemm_size, "gflops": gemm})

    summary = {
        "fwd_gflops": round(fwd_flops / fwd_seconds / 1e9, 2),
        "bwd_gflops": round(bwd_flops / bwd_seconds / 1e9, 2),
        "gemm_gflops": round(gemm, 2),
        "fwd_fraction_of_gemm": round(fwd_flops / fwd_seconds / 1e9 / gemm, 3),
        **config,
    }
    emit(summary)
    return summary


if __name__ == "__main__":
    main()
