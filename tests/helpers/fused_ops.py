"""Graph-mode cells and runners around the fused attention operator, shared by the attention tests."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from mindformer_gf.ops import cpu

TOLERANCE = 1e-5


class AttentionWithLse(nn.Cell):
    """Inputs and output in [batch, heads, length, head_dim] whatever the kernel's layout: with sequence_major the
    cell transposes around the [batch, length, heads, head_dim] kernel, so every test compares one layout."""

    def __init__(self, dropout_prob: float = 0.0, apply_dropout: bool = False, sequence_major: bool = False):
        super().__init__()
        self.dropout_prob = dropout_prob
        self.apply_dropout = apply_dropout
        self.sequence_major = sequence_major

    def construct(self, q, k, v, mask, seed):
        if not self.sequence_major:
            return cpu.attention_with_lse(q, k, v, mask, self.dropout_prob, self.apply_dropout, seed)
        out, lse = cpu.attention_with_lse(
            q.transpose(0, 2, 1, 3),
            k.transpose(0, 2, 1, 3),
            v.transpose(0, 2, 1, 3),
            mask,
            self.dropout_prob,
            self.apply_dropout,
            seed,
            True,
        )
        return out.transpose(0, 2, 1, 3), lse


class AttentionLoss(nn.Cell):
    """sum(O * w_out) + sum(LSE * w_lse): its gradient feeds dO = w_out and dLSE = w_lse into the backward kernel."""

    def __init__(self, dropout_prob: float = 0.0, apply_dropout: bool = False, sequence_major: bool = False):
        super().__init__()
        self.attention = AttentionWithLse(dropout_prob, apply_dropout, sequence_major)

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


def run_forward(q, k, v, mask, dropout_prob=0.0, seed=0, sequence_major=False):
    cell = AttentionWithLse(dropout_prob, dropout_prob > 0, sequence_major)
    out, lse = cell(Tensor(q), Tensor(k), Tensor(v), Tensor(mask), Tensor(np.array([seed], np.int64)))
    return out.asnumpy(), lse.asnumpy()


def run_gradients(q, k, v, mask, w_out, w_lse, dropout_prob=0.0, seed=0, sequence_major=False):
    loss = AttentionLoss(dropout_prob, dropout_prob > 0, sequence_major)
    grad = ms.grad(loss, grad_position=(0, 1, 2))
    inputs = [Tensor(q), Tensor(k), Tensor(v), Tensor(mask), Tensor(np.array([seed], np.int64))]
    return [g.asnumpy() for g in grad(*inputs, Tensor(w_out), Tensor(w_lse))]
