"""The reference's examples/gene_classification.ipynb with only the import changed: the same calls with the same
keywords (Classifier, prepare_data, validate, plot_conf_mat, plot_roc; then a Classifier with
num_crossval_splits=0, prepare_data, train_all_data), on the shipped PBMC cells and a tiny 4-layer model (the notebook
freezes 4 layers). Swapped for the test: paths; the gene classes (the dosage-sensitivity lists hold only 3 + 6 genes of
these cells: here the 40 genes most often in the cells, split by whether their median rank is above the median);
max_ncells (60, for 10_000); num_crossval_splits 1 instead of 5 in the validated part (five folds are five fine-tuning
runs, minutes here; the five-fold gene split itself is tested in tests/tasks/test_geneformer_classifier.py).
Checked: the files the reference leaves, the numbers against scikit-learn (from the pickled predictions) and
transformers (the logits, from the exported model)."""

from __future__ import annotations

import datetime
import pickle

import numpy as np
import pytest
from helpers.tasks import padded_rows, tiny_config, tiny_pretrained_model, tokenized_pbmc
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from mindformer_gf import Classifier
from mindformer_gf.safe_pickle import safe_load

# two fine-tuning runs and an evaluation on the tiny model
pytestmark = pytest.mark.slow


def rank_classes(dataset, n_genes: int = 40) -> dict[str, list[str]]:
    """{"early": [...], "late": [...]}: the `n_genes` genes in most cells, by whether their median position in the
    cells is below the median of those medians (Ensembl IDs)."""
    from mindformer_gf.tokenizer import load_gene_dictionaries

    gene_of = {t: g for g, t in load_gene_dictionaries("V1").token.items()}
    cells = dataset["input_ids"]
    frequent = np.argsort(-np.bincount(np.concatenate(cells)), kind="stable")[:n_genes]
    positions = {int(t): [] for t in frequent}
    for cell in cells:
        for position, token in enumerate(cell):
            if token in positions:
                positions[token].append(position)
    median = {t: np.median(p) for t, p in positions.items()}
    cut = np.median(list(median.values()))
    return {
        "early": [gene_of[t] for t in median if median[t] < cut],
        "late": [gene_of[t] for t in median if median[t] >= cut],
    }


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    root = tmp_path_factory.mktemp("gene_notebook")
    from datasets import load_from_disk

    input_data = tokenized_pbmc(root / "data")
    config = tiny_config()
    config.num_hidden_layers = 4
    model_directory = tiny_pretrained_model(root / "Geneformer", config)
    with open(root / "gene_classes.pickle", "wb") as handle:
        pickle.dump(rank_classes(load_from_disk(str(input_data))), handle)

    # --- the notebook, with only the import changed (and safe_load for pickle.load) -----------------------------
    current_date = datetime.datetime.now()
    datestamp = f"{str(current_date.year)[-2:]}{current_date.month:02d}{current_date.day:02d}{current_date.hour:02d}{current_date.minute:02d}{current_date.second:02d}"  # noqa: E501 (the notebook's line)
    datestamp_min = f"{str(current_date.year)[-2:]}{current_date.month:02d}{current_date.day:02d}"
    output_prefix = "tf_dosage_sens_test"
    output_dir = f"{root}/{datestamp}"
    (root / datestamp).mkdir()
    with open(root / "gene_classes.pickle", "rb") as fp:
        gene_class_dict = safe_load(fp)
    cc = Classifier(
        classifier="gene",
        gene_class_dict=gene_class_dict,
        max_ncells=60,
        freeze_layers=4,
        num_crossval_splits=1,
        forward_batch_size=200,
        model_version="V1",
        nproc=16,
    )
    cc.prepare_data(input_data_file=str(input_data), output_directory=output_dir, output_prefix=output_prefix)
    all_metrics = cc.validate(
        model_directory=str(model_directory),
        prepared_input_data_file=f"{output_dir}/{output_prefix}_labeled.dataset",
        id_class_dict_file=f"{output_dir}/{output_prefix}_id_class_dict.pkl",
        output_directory=output_dir,
        output_prefix=output_prefix,
    )
    cc.plot_conf_mat(
        conf_mat_dict={"Geneformer": all_metrics["conf_matrix"]},
        output_directory=output_dir,
        output_prefix=output_prefix,
    )
    cc.plot_roc(
        roc_metric_dict={"Geneformer": all_metrics["all_roc_metrics"]},
        model_style_dict={"Geneformer": {"color": "red", "linestyle": "-"}},
        title="Dosage-sensitive vs -insensitive factors",
        output_directory=output_dir,
        output_prefix=output_prefix,
    )

    all_data_prefix = "tf_dosage_sens_alldata"
    cc = Classifier(
        classifier="gene",
        gene_class_dict=gene_class_dict,
        max_ncells=60,
        freeze_layers=4,
        num_crossval_splits=0,
        forward_batch_size=200,
        model_version="V1",
        nproc=16,
    )
    cc.prepare_data(input_data_file=str(input_data), output_directory=output_dir, output_prefix=all_data_prefix)
    trainer_test = cc.train_all_data(
        model_directory=str(model_directory),
        prepared_input_data_file=f"{output_dir}/{all_data_prefix}_labeled.dataset",
        id_class_dict_file=f"{output_dir}/{all_data_prefix}_id_class_dict.pkl",
        output_directory=output_dir,
        output_prefix=all_data_prefix,
    )
    # -------------------------------------------------------------------------------------------------------------
    run = root / datestamp / f"{datestamp_min}_geneformer_geneClassifier_{output_prefix}"
    return root / datestamp, output_prefix, run, all_metrics, trainer_test, gene_class_dict


