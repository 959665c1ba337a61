"""Backend choice for `attention` and `add_layer_norm`: one signature, one semantics, several implementations."""

from __future__ import annotations

import mindspore as ms

from mindformer_gf.ops import composed

IMPLS = ("auto", "fused", "builtin", "composed")


def resolve_impl(impl: str) -> str:
    """Turn "auto" into the backend that runs on this device; refuse an unknown or unavailable backend by name."""
    if impl not in IMPLS:
        raise ValueError(f"attention_impl {impl!r} is not one of {IMPLS}")
    if impl == "auto":
        return "composed"
    if impl != "composed":
        raise NotImplementedError(f"attention_impl {impl!r} is not available in this build; use 'composed' (or 'auto')")
    return impl


def attention(
    query: ms.Tensor,
    key: ms.Tensor,
    value: ms.Tensor,
    attention_mask: ms.Tensor,
    dropout_prob: float = 0.0,
    training: bool = False,
    impl: str = "composed",
) -> ms.Tensor:
    """Scaled dot-product attention over [batch, heads, length, head_dim] with a key-padding mask [batch, length].

    Semantics (mindformer_gf.reference.scaled_dot_product_attention): scores = q k^T / sqrt(head_dim); keys where
    the mask is 0 get zero weight; softmax over keys; dropout on the probabilities in training; probabilities times
    v. A row with no valid key returns 0. `impl` must already be resolved (see `resolve_impl`).
    """
    return composed.attention(query, key, value, attention_mask, dropout_prob, training)


def layer_norm(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float, impl: str = "composed") -> ms.Tensor:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias, statistics in fp32."""
    return composed.layer_norm(x, weight, bias, eps)


def add_layer_norm(
    x: ms.Tensor, residual: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float, impl: str = "composed"
) -> ms.Tensor:
    """LayerNorm(x + residual): the post-LN residual step of every BERT sub-layer."""
    return composed.add_layer_norm(x, residual, weight, bias, eps)
