"""Read the weights of a Hugging Face model directory into memory as numpy arrays (small models, tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindformer_gf.convert.dtypes import to_float32
from mindformer_gf.convert.readers import open_huggingface_weights


def read_state_dict(directory: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the directory's weights (any Hugging Face layout) by file key; bfloat16 widened to float32."""
    with open_huggingface_weights(directory) as weights:
        return {
            key: to_float32(info.read(), info.dtype) if info.dtype == "BF16" else info.read()
            for key, info in weights.tensors.items()
        }
