"""The name table between Hugging Face state dicts and this package's models.

Our MindSpore parameters carry the Hugging Face names themselves (see mindformer_gf.model.bert), so the table is
the identity on every parameter of `GeneformerConfig.parameter_shapes`; what remains are the few keys a Hugging Face
file holds that are not parameters here, and the `bert.` prefix that HF's bare BertModel omits.
"""

from __future__ import annotations

# Keys that HF files may hold and that are not parameters of ours, with the reason.
NON_PARAMETER_KEYS = {
    "bert.embeddings.position_ids": "buffer arange(max_positions), recomputed",
    "embeddings.position_ids": "buffer arange(max_positions), recomputed",
    "cls.predictions.decoder.weight": "tied to bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "tied to cls.predictions.bias",
}

ENCODER_PREFIX = "bert."


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
