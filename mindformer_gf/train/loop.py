"""The generic training loop: a model, an objective over batch dicts, a step source and settings -> a trained model,
a metrics CSV, a loss curve and checkpoints.

    trainer = Trainer(model, MaskedLMObjective(model), source, settings)
    result = trainer.train(resume="auto")      # "auto": continue from the newest checkpoint if there is one

`source` is any object with `steps_per_epoch`, `batches(step, rank, world_size)`, `step_tokens(step)`,
`fingerprint()` and optionally `items_per_batch` (see `mindformer_gf.data.batches`); `objective` is an
`mindformer_gf.train.step.Objective` returning (loss sum, item count, *metric sums). Fine-tuning uses the same
loop with `ClassificationObjective` and a `PlannedBatches(plan, LabelledCollator(...))` source.

Per step: every micro-batch of this rank goes through `MicroStep` (compiled once per batch shape, or once in all
with `dynamic_shapes`), then `ApplyStep` (compiled once) reduces over ranks, normalises, checks finiteness, clips
and updates. Exactness of `resume`: the data plan, MLM masks and learning rate are functions of the step number,
and every dropout mask is a function of the step seed fed with each micro-batch (`reference.dropout.step_seed` of
the run's seed, the step and the micro-batch's index in the step over all ranks), never of a generator inside the
graph; the checkpoint holds weights, AdamW moments and step count, loss-scale state and host RNG states. So a
resumed run repeats the uninterrupted one bit for bit (with the fused CPU backend; the composed backend's dropout is
MindSpore's own, whose generator cannot be saved).

SIGTERM (and SIGINT) finish the current step, write a checkpoint and return with `stopped_by_signal=True`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from mindformer_gf.ops import cpu as cpu_kernels
from mindformer_gf.reference.dropout import step_seed
from mindformer_gf.train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from mindformer_gf.train.distributed import ParallelContext, init_distributed
from mindformer_gf.train.optim import build_adamw
from mindformer_gf.train.precision import DynamicLossScale, apply_precision, resolve_precision
from mindformer_gf.train.run_log import MetricsLog, plot_loss_curve
from mindformer_gf.train.schedule import learning_rate
from mindformer_gf.train.settings import TrainSettings, resolve_dynamic_shapes, save_settings
from mindformer_gf.train.step import ApplyStep, MicroStep, Objective, make_buffers

logger = logging.getLogger("mindformer_gf.train")


@dataclass
class TrainResult:
    steps: int
    skipped_steps: int
    final_loss: float
    output_dir: Path
    checkpoint: Path | None
    # distinct batch shapes fed to the micro-step graph, and MindSpore's own count of compiled graphs
    batch_shapes: int
    compiled_graphs: int
    stopped_by_signal: bool = False
    losses: list[float] = field(default_factory=list)
    # the last evaluation on the eval source, when one was given: {"loss", "accuracy", "items"}
    evaluation: dict[str, float] | None = None
    # wall seconds of each step run, and whether it compiled a new graph (benchmarks time the others)
    step_seconds: list[float] = field(default_factory=list)
    step_compiled: list[bool] = field(default_factory=list)


class EvalStep(nn.Cell):
    """The objective's sums on one batch, without gradients (compiled once per batch shape)."""

    def __init__(self, objective: Objective) -> None:
        super().__init__(auto_prefix=False)
        self.objective = objective

    def construct(self, *batch: Tensor) -> Tensor:
        # inference mode: dropout is off, the seed is not read
        return ops.stack(self.objective(ops.zeros((1,), ms.int64), *batch))


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Trainer:
    def __init__(
        self,
        model,
        objective: Objective,
        source,
        settings: TrainSettings,
        parallel: ParallelContext | None = None,
        run_config: dict[str, Any] | None = None,
        eval_source=None,
        on_checkpoint: Callable[[int, Path | None], None] | None = None,
    ) -> None:
        settings.validate()
        self.eval_source = eval_source
        # called with (step, checkpoint directory) after each checkpoint, e.g. to evaluate it while training runs;
        # on every rank of a data-parallel run, with None for the directory but on rank 0, which alone saves
        self.on_checkpoint = on_checkpoint
        self.model = model
        self.objective = objective
        self.source = source
        self.settings = settings
        self.parallel = parallel or init_distributed()
        self.run_config = run_config if run_config is not None else asdict(settings)
        self.output_dir = Path(settings.output_dir)
        self.checkpoints_dir = self.output_dir / "checkpoints"
        self.device = ms.get_context("device_target")
        self.precision = resolve_precision(settings.precision, self.device)
        self.dynamic_shapes = resolve_dynamic_shapes(settings.dynamic_shapes, self.device)
        per_step = settings.gradient_accumulation_steps * self.parallel.world_size
        group_size = getattr(getattr(source, "plan", None), "group_size", per_step)
        if group_size != per_step:
            raise ValueError(
                f"the step source plans {group_size} micro-batches per step but {self.parallel.world_size} rank(s) x "
                f"{settings.gradient_accumulation_steps} accumulation steps = {per_step}: build the plan with "
                f"group_size={per_step}"
            )
        if settings.max_steps > 0:
            self.total_steps = settings.max_steps
        else:
            self.total_steps = max(1, math.ceil(settings.num_train_epochs * source.steps_per_epoch))
        apply_precision(model, self.precision)
        self.optimizer = build_adamw(
            model.named_parameters(),
            settings.weight_decay,
            (settings.adam_beta1, settings.adam_beta2),
            settings.adam_epsilon,
        )
        params = list(self.optimizer.params)
        num_stats = 2 + len(objective.metric_names)
        grad_buffer, stats_buffer = make_buffers(params, num_stats)
        self.micro_step = MicroStep(objective, params, grad_buffer, stats_buffer)
        self.apply_step = ApplyStep(
            self.optimizer,
            grad_buffer,
            stats_buffer,
            settings.max_grad_norm,
            self.parallel.distributed,
            fused_update=self.device == "CPU" and cpu_kernels.is_available(),
        )
        self.loss_scale = DynamicLossScale(
            settings.loss_scale_init, settings.loss_scale_window, enabled=self.precision == "fp16"
        )
        # Gradients of a sum over up to this many items: dividing by it keeps buffers near the scale of a mean.
        self.sum_scale = 1.0 / float(getattr(source, "items_per_batch", 1) or 1)
        self.skipped_steps = 0
        self.batch_shapes: set[tuple] = set()
        self._eval_step: EvalStep | None = None
        self._dynamic_declared = False

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def _trainer_state(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "total_steps": self.total_steps,
            "skipped_steps": self.skipped_steps,
            "loss_scale": self.loss_scale.state(),
            "data_plan": self.source.fingerprint(),
            "micro_batches_per_step": self.settings.gradient_accumulation_steps * self.parallel.world_size,
            "rng": capture_rng_state(),
        }

    def save(self, step: int) -> Path | None:
        """Checkpoint after `step` completed steps (main rank only: all ranks hold the same weights)."""
        if not self.parallel.is_main:
            return None
        save_settings(self.settings, self.output_dir / "train_config.json")
        return save_checkpoint(
            self.checkpoints_dir,
            step,
            self.model,
            self.optimizer.state_arrays(),
            self._trainer_state(step),
            self.run_config,
            self.settings.save_total_limit,
        )

    def _resume(self, resume: str | bool | None) -> int:
        if not resume:
            return 0
        if resume in (True, "auto"):
            path = latest_checkpoint(self.checkpoints_dir)
            if path is None:
                if resume == "auto":
                    return 0
                raise FileNotFoundError(f"--resume: no checkpoint under {self.checkpoints_dir}")
        else:
            path = Path(resume)
        weights, optimizer_state, state = load_checkpoint(path)
        if state["data_plan"] != self.source.fingerprint():
            raise ValueError(
                f"{path} was written for another data plan ({state['data_plan']}) than this run's "
                f"({self.source.fingerprint()}): resume with the same dataset, buckets, batch size, seed and "
                "ranks x accumulation steps"
            )
        self.model.load_weights(weights)
        self.optimizer.load_state_arrays(optimizer_state)
        self.loss_scale.load_state(state["loss_scale"])
        self.skipped_steps = int(state["skipped_steps"])
        restore_rng_state(state["rng"])
        logger.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])

    # ---- the loop -------------------------------------------------------------------------------------------
    def _declare_dynamic_inputs(self, cell: nn.Cell, batch: dict[str, np.ndarray], leading: tuple = ()) -> None:
        """One graph for every batch shape: each batch array becomes an input of unknown dimensions."""
        specs = [
            Tensor(shape=[None] * batch[name].ndim, dtype=ms.from_numpy(batch[name][:0]).dtype)
            for name in self.objective.input_names
        ]
        cell.set_inputs(*leading, *specs)

    def _run_step(self, step: int) -> tuple[np.ndarray, float, bool, bool]:
        batches = self.source.batches(step, self.parallel.rank, self.parallel.world_size)
        scale = self.loss_scale.scale * self.sum_scale
        scale_tensor = Tensor(scale, ms.float32)
        graphs_before = len(self.micro_step.compile_cache) + len(self.apply_step.compile_cache)
        for micro, batch in enumerate(batches):
            if self.dynamic_shapes and not self._dynamic_declared:
                leading = (Tensor(shape=[], dtype=ms.float32), Tensor(shape=[1], dtype=ms.int64))
                self._declare_dynamic_inputs(self.micro_step, batch, leading)
                self._dynamic_declared = True
            inputs = [Tensor(batch[name]) for name in self.objective.input_names]
            self.batch_shapes.add(tuple((name, batch[name].shape) for name in self.objective.input_names))
            # rank r's micro-batches are the r-th contiguous share of the step's: index them over all ranks
            seed = step_seed(self.settings.seed, step, self.parallel.rank * len(batches) + micro)
            self.micro_step(scale_tensor, Tensor([seed], ms.int64), *inputs)
        lr = learning_rate(
            step,
            self.settings.learning_rate,
            self.settings.warmup_steps,
            self.total_steps,
            self.settings.lr_scheduler_type,
            self.settings.min_lr_ratio,
            self.settings.lr_power,
            self.settings.lr_num_cycles,
        )
        stats, norm, applied = self.apply_step(Tensor(lr, ms.float32), Tensor(1.0 / scale, ms.float32))
        applied = bool(applied.asnumpy())
        self.loss_scale.update(applied)
        if not applied:
            self.skipped_steps += 1
        compiled = len(self.micro_step.compile_cache) + len(self.apply_step.compile_cache) > graphs_before
        return stats.asnumpy(), float(norm.asnumpy()), applied, compiled

    def train(self, resume: str | bool | None = None) -> TrainResult:
        start = self._resume(resume)
        main = self.parallel.is_main
        metrics = MetricsLog(self.output_dir / "metrics.csv", resume_step=start) if main else None
        if main:
            save_settings(self.settings, self.output_dir / "train_config.json")
        self.model.set_train(True)
        bar = None
        if main and self.settings.progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
        window = np.zeros(2 + len(self.objective.metric_names))
        window_time = window_cells = window_tokens = window_real = window_padded = 0.0
        losses: list[float] = []
        step_seconds: list[float] = []
        step_compiled: list[bool] = []
        last_checkpoint: Path | None = None
        evaluation: dict[str, float] | None = None
        started = time.perf_counter()
        step = start
        with _StopFlag() as stop:
            while step < self.total_steps and stop.raised is None:
                tick = time.perf_counter()
                stats, norm, applied, compiled = self._run_step(step)
                elapsed = time.perf_counter() - tick
                step_seconds.append(elapsed)
                step_compiled.append(compiled)
                step += 1
                cells, tokens, padded = self.source.step_tokens(step - 1)
                window += stats
                window_real += tokens
                window_padded += padded
                if not compiled:
                    window_time += elapsed
                    window_cells += cells
                    window_tokens += tokens
                losses.append(float(stats[0] / max(stats[1], 1.0)))
                if bar is not None:
                    bar.update(1)
                if step % self.settings.log_every == 0 or step == self.total_steps:
                    row = self._metrics_row(step, window, norm, window_time, window_cells, window_tokens)
                    row["padding_waste"] = 1.0 - window_real / window_padded if window_padded > 0 else 0.0
                    row["elapsed_s"] = round(time.perf_counter() - started, 3)
                    if metrics is not None:
                        metrics.append(row)
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{row['loss']:.3f}",
                            acc=f"{row['accuracy']:.3f}",
                            lr=f"{row['lr']:.2e}",
                            cells_s=f"{row['cells_per_s']:.2f}",
                            pad=f"{row['padding_waste']:.2f}",
                        )
                    logger.info(
                        "step %d loss %.4f acc %.4f lr %.3g cells/s %.2f tokens/s %.0f padding %.3f skipped %d",
                        step,
                        row["loss"],
                        row["accuracy"],
                        row["lr"],
                        row["cells_per_s"],
                        row["tokens_per_s"],
                        row["padding_waste"],
                        self.skipped_steps,
                    )
                    window[:] = 0.0
                    window_time = window_cells = window_tokens = window_real = window_padded = 0.0
                if self.eval_source is not None and (
                    step == self.total_steps or (self.settings.eval_every and step % self.settings.eval_every == 0)
                ):
                    evaluation = self.evaluate(self.eval_source)
                    if metrics is not None:
                        metrics.append(
                            {"step": step, "eval_loss": evaluation["loss"], "eval_accuracy": evaluation["accuracy"]}
                        )
                    logger.info(
                        "step %d eval loss %.4f accuracy %.4f", step, evaluation["loss"], evaluation["accuracy"]
                    )
                if step % self.settings.save_every == 0 or step == self.total_steps or stop.raised is not None:
                    saved = self.save(step)
                    last_checkpoint = saved or last_checkpoint
                    if self.on_checkpoint is not None:
                        # on every rank (None there but on rank 0): an evaluation may shard over the ranks
                        self.on_checkpoint(step, saved)
                        self.model.set_train(True)
        if bar is not None:
            bar.close()
        if stop.raised is not None:
            logger.warning("stopped by signal %d after step %d; checkpoint %s", stop.raised, step, last_checkpoint)
        compiled_graphs = len(self.micro_step.compile_cache) + len(self.apply_step.compile_cache)
        logger.info(
            "graph compilations: %d (micro-step: %d batch shapes; apply: %d)",
            compiled_graphs,
            len(self.batch_shapes),
            len(self.apply_step.compile_cache),
        )
        if main and (self.output_dir / "metrics.csv").is_file():
            try:
                plot_loss_curve(self.output_dir / "metrics.csv", self.output_dir / "loss_curve.png")
            except (ValueError, KeyError) as err:
                logger.warning("no loss curve: %s", err)
        return TrainResult(
            steps=step,
            skipped_steps=self.skipped_steps,
            final_loss=losses[-1] if losses else float("nan"),
            output_dir=self.output_dir,
            checkpoint=last_checkpoint,
            batch_shapes=len(self.batch_shapes),
            compiled_graphs=compiled_graphs,
            stopped_by_signal=stop.raised is not None,
            losses=losses,
            evaluation=evaluation,
            step_seconds=step_seconds,
            step_compiled=step_compiled,
        )

    def evaluate(self, source) -> dict[str, float]:
        """Loss and accuracy of the objective over one pass of `source` (every micro-batch of every step of its
        first epoch), in inference mode (no dropout); every rank evaluates all of it."""
        declare = self._eval_step is None and self.dynamic_shapes
        if self._eval_step is None:
            self._eval_step = EvalStep(self.objective)
        self.model.set_train(False)
        totals = np.zeros(2 + len(self.objective.metric_names))
        try:
            for step in range(source.steps_per_epoch):
                for batch in source.batches(step, 0, 1):
                    if declare:
                        self._declare_dynamic_inputs(self._eval_step, batch)
                        declare = False
                    totals += self._eval_step(*[Tensor(batch[name]) for name in self.objective.input_names]).asnumpy()
        finally:
            self.model.set_train(True)
        items = max(totals[1], 1.0)
        names = self.objective.metric_names
        correct = totals[2 + names.index("correct")] if "correct" in names else float("nan")
        return {"loss": float(totals[0] / items), "accuracy": float(correct / items), "items": float(totals[1])}

    def _metrics_row(
        self,
        step: int,
        window: np.ndarray,
        norm: float,
        seconds: float,
        cells: float,
        tokens: float,
    ) -> dict[str, float]:
        items = max(window[1], 1.0)
        names = self.objective.metric_names
        correct = window[2 + names.index("correct")] if "correct" in names else float("nan")
        return {
            "step": step,
            "epoch": round(step / self.source.steps_per_epoch, 4),
            "loss": float(window[0] / items),
            "accuracy": float(correct / items),
            "lr": learning_rate(
                step - 1,
                self.settings.learning_rate,
                self.settings.warmup_steps,
                self.total_steps,
                self.settings.lr_scheduler_type,
                self.settings.min_lr_ratio,
                self.settings.lr_power,
                self.settings.lr_num_cycles,
            ),
            "grad_norm": norm,
            "loss_scale": self.loss_scale.scale,
            "skipped_steps": self.skipped_steps,
            "cells_per_s": cells / seconds if seconds > 0 else float("nan"),
            "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
        }
