"""The reference's examples/cell_classification.ipynb with only the import changed: the same calls with the same
keywords (Classifier, prepare_data with a train/test split by individual, validate with a train/eval split by
individual, a second Classifier with the defaults, evaluate_saved_model on the ksplit1 model, plot_conf_mat,
plot_predictions), on the shipped PBMC cells and a tiny model. Swapped for the test: paths, the state column
("cell_type" for "disease"), the cell types kept, "individual" (12 pseudo-individuals over the cells), the class
order of the plots. Checked: the files the reference leaves, and the numbers against scikit-learn (metrics from the
pickled predictions) and transformers (the logits, from the exported model)."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
from helpers.tasks import tiny_config, tiny_pretrained_model, tokenized_pbmc
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from mindformer_gf import Classifier
from mindformer_gf.safe_pickle import safe_load

# a fine-tuning run and three evaluations on the tiny model
pytestmark = pytest.mark.slow

CELL_TYPES = ["CD14+ Monocyte", "CD19+ B", "Dendritic"]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """The notebook's cells in order; returns what they leave: (output_dir, output_prefix, datestamp_min, results)."""
    root = tmp_path_factory.mktemp("cell_notebook")
    from datasets import load_from_disk

    pbmc = load_from_disk(str(tokenized_pbmc(root / "data")))
    individuals = [str(i % 12) for i in range(len(pbmc))]
    input_data = root / "pbmc_with_individuals.dataset"
    pbmc.add_column("individual", individuals).save_to_disk(str(input_data))
    model_directory = tiny_pretrained_model(root / "Geneformer", tiny_config())

    # --- the notebook, with only the import changed ---------------------------------------------------------------
    current_date = datetime.datetime.now()
    datestamp = f"{str(current_date.year)[-2:]}{current_date.month:02d}{current_date.day:02d}{current_date.hour:02d}{current_date.minute:02d}{current_date.second:02d}"  # noqa: E501 (the notebook's line)
    datestamp_min = f"{str(current_date.year)[-2:]}{current_date.month:02d}{current_date.day:02d}"

    output_prefix = "cm_classifier_test"
    output_dir = f"{root}/{datestamp}"
    (root / datestamp).mkdir()

    filter_data_dict = {"cell_type": CELL_TYPES}
    training_args = {
        "num_train_epochs": 0.9,
        "learning_rate": 0.000804,
        "lr_scheduler_type": "polynomial",
        "warmup_steps": 1812,
        "weight_decay": 0.258828,
        "per_device_train_batch_size": 12,
        "seed": 73,
    }
    cc = Classifier(
        classifier="cell",
        cell_state_dict={"state_key": "cell_type", "states": "all"},
        filter_data=filter_data_dict,
        training_args=training_args,
        max_ncells=None,
        freeze_layers=2,
        num_crossval_splits=1,
        forward_batch_size=200,
        model_version="V1",
        nproc=16,
    )
    train_ids = ["0", "1", "2", "3", "4", "5", "6"]
    eval_ids = ["7", "8"]
    test_ids = ["9", "10", "11"]
    train_test_id_split_dict = {"attr_key": "individual", "train": train_ids + eval_ids, "test": test_ids}
    cc.prepare_data(
        input_data_file=str(input_data),
        output_directory=output_dir,
        output_prefix=output_prefix,
        split_id_dict=train_test_id_split_dict,
    )
    train_valid_id_split_dict = {"attr_key": "individual", "train": train_ids, "eval": eval_ids}
    all_metrics = cc.validate(
        model_directory=str(model_directory),
        prepared_input_data_file=f"{output_dir}/{output_prefix}_labeled_train.dataset",
        id_class_dict_file=f"{output_dir}/{output_prefix}_id_class_dict.pkl",
        output_directory=output_dir,
        output_prefix=output_prefix,
        split_id_dict=train_valid_id_split_dict,
    )
    cc = Classifier(
        classifier="cell", cell_state_dict={"state_key": "cell_type", "states": "all"}, forward_batch_size=200, nproc=16
    )
    all_metrics_test = cc.evaluate_saved_model(
        model_directory=f"{output_dir}/{datestamp_min}_geneformer_cellClassifier_{output_prefix}/ksplit1/",
        id_class_dict_file=f"{output_dir}/{output_prefix}_id_class_dict.pkl",
        test_data_file=f"{output_dir}/{output_prefix}_labeled_test.dataset",
        output_directory=output_dir,
        output_prefix=output_prefix,
    )
    cc.plot_conf_mat(
        conf_mat_dict={"Geneformer": all_metrics_test["conf_matrix"]},
        output_directory=output_dir,
        output_prefix=output_prefix,
        custom_class_order=["Dendritic", "CD19+ B", "CD14+ Monocyte"],
    )
    cc.plot_predictions(
        predictions_file=f"{output_dir}/{output_prefix}_pred_dict.pkl",
        id_class_dict_file=f"{output_dir}/{output_prefix}_id_class_dict.pkl",
        title="disease",
        output_directory=output_dir,
        output_prefix=output_prefix,
        custom_class_order=["Dendritic", "CD19+ B", "CD14+ Monocyte"],
    )
    # ---------------------------------------------------------------------------------------------------------------
    return root / datestamp, output_prefix, datestamp_min, all_metrics, all_metrics_test


