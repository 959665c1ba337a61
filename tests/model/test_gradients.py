"""MindSpore gradients (graph mode) of an MLM loss and a classification loss against central finite differences of
the float64 numpy reference, one random direction per parameter tensor."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindformer_gf import reference
from mindformer_gf.config import GeneformerConfig
from mindformer_gf.model import build_model
from mindformer_gf.model.losses import cross_entropy

CONFIG = GeneformerConfig(
    vocab_size=60,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
    initializer_range=0.2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    id2label={0: "x", 1: "y", 2: "z"},
)


class LossCell(nn.Cell):
    def __init__(self, model: nn.Cell) -> None:
        super().__init__()
        self.model = model

    def construct(self, input_ids, attention_mask, labels):
        return cross_entropy(self.model(input_ids, attention_mask)[0], labels)


def labels_for(architecture: str, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if architecture == "BertForSequenceClassification":
        return rng.integers(0, 3, size=mask.shape[0]).astype(np.int32)
    labels = rng.integers(2, CONFIG.vocab_size, size=mask.shape).astype(np.int32)
    chosen = (rng.random(mask.shape) < 0.4) & mask.astype(bool)
    return np.where(chosen, labels, -100).astype(np.int32)


@pytest.mark.parametrize("impl", ["composed", "fused"])
@pytest.mark.parametrize("architecture", ["BertForMaskedLM", "BertForSequenceClassification"])
def test_gradients_match_finite_differences_of_the_reference(make_batch, architecture, impl):
    rng = np.random.default_rng(0)
    model = build_model(CONFIG.replace(attention_impl=impl), architecture, seed=1)
    model.set_train(False)
    ids, mask = make_batch([16, 11, 4], CONFIG.vocab_size, seed=3)
    labels = labels_for(architecture, mask, rng)
    assert (labels != -100).sum() >= 3

    names = list(model.named_parameters())
    params = list(model.named_parameters().values())
    grad_fn = ms.value_and_grad(LossCell(model), None, params)
    loss, grads = grad_fn(Tensor(ids), Tensor(mask), Tensor(labels))

    weights = {name: value.astype(np.float64) for name, value in model.state_dict().items()}

    def reference_loss(w) -> float:
        logits, _ = reference.forward(w, ids, mask, CONFIG, architecture, dtype=np.float64)
        return reference.cross_entropy(logits, labels)

    assert float(loss.asnumpy()) == pytest.approx(reference_loss(weights), rel=1e-5)
    eps = 1e-5
    checked = 0
    for name, param, grad in zip(names, params, grads, strict=True):
        direction = rng.standard_normal(param.shape)
        analytic = float((grad.asnumpy().astype(np.float64) * direction).sum())
        plus = dict(weights, **{name: weights[name] + eps * direction})
        minus = dict(weights, **{name: weights[name] - eps * direction})
        numeric = (reference_loss(plus) - reference_loss(minus)) / (2 * eps)
        assert analytic == pytest.approx(numeric, rel=1e-3, abs=1e-6), name
        checked += abs(numeric) > 1e-4
    # Most tensors must have a gradient worth the name, or the comparison says little.
    assert checked >= 0.8 * len(params)
