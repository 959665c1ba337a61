"""Hyperparameter search for the fine-tuning tasks (the reference's `n_hyperopt_trials`), with Optuna.

One implementation for cell, gene and multitask classification: each trial runs the task's own `run()` with
settings drawn from the search space into `output_dir/search/trial-NNN/`, and scores it by validation macro-F1
(-MSE for regression): the best checkpoint's validation cells for cell and multitask runs (mean over folds), the
held-out genes of the folds for gene classification (as the reference does; there these scores chose the
settings, so they are not an unbiased test). Bad trials are stopped early: each validation (once per epoch; per fold
for genes) is reported to Optuna's median pruner.

Outputs in `output_dir/search/`: `trials.csv` (every trial: number, state, score, settings, the intermediate scores),
`search.png` (score per trial with the running best, and the intermediate scores), `best_trial.json` (the best
trial's number, score, settings and directory); the best trial's directory keeps its model, the other trials keep
their metrics only.

Default search spaces are the reference's: for cell and gene classification its `Classifier` (Ray Tune with
HyperOpt) default `ray_config`: learning rate log-uniform in [1e-6, 1e-3], weight decay uniform in [0, 0.3],
schedule one of linear, cosine, polynomial, warmup steps in [100, 2000], seed in [0, 100], epochs fixed (the task's);
for multitask its `MTLClassifier` default `hyperparameters`: learning rate log-uniform in [1e-5, 1e-3], warmup
ratio in [0.005, 0.01], weight decay in [0.01, 0.1], cosine schedule, a weight in [0.1, 2.0] per task, seed and
epochs fixed. (The reference also searches dropout for multitask; our models take the pretrained config's.)
A space is a dict {setting: spec}: {"type": "float", "low", "high", "log"}, {"type": "int", "low", "high"},
{"type": "categorical", "choices"}; settings are FineTuneSettings fields, plus "task_weights" (multitask).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mindformer_gf.finetune.fit import ACTIVE_TRIAL, FineTuneSettings
from mindformer_gf.finetune.metrics import selection_score
from mindformer_gf.io import matplotlib_pyplot, save_figure, write_csv, write_json

logger = logging.getLogger("mindformer_gf.tasks")

CLASSIFIER_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.3},
    "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine", "polynomial"]},
    "warmup_steps": {"type": "int", "low": 100, "high": 2000},
    "seed": {"type": "int", "low": 0, "high": 100},
}
MULTITASK_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "warmup_ratio": {"type": "float", "low": 0.005, "high": 0.01},
    "weight_decay": {"type": "float", "low": 0.01, "high": 0.1},
    "lr_scheduler_type": {"type": "categorical", "choices": ["cosine"]},
    "task_weights": {"type": "float", "low": 0.1, "high": 2.0},
}


@dataclass
class SearchResult:
    best_trial: int
    best_score: float
    best_settings: FineTuneSettings
    best_params: dict[str, Any]
    best_dir: Path
    best_result: Any
    trials: Any  # pandas.DataFrame, as in trials.csv
    files: list[Path] = field(default_factory=list)


def default_search_space(task: Any, settings: FineTuneSettings) -> dict[str, dict[str, Any]]:
    """The reference's default space for `task` (a CellClassifier, GeneClassifier or MultitaskClassifier); epochs
    are the task's own (the reference: `tune.choice([epochs])`)."""
    if hasattr(task, "tasks"):  # multitask
        return {**MULTITASK_SEARCH_SPACE}
    return {
        **CLASSIFIER_SEARCH_SPACE,
        "num_train_epochs": {"type": "categorical", "choices": [settings.num_train_epochs]},
    }


