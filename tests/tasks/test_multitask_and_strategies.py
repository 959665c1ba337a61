"""Multitask classification (encoder loaded from the pretrained model, attention pooling that ignores padding,
a numeric task beside two classification tasks), and the strategies' building blocks against plain computations:
adapters start as the identity, parameter counts, the polynomial schedule."""

from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pandas as pd
import pytest
from helpers.tasks import padded_rows, quick_settings
from mindspore import Tensor
from sklearn.metrics import accuracy_score, f1_score, r2_score

from mindformer_gf.tasks import FineTuneSettings, MultitaskClassifier


@pytest.fixture(scope="module")
def multitask_run(tiny_model_dir, pbmc_dataset_dir, tmp_path_factory):
    """`gf classify multitask` from the command line (its end-to-end test), and the classifier it configures."""
    from mindformer_gf.cli import main

    out = tmp_path_factory.mktemp("multitask")
    argv = (
        f"classify multitask --dataset {pbmc_dataset_dir} --model {tiny_model_dir} --output-dir {out} "
        "--tasks cell_type,phase,percent_mito --task-weights 1,0.5,0.5 --regression-tasks percent_mito "
        "--pooling attention --max-cells 240 --split 0.7,0.15,0.15 --epochs 3 --lr 2e-3 "
        "--warmup-steps 0 --num-buckets 1 --forward-batch-size 64 --no-progress"
    )
    assert main(argv.split()) == 0
    classifier = MultitaskClassifier(
        ["cell_type", "phase", "percent_mito"],
        task_weights=[1.0, 0.5, 0.5],
        regression_tasks=["percent_mito"],
        pooling="attention",
        max_ncells=240,
        settings=quick_settings(num_epochs=3.0, learning_rate=2e-3),
    )
    return classifier, out


def test_the_shared_encoder_is_loaded_from_the_pretrained_model(tiny_model_dir, pbmc_dataset, tiny_weights):
    classifier = MultitaskClassifier(["cell_type", "phase"], pooling="cls")
    data = classifier.prepare_data(pbmc_dataset)
    model = classifier.build_model(tiny_model_dir, data)
    weights = model.state_dict()
    for key, value in tiny_weights.items():
        if key.startswith("bert."):
            np.testing.assert_array_equal(weights[key], value, err_msg=key)
    assert weights["heads.0.weight"].shape == (10, 32) and weights["heads.1.weight"].shape == (3, 32)


@pytest.mark.slow
def test_training_lowers_the_loss_and_per_task_metrics_equal_scikit_learn(multitask_run):
    _, out = multitask_run
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
    task = json.loads((out / "model" / "task.json").read_text())
    assert task["task_weights"] == [1.0, 0.5, 0.5] and task["regression"] == [False, False, True]


@pytest.mark.slow
def test_saved_multitask_model_rebuilds_with_its_heads(multitask_run, pbmc_dataset):
    from mindformer_gf.finetune.task_model import MultitaskModel, load_task_model

    _, out = multitask_run
    model = load_task_model(out / "model")
    assert isinstance(model, MultitaskModel) and model.pooling == "attention"
    predictions = pd.read_csv(out / "predictions.csv").head(4)
    ids, mask = padded_rows(pbmc_dataset, predictions["dataset_row"].to_numpy())
    outputs = model(Tensor(ids), Tensor(mask))
    names = [json.loads((out / "label_maps.json").read_text())["phase"][str(i)] for i in range(3)]
    assert [names[i] for i in outputs[1].asnumpy().argmax(1)] == predictions["predicted_phase"].tolist()


