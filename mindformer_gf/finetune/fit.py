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

import contextvars
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from mindformer_gf.finetune.lora import DEFAULT_TARGET_MODULES, LoraSettings
from mindformer_gf.finetune.metrics import selection_score
from mindformer_gf.finetune.task_model import STRATEGIES
from mindformer_gf.io import matplotlib_pyplot, save_figure, write_csv
from mindformer_gf.train import Trainer, TrainSettings
from mindformer_gf.train.checkpoint import list_checkpoints, load_checkpoint
from mindformer_gf.train.distributed import broadcast_weights
from mindformer_gf.train.schedule import SCHEDULES
from mindformer_gf.train.settings import accepts_old_setting_names, upgrade_setting_names

logger = logging.getLogger("mindformer_gf.tasks")


@accepts_old_setting_names
@dataclass
class FineTuneSettings:
    """Training options of the tasks, named as the pretraining's (`TrainSettings`) and transformers'
    `TrainingArguments`. Defaults are the reference's cell classifier: batch 12, lr 5e-5, linear schedule with 500
    warmup steps, weight decay 0.001, 10 epochs."""

    # old names accepted for one release (with a DeprecationWarning) whose values change with the name
    CONVERTED_SETTINGS: ClassVar[dict[str, str]] = {"lr_end": "min_lr_ratio", "keep_checkpoints": "save_total_limit"}

    num_train_epochs: float = 10.0
    per_device_train_batch_size: int = 12
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 500
    # when set, warmup is this fraction of all steps (overrides warmup_steps; handy for small data)
    warmup_ratio: float | None = None
    # "polynomial" decays as (1 - progress)^lr_power (transformers' get_polynomial_decay_schedule_with_warmup);
    # "cosine_with_restarts" runs lr_num_cycles cosines (transformers' defaults)
    lr_power: float = 1.0
    lr_num_cycles: int = 1
    # the floor of the decay as a fraction of the peak; None: transformers' lr_end of 1e-7 for "polynomial", else 0
    min_lr_ratio: float | None = None
    weight_decay: float = 0.001
    max_grad_norm: float = 1.0
    # micro-batches whose gradients are summed before one update (a step sees batch x this x ranks cells)
    gradient_accumulation_steps: int = 1
    seed: int = 0
    # seed of the cell selection and splits when it must differ from `seed` (a hyperparameter search varies `seed`
    # per trial but keeps every trial on the same split); None: `seed`
    split_seed: int | None = None
    # what trains: "finetune" (with freeze_layers), "adapters", "extra_layer", "lora" (see
    # mindformer_gf.finetune.task_model)
    strategy: str = "finetune"
    freeze_layers: int = 0
    adapter_size: int = 64
    # strategy "lora": rank, alpha (the update is scaled by alpha / r), dropout on the adapters' input, and the
    # projections adapted (peft's suffix names); the reference's values by default
    lora_r: int = 64
    lora_alpha: float = 128.0
    lora_dropout: float = 0.1
    lora_target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    # padded widths per run (one graph compilation each) and cells per inference batch
    num_buckets: int = 4
    forward_batch_size: int = 32
    evals_per_epoch: int = 1
    # checkpoints left in the output after the run (the chosen one is loaded into the model either way): 0 none,
    # N the newest N, None all
    save_total_limit: int | None = 0
    progress_bar: bool = True
    device: str = "auto"
    precision: str = "auto"

    @staticmethod
    def upgrade_value(old: str, value: Any, values: dict[str, Any]) -> Any:
        """The value of an old setting in its new name's terms: `lr_end` (the absolute end of the polynomial
        schedule, ignored by the others) as a fraction of the peak; `keep_checkpoints` as a count (all or none)."""
        if old == "keep_checkpoints":
            return None if value else 0
        if values.get("lr_scheduler_type", "linear") != "polynomial":
            return None  # lr_end only ever applied to the polynomial schedule
        return min(1.0, float(value) / float(values.get("learning_rate", 5e-5)))

    def validate(self) -> None:
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type {self.lr_scheduler_type!r} is not one of {SCHEDULES}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {STRATEGIES}")
        if not self.num_train_epochs > 0 or self.per_device_train_batch_size < 1 or self.forward_batch_size < 1:
            raise ValueError("num_train_epochs must be > 0, per_device_train_batch_size and forward_batch_size >= 1")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not self.lr_power > 0 or self.lr_num_cycles < 1:
            raise ValueError(
                f"lr_power must be > 0 and lr_num_cycles >= 1, got {self.lr_power} and {self.lr_num_cycles}"
            )
        if self.min_lr_ratio is not None and not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.save_total_limit is not None and self.save_total_limit < 0:
            raise ValueError(f"save_total_limit must be >= 0 (or None: all), got {self.save_total_limit}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.freeze_layers < 0 or self.adapter_size < 1 or self.evals_per_epoch < 1:
            raise ValueError("freeze_layers must be >= 0, adapter_size and evals_per_epoch >= 1")
        self.lora.validate()

    def __post_init__(self) -> None:
        # a list (JSON, a search space, the CLI) or one name are kept as the tuple the dataclass declares
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = tuple(t for t in self.lora_target_modules.split(",") if t)
        else:
            self.lora_target_modules = tuple(self.lora_target_modules)

    @property
    def lora(self) -> LoraSettings:
        """The settings of strategy "lora"."""
        return LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_target_modules)

    @property
    def data_seed(self) -> int:
        """The seed of cell selection and splits."""
        return self.seed if self.split_seed is None else self.split_seed

    def replace(self, **changes: Any) -> FineTuneSettings:
        changes = upgrade_setting_names(FineTuneSettings, changes, stacklevel=3, context=asdict(self))
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fine-tuning settings {unknown}; known: {sorted(known)}")
        return FineTuneSettings(**{**asdict(self), **changes})


