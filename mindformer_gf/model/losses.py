"""Training losses, written once for every task (the numpy twin is mindformer_gf.reference.cross_entropy)."""

from __future__ import annotations

import mindspore as ms
from mindspore import ops

IGNORE_INDEX = -100


def cross_entropy(logits: ms.Tensor, labels: ms.Tensor) -> ms.Tensor:
    """Mean cross-entropy over entries whose label is not -100 (unmasked genes, padding), as in PyTorch/HF."""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1).astype(ms.int32)
    keep = (flat_labels != IGNORE_INDEX).astype(flat_logits.dtype)
    safe_labels = ops.where(flat_labels == IGNORE_INDEX, ops.zeros_like(flat_labels), flat_labels)
    log_probs = ops.log_softmax(flat_logits, -1)
    picked = ops.gather_elements(log_probs, 1, safe_labels[:, None])[:, 0]
    return -(picked * keep).sum() / ops.maximum(keep.sum(), ops.ones_like(keep.sum()))
