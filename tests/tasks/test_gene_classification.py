"""`gf classify gene` on real PBMC cells and the reference's dosage-sensitive TF labels, with the extra-layer
strategy: no gene is trained on and tested in one fold, only the new top layer and the head change, and the
written metrics equal scikit-learn's on the written predictions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from mindformer_gf.resources import geneformer_v1_path
from mindformer_gf.tasks import FineTuneSettings

# each test reads a fine-tuning run (a few dozen training steps)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gene_run(tiny_model_dir, pbmc_dataset_dir, tmp_path_factory):
    """`gf classify gene` from the command line (its end-to-end test): (summary.json, output directory)."""
    from mindformer_gf.cli import main

    out = tmp_path_factory.mktemp("gene")
    argv = (
        f"classify gene --dataset {pbmc_dataset_dir} --model {tiny_model_dir} --output-dir {out} "
        f"--gene-labels {geneformer_v1_path('dosage_sens_tf_labels.csv')} --folds 2 --strategy extra_layer "
        "--epochs 2 --lr 3e-3 --warmup-steps 0 --num-buckets 1 --forward-batch-size 64 --no-progress"
    )
    assert main(argv.split()) == 0
    return json.loads((out / "summary.json").read_text()), out


def labelled_genes_in_cells(dataset) -> list[str]:
    """The label file's genes that occur in at least one cell, found here from the raw tables."""
    from mindformer_gf.tokenizer import load_gene_dictionaries

    token = load_gene_dictionaries("V1").token
    labels = pd.read_csv(geneformer_v1_path("dosage_sens_tf_labels.csv"))
    present = set(np.concatenate(dataset["input_ids"]).tolist())
    return [g for g in labels.stack().unique() if token.get(g) in present]


def test_no_gene_in_train_and_test_and_every_gene_tested_once(gene_run, pbmc_dataset):
    _, out = gene_run
    folds = json.loads((out / "gene_folds.json").read_text())
    tested = []
    for fold in folds.values():
        assert not set(fold["train"]) & set(fold["test"])
        tested += fold["test"]
    assert sorted(tested) == sorted(labelled_genes_in_cells(pbmc_dataset))
    all_predictions = pd.read_csv(out / "predictions_all_folds.csv")
    for k, fold in enumerate(folds.values()):
        predicted_genes = set(all_predictions.loc[all_predictions["fold"] == k, "gene"])
        assert predicted_genes <= set(fold["test"]) and predicted_genes


def test_predictions_are_the_test_genes_occurrences(gene_run, pbmc_dataset):
    summary, out = gene_run
    from mindformer_gf.tokenizer import load_gene_dictionaries

    token = load_gene_dictionaries("V1").token
    predictions = pd.read_csv(out / "fold0" / "predictions.csv")
    cells = pbmc_dataset.select(predictions["dataset_row"].to_numpy())["input_ids"]
    for cell, position, gene in zip(cells, predictions["position"], predictions["gene"], strict=True):
        assert cell[position] == token[gene]
    test_genes = json.loads((out / "gene_folds.json").read_text())["fold0"]["test"]
    expected = sum(int(np.isin(c, [token[g] for g in test_genes]).sum()) for c in pbmc_dataset["input_ids"])
    assert len(predictions) == expected  # every occurrence of a test gene in any cell


def test_metrics_per_fold_and_overall_equal_scikit_learn(gene_run):
    summary, out = gene_run
    names = ["dosage_insensitive", "dosage_sensitive"]
    for k in range(2):
        predictions = pd.read_csv(out / f"fold{k}" / "predictions.csv")
        metrics = json.loads((out / f"fold{k}" / "metrics.json").read_text())
        assert metrics["accuracy"] == pytest.approx(
            accuracy_score(predictions["true_label"], predictions["predicted_label"])
        )
        assert metrics["macro_f1"] == pytest.approx(
            f1_score(predictions["true_label"], predictions["predicted_label"], average="macro", labels=names)
        )
        if predictions["true_label"].nunique() == 2:
            y = (predictions["true_label"] == names[1]).astype(int)
            assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, predictions[f"p({names[1]})"]))
    pooled = pd.read_csv(out / "predictions_all_folds.csv")
    y = (pooled["true_label"] == names[1]).astype(int)
    assert summary["overall"]["roc_auc"] == pytest.approx(roc_auc_score(y, pooled[f"p({names[1]})"]))
    per_gene = pooled.groupby("gene").agg({f"p({names[1]})": "mean", "true_label": "first"})
    assert summary["per_gene"]["roc_auc"] == pytest.approx(
        roc_auc_score(per_gene["true_label"] == names[1], per_gene[f"p({names[1]})"])
    )
    assert (out / "gene_metrics.png").is_file() and (out / "roc_folds.png").is_file()


