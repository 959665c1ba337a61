"""Mixed precision and loss scaling, run on the CPU as far as MindSpore's CPU kernels allow.

Oracles: the float64 numpy reference (fp16 forward), the same run in fp32 or unscaled (training steps), and the loss
scale's rules worked out by hand. bf16 cannot run on MindSpore's CPU kernels (see precision.py), so only fp16 runs.
"""

from __future__ import annotations

import csv

import mindspore as ms
import numpy as np
import pytest
from helpers.train import TINY_MODEL, ListSource, PoisonedObjective, make_steps
from mindspore import Tensor, nn, ops

from mindformer_gf import reference
from mindformer_gf.config import GeneformerConfig
from mindformer_gf.model import build_model
from mindformer_gf.ops import composed
from mindformer_gf.train import Trainer, TrainSettings, loop
from mindformer_gf.train.precision import DynamicLossScale, apply_precision, resolve_precision

# fp16 has an 11-bit significand: 2^-11 = 4.9e-4 relative per rounding; a 2-layer model stays well inside 4e-3.
FP16_TOLERANCE = 4e-3


METRICS = ("loss", "grad_norm", "loss_scale", "skipped_steps")


def relative_error(ours: np.ndarray, oracle: np.ndarray) -> float:
    return float(np.abs(ours - oracle).max() / np.abs(oracle).max())


def test_precision_per_device():
    assert resolve_precision("auto", "CPU") == "fp32"
    assert resolve_precision("auto", "Ascend") == "bf16"
    assert resolve_precision("fp16", "Ascend") == "fp16"
    with pytest.raises(ValueError, match="train in fp32"):
        resolve_precision("bf16", "CPU")


def test_dynamic_loss_scale_rules():
    scale = DynamicLossScale(scale=1024.0, window=3)
    for finite, expected in [(True, 1024), (True, 1024), (True, 2048), (False, 1024), (True, 1024), (False, 512)]:
        scale.update(finite)
        assert scale.scale == expected
    restored = DynamicLossScale(window=3)
    restored.load_state(scale.state())
    assert (restored.scale, restored.good_steps) == (512.0, 0)
    disabled = DynamicLossScale(scale=1024.0, enabled=False)
    disabled.update(False)
    assert disabled.scale == 1.0


def test_amp_runs_products_in_fp16_and_statistics_in_fp32():
    """The operators the model's statistics use (softmax in the composed attention, log-softmax in the loss,
    LayerNorm) run in fp32 under `apply_precision`, while a Dense product feeding them runs in fp16."""

    class Probe(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Dense(8, 8, has_bias=False)  # a bias add would promote the product back to fp32
            self.weight, self.bias = ms.Parameter(ops.ones(8)), ms.Parameter(ops.zeros(8))

        def construct(self, x):
            h = self.dense(x)
            return h, ops.softmax(h, -1), ops.log_softmax(h, -1), composed.layer_norm(h, self.weight, self.bias, 1e-12)

    probe = apply_precision(Probe(), "fp16")
    product, *statistics = probe(Tensor(np.ones((2, 8), np.float32)))
    assert product.dtype == ms.float16
    assert [tensor.dtype for tensor in statistics] == [ms.float32] * 3


def test_fp16_forward_matches_the_reference_with_fp32_weights_and_layer_norm(make_batch):
    """The composed backend, whose softmax AMP must keep in fp32 (the fused one runs in the training tests below)."""
    config = GeneformerConfig(**TINY_MODEL, attention_impl="composed")
    ids, mask = make_batch([23, 9, 32], config.vocab_size)
    model = build_model(config, "BertForMaskedLM", seed=2)
    model.set_train(False)
    assert apply_precision(model, "fp16") is model  # in place: the trainer keeps using `model`
    logits, hidden_states = model(Tensor(ids), Tensor(mask), output_hidden_states=True)
    expected, expected_hidden = reference.forward(model.state_dict(), ids, mask, config, "BertForMaskedLM")
    valid = mask.astype(bool)
    # the products did run in fp16 (fp32 gives ~1e-7 here), within fp16 rounding of the reference
    assert 1e-5 < relative_error(logits.asnumpy()[valid], expected[valid]) < FP16_TOLERANCE
    for ours, oracle in zip(hidden_states, expected_hidden, strict=True):
        # every hidden state is a LayerNorm output: float32 means MindSpore ran the LayerNorm (statistics) in fp32
        assert ours.dtype == ms.float32
        assert relative_error(ours.asnumpy()[valid], oracle[valid]) < FP16_TOLERANCE
    # master weights stay fp32
    assert {parameter.dtype for parameter in model.get_parameters()} == {ms.float32}


# Five steps: two good ones (the scale doubles with window 2), an overflow (inf), a good one, a NaN.
POISON = {2: np.inf, 4: np.nan}
SCALE_INIT = 2.0**10


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple]:
    """The same five steps trained three ways: fp32 unscaled, fp32 with dynamic loss scaling, fp16 (AMP) with dynamic
    loss scaling. fp16 on the CPU is refused to users (emulated and slow), so the test lifts the refusal."""
    steps = make_steps(len(POISON) + 3, rows_per_micro=2, poison_step=2)
    for micro in steps[4]:
        micro["poison"] = np.array([POISON[4]], np.float32)
    results = {}
    for name in ("unscaled", "scaled", "fp16"):
        output_dir = tmp_path_factory.mktemp(name)
        settings = TrainSettings(
            output_dir=str(output_dir),
            max_steps=len(steps),
            batch_size=2,
            gradient_accumulation=2,
            warmup_steps=0,
            learning_rate=5e-3,
            # a large epsilon makes Adam sensitive to the gradients' scale, and no clipping: an unscaling error
            # shows in the weights as well as in the gradient norms
            adam_epsilon=1e-4,
            max_grad_norm=0.0,
            loss_scale_init=SCALE_INIT,
            loss_scale_window=2,
            device="CPU",
            progress_bar=False,
            log_every=1,
        )
        model = build_model(GeneformerConfig(**TINY_MODEL), "BertForMaskedLM", seed=1)
        source = ListSource(steps, model)
        with pytest.MonkeyPatch.context() as patch:
            if name == "fp16":
                patch.setattr(loop, "resolve_precision", lambda requested, device: "fp16")
            trainer = Trainer(model, PoisonedObjective(model), source, settings)
        if name == "scaled":  # the dynamic scale of fp16, on fp32 arithmetic
            trainer.loss_scale = DynamicLossScale(SCALE_INIT, window=2, enabled=True)
        result = trainer.train()
        results[name] = (result, source, model, read_metrics(output_dir), trainer)
    return results


