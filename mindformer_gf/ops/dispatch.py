"""Backend choice for `attention`, `add_layer_norm` and `gelu`: one signature, one semantics, several backends."""

from __future__ import annotations

import warnings
from functools import cache

import mindspore as ms

from mindformer_gf.ops import ascend, composed, cpu

IMPLS = ("auto", "fused", "builtin", "composed")


class KernelFallbackWarning(RuntimeWarning):
    """attention_impl="auto" fell back to the composed backend because the CPU kernel library is not built."""


# "auto" is resolved once per model, so a process building several models would repeat the same advice.
_fallback_warned = False


def _warn_cpu_fallback() -> None:
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    warnings.warn(
        "the fused CPU kernels are not built, so attention_impl='auto' runs the composed backend (several times the "
        "memory on long cells): build them with `make setup`, `pip install -e .` or `python setup.py build_ext "
        "--inplace` (needs a C++17 compiler); attention_impl='composed' silences this",
        KernelFallbackWarning,
        stacklevel=3,
    )


def _device() -> str:
    return ms.get_context("device_target")


def resolve_impl(impl: str) -> str:
    """Turn "auto" into the backend that runs on this device; refuse an unknown or unavailable backend by name."""
    if impl not in IMPLS:
        raise ValueError(f"attention_impl {impl!r} is not one of {IMPLS}")
    device = _device()
    if impl == "auto":
        if device == "CPU":
            if cpu.is_available():
                return "fused"
            _warn_cpu_fallback()
            return "composed"
        if device == "Ascend":
            return "fused" if ascend.installed_package() is not None else "builtin"
        return "composed"
    if impl == "fused":
        if device == "Ascend":
            if ascend.installed_package() is None:
                raise ascend.OperatorsMissing(f"attention_impl 'fused' on Ascend: {ascend.INSTALL_HINT}")
            return impl
        if device != "CPU":
            raise NotImplementedError(f"attention_impl 'fused' has no kernels for {device}; use 'composed' (or 'auto')")
        if not cpu.is_available():
            raise cpu.KernelLibraryMissing(f"attention_impl 'fused' needs the CPU kernel library: {cpu.BUILD_HINT}")
        return impl
    if impl == "builtin" and device != "Ascend":
        raise NotImplementedError(
            f"attention_impl 'builtin' is MindSpore's Ascend operators, not available on {device}; use 'composed'"
        )
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
    sequence_major: bool = False,
) -> ms.Tensor:
    """Scaled dot-product attention over [batch, heads, length, head_dim] with a key-padding mask [batch, length].

    sequence_major=True: query, key, value and the result are [batch, length, heads, head_dim] instead (what the
    projections produce); the CPU fused kernel reads and writes that layout in place, the other backends transpose.

    Semantics (mindformer_gf.reference.scaled_dot_product_attention): scores = q k^T / sqrt(head_dim); keys where
    the mask is 0 get zero weight; softmax over keys; dropout on the probabilities in training; probabilities times
    v. A row with no valid key returns 0. `impl` must already be resolved (see `resolve_impl`).

    dropout_seed (int64 tensor, one element) fixes the fused kernel's dropout mask (see `mindformer_gf.ops.cpu`);
    None draws a fresh one per call. The composed backend uses MindSpore's own dropout and ignores it.
    """
    # graph_on_ascend() is evaluated once, at compile time: the device of a process does not change.
    if not sequence_major:
        return _attention_head_major(query, key, value, attention_mask, dropout_prob, training, impl, dropout_seed)
    if impl == "fused" and not ascend.graph_on_ascend():
        return cpu.attention(query, key, value, attention_mask, dropout_prob, training, dropout_seed, True)
    context = _attention_head_major(
        query.transpose(0, 2, 1, 3),
        key.transpose(0, 2, 1, 3),
        value.transpose(0, 2, 1, 3),
        attention_mask,
        dropout_prob,
        training,
        impl,
        dropout_seed,
    )
    return context.transpose(0, 2, 1, 3)


