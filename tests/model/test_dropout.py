"""Dropout in training: every mask is the numpy reference's (mindformer_gf.reference.dropout) for the step seed fed
to the graph, at Geneformer's V1 (0.02) and V2 (0.1) rates; keep rates within binomial bounds, kept values scaled
by exactly 1 / (1 - p); gradients through the same mask; different steps and sites draw different masks; inference
stays deterministic."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindformer_gf import ops
from mindformer_gf.config import GeneformerConfig
from mindformer_gf.model import build_model
from mindformer_gf.reference import dropout as ref
from mindformer_gf.reference import forward

V1, V2 = 0.02, 0.1


def tiny_config(rate: float, **changes) -> GeneformerConfig:
    base = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=rate,
        attention_probs_dropout_prob=rate,
        attention_impl="fused",
    )
    base.update(changes)
    return GeneformerConfig(**base)


def binomial_bounds(n: int, p_keep: float, sigmas: float = 5.0) -> tuple[float, float]:
    half = sigmas * np.sqrt(n * p_keep * (1 - p_keep))
    return n * p_keep - half, n * p_keep + half


class DropoutNet(nn.Cell):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def construct(self, x: Tensor, seed: Tensor) -> Tensor:
        return ops.dropout(x, self.p, True, seed, "fused")


@pytest.mark.parametrize("p", [V1, V2])
def test_kernel_mask_is_the_reference_one_with_binomial_keep_rate_and_exact_scale(p):
    x = np.random.default_rng(0).normal(size=(3, 50, 256)).astype(np.float32)
    seed = ref.step_seed(11, 5, 1)
    y = DropoutNet(p)(Tensor(x), Tensor([seed], ms.int64)).asnumpy()
    keep = ref.keep_mask(seed, p, x.shape)
    np.testing.assert_array_equal(y != 0, keep)
    # kept values are x * fl32(1 / (1 - p)), bit for bit
    np.testing.assert_array_equal(y[keep], x[keep] * np.float32(1.0 / (1.0 - np.float32(p))))
    low, high = binomial_bounds(x.size, 1 - p)
    assert low <= keep.sum() <= high


def test_dropout_gradient_uses_the_forward_mask():
    p, x = V2, np.random.default_rng(1).normal(size=(2, 40, 64)).astype(np.float32)
    weight = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    seed = ref.step_seed(3, 0, 0)

    class Weighted(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.dropout = DropoutNet(p)
            self.weight = Tensor(weight)

        def construct(self, t: Tensor, s: Tensor) -> Tensor:
            return (self.dropout(t, s) * self.weight).sum()

    got = ms.grad(Weighted(), grad_position=0)(Tensor(x), Tensor([seed], ms.int64)).asnumpy()
    expected = weight * ref.keep_mask(seed, p, x.shape) * np.float32(1.0 / (1.0 - np.float32(p)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_sites_steps_and_micro_batches_draw_different_independent_masks():
    p, shape = V2, (4, 64, 32)
    step_seeds = [ref.step_seed(0, step, micro) for step in range(3) for micro in range(2)]
    assert len(set(step_seeds)) == len(step_seeds)
    masks = [
        ref.keep_mask(ref.site_seed(seed, layer, site), p, shape)
        for seed in step_seeds
        for layer in range(2)
        for site in ref.SITES
    ]
    n = masks[0].size
    low, high = binomial_bounds(n, 1 - p)
    for mask in masks:
        assert low <= mask.sum() <= high
    # two independent masks agree where both keep or both drop: p^2 + (1 - p)^2 of the elements
    agree = (1 - p) ** 2 + p**2
    low, high = binomial_bounds(n, agree)
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            assert low <= (masks[a] == masks[b]).sum() <= high, (a, b)


def test_training_forward_equals_reference_with_the_same_masks(make_batch):
    # every site: embeddings, attention probabilities and both sub-layer outputs of each layer, the classifier
    architecture = "BertForSequenceClassification"
    config = tiny_config(V2, architectures=[architecture], id2label={0: "a", 1: "b", 2: "c"})
    model = build_model(config, architecture, seed=3)
    ids, mask = make_batch([20, 13, 1], config.vocab_size)
    weights = model.state_dict()

    def run(seed):
        return model(Tensor(ids), Tensor(mask), False, dropout_seed=Tensor([seed], ms.int64))[0].asnumpy()

    model.set_train(True)
    seed, other = ref.step_seed(9, 4, 0), ref.step_seed(9, 5, 0)
    trained = run(seed)
    expected, _ = forward(weights, ids, mask, config, architecture, dropout_seed=seed)
    np.testing.assert_allclose(trained, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(run(seed), trained)  # the seed alone decides
    inference, _ = forward(weights, ids, mask, config, architecture)
    assert np.abs(trained - inference).max() > 1e-3  # dropout did act
    assert np.abs(run(other) - trained).max() > 1e-3  # another step, other masks

    model.set_train(False)
    evaluated = model(Tensor(ids), Tensor(mask))[0].asnumpy()
    np.testing.assert_allclose(evaluated, inference, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model(Tensor(ids), Tensor(mask))[0].asnumpy(), evaluated)
