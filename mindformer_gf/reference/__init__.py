"""Pure-numpy Geneformer: the executable specification that tests compare every backend against.

Imports neither MindSpore nor torch.
"""

from mindformer_gf.reference.bert import (
    add_layer_norm,
    cross_entropy,
    encoder,
    forward,
    init_weights,
    layer_norm,
    scaled_dot_product_attention,
)

__all__ = [
    "add_layer_norm",
    "cross_entropy",
    "encoder",
    "forward",
    "init_weights",
    "layer_norm",
    "scaled_dot_product_attention",
]
