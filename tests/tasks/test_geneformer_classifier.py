"""The reference's `Classifier` (mindformer_gf.tasks.geneformer_classifier): its keywords and defaults, the one-line
errors for bad input, what the keywords become here (training_args, quantize, ray_config, model depth), the files
prepare_data writes (labels recomputed from the source dataset), and the metrics of a validate run recomputed with
scikit-learn from the pickled predictions."""

from __future__ import annotations

import copy
import inspect
import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.tasks import tiny_pretrained_model
from sklearn.metrics import accuracy_score, auc, confusion_matrix, f1_score, roc_curve

from mindformer_gf.safe_pickle import safe_load
from mindformer_gf.tasks.geneformer_classifier import (
    BITSANDBYTES_REFUSAL,
    Classifier,
    balance_gene_occurrences,
    cross_valid_roc_metrics,
    lora_settings_from_quantize,
    roc_metrics,
    search_space_from_ray_config,
    settings_from_training_args,
)

CELL_STATES = {"state_key": "cell_type", "states": "all"}
REFERENCE_NAMES = Path(__file__).parents[1] / "assets" / "reference_api_names.json"


def cell_classifier(**options):
    return Classifier(classifier="cell", cell_state_dict=dict(CELL_STATES), **options)


# ---- keywords and defaults -------------------------------------------------------------------------------------------
def test_every_reference_keyword_is_accepted_with_its_default():
    import ast

    rows = [r for r in json.loads(REFERENCE_NAMES.read_text()) if r["class"] == "Classifier"]
    assert len(rows) > 90
    for row in rows:
        parameters = inspect.signature(getattr(Classifier, row["method"])).parameters
        assert row["keyword"] in parameters, row
        default = parameters[row["keyword"]].default
        if row["required"]:
            assert default is inspect.Parameter.empty, row
        else:
            assert default == ast.literal_eval(row["default"]), row


