"""Labels and splits on the real PBMC cells: checked against pandas counts and plain set arithmetic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mindformer_gf.finetune.labels import (
    PreparedCells,
    cells_holding,
    gene_labels_for_tokens,
    prepare_cells,
    read_gene_classes,
    read_label_map,
    token_label_arrays,
)
from mindformer_gf.finetune.splits import gene_folds, k_fold_splits, split_by_fractions
from mindformer_gf.resources import geneformer_v1_path


@pytest.fixture(scope="module")
def obs(pbmc_dataset) -> pd.DataFrame:
    return pbmc_dataset.select_columns(["cell_type", "louvain", "phase"]).to_pandas()


def test_labels_are_sorted_class_ids_of_the_kept_cells(pbmc_dataset, obs, tmp_path):
    prepared = prepare_cells(pbmc_dataset, "cell_type", filter_data={"phase": ["G1", "S"]}, rare_threshold=0.05)
    kept = obs[obs["phase"].isin(["G1", "S"])]
    shares = kept["cell_type"].value_counts(normalize=True)
    expected_classes = sorted(shares[shares >= 0.05].index)
    expected_rows = np.flatnonzero(obs["phase"].isin(["G1", "S"]) & obs["cell_type"].isin(expected_classes))
    assert sorted(prepared.dropped_classes) == sorted(shares[shares < 0.05].index)
    assert [prepared.id2label[i] for i in range(prepared.num_classes)] == expected_classes
    np.testing.assert_array_equal(prepared.indices, expected_rows)
    names = obs["cell_type"].to_numpy()[prepared.indices]
    np.testing.assert_array_equal(np.asarray(expected_classes)[prepared.labels], names)
    path = prepared.save_label_map(tmp_path / "label_map.json")
    assert read_label_map(path) == prepared.id2label


def test_states_and_caps(pbmc_dataset, obs):
    prepared = prepare_cells(
        pbmc_dataset, "cell_type", states=["Dendritic", "CD19+ B", "CD34+"], max_ncells_per_class=50, seed=3
    )
    counts = pd.Series(obs["cell_type"].to_numpy()[prepared.indices]).value_counts()
    assert counts.to_dict() == {"Dendritic": 50, "CD19+ B": 50, "CD34+": 13}
    with pytest.raises(ValueError, match="do not occur"):
        prepare_cells(pbmc_dataset, "cell_type", states=["no such cell"])
    with pytest.raises(KeyError, match="no column 'disease'"):
        prepare_cells(pbmc_dataset, "disease")


def test_fraction_split_is_a_stratified_partition(obs):
    labels = pd.factorize(obs["cell_type"], sort=True)[0]
    split = split_by_fractions(labels, (0.7, 0.15, 0.15), seed=0)
    parts = [split.train, split.valid, split.test]
    assert sum(p.size for p in parts) == labels.size
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))
    whole = np.bincount(labels) / labels.size
    for part, fraction in zip(parts, (0.7, 0.15, 0.15), strict=True):
        assert abs(part.size / labels.size - fraction) < 0.01
        # stratified: every class holds about its overall share of each part (within 2 cells)
        assert np.all(np.abs(np.bincount(labels[part], minlength=whole.size) - whole * part.size) <= 2)


def test_grouped_split_keeps_every_group_in_one_part(obs):
    labels = pd.factorize(obs["cell_type"], sort=True)[0]
    groups = obs["louvain"].to_numpy()
    split = split_by_fractions(labels, (0.6, 0.2, 0.2), groups=groups, seed=1)
    seen = [set(groups[p]) for p in (split.train, split.valid, split.test)]
    assert all(seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert split.train.size + split.valid.size + split.test.size == labels.size


@pytest.mark.parametrize("grouped", [False, True])
def test_k_folds_test_every_cell_once_without_leakage(obs, grouped):
    labels = pd.factorize(obs["cell_type"], sort=True)[0]
    groups = obs["louvain"].to_numpy() if grouped else None
    folds = k_fold_splits(labels, 4, groups=groups, valid_fraction=0.1, seed=2)
    tested = np.sort(np.concatenate([f.test for f in folds]))
    np.testing.assert_array_equal(tested, np.arange(labels.size))
    for fold in folds:
        assert not set(fold.train) & set(fold.test) and not set(fold.valid) & set(fold.test)
        assert not set(fold.train) & set(fold.valid)
        assert fold.train.size + fold.valid.size + fold.test.size == labels.size
        if grouped:
            assert not set(groups[fold.test]) & set(groups[np.concatenate([fold.train, fold.valid])])
            assert not set(groups[fold.train]) & set(groups[fold.valid])


def test_gene_classes_from_the_reference_csv_and_per_token_labels(pbmc_dataset):
    csv = geneformer_v1_path("dosage_sens_tf_labels.csv")
    classes = read_gene_classes(csv)
    frame = pd.read_csv(csv)
    assert classes == {c: sorted(set(frame[c].dropna())) for c in frame.columns}
    from mindformer_gf.tokenizer import load_gene_dictionaries

    token = load_gene_dictionaries("V1").token
    genes = gene_labels_for_tokens(classes, token)
    assert len(genes.genes) + len(genes.missing_genes) == sum(len(v) for v in classes.values())
    cells = [np.asarray(c) for c in pbmc_dataset["input_ids"]]
    holding = cells_holding(cells, genes.tokens)
    assert holding.size and all(np.isin(cells[i], genes.tokens).any() for i in holding)
    assert not any(np.isin(cells[i], genes.tokens).any() for i in set(range(len(cells))) - set(holding))
    mapping = dict(zip(genes.tokens.tolist(), genes.labels.tolist(), strict=True))
    labels = token_label_arrays([cells[i] for i in holding], mapping)
    for i, row in zip(holding, labels, strict=True):
        expected = [mapping.get(int(t), -100) for t in cells[i]]
        assert row.tolist() == expected


def test_a_gene_in_two_classes_is_refused():
    with pytest.raises(ValueError, match="ENSG00000000003"):
        read_gene_classes({"a": ["ENSG00000000003"], "b": ["ensg00000000003", "ENSG00000000005"]})


def test_gene_folds_never_put_a_gene_in_train_and_test():
    labels = np.asarray([0] * 6 + [1] * 3)
    folds = gene_folds(labels, 3, seed=0)
    tested = np.sort(np.concatenate([test for _, test in folds]))
    np.testing.assert_array_equal(tested, np.arange(labels.size))
    for train, test in folds:
        assert not set(train) & set(test)
        assert np.bincount(labels[test]).tolist() == [2, 1]
    with pytest.raises(ValueError, match="fewer than 4 folds"):
        gene_folds(labels, 4)


def test_prepared_cells_class_counts_match_the_labels():
    prepared = PreparedCells(np.arange(5), np.asarray([0, 1, 1, 2, 1], np.int32), {0: "a", 1: "b", 2: "c"}, "x")
    assert prepared.class_counts() == {"a": 1, "b": 3, "c": 1}
