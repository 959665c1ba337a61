"""GeneformerConfig: one object that drives every model, read from and written back to a Hugging Face config.json.

Every released Geneformer checkpoint is a Hugging Face BERT; this module knows every field those checkpoints use,
keeps fields it does not use (so a config round-trips unchanged), names the released models as presets, refuses
configurations the model cannot honour, and owns the table of parameter names and shapes per architecture (the
single source the converter, the numpy reference and the MindSpore model agree on).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mindformer_gf.io import write_text

SUPPORTED_ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu")
SUPPORTED_POSITION_EMBEDDINGS = ("absolute",)
ATTENTION_IMPLS = ("auto", "fused", "builtin", "composed")
ARCHITECTURES = ("BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification", "BertModel")


class ConfigError(ValueError):
    """A configuration the model cannot honour; `field` names the offending config.json key."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"config field '{field_name}': {message}")
        self.field = field_name


@dataclass
class GeneformerConfig:
    vocab_size: int = 25426
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.02
    attention_probs_dropout_prob: float = 0.02
    max_position_embeddings: int = 2048
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    architectures: list[str] = field(default_factory=lambda: ["BertForMaskedLM"])
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    model_type: str = "bert"
    # Our own field: which backend runs attention and add+LayerNorm (see mindformer_gf.ops).
    attention_impl: str = "auto"
    # Fields of config.json that the model does not use (transformers_version, use_cache, ...), kept verbatim.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2

    @property
    def architecture(self) -> str:
        return self.architectures[0] if self.architectures else "BertModel"

    @property
    def classifier_dropout_prob(self) -> float:
        """Dropout before a classifier: `classifier_dropout` when set, else `hidden_dropout_prob` (as in HF)."""
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    # ---- validation -----------------------------------------------------------------------------------------
    def validate(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                "num_attention_heads",
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; the head size must divide the hidden size",
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                "hidden_act", f"activation {self.hidden_act!r} is not implemented; use one of {SUPPORTED_ACTIVATIONS}"
            )
        if self.position_embedding_type not in SUPPORTED_POSITION_EMBEDDINGS:
            raise ConfigError(
                "position_embedding_type",
                f"{self.position_embedding_type!r} is not implemented; only absolute position embeddings are "
                "(every released Geneformer model uses them)",
            )
        if self.model_type != "bert":
            raise ConfigError("model_type", f"Geneformer models are BERT models, got {self.model_type!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(name, f"must be a probability in [0, 1), got {value!r}")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ConfigError("classifier_dropout", f"must be in [0, 1) or null, got {self.classifier_dropout!r}")
        if not self.layer_norm_eps > 0:
            raise ConfigError("layer_norm_eps", f"must be positive, got {self.layer_norm_eps!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError("pad_token_id", f"{self.pad_token_id} is outside the vocabulary of {self.vocab_size}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError("attention_impl", f"{self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        if not self.architectures or self.architectures[0] not in ARCHITECTURES:
            raise ConfigError(
                "architectures",
                f"{self.architectures!r} names no model this package builds; use one of {ARCHITECTURES}",
            )

    # ---- Hugging Face config.json -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneformerConfig:
        data = dict(data)
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {k: data.pop(k) for k in list(data) if k in known}
        if kwargs.get("id2label") is not None:
            kwargs["id2label"] = {int(k): str(v) for k, v in kwargs["id2label"].items()}
        label2id = data.pop("label2id", None)
        num_labels = data.pop("num_labels", None)
        if kwargs.get("id2label") is None and label2id:
            kwargs["id2label"] = {int(v): str(k) for k, v in label2id.items()}
        if kwargs.get("id2label") is None and num_labels is not None:
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(int(num_labels))}
        return cls(**kwargs, extra=data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "attention_impl" and value == "auto":
                continue  # not a Hugging Face field: only written when the user chose one
            if f.name in ("classifier_dropout", "problem_type", "id2label") and value is None:
                continue
            out[f.name] = value
        if self.id2label is not None:
            out["id2label"] = {str(k): v for k, v in sorted(self.id2label.items())}
            out["label2id"] = {v: k for k, v in sorted(self.id2label.items())}
        out.update(self.extra)
        return dict(sorted(out.items()))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GeneformerConfig:
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as err:
                raise ConfigError("config.json", f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> GeneformerConfig:
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no config.json; is it a Hugging Face model directory?")
        return cls.from_json_file(path)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json into `directory` atomically (temporary file, then rename)."""
        return write_text(Path(directory) / "config.json", self.to_json_string())

    # ---- presets --------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GeneformerConfig:
        key = PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS) + sorted(PRESET_ALIASES)}")
        return cls(**{**PRESETS[key], **overrides})

    def replace(self, **changes: Any) -> GeneformerConfig:
        data = self.to_dict()
        data.update(changes)
        return GeneformerConfig.from_dict(data)

    # ---- the parameter table --------------------------------------------------------------------------------
    def parameter_shapes(self, architecture: str | None = None) -> dict[str, tuple[int, ...]]:
        """Hugging Face state-dict names and shapes of `architecture`'s parameters (our MindSpore names are equal).

        The tied MLM decoder weight and the `position_ids` buffer are not parameters and are not listed.
        """
        architecture = architecture or self.architecture
        if architecture not in ARCHITECTURES:
            raise ConfigError("architectures", f"{architecture!r} is not one of {ARCHITECTURES}")
        hidden, ffn = self.hidden_size, self.intermediate_size
        prefix = "" if architecture == "BertModel" else "bert."
        shapes: dict[str, tuple[int, ...]] = {
            f"{prefix}embeddings.word_embeddings.weight": (self.vocab_size, hidden),
            f"{prefix}embeddings.position_embeddings.weight": (self.max_position_embeddings, hidden),
            f"{prefix}embeddings.token_type_embeddings.weight": (self.type_vocab_size, hidden),
            f"{prefix}embeddings.LayerNorm.weight": (hidden,),
            f"{prefix}embeddings.LayerNorm.bias": (hidden,),
        }
        linears = {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (ffn, hidden),
            "output.dense": (hidden, ffn),
        }
        for i in range(self.num_hidden_layers):
            layer = f"{prefix}encoder.layer.{i}."
            for name, (out_dim, in_dim) in linears.items():
                shapes[layer + name + ".weight"] = (out_dim, in_dim)
                shapes[layer + name + ".bias"] = (out_dim,)
                if name in ("attention.output.dense", "output.dense"):
                    norm = layer + name.rsplit(".", 1)[0] + ".LayerNorm"
                    shapes[norm + ".weight"] = (hidden,)
                    shapes[norm + ".bias"] = (hidden,)
        if architecture in ("BertModel", "BertForSequenceClassification"):
            shapes[f"{prefix}pooler.dense.weight"] = (hidden, hidden)
            shapes[f"{prefix}pooler.dense.bias"] = (hidden,)
        if architecture == "BertForMaskedLM":
            shapes["cls.predictions.transform.dense.weight"] = (hidden, hidden)
            shapes["cls.predictions.transform.dense.bias"] = (hidden,)
            shapes["cls.predictions.transform.LayerNorm.weight"] = (hidden,)
            shapes["cls.predictions.transform.LayerNorm.bias"] = (hidden,)
            shapes["cls.predictions.bias"] = (self.vocab_size,)
        if architecture in ("BertForSequenceClassification", "BertForTokenClassification"):
            shapes["classifier.weight"] = (self.num_labels, hidden)
            shapes["classifier.bias"] = (self.num_labels,)
        return shapes

    def num_parameters(self, architecture: str | None = None) -> int:
        total = 0
        for shape in self.parameter_shapes(architecture).values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total


def _preset(hidden: int, layers: int, heads: int, ffn: int, positions: int, vocab: int, dropout: float) -> dict:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
        vocab_size=vocab,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        hidden_act="relu",
        layer_norm_eps=1e-12,
    )


# The released checkpoints (geneformer-reference.md): name -> config fields. V1 vocab 25426, V2 vocab 20275.
PRESETS: dict[str, dict[str, Any]] = {
    "Geneformer-V1-10M": _preset(256, 6, 4, 512, 2048, 25426, 0.02),
    "gf-12L-30M-i2048": _preset(512, 12, 8, 1024, 2048, 25426, 0.02),
    "gf-12L-95M-i4096": _preset(512, 12, 8, 1024, 4096, 20275, 0.02),
    "gf-20L-95M-i4096": _preset(896, 20, 14, 1792, 4096, 20275, 0.02),
    "Geneformer-V2-104M": _preset(768, 12, 12, 3072, 4096, 20275, 0.1),
    "Geneformer-V2-104M_CLcancer": _preset(768, 12, 12, 3072, 4096, 20275, 0.1),
    "Geneformer-V2-316M": _preset(1152, 18, 18, 4608, 4096, 20275, 0.1),
}
PRESET_ALIASES = {"gf-6L-30M-i2048": "Geneformer-V1-10M"}
V1_VOCAB_SIZE = 25426
V2_VOCAB_SIZE = 20275
