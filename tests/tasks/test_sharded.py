"""Sharded inference without msrun: the cost partition against hand-worked cases and a brute-force optimum, shards
round-tripping, and the rank protocol (merge, error marker, stall, resume) with ranks as threads and numpy work."""

from __future__ import annotations

import itertools
import json
import threading
import time

import numpy as np
import pytest

from mindformer_gf.cli import main
from mindformer_gf.infer.sharded import (
    RankFailed,
    ShardedInference,
    batches_within,
    cell_costs,
    load_shard,
    merge_shards,
    partition_by_cost,
    save_shard,
)
from mindformer_gf.train.distributed import ParallelContext


def test_partition_by_cost_worked_by_hand():
    # descending: 5 -> r0; 4 -> r1; 3 (pos 2) -> r1 (4 < 5); 3 (pos 3) -> r0 (5 < 7); 3 (pos 4) -> r1 (7 < 8)
    shares = partition_by_cost([5, 4, 3, 3, 3], 2)
    assert [s.tolist() for s in shares] == [[0, 3], [1, 2, 4]]
    # genes vs genes squared on lengths 10, 6, 5, 5: by genes r0 = {10, 5} (15), r1 = {6, 5} (11);
    # squared (100, 36, 25, 25): the long cell alone outweighs the other three (86)
    lengths = [10, 6, 5, 5]
    assert [s.tolist() for s in partition_by_cost(cell_costs(lengths, "genes"), 2)] == [[0, 3], [1, 2]]
    assert cell_costs(lengths, "genes_squared").tolist() == [100, 36, 25, 25]
    assert [s.tolist() for s in partition_by_cost(cell_costs(lengths, "genes_squared"), 2)] == [[0], [1, 2, 3]]
    # more ranks than cells: the extra ranks get nothing
    assert [s.tolist() for s in partition_by_cost([2, 1], 3)] == [[0], [1], []]
    with pytest.raises(ValueError, match="cost_model"):
        cell_costs(lengths, "tokens")


def test_partition_covers_every_cell_once_and_is_within_lpt_bound_of_the_optimum():
    rng = np.random.default_rng(0)
    for world in (2, 3):
        for _ in range(10):
            lengths = rng.integers(1, 2048, size=7)
            costs = cell_costs(lengths, "genes_squared")
            shares = partition_by_cost(costs, world)
            assert sorted(np.concatenate(shares).tolist()) == list(range(lengths.size))
            assert all((np.diff(s) > 0).all() for s in shares)  # ascending
            assert [s.tolist() for s in partition_by_cost(costs, world)] == [s.tolist() for s in shares]
            largest = max(costs[s].sum() for s in shares)
            best = min(
                max(costs[np.asarray(owner) == r].sum() for r in range(world))
                for owner in itertools.product(range(world), repeat=lengths.size)
            )
            assert largest <= (4 / 3 - 1 / (3 * world)) * best + 1e-9  # Graham's bound for LPT


def test_ranks_take_whole_groups_balanced_by_their_cost(tmp_path):
    lengths = [7, 3, 12, 5, 5, 9, 1, 4, 8, 2]
    # groups (batches of one process's plan) cost 12+9=21, 7+8=15, 5+5+4=14, 3+1+2=6: by LPT 21 -> r0, 15 -> r1,
    # 14 -> r1 (15 < 21), 6 -> r0 (21 < 29)
    groups = [[2, 5], [0, 8], [3, 4, 7], [1, 6, 9]]

    def job(rank, world, groups=groups, settings=None):
        parallel = ParallelContext(rank, world)
        return ShardedInference(lengths, tmp_path, "e", settings or {}, parallel=parallel, groups=groups)

    two = job(1, 2)
    assert two.group_shares == [[0, 3], [1, 2]]
    assert [s.tolist() for s in two.shares] == [[1, 2, 5, 6, 9], [0, 3, 4, 7, 8]]
    assert job(0, 3).group_shares == [[0], [1], [2, 3]]  # 21 | 15 | 14 + 6
    assert job(0, 5).shares[4].size == 0  # more ranks than groups
    # the groups are part of a shard's identity: another plan of the same cells matches no shard
    assert job(0, 2).fingerprint == two.fingerprint
    assert job(0, 2, [[2, 5, 0], [8], [3, 4, 7], [1, 6, 9]]).fingerprint != two.fingerprint
    with pytest.raises(ValueError, match="each of the 10 cells exactly once"):
        job(0, 2, [[2, 5], [0, 8], [3, 4, 7], [1, 6, 9, 2]])
    with pytest.raises(ValueError, match="outside 0..9"):
        job(0, 2, [[2, 5], [0, 8], [3, 4, 7], [1, 6, 10]])

    # a rank's compute picks its whole batches of the plan, renumbered into its cells, in plan order
    plan = [(16, np.asarray(g)) for g in groups]
    mine = batches_within(plan, two.shares[0])
    assert [(w, b.tolist()) for w, b in mine] == [(16, [1, 2]), (16, [0, 3, 4])]
    with pytest.raises(RuntimeError, match="cuts a batch"):
        batches_within(plan, np.asarray([0, 1, 2, 5, 6, 9]))


