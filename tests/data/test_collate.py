"""Generic collation: padding, cell labels, token labels, extra all-padding rows."""

from __future__ import annotations

import numpy as np
import pytest

from mindformer_gf.data import collate


def test_cell_labels_and_padding_rows():
    batch = collate([np.array([5, 6, 7]), np.array([8])], width=4, rows=3, cell_labels=[2, 0])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert batch["labels"].tolist() == [2, 0, -100]
    assert all(a.dtype == np.int32 for a in batch.values())


def test_token_labels():
    batch = collate([np.array([5, 6]), np.array([8])], width=3, token_labels=[[1, -100], [0]])
    assert batch["labels"].tolist() == [[1, -100, -100], [0, -100, -100]]
    with pytest.raises(ValueError, match="token labels"):
        collate([np.array([5, 6])], width=3, token_labels=[[1]])
    with pytest.raises(ValueError, match="does not fit"):
        collate([np.arange(5)], width=3)
