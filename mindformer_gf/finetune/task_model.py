"""Task models and fine-tuning strategies, built on the package's BERT cells (parameter names stay Hugging Face's).

Strategies (every task):
- "finetune": everything trains, except the first `freeze_layers` encoder layers (embeddings stay trainable, as
  in the reference);
- "adapters": a bottleneck adapter (down-projection, ReLU, up-projection, residual; Houlsby et al. 2019) after the
  attention-output and the feed-forward-output projections of every layer; the pretrained model is frozen, only
  the adapters and the head train. The up-projection starts at zero, so training starts from the pretrained model;
- "extra_layer": one fresh transformer layer on top of the pretrained encoder, which is frozen; the new layer and
  the head train. The result is a plain BERT with one more layer (exportable to Hugging Face);
- "lora": low-rank adapters (LoRA, as peft builds them; see `mindformer_gf.finetune.lora`) on the query, key,
  value and dense projections of every layer (`lora_r`, `lora_alpha`, `lora_dropout`, `lora_target_modules`); the
  pretrained encoder is frozen, the adapters, the pooler and the head train. The saved model has the adapters
  merged into its weights, W + (alpha / r) B A, so it is a plain model every loader and converter reads; the
  adapters themselves are saved beside it in peft's layout (`lora_adapter/`), which peft loads.
A regression head (one output, MSE) replaces the classifier for a numeric target in every task.

Heads beyond Hugging Face's (adapters, multitask heads, attention pooling) are saved beside a standard model
directory, in `task_extras.safetensors`, with `task.json` saying how to rebuild the model (see `save_task_model`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn
from mindspore import ops as msops

from mindformer_gf.config import GeneformerConfig
from mindformer_gf.convert.writer import write_model_directory
from mindformer_gf.finetune.lora import (
    LoraSettings,
    add_lora,
    is_lora_parameter,
    lora_layers,
    merged_state_dict,
    write_peft_adapter,
)
from mindformer_gf.io import read_json, write_json
from mindformer_gf.model import BertModel, GeneformerPreTrainedModel, build_model
from mindformer_gf.model.dropout import SeededDropout
from mindformer_gf.pretrained import from_pretrained
from mindformer_gf.train.objectives import summed_cross_entropy
from mindformer_gf.train.step import Objective

STRATEGIES = ("finetune", "adapters", "extra_layer", "lora")
POOLINGS = ("cls", "attention")
TASK_FILE = "task.json"
EXTRAS_FILE = "task_extras.safetensors"
# the adapters of a LoRA model, in peft's layout (adapter_config.json + adapter_model.safetensors)
LORA_ADAPTER_DIR = "lora_adapter"
LAYER_INDEX = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


# ---- adapters ------------------------------------------------------------------------------------------------------
def _normal(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> Tensor:
    return Tensor(rng.normal(0.0, std, size=shape).astype(np.float32))


class Adapter(nn.Cell):
    """x + up(relu(down(x))): a bottleneck that is the identity when `up` is zero (its initial value)."""

    def __init__(self, hidden: int, bottleneck: int, std: float, rng: np.random.Generator) -> None:
        super().__init__()
        self.down = nn.Dense(hidden, bottleneck)
        self.up = nn.Dense(bottleneck, hidden)
        self.down.weight.set_data(_normal((bottleneck, hidden), std, rng))
        self.down.bias.set_data(Tensor(np.zeros(bottleneck, np.float32)))
        self.up.weight.set_data(Tensor(np.zeros((hidden, bottleneck), np.float32)))
        self.up.bias.set_data(Tensor(np.zeros(hidden, np.float32)))

    def construct(self, x: Tensor) -> Tensor:
        return x + self.up(msops.relu(self.down(x)))


class DenseWithAdapter(nn.Cell):
    """A pretrained projection followed by an adapter. It adopts the projection's own `weight` and `bias`
    parameters, so their names (`...output.dense.weight`) and values are unchanged; the adapter's parameters are
    `...output.dense.adapter.*`."""

    def __init__(self, dense: nn.Dense, bottleneck: int, std: float, rng: np.random.Generator) -> None:
        super().__init__()
        self.weight = dense.weight
        self.bias = dense.bias
        self.adapter = Adapter(int(dense.weight.shape[0]), bottleneck, std, rng)

    def construct(self, x: Tensor) -> Tensor:
        return self.adapter(msops.dense(x, self.weight, self.bias))


def encoder_of(model: nn.Cell) -> BertModel:
    """The BertModel inside a task model (itself, when it is one)."""
    if isinstance(model, BertModel):
        return model
    bert = getattr(model, "bert", None)
    if not isinstance(bert, BertModel):
        raise TypeError(f"{type(model).__name__} holds no BertModel encoder")
    return bert


def add_adapters(model: nn.Cell, bottleneck: int, seed: int = 0) -> None:
    """Put an adapter after the attention-output and the feed-forward-output projection of every layer."""
    if bottleneck < 1:
        raise ValueError(f"adapter bottleneck size must be >= 1, got {bottleneck}")
    encoder = encoder_of(model)
    rng = np.random.default_rng([seed, 0xADA])
    std = encoder.config.initializer_range
    for layer in encoder.encoder.layer:
        if isinstance(layer.output.dense, DenseWithAdapter):
            raise ValueError("the model already has adapters")
        layer.attention.output.dense = DenseWithAdapter(layer.attention.output.dense, bottleneck, std, rng)
        layer.output.dense = DenseWithAdapter(layer.output.dense, bottleneck, std, rng)
    # Cells added after construction keep short parameter names (`dense.adapter.down.weight`), which MindSpore
    # requires to be unique within a network: give them their full path.
    for name, param in model.parameters_and_names():
        if ".adapter." in name:
            param.name = name


# ---- freezing ------------------------------------------------------------------------------------------------------
def layer_index(name: str) -> int | None:
    match = LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def is_adapter_parameter(name: str) -> bool:
    """Whether parameter `name` belongs to an adapter (bottleneck or LoRA) added to the encoder."""
    return ".adapter." in name or is_lora_parameter(name)


def is_pretrained_part(name: str) -> bool:
    """Whether parameter `name` belongs to the pretrained encoder (embeddings, layers) rather than a head."""
    bare = name[len("bert.") :] if name.startswith("bert.") else name
    return bare.startswith(("embeddings.", "encoder.")) and not is_adapter_parameter(name)


def freeze_layers(model: nn.Cell, count: int) -> list[str]:
    """Freeze encoder layers 0..count-1 (the reference's `freeze_layers`); returns the frozen parameter names."""
    n_layers = encoder_of(model).config.num_hidden_layers
    if not 0 <= count <= n_layers:
        raise ValueError(f"freeze_layers={count} but the model has {n_layers} layers")
    frozen = []
    for name, param in model.parameters_and_names():
        index = layer_index(name)
        if index is not None and index < count and not is_adapter_parameter(name):
            param.requires_grad = False
            frozen.append(name)
    return frozen


def freeze_pretrained(model: nn.Cell, keep_layers: Sequence[int] = ()) -> list[str]:
    """Freeze the pretrained encoder (embeddings and layers), except layers `keep_layers` and adapters."""
    frozen = []
    for name, param in model.parameters_and_names():
        if is_pretrained_part(name) and layer_index(name) not in set(keep_layers):
            param.requires_grad = False
            frozen.append(name)
    return frozen


def parameter_counts(model: nn.Cell) -> dict[str, int]:
    """Trainable and total parameter counts, and the trainable ones split into encoder, adapters and heads."""
    counts = {"total": 0, "trainable": 0, "trainable_encoder": 0, "trainable_adapters": 0, "trainable_heads": 0}
    for name, param in model.parameters_and_names():
        size = int(np.prod(param.shape))
        counts["total"] += size
        if not param.requires_grad:
            continue
        counts["trainable"] += size
        if is_adapter_parameter(name):
            counts["trainable_adapters"] += size
        elif is_pretrained_part(name):
            counts["trainable_encoder"] += size
        else:
            counts["trainable_heads"] += size
    return counts


def describe_parameter_counts(counts: dict[str, int]) -> str:
    share = counts["trainable"] / max(1, counts["total"])
    return (
        f"training {counts['trainable']:,} of {counts['total']:,} parameters ({share:.1%}): encoder "
        f"{counts['trainable_encoder']:,}, adapters {counts['trainable_adapters']:,}, "
        f"heads {counts['trainable_heads']:,}"
    )


# ---- building task models ------------------------------------------------------------------------------------------
def _quiet_from_pretrained(directory: str | os.PathLike, architecture: str, seed: int, **overrides: Any):
    with warnings.catch_warnings():
        # a classifier built from a pretrained (MLM) model has a fresh head and no MLM head: that is the point
        warnings.filterwarnings("ignore", message=".*initialised fresh.*")
        warnings.filterwarnings("ignore", message=".*(dropped|not used by).*")
        return from_pretrained(directory, architecture, seed=seed, **overrides)


def load_pretrained(
    model_dir: str | os.PathLike, architecture: str, seed: int = 0, extra_layer: bool = False, **overrides: Any
) -> GeneformerPreTrainedModel:
    """`architecture` with the pretrained weights of `model_dir` (fresh heads from `seed`); with `extra_layer`, one
    more layer on top, initialised fresh (as Hugging Face initialises BERT layers)."""
    base = _quiet_from_pretrained(model_dir, architecture, seed, **overrides)
    if not extra_layer:
        return base
    config = base.config.replace(num_hidden_layers=base.config.num_hidden_layers + 1)
    model = build_model(config, architecture, seed=seed + 1)
    weights = model.state_dict()
    weights.update(base.state_dict())
    model.load_weights(weights)
    return model


def apply_strategy(
    model: nn.Cell,
    strategy: str,
    freeze_layer_count: int = 0,
    adapter_size: int = 64,
    seed: int = 0,
    lora: LoraSettings | None = None,
) -> list[str]:
    """Set what trains, as `strategy` says (see the module docstring); returns the frozen parameter names.

    For "extra_layer" the model must already have the extra layer (`load_pretrained(..., extra_layer=True)`);
    "lora" uses `lora` (default: the reference's r 64, alpha 128, dropout 0.1 on query, key, value, dense).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
    if strategy == "finetune":
        return freeze_layers(model, freeze_layer_count)
    if freeze_layer_count:
        raise ValueError(f"freeze_layers applies to strategy 'finetune'; '{strategy}' freezes the whole encoder")
    if strategy == "adapters":
        add_adapters(model, adapter_size, seed)
        return freeze_pretrained(model)
    if strategy == "lora":
        add_lora(model, lora or LoraSettings(), seed)
        return freeze_pretrained(model)
    top = encoder_of(model).config.num_hidden_layers - 1
    return freeze_pretrained(model, keep_layers=(top,))


# ---- heads and pooling ---------------------------------------------------------------------------------------------
class AttentionPooling(nn.Cell):
    """Learned attention pooling: softmax over positions of w . h_i (padding excluded), then sum_i a_i h_i.

    `include_padding` pools over padding positions too, as the reference's GeneformerMultiTask does (its
    AttentionPool sees no mask): models converted from it keep that behaviour, so their outputs stay theirs."""

    def __init__(self, hidden: int, std: float, rng: np.random.Generator, include_padding: bool = False) -> None:
        super().__init__()
        self.score = nn.Dense(hidden, 1)
        self.score.weight.set_data(_normal((1, hidden), std, rng))
        self.score.bias.set_data(Tensor(np.zeros(1, np.float32)))
        self.include_padding = bool(include_padding)

    def construct(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        scores = self.score(hidden)[:, :, 0]
        if self.include_padding:
            return (msops.softmax(scores, -1)[:, :, None] * hidden).sum(1)
        valid = attention_mask > 0
        scores = msops.where(valid, scores, msops.full_like(scores, -1e9))
        weights = msops.softmax(scores, -1) * valid.astype(hidden.dtype)
        return (weights[:, :, None] * hidden).sum(1)


class MultitaskModel(GeneformerPreTrainedModel):
    """A shared encoder, one pooling (position 0 or attention) and one linear head per task.

    `construct(input_ids, attention_mask)` returns one logits tensor [B, classes_t] per task (a regression task
    has one output). Parameter names: `bert.*` (the encoder), `attention_pool.*`, `heads.<t>.*`.
    """

    architecture = "BertModel"

    def __init__(
        self,
        encoder: BertModel,
        task_sizes: Sequence[int],
        pooling: str = "cls",
        seed: int = 0,
        pool_padding: bool = False,
    ) -> None:
        super().__init__(encoder.config)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        rng = np.random.default_rng([seed, 0x3717])
        hidden, std = encoder.config.hidden_size, encoder.config.initializer_range
        self.bert = encoder
        self.pooling = pooling
        self.task_sizes = tuple(int(n) for n in task_sizes)
        if pooling == "attention":
            self.attention_pool = AttentionPooling(hidden, std, rng, include_padding=pool_padding)
        self.dropout = SeededDropout(encoder.config.classifier_dropout_prob, encoder.impl, 0, "classifier")
        heads = []
        for size in self.task_sizes:
            head = nn.Dense(hidden, size)
            head.weight.set_data(_normal((size, hidden), std, rng))
            head.bias.set_data(Tensor(np.zeros(size, np.float32)))
            heads.append(head)
        self.heads = nn.CellList(heads)
        # the encoder's pooler (dense + tanh) is not used: keep it out of the optimiser
        for name, param in self.parameters_and_names():
            if name.startswith("bert.pooler."):
                param.requires_grad = False

    def construct(self, input_ids: Tensor, attention_mask: Tensor, dropout_seed: Tensor | None = None) -> tuple:
        hidden = self.bert.encode(input_ids, attention_mask, dropout_seed)[-1]
        if self.pooling == "attention":
            pooled = self.attention_pool(hidden, attention_mask)
        else:
            pooled = hidden[:, 0]
        pooled = self.dropout(pooled, dropout_seed)
        outputs = ()
        for head in self.heads:
            outputs = outputs + (head(pooled),)
        return outputs


# ---- objectives ----------------------------------------------------------------------------------------------------
def summed_squared_error(prediction: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of squared errors, number of targets) over finite targets (NaN marks "no target")."""
    prediction = prediction.astype(ms.float32)
    targets = targets.astype(ms.float32)
    keep = targets == targets  # False exactly where NaN
    safe = msops.where(keep, targets, msops.zeros_like(targets))
    weight = keep.astype(ms.float32)
    error = (prediction - safe) * weight
    return (error * error).sum(), weight.sum()


