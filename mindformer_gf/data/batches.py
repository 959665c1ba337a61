"""Step sources: what the training loop asks for each step, built from a plan and a collate function.

The loop (`mindformer_gf.train`) needs an object with
- `steps_per_epoch: int`,
- `batches(step, rank, world_size) -> list[dict[str, np.ndarray]]`: this rank's micro-batches of `step`,
- `step_tokens(step) -> (cells, real tokens, padded tokens)` over all ranks (throughput and padding waste),
- `fingerprint() -> dict`: settings a resumed run must share,
- `items_per_batch` (optional): the most loss items a micro-batch holds, to keep summed gradients in range.
`PlannedBatches` is that object for a `LengthGroupedPlan` and any `make_batch(micro_batch) -> dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mindformer_gf.data.collate import collate
from mindformer_gf.data.corpus import read_cells
from mindformer_gf.data.masking import MaskingSpec, mask_batch
from mindformer_gf.data.sampler import LengthGroupedPlan, MicroBatch


class PlannedBatches:
    """A step source: micro-batches of a plan, collated by `make_batch`."""

    def __init__(
        self,
        plan: LengthGroupedPlan,
        make_batch: Callable[[MicroBatch], dict[str, np.ndarray]],
        items_per_batch: int | None = None,
    ) -> None:
        self.plan = plan
        self.make_batch = make_batch
        # the most loss items (masked genes, labelled cells) a micro-batch can hold: scales summed gradients
        self.items_per_batch = items_per_batch or plan.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def batches(self, step: int, rank: int = 0, world_size: int = 1) -> list[dict[str, np.ndarray]]:
        return [self.make_batch(micro) for micro in self.plan.rank_share(step, rank, world_size)]

    def step_tokens(self, step: int) -> tuple[int, int, int]:
        return self.plan.step_tokens(step)

    def fingerprint(self) -> dict[str, Any]:
        return self.plan.fingerprint()


class MaskedLMCollator:
    """Micro-batch -> masked-gene-modelling batch (`mask_batch`), reading only the rows it needs."""

    def __init__(self, dataset: Any, spec: MaskingSpec, batch_size: int, seed: int, pad_token_id: int = 0) -> None:
        self.dataset = dataset
        self.spec = spec
        self.batch_size = batch_size
        self.seed = seed
        self.pad_token_id = pad_token_id

    def __call__(self, micro: MicroBatch) -> dict[str, np.ndarray]:
        cells = read_cells(self.dataset, micro.cell_indices)
        batch = mask_batch(cells, micro.cell_indices, micro.width, self.spec, self.seed, micro.epoch, self.pad_token_id)
        return _pad_rows(batch, self.batch_size, self.pad_token_id)


class LabelledCollator:
    """Micro-batch -> fine-tuning batch: cells plus per-cell labels ([B]) or per-token labels ([B, width])."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        cell_labels: np.ndarray | None = None,
        token_labels: list[np.ndarray] | None = None,
        pad_token_id: int = 0,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.cell_labels = cell_labels
        self.token_labels = token_labels
        self.pad_token_id = pad_token_id

    def __call__(self, micro: MicroBatch) -> dict[str, np.ndarray]:
        cells = read_cells(self.dataset, micro.cell_indices)
        return collate(
            cells,
            micro.width,
            rows=self.batch_size,
            pad_token_id=self.pad_token_id,
            cell_labels=None if self.cell_labels is None else self.cell_labels[micro.cell_indices],
            token_labels=None if self.token_labels is None else [self.token_labels[i] for i in micro.cell_indices],
        )


def _pad_rows(batch: dict[str, np.ndarray], rows: int, pad_token_id: int) -> dict[str, np.ndarray]:
    """Add all-padding rows (no masked slots: labels -100) up to `rows`, keeping the batch shape fixed."""
    missing = rows - batch["input_ids"].shape[0]
    if missing <= 0:
        return batch
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "masked_positions": 0, "labels": -100}
    return {
        name: np.concatenate([array, np.full((missing, *array.shape[1:]), fill[name], array.dtype)])
        for name, array in batch.items()
    }