def validation_score(result: Any) -> float:
    """A trial's objective from its task result: validation macro-F1 (or -MSE) of the chosen checkpoints."""
    if hasattr(result, "runs"):  # CellTaskResult: mean over the split's or folds' runs
        scores = [selection_score(run.valid_metrics) for run in result.runs if run.valid_metrics]
        if not scores:
            raise ValueError("a hyperparameter search needs validation cells: give the split a validation fraction")
        return float(sum(scores) / len(scores))
    if hasattr(result, "genes"):  # GeneTaskResult: the folds' held-out genes
        return selection_score(result.summary["overall"])
    if result.valid_metrics is None:  # MultitaskResult
        raise ValueError("a hyperparameter search needs validation cells: give the split a validation fraction")
    return selection_score(result.valid_metrics)


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]], n_tasks: int = 0) -> dict[str, Any]:
    """Settings drawn for `trial` from `space`; "task_weights" becomes one weight per task."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if name == "task_weights":
            params[name] = [_suggest_one(trial, f"task_weight_{t}", spec) for t in range(n_tasks)]
        else:
            params[name] = _suggest_one(trial, name, spec)
    return params


def _suggest_one(trial: Any, name: str, spec: Mapping[str, Any]) -> Any:
    kind = spec.get("type")
    if kind == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=bool(spec.get("log", False)))
    if kind == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    raise ValueError(f"search space entry {name!r}: type must be float, int or categorical, got {kind!r}")


def check_search_space(space: Mapping[str, Mapping[str, Any]], multitask: bool) -> None:
    known = {f for f in asdict(FineTuneSettings())} | ({"task_weights"} if multitask else set())
    unknown = sorted(set(space) - known)
    if unknown:
        raise ValueError(f"search space settings {unknown} are not fine-tuning settings; known: {sorted(known)}")


def search_hyperparameters(
    task: Any,
    run_trial: Callable[[Any, Path], Any],
    n_trials: int,
    output_dir: str | os.PathLike,
    search_space: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int | None = None,
    pruner: Any = None,
) -> SearchResult:
    """Run `n_trials` trials of `task` (a task object with `.settings`; `.weights` for multitask): each a copy of
    the task with drawn settings, run by `run_trial(task_copy, trial_dir)`, which returns the task's result.
    `seed` (default: the task's seed) makes the search reproducible; `pruner` defaults to Optuna's median pruner."""
    import optuna

    if n_trials < 1:
        raise ValueError(f"n_hyperopt_trials must be >= 1 for a search, got {n_trials}")
    base = task.settings
    multitask = hasattr(task, "tasks")
    space = dict(search_space) if search_space is not None else default_search_space(task, base)
    check_search_space(space, multitask)
    out = Path(output_dir) / "search"
    out.mkdir(parents=True, exist_ok=True)
    seed = base.seed if seed is None else seed
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner if pruner is not None else optuna.pruners.MedianPruner(),
    )
    results: dict[int, Any] = {}

    def objective(trial: Any) -> float:
        params = suggest(trial, space, len(task.tasks) if multitask else 0)
        trial_task = copy.copy(task)
        changes = {k: v for k, v in params.items() if k != "task_weights"}
        trial_task.settings = base.replace(**changes, split_seed=base.data_seed)
        trial_task.settings.validate()
        if "task_weights" in params:
            trial_task.weights = list(params["task_weights"])
        trial_dir = out / f"trial-{trial.number:03d}"
        print(f"trial {trial.number}: {_describe(params)}")
        token = ACTIVE_TRIAL.set((trial, [0]))
        try:
            result = run_trial(trial_task, trial_dir)
        finally:
            ACTIVE_TRIAL.reset(token)
        score = validation_score(result)
        results[trial.number] = (result, trial_task.settings, trial_dir, getattr(trial_task, "weights", None))
        print(f"trial {trial.number}: validation score {score:.4f}")
        return score

    study.optimize(objective, n_trials=n_trials)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    frame = trials_frame(study)
    files = [write_csv(out / "trials.csv", frame)]
    files += plot_search(study, out / "search")
    if not complete:
        raise ValueError(
            f"all {n_trials} trials were pruned or failed (see {out / 'trials.csv'}): widen the search space, run more "
            "trials, or relax the pruner"
        )
    best = study.best_trial
    result, settings, best_dir, weights = results[best.number]
    for number, (_, _, directory, _) in results.items():
        if number != best.number:
            _drop_models(directory)
    summary = {
        "best_trial": best.number,
        "objective": "validation macro-F1 (-MSE for regression)",
        "score": best.value,
        "params": best.params,
        "settings": asdict(settings),
        "task_weights": weights if multitask else None,
        "directory": str(best_dir),
        "trials": len(study.trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "seed": seed,
    }
    files.append(write_json(out / "best_trial.json", summary))
    print(f"best trial {best.number}: validation score {best.value:.4f}; outputs in {best_dir}")
    return SearchResult(best.number, float(best.value), settings, dict(best.params), best_dir, result, frame, files)


def best_trial_result(
    task: Any,
    run_trial: Callable[[Any, Path], Any],
    n_trials: int,
    output_dir: str | os.PathLike,
    search_space: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """What a task's `run(..., n_hyperopt_trials=N)` returns: the best trial's result, with the search in `.search`."""
    search = search_hyperparameters(task, run_trial, n_trials, output_dir, search_space)
    search.best_result.search = search
    return search.best_result


def _describe(params: Mapping[str, Any]) -> str:
    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            return "[" + ", ".join(text(v) for v in value) + "]"
        return str(value)

    return ", ".join(f"{k} {text(v)}" for k, v in params.items())


def _drop_models(directory: Path) -> None:
    """A finished trial that is not the best keeps its metrics, not its model weights."""
    for model_dir in directory.rglob("model"):
        if model_dir.is_dir():
            shutil.rmtree(model_dir, ignore_errors=True)


def trials_frame(study: Any) -> Any:
    """One row per trial: number, state, score, each setting, seconds, the intermediate scores (JSON list)."""
    import pandas as pd

    rows = []
    for trial in study.trials:
        duration = trial.duration.total_seconds() if trial.duration is not None else math.nan
        steps = sorted(trial.intermediate_values)
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "score": trial.value if trial.value is not None else math.nan,
                **trial.params,
                "seconds": round(duration, 2),
                "intermediate_scores": json.dumps([trial.intermediate_values[s] for s in steps]),
            }
        )
    return pd.DataFrame(rows)


def plot_search(study: Any, stem: str | os.PathLike) -> list[Path]:
    """Left: each trial's score (pruned trials at their last intermediate score, marked x) and the running best.
    Right: the intermediate validation scores of every trial (what the pruner saw)."""
    import optuna

    plt = matplotlib_pyplot()
    figure, (scores_axis, curves_axis) = plt.subplots(1, 2, figsize=(10, 4))
    best_so_far, running = -math.inf, []
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            scores_axis.plot(trial.number, trial.value, "o", color="tab:blue")
            best_so_far = max(best_so_far, trial.value)
        elif trial.intermediate_values:
            last = trial.intermediate_values[max(trial.intermediate_values)]
            scores_axis.plot(trial.number, last, "x", color="tab:red")
        running.append(best_so_far if best_so_far > -math.inf else math.nan)
        if trial.intermediate_values:
            steps = sorted(trial.intermediate_values)
            style = "-" if trial.state == optuna.trial.TrialState.COMPLETE else "--"
            curves_axis.plot(steps, [trial.intermediate_values[s] for s in steps], style, marker=".", alpha=0.7)
    scores_axis.step(range(len(running)), running, where="post", color="tab:green", label="best so far")
    scores_axis.set_xlabel("trial")
    scores_axis.set_ylabel("validation score")
    scores_axis.set_title("trials (x = pruned)")
    scores_axis.legend(fontsize=8)
    curves_axis.set_xlabel("evaluation (epoch; fold for genes)")
    curves_axis.set_ylabel("validation score")
    curves_axis.set_title("intermediate scores (dashed = pruned)")
    figure.tight_layout()
    return save_figure(figure, stem, formats=("png",))