def _attention_head_major(query, key, value, attention_mask, dropout_prob, training, impl, dropout_seed):
    if impl == "fused":
        if ascend.graph_on_ascend():
            return ascend.attention_ascend_fused(
                query, key, value, attention_mask, dropout_prob, training, dropout_seed
            )
        return cpu.attention(query, key, value, attention_mask, dropout_prob, training, dropout_seed)
    if impl == "builtin":
        return ascend.attention_ascend_builtin(query, key, value, attention_mask, dropout_prob, training, dropout_seed)
    return composed.attention(query, key, value, attention_mask, dropout_prob, training)


def layer_norm(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float, impl: str = "composed") -> ms.Tensor:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias, statistics in fp32."""
    if impl == "fused":
        if ascend.graph_on_ascend():
            return ascend.layer_norm_ascend_fused(x, weight, bias, eps)
        return cpu.layer_norm(x, weight, bias, eps)
    if impl == "builtin":
        return ascend.layer_norm_ascend_builtin(x, weight, bias, eps)
    return composed.layer_norm(x, weight, bias, eps)


def add_layer_norm(
    x: ms.Tensor, residual: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float, impl: str = "composed"
) -> ms.Tensor:
    """LayerNorm(x + residual): the post-LN residual step of every BERT sub-layer."""
    if impl == "fused":
        if ascend.graph_on_ascend():
            return ascend.add_layer_norm_ascend_fused(x, residual, weight, bias, eps)
        return cpu.add_layer_norm(x, residual, weight, bias, eps)
    if impl == "builtin":
        return ascend.add_layer_norm_ascend_builtin(x, residual, weight, bias, eps)
    return composed.add_layer_norm(x, residual, weight, bias, eps)


def dense(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, impl: str = "composed") -> ms.Tensor:
    """A linear layer, x weight^T + bias over x [..., K], weight [N, K], bias [N] (nn.Dense's layout).

    fused on CPU: the tile kernels' GEMM (kernels/cpu/dense.cc, forward and backward); everywhere else MindSpore's
    MatMul + BiasAdd, as nn.Dense runs it."""
    if impl == "fused" and not ascend.graph_on_ascend():
        return cpu.dense(x, weight, bias)
    return composed.dense(x, weight, bias)


def log_sum_exp(x: ms.Tensor, impl: str = "composed") -> ms.Tensor:
    """log sum_c exp(x[..., c]) over the last axis, shifted by the row maximum (finite for any finite row): the
    cross-entropy's normaliser. fused on CPU: this project's kernel (kernels/cpu/log_sum_exp.cc, one pass each way
    over the logits); everywhere else MindSpore's ops.logsumexp."""
    if impl == "fused" and not ascend.graph_on_ascend():
        return cpu.log_sum_exp(x)
    return composed.log_sum_exp(x)


def gelu(x: ms.Tensor, impl: str = "composed") -> ms.Tensor:
    """Exact GELU x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (mindformer_gf.reference's "gelu"), elementwise.

    fused on CPU: this project's kernel (kernels/cpu/gelu.cc, forward and backward); everywhere else (Ascend
    included, whose own operator is already fused): MindSpore's ops.gelu(approximate="none")."""
    if impl == "fused" and not ascend.graph_on_ascend():
        return cpu.gelu(x)
    return composed.gelu(x)


def dropout(
    x: ms.Tensor, drop_probability: float, training: bool, seed: ms.Tensor, impl: str = "composed"
) -> ms.Tensor:
    """Dropout on activations whose mask is a function of `seed` (int64 [1]) alone, so a training step can be
    replayed: x * keep / (1 - p) in training with p > 0, else x.

    fused on CPU: the attention kernel's dropout hash (`mindformer_gf.reference.dropout.keep_mask`, reproduced by
    the numpy reference). On Ascend: MindSpore's DropoutExt, which takes the seed as an input too (a different mask
    stream; not run in this project's tests, which have no Ascend device). composed on CPU: MindSpore's own dropout,
    whose generator lives inside the compiled graph, so the seed is ignored and a resumed run is not exact.
    """
    if not training or drop_probability == 0.0:
        return x
    if ascend.graph_on_ascend():
        return _dropout_ext()(x, drop_probability, ms.ops.reshape(seed, ()), ms.ops.zeros((), ms.int64))[0]
    if impl == "fused":
        return cpu.dropout(x, drop_probability, seed)
    return ms.ops.dropout(x, p=drop_probability, training=True)


@cache
def _dropout_ext():
    from mindspore.ops.auto_generate import DropoutExt

    return DropoutExt()
