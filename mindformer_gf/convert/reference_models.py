"""The reference's fine-tuned models in, as this package's task models: `GeneformerMultiTask` checkpoints and peft
LoRA adapter directories.

- A `GeneformerMultiTask` directory (what the reference's MTLClassifier saves under `GeneformerMultiTask/`):
  config.json, pytorch_model.bin (or model.safetensors) with `bert.*`, `classification_heads.{i}.weight/bias` and,
  with attention pooling, `attention_pool.attention_weights` [hidden, 1]; `hyperparameters.json` beside it. It
  becomes a multitask task model (`finetune.task_model.MultitaskModel`, `task.json` kind "multitask") with CLS or
  attention pooling. The reference's attention pooling has no bias and softmaxes over padding positions too; the
  converted model keeps both (`pool_padding` in task.json), so it computes what the reference computed. Task names
  and classes come from the reference's `task_label_mappings.pkl` ({task: {label: index}}; read with the
  allow-list unpickler) when it is beside the model or given, else `task1..taskN` with numbered classes.
- A peft LoRA directory (adapter_config.json + adapter_model.safetensors) on its base model (the config's
  `base_model_name_or_path`, or `base_model`): merged (W + scaling B A, a plain model directory every loader reads)
  or kept (the base model, converted, with the adapter directory in `lora_adapter/` and task.json saying so;
  `load_task_model` puts the adapters back on).

Names go through `convert.names` (`from_reference_multitask_name`, `from_peft_name`).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.config import GeneformerConfig
from mindformer_gf.convert.converter import ConversionReport, _check_destination
from mindformer_gf.convert.dtypes import to_float32
from mindformer_gf.convert.names import (
    ATTENTION_POOL_BIAS,
    ATTENTION_POOL_WEIGHT,
    PEFT_ADAPTER_CONFIG,
    PEFT_ADAPTER_WEIGHTS,
    REFERENCE_ATTENTION_POOL,
    REFERENCE_MULTITASK_HEADS,
    from_reference_multitask_name,
)
from mindformer_gf.convert.readers import CONFIG, open_huggingface_weights, open_model_weights
from mindformer_gf.convert.tensors import CheckpointError
from mindformer_gf.io import read_json

REFERENCE_MULTITASK = "reference-multitask"
PEFT_LORA = "peft-lora"
HUGGINGFACE = "huggingface"
LABEL_MAPPINGS = "task_label_mappings.pkl"
HYPERPARAMETERS = "hyperparameters.json"


def detect_source(src: str | os.PathLike) -> str:
    """What `src` holds: a peft LoRA directory, a reference GeneformerMultiTask checkpoint, or (anything else) a
    Hugging Face model directory for the plain converter."""
    src = Path(src)
    if (src / PEFT_ADAPTER_CONFIG).is_file() or (src / PEFT_ADAPTER_WEIGHTS).is_file():
        return PEFT_LORA
    if (src / CONFIG).is_file():
        try:
            with open_huggingface_weights(src) as weights:
                if any(REFERENCE_MULTITASK_HEADS.match(key) for key in weights.tensors):
                    return REFERENCE_MULTITASK
        except (CheckpointError, FileNotFoundError):
            pass  # the plain converter reports what is wrong with the directory
    return HUGGINGFACE


def _report(src: Path, dst: Path, source_format: str, architecture: str, tensors: dict[str, np.ndarray]):
    return ConversionReport(
        source=src,
        destination=dst,
        direction="mindspore",
        source_format=source_format,
        output_format="safetensors",
        architecture=architecture,
        tensor_count=len(tensors),
        total_bytes=sum(int(v.nbytes) for v in tensors.values()),
        dtypes={"F32": len(tensors)},
    )


# ---- GeneformerMultiTask -----------------------------------------------------------------------------------------
def _label_mappings(path: Path | None, sizes: list[int], source: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(task names, id2label per task) from the reference's task_label_mappings.pkl, or numbered ones."""
    from mindformer_gf.safe_pickle import safe_load

    if path is None:
        names = [f"task{t + 1}" for t in range(len(sizes))]
        return names, [{str(i): str(i) for i in range(n)} for n in sizes]
    mappings = safe_load(str(path))
    if not isinstance(mappings, dict) or not all(isinstance(m, dict) for m in mappings.values()):
        raise CheckpointError(f"{path}: expected {{task: {{label: index}}}} as the reference writes it")
    if len(mappings) != len(sizes):
        raise CheckpointError(
            f"{path} names {len(mappings)} tasks but {source} has {len(sizes)} classification heads; pass the "
            "task_label_mappings.pkl of the run that trained this model"
        )
    names, id2labels = [], []
    for (task, mapping), size in zip(mappings.items(), sizes, strict=True):
        if sorted(int(i) for i in mapping.values()) != list(range(size)):
            raise CheckpointError(f"{path}: task {task!r} has {len(mapping)} classes but its head {size} outputs")
        names.append(str(task))
        id2labels.append({str(int(i)): str(label) for label, i in mapping.items()})
    return names, id2labels