def test_the_notebooks_constructor_keywords_are_kept_on_the_instance():
    classifier = cell_classifier(
        filter_data={"cell_type": "CD19+ B"}, max_ncells=None, freeze_layers=2, forward_batch_size=200, nproc=16
    )
    assert classifier.filter_data == {"cell_type": ["CD19+ B"]}  # a single value becomes a list, as the reference
    assert (classifier.freeze_layers, classifier.forward_batch_size, classifier.nproc) == (2, 200, 16)
    assert classifier.eval_size == pytest.approx(0.1 / 0.9) and classifier.oos_test_size == 0.1
    assert classifier.model_type == "CellClassifier" and classifier.model_version == "V2"
    chosen = Classifier(classifier="cell", cell_state_dict={"state_key": "cell_type", "states": ["a", "b"]})
    assert chosen.filter_data == {"cell_type": ["a", "b"]}  # chosen states filter the cells, as the reference


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"classifier": "tissue"}, "invalid classifier='tissue'"),
        ({"classifier": "cell"}, "cell_state_dict="),
        ({"classifier": "cell", "cell_state_dict": {"state_key": "x"}}, "cell_state_dict="),
        ({"classifier": "cell", "cell_state_dict": {"state_key": "x", "states": ["a"]}}, "at least 2 states"),
        ({"classifier": "cell", "cell_state_dict": {"state_key": "x", "states": "a"}}, '"all" or a list'),
        ({**{"classifier": "cell", "cell_state_dict": CELL_STATES}, "num_crossval_splits": 3}, "num_crossval_splits"),
        ({**{"classifier": "cell", "cell_state_dict": CELL_STATES}, "model_version": "V3"}, "model_version"),
        (
            {**{"classifier": "cell", "cell_state_dict": CELL_STATES}, "split_sizes": {"train": 0.8, "valid": 0.1}},
            "keys train, valid, test",
        ),
        (
            {
                **{"classifier": "cell", "cell_state_dict": CELL_STATES},
                "split_sizes": {"train": 0.8, "valid": 0.3, "test": 0.1},
            },
            "summing to 1",
        ),
        ({**{"classifier": "cell", "cell_state_dict": CELL_STATES}, "freeze_layers": 1.5}, "freeze_layers"),
        ({**{"classifier": "cell", "cell_state_dict": CELL_STATES}, "no_eval": 1}, "no_eval"),
        ({**{"classifier": "cell", "cell_state_dict": CELL_STATES}, "quantize": True}, "CUDA-only"),
        (
            {**{"classifier": "cell", "cell_state_dict": CELL_STATES}, "quantize": {"bnb_config": object()}},
            "CUDA-only",
        ),
        (
            {**{"classifier": "cell", "cell_state_dict": CELL_STATES}, "training_args": {"num_epochs_typo": 1}},
            "no equivalent here",
        ),
        ({"classifier": "gene", "gene_class_dict": {"a": ["ENSG00000000003"]}}, "at least 2 classes"),
        (
            {"classifier": "gene", "gene_class_dict": {"a": ["NOT_A_GENE"], "b": ["NOR_THIS"]}, "model_version": "V1"},
            "none of gene_class_dict's genes",
        ),
    ],
)
def test_bad_options_fail_with_one_line(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")) as caught:
        Classifier(**options)
    assert "\n" not in str(caught.value)


def test_v2_gene_classes_need_the_v2_dictionary_file_only_when_genes_are_mapped():
    classifier = Classifier(classifier="gene", gene_class_dict={"a": ["ENSG1"], "b": ["ENSG2"]})  # V2 default
    with pytest.raises(ValueError, match="token_dictionary_file"):
        classifier.gene_token_dict  # noqa: B018


# ---- what the keywords become ----------------------------------------------------------------------------------------
def test_training_args_map_onto_fine_tuning_settings():
    notebook = {
        "num_train_epochs": 0.9,
        "learning_rate": 0.000804,
        "lr_scheduler_type": "polynomial",
        "warmup_steps": 1812,
        "weight_decay": 0.258828,
        "per_device_train_batch_size": 12,
        "seed": 73,
    }
    assert settings_from_training_args(notebook) == notebook
    plumbing = {"output_dir": "x", "evaluation_strategy": "epoch", "disable_tqdm": True, "data_seed": 5}
    assert settings_from_training_args({**plumbing, "strategy": "adapters"}) == {
        "progress_bar": False,
        "split_seed": 5,
        "strategy": "adapters",
    }


def test_reference_defaults_follow_the_classifier_and_the_model_depth(tmp_path, tiny_config):
    for layers, warmup in ((2, 0), (6, 500)):
        config = copy.deepcopy(tiny_config)
        config.num_hidden_layers = layers
        config.save_pretrained(tmp_path / f"l{layers}")
        cell = cell_classifier(freeze_layers=1, forward_batch_size=7).fine_tune_settings(tmp_path / f"l{layers}")
        assert (cell.num_train_epochs, cell.warmup_steps, cell.per_device_train_batch_size) == (10.0, warmup, 12)
        assert (cell.learning_rate, cell.lr_scheduler_type, cell.weight_decay) == (5e-5, "linear", 0.001)
        assert (cell.freeze_layers, cell.forward_batch_size, cell.seed) == (1, 7, 42)
        gene = Classifier(classifier="gene", gene_class_dict={"a": ["G1"], "b": ["G2"]})
        assert gene.fine_tune_settings(tmp_path / f"l{layers}").num_train_epochs == 1.0
    given = cell_classifier(training_args={"num_train_epochs": 2, "warmup_steps": 3})
    assert given.fine_tune_settings(tmp_path / "l6").warmup_steps == 3


def test_quantize_maps_its_peft_part_onto_lora_and_refuses_bitsandbytes():
    assert lora_settings_from_quantize(False) == {}
    peft = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["query", "value"]}
    expected = {
        "strategy": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "lora_target_modules": ("query", "value"),
    }
    assert lora_settings_from_quantize({"peft_config": peft}) == expected
    # a peft LoraConfig is read by its attributes
    assert lora_settings_from_quantize({"peft_config": types.SimpleNamespace(**peft)}) == expected
    # the rest: the lora strategy's defaults, but the targets are peft's for BERT when none are named
    partial = lora_settings_from_quantize({"peft_config": {"r": 4}})
    assert partial == {"strategy": "lora", "lora_r": 4, "lora_target_modules": ("query", "value")}
    for refused in (True, {"bnb_config": {"load_in_4bit": True}, "peft_config": peft}):
        with pytest.raises(ValueError) as caught:
            lora_settings_from_quantize(refused)
        assert str(caught.value) == BITSANDBYTES_REFUSAL
    with pytest.raises(ValueError, match="unknown"):
        lora_settings_from_quantize({"lora": peft})


