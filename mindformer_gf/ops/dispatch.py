"""Backend choice for `attention` and `add_layer_norm`: one signature, one semantics, several implementations."""

from __future__ import annotations

import mindspore as ms

from mindformer_gf.ops import composed, fused

IMPLS = ("auto", "fused", "builtin", "composed")


def _device() -> str:
    return ms.get_context("device_target")


def resolve_impl(impl: str) -> str:
    """Turn "auto" into the backend that runs on this device; refuse an unknown or unavailable backend by name."""
    if impl not in IMPLS:
        raise ValueError(f"attention_impl {impl!r} is not one of {IMPLS}")
    on_cpu = _device() == "CPU"
    if impl == "auto":
        return "fused" if on_cpu and fused.is_available() else "composed"
    if impl == "fused":
        if not on_cpu:
            raise NotImplementedError(
                f"attention_impl 'fused' on {_device()} needs the Ascend operators (kernels/ascend), not wired yet; "
                "use 'composed' (or 'auto')"
            )
        if not fused.is_available():
            raise fused.KernelLibraryMissing(f"attention_impl 'fused' needs the CPU kernel library: {fused.BUILD_HINT}")
        return impl
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
    dropout_seed: ms.Tensor | None = None,
) -> ms.Tensor:
    """Scaled dot-product attention over [batch, heads, length, head_dim] with a key-padding mask [batch, length].

    Semantics (mindformer_gf.reference.scaled_dot_product_attention): scores = q k^T / sqrt(head_dim); keys where
    the mask is 0 get zero weight; softmax over keys; dropout on the probabilities in training; probabilities times
    v. A row with no valid key returns 0. `impl` must already be resolved (see `resolve_impl`).

    dropout_seed (int64 tensor, one element) fixes the fused kernel's dropout mask (see `mindformer_gf.ops.fused`);
    None draws a fresh one per call. The composed backend uses MindSpore's own dropout and ignores it.
    """
    if impl == "fused":
        return fused.attention(query, key, value, attention_mask, dropout_prob, training, dropout_seed)
    return composed.attention(query, key, value, attention_mask, dropout_prob, training)


def layer_norm(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float, impl: str = "composed") -> ms.Tensor:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias, statistics in fp32."""
    if impl == "fused":
        return fused.layer_norm(x, weight, bias, eps)
    return composed.layer_norm(x, weight, bias, eps)


def add_layer_norm(
    x: ms.Tensor, residual: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float, impl: str = "composed"
) -> ms.Tensor:
    """LayerNorm(x + residual): the post-LN residual step of every BERT sub-layer."""
    if impl == "fused":
        return fused.add_layer_norm(x, residual, weight, bias, eps)
    return composed.add_layer_norm(x, residual, weight, bias, eps)
