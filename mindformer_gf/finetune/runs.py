"""What every fine-tuning run does around `fit`: step sources for the training loop, forward passes for validation
and evaluation (sharded over the ranks under msrun), model construction with a strategy, regression target scaling,
and the saved task model's loading and description."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mindformer_gf.data import (
    LabelledCollator,
    LengthGroupedPlan,
    PlannedBatches,
    corpus_lengths,
    read_cells,
)
from mindformer_gf.data.buckets import LengthBuckets, choose_bucket_widths
from mindformer_gf.data.collate import collate, pad_cells
from mindformer_gf.data.sampler import MicroBatch
from mindformer_gf.finetune.fit import FineTuneSettings
from mindformer_gf.finetune.task_model import (
    apply_strategy,
    describe_parameter_counts,
    load_pretrained,
    load_task_model,
    parameter_counts,
    read_task,
)
from mindformer_gf.infer.batches import length_sorted_batches
from mindformer_gf.infer.sharded import ShardedInference, cell_costs, dataset_location, forward_share, input_stamps
from mindformer_gf.io import ensure_dir
from mindformer_gf.pretrained import from_pretrained
from mindformer_gf.train.distributed import init_distributed

logger = logging.getLogger("mindformer_gf.tasks")


def validation(
    evaluate_positions: Callable[[np.ndarray, str], tuple[dict[str, Any] | None, Any, ShardedInference]],
    valid: np.ndarray,
) -> Callable[[], dict[str, Any] | None] | None:
    """The `evaluate` of `fit()`: the metrics on the validation cells `valid` (None on the ranks other than 0 of a
    sharded pass); None without any cells, so that fit keeps the last checkpoint instead of choosing on nothing."""
    if not valid.size:
        return None

    def evaluate() -> dict[str, Any] | None:
        metrics, _, job = evaluate_positions(valid, "validation")
        job.remove_shards()
        return metrics

    return evaluate


def bucket_widths(lengths: np.ndarray, settings: FineTuneSettings, max_length: int) -> LengthBuckets:
    return choose_bucket_widths(np.asarray(lengths), settings.num_buckets, max_length)


class TargetCollator:
    """Micro-batch -> batch with float `targets`: per cell ([B]) or per token ([B, width]); NaN = no target."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        cell_targets: np.ndarray | None = None,
        token_targets: Sequence[np.ndarray] | None = None,
        pad_token_id: int = 0,
    ) -> None:
        self.dataset, self.batch_size, self.pad_token_id = dataset, batch_size, pad_token_id
        self.cell_targets, self.token_targets = cell_targets, token_targets

    def __call__(self, micro: MicroBatch) -> dict[str, np.ndarray]:
        cells = read_cells(self.dataset, micro.cell_indices)
        ids, mask = pad_cells(cells, micro.width, self.pad_token_id, rows=self.batch_size)
        if self.cell_targets is not None:
            targets = np.full(self.batch_size, np.nan, np.float32)
            targets[: len(cells)] = self.cell_targets[micro.cell_indices]
        else:
            targets = np.full(ids.shape, np.nan, np.float32)
            for row, cell in enumerate(micro.cell_indices):
                values = self.token_targets[cell]
                targets[row, : len(values)] = values
        return {"input_ids": ids, "attention_mask": mask, "targets": targets}


class MultiLabelCollator:
    """Micro-batch -> batch with one label array per task (`labels_0`, `labels_1`, ...): int ids or floats."""

    def __init__(self, dataset: Any, batch_size: int, task_labels: Sequence[np.ndarray], pad_token_id: int = 0) -> None:
        self.dataset, self.batch_size, self.pad_token_id = dataset, batch_size, pad_token_id
        self.task_labels = list(task_labels)

    def __call__(self, micro: MicroBatch) -> dict[str, np.ndarray]:
        cells = read_cells(self.dataset, micro.cell_indices)
        batch = collate(cells, micro.width, rows=self.batch_size, pad_token_id=self.pad_token_id)
        for t, labels in enumerate(self.task_labels):
            floating = np.issubdtype(labels.dtype, np.floating)
            column = np.full(self.batch_size, np.nan if floating else -100, np.float32 if floating else np.int32)
            column[: len(cells)] = labels[micro.cell_indices]
            batch[f"labels_{t}"] = column
        return batch


def training_source(
    dataset: Any,
    buckets: LengthBuckets,
    settings: FineTuneSettings,
    cell_labels: np.ndarray | None = None,
    token_labels: Sequence[np.ndarray] | None = None,
    cell_targets: np.ndarray | None = None,
    token_targets: Sequence[np.ndarray] | None = None,
    task_labels: Sequence[np.ndarray] | None = None,
    pad_token_id: int = 0,
) -> PlannedBatches:
    """The loop's step source over all rows of `dataset` (already the training subset), with one kind of label.

    Under msrun each step takes one micro-batch per rank (data parallel, as pretraining): `batch_size` cells per
    rank, so a step sees batch_size x ranks cells (x gradient_accumulation_steps) and an epoch has that many times
    fewer steps."""
    group_size = init_distributed().world_size * settings.gradient_accumulation_steps
    plan = LengthGroupedPlan(
        corpus_lengths(dataset), buckets, settings.per_device_train_batch_size, group_size, settings.seed
    )
    batch = settings.per_device_train_batch_size
    if task_labels is not None:
        collator = MultiLabelCollator(dataset, batch, task_labels, pad_token_id)
        return PlannedBatches(plan, collator)
    if cell_targets is not None or token_targets is not None:
        collator = TargetCollator(dataset, batch, cell_targets, token_targets, pad_token_id)
    else:
        collator = LabelledCollator(dataset, batch, cell_labels, token_labels, pad_token_id)
    items = batch * buckets.max_width if (token_labels is not None or token_targets is not None) else batch
    return PlannedBatches(plan, collator, items_per_batch=items)


