"""Hyperparameter search (Optuna). The search itself on a task whose validation score is a known function of the
drawn settings (fast, no model): every trial is in trials.csv, the best trial is the CSV's best score, the same seed
gives the same trials and scores, pruned trials stop, multitask trials draw one weight per task. Then once for real on
the tiny model and PBMC cells: a trial's score is its best per-epoch validation macro-F1 as fit() reports it while
training, a pruned trial stops training, the best trial keeps its model and is the result returned."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from helpers.tasks import quick_settings

from mindformer_gf.finetune.fit import report_intermediate
from mindformer_gf.finetune.search import search_hyperparameters
from mindformer_gf.tasks import CellClassifier, FineTuneSettings

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.3},
    "seed": {"type": "int", "low": 0, "high": 100},
}


@dataclass
class RunResult:  # the shape of a multitask result, as validation_score reads it
    valid_metrics: dict[str, Any]


class PeakedTask:
    """A stand-in task: its validation macro-F1 peaks at learning rate 1e-3 and falls with weight decay; it reports
    one intermediate score per "epoch" (rising to the final one), as fit() does."""

    def __init__(self, tasks: list[str] | None = None) -> None:
        self.settings = FineTuneSettings(seed=3)
        if tasks:
            self.tasks, self.weights = tasks, [1.0] * len(tasks)
        self.seen: list[tuple[FineTuneSettings, list[float] | None]] = []

    def score(self) -> float:
        s = self.settings
        return 1.0 - 0.1 * (math.log10(s.learning_rate) + 3) ** 2 - 0.5 * s.weight_decay

    def run(self, out) -> RunResult:
        out.mkdir(parents=True)
        (out / "model").mkdir()
        final = self.score()
        for fraction in (0.5, 1.0):
            report_intermediate(final * fraction)
        return RunResult({"macro_f1": final})


def search(task, out, trials=6, **options):
    calls = []

    def run_trial(trial_task, trial_dir):
        calls.append((trial_task.settings, getattr(trial_task, "weights", None)))
        return trial_task.run(trial_dir)

    return search_hyperparameters(task, run_trial, trials, out, SPACE, **options), calls


def test_the_search_picks_the_best_trial_of_its_csv(tmp_path):
    result, calls = search(PeakedTask(), tmp_path)
    trials = pd.read_csv(tmp_path / "search" / "trials.csv")
    assert len(trials) == 6 and set(trials["state"]) == {"complete"}
    # each trial's score is the stand-in's function of the settings it was given
    for (settings, _), score in zip(calls, trials["score"], strict=True):
        assert score == pytest.approx(
            1.0 - 0.1 * (math.log10(settings.learning_rate) + 3) ** 2 - 0.5 * settings.weight_decay
        )
        assert settings.split_seed == 3  # every trial on the task's own split
    best = trials.loc[trials["score"].idxmax()]
    assert result.best_trial == int(best["trial"]) and result.best_score == pytest.approx(best["score"])
    assert result.best_settings.learning_rate == pytest.approx(best["learning_rate"])
    assert result.best_settings.seed == int(best["seed"])
    saved = json.loads((tmp_path / "search" / "best_trial.json").read_text())
    assert saved["best_trial"] == result.best_trial and saved["settings"]["weight_decay"] == pytest.approx(
        best["weight_decay"]
    )
    for text, score in zip(trials["intermediate_scores"], trials["score"], strict=True):
        assert json.loads(text) == pytest.approx([score / 2, score])
    # the best trial keeps its model, the others do not
    for number in trials["trial"]:
        assert (tmp_path / "search" / f"trial-{number:03d}" / "model").is_dir() == (number == result.best_trial)
    assert (tmp_path / "search" / "search.png").stat().st_size > 10_000


def test_the_same_seed_gives_the_same_search(tmp_path):
    first, _ = search(PeakedTask(), tmp_path / "a")
    second, _ = search(PeakedTask(), tmp_path / "b")
    other, _ = search(PeakedTask(), tmp_path / "c", seed=4)
    pd.testing.assert_frame_equal(first.trials.drop(columns="seconds"), second.trials.drop(columns="seconds"))
    assert not np.allclose(first.trials["learning_rate"], other.trials["learning_rate"])


def test_pruned_trials_stop_at_their_first_report(tmp_path):
    with pytest.raises(ValueError, match="all 3 trials were pruned or failed"):
        search(PeakedTask(), tmp_path, trials=3, pruner=optuna.pruners.ThresholdPruner(upper=-10))
    trials = pd.read_csv(tmp_path / "search" / "trials.csv")
    assert list(trials["state"]) == ["pruned"] * 3
    assert [len(json.loads(s)) for s in trials["intermediate_scores"]] == [1, 1, 1]


def test_multitask_trials_draw_one_weight_per_task(tmp_path):
    task = PeakedTask(tasks=["cell_type", "phase"])
    space = {**SPACE, "task_weights": {"type": "float", "low": 0.1, "high": 2.0}}
    result = search_hyperparameters(task, lambda t, d: t.run(d), 2, tmp_path, space)
    trials = pd.read_csv(tmp_path / "search" / "trials.csv")
    assert {"task_weight_0", "task_weight_1"} <= set(trials.columns)
    saved = json.loads((tmp_path / "search" / "best_trial.json").read_text())
    best = trials.loc[trials["trial"] == result.best_trial].iloc[0]
    assert saved["task_weights"] == pytest.approx([best["task_weight_0"], best["task_weight_1"]])
    assert task.weights == [1.0, 1.0]  # the task itself is untouched
    with pytest.raises(ValueError, match=r"search space settings \['dropout'\]"):
        search_hyperparameters(task, lambda t, d: t.run(d), 1, tmp_path, {"dropout": SPACE["seed"]})


class PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number == 1


def test_a_real_search_on_the_tiny_model(tiny_model_dir, pbmc_dataset_dir, tmp_path):
    settings = quick_settings(num_epochs=1.0, batch_size=12, evals_per_epoch=2)
    classifier = CellClassifier(
        state_key="cell_type", states=["CD14+ Monocyte", "CD19+ B"], max_ncells=60, settings=settings
    )

    def run_trial(task, trial_dir):
        return task.run(pbmc_dataset_dir, tiny_model_dir, trial_dir, split_sizes=(0.5, 0.5, 0.0))

    result = search_hyperparameters(classifier, run_trial, 2, tmp_path, SPACE, pruner=PruneTrialOne())
    trials = pd.read_csv(tmp_path / "search" / "trials.csv")
    assert list(trials["state"]) == ["complete", "pruned"] and result.best_trial == 0
    # fit() reported each evaluation while training; the score is the best checkpoint's validation macro-F1
    intermediate = json.loads(trials["intermediate_scores"][0])
    history = pd.read_csv(tmp_path / "search" / "trial-000" / "training" / "eval_history.csv")
    assert intermediate == pytest.approx(list(history["macro_f1"])) and len(intermediate) > 1
    assert trials["score"][0] == pytest.approx(max(intermediate))
    assert result.best_result.runs[0].valid_metrics["macro_f1"] == pytest.approx(trials["score"][0])
    assert (result.best_dir / "model" / "task.json").is_file()
    # the pruned trial stopped after its first evaluation
    config = json.loads((tmp_path / "search" / "trial-001" / "training" / "train_config.json").read_text())
    steps = pd.read_csv(tmp_path / "search" / "trial-001" / "training" / "metrics.csv")["step"]
    assert steps.max() == config["save_every"] < config["max_steps"]
    assert copy.copy(classifier).settings.seed == 0  # the classifier's own settings are untouched
