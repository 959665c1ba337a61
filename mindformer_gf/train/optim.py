"""AdamW as in PyTorch/Hugging Face (decoupled weight decay, bias-corrected moments) as a MindSpore cell, and the
parameter groups Geneformer uses (no weight decay on biases and LayerNorm parameters).

One call applies one update to every parameter, or none: `apply` is a boolean tensor, and a step whose gradients
were not finite leaves parameters, moments and the step counter exactly as they were.

`flatten_gradients` turns a tuple of per-parameter gradients into the flat vector AdamW and the step cells use.

On CPU with the native kernels built, the training step uses `AdamW.update_in_place` instead of calling the cell:
the same update, bit for bit, as one kernel (kernels/cpu/adamw.cc) writing parameters and moments where they are,
so the compiled update graph holds no full-size temporaries (the graph version keeps ~18 of them, 41 MB each for a
10M-parameter model).
"""

from __future__ import annotations

from collections.abc import Iterable

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from mindformer_gf.ops.cpu import fused_adamw


def decays_weight(name: str) -> bool:
    """Whether parameter `name` gets weight decay: not biases, not LayerNorm weights (as the reference's Trainer)."""
    return not (name.endswith("bias") or ".LayerNorm." in name or name.startswith("LayerNorm."))


_apply_update = ops.MultitypeFuncGraph("apply_update")


@_apply_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Number", "Number", "Number")
def _apply_one(lr: Tensor, apply: Tensor, update: Tensor, param: Tensor, start: int, size: int, decay: float) -> Tensor:
    step = ops.slice(update, (start,), (size,)).reshape(param.shape)
    decayed = param * (1.0 - lr * decay) if decay else param
    ops.assign(param, ops.select(apply, decayed - step, param))
    return apply


