"""What the three classifiers (cell, gene, multitask) share when they evaluate a saved model: load it, open the
dataset for its vocabulary, re-map the classes to the model's (in each classifier's `_evaluation_plan`), predict
over the ranks, score, write. Each classifier keeps only what differs: which rows, what the run records, how the
outputs are scored and written."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.finetune.fit import FineTuneSettings
from mindformer_gf.finetune.runs import bucket_widths, evaluate_saved, load_saved_model, sharded_forward
from mindformer_gf.infer.datasets import dataset_for_model
from mindformer_gf.train.device import prepare_device
from mindformer_gf.train.distributed import ParallelContext


@dataclass
class EvaluationPlan:
    """What one classifier's evaluation of a saved model needs beyond the shared steps."""

    # dataset rows to predict, and the lengths the padded widths are chosen from
    rows: np.ndarray
    lengths: np.ndarray
    # what predictions_run.json records about the run (after the command)
    record: dict[str, Any]
    # the model's outputs on `rows` (one array per output) -> (metrics, files written)
    score: Callable[[list[Any]], tuple[dict[str, Any], list[Path]]]
    # more inputs that fingerprint the prediction shards (a label file's labels)
    inputs: dict[str, Any] | None = None


def positions_evaluator(
    model: Any,
    dataset: Any,
    rows: np.ndarray,
    settings: FineTuneSettings,
    buckets: Any,
    output_dir: Path,
    command: str,
    record: dict[str, Any],
    pad_token_id: int,
    score: Callable[[np.ndarray, list[Any]], tuple[Any, Any]],
) -> Callable[[np.ndarray, str], tuple[Any, Any, Any]]:
    """`evaluate_positions(positions, desc)` of a training run: (metrics, predictions, the sharded pass) of the cells
    at `positions` (dataset rows `rows[positions]`), scored by `score(positions, outputs)`; (None, None, pass) on the
    ranks other than 0 of a data-parallel run. The test pass ("test") writes its record beside the predictions in
    `output_dir`, the validation passes under `output_dir/training`."""

    def evaluate_positions(positions: np.ndarray, desc: str) -> tuple[Any, Any, Any]:
        where, prefix = (output_dir, "predictions") if desc == "test" else (output_dir / "training", "validation")
        run_record = {"command": command, "pass": desc, **record}
        outputs, job = sharded_forward(
            model, dataset, rows[positions], settings, buckets, where, prefix, run_record, pad_token_id, desc
        )
        if outputs is None:
            return None, None, job
        return (*score(positions, outputs), job)

    return evaluate_positions


class SavedModelEvaluation:
    """Base of the classifiers: `evaluate_saved_model` from the steps they share."""

    settings: FineTuneSettings
    # the command predictions_run.json names, and the architecture a model without task.json is loaded as
    evaluate_command: str = ""
    saved_architecture: str = ""

    def _load_saved(self, model_dir: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
        """The saved model and its task description; a classifier refuses here a model of another task."""
        return load_saved_model(model_dir, self.saved_architecture)

    def _evaluation_plan(self, model: Any, task: dict[str, Any], dataset: Any, output_dir: Path, **options: Any):
        raise NotImplementedError

    def evaluate_saved_model(
        self,
        model_dir: str | os.PathLike,
        dataset: Any,
        output_dir: str | os.PathLike,
        resume: bool = False,
        shard_timeout: float = 1800.0,
        parallel: ParallelContext | None = None,
        **options: Any,
    ) -> dict[str, Any] | None:
        """Score a saved fine-tuned model (a `model/` directory a run wrote) on `dataset`, classes matched by name;
        writes what a training run writes for its test data, and `predictions_run.json`, into `output_dir`.

        Under msrun every rank predicts a share of the cells; rank 0 returns the metrics and writes the files, the
        other ranks return None. `resume` keeps the shards of an interrupted run."""
        settings = self.settings
        prepare_device(settings.device)
        model, task = self._load_saved(model_dir)
        dataset, pad_id = dataset_for_model(dataset, model.config)
        plan = self._evaluation_plan(model, task, dataset, Path(output_dir), **options)
        buckets = bucket_widths(plan.lengths, settings, model.config.max_position_embeddings)
        merged, job = evaluate_saved(
            model,
            model_dir,
            dataset,
            plan.rows,
            settings,
            buckets,
            output_dir,
            {"command": self.evaluate_command, **plan.record},
            pad_id,
            inputs=plan.inputs,
            resume=resume,
            timeout=shard_timeout,
            parallel=parallel,
        )
        if merged is None:
            return None  # another rank's share: rank 0 writes the files
        metrics, files = plan.score(merged)
        job.finish(files)
        return metrics