def convert_reference_multitask(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    label_mappings: str | os.PathLike | None = None,
    task_columns: list[str] | None = None,
    force: bool = False,
) -> ConversionReport:
    """Convert a reference `GeneformerMultiTask` directory into a multitask task model directory (see the module
    docstring); `label_mappings` is the reference's task_label_mappings.pkl (default: the one beside the model).
    `task_columns` (the reference's `task_columns`, in its order) names the tasks by their dataset columns, which
    `gf classify multitask --evaluate` needs; the reference's mappings call them task1..taskN."""
    from mindformer_gf.finetune.task_model import MultitaskModel, save_task_model
    from mindformer_gf.model import build_model

    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    _check_destination(src, dst, force)
    config = GeneformerConfig.from_pretrained(src)
    encoder = build_model(config, "BertModel", seed=None)
    expected = {f"bert.{name}": tuple(p.shape) for name, p in encoder.named_parameters().items()}
    encoder_weights: dict[str, np.ndarray] = {}
    heads: dict[int, dict[str, np.ndarray]] = {}
    pool = None
    unexpected = []
    with open_huggingface_weights(src) as weights:
        source_format = weights.format
        for key, info in weights.tensors.items():
            name = from_reference_multitask_name(key)
            if name is None:
                continue
            value = to_float32(info.read(), info.dtype)
            if (match := REFERENCE_MULTITASK_HEADS.match(key)) is not None:
                heads.setdefault(int(match.group(1)), {})[match.group(2)] = value
            elif key == REFERENCE_ATTENTION_POOL:
                pool = value
            elif name in expected:
                if tuple(value.shape) != expected[name]:
                    raise CheckpointError(
                        f"{src}: {key} has shape {tuple(value.shape)}, config.json gives {expected[name]}"
                    )
                encoder_weights[name[len("bert.") :]] = value
            else:
                unexpected.append(key)
    if unexpected:
        raise CheckpointError(f"{src}: keys a GeneformerMultiTask has no parameter for: {sorted(unexpected)[:5]}")
    missing = sorted(n for n in expected if n[len("bert.") :] not in encoder_weights and ".pooler." not in n)
    if missing:
        raise CheckpointError(f"{src}: the checkpoint lacks encoder parameters {missing[:5]}; is config.json its own?")
    if sorted(heads) != list(range(len(heads))) or any(set(h) != {"weight", "bias"} for h in heads.values()):
        raise CheckpointError(f"{src}: classification_heads must be numbered 0..N-1, each with weight and bias")
    sizes = [int(heads[t]["weight"].shape[0]) for t in range(len(heads))]
    hyper_path = src / HYPERPARAMETERS
    hyper = read_json(hyper_path) if hyper_path.is_file() else {}
    if "use_attention_pooling" in hyper and bool(hyper["use_attention_pooling"]) != (pool is not None):
        raise CheckpointError(
            f"{hyper_path} says use_attention_pooling={hyper['use_attention_pooling']} but the checkpoint "
            f"{'has no' if pool is None else 'has an'} attention_pool; they come from different runs"
        )
    pooling = "cls" if pool is None else "attention"
    mappings_path = Path(label_mappings) if label_mappings is not None else src / LABEL_MAPPINGS
    if label_mappings is not None and not mappings_path.is_file():
        raise FileNotFoundError(f"label mappings {mappings_path} not found")
    tasks, id2labels = _label_mappings(mappings_path if mappings_path.is_file() else None, sizes, src)
    if task_columns is not None:
        if len(task_columns) != len(sizes):
            raise ValueError(f"{len(task_columns)} task columns given but {src} has {len(sizes)} task heads")
        tasks = [str(c) for c in task_columns]

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*initialised fresh.*")
        if not any(k.startswith("pooler.") for k in encoder_weights):
            # the reference's BertModel has a pooler it never uses; a checkpoint without one gets zeros
            encoder_weights.update(
                {k: np.zeros(v.shape, np.float32) for k, v in encoder.state_dict().items() if k.startswith("pooler.")}
            )
        encoder.load_weights(encoder_weights)
    model = MultitaskModel(encoder, sizes, pooling, pool_padding=True)
    state = model.state_dict()
    for t in range(len(sizes)):
        state[f"heads.{t}.weight"], state[f"heads.{t}.bias"] = heads[t]["weight"], heads[t]["bias"]
    if pool is not None:
        if tuple(pool.shape) != (config.hidden_size, 1):
            raise CheckpointError(
                f"{src}: {REFERENCE_ATTENTION_POOL} has shape {pool.shape}, not [{config.hidden_size}, 1]"
            )
        state[ATTENTION_POOL_WEIGHT] = np.ascontiguousarray(pool.T)
        state[ATTENTION_POOL_BIAS] = np.zeros(1, np.float32)
    model.load_weights(state)
    weights_by_task = hyper.get("task_weights") or [1.0] * len(sizes)
    task = {
        "kind": "multitask",
        "strategy": "finetune",
        "freeze_layers": int(hyper.get("max_layers_to_freeze", 0) or 0),
        "adapter_size": 64,
        "tasks": tasks,
        "task_sizes": sizes,
        "task_weights": [float(w) for w in weights_by_task],
        "regression": [False] * len(sizes),
        "pooling": pooling,
        "pool_padding": True,
        "id2labels": id2labels,
        "target_scales": [None] * len(sizes),
        "source_model": str(src),
        "converted_from": "GeneformerMultiTask",
    }
    save_task_model(model, dst, task, force=force)
    report = _report(src, dst, source_format, f"MultitaskModel ({pooling} pooling, {len(sizes)} tasks)", state)
    report.seconds = time.perf_counter() - started
    return report


