"""Float64 numpy oracles for the fused kernels: the package's own (`mindformer_gf.reference.attention`, forward
with log-sum-exp and backward; `mindformer_gf.reference.normalization`, add+LayerNorm with its statistics and
backward; `mindformer_gf.reference.errors.relative_error`), under the names the kernel tests use."""

from mindformer_gf.reference.attention import attention_backward, attention_forward
from mindformer_gf.reference.errors import relative_error
from mindformer_gf.reference.normalization import add_layer_norm_backward as layer_norm_backward
from mindformer_gf.reference.normalization import add_layer_norm_forward as layer_norm_forward

__all__ = [
    "attention_backward",
    "attention_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "relative_error",
]
