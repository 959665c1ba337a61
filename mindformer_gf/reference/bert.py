"""The Geneformer BERT, forward pass in plain numpy: the specification every backend is tested against.

Weights are a dict from Hugging Face state-dict names to arrays (see `GeneformerConfig.parameter_shapes`), so the
same dict feeds this reference, the MindSpore model and `transformers`. No performance tricks: each function is one
equation of the model. Pass `dtype=np.float64` for an oracle with no rounding worth speaking of.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mindformer_gf.config import GeneformerConfig
from mindformer_gf.reference.attention import attention_with_dropout, scaled_dot_product_attention
from mindformer_gf.reference.dropout import dropout, site_seed

Weights = Mapping[str, np.ndarray]


# ---- elementary functions -----------------------------------------------------------------------------------------
def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """y = x W^T + b, with W stored [out, in] as in PyTorch."""
    return x @ weight.T + bias


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def add_layer_norm(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """The post-LN residual step: LayerNorm(x + residual)."""
    return layer_norm(x + residual, weight, bias, eps)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function (numpy has none); math.erf elementwise is exact to double precision."""
    from math import erf as scalar_erf

    return np.vectorize(scalar_erf, otypes=[x.dtype])(x)


def activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0)
    if name == "gelu":
        return 0.5 * x * (1 + erf(x / np.sqrt(2)))
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    if name == "silu":
        return x / (1 + np.exp(-x))
    raise ValueError(f"activation {name!r} is not implemented")