def test_ray_config_becomes_an_optuna_search_space():
    class Float:  # what ray.tune.loguniform(1e-6, 1e-3) holds
        def __init__(self, lower, upper, sampler):
            self.lower, self.upper, self.sampler = lower, upper, sampler

    class LogUniform:
        pass

    class Uniform:
        pass

    class Integer(Float):
        pass

    space = search_space_from_ray_config(
        {
            "learning_rate": Float(1e-6, 1e-3, LogUniform()),
            "weight_decay": Float(0.0, 0.3, Uniform()),
            "warmup_steps": Integer(100, 2000, Uniform()),
            "lr_scheduler_type": types.SimpleNamespace(categories=["linear", "cosine"]),
            "num_train_epochs": 1,
            "seed": {"type": "int", "low": 0, "high": 100},
        }
    )
    assert space == {
        "learning_rate": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.3, "log": False},
        "warmup_steps": {"type": "int", "low": 100, "high": 1999, "log": False},
        "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
        "num_train_epochs": {"type": "categorical", "choices": [1]},
        "seed": {"type": "int", "low": 0, "high": 100},
    }
    assert search_space_from_ray_config(None) is None


def test_roc_records_equal_scikit_learn_and_pool_by_curve_points():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2)) + y_true[:, None] * [0.0, 1.0]
    record = roc_metrics(y_true, logits)
    score = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax(logits)[:, 1]
    fpr, tpr, _ = roc_curve(y_true, score)
    assert record["auc"] == pytest.approx(auc(fpr, tpr))
    np.testing.assert_allclose(record["interp_tpr"][1:], np.interp(np.linspace(0, 1, 100), fpr, tpr)[1:])
    assert record["interp_tpr"][0] == 0.0 and record["tpr_wt"] == len(tpr)
    mean_tpr, roc_auc, sd = cross_valid_roc_metrics([np.zeros(100), np.ones(100)], [0.6, 0.9], [1, 3])
    assert roc_auc == pytest.approx(0.825) and sd == pytest.approx(np.sqrt(0.25 * 0.225**2 + 0.75 * 0.075**2))
    assert mean_tpr[0] == pytest.approx(0.75) and mean_tpr[-1] == 1.0


# ---- prepare_data ----------------------------------------------------------------------------------------------------
def test_prepare_data_labels_and_splits_cells_as_the_reference_names_them(pbmc_dataset_dir, pbmc_dataset, tmp_path):
    from datasets import load_from_disk

    classifier = cell_classifier(filter_data={"phase": ["G1", "S"]}, rare_threshold=0.05, max_ncells=500)
    classifier.prepare_data(input_data_file=str(pbmc_dataset_dir), output_directory=str(tmp_path), output_prefix="p")
    id_class_dict = safe_load(str(tmp_path / "p_id_class_dict.pkl"))  # plain data: the allow-list reads it
    assert isinstance(id_class_dict, dict) and list(id_class_dict) == list(range(len(id_class_dict)))
    train = load_from_disk(str(tmp_path / "p_labeled_train.dataset"))
    test = load_from_disk(str(tmp_path / "p_labeled_test.dataset"))
    assert "cell_type" not in train.column_names and "label" in train.column_names
    source = pbmc_dataset.to_pandas().set_index("barcode")
    kept = source[source["phase"].isin(["G1", "S"])]
    shares = kept["cell_type"].value_counts(normalize=True)
    for part in (train, test):
        frame = part.to_pandas()
        truth = source.loc[frame["barcode"], "cell_type"].to_numpy()
        assert [id_class_dict[i] for i in frame["label"]] == list(truth)  # ids map back to each cell's type
        assert set(source.loc[frame["barcode"], "phase"]) <= {"G1", "S"}
    # rare classes (< 5% of the filtered cells) are gone; at most max_ncells remain, 10% of them in the test part
    assert set(id_class_dict.values()) == set(shares[shares >= 0.05].index)
    assert len(train) + len(test) == 500 and len(test) == 50
    assert not set(train["barcode"]) & set(test["barcode"])


def test_prepare_data_by_ids_and_reserved_columns(pbmc_dataset_dir, tmp_path):
    from datasets import load_from_disk

    classifier = cell_classifier()
    ids = {"attr_key": "phase", "train": ["G1", "S"], "test": ["G2M"]}
    classifier.prepare_data(
        input_data_file=str(pbmc_dataset_dir), output_directory=str(tmp_path), output_prefix="q", split_id_dict=ids
    )
    assert set(load_from_disk(str(tmp_path / "q_labeled_train.dataset"))["phase"]) == {"G1", "S"}
    assert set(load_from_disk(str(tmp_path / "q_labeled_test.dataset"))["phase"]) == {"G2M"}
    whole = cell_classifier()
    whole.prepare_data(str(pbmc_dataset_dir), str(tmp_path), "r", test_size=0)
    labeled = tmp_path / "r_labeled.dataset"
    assert labeled.is_dir()
    with pytest.raises(ValueError, match="'label' is reserved"):
        whole.prepare_data(str(labeled), str(tmp_path), "s")
    with pytest.raises(ValueError, match="needs attr_to_balance"):
        whole.prepare_data(str(pbmc_dataset_dir), str(tmp_path), "t", attr_to_split="phase")


