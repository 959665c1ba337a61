"""Multitask classification (encoder loaded from the pretrained model, attention pooling that ignores padding,
a numeric task beside two classification tasks), and the strategies' building blocks against plain computations:
adapters start as the identity, parameter counts, the polynomial schedule."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mindspore import Tensor
from sklearn.metrics import accuracy_score, f1_score, r2_score
from task_helpers import padded_rows, quick_settings

from mindformer_gf.tasks import FineTuneSettings, MultitaskClassifier


@pytest.fixture(scope="module")
def multitask_run(tiny_model_dir, pbmc_dataset_dir, tmp_path_factory):
    settings = quick_settings(num_epochs=3.0, learning_rate=2e-3)
    classifier = MultitaskClassifier(
        ["cell_type", "phase", "percent_mito"],
        task_weights=[1.0, 0.5, 0.5],
        regression_tasks=["percent_mito"],
        pooling="attention",
        max_ncells=240,
        settings=settings,
    )
    out = tmp_path_factory.mktemp("multitask")
    return classifier.run(pbmc_dataset_dir, tiny_model_dir, out, split_sizes=(0.7, 0.15, 0.15)), out


def test_the_shared_encoder_is_loaded_from_the_pretrained_model(tiny_model_dir, pbmc_dataset, tiny_weights):
    classifier = MultitaskClassifier(["cell_type", "phase"], pooling="cls")
    data = classifier.prepare_data(pbmc_dataset)
    model = classifier.build_model(tiny_model_dir, data)
    weights = model.state_dict()
    for key, value in tiny_weights.items():
        if key.startswith("bert."):
            np.testing.assert_array_equal(weights[key], value, err_msg=key)
    assert weights["heads.0.weight"].shape == (10, 32) and weights["heads.1.weight"].shape == (3, 32)


def test_training_lowers_the_loss_and_per_task_metrics_equal_scikit_learn(multitask_run):
    result, out = multitask_run
    losses = pd.read_csv(out / "training" / "metrics.csv")["loss"].to_numpy()
    assert losses[-2:].mean() < losses[:2].mean()
    predictions = pd.read_csv(out / "predictions.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    for task in ("cell_type", "phase"):
        truth, predicted = predictions[f"true_{task}"], predictions[f"predicted_{task}"]
        assert metrics[task]["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        names = sorted(json.loads((out / "label_maps.json").read_text())[task].values())
        assert metrics[task]["macro_f1"] == pytest.approx(
            f1_score(truth, predicted, average="macro", labels=names, zero_division=0)
        )
    assert metrics["percent_mito"]["r2"] == pytest.approx(
        r2_score(predictions["true_percent_mito"], predictions["predicted_percent_mito"])
    )
    assert (out / "multitask_metrics.png").is_file() and (out / "confusion_matrix_phase.png").is_file()


def test_saved_multitask_model_rebuilds_with_its_heads(multitask_run, pbmc_dataset):
    from mindformer_gf.tasks.models import MultitaskModel, load_task_model

    result, out = multitask_run
    model = load_task_model(result.model_dir)
    assert isinstance(model, MultitaskModel) and model.pooling == "attention"
    predictions = pd.read_csv(out / "predictions.csv").head(4)
    ids, mask = padded_rows(pbmc_dataset, predictions["dataset_row"].to_numpy())
    outputs = model(Tensor(ids), Tensor(mask))
    names = [json.loads((out / "label_maps.json").read_text())["phase"][str(i)] for i in range(3)]
    assert [names[i] for i in outputs[1].asnumpy().argmax(1)] == predictions["predicted_phase"].tolist()


def test_attention_pooling_ignores_padding():
    from mindformer_gf.tasks.models import AttentionPooling

    rng = np.random.default_rng(0)
    pool = AttentionPooling(8, 0.5, rng)
    hidden = rng.normal(size=(2, 5, 8)).astype(np.float32)
    mask = np.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    pooled = pool(Tensor(hidden), Tensor(mask)).asnumpy()
    garbage = hidden.copy()
    garbage[0, 3:] = 100.0
    np.testing.assert_allclose(pool(Tensor(garbage), Tensor(mask)).asnumpy(), pooled, rtol=1e-6)
    # the pooled vector is the softmax(w.h + b)-weighted mean over the valid positions, computed plainly
    weight, bias = pool.score.weight.asnumpy()[0], pool.score.bias.asnumpy()[0]
    scores = hidden[0, :3] @ weight + bias
    attention = np.exp(scores - scores.max())
    attention /= attention.sum()
    np.testing.assert_allclose(pooled[0], attention @ hidden[0, :3], rtol=1e-5, atol=1e-6)


def test_adapters_start_as_the_identity_and_are_counted(tiny_model_dir, tiny_config):
    from mindformer_gf.tasks.models import add_adapters, load_pretrained, parameter_counts

    ids = np.asarray([[5, 900, 77, 31, 0, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    model = load_pretrained(tiny_model_dir, "BertForSequenceClassification", id2label={0: "a", 1: "b"})
    before = model(Tensor(ids), Tensor(mask))[0].asnumpy()
    total = parameter_counts(model)["total"]
    add_adapters(model, bottleneck=4)
    after = model(Tensor(ids), Tensor(mask))[0].asnumpy()
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)
    hidden = tiny_config.hidden_size
    per_adapter = hidden * 4 + 4 + 4 * hidden + hidden
    assert parameter_counts(model)["total"] == total + 2 * tiny_config.num_hidden_layers * per_adapter


def test_polynomial_schedule_is_transformers_decay_to_lr_end():
    from mindformer_gf.tasks.finetune import schedule_for_trainer
    from mindformer_gf.train import learning_rate

    for power in (1.0, 2.0):
        settings = FineTuneSettings(
            learning_rate=8.04e-4, lr_schedule="polynomial", lr_end=1e-7, polynomial_power=power
        )
        loop = schedule_for_trainer(settings)
        warmup, total = 10, 100
        for step in (0, 5, 10, 37, 99, 100):
            if step < warmup:
                expected = 8.04e-4 * step / warmup
            else:
                progress = (step - warmup) / (total - warmup)
                expected = (8.04e-4 - 1e-7) * (
                    1 - progress
                ) ** power + 1e-7  # get_polynomial_decay_schedule_with_warmup
            got = learning_rate(
                step, settings.learning_rate, warmup, total, loop["lr_schedule"], loop["min_lr_ratio"], loop["lr_power"]
            )
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)
    with pytest.raises(ValueError, match="polynomial_power"):
        FineTuneSettings(lr_schedule="polynomial", polynomial_power=0.0).validate()