def test_shards_round_trip_and_merge_into_input_order(tmp_path):
    rng = np.random.default_rng(1)
    total = 9
    dense = rng.normal(size=(total, 4)).astype(np.float32)
    ragged = [rng.normal(size=(n, 3)).astype(np.float32) for n in rng.integers(1, 6, size=total)]
    shares = partition_by_cost(np.arange(total, 0, -1), 3)
    shards = []
    for rank, positions in enumerate(shares):
        path = save_shard(
            tmp_path / f"s{rank}.npz", positions, [dense[positions], [ragged[i] for i in positions]], {"rank": rank}
        )
        loaded = load_shard(path)
        assert loaded[2] == {"rank": rank}
        shards.append(loaded[:2])
    merged_dense, merged_ragged = merge_shards(total, shards)
    np.testing.assert_array_equal(merged_dense, dense)
    for got, want in zip(merged_ragged, ragged, strict=True):
        np.testing.assert_array_equal(got, want)
    # rank 2's cells missing, rank 1's twice
    with pytest.raises(RuntimeError, match=f"{shares[2].size} missing, {shares[1].size} repeated"):
        merge_shards(total, [shards[0], shards[1], (shares[1], shards[1][1])])


LENGTHS = np.array([7, 3, 12, 5, 5, 9, 1, 4, 8, 2])


def square_rows(positions, advance, calls=None, fail=None):
    """The fake work of a rank: each cell's length squared, and a ragged range per cell."""
    if calls is not None:
        calls.append(positions.tolist())
    if fail is not None:
        raise ValueError(fail)
    advance(positions.size)
    return [LENGTHS[positions].astype(np.float64) ** 2, [np.arange(LENGTHS[i]) for i in positions]]


def run_ranks(tmp_path, world, work, resume=False, timeout=30.0, ranks=None, settings=None, progress=False):
    """Each rank of `ranks` (default all) in a thread; rank 0 starts first, so every other rank finds this launch.
    Returns {rank: outputs or the exception}, and the jobs."""
    results, jobs = {}, {}

    def one(rank):
        job = ShardedInference(
            LENGTHS,
            tmp_path,
            "emb",
            settings or {"layer": -1},
            parallel=ParallelContext(rank, world),
            resume=resume,
            timeout=timeout,
            progress=progress,
        )
        jobs[rank] = job
        try:
            results[rank] = job.run(lambda positions, advance: work(rank, positions, advance))
        except Exception as err:  # noqa: BLE001 - the test inspects it
            results[rank] = err

    ranks = list(range(world)) if ranks is None else ranks
    launch = tmp_path / "emb_shards" / "launch.json"
    before = launch.read_text() if launch.exists() else None
    threads = [threading.Thread(target=one, args=(r,)) for r in ranks]
    threads[0].start()
    while 0 in ranks and (not launch.exists() or launch.read_text() == before):
        time.sleep(0.01)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, jobs


def test_three_ranks_merge_to_the_single_process_result_and_record_the_run(tmp_path, capsys):
    single = square_rows(np.arange(LENGTHS.size), lambda n: None)

    def work(rank, positions, advance):
        if rank == 0:  # let the others finish first: rank 0's bar must count their cells too
            while not (tmp_path / "emb_shards" / "rank00002-of-00003.npz").exists():
                time.sleep(0.01)
        return square_rows(positions, advance)

    results, jobs = run_ranks(tmp_path, 3, work, progress=True)
    # one bar, rank 0's, over all cells; the other ranks printed their progress lines
    assert jobs[0]._bar.n == jobs[0]._bar.total == LENGTHS.size and jobs[1]._bar.disable
    assert "rank 1: 4/4 cells" in capsys.readouterr().err
    assert results[1] is None and results[2] is None
    merged = results[0]
    np.testing.assert_array_equal(merged[0], single[0])
    assert all(np.array_equal(a, b) for a, b in zip(merged[1], single[1], strict=True))
    run = json.loads(jobs[0].finish(["emb.npy"]).read_text())
    shares = partition_by_cost(LENGTHS, 3)
    assert run["world_size"] == 3 and run["cells"] == LENGTHS.size
    assert run["cells_per_rank"] == [s.size for s in shares] and sum(run["cells_per_rank"]) == LENGTHS.size
    assert run["cost_per_rank"] == [float(LENGTHS[s].sum()) for s in shares]
    assert len(run["seconds_per_rank"]) == 3 and all(s >= 0 for s in run["seconds_per_rank"])
    assert run["settings"] == {"layer": -1} and run["resumed_ranks"] == [] and run["outputs"] == ["emb.npy"]
    assert not (tmp_path / "emb_shards").exists()


