"""The two operations where all of the model's time goes, behind one function each.

`attention` and `add_layer_norm` have one semantics (written down in `mindformer_gf.reference`) and several
backends; only this package knows which one runs:
- "composed": MindSpore primitives (BatchMatMul, Softmax, LayerNorm); runs everywhere, the fallback;
- "fused": this project's kernels (kernels/cpu on CPU through `cpu.py`, kernels/ascend on Ascend through
  `ascend.py`), the default on CPU;
- "builtin": MindSpore's Ascend fused operators (flash_attention_score, layer_norm).
`impl="auto"` picks the best one available for the device. The choice is a Python constant, so in graph mode it is
resolved at compile time.
"""

from mindformer_gf.ops.dispatch import (
    add_layer_norm,
    attention,
    dense,
    dropout,
    gelu,
    layer_norm,
    log_sum_exp,
    resolve_impl,
)

__all__ = ["attention", "add_layer_norm", "dense", "dropout", "gelu", "layer_norm", "log_sum_exp", "resolve_impl"]