def test_balanced_split_keeps_groups_whole_and_writes_the_balance_table(pbmc_dataset_dir, tmp_path):
    from datasets import load_from_disk

    classifier = cell_classifier()
    classifier.prepare_data(
        str(pbmc_dataset_dir),
        str(tmp_path),
        "b",
        test_size=0.3,
        attr_to_split="louvain",
        attr_to_balance=["percent_mito", "phase"],
        max_trials=5,
        pval_threshold=0.05,
    )
    train = load_from_disk(str(tmp_path / "b_labeled_train.dataset"))
    test = load_from_disk(str(tmp_path / "b_labeled_test.dataset"))
    assert not set(train["louvain"]) & set(test["louvain"])
    table = pd.read_csv(tmp_path / "b_train_test_balance_df.csv")
    assert {"percent_mito_pval", "phase_pval", "mean_pval", "train_ids", "eval_ids"} <= set(table.columns)
    assert 1 <= len(table) <= 5


def test_prepare_data_labels_every_token_of_the_gene_classes(pbmc_dataset_dir, pbmc_dataset, tmp_path):
    from datasets import load_from_disk

    from mindformer_gf.tokenizer import load_gene_dictionaries

    token = load_gene_dictionaries("V1").token
    gene = {v: k for k, v in token.items()}
    counts = np.bincount(np.concatenate(pbmc_dataset["input_ids"]))
    frequent = [gene[t] for t in np.argsort(-counts)[:12] if t in gene]
    classes = {"first": frequent[:6], "second": frequent[6:12]}
    classifier = Classifier(classifier="gene", gene_class_dict=classes, model_version="V1")
    classifier.prepare_data(str(pbmc_dataset_dir), str(tmp_path), "g")
    id_class_dict = safe_load(str(tmp_path / "g_id_class_dict.pkl"))
    assert id_class_dict == {0: "first", 1: "second"}
    labeled = load_from_disk(str(tmp_path / "g_labeled.dataset"))
    class_of = {token[g]: 0 for g in classes["first"]} | {token[g]: 1 for g in classes["second"]}
    holding = [i for i, c in enumerate(pbmc_dataset["input_ids"]) if set(c) & set(class_of)]
    assert len(labeled) == len(holding)
    for tokens, labels in zip(labeled["input_ids"], labeled["labels"], strict=True):
        assert labels == [class_of.get(t, -100) for t in tokens]


# ---- a validate run: the numbers against scikit-learn ---------------------------------------------------------------
@pytest.fixture(scope="module")
def validated(pbmc_dataset_dir, tiny_config, tmp_path_factory):
    """prepare_data + validate (1 epoch, 3 cell types) on the tiny model: (classifier, output dir, metrics)."""
    out = tmp_path_factory.mktemp("validate")
    model_dir = tiny_pretrained_model(out / "pretrained", tiny_config)
    classifier = Classifier(
        classifier="cell",
        cell_state_dict={"state_key": "cell_type", "states": ["CD14+ Monocyte", "CD19+ B", "Dendritic"]},
        training_args={"num_train_epochs": 1, "learning_rate": 2e-3, "warmup_steps": 0, "disable_tqdm": True},
        freeze_layers=1,
        forward_batch_size=64,
    )
    classifier.prepare_data(str(pbmc_dataset_dir), str(out), "v")
    metrics = classifier.validate(
        model_directory=str(model_dir),
        prepared_input_data_file=str(out / "v_labeled_train.dataset"),
        id_class_dict_file=str(out / "v_id_class_dict.pkl"),
        output_directory=str(out),
        output_prefix="v",
        predict_trainer=True,
    )
    return classifier, out, metrics, model_dir


