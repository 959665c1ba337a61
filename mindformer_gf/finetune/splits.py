"""Train / validation / test splits: stratified by class, optionally grouped (no patient in two splits), by
fractions or as k folds; and k folds over genes for gene classification (no gene in train and test).

Splits are positions into the prepared cells (or genes), produced by scikit-learn's splitters with a fixed seed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class Split:
    """Positions of the train, validation and test items (validation may be empty)."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    name: str = "split"

    def as_dict(self) -> dict[str, list[int]]:
        return {"train": self.train.tolist(), "valid": self.valid.tolist(), "test": self.test.tolist()}


def _check_sizes(sizes: tuple[float, float, float]) -> tuple[float, float, float]:
    if len(sizes) != 3 or any(s < 0 for s in sizes) or not np.isclose(sum(sizes), 1.0) or sizes[0] <= 0:
        raise ValueError(f"split sizes must be three fractions (train, valid, test) summing to 1, got {sizes}")
    return tuple(float(s) for s in sizes)


def _stratify_or_explain(labels: np.ndarray, fraction: float, what: str) -> np.ndarray | None:
    """Labels to stratify on, or an error saying which class is too small to be split."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if counts.min() < 2:
        raise ValueError(
            f"cannot stratify the {what} split: a class has only {counts.min()} cell(s). Drop rare classes "
            "(rare_threshold, states) or give it more cells"
        )
    if round(fraction * labels.size) < counts.size:
        raise ValueError(
            f"a {what} fraction of {fraction:.3g} gives fewer cells ({round(fraction * labels.size)}) than there are "
            f"classes ({counts.size}); raise it or use fewer classes"
        )
    return labels


def _grouped_holdout(
    positions: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): about `fraction` of the groups held out, stratified as far as whole groups allow."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = np.unique(groups).size
    n_splits = min(max(2, round(1.0 / fraction)), n_groups)
    if n_groups < 2:
        raise ValueError(f"grouped splitting needs at least 2 groups, found {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # with whole groups moving, a class rarer than the number of splits cannot be in every fold: expected
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        kept, held = next(splitter.split(positions, labels, groups))
    return positions[kept], positions[held]


def split_by_fractions(
    labels: np.ndarray,
    sizes: tuple[float, float, float] = (0.8, 0.1, 0.1),
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> Split:
    """One stratified train/valid/test split of the items whose class ids are `labels`.

    With `groups` (e.g. patient ids) every group lands in one split only; the fractions are then approximate
    (whole groups move) and stratification is as good as the groups allow.
    """
    from sklearn.model_selection import train_test_split

    train_size, valid_size, test_size = _check_sizes(sizes)
    labels = np.asarray(labels)
    positions = np.arange(labels.size)
    empty = np.zeros(0, np.int64)
    if groups is not None:
        groups = np.asarray(groups)
        rest, test = (
            (positions, empty) if test_size == 0 else _grouped_holdout(positions, labels, groups, test_size, seed)
        )
        if valid_size == 0:
            return Split(np.sort(rest), empty, np.sort(test), "grouped")
        train, valid = _grouped_holdout(rest, labels[rest], groups[rest], valid_size / (1 - test_size), seed + 1)
        return Split(np.sort(train), np.sort(valid), np.sort(test), "grouped")
    rest, test = positions, empty
    if test_size > 0:
        rest, test = train_test_split(
            positions,
            test_size=test_size,
            stratify=_stratify_or_explain(labels, test_size, "test"),
            random_state=seed,
        )
    train, valid = rest, empty
    if valid_size > 0:
        fraction = valid_size / (train_size + valid_size)
        train, valid = train_test_split(
            rest,
            test_size=fraction,
            stratify=_stratify_or_explain(labels[rest], fraction, "validation"),
            random_state=seed + 1,
        )
    return Split(np.sort(train), np.sort(valid), np.sort(test), "split")


def k_fold_splits(
    labels: np.ndarray,
    n_folds: int = 5,
    groups: np.ndarray | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> list[Split]:
    """k stratified folds: fold k is the test set; validation is `valid_fraction` of the rest (stratified, and
    grouped when `groups` is given, as is the fold assignment)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

    labels = np.asarray(labels)
    if n_folds < 2:
        raise ValueError(f"k-fold needs at least 2 folds, got {n_folds}")
    smallest = np.bincount(labels)[np.bincount(labels) > 0].min()
    if groups is None and smallest < n_folds:
        raise ValueError(
            f"the smallest class has {smallest} items, fewer than {n_folds} folds: use fewer folds or drop the class"
        )
    positions = np.arange(labels.size)
    if groups is not None:
        groups = np.asarray(groups)
        if np.unique(groups).size < n_folds:
            raise ValueError(f"{np.unique(groups).size} groups cannot fill {n_folds} folds: use fewer folds")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            folds = list(splitter.split(positions, labels, groups))
    else:
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(positions, labels)
    splits = []
    for k, (rest, test) in enumerate(folds):
        train, valid = rest, np.zeros(0, np.int64)
        if valid_fraction > 0:
            if groups is not None:
                train, valid = _grouped_holdout(rest, labels[rest], groups[rest], valid_fraction, seed + k + 1)
            else:
                train, valid = train_test_split(
                    rest,
                    test_size=valid_fraction,
                    stratify=_stratify_or_explain(labels[rest], valid_fraction, "validation"),
                    random_state=seed + k + 1,
                )
        splits.append(Split(np.sort(train), np.sort(valid), np.sort(test), f"fold{k}"))
    return splits


def gene_folds(gene_labels: np.ndarray, n_folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds over genes: [(train gene positions, test gene positions)], every gene tested once."""
    from sklearn.model_selection import StratifiedKFold

    gene_labels = np.asarray(gene_labels)
    counts = np.bincount(gene_labels)
    counts = counts[counts > 0]
    if n_folds < 2:
        raise ValueError(f"gene k-fold needs at least 2 folds, got {n_folds}")
    if counts.min() < n_folds:
        raise ValueError(
            f"the smallest gene class has {counts.min()} genes in the data, fewer than {n_folds} folds: use "
            f"n_folds <= {counts.min()} or cells that express more of the labelled genes"
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(test)) for train, test in splitter.split(gene_labels, gene_labels)]