class RegressionObjective(Objective):
    """MSE of the model's single output ([B, 1] per cell or [B, L, 1] per token) against float `targets`."""

    input_names = ("input_ids", "attention_mask", "targets")
    metric_names = ()

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, dropout_seed: Tensor, input_ids: Tensor, attention_mask: Tensor, targets: Tensor) -> tuple:
        prediction = self.model(input_ids, attention_mask, False, dropout_seed)[0][..., 0]
        return summed_squared_error(prediction, targets)


class MultitaskObjective(Objective):
    """sum_t w_t * (sum of task t's loss over cells): cross-entropy for classification tasks, squared error for
    regression tasks; items = labelled cells (every cell has every task's label). "correct" is summed over the
    classification tasks and divided by their number, so the loop's accuracy is their mean accuracy."""

    metric_names = ("correct",)

    def __init__(self, model: MultitaskModel, regression: Sequence[bool], weights: Sequence[float]) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.regression = tuple(bool(r) for r in regression)
        self.weights = tuple(float(w) for w in weights)
        self.n_classification = max(1, sum(1 for r in self.regression if not r))
        self.input_names = ("input_ids", "attention_mask") + tuple(f"labels_{t}" for t in range(len(self.weights)))

    def construct(self, dropout_seed: Tensor, input_ids: Tensor, attention_mask: Tensor, *labels: Tensor) -> tuple:
        outputs = self.model(input_ids, attention_mask, dropout_seed)
        loss = msops.zeros((), ms.float32)
        correct = msops.zeros((), ms.float32)
        items = msops.zeros((), ms.float32)
        for t in range(len(self.weights)):
            if self.regression[t]:
                task_loss, count = summed_squared_error(outputs[t][:, 0], labels[t])
            else:
                task_loss, count, task_correct = summed_cross_entropy(outputs[t], labels[t])
                correct = correct + task_correct / self.n_classification
            loss = loss + self.weights[t] * task_loss
            if t == 0:
                items = count
        return loss, items, correct


