"""Read the weights of a Hugging Face model directory into memory as numpy arrays (small models, tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindformer_gf.config import GeneformerConfig
from mindformer_gf.convert.checkpoint import open_huggingface_weights
from mindformer_gf.convert.dtypes import to_float32
from mindformer_gf.convert.plan import plan_weights


def read_state_dict(directory: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the directory's weights (any Hugging Face layout) by file key; bfloat16 widened to float32."""
    with open_huggingface_weights(directory) as weights:
        return {
            key: to_float32(info.read(), info.dtype) if info.dtype == "BF16" else info.read()
            for key, info in weights.tensors.items()
        }


def load_hf_weights(
    directory: str | Path, config: GeneformerConfig, architecture: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """float32 weights of `architecture` from a Hugging Face directory, and the head parameters it lacks."""
    with open_huggingface_weights(directory) as weights:
        plan = plan_weights(weights.tensors, config, architecture, allow_missing=True, source=str(directory))
        arrays = {name: to_float32(info.read(), info.dtype) for name, info in plan.tensors.items()}
    return arrays, plan.fresh
