"""Fine-tuning runs for every task, on the package's generic training loop (`mindformer_gf.train.Trainer`).

`fit(model, objective, source, settings, output_dir, evaluate)` trains with the reference's options (epochs, batch
size, learning rate, transformers' schedules (`lr_scheduler_type`) with warmup, weight decay, seed), writes a
checkpoint at every evaluation point (once per epoch by default), scores each checkpoint with `evaluate()`
(validation metrics) as training goes, and loads the best one at the end (macro-F1, or -MSE for regression).
Under msrun (data parallel) every rank predicts a share of the validation cells, rank 0 scores and chooses, and
every rank ends with the chosen weights.
Outputs under `output_dir`:
`metrics.csv` (the loop's: training loss, accuracy, learning rate, cells/s, ...), `eval_history.csv` (validation
metrics per checkpoint), `loss_curve.png` (training loss and the validation score), `train_config.json`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mindformer_gf.io import matplotlib_pyplot, save_figure, write_csv
from mindformer_gf.tasks.metrics import selection_score
from mindformer_gf.train.schedule import SCHEDULES

logger = logging.getLogger("mindformer_gf.tasks")


@dataclass
class FineTuneSettings:
    """Training options of the tasks. Defaults are the reference's cell classifier: batch 12, lr 5e-5, linear
    schedule with 500 warmup steps, weight decay 0.001, 10 epochs."""

    num_epochs: float = 10.0
    batch_size: int = 12
    learning_rate: float = 5e-5
    lr_schedule: str = "linear"
    warmup_steps: int = 500
    # when set, warmup is this fraction of all steps (overrides warmup_steps; handy for small data)
    warmup_ratio: float | None = None
    # "polynomial" decays as (1 - progress)^power to lr_end (transformers' get_polynomial_decay_schedule_with_warmup);
    # "cosine_with_restarts" runs num_cycles cosines (transformers' defaults)
    polynomial_power: float = 1.0
    lr_end: float = 1e-7
    num_cycles: int = 1
    weight_decay: float = 0.001
    max_grad_norm: float = 1.0
    seed: int = 0
    # seed of the cell selection and splits when it must differ from `seed` (a hyperparameter search varies `seed`
    # per trial but keeps every trial on the same split); None: `seed`
    split_seed: int | None = None
    # what trains: "finetune" (with freeze_layers), "adapters", "extra_layer" (see mindformer_gf.tasks.models)
    strategy: str = "finetune"
    freeze_layers: int = 0
    adapter_size: int = 64
    # padded widths per run (one graph compilation each) and cells per inference batch
    num_buckets: int = 4
    forward_batch_size: int = 32
    evals_per_epoch: int = 1
    keep_checkpoints: bool = False
    progress_bar: bool = True
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> None:
        from mindformer_gf.tasks.models import STRATEGIES

        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} is not one of {SCHEDULES}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {STRATEGIES}")
        if not self.num_epochs > 0 or self.batch_size < 1 or self.forward_batch_size < 1:
            raise ValueError("num_epochs must be > 0, batch_size and forward_batch_size >= 1")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not self.polynomial_power > 0 or self.num_cycles < 1:
            raise ValueError(
                f"polynomial_power must be > 0 and num_cycles >= 1, got {self.polynomial_power} and {self.num_cycles}"
            )
        if self.freeze_layers < 0 or self.adapter_size < 1 or self.evals_per_epoch < 1:
            raise ValueError("freeze_layers must be >= 0, adapter_size and evals_per_epoch >= 1")

    @property
    def data_seed(self) -> int:
        """The seed of cell selection and splits."""
        return self.seed if self.split_seed is None else self.split_seed

    def replace(self, **changes: Any) -> FineTuneSettings:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fine-tuning settings {unknown}; known: {sorted(known)}")
        return FineTuneSettings(**{**asdict(self), **changes})


def schedule_for_trainer(settings: FineTuneSettings) -> dict[str, Any]:
    """The training loop's schedule settings (TrainSettings fields). Polynomial decay ends at lr_end, which the loop
    expresses as a fraction of the peak."""
    min_ratio = min(1.0, settings.lr_end / settings.learning_rate) if settings.lr_schedule == "polynomial" else 0.0
    return {
        "lr_schedule": settings.lr_schedule,
        "min_lr_ratio": min_ratio,
        "lr_power": settings.polynomial_power,
        "lr_num_cycles": settings.num_cycles,
    }


@dataclass
class FitResult:
    best_step: int
    best_metrics: dict[str, Any] | None
    history: list[dict[str, Any]]
    total_steps: int
    steps_per_epoch: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    output_dir: Path | None = None


def fit(
    model: Any,
    objective: Any,
    source: Any,
    settings: FineTuneSettings,
    output_dir: str | os.PathLike,
    evaluate: Callable[[], dict[str, Any]] | None = None,
    run_config: dict[str, Any] | None = None,
) -> FitResult:
    """Train `model` through `objective` on the step source `source`; keep the checkpoint `evaluate()` scores
    best (the last one without `evaluate`). The model holds the chosen weights on return."""
    import time

    from mindformer_gf.train import Trainer, TrainSettings
    from mindformer_gf.train.checkpoint import list_checkpoints, load_checkpoint
    from mindformer_gf.train.distributed import broadcast_weights

    settings.validate()
    output_dir = Path(output_dir)
    steps_per_epoch = source.steps_per_epoch
    total = max(1, math.ceil(settings.num_epochs * steps_per_epoch))
    interval = max(1, steps_per_epoch // settings.evals_per_epoch)
    warmup = settings.warmup_steps if settings.warmup_ratio is None else int(settings.warmup_ratio * total)
    if warmup >= total:
        logger.warning(
            "warmup of %d steps covers the whole run of %d steps: the learning rate never peaks", warmup, total
        )
    train_settings = TrainSettings(
        output_dir=str(output_dir),
        max_steps=total,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=warmup,
        **schedule_for_trainer(settings),
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        device=settings.device,
        precision=settings.precision,
        seed=settings.seed,
        log_every=max(1, min(10, interval)),
        save_every=interval,
        keep_last=total // interval + 2,
        progress_bar=settings.progress_bar,
    )
    config = {**asdict(train_settings), "fine_tuning": asdict(settings), **(run_config or {})}
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"path": None, "metrics": None, "score": -math.inf}

    def score_checkpoint(step: int, path: Path | None) -> None:
        """Validation metrics of the weights just saved, while training runs (so that a hyperparameter search can
        stop a bad trial early: `report_intermediate`). Every rank of a data-parallel run predicts its share of the
        validation cells; rank 0 alone scores (the others' `evaluate()` is None)."""
        from mindformer_gf.tasks.search import report_intermediate

        metrics = evaluate()
        if metrics is None:
            return
        history.append({"step": step, "epoch": round(step / steps_per_epoch, 3), **_scalars(metrics)})
        score = selection_score(metrics)
        logger.info("checkpoint step %d: validation %s", step, _scalars(metrics))
        if score > best["score"]:
            best.update(path=path, metrics=metrics, score=score)
        report_intermediate(score)

    started = time.perf_counter()
    trainer = Trainer(
        model,
        objective,
        source,
        train_settings,
        run_config=config,
        on_checkpoint=score_checkpoint if evaluate is not None else None,
    )
    result = trainer.train()
    if trainer.parallel.is_main:
        checkpoints = list_checkpoints(output_dir / "checkpoints")
        if not checkpoints:
            raise RuntimeError(f"training wrote no checkpoint under {output_dir / 'checkpoints'}")
        best_path, best_metrics = best["path"] or checkpoints[-1], best["metrics"]
        if evaluate is not None:
            write_csv(output_dir / "eval_history.csv", _frame(history))
        weights, _, state = load_checkpoint(best_path)
        model.load_weights(weights)
    # a data-parallel run (msrun): rank 0 chose the checkpoint; every rank takes its weights, so that the passes
    # that follow (the test cells' predictions) shard over the ranks
    broadcast_weights(model)
    model.set_train(False)
    if not trainer.parallel.is_main:
        # rank 0 alone writes the outputs; this rank stays in step with it for the runs that follow
        return FitResult(
            best_step=result.steps,
            best_metrics=None,
            history=[],
            total_steps=result.steps,
            steps_per_epoch=steps_per_epoch,
            final_loss=result.final_loss,
            losses=result.losses,
            output_dir=output_dir,
        )
    if not settings.keep_checkpoints:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    try:
        # replaces the loop's loss_curve.png, whose labels are those of masked-gene modelling
        plot_training_curve(output_dir / "metrics.csv", history, output_dir / "loss_curve")
    except (OSError, ValueError, KeyError) as err:
        logger.warning("no training curve: %s", err)
    return FitResult(
        best_step=int(state["step"]),
        best_metrics=best_metrics,
        history=history,
        total_steps=result.steps,
        steps_per_epoch=steps_per_epoch,
        final_loss=result.final_loss,
        losses=result.losses,
        seconds=time.perf_counter() - started,
        output_dir=output_dir,
    )


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows)


def plot_training_curve(metrics_csv: str | os.PathLike, history: list[dict[str, Any]], stem: str | os.PathLike) -> list:
    """Training loss per logged step and, when there is one, the validation score per checkpoint."""
    import pandas as pd

    plt = matplotlib_pyplot()
    rows = pd.read_csv(metrics_csv)
    figure, loss_axis = plt.subplots(figsize=(6.4, 4.0))
    loss_axis.plot(rows["step"], rows["loss"], color="tab:blue", label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss")
    handles = loss_axis.get_legend_handles_labels()[0]
    if history:
        key = "macro_f1" if "macro_f1" in history[0] else ("r2" if "r2" in history[0] else None)
        if key is not None:
            score_axis = loss_axis.twinx()
            steps = [h["step"] for h in history]
            values = [h[key] for h in history]
            score_axis.plot(steps, values, "o-", color="tab:green", label=f"validation {key.replace('_', '-')}")
            score_axis.set_ylabel(f"validation {key.replace('_', '-')}")
            handles += score_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles=handles, loc="center right", fontsize=8)
    loss_axis.set_title("fine-tuning")
    return save_figure(figure, stem, formats=("png",))
