"""What a perturbation does to one cell's rank encoding (numpy only): the perturbed token array and, for every
position of it, the position of the same gene in the original cell (the gene-matched alignment the comparison uses).

Conventions (the reference's, checked against its outputs):
- delete: the perturbed genes are removed; the other genes keep their order.
- overexpress: the group's genes present in the cell are removed, then the whole group is put at the front in the
  order given (after <cls> in V2), and the cell is truncated to the model input size (<eos> stays last).
- inhibit / activate with `perturb_rank_shift` k (1-3): the gene's quartile q of the rank encoding (1 = top-ranked,
  positions [0, n/4) of its n genes) moves by k quartiles, down for inhibit and up for activate; it lands in the
  middle of the new quartile, position ((2 q' - 1) n) // 8 of the perturbed cell, or at the very bottom (inhibit
  past quartile 4) or front (activate past quartile 1). E.g. n = 8, activate k = 1: the gene at position 6
  (quartile 4) goes to position 5 (middle of quartile 3); inhibit k = 2: position 2 (quartile 2) goes to 7.
- <cls> / <eos> (V2) are never perturbed, stay in place and are never compared.
- "all" perturbs each gene on its own; overexpress and activate skip the first gene (already at the front), as the
  reference does. With `anchor` (combos = 1) each other gene is perturbed together with the anchor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

PERTURB_TYPES = ("delete", "overexpress", "inhibit", "activate")


@dataclass(frozen=True)
class CellLayout:
    """A cell's tokens split into its gene part and the special tokens around it (<cls> first, <eos> last)."""

    head: np.ndarray  # [<cls>] or []
    genes: np.ndarray
    tail: np.ndarray  # [<eos>] or []

    @classmethod
    def of(cls, tokens: np.ndarray, cls_id: int | None, eos_id: int | None) -> CellLayout:
        tokens = np.asarray(tokens)
        start = 1 if cls_id is not None and tokens.size and tokens[0] == cls_id else 0
        stop = tokens.size - 1 if eos_id is not None and tokens.size > start and tokens[-1] == eos_id else tokens.size
        return cls(tokens[:start], tokens[start:stop], tokens[stop:])

    @property
    def offset(self) -> int:
        return self.head.size


@dataclass(frozen=True)
class Perturbation:
    """One perturbed copy of a cell.

    `tokens`: the perturbed cell; `source[j]`: position in the original cell of the gene at position j, or -1 for a
    special token or an inserted gene; `compared[j]`: whether position j enters the per-gene comparison (a gene
    present in both cells that is not perturbed); `genes`: the perturbed token ids, in the order given."""

    genes: tuple[int, ...]
    tokens: np.ndarray
    source: np.ndarray
    compared: np.ndarray


def _assemble(layout: CellLayout, gene_tokens: np.ndarray, gene_source: np.ndarray, compared: np.ndarray, genes):
    head = np.full(layout.head.size, -1)
    tail = np.full(layout.tail.size, -1)
    no = np.zeros(layout.head.size, bool), np.zeros(layout.tail.size, bool)
    return Perturbation(
        tuple(int(g) for g in genes),
        np.concatenate([layout.head, gene_tokens, layout.tail]).astype(np.int64),
        np.concatenate([head, gene_source, tail]).astype(np.int64),
        np.concatenate([no[0], compared, no[1]]),
    )


def delete(layout: CellLayout, positions: Sequence[int], genes: Sequence[int]) -> Perturbation:
    """Remove the genes at gene positions `positions`."""
    keep = np.ones(layout.genes.size, bool)
    keep[list(positions)] = False
    source = np.flatnonzero(keep) + layout.offset
    return _assemble(layout, layout.genes[keep], source, np.ones(source.size, bool), genes)


