"""AdamW against torch.optim.AdamW (decoupled decay, bias correction, per-group decay); skipped steps change nothing."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Parameter, Tensor

from mindformer_gf.train import build_adamw, decays_weight

SHAPES = {"encoder.dense.weight": (3, 4), "encoder.dense.bias": (3,), "encoder.LayerNorm.weight": (3,)}


def flat(grads: dict[str, np.ndarray], names: list[str]) -> Tensor:
    """Gradients as the optimiser takes them: one vector, parameters concatenated in its order."""
    return Tensor(np.concatenate([grads[n].reshape(-1) for n in names]))


def test_decay_groups_follow_the_reference():
    assert decays_weight("bert.encoder.layer.0.attention.self.query.weight")
    assert decays_weight("bert.embeddings.word_embeddings.weight")
    assert not decays_weight("bert.encoder.layer.0.attention.self.query.bias")
    assert not decays_weight("bert.encoder.layer.0.output.LayerNorm.weight")
    assert not decays_weight("cls.predictions.bias")


def test_adamw_matches_torch_over_steps_with_changing_lr():
    rng = np.random.default_rng(0)
    initial = {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}
    grads = [{name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()} for _ in range(6)]
    rates = [1e-3, 5e-3, 1e-2, 1e-2, 2e-3, 1e-3]

    params = {name: Parameter(Tensor(value), name=name) for name, value in initial.items()}
    optimizer = build_adamw(params, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    torch_params = {name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in initial.items()}
    reference = torch.optim.AdamW(
        [
            {"params": [torch_params["encoder.dense.weight"]], "weight_decay": 0.1},
            {
                "params": [torch_params["encoder.dense.bias"], torch_params["encoder.LayerNorm.weight"]],
                "weight_decay": 0,
            },
        ],
        lr=1.0,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    for step_grads, lr in zip(grads, rates, strict=True):
        optimizer(flat(step_grads, optimizer.names), Tensor(lr, ms.float32), Tensor(True))
        for group in reference.param_groups:
            group["lr"] = lr
        for name, p in torch_params.items():
            p.grad = torch.from_numpy(step_grads[name])
        reference.step()
    for name in SHAPES:
        np.testing.assert_allclose(params[name].asnumpy(), torch_params[name].detach().numpy(), rtol=2e-5, atol=1e-6)
    state = optimizer.state_arrays()
    assert state["step"][0] == 6
    torch_state = reference.state[torch_params["encoder.dense.weight"]]
    np.testing.assert_allclose(state["exp_avg_sq.encoder.dense.weight"], torch_state["exp_avg_sq"].numpy(), rtol=1e-5)


def test_a_skipped_update_changes_nothing():
    rng = np.random.default_rng(1)
    params = {name: Parameter(Tensor(rng.normal(size=s).astype(np.float32)), name=name) for name, s in SHAPES.items()}
    optimizer = build_adamw(params, weight_decay=0.1)
    grads = flat({n: rng.normal(size=SHAPES[n]).astype(np.float32) for n in optimizer.names}, optimizer.names)
    optimizer(grads, Tensor(1e-2, ms.float32), Tensor(True))
    before_params = {n: p.asnumpy().copy() for n, p in params.items()}
    before_state = optimizer.state_arrays()
    nan_grads = flat({n: np.full(SHAPES[n], np.nan, np.float32) for n in optimizer.names}, optimizer.names)
    optimizer(nan_grads, Tensor(1e-2, ms.float32), Tensor(False))
    for name, p in params.items():
        assert np.array_equal(p.asnumpy(), before_params[name])
    after_state = optimizer.state_arrays()
    for key, value in before_state.items():
        assert np.array_equal(after_state[key], value), key
    # the same grads applied do change the weights: the check above can fail
    optimizer(grads, Tensor(1e-2, ms.float32), Tensor(True))
    assert not np.array_equal(params["encoder.dense.weight"].asnumpy(), before_params["encoder.dense.weight"])


def test_state_round_trip_and_mismatch():
    params = {name: Parameter(Tensor(np.ones(s, np.float32)), name=name) for name, s in SHAPES.items()}
    optimizer = build_adamw(params, weight_decay=0.0)
    state = optimizer.state_arrays()
    state["exp_avg.encoder.dense.bias"] = np.full(3, 0.5, np.float32)
    optimizer.load_state_arrays(state)
    assert optimizer.state_arrays()["exp_avg.encoder.dense.bias"].tolist() == [0.5] * 3
    with pytest.raises(KeyError, match="missing"):
        optimizer.load_state_arrays({"step": np.zeros(1, np.float32)})
