"""`gf embed` on 2 msrun workers equals one process bit for bit (the ranks run whole batches of one process's
plan), records the split, surfaces a failing rank and resumes an interrupted run redoing only the missing shard.
Two msrun launches in all (each costs ~15 s)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.msrun import GF, msrun_gf, msrun_nodes

from mindformer_gf.cli import main

CELLS = 40


def cells_of_varied_length(pbmc_dataset, path: Path) -> Path:
    """CELLS of the shipped cells (64 genes each), three kept whole and the others cut to 8..16 genes: one process
    runs them in 5 batches of 8 at width 64 (one bucket), of 68, 81, 94, 110 and 270 genes. 2 ranks take whole
    batches by cost (LPT: 270 -> rank 0, 110 -> rank 1, 94 -> rank 1, 81 -> rank 1, 68 -> rank 0): 16 and 24
    cells."""
    lengths = np.where(np.arange(CELLS) % 17 == 0, 64, 8 + np.arange(CELLS) % 9)
    subset = pbmc_dataset.select(range(CELLS)).map(
        lambda cell, i: {"input_ids": cell["input_ids"][: lengths[i]], "length": int(lengths[i])}, with_indices=True
    )
    subset.save_to_disk(str(path))
    return path


def rank_env(env: pytest.MonkeyPatch, rank: int) -> None:
    """msrun's environment of worker `rank` of 2, set in this process (and the process's rank forgotten: a training
    test run earlier in this process has fixed it at one process)."""
    from mindformer_gf.train import distributed

    env.setenv("MS_ROLE", "MS_WORKER")
    env.setenv("MS_WORKER_NUM", "2")
    env.setenv("RANK_ID", str(rank))
    env.setattr(distributed, "_CONTEXT", None)


@pytest.mark.skipif(shutil.which("msrun") is None or not GF.exists(), reason="msrun or the gf command is missing")
def test_two_msrun_workers_equal_one_process_and_resume_after_a_failed_rank(
    tiny_model_dir, pbmc_dataset, tmp_path, monkeypatch, capsys
):
    dataset = cells_of_varied_length(pbmc_dataset, tmp_path / "cells.dataset")
    arguments = ["--dataset", str(dataset), "--model", str(tiny_model_dir), "--label", "cell_type"]
    arguments += ["--batch-size", "8", "--no-progress", "--device", "CPU"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(["embed", *arguments, "--output-dir", str(single)]) == 0

    # an interrupted run: rank 0 of 2 (msrun's environment, in this process) writes its shard, rank 1 never runs
    with monkeypatch.context() as env:
        rank_env(env, 0)
        capsys.readouterr()
        assert main(["embed", *arguments, "--output-dir", str(sharded), "--shard-timeout", "1"]) == 1
        assert capsys.readouterr().err.startswith("gf embed: error: rank 1 made no progress for 1 s")
    shards = sharded / "embeddings_shards"
    assert (shards / "rank00000-of-00002.npz").exists()
    assert not (sharded / "embeddings.csv").exists()

    # resumed, but rank 1 cannot write its shard (a directory is in the way): the run fails with rank 1's error
    (shards / "rank00001-of-00002.npz").mkdir()
    completed, text = msrun_gf("embed", [*arguments, "--output-dir", str(sharded), "--resume"], tmp_path)
    assert completed.returncode != 0, text[-3000:]
    assert "IsADirectoryError" in text and "rank00001-of-00002.npz" in text
    marker = json.loads((shards / "rank00001.error.json").read_text())
    assert marker["message"].startswith("IsADirectoryError")
    assert not (sharded / "embeddings.csv").exists()

    # resumed again: rank 0's shard is kept, rank 1's share is computed, rank 0 merges
    (shards / "rank00001-of-00002.npz").rmdir()
    completed, text = msrun_gf("embed", [*arguments, "--output-dir", str(sharded), "--resume"], tmp_path)
    assert completed.returncode == 0, text[-3000:]
    for name in ("embeddings.npy", "embeddings.csv"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name
    run = json.loads((sharded / "embeddings_run.json").read_text())
    alone = json.loads((single / "embeddings_run.json").read_text())
    assert np.load(single / "embeddings.npy").shape[0] == CELLS
    assert alone["world_size"] == 1 and alone["cells_per_rank"] == [CELLS]
    assert run["world_size"] == 2 and run["cells_per_rank"] == [16, 24] and run["groups_per_rank"] == [2, 3]
    assert sum(run["cells_per_rank"]) == CELLS and len(run["seconds_per_rank"]) == 2
    assert run["resumed_ranks"] == [0] and run["settings"] == alone["settings"]
    assert "rank 1: " in text  # rank 1's progress lines went to its log
    assert not shards.exists()


@pytest.mark.skipif(shutil.which("msrun") is None or not GF.exists(), reason="msrun or the gf command is missing")
def test_two_msrun_nodes_on_localhost_equal_one_process(tiny_model_dir, pbmc_dataset, tmp_path):
    """The README's launch on several machines, as two machines of one worker each on this one: two msrun
    launchers started together, `--worker_num=2 --local_worker_num=1`, `--node_rank` 0 and 1, one master address.
    Node 0's worker (rank 0) merges both shards into the files of one process, bit for bit."""
    dataset = cells_of_varied_length(pbmc_dataset, tmp_path / "cells.dataset")
    arguments = ["--dataset", str(dataset), "--model", str(tiny_model_dir), "--label", "cell_type"]
    arguments += ["--batch-size", "8", "--no-progress", "--device", "CPU", "--shard-timeout", "120"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(["embed", *arguments, "--output-dir", str(single)]) == 0

    (node0, text0), (node1, text1) = msrun_nodes([str(GF), "embed", *arguments, "--output-dir", str(sharded)], tmp_path)
    assert node0 == 0, text0[-3000:]
    assert node1 == 0, text1[-3000:]
    for name in ("embeddings.npy", "embeddings.csv"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name
    run = json.loads((sharded / "embeddings_run.json").read_text())
    assert run["world_size"] == 2 and run["cells_per_rank"] == [16, 24] and run["resumed_ranks"] == []
    assert all(seconds is not None for seconds in run["seconds_per_rank"])
    # each launcher ran one worker: rank 1 on node 1 (its progress line is in node 1's log only)
    assert "rank 1: 24/24 cells" in text1 and "rank 1: " not in text0
    assert not (sharded / "embeddings_shards").exists()
