"""FLOPs of the work the benchmarks time, counted from the shapes: the matrix products only.

A multiply-add counts 2. Counted: the linear layers (Q, K, V, attention output, FFN in and out, the MLM head's
transform and decoder) and attention's two products per head (Q K^T and P V) over the keys that count. Not counted:
embeddings, LayerNorm, GELU, softmax, dropout, the cosines: elementwise work of O(L H) per layer, under 1% of the
products at Geneformer's sizes. These are the FLOPs a GEMM-bound implementation must do, so FLOPs / seconds over the
machine's fp32 GEMM rate (bench/common.py) is the fraction of that rate a benchmark reaches.

`config` is anything with hidden_size, intermediate_size, num_hidden_layers and vocab_size (GeneformerConfig).
"""

from __future__ import annotations

# attention backward per forward: dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q and the recomputed S = Q K^T are
# 5 products of the forward's 2 (Q K^T, P V)
ATTENTION_BACKWARD_PER_FORWARD = 2.5
# a training step: the forward, then the backward's two products per forward product (input and weight gradients)
TRAINING_STEP_PER_FORWARD = 3.0


def attention_forward_flops(batch: int, heads: int, length: int, head_dim: int, valid: int | None = None) -> float:
    """Q K^T and P V of every (cell, head): 2 * 2 L n d with n the valid keys (default: all L)."""
    keys = length if valid is None else valid
    return 4.0 * batch * heads * length * keys * head_dim


def attention_backward_flops(batch: int, heads: int, length: int, head_dim: int, valid: int | None = None) -> float:
    """dV, dP, dQ, dK and the recomputed scores: 2.5 times the forward."""
    return ATTENTION_BACKWARD_PER_FORWARD * attention_forward_flops(batch, heads, length, head_dim, valid)


def encoder_layer_flops(config, batch: int, length: int) -> float:
    """One post-LN BERT layer on [batch, length]: Q, K, V and output projections (4 x 2 L H^2), FFN (2 x 2 L H F),
    attention over all `length` keys (4 L^2 H: the heads split H)."""
    hidden, ffn = config.hidden_size, config.intermediate_size
    tokens = batch * length
    linear = 8.0 * tokens * hidden * hidden + 4.0 * tokens * hidden * ffn
    return linear + 4.0 * batch * length * length * hidden


def encoder_forward_flops(config, batch: int, length: int, layers: int | None = None) -> float:
    """The encoder's first `layers` layers (default: all) on [batch, length] cells, no head."""
    count = config.num_hidden_layers if layers is None else layers
    return count * encoder_layer_flops(config, batch, length)


def mlm_head_flops(config, predicted: int) -> float:
    """The MLM head at `predicted` positions: transform dense (2 H^2) and decoder over the vocabulary (2 H V)."""
    hidden = config.hidden_size
    return 2.0 * predicted * hidden * hidden + 2.0 * predicted * hidden * config.vocab_size


def training_step_flops(config, batch: int, length: int, predicted: int) -> float:
    """An MLM training step on [batch, length]: 3 x (encoder forward + head at `predicted` positions per cell;
    `length` for full logits, the masked slots for masked-only logits). The optimizer's elementwise update is not
    counted."""
    forward = encoder_forward_flops(config, batch, length) + mlm_head_flops(config, batch * predicted)
    return TRAINING_STEP_PER_FORWARD * forward


def perturbation_flops(config, batch: int, width: int, layers: int) -> float:
    """Our perturbation forward: the encoder stopped at hidden state `layers` (layers 1..layers run), no head."""
    return encoder_forward_flops(config, batch, width, layers)


def reference_perturbation_flops(config, batch: int, width: int) -> float:
    """The reference approach's forward: every layer and the full-vocabulary MLM logits at every position."""
    return encoder_forward_flops(config, batch, width) + mlm_head_flops(config, batch * width)
