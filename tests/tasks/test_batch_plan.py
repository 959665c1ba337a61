"""The design of sharded inference, independent of any host's rounding: every batch a rank runs (which cells, in
which rows, at which padded width) is a batch one process runs, and together the ranks run exactly the batches of
one process, for 1, 2 and 3 ranks; for `gf embed`, `gf classify --evaluate` and `gf perturb` (originals and
perturbed copies). A batch is recorded where it becomes a padded array (`pad_cells`), so the test sees what the
model sees. With equal batches the files are one process's bit for bit on any host, which is asserted too.

Ranks run one after another in this process: rank 0 computes its share and times out waiting for the others, the
other ranks compute theirs, rank 0 resumes (its shard kept) and merges."""

from __future__ import annotations

from collections import Counter

import pytest

from mindformer_gf.infer.sharded import RankFailed
from mindformer_gf.train.distributed import ParallelContext

Batch = tuple[int, tuple[tuple[int, ...], ...]]  # (padded width, the cells' tokens row by row)


@pytest.fixture
def recorded(monkeypatch):
    """The batches padded from now on: a list that the test empties between ranks."""
    import mindformer_gf.infer.batches
    import mindformer_gf.tasks.perturb.engine
    from mindformer_gf.data.collate import pad_cells

    batches: list[Batch] = []

    def recording(cells, width, pad_token_id=0, rows=None):
        batches.append((int(width), tuple(tuple(int(t) for t in c) for c in cells)))
        return pad_cells(cells, width, pad_token_id, rows=rows)

    monkeypatch.setattr(mindformer_gf.infer.batches, "pad_cells", recording)
    monkeypatch.setattr(mindformer_gf.tasks.perturb.engine, "pad_cells", recording)
    return batches


def batches_of_each_rank(recorded: list[Batch], world: int, run_rank) -> tuple[list[list[Batch]], object]:
    """The batches each of `world` ranks ran and rank 0's result. `run_rank(parallel, resume, timeout)` runs one
    rank's pass."""
    if world == 1:
        recorded.clear()
        result = run_rank(ParallelContext(), False, 60.0)
        return [list(recorded)], result
    per_rank = []
    recorded.clear()
    with pytest.raises(RankFailed, match="made no progress"):
        run_rank(ParallelContext(0, world), False, 0.3)
    per_rank.append(list(recorded))
    for rank in range(1, world):
        recorded.clear()
        assert run_rank(ParallelContext(rank, world), True, 60.0) is None
        per_rank.append(list(recorded))
    recorded.clear()
    result = run_rank(ParallelContext(0, world), True, 60.0)
    assert recorded == []  # rank 0's shard was kept, not recomputed
    return per_rank, result


def assert_ranks_run_the_single_process_batches(recorded, run_rank, compare) -> None:
    (single,), alone = batches_of_each_rank(recorded, 1, run_rank)
    assert len(single) >= 4 and len(set(single)) == len(single)
    for world in (2, 3):
        per_rank, merged = batches_of_each_rank(recorded, world, run_rank)
        assert sum(1 for batches in per_rank if batches) >= 2, f"{world} ranks: the work was not shared"
        ran = [batch for batches in per_rank for batch in batches]
        assert Counter(ran) == Counter(single), f"{world} ranks ran other batches than one process"
        compare(merged, alone)


def varied_cells(pbmc_dataset, lengths):
    """The first len(lengths) PBMC cells cut to `lengths` genes, keeping the tokenizer's record."""
    import copy

    from datasets import Dataset

    sub = pbmc_dataset.select(range(len(lengths)))
    ids = [list(c[:k]) for c, k in zip(sub["input_ids"], lengths, strict=True)]
    info = copy.deepcopy(pbmc_dataset.info)
    info.features = None
    columns = {"input_ids": ids, "length": [len(c) for c in ids], "cell_type": sub["cell_type"]}
    return Dataset.from_dict(columns, info=info)