@pytest.mark.slow
def test_validate_metrics_equal_scikit_learn_on_the_pickled_predictions(validated):
    _, out, metrics, _ = validated
    (run,) = out.glob("*_geneformer_cellClassifier_v")
    ksplit = run / "ksplit1"
    assert (ksplit / "model" / "config.json").is_file()
    predictions = safe_load(str(ksplit / "v_pred_dict.pkl"))
    logits = np.asarray(predictions["predictions"])
    y_true, y_pred = np.asarray(predictions["label_ids"]), np.asarray(predictions["pred_ids"])
    np.testing.assert_array_equal(y_pred, logits.argmax(1))
    names = list(safe_load(str(out / "v_id_class_dict.pkl")).values())
    expected = confusion_matrix(y_true, y_pred, labels=[0, 1, 2])
    np.testing.assert_array_equal(metrics["conf_matrix"].to_numpy(), expected)
    assert list(metrics["conf_matrix"].index) == names
    assert metrics["acc"] == [pytest.approx(accuracy_score(y_true, y_pred))]
    assert metrics["macro_f1"] == [pytest.approx(f1_score(y_true, y_pred, average="macro"))]
    assert metrics["all_roc_metrics"] is None  # three classes
    saved = safe_load(str(run / "v_eval_metrics_dict.pkl"))
    np.testing.assert_array_equal(pd.DataFrame(saved["conf_matrix"]).loc[names, names].to_numpy(), expected)
    assert saved["acc"] == metrics["acc"]
    # the eval cells are 1/9 of the prepared training cells (split_sizes' valid / (train + valid))
    trainer_predictions = safe_load(str(ksplit / "predictions.pkl"))
    assert trainer_predictions["label_ids"] == predictions["label_ids"]
    assert expected.sum() == len(y_true)


@pytest.mark.slow
def test_freeze_layers_keeps_the_first_layer_bit_identical(validated):
    from safetensors.numpy import load_file

    _, out, _, model_dir = validated
    (run,) = out.glob("*_geneformer_cellClassifier_v")
    tuned = load_file(str(run / "ksplit1" / "model" / "mindspore_model.safetensors"))
    pretrained = load_file(str(Path(model_dir) / "model.safetensors"))
    layer0 = [k for k in pretrained if k.startswith("bert.encoder.layer.0.")]
    layer1 = [k for k in pretrained if k.startswith("bert.encoder.layer.1.") and k.endswith("weight")]
    assert layer0 and layer1
    for key in layer0:
        np.testing.assert_array_equal(tuned[key], pretrained[key])
    assert any(not np.array_equal(tuned[k], pretrained[k]) for k in layer1)


