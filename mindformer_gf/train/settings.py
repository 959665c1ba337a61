"""Training settings: dataclasses read from a YAML or JSON file, overridden from the command line, saved beside the
checkpoints (`train_config.json`) so a run can be resumed and audited.

`TrainSettings` is what the generic loop needs (optimiser, schedule, precision, checkpoints, logging);
`PretrainSettings` adds the corpus, the model and masking. Defaults are the reference's V1 pretraining settings
(AdamW, lr 1e-3, weight decay 0.001, linear warmup 10,000 steps then linear decay, batch 12 per device).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mindformer_gf.io import write_json
from mindformer_gf.train.schedule import SCHEDULES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainSettings:
    output_dir: str = "gf-train"
    # length of the run: max_steps when > 0, else num_epochs over the corpus
    max_steps: int = 0
    num_epochs: float = 3.0
    batch_size: int = 12
    gradient_accumulation: int = 1
    learning_rate: float = 1e-3
    lr_schedule: str = "linear"
    warmup_steps: int = 10_000
    min_lr_ratio: float = 0.0
    # "polynomial": the power of the decay; "cosine_with_restarts": the number of cosines (transformers' defaults)
    lr_power: float = 1.0
    lr_num_cycles: int = 1
    weight_decay: float = 0.001
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    # "auto": MindSpore's default target (Ascend when present), else "CPU" or "Ascend"
    device: str = "auto"
    # one graph for all batch shapes (inputs of unknown dimensions) instead of one per length bucket: one compilation
    # and the memory of the widest bucket only (MindSpore on the CPU keeps every compiled graph's memory); the
    # model must compile with dynamic shapes
    dynamic_shapes: bool = False
    # "auto": fp32 on CPU, bf16 on Ascend
    precision: str = "auto"
    loss_scale_init: float = 2.0**16
    loss_scale_window: int = 2000
    seed: int = 0
    log_every: int = 10
    save_every: int = 1000
    # evaluate on the eval data every this many steps (0: only at the end); needs eval data
    eval_every: int = 0
    keep_last: int = 3
    progress_bar: bool = True

    def validate(self) -> None:
        positive = ("batch_size", "gradient_accumulation", "log_every", "save_every", "keep_last", "loss_scale_window")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"training setting {name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0 or self.warmup_steps < 0 or self.eval_every < 0:
            raise ValueError("max_steps, warmup_steps and eval_every must be >= 0")
        if self.max_steps == 0 and not self.num_epochs > 0:
            raise ValueError("set max_steps > 0 or num_epochs > 0: the run has no length")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} is not one of {SCHEDULES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if not self.learning_rate > 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("learning_rate must be > 0, weight_decay >= 0 and min_lr_ratio in [0, 1]")
        if not self.lr_power > 0 or self.lr_num_cycles < 1:
            raise ValueError(f"lr_power must be > 0 and lr_num_cycles >= 1, got {self.lr_power}, {self.lr_num_cycles}")


@dataclass
class PretrainSettings(TrainSettings):
    dataset: str = ""
    # a preset name (Geneformer-V1-10M, ...) to train from scratch, or a model directory to continue from
    model: str = "Geneformer-V1-10M"
    # config.json fields overriding the model's (e.g. {"num_hidden_layers": 2} for a small test model)
    model_overrides: dict = dataclasses.field(default_factory=dict)
    attention_impl: str = "auto"
    # with dynamic_shapes, each batch is padded to its own longest cell (less padding than the reference's length
    # grouping; see mindformer_gf.data.sampler) unless this is set: then to its bucket's width, as a static run
    pad_to_bucket_width: bool = False
    mask_probability: float = 0.15
    num_buckets: int = 8
    bucket_granularity: int = 64
    # special tokens {"<pad>": 0, "<mask>": 1, ...}; empty = read from the dataset's dictionary record
    special_tokens: dict = dataclasses.field(default_factory=dict)
    # at most this many cells from the corpus (0 = all), for quick trials
    max_cells: int = 0
    # held-out cells to evaluate on: a dataset directory, or a fraction of the corpus held out (0 = none)
    eval_dataset: str = ""
    eval_fraction: float = 0.0

    def validate(self) -> None:
        super().validate()
        if not self.dataset:
            raise ValueError("no dataset: set `dataset` (a directory written by `gf tokenize`)")
        if not 0 < self.mask_probability < 1:
            raise ValueError(f"mask_probability must be in (0, 1), got {self.mask_probability}")
        if self.num_buckets < 1 or self.bucket_granularity < 1:
            raise ValueError("num_buckets and bucket_granularity must be >= 1")
        if not 0.0 <= self.eval_fraction < 1.0 or (self.eval_fraction and self.eval_dataset):
            raise ValueError("eval_fraction must be in [0, 1), and not combined with eval_dataset")


def _coerce(value: Any, annotation: type, name: str) -> Any:
    """A value from YAML/JSON or a `key=value` override, converted to the field's type."""
    kind = annotation
    if isinstance(value, str) and kind in (int, float):
        try:
            value = kind(value)
        except ValueError:
            raise ValueError(f"setting {name} must be of type {kind.__name__}, got {value!r}") from None
    elif isinstance(value, str) and kind is not str:
        import yaml

        value = yaml.safe_load(value)
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"setting {name} must be true or false, got {value!r}")
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind in (int, float, str, dict) and not isinstance(value, kind):
        raise ValueError(f"setting {name} must be of type {kind.__name__}, got {value!r}")
    return value


def settings_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """An instance of the settings class `cls` from a mapping; unknown keys are errors with a suggestion."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown training setting {key!r}{hint}; known: {sorted(known)}")
        kwargs[key] = _coerce(value, hints[key], key)
    settings = cls(**kwargs)
    settings.validate()
    return settings


def load_settings(
    cls: type, path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> TrainSettings:
    """Settings from a YAML (.yaml/.yml) or JSON file, then `overrides` on top (CLI values win)."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config must be a mapping of setting -> value")
    data.update(overrides or {})
    return settings_from_dict(cls, data)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["learning_rate=1e-4", "max_steps=10"]` -> {"learning_rate": "1e-4", ...} (typed later per field)."""
    result = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not of the form key=value")
        key, value = pair.split("=", 1)
        result[key.strip()] = value
    return result


def save_settings(settings: TrainSettings, path: str | os.PathLike) -> Path:
    """Write the settings as JSON atomically (temporary file in the same directory, then rename)."""
    return write_json(path, dataclasses.asdict(settings), sort_keys=True)
