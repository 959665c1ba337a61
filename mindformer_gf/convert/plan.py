"""Match a checkpoint's tensors to the parameter table of one architecture, and explain every mismatch.

The result says, for each parameter of the model, which tensor of the file holds it, and lists what is left over
(buffers, tied copies, heads the architecture has no place for) and what must be initialised fresh. Nothing is read
here except the two sides of a tied weight stored twice, which must be equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from mindformer_gf.config import V1_VOCAB_SIZE, V2_VOCAB_SIZE, GeneformerConfig
from mindformer_gf.convert.dtypes import FLOAT_DTYPES
from mindformer_gf.convert.names import (
    BUFFER_KEYS,
    MLM_HEAD_PREFIX,
    TIED_KEYS,
    is_head,
    may_be_fresh,
    to_model_name,
)
from mindformer_gf.convert.tensors import CheckpointError, TensorInfo

VOCABULARIES = {V1_VOCAB_SIZE: "V1", V2_VOCAB_SIZE: "V2"}
LAYER_INDEX = re.compile(r"encoder\.layer\.(\d+)\.")


@dataclass
class WeightPlan:
    """Where each parameter of `architecture` comes from."""

    architecture: str
    tensors: dict[str, TensorInfo]  # parameter name -> source tensor, in the parameter table's order
    fresh: list[str] = field(default_factory=list)  # parameters the checkpoint lacks, to initialise
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> why it is not a parameter
    dropped: list[str] = field(default_factory=list)  # source heads the architecture has no place for


def shape_message(key: str, found: tuple[int, ...], expected: tuple[int, ...]) -> str:
    message = f"{key}: checkpoint shape {found} but the config gives {expected}"
    if found and expected and found[0] in VOCABULARIES and expected[0] in VOCABULARIES and found[0] != expected[0]:
        message += (
            f". The checkpoint has a {VOCABULARIES[found[0]]} vocabulary ({found[0]} tokens) and the config a "
            f"{VOCABULARIES[expected[0]]} one ({expected[0]}): V1 and V2 Geneformer models and dictionaries do not "
            "mix; use the config.json that came with the checkpoint"
        )
    elif key.startswith("classifier.") and found and expected and found[0] != expected[0]:
        message += f": the checkpoint's classifier has {found[0]} labels; set id2label in config.json to match"
    return message


def _layer_count(keys) -> int:
    indices = [int(m.group(1)) for key in keys if (m := LAYER_INDEX.search(key))]
    return max(indices) + 1 if indices else 0


def _check_tie(key: str, copy: TensorInfo, parameter: TensorInfo, source: str) -> str:
    """Why a stored tied copy can be skipped; an error if it is not in fact equal to its parameter."""
    if copy.identity is not None and copy.identity == parameter.identity:
        return f"tied to {parameter.key} (the same storage)"
    if copy.shape == parameter.shape and copy.dtype == parameter.dtype:
        if np.array_equal(copy.read(), parameter.read()):
            return f"tied to {parameter.key} (an equal copy)"
    raise CheckpointError(
        f"{source}: {key} differs from {parameter.key}. Geneformer ties the masked-LM decoder to the word "
        "embeddings; a checkpoint with an untied decoder is not a model this package can represent"
    )


def plan_weights(
    tensors: dict[str, TensorInfo],
    config: GeneformerConfig,
    architecture: str | None = None,
    *,
    allow_missing: bool = False,
    source: str = "checkpoint",
) -> WeightPlan:
    """Assign the checkpoint `tensors` (by file key) to the parameters of `architecture` (default: the config's).

    Raises CheckpointError naming every unexpected key, shape mismatch and missing parameter. Missing pooler and
    classifier parameters are listed in `fresh` when `allow_missing`, and are an error otherwise.
    """
    architecture = architecture or config.architecture
    expected = config.parameter_shapes(architecture)
    found: dict[str, TensorInfo] = {}
    skipped: dict[str, str] = {}
    dropped: list[str] = []
    unexpected: list[str] = []
    tied: dict[str, TensorInfo] = {}
    for key, info in tensors.items():
        if key in BUFFER_KEYS:
            skipped[key] = BUFFER_KEYS[key]
            continue
        if key in TIED_KEYS:
            tied[key] = info
            continue
        name = to_model_name(key, architecture)
        if name in expected:
            if name in found:
                raise CheckpointError(f"{source}: {found[name].key} and {key} are both {name}; keep one of them")
            found[name] = info
        elif is_head(name):
            dropped.append(key)
        else:
            unexpected.append(key)
    has_mlm_head = any(name.startswith(MLM_HEAD_PREFIX) for name in expected)
    for key, info in tied.items():
        partner = to_model_name(TIED_KEYS[key], architecture)
        if not has_mlm_head or partner not in expected:
            dropped.append(key)
        elif partner not in found:
            # Only the copy was stored: it holds the parameter's values.
            found[partner] = info
        else:
            skipped[key] = _check_tie(key, info, found[partner], source)

    problems = [shape_message(i.key, i.shape, expected[n]) for n, i in found.items() if i.shape != expected[n]]
    problems += [
        f"{info.key}: element type {info.dtype}, but parameters are floating point ({', '.join(FLOAT_DTYPES)})"
        for info in found.values()
        if info.dtype not in FLOAT_DTYPES
    ]
    if unexpected:
        message = f"keys that {architecture} has no parameter for: {sorted(unexpected)}"
        checkpoint_layers = _layer_count(tensors)
        if checkpoint_layers > config.num_hidden_layers:
            message += (
                f". The checkpoint has {checkpoint_layers} layers and the config num_hidden_layers="
                f"{config.num_hidden_layers}: use the config.json that came with the checkpoint"
            )
        problems.append(message)
    missing = [name for name in expected if name not in found]
    required = [name for name in missing if not may_be_fresh(name)]
    if required:
        message = f"the checkpoint lacks parameters of {architecture}: {required}"
        checkpoint_layers = _layer_count(tensors)
        if checkpoint_layers < config.num_hidden_layers:
            message += (
                f". The checkpoint has {checkpoint_layers} layers and the config num_hidden_layers="
                f"{config.num_hidden_layers}: use the config.json that came with the checkpoint"
            )
        problems.append(message)
    elif missing and not allow_missing:
        problems.append(
            f"the checkpoint has no {architecture} head: {missing} are missing. A classifier built from a pretrained "
            "checkpoint starts with a fresh pooler/classifier: pass --allow-missing (allow_missing=True) to "
            "initialise them"
        )
    if problems:
        raise CheckpointError(f"{source} does not fit {architecture}:\n  - " + "\n  - ".join(problems))
    return WeightPlan(
        architecture=architecture,
        tensors={name: found[name] for name in expected if name in found},
        fresh=missing,
        skipped=skipped,
        dropped=sorted(dropped),
    )


def fresh_head_weights(
    config: GeneformerConfig, architecture: str, names: list[str], seed: int = 0
) -> dict[str, np.ndarray]:
    """Initial values for the pooler/classifier parameters `names`, as Hugging Face initialises linear layers:
    weights N(0, initializer_range), biases zero (float32, reproducible from `seed`)."""
    shapes = config.parameter_shapes(architecture)
    rng = np.random.default_rng(seed)
    weights = {}
    for name in sorted(names):
        if not may_be_fresh(name):
            raise ValueError(f"{name} is not a head parameter; it cannot be initialised fresh")
        if name.endswith(".bias"):
            weights[name] = np.zeros(shapes[name], np.float32)
        else:
            weights[name] = rng.normal(0.0, config.initializer_range, size=shapes[name]).astype(np.float32)
    return weights
