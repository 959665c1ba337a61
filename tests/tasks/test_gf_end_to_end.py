"""Every `gf` command a user runs after pretraining, from the command line (`mindformer_gf.cli.main`), on the shipped
PBMC cells and the tiny model of conftest.py, checked against oracles outside the code under test: predictions
recomputed with the numpy reference from the saved weights and the training targets' mean and sd, metrics by
scikit-learn, a ranking by hand, transformers on an exported model. `gf pretrain` (options, checkpoints, compilations)
and `gf convert` of Hugging Face checkpoints have their own tests (tests/train/test_pretrain_run.py,
tests/convert/test_convert_cli.py); `gf classify multitask` and `gf classify gene` (classes) are the runs of
test_multitask_and_strategies.py and test_gene_classification.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.tasks import padded_rows
from safetensors.numpy import load_file
from sklearn.metrics import accuracy_score, r2_score

from mindformer_gf import reference
from mindformer_gf.cli import main
from mindformer_gf.config import GeneformerConfig

QUICK = ["--warmup-steps", "0", "--num-buckets", "1", "--forward-batch-size", "64", "--no-progress"]
TOY = "toy_target"


def gf(*argv: object) -> None:
    assert main([str(a) for a in argv]) == 0


def saved_weights(model_dir: Path) -> tuple[dict[str, np.ndarray], GeneformerConfig]:
    return load_file(str(model_dir / "mindspore_model.safetensors")), GeneformerConfig.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def toy_dataset_dir(pbmc_dataset, tmp_path_factory) -> Path:
    """The PBMC cells plus a learnable numeric target far from mean 0, sd 1: 100, or 140 for cells whose top-ranked
    gene is one of the two most common top-ranked genes (a prediction left standardised cannot pass for it)."""
    first = np.asarray([cell[0] for cell in pbmc_dataset["input_ids"]])
    common = np.isin(first, np.argsort(-np.bincount(first))[:2])
    target = np.where(common, 140.0, 100.0)
    assert 0.2 < common.mean() < 0.8
    path = tmp_path_factory.mktemp("toy") / "pbmc_toy.dataset"
    pbmc_dataset.add_column(TOY, target.tolist()).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def cell_regression(toy_dataset_dir, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cell_regression")
    gf("classify", "cell", "--dataset", toy_dataset_dir, "--model", tiny_model_dir, "--output-dir", out,
       "--label", TOY, "--regression", "--split", "0.6,0.2,0.2", "--max-cells", 300, "--epochs", 3, "--lr", 3e-3,
       "--batch-size", 12, *QUICK)  # fmt: skip
    return out


def test_gf_tokenize_ranks_genes_by_normalised_expression(pbmc_dataset, tmp_path, capsys):
    """`gf tokenize` on the counts file: each cell is its genes sorted by count / n_counts / gene median, highest
    first (ties by token id), top 64, computed here by hand."""
    import anndata

    from mindformer_gf.data.pbmc68k import counts_h5ad
    from mindformer_gf.resources import example_cells_path
    from mindformer_gf.tokenizer import load_gene_dictionaries

    counts = counts_h5ad(example_cells_path("pbmc68k_reduced"), tmp_path / "counts.h5ad")
    gf("tokenize", counts, tmp_path, "--prefix", "cells", "--gene-id", "symbol", "--model-input-size", 64,
       "--custom-attr", "barcode", "--custom-attr", "cell_type:label", "--no-progress")  # fmt: skip
    assert "wrote 700 cells to" in capsys.readouterr().out
    from datasets import load_from_disk

    dataset = load_from_disk(str(tmp_path / "cells.dataset"))
    assert len(dataset) == 700 and {"input_ids", "length", "barcode", "label"} <= set(dataset.column_names)
    np.testing.assert_array_equal(dataset["label"], pbmc_dataset["cell_type"])

    dictionaries = load_gene_dictionaries("V1", load_gene_names=True)
    adata = anndata.read_h5ad(counts)
    symbols = np.asarray(adata.var_names, dtype=str)
    for row in (0, 123, 699):
        values = np.asarray(adata.X[row].todense()).ravel()
        by_token: dict[int, float] = {}
        for symbol, count in zip(symbols, values, strict=True):
            ensembl = dictionaries.gene_names.get(symbol)
            if count > 0 and ensembl in dictionaries.token and ensembl in dictionaries.median:
                token = dictionaries.token[ensembl]
                by_token[token] = (
                    by_token.get(token, 0.0) + count / values.sum() * 10_000 / dictionaries.median[ensembl]
                )
        ranked = sorted(by_token, key=lambda t: (-by_token[t], t))[:64]
        assert dataset[row]["input_ids"] == ranked, row
        assert dataset[row]["length"] == len(ranked)


@pytest.mark.slow
def test_gf_pretrain_on_real_cells_then_gf_convert(pbmc_dataset_dir, pbmc_dataset, tmp_path):
    """A few masked-gene steps on the PBMC cells from a random start (the first loss is that of a uniform guess over
    the vocabulary), then `gf convert` of the result: transformers on the pretraining output and the reference on
    the converted weights give the same logits."""
    import torch
    from transformers import BertForMaskedLM

    run = tmp_path / "run"
    gf("pretrain", "--dataset", pbmc_dataset_dir, "--output-dir", run, "--max-steps", 3, "--batch-size", 8,
       "--max-cells", 48, "--num-buckets", 1, "--warmup-steps", 1, "--save-every", 3, "--log-every", 1,
       "--set", "model_overrides={hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 1, "
       "intermediate_size: 32, max_position_embeddings: 64}", "--no-progress")  # fmt: skip
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3] and metrics["skipped_steps"].iloc[-1] == 0
    assert metrics["loss"].iloc[0] == pytest.approx(np.log(25426), abs=0.2)
    assert ((metrics["accuracy"] >= 0) & (metrics["accuracy"] <= 1)).all()

    # the pretrained model is written in Hugging Face's layout: transformers loads it as it is, and `gf convert`
    # turns it into a MindSpore directory (--verify: the converted model against the reference on the source)
    gf("convert", run / "model", tmp_path / "ms", "--verify", "--format", "safetensors", "--quiet")
    weights, config = saved_weights(tmp_path / "ms")
    hf = BertForMaskedLM.from_pretrained(run / "model").eval()
    ids, mask = padded_rows(pbmc_dataset, np.asarray([0, 7]))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    expected, _ = reference.forward(weights, ids, mask, config, "BertForMaskedLM")
    valid = mask.astype(bool)
    np.testing.assert_allclose(theirs[valid], expected[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_gf_classify_cell_regression_predicts_on_the_targets_scale(cell_regression, toy_dataset_dir):
    out = cell_regression
    predictions = pd.read_csv(out / "predictions.csv")
    prepared = pd.read_csv(out / "prepared_cells.csv")
    split = json.loads((out / "splits.json").read_text())["split"]
    train_values = prepared[TOY].to_numpy()[split["train"]]
    mean, sd = train_values.mean(), train_values.std()
    from datasets import load_from_disk

    dataset = load_from_disk(str(toy_dataset_dir))
    ids, mask = padded_rows(dataset, predictions["dataset_row"].to_numpy())
    weights, config = saved_weights(out / "model")
    logits, _ = reference.forward(weights, ids, mask, config, "BertForSequenceClassification")
    np.testing.assert_allclose(predictions[f"predicted_{TOY}"], logits[:, 0] * sd + mean, rtol=1e-5)
    np.testing.assert_array_equal(predictions[f"true_{TOY}"], np.asarray(dataset[TOY])[predictions["dataset_row"]])
    r2 = r2_score(predictions[f"true_{TOY}"], predictions[f"predicted_{TOY}"])
    assert r2 > 0.0  # learnt something about the toy target
    assert json.loads((out / "metrics.json").read_text())["r2"] == pytest.approx(r2)
    assert (out / "regression.png").is_file() and (out / "training" / "loss_curve.png").is_file()


@pytest.mark.slow
def test_gf_convert_exports_the_fine_tuned_model_to_transformers(cell_regression, toy_dataset_dir, tmp_path):
    import torch
    from datasets import load_from_disk
    from transformers import BertForSequenceClassification

    gf("convert", "--to", "huggingface", cell_regression / "model", tmp_path / "hf", "--quiet")
    hf = BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    predictions = pd.read_csv(cell_regression / "predictions.csv").head(6)
    ids, mask = padded_rows(load_from_disk(str(toy_dataset_dir)), predictions["dataset_row"].to_numpy())
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    scale = json.loads((cell_regression / "model" / "task.json").read_text())["target_scale"]
    np.testing.assert_allclose(
        theirs[:, 0] * scale["std"] + scale["mean"], predictions[f"predicted_{TOY}"], rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_gf_classify_cell_with_folds_grouped_by_louvain(pbmc_dataset_dir, pbmc_dataset, tiny_model_dir, tmp_path):
    gf("classify", "cell", "--dataset", pbmc_dataset_dir, "--model", tiny_model_dir, "--output-dir", tmp_path,
       "--label", "cell_type", "--states", "Dendritic,CD14+ Monocyte", "--folds", 2, "--group-by", "louvain",
       "--max-cells", 160, "--epochs", 1, "--lr", 2e-3, *QUICK)  # fmt: skip
    louvain = np.asarray(pbmc_dataset["louvain"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    frames, tested_groups = [], []
    for k in range(2):
        fold = tmp_path / f"fold{k}"
        predictions = pd.read_csv(fold / "predictions.csv")
        metrics = json.loads((fold / "metrics.json").read_text())
        assert metrics["accuracy"] == pytest.approx(
            accuracy_score(predictions["true_label"], predictions["predicted_label"])
        )
        assert (fold / "model" / "config.json").is_file() and (fold / "confusion_matrix.png").is_file()
        tested_groups.append(set(louvain[predictions["dataset_row"]]))
        frames.append((predictions, metrics))
    assert not tested_groups[0] & tested_groups[1]  # no louvain cluster is tested in both folds
    accuracies = [m["accuracy"] for _, m in frames]
    assert summary["folds"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    pooled = pd.concat([p for p, _ in frames])
    assert len(pooled) == 160 and pooled["dataset_row"].is_unique  # every cell tested once
    assert summary["pooled"]["accuracy"] == pytest.approx(
        accuracy_score(pooled["true_label"], pooled["predicted_label"])
    )
    assert (tmp_path / "confusion_matrix_all_folds.png").is_file()


@pytest.mark.slow
def test_gf_classify_gene_regression_predicts_on_the_targets_scale(
    pbmc_dataset_dir, pbmc_dataset, tiny_model_dir, tmp_path
):
    """Per-gene numbers for the 40 genes most often in the cells; 2 folds over genes. Each prediction recomputed
    from the fold's saved token classifier (numpy reference) and the training genes' mean and sd."""
    from mindformer_gf.tokenizer import load_gene_dictionaries

    gene_of = {t: g for g, t in load_gene_dictionaries("V1").token.items()}
    counts = np.bincount(np.concatenate(pbmc_dataset["input_ids"]))
    tokens = np.argsort(-counts)[:40]
    values = pd.DataFrame({"gene": [gene_of[int(t)] for t in tokens], "value": 20.0 + 5.0 * np.arange(40) % 7})
    values.to_csv(tmp_path / "values.csv", index=False)
    out = tmp_path / "genes"
    gf("classify", "gene", "--dataset", pbmc_dataset_dir, "--model", tiny_model_dir, "--output-dir", out,
       "--gene-values", tmp_path / "values.csv", "--folds", 2, "--max-cells", 40, "--epochs", 1, "--lr", 3e-3,
       *QUICK)  # fmt: skip
    value_of = dict(zip(values["gene"], values["value"], strict=True))
    folds = json.loads((out / "gene_folds.json").read_text())
    predictions = pd.read_csv(out / "fold0" / "predictions.csv")
    train_values = np.asarray([value_of[g] for g in folds["fold0"]["train"]])
    mean, sd = train_values.mean(), train_values.std()
    assert set(predictions["gene"]) <= set(folds["fold0"]["test"])
    weights, config = saved_weights(out / "fold0" / "model")
    for row, group in list(predictions.groupby("dataset_row"))[:5]:
        ids, mask = padded_rows(pbmc_dataset, np.asarray([row]))
        logits, _ = reference.forward(weights, ids, mask, config, "BertForTokenClassification")
        expected = logits[0, group["position"].to_numpy(), 0] * sd + mean
        np.testing.assert_allclose(group["predicted_value"], expected, rtol=1e-5)
        np.testing.assert_allclose(group["true_value"], [value_of[g] for g in group["gene"]])
    summary = json.loads((out / "summary.json").read_text())
    pooled = pd.read_csv(out / "predictions_all_folds.csv")
    assert summary["overall"]["r2"] == pytest.approx(r2_score(pooled["true_value"], pooled["predicted_value"]))


@pytest.mark.slow
def test_gf_embed_from_a_fine_tuned_model_with_plots_and_summary(cell_regression, toy_dataset_dir, tmp_path, capsys):
    """Cell embeddings (second-to-last layer) of the fine-tuned model's encoder: a mean pool of the reference's
    hidden states on the saved weights; UMAP and heatmap files; the per-cell-type means by pandas."""
    from datasets import load_from_disk

    gf("embed", "--dataset", toy_dataset_dir, "--model", cell_regression / "model", "--output-dir", tmp_path,
       "--label", "cell_type", "--plot", "umap,heatmap", "--summary", "exact_mean", "--max-cells", 60,
       "--num-buckets", 1, "--no-progress")  # fmt: skip
    assert "60 cell embeddings of 32 dimensions (layer -1)" in capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "embeddings.csv")
    matrix = np.load(tmp_path / "embeddings.npy")
    rows = frame["dataset_row"].to_numpy()
    dataset = load_from_disk(str(toy_dataset_dir))
    weights, config = saved_weights(cell_regression / "model")
    encoder = {k[len("bert.") :]: v for k, v in weights.items() if k.startswith("bert.")}
    for i in (0, 31, 59):
        ids = np.asarray(dataset[int(rows[i])]["input_ids"])[None]
        _, hidden = reference.forward(encoder, ids, np.ones_like(ids), config, "BertModel")
        np.testing.assert_allclose(matrix[i], hidden[config.num_hidden_layers - 1][0].mean(0), rtol=1e-4, atol=1e-5)
    means = pd.read_csv(tmp_path / "embeddings_mean_by_cell_type.csv", index_col="cell_type")
    columns = [str(i) for i in range(matrix.shape[1])]
    by_pandas = frame.groupby("cell_type")[columns].mean()
    np.testing.assert_allclose(means.loc[by_pandas.index, columns], by_pandas, rtol=1e-5, atol=1e-7)
    for name in ("embeddings_umap_cell_type.png", "embeddings_heatmap_cell_type.pdf"):
        assert (tmp_path / name).stat().st_size > 1000


def test_gf_embed_gene_and_cls_modes(tiny_model_dir, tiny_config, tiny_weights, pbmc_dataset, tmp_path):
    """--mode gene on V1 cells (each gene's mean over its occurrences), --mode cls on V2-style cells (<cls> first):
    both against the reference on the tiny model's weights, last layer (--layer 0)."""
    from datasets import Dataset, DatasetInfo

    encoder = {k[len("bert.") :]: v for k, v in tiny_weights.items() if k.startswith("bert.")}
    last = tiny_config.num_hidden_layers

    def hidden_of(cell):
        ids = np.asarray(cell)[None]
        return reference.forward(encoder, ids, np.ones_like(ids), tiny_config, "BertModel")[1][last][0]

    cells = pbmc_dataset.select(range(3))
    cells.save_to_disk(str(tmp_path / "three.dataset"))
    gf("embed", "--dataset", tmp_path / "three.dataset", "--model", tiny_model_dir, "--output-dir", tmp_path / "g",
       "--mode", "gene", "--layer", 0, "--prefix", "genes", "--num-buckets", 1, "--no-progress")  # fmt: skip
    genes = pd.read_csv(tmp_path / "g" / "genes.csv")
    matrix = np.load(tmp_path / "g" / "genes.npy")
    states = [hidden_of(c) for c in cells["input_ids"]]
    tokens = np.concatenate(cells["input_ids"])
    stacked = np.concatenate(states)
    assert len(genes) == np.unique(tokens).size
    for row in (0, len(genes) - 1):
        token = genes["token_id"].iloc[row]
        np.testing.assert_allclose(matrix[row], stacked[tokens == token].mean(0), rtol=1e-4, atol=1e-5)

    record = {
        "format": "mindformer_gf.tokenized_dataset",
        "format_version": 1,
        "dictionary": {
            "vocab_size": tiny_config.vocab_size,
            "special_tokens": {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3},
        },
    }
    v2_cells = [[2, *c[:20], 3] for c in cells["input_ids"]]
    Dataset.from_dict(
        {"input_ids": v2_cells, "length": [len(c) for c in v2_cells]}, info=DatasetInfo(description=json.dumps(record))
    ).save_to_disk(str(tmp_path / "v2.dataset"))
    gf("embed", "--dataset", tmp_path / "v2.dataset", "--model", tiny_model_dir, "--output-dir", tmp_path / "c",
       "--mode", "cls", "--layer", 0, "--num-buckets", 1, "--no-progress")  # fmt: skip
    expected = np.stack([hidden_of(c)[0] for c in v2_cells])
    np.testing.assert_allclose(np.load(tmp_path / "c" / "embeddings.npy"), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_gf_demo_quick_runs_every_stage(tmp_path, capsys):
    gf("demo", "--quick", "--no-progress", "--output-dir", tmp_path)
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert list(summary["stage_seconds"]) == [
        "tokenize",
        "pretrain (masked-gene modelling, random start)",
        "fine-tune cell classifier",
        "baseline: logistic regression on expression",
        "embeddings and plots",
        "in silico deletion toward another cell type",
    ]
    predictions = pd.read_csv(tmp_path / "cell_classifier" / "predictions.csv")
    assert len(predictions) == summary["test_cells"] == 105
    assert summary["geneformer_small"]["accuracy"] == pytest.approx(
        accuracy_score(predictions["true_label"], predictions["predicted_label"])
    )
    baseline = json.loads((tmp_path / "baseline_logistic_regression.json").read_text())
    assert summary["logistic_regression"]["accuracy"] == baseline["accuracy"] > 0.5  # expression separates types
    pretrain_metrics = pd.read_csv(tmp_path / "pretrain" / "metrics.csv")
    assert pretrain_metrics["step"].tolist() == [1, 2, 3, 4]
    assert pretrain_metrics["loss"].iloc[0] == pytest.approx(np.log(25426), abs=0.3)  # random start: uniform guess
    assert json.loads((tmp_path / "pretrain" / "model" / "config.json").read_text())["hidden_size"] == 16
    assert np.load(tmp_path / "embeddings" / "pbmc68k_cells.npy").shape == (700, 16)
    for name in ("pbmc68k_cells_umap_cell_type.png", "pbmc68k_cells_heatmap_cell_type.png"):
        assert (tmp_path / "embeddings" / name).stat().st_size > 1000
    # in silico deletion: every gene of 2 CD14+ monocytes; each gene's shift toward the goal is its values' mean
    shifts = pd.read_parquet(tmp_path / "perturbation" / "delete_all.parquet")
    assert set(shifts["cell_type"]) == {"CD14+ Monocyte"} and shifts["cell"].nunique() == 2
    toward_goal = shifts[shifts["affected"] == "Dendritic"].groupby("perturbed")["value"]
    stats = pd.read_csv(tmp_path / "perturbation" / "goal_state_shift.csv").set_index("Ensembl_ID")
    assert len(stats) == toward_goal.ngroups
    np.testing.assert_allclose(stats.loc[toward_goal.mean().index, "Shift_to_goal_end"], toward_goal.mean(), rtol=1e-6)
    assert (stats.loc[toward_goal.size().index, "N_Detections"] == toward_goal.size()).all()
    listing = capsys.readouterr().out
    assert "== files written under" in listing and "cell_classifier/predictions.csv" in listing
