"""Labels for fine-tuning: which cells take part, with which class (or number), and per-token gene labels.

Cells: filter by attribute values, keep chosen states, drop rare classes, cap cells overall and per class, map
states to integer ids (sorted, so a run is reproducible) and write the map as JSON (never a pickle).
Genes: classes from a `{label: [Ensembl IDs]}` mapping, a CSV whose columns are the classes (the reference's
`dosage_sens_tf_labels.csv`), a JSON file, or one text file per class; per-token labels carry the class id on
target genes and -100 (ignored by the loss) everywhere else.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.data.collate import IGNORE_INDEX
from mindformer_gf.io import read_json, write_json

ALL_STATES = "all"


@dataclass
class PreparedCells:
    """The cells of a task: rows of the source dataset (`indices`, in source order) and their targets.

    Classification: `labels` are int ids, `id2label` maps them to states. Regression: `targets` are floats and
    `id2label` is empty.
    """

    indices: np.ndarray
    labels: np.ndarray
    id2label: dict[int, str]
    state_key: str
    dropped_classes: dict[str, int] = field(default_factory=dict)
    targets: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.id2label)

    @property
    def is_regression(self) -> bool:
        return self.targets is not None

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {self.id2label[i]: int(c) for i, c in enumerate(counts)}

    def save_label_map(self, path: str | os.PathLike) -> Path:
        """The id -> state map as JSON ({"0": "B cell", ...}), with the state column and class counts beside it."""
        return write_json(
            path,
            {
                "state_key": self.state_key,
                "id2label": {str(i): name for i, name in sorted(self.id2label.items())},
                "class_counts": self.class_counts() if not self.is_regression else {},
                "dropped_classes": self.dropped_classes,
            },
        )


def to_model_classes(
    labels: np.ndarray, id2label: Mapping[int, str], model_id2label: Mapping[Any, str], what: str = "states"
) -> tuple[np.ndarray, dict[int, str]]:
    """`labels` (ids into `id2label`) as ids of a fine-tuned model's classes, matched by name, and the model's id ->
    name map; a name the model does not know is an error (a class of the model missing from the data is fine)."""
    model_id2label = {int(k): v for k, v in model_id2label.items()}
    model_ids = {v: k for k, v in model_id2label.items()}
    unknown = sorted(set(id2label.values()) - set(model_ids))
    if unknown:
        raise ValueError(f"{what} {unknown} are not classes of the model ({sorted(model_ids)})")
    lookup = np.asarray([model_ids[id2label[i]] for i in range(len(id2label))], np.int32)
    return lookup[np.asarray(labels, np.int64)], model_id2label


def read_label_map(path: str | os.PathLike) -> dict[int, str]:
    """The id -> label map written by `PreparedCells.save_label_map` (or a plain {"0": "name"} JSON object)."""
    data = read_json(path)
    mapping = data.get("id2label", data) if isinstance(data, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{path}: expected a JSON object id -> label, e.g. {{'0': 'B cell'}}")
    return {int(k): str(v) for k, v in mapping.items()}


def column_values(dataset: Any, column: str) -> np.ndarray:
    """A dataset column as a numpy array; a missing column is an error listing the ones there are."""
    if column not in dataset.column_names:
        raise KeyError(f"the dataset has no column {column!r}; columns: {dataset.column_names}")
    return np.asarray(dataset.with_format("numpy")[column])


def filter_rows(dataset: Any, filter_data: Mapping[str, Sequence[Any]] | None) -> np.ndarray:
    """Rows whose value in every filtered column is one of the listed values (all rows without a filter)."""
    keep = np.ones(len(dataset), bool)
    for column, allowed in (filter_data or {}).items():
        if isinstance(allowed, (str, bytes)) or not isinstance(allowed, Sequence):
            allowed = [allowed]
        values = column_values(dataset, column)
        keep &= np.isin(values.astype(str), [str(v) for v in allowed])
    if not keep.any():
        raise ValueError(f"no cell passes filter_data={dict(filter_data or {})}; check the column values")
    return np.flatnonzero(keep)


def _cap(indices: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or limit <= 0 or indices.size <= limit:
        return indices
    return np.sort(rng.choice(indices, size=limit, replace=False))


def prepare_cells(
    dataset: Any,
    state_key: str,
    states: str | Sequence[str] = ALL_STATES,
    filter_data: Mapping[str, Sequence[Any]] | None = None,
    rare_threshold: float = 0.0,
    max_ncells: int | None = None,
    max_ncells_per_class: int | None = None,
    seed: int = 0,
) -> PreparedCells:
    """Cells and integer labels for cell classification on column `state_key`.

    Order of operations (as the reference): filter by attribute values; keep `states` ("all" or a list); drop
    classes holding less than `rare_threshold` (a fraction) of the remaining cells; keep at most `max_ncells`
    cells (random, reproducible from `seed`); keep at most `max_ncells_per_class` per class. Classes are numbered
    in sorted order of their names.
    """
    rng = np.random.default_rng(seed)
    rows = filter_rows(dataset, filter_data)
    values = column_values(dataset, state_key)[rows].astype(str)
    if states != ALL_STATES:
        wanted = [str(s) for s in ([states] if isinstance(states, str) else states)]
        missing = sorted(set(wanted) - set(values))
        if missing:
            raise ValueError(
                f"states {missing} do not occur in column {state_key!r}; present: {sorted(set(values))[:20]}"
            )
        keep = np.isin(values, wanted)
        rows, values = rows[keep], values[keep]
    names, counts = np.unique(values, return_counts=True)
    dropped: dict[str, int] = {}
    if rare_threshold > 0:
        rare = counts / counts.sum() < rare_threshold
        dropped = {str(n): int(c) for n, c in zip(names[rare], counts[rare], strict=True)}
        keep = ~np.isin(values, names[rare])
        rows, values = rows[keep], values[keep]
    if max_ncells:
        chosen = np.isin(rows, _cap(rows, max_ncells, rng))
        rows, values = rows[chosen], values[chosen]
    if max_ncells_per_class:
        kept = np.concatenate([_cap(rows[values == n], max_ncells_per_class, rng) for n in np.unique(values)])
        chosen = np.isin(rows, kept)
        rows, values = rows[chosen], values[chosen]
    names = np.unique(values)
    if names.size < 2:
        raise ValueError(
            f"column {state_key!r} has {names.size} class(es) left after filtering ({list(names)}); a classifier "
            "needs at least two: relax filter_data, states or rare_threshold"
        )
    labels = np.searchsorted(names, values).astype(np.int32)
    return PreparedCells(
        indices=rows.astype(np.int64),
        labels=labels,
        id2label={i: str(n) for i, n in enumerate(names)},
        state_key=state_key,
        dropped_classes=dropped,
    )


def prepare_targets(
    dataset: Any,
    target_key: str,
    filter_data: Mapping[str, Sequence[Any]] | None = None,
    max_ncells: int | None = None,
    seed: int = 0,
) -> PreparedCells:
    """Cells and float targets for regression on the numeric column `target_key` (cells without a value dropped).

    `labels` are target quantiles 0..3, used only to stratify splits.
    """
    rows = filter_rows(dataset, filter_data)
    raw = column_values(dataset, target_key)[rows]
    try:
        values = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"column {target_key!r} is not numeric (e.g. {raw[:3].tolist()}); regression needs numbers"
        ) from None
    finite = np.isfinite(values)
    rows, values = rows[finite], values[finite]
    if max_ncells:
        chosen = np.isin(rows, _cap(rows, max_ncells, np.random.default_rng(seed)))
        rows, values = rows[chosen], values[chosen]
    if rows.size < 4 or np.ptp(values) == 0:
        raise ValueError(f"column {target_key!r}: need at least 4 cells with differing values for regression")
    edges = np.quantile(values, [0.25, 0.5, 0.75])
    strata = np.searchsorted(edges, values, side="right").astype(np.int32)
    return PreparedCells(
        indices=rows.astype(np.int64),
        labels=strata,
        id2label={},
        state_key=target_key,
        targets=values,
    )


# ---- genes ---------------------------------------------------------------------------------------------------------
def read_gene_classes(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, list[str]]:
    """Gene classes {label: [Ensembl IDs]} from a mapping, a CSV (one column per class), a JSON object, or a
    mapping {label: path of a text file with one ID a line}.

    IDs are upper-cased and stripped; a gene listed under two classes is an error naming it.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"gene label file {path} not found")
        if path.suffix.lower() == ".json":
            classes = read_json(path)
            if not isinstance(classes, dict):
                raise ValueError(f"{path}: expected a JSON object {{label: [Ensembl IDs]}}")
        elif path.suffix.lower() in (".csv", ".tsv"):
            import pandas as pd

            frame = pd.read_csv(path, sep="," if path.suffix.lower() == ".csv" else "\t")
            classes = {str(column): frame[column].dropna().astype(str).tolist() for column in frame.columns}
        else:
            raise ValueError(
                f"{path}: gene labels must be a .csv (one column per class), a .json object, or a mapping "
                "{label: text file with one Ensembl ID a line}"
            )
    else:
        classes = {}
        for label, genes in source.items():
            if isinstance(genes, (str, os.PathLike)):
                genes = Path(genes).read_text(encoding="utf-8").split()
            classes[str(label)] = list(genes)
    cleaned = {
        label: sorted({str(g).strip().upper() for g in genes if str(g).strip()}) for label, genes in classes.items()
    }
    cleaned = {label: genes for label, genes in cleaned.items() if genes}
    if len(cleaned) < 2:
        raise ValueError(f"gene classification needs at least two classes with genes, got {list(cleaned)}")
    owner: dict[str, str] = {}
    clashes = []
    for label, genes in cleaned.items():
        for gene in genes:
            if gene in owner:
                clashes.append(f"{gene} ({owner[gene]}, {label})")
            owner[gene] = label
    if clashes:
        raise ValueError(f"genes listed under two classes: {clashes[:10]}; each gene needs one class")
    return dict(sorted(cleaned.items()))


