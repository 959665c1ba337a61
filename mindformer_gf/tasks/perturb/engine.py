"""The forward passes of a perturbation run: the encoder stopped at the layer that is used (no MLM head, no later
layer), each original cell once (in a batch of as many rows as the power of two that holds them), the perturbed
copies in full batches across cells, padded to a few fixed widths (one graph compilation per width and row count),
and the per-gene comparison done inside the graph.

    engine = PerturbationEngine(encoder, layer_index, pooling="mean", batch_size=32, buckets=buckets, ...)
    hidden = engine.original_states(cells)                       # [n_i, hidden] per cell, once
    for key, perturbation, result in engine.run(jobs): ...        # completion order
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn
from mindspore import ops as msops

from mindformer_gf.data.buckets import LengthBuckets
from mindformer_gf.data.collate import pad_cells
from mindformer_gf.infer.batches import length_sorted_batches, pool_weights
from mindformer_gf.tasks.perturb.plan import Perturbation


class StoppedEncoder(nn.Cell):
    """Hidden state `layer_index` of (embeddings output, layer 1, ..., layer n): only layers 1..layer_index run."""

    def __init__(self, encoder: nn.Cell, layer_index: int) -> None:
        super().__init__()
        self.embeddings = encoder.embeddings
        self.layers = encoder.encoder.layer
        self.layer_index = int(layer_index)

    def construct(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        seed = msops.zeros((1,), ms.int64)  # inference: the model is in eval mode, no dropout draws from it
        hidden = self.embeddings(input_ids, seed)
        for i in range(self.layer_index):
            hidden = self.layers[i](hidden, attention_mask, seed)
        return hidden


def last_axis_sum(x: Tensor) -> Tensor:
    """x.sum(-1) as a product with a column of ones: MindSpore's CPU ReduceSum took ~19 ms on a [16, 1,024, 256]
    batch (4% of a perturbation forward for the four reductions below); its MatMul streams the same data in ~2."""
    ones = msops.ones((x.shape[-1], 1), x.dtype)
    return msops.matmul(x.reshape(-1, x.shape[-1]), ones).reshape(x.shape[:-1])


def masked_mean(hidden: Tensor, weights: Tensor) -> Tensor:
    """sum_j w_j h_j / max(sum_j w_j, 1) over positions (the weighted sum as a product [B, 1, L] x [B, L, H])."""
    total = msops.bmm(weights[:, None, :].astype(hidden.dtype), hidden)[:, 0]
    return total / msops.maximum(weights.sum(1), 1.0)[:, None]


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity over the last axis (denominator clamped at 1e-8, as torch's CosineSimilarity)."""
    dot = last_axis_sum(a * b)
    norms = msops.sqrt(last_axis_sum(a * a)) * msops.sqrt(last_axis_sum(b * b))
    return dot / msops.maximum(norms, 1e-8)


class PerturbedForward(nn.Cell):
    """Cells -> (cell embedding [B, H] (mean over genes, or <cls>), [mean per-gene cosine [B], per-gene cosines
    [B, L],] hidden states [B, L, H]); `originals` [B, L, H] holds, at each compared position, the same gene's state
    in the original cell. Original cells run through the same graph (nothing compared), so a run compiles one graph
    per padded width."""

    def __init__(self, encoder: nn.Cell, layer_index: int, pooling: str, compare: bool) -> None:
        super().__init__()
        self.stopped = StoppedEncoder(encoder, layer_index)
        self.pooling = pooling
        self.compare = compare

    def construct(
        self, input_ids: Tensor, attention_mask: Tensor, pool: Tensor, originals: Tensor, compared: Tensor
    ) -> tuple:
        hidden = self.stopped(input_ids, attention_mask)
        if self.pooling == "cls":
            embedding = hidden[:, 0]
        else:
            embedding = masked_mean(hidden, pool)
        if not self.compare:
            return embedding, hidden
        gene_cos = cosine(hidden, originals) * compared
        mean_cos = gene_cos.sum(1) / msops.maximum(compared.sum(1), 1.0)
        return embedding, mean_cos, gene_cos, hidden


# One compiled forward per (encoder, layer, pooling, compare): runs on the same encoder object reuse the graphs.
_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def perturbed_forward(encoder: nn.Cell, layer_index: int, pooling: str, compare: bool) -> PerturbedForward:
    cache = _FORWARDS.setdefault(encoder, {})
    key = (int(layer_index), pooling, bool(compare))
    if key not in cache:
        cache[key] = PerturbedForward(encoder, layer_index, pooling, compare)
        cache[key].set_train(False)
    return cache[key]


def original_rows(cells: int, batch_size: int) -> int:
    """Rows of a batch of `cells` original cells: the next power of two (at most `batch_size`), so that a run
    compiles at most log2(batch_size) more graphs per width and runs no more than twice the rows it needs."""
    if not 0 < cells <= batch_size:
        raise ValueError(f"a batch of {cells} originals does not fit {batch_size} rows")
    return min(batch_size, 1 << (cells - 1).bit_length())


