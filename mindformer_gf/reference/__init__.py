"""Pure-numpy Geneformer: the executable specification that tests compare every backend against.

Imports neither MindSpore nor torch.
"""

from mindformer_gf.reference.attention import attention_backward, attention_forward, scaled_dot_product_attention
from mindformer_gf.reference.bert import (
    add_layer_norm,
    cross_entropy,
    encoder,
    forward,
    init_weights,
    layer_norm,
)

__all__ = [
    "add_layer_norm",
    "attention_backward",
    "attention_forward",
    "cross_entropy",
    "encoder",
    "forward",
    "init_weights",
    "layer_norm",
    "scaled_dot_product_attention",
]
