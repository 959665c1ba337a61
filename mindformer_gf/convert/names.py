"""The name table between Hugging Face state dicts and this package's models.

Our MindSpore parameters carry the Hugging Face names themselves (see mindformer_gf.model.bert), so the table is
the identity on every parameter of `GeneformerConfig.parameter_shapes`; what remains are the keys a Hugging Face
file holds that are not parameters here (buffers, tied copies), the heads one architecture has and another has not,
and the `bert.` prefix that HF's bare BertModel omits. Nothing else in the converter knows a parameter name.
"""

from __future__ import annotations

import re

ENCODER_PREFIX = "bert."

# Buffers a Hugging Face file may hold, with the reason they are not parameters here.
BUFFER_KEYS = {
    "bert.embeddings.position_ids": "buffer arange(max_positions), recomputed",
    "embeddings.position_ids": "buffer arange(max_positions), recomputed",
    "bert.embeddings.token_type_ids": "buffer of zeros (Geneformer has one segment), recomputed",
    "embeddings.token_type_ids": "buffer of zeros (Geneformer has one segment), recomputed",
}

# The masked-LM head, where the tied copies below live: without it they are dropped with the rest of the head.
MLM_HEAD_PREFIX = "cls."

# Tied copies: the MLM decoder is the word-embedding table and the decoder bias is `cls.predictions.bias`.
# transformers leaves them out of safetensors files; torch.save stores them as the same storage.
TIED_KEYS = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}

# Keys that HF files may hold and that are not parameters of ours, with the reason.
NON_PARAMETER_KEYS = {**BUFFER_KEYS, **{key: f"tied to {partner}" for key, partner in TIED_KEYS.items()}}

# Heads that one architecture has and another has not. A checkpoint's head that the requested architecture has no
# place for is dropped (and reported), as transformers does when it builds a classifier from a pretrained model.
HEAD_PREFIXES = ("bert.pooler.", "pooler.", "cls.", "classifier.")

# Parameters a checkpoint may lack and that can then be initialised fresh: a classifier built from a pretrained
# (masked-LM) checkpoint has no pooler and no classifier yet. Everything else must come from the checkpoint.
FRESH_ALLOWED_PREFIXES = ("bert.pooler.", "pooler.", "classifier.")


def to_model_name(hf_key: str, architecture: str) -> str | None:
    """Our parameter name for a Hugging Face key, or None for keys that are not parameters here.

    A checkpoint of the bare encoder (BertModel, keys without `bert.`) loads into a model with a head, and the
    encoder of a model with a head loads into a bare BertModel.
    """
    if hf_key in NON_PARAMETER_KEYS:
        return None
    if architecture == "BertModel":
        return hf_key[len(ENCODER_PREFIX) :] if hf_key.startswith(ENCODER_PREFIX) else hf_key
    if hf_key.startswith(("embeddings.", "encoder.", "pooler.")):
        return ENCODER_PREFIX + hf_key
    return hf_key


def to_hf_name(model_name: str) -> str:
    """The Hugging Face key of one of our parameters (the same string: the table is the identity)."""
    return model_name


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def may_be_fresh(name: str) -> bool:
    return name.startswith(FRESH_ALLOWED_PREFIXES)


# ---- peft's LoRA adapters ----------------------------------------------------------------------------------------
# peft's directory layout, and the prefix its PeftModel puts before the wrapped model's own names
# (`base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`); saved keys carry no adapter name.
PEFT_ADAPTER_CONFIG = "adapter_config.json"
PEFT_ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_FACTORS = (".lora_A.", ".lora_B.")
_ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")


def to_peft_name(model_name: str) -> str:
    """peft's saved key of one of our parameters (a LoRA factor, or a head it saves with `modules_to_save`)."""
    return PEFT_PREFIX + model_name


def from_peft_name(peft_key: str, architecture: str) -> str | None:
    """Our parameter name for a key of peft's adapter_model.safetensors (None: not a key of that layout). An adapter
    name left in a key (`lora_A.default.weight`, as in a state dict taken from a live PeftModel) is dropped."""
    if not peft_key.startswith(PEFT_PREFIX):
        return None
    name = _ADAPTER_NAME.sub(r".\1.weight", peft_key[len(PEFT_PREFIX) :])
    name = name.replace(".modules_to_save.default.", ".")
    return to_model_name(name, architecture)


def lora_target_of(name: str) -> str | None:
    """The adapted projection of a LoRA factor's name (`...query.lora_A.weight` -> `...query`), else None."""
    for factor in LORA_FACTORS:
        if name.endswith(factor + "weight"):
            return name[: -len(factor + "weight")]
    return None


# ---- the reference's GeneformerMultiTask -------------------------------------------------------------------------
# Its state dict: `bert.*` (a BertModel), `classification_heads.{i}.weight/bias` (one nn.Linear per task) and, with
# attention pooling, `attention_pool.attention_weights` [hidden, 1] (a score vector without bias). Ours
# (finetune.task_model.MultitaskModel): `bert.*`, `heads.{i}.*`, `attention_pool.score.weight` [1, hidden] and
# `attention_pool.score.bias` (zero for a converted model).
REFERENCE_MULTITASK_HEADS = re.compile(r"^classification_heads\.(\d+)\.(weight|bias)$")
REFERENCE_ATTENTION_POOL = "attention_pool.attention_weights"
ATTENTION_POOL_WEIGHT = "attention_pool.score.weight"
ATTENTION_POOL_BIAS = "attention_pool.score.bias"


def from_reference_multitask_name(key: str) -> str | None:
    """Our MultitaskModel's name for a GeneformerMultiTask key (None: a key that is not a parameter here, e.g. a
    buffer). The attention-pool vector keeps its key: its value is transposed by the converter."""
    if key in NON_PARAMETER_KEYS:
        return None
    if (match := REFERENCE_MULTITASK_HEADS.match(key)) is not None:
        return f"heads.{match.group(1)}.{match.group(2)}"
    if key == REFERENCE_ATTENTION_POOL:
        return ATTENTION_POOL_WEIGHT
    return key
