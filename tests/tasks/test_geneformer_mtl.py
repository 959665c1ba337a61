"""The reference's MTLClassifier on our multitask model: every keyword of the reference accepted with its default,
the options mapped onto the fine-tuning settings, bad input refused in one line before anything is written, the
reference's files, and their numbers against scikit-learn and a numpy forward pass of the saved model."""

from __future__ import annotations

import importlib.machinery
import inspect
import json
import logging
import sys
import types

import numpy as np
import pandas as pd
import pytest
from helpers.msrun import VENV_BIN
from helpers.mtl import parse_probabilities, saved_model_probabilities, write_mtl_datasets
from helpers.tasks import padded_rows, quick_settings
from sklearn.metrics import accuracy_score, f1_score

from mindformer_gf.safe_pickle import safe_load
from mindformer_gf.tasks import MTLClassifier, MultitaskClassifier

# the reference's MTLClassifier.__init__ keywords and defaults (source text), from geneformer/mtl_classifier.py
REFERENCE_KEYWORDS = {
    "task_columns": "None",
    "train_path": "None",
    "val_path": "None",
    "test_path": "None",
    "pretrained_path": "None",
    "model_save_path": "None",
    "results_dir": "None",
    "trials_result_path": "None",
    "batch_size": "4",
    "n_trials": "15",
    "study_name": "'mtl'",
    "max_layers_to_freeze": "None",
    "epochs": "1",
    "tensorboard_log_dir": "'/results/tblogdir'",
    "distributed_training": "False",
    "master_addr": "'localhost'",
    "master_port": "'12355'",
    "use_attention_pooling": "True",
    "use_task_weights": "True",
    "hyperparameters": "None",
    "manual_hyperparameters": "None",
    "use_manual_hyperparameters": "False",
    "use_wandb": "False",
    "wandb_project": "None",
    "gradient_clipping": "False",
    "max_grad_norm": "None",
    "gradient_accumulation_steps": "1",
    "seed": "42",
}
TASKS = ["cell_type", "phase"]
MANUAL = {
    "learning_rate": 0.001,
    "warmup_ratio": 0.01,
    "weight_decay": 0.1,
    "dropout_rate": 0.1,
    "lr_scheduler_type": "cosine",
    "task_weights": [1, 1],
    "max_layers_to_freeze": 1,
}


def test_every_reference_keyword_is_accepted_with_its_default():
    parameters = inspect.signature(MTLClassifier.__init__).parameters
    for keyword, default in REFERENCE_KEYWORDS.items():
        assert keyword in parameters, keyword
        assert parameters[keyword].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, keyword
        assert repr(parameters[keyword].default) == default, keyword
    # the reference's keywords come first, in its order (positional calls keep working)
    assert list(parameters)[1 : 1 + len(REFERENCE_KEYWORDS)] == list(REFERENCE_KEYWORDS)
    for method in ("run_manual_tuning", "run_optuna_study", "load_and_evaluate_test_model", "validate_options"):
        assert callable(getattr(MTLClassifier, method)), method
    assert list(inspect.signature(MTLClassifier.validate_additional_options).parameters) == ["self", "req_var_dict"]
    # the alias to the one-dataset classifier is gone; that class keeps its own name
    assert MTLClassifier is not MultitaskClassifier


def test_defaults_are_the_reference_s(tiny_model_dir, tmp_path):
    mc = MTLClassifier(
        task_columns=TASKS,
        pretrained_path=str(tiny_model_dir),
        model_save_path=str(tmp_path / "models"),
        results_dir=str(tmp_path / "results"),
    )
    # the freeze range: 1 to the model's layers - 1 (the tiny model has 2)
    assert mc.max_layers_to_freeze == {"min": 1, "max": 1}
    assert mc.hyperparameters["dropout_rate"] == {"type": "float", "low": 0.0, "high": 0.7}
    assert mc.manual_hyperparameters["use_attention_pooling"] is False
    assert mc.manual_hyperparameters["max_layers_to_freeze"] == 2
    # the reference makes the output directories in the constructor, and names its trial file
    assert (tmp_path / "models").is_dir() and (tmp_path / "results").is_dir()
    assert mc.trials_results_path == str(tmp_path / "results" / "results.txt")
    assert mc.config["batch_size"] == 4 and mc.config["study_name"] == "mtl"
    settings = mc._settings({})
    assert settings.num_train_epochs == 1 and settings.per_device_train_batch_size == 4 and settings.seed == 42
    assert settings.max_grad_norm == 0.0  # gradient_clipping=False: no clipping
    assert settings.gradient_accumulation_steps == 1


