"""`from_pretrained` and `save_pretrained`: a model directory in, a ready MindSpore model out, and back."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from mindformer_gf.config import GeneformerConfig
from mindformer_gf.convert.dtypes import to_float32
from mindformer_gf.convert.plan import fresh_head_weights, plan_weights
from mindformer_gf.convert.readers import open_model_weights
from mindformer_gf.convert.writer import write_model_directory
from mindformer_gf.model import GeneformerPreTrainedModel, build_model


def from_pretrained(
    directory: str | os.PathLike, architecture: str | None = None, seed: int = 0, **config_overrides: object
) -> GeneformerPreTrainedModel:
    """Build the model named by config.json's `architectures` (or `architecture`) and load the directory's weights.

    `directory` is a Hugging Face model directory (safetensors, pytorch_model.bin or a sharded set; converted in
    memory) or a MindSpore one written by `gf convert` / `save_pretrained`. Heads absent from the checkpoint
    (pooler, classifier) are initialised from `seed` and reported in a warning.
    """
    config = GeneformerConfig.from_pretrained(directory)
    if config_overrides:
        config = config.replace(**config_overrides)
    architecture = architecture or config.architecture
    with open_model_weights(directory) as checkpoint:
        plan = plan_weights(checkpoint.tensors, config, architecture, allow_missing=True, source=str(directory))
        weights = {name: to_float32(info.read(), info.dtype) for name, info in plan.tensors.items()}
    if plan.fresh:
        warnings.warn(f"{directory}: initialised fresh (not in the checkpoint): {plan.fresh}", stacklevel=2)
        weights.update(fresh_head_weights(config, architecture, plan.fresh, seed))
    if plan.dropped:
        warnings.warn(f"{directory}: not used by {architecture} (no such head): {plan.dropped}", stacklevel=2)
    model = build_model(config, architecture, seed=None)
    model.load_weights(weights)
    model.set_train(False)
    return model


def save_pretrained(
    model: GeneformerPreTrainedModel,
    directory: str | os.PathLike,
    format: str = "ckpt",
    dtype: str = "keep",
    force: bool = False,
) -> Path:
    """Write `model` as a MindSpore model directory (config.json, mindspore_model.ckpt or .safetensors, manifest),
    atomically; `gf convert --to huggingface` turns it into a directory transformers loads."""
    return write_model_directory(
        model.state_dict(), model.config, model.architecture, directory, format=format, dtype=dtype, force=force
    )
