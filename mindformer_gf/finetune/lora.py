"""LoRA (Hu et al. 2021): low-rank adapters on the encoder's linear projections, as peft builds them.

An adapted projection computes `x W^T + b + (alpha / r) * dropout(x) A^T B^T` with A [r, in] and B [out, r]; W and b
stay frozen, A starts uniform in +-1/sqrt(in) (peft's kaiming-uniform with a = sqrt(5)) and B at zero, so training
starts from the pretrained model. Which projections: every `nn.Dense` of the encoder layers whose attribute path ends
in one of `target_modules` (peft's rule for a list: the name itself or `.<name>` at its end); with the defaults
("query", "key", "value", "dense") that is the query, key, value, attention-output, intermediate and output
projections of every layer. The pooler is left to the head (it is fresh when fine-tuning starts from a masked-LM
checkpoint), which in peft's terms is `layers_to_transform` = every layer and the pooler in `modules_to_save`.

Parameter names are peft's without its wrapper and adapter name: `bert.encoder.layer.0.attention.self.query.
lora_A.weight` here is `base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight` in peft's
`adapter_model.safetensors`. `merged_state_dict` folds the adapters into W (what a saved fine-tuned model holds),
`write_peft_adapter` / `read_peft_adapter` write and read peft's directory layout.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore import ops as msops

from mindformer_gf import ops
from mindformer_gf.convert.names import (
    PEFT_ADAPTER_CONFIG,
    PEFT_ADAPTER_WEIGHTS,
    lora_target_of,
    to_peft_name,
)
from mindformer_gf.io import read_json, write_json
from mindformer_gf.model.dropout import site_seed
from mindformer_gf.reference.dropout import LORA_PROJECTIONS, lora_site_code, mix32

LAYER_INDEX = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
DEFAULT_TARGET_MODULES = ("query", "key", "value", "dense")


@dataclass(frozen=True)
class LoraSettings:
    """Rank, scale numerator, dropout on the adapter's input, and the projections adapted (the reference's values
    by default: r 64, alpha 128, dropout 0.1)."""

    r: int = 64
    alpha: float = 128.0
    dropout: float = 0.1
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def validate(self) -> None:
        if int(self.r) < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.r}")
        if not float(self.alpha) > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.alpha}")
        if not 0 <= float(self.dropout) < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(
                "lora_target_modules must be a non-empty list of projection names (e.g. "
                f"{list(DEFAULT_TARGET_MODULES)}), got {self.target_modules!r}"
            )


class LoraFactor(nn.Cell):
    """One factor of the low-rank update, its parameter named `weight` as peft's nn.Linear."""

    def __init__(self, value: np.ndarray) -> None:
        super().__init__()
        self.weight = Parameter(Tensor(np.asarray(value, np.float32)))


class LoraDense(nn.Cell):
    """A frozen projection plus its low-rank update. It adopts the projection's own `weight` and `bias` parameters,
    so their names (`...query.weight`) and values are unchanged; the adapter's are `...query.lora_A.weight` and
    `...query.lora_B.weight`.

    Called with the step seed, dropout (with p = `dropout`) applies to the adapter's input in training, at the
    projection's own site (`reference.dropout.lora_site_code`); called without one (the pooler), no dropout."""

    def __init__(
        self,
        dense: nn.Dense,
        lora_a: np.ndarray,
        lora_b: np.ndarray,
        scaling: float,
        dropout: float,
        impl: str,
        site_code: int,
    ) -> None:
        super().__init__()
        self.weight = dense.weight
        self.bias = dense.bias
        self.lora_A = LoraFactor(lora_a)
        self.lora_B = LoraFactor(lora_b)
        self.scaling = float(scaling)
        self.drop_probability = float(dropout)
        self.impl = impl
        self.salt = mix32(site_code)

    def construct(self, x: Tensor, dropout_seed: Tensor | None = None) -> Tensor:
        base = msops.dense(x, self.weight, self.bias)
        adapter_input = x
        if self.training and self.drop_probability > 0.0 and dropout_seed is not None:
            seed = site_seed(dropout_seed, self.salt)
            adapter_input = ops.dropout(x, self.drop_probability, True, seed, self.impl)
        update = msops.dense(msops.dense(adapter_input, self.lora_A.weight), self.lora_B.weight)
        return base + update * self.scaling


def layer_of(name: str) -> int | None:
    match = LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def matches_target(name: str, target_modules: Sequence[str]) -> bool:
    """peft's rule for a list of targets: the module's name is a target or ends in `.<target>`."""
    return any(name == target or name.endswith("." + target) for target in target_modules)