def sharded_forward(
    model: Any,
    dataset: Any,
    rows: np.ndarray,
    settings: FineTuneSettings,
    buckets: LengthBuckets,
    output_dir: str | os.PathLike,
    prefix: str,
    record: dict[str, Any],
    pad_token_id: int = 0,
    desc: str = "evaluate",
    **job_options: Any,
) -> tuple[list[Any] | None, ShardedInference]:
    """The model's outputs on dataset rows `rows`, in that order, in inference mode: each rank of an msrun launch
    runs whole batches of the plan one process makes from all the rows (balanced by genes), rank 0 gets every row's
    (the other ranks None), bit for bit one process's. `record` (the
    pass's settings) goes into `{prefix}_run.json` beside the outputs in `output_dir` when rank 0 calls
    `job.finish(files)` after writing them (or `job.remove_shards()` for a pass without a record). `job_options`:
    ShardedInference's (inputs, resume, timeout, parallel)."""
    model.set_train(False)
    rows = np.asarray(rows)
    lengths = corpus_lengths(dataset)[rows]
    # the batch plan of one process, from every row: each rank runs whole batches of it
    batches = length_sorted_batches(lengths, buckets, settings.forward_batch_size)
    job = ShardedInference(
        cell_costs(lengths, "genes"),
        output_dir,
        prefix,
        {
            **record,
            "forward_batch_size": settings.forward_batch_size,
            "num_buckets": settings.num_buckets,
            "device": settings.device,
        },
        progress=settings.progress_bar,
        desc=desc,
        groups=[positions for _, positions in batches],
        **job_options,
    )
    forward = forward_share(model, dataset, rows, batches, settings.forward_batch_size, pad_token_id)
    return job.run(forward), job


@dataclass
class TargetScale:
    """Regression targets are standardised for training (mean 0, sd 1 on the training cells); predictions are
    mapped back."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: np.ndarray) -> TargetScale:
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        return cls(float(values.mean()), float(values.std()) or 1.0)

    def forward(self, values: np.ndarray) -> np.ndarray:
        return ((np.asarray(values, np.float64) - self.mean) / self.std).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, np.float64) * self.std + self.mean


def build_model_for_task(
    model_dir: str | os.PathLike,
    architecture: str,
    id2label: dict[int, str],
    settings: FineTuneSettings,
    regression: bool = False,
) -> Any:
    """`architecture` from the pretrained `model_dir` with a fresh head of `id2label` outputs and the strategy of
    `settings` applied (what trains is printed)."""
    overrides: dict[str, Any] = {"id2label": dict(id2label), "architectures": [architecture]}
    if regression:
        overrides["problem_type"] = "regression"
    model = load_pretrained(
        model_dir, architecture, seed=settings.seed, extra_layer=settings.strategy == "extra_layer", **overrides
    )
    apply_strategy(
        model, settings.strategy, settings.freeze_layers, settings.adapter_size, settings.seed, lora=settings.lora
    )
    counts = parameter_counts(model)
    print(f"{settings.strategy}: {describe_parameter_counts(counts)}")
    return model


def evaluate_saved(
    model: Any,
    model_dir: str | os.PathLike,
    dataset: Any,
    rows: np.ndarray,
    settings: FineTuneSettings,
    buckets: LengthBuckets,
    output_dir: str | os.PathLike,
    record: dict[str, Any],
    pad_token_id: int = 0,
    inputs: dict[str, Any] | None = None,
    **job_options: Any,
) -> tuple[list[Any] | None, ShardedInference]:
    """`sharded_forward` of an `--evaluate` run: the saved model's (from `model_dir`) outputs on `rows` with
    `predictions_run.json` to come in `output_dir`; shards fingerprinted by the model's and the dataset's files and
    `inputs`. `job_options`: resume, timeout, parallel."""
    record = {"model": str(model_dir), "dataset": dataset_location(dataset), **record, "seed": settings.seed}
    stamps = {**input_stamps(model_dir, dataset), **(inputs or {})}
    out = ensure_dir(output_dir)
    return sharded_forward(
        model,
        dataset,
        rows,
        settings,
        buckets,
        out,
        "predictions",
        record,
        pad_token_id,
        "evaluate",
        inputs=stamps,
        **job_options,
    )


def load_saved_model(model_dir: str | os.PathLike, architecture: str) -> tuple[Any, dict[str, Any]]:
    """A saved fine-tuned model ready for inference and its task description (`task.json`); a model without one
    (e.g. converted from Hugging Face) is loaded as `architecture`, with an empty description."""
    task = read_task(model_dir)
    if task is not None:
        return load_task_model(model_dir), task

    return from_pretrained(model_dir, architecture), {}


def task_description(kind: str, settings: FineTuneSettings, **fields: Any) -> dict[str, Any]:
    """What `task.json` records about a saved task model."""
    return {
        "kind": kind,
        "strategy": settings.strategy,
        "freeze_layers": settings.freeze_layers,
        "adapter_size": settings.adapter_size,
        **(
            {
                "lora_r": settings.lora_r,
                "lora_alpha": settings.lora_alpha,
                "lora_dropout": settings.lora_dropout,
                "lora_target_modules": list(settings.lora_target_modules),
            }
            if settings.strategy == "lora"
            else {}
        ),
        **fields,
    }
