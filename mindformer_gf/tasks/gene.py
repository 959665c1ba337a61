"""Gene classification (and per-gene regression): a token-classification head predicts the class of labelled genes
wherever they occur in a cell; k folds over genes, so no gene is both trained on and tested.

    from mindformer_gf.tasks import GeneClassifier, FineTuneSettings
    from mindformer_gf.resources import geneformer_v1_path
    genes = GeneClassifier(geneformer_v1_path("dosage_sens_tf_labels.csv"), n_folds=4,
                           settings=FineTuneSettings(num_train_epochs=1, freeze_layers=4))
    result = genes.run("pbmc.dataset", "pretrained_model_dir", "out")
    result.summary["overall"]["roc_auc"]

Per fold: token labels carry the class id on the fold's training genes and -100 everywhere else (test genes
included); training cells are those holding a training gene; the test predictions are the logits at every
occurrence of a test gene in the cells holding one. Metrics per fold and overall (every gene is tested in exactly
one fold): accuracy, macro-F1, ROC AUC over gene occurrences (as the reference), and the same per gene after
averaging its occurrences' probabilities.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.data import read_cells
from mindformer_gf.finetune.fit import FineTuneSettings, fit, report_intermediate
from mindformer_gf.finetune.labels import (
    GeneLabels,
    cells_holding,
    filter_rows,
    gene_labels_for_tokens,
    gene_values_for_tokens,
    read_gene_classes,
    read_gene_values,
    to_model_classes,
    token_label_arrays,
)
from mindformer_gf.finetune.metrics import (
    classification_metrics,
    plot_fold_rocs,
    plot_metric_bars,
    regression_metrics,
    selection_score,
    softmax,
    summarise_folds,
)
from mindformer_gf.finetune.runs import (
    TargetScale,
    bucket_widths,
    build_model_for_task,
    sharded_forward,
    task_description,
    training_source,
)
from mindformer_gf.finetune.search import best_trial_result
from mindformer_gf.finetune.splits import gene_folds
from mindformer_gf.finetune.task_model import RegressionObjective, save_task_model
from mindformer_gf.infer.datasets import dataset_for_model, model_config_of
from mindformer_gf.io import ensure_dir, write_csv, write_json
from mindformer_gf.tasks.classifier import EvaluationPlan, SavedModelEvaluation
from mindformer_gf.tokenizer import token_dictionary_for
from mindformer_gf.train import ClassificationObjective
from mindformer_gf.train.device import prepare_device, seed_everything


@dataclass
class GeneTaskResult:
    folds: list[dict[str, Any]]
    summary: dict[str, Any]
    output_dir: Path
    genes: GeneLabels
    # with n_hyperopt_trials: the search (this result is its best trial's)
    search: Any = None


class GeneClassifier(SavedModelEvaluation):
    """The reference's `Classifier(classifier="gene", gene_class_dict=...)`.

    gene_classes: {label: [Ensembl IDs]}, a CSV with one column per class, a JSON object, or {label: text file};
    with `regression=True`, {Ensembl ID: number} or a two-column CSV/JSON of numbers instead.
    n_folds: folds over genes (5 in the reference). filter_data / max_ncells: which cells take part.
    Defaults follow the reference's gene classifier: 1 epoch, 4 layers frozen (capped at the model's depth - 1).
    """

    def __init__(
        self,
        gene_classes: Mapping[str, Any] | str | os.PathLike,
        n_folds: int = 5,
        filter_data: Mapping[str, Sequence[Any]] | None = None,
        max_ncells: int | None = None,
        regression: bool = False,
        token_dictionary_file: str | os.PathLike | None = None,
        settings: FineTuneSettings | None = None,
    ) -> None:
        self.gene_classes = gene_classes
        self.n_folds = n_folds
        self.filter_data = dict(filter_data or {})
        self.max_ncells = max_ncells
        self.regression = regression
        self.token_dictionary_file = token_dictionary_file
        self.settings = settings or FineTuneSettings(num_train_epochs=1.0, freeze_layers=4)
        self.settings.validate()

    def prepare_data(self, dataset: Any) -> tuple[GeneLabels, np.ndarray, list[np.ndarray]]:
        """(labelled genes found in the cells, dataset rows of the cells holding one, those cells' tokens)."""
        token = token_dictionary_for(dataset, self.token_dictionary_file)
        if self.regression:
            values = self.gene_classes
            if isinstance(values, (str, os.PathLike)):
                values = read_gene_values(values)
            genes = gene_values_for_tokens(values, token)
        else:
            genes = gene_labels_for_tokens(read_gene_classes(self.gene_classes), token)
        rows = filter_rows(dataset, self.filter_data)
        cells = read_cells(dataset, rows)
        holding = cells_holding(cells, genes.tokens)
        if holding.size == 0:
            raise ValueError("no cell holds any labelled gene: are the dataset and gene labels of the same species?")
        if self.max_ncells and holding.size > self.max_ncells:
            holding = np.sort(
                np.random.default_rng(self.settings.data_seed).choice(holding, self.max_ncells, replace=False)
            )
        rows, cells = rows[holding], [cells[i] for i in holding]
        present = np.isin(genes.tokens, np.unique(np.concatenate(cells)))
        absent = [g for g, p in zip(genes.genes, present, strict=True) if not p]
        genes = genes.subset(present)
        genes.missing_genes = genes.missing_genes + absent
        return genes, rows, cells

    def run(
        self,
        dataset: Any,
        model_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        n_hyperopt_trials: int = 0,
        search_space: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> GeneTaskResult:
        """Train and test one model per fold of genes. With `n_hyperopt_trials`, a hyperparameter search scored on
        the folds' held-out genes (as the reference does); the best trial's result, with the search in `.search`."""
        if n_hyperopt_trials:
            return best_trial_result(
                self,
                lambda task, trial_dir: task.run(dataset, model_dir, trial_dir),
                n_hyperopt_trials,
                output_dir,
                search_space,
            )
        settings = self.settings
        prepare_device(settings.device)
        config = model_config_of(model_dir)
        if settings.strategy == "finetune" and settings.freeze_layers >= config.num_hidden_layers:
            settings = settings.replace(freeze_layers=max(0, config.num_hidden_layers - 1))
            print(f"freeze_layers capped at {settings.freeze_layers} (the model has {config.num_hidden_layers} layers)")
        out = ensure_dir(output_dir)
        dataset, pad_id = dataset_for_model(dataset, config)
        genes, rows, cells = self.prepare_data(dataset)
        print(
            f"gene task: {len(genes.genes)} labelled genes in {rows.size} cells"
            + (f" ({len(genes.missing_genes)} labelled genes not in the data)" if genes.missing_genes else "")
        )
        folds = gene_folds(genes.labels, self.n_folds, settings.data_seed)
        write_json(
            out / "gene_folds.json",
            {
                f"fold{k}": {"train": [genes.genes[i] for i in tr], "test": [genes.genes[i] for i in te]}
                for k, (tr, te) in enumerate(folds)
            },
        )
        lengths = np.asarray([len(c) for c in cells])
        fold_results, pooled = [], []
        for k, (train_genes, test_genes) in enumerate(folds):
            seed_everything(settings.seed + k)
            result, predictions = self._run_fold(
                k,
                model_dir,
                dataset,
                genes,
                rows,
                cells,
                lengths,
                train_genes,
                test_genes,
                out / f"fold{k}",
                pad_id,
                settings,
            )
            if result is None:
                continue  # another rank of a data-parallel run (msrun): rank 0 scores the folds
            fold_results.append(result)
            pooled.append(predictions)
            report_intermediate(selection_score(result["metrics"]))  # a search may stop a bad trial here
        if not fold_results:
            return GeneTaskResult([], {"folds": [], "overall": None, "per_gene": None}, out, genes)
        summary = self._summarise(fold_results, pooled, genes, out)
        write_json(out / "summary.json", summary)
        return GeneTaskResult(fold_results, summary, out, genes)

    evaluate_command = "classify gene --evaluate"
    saved_architecture = "BertForTokenClassification"

    def _load_saved(self, model_dir: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
        model, task = super()._load_saved(model_dir)
        if task and task.get("kind") not in ("gene_classification", "gene_regression"):
            raise ValueError(f"{model_dir} is a {task.get('kind')} model, not a gene classifier")
        if task and (task["kind"] == "gene_regression") != self.regression:
            wanted = "--gene-values (gene_values)" if not self.regression else "--gene-labels (gene_classes)"
            raise ValueError(f"{model_dir} is a {task['kind']} model: pass {wanted}")
        return model, task

    def _evaluation_plan(self, model: Any, task: dict[str, Any], dataset: Any, output_dir: Path) -> EvaluationPlan:
        """Every occurrence of a labelled gene the model was not trained on (its task.json's `train_genes`; all of
        them for a model without one), in the cells holding one. Writes `predictions.csv` and `metrics.json` as a
        training run writes for a fold's test genes: on the same data and labels, a fold's model reproduces the
        fold's test predictions."""
        genes, rows, cells = self.prepare_data(dataset)
        if not self.regression:
            labels, id2label = to_model_classes(genes.labels, genes.id2label, model.config.id2label, "gene classes")
            genes = GeneLabels(genes.genes, genes.tokens, labels, id2label, genes.missing_genes)
        trained = set(task.get("train_genes", []))
        test_genes = np.flatnonzero([g not in trained for g in genes.genes])
        if test_genes.size == 0:
            raise ValueError("every labelled gene in the cells is one the model was trained on: nothing to score")
        test_cells = cells_holding(cells, genes.tokens[test_genes])
        gene_classes = self.gene_classes
        record = {
            "gene_classes": str(gene_classes) if isinstance(gene_classes, (str, os.PathLike)) else None,
            "filter_data": self.filter_data,
            "max_ncells": self.max_ncells,
            "regression": self.regression,
        }
        # the genes' labels in the shards' fingerprint: another label file matches no old shard
        labels = (genes.labels if genes.targets is None else genes.targets).tolist()
        scale = TargetScale(**task["target_scale"]) if task.get("target_scale") else None

        def score(merged: list[Any]) -> tuple[dict[str, Any], list[Path]]:
            frame, metrics = self._score_occurrences(
                task.get("fold"), genes, rows, cells, test_cells, test_genes, merged[0], scale
            )
            files = [write_csv(output_dir / "predictions.csv", frame), write_json(output_dir / "metrics.json", metrics)]
            return metrics, files

        lengths = np.asarray([len(c) for c in cells])
        inputs = {"genes": genes.genes, "labels": labels}
        return EvaluationPlan(rows[test_cells], lengths, record, score, inputs)

    def _run_fold(
        self,
        k: int,
        model_dir: str | os.PathLike,
        dataset: Any,
        genes: GeneLabels,
        rows: np.ndarray,
        cells: list[np.ndarray],
        lengths: np.ndarray,
        train_genes: np.ndarray,
        test_genes: np.ndarray,
        out: Path,
        pad_id: int,
        settings: FineTuneSettings,
    ) -> tuple[dict[str, Any] | None, Any]:
        """One fold: train, predict the test genes' occurrences, save; (None, None) on the ranks other than 0 of a
        data-parallel run."""
        started = time.perf_counter()
        out = ensure_dir(out)
        id2label = {0: "value"} if self.regression else genes.id2label
        model = build_model_for_task(model_dir, "BertForTokenClassification", id2label, settings, self.regression)
        buckets = bucket_widths(lengths, settings, model.config.max_position_embeddings)
        train_cells = cells_holding(cells, genes.tokens[train_genes])
        test_cells = cells_holding(cells, genes.tokens[test_genes])
        train_data = dataset.select(rows[train_cells])
        scale = None
        if self.regression:
            scale = TargetScale.fit(genes.targets[train_genes])
            mapping = dict(
                zip(genes.tokens[train_genes].tolist(), scale.forward(genes.targets[train_genes]).tolist(), strict=True)
            )
            targets = token_label_arrays([cells[i] for i in train_cells], mapping, np.float32)
            source = training_source(train_data, buckets, settings, token_targets=targets, pad_token_id=pad_id)
            objective = RegressionObjective(model)
        else:
            mapping = dict(zip(genes.tokens[train_genes].tolist(), genes.labels[train_genes].tolist(), strict=True))
            labels = token_label_arrays([cells[i] for i in train_cells], mapping)
            source = training_source(train_data, buckets, settings, token_labels=labels, pad_token_id=pad_id)
            objective = ClassificationObjective(model)
        run = fit(
            model,
            objective,
            source,
            settings,
            out / "training",
            None,
            run_config={"task": "gene", "fold": k, "model": str(model_dir)},
        )
        frame, metrics = None, None
        if test_genes.size:  # a run on every gene (the reference's train_all_data) has none to test
            record = {"command": "classify gene", "pass": "test", "fold": k, "model": str(model_dir)}
            merged, job = sharded_forward(
                model,
                dataset,
                rows[test_cells],
                settings,
                buckets,
                out,
                "predictions",
                record,
                pad_id,
                f"test fold {k}",
            )
            if merged is None:
                return None, None  # another rank's share of the test cells: rank 0 scores the fold
            frame, metrics = self._score_occurrences(k, genes, rows, cells, test_cells, test_genes, merged[0], scale)
            job.finish([write_csv(out / "predictions.csv", frame), write_json(out / "metrics.json", metrics)])

        save_task_model(
            model,
            out / "model",
            task_description(
                "gene_regression" if self.regression else "gene_classification",
                settings,
                id2label={str(i): v for i, v in id2label.items()},
                fold=k,
                train_genes=[genes.genes[i] for i in train_genes],
                target_scale=None if scale is None else {"mean": scale.mean, "std": scale.std},
                source_model=str(model_dir),
            ),
        )
        result = {
            "fold": k,
            "train_genes": int(train_genes.size),
            "test_genes": int(test_genes.size),
            "train_cells": int(train_cells.size),
            "test_cells": int(test_cells.size),
            "test_occurrences": 0 if frame is None else len(frame),
            "final_loss": run.final_loss,
            "seconds": round(time.perf_counter() - started, 1),
            "metrics": metrics,
        }
        return result, frame

    def _score_occurrences(
        self,
        fold: int | None,
        genes: GeneLabels,
        rows: np.ndarray,
        cells: list[np.ndarray],
        test_cells: np.ndarray,
        test_genes: np.ndarray,
        logits: list[np.ndarray],
        scale: TargetScale | None,
    ) -> tuple[Any, dict[str, Any]]:
        """(predictions, metrics) at every occurrence of a test gene in the test cells, from the per-token outputs
        of those cells (`logits`, one array per cell of `test_cells`)."""
        import pandas as pd

        token_of = {int(t): i for i, t in enumerate(genes.tokens)}
        test_set = set(genes.tokens[test_genes].tolist())
        records = []
        for cell_position, cell_logits in zip(test_cells, logits, strict=True):
            tokens = cells[cell_position]
            for position in np.flatnonzero(np.isin(tokens, list(test_set))):
                gene = token_of[int(tokens[position])]
                records.append((rows[cell_position], position, gene, cell_logits[position]))
        gene_index = np.asarray([r[2] for r in records])
        outputs = np.stack([r[3] for r in records]).astype(np.float64)
        frame = pd.DataFrame(
            {
                "dataset_row": [r[0] for r in records],
                "position": [r[1] for r in records],
                "gene": [genes.genes[i] for i in gene_index],
                "fold": fold,
            }
        )
        if self.regression:
            predicted = (scale or TargetScale(0.0, 1.0)).inverse(outputs[:, 0])
            frame["true_value"] = genes.targets[gene_index]
            frame["predicted_value"] = predicted
            return frame, regression_metrics(genes.targets[gene_index], predicted)
        names = [genes.id2label[i] for i in range(len(genes.id2label))]
        probabilities = softmax(outputs)
        frame["true_label"] = [names[genes.labels[i]] for i in gene_index]
        frame["predicted_label"] = [names[i] for i in probabilities.argmax(1)]
        for i, name in enumerate(names):
            frame[f"p({name})"] = probabilities[:, i]
        return frame, classification_metrics(genes.labels[gene_index], probabilities, names)

    def _summarise(self, folds: list[dict[str, Any]], pooled: list[Any], genes: GeneLabels, out: Path) -> dict:
        import pandas as pd

        frame = pd.concat(pooled, ignore_index=True)
        write_csv(out / "predictions_all_folds.csv", frame)
        if self.regression:
            keys = ("mse", "mae", "r2", "pearson_r")
            overall = regression_metrics(frame["true_value"], frame["predicted_value"])
            per_gene = frame.groupby("gene")[["true_value", "predicted_value"]].mean()
            gene_level = regression_metrics(per_gene["true_value"], per_gene["predicted_value"])
        else:
            keys = ("accuracy", "macro_f1", "roc_auc")
            names = [genes.id2label[i] for i in range(len(genes.id2label))]
            index = {n: i for i, n in enumerate(names)}
            columns = [f"p({n})" for n in names]
            overall = classification_metrics(
                frame["true_label"].map(index).to_numpy(), frame[columns].to_numpy(), names
            )
            per_gene = frame.groupby("gene").agg({**{c: "mean" for c in columns}, "true_label": "first"})
            gene_level = classification_metrics(
                per_gene["true_label"].map(index).to_numpy(), per_gene[columns].to_numpy(), names
            )
            if len(names) == 2:
                plot_fold_rocs(
                    [(f["true_label"].map(index).to_numpy(), f[columns[1]].to_numpy()) for f in pooled],
                    names[1],
                    out / "roc_folds",
                    "gene classification, ROC per fold",
                )
            bars = {
                f"fold {f['fold']}": {k: f["metrics"][k] for k in keys if f["metrics"].get(k) is not None}
                for f in folds
            }
            bars["all genes"] = {k: overall[k] for k in keys if overall.get(k) is not None}
            plot_metric_bars(bars, out / "gene_metrics", "gene classification: test metrics per fold")
        return {
            "task": "gene_regression" if self.regression else "gene_classification",
            "genes": len(genes.genes),
            "genes_not_found": genes.missing_genes,
            "folds": [
                {k: v for k, v in f.items() if k != "metrics"} | {m: f["metrics"].get(m) for m in keys} for f in folds
            ],
            "fold_summary": summarise_folds([f["metrics"] for f in folds], keys),
            "overall": {k: overall.get(k) for k in ("n", *keys)},
            "per_gene": {k: gene_level.get(k) for k in ("n", *keys)},
        }
