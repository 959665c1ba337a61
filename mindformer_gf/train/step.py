"""The two compiled graphs of a training step: accumulate one micro-batch, then apply the update.

`MicroStep(objective, ...)(scale, dropout_seed, *batch)` runs forward and backward of one micro-batch and adds its
gradients and statistics into buffers. It is compiled once per batch shape (one per length bucket), or once in all
with dynamic shapes (pretraining's default on the CPU).

`ApplyStep(...)(lr)` is compiled once: it sums buffers over data-parallel ranks (AllReduce), normalises by the
global item count, checks that every gradient is finite, clips the global norm, runs AdamW (or skips it entirely
when something is not finite), and clears the buffers.

Normalisation: the objective returns sums over items (masked genes, labelled cells), not means. Gradients of the sum
are accumulated over micro-batches and ranks and divided once by the total item count, so a step is the gradient of
the mean loss over the whole global batch, however its items are spread over ranks and accumulation steps: a
1-device run with N accumulation steps equals N devices with 1 (up to float summation order).

On CPU with the native kernels built (`fused_update`), the apply step does the same in two kernels over the flat
buffers in place (kernels/cpu/adamw.cc): the gradient norm (accumulated in float64), then AdamW with the
normalisation and clipping factors applied on the fly, clearing the gradient buffer as it goes. No full-size
temporary is left in the compiled graph (with data parallelism, the AllReduce's copy of the buffer); the update is
bit for bit the graph's for the same clipping factor.

Loss scaling: the micro-step multiplies the loss by `scale` (fp16: the dynamic loss scale, times a fixed factor
that keeps the sums of gradients in range); the apply step divides by it before anything else.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from mindformer_gf.ops.cpu import flat_grad_norm
from mindformer_gf.train.optim import AdamW, flatten_gradients


class Objective(nn.Cell):
    """Base of training objectives: `construct(dropout_seed, *batch) -> (loss_sum, item_count, *metric_sums)`, all
    fp32 scalars.

    `dropout_seed` (int64 [1]) is the micro-batch's step seed, to pass on to the model (`model(..., dropout_seed)`):
    every dropout mask of the step is a function of it. `input_names` lists the batch arrays construct takes after
    it, in order; `metric_names` names the outputs after the first two (e.g. "correct" for accuracy = correct /
    item_count).
    """

    input_names: tuple[str, ...] = ()
    metric_names: tuple[str, ...] = ()


class _ScaledObjective(nn.Cell):
    def __init__(self, objective: Objective) -> None:
        super().__init__(auto_prefix=False)
        self.objective = objective

    def construct(self, scale: Tensor, dropout_seed: Tensor, *batch: Tensor) -> tuple:
        stats = self.objective(dropout_seed, *batch)
        return stats[0] * scale, ops.stack(stats)


class MicroStep(nn.Cell):
    """Forward + backward of one micro-batch; its flattened gradient and statistics are added to the buffers."""

    def __init__(self, objective: Objective, params: list[Parameter], grad_buffer: Parameter, stats_buffer: Parameter):
        super().__init__(auto_prefix=False)
        self.scaled = _ScaledObjective(objective)
        self.weights = ms.ParameterTuple(params)
        self.grad_buffer = grad_buffer
        self.stats_buffer = stats_buffer
        self.value_and_grad = ops.value_and_grad(self.scaled, None, self.weights, has_aux=True)

    def construct(self, scale: Tensor, dropout_seed: Tensor, *batch: Tensor) -> Tensor:
        (scaled_loss, stats), grads = self.value_and_grad(scale, dropout_seed, *batch)
        # keeps the loss output alive: dropping it makes the compiler warn about eliminated side effects
        stats = ops.depend(stats, scaled_loss)
        ops.assign_add(self.grad_buffer, flatten_gradients(grads))
        ops.assign_add(self.stats_buffer, stats)
        return stats


class ApplyStep(nn.Cell):
    """Reduce over ranks, normalise, check finiteness, clip, update (or skip), clear the buffers.

    Returns (statistics summed over ranks and micro-batches, gradient norm before clipping, applied flag).
    """

    def __init__(
        self,
        optimizer: AdamW,
        grad_buffer: Parameter,
        stats_buffer: Parameter,
        max_grad_norm: float,
        distributed: bool,
        fused_update: bool = False,
    ) -> None:
        super().__init__(auto_prefix=False)
        self.fused_update = fused_update
        self.optimizer = optimizer
        self.grad_buffer = grad_buffer
        self.stats_buffer = stats_buffer
        self.max_grad_norm = float(max_grad_norm)
        self.distributed = distributed
        if distributed:
            self.all_reduce = ops.AllReduce()

    def construct(self, lr: Tensor, inverse_scale: Tensor) -> tuple:
        if self.fused_update:
            return self._fused(lr, inverse_scale)
        stats = self.stats_buffer * 1.0
        grad = self.grad_buffer * 1.0
        if self.distributed:
            stats = self.all_reduce(stats)
            grad = self.all_reduce(grad)
        grad = grad * (inverse_scale / ops.maximum(stats[1], 1.0))
        norm = ops.sqrt((grad * grad).sum())
        finite = ops.isfinite(grad).all() & ops.isfinite(norm)
        if self.max_grad_norm > 0:
            grad = grad * ops.minimum(1.0, self.max_grad_norm / (norm + 1e-6))
        applied = self.optimizer(grad, lr, finite)
        ops.assign(self.grad_buffer, ops.zeros_like(self.grad_buffer))
        ops.assign(self.stats_buffer, ops.zeros_like(self.stats_buffer))
        return stats, norm, applied

    def _fused(self, lr: Tensor, inverse_scale: Tensor) -> tuple:
        stats = self.stats_buffer * 1.0
        grad = self.grad_buffer
        if self.distributed:
            stats = self.all_reduce(stats)
            # the kernels work on (and clear) the reduced copy; the buffer is cleared below
            grad = self.all_reduce(self.grad_buffer)
        grad_scale = (inverse_scale / ops.maximum(stats[1], 1.0)).reshape((1,))
        norm_finite = flat_grad_norm(grad, grad_scale)
        norm = norm_finite[0]
        finite = norm_finite[1] > 0.5
        if self.max_grad_norm > 0:
            clip_scale = ops.minimum(1.0, self.max_grad_norm / (norm + 1e-6))
        else:
            clip_scale = ops.ones((), ms.float32)
        # the kernel reads the buffer after the norm kernel did: clip_scale depends on the norm
        done = self.optimizer.update_in_place(grad, grad_scale, clip_scale, lr, finite)
        if self.distributed:
            ops.assign(self.grad_buffer, ops.depend(ops.zeros_like(self.grad_buffer), done))
        ops.assign(self.stats_buffer, ops.depend(ops.zeros_like(self.stats_buffer), done))
        return stats, ops.depend(norm, done), ops.depend(finite, done)


def make_buffers(params: list[Parameter], num_stats: int) -> tuple[Parameter, Parameter]:
    """A zeroed flat gradient buffer (all of `params`, concatenated) and a buffer of `num_stats` statistic sums."""
    size = int(sum(np.prod(p.shape) for p in params))
    grads = Parameter(Tensor(np.zeros(size, np.float32)), name="grad_buffer", requires_grad=False)
    stats = Parameter(Tensor(np.zeros(num_stats, np.float32)), name="stats_buffer", requires_grad=False)
    return grads, stats
