"""Numeric precision of training: fp32 on CPU; bf16 (default) or fp16 with dynamic loss scaling on Ascend.

Mixed precision is MindSpore's operator-level AMP (amp_level "auto"), applied to the model in place: the compiler
casts the inputs of matrix products (its white list: MatMul, BatchMatMul, Dense, ...) to the low precision, runs
LayerNorm, Softmax, LogSoftmax, Exp and sums in fp32 (its black list) and every other operator in its inputs' type.
Parameters, gradients, optimiser moments and the gradient buffers stay fp32 (master weights: the compiler casts a
parameter where a low-precision product uses it, and its gradient comes back fp32). Custom (fused) operators are in
no AMP list: the ops package casts around them.

Level "O1" is not usable here: it rewrites the Python source of every construct into a NEW network (the caller's
model would silently stay fp32) and its source parser fails on this package's functional ops.

On the CPU (MindSpore 2.10) fp16 runs, emulated; bf16 does not: the CPU kernels of MatMul, BatchMatMul, Softmax,
LayerNorm, Gather, Tanh, ReLU, GeLU, IsFinite, BiasAdd and ReduceSum have no bf16 type, and a bf16 Cast of a
constant fails on numpy 2 (see README, Known limits).
"""

from __future__ import annotations

from dataclasses import dataclass


def resolve_precision(precision: str, device: str) -> str:
    """Resolve "auto": bf16 on Ascend, fp32 elsewhere. Low precision on the CPU is refused: emulated and slow."""
    if precision == "auto":
        return "bf16" if device == "Ascend" else "fp32"
    if precision in ("bf16", "fp16") and device == "CPU":
        raise ValueError(f"precision {precision!r} is for Ascend; on the CPU train in fp32 (precision: fp32 or auto)")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision {precision!r} is not one of auto, fp32, bf16, fp16")
    return precision


def apply_precision(model, precision: str):
    """Run `model`'s matrix products in `precision`, in place (`model` itself is returned); fp32 leaves it as it is."""
    if precision == "fp32":
        return model
    import mindspore as ms

    dtype = ms.bfloat16 if precision == "bf16" else ms.float16
    mixed = ms.amp.auto_mixed_precision(model, amp_level="auto", dtype=dtype)
    if mixed is not model:
        raise RuntimeError("MindSpore's amp_level 'auto' returned a new network; the trainer needs it in place")
    return model


@dataclass
class DynamicLossScale:
    """fp16 loss scaling: halve on a non-finite step (which is skipped), double after `window` finite steps.

    In fp32/bf16 (`enabled=False`) the scale stays 1; non-finite steps are still skipped and counted.
    """

    scale: float = 2.0**16
    window: int = 2000
    enabled: bool = True
    good_steps: int = 0
    minimum: float = 1.0

    def __post_init__(self) -> None:
        if not self.enabled:
            self.scale = 1.0

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        if not finite:
            self.scale = max(self.minimum, self.scale / 2.0)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.window:
            self.scale *= 2.0
            self.good_steps = 0

    def state(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "enabled": self.enabled}

    def load_state(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
