"""Multitask cell classification: one shared encoder LOADED from the pretrained model (the reference builds it from
the config and never loads the weights), one pooling (position 0, or learned attention pooling that ignores
padding), one linear head per task; loss = sum_t w_t * cross-entropy_t (MSE for a numeric task).

    from mindformer_gf.tasks import MultitaskClassifier, FineTuneSettings
    settings = FineTuneSettings(num_train_epochs=3)
    mtl = MultitaskClassifier(["cell_type", "phase"], pooling="attention", settings=settings)
    result = mtl.run("pbmc.dataset", "pretrained_model_dir", "out")
    result.test_metrics["cell_type"]["macro_f1"]

Outputs in `out/`: `label_maps.json`, `splits.json`, `metrics.json` (per task: accuracy, macro-F1, per-class
report, confusion matrix; R^2/MSE for numeric tasks), `predictions.csv`, `multitask_metrics.png/.pdf` (per-task
accuracy and macro-F1), `confusion_matrix_<task>.png/.pdf`, `model/` (the encoder as a MindSpore model directory
plus `task_extras.safetensors` with pooling and heads) and `training/`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.data import corpus_lengths
from mindformer_gf.finetune.fit import FineTuneSettings, fit
from mindformer_gf.finetune.labels import column_values, filter_rows, to_model_classes
from mindformer_gf.finetune.metrics import (
    classification_metrics,
    plot_confusion_matrix,
    plot_metric_bars,
    regression_metrics,
    softmax,
)
from mindformer_gf.finetune.runs import (
    TargetScale,
    bucket_widths,
    task_description,
    training_source,
    validation,
)
from mindformer_gf.finetune.search import best_trial_result
from mindformer_gf.finetune.splits import Split, split_by_fractions
from mindformer_gf.finetune.task_model import (
    POOLINGS,
    MultitaskModel,
    MultitaskObjective,
    apply_strategy,
    describe_parameter_counts,
    load_pretrained,
    load_task_model,
    parameter_counts,
    read_task,
    save_task_model,
)
from mindformer_gf.infer.datasets import dataset_for_model, model_config_of
from mindformer_gf.io import ensure_dir, write_csv, write_json
from mindformer_gf.tasks.classifier import EvaluationPlan, SavedModelEvaluation, positions_evaluator
from mindformer_gf.train.device import prepare_device, seed_everything


@dataclass
class MultitaskData:
    """Rows of the dataset taking part and, per task, int labels (classification) or float targets."""

    rows: np.ndarray
    tasks: list[str]
    labels: list[np.ndarray]
    id2labels: list[dict[int, str]]
    regression: list[bool]


@dataclass
class MultitaskResult:
    test_metrics: dict[str, dict[str, Any]]
    valid_metrics: dict[str, Any] | None
    output_dir: Path
    model_dir: Path
    data: MultitaskData
    split: Split
    seconds: float
    # with n_hyperopt_trials: the search (this result is its best trial's)
    search: Any = None


class MultitaskClassifier(SavedModelEvaluation):
    """Multitask classification on one dataset (split here), with the pretrained encoder actually loaded; the
    reference's three-dataset workflow over it is `MTLClassifier` (tasks/geneformer_mtl.py).

    task_columns: dataset columns, one task each; task_weights: loss weights (default 1 each);
    regression_tasks: columns to treat as numbers (MSE on standardised targets); pooling: "cls" (position 0) or
    "attention"; filter_data / max_ncells: which cells take part (cells missing any task's value are left out);
    classifier_dropout: dropout on the pooled output before the heads (None: the pretrained config's).
    """

    def __init__(
        self,
        task_columns: Sequence[str],
        task_weights: Sequence[float] | None = None,
        regression_tasks: Sequence[str] = (),
        pooling: str = "cls",
        filter_data: Mapping[str, Sequence[Any]] | None = None,
        max_ncells: int | None = None,
        settings: FineTuneSettings | None = None,
        classifier_dropout: float | None = None,
    ) -> None:
        self.tasks = list(task_columns)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task_columns must name distinct columns, got {self.tasks}")
        self.weights = [1.0] * len(self.tasks) if task_weights is None else [float(w) for w in task_weights]
        if len(self.weights) != len(self.tasks) or any(w < 0 for w in self.weights):
            raise ValueError(f"one non-negative weight per task is needed, got {self.weights} for {self.tasks}")
        unknown = sorted(set(regression_tasks) - set(self.tasks))
        if unknown:
            raise ValueError(f"regression_tasks {unknown} are not among task_columns {self.tasks}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.regression = [t in set(regression_tasks) for t in self.tasks]
        self.pooling = pooling
        self.filter_data = dict(filter_data or {})
        self.max_ncells = max_ncells
        self.settings = settings or FineTuneSettings()
        self.settings.validate()
        if classifier_dropout is not None and not 0.0 <= classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {classifier_dropout}")
        self.classifier_dropout = classifier_dropout

    def prepare_data(self, dataset: Any) -> MultitaskData:
        rows = filter_rows(dataset, self.filter_data)
        columns = [column_values(dataset, t)[rows] for t in self.tasks]
        keep = np.ones(rows.size, bool)
        for column, regression in zip(columns, self.regression, strict=True):
            if regression:
                try:
                    keep &= np.isfinite(column.astype(np.float64))
                except (TypeError, ValueError):
                    raise ValueError("a regression task's column is not numeric") from None
            else:
                keep &= np.asarray([v is not None and str(v) not in ("", "nan", "None") for v in column])
        if self.max_ncells and keep.sum() > self.max_ncells:
            chosen = np.random.default_rng(self.settings.data_seed).choice(
                np.flatnonzero(keep), self.max_ncells, replace=False
            )
            keep = np.isin(np.arange(rows.size), chosen)
        rows = rows[keep]
        labels, id2labels = [], []
        for task, column, regression in zip(self.tasks, columns, self.regression, strict=True):
            column = column[keep]
            if regression:
                labels.append(column.astype(np.float64))
                id2labels.append({0: task})
                continue
            names = np.unique(column.astype(str))
            if names.size < 2:
                raise ValueError(f"task {task!r} has {names.size} class(es); a classification task needs two")
            labels.append(np.searchsorted(names, column.astype(str)).astype(np.int32))
            id2labels.append({i: str(n) for i, n in enumerate(names)})
        return MultitaskData(rows, self.tasks, labels, id2labels, self.regression)

    def build_model(self, model_dir: str | os.PathLike, data: MultitaskData) -> Any:
        settings = self.settings
        overrides = {} if self.classifier_dropout is None else {"classifier_dropout": float(self.classifier_dropout)}
        extra_layer = settings.strategy == "extra_layer"
        encoder = load_pretrained(model_dir, "BertModel", settings.seed, extra_layer=extra_layer, **overrides)
        sizes = [1 if r else len(m) for r, m in zip(data.regression, data.id2labels, strict=True)]
        model = MultitaskModel(encoder, sizes, self.pooling, settings.seed)
        apply_strategy(
            model, settings.strategy, settings.freeze_layers, settings.adapter_size, settings.seed, lora=settings.lora
        )
        counts = describe_parameter_counts(parameter_counts(model))
        print(f"multitask ({self.pooling} pooling, {settings.strategy}): {counts}")
        return model

    def run(
        self,
        dataset: Any,
        model_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        split_sizes: tuple[float, float, float] = (0.8, 0.1, 0.1),
        group_by: str | None = None,
        n_hyperopt_trials: int = 0,
        search_space: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> MultitaskResult:
        """Split (stratified on the first classification task, grouped by `group_by`), train, pick the checkpoint
        with the best mean validation macro-F1, evaluate every task on the test cells, save. With
        `n_hyperopt_trials`, a hyperparameter search (task weights included) whose best trial's result is returned,
        with the search in `.search`."""
        if n_hyperopt_trials:
            return best_trial_result(
                self,
                lambda task, trial_dir: task.run(dataset, model_dir, trial_dir, split_sizes, group_by),
                n_hyperopt_trials,
                output_dir,
                search_space,
            )

        started = time.perf_counter()
        settings = self.settings
        prepare_device(settings.device)
        seed_everything(settings.seed)
        config = model_config_of(model_dir)
        dataset, pad_id = dataset_for_model(dataset, config)
        data = self.prepare_data(dataset)
        stratify_on = next((i for i, r in enumerate(data.regression) if not r), None)
        strata = data.labels[stratify_on] if stratify_on is not None else np.zeros(data.rows.size, np.int32)
        groups = None if group_by is None else column_values(dataset, group_by)[data.rows].astype(str)
        split = split_by_fractions(strata, split_sizes, groups, settings.data_seed)
        # the input checked (columns, classes, split): only now does the output directory appear
        out = ensure_dir(output_dir)
        write_json(
            out / "label_maps.json",
            {t: {str(k): v for k, v in m.items()} for t, m in zip(data.tasks, data.id2labels, strict=True)},
        )
        write_json(out / "splits.json", {"split": split.as_dict()})
        scales = [
            TargetScale.fit(lab[split.train]) if r else None
            for lab, r in zip(data.labels, data.regression, strict=True)
        ]
        train_labels = [
            s.forward(lab[split.train]) if s is not None else lab[split.train]
            for lab, s in zip(data.labels, scales, strict=True)
        ]
        model = self.build_model(model_dir, data)
        lengths = corpus_lengths(dataset)[data.rows]
        buckets = bucket_widths(lengths, settings, model.config.max_position_embeddings)
        source = training_source(
            dataset.select(data.rows[split.train]), buckets, settings, task_labels=train_labels, pad_token_id=pad_id
        )
        objective = MultitaskObjective(model, data.regression, self.weights)

        evaluate_positions = positions_evaluator(
            model,
            dataset,
            data.rows,
            settings,
            buckets,
            out,
            "classify multitask",
            {"model": str(model_dir)},
            pad_id,
            lambda positions, outputs: score_tasks(data, positions, outputs, scales),
        )
        evaluate = validation(evaluate_positions, split.valid)
        run = fit(
            model,
            objective,
            source,
            settings,
            out / "training",
            evaluate,
            run_config={"task": "multitask", "tasks": data.tasks, "model": str(model_dir)},
        )
        test_metrics: dict[str, dict[str, Any]] = {}
        if split.test.size:
            metrics, predictions, job = evaluate_positions(split.test, "test")
            if metrics is not None:
                test_metrics = metrics["tasks"]
                job.finish(self._write_evaluation(out, data, split.test, test_metrics, predictions))
        sizes = [1 if r else len(m) for r, m in zip(data.regression, data.id2labels, strict=True)]
        model_path = save_task_model(
            model,
            out / "model",
            task_description(
                "multitask",
                settings,
                tasks=data.tasks,
                task_sizes=sizes,
                task_weights=self.weights,
                regression=data.regression,
                pooling=self.pooling,
                id2labels=[{str(k): v for k, v in m.items()} for m in data.id2labels],
                target_scales=[None if s is None else {"mean": s.mean, "std": s.std} for s in scales],
                source_model=str(model_dir),
                best_step=run.best_step,
            ),
        )
        return MultitaskResult(
            test_metrics, run.best_metrics, out, model_path, data, split, time.perf_counter() - started
        )

    def _write_evaluation(
        self,
        out: Path,
        data: MultitaskData,
        positions: np.ndarray,
        metrics: dict[str, dict[str, Any]],
        predictions: list[np.ndarray],
    ) -> list[Path]:
        """predictions.csv, metrics.json and the plots; returns the first two."""
        import pandas as pd

        frame = pd.DataFrame({"dataset_row": data.rows[positions]})
        bars = {}
        for t, task in enumerate(data.tasks):
            if data.regression[t]:
                frame[f"true_{task}"] = data.labels[t][positions]
                frame[f"predicted_{task}"] = predictions[t]
                bars[task] = {"R^2": max(0.0, metrics[task]["r2"])}
                continue
            names = [data.id2labels[t][i] for i in range(len(data.id2labels[t]))]
            frame[f"true_{task}"] = [names[i] for i in data.labels[t][positions]]
            frame[f"predicted_{task}"] = [names[i] for i in predictions[t].argmax(1)]
            bars[task] = {"accuracy": metrics[task]["accuracy"], "macro-F1": metrics[task]["macro_f1"]}
            plot_confusion_matrix(
                metrics[task]["confusion_matrix"],
                names,
                out / f"confusion_matrix_{_file_safe(task)}",
                f"{task}: accuracy {metrics[task]['accuracy']:.3f}, macro-F1 {metrics[task]['macro_f1']:.3f}",
            )
        plot_metric_bars(bars, out / "multitask_metrics", f"multitask ({self.pooling} pooling): test metrics per task")
        return [write_csv(out / "predictions.csv", frame), write_json(out / "metrics.json", metrics)]

    evaluate_command = "classify multitask --evaluate"

    def _load_saved(self, model_dir: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
        """A saved multitask model of the classifier's tasks (the same columns): its pooling, classes (matched by
        name) and target scales come with it."""
        task = read_task(model_dir) or {}
        if task.get("kind") != "multitask":
            raise ValueError(f"{model_dir} is not a multitask model of this package (no multitask task.json)")
        if sorted(self.tasks) != sorted(task["tasks"]):
            raise ValueError(f"tasks {self.tasks} are not the model's {task['tasks']}")
        return load_task_model(model_dir), task

    def _evaluation_plan(self, model: Any, task: dict[str, Any], dataset: Any, output_dir: Path) -> EvaluationPlan:
        """Every selected cell, on each task; writes `predictions.csv`, `metrics.json` (per task, and the means) and
        the plots as a training run writes for its test cells."""
        saved = MultitaskClassifier(
            task["tasks"],
            regression_tasks=[t for t, r in zip(task["tasks"], task["regression"], strict=True) if r],
            pooling=task["pooling"],
            filter_data=self.filter_data,
            max_ncells=self.max_ncells,
            settings=self.settings,
        )
        data = saved.prepare_data(dataset)
        for t, regression in enumerate(data.regression):
            if not regression:
                data.labels[t], data.id2labels[t] = to_model_classes(
                    data.labels[t], data.id2labels[t], task["id2labels"][t], f"{data.tasks[t]} classes"
                )
        scales = [None if s is None else TargetScale(**s) for s in task["target_scales"]]
        record = {"tasks": data.tasks, "filter_data": self.filter_data, "max_ncells": self.max_ncells}
        positions = np.arange(data.rows.size)

        def score(outputs: list[Any]) -> tuple[dict[str, Any], list[Path]]:
            metrics, predictions = score_tasks(data, positions, outputs, scales)
            return metrics, saved._write_evaluation(output_dir, data, positions, metrics["tasks"], predictions)

        return EvaluationPlan(data.rows, corpus_lengths(dataset)[data.rows], record, score)


def score_tasks(
    data: MultitaskData, positions: np.ndarray, outputs: list[np.ndarray], scales: list[TargetScale | None]
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(metrics, predictions per task) of the cells at `positions` from the model's outputs (one array per task):
    per task, classification or regression metrics (values on the target's scale); overall, the mean accuracy and
    macro-F1 of the classification tasks, or without any the mean standardised MSE."""
    metrics: dict[str, Any] = {"tasks": {}}
    predictions = []
    for t, task in enumerate(data.tasks):
        if data.regression[t]:
            predicted = scales[t].inverse(outputs[t][:, 0])
            metrics["tasks"][task] = regression_metrics(data.labels[t][positions], predicted)
        else:
            predicted = softmax(outputs[t].astype(np.float64))
            names = [data.id2labels[t][i] for i in range(len(data.id2labels[t]))]
            metrics["tasks"][task] = classification_metrics(data.labels[t][positions], predicted, names)
        predictions.append(predicted)
    f1s = [m["macro_f1"] for m in metrics["tasks"].values() if "macro_f1" in m]
    if f1s:
        metrics["macro_f1"] = float(np.mean(f1s))
        metrics["accuracy"] = float(np.mean([m["accuracy"] for m in metrics["tasks"].values() if "accuracy" in m]))
    else:
        metrics["mse"] = float(
            np.mean([m["mse"] / s.std**2 for m, s in zip(metrics["tasks"].values(), scales, strict=True)])
        )
    return metrics, predictions


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