def read_metrics(run_dir) -> dict[str, np.ndarray]:
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {column: np.array([float(row[column]) for row in rows]) for column in METRICS}


GOOD = [step for step in range(5) if step not in POISON]


@pytest.mark.parametrize("name", ["scaled", "fp16"])
def test_overflowing_steps_are_skipped_and_the_scale_follows_its_rules(runs, name):
    result, source, model, metrics, trainer = runs[name]
    assert trainer.loss_scale.enabled
    assert result.skipped_steps == 2
    assert list(metrics["skipped_steps"]) == [0, 0, 1, 1, 2]
    weights_after = {**source.weights_before, len(metrics["loss"]): model.state_dict()}
    for bad in POISON:  # the weights after a bad step are those before it
        for key, value in source.weights_before[bad].items():
            assert np.array_equal(weights_after[bad + 1][key], value), (bad, key)
    assert trainer.optimizer.state_arrays()["step"][0] == len(GOOD)
    assert not np.isfinite(metrics["grad_norm"][list(POISON)]).any()
    # by hand: 2^10, two good steps -> 2^11, inf -> 2^10, good, NaN -> 2^9
    assert list(metrics["loss_scale"]) == [SCALE_INIT, 2 * SCALE_INIT, SCALE_INIT, SCALE_INIT, SCALE_INIT / 2]


def test_loss_scaling_changes_neither_losses_nor_gradients_nor_weights(runs):
    unscaled, scaled = runs["unscaled"], runs["scaled"]
    assert list(unscaled[3]["loss_scale"]) == [1.0] * 5 and unscaled[0].skipped_steps == 2
    np.testing.assert_allclose(np.array(scaled[0].losses)[GOOD], np.array(unscaled[0].losses)[GOOD], rtol=1e-5)
    np.testing.assert_allclose(scaled[3]["grad_norm"][GOOD], unscaled[3]["grad_norm"][GOOD], rtol=1e-5)
    reference_weights = unscaled[2].state_dict()
    for key, value in scaled[2].state_dict().items():
        np.testing.assert_allclose(value, reference_weights[key], rtol=1e-5, atol=1e-7, err_msg=key)
    # the weights did move, so the comparison above can fail
    start = unscaled[1].weights_before[0]
    assert max(np.abs(reference_weights[key] - start[key]).max() for key in start) > 1e-2


def test_fp16_training_follows_fp32_on_fp32_master_weights(runs):
    unscaled, fp16 = runs["unscaled"], runs["fp16"]
    model, trainer = fp16[2], fp16[4]
    assert trainer.precision == "fp16" and model.bert.impl == "fused"  # the CPU kernels, cast around by the ops
    assert {parameter.dtype for parameter in model.get_parameters()} == {ms.float32}
    moments_and_buffers = (trainer.optimizer.exp_avg, trainer.optimizer.exp_avg_sq, trainer.micro_step.grad_buffer)
    assert {tensor.dtype for tensor in moments_and_buffers} == {ms.float32}
    np.testing.assert_allclose(np.array(fp16[0].losses)[GOOD], np.array(unscaled[0].losses)[GOOD], rtol=1e-2)
    np.testing.assert_allclose(fp16[3]["grad_norm"][GOOD], unscaled[3]["grad_norm"][GOOD], rtol=2e-2)
    reference_weights = unscaled[2].state_dict()
    start = unscaled[1].weights_before[0]
    for key, value in model.state_dict().items():
        # three Adam steps of ~lr each: fp16 gradients may flip the sign of a tiny one, not move a weight further
        moved, expected = value - start[key], reference_weights[key] - start[key]
        assert np.mean(np.abs(moved - expected) < 1e-3) > 0.95, key