def test_options_map_onto_the_fine_tuning_settings(tmp_path):
    mc = MTLClassifier(
        task_columns=TASKS,
        results_dir=str(tmp_path),
        batch_size=8,
        epochs=3,
        gradient_clipping=True,
        max_grad_norm=0.5,
        gradient_accumulation_steps=2,
        seed=5,
        use_task_weights=False,
        settings=quick_settings(),
    )
    values = mc._manual_values(2)
    settings = mc._settings(values)
    assert (settings.num_train_epochs, settings.per_device_train_batch_size, settings.seed) == (3.0, 8, 5)
    assert (settings.max_grad_norm, settings.gradient_accumulation_steps) == (0.5, 2)
    assert (settings.learning_rate, settings.warmup_ratio, settings.weight_decay) == (0.001, 0.01, 0.1)
    assert settings.lr_scheduler_type == "cosine" and settings.freeze_layers == 2
    # our settings the reference has no keyword for stay ours
    assert settings.num_buckets == 1 and settings.forward_batch_size == 64
    # use_task_weights=False: every task weighs 1, whatever the manual values say
    assert values["task_weights"] == [1.0, 1.0]
    # the reference's default manual values use position-0 pooling
    assert values["use_attention_pooling"] is False and values["dropout_rate"] == 0.1


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"task_columns": None}, "task_columns"),
        ({"task_columns": []}, "task_columns"),
        ({"batch_size": "8"}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"use_attention_pooling": "yes"}, "use_attention_pooling"),
        ({"gradient_clipping": True}, "max_grad_norm"),
        ({"hyperparameters": {"momentum": {"low": 0.1, "high": 0.9}}}, "momentum"),
        ({"hyperparameters": {"learning_rate": {"type": "float", "low": 1e-5}}}, "learning_rate"),
        ({"manual_hyperparameters": {"learning_rate": 0.001, "momentum": 0.9}}, "momentum"),
        ({"hyperparameters": {"lr_scheduler_type": {"choices": ["cosine", "onecycle"]}}}, "onecycle"),
        ({"max_layers_to_freeze": {"low": 0, "high": 1}}, "max_layers_to_freeze"),
    ],
)
def test_bad_options_are_refused_in_one_line(tmp_path, options, problem):
    arguments = {"task_columns": TASKS, "results_dir": str(tmp_path / "results"), **options}
    with pytest.raises(ValueError) as raised:
        MTLClassifier(**arguments)
    message = str(raised.value)
    assert problem in message and "\n" not in message
    assert not (tmp_path / "results").exists()  # refused before the output directories appear


def test_methods_name_what_is_missing(tmp_path):
    mc = MTLClassifier(task_columns=TASKS, results_dir=str(tmp_path), model_save_path=str(tmp_path))
    with pytest.raises(ValueError, match="needs train_path, val_path, pretrained_path"):
        mc.run_optuna_study()
    with pytest.raises(ValueError, match="needs test_path"):
        mc.load_and_evaluate_test_model()
    with pytest.raises(ValueError, match="needs req"):
        mc.validate_additional_options({"req": None, "given": 1})


@pytest.fixture(scope="module")
def mtl_datasets(pbmc_dataset, tmp_path_factory):
    return write_mtl_datasets(pbmc_dataset, tmp_path_factory.mktemp("mtl_data"))


