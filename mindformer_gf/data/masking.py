"""Masked-gene modelling inputs: which genes are hidden, what replaces them, and where the model must predict.

As in the reference (BERT, Geneformer's HF collator): 15% of a cell's genes are chosen; of those 80% become
`<mask>`, 10% a random gene and 10% stay unchanged; the loss is taken on the chosen positions only. Differences,
each on purpose:
- special tokens (`<pad>`, and `<cls>`/`<eos>` when the dictionary has them) are never chosen (upstream masks
  `<cls>`/`<eos>` like genes);
- a cell gets exactly round(0.15 x its gene count) masked positions (at least one) instead of a Bernoulli draw per
  gene, so a bucket of width L needs at most `mask_slots(L)` prediction slots: the logits have a fixed shape
  [batch, slots, vocab] and the graph is not recompiled. The expected fraction is the same;
- a random replacement is a random gene, never a special token;
- every cell's draw is a pure function of (seed, epoch, cell index): masks do not depend on which batch, rank or
  process the cell lands in, so data-parallel and resumed runs see exactly the masks of a single uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100
DEFAULT_MASK_PROBABILITY = 0.15


@dataclass(frozen=True)
class MaskingSpec:
    """What masking needs to know about the dictionary and the rates."""

    vocab_size: int
    mask_token_id: int
    special_token_ids: tuple[int, ...]
    probability: float = DEFAULT_MASK_PROBABILITY
    mask_fraction: float = 0.8
    random_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise ValueError(f"mask probability must be in (0, 1), got {self.probability}")
        if self.mask_fraction < 0 or self.random_fraction < 0 or self.mask_fraction + self.random_fraction > 1:
            raise ValueError(
                f"mask_fraction {self.mask_fraction} + random_fraction {self.random_fraction} must lie in [0, 1]"
            )
        specials = tuple(sorted({int(t) for t in self.special_token_ids} | {int(self.mask_token_id)}))
        if specials[0] < 0 or specials[-1] >= self.vocab_size:
            raise ValueError(f"special token ids {specials} fall outside the vocabulary of {self.vocab_size}")
        object.__setattr__(self, "special_token_ids", specials)

    @property
    def gene_token_ids(self) -> np.ndarray:
        """Every id that is not special: the pool random replacements are drawn from."""
        keep = np.ones(self.vocab_size, bool)
        keep[list(self.special_token_ids)] = False
        return np.flatnonzero(keep).astype(np.int32)

    def num_masked(self, maskable: int | np.ndarray) -> np.ndarray:
        """How many positions a cell with `maskable` genes gets: round(p x n), at least 1 when n > 0."""
        maskable = np.asarray(maskable, dtype=np.int64)
        return np.where(maskable > 0, np.maximum(1, np.rint(self.probability * maskable)), 0).astype(np.int64)

    def mask_slots(self, width: int) -> int:
        """Prediction slots a batch of width `width` needs: the most any cell of that width can get."""
        return int(self.num_masked(width))


def special_tokens_from_metadata(special_tokens: dict[str, int]) -> tuple[int, tuple[int, ...]]:
    """(mask id, ids never to mask) from a dictionary's special-token table ({"<pad>": 0, "<mask>": 1, ...})."""
    if "<mask>" not in special_tokens or "<pad>" not in special_tokens:
        raise ValueError(
            f"the dictionary's special tokens {special_tokens} lack <pad> or <mask>; masked-gene modelling needs both"
        )
    return int(special_tokens["<mask>"]), tuple(int(v) for v in special_tokens.values())


def cell_rng(seed: int, epoch: int, cell_index: int) -> np.random.Generator:
    """The generator that decides one cell's masking in one epoch."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(cell_index)])


def mask_cell(
    tokens: np.ndarray, spec: MaskingSpec, rng: np.random.Generator, gene_ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masked tokens, chosen positions ascending, original tokens there) for one cell's unpadded token array."""
    tokens = np.asarray(tokens)
    maskable = np.flatnonzero(~np.isin(tokens, spec.special_token_ids))
    count = int(spec.num_masked(maskable.size))
    positions = np.sort(rng.choice(maskable, size=count, replace=False)) if count else maskable[:0]
    labels = tokens[positions]
    masked = tokens.copy()
    kind = rng.random(count)
    to_mask = kind < spec.mask_fraction
    to_random = (kind >= spec.mask_fraction) & (kind < spec.mask_fraction + spec.random_fraction)
    masked[positions[to_mask]] = spec.mask_token_id
    pool = spec.gene_token_ids if gene_ids is None else gene_ids
    masked[positions[to_random]] = pool[rng.integers(0, pool.size, size=int(to_random.sum()))]
    return masked, positions, labels


def mask_batch(
    cells: Iterable[np.ndarray],
    cell_indices: Iterable[int],
    width: int,
    spec: MaskingSpec,
    seed: int,
    epoch: int,
    pad_token_id: int = 0,
) -> dict[str, np.ndarray]:
    """Pad and mask cells into one batch of fixed shape.

    Returns int32 arrays `input_ids` and `attention_mask` [B, width], `masked_positions` and `labels`
    [B, mask_slots(width)]: unused slots point at position 0 with label -100 (ignored by the loss).
    """
    cells = list(cells)
    indices = list(cell_indices)
    if len(cells) != len(indices):
        raise ValueError(f"{len(cells)} cells but {len(indices)} cell indices")
    slots = spec.mask_slots(width)
    batch = len(cells)
    input_ids = np.full((batch, width), pad_token_id, np.int32)
    attention_mask = np.zeros((batch, width), np.int32)
    positions = np.zeros((batch, slots), np.int32)
    labels = np.full((batch, slots), IGNORE_INDEX, np.int32)
    gene_ids = spec.gene_token_ids
    for row, (tokens, index) in enumerate(zip(cells, indices, strict=True)):
        tokens = np.asarray(tokens)
        if tokens.size > width:
            raise ValueError(f"cell {index} has {tokens.size} tokens, more than the batch width {width}")
        masked, chosen, originals = mask_cell(tokens, spec, cell_rng(seed, epoch, index), gene_ids)
        input_ids[row, : tokens.size] = masked
        attention_mask[row, : tokens.size] = 1
        positions[row, : chosen.size] = chosen
        labels[row, : chosen.size] = originals
    return {"input_ids": input_ids, "attention_mask": attention_mask, "masked_positions": positions, "labels": labels}