@dataclass
class PerturbationResult:
    """What one perturbed copy yields: its cell embedding, the mean per-gene cosine to the original (None when not
    compared) and the per-gene cosines at its compared positions (in the order of those positions)."""

    embedding: np.ndarray
    mean_cosine: float | None
    gene_cosines: np.ndarray | None


@dataclass
class Job:
    """A perturbed copy to run: `key` names its cell for the caller, `original` is that cell's hidden states."""

    key: Any
    perturbation: Perturbation
    original: np.ndarray


class PerturbationEngine:
    """Runs original cells and perturbed copies through the stopped encoder (see the module docstring)."""

    def __init__(
        self,
        encoder: nn.Cell,
        layer_index: int,
        pooling: str,
        compare: bool,
        batch_size: int,
        buckets: LengthBuckets,
        pad_token_id: int,
        special_ids: Sequence[int],
    ) -> None:
        self.forward = perturbed_forward(encoder, layer_index, pooling, compare)
        self.pooling, self.compare = pooling, compare
        self.batch_size, self.buckets = int(batch_size), buckets
        self.pad_token_id, self.special_ids = int(pad_token_id), list(special_ids)
        self.hidden_size = int(encoder.config.hidden_size)

    def original_states(self, cells: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Hidden states [n_i, hidden] of each cell, in input order.

        A batch of originals has `original_rows(n)` rows for its n cells, not `batch_size`: a window of long cells
        holds few cells (one 1,000-gene cell makes 999 copies), and padding its one original to a full batch cost a
        tenth of the copies' forward time at batch 100. A cell's states then differ from a full batch's in the last
        bits (within float32 rounding, as across batch sizes); the rows depend only on the plan, so every rank and
        every resumed run computes the same bits."""
        states: list[np.ndarray] = [np.empty(0)] * len(cells)
        lengths = np.asarray([len(c) for c in cells])
        for width, positions in length_sorted_batches(lengths, self.buckets, self.batch_size):
            rows = original_rows(positions.size, self.batch_size)
            hidden = self._forward(width, [cells[i] for i in positions], keep_hidden=True, rows=rows)[-1]
            for row, i in enumerate(positions):
                states[i] = hidden[row, : lengths[i]]
        return states

    def _forward(
        self,
        width: int,
        cells: Sequence[np.ndarray],
        compare_with: Sequence[Job] = (),
        keep_hidden: bool = False,
        rows: int | None = None,
    ) -> list:
        """The graph's outputs on one padded batch of `rows` rows (default `batch_size`; the hidden states only with
        `keep_hidden`); `compare_with` (the jobs of `cells`) fills the comparison inputs."""
        rows = self.batch_size if rows is None else rows
        ids, mask = pad_cells(cells, width, self.pad_token_id, rows=rows)
        pool = pool_weights(ids, mask, self.special_ids)
        originals = np.zeros((rows, width, self.hidden_size) if self.compare else (1, 1, 1), np.float32)
        compared = np.zeros((rows, width) if self.compare else (1, 1), np.float32)
        for row, job in enumerate(compare_with):
            p = job.perturbation
            n = p.tokens.size
            compared[row, :n] = p.compared
            originals[row, :n][p.compared] = job.original[p.source[p.compared]]
        outputs = self.forward(Tensor(ids), Tensor(mask), Tensor(pool), Tensor(originals), Tensor(compared, ms.float32))
        return [o.asnumpy() for o in outputs[:-1]] + [outputs[-1].asnumpy() if keep_hidden else None]

    def cell_embedding(self, cell: np.ndarray, states: np.ndarray) -> np.ndarray:
        """The original cell's embedding: <cls>, or the mean over its genes (every gene, special tokens excluded)."""
        if self.pooling == "cls":
            return states[0].astype(np.float64)
        genes = ~np.isin(cell, np.asarray(self.special_ids))
        return states[genes].astype(np.float64).mean(0)

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, PerturbationResult]]:
        """Results of every job, in completion order. Jobs are batched by padded width: a batch fills with copies of
        consecutive jobs of the same width (across cells), and leftovers run padded at the end."""
        pending: dict[int, list[Job]] = {}
        for job in jobs:
            width = self.buckets.widths[int(self.buckets.assign([job.perturbation.tokens.size])[0])]
            queue = pending.setdefault(width, [])
            queue.append(job)
            if len(queue) == self.batch_size:
                yield from self._run_batch(width, queue)
                pending[width] = []
        for width, queue in sorted(pending.items()):
            if queue:
                yield from self._run_batch(width, queue)

    def _run_batch(self, width: int, jobs: list[Job]) -> Iterator[tuple[Job, PerturbationResult]]:
        arrays = self._forward(width, [j.perturbation.tokens for j in jobs], jobs if self.compare else ())
        for row, job in enumerate(jobs):
            if self.compare:
                p = job.perturbation
                gene_cos = arrays[2][row, : p.tokens.size][p.compared]
                result = PerturbationResult(arrays[0][row], float(arrays[1][row]), gene_cos)
            else:
                result = PerturbationResult(arrays[0][row], None, None)
            yield job, result