def _projection_of(name: str) -> str:
    for projection in LORA_PROJECTIONS:
        if name.endswith(projection):
            return projection
    raise ValueError(f"{name} is not a projection LoRA can adapt (one of {LORA_PROJECTIONS})")


def _encoder(model: nn.Cell) -> nn.Cell:
    from mindformer_gf.finetune.task_model import encoder_of

    return encoder_of(model)


def lora_layers(model: nn.Cell) -> dict[str, LoraDense]:
    """The adapted projections of `model`, by name (`bert.encoder.layer.0.attention.self.query`)."""
    return {name: cell for name, cell in model.cells_and_names() if isinstance(cell, LoraDense)}


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _kaiming_uniform_a(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """peft's initial A: kaiming_uniform_(a=sqrt(5)), i.e. uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(shape[1])
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _wrap(
    model: nn.Cell,
    names: Sequence[str],
    ranks: dict[str, int],
    scaling: dict[str, float],
    dropout: float,
    seed: int,
) -> None:
    """Replace each projection `names` of `model` by a LoraDense (fresh A and zero B of rank `ranks[name]`)."""
    encoder = _encoder(model)
    n_layers = encoder.config.num_hidden_layers
    rng = np.random.default_rng([seed, 0x10DA])
    cells = dict(model.cells_and_names())
    for name in names:
        parent_name, _, attribute = name.rpartition(".")
        parent, dense = cells[parent_name], cells[name]
        if isinstance(dense, LoraDense):
            raise ValueError(f"{name} already has a LoRA adapter")
        if not isinstance(dense, nn.Dense):
            raise ValueError(f"{name} is a {type(dense).__name__}, not a linear projection LoRA can adapt")
        out_features, in_features = (int(n) for n in dense.weight.shape)
        rank = ranks[name]
        layer = layer_of(name)
        code = lora_site_code(n_layers if layer is None else layer, _projection_of(name))
        wrapped = LoraDense(
            dense,
            _kaiming_uniform_a((rank, in_features), rng),
            np.zeros((out_features, rank), np.float32),
            scaling[name],
            dropout,
            encoder.impl,
            code,
        )
        setattr(parent, attribute, wrapped)
        if hasattr(parent, f"{attribute}_lora_seeded"):  # the projection now takes the step seed (model/bert.py)
            setattr(parent, f"{attribute}_lora_seeded", True)
    # Cells added after construction keep short parameter names (`query.lora_A.weight`), which MindSpore requires
    # to be unique within a network: give them their full path.
    for name, param in model.parameters_and_names():
        if is_lora_parameter(name):
            param.name = name


def lora_targets(model: nn.Cell, target_modules: Sequence[str]) -> list[str]:
    """The projections of the encoder layers that `target_modules` names (peft's suffix rule; not the pooler)."""
    names = [
        name
        for name, cell in model.cells_and_names()
        if isinstance(cell, nn.Dense) and layer_of(name) is not None and matches_target(name, target_modules)
    ]
    unmatched = [t for t in target_modules if not any(matches_target(name, [t]) for name in names)]
    if unmatched:
        raise ValueError(
            f"lora_target_modules {unmatched} name no projection of the encoder layers; choose among query, key, "
            "value, dense (or a longer suffix such as attention.output.dense)"
        )
    return names


def add_lora(model: nn.Cell, settings: LoraSettings, seed: int = 0) -> list[str]:
    """Put a LoRA adapter on every projection of the encoder layers that `settings.target_modules` names; returns
    their names. Freezing is the caller's (`apply_strategy`)."""
    settings.validate()
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters")
    names = lora_targets(model, settings.target_modules)
    _wrap(
        model,
        names,
        dict.fromkeys(names, int(settings.r)),
        dict.fromkeys(names, settings.scaling),
        settings.dropout,
        seed,
    )
    return names


def merged_state_dict(model: nn.Cell) -> dict[str, np.ndarray]:
    """The model's parameters with every adapter folded in, W + (alpha / r) B A (float32, like peft's merge), and
    the adapters' own parameters left out: a plain model of the same architecture."""
    weights = {k: v for k, v in model.state_dict().items() if not is_lora_parameter(k)}
    for name, cell in lora_layers(model).items():
        a = cell.lora_A.weight.asnumpy()
        b = cell.lora_B.weight.asnumpy()
        weights[f"{name}.weight"] = (weights[f"{name}.weight"] + cell.scaling * (b @ a)).astype(np.float32)
    return weights


def lora_state_dict(model: nn.Cell) -> dict[str, np.ndarray]:
    """The adapters' parameters alone (`<projection>.lora_A.weight`, `<projection>.lora_B.weight`)."""
    return {k: v for k, v in model.state_dict().items() if is_lora_parameter(k)}


# ---- peft's directory layout ---------------------------------------------------------------------------------------
TASK_TYPES = {
    "BertForSequenceClassification": "SEQ_CLS",
    "BertForTokenClassification": "TOKEN_CLS",
    "BertForMaskedLM": None,
    "BertModel": "FEATURE_EXTRACTION",
}
ARCHITECTURE_OF_TASK_TYPE = {
    "SEQ_CLS": "BertForSequenceClassification",
    "TOKEN_CLS": "BertForTokenClassification",
    "FEATURE_EXTRACTION": "BertModel",
}
# Keys of adapter_config.json whose non-default values change the computation in ways this package does not
# reproduce: refused with the reason instead of silently loaded wrong.
UNSUPPORTED_PEFT_OPTIONS = {
    "use_dora": (False, "DoRA (use_dora) adapters are not supported; merge them with peft (merge_and_unload) first"),
    "fan_in_fan_out": (False, "fan_in_fan_out applies to GPT-2's Conv1D, not to BERT's linear layers"),
    "bias": ("none", "adapters that train biases (bias != 'none') are not supported; merge them with peft first"),
    "lora_bias": (False, "lora_bias adapters are not supported; merge them with peft first"),
    "rank_pattern": ({}, "per-module ranks (rank_pattern) are not supported; merge them with peft first"),
    "alpha_pattern": ({}, "per-module alphas (alpha_pattern) are not supported; merge them with peft first"),
    "layer_replication": (None, "layer_replication is not supported"),
}


def write_peft_adapter(
    model: nn.Cell,
    directory: str | os.PathLike,
    settings: LoraSettings,
    base_model_name_or_path: str | None = None,
    modules_to_save: Sequence[str] = (),
) -> Path:
    """Write `model`'s adapters as peft writes them (adapter_config.json, adapter_model.safetensors) into
    `directory` (created; the caller makes it atomic). The heads named by `modules_to_save` (peft's names:
    "classifier", "pooler") go into the weights file with the adapters, as peft saves trained heads."""
    from safetensors.numpy import save_file

    architecture = model.architecture
    encoder = _encoder(model)
    adapted = lora_layers(model)
    in_layers = all(layer_of(name) is not None for name in adapted)
    # a projection both adapted and saved whole cannot be both in peft: an adapted pooler is not a saved module
    modules_to_save = [m for m in modules_to_save if in_layers or m != "pooler"]
    tensors = {to_peft_name(k): v for k, v in lora_state_dict(model).items()}
    state = model.state_dict()
    for module in modules_to_save:
        for key, value in state.items():
            if not is_lora_parameter(key) and (key.startswith(module + ".") or f".{module}." in key):
                tensors[to_peft_name(key)] = value
    config = {
        "peft_type": "LORA",
        "task_type": TASK_TYPES.get(architecture),
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(settings.r),
        "lora_alpha": float(settings.alpha),
        "lora_dropout": float(settings.dropout),
        "target_modules": list(settings.target_modules),
        # the encoder layers only: peft's suffix rule would otherwise also take the pooler's `dense`
        "layers_to_transform": list(range(encoder.config.num_hidden_layers)) if in_layers else None,
        "modules_to_save": list(modules_to_save) or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / PEFT_ADAPTER_WEIGHTS))
    write_json(directory / PEFT_ADAPTER_CONFIG, config)
    return directory


@dataclass
class PeftAdapter:
    """A peft LoRA directory read into this package's names."""

    directory: Path
    config: dict[str, Any]
    lora: dict[str, np.ndarray]  # our names: `<projection>.lora_A.weight`, `<projection>.lora_B.weight`
    heads: dict[str, np.ndarray]  # modules_to_save weights under our names (classifier.*, bert.pooler.*)

    @property
    def architecture(self) -> str | None:
        return ARCHITECTURE_OF_TASK_TYPE.get(self.config.get("task_type") or "")

    @property
    def scaling(self) -> float:
        r, alpha = float(self.config["r"]), float(self.config["lora_alpha"])
        return alpha / np.sqrt(r) if self.config.get("use_rslora") else alpha / r

    @property
    def targets(self) -> list[str]:
        return sorted({target for key in self.lora if (target := lora_target_of(key)) is not None})

    def settings(self) -> LoraSettings:
        targets = self.config.get("target_modules")
        targets = tuple(targets) if isinstance(targets, list) else DEFAULT_TARGET_MODULES
        return LoraSettings(
            int(self.config["r"]),
            float(self.config["lora_alpha"]),
            float(self.config.get("lora_dropout", 0.0)),
            targets,
        )


def is_peft_adapter(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / PEFT_ADAPTER_CONFIG).is_file()


def read_peft_adapter(directory: str | os.PathLike, architecture: str | None = None) -> PeftAdapter:
    """Read a peft LoRA directory (adapter_config.json + adapter_model.safetensors); keys are mapped to this
    package's names for `architecture` (default: the task type's; BertModel's names have no `bert.`)."""
    from safetensors.numpy import load_file

    from mindformer_gf.convert.names import from_peft_name
    from mindformer_gf.convert.tensors import CheckpointError

    directory = Path(directory)
    config_path, weights_path = directory / PEFT_ADAPTER_CONFIG, directory / PEFT_ADAPTER_WEIGHTS
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no {PEFT_ADAPTER_CONFIG}: it is not a peft adapter directory")
    if not weights_path.is_file():
        legacy = directory / "adapter_model.bin"
        hint = f" (it has {legacy.name}: re-save it with peft's safe_serialization=True)" if legacy.is_file() else ""
        raise CheckpointError(f"{directory} has {PEFT_ADAPTER_CONFIG} but no {PEFT_ADAPTER_WEIGHTS}{hint}")
    config = read_json(config_path)
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LORA adapters convert")
    for option, (default, reason) in UNSUPPORTED_PEFT_OPTIONS.items():
        if config.get(option, default) not in (default, None) and config.get(option) != default:
            raise CheckpointError(f"{config_path}: {reason}")
    for required in ("r", "lora_alpha"):
        if required not in config:
            raise CheckpointError(f"{config_path} lacks {required!r}; it is not a LoRA adapter config")
    architecture = architecture or ARCHITECTURE_OF_TASK_TYPE.get(config.get("task_type") or "") or "BertModel"
    lora, heads = {}, {}
    for key, value in load_file(str(weights_path)).items():
        name = from_peft_name(key, architecture)
        if name is None:
            raise CheckpointError(
                f"{weights_path}: key {key} is not a peft LoRA key (base_model.model.<module>.lora_A/B.weight or a "
                "saved module)"
            )
        (lora if is_lora_parameter(name) else heads)[name] = value
    if not lora:
        raise CheckpointError(f"{weights_path} holds no lora_A/lora_B weights")
    for key in lora:
        partner = key.replace(".lora_A.", ".lora_B.") if ".lora_A." in key else key.replace(".lora_B.", ".lora_A.")
        if partner not in lora:
            raise CheckpointError(f"{weights_path}: {key} has no {partner}")
    return PeftAdapter(directory, config, lora, heads)


def apply_peft_adapter(model: nn.Cell, adapter: PeftAdapter) -> list[str]:
    """Put `adapter`'s LoRA weights on `model` (unmerged, as peft's PeftModel holds them) and its saved heads into
    the model's heads; returns the adapted projections."""
    from mindformer_gf.convert.tensors import CheckpointError

    cells = dict(model.cells_and_names())
    targets = adapter.targets
    missing = [t for t in targets if t not in cells]
    if missing:
        raise CheckpointError(
            f"{adapter.directory}: the adapter adapts {missing[:3]}, which the {type(model).__name__} of this base "
            "model does not have (another architecture or layer count?)"
        )
    ranks = {t: int(adapter.lora[f"{t}.lora_A.weight"].shape[0]) for t in targets}
    _wrap(
        model, targets, ranks, dict.fromkeys(targets, adapter.scaling), float(adapter.config.get("lora_dropout", 0)), 0
    )
    weights = model.state_dict()
    unknown = sorted(set(adapter.heads) - set(weights))
    if unknown:
        raise CheckpointError(f"{adapter.directory}: saved modules the model has no place for: {unknown[:5]}")
    for key, value in {**adapter.lora, **adapter.heads}.items():
        if tuple(value.shape) != tuple(weights[key].shape):
            raise CheckpointError(
                f"{adapter.directory}: {key} has shape {tuple(value.shape)}, the model {tuple(weights[key].shape)}"
            )
        weights[key] = value
    model.load_weights(weights)
    return targets