@pytest.mark.slow
def test_regression_task_predictions_are_on_the_targets_scale(multitask_run, pbmc_dataset):
    """Recomputed from the saved model's output and the TRAINING cells' mean and sd of percent_mito."""
    from mindformer_gf.finetune.task_model import load_task_model

    classifier, out = multitask_run
    split = json.loads((out / "splits.json").read_text())["split"]
    percent_mito = np.asarray(pbmc_dataset["percent_mito"], np.float64)
    train_values = percent_mito[classifier.prepare_data(pbmc_dataset).rows[split["train"]]]
    mean, sd = train_values.mean(), train_values.std()
    predictions = pd.read_csv(out / "predictions.csv")
    ids, mask = padded_rows(pbmc_dataset, predictions["dataset_row"].to_numpy())
    standardised = load_task_model(out / "model")(Tensor(ids), Tensor(mask))[2].asnumpy()[:, 0]
    assert sd < 0.1 and mean > 0.01  # so that a standardised prediction cannot pass for one on the target's scale
    np.testing.assert_allclose(predictions["predicted_percent_mito"], standardised * sd + mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(predictions["true_percent_mito"], percent_mito[predictions["dataset_row"]], rtol=1e-12)


def test_multitask_objective_is_the_weighted_sum_of_per_task_losses(tiny_model_dir, pbmc_dataset):
    """Cross-entropy for two classification tasks and squared error for a regression task, summed over a fixed
    batch in numpy, weighted by unequal task weights."""
    from mindformer_gf.finetune.task_model import MultitaskObjective

    weights = [1.0, 0.3, 2.5]
    classifier = MultitaskClassifier(
        ["cell_type", "phase", "percent_mito"], weights, regression_tasks=["percent_mito"], pooling="attention"
    )
    data = classifier.prepare_data(pbmc_dataset)
    model = classifier.build_model(tiny_model_dir, data)
    model.set_train(False)
    rows = np.arange(0, 700, 70)
    ids, mask = padded_rows(pbmc_dataset, data.rows[rows])
    labels = [data.labels[0][rows], data.labels[1][rows], np.linspace(-1.5, 2.0, rows.size)]
    labels = [lab.astype(np.int32) for lab in labels[:2]] + [labels[2].astype(np.float32)]
    objective = MultitaskObjective(model, data.regression, weights)
    seed = Tensor([0], ms.int64)  # the step seed every objective takes first; the model is in eval mode (no dropout)
    loss, items, correct = (t.asnumpy() for t in objective(seed, Tensor(ids), Tensor(mask), *map(Tensor, labels)))

    outputs = [o.asnumpy().astype(np.float64) for o in model(Tensor(ids), Tensor(mask))]
    per_task = []
    for logits, target in zip(outputs[:2], labels[:2], strict=True):
        log_probs = logits - logits.max(1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
        per_task.append(-log_probs[np.arange(rows.size), target].sum())
    per_task.append(((outputs[2][:, 0] - labels[2]) ** 2).sum())
    assert float(loss) == pytest.approx(sum(w * t for w, t in zip(weights, per_task, strict=True)), rel=1e-5)
    assert float(items) == rows.size
    hits = [(o.argmax(1) == target).sum() for o, target in zip(outputs[:2], labels[:2], strict=True)]
    assert float(correct) == pytest.approx(np.mean(hits))


def test_attention_pooling_ignores_padding():
    from mindformer_gf.finetune.task_model import AttentionPooling

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
    from mindformer_gf.finetune.task_model import add_adapters, load_pretrained, parameter_counts

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


def test_adapters_with_random_weights_compute_x_plus_up_relu_down_x(tiny_model_dir, tiny_config, pbmc_dataset):
    """Every adapter set to random non-zero weights: the model's logits equal the numpy reference's forward pass in
    which each adapted projection's output y becomes y + up(relu(down(y)))."""
    from mindformer_gf.finetune.task_model import add_adapters, load_pretrained
    from mindformer_gf.reference import bert as reference_bert

    model = load_pretrained(tiny_model_dir, "BertForSequenceClassification", seed=2, id2label={0: "a", 1: "b"})
    add_adapters(model, bottleneck=4)
    rng = np.random.default_rng(9)
    for name, param in model.parameters_and_names():
        if ".adapter." in name:
            param.set_data(Tensor(rng.normal(0, 0.3, size=param.shape).astype(np.float32)))
    weights = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    adapters = {}  # id of the adapted projection's weight -> its adapter's (down W, down b, up W, up b)
    for key in weights:
        if key.endswith(".adapter.down.weight"):
            dense = key[: -len(".adapter.down.weight")]
            parts = [weights[f"{dense}.adapter.{p}"] for p in ("down.weight", "down.bias", "up.weight", "up.bias")]
            adapters[id(weights[f"{dense}.weight"])] = parts
    assert len(adapters) == 2 * tiny_config.num_hidden_layers

    plain_linear = reference_bert.linear

    def linear_then_adapter(x, weight, bias):
        y = plain_linear(x, weight, bias)
        if id(weight) not in adapters:
            return y
        down_w, down_b, up_w, up_b = adapters[id(weight)]
        return y + np.maximum(y @ down_w.T + down_b, 0) @ up_w.T + up_b

    ids, mask = padded_rows(pbmc_dataset, np.asarray([0, 5, 333]))
    ours = model(Tensor(ids), Tensor(mask))[0].asnumpy()
    reference_bert.linear = linear_then_adapter
    try:
        expected, _ = reference_bert.forward(weights, ids, mask, tiny_config, "BertForSequenceClassification")
    finally:
        reference_bert.linear = plain_linear
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
    # the adapters matter: the same weights without them give other logits
    plain, _ = reference_bert.forward(weights, ids, mask, tiny_config, "BertForSequenceClassification")
    assert np.abs(plain - expected).max() > 100 * np.abs(ours - expected).max()


def test_polynomial_schedule_is_transformers_decay_to_lr_end():
    from mindformer_gf.finetune.fit import schedule_for_trainer
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
                step,
                settings.learning_rate,
                warmup,
                total,
                loop["lr_scheduler_type"],
                loop["min_lr_ratio"],
                loop["lr_power"],
            )
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)
    with pytest.raises(ValueError, match="lr_power"):
        FineTuneSettings(lr_schedule="polynomial", polynomial_power=0.0).validate()