def test_embed_ranks_run_exactly_the_batches_of_one_process(tiny_model_dir, pbmc_dataset, tmp_path, recorded):
    from mindformer_gf.finetune.task_model import load_encoder
    from mindformer_gf.tasks import EmbExtractor

    # 26 cells of 6..64 genes: 2 widths, batches of 4, shares of unequal cell counts
    lengths = [64 if i % 9 == 0 else 6 + (5 * i) % 27 for i in range(26)]
    dataset = varied_cells(pbmc_dataset, lengths)
    encoder = load_encoder(tiny_model_dir)

    def run_rank(parallel, resume, timeout):
        extractor = EmbExtractor(
            emb_mode="cell",
            emb_label=["cell_type"],
            forward_batch_size=4,
            num_buckets=2,
            progress=False,
            resume=resume,
            shard_timeout=timeout,
        )
        out = tmp_path / ("alone" if parallel.world_size == 1 else f"world{parallel.world_size}")
        embs = extractor.extract_embs(tiny_model_dir, dataset, out, "e", encoder=encoder, parallel=parallel)
        return None if embs is None else embs.matrix

    def same_bits(merged, alone):
        assert merged.tobytes() == alone.tobytes()

    assert_ranks_run_the_single_process_batches(recorded, run_rank, same_bits)


def test_classify_evaluate_ranks_run_exactly_the_batches_of_one_process(
    tiny_config, pbmc_dataset, tmp_path, recorded, monkeypatch
):
    from helpers.tasks import quick_settings

    import mindformer_gf.tasks.cell
    from mindformer_gf.model import build_model
    from mindformer_gf.tasks import CellClassifier
    from mindformer_gf.train.checkpoint import save_model_dir

    monkeypatch.setattr(mindformer_gf.tasks.cell, "plot_confusion_matrix", lambda *a, **k: None)
    states = ["CD14+ Monocyte", "CD19+ B", "Dendritic"]
    config = tiny_config.replace(id2label=dict(enumerate(states)), architectures=["BertForSequenceClassification"])
    model_dir = save_model_dir(build_model(config, "BertForSequenceClassification", seed=3), tmp_path / "classifier")
    lengths = [64 if i % 7 == 0 else 10 + (3 * i) % 50 for i in range(120)]
    dataset = varied_cells(pbmc_dataset, lengths)
    classifier = CellClassifier(
        state_key="cell_type",
        states=states,
        max_ncells=30,
        settings=quick_settings().replace(forward_batch_size=4, num_buckets=2),
    )

    def run_rank(parallel, resume, timeout):
        out = tmp_path / ("alone" if parallel.world_size == 1 else f"world{parallel.world_size}")
        metrics = classifier.evaluate_saved_model(
            model_dir, dataset, out, resume=resume, shard_timeout=timeout, parallel=parallel
        )
        return None if metrics is None else (out / "predictions.csv").read_bytes()

    def same_bytes(merged, alone):
        assert merged == alone

    assert_ranks_run_the_single_process_batches(recorded, run_rank, same_bytes)


def test_perturb_ranks_run_exactly_the_batches_of_one_process(tiny_model_dir, pbmc_dataset, tmp_path, recorded):
    from mindformer_gf.finetune.task_model import load_encoder
    from mindformer_gf.tasks.perturb import InSilicoPerturber, read_table

    # batches of 3 copies: windows of cells with >= 24 copies between them, 4 windows, 2 widths
    dataset = varied_cells(pbmc_dataset, [14, 5, 9, 12, 6, 11, 7, 10, 8, 13])
    encoder = load_encoder(tiny_model_dir)

    def run_rank(parallel, resume, timeout):
        perturber = InSilicoPerturber(
            emb_mode="cell_and_gene", forward_batch_size=3, num_buckets=2, emb_label=["cell_type"], progress=False
        )
        out = tmp_path / ("alone" if parallel.world_size == 1 else f"world{parallel.world_size}")
        path = perturber.perturb_data(
            tiny_model_dir, dataset, out, "p", resume=resume, encoder=encoder, parallel=parallel, shard_timeout=timeout
        )
        return None if path is None else read_table(path)

    def same_table(merged, alone):
        import pandas as pd

        pd.testing.assert_frame_equal(merged, alone, check_exact=True)

    assert_ranks_run_the_single_process_batches(recorded, run_rank, same_table)
