"""MLM masking: 15% of genes (exact count per cell), 80/10/10, special tokens never masked, fixed slots."""

from __future__ import annotations

import numpy as np
import pytest

from mindformer_gf.data import MaskingSpec, mask_batch, special_tokens_from_metadata

VOCAB = 500
PAD, MASK, CLS, EOS = 0, 1, 2, 3


def v2_like_cells(count: int, seed: int = 0) -> list[np.ndarray]:
    """<cls> genes <eos>, genes drawn without repeats from ids 4.. (a V2-style dictionary with cls/eos)."""
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(count):
        n = int(rng.integers(5, 120))
        cells.append(np.concatenate([[CLS], rng.choice(np.arange(4, VOCAB), n, replace=False), [EOS]]))
    return cells


@pytest.fixture(scope="module")
def spec():
    mask_id, specials = special_tokens_from_metadata({"<pad>": PAD, "<mask>": MASK, "<cls>": CLS, "<eos>": EOS})
    return MaskingSpec(VOCAB, mask_id, specials)


@pytest.fixture(scope="module")
def masked(spec):
    cells = v2_like_cells(2000)
    return cells, mask_batch(cells, range(len(cells)), 128, spec, seed=7, epoch=0)


def test_shapes_and_slots(spec, masked):
    cells, batch = masked
    slots = spec.mask_slots(128)
    assert slots == round(0.15 * 128)
    assert batch["input_ids"].shape == (len(cells), 128) and batch["input_ids"].dtype == np.int32
    assert batch["masked_positions"].shape == (len(cells), slots)
    assert batch["labels"].shape == (len(cells), slots)
    for row, cell in enumerate(cells):
        genes = cell.size - 2
        used = batch["labels"][row] != -100
        # exactly round(0.15 x genes), at least one, in the leading slots; the rest point at 0 with label -100
        assert used.sum() == max(1, int(np.rint(0.15 * genes)))
        assert used[: used.sum()].all()
        assert (batch["masked_positions"][row][~used] == 0).all()
        assert batch["attention_mask"][row].sum() == cell.size


def test_special_tokens_never_masked(masked):
    cells, batch = masked
    for row, cell in enumerate(cells):
        positions = batch["masked_positions"][row][batch["labels"][row] != -100]
        assert not np.isin(cell[positions], [PAD, CLS, EOS]).any()
        assert batch["input_ids"][row, 0] == CLS and batch["input_ids"][row, cell.size - 1] == EOS
        assert (batch["input_ids"][row, cell.size :] == PAD).all()
        # labels are the original tokens; positions outside the masked set are untouched
        assert (batch["labels"][row][: positions.size] == cell[positions]).all()
        untouched = np.setdiff1d(np.arange(cell.size), positions)
        assert (batch["input_ids"][row, untouched] == cell[untouched]).all()


def test_80_10_10_statistics(masked):
    cells, batch = masked
    replaced = kept = masked_count = total = 0
    genes = total_genes = 0
    for row, cell in enumerate(cells):
        used = batch["labels"][row] != -100
        positions = batch["masked_positions"][row][used]
        now = batch["input_ids"][row, positions]
        masked_count += int((now == MASK).sum())
        kept += int((now == cell[positions]).sum())
        # a random replacement is a gene, never a special token (the original can't be <mask>, so no overlap)
        random_tokens = now[(now != MASK) & (now != cell[positions])]
        assert (random_tokens >= 4).all()
        replaced += random_tokens.size
        total += positions.size
        genes += positions.size
        total_genes += cell.size - 2
    # a random gene equal to the original (chance 1/496) counts as kept: negligible for these bounds
    sd = np.sqrt(total * 0.1 * 0.9)
    assert abs(masked_count - 0.8 * total) < 4 * np.sqrt(total * 0.8 * 0.2)
    assert abs(replaced - 0.1 * total) < 4 * sd
    assert abs(kept - 0.1 * total) < 4 * sd
    assert genes / total_genes == pytest.approx(0.15, abs=0.01)


def test_masks_depend_only_on_seed_epoch_cell(spec):
    cells = v2_like_cells(6, seed=3)
    together = mask_batch(cells, [10, 11, 12, 13, 14, 15], 128, spec, seed=1, epoch=2)
    # the same cells in another order and batch: identical rows
    alone = mask_batch([cells[4], cells[1]], [14, 11], 128, spec, seed=1, epoch=2)
    for key in together:
        assert (alone[key][0] == together[key][4]).all() and (alone[key][1] == together[key][1]).all()
    other_epoch = mask_batch(cells, [10, 11, 12, 13, 14, 15], 128, spec, seed=1, epoch=3)
    assert not (other_epoch["masked_positions"] == together["masked_positions"]).all()


def test_v1_dictionary_masks_every_gene_position():
    mask_id, specials = special_tokens_from_metadata({"<pad>": 0, "<mask>": 1})
    spec = MaskingSpec(100, mask_id, specials)
    cell = np.arange(2, 22)
    batch = mask_batch([cell], [0], 20, spec, seed=0, epoch=0)
    assert (batch["labels"] != -100).sum() == 3  # round(0.15 * 20)


def test_errors():
    with pytest.raises(ValueError, match="lack <pad> or <mask>"):
        special_tokens_from_metadata({"<pad>": 0})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        MaskingSpec(10, 1, (0, 12))
    spec = MaskingSpec(100, 1, (0,))
    with pytest.raises(ValueError, match="more than the batch width"):
        mask_batch([np.arange(2, 30)], [0], 16, spec, 0, 0)