def test_the_files_the_reference_leaves(notebook):
    out, prefix, run, _, trainer_test, _ = notebook
    for path in (
        out / f"{prefix}_id_class_dict.pkl",
        out / f"{prefix}_labeled.dataset",
        run / "ksplit1" / "model" / "config.json",
        run / "ksplit1" / f"{prefix}_pred_dict.pkl",
        run / f"{prefix}_train_gene_labeled_ksplit1.dataset",
        run / f"{prefix}_valid_gene_labeled_ksplit1.dataset",
        run / f"{prefix}_test_gene_labeled_ksplit1.dataset",
        run / f"{prefix}_eval_metrics_dict.pkl",
        out / f"{prefix}_conf_mat.pdf",
        out / f"{prefix}_roc.pdf",
    ):
        assert path.exists(), path
    assert safe_load(str(out / f"{prefix}_id_class_dict.pkl")) == {0: "early", 1: "late"}
    all_data_run = trainer_test.output_directory
    assert all_data_run.name.endswith("_geneformer_geneClassifier_tf_dosage_sens_alldata")
    assert (all_data_run / "model" / "config.json").is_file()


def test_train_eval_and_test_genes_are_disjoint(notebook):
    from datasets import load_from_disk

    _, prefix, run, _, _, gene_class_dict = notebook

    def labelled_tokens(name):
        data = load_from_disk(str(run / f"{prefix}_{name}_gene_labeled_ksplit1.dataset"))
        assert len(data) <= 60  # max_ncells
        found = set()
        for tokens, labels in zip(data["input_ids"], data["labels"], strict=True):
            found |= {t for t, label in zip(tokens, labels, strict=True) if label != -100}
        return found

    train, valid, test = (labelled_tokens(n) for n in ("train", "valid", "test"))
    assert train and valid and test
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert len(train | valid | test) == sum(len(v) for v in gene_class_dict.values())


def test_metrics_equal_scikit_learn_on_the_pickled_predictions(notebook):
    from datasets import load_from_disk

    from mindformer_gf.finetune.metrics import softmax

    _, prefix, run, all_metrics, _, _ = notebook
    predictions = safe_load(str(run / "ksplit1" / f"{prefix}_pred_dict.pkl"))
    valid = load_from_disk(str(run / f"{prefix}_valid_gene_labeled_ksplit1.dataset"))
    truth = [label for labels in valid["labels"] for label in labels if label != -100]
    assert predictions["label_ids"] == truth  # one prediction per labelled token of the eval cells, in order
    y_true, y_pred = np.asarray(predictions["label_ids"]), np.asarray(predictions["pred_ids"])
    logits = np.asarray(predictions["predictions"])
    np.testing.assert_array_equal(y_pred, logits.argmax(1))
    assert all_metrics["acc"] == [pytest.approx(accuracy_score(y_true, y_pred))]
    assert all_metrics["macro_f1"] == [pytest.approx(f1_score(y_true, y_pred, average="macro"))]
    np.testing.assert_array_equal(all_metrics["conf_matrix"].to_numpy(), confusion_matrix(y_true, y_pred))
    roc = all_metrics["all_roc_metrics"]
    auc = roc_auc_score(y_true, softmax(logits)[:, 1])
    assert roc["all_roc_auc"] == [pytest.approx(auc)] and roc["roc_auc"] == pytest.approx(auc)
    assert roc["roc_auc_sd"] == pytest.approx(0.0, abs=1e-12) and len(roc["mean_fpr"]) == 100


def test_the_predictions_are_the_exported_models_logits(notebook, tmp_path):
    import torch
    from datasets import load_from_disk
    from transformers import BertForTokenClassification

    from mindformer_gf.convert import convert_to_huggingface

    _, prefix, run, _, _, _ = notebook
    valid = load_from_disk(str(run / f"{prefix}_valid_gene_labeled_ksplit1.dataset"))
    predictions = np.asarray(safe_load(str(run / "ksplit1" / f"{prefix}_pred_dict.pkl"))["predictions"])
    rows = np.arange(6)
    ids, mask = padded_rows(valid, rows)
    exported = convert_to_huggingface(run / "ksplit1" / "model", tmp_path / "hf")
    hf = BertForTokenClassification.from_pretrained(exported.destination).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    labels = valid.select(rows)["labels"]
    expected = np.concatenate([theirs[i, : len(lab)][np.asarray(lab) != -100] for i, lab in enumerate(labels)])
    np.testing.assert_allclose(predictions[: len(expected)], expected, rtol=1e-4, atol=1e-5)