@pytest.mark.slow
def test_evaluate_saved_model_finds_the_model_in_the_ksplit_folder_and_plots(validated, tmp_path):
    classifier, out, _, _ = validated
    (run,) = out.glob("*_geneformer_cellClassifier_v")
    metrics = classifier.evaluate_saved_model(
        model_directory=str(run / "ksplit1"),
        id_class_dict_file=str(out / "v_id_class_dict.pkl"),
        test_data_file=str(out / "v_labeled_test.dataset"),
        output_directory=str(tmp_path),
        output_prefix="t",
        predict_metadata=["barcode"],
    )
    predictions = safe_load(str(tmp_path / "t_pred_dict.pkl"))
    y_true, y_pred = predictions["label_ids"], predictions["pred_ids"]
    assert metrics["acc"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert len(predictions["prediction_metadata"]["barcode"]) == len(y_true)
    assert safe_load(str(tmp_path / "t_test_metrics_dict.pkl"))["macro_f1"] == pytest.approx(metrics["macro_f1"])
    classifier.plot_conf_mat({"Geneformer": metrics["conf_matrix"]}, str(tmp_path), "t")
    classifier.plot_predictions(
        str(tmp_path / "t_pred_dict.pkl"), str(out / "v_id_class_dict.pkl"), "type", str(tmp_path), "t"
    )
    for name in ("t_conf_mat.pdf", "t_conf_mat.png", "t_pred.pdf"):
        assert (tmp_path / name).stat().st_size > 1000
    with pytest.raises(ValueError, match="custom_class_order names"):
        classifier.plot_conf_mat({"Geneformer": metrics["conf_matrix"]}, str(tmp_path), "t", ["nope"])


# ---- the splits of validate (no training) ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gene_prepared(pbmc_dataset_dir, pbmc_dataset, tmp_path_factory):
    from mindformer_gf.tokenizer import load_gene_dictionaries

    gene = {t: g for g, t in load_gene_dictionaries("V1").token.items()}
    counts = np.bincount(np.concatenate(pbmc_dataset["input_ids"]))
    frequent = [gene[t] for t in np.argsort(-counts, kind="stable")[:30]]
    classes = {"first": frequent[0::2], "second": frequent[1::2]}
    out = tmp_path_factory.mktemp("gene_prepared")
    classifier = Classifier(classifier="gene", gene_class_dict=classes, model_version="V1", num_crossval_splits=5)
    classifier.prepare_data(str(pbmc_dataset_dir), str(out), "g")
    return classifier, out


def test_five_gene_folds_hold_every_gene_out_once_split_into_eval_and_test(gene_prepared, tmp_path):
    from mindformer_gf.infer.datasets import open_dataset

    classifier, out = gene_prepared
    data = open_dataset(out / "g_labeled.dataset")
    targets, labels = classifier._gene_targets(data)
    assert targets.size == 30

    def labelled(split):
        found = set()
        for tokens, token_labels in zip(split["input_ids"], split["labels"], strict=True):
            found |= {t for t, label in zip(tokens, token_labels, strict=True) if label != -100}
        return found

    pairs = classifier._gene_split_pairs(data, tmp_path, "g", False, False)
    assert len(pairs) == 5
    held_out = []
    for train, valid, test in pairs:
        train_genes, eval_genes, test_genes = labelled(train), labelled(valid), labelled(test)
        assert not train_genes & (eval_genes | test_genes) and not eval_genes & test_genes
        assert len(train_genes) == 24 and len(eval_genes | test_genes) == 6  # 4/5 trained, 1/5 held out
        # held-out genes split test : eval as split_sizes test : (valid / (train + valid)), as the reference
        assert len(test_genes) == round(6 * 0.1 / (0.1 + 0.1 / 0.9))
        held_out += sorted(eval_genes | test_genes)
    assert sorted(held_out) == sorted(targets.tolist())


def test_debug_gene_split_datasets_stops_after_saving_the_first_split(gene_prepared, tmp_path, tiny_config):
    classifier, out = gene_prepared
    tiny_config.save_pretrained(tmp_path / "model")
    result = classifier.validate(
        str(tmp_path / "model"),
        str(out / "g_labeled.dataset"),
        str(out / "g_id_class_dict.pkl"),
        str(tmp_path),
        "g",
        debug_gene_split_datasets=True,
    )
    assert result is None
    (run,) = tmp_path.glob("*_geneformer_geneClassifier_g")
    assert sorted(p.name for p in run.iterdir()) == [
        "g_test_gene_labeled_ksplit1.dataset",
        "g_train_gene_labeled_ksplit1.dataset",
        "g_valid_gene_labeled_ksplit1.dataset",
    ]


def test_five_cell_folds_partition_the_cells_by_class(pbmc_dataset_dir, tmp_path):
    from mindformer_gf.infer.datasets import open_dataset

    classifier = cell_classifier(num_crossval_splits=5)
    classifier.prepare_data(str(pbmc_dataset_dir), str(tmp_path), "c", test_size=0)
    data = open_dataset(tmp_path / "c_labeled.dataset")
    labels = np.asarray(data["label"])
    splits = classifier._cell_splits(data, None, None, None, 100, 0.1)
    evaluated = np.concatenate([held for _, held, _ in splits])
    assert sorted(evaluated.tolist()) == list(range(len(data)))
    for train, held, _ in splits:
        assert not set(train) & set(held) and train.size + held.size == len(data)
        counts = np.bincount(labels[held], minlength=labels.max() + 1)
        np.testing.assert_allclose(counts, np.bincount(labels) / 5, atol=1)  # stratified


def test_validate_refusals(gene_prepared, tmp_path):
    classifier, out = gene_prepared
    arguments = ("model", str(out / "g_labeled.dataset"), str(out / "g_id_class_dict.pkl"), str(tmp_path), "g")
    three = Classifier(classifier="gene", gene_class_dict={"a": ["G1"], "b": ["G2"], "c": ["G3"]})
    with pytest.raises(ValueError, match="binary gene classifications only"):
        three.validate(*arguments, gene_balance=True)
    every = Classifier(classifier="gene", gene_class_dict=classifier.gene_class_dict, num_crossval_splits=0)
    with pytest.raises(ValueError, match="num_crossval_splits must be 1 or 5"):
        every.validate(*arguments)
    with pytest.raises(FileNotFoundError, match="holds no model"):
        classifier.validate(*arguments)


def test_gene_balance_drops_genes_of_the_frequent_class_until_occurrences_match():
    rng = np.random.default_rng(1)
    label_of = {t: 0 for t in range(10, 30)} | {t: 1 for t in range(40, 50)}  # 20 genes vs 10, equally common
    cells = [rng.choice(list(label_of), size=8, replace=False) for _ in range(300)]
    kept = balance_gene_occurrences(cells, label_of)
    tokens = np.concatenate(cells)

    def occurrences(genes, label):
        return int(np.isin(tokens, [t for t, c in genes.items() if c == label]).sum())

    assert occurrences(label_of, 0) / occurrences(label_of, 1) > 1.8
    assert 0.8 <= occurrences(kept, 0) / occurrences(kept, 1) <= 1.25
    assert {t for t, c in kept.items() if c == 1} == set(range(40, 50))  # the rarer class keeps every gene
    assert set(kept) < set(label_of) and all(kept[t] == label_of[t] for t in kept)
    balanced = {t: 0 for t in range(10, 20)} | {t: 1 for t in range(40, 50)}
    assert balance_gene_occurrences(cells, balanced) == balanced


def test_quantize_with_peft_config_selects_the_lora_strategy(tmp_path, tiny_config):
    tiny_config.save_pretrained(tmp_path / "model")
    peft = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["query", "key", "value"]}
    classifier = cell_classifier(quantize={"peft_config": peft})
    settings = classifier.fine_tune_settings(tmp_path / "model")
    assert (settings.strategy, settings.lora_r, settings.lora_alpha, settings.lora_dropout) == ("lora", 8, 16, 0.0)
    assert tuple(settings.lora_target_modules) == ("query", "key", "value")