@dataclass
class GeneLabels:
    """Target genes of a gene task: Ensembl ID, token id and class id (or target value), in one table."""

    genes: list[str]
    tokens: np.ndarray
    labels: np.ndarray
    id2label: dict[int, str]
    missing_genes: list[str] = field(default_factory=list)
    targets: np.ndarray | None = None

    @property
    def is_regression(self) -> bool:
        return self.targets is not None

    def subset(self, keep: np.ndarray) -> GeneLabels:
        return GeneLabels(
            [self.genes[i] for i in np.flatnonzero(keep)] if keep.dtype == bool else [self.genes[i] for i in keep],
            self.tokens[keep],
            self.labels[keep],
            self.id2label,
            self.missing_genes,
            None if self.targets is None else self.targets[keep],
        )


def gene_labels_for_tokens(
    gene_classes: Mapping[str, Sequence[str]], token_dictionary: Mapping[str, int]
) -> GeneLabels:
    """Look the genes up in the token dictionary; genes it lacks are listed in `missing_genes` (with a warning)."""
    names = sorted(gene_classes)
    genes, tokens, labels, missing = [], [], [], []
    for class_id, name in enumerate(names):
        for gene in gene_classes[name]:
            if gene in token_dictionary:
                genes.append(gene)
                tokens.append(int(token_dictionary[gene]))
                labels.append(class_id)
            else:
                missing.append(gene)
    if missing:
        warnings.warn(
            f"{len(missing)} labelled genes are not in the token dictionary and are left out (e.g. {missing[:5]})",
            stacklevel=2,
        )
    return GeneLabels(
        genes, np.asarray(tokens, np.int64), np.asarray(labels, np.int32), dict(enumerate(names)), missing
    )


