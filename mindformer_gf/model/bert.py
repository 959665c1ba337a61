"""Geneformer's BERT as MindSpore cells: embeddings, post-LN encoder, and every head, driven by one config.

Parameter names equal the Hugging Face state-dict keys (`bert.encoder.layer.0.attention.self.query.weight`, ...),
because each attribute below is named as in `transformers`' modeling_bert.py. That is what makes the checkpoint
converter a plain table. Attention and residual-add + LayerNorm go through `mindformer_gf.ops`, which picks the
backend; nothing here knows which one runs.

Every model is called as `model(input_ids, attention_mask, output_hidden_states=False)` with int32 [batch, length]
tensors (mask 1 = gene, 0 = padding; padding on the right) and returns a tuple: the main output first (logits, or the
last hidden state for BertModel), then, on request, the tuple of hidden states (embeddings output first, then each
layer's output: `n_layers + 1` tensors, the tuple that `emb_layer` indexes).

In training mode every dropout mask is a function of `dropout_seed` (int64 [1], a step seed of
`mindformer_gf.reference.dropout`; the training loop passes one per micro-batch), the layer and the site; without
one a fresh seed is drawn inside the graph, so masks differ from call to call but cannot be replayed.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore import ops as msops
from mindspore.ops import functional as F

from mindformer_gf import ops
from mindformer_gf.config import GeneformerConfig
from mindformer_gf.model.dropout import SeededDropout, site_salt, site_seed
from mindformer_gf.ops.dropout_seed import random_seed
from mindformer_gf.reference import init_weights


def _activation(name: str, x: Tensor, impl: str) -> Tensor:
    if name == "relu":
        return msops.relu(x)
    if name == "gelu":
        # the exact (erf) GELU; on CPU the fused backend's kernel (MindSpore's costs ~20x an add of the same shape)
        return ops.gelu(x, impl)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return msops.gelu(x, approximate="tanh")
    return msops.silu(x)


class Embedding(nn.Cell):
    """A lookup table whose parameter is called `weight`, as in PyTorch (nn.Embedding calls it embedding_table)."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = Parameter(Tensor(np.zeros((num_embeddings, dim), np.float32)))

    def construct(self, ids: Tensor) -> Tensor:
        return msops.gather(self.weight, ids, 0)


class Linear(nn.Dense):
    """nn.Dense (its parameters, names and initialisation) computed by the chosen backend: on CPU the fused one's
    GEMM kernel (kernels/cpu/dense.cc)."""

    def __init__(self, in_features: int, out_features: int, impl: str) -> None:
        super().__init__(in_features, out_features)
        self.impl = impl

    def construct(self, x: Tensor) -> Tensor:
        return ops.dense(x, self.weight, self.bias, self.impl)


class LayerNorm(nn.Cell):
    """LayerNorm with `weight`/`bias` names and the config's epsilon (BERT: 1e-12; MindSpore's default is 1e-7)."""

    def __init__(self, dim: int, eps: float, impl: str) -> None:
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(dim, np.float32)))
        self.bias = Parameter(Tensor(np.zeros(dim, np.float32)))
        self.eps = eps
        self.impl = impl

    def construct(self, x: Tensor) -> Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps, self.impl)

    def add_and_norm(self, x: Tensor, residual: Tensor) -> Tensor:
        return ops.add_layer_norm(x, residual, self.weight, self.bias, self.eps, self.impl)


class BertEmbeddings(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str) -> None:
        super().__init__()
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps, impl)
        self.dropout = SeededDropout(config.hidden_dropout_prob, impl, 0, "embeddings")

    def construct(self, input_ids: Tensor, dropout_seed: Tensor) -> Tensor:
        length = input_ids.shape[1]
        positions = msops.arange(0, length, dtype=ms.int32)
        # Geneformer never uses segments: token type is always 0, so its embedding is one row added everywhere.
        # Gather from the table directly, not through the sub-cell: MindSpore 2.10 cannot differentiate a sub-cell
        # call on a dynamic-length arange (parameter_eliminate error), which dynamic-shape training needs.
        x = self.word_embeddings(input_ids) + msops.gather(self.position_embeddings.weight, positions, 0)[None]
        x = x + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x), dropout_seed)


