"""`gf perturb` and `gf classify` on 2 msrun workers (one launch each). Perturbation writes the table of one process
(same rows, same order, same parts, values bit for bit: the ranks run whole windows of its plan), resumes an
interrupted run cell by cell without duplicates (rank 0 of the interrupted run runs in this process), and
`gf perturb-stats` on it gives the single process's statistics. Classification trains data parallel, consistent
with one process, and shares its validation and test cells among the ranks: the test predictions are one process's
`--evaluate` of the saved model (within float32 rounding: that pass batches every cell)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers.msrun import GF, msrun_gf
from test_sharded_msrun import rank_env

from mindformer_gf.cli import main
from mindformer_gf.tasks.perturb import read_table

LENGTHS = [14, 5, 9, 12, 6, 11, 7, 10, 8, 13]  # genes per cell


@pytest.mark.skipif(__import__("shutil").which("msrun") is None or not GF.exists(), reason="msrun or gf is missing")
def test_two_msrun_workers_write_the_single_process_table_and_resume_cell_by_cell(
    tiny_model_dir, pbmc_dataset, tmp_path, monkeypatch, capsys
):
    dataset = tmp_path / "cells.dataset"
    pbmc_dataset.select(range(len(LENGTHS))).map(
        lambda cell, i: {"input_ids": cell["input_ids"][: LENGTHS[i]], "length": LENGTHS[i]}, with_indices=True
    ).save_to_disk(str(dataset))
    arguments = ["--dataset", str(dataset), "--model", str(tiny_model_dir), "--label", "cell_type"]
    arguments += ["--emb-mode", "cell_and_gene", "--batch-size", "8", "--num-buckets", "2", "--shard-cells", "2"]
    arguments += ["--csv", "--no-progress", "--device", "CPU", "--prefix", "p"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(["perturb", *arguments, "--output-dir", str(single)]) == 0
    expected = read_table(single / "p.parquet")
    assert expected.cell.unique().tolist() == sorted(range(len(LENGTHS)), key=lambda i: -LENGTHS[i])  # input order

    # interrupted: rank 0 of 2 (in this process) perturbs its share, rank 1 never runs
    with monkeypatch.context() as env:
        rank_env(env, 0)
        capsys.readouterr()
        assert main(["perturb", *arguments, "--output-dir", str(sharded), "--shard-timeout", "1"]) == 1
        assert capsys.readouterr().err.startswith("gf perturb: error: rank 1 made no progress for 1 s")
    shards = sharded / "p_shards"
    own = shards / "rank00000-of-00002.parquet"
    parts = sorted(own.glob("part-*.parquet"))
    assert not (sharded / "p.parquet").exists() and len(parts) == 3  # its window of 6 cells, 2 a part
    # ... and rank 0 was killed before its last part and its shard: those cells are redone (their window runs
    # whole, so they keep their batches), its other cells are kept (the first part's values are marked +1 here:
    # the merged table shows they were taken, not recomputed)
    (shards / "rank00000-of-00002.npz").unlink()
    parts[-1].unlink()
    marked = pd.read_parquet(parts[0])
    marked["value"] += 1.0
    marked.to_parquet(parts[0], index=False)

    completed, text = msrun_gf("perturb", [*arguments, "--output-dir", str(sharded), "--resume"], tmp_path)
    assert completed.returncode == 0, text[-3000:]
    merged = read_table(sharded / "p.parquet")
    assert not merged.duplicated(["cell", "perturbed", "affected"]).any()
    is_marked = merged.cell.isin(marked.cell).to_numpy()
    assert is_marked.sum() == len(marked) and marked.cell.nunique() == 2
    np.testing.assert_array_equal(merged.value[is_marked], expected.value[is_marked] + 1.0)
    # the rest: same rows, same order, same bits as one process
    pd.testing.assert_frame_equal(merged[~is_marked], expected[~is_marked], check_exact=True)
    pd.testing.assert_frame_equal(merged.drop(columns="value"), expected.drop(columns="value"))
    # the same parts too: 2 cells each, in order
    names = [sorted(p.name for p in (out / "p.parquet").glob("part-*")) for out in (single, sharded)]
    assert names[0] == names[1] and len(names[0]) == 5
    csv, csv_alone = pd.read_csv(sharded / "p.csv"), pd.read_csv(single / "p.csv")
    pd.testing.assert_frame_equal(csv[~is_marked], csv_alone[~is_marked], check_exact=True)
    run = json.loads((sharded / "p_run.json").read_text())
    alone = json.loads((single / "p_run.json").read_text())
    # one process's windows (cells longest first, delete: as many copies as genes, until 8 batches of 8 copies):
    # 14+13+12+11+10+9 = 69 >= 64, then the other 4 cells; by genes squared 811 and 174: one window per rank
    assert alone["world_size"] == 1 and alone["cells_per_rank"] == [len(LENGTHS)]
    assert run["world_size"] == 2 and run["cells_per_rank"] == [6, 4] and run["groups_per_rank"] == [1, 1]
    assert run["cost_model"] == "genes_squared" and run["settings"] == alone["settings"]
    assert not shards.exists()
    assert run["resumed_ranks"] == [] and "rank 1: " in text  # rank 0 computed again, though cell by cell

    # perturb-stats: rank 0 alone writes (another rank returns at once), and the statistics equal one process's
    # (the marked cells' true values put back)
    offset = 0
    for part in sorted((sharded / "p.parquet").glob("part-*.parquet")):
        rows = pd.read_parquet(part)
        span = slice(offset, offset + len(rows))
        rows["value"] = np.where(is_marked[span], expected.value.to_numpy()[span], rows.value)
        rows.to_parquet(part, index=False)
        offset += len(rows)
    stats = ["perturb-stats", "--mode", "aggregate_gene_shifts", "--prefix", "s"]
    with monkeypatch.context() as env:
        rank_env(env, 1)
        assert main([*stats, "--input", str(sharded / "p.parquet"), "--output-dir", str(sharded)]) == 0
    assert not (sharded / "s.csv").exists()
    for table, out in ((single / "p.parquet", single), (sharded / "p.parquet", sharded)):
        assert main([*stats, "--input", str(table), "--output-dir", str(out)]) == 0
    assert (sharded / "s.csv").read_bytes() == (single / "s.csv").read_bytes()


@pytest.mark.skipif(__import__("shutil").which("msrun") is None or not GF.exists(), reason="msrun or gf is missing")
def test_gf_classify_cell_trains_data_parallel_and_shards_its_evaluations_on_two_msrun_workers(
    tiny_model_dir, pbmc_dataset_dir, tmp_path
):
    """Training under msrun: the cells and splits of one process, one batch per rank per step; every evaluation
    pass (validation at each checkpoint, the test cells) sharded over both ranks, whole batches of 4; and the test
    predictions those of the saved model as one process evaluates it (`--evaluate`): the same labels, probabilities
    within 1e-6 (`--evaluate` runs every cell, so the test cells share other batches: see README,
    Reproducibility), the validation metrics of the chosen checkpoint scikit-learn's on that evaluation's
    predictions."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from mindformer_gf.tasks import CellClassifier

    arguments = ["cell", "--dataset", str(pbmc_dataset_dir), "--model", str(tiny_model_dir), "--label", "cell_type"]
    arguments += ["--states", "CD14+ Monocyte,CD19+ B,Dendritic", "--max-cells", "64", "--epochs", "1"]
    arguments += ["--batch-size", "8", "--num-buckets", "1", "--warmup-steps", "0", "--no-progress", "--device", "CPU"]
    arguments += ["--evals-per-epoch", "2", "--lr", "5e-3", "--forward-batch-size", "4"]
    out = tmp_path / "sharded"
    completed, text = msrun_gf("classify", [*arguments, "--output-dir", str(out)], tmp_path)
    assert completed.returncode == 0, text[-3000:]
    assert "rank 1 of 2: trained data parallel" in text

    # the cells and the split of one process (computed here without training)
    classifier = CellClassifier("cell_type", ["CD14+ Monocyte", "CD19+ B", "Dendritic"], max_ncells=64)
    prepared = classifier.prepare_data(str(pbmc_dataset_dir), tmp_path / "prepared")
    (split,) = classifier.make_splits(str(pbmc_dataset_dir), prepared)
    assert json.loads((out / "splits.json").read_text()) == {"split": split.as_dict()}
    for name in ("prepared_cells.csv", "label_map.json"):
        assert (out / name).read_bytes() == (tmp_path / "prepared" / name).read_bytes(), name
    steps = pd.read_csv(out / "training" / "metrics.csv").step.max()
    assert steps == -(-split.train.size // 16)  # 8 cells per rank per step

    # every pass sharded in whole batches of 4: rank 1 predicted its share of the validation cells at both
    # checkpoints, and of the test cells; the shards are gone
    history = pd.read_csv(out / "training" / "eval_history.csv")
    assert history.step.tolist() == [steps // 2, steps]
    n_valid, n_test = split.valid.size, split.test.size

    def rank1_cells(n: int) -> int:
        """All cells have 64 genes: the full batches (256 genes each) alternate rank 0, rank 1, ...; the partial
        last one goes to the less loaded rank: rank 1 after an odd number of full batches, else rank 0."""
        full, last = divmod(n, 4)
        return 4 * (full // 2) + (last if full % 2 else 0)

    assert n_valid >= 5 and n_test >= 5  # at least 2 batches: both ranks have work
    rank1 = [line for line in (tmp_path / "logs" / "worker_1.log").read_text().splitlines() if "/" in line]
    rank1 = [line for line in rank1 if line.startswith("rank 1: ")]
    expected = [f"rank 1: {rank1_cells(n)}/{rank1_cells(n)} cells" for n in (n_valid, n_valid, n_test)]
    assert rank1 == expected, text[-3000:]
    run = json.loads((out / "predictions_run.json").read_text())
    assert run["world_size"] == 2 and run["cells_per_rank"] == [n_test - rank1_cells(n_test), rank1_cells(n_test)]
    assert all(seconds is not None for seconds in run["seconds_per_rank"])
    assert not list(out.rglob("*_shards"))

    # one process evaluates the saved model on every cell: the test rows are the training run's, the same labels
    # and probabilities within float32 rounding (other batches: a cell's row in its batch may change the last bits)
    evaluated = tmp_path / "evaluated"
    assert main(["classify", *arguments, "--evaluate", "--model", str(out / "model"), "--output-dir",
                 str(evaluated)]) == 0  # fmt: skip
    predictions = pd.read_csv(out / "predictions.csv")
    again = pd.read_csv(evaluated / "predictions.csv").set_index("dataset_row")
    pd.testing.assert_frame_equal(
        again.loc[predictions.dataset_row].reset_index(), predictions, check_exact=False, rtol=0, atol=1e-6
    )
    # ... and the validation metrics recorded for the chosen checkpoint are scikit-learn's on its validation rows
    best = json.loads((out / "model" / "task.json").read_text())["best_step"]
    chosen = history.set_index("step").loc[best]
    valid = again.loc[prepared.indices[split.valid]]
    assert chosen.accuracy == pytest.approx(accuracy_score(valid.true_label, valid.predicted_label), abs=1e-12)
    names = sorted(json.loads((out / "label_map.json").read_text())["id2label"].values())
    f1 = f1_score(valid.true_label, valid.predicted_label, labels=names, average="macro", zero_division=0)
    assert chosen.macro_f1 == pytest.approx(f1, abs=1e-12)
    if valid.true_label.nunique() == len(names):
        probabilities = valid[[f"p({n})" for n in names]].to_numpy()
        auc = roc_auc_score(valid.true_label.map(names.index), probabilities, multi_class="ovr")
        assert chosen.roc_auc == pytest.approx(auc, abs=1e-12)