# ---- attention (the formula: mindformer_gf.reference.attention) ------------------------------------------------
def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """[batch, length, hidden] -> [batch, heads, length, head_dim]."""
    batch, length, hidden = x.shape
    return x.reshape(batch, length, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[batch, heads, length, head_dim] -> [batch, length, hidden]."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)


# ---- the encoder --------------------------------------------------------------------------------------------------
def hidden_dropout(x: np.ndarray, config: GeneformerConfig, seed: int | None, layer: int, site: str) -> np.ndarray:
    """Training-mode dropout at one site (see `mindformer_gf.reference.dropout`); the identity when seed is None."""
    if seed is None:
        return x
    return dropout(x, config.hidden_dropout_prob, site_seed(seed, layer, site))


def embeddings(
    w: Weights, prefix: str, input_ids: np.ndarray, config: GeneformerConfig, dropout_seed: int | None = None
) -> np.ndarray:
    """word + absolute position + token type 0 embeddings, then LayerNorm, then dropout (in training)."""
    p = prefix + "embeddings."
    length = input_ids.shape[1]
    x = w[p + "word_embeddings.weight"][input_ids]
    x = x + w[p + "position_embeddings.weight"][:length][None]
    x = x + w[p + "token_type_embeddings.weight"][0]
    x = layer_norm(x, w[p + "LayerNorm.weight"], w[p + "LayerNorm.bias"], config.layer_norm_eps)
    return hidden_dropout(x, config, dropout_seed, 0, "embeddings")


def encoder_layer(
    w: Weights,
    prefix: str,
    x: np.ndarray,
    attention_mask: np.ndarray,
    config: GeneformerConfig,
    dropout_seed: int | None = None,
    layer: int = 0,
) -> np.ndarray:
    """One post-LN BERT layer: x <- LN(x + drop(attn(x))); x <- LN(x + drop(W2 act(W1 x))).

    With a `dropout_seed` (training), attention probabilities and both sub-layer outputs are dropped as the model
    drops them at encoder layer `layer`."""
    eps, heads = config.layer_norm_eps, config.num_attention_heads
    a = prefix + "attention."
    q = split_heads(linear(x, w[a + "self.query.weight"], w[a + "self.query.bias"]), heads)
    k = split_heads(linear(x, w[a + "self.key.weight"], w[a + "self.key.bias"]), heads)
    v = split_heads(linear(x, w[a + "self.value.weight"], w[a + "self.value.bias"]), heads)
    if dropout_seed is None:
        context = merge_heads(scaled_dot_product_attention(q, k, v, attention_mask))
    else:
        seed = site_seed(dropout_seed, layer, "attention")
        probability = config.attention_probs_dropout_prob
        context = merge_heads(attention_with_dropout(q, k, v, attention_mask, probability, seed))
    attended = linear(context, w[a + "output.dense.weight"], w[a + "output.dense.bias"])
    attended = hidden_dropout(attended, config, dropout_seed, layer, "attention_output")
    x = add_layer_norm(attended, x, w[a + "output.LayerNorm.weight"], w[a + "output.LayerNorm.bias"], eps)
    inner = activation(
        config.hidden_act,
        linear(x, w[prefix + "intermediate.dense.weight"], w[prefix + "intermediate.dense.bias"]),
    )
    out = linear(inner, w[prefix + "output.dense.weight"], w[prefix + "output.dense.bias"])
    out = hidden_dropout(out, config, dropout_seed, layer, "ffn_output")
    return add_layer_norm(out, x, w[prefix + "output.LayerNorm.weight"], w[prefix + "output.LayerNorm.bias"], eps)


def encoder(
    w: Weights,
    prefix: str,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    config: GeneformerConfig,
    dropout_seed: int | None = None,
) -> list[np.ndarray]:
    """Every hidden state: [embeddings output, layer 1 output, ..., layer N output] (N + 1 arrays)."""
    hidden_states = [embeddings(w, prefix, input_ids, config, dropout_seed)]
    for i in range(config.num_hidden_layers):
        layer_prefix = f"{prefix}encoder.layer.{i}."
        hidden_states.append(encoder_layer(w, layer_prefix, hidden_states[-1], attention_mask, config, dropout_seed, i))
    return hidden_states


# ---- heads --------------------------------------------------------------------------------------------------------
def pooler(w: Weights, prefix: str, sequence_output: np.ndarray) -> np.ndarray:
    """tanh(W h_0 + b): the hidden state at position 0 through a dense layer."""
    return np.tanh(linear(sequence_output[:, 0], w[prefix + "pooler.dense.weight"], w[prefix + "pooler.dense.bias"]))


def masked_lm_logits(
    w: Weights, sequence_output: np.ndarray, config: GeneformerConfig, word_embeddings: np.ndarray
) -> np.ndarray:
    """Transform (dense, activation, LayerNorm), then the decoder tied to the word embeddings plus its own bias."""
    t = "cls.predictions.transform."
    h = activation(config.hidden_act, linear(sequence_output, w[t + "dense.weight"], w[t + "dense.bias"]))
    h = layer_norm(h, w[t + "LayerNorm.weight"], w[t + "LayerNorm.bias"], config.layer_norm_eps)
    return linear(h, word_embeddings, w["cls.predictions.bias"])


def forward(
    weights: Weights,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    config: GeneformerConfig,
    architecture: str | None = None,
    dtype: type = np.float64,
    dropout_seed: int | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run `architecture` (default: the config's) and return (main output, hidden states).

    Main output: MLM logits [B, L, vocab]; sequence logits [B, labels]; token logits [B, L, labels]; for BertModel
    the last hidden state [B, L, hidden]. Dropout is the identity (inference), unless `dropout_seed` (a step seed,
    see `mindformer_gf.reference.dropout`) asks for a training-mode forward with the model's masks.
    """
    architecture = architecture or config.architecture
    w = {name: np.asarray(value, dtype=dtype) for name, value in weights.items()}
    input_ids = np.asarray(input_ids)
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    prefix = "" if architecture == "BertModel" else "bert."
    hidden_states = encoder(w, prefix, input_ids, mask, config, dropout_seed)
    sequence_output = hidden_states[-1]
    if architecture == "BertForMaskedLM":
        output = masked_lm_logits(w, sequence_output, config, w["bert.embeddings.word_embeddings.weight"])
    elif architecture == "BertForSequenceClassification":
        features = classifier_dropout(pooler(w, prefix, sequence_output), config, dropout_seed)
        output = linear(features, w["classifier.weight"], w["classifier.bias"])
    elif architecture == "BertForTokenClassification":
        features = classifier_dropout(sequence_output, config, dropout_seed)
        output = linear(features, w["classifier.weight"], w["classifier.bias"])
    elif architecture == "BertModel":
        output = sequence_output
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    return output, hidden_states


def classifier_dropout(features: np.ndarray, config: GeneformerConfig, dropout_seed: int | None) -> np.ndarray:
    """Dropout before a classification head (`classifier_dropout`, else the hidden rate), in training."""
    if dropout_seed is None:
        return features
    return dropout(features, config.classifier_dropout_prob, site_seed(dropout_seed, 0, "classifier"))


# ---- losses -------------------------------------------------------------------------------------------------------
def cross_entropy(logits: np.ndarray, labels: np.ndarray, ignore_index: int = -100) -> float:
    """Mean of -log softmax(logits)[label] over entries whose label is not `ignore_index`."""
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    shifted = logits[keep] - logits[keep].max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(keep.sum()), labels[keep]].mean())


# ---- initialisation -----------------------------------------------------------------------------------------------
def init_weights(config: GeneformerConfig, architecture: str | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights as Hugging Face initialises BERT: N(0, initializer_range) matrices, zero biases, unit LN
    scales, zero padding embedding row. float32."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, shape in config.parameter_shapes(architecture).items():
        if name.endswith("LayerNorm.weight"):
            value = np.ones(shape)
        elif name.endswith("bias"):
            value = np.zeros(shape)
        else:
            value = rng.normal(0.0, config.initializer_range, size=shape)
            if name.endswith("word_embeddings.weight"):
                value[config.pad_token_id] = 0.0
        weights[name] = value.astype(np.float32)
    return weights