def test_extra_layer_trains_only_the_new_layer_and_the_head(gene_run, tiny_weights, tiny_config):
    from mindformer_gf.finetune.task_model import load_task_model

    summary, out = gene_run
    model = load_task_model(out / "fold0" / "model")
    assert model.config.num_hidden_layers == tiny_config.num_hidden_layers + 1
    weights = model.state_dict()
    for key, value in tiny_weights.items():
        if not key.startswith("cls."):
            np.testing.assert_array_equal(weights[key], value, err_msg=key)
    top = "bert.encoder.layer.2."
    assert sum(k.startswith(top) for k in weights) == 16
    from mindformer_gf.model import build_model

    fresh = build_model(model.config, "BertForTokenClassification", seed=FineTuneSettings().seed + 1).state_dict()
    assert not np.array_equal(weights[top + "attention.self.query.weight"], fresh[top + "attention.self.query.weight"])


def test_evaluate_scores_a_fold_model_on_its_held_out_genes_alone_and_on_two_msrun_workers(
    gene_run, pbmc_dataset_dir, pbmc_dataset, tmp_path
):
    """`gf classify gene --evaluate` of fold 0's saved model on the run's data and labels: the fold's test
    predictions bit for bit (its held-out genes, every occurrence, the same values), metrics equal to
    scikit-learn's on the written predictions, probabilities equal to a direct forward of the saved model; and the
    same files bit for bit from 2 msrun workers."""
    from mindformer_gf.cli import main
    from mindformer_gf.finetune.metrics import softmax
    from mindformer_gf.finetune.task_model import load_task_model

    _, out = gene_run
    arguments = ["gene", "--evaluate", "--model", str(out / "fold0" / "model"), "--dataset", str(pbmc_dataset_dir)]
    arguments += ["--gene-labels", str(geneformer_v1_path("dosage_sens_tf_labels.csv")), "--num-buckets", "1"]
    arguments += ["--forward-batch-size", "64", "--no-progress"]
    alone = tmp_path / "alone"
    assert main(["classify", *arguments, "--output-dir", str(alone)]) == 0
    predictions = pd.read_csv(alone / "predictions.csv")
    pd.testing.assert_frame_equal(predictions, pd.read_csv(out / "fold0" / "predictions.csv"), check_exact=True)

    names = ["dosage_insensitive", "dosage_sensitive"]
    metrics = json.loads((alone / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(accuracy_score(predictions.true_label, predictions.predicted_label))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(predictions.true_label, predictions.predicted_label, average="macro", labels=names)
    )
    y = (predictions.true_label == names[1]).astype(int)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, predictions[f"p({names[1]})"]))

    from helpers.tasks import padded_rows
    from mindspore import Tensor

    first = predictions[predictions.dataset_row.isin(predictions.dataset_row.unique()[:3])]
    rows = first.dataset_row.unique()
    ids, mask = padded_rows(pbmc_dataset, rows)
    logits = load_task_model(out / "fold0" / "model")(Tensor(ids), Tensor(mask))[0].asnumpy()
    where = {row: i for i, row in enumerate(rows)}
    direct = softmax(logits[[where[r] for r in first.dataset_row], first.position].astype(np.float64))
    np.testing.assert_allclose(first[[f"p({n})" for n in names]].to_numpy(), direct, rtol=1e-5, atol=1e-7)
    run = json.loads((alone / "predictions_run.json").read_text())
    assert run["world_size"] == 1 and run["cells_per_rank"] == [predictions.dataset_row.nunique()]

    from helpers.msrun import GF, msrun_gf

    if __import__("shutil").which("msrun") is None or not GF.exists():
        pytest.skip("msrun or the gf command is missing")
    sharded = tmp_path / "sharded"
    completed, text = msrun_gf("classify", [*arguments, "--output-dir", str(sharded)], tmp_path)
    assert completed.returncode == 0, text[-3000:]
    for name in ("predictions.csv", "metrics.json"):
        assert (sharded / name).read_bytes() == (alone / name).read_bytes(), name
    split = json.loads((sharded / "predictions_run.json").read_text())
    assert split["world_size"] == 2 and sum(split["cells_per_rank"]) == run["cells_per_rank"][0]
    assert min(split["cells_per_rank"]) > 0 and split["settings"] == run["settings"]