# ---- saving and loading --------------------------------------------------------------------------------------------
def split_extras(weights: dict[str, np.ndarray], config: GeneformerConfig, architecture: str):
    """(weights of `architecture`'s standard parameter table, everything else)."""
    table = set(config.parameter_shapes(architecture))
    standard = {k: v for k, v in weights.items() if k in table}
    extras = {k: v for k, v in weights.items() if k not in table}
    return standard, extras


def save_task_model(model: nn.Cell, directory: str | os.PathLike, task: dict[str, Any], force: bool = True) -> Path:
    """Save a task model as a MindSpore model directory (`gf convert --to huggingface` exports it), plus the task
    description (`task.json`) and any parameters outside the Hugging Face architecture (`task_extras.safetensors`).

    The directory is assembled under a temporary name and renamed into place.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    # LoRA adapters are merged into the weights they adapt: the saved model is a plain one
    has_lora = bool(lora_layers(model))
    state = merged_state_dict(model) if has_lora else model.state_dict()
    if isinstance(model, MultitaskModel):
        architecture, config = "BertModel", model.bert.config
        weights = {k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")}
        extras = {k: v for k, v in state.items() if not k.startswith("bert.")}
        adapter_weights = {k: v for k, v in weights.items() if ".adapter." in k}
        weights = {k: v for k, v in weights.items() if ".adapter." not in k}
        extras.update({f"bert.{k}": v for k, v in adapter_weights.items()})
    else:
        architecture, config = model.architecture, model.config
        weights, extras = split_extras(state, config, architecture)

    def write_task_files(staging: Path) -> None:
        if extras:
            save_file(extras, str(staging / EXTRAS_FILE))
        description = {**task, "architecture": architecture, "extras": sorted(extras)}
        if has_lora:
            description["lora_merged"] = True
            if not isinstance(model, MultitaskModel):
                write_peft_adapter(
                    model,
                    staging / LORA_ADAPTER_DIR,
                    lora_settings_of(task),
                    base_model_name_or_path=task.get("source_model"),
                    modules_to_save=trained_heads(model),
                )
                description["lora_adapter"] = LORA_ADAPTER_DIR
        write_json(staging / TASK_FILE, description)

    write_model_directory(
        weights, config, architecture, directory, format="safetensors", force=force, extra_files=write_task_files
    )
    return directory


def trained_heads(model: nn.Cell) -> list[str]:
    """peft's `modules_to_save` for a model whose adapters are saved in peft's layout: its classifier and pooler."""
    heads = ["classifier"] if hasattr(model, "classifier") else []
    return heads + (["pooler"] if hasattr(encoder_of(model), "pooler") else [])


def lora_settings_of(task: dict[str, Any]) -> LoraSettings:
    """The LoRA settings a task description records (`task_description` writes them), the defaults otherwise."""
    defaults = LoraSettings()
    return LoraSettings(
        int(task.get("lora_r", defaults.r)),
        float(task.get("lora_alpha", defaults.alpha)),
        float(task.get("lora_dropout", defaults.dropout)),
        tuple(task.get("lora_target_modules", defaults.target_modules)),
    )


def read_task(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / TASK_FILE
    return read_json(path) if path.is_file() else None


def load_task_model(directory: str | os.PathLike) -> nn.Cell:
    """Rebuild a model saved by `save_task_model` (adapters, multitask heads and all), ready for inference."""
    from safetensors.numpy import load_file

    task = read_task(directory)
    if task is None:
        raise FileNotFoundError(f"{directory} has no {TASK_FILE}: it is not a fine-tuned task model of this package")
    architecture = task["architecture"]
    base = _quiet_from_pretrained(directory, architecture, 0)
    extras_path = Path(directory) / EXTRAS_FILE
    extras = load_file(str(extras_path)) if extras_path.is_file() else {}
    if task.get("kind") == "multitask":
        model = MultitaskModel(
            base, task["task_sizes"], task["pooling"], pool_padding=bool(task.get("pool_padding", False))
        )
    else:
        model = base
    if any(".adapter." in k for k in extras):
        add_adapters(model, int(task["adapter_size"]))
    if task.get("lora_merged") is False:
        # adapters kept apart (a converted peft directory): put them back on, unmerged, as peft holds them
        from mindformer_gf.finetune.lora import apply_peft_adapter, read_peft_adapter

        adapter_dir = Path(directory) / task.get("lora_adapter", LORA_ADAPTER_DIR)
        apply_peft_adapter(model, read_peft_adapter(adapter_dir, architecture))
    weights = model.state_dict()
    unknown = sorted(set(extras) - set(weights))
    if unknown:
        raise KeyError(f"{extras_path}: parameters the rebuilt model does not have: {unknown[:5]}")
    weights.update(extras)
    model.load_weights(weights)
    model.set_train(False)
    return model


def load_encoder(model_dir: str | os.PathLike) -> nn.Cell:
    """The BertModel of any model directory: pretrained (MLM), a classifier, or a task model of this package
    (adapters included). Heads are not loaded."""
    if read_task(model_dir) is not None:
        return encoder_of(load_task_model(model_dir))

    with warnings.catch_warnings():
        # the MLM head or classifier of the checkpoint is deliberately not loaded, the unused pooler may be fresh
        warnings.filterwarnings("ignore", message=".*(dropped|not used by|initialised fresh).*")
        encoder = from_pretrained(model_dir, "BertModel")
    encoder.set_train(False)
    return encoder