# ---- peft LoRA adapters ------------------------------------------------------------------------------------------
def load_adapted_model(
    src: str | os.PathLike, base_model: str | os.PathLike | None = None, architecture: str | None = None
) -> tuple[Any, Any, Path]:
    """(our model of the adapter's task type (or `architecture`) on its base, with the adapters on it, unmerged;
    the adapter; the base model directory)."""
    from mindformer_gf.finetune.lora import apply_peft_adapter, read_peft_adapter
    from mindformer_gf.pretrained import from_pretrained

    src = Path(src)
    adapter = read_peft_adapter(src, architecture)
    base = base_model if base_model is not None else adapter.config.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{src}/{PEFT_ADAPTER_CONFIG} names no base model; pass --base-model DIR (base_model=)")
    base = Path(base)
    if not (base / CONFIG).is_file():
        raise CheckpointError(
            f"the adapter's base model {base} is not a model directory here; pass --base-model DIR (base_model=)"
        )
    if architecture is None and adapter.config.get("task_type") == "TOKEN_CLS":
        warnings.warn(
            f"{src}: task_type TOKEN_CLS, converted as a gene classifier (BertForTokenClassification); the reference's "
            "Classifier writes TOKEN_CLS for cell classifiers too: pass --architecture BertForSequenceClassification "
            "for one",
            stacklevel=2,
        )
    architecture = architecture or adapter.architecture or "BertModel"
    overrides: dict[str, Any] = {"architectures": [architecture]}
    classifier = adapter.heads.get("classifier.weight")
    if classifier is not None:
        overrides["id2label"] = {i: f"LABEL_{i}" for i in range(int(classifier.shape[0]))}
        base_config = GeneformerConfig.from_pretrained(base)
        if base_config.num_labels == classifier.shape[0]:
            overrides["id2label"] = dict(base_config.id2label)
    elif architecture != "BertModel":
        config = GeneformerConfig.from_pretrained(base)
        if config.architecture != architecture:
            raise CheckpointError(
                f"{src}: a {adapter.config.get('task_type')} adapter that saves no classifier, on a base ({base}) "
                "without one: the classifier it was trained with is not in either"
            )
    if architecture == "BertForSequenceClassification" and not any(".pooler." in k for k in adapter.heads):
        with open_model_weights(base) as weights:
            base_has_pooler = any(".pooler." in f".{key}" for key in weights.tensors)
        if not base_has_pooler:
            warnings.warn(
                f"{src}: neither the adapter nor its base {base} holds the pooler the classifier was trained with "
                "(peft saved only the classifier, and the base is a masked-LM checkpoint): it is initialised fresh, "
                "so the converted model's outputs are not the trained model's",
                stacklevel=2,
            )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(initialised fresh|dropped|not used by).*")
        model = from_pretrained(base, architecture, **overrides)
    apply_peft_adapter(model, adapter)
    model.set_train(False)
    return model, adapter, base