def _classifier(paths, model_dir, root, **options):
    arguments = {
        "task_columns": TASKS,
        "pretrained_path": str(model_dir),
        "train_path": str(paths["train"]),
        "val_path": str(paths["val"]),
        "test_path": str(paths["test"]),
        "model_save_path": str(root / "models"),
        "results_dir": str(root / "results"),
        "tensorboard_log_dir": str(root / "tb"),
        "settings": quick_settings(),
        **options,
    }
    return MTLClassifier(**arguments)


def test_bad_data_is_refused_before_anything_is_written(mtl_datasets, tiny_model_dir, tmp_path, pbmc_dataset):
    manual = {"use_manual_hyperparameters": True, "manual_hyperparameters": MANUAL}
    # validation cells without one of the training classes (the reference requires equal mappings)
    val = pbmc_dataset.filter(lambda c: c["phase"] == "G1" and c["cell_type"] in ("Dendritic", "CD19+ B"))
    val = val.add_column("unique_cell_id", list(val["barcode"]))
    val.save_to_disk(str(tmp_path / "val_g1.dataset"))
    paths = {**mtl_datasets, "val": tmp_path / "val_g1.dataset"}
    mc = _classifier(paths, tiny_model_dir, tmp_path, **manual)
    with pytest.raises(ValueError, match=r"task task1 \(cell_type\): the validation classes") as raised:
        mc.run_manual_tuning()
    assert "\n" not in str(raised.value)
    assert not list((tmp_path / "results").iterdir())
    # a task column the data does not have
    mc = _classifier(mtl_datasets, tiny_model_dir, tmp_path, task_columns=["cell_type", "disease_state"], **manual)
    with pytest.raises(ValueError, match=r"no column\(s\) \['disease_state'\]"):
        mc.run_manual_tuning()
    # manual task weights for another number of tasks
    weights = {**MANUAL, "task_weights": [1, 1, 1]}
    mc = _classifier(
        mtl_datasets, tiny_model_dir, tmp_path, use_manual_hyperparameters=True, manual_hyperparameters=weights
    )
    with pytest.raises(ValueError, match="3 task_weights for 2 task_columns"):
        mc.run_manual_tuning()
    # more layers to freeze than the model has
    frozen = {**MANUAL, "max_layers_to_freeze": 3}
    mc = _classifier(
        mtl_datasets, tiny_model_dir, tmp_path, use_manual_hyperparameters=True, manual_hyperparameters=frozen
    )
    with pytest.raises(ValueError, match="max_layers_to_freeze=3 but the model has 2 layers"):
        mc.run_manual_tuning()
    # the manual run needs use_manual_hyperparameters
    with pytest.raises(ValueError, match="Set use_manual_hyperparameters to True"):
        _classifier(mtl_datasets, tiny_model_dir, tmp_path).run_manual_tuning()
    # a freeze range beyond the model's layers
    mc = _classifier(mtl_datasets, tiny_model_dir, tmp_path, max_layers_to_freeze={"min": 1, "max": 5})
    with pytest.raises(ValueError, match="within the model's 2 layers"):
        mc.run_optuna_study()
    # a dataset path that is not a dataset
    mc = _classifier({**mtl_datasets, "train": tmp_path / "nowhere"}, tiny_model_dir, tmp_path, **manual)
    with pytest.raises(FileNotFoundError, match="train_path .* is not a tokenized dataset directory"):
        mc.run_manual_tuning()
    assert not list((tmp_path / "results").iterdir()) and not list((tmp_path / "models").iterdir())


def test_a_reference_torch_checkpoint_is_refused_with_the_way_out(mtl_datasets, tmp_path):
    (tmp_path / "models" / "GeneformerMultiTask").mkdir(parents=True)
    (tmp_path / "models" / "GeneformerMultiTask" / "pytorch_model.bin").write_bytes(b"")
    mc = MTLClassifier(
        task_columns=TASKS,
        test_path=str(mtl_datasets["test"]),
        model_save_path=str(tmp_path / "models"),
        results_dir=str(tmp_path / "results"),
    )
    with pytest.raises(ValueError, match="reference's torch state dict .* convert it"):
        mc.load_and_evaluate_test_model()