@pytest.mark.slow
def test_evaluate_scores_the_saved_model_on_every_cell_as_the_run_scored_its_test_cells(
    multitask_run, pbmc_dataset_dir, pbmc_dataset, tmp_path
):
    """`gf classify multitask --evaluate` (the tasks read from the model) on the run's 240 cells: the rows of the
    test cells equal the run's predictions, in the same columns (labels exactly, numbers within float32 rounding:
    this pass batches all 240 cells, the run its test cells, and a cell's batch may change its last bits);
    per-task metrics equal scikit-learn's on the written predictions; the numeric task is a direct forward of the
    saved model on the training cells' scale."""
    from mindformer_gf.cli import main
    from mindformer_gf.finetune.task_model import load_task_model

    _, out = multitask_run
    evaluated = tmp_path / "evaluated"
    argv = (
        f"classify multitask --evaluate --model {out / 'model'} --dataset {pbmc_dataset_dir} --output-dir {evaluated} "
        "--max-cells 240 --num-buckets 1 --forward-batch-size 64 --no-progress"
    )
    assert main(argv.split()) == 0
    predictions = pd.read_csv(evaluated / "predictions.csv")
    tested = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 240 and list(predictions.columns) == list(tested.columns)
    again = predictions.set_index("dataset_row").loc[tested.dataset_row].reset_index()
    pd.testing.assert_frame_equal(again, tested, check_exact=False, rtol=1e-5, atol=1e-6)

    metrics = json.loads((evaluated / "metrics.json").read_text())
    label_maps = json.loads((out / "label_maps.json").read_text())
    for task in ("cell_type", "phase"):
        truth, predicted = predictions[f"true_{task}"], predictions[f"predicted_{task}"]
        assert metrics[task]["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        names = sorted(label_maps[task].values())
        assert metrics[task]["macro_f1"] == pytest.approx(
            f1_score(truth, predicted, average="macro", labels=names, zero_division=0)
        )
    assert metrics["percent_mito"]["r2"] == pytest.approx(
        r2_score(predictions["true_percent_mito"], predictions["predicted_percent_mito"])
    )
    scale = json.loads((out / "model" / "task.json").read_text())["target_scales"][2]
    head = predictions.head(5)
    ids, mask = padded_rows(pbmc_dataset, head.dataset_row.to_numpy())
    standardised = load_task_model(out / "model")(Tensor(ids), Tensor(mask))[2].asnumpy()[:, 0]
    expected = standardised * scale["std"] + scale["mean"]
    np.testing.assert_allclose(head.predicted_percent_mito, expected, rtol=1e-4, atol=1e-7)
    assert json.loads((evaluated / "predictions_run.json").read_text())["cells_per_rank"] == [240]
