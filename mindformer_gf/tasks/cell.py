"""Cell classification (and cell regression): prepare labels, split, fine-tune, pick the best checkpoint by
validation macro-F1, evaluate on the test cells, save the model.

    from mindformer_gf.tasks import CellClassifier, FineTuneSettings
    settings = FineTuneSettings(num_train_epochs=5, learning_rate=1e-4)
    classifier = CellClassifier(state_key="cell_type", settings=settings)
    result = classifier.run("pbmc.dataset", "pretrained_model_dir", "out", split_sizes=(0.7, 0.15, 0.15))
    result.test_metrics["macro_f1"]

Outputs in `out/`: `label_map.json`, `prepared_cells.csv`, `splits.json`, `summary.json`, and per split (or fold)
a directory with `model/` (a MindSpore model directory; `gf convert --to huggingface out/split/model hf_dir`
exports it), `predictions.csv`, `predictions_run.json` (how the test cells were shared among msrun's ranks),
`metrics.json`, `per_class.csv`, `confusion_matrix.png/.pdf`, `roc.png/.pdf`
(two classes), and `training/` (metrics.csv, loss_curve.png, eval_history.csv).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.data import corpus_lengths
from mindformer_gf.finetune.fit import FineTuneSettings, fit
from mindformer_gf.finetune.labels import (
    ALL_STATES,
    PreparedCells,
    column_values,
    prepare_cells,
    prepare_targets,
    to_model_classes,
)
from mindformer_gf.finetune.metrics import (
    classification_metrics,
    plot_confusion_matrix,
    plot_regression,
    plot_roc,
    regression_metrics,
    softmax,
    summarise_folds,
)
from mindformer_gf.finetune.runs import (
    TargetScale,
    bucket_widths,
    build_model_for_task,
    task_description,
    training_source,
    validation,
)
from mindformer_gf.finetune.search import best_trial_result
from mindformer_gf.finetune.splits import Split, k_fold_splits, split_by_fractions
from mindformer_gf.finetune.task_model import RegressionObjective, save_task_model
from mindformer_gf.infer.datasets import dataset_for_model, model_config_of, open_dataset
from mindformer_gf.io import ensure_dir, write_csv, write_json
from mindformer_gf.tasks.classifier import EvaluationPlan, SavedModelEvaluation, positions_evaluator
from mindformer_gf.train import ClassificationObjective
from mindformer_gf.train.device import prepare_device, seed_everything
from mindformer_gf.train.distributed import ParallelContext

logger = logging.getLogger("mindformer_gf.tasks")


@dataclass
class CellRunResult:
    """One split (or fold): where its outputs are and its test (or validation, without test cells) metrics."""

    name: str
    output_dir: Path
    model_dir: Path
    test_metrics: dict[str, Any] | None
    valid_metrics: dict[str, Any] | None
    best_step: int
    seconds: float


@dataclass
class CellTaskResult:
    runs: list[CellRunResult]
    summary: dict[str, Any]
    output_dir: Path
    prepared: PreparedCells
    splits: list[Split] = field(default_factory=list)
    # with n_hyperopt_trials: the search (this result is its best trial's)
    search: Any = None

    @property
    def test_metrics(self) -> dict[str, Any] | None:
        return self.runs[0].test_metrics if len(self.runs) == 1 else self.summary.get("pooled")


class CellClassifier(SavedModelEvaluation):
    """The reference's `Classifier(classifier="cell", ...)`.

    state_key: the dataset column to predict; states: "all" or the states to keep; filter_data: {column: [values]}
    cells must have; rare_threshold: drop classes below this fraction of cells; max_ncells / max_ncells_per_class:
    caps; regression: predict the numeric column `state_key` with a one-output head and MSE instead.
    `settings` (FineTuneSettings) holds the training options, the strategy and `freeze_layers`.
    """

    def __init__(
        self,
        state_key: str = "cell_type",
        states: str | Sequence[str] = ALL_STATES,
        filter_data: Mapping[str, Sequence[Any]] | None = None,
        rare_threshold: float = 0.0,
        max_ncells: int | None = None,
        max_ncells_per_class: int | None = None,
        regression: bool = False,
        settings: FineTuneSettings | None = None,
    ) -> None:
        self.state_key = state_key
        self.states = states
        self.filter_data = dict(filter_data or {})
        self.rare_threshold = rare_threshold
        self.max_ncells = max_ncells
        self.max_ncells_per_class = max_ncells_per_class
        self.regression = regression
        self.settings = settings or FineTuneSettings()
        self.settings.validate()

    # ---- data ----------------------------------------------------------------------------------------------------
    def prepare_data(self, dataset: Any, output_dir: str | os.PathLike | None = None) -> PreparedCells:
        """Cells and labels (see `mindformer_gf.finetune.labels.prepare_cells`); writes `label_map.json` and
        `prepared_cells.csv` (dataset row, state, label id) into `output_dir` when given."""
        dataset = open_dataset(dataset)
        if self.regression:
            prepared = prepare_targets(
                dataset, self.state_key, self.filter_data, self.max_ncells, self.settings.data_seed
            )
        else:
            prepared = prepare_cells(
                dataset,
                self.state_key,
                self.states,
                self.filter_data,
                self.rare_threshold,
                self.max_ncells,
                self.max_ncells_per_class,
                self.settings.data_seed,
            )
        if output_dir is not None:
            self.save_prepared(dataset, prepared, output_dir)
        return prepared

    def save_prepared(self, dataset: Any, prepared: PreparedCells, output_dir: str | os.PathLike) -> None:
        """`label_map.json` and `prepared_cells.csv` (dataset row, state, label id) in `output_dir`."""
        import pandas as pd

        out = ensure_dir(output_dir)
        prepared.save_label_map(out / "label_map.json")
        values = column_values(dataset, self.state_key)[prepared.indices]
        frame = pd.DataFrame({"dataset_row": prepared.indices, self.state_key: values})
        if not prepared.is_regression:
            frame["label"] = prepared.labels
        write_csv(out / "prepared_cells.csv", frame)

    def make_splits(
        self,
        dataset: Any,
        prepared: PreparedCells,
        split_sizes: tuple[float, float, float] = (0.8, 0.1, 0.1),
        n_folds: int = 0,
        group_by: str | None = None,
        valid_fraction: float = 0.1,
    ) -> list[Split]:
        """One split by fractions, or `n_folds` folds; grouped by the column `group_by` (e.g. patient) if given.
        Positions index `prepared`'s cells."""
        groups = None
        if group_by is not None:
            groups = column_values(open_dataset(dataset), group_by)[prepared.indices].astype(str)
        if n_folds and n_folds > 1:
            return k_fold_splits(prepared.labels, n_folds, groups, valid_fraction, self.settings.data_seed)
        return [split_by_fractions(prepared.labels, split_sizes, groups, self.settings.data_seed)]

    # ---- training and evaluation ---------------------------------------------------------------------------------
    def _architecture(self) -> str:
        return "BertForSequenceClassification"

    def _id2label(self, prepared: PreparedCells) -> dict[int, str]:
        return {0: self.state_key} if self.regression else prepared.id2label

    def train(
        self,
        model_dir: str | os.PathLike,
        dataset: Any,
        prepared: PreparedCells,
        split: Split,
        output_dir: str | os.PathLike,
    ) -> CellRunResult:
        """Fine-tune on `split.train`, choose the checkpoint by `split.valid`, evaluate on `split.test`, save."""
        started = time.perf_counter()
        settings = self.settings
        prepare_device(settings.device)
        seed_everything(settings.seed)
        out = ensure_dir(output_dir)
        config = model_config_of(model_dir)
        dataset, pad_id = dataset_for_model(dataset, config)
        model = build_model_for_task(
            model_dir, self._architecture(), self._id2label(prepared), settings, self.regression
        )
        lengths = corpus_lengths(dataset)[prepared.indices]
        buckets = bucket_widths(lengths, settings, model.config.max_position_embeddings)
        train_rows = prepared.indices[split.train]
        train_data = dataset.select(train_rows)
        scale = None
        if self.regression:
            scale = TargetScale.fit(prepared.targets[split.train])
            source = training_source(
                train_data,
                buckets,
                settings,
                cell_targets=scale.forward(prepared.targets[split.train]),
                pad_token_id=pad_id,
            )

            objective = RegressionObjective(model)
        else:
            source = training_source(
                train_data, buckets, settings, cell_labels=prepared.labels[split.train], pad_token_id=pad_id
            )
            objective = ClassificationObjective(model)

        evaluate_positions = positions_evaluator(
            model,
            dataset,
            prepared.indices,
            settings,
            buckets,
            out,
            "classify cell",
            {"split": split.name, "model": str(model_dir)},
            pad_id,
            lambda positions, outputs: self._score(prepared, positions, outputs[0], scale),
        )
        evaluate = validation(evaluate_positions, split.valid)
        run = fit(
            model,
            objective,
            source,
            settings,
            out / "training",
            evaluate,
            run_config={"task": "cell", "state_key": self.state_key, "model": str(model_dir)},
        )
        test_metrics = None
        if split.test.size:
            test_metrics, outputs, job = evaluate_positions(split.test, "test")
            if test_metrics is not None:
                job.finish(self._write_evaluation(out, prepared, split.test, test_metrics, outputs))
        task = task_description(
            "cell_regression" if self.regression else "cell_classification",
            settings,
            state_key=self.state_key,
            id2label={str(k): v for k, v in self._id2label(prepared).items()},
            target_scale=None if scale is None else {"mean": scale.mean, "std": scale.std},
            source_model=str(model_dir),
            best_step=run.best_step,
        )

        model_path = save_task_model(model, out / "model", task)
        return CellRunResult(
            name=split.name,
            output_dir=out,
            model_dir=model_path,
            test_metrics=test_metrics,
            valid_metrics=run.best_metrics,
            best_step=run.best_step,
            seconds=time.perf_counter() - started,
        )

    def _score(
        self, prepared: PreparedCells, positions: np.ndarray, logits: np.ndarray, scale: TargetScale | None
    ) -> tuple[dict[str, Any], np.ndarray]:
        """(metrics, predictions) of the cells at `positions` from the model's outputs: values on the target's scale
        (regression) or class probabilities."""
        if self.regression:
            predicted = (scale or TargetScale(0.0, 1.0)).inverse(logits[:, 0])
            return regression_metrics(prepared.targets[positions], predicted), predicted
        probabilities = softmax(logits.astype(np.float64))
        names = [prepared.id2label[i] for i in range(prepared.num_classes)]
        return classification_metrics(prepared.labels[positions], probabilities, names), probabilities

    def _write_evaluation(
        self,
        out: Path,
        prepared: PreparedCells,
        positions: np.ndarray,
        metrics: dict[str, Any],
        outputs: np.ndarray,
    ) -> list[Path]:
        """predictions.csv, metrics.json and the plots; returns the first two."""
        import pandas as pd

        rows = prepared.indices[positions]
        frame = pd.DataFrame({"dataset_row": rows})
        if self.regression:
            frame[f"true_{self.state_key}"] = prepared.targets[positions]
            frame[f"predicted_{self.state_key}"] = outputs
            plot_regression(prepared.targets[positions], outputs, self.state_key, out / "regression")
        else:
            names = [prepared.id2label[i] for i in range(prepared.num_classes)]
            frame["true_label"] = [names[i] for i in prepared.labels[positions]]
            frame["predicted_label"] = [names[i] for i in outputs.argmax(1)]
            for i, name in enumerate(names):
                frame[f"p({name})"] = outputs[:, i]
            report = pd.DataFrame(metrics["per_class"]).T
            write_csv(out / "per_class.csv", report, index=True)
            plot_confusion_matrix(
                metrics["confusion_matrix"],
                names,
                out / "confusion_matrix",
                f"{self.state_key}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}",
            )
            if len(names) == 2:
                plot_roc(prepared.labels[positions], outputs[:, 1], names[1], out / "roc", f"{self.state_key} (test)")
        return [write_csv(out / "predictions.csv", frame), write_json(out / "metrics.json", metrics)]

    evaluate_command = "classify cell --evaluate"
    saved_architecture = "BertForSequenceClassification"

    def evaluate_saved_model(
        self,
        model_dir: str | os.PathLike,
        dataset: Any,
        output_dir: str | os.PathLike,
        prepared: PreparedCells | None = None,
        resume: bool = False,
        shard_timeout: float = 1800.0,
        parallel: ParallelContext | None = None,
    ) -> dict[str, Any] | None:
        """Evaluate a saved fine-tuned model (a `model/` directory written by `train`) on all prepared cells of
        `dataset`, with the model's own label map; writes predictions, metrics, plots and `predictions_run.json`
        into `output_dir`.

        Under msrun every rank predicts a share of the cells (`mindformer_gf.infer.sharded`); rank 0 returns the
        metrics and writes the files, the other ranks return None. `resume` keeps the shards of an interrupted
        run."""
        return super().evaluate_saved_model(
            model_dir, dataset, output_dir, resume, shard_timeout, parallel, prepared=prepared
        )

    def _evaluation_plan(
        self, model: Any, task: dict[str, Any], dataset: Any, output_dir: Path, prepared: PreparedCells | None = None
    ) -> EvaluationPlan:
        prepared = prepared or self.prepare_data(dataset)
        if not self.regression:
            labels, id2label = to_model_classes(prepared.labels, prepared.id2label, model.config.id2label)
            prepared = PreparedCells(prepared.indices, labels, id2label, prepared.state_key)
        record = {
            "state_key": self.state_key,
            "states": self.states,
            "filter_data": self.filter_data,
            "max_ncells": self.max_ncells,
            "regression": self.regression,
        }
        scale = task.get("target_scale") or {"mean": 0.0, "std": 1.0}
        positions = np.arange(prepared.indices.size)

        def score(merged: list[Any]) -> tuple[dict[str, Any], list[Path]]:
            metrics, outputs = self._score(prepared, positions, merged[0], TargetScale(scale["mean"], scale["std"]))
            return metrics, self._write_evaluation(output_dir, prepared, positions, metrics, outputs)

        return EvaluationPlan(prepared.indices, corpus_lengths(dataset)[prepared.indices], record, score)

    # ---- the whole job -------------------------------------------------------------------------------------------
    def run(
        self,
        dataset: Any,
        model_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        split_sizes: tuple[float, float, float] = (0.8, 0.1, 0.1),
        n_folds: int = 0,
        group_by: str | None = None,
        n_hyperopt_trials: int = 0,
        search_space: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> CellTaskResult:
        """Prepare, split (fractions or `n_folds` folds, grouped by `group_by`), train and evaluate every split;
        `summary.json` holds each run's test metrics and, for folds, their mean, sd and the pooled predictions'.
        With `n_hyperopt_trials`, a hyperparameter search (mindformer_gf.finetune.search) over that many trials; the
        result is the best trial's, with the search in `.search`."""
        if n_hyperopt_trials:
            return best_trial_result(
                self,
                lambda task, trial_dir: task.run(dataset, model_dir, trial_dir, split_sizes, n_folds, group_by),
                n_hyperopt_trials,
                output_dir,
                search_space,
            )
        # what the input can get wrong (label column, states, split, groups, model directory) fails before any
        # output exists
        dataset = open_dataset(dataset)
        prepared = self.prepare_data(dataset)
        splits = self.make_splits(dataset, prepared, split_sizes, n_folds, group_by)
        model_config_of(model_dir)
        out = ensure_dir(output_dir)
        self.save_prepared(dataset, prepared, out)
        write_json(out / "splits.json", {s.name: s.as_dict() for s in splits})
        runs = []
        for split in splits:
            name = split.name if len(splits) > 1 else "."
            runs.append(self.train(model_dir, dataset, prepared, split, out / name))
        summary = self._summarise(runs, prepared, out, len(splits) > 1)
        write_json(out / "summary.json", summary)
        return CellTaskResult(runs, summary, out, prepared, splits)

    def _summarise(self, runs: list[CellRunResult], prepared: PreparedCells, out: Path, folds: bool) -> dict[str, Any]:
        keys = ("mse", "mae", "r2", "pearson_r") if self.regression else ("accuracy", "macro_f1", "roc_auc")
        tested = [r for r in runs if r.test_metrics is not None]
        summary: dict[str, Any] = {
            "task": "cell_regression" if self.regression else "cell_classification",
            "state_key": self.state_key,
            "strategy": self.settings.strategy,
            "runs": {
                r.name: {
                    "test": {k: r.test_metrics.get(k) for k in keys} if r.test_metrics else None,
                    "valid": {k: r.valid_metrics.get(k) for k in keys} if r.valid_metrics else None,
                    "best_step": r.best_step,
                    "seconds": round(r.seconds, 1),
                    "model": str(r.model_dir),
                }
                for r in runs
            },
        }
        if folds and tested:
            summary["folds"] = summarise_folds([r.test_metrics for r in tested], keys)
            if not self.regression:
                import pandas as pd

                frames = [pd.read_csv(r.output_dir / "predictions.csv") for r in tested]
                pooled = pd.concat(frames, ignore_index=True)
                names = [prepared.id2label[i] for i in range(prepared.num_classes)]
                index = {n: i for i, n in enumerate(names)}
                probabilities = pooled[[f"p({n})" for n in names]].to_numpy()
                y_true = pooled["true_label"].map(index).to_numpy()
                metrics = classification_metrics(y_true, probabilities, names)
                summary["pooled"] = {k: metrics[k] for k in ("n", "accuracy", "macro_f1", "roc_auc")}
                plot_confusion_matrix(
                    metrics["confusion_matrix"],
                    names,
                    out / "confusion_matrix_all_folds",
                    f"all folds: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}",
                )
        return summary
