"""Training settings: dataclasses read from a YAML or JSON file, overridden from the command line, saved beside the
checkpoints (`train_config.json`) so a run can be resumed and audited.

`TrainSettings` is what the generic loop needs (optimiser, schedule, precision, checkpoints, logging);
`PretrainSettings` adds the corpus, the model and masking. Fine-tuning (`FineTuneSettings`) uses the same names for
the same knobs: transformers' `TrainingArguments` names where one exists (`num_train_epochs`, `lr_scheduler_type`,
`warmup_steps`, `weight_decay`, `gradient_accumulation_steps`, `save_total_limit`, ...), else ours (`lr_power`,
`lr_num_cycles`, `min_lr_ratio`). The names of earlier releases (`RENAMED_SETTINGS`) still work for one release, with
a DeprecationWarning. Defaults are the reference's V1 pretraining settings
(AdamW, lr 1e-3, weight decay 0.001, linear warmup 10,000 steps then linear decay, batch 12 per device).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import typing
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mindformer_gf.io import write_json
from mindformer_gf.train.schedule import SCHEDULES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# old setting name -> the name it has now (one vocabulary for pretraining and fine-tuning, transformers' where it
# has one); the old names are accepted, with a DeprecationWarning, for one release
RENAMED_SETTINGS = {
    "num_epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "lr_schedule": "lr_scheduler_type",
    "gradient_accumulation": "gradient_accumulation_steps",
    "keep_last": "save_total_limit",
    "polynomial_power": "lr_power",
    "num_cycles": "lr_num_cycles",
}


def _warn_renamed(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(
        f"the setting {old!r} is now called {new!r} (transformers' TrainingArguments name where it has one); the old "
        "name still works in this release only",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def upgrade_setting_names(
    cls: type, values: dict[str, Any], stacklevel: int = 4, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`values` with the old names of `cls`'s settings replaced by the new ones (a DeprecationWarning for each),
    and their values converted where the meaning changed with the name (`cls.upgrade_value`, which sees the other
    settings: `context` overridden by `values`)."""
    known = {f.name for f in fields(cls)}
    converted = getattr(cls, "CONVERTED_SETTINGS", {})
    upgraded = dict(values)
    # plain renames first: a converted value may depend on a renamed setting (lr_end on lr_schedule)
    for table in (RENAMED_SETTINGS, converted):
        for old in [key for key in upgraded if key not in known and key in table]:
            new = table[old]
            if new not in known:
                continue
            if new in upgraded:
                raise ValueError(
                    f"settings {old!r} and {new!r} are the same knob (old and new name): give only {new!r}"
                )
            _warn_renamed(old, new, stacklevel)
            value = upgraded.pop(old)
            upgraded[new] = (
                cls.upgrade_value(old, value, {**(context or {}), **upgraded}) if table is converted else value
            )
    return upgraded


def accepts_old_setting_names(cls: type) -> type:
    """Class decorator for a settings dataclass: its constructor takes the old names too (see RENAMED_SETTINGS),
    and reading an old name as an attribute gives the new one's value; both with a DeprecationWarning."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **upgrade_setting_names(type(self), kwargs))

    def __getattr__(self: Any, name: str) -> Any:
        new = RENAMED_SETTINGS.get(name)
        if new is None or new not in {f.name for f in fields(self)}:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        _warn_renamed(name, new, 2)
        return getattr(self, new)

    cls.__init__ = __init__
    cls.__getattr__ = __getattr__
    return cls


@accepts_old_setting_names
@dataclass
class TrainSettings:
    output_dir: str = "gf-train"
    # length of the run: max_steps when > 0, else num_train_epochs over the corpus
    max_steps: int = 0
    num_train_epochs: float = 3.0
    # cells per micro-batch on each device
    per_device_train_batch_size: int = 12
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "linear"
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
    # model must compile with dynamic shapes. "auto": dynamic on the CPU, static on Ascend (`resolve_dynamic_shapes`)
    dynamic_shapes: bool | str = False
    # "auto": fp32 on CPU, bf16 on Ascend
    precision: str = "auto"
    loss_scale_init: float = 2.0**16
    loss_scale_window: int = 2000
    seed: int = 0
    log_every: int = 10
    save_every: int = 1000
    # evaluate on the eval data every this many steps (0: only at the end); needs eval data
    eval_every: int = 0
    # checkpoints kept (the newest)
    save_total_limit: int = 3
    progress_bar: bool = True

    def validate(self) -> None:
        positive = (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "log_every",
            "save_every",
            "save_total_limit",
            "loss_scale_window",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"training setting {name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0 or self.warmup_steps < 0 or self.eval_every < 0:
            raise ValueError("max_steps, warmup_steps and eval_every must be >= 0")
        if self.max_steps == 0 and not self.num_train_epochs > 0:
            raise ValueError("set max_steps > 0 or num_train_epochs > 0: the run has no length")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type {self.lr_scheduler_type!r} is not one of {SCHEDULES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if not (isinstance(self.dynamic_shapes, bool) or self.dynamic_shapes == "auto"):
            raise ValueError(f"dynamic_shapes must be true, false or auto, got {self.dynamic_shapes!r}")
        if not self.learning_rate > 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("learning_rate must be > 0, weight_decay >= 0 and min_lr_ratio in [0, 1]")
        if not self.lr_power > 0 or self.lr_num_cycles < 1:
            raise ValueError(f"lr_power must be > 0 and lr_num_cycles >= 1, got {self.lr_power}, {self.lr_num_cycles}")


@accepts_old_setting_names
@dataclass
class PretrainSettings(TrainSettings):
    # on the CPU one dynamic-shape graph with every batch padded to its longest cell: less padding than the
    # reference's grouping, one compilation, and (since the linear layers and the loss run on this package's kernels)
    # no slower per token than static buckets; on Ascend static buckets, the shapes its graph compiler plans for
    dynamic_shapes: bool | str = "auto"
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


def resolve_dynamic_shapes(setting: bool | str, device_target: str) -> bool:
    """The `dynamic_shapes` setting on `device_target` ("CPU" or "Ascend"): "auto" is dynamic on the CPU only."""
    if setting == "auto":
        return device_target == "CPU"
    return bool(setting)


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
    # a value's error names the setting as the user wrote it (an old name too)
    written_as = {RENAMED_SETTINGS[key]: key for key in data if key not in known and key in RENAMED_SETTINGS}
    data = upgrade_setting_names(cls, data)
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown training setting {key!r}{hint}; known: {sorted(known)}")
        kwargs[key] = _coerce(value, hints[key], written_as.get(key, key))
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
