"""Hugging Face model directory -> MindSpore model directory, and back.

Both directions stream: each tensor is read, cast if asked, written, and released before the next one, so memory
holds one tensor at a time. The output is built in a hidden temporary directory next to the destination and renamed
onto it only when everything (including `verify`) succeeded; a failed or interrupted conversion leaves nothing under
the destination's name, and an existing destination is only replaced with `force`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf import __version__
from mindformer_gf.config import ARCHITECTURES, GeneformerConfig
from mindformer_gf.convert.dtypes import to_float32
from mindformer_gf.convert.plan import WeightPlan, fresh_head_weights, plan_weights
from mindformer_gf.convert.readers import (
    CONFIG,
    HF_SAFETENSORS,
    MANIFEST,
    MINDSPORE_WEIGHTS,
    ModelWeights,
    file_sha256,
    open_huggingface_weights,
    open_mindspore_weights,
)
from mindformer_gf.convert.tensors import CheckpointError
from mindformer_gf.convert.writer import (
    _record_weights_dtype,
    _resolve_dtype,
    _write_weights,
)
from mindformer_gf.io import atomic_directory, write_json

DIRECTIONS = ("mindspore", "huggingface")
# Default --verify tolerance on max|ours - reference| / max|reference|, by output dtype: float32 sees only
# summation-order differences; half precision sees the rounding of every weight.
DEFAULT_TOLERANCE = {"F32": 1e-4, "F64": 1e-4, "F16": 1e-2, "BF16": 5e-2}


class VerificationError(CheckpointError):
    """The converted model's outputs differ from the reference on the source weights beyond the tolerance."""


@dataclass
class ConversionReport:
    """What a conversion did; `lines()` is the summary the command prints."""

    source: Path
    destination: Path
    direction: str
    source_format: str
    output_format: str
    architecture: str
    tensor_count: int
    total_bytes: int
    dtypes: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    seconds: float = 0.0
    max_abs_difference: float | None = None
    max_relative_difference: float | None = None
    tolerance: float | None = None

    def lines(self) -> list[str]:
        dtypes = ", ".join(f"{count} {dtype}" for dtype, count in sorted(self.dtypes.items()))
        lines = [
            f"converted {self.source} ({self.source_format}) -> {self.destination} ({self.output_format}): "
            f"{self.architecture}, {self.tensor_count} tensors ({dtypes}), {self.total_bytes / 2**20:.1f} MiB "
            f"in {self.seconds:.1f} s"
        ]
        for key, reason in sorted(self.skipped.items()):
            lines.append(f"  skipped {key}: {reason}")
        for key in self.dropped:
            lines.append(f"  dropped {key}: {self.architecture} has no such head")
        if self.fresh:
            lines.append(f"  initialised fresh (not in the checkpoint): {', '.join(self.fresh)}")
        if self.max_abs_difference is not None:
            lines.append(
                f"  verify: largest difference {self.max_abs_difference:.3g} (relative "
                f"{self.max_relative_difference:.3g}, tolerance {self.tolerance:.3g}) against the numpy reference"
            )
        return lines


# ---- safe output ------------------------------------------------------------------------------------------------
def _check_destination(source: Path, destination: Path, force: bool) -> None:
    source_resolved, destination_resolved = source.resolve(), destination.resolve()
    if destination_resolved == source_resolved or source_resolved in destination_resolved.parents:
        raise CheckpointError(f"the destination {destination} is (inside) the source {source}; choose another")
    if destination_resolved in source_resolved.parents:
        raise CheckpointError(f"the destination {destination} contains the source {source}; choose another")
    if destination.exists() and not force:
        raise FileExistsError(f"{destination} already exists; pass --force (force=True) to replace it")


