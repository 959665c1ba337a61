"""MindSpore cells of the Geneformer BERT and its heads (graph mode, fp32 by default)."""

from mindformer_gf.model.bert import (
    MODEL_CLASSES,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GeneformerPreTrainedModel,
    build_model,
)

__all__ = [
    "MODEL_CLASSES",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "GeneformerPreTrainedModel",
    "build_model",
]
