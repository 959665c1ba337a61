"""The reference's examples/multitask_cell_classification.ipynb, its MTLClassifier part (sections 1-6), with only the
import changed: the same calls with the same keywords, on the shipped PBMC cells and a tiny model. Paths and sizes
are the test's: the tasks are the cells' type and phase (the notebook's "cell_type" and "disease_state"),
n_trials 1 (15), epochs 1 for the manual run (10).

Not here: the notebook's last part (EmbExtractor.get_state_embs, InSilicoPerturber with model_type
"MTLCellClassifier-Quantized", InSilicoPerturberStats): those classes' reference keywords are issue 22's api-io work.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.mtl import (
    parse_probabilities,
    saved_model_probabilities,
    tiny_pretrained_model,
    tokenized_pbmc,
    write_mtl_datasets,
)
from helpers.tasks import padded_rows
from sklearn.metrics import accuracy_score, f1_score

from mindformer_gf import MTLClassifier


@pytest.fixture(scope="module")
def notebook_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl_notebook")
    datasets = write_mtl_datasets(tokenized_pbmc(root), root)
    return {
        "pretrained_path": str(tiny_pretrained_model(root / "pretrained")),
        "train_path": str(datasets["train"]),
        "val_path": str(datasets["val"]),
        "test_path": str(datasets["test"]),
        "results_dir": str(root / "results"),
        "model_save_path": str(root / "models"),
        "tensorboard_log_dir": str(root / "tblogs"),
    }


@pytest.mark.slow
def test_multitask_cell_classification_notebook(notebook_paths):
    from datasets import load_from_disk

    from mindformer_gf.safe_pickle import safe_load

    # ---- the notebook's cells, paths and sizes swapped -------------------------------------------------------------
    pretrained_path = notebook_paths["pretrained_path"]
    train_path = notebook_paths["train_path"]
    val_path = notebook_paths["val_path"]
    test_path = notebook_paths["test_path"]
    results_dir = notebook_paths["results_dir"]
    model_save_path = notebook_paths["model_save_path"]
    tensorboard_log_dir = notebook_paths["tensorboard_log_dir"]
    task_columns = ["cell_type", "phase"]
    hyperparameters = {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "warmup_ratio": {"type": "float", "low": 0.005, "high": 0.01},
        "weight_decay": {"type": "float", "low": 0.01, "high": 0.1},
        "dropout_rate": {"type": "float", "low": 0.0, "high": 0.7},
        "lr_scheduler_type": {"type": "categorical", "choices": ["cosine"]},
        "task_weights": {"type": "float", "low": 0.1, "high": 2.0},
    }

    mc = MTLClassifier(
        task_columns=task_columns,
        study_name="MTLClassifier_example",
        pretrained_path=pretrained_path,
        train_path=train_path,
        val_path=val_path,
        test_path=test_path,
        model_save_path=model_save_path,
        results_dir=results_dir,
        tensorboard_log_dir=tensorboard_log_dir,
        hyperparameters=hyperparameters,
        n_trials=1,
        epochs=1,
        batch_size=8,
        seed=42,
    )
    mc.run_optuna_study()

    # what the study leaves: the label mappings, the trial's validation predictions, the model and its settings
    mappings = safe_load(f"{results_dir}/task_label_mappings.pkl")
    assert mappings == {
        "task1": {"CD14+ Monocyte": 0, "CD19+ B": 1, "Dendritic": 2},
        "task2": {"G1": 0, "S": 1},
    }
    val_preds = pd.read_csv(f"{results_dir}/trial_0/val_preds.csv")
    val_metrics = json.loads(open(f"{results_dir}/trial_0/val_metrics.json").read())
    for task in ("task1", "task2"):
        truth, predicted = val_preds[f"{task}_true_idx"], val_preds[f"{task}_pred_idx"]
        assert val_metrics[task]["f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
        assert val_metrics[task]["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    model_dir = f"{model_save_path}/GeneformerMultiTask"
    searched = json.loads(open(f"{model_dir}/hyperparameters.json").read())
    assert sum(searched["task_weights"]) == pytest.approx(1.0, rel=1e-12)  # Optuna's weights, normalised
    assert 1e-5 <= searched["learning_rate"] <= 1e-3 and 0.0 <= searched["dropout_rate"] <= 0.7
    assert open(f"{results_dir}/results.txt").read().startswith("Trial 0: Value (validation loss): ")

    mc.load_and_evaluate_test_model()

    # test_preds.csv: the saved model's class probabilities (numpy forward pass of its files) and their argmax
    test = load_from_disk(test_path)
    test_preds = pd.read_csv(f"{results_dir}/test_preds.csv")
    assert test_preds["Cell ID"].tolist() == test["unique_cell_id"]
    ids, mask = padded_rows(test, np.arange(test.num_rows))
    expected = saved_model_probabilities(Path(model_dir), ids, mask)
    for t, task in enumerate(("task1", "task2")):
        probabilities = parse_probabilities(test_preds[f"{task} Probabilities"])
        np.testing.assert_allclose(probabilities, expected[t], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(test_preds[f"{task} Prediction"], probabilities.argmax(1))

    manual_hyperparameters = {
        "learning_rate": 0.001,
        "warmup_ratio": 0.01,
        "weight_decay": 0.1,
        "dropout_rate": 0.1,
        "lr_scheduler_type": "cosine",
        "task_weights": [1, 1],
        "max_layers_to_freeze": 2,
    }

    mc_manual = MTLClassifier(
        task_columns=task_columns,
        study_name="mtl_manual",
        pretrained_path=pretrained_path,
        train_path=train_path,
        val_path=val_path,
        test_path=test_path,
        model_save_path=model_save_path,
        results_dir=results_dir,
        tensorboard_log_dir=tensorboard_log_dir,
        manual_hyperparameters=manual_hyperparameters,
        use_manual_hyperparameters=True,
        epochs=1,
        batch_size=32,
        seed=42,
    )

    mc_manual.run_manual_tuning()

    # the manual run replaced the saved model with its own (both encoder layers frozen) and wrote its predictions
    manual = json.loads(open(f"{model_dir}/hyperparameters.json").read())
    assert manual == {
        **manual_hyperparameters,
        "use_task_weights": True,
        "use_attention_pooling": True,
    }
    assert json.loads(open(f"{model_dir}/task.json").read())["freeze_layers"] == 2
    manual_preds = pd.read_csv(f"{results_dir}/manual_run_val_preds.csv")
    manual_metrics = json.loads(open(f"{results_dir}/manual_run_val_metrics.json").read())
    val = load_from_disk(val_path)
    assert manual_preds["Cell ID"].tolist() == val["unique_cell_id"]
    for task in ("task1", "task2"):
        truth, predicted = manual_preds[f"{task}_true_idx"], manual_preds[f"{task}_pred_idx"]
        assert manual_metrics[task]["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
