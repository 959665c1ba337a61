"""Evaluation-only forward passes over many cells: batches of cells of similar length, padded to a few fixed
widths (one graph compilation per width), results returned in INPUT order.

    outputs = run_forward(forward_cell, cells, batch_size=32, buckets=buckets)

`forward_cell(input_ids, attention_mask, *extra)` is any MindSpore cell returning one tensor (or a tuple whose
entries are all returned); per-token outputs ([B, L, ...]) come back trimmed to each cell's length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mindformer_gf.data.buckets import LengthBuckets
from mindformer_gf.data.collate import pad_cells

Batches = list[tuple[int, np.ndarray]]  # [(padded width, cell positions in row order)], in the order they run


def length_sorted_batches(lengths: np.ndarray, buckets: LengthBuckets, batch_size: int) -> Batches:
    """[(width, cell positions)]: cells sorted by length, never mixing buckets, at most `batch_size` per batch.

    This is THE batch plan of a pass: which cells share a batch, in which rows, at which width. A cell's outputs
    may differ in the last bits with its batch (CPU matrix kernels take other paths for other rows), so a pass
    sharded over ranks makes this plan from all its cells and hands out whole batches (`infer.sharded`)."""
    lengths = np.asarray(lengths)
    bucket_of = buckets.assign(lengths)
    order = np.argsort(lengths, kind="stable")
    batches = []
    for bucket, width in enumerate(buckets.widths):
        members = order[bucket_of[order] == bucket]
        batches += [(width, members[i : i + batch_size]) for i in range(0, members.size, batch_size)]
    return batches


def check_batches(batches: Batches, lengths: np.ndarray, batch_size: int) -> None:
    """Each cell in exactly one batch, no batch over `batch_size` cells or holding a cell wider than its width."""
    covered = np.zeros(len(lengths), np.int64)
    for width, positions in batches:
        if not 0 < positions.size <= batch_size or lengths[positions].max() > width:
            raise ValueError(f"a batch of {positions.size} cells at width {width} does not fit {batch_size} rows")
        np.add.at(covered, positions, 1)
    if not (covered == 1).all():
        raise ValueError("the batches must hold every cell exactly once")


def run_forward(
    forward: Callable[..., Any],
    cells: Sequence[np.ndarray],
    batch_size: int,
    buckets: LengthBuckets | None,
    extra_inputs: Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]] | None = None,
    pad_token_id: int = 0,
    progress: bool = True,
    desc: str = "forward",
    on_batch: Callable[[int], None] | None = None,
    batches: Batches | None = None,
) -> list[Any]:
    """Outputs of `forward` for every cell, in input order.

    Every batch has exactly `batch_size` rows (missing rows are padding) and a width from `buckets`, so the graph
    is compiled once per width. `batches` (positions into `cells`) replaces the plan `length_sorted_batches` would
    make from `cells` and `buckets`: a rank's share of a plan made from more cells. `extra_inputs(input_ids,
    attention_mask)` supplies further arrays per batch; `on_batch(n)` hears of every n cells done (a progress bar
    kept elsewhere, e.g. over several ranks).
    Returns one entry per output of `forward`: an array [n_cells, ...] for per-cell outputs, or a list of arrays
    trimmed to each cell's length for per-token outputs.
    """
    from mindspore import Tensor
    from tqdm.auto import tqdm

    lengths = np.asarray([len(c) for c in cells])
    if lengths.size == 0:
        raise ValueError("no cells to run")
    if lengths.min() < 1:
        raise ValueError("a cell has no tokens")
    if batches is None:
        if buckets is None:
            raise ValueError("run_forward needs the buckets to batch the cells, or the batches themselves")
        batches = length_sorted_batches(lengths, buckets, batch_size)
    check_batches(batches, lengths, batch_size)
    results: list[Any] | None = None
    per_token: list[bool] = []
    with tqdm(total=len(cells), desc=desc, unit="cell", disable=not progress, dynamic_ncols=True) as bar:
        for width, positions in batches:
            ids, mask = pad_cells([cells[i] for i in positions], width, pad_token_id, rows=batch_size)
            inputs = [Tensor(ids), Tensor(mask)]
            if extra_inputs is not None:
                inputs += [Tensor(a) for a in extra_inputs(ids, mask)]
            outputs = forward(*inputs)
            outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            arrays = [o.asnumpy() for o in outputs]
            if results is None:
                # per-token outputs ([B, L, hidden] states, [B, L, classes] logits) are 3-d; per-cell ones are not
                per_token = [a.ndim >= 3 for a in arrays]
                results = [
                    [None] * len(cells) if tok else np.zeros((len(cells), *a.shape[1:]), a.dtype)
                    for a, tok in zip(arrays, per_token, strict=True)
                ]
            for k, array in enumerate(arrays):
                if per_token[k]:
                    for row, cell in enumerate(positions):
                        results[k][cell] = array[row, : lengths[cell]]
                else:
                    results[k][positions] = array[: positions.size]
            bar.update(positions.size)
            if on_batch is not None:
                on_batch(int(positions.size))
    return results


def pool_weights(input_ids: np.ndarray, attention_mask: np.ndarray, special_ids: Sequence[int]) -> np.ndarray:
    """1.0 on gene positions, 0.0 on padding and special tokens (<cls>, <eos>, <pad>, <mask>)."""
    weights = attention_mask.astype(np.float32)
    if len(special_ids):
        weights[np.isin(input_ids, np.asarray(special_ids))] = 0.0
    return weights
