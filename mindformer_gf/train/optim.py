"""AdamW as in PyTorch/Hugging Face (decoupled weight decay, bias-corrected moments) as a MindSpore cell, and the
parameter groups Geneformer uses (no weight decay on biases and LayerNorm parameters).

One call applies one update to every parameter, or none: `apply` is a boolean tensor, and a step whose gradients
were not finite leaves parameters, moments and the step counter exactly as they were.
"""

from __future__ import annotations

from collections.abc import Iterable

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops


def decays_weight(name: str) -> bool:
    """Whether parameter `name` gets weight decay: not biases, not LayerNorm weights (as the reference's Trainer)."""
    return not (name.endswith("bias") or ".LayerNorm." in name or name.startswith("LayerNorm."))


class AdamW(nn.Cell):
    """p <- p - lr * (wd * p + m_hat / (sqrt(v_hat) + eps)), with m_hat, v_hat the bias-corrected moments
    (torch.optim.AdamW). `weight_decays[i]` is parameter i's decay (0 for biases and LayerNorm)."""

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
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.exp_avg = _zeros_like_all(self.params, "exp_avg")
        self.exp_avg_sq = _zeros_like_all(self.params, "exp_avg_sq")
        self.step_count = Parameter(Tensor(np.zeros((), np.float32)), name="adamw_step")

    def construct(self, grads: tuple, lr: Tensor, apply: Tensor) -> Tensor:
        step = self.step_count + 1.0
        bias1 = 1.0 - ops.pow(self.beta1, step)
        bias2_sqrt = ops.sqrt(1.0 - ops.pow(self.beta2, step))
        step_size = lr / bias1
        for i in range(len(self.params)):
            param, m, v, grad = self.params[i], self.exp_avg[i], self.exp_avg_sq[i], grads[i]
            m_new = self.beta1 * m + (1.0 - self.beta1) * grad
            v_new = self.beta2 * v + (1.0 - self.beta2) * grad * grad
            decayed = param * (1.0 - lr * self.weight_decays[i]) if self.weight_decays[i] else param
            p_new = decayed - step_size * m_new / (ops.sqrt(v_new) / bias2_sqrt + self.eps)
            ops.assign(m, ops.select(apply, m_new, m))
            ops.assign(v, ops.select(apply, v_new, v))
            ops.assign(param, ops.select(apply, p_new, param))
        ops.assign(self.step_count, ops.select(apply, step, self.step_count))
        return apply

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Moments by parameter name (`exp_avg.<name>`, `exp_avg_sq.<name>`) and the step count, as numpy."""
        state = {"step": np.asarray(self.step_count.asnumpy(), np.float32).reshape(1)}
        for name, m, v in zip(self.names, self.exp_avg, self.exp_avg_sq, strict=True):
            state[f"exp_avg.{name}"] = m.asnumpy()
            state[f"exp_avg_sq.{name}"] = v.asnumpy()
        return state

    def load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        expected = {"step", *(f"exp_avg.{n}" for n in self.names), *(f"exp_avg_sq.{n}" for n in self.names)}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"optimiser state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        self.step_count.set_data(Tensor(np.asarray(state["step"], np.float32).reshape(())))
        for name, m, v in zip(self.names, self.exp_avg, self.exp_avg_sq, strict=True):
            m.set_data(Tensor(np.asarray(state[f"exp_avg.{name}"], np.float32)))
            v.set_data(Tensor(np.asarray(state[f"exp_avg_sq.{name}"], np.float32)))


def _zeros_like_all(params: ms.ParameterTuple, prefix: str) -> ms.ParameterTuple:
    return ms.ParameterTuple(
        [Parameter(Tensor(np.zeros(p.shape, np.float32)), name=f"{prefix}.{i}") for i, p in enumerate(params)]
    )


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