class BertSelfAttention(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str, layer: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = Linear(hidden, hidden, impl)
        self.key = Linear(hidden, hidden, impl)
        self.value = Linear(hidden, hidden, impl)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.dropout_salt = site_salt(layer, "attention")
        self.impl = impl
        # True once LoRA wraps that projection (finetune/lora.py): it then takes the step seed for its dropout. One
        # flag per projection: LoRA may target some of them only (peft's BERT default is query and value).
        self.query_lora_seeded = False
        self.key_lora_seeded = False
        self.value_lora_seeded = False

    def split_heads(self, x: Tensor) -> Tensor:
        batch, length = x.shape[0], x.shape[1]
        return x.reshape(batch, length, self.num_heads, self.head_dim)

    def construct(self, hidden: Tensor, attention_mask: Tensor, dropout_seed: Tensor) -> Tensor:
        q = self.split_heads(self.query(hidden, dropout_seed) if self.query_lora_seeded else self.query(hidden))
        k = self.split_heads(self.key(hidden, dropout_seed) if self.key_lora_seeded else self.key(hidden))
        v = self.split_heads(self.value(hidden, dropout_seed) if self.value_lora_seeded else self.value(hidden))
        # Sequence-major [B, L, H, D]: the fused CPU kernel reads the heads in place, no transposes (a copy each).
        seed = site_seed(dropout_seed, self.dropout_salt) if self.training else None
        context = ops.attention(
            q, k, v, attention_mask, self.dropout_prob, self.training, self.impl, seed, sequence_major=True
        )
        batch, length = hidden.shape[0], hidden.shape[1]
        return context.reshape(batch, length, self.num_heads * self.head_dim)


class BertSelfOutput(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str, layer: int) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size, impl)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps, impl)
        self.dropout = SeededDropout(config.hidden_dropout_prob, impl, layer, "attention_output")
        self.dense_lora_seeded = False  # True once LoRA wraps dense (finetune/lora.py)

    def construct(self, context: Tensor, residual: Tensor, dropout_seed: Tensor) -> Tensor:
        projected = self.dense(context, dropout_seed) if self.dense_lora_seeded else self.dense(context)
        return self.LayerNorm.add_and_norm(self.dropout(projected, dropout_seed), residual)


class BertAttention(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str, layer: int) -> None:
        super().__init__()
        # Named `self` because the Hugging Face key is `attention.self.query.weight`.
        self.self = BertSelfAttention(config, impl, layer)
        self.output = BertSelfOutput(config, impl, layer)

    def construct(self, hidden: Tensor, attention_mask: Tensor, dropout_seed: Tensor) -> Tensor:
        return self.output(self.self(hidden, attention_mask, dropout_seed), hidden, dropout_seed)


class BertIntermediate(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str = "composed") -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size, impl)
        self.act = config.hidden_act
        self.impl = impl
        self.dense_lora_seeded = False  # True once LoRA wraps dense (finetune/lora.py)

    def construct(self, hidden: Tensor, dropout_seed: Tensor | None = None) -> Tensor:
        projected = self.dense(hidden, dropout_seed) if self.dense_lora_seeded else self.dense(hidden)
        return _activation(self.act, projected, self.impl)


class BertOutput(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str, layer: int) -> None:
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.hidden_size, impl)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps, impl)
        self.dropout = SeededDropout(config.hidden_dropout_prob, impl, layer, "ffn_output")
        self.dense_lora_seeded = False  # True once LoRA wraps dense (finetune/lora.py)

    def construct(self, inner: Tensor, residual: Tensor, dropout_seed: Tensor) -> Tensor:
        projected = self.dense(inner, dropout_seed) if self.dense_lora_seeded else self.dense(inner)
        return self.LayerNorm.add_and_norm(self.dropout(projected, dropout_seed), residual)


