"""The one writer of a model directory: in-memory weights (or a conversion plan's tensors) streamed into a MindSpore
or Hugging Face model directory, assembled under a temporary name and renamed into place (`mindformer_gf.io`).
`save_pretrained`, the pretraining run's final model and the task models write through it; both conversions
use its weight writer (`_write_weights`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mindformer_gf import __version__
from mindformer_gf.config import GeneformerConfig
from mindformer_gf.convert.dtypes import DTYPE_CHOICES, cast
from mindformer_gf.convert.ms_checkpoint import MindSporeCheckpointWriter
from mindformer_gf.convert.plan import WeightPlan, plan_weights
from mindformer_gf.convert.readers import CONFIG, HF_SAFETENSORS, MANIFEST, MINDSPORE_WEIGHTS
from mindformer_gf.convert.safetensors_io import SafetensorsWriter
from mindformer_gf.convert.tensors import TensorInfo
from mindformer_gf.io import atomic_directory, write_json

# Names transformers gives the weights' dtype in config.json ("torch_dtype" before 4.56, "dtype" since).
CONFIG_DTYPE_KEYS = ("dtype", "torch_dtype")
CONFIG_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _record_weights_dtype(config_path: Path, written: dict[str, int]) -> None:
    """Make config.json name the dtype the weights were written in, when they all share one: transformers'
    `from_pretrained(dtype="auto")` builds the model in the config's dtype, so a stale "float32" would widen
    bfloat16 weights silently. The file is left byte for byte when it already says so."""
    if len(written) != 1 or next(iter(written)) not in CONFIG_DTYPE_NAMES:
        return
    name = CONFIG_DTYPE_NAMES[next(iter(written))]
    data = json.loads(config_path.read_bytes())
    present = [key for key in CONFIG_DTYPE_KEYS if key in data]
    if all(data[key] == name for key in present) and (present or name == "float32"):
        return
    for key in present or CONFIG_DTYPE_KEYS[:1]:
        data[key] = name
    write_json(config_path, data, sort_keys=True)


# ---- writing weights --------------------------------------------------------------------------------------------
def _write_weights(
    plan: WeightPlan,
    fresh: dict[str, np.ndarray],
    path: Path,
    output_format: str,
    target_dtype: str | None,
    metadata: dict[str, str],
    progress: bool,
) -> Counter:
    """Stream the plan's tensors (and the fresh ones) into `path`; returns the count of each written dtype."""
    names = list(plan.tensors) + sorted(fresh)
    source_dtype = {**{n: i.dtype for n, i in plan.tensors.items()}, **dict.fromkeys(fresh, "F32")}
    shapes = {**{n: i.shape for n, i in plan.tensors.items()}, **{n: a.shape for n, a in fresh.items()}}
    out_dtype = {name: target_dtype or source_dtype[name] for name in names}
    total = sum(i.nbytes for i in plan.tensors.values()) + sum(a.nbytes for a in fresh.values())
    if output_format == "ckpt":
        writer = MindSporeCheckpointWriter(path)
    else:
        writer = SafetensorsWriter(path, [(n, out_dtype[n], shapes[n]) for n in names], metadata)
    written: Counter = Counter()
    with writer, tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {path.name}", disable=not progress) as bar:
        for name in names:
            if name in fresh:
                array, dtype, nbytes = fresh[name], "F32", fresh[name].nbytes
            else:
                info = plan.tensors[name]
                array, dtype, nbytes = info.read(), info.dtype, info.nbytes
            array, dtype = cast(array, dtype, target_dtype)
            writer.write(name, array, dtype)
            written[dtype] += 1
            bar.update(nbytes)
            del array  # before the next read, so that only one tensor is ever held
    return written


def _resolve_dtype(dtype: str) -> str | None:
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPE_CHOICES)}")
    return DTYPE_CHOICES[dtype]


MODEL_LAYOUTS = ("mindspore", "huggingface")


def write_model_directory(
    weights: dict[str, np.ndarray],
    config: GeneformerConfig,
    architecture: str,
    directory: str | os.PathLike,
    *,
    layout: str = "mindspore",
    format: str = "ckpt",
    dtype: str = "keep",
    force: bool = False,
    progress: bool = False,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """The one writer of a model directory from in-memory float weights (by parameter name), atomically.

    layout "mindspore": config.json, `mindspore_model.ckpt` (or `.safetensors` with `format="safetensors"`) and the
    manifest, as `convert_to_mindspore` writes them; "huggingface": config.json and model.safetensors, as
    `convert_to_huggingface` writes them. `extra_files(staging)` may add files (a task's description) before the
    directory is renamed into place. `from_pretrained` and both conversions take either layout.
    """
    if layout not in MODEL_LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {MODEL_LAYOUTS}")
    if layout == "mindspore" and format not in MINDSPORE_WEIGHTS:
        raise ValueError(f"format {format!r} is not one of {sorted(MINDSPORE_WEIGHTS)}")
    target_dtype = _resolve_dtype(dtype)
    config = config.replace(architectures=[architecture]) if config.architecture != architecture else config
    tensors = {
        name: TensorInfo(name, "F32", tuple(array.shape), "<model>", lambda array=array: np.asarray(array, np.float32))
        for name, array in weights.items()
    }
    plan = plan_weights(tensors, config, architecture, allow_missing=False, source="the model")
    with atomic_directory(directory, force) as staging:
        config.save_pretrained(staging)
        if layout == "huggingface":
            # transformers refuses safetensors files whose metadata does not name a framework it knows.
            written = _write_weights(
                plan, {}, staging / HF_SAFETENSORS, "safetensors", target_dtype, {"format": "pt"}, progress
            )
        else:
            weights_file = MINDSPORE_WEIGHTS[format]
            written = _write_weights(plan, {}, staging / weights_file, format, target_dtype, {"format": "ms"}, progress)
        _record_weights_dtype(staging / CONFIG, written)
        if layout == "mindspore":
            manifest = {
                "tool": "mindformer_gf",
                "tool_version": __version__,
                "direction": "model->mindspore",
                "format": format,
                "weights_file": weights_file,
                "architecture": architecture,
                "tensor_count": sum(written.values()),
                "dtypes": dict(sorted(written.items())),
                "dtype_requested": dtype,
                "source": None,
            }
            write_json(staging / MANIFEST, manifest)
        if extra_files is not None:
            extra_files(staging)
    return Path(directory)
