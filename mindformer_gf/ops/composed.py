"""The composed backend: attention and LayerNorm from MindSpore primitives. Runs on every device."""

from __future__ import annotations

import mindspore as ms
from mindspore import ops

# A large finite negative rather than -inf or finfo.min: exp() of it is exactly 0 in fp32, and it cannot overflow
# to -inf/NaN when the scores are cast to fp16 (mindspore-ascend-notes.md).
MASK_NEGATIVE = -60000.0


def attention(
    query: ms.Tensor,
    key: ms.Tensor,
    value: ms.Tensor,
    attention_mask: ms.Tensor,
    dropout_prob: float = 0.0,
    training: bool = False,
) -> ms.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over [batch, heads, length, head_dim]; mask [batch, length], 1 = valid key."""
    scale = query.shape[-1] ** -0.5
    scores = ops.matmul(query, key.swapaxes(-1, -2)) * scale
    bias = (1.0 - attention_mask.astype(scores.dtype)) * MASK_NEGATIVE
    scores = scores + bias[:, None, None, :]
    probs = ops.softmax(scores, -1)
    if training and dropout_prob > 0.0:
        probs = ops.dropout(probs, p=dropout_prob)
    # A cell with no valid key at all (length 0) attends to nothing: its output is 0, as in the fused kernels.
    has_keys = (attention_mask.sum(-1) > 0).astype(probs.dtype)
    return ops.matmul(probs, value) * has_keys[:, None, None, None]


def layer_norm(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float) -> ms.Tensor:
    normalize = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
    return normalize(x, weight, bias)[0]


def add_layer_norm(x: ms.Tensor, residual: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float) -> ms.Tensor:
    return layer_norm(x + residual, weight, bias, eps)


def gelu(x: ms.Tensor) -> ms.Tensor:
    """Exact (erf) GELU: MindSpore's own operator."""
    return ops.gelu(x, approximate="none")


# nn.Dense's own primitive: the weight is read transposed in place (weight.T would be a transpose op in the graph)
_MATMUL_TRANSPOSED_WEIGHT = ops.MatMul(transpose_b=True)


def dense(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
    """x weight^T + bias as nn.Dense computes it: MatMul(transpose_b) over the rows, then BiasAdd."""
    rows = ops.reshape(x, (-1, x.shape[-1]))
    y = ops.bias_add(_MATMUL_TRANSPOSED_WEIGHT(rows, weight), bias)
    return ops.reshape(y, x.shape[:-1] + (weight.shape[0],))


def log_sum_exp(x: ms.Tensor) -> ms.Tensor:
    return ops.logsumexp(x, -1)