class BertLayer(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str, layer: int) -> None:
        super().__init__()
        self.attention = BertAttention(config, impl, layer)
        self.intermediate = BertIntermediate(config, impl)
        self.output = BertOutput(config, impl, layer)

    def construct(self, hidden: Tensor, attention_mask: Tensor, dropout_seed: Tensor) -> Tensor:
        attended = self.attention(hidden, attention_mask, dropout_seed)
        return self.output(self.intermediate(attended, dropout_seed), attended, dropout_seed)


class BertEncoder(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str) -> None:
        super().__init__()
        self.layer = nn.CellList([BertLayer(config, impl, index) for index in range(config.num_hidden_layers)])

    def construct(self, hidden: Tensor, attention_mask: Tensor, dropout_seed: Tensor) -> tuple[Tensor, ...]:
        hidden_states = (hidden,)
        for layer in self.layer:
            hidden = layer(hidden, attention_mask, dropout_seed)
            hidden_states = hidden_states + (hidden,)
        return hidden_states


class BertPooler(nn.Cell):
    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__()
        self.dense = nn.Dense(config.hidden_size, config.hidden_size)

    def construct(self, sequence_output: Tensor) -> Tensor:
        return msops.tanh(self.dense(sequence_output[:, 0]))


class GeneformerPreTrainedModel(nn.Cell):
    """Shared behaviour: the config, the resolved backend, HF-style initialisation, weight access by HF name."""

    architecture = "BertModel"

    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.impl = ops.resolve_impl(config.attention_impl)
        self.max_positions = config.max_position_embeddings

    def init_weights(self, seed: int = 0) -> None:
        """Initialise as Hugging Face does (N(0, initializer_range), zero biases, unit LN scale), reproducibly."""
        self.load_weights(init_weights(self.config, self.architecture, seed))

    def named_parameters(self) -> dict[str, Parameter]:
        """Parameters under their Hugging Face names.

        Names come from the attribute path below this model, not from `Parameter.name`: MindSpore prefixes the
        latter when the model is wrapped in another cell (a loss or training cell), and that must not change them.
        """
        return dict(self.parameters_and_names())

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the parameters as numpy arrays under their Hugging Face names (asnumpy() alone can be a view
        that later training steps change)."""
        return {name: p.asnumpy().copy() for name, p in self.named_parameters().items()}

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Copy arrays named by Hugging Face keys into the parameters; every parameter must be given, shapes equal."""
        params = self.named_parameters()
        missing = sorted(set(params) - set(weights))
        unexpected = sorted(set(weights) - set(params))
        if missing or unexpected:
            raise KeyError(f"weights do not match {type(self).__name__}: missing {missing}, unexpected {unexpected}")
        for name, param in params.items():
            value = np.asarray(weights[name])
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} != model shape {tuple(param.shape)}")
            param.set_data(Tensor(value.astype(np.float32, copy=False)))

    def check_length(self, input_ids: Tensor) -> None:
        # Only a length known when the graph compiles is checked here: with dynamic shapes this check would be a
        # runtime branch (PyExecute), which sends every later custom operator to MindSpore's runtime compiler, and it
        # cannot handle them ("The prim is not a PrimitivePy"). Training plans never exceed the model's length.
        if F.is_sequence_value_unknown(input_ids.shape):
            return
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(
                f"cells of {input_ids.shape[1]} tokens exceed max_position_embeddings={self.max_positions}; "
                "truncate them when tokenizing (model_input_size)"
            )


class BertModel(GeneformerPreTrainedModel):
    """The encoder alone (what embeddings are taken from). Keys have no `bert.` prefix, as in HF's BertModel."""

    architecture = "BertModel"

    def __init__(self, config: GeneformerConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config, self.impl)
        self.encoder = BertEncoder(config, self.impl)
        if add_pooling_layer:
            self.pooler = BertPooler(config)

    def encode(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, dropout_seed: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """All hidden states: embeddings output, then every layer's output."""
        self.check_length(input_ids)
        if attention_mask is None:
            attention_mask = msops.ones_like(input_ids)
        if dropout_seed is None:
            dropout_seed = random_seed() if self.training else msops.zeros((1,), ms.int64)
        return self.encoder(self.embeddings(input_ids, dropout_seed), attention_mask, dropout_seed)

    def construct(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
        dropout_seed: Tensor | None = None,
    ) -> tuple:
        hidden_states = self.encode(input_ids, attention_mask, dropout_seed)
        if output_hidden_states:
            return hidden_states[-1], hidden_states
        return (hidden_states[-1],)


class BertPredictionHeadTransform(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size, impl)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps, impl)
        self.act = config.hidden_act
        self.impl = impl

    def construct(self, hidden: Tensor) -> Tensor:
        return self.LayerNorm(_activation(self.act, self.dense(hidden), self.impl))


