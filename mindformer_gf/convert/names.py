"""The name table between Hugging Face state dicts and this package's models.

Our MindSpore parameters carry the Hugging Face names themselves (see mindformer_gf.model.bert), so the table is
the identity on every parameter of `GeneformerConfig.parameter_shapes`; what remains are the keys a Hugging Face
file holds that are not parameters here (buffers, tied copies), the heads one architecture has and another has not,
and the `bert.` prefix that HF's bare BertModel omits. Nothing else in the converter knows a parameter name.
"""

from __future__ import annotations

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