@pytest.mark.slow
def test_n_hyperopt_trials_runs_our_search_per_split_and_returns_none(pbmc_dataset_dir, tiny_model_dir, tmp_path):
    classifier = Classifier(
        classifier="cell",
        cell_state_dict={"state_key": "cell_type", "states": ["CD14+ Monocyte", "CD19+ B", "Dendritic"]},
        max_ncells=120,
        training_args={"num_train_epochs": 1, "warmup_steps": 0, "disable_tqdm": True},
        ray_config={"learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}, "seed": [1, 2]},
        forward_batch_size=64,
    )
    classifier.prepare_data(str(pbmc_dataset_dir), str(tmp_path), "h", test_size=0)
    result = classifier.validate(
        str(tiny_model_dir),
        str(tmp_path / "h_labeled.dataset"),
        str(tmp_path / "h_id_class_dict.pkl"),
        str(tmp_path),
        "h",
        n_hyperopt_trials=2,
    )
    assert result is None  # as the reference
    (run,) = tmp_path.glob("*_geneformer_cellClassifier_h")
    search = run / "ksplit1" / "search"
    trials = pd.read_csv(search / "trials.csv")
    best = json.loads((search / "best_trial.json").read_text())
    assert len(trials) == 2 and set(trials["state"]) == {"complete"}
    assert best["score"] == pytest.approx(trials["score"].max())
    assert 1e-4 <= best["params"]["learning_rate"] <= 3e-3 and best["params"]["seed"] in (1, 2)
    assert (Path(best["directory"]) / "model" / "config.json").is_file()
    # a trial's score is its run's best validation macro-F1 (the checkpoint it keeps)
    history = pd.read_csv(Path(best["directory"]) / "training" / "eval_history.csv")
    assert best["score"] == pytest.approx(history["macro_f1"].max())


def test_ngpu_names_the_msrun_launch_it_needs(caplog, monkeypatch):
    for variable in ("MS_ROLE", "MS_WORKER_NUM"):
        monkeypatch.delenv(variable, raising=False)
    with caplog.at_level("WARNING", logger="mindformer_gf.tasks"):
        cell_classifier(ngpu=4, training_args={})
    assert "msrun --worker_num=4 --local_worker_num=4" in caplog.text
    caplog.clear()
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("MS_WORKER_NUM", "4")
    with caplog.at_level("WARNING", logger="mindformer_gf.tasks"):
        cell_classifier(ngpu=4, training_args={})
    assert "msrun" not in caplog.text


@pytest.mark.slow
def test_train_all_data_trains_on_every_prepared_cell(pbmc_dataset_dir, tiny_model_dir, tmp_path):
    from safetensors.numpy import load_file

    from mindformer_gf.infer.datasets import open_dataset

    classifier = Classifier(
        classifier="cell",
        cell_state_dict={"state_key": "cell_type", "states": ["CD14+ Monocyte", "CD19+ B"]},
        training_args={"num_train_epochs": 1, "warmup_steps": 0, "learning_rate": 1e-3, "disable_tqdm": True},
        num_crossval_splits=0,
        forward_batch_size=64,
    )
    classifier.prepare_data(str(pbmc_dataset_dir), str(tmp_path), "a", test_size=0)
    trained = classifier.train_all_data(
        str(tiny_model_dir),
        str(tmp_path / "a_labeled.dataset"),
        str(tmp_path / "a_id_class_dict.pkl"),
        str(tmp_path),
        "a",
    )
    assert trained.output_directory.name.endswith("_geneformer_cellClassifier_a")
    assert trained.model.config.id2label == {0: "CD14+ Monocyte", 1: "CD19+ B"}
    tuned = load_file(str(trained.model_directory / "mindspore_model.safetensors"))
    pretrained = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not np.array_equal(
        tuned["bert.encoder.layer.0.attention.self.query.weight"],
        pretrained["bert.encoder.layer.0.attention.self.query.weight"],
    )
    # every prepared cell trained: the run's steps cover them all in one epoch of batches of 12
    cells = len(open_dataset(tmp_path / "a_labeled.dataset"))
    steps = pd.read_csv(trained.output_directory / "training" / "metrics.csv")["step"].max()
    assert steps == int(np.ceil(cells / 12))
    # scored by evaluate_model with the run itself standing for the reference's trainer.model
    scored = classifier.evaluate_model(trained, 2, {0: "CD14+ Monocyte", 1: "CD19+ B"}, tmp_path / "a_labeled.dataset")
    assert scored["conf_mat"].sum() == cells and scored["roc_metrics"]["auc"] >= 0.0


@pytest.mark.slow
def test_quantize_peft_config_trains_lora_adapters_merged_on_export(pbmc_dataset_dir, tiny_model_dir, tmp_path):
    """The reference's quantize={"peft_config": ...} end to end: LoRA on the full-precision base, the saved weights
    are W + (alpha / r) B A of the saved peft-layout adapters, and what LoRA does not target stays the base's."""
    import json

    from safetensors.numpy import load_file

    classifier = Classifier(
        classifier="cell",
        cell_state_dict={"state_key": "cell_type", "states": ["CD14+ Monocyte", "CD19+ B"]},
        quantize={"peft_config": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}},
        training_args={"num_train_epochs": 1, "warmup_steps": 0, "learning_rate": 1e-2, "disable_tqdm": True},
        num_crossval_splits=0,
        forward_batch_size=64,
    )
    classifier.prepare_data(str(pbmc_dataset_dir), str(tmp_path), "q", test_size=0)
    trained = classifier.train_all_data(
        str(tiny_model_dir),
        str(tmp_path / "q_labeled.dataset"),
        str(tmp_path / "q_id_class_dict.pkl"),
        str(tmp_path),
        "q",
    )
    adapter_dir = trained.model_directory / "lora_adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    assert sorted(config["target_modules"]) == ["query", "value"]  # peft's BERT default: the config named none
    adapters = load_file(str(adapter_dir / "adapter_model.safetensors"))
    tuned = load_file(str(trained.model_directory / "mindspore_model.safetensors"))
    pretrained = load_file(str(tiny_model_dir / "model.safetensors"))
    for layer in range(2):
        for module in ("query", "value"):
            name = f"bert.encoder.layer.{layer}.attention.self.{module}"
            a = adapters[f"base_model.model.{name}.lora_A.weight"].astype(np.float64)
            b = adapters[f"base_model.model.{name}.lora_B.weight"].astype(np.float64)
            assert np.abs(b).max() > 0  # B starts at zero: it trained
            merged = pretrained[f"{name}.weight"] + (8 / 4) * (b @ a)
            np.testing.assert_allclose(tuned[f"{name}.weight"], merged, rtol=0, atol=1e-6)
        key = f"bert.encoder.layer.{layer}.attention.self.key.weight"
        np.testing.assert_array_equal(tuned[key], pretrained[key])


def test_v2_gene_classes_map_with_the_dictionary_the_dataset_records(pbmc_dataset_dir, tmp_path, gene_prepared):
    from datasets import load_from_disk

    v1, out = gene_prepared
    v2 = Classifier(classifier="gene", gene_class_dict=v1.gene_class_dict)  # model_version "V2", no dictionary file
    v2.prepare_data(str(pbmc_dataset_dir), str(tmp_path), "g")
    assert (
        load_from_disk(str(tmp_path / "g_labeled.dataset"))["labels"]
        == load_from_disk(str(out / "g_labeled.dataset"))["labels"]
    )
