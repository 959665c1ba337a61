"""Collation for any task: cells padded to a fixed width, plus optional labels, as int32 numpy arrays.

A batch is a dict of numpy arrays whose first axis is the cell. `input_ids`/`attention_mask` are [B, width]
(padding on the right, mask 1 = gene); cell labels are [B]; token labels are [B, width] with -100 where there is
no label (padding included). Rows beyond the cells given (a partial last batch kept at its fixed shape) are all
padding with label -100, so they add nothing to a loss that ignores -100.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = -100


def pad_cells(
    cells: Sequence[np.ndarray], width: int, pad_token_id: int = 0, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int32 [rows, width]; `rows` (default len(cells)) may exceed the cell count."""
    rows = len(cells) if rows is None else rows
    if rows < len(cells):
        raise ValueError(f"{len(cells)} cells do not fit in {rows} rows")
    input_ids = np.full((rows, width), pad_token_id, np.int32)
    attention_mask = np.zeros((rows, width), np.int32)
    for row, tokens in enumerate(cells):
        n = len(tokens)
        if n > width:
            raise ValueError(f"a cell of {n} tokens does not fit in width {width}; choose wider buckets or truncate")
        input_ids[row, :n] = tokens
        attention_mask[row, :n] = 1
    return input_ids, attention_mask


def collate(
    cells: Sequence[np.ndarray],
    width: int,
    rows: int | None = None,
    pad_token_id: int = 0,
    cell_labels: Sequence[int] | None = None,
    token_labels: Sequence[Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """A fixed-shape batch: `input_ids`, `attention_mask` and, when given, `labels` ([B] cell or [B, width] token)."""
    if cell_labels is not None and token_labels is not None:
        raise ValueError("give cell_labels or token_labels, not both")
    input_ids, attention_mask = pad_cells(cells, width, pad_token_id, rows)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if cell_labels is not None:
        labels = np.full(input_ids.shape[0], IGNORE_INDEX, np.int32)
        labels[: len(cell_labels)] = np.asarray(cell_labels, dtype=np.int32)
        batch["labels"] = labels
    if token_labels is not None:
        labels = np.full(input_ids.shape, IGNORE_INDEX, np.int32)
        for row, values in enumerate(token_labels):
            if len(values) != len(cells[row]):
                raise ValueError(f"row {row}: {len(values)} token labels for a cell of {len(cells[row])} tokens")
            labels[row, : len(values)] = values
        batch["labels"] = labels
    return batch
