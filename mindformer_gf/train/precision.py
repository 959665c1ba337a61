"""Numeric precision of training: fp32 on CPU; bf16 (default) or fp16 with dynamic loss scaling on Ascend.

Mixed precision casts the model's matrix products to the low precision (MindSpore AMP level "O1": a white list of
MatMul/BatchMatMul-like ops), so LayerNorm, softmax and the loss keep fp32 statistics; parameters, gradients,
optimiser moments and the gradient buffers stay fp32. Custom (fused) operators are in no AMP list: the ops package
casts around them.
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
    """Cast `model`'s matrix products to `precision` (in place); fp32 leaves it untouched."""
    if precision == "fp32":
        return model
    import mindspore as ms

    dtype = ms.bfloat16 if precision == "bf16" else ms.float16
    return ms.amp.auto_mixed_precision(model, amp_level="O1", dtype=dtype)


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
