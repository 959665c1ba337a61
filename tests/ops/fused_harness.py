"""Graph-mode cells and runners around the fused attention operator, shared by the attention tests."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from mindformer_gf.ops import fused

TOLERANCE = 1e-5


class AttentionWithLse(nn.Cell):
    def __init__(self, dropout_prob: float = 0.0, apply_dropout: bool = False):
        super().__init__()
        self.dropout_prob = dropout_prob
        self.apply_dropout = apply_dropout

    def construct(self, q, k, v, mask, seed):
        return fused.attention_with_lse(q, k, v, mask, self.dropout_prob, self.apply_dropout, seed)


class AttentionLoss(nn.Cell):
    """sum(O * w_out) + sum(LSE * w_lse): its gradient feeds dO = w_out and dLSE = w_lse into the backward kernel."""

    def __init__(self, dropout_prob: float = 0.0, apply_dropout: bool = False):
        super().__init__()
        self.attention = AttentionWithLse(dropout_prob, apply_dropout)

    def construct(self, q, k, v, mask, seed, w_out, w_lse):
        out, lse = self.attention(q, k, v, mask, seed)
        return (out * w_out).sum() + (lse * w_lse).sum()


def random_problem(batch, heads, length, head_dim, lengths, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((batch, heads, length, head_dim)).astype(np.float32) for _ in range(3))
    q *= np.float32(scale)
    mask = np.zeros((batch, length), np.int32)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return q, k, v, mask


def run_forward(q, k, v, mask, dropout_prob=0.0, seed=0):
    cell = AttentionWithLse(dropout_prob, dropout_prob > 0)
    out, lse = cell(Tensor(q), Tensor(k), Tensor(v), Tensor(mask), Tensor(np.array([seed], np.int64)))
    return out.asnumpy(), lse.asnumpy()


def run_gradients(q, k, v, mask, w_out, w_lse, dropout_prob=0.0, seed=0):
    loss = AttentionLoss(dropout_prob, dropout_prob > 0)
    grad = ms.grad(loss, grad_position=(0, 1, 2))
    inputs = [Tensor(q), Tensor(k), Tensor(v), Tensor(mask), Tensor(np.array([seed], np.int64))]
    return [g.asnumpy() for g in grad(*inputs, Tensor(w_out), Tensor(w_lse))]
