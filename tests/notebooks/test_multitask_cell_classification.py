"""The reference's examples/multitask_cell_classification.ipynb with only the import changed: the same calls with the
same keywords, on the shipped PBMC cells and a tiny model. Paths and sizes are the test's: the tasks are the cells'
type and phase (the notebook's "cell_type" and "disease_state"), n_trials 1 (15), epochs 1 for the manual run (10).

Its last part (EmbExtractor.get_state_embs, InSilicoPerturber with model_type "MTLCellClassifier-Quantized",
InSilicoPerturberStats "goal_state_shift") runs on the multitask model the manual run saved, over the test split
with <cls>/<eos> around each cell (the notebook's emb_mode "cls" with the default model_version "V2"): the states
are the phases G1 -> S of CD14+ Monocytes (the notebook's disease -> control of Fibroblasts), 3 cells perturbed
(1000). Two of the notebook's calls fail in the reference itself, and fail here the same way (checked): EmbExtractor
has no `filter_data_dict` (its name is `filter_data`), and get_stats' first argument is the perturbation results'
directory, not the tokenized `input_data_file`; the test then makes the calls the notebook means. The stats get
`token_dictionary_file` (model_version "V2" needs it here: the V2 dictionaries are not shipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.mtl import (
    parse_probabilities,
    saved_model_probabilities,
    tiny_pretrained_model,
    tokenized_pbmc,
    write_mtl_datasets,
)
from helpers.tasks import padded_rows
from sklearn.metrics import accuracy_score, f1_score

from mindformer_gf import MTLClassifier

V2_CLS, V2_EOS = 2, 3  # as V2 dictionaries number <cls> and <eos>


def with_cls_and_eos(dataset_dir: str, target: Path) -> Path:
    """The tokenized cells of `dataset_dir` as V2 cells: <cls> genes <eos> within the same width (genes with the
    ids of <cls>/<eos> dropped), the tokenizer's record naming those special tokens."""
    import copy

    from datasets import Dataset, load_from_disk

    dataset = load_from_disk(dataset_dir)
    width = max(dataset["length"])
    cells = [
        [V2_CLS, *[t for t in cell if t not in (V2_CLS, V2_EOS)][: width - 2], V2_EOS] for cell in dataset["input_ids"]
    ]
    info = copy.deepcopy(dataset.info)
    info.features = None
    record = json.loads(info.description)
    record["special_token"] = True
    special = record["dictionary"]["special_tokens"]
    record["dictionary"]["special_tokens"] = {**special, "<cls>": V2_CLS, "<eos>": V2_EOS}
    info.description = json.dumps(record)
    columns = {name: dataset[name] for name in ("unique_cell_id", "cell_type", "phase")}
    Dataset.from_dict({"input_ids": cells, "length": [len(c) for c in cells], **columns}, info=info).save_to_disk(
        str(target)
    )
    return target


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def notebook_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl_notebook")
    datasets = write_mtl_datasets(tokenized_pbmc(root), root)
    return {
        "pretrained_path": str(tiny_pretrained_model(root / "pretrained")),
        "train_path": str(datasets["train"]),
        "val_path": str(datasets["val"]),
        "test_path": str(datasets["test"]),
        "results_dir": str(root / "results"),
        "model_save_path": str(root / "models"),
        "tensorboard_log_dir": str(root / "tblogs"),
        "v2_test_path": str(with_cls_and_eos(str(datasets["test"]), root / "test_v2.dataset")),
        "output_directory": str(root / "isp"),
    }


