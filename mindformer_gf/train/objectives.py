"""Training objectives: a model plus a loss, returning sums (loss, items, metrics) for `MicroStep` to normalise."""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

from mindformer_gf.train.step import Objective

IGNORE_INDEX = -100


def summed_cross_entropy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sum of cross-entropy, number of labelled items, number predicted right) over labels != -100.

    Log-softmax runs in fp32 whatever the logits' precision (mixed-precision training keeps softmax statistics in
    fp32).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).astype(ms.float32)
    flat_labels = labels.reshape(-1).astype(ms.int32)
    keep = flat_labels != IGNORE_INDEX
    weight = keep.astype(ms.float32)
    safe_labels = ops.where(keep, flat_labels, ops.zeros_like(flat_labels))
    log_probs = ops.log_softmax(flat_logits, -1)
    picked = ops.gather_elements(log_probs, 1, safe_labels[:, None])[:, 0]
    predicted = ops.argmax(flat_logits, -1).astype(ms.int32)
    correct = ((predicted == safe_labels).astype(ms.float32) * weight).sum()
    return -(picked * weight).sum(), weight.sum(), correct


class MaskedLMObjective(Objective):
    """Masked-gene modelling: logits only at `masked_positions` ([B, slots]); loss and accuracy on labelled slots."""

    input_names = ("input_ids", "attention_mask", "masked_positions", "labels")
    metric_names = ("correct",)

    def __init__(self, model) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(
        self, dropout_seed: Tensor, input_ids: Tensor, attention_mask: Tensor, masked_positions: Tensor, labels: Tensor
    ) -> tuple:
        logits = self.model(input_ids, attention_mask, False, masked_positions, dropout_seed)[0]
        return summed_cross_entropy(logits, labels)


class ClassificationObjective(Objective):
    """Cell or gene classification: the model's logits ([B, classes] or [B, L, classes]) against `labels`."""

    input_names = ("input_ids", "attention_mask", "labels")
    metric_names = ("correct",)

    def __init__(self, model) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, dropout_seed: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple:
        logits = self.model(input_ids, attention_mask, False, dropout_seed)[0]
        return summed_cross_entropy(logits, labels)