def _fake_module(name, monkeypatch, **attributes):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_logging_goes_to_tensorboard_and_wandb_when_installed(tmp_path, monkeypatch, caplog):
    from mindformer_gf.tasks.geneformer_mtl import _RunLog

    pd.DataFrame({"step": [1, 2, 3], "loss": [2.0, 1.5, 1.25]}).to_csv(tmp_path / "metrics.csv", index=False)
    metrics = {"val_loss": 0.75, "task1": {"f1": 0.5, "accuracy": 0.625}}
    expected = [
        ("Training Loss", 2.0, 1),
        ("Training Loss", 1.5, 2),
        ("Training Loss", 1.25, 3),
        ("Validation Loss", 0.75, 1),
        ("task1 - Validation F1 Macro", 0.5, 1),
        ("task1 - Validation Accuracy", 0.625, 1),
    ]
    mc = MTLClassifier(task_columns=["cell_type"], tensorboard_log_dir=str(tmp_path / "tb"), use_wandb=True)
    # neither library installed: one warning each, once per classifier, and the run goes on
    real_find_spec = importlib.util.find_spec
    absent = {"tensorboardX", "tensorboard", "wandb"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in absent else real_find_spec(n, *a))
    with caplog.at_level(logging.WARNING, logger="mindformer_gf.tasks"):
        _RunLog(mc, "manual_run").log_run(tmp_path / "metrics.csv", metrics, ["task1"])
        _RunLog(mc, "trial_0").log_run(tmp_path / "metrics.csv", metrics, ["task1"])
    said = [r.getMessage() for r in caplog.records]
    assert sum("no TensorBoard writer installed" in m for m in said) == 1
    assert sum("wandb is not installed" in m for m in said) == 1
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)

    written, logged = [], []

    class SummaryWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            written.append((self.log_dir, tag, value, step))

        def close(self):
            written.append("closed")

    class Run:
        def finish(self):
            logged.append("finished")

    _fake_module("tensorboardX", monkeypatch, SummaryWriter=SummaryWriter)
    inits = []
    _fake_module(
        "wandb", monkeypatch, init=lambda **kw: inits.append(kw) or Run(), log=lambda values: logged.append(values)
    )
    _RunLog(mc, "trial_3").log_run(tmp_path / "metrics.csv", metrics, ["task1"])
    log_dir = str(tmp_path / "tb" / "trial_3")
    assert written == [(log_dir, *row) for row in expected] + ["closed"]
    assert inits[0]["project"] == "geneformer_multitask" and inits[0]["name"] == "trial_3"
    assert logged == [{tag: value} for tag, value, _ in expected] + ["finished"]


# ---- a manual run and the test set (slow: training) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def manual_run(mtl_datasets, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl_manual")
    mc = _classifier(
        mtl_datasets,
        tiny_model_dir,
        root,
        use_manual_hyperparameters=True,
        manual_hyperparameters=MANUAL,
        epochs=2,
        batch_size=4,
        gradient_accumulation_steps=3,
    )
    val_loss = mc.run_manual_tuning()
    predictions = mc.load_and_evaluate_test_model()
    return mc, root, val_loss, predictions


@pytest.mark.slow
def test_manual_run_writes_the_reference_s_label_mappings(manual_run, mtl_datasets):
    from datasets import load_from_disk

    _, root, _, _ = manual_run
    train = load_from_disk(str(mtl_datasets["train"]))
    expected = {
        "task1": {label: i for i, label in enumerate(sorted(set(train["cell_type"])))},
        "task2": {"G1": 0, "S": 1},
    }
    assert safe_load(str(root / "results" / "task_label_mappings.pkl")) == expected
    assert safe_load(str(root / "results" / "task_label_mappings_val.pkl")) == expected