def test_the_files_the_reference_leaves(notebook):
    out, prefix, datestamp_min, _, _ = notebook
    run = out / f"{datestamp_min}_geneformer_cellClassifier_{prefix}"
    for path in (
        out / f"{prefix}_id_class_dict.pkl",
        out / f"{prefix}_labeled_train.dataset",
        out / f"{prefix}_labeled_test.dataset",
        run / "ksplit1" / "model" / "config.json",
        run / "ksplit1" / f"{prefix}_pred_dict.pkl",
        run / f"{prefix}_eval_metrics_dict.pkl",
        out / f"{prefix}_pred_dict.pkl",
        out / f"{prefix}_test_metrics_dict.pkl",
        out / f"{prefix}_conf_mat.pdf",
        out / f"{prefix}_pred.pdf",
    ):
        assert path.exists(), path
    assert safe_load(str(out / f"{prefix}_id_class_dict.pkl")) == dict(enumerate(sorted(CELL_TYPES)))


def test_the_splits_follow_the_individuals(notebook):
    from datasets import load_from_disk

    out, prefix, _, _, _ = notebook
    train = load_from_disk(str(out / f"{prefix}_labeled_train.dataset"))
    test = load_from_disk(str(out / f"{prefix}_labeled_test.dataset"))
    assert set(test["individual"]) == {"9", "10", "11"}
    assert set(train["individual"]) == {str(i) for i in range(9)}
    assert "label" in train.column_names and "cell_type" not in train.column_names  # the state column, as ids


@pytest.mark.parametrize("which", ["validate", "test"])
def test_metrics_equal_scikit_learn_on_the_pickled_predictions(notebook, which):
    out, prefix, datestamp_min, all_metrics, all_metrics_test = notebook
    run = out / f"{datestamp_min}_geneformer_cellClassifier_{prefix}"
    if which == "validate":
        metrics, predictions = all_metrics, safe_load(str(run / "ksplit1" / f"{prefix}_pred_dict.pkl"))
        acc, macro_f1 = metrics["acc"][0], metrics["macro_f1"][0]
        assert safe_load(str(run / f"{prefix}_eval_metrics_dict.pkl"))["acc"] == metrics["acc"]
    else:
        metrics, predictions = all_metrics_test, safe_load(str(out / f"{prefix}_pred_dict.pkl"))
        acc, macro_f1 = metrics["acc"], metrics["macro_f1"]
        assert safe_load(str(out / f"{prefix}_test_metrics_dict.pkl"))["acc"] == acc
    y_true, y_pred = np.asarray(predictions["label_ids"]), np.asarray(predictions["pred_ids"])
    np.testing.assert_array_equal(y_pred, np.asarray(predictions["predictions"]).argmax(1))
    assert acc == pytest.approx(accuracy_score(y_true, y_pred))
    assert macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    np.testing.assert_array_equal(metrics["conf_matrix"].to_numpy(), confusion_matrix(y_true, y_pred, labels=[0, 1, 2]))
    assert list(metrics["conf_matrix"].columns) == sorted(CELL_TYPES)


def test_the_test_predictions_are_the_exported_models_logits(notebook, tmp_path):
    import torch
    from datasets import load_from_disk
    from helpers.tasks import padded_rows
    from transformers import BertForSequenceClassification

    from mindformer_gf.convert import convert_to_huggingface

    out, prefix, datestamp_min, _, _ = notebook
    model_dir = out / f"{datestamp_min}_geneformer_cellClassifier_{prefix}" / "ksplit1" / "model"
    test = load_from_disk(str(out / f"{prefix}_labeled_test.dataset"))
    predictions = safe_load(str(out / f"{prefix}_pred_dict.pkl"))
    assert predictions["label_ids"] == test["label"]  # one prediction per test cell, in the dataset's order
    rows = np.arange(12)
    ids, mask = padded_rows(test, rows)
    exported = convert_to_huggingface(model_dir, tmp_path / "hf")
    hf = BertForSequenceClassification.from_pretrained(exported.destination).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(np.asarray(predictions["predictions"])[rows], theirs, rtol=1e-4, atol=1e-5)
