"""Evaluation metrics (scikit-learn on predictions) and the plots that show them.

Classification: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, ROC AUC (two classes: the
positive class's probability; more: one-vs-rest macro average). Regression: MSE, MAE, R^2, Pearson r.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.io import matplotlib_pyplot, save_figure


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics of predictions argmax(probabilities) against `y_true` (class ids 0..n-1)."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score, roc_auc_score

    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, np.float64)
    y_pred = probabilities.argmax(axis=1)
    ids = list(range(len(class_names)))
    result: dict[str, Any] = {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "per_class": classification_report(
            y_true, y_pred, labels=ids, target_names=list(class_names), output_dict=True, zero_division=0
        ),
        "roc_auc": None,
    }
    present = np.unique(y_true)
    if len(class_names) == 2 and present.size == 2:
        result["roc_auc"] = float(roc_auc_score(y_true, probabilities[:, 1]))
    elif len(class_names) > 2 and present.size == len(class_names):
        result["roc_auc"] = float(roc_auc_score(y_true, probabilities, multi_class="ovr", average="macro"))
    return result


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    pearson = float(np.corrcoef(y_true, y_pred)[0, 1]) if y_true.size > 1 and np.ptp(y_pred) > 0 else float("nan")
    return {
        "n": int(y_true.size),
        "mse": float(mean_squared_error(y_true, y_pred)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
        "pearson_r": pearson,
    }


def selection_score(metrics: Mapping[str, Any]) -> float:
    """What "best" means when choosing a checkpoint: macro-F1 for classification, -MSE for regression."""
    return float(metrics["macro_f1"]) if "macro_f1" in metrics else -float(metrics["mse"])


def summarise_folds(fold_metrics: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over folds of each scalar metric in `keys`."""
    summary = {}
    for key in keys:
        values = np.asarray([m[key] for m in fold_metrics if m.get(key) is not None], np.float64)
        if values.size:
            summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=0)), "folds": values.tolist()}
    return summary


# ---- plots ---------------------------------------------------------------------------------------------------------
def plot_confusion_matrix(
    matrix: np.ndarray | list, class_names: Sequence[str], stem: str | os.PathLike, title: str = "confusion matrix"
) -> list[Path]:
    """Row-normalised confusion matrix (true class per row) with the counts written in each cell."""
    plt = matplotlib_pyplot()
    matrix = np.asarray(matrix, np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(class_names)
    size = max(4.0, 0.55 * n + 2.5)
    figure, axis = plt.subplots(figsize=(size + 1.0, size))
    image = axis.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    axis.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(n), labels=list(class_names), fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                colour = "white" if normalised[i, j] > 0.6 else "black"
                axis.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    axis.set_title(title)
    return save_figure(figure, stem)


def plot_roc(
    y_true: np.ndarray, positive_score: np.ndarray, positive_name: str, stem: str | os.PathLike, title: str = "ROC"
) -> list[Path]:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = matplotlib_pyplot()
    fpr, tpr, _ = roc_curve(y_true, positive_score)
    auc = roc_auc_score(y_true, positive_score)
    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    axis.plot(fpr, tpr, color="tab:red", label=f"{positive_name}: AUC {auc:.3f}")
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    return save_figure(figure, stem)


def plot_fold_rocs(
    fold_curves: Sequence[tuple[np.ndarray, np.ndarray]], positive_name: str, stem: str | os.PathLike, title: str
) -> list[Path]:
    """One ROC curve per fold ((y_true, positive score) each) and their mean AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = matplotlib_pyplot()
    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    aucs = []
    for k, (y_true, score) in enumerate(fold_curves):
        if np.unique(y_true).size < 2:
            continue
        fpr, tpr, _ = roc_curve(y_true, score)
        aucs.append(roc_auc_score(y_true, score))
        axis.plot(fpr, tpr, alpha=0.8, label=f"fold {k}: AUC {aucs[-1]:.2f}")
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    mean_auc = f" (mean AUC {np.mean(aucs):.3f})" if aucs else ""
    axis.set_title(f"{title}{mean_auc}\npositive class: {positive_name}", fontsize=10)
    axis.legend(loc="lower right", fontsize=7)
    return save_figure(figure, stem)


def plot_regression(y_true: np.ndarray, y_pred: np.ndarray, name: str, stem: str | os.PathLike) -> list[Path]:
    plt = matplotlib_pyplot()
    metrics = regression_metrics(y_true, y_pred)
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    axis.scatter(y_true, y_pred, s=8, alpha=0.6, label=f"cells (R^2 {metrics['r2']:.2f}, r {metrics['pearson_r']:.2f})")
    low, high = float(min(np.min(y_true), np.min(y_pred))), float(max(np.max(y_true), np.max(y_pred)))
    axis.plot([low, high], [low, high], color="grey", linestyle="--", label="y = x")
    axis.set_xlabel(f"true {name}")
    axis.set_ylabel(f"predicted {name}")
    axis.legend(fontsize=8)
    return save_figure(figure, stem)


def plot_metric_bars(
    values: Mapping[str, Mapping[str, float]], stem: str | os.PathLike, title: str, ylabel: str = "score"
) -> list[Path]:
    """Grouped bars: {group: {metric: value}} (e.g. per task or per fold: accuracy, macro-F1)."""
    plt = matplotlib_pyplot()
    groups = list(values)
    metrics = sorted({m for v in values.values() for m in v})
    width = 0.8 / max(1, len(metrics))
    figure, axis = plt.subplots(figsize=(max(4.5, 1.2 * len(groups) + 2), 3.8))
    for i, metric in enumerate(metrics):
        heights = [values[g].get(metric, np.nan) for g in groups]
        bars = axis.bar(np.arange(len(groups)) + i * width, heights, width, label=metric)
        axis.bar_label(bars, fmt="%.2f", fontsize=7)
    axis.set_xticks(np.arange(len(groups)) + width * (len(metrics) - 1) / 2, labels=groups, fontsize=8)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=8, loc="lower right")
    return save_figure(figure, stem)