class AdamW(nn.Cell):
    """p <- p - lr * (wd * p + m_hat / (sqrt(v_hat) + eps)), with m_hat, v_hat the bias-corrected moments
    (torch.optim.AdamW). `weight_decays[i]` is parameter i's decay (0 for biases and LayerNorm).

    Gradients come as one flat fp32 vector (all parameters concatenated in order), and the moments are kept flat
    too: the moment updates are two vector operations whatever the number of parameters, and the compiled graph
    stays small (a per-parameter Python loop of ~20 operations each exceeds graph mode's call-depth limit for a
    full model).
    """

    def __init__(
        self,
        names: Iterable[str],
        params: Iterable[Parameter],
        weight_decays: Iterable[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.names = list(names)
        self.params = ms.ParameterTuple(list(params))
        self.weight_decays = tuple(float(w) for w in weight_decays)
        if not (len(self.names) == len(self.params) == len(self.weight_decays)):
            raise ValueError("AdamW needs one name and one weight decay per parameter")
        self.sizes = tuple(int(np.prod(p.shape)) for p in self.params)
        self.size = int(sum(self.sizes))
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.exp_avg = Parameter(Tensor(np.zeros(self.size, np.float32)), name="adamw.exp_avg")
        self.exp_avg_sq = Parameter(Tensor(np.zeros(self.size, np.float32)), name="adamw.exp_avg_sq")
        self.step_count = Parameter(Tensor(np.zeros((), np.float32)), name="adamw.step")
        self.starts = tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.sizes)[:-1]]))
        self.hyper_map = ops.HyperMap()
        # update_in_place's constant operands as the graph computes them: graph mode turns the Python floats into
        # float32 before any arithmetic, so 1 - beta1 is float32(1) - float32(beta1) (0.100000024 for 0.9, not 0.1)
        beta1_f32, beta2_f32 = np.float32(self.beta1), np.float32(self.beta2)
        self.fused_constants = Tensor(
            np.array([self.eps, beta1_f32, np.float32(1) - beta1_f32, beta2_f32, np.float32(1) - beta2_f32], np.float32)
        )
        self.fused_decays = Tensor(np.array(self.weight_decays, np.float32))

    def construct(self, grad: Tensor, lr: Tensor, apply: Tensor) -> Tensor:
        step = self.step_count + 1.0
        bias1 = 1.0 - ops.pow(self.beta1, step)
        bias2_sqrt = ops.sqrt(1.0 - ops.pow(self.beta2, step))
        m_new = self.beta1 * self.exp_avg + (1.0 - self.beta1) * grad
        v_new = self.beta2 * self.exp_avg_sq + (1.0 - self.beta2) * grad * grad
        update = (lr / bias1) * m_new / (ops.sqrt(v_new) / bias2_sqrt + self.eps)
        ops.assign(self.exp_avg, ops.select(apply, m_new, self.exp_avg))
        ops.assign(self.exp_avg_sq, ops.select(apply, v_new, self.exp_avg_sq))
        self.hyper_map(
            ops.partial(_apply_update, lr, apply, update), self.params, self.starts, self.sizes, self.weight_decays
        )
        ops.assign(self.step_count, ops.select(apply, step, self.step_count))
        return apply

    def update_in_place(
        self, grad_buffer: Parameter, grad_scale: Tensor, clip_scale: Tensor, lr: Tensor, apply: Tensor
    ) -> Tensor:
        """`construct((grad_buffer * grad_scale) * clip_scale, lr, apply)` in one CPU kernel that writes parameters
        and moments in place and zeroes `grad_buffer` (whether or not it applies): the buffer Parameter itself, or
        a temporary (the AllReduce's copy) nothing reads afterwards. grad_scale is float32 [1], clip_scale and lr
        float32 scalars, apply a bool scalar.
        Returns the kernel's [apply] output: order later reads of the buffers after it."""
        step = self.step_count + 1.0
        bias1 = 1.0 - ops.pow(self.beta1, step)
        bias2_sqrt = ops.sqrt(1.0 - ops.pow(self.beta2, step))
        scalars = ops.stack((grad_scale.reshape(()), clip_scale, lr, lr / bias1, bias2_sqrt))
        hyper = ops.cat((scalars, self.fused_constants, apply.astype(ms.float32).reshape((1,))))
        done = fused_adamw(grad_buffer, self.exp_avg, self.exp_avg_sq, hyper, self.fused_decays, *self.params)
        ops.assign(self.step_count, ops.depend(ops.select(apply, step, self.step_count), done))
        return done

    def _segments(self) -> list[tuple[str, int, int, tuple[int, ...]]]:
        bounds = np.concatenate([[0], np.cumsum(self.sizes)])
        return [
            (n, int(bounds[i]), int(bounds[i + 1]), tuple(p.shape))
            for i, (n, p) in enumerate(zip(self.names, self.params, strict=True))
        ]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Moments by parameter name (`exp_avg.<name>`, `exp_avg_sq.<name>`) and the step count, as numpy copies."""
        state = {"step": np.array(self.step_count.asnumpy(), np.float32).reshape(1)}
        m, v = self.exp_avg.asnumpy(), self.exp_avg_sq.asnumpy()
        for name, start, stop, shape in self._segments():
            state[f"exp_avg.{name}"] = m[start:stop].reshape(shape).copy()
            state[f"exp_avg_sq.{name}"] = v[start:stop].reshape(shape).copy()
        return state

    def load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        expected = {"step", *(f"exp_avg.{n}" for n in self.names), *(f"exp_avg_sq.{n}" for n in self.names)}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"optimiser state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        m = np.empty(self.size, np.float32)
        v = np.empty(self.size, np.float32)
        for name, start, stop, shape in self._segments():
            for flat, key in ((m, f"exp_avg.{name}"), (v, f"exp_avg_sq.{name}")):
                value = np.asarray(state[key], np.float32)
                if value.shape != shape:
                    raise ValueError(f"optimiser state {key}: shape {value.shape}, parameter shape {shape}")
                flat[start:stop] = value.reshape(-1)
        self.exp_avg.set_data(Tensor(m))
        self.exp_avg_sq.set_data(Tensor(v))
        self.step_count.set_data(Tensor(np.asarray(state["step"], np.float32).reshape(())))


_flatten = ops.MultitypeFuncGraph("flatten")


@_flatten.register("Tensor")
def _flatten_one(tensor: Tensor) -> Tensor:
    return tensor.reshape(-1)


def flatten_gradients(grads: tuple) -> Tensor:
    """Concatenate per-parameter gradients (in parameter order) into one flat vector."""
    return ops.cat(ops.HyperMap()(_flatten, grads))


def build_adamw(
    named_params: dict[str, Parameter],
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> AdamW:
    """AdamW over the trainable parameters, weight decay on all but biases and LayerNorm parameters."""
    trainable = {name: p for name, p in named_params.items() if p.requires_grad}
    decays = [weight_decay if decays_weight(name) else 0.0 for name in trainable]
    return AdamW(trainable.keys(), trainable.values(), decays, betas, eps)