# transformers' default end of the polynomial schedule (get_polynomial_decay_schedule_with_warmup's lr_end)
POLYNOMIAL_LR_END = 1e-7


def schedule_for_trainer(settings: FineTuneSettings) -> dict[str, Any]:
    """The training loop's schedule settings (TrainSettings fields)."""
    min_ratio = settings.min_lr_ratio
    if min_ratio is None:
        polynomial = settings.lr_scheduler_type == "polynomial"
        min_ratio = min(1.0, POLYNOMIAL_LR_END / settings.learning_rate) if polynomial else 0.0
    return {
        "lr_scheduler_type": settings.lr_scheduler_type,
        "min_lr_ratio": min_ratio,
        "lr_power": settings.lr_power,
        "lr_num_cycles": settings.lr_num_cycles,
    }


# The Optuna trial of the search running in this context (None outside a search): `fit` reports each validation score
# to it (mindformer_gf.finetune.search sets it around a trial).
ACTIVE_TRIAL: contextvars.ContextVar[Any] = contextvars.ContextVar("mindformer_gf_search_trial", default=None)


def report_intermediate(score: float) -> None:
    """Report a validation score during a trial (called by `fit` after each evaluation); raises
    optuna.TrialPruned when the pruner stops the trial. Does nothing outside a search."""
    state = ACTIVE_TRIAL.get()
    if state is None:
        return
    trial, steps = state
    trial.report(float(score), steps[0])
    steps[0] += 1
    if trial.should_prune():
        # imported here: optuna is optional, needed only by a hyperparameter search (which is running)
        import optuna

        raise optuna.TrialPruned(f"validation score {score:.4g} at report {steps[0] - 1}")


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

    settings.validate()
    output_dir = Path(output_dir)
    steps_per_epoch = source.steps_per_epoch
    total = max(1, math.ceil(settings.num_train_epochs * steps_per_epoch))
    interval = max(1, steps_per_epoch // settings.evals_per_epoch)
    warmup = settings.warmup_steps if settings.warmup_ratio is None else int(settings.warmup_ratio * total)
    if warmup >= total:
        logger.warning(
            "warmup of %d steps covers the whole run of %d steps: the learning rate never peaks", warmup, total
        )
    train_settings = TrainSettings(
        output_dir=str(output_dir),
        max_steps=total,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
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
        save_total_limit=total // interval + 2,
        progress_bar=settings.progress_bar,
    )
    config = {**asdict(train_settings), "fine_tuning": asdict(settings), **(run_config or {})}
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"path": None, "metrics": None, "score": -math.inf}

    def score_checkpoint(step: int, path: Path | None) -> None:
        """Validation metrics of the weights just saved, while training runs (so that a hyperparameter search can
        stop a bad trial early: `report_intermediate`). Every rank of a data-parallel run predicts its share of the
        validation cells; rank 0 alone scores (the others' `evaluate()` is None)."""
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
    if settings.save_total_limit == 0:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    elif settings.save_total_limit is not None:
        for old in list_checkpoints(output_dir / "checkpoints")[: -settings.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
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
