"""Training objectives: a model plus a loss, returning sums (loss, items, metrics) for `MicroStep` to normalise."""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

from mindformer_gf import ops as gf_ops
from mindformer_gf.train.step import Objective

IGNORE_INDEX = -100


def summed_cross_entropy(logits: Tensor, labels: Tensor, impl: str = "composed") -> tuple[Tensor, Tensor, Tensor]:
    """(sum of cross-entropy, number of labelled items, number predicted right) over labels != -100.

    The cross-entropy is log sum exp(logits) - logits[label] (= -log_softmax(logits)[label]), in fp32 whatever the
    logits' precision (mixed-precision training keeps softmax statistics in fp32); `impl` picks the log-sum-exp's
    backend (`mindformer_gf.ops.log_sum_exp`; the model's own `impl`).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).astype(ms.float32)
    flat_labels = labels.reshape(-1).astype(ms.int32)
    keep = flat_labels != IGNORE_INDEX
    weight = keep.astype(ms.float32)
    safe_labels = ops.where(keep, flat_labels, ops.zeros_like(flat_labels))
    label_logits = ops.gather_elements(flat_logits, 1, safe_labels[:, None])[:, 0]
    losses = gf_ops.log_sum_exp(flat_logits, impl) - label_logits
    predicted = ops.argmax(flat_logits, -1).astype(ms.int32)
    correct = ((predicted == safe_labels).astype(ms.float32) * weight).sum()
    return (losses * weight).sum(), weight.sum(), correct


class MaskedLMObjective(Objective):
    """Masked-gene modelling: logits only at `masked_positions` ([B, slots]); loss and accuracy on labelled slots."""

    input_names = ("input_ids", "attention_mask", "masked_positions", "labels")
    metric_names = ("correct",)

    def __init__(self, model) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.impl = getattr(model, "impl", "composed")  # the model's kernel backend, for the loss's log-sum-exp

    def construct(
        self, dropout_seed: Tensor, input_ids: Tensor, attention_mask: Tensor, masked_positions: Tensor, labels: Tensor
    ) -> tuple:
        logits = self.model(input_ids, attention_mask, False, masked_positions, dropout_seed)[0]
        return summed_cross_entropy(logits, labels, self.impl)


class ClassificationObjective(Objective):
    """Cell or gene classification: the model's logits ([B, classes] or [B, L, classes]) against `labels`."""

    input_names = ("input_ids", "attention_mask", "labels")
    metric_names = ("correct",)

    def __init__(self, model) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.impl = getattr(model, "impl", "composed")  # the model's kernel backend, for the loss's log-sum-exp

    def construct(self, dropout_seed: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple:
        logits = self.model(input_ids, attention_mask, False, dropout_seed)[0]
        return summed_cross_entropy(logits, labels, self.impl)
