"""Read the weights of a Hugging Face model directory as numpy arrays under our parameter names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from mindformer_gf.config import V1_VOCAB_SIZE, V2_VOCAB_SIZE, GeneformerConfig
from mindformer_gf.convert.names import to_model_name


def read_state_dict(directory: str | Path) -> dict[str, np.ndarray]:
    """The state dict of `directory/model.safetensors` (Hugging Face key -> array)."""
    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no model.safetensors")
    return load_file(str(path))


def load_hf_weights(
    directory: str | Path, config: GeneformerConfig, architecture: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Weights for `architecture` from a HF directory, and the names of parameters the file does not hold.

    Shapes are checked against the config's parameter table; a key the model does not have is an error.
    """
    expected = config.parameter_shapes(architecture)
    weights: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    for hf_key, value in read_state_dict(directory).items():
        name = to_model_name(hf_key, architecture)
        if name is None:
            continue
        if name not in expected:
            # A pooler or MLM head the target architecture has no place for is dropped, as transformers does.
            if name.startswith(("bert.pooler.", "pooler.", "cls.")):
                continue
            unexpected.append(hf_key)
            continue
        if tuple(value.shape) != expected[name]:
            raise ValueError(_shape_message(hf_key, tuple(value.shape), expected[name]))
        weights[name] = value
    if unexpected:
        raise KeyError(f"{directory}: keys that {architecture} has no parameter for: {unexpected}")
    missing = sorted(set(expected) - set(weights))
    return weights, missing


def _shape_message(key: str, found: tuple[int, ...], expected: tuple[int, ...]) -> str:
    message = f"{key}: checkpoint shape {found} but the config gives {expected}"
    vocabularies = {V1_VOCAB_SIZE: "V1", V2_VOCAB_SIZE: "V2"}
    if found and expected and found[0] in vocabularies and expected[0] in vocabularies and found[0] != expected[0]:
        message += (
            f". The checkpoint has a {vocabularies[found[0]]} vocabulary ({found[0]} tokens) and the config a "
            f"{vocabularies[expected[0]]} one ({expected[0]}): V1 and V2 Geneformer models and dictionaries do not mix"
        )
    return message