def test_a_failing_rank_fails_rank_0_with_its_message_and_a_silent_one_times_out(tmp_path):
    def work(rank, positions, advance):
        return square_rows(positions, advance, fail="cell 3 is malformed" if rank == 2 else None)

    results, _ = run_ranks(tmp_path / "error", 3, work)
    assert isinstance(results[2], ValueError)
    assert isinstance(results[0], RankFailed) and "rank 2 failed: ValueError: cell 3 is malformed" in str(results[0])
    marker = json.loads((tmp_path / "error" / "emb_shards" / "rank00002.error.json").read_text())
    assert "cell 3 is malformed" in marker["traceback"]

    started = time.monotonic()
    results, _ = run_ranks(tmp_path / "stall", 2, lambda r, p, a: square_rows(p, a), timeout=0.5, ranks=[0])
    assert isinstance(results[0], RankFailed) and "rank 1 made no progress" in str(results[0])
    assert time.monotonic() - started < 10


def test_resume_redoes_only_the_missing_shard_and_changed_settings_redo_everything(tmp_path):
    calls = {0: [], 1: []}

    def work(rank, positions, advance):
        return square_rows(positions, advance, calls[rank])

    # interrupted: rank 0 finished its shard, rank 1 never ran
    results, _ = run_ranks(tmp_path, 2, work, timeout=0.5, ranks=[0])
    assert isinstance(results[0], RankFailed)
    assert (tmp_path / "emb_shards" / "rank00000-of-00002.npz").exists()
    results, jobs = run_ranks(tmp_path, 2, work, resume=True)
    shares = partition_by_cost(LENGTHS, 2)
    assert calls == {0: [shares[0].tolist()], 1: [shares[1].tolist()]}  # rank 0's share was not redone
    np.testing.assert_array_equal(results[0][0], LENGTHS.astype(np.float64) ** 2)
    assert jobs[0].resumed == [0]

    # the same shards under other settings are not reused
    results, _ = run_ranks(tmp_path, 2, work, resume=True, settings={"layer": 0})
    assert calls[0] == [shares[0].tolist()] * 2 and calls[1] == [shares[1].tolist()] * 2


def test_classify_evaluation_on_two_ranks_writes_the_single_process_files(
    tiny_config, pbmc_dataset_dir, tmp_path, monkeypatch
):
    """One process through `gf classify cell --evaluate`; then two ranks one after another in this process: rank 0
    alone (times out waiting for rank 1), rank 1, rank 0 resumed."""
    from helpers.tasks import quick_settings

    import mindformer_gf.tasks.cell

    monkeypatch.setattr(mindformer_gf.tasks.cell, "plot_confusion_matrix", lambda *a, **k: None)  # seconds each

    from mindformer_gf.model import build_model
    from mindformer_gf.tasks import CellClassifier
    from mindformer_gf.train.checkpoint import save_model_dir

    states = ["CD14+ Monocyte", "CD19+ B", "Dendritic"]
    config = tiny_config.replace(id2label=dict(enumerate(states)), architectures=["BertForSequenceClassification"])
    model_dir = save_model_dir(build_model(config, "BertForSequenceClassification", seed=3), tmp_path / "classifier")
    # batches of 8: cells of both ranks share batches in the single process
    settings = quick_settings().replace(forward_batch_size=8)
    classifier = CellClassifier(state_key="cell_type", states=states, max_ncells=40, settings=settings)
    arguments = ["--dataset", str(pbmc_dataset_dir), "--model", str(model_dir), "--label", "cell_type"]
    arguments += ["--states", ",".join(states), "--max-cells", "40", "--num-buckets", "1", "--forward-batch-size", "8"]
    assert main(["classify", "cell", "--evaluate", *arguments, "--output-dir", str(tmp_path / "single")]) == 0
    sharded = tmp_path / "sharded"

    def evaluate(rank, **options):
        return classifier.evaluate_saved_model(
            model_dir, pbmc_dataset_dir, sharded, parallel=ParallelContext(rank, 2), **options
        )

    with pytest.raises(RankFailed, match="rank 1 made no progress"):
        evaluate(0, shard_timeout=0.5)
    assert evaluate(1, resume=True) is None
    assert evaluate(0, resume=True)["n"] == 40
    for name in ("predictions.csv", "metrics.json"):
        assert (sharded / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    run = json.loads((sharded / "predictions_run.json").read_text())
    assert run["world_size"] == 2 and sum(run["cells_per_rank"]) == 40 and run["resumed_ranks"] == [0, 1]
    assert json.loads((tmp_path / "single" / "predictions_run.json").read_text())["cells_per_rank"] == [40]


def test_classify_search_under_msrun_is_one_line_and_msrun_scheduler_of_perturb_stats_does_nothing(
    tmp_path, monkeypatch, capsys
):
    from test_sharded_msrun import rank_env

    with monkeypatch.context() as env:
        rank_env(env, 0)
        argv = ["classify", "cell", "--dataset", "d", "--model", "m", "--output-dir", str(tmp_path), "--label", "x"]
        assert main([*argv, "--search-trials", "3"]) == 2
        err = capsys.readouterr().err
        assert "--search-trials runs on one device" in err and "Traceback" not in err
        env.setenv("MS_ROLE", "MS_SCHED")  # msrun's scheduler process: no share of the table, returns at once
        assert main(["perturb-stats", "--input", str(tmp_path / "none.parquet"), "--output-dir", str(tmp_path)]) == 0
    assert not any(tmp_path.iterdir())