def overexpress(layout: CellLayout, group: Sequence[int], max_length: int) -> Perturbation:
    """Remove the group's genes present, put the whole group in front, truncate to `max_length` tokens."""
    group = np.asarray(group, np.int64)
    keep = ~np.isin(layout.genes, group)
    room = max(0, max_length - layout.head.size - layout.tail.size)
    tokens = np.concatenate([group, layout.genes[keep]])[:room]
    source = np.concatenate([np.full(group.size, -1), np.flatnonzero(keep) + layout.offset])[:room]
    return _assemble(layout, tokens, source, source >= 0, group)


def quartile_target(position: int, n_genes: int, shift: int, perturb_type: str) -> int:
    """Where a gene at `position` (of `n_genes`) lands after moving `shift` quartiles (module docstring)."""
    quartile = 1 + (4 * position) // n_genes
    moved = quartile + shift if perturb_type == "inhibit" else quartile - shift
    if moved > 4:
        return n_genes - 1
    if moved < 1:
        return 0
    return min(n_genes - 1, ((2 * moved - 1) * n_genes) // 8)


def shift_rank(layout: CellLayout, position: int, shift: int, perturb_type: str) -> Perturbation:
    """Move the gene at gene position `position` by `shift` quartiles (inhibit: down, activate: up)."""
    n = layout.genes.size
    target = quartile_target(position, n, shift, perturb_type)
    order = [p for p in range(n) if p != position]
    order.insert(target, position)
    order = np.asarray(order)
    compared = order != position
    gene = layout.genes[position]
    return _assemble(layout, layout.genes[order], order + layout.offset, compared, [gene])


def perturb_positions(
    layout: CellLayout, positions: Sequence[int], perturb_type: str, shift: int | None, max_length: int
) -> Perturbation:
    """Perturb the genes at gene positions `positions` together."""
    genes = [int(layout.genes[p]) for p in positions]
    if perturb_type == "delete":
        return delete(layout, positions, genes)
    if perturb_type == "overexpress":
        return overexpress(layout, genes, max_length)
    if len(positions) != 1:
        raise ValueError(f"{perturb_type} moves one gene at a time; got a group of {len(positions)}")
    return shift_rank(layout, positions[0], int(shift), perturb_type)


def cell_perturbations(
    layout: CellLayout,
    perturb_type: str,
    group: Sequence[int] | None,
    anchor: int | None,
    shift: int | None,
    max_length: int,
) -> Iterator[Perturbation]:
    """Every perturbation of one cell: each gene alone (`group` None = "all"), the anchor with each other gene
    (`anchor`), or the group together."""
    genes = layout.genes
    if anchor is not None:
        (anchor_at,) = np.flatnonzero(genes == anchor)[:1]
        for p in range(genes.size):
            if p != anchor_at:
                positions = [int(anchor_at), p]
                if perturb_type == "overexpress":
                    yield overexpress(layout, [anchor, int(genes[p])], max_length)
                else:
                    yield delete(layout, sorted(positions), [anchor, int(genes[p])])
        return
    if group is None:
        start = 1 if perturb_type in ("overexpress", "activate") else 0
        for p in range(start, genes.size):
            yield perturb_positions(layout, [p], perturb_type, shift, max_length)
        return
    if perturb_type == "overexpress":
        yield overexpress(layout, group, max_length)
        return
    positions = [int(np.flatnonzero(genes == g)[0]) for g in group if np.any(genes == g)]
    if perturb_type == "delete":
        yield delete(layout, sorted(positions), [int(genes[p]) for p in positions])
    elif positions:  # inhibit / activate: a group of one gene (checked by the perturber)
        yield perturb_positions(layout, positions, perturb_type, shift, max_length)


def count_perturbations(layout: CellLayout, perturb_type: str, group, anchor) -> int:
    """len(list(cell_perturbations(...))) without building them."""
    n = layout.genes.size
    if anchor is not None:
        return n - 1
    if group is None:
        return n - (1 if perturb_type in ("overexpress", "activate") else 0)
    if perturb_type in ("delete", "overexpress"):
        return 1
    return int(np.isin(layout.genes, np.asarray(group)).any())