def convert_lora_adapter(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    base_model: str | os.PathLike | None = None,
    merge: bool = True,
    architecture: str | None = None,
    force: bool = False,
) -> ConversionReport:
    """Convert the peft LoRA directory `src` on its base model into a model directory: merged (the default; a
    plain model of the adapter's task type) or with the adapters kept (`lora_adapter/`, put back on by
    `load_task_model`). `architecture` overrides the one the adapter's task_type implies: the reference's
    Classifier saves cell classifiers (BertForSequenceClassification) with task_type TOKEN_CLS."""
    from mindformer_gf.convert.writer import write_model_directory
    from mindformer_gf.finetune.lora import is_lora_parameter, merged_state_dict
    from mindformer_gf.finetune.task_model import LORA_ADAPTER_DIR, TASK_FILE
    from mindformer_gf.io import write_json

    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    _check_destination(src, dst, force)
    model, adapter, base = load_adapted_model(src, base_model, architecture)
    architecture = model.architecture
    settings = adapter.settings()
    if merge:
        weights = merged_state_dict(model)
        extra_files = None
    else:
        weights = {k: v for k, v in model.state_dict().items() if not is_lora_parameter(k)}

        def extra_files(staging: Path) -> None:
            (staging / LORA_ADAPTER_DIR).mkdir()
            for name in (PEFT_ADAPTER_CONFIG, PEFT_ADAPTER_WEIGHTS):
                shutil.copyfile(src / name, staging / LORA_ADAPTER_DIR / name)
            write_json(
                staging / TASK_FILE,
                {
                    "kind": "lora_adapter",
                    "architecture": architecture,
                    "strategy": "lora",
                    "lora_r": settings.r,
                    "lora_alpha": settings.alpha,
                    "lora_dropout": settings.dropout,
                    "lora_target_modules": list(settings.target_modules),
                    "lora_merged": False,
                    "lora_adapter": LORA_ADAPTER_DIR,
                    "source_model": str(base),
                    "extras": [],
                },
            )

    write_model_directory(
        weights, model.config, architecture, dst, format="safetensors", force=force, extra_files=extra_files
    )
    report = _report(src, dst, f"peft LoRA on {base}", architecture, weights)
    report.seconds = time.perf_counter() - started
    return report