@pytest.mark.slow
def test_manual_run_validation_numbers_equal_scikit_learn_on_its_predictions(manual_run, mtl_datasets):
    from datasets import load_from_disk

    _, root, val_loss, _ = manual_run
    val = load_from_disk(str(mtl_datasets["val"]))
    frame = pd.read_csv(root / "results" / "manual_run_val_preds.csv")
    metrics = json.loads((root / "results" / "manual_run_val_metrics.json").read_text())
    assert frame["Cell ID"].tolist() == val["unique_cell_id"]
    mappings = safe_load(str(root / "results" / "task_label_mappings.pkl"))
    losses = []
    for task, column in zip(("task1", "task2"), TASKS, strict=True):
        mapping = mappings[task]
        truth = np.asarray([mapping[v] for v in val[column]])
        np.testing.assert_array_equal(frame[f"{task}_true_idx"], truth)
        probabilities = parse_probabilities(frame[f"{task}_all_probs"])
        np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(frame[f"{task}_pred_idx"], probabilities.argmax(1))
        for label, index in mapping.items():
            np.testing.assert_allclose(frame[f"{task}_prob_{label}"], probabilities[:, index], rtol=1e-12)
        inverted = {i: v for v, i in mapping.items()}
        assert frame[f"{task}_pred_label"].tolist() == [inverted[i] for i in frame[f"{task}_pred_idx"]]
        predicted = frame[f"{task}_pred_idx"].to_numpy()
        assert metrics[task]["f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
        assert metrics[task]["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
        losses.append(-np.log(probabilities[np.arange(truth.size), truth]).mean())
    # the validation loss: sum over tasks of weight (1 each here) x mean cross-entropy
    assert val_loss == pytest.approx(sum(losses), rel=1e-9)
    assert metrics["val_loss"] == pytest.approx(val_loss, rel=1e-12)


@pytest.mark.slow
def test_manual_run_trains_with_the_manual_values(manual_run, tiny_weights):
    from safetensors.numpy import load_file

    _, root, _, _ = manual_run
    model_dir = root / "models" / "GeneformerMultiTask"
    saved = json.loads((model_dir / "hyperparameters.json").read_text())
    assert saved == {
        **MANUAL,
        "task_weights": [1.0, 1.0],
        "use_task_weights": True,
        "use_attention_pooling": True,  # the constructor's: the manual values do not set it
    }
    task = json.loads((model_dir / "task.json").read_text())
    assert task["pooling"] == "attention" and task["tasks"] == TASKS and task["freeze_layers"] == 1
    assert json.loads((model_dir / "config.json").read_text())["classifier_dropout"] == 0.1
    config = json.loads((root / "results" / "manual_run" / "training" / "train_config.json").read_text())
    assert (config["learning_rate"], config["weight_decay"], config["lr_scheduler_type"]) == (0.001, 0.1, "cosine")
    assert config["max_grad_norm"] == 0.0  # gradient_clipping=False
    # a step accumulates 3 batches of 4 cells: 72 training cells are 6 steps an epoch
    assert (config["per_device_train_batch_size"], config["gradient_accumulation_steps"]) == (4, 3)
    assert config["max_steps"] == 2 * 6
    assert config["warmup_steps"] == int(0.01 * config["max_steps"])
    # max_layers_to_freeze=1: layer 0 is the pretrained one, layer 1 trained
    encoder = {
        k.removeprefix("bert."): v for k, v in load_file(str(next(model_dir.glob("*model.safetensors")))).items()
    }
    pretrained = {k.removeprefix("bert."): v for k, v in tiny_weights.items()}
    name = "encoder.layer.{}.attention.self.query.weight"
    np.testing.assert_array_equal(encoder[name.format(0)], pretrained[name.format(0)])
    assert np.abs(encoder[name.format(1)] - pretrained[name.format(1)]).max() > 1e-4


@pytest.mark.slow
def test_test_predictions_equal_a_numpy_forward_of_the_saved_model(manual_run, mtl_datasets):
    from datasets import load_from_disk

    _, root, _, returned = manual_run
    test = load_from_disk(str(mtl_datasets["test"]))
    frame = pd.read_csv(root / "results" / "test_preds.csv")
    assert list(frame.columns) == [
        "Cell ID",
        "task1 Prediction",
        "task1 Probabilities",
        "task2 Prediction",
        "task2 Probabilities",
    ]
    assert frame["Cell ID"].tolist() == test["unique_cell_id"] == returned["Cell ID"].tolist()
    ids, mask = padded_rows(test, np.arange(test.num_rows))
    expected = saved_model_probabilities(root / "models" / "GeneformerMultiTask", ids, mask)
    metrics = json.loads((root / "results" / "test_metrics.json").read_text())
    mappings = safe_load(str(root / "results" / "task_label_mappings.pkl"))
    for t, (task, column) in enumerate(zip(("task1", "task2"), TASKS, strict=True)):
        probabilities = parse_probabilities(frame[f"{task} Probabilities"])
        np.testing.assert_allclose(probabilities, expected[t], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(frame[f"{task} Prediction"], probabilities.argmax(1))
        truth = [mappings[task][v] for v in test[column]]
        predicted = frame[f"{task} Prediction"]
        assert metrics[task]["f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
        assert metrics[task]["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)


@pytest.mark.slow
def test_model_without_heads_is_the_fine_tuned_encoder(manual_run):
    from safetensors.numpy import load_file

    from mindformer_gf.pretrained import from_pretrained

    mc, root, _, _ = manual_run
    path = mc.save_model_without_heads()
    model_dir = root / "models" / "GeneformerMultiTask"
    assert path == model_dir / "model_without_heads"
    encoder = from_pretrained(path, "BertModel").state_dict()
    saved = load_file(str(next(model_dir.glob("*model.safetensors"))))
    for key, value in saved.items():
        if not key.removeprefix("bert.").startswith("pooler."):
            np.testing.assert_array_equal(encoder[key.removeprefix("bert.")], value, err_msg=key)


# ---- an Optuna study (slow: two trainings) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def optuna_run(mtl_datasets, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl_optuna")
    mc = _classifier(
        mtl_datasets,
        tiny_model_dir,
        root,
        n_trials=2,
        max_layers_to_freeze={"min": 0, "max": 2},
        trials_result_path=str(root / "trials.txt"),
    )
    return mc, root, mc.run_optuna_study()


@pytest.mark.slow
def test_optuna_study_saves_the_trial_with_the_lowest_validation_loss(optuna_run, mtl_datasets):
    from datasets import load_from_disk

    _, root, best_loss = optuna_run
    results = root / "results"
    losses = [json.loads((results / f"trial_{n}" / "val_metrics.json").read_text())["val_loss"] for n in (0, 1)]
    assert best_loss == min(losses)
    best = int(np.argmin(losses))
    lines = (root / "trials.txt").read_text().splitlines()
    assert [line.split(", Params")[0] for line in lines] == [
        f"Trial {n}: Value (validation loss): {loss}" for n, loss in enumerate(losses)
    ]
    trials = pd.read_csv(results / "optuna_trials.csv")
    np.testing.assert_allclose(trials["score"], losses, rtol=1e-12)
    saved = json.loads((results.parent / "models" / "GeneformerMultiTask" / "hyperparameters.json").read_text())
    row = trials.iloc[best]
    drawn = [row["task_weight_0"], row["task_weight_1"]]
    # the reference's normalised task weights, and the drawn values of the best trial
    np.testing.assert_allclose(saved["task_weights"], np.asarray(drawn) / sum(drawn), rtol=1e-12)
    assert saved["learning_rate"] == pytest.approx(row["learning_rate"], rel=1e-12)
    assert saved["dropout_rate"] == pytest.approx(row["dropout_rate"], rel=1e-12)
    assert saved["max_layers_to_freeze"] == row["max_layers_to_freeze"] and 0 <= saved["max_layers_to_freeze"] <= 2
    # the saved model is that trial's: its numpy forward gives the trial's validation probabilities
    val = load_from_disk(str(mtl_datasets["val"]))
    ids, mask = padded_rows(val, np.arange(val.num_rows))
    expected = saved_model_probabilities(results.parent / "models" / "GeneformerMultiTask", ids, mask)
    frame = pd.read_csv(results / f"trial_{best}" / "val_preds.csv")
    for t, task in enumerate(("task1", "task2")):
        np.testing.assert_allclose(parse_probabilities(frame[f"{task}_all_probs"]), expected[t], rtol=1e-4, atol=1e-6)


# ---- under msrun (slow: 2 workers) ---------------------------------------------------------------------------------
MSRUN_SCRIPT = """
import json, sys
from mindformer_gf.tasks import FineTuneSettings, MTLClassifier

arguments = json.loads(sys.argv[1])
settings = FineTuneSettings(warmup_steps=0, num_buckets=1, forward_batch_size=64, progress_bar=False, device="CPU")
mc = MTLClassifier(**arguments, settings=settings)
mc.run_manual_tuning()
mc.load_and_evaluate_test_model()
search = {k: v for k, v in arguments.items() if k not in ("use_manual_hyperparameters", "manual_hyperparameters")}
try:
    MTLClassifier(**search).run_optuna_study()
except ValueError as err:
    print("refused:", err)
"""


@pytest.mark.slow
@pytest.mark.skipif(not (VENV_BIN / "msrun").exists(), reason="msrun is missing")
def test_two_msrun_workers_train_and_rank_0_writes_the_reference_s_files(mtl_datasets, tiny_model_dir, tmp_path):
    from datasets import load_from_disk
    from helpers.msrun import msrun

    script = tmp_path / "mtl_script.py"
    script.write_text(MSRUN_SCRIPT)
    arguments = {
        "task_columns": TASKS,
        "pretrained_path": str(tiny_model_dir),
        "train_path": str(mtl_datasets["train"]),
        "val_path": str(mtl_datasets["val"]),
        "test_path": str(mtl_datasets["test"]),
        "model_save_path": str(tmp_path / "models"),
        "results_dir": str(tmp_path / "results"),
        "tensorboard_log_dir": str(tmp_path / "tb"),
        "distributed_training": True,
        "use_manual_hyperparameters": True,
        "manual_hyperparameters": MANUAL,
        "batch_size": 4,
    }
    completed, text = msrun(["python", str(script), json.dumps(arguments)], tmp_path)
    assert completed.returncode == 0, text[-3000:]
    assert "refused: run_optuna_study runs on one process" in text
    results = tmp_path / "results"
    # rank 0 scored every validation cell (the ranks predicted shares), and its numbers are scikit-learn's
    val = load_from_disk(str(mtl_datasets["val"]))
    frame = pd.read_csv(results / "manual_run_val_preds.csv")
    metrics = json.loads((results / "manual_run_val_metrics.json").read_text())
    assert frame["Cell ID"].tolist() == val["unique_cell_id"]
    for task in ("task1", "task2"):
        truth, predicted = frame[f"{task}_true_idx"], frame[f"{task}_pred_idx"]
        assert metrics[task]["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    # the test predictions are the saved model's (numpy forward pass), every cell once, in order
    test = load_from_disk(str(mtl_datasets["test"]))
    test_preds = pd.read_csv(results / "test_preds.csv")
    assert test_preds["Cell ID"].tolist() == test["unique_cell_id"]
    ids, mask = padded_rows(test, np.arange(test.num_rows))
    expected = saved_model_probabilities(tmp_path / "models" / "GeneformerMultiTask", ids, mask)
    for t, task in enumerate(("task1", "task2")):
        probabilities = parse_probabilities(test_preds[f"{task} Probabilities"])
        np.testing.assert_allclose(probabilities, expected[t], rtol=1e-4, atol=1e-6)
    # data parallel: a step took one batch of 4 per rank
    config = json.loads((results / "manual_run" / "training" / "train_config.json").read_text())
    assert config["per_device_train_batch_size"] == 4
    assert not list(results.rglob("*_shards"))