class BertLMPredictionHead(nn.Cell):
    """transform, then logits = h E^T + bias with E the (tied) word-embedding table: no decoder weight of its own."""

    def __init__(self, config: GeneformerConfig, impl: str) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config, impl)
        self.bias = Parameter(Tensor(np.zeros(config.vocab_size, np.float32)))
        self.impl = impl

    def construct(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        return ops.dense(self.transform(hidden), word_embeddings, self.bias, self.impl)


class BertOnlyMLMHead(nn.Cell):
    def __init__(self, config: GeneformerConfig, impl: str) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config, impl)

    def construct(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        return self.predictions(hidden, word_embeddings)


class BertForMaskedLM(GeneformerPreTrainedModel):
    """Masked-gene modelling. With `masked_positions` ([batch, n] int32 indices) logits are computed only there:
    [batch, n, vocab] instead of [batch, length, vocab], which is most of a training step's saving."""

    architecture = "BertForMaskedLM"

    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config, self.impl)

    def construct(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
        masked_positions: Tensor | None = None,
        dropout_seed: Tensor | None = None,
    ) -> tuple:
        hidden_states = self.bert.encode(input_ids, attention_mask, dropout_seed)
        sequence_output = hidden_states[-1]
        if masked_positions is not None:
            sequence_output = msops.gather(sequence_output, masked_positions, 1, batch_dims=1)
        logits = self.cls(sequence_output, self.bert.embeddings.word_embeddings.weight)
        if output_hidden_states:
            return logits, hidden_states
        return (logits,)


class BertClassifier(GeneformerPreTrainedModel):
    """A linear classifier behind dropout, on features of the encoder output chosen by `features`."""

    add_pooling_layer = False

    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=self.add_pooling_layer)
        self.dropout = SeededDropout(config.classifier_dropout_prob, self.impl, 0, "classifier")
        self.classifier = nn.Dense(config.hidden_size, config.num_labels)

    def features(self, sequence_output: Tensor) -> Tensor:
        return sequence_output

    def construct(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
        dropout_seed: Tensor | None = None,
    ) -> tuple:
        if dropout_seed is None and self.training:
            dropout_seed = random_seed()
        hidden_states = self.bert.encode(input_ids, attention_mask, dropout_seed)
        logits = self.classifier(self.dropout(self.features(hidden_states[-1]), dropout_seed))
        if output_hidden_states:
            return logits, hidden_states
        return (logits,)


class BertForSequenceClassification(BertClassifier):
    """Cell classification: pooler (dense + tanh on position 0), dropout, linear, as HF's class of the same name."""

    architecture = "BertForSequenceClassification"
    add_pooling_layer = True

    def features(self, sequence_output: Tensor) -> Tensor:
        return self.bert.pooler(sequence_output)


class BertForTokenClassification(BertClassifier):
    """Gene classification: dropout and a linear layer on every position."""

    architecture = "BertForTokenClassification"


MODEL_CLASSES: dict[str, type[GeneformerPreTrainedModel]] = {
    cls.architecture: cls
    for cls in (BertModel, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification)
}


def build_model(config: GeneformerConfig, architecture: str | None = None, seed: int | None = 0):
    """The model class named by `architecture` (default: the config's first `architectures` entry), initialised
    as Hugging Face does with `seed` (None leaves zeros/ones, for loading weights right after)."""
    architecture = architecture or config.architecture
    if architecture not in MODEL_CLASSES:
        raise ValueError(f"no model for architecture {architecture!r}; known: {sorted(MODEL_CLASSES)}")
    model = MODEL_CLASSES[architecture](config)
    if seed is not None:
        model.init_weights(seed)
    return model