def _output_config(source_dir: Path, architecture: str, config: GeneformerConfig, num_labels: int | None) -> bytes:
    """The source config.json unchanged, byte for byte, unless the architecture or label count was changed."""
    raw = (source_dir / CONFIG).read_bytes()
    if architecture == config.architecture and num_labels is None:
        return raw
    data = json.loads(raw)
    data["architectures"] = [architecture]
    if num_labels is not None:
        data["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        data["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        data.pop("num_labels", None)
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _manifest(
    weights: ModelWeights,
    direction: str,
    output_format: str,
    weights_file: str,
    plan: WeightPlan,
    written: Counter,
    dtype: str,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    hashed = [CONFIG, *weights.files]
    return {
        "tool": "mindformer_gf",
        "tool_version": __version__,
        "direction": direction,
        "format": output_format,
        "weights_file": weights_file,
        "architecture": plan.architecture,
        "tensor_count": sum(written.values()),
        "dtypes": dict(sorted(written.items())),
        "dtype_requested": dtype,
        "source": {
            "directory": str(weights.directory.resolve()),
            "format": weights.format,
            "sha256": {name: file_sha256(weights.directory / name, progress) for name in hashed},
        },
        "skipped": plan.skipped,
        "dropped": plan.dropped,
        "initialised_fresh": plan.fresh,
        "fresh_seed": seed if plan.fresh else None,
    }


# ---- the two directions -----------------------------------------------------------------------------------------
def convert_to_mindspore(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    format: str = "ckpt",
    dtype: str = "keep",
    architecture: str | None = None,
    num_labels: int | None = None,
    allow_missing: bool = False,
    seed: int = 0,
    force: bool = False,
    verify: bool = False,
    tolerance: float | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert the Hugging Face model directory `src` into the MindSpore model directory `dst`.

    `dst` gets config.json (the source's, unchanged unless `architecture`/`num_labels` change it),
    `mindspore_model.ckpt` (or `.safetensors` with `format="safetensors"`) and conversion_manifest.json.
    `dtype` is "keep" (each tensor's own type), "float32", "float16" or "bfloat16". `architecture` builds another
    head on the same encoder (e.g. a classifier from a masked-LM checkpoint, with `allow_missing` to initialise the
    pooler/classifier from `seed`). `verify` compares the converted model with the numpy reference on the source
    weights for a probe batch and fails above `tolerance`.
    """
    started = time.perf_counter()
    if format not in MINDSPORE_WEIGHTS:
        raise ValueError(f"format {format!r} is not one of {sorted(MINDSPORE_WEIGHTS)}")
    if architecture is not None and architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture!r} is not one of {ARCHITECTURES}")
    if num_labels is not None and num_labels < 1:
        raise ValueError(f"num_labels must be at least 1, got {num_labels}")
    target_dtype = _resolve_dtype(dtype)
    src, dst = Path(src), Path(dst)
    _check_destination(src, dst, force)
    config = GeneformerConfig.from_pretrained(src)
    architecture = architecture or config.architecture
    if num_labels is not None:
        config = config.replace(id2label={i: f"LABEL_{i}" for i in range(num_labels)})
    with open_huggingface_weights(src) as weights:
        plan = plan_weights(weights.tensors, config, architecture, allow_missing=allow_missing, source=str(src))
        fresh = fresh_head_weights(config, architecture, plan.fresh, seed)
        weights_file = MINDSPORE_WEIGHTS[format]
        with atomic_directory(dst, force) as staging:
            (staging / CONFIG).write_bytes(_output_config(src, architecture, config, num_labels))
            written = _write_weights(
                plan, fresh, staging / weights_file, format, target_dtype, {"format": "ms"}, progress
            )
            _record_weights_dtype(staging / CONFIG, written)
            manifest = _manifest(
                weights, "huggingface->mindspore", format, weights_file, plan, written, dtype, seed, progress
            )
            write_json(staging / MANIFEST, manifest)
            report = ConversionReport(
                source=src,
                destination=dst,
                direction="mindspore",
                source_format=weights.format,
                output_format=format,
                architecture=architecture,
                tensor_count=sum(written.values()),
                total_bytes=sum(i.nbytes for i in plan.tensors.values()),
                dtypes=dict(written),
                skipped=plan.skipped,
                dropped=plan.dropped,
                fresh=plan.fresh,
            )
            if verify:
                _verify_into(report, hf_dir=src, ms_dir=staging, architecture=architecture, tolerance=tolerance)
    report.seconds = time.perf_counter() - started
    return report


def convert_to_huggingface(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: str = "keep",
    force: bool = False,
    verify: bool = False,
    tolerance: float | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert the MindSpore model directory `src` into a Hugging Face one: config.json + model.safetensors that
    `transformers.AutoModel*.from_pretrained` loads (the MLM decoder stays tied, as transformers writes it)."""
    started = time.perf_counter()
    target_dtype = _resolve_dtype(dtype)
    src, dst = Path(src), Path(dst)
    _check_destination(src, dst, force)
    config = GeneformerConfig.from_pretrained(src)
    with open_mindspore_weights(src) as weights:
        plan = plan_weights(weights.tensors, config, config.architecture, allow_missing=False, source=str(src))
        with atomic_directory(dst, force) as staging:
            (staging / CONFIG).write_bytes((src / CONFIG).read_bytes())
            # transformers refuses safetensors files whose metadata does not name a framework it knows.
            written = _write_weights(
                plan, {}, staging / HF_SAFETENSORS, "safetensors", target_dtype, {"format": "pt"}, progress
            )
            _record_weights_dtype(staging / CONFIG, written)
            report = ConversionReport(
                source=src,
                destination=dst,
                direction="huggingface",
                source_format=f"mindspore {weights.format}",
                output_format="safetensors",
                architecture=plan.architecture,
                tensor_count=sum(written.values()),
                total_bytes=sum(i.nbytes for i in plan.tensors.values()),
                dtypes=dict(written),
                skipped=plan.skipped,
                dropped=plan.dropped,
            )
            if verify:
                _verify_into(report, hf_dir=staging, ms_dir=src, architecture=plan.architecture, tolerance=tolerance)
    report.seconds = time.perf_counter() - started
    return report


# Options of convert_to_mindspore that have no meaning for the Hugging Face output.
MINDSPORE_ONLY_OPTIONS = ("format", "architecture", "num_labels", "allow_missing", "seed")


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, *, to: str = "mindspore", **options: Any
) -> ConversionReport:
    """`convert_to_mindspore` or `convert_to_huggingface` by `to`; options left at None take their defaults.

    A MindSpore-only option given when converting to Hugging Face is an error rather than silently ignored.
    """
    if to not in DIRECTIONS:
        raise ValueError(f"to={to!r} is not one of {DIRECTIONS}")
    options = {key: value for key, value in options.items() if value is not None}
    if to == "mindspore":
        return convert_to_mindspore(src, dst, **options)
    given = [key for key in MINDSPORE_ONLY_OPTIONS if options.get(key) not in (None, False)]
    if given:
        raise ValueError(
            f"{', '.join(given)} only apply when converting to MindSpore; the Hugging Face output is always "
            "model.safetensors of the source's architecture"
        )
    options = {key: value for key, value in options.items() if key not in MINDSPORE_ONLY_OPTIONS}
    return convert_to_huggingface(src, dst, **options)


# ---- verification -----------------------------------------------------------------------------------------------
def probe_batch(config: GeneformerConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two cells of random gene tokens, one padded: enough to exercise every weight and the padding mask."""
    rng = np.random.default_rng(seed)
    lengths = [min(48, config.max_position_embeddings), min(19, config.max_position_embeddings)]
    ids = np.zeros((2, lengths[0]), np.int32)
    mask = np.zeros((2, lengths[0]), np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(min(2, config.vocab_size - 1), config.vocab_size, size=length)
        mask[row, :length] = 1
    return ids, mask


def verify_conversion(
    hf_dir: str | os.PathLike, ms_dir: str | os.PathLike, architecture: str | None = None, seed: int = 0
) -> tuple[float, float, str]:
    """Run the numpy reference on the Hugging Face weights and the MindSpore model on the MindSpore ones.

    Returns (max |difference|, that divided by max |reference|, the narrowest dtype on either side) over the main output
    (logits, or the last hidden state for BertModel) at non-padding positions of a probe batch.
    """
    from mindspore import Tensor

    # imported here: MindSpore loads only when a converted model is verified
    from mindformer_gf import reference
    from mindformer_gf.pretrained import from_pretrained

    config = GeneformerConfig.from_pretrained(ms_dir)
    architecture = architecture or config.architecture
    model = from_pretrained(ms_dir, architecture=architecture)
    with open_huggingface_weights(hf_dir) as weights, open_mindspore_weights(ms_dir) as converted:
        plan = plan_weights(weights.tensors, config, architecture, allow_missing=True, source=str(hf_dir))
        source = {name: to_float32(info.read(), info.dtype) for name, info in plan.tensors.items()}
        dtypes = {info.dtype for info in plan.tensors.values()} | {i.dtype for i in converted.tensors.values()}
    # Heads the conversion initialised fresh exist only on the MindSpore side.
    if plan.fresh:
        model_weights = model.state_dict()
        source.update({name: model_weights[name] for name in plan.fresh})
    ids, mask = probe_batch(config, seed)
    expected, _ = reference.forward(source, ids, mask, config, architecture, dtype=np.float32)
    (ours,) = model(Tensor(ids), Tensor(mask))
    ours = ours.asnumpy()
    if expected.ndim == 3:
        valid = mask.astype(bool)
        expected, ours = expected[valid], ours[valid]
    difference = float(np.abs(ours.astype(np.float64) - expected).max())
    scale = float(np.abs(expected).max()) or 1.0
    narrowest = min(dtypes, key=lambda d: {"F64": 8, "F32": 4, "F16": 2, "BF16": 1}.get(d, 4))
    return difference, difference / scale, narrowest


def _verify_into(
    report: ConversionReport, hf_dir: Path, ms_dir: Path, architecture: str, tolerance: float | None
) -> None:
    difference, relative, narrowest = verify_conversion(hf_dir, ms_dir, architecture)
    tolerance = DEFAULT_TOLERANCE.get(narrowest, 1e-4) if tolerance is None else tolerance
    report.max_abs_difference, report.max_relative_difference, report.tolerance = difference, relative, tolerance
    if not relative <= tolerance:
        raise VerificationError(
            f"verify: the converted model differs from the numpy reference on the source weights by "
            f"{difference:.3g} (relative {relative:.3g}), above the tolerance {tolerance:.3g}; nothing was written "
            f"to {report.destination}"
        )
