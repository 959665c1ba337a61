"""The in-place AdamW kernel (kernels/cpu/adamw.cc) against the graph update it replaces (bit for bit), torch's
AdamW (within 1e-6) and numpy (the gradient norm); and the fused apply step against the graph one."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Parameter, Tensor, nn

from mindformer_gf.ops import cpu
from mindformer_gf.train import build_adamw
from mindformer_gf.train.step import ApplyStep, make_buffers

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="the native CPU kernels are not built")

# sizes that exercise the kernel's chunking (65,536 values per task) inside and across parameters
SHAPES = {
    "encoder.dense.weight": (300, 260),
    "encoder.dense.bias": (300,),
    "encoder.LayerNorm.weight": (7,),
    "head.weight": (5, 3),
}


class GraphUpdate(nn.Cell):
    """The graph path: gradient = (g * grad_scale) * clip_scale, then the AdamW cell."""

    def __init__(self, optimizer) -> None:
        super().__init__()
        self.optimizer = optimizer

    def construct(self, grad, grad_scale, clip_scale, lr, apply):
        return self.optimizer((grad * grad_scale) * clip_scale, lr, apply)


class InPlaceUpdate(nn.Cell):
    def __init__(self, optimizer, grad_buffer: Parameter) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.grad_buffer = grad_buffer

    def construct(self, grad_scale, clip_scale, lr, apply):
        return self.optimizer.update_in_place(self.grad_buffer, grad_scale, clip_scale, lr, apply)


def make_params(seed: int) -> dict[str, Parameter]:
    rng = np.random.default_rng(seed)
    return {n: Parameter(Tensor(rng.normal(size=s).astype(np.float32)), name=n) for n, s in SHAPES.items()}


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def test_in_place_update_is_bit_for_bit_the_graph_update():
    rng = np.random.default_rng(5)
    size = sum(int(np.prod(s)) for s in SHAPES.values())
    graph_params, fused_params = make_params(1), make_params(1)
    graph_opt = build_adamw(graph_params, weight_decay=0.01, betas=(0.9, 0.98), eps=1e-6)
    fused_opt = build_adamw(fused_params, weight_decay=0.01, betas=(0.9, 0.98), eps=1e-6)
    buffer = Parameter(Tensor(np.zeros(size, np.float32)), name="grad_buffer", requires_grad=False)
    graph_update, fused_update = GraphUpdate(graph_opt), InPlaceUpdate(fused_opt, buffer)
    # (lr, grad_scale, clip_scale, apply): changing rates, normalisation and clipping factors, one skipped step
    schedule = [(1e-3, 0.25, 1.0, True), (5e-3, 1 / 3, 0.7, True), (1e-2, 0.1, 1.0, False), (2e-3, 3.0, 0.123, True)]
    for lr, grad_scale, clip_scale, apply in schedule:
        # gradients over many magnitudes, a few exact zeros
        grad = (rng.normal(size=size) * 10.0 ** rng.integers(-6, 3, size)).astype(np.float32)
        grad[rng.integers(0, size, 50)] = 0.0
        args = (Tensor([grad_scale], ms.float32), Tensor(clip_scale, ms.float32), Tensor(lr, ms.float32))
        graph_update(Tensor(grad), *args, Tensor(apply))
        buffer.set_data(Tensor(grad))
        applied = fused_update(*args, Tensor(apply)).asnumpy()
        assert applied.tolist() == [float(apply)]
        assert not buffer.asnumpy().any(), "the kernel clears the gradient buffer"
    for name in SHAPES:
        assert np.array_equal(bits(graph_params[name].asnumpy()), bits(fused_params[name].asnumpy())), name
    graph_state, fused_state = graph_opt.state_arrays(), fused_opt.state_arrays()
    assert fused_state["step"][0] == 3
    for key, value in graph_state.items():
        assert np.array_equal(bits(value), bits(fused_state[key])), key
    # the comparison can fail: the parameters did move
    assert not np.array_equal(fused_params["head.weight"].asnumpy(), make_params(1)["head.weight"].asnumpy())


def test_in_place_update_matches_torch_adamw():
    rng = np.random.default_rng(7)
    params = make_params(2)
    initial = {n: p.asnumpy().copy() for n, p in params.items()}
    optimizer = build_adamw(params, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8)
    buffer = Parameter(Tensor(np.zeros(optimizer.size, np.float32)), name="grad_buffer", requires_grad=False)
    update = InPlaceUpdate(optimizer, buffer)
    torch_params = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in initial.items()}
    decayed = [n for n in optimizer.names if n.endswith("weight") and "LayerNorm" not in n]
    reference = torch.optim.AdamW(
        [
            {"params": [torch_params[n] for n in decayed], "weight_decay": 0.1},
            {"params": [torch_params[n] for n in optimizer.names if n not in decayed], "weight_decay": 0.0},
        ],
        lr=1.0,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    for lr in (1e-3, 2e-3, 5e-4, 1e-3, 1e-3):
        grads = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
        buffer.set_data(Tensor(np.concatenate([grads[n].reshape(-1) for n in optimizer.names])))
        update(Tensor([1.0], ms.float32), Tensor(1.0, ms.float32), Tensor(lr, ms.float32), Tensor(True))
        for group in reference.param_groups:
            group["lr"] = lr
        for n, p in torch_params.items():
            p.grad = torch.from_numpy(grads[n])
        reference.step()
    for n in SHAPES:
        ours, theirs = params[n].asnumpy(), torch_params[n].detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6, err_msg=n)
        assert np.abs(ours - initial[n]).max() > 1e-3, "the parameters moved (the comparison can fail)"


class Norm(nn.Cell):
    def construct(self, grad, scale):
        return cpu.flat_grad_norm(grad, scale)


def test_flat_grad_norm_against_numpy():
    rng = np.random.default_rng(3)
    grad = rng.normal(size=200_001).astype(np.float32)
    scale = np.float32(0.37)
    norm, finite = Norm()(Tensor(grad), Tensor([scale])).asnumpy()
    expected = np.sqrt(np.sum((grad * scale).astype(np.float64) ** 2))
    assert finite == 1.0
    assert abs(norm - expected) <= 1e-7 * expected
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = grad.copy()
        poisoned[123_457] = bad
        assert Norm()(Tensor(poisoned), Tensor([scale])).asnumpy()[1] == 0.0
    # finite values whose norm overflows float32 are not finite either, as in the graph path
    huge = np.full(16, 3e38, np.float32)
    assert Norm()(Tensor(huge), Tensor([np.float32(1.0)])).asnumpy()[1] == 0.0


def apply_steps(fused: bool, max_grad_norm: float, grads: list[np.ndarray], stats: np.ndarray):
    params = make_params(4)
    optimizer = build_adamw(params, weight_decay=0.01)
    grad_buffer, stats_buffer = make_buffers(list(optimizer.params), stats.size)
    step = ApplyStep(optimizer, grad_buffer, stats_buffer, max_grad_norm, False, fused_update=fused)
    outputs = []
    for grad in grads:
        grad_buffer.set_data(Tensor(grad))
        stats_buffer.set_data(Tensor(stats))
        out_stats, norm, applied = step(Tensor(1e-3, ms.float32), Tensor(0.5, ms.float32))
        outputs.append((out_stats.asnumpy(), float(norm.asnumpy()), bool(applied.asnumpy())))
        assert not grad_buffer.asnumpy().any() and not stats_buffer.asnumpy().any()
    return {n: p.asnumpy() for n, p in params.items()}, optimizer.state_arrays(), outputs


def test_fused_apply_step_matches_the_graph_apply_step():
    rng = np.random.default_rng(11)
    size = sum(int(np.prod(s)) for s in SHAPES.values())
    grads = [rng.normal(size=size).astype(np.float32) for _ in range(3)]
    grads.insert(1, np.full(size, np.nan, np.float32))  # a skipped step
    stats = np.array([12.5, 37.0, 9.0], np.float32)
    # without clipping the whole step is bit for bit; with it, only the norm's summation order differs
    for max_grad_norm, exact in ((0.0, True), (1.0, False)):
        graph = apply_steps(False, max_grad_norm, grads, stats)
        fused = apply_steps(True, max_grad_norm, grads, stats)
        assert [o[2] for o in fused[2]] == [True, False, True, True]
        for (g_stats, g_norm, g_applied), (f_stats, f_norm, f_applied) in zip(graph[2], fused[2], strict=True):
            assert np.array_equal(g_stats, f_stats) and g_applied == f_applied
            if g_applied:
                assert abs(g_norm - f_norm) <= 1e-6 * g_norm
        for name in SHAPES:
            if exact:
                assert np.array_equal(bits(graph[0][name]), bits(fused[0][name])), name
            else:
                np.testing.assert_allclose(fused[0][name], graph[0][name], rtol=0, atol=1e-7, err_msg=name)
        for key, value in graph[1].items():
            if exact:
                assert np.array_equal(bits(value), bits(fused[1][key])), key
            else:
                np.testing.assert_allclose(fused[1][key], value, rtol=1e-5, atol=1e-12, err_msg=key)
