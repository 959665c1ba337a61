"""Exact GELU on the CPU: this project's kernel (kernels/cpu/gelu.cc) vs MindSpore's ops.gelu(approximate="none"),
and an elementwise add of the same shape as the memory-bound yardstick; forward, and the gradient graph of
sum(gelu(x) w) with respect to x ("forward_backward": whatever each backend's gradient graph runs; ours needs only x
and dy in its backward, so MindSpore may drop its forward there).

Prints JSON lines; the last is the summary {"shape", "<case>_ms" medians, "forward_speedup",
"forward_backward_speedup", "load_average"} (ranges in the per-case lines). Each graph returns a [.., .., 1] slice
of its result, so timing is of the computation, not of copying hundreds of MB back to numpy.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from common import emit, summary, timings_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[16, 1024, 4096], help="activation shape")
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()

    import mindspore as ms
    from mindspore import Tensor, nn

    from mindformer_gf.ops import cpu, dispatch

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal(args.shape, dtype=np.float32))
    w = Tensor(rng.standard_normal(args.shape, dtype=np.float32))

    class Forward(nn.Cell):
        def __init__(self, impl: str):
            super().__init__()
            self.impl = impl

        def construct(self, x, w):
            y = x + w if self.impl == "add" else dispatch.gelu(x, self.impl)
            return y[..., 0:1]

    class Loss(nn.Cell):
        def __init__(self, impl: str):
            super().__init__()
            self.impl = impl

        def construct(self, x, w):
            return (dispatch.gelu(x, self.impl) * w).sum()

    class ForwardBackward(nn.Cell):
        def __init__(self, impl: str):
            super().__init__()
            self.grad = ms.grad(Loss(impl), grad_position=0)

        def construct(self, x, w):
            return self.grad(x, w)[..., 0:1]

    medians = {}
    print(f"gelu bench on {cpu.host_cpu()}, kernels {cpu.cpu_isa()}, shape {args.shape}", flush=True)
    for name, net in (
        ("add_ms", Forward("add")),
        ("fused_forward_ms", Forward("fused")),
        ("mindspore_forward_ms", Forward("composed")),
        ("fused_forward_backward_ms", ForwardBackward("fused")),
        ("mindspore_forward_backward_ms", ForwardBackward("composed")),
    ):
        medians[name] = summary(name, timings_ms(lambda net=net: net(x, w).asnumpy(), args.repeats))
    emit(
        {
            "shape": args.shape,
            **{key: round(value, 2) for key, value in medians.items()},
            "forward_speedup": round(medians["mindspore_forward_ms"] / medians["fused_forward_ms"], 2),
            "forward_backward_speedup": round(
                medians["mindspore_forward_backward_ms"] / medians["fused_forward_backward_ms"], 2
            ),
            "load_average": [load_before, os.getloadavg()],
        }
    )


if __name__ == "__main__":
    main()
