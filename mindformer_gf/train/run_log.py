"""The metrics of a run: one CSV row per logged step, and a loss-curve PNG drawn from that CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mindformer_gf.io import atomic_file, matplotlib_pyplot

METRIC_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "accuracy",
    "lr",
    "grad_norm",
    "loss_scale",
    "skipped_steps",
    "cells_per_s",
    "tokens_per_s",
    "padding_waste",
    "elapsed_s",
    "eval_loss",
    "eval_accuracy",
)


class MetricsLog:
    """Appends rows to `<output_dir>/metrics.csv`; on resume, rows after the resumed step are dropped first."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and self.path.is_file():
            kept = [row for row in read_metrics(self.path) if int(float(row["step"])) <= resume_step]
        _rewrite(self.path, kept)

    def append(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, METRIC_COLUMNS).writerow({k: row.get(k, "") for k in METRIC_COLUMNS})


def _rewrite(path: Path, rows: list[dict[str, str]]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in METRIC_COLUMNS} for row in rows)


def read_metrics(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def plot_loss_curve(
    metrics_csv: str | os.PathLike,
    png_path: str | os.PathLike,
    baseline: float | None = None,
    title: str = "masked-gene modelling",
) -> Path:
    """Loss and masked accuracy against step, with an optional horizontal baseline; written atomically."""
    plt = matplotlib_pyplot()
    all_rows = read_metrics(metrics_csv)
    rows = [r for r in all_rows if r.get("loss")]
    evaluations = [r for r in all_rows if r.get("eval_loss")]
    steps = [float(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    accuracy = [float(r["accuracy"]) for r in rows]
    figure, loss_axis = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    loss_axis.plot(steps, losses, color="tab:blue", label="training loss")
    if evaluations:
        loss_axis.plot(
            [float(r["step"]) for r in evaluations],
            [float(r["eval_loss"]) for r in evaluations],
            "o-",
            color="tab:orange",
            label="held-out loss",
        )
    if baseline is not None:
        loss_axis.axhline(baseline, color="tab:red", linestyle="--", label=f"unigram baseline {baseline:.2f}")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("cross-entropy (nats)")
    accuracy_axis = loss_axis.twinx()
    accuracy_axis.plot(steps, accuracy, color="tab:green", alpha=0.6, label="masked accuracy")
    accuracy_axis.set_ylabel("masked accuracy")
    handles = loss_axis.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles=handles, loc="upper right", fontsize=8)
    loss_axis.set_title(title)
    figure.tight_layout()
    png_path = Path(png_path)
    with atomic_file(png_path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return png_path