def gene_values_for_tokens(gene_values: Mapping[str, float], token_dictionary: Mapping[str, int]) -> GeneLabels:
    """Numeric per-gene targets (gene regression), looked up like `gene_labels_for_tokens`."""
    genes, tokens, values, missing = [], [], [], []
    for gene, value in sorted(gene_values.items()):
        gene = str(gene).strip().upper()
        if gene in token_dictionary and np.isfinite(float(value)):
            genes.append(gene)
            tokens.append(int(token_dictionary[gene]))
            values.append(float(value))
        else:
            missing.append(gene)
    values_array = np.asarray(values, np.float64)
    strata = np.searchsorted(np.quantile(values_array, [0.5]), values_array, side="right").astype(np.int32)
    return GeneLabels(genes, np.asarray(tokens, np.int64), strata, {}, missing, values_array)


def read_gene_values(path: str | os.PathLike) -> dict[str, float]:
    """{Ensembl ID: number} from a JSON object or a two-column CSV (gene, value)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json(path)
        return {str(k): float(v) for k, v in data.items()}
    import pandas as pd

    frame = pd.read_csv(path)
    if frame.shape[1] != 2:
        raise ValueError(f"{path}: a gene-value CSV has two columns (Ensembl ID, value), found {list(frame.columns)}")
    return {str(g): float(v) for g, v in zip(frame.iloc[:, 0], frame.iloc[:, 1], strict=True)}


def token_label_arrays(
    cells: Sequence[np.ndarray], token_to_label: Mapping[int, float], dtype: type = np.int32
) -> list[np.ndarray]:
    """Per-token labels of each cell: the gene's label where the token is a labelled gene, -100 (or NaN for float
    targets) elsewhere."""
    if not token_to_label:
        raise ValueError("no labelled genes")
    keys = np.fromiter(token_to_label.keys(), np.int64)
    values = np.fromiter(token_to_label.values(), np.float64)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    fill = np.nan if np.issubdtype(dtype, np.floating) else IGNORE_INDEX
    out = []
    for tokens in cells:
        tokens = np.asarray(tokens, np.int64)
        position = np.clip(np.searchsorted(keys, tokens), 0, keys.size - 1)
        hit = keys[position] == tokens
        labels = np.full(tokens.shape, fill, dtype)
        labels[hit] = values[position[hit]].astype(dtype)
        out.append(labels)
    return out


def cells_holding(cells: Sequence[np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Indices of the cells that hold at least one of `tokens`."""
    tokens = np.asarray(tokens)
    return np.asarray([i for i, cell in enumerate(cells) if np.isin(cell, tokens).any()], np.int64)
