"""Cell classification end to end on real PBMC cells with a tiny model: the loss falls, frozen layers stay
bit-identical, the written metrics equal scikit-learn's on the written predictions, the chosen checkpoint is the
best by validation macro-F1, the saved model reproduces the predictions and exports to transformers.
Also the regression head (percent_mito) with adapters: only adapters and head train."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers.tasks import padded_rows, quick_settings
from safetensors.numpy import load_file
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, r2_score, roc_auc_score

from mindformer_gf.tasks import CellClassifier

# each test reads a fine-tuning run (a few dozen training steps)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cell_run(tiny_model_dir, pbmc_dataset_dir, tmp_path_factory):
    settings = quick_settings(num_epochs=4.0, batch_size=12, learning_rate=2e-3, freeze_layers=1, evals_per_epoch=1)
    classifier = CellClassifier(
        state_key="cell_type", states=["Dendritic", "CD14+ Monocyte", "CD19+ B"], max_ncells=240, settings=settings
    )
    out = tmp_path_factory.mktemp("cell")
    result = classifier.run(pbmc_dataset_dir, tiny_model_dir, out, split_sizes=(0.6, 0.2, 0.2))
    return classifier, result, out


def test_training_lowers_the_loss(cell_run):
    _, result, out = cell_run
    losses = pd.read_csv(out / "training" / "metrics.csv")["loss"].to_numpy()
    # logged as means over windows of steps; three balanced classes start near ln 3 = 1.10
    assert losses[0] > 0.9 and losses[-2:].mean() < losses[0] - 0.2
    for name in ("metrics.csv", "loss_curve.png", "eval_history.csv"):
        assert (out / "training" / name).is_file()


def test_frozen_layer_is_bit_identical_and_the_rest_trained(cell_run, tiny_weights):
    _, result, _ = cell_run
    tuned = load_file(str(result.runs[0].model_dir / "mindspore_model.safetensors"))
    layer0 = [k for k in tiny_weights if k.startswith("bert.encoder.layer.0.")]
    layer1 = [k for k in tiny_weights if k.startswith("bert.encoder.layer.1.") and k.endswith("weight")]
    assert len(layer0) == 16
    for key in layer0:
        np.testing.assert_array_equal(tuned[key], tiny_weights[key])
    for key in layer1 + ["bert.embeddings.word_embeddings.weight"]:  # embeddings stay trainable, as upstream
        assert not np.array_equal(tuned[key], tiny_weights[key]), key


def test_metrics_equal_scikit_learn_on_the_written_predictions(cell_run):
    _, result, out = cell_run
    predictions = pd.read_csv(out / "predictions.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    names = sorted(predictions["true_label"].unique())
    assert metrics["accuracy"] == pytest.approx(
        accuracy_score(predictions["true_label"], predictions["predicted_label"])
    )
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(predictions["true_label"], predictions["predicted_label"], average="macro")
    )
    assert (
        metrics["confusion_matrix"]
        == confusion_matrix(predictions["true_label"], predictions["predicted_label"], labels=names).tolist()
    )
    probabilities = predictions[[f"p({n})" for n in names]].to_numpy()
    assert metrics["roc_auc"] == pytest.approx(
        roc_auc_score(predictions["true_label"], probabilities, multi_class="ovr", labels=names)
    )
    # the prediction is the most probable class
    assert (np.asarray(names)[probabilities.argmax(1)] == predictions["predicted_label"].to_numpy()).all()
    assert (out / "confusion_matrix.png").is_file() and (out / "per_class.csv").is_file()


def test_test_cells_are_disjoint_from_training_cells_and_the_best_epoch_is_kept(cell_run):
    _, result, out = cell_run
    split = json.loads((out / "splits.json").read_text())["split"]
    assert not set(split["train"]) & set(split["test"]) and not set(split["valid"]) & set(split["test"])
    prepared = pd.read_csv(out / "prepared_cells.csv")
    tested_rows = set(prepared["dataset_row"].to_numpy()[split["test"]])
    assert tested_rows == set(pd.read_csv(out / "predictions.csv")["dataset_row"])
    history = pd.read_csv(out / "training" / "eval_history.csv")
    assert len(history) == 4
    assert result.runs[0].best_step == int(history["step"][history["macro_f1"].idxmax()])


def test_saved_model_reproduces_the_predictions_and_exports_to_transformers(cell_run, pbmc_dataset, tmp_path):
    import torch
    from transformers import BertForSequenceClassification

    from mindformer_gf.convert import convert_to_huggingface
    from mindformer_gf.finetune.task_model import load_task_model

    classifier, result, out = cell_run
    predictions = pd.read_csv(out / "predictions.csv").head(8)
    ids, mask = padded_rows(pbmc_dataset, predictions["dataset_row"].to_numpy())
    from mindspore import Tensor

    model = load_task_model(result.runs[0].model_dir)
    logits = model(Tensor(ids), Tensor(mask))[0].asnumpy()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, predictions[[f"p({n})" for n in names]].to_numpy(), atol=1e-5)

    exported = convert_to_huggingface(result.runs[0].model_dir, tmp_path / "hf")
    hf = BertForSequenceClassification.from_pretrained(exported.destination).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(theirs, logits, rtol=1e-4, atol=1e-5)


def test_regression_head_with_adapters(tiny_model_dir, pbmc_dataset_dir, tmp_path, tiny_weights):
    from mindformer_gf.finetune.task_model import load_task_model

    settings = quick_settings(num_epochs=3.0, learning_rate=3e-3, strategy="adapters", adapter_size=8)
    regressor = CellClassifier(state_key="percent_mito", regression=True, max_ncells=200, settings=settings)
    result = regressor.run(pbmc_dataset_dir, tiny_model_dir, tmp_path, split_sizes=(0.7, 0.15, 0.15))
    losses = pd.read_csv(tmp_path / "training" / "metrics.csv")["loss"].to_numpy()
    assert losses[-2:].mean() < losses[:2].mean()
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["r2"] == pytest.approx(
        r2_score(predictions["true_percent_mito"], predictions["predicted_percent_mito"])
    )
    model = load_task_model(result.runs[0].model_dir)
    weights = model.state_dict()
    adapters = [k for k in weights if ".adapter." in k]
    assert len(adapters) == 2 * 2 * 4  # 2 layers x 2 adapters x (down, up) x (weight, bias)
    for key, value in tiny_weights.items():
        if key in weights and not key.startswith("cls."):
            np.testing.assert_array_equal(weights[key], value, err_msg=key)
    assert any(not np.allclose(weights[k], 0) for k in adapters if ".up." in k)
