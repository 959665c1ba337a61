"""Dropout that a training step can replay: every mask is a function of a step seed passed into the graph.

The training loop feeds one int64 step seed [1] per micro-batch (`mindformer_gf.reference.dropout.step_seed`); each
dropout site derives its own key from it with integer ops inside the graph (`site_seed`, the twin of the
reference's), and the backend draws the mask from that key alone (`mindformer_gf.ops.dropout`, and the attention
kernel for attention probabilities). No generator state lives in the graph, so a resumed run, or a rank of a
data-parallel run, draws exactly the masks of the uninterrupted single-process run.
"""

from __future__ import annotations

from mindspore import Tensor, nn
from mindspore import ops as msops

from mindformer_gf import ops
from mindformer_gf.reference.dropout import LOW32, MIX_MULTIPLIER, mix32, site_code


def _mix32(x: Tensor) -> Tensor:
    """`reference.dropout.mix32` on int64 tensors holding 32-bit words."""
    x = msops.bitwise_and(msops.bitwise_xor(msops.bitwise_right_shift(x, 16), x) * MIX_MULTIPLIER, LOW32)
    x = msops.bitwise_and(msops.bitwise_xor(msops.bitwise_right_shift(x, 16), x) * MIX_MULTIPLIER, LOW32)
    return msops.bitwise_xor(msops.bitwise_right_shift(x, 16), x)


def site_salt(layer: int, site: str) -> int:
    """mix32 of the site's code: a compile-time constant of each dropout cell."""
    return mix32(site_code(layer, site))


def site_seed(step_seed: Tensor, salt: int) -> Tensor:
    """`reference.dropout.site_seed` in the graph: the int64 [1] key of the site whose `site_salt` is `salt`."""
    low = _mix32(msops.bitwise_xor(msops.bitwise_and(step_seed, LOW32), salt))
    high = msops.bitwise_and(_mix32(msops.bitwise_xor(msops.bitwise_right_shift(step_seed, 32), low)), 0x7FFFFFFF)
    return high * 4294967296 + low


class SeededDropout(nn.Cell):
    """Dropout at one site (`layer`, `site` of `reference.dropout.SITES`): the identity in inference mode."""

    def __init__(self, drop_probability: float, impl: str, layer: int, site: str) -> None:
        super().__init__()
        self.drop_probability = float(drop_probability)
        self.impl = impl
        self.salt = site_salt(layer, site)

    def construct(self, x: Tensor, step_seed: Tensor) -> Tensor:
        if not self.training or self.drop_probability == 0.0:
            return x
        return ops.dropout(x, self.drop_probability, True, site_seed(step_seed, self.salt), self.impl)