@pytest.mark.slow
def test_multitask_cell_classification_notebook(notebook_paths):
    from datasets import load_from_disk

    from mindformer_gf.safe_pickle import safe_load

    # ---- the notebook's cells, paths and sizes swapped -------------------------------------------------------------
    pretrained_path = notebook_paths["pretrained_path"]
    train_path = notebook_paths["train_path"]
    val_path = notebook_paths["val_path"]
    test_path = notebook_paths["test_path"]
    results_dir = notebook_paths["results_dir"]
    model_save_path = notebook_paths["model_save_path"]
    tensorboard_log_dir = notebook_paths["tensorboard_log_dir"]
    task_columns = ["cell_type", "phase"]
    hyperparameters = {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "warmup_ratio": {"type": "float", "low": 0.005, "high": 0.01},
        "weight_decay": {"type": "float", "low": 0.01, "high": 0.1},
        "dropout_rate": {"type": "float", "low": 0.0, "high": 0.7},
        "lr_scheduler_type": {"type": "categorical", "choices": ["cosine"]},
        "task_weights": {"type": "float", "low": 0.1, "high": 2.0},
    }

    mc = MTLClassifier(
        task_columns=task_columns,
        study_name="MTLClassifier_example",
        pretrained_path=pretrained_path,
        train_path=train_path,
        val_path=val_path,
        test_path=test_path,
        model_save_path=model_save_path,
        results_dir=results_dir,
        tensorboard_log_dir=tensorboard_log_dir,
        hyperparameters=hyperparameters,
        n_trials=1,
        epochs=1,
        batch_size=8,
        seed=42,
    )
    mc.run_optuna_study()

    # what the study leaves: the label mappings, the trial's validation predictions, the model and its settings
    mappings = safe_load(f"{results_dir}/task_label_mappings.pkl")
    assert mappings == {
        "task1": {"CD14+ Monocyte": 0, "CD19+ B": 1, "Dendritic": 2},
        "task2": {"G1": 0, "S": 1},
    }
    val_preds = pd.read_csv(f"{results_dir}/trial_0/val_preds.csv")
    val_metrics = json.loads(open(f"{results_dir}/trial_0/val_metrics.json").read())
    for task in ("task1", "task2"):
        truth, predicted = val_preds[f"{task}_true_idx"], val_preds[f"{task}_pred_idx"]
        assert val_metrics[task]["f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
        assert val_metrics[task]["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    model_dir = f"{model_save_path}/GeneformerMultiTask"
    searched = json.loads(open(f"{model_dir}/hyperparameters.json").read())
    assert sum(searched["task_weights"]) == pytest.approx(1.0, rel=1e-12)  # Optuna's weights, normalised
    assert 1e-5 <= searched["learning_rate"] <= 1e-3 and 0.0 <= searched["dropout_rate"] <= 0.7
    assert open(f"{results_dir}/results.txt").read().startswith("Trial 0: Value (validation loss): ")

    mc.load_and_evaluate_test_model()

    # test_preds.csv: the saved model's class probabilities (numpy forward pass of its files) and their argmax
    test = load_from_disk(test_path)
    test_preds = pd.read_csv(f"{results_dir}/test_preds.csv")
    assert test_preds["Cell ID"].tolist() == test["unique_cell_id"]
    ids, mask = padded_rows(test, np.arange(test.num_rows))
    expected = saved_model_probabilities(Path(model_dir), ids, mask)
    for t, task in enumerate(("task1", "task2")):
        probabilities = parse_probabilities(test_preds[f"{task} Probabilities"])
        np.testing.assert_allclose(probabilities, expected[t], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(test_preds[f"{task} Prediction"], probabilities.argmax(1))

    manual_hyperparameters = {
        "learning_rate": 0.001,
        "warmup_ratio": 0.01,
        "weight_decay": 0.1,
        "dropout_rate": 0.1,
        "lr_scheduler_type": "cosine",
        "task_weights": [1, 1],
        "max_layers_to_freeze": 2,
    }

    mc_manual = MTLClassifier(
        task_columns=task_columns,
        study_name="mtl_manual",
        pretrained_path=pretrained_path,
        train_path=train_path,
        val_path=val_path,
        test_path=test_path,
        model_save_path=model_save_path,
        results_dir=results_dir,
        tensorboard_log_dir=tensorboard_log_dir,
        manual_hyperparameters=manual_hyperparameters,
        use_manual_hyperparameters=True,
        epochs=1,
        batch_size=32,
        seed=42,
    )

    mc_manual.run_manual_tuning()

    # the manual run replaced the saved model with its own (both encoder layers frozen) and wrote its predictions
    manual = json.loads(open(f"{model_dir}/hyperparameters.json").read())
    assert manual == {
        **manual_hyperparameters,
        "use_task_weights": True,
        "use_attention_pooling": True,
    }
    assert json.loads(open(f"{model_dir}/task.json").read())["freeze_layers"] == 2
    manual_preds = pd.read_csv(f"{results_dir}/manual_run_val_preds.csv")
    manual_metrics = json.loads(open(f"{results_dir}/manual_run_val_metrics.json").read())
    val = load_from_disk(val_path)
    assert manual_preds["Cell ID"].tolist() == val["unique_cell_id"]
    for task in ("task1", "task2"):
        truth, predicted = manual_preds[f"{task}_true_idx"], manual_preds[f"{task}_pred_idx"]
        assert manual_metrics[task]["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)

    # ---- the notebook's "In Silico Perturber Tutorial (MTL Quantized)" ----------------------------------------------
    from mindformer_gf import EmbExtractor, InSilicoPerturber, InSilicoPerturberStats
    from mindformer_gf.reference import bert as reference_bert
    from mindformer_gf.tasks.perturb import PerturbationInputError, read_table
    from mindformer_gf.tokenizer import load_gene_dictionaries

    # the model the manual run saved: model_save_path/GeneformerMultiTask, where the reference's loader finds
    # config.json too (the notebook's placeholder "/path/to/model/save/path")
    model_directory = model_dir
    input_data_file = notebook_paths["v2_test_path"]
    output_directory = notebook_paths["output_directory"]
    output_prefix = "mtl_quantized_perturbation"
    perturb_type = "delete"
    cell_states_to_model = {"state_key": "phase", "start_state": "G1", "goal_state": "S"}
    filter_data_dict = {"cell_type": ["CD14+ Monocyte"]}

    with pytest.raises(TypeError, match="filter_data_dict"):  # as in the reference: its name is filter_data
        EmbExtractor(filter_data_dict=filter_data_dict)
    embex = EmbExtractor(
        filter_data=filter_data_dict,
        max_ncells=1000,
        emb_layer=0,
        emb_mode="cls",
        summary_stat="exact_mean",
        forward_batch_size=8,
        nproc=4,
    )
    state_embs_dict = embex.get_state_embs(
        cell_states_to_model,
        model_directory=model_directory,
        input_data_file=input_data_file,
        output_directory=output_directory,
        output_prefix=output_prefix,
    )

    with pytest.warns(UserWarning, match="8-bit quantization is CUDA-only"):
        isp = InSilicoPerturber(
            perturb_type=perturb_type,
            genes_to_perturb="all",
            model_type="MTLCellClassifier-Quantized",
            emb_mode="cls",
            cell_states_to_model=cell_states_to_model,
            state_embs_dict=state_embs_dict,
            max_ncells=3,
            emb_layer=0,
            forward_batch_size=8,
            nproc=1,
        )
    isp.perturb_data(
        model_directory=model_directory,
        input_data_file=input_data_file,
        output_directory=output_directory,
        output_prefix=output_prefix,
    )

    import pickle

    token_dictionary_file = Path(output_directory) / "token_dictionary.pkl"  # the one the cells were tokenized with
    token_dictionary_file.write_bytes(pickle.dumps(load_gene_dictionaries("V1").token))
    ispstats = InSilicoPerturberStats(
        mode="goal_state_shift",
        genes_perturbed="all",
        combos=0,
        anchor_gene=None,
        cell_states_to_model=cell_states_to_model,
        token_dictionary_file=str(token_dictionary_file),
    )
    with pytest.raises(PerturbationInputError, match="holds no perturbation results"):  # as in the reference
        ispstats.get_stats(input_data_file, None, output_directory, output_prefix)
    ispstats.get_stats(output_directory, None, output_directory, output_prefix)

    # the state embeddings: exact means of the <cls> embeddings (last layer, emb_layer=0) of each state's CD14+
    # Monocytes, by the numpy reference from the saved multitask model's encoder weights
    from safetensors.numpy import load_file

    from mindformer_gf.config import GeneformerConfig

    v2_test = load_from_disk(input_data_file)
    config = GeneformerConfig.from_pretrained(model_dir)
    encoder_file = next(Path(model_dir).glob("*model.safetensors"))
    weights = {k.removeprefix("bert."): v for k, v in load_file(str(encoder_file)).items()}

    def last_hidden(tokens: np.ndarray) -> np.ndarray:
        ids = np.asarray(tokens, np.int64)[None]
        hidden, _ = reference_bert.forward(weights, ids, np.ones_like(ids), config, "BertModel")
        return hidden[0].astype(np.float64)

    monocytes = np.asarray(v2_test["cell_type"]) == "CD14+ Monocyte"
    phases = np.asarray(v2_test["phase"])
    cls_embedding = {int(r): last_hidden(v2_test[int(r)]["input_ids"])[0] for r in np.flatnonzero(monocytes)}
    for state in ("G1", "S"):
        rows = np.flatnonzero(monocytes & (phases == state))
        assert rows.size == 4
        expected = np.mean([cls_embedding[int(r)] for r in rows], axis=0)
        # float32 encoder against the float64 reference
        np.testing.assert_allclose(np.asarray(state_embs_dict[state]), expected, rtol=1e-4, atol=1e-5)
    saved = safe_load(f"{output_directory}/{output_prefix}.pkl")
    np.testing.assert_allclose(saved["S"], np.asarray(state_embs_dict["S"]), rtol=1e-12)

    # the table: per G1 cell (of any type: the notebook filters only the state embeddings' cells) and deleted gene,
    # cos(perturbed <cls>, S) - cos(original <cls>, S)
    table = read_table(Path(output_directory) / f"{output_prefix}.parquet")
    cells = sorted(set(table.cell))
    assert len(cells) == 3 and all(phases[c] == "G1" for c in cells)
    ensembl = {v: k for k, v in load_gene_dictionaries("V1").token.items()}
    goal = np.asarray(state_embs_dict["S"], np.float64)
    tokens = np.asarray(v2_test[int(cells[0])]["input_ids"])
    original = last_hidden(tokens)[0]
    for position in (1, tokens.size - 2):  # the first and the last gene
        perturbed = last_hidden(np.delete(tokens, position))[0]
        value = table[
            (table.cell == cells[0]) & (table.perturbed == ensembl[int(tokens[position])]) & (table.affected == "S")
        ].value
        np.testing.assert_allclose(value, [cos(perturbed, goal) - cos(original, goal)], rtol=1e-3, atol=1e-5)

    # the statistics: each gene's shift to the goal state is the mean of its rows of the table, N_Detections their
    # number
    stats = pd.read_csv(f"{output_directory}/{output_prefix}.csv").set_index("Ensembl_ID")
    by_gene = table[table.affected == "S"].groupby("perturbed").value
    assert sorted(stats.index) == sorted(by_gene.size().index)
    np.testing.assert_allclose(stats.loc[by_gene.mean().index, "Shift_to_goal_end"], by_gene.mean(), rtol=1e-9)
    assert (stats.loc[by_gene.size().index, "N_Detections"] == by_gene.size()).all()
