"""Cell and gene embeddings from the encoder alone (no masked-LM head is evaluated), with UMAP and heatmap plots.

    from mindformer_gf.tasks import EmbExtractor
    extractor = EmbExtractor(emb_mode="cell", emb_layer=-1, emb_label=["cell_type"], summary_stat="exact_mean")
    embs = extractor.extract_embs("model_dir", "pbmc.dataset", "out", "pbmc")   # out/pbmc.csv, out/pbmc.npy
    extractor.plot_embs(embs, "umap", "out", "pbmc", label="cell_type")       # out/pbmc_umap_cell_type.png/.pdf

- `emb_layer` as in the reference: hidden state `n_layers + emb_layer` of (embeddings output, layer 1, ...,
  layer n): 0 is the last layer, -1 the one before (the reference's default).
- `emb_mode`: "cell" = mean over the cell's genes (padding, <cls> and <eos> excluded); "cls" = the <cls> position
  (V2 datasets); "gene" = each gene's embedding averaged over the cells holding it.
- rows come back in INPUT order (the reference shuffles them); inference batches are sorted by length and padded
  to a few fixed widths internally.
- `summary_stat`: "exact_mean" / "exact_median" (or "mean" / "median": also exact here) per label value.
- under `msrun` each rank embeds whole batches of the plan one process makes, and rank 0 writes the same files as
  one process, bit for bit (`mindformer_gf.infer.sharded`); every run also writes `{prefix}_run.json` (settings,
  ranks, seconds).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from mindformer_gf.data import corpus_lengths, read_cells
from mindformer_gf.data.buckets import choose_bucket_widths
from mindformer_gf.finetune.labels import column_values, filter_rows
from mindformer_gf.finetune.task_model import load_encoder
from mindformer_gf.infer.batches import length_sorted_batches, pool_weights
from mindformer_gf.infer.datasets import open_dataset, special_token_ids
from mindformer_gf.infer.sharded import (
    ShardedInference,
    cell_costs,
    dataset_location,
    forward_share,
    input_stamps,
)
from mindformer_gf.io import atomic_file, ensure_dir, matplotlib_pyplot, save_figure, write_csv
from mindformer_gf.tokenizer import token_dictionary_for
from mindformer_gf.train.device import prepare_device
from mindformer_gf.train.distributed import ParallelContext

EMB_MODES = ("cell", "cls", "gene")
SUMMARY_STATS = (None, "mean", "median", "exact_mean", "exact_median")


class EmbeddingForward(nn.Cell):
    """Hidden state `layer_index` of the encoder: mean-pooled with `pool_weights` ("cell"), at position 0
    ("cls"), or per token ("gene")."""

    def __init__(self, encoder: nn.Cell, layer_index: int, mode: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.layer_index = int(layer_index)
        self.mode = mode

    def construct(self, input_ids: Tensor, attention_mask: Tensor, pool_weights: Tensor) -> Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask)[self.layer_index]
        if self.mode == "cell":
            weights = pool_weights[:, :, None]
            return (hidden * weights).sum(1) / ms.ops.maximum(weights.sum(1), 1.0)
        if self.mode == "cls":
            return hidden[:, 0]
        return hidden


@dataclass
class Embeddings:
    """Embeddings [n, hidden] (float32) and, per row, the dataset row and label values (cell modes) or the gene
    and its number of occurrences (gene mode)."""

    matrix: np.ndarray
    meta: Any  # pandas DataFrame, one row per embedding
    mode: str
    layer: int
    files: list[Path] = field(default_factory=list)

    def frame(self) -> Any:
        import pandas as pd

        values = pd.DataFrame(self.matrix, columns=[str(i) for i in range(self.matrix.shape[1])])
        return pd.concat([self.meta.reset_index(drop=True), values], axis=1)


class EmbExtractor:
    """The reference's EmbExtractor (rows in input order, encoder only)."""

    def __init__(
        self,
        emb_mode: str = "cell",
        emb_layer: int = -1,
        emb_label: Sequence[str] | None = None,
        labels_to_plot: Sequence[str] | None = None,
        filter_data: Mapping[str, Sequence[Any]] | None = None,
        max_ncells: int | None = 1000,
        forward_batch_size: int = 32,
        summary_stat: str | None = None,
        num_buckets: int = 4,
        seed: int = 0,
        progress: bool = True,
        device: str = "auto",
        resume: bool = False,
        shard_timeout: float = 1800.0,
    ) -> None:
        if emb_mode not in EMB_MODES:
            raise ValueError(f"emb_mode {emb_mode!r} is not one of {EMB_MODES}")
        if summary_stat not in SUMMARY_STATS:
            raise ValueError(f"summary_stat {summary_stat!r} is not one of {SUMMARY_STATS}")
        if emb_layer > 0:
            raise ValueError(
                f"emb_layer counts back from the last layer (0 = last, -1 = second-to-last), got {emb_layer}"
            )
        self.emb_mode = emb_mode
        self.emb_layer = int(emb_layer)
        self.emb_label = list(emb_label or [])
        self.labels_to_plot = list(labels_to_plot or self.emb_label)
        self.filter_data = dict(filter_data or {})
        self.max_ncells = max_ncells
        self.forward_batch_size = forward_batch_size
        self.summary_stat = summary_stat
        self.num_buckets = num_buckets
        self.seed = seed
        self.progress = progress
        self.device = device
        # under msrun: keep the shards an interrupted run finished; fail when a rank shows no progress this long
        self.resume = resume
        self.shard_timeout = shard_timeout

    def select_rows(self, dataset: Any) -> np.ndarray:
        """Dataset rows to embed, ascending: the filtered cells, subsampled to `max_ncells` (reproducibly)."""
        rows = filter_rows(dataset, self.filter_data)
        if self.max_ncells and rows.size > self.max_ncells:
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, self.max_ncells, replace=False))
        return rows

    def extract_embs(
        self,
        model_dir: str | os.PathLike,
        dataset: Any,
        output_dir: str | os.PathLike | None = None,
        output_prefix: str = "embeddings",
        encoder: nn.Cell | None = None,
        parallel: ParallelContext | None = None,
    ) -> Embeddings | None:
        """Embed the selected cells; writes `{prefix}.csv` (metadata columns then one column per dimension),
        `{prefix}.npy` and `{prefix}_run.json` when `output_dir` is given, and with `summary_stat`
        `{prefix}_{stat}_by_{label}.csv`.

        Under msrun (or with `parallel` of several ranks) every rank embeds its share; rank 0 returns all the
        embeddings and writes the files, the other ranks return None."""
        import pandas as pd

        prepare_device(self.device)
        encoder = encoder if encoder is not None else load_encoder(model_dir)
        config = encoder.config
        dataset = open_dataset(dataset, config.vocab_size)
        n_layers = config.num_hidden_layers
        if not -n_layers <= self.emb_layer <= 0:
            raise ValueError(f"emb_layer {self.emb_layer} is outside -{n_layers}..0 for a {n_layers}-layer model")
        special = special_token_ids(dataset)
        special_ids = sorted(set(special.values()))
        rows = self.select_rows(dataset)
        lengths = corpus_lengths(dataset)[rows]
        # the batch plan of one process, from every selected cell: each rank runs whole batches of it
        buckets = choose_bucket_widths(lengths, self.num_buckets, config.max_position_embeddings)
        batches = length_sorted_batches(lengths, buckets, self.forward_batch_size)
        forward = EmbeddingForward(encoder, n_layers + self.emb_layer, self.emb_mode)
        forward.set_train(False)

        def check_cells(cells: list[np.ndarray]) -> None:
            cls_id = special.get("<cls>")
            if self.emb_mode == "cls" and (cls_id is None or any(c[0] != cls_id for c in cells)):
                raise ValueError(
                    "emb_mode 'cls' needs cells that start with <cls> (V2 tokenization, special_token=True); this "
                    "dataset has none: use emb_mode 'cell' (mean over genes)"
                )

        job = ShardedInference(
            cell_costs(lengths, "genes"),
            output_dir if output_dir is not None else ".",
            output_prefix,
            self.run_settings(model_dir, dataset),
            inputs=input_stamps(model_dir, dataset),
            parallel=parallel,
            resume=self.resume,
            timeout=self.shard_timeout,
            progress=self.progress,
            desc=f"{self.emb_mode} embeddings",
            groups=[positions for _, positions in batches],
        )
        if job.parallel.distributed and output_dir is None:
            raise ValueError("embeddings on several ranks need an output_dir: the ranks exchange their shards there")
        merged = job.run(
            forward_share(
                forward,
                dataset,
                rows,
                batches,
                self.forward_batch_size,
                special.get("<pad>", 0),
                extra_inputs=lambda ids, mask: [pool_weights(ids, mask, special_ids)],
                check_cells=check_cells,
            )
        )
        if merged is None:
            return None  # another rank's share: rank 0 writes the files
        (outputs,) = merged
        if self.emb_mode == "gene":
            cells = read_cells(dataset, rows)
            matrix, meta = self._gene_embeddings(cells, outputs, special_ids, dataset)
        else:
            matrix = np.asarray(outputs, np.float32)
            meta = pd.DataFrame({"dataset_row": rows})
            for label in self.emb_label:
                meta[label] = column_values(dataset, label)[rows]
        embs = Embeddings(matrix, meta, self.emb_mode, self.emb_layer)
        if output_dir is not None:
            out = ensure_dir(output_dir)
            embs.files.append(write_csv(out / f"{output_prefix}.csv", embs.frame()))
            with atomic_file(out / f"{output_prefix}.npy") as tmp:
                np.save(tmp, matrix, allow_pickle=False)
            embs.files.append(out / f"{output_prefix}.npy")
            if self.summary_stat and self.emb_mode != "gene":
                for label in self.emb_label:
                    states = self.get_state_embs(embs, label)
                    frame = pd.DataFrame(states).T
                    frame.index.name = label
                    stat = self.summary_stat.replace("exact_", "")
                    embs.files.append(write_csv(out / f"{output_prefix}_{stat}_by_{label}.csv", frame, index=True))
            embs.files.append(job.finish(embs.files))
        return embs

    def run_settings(self, model_dir: str | os.PathLike | None, dataset: Any) -> dict[str, Any]:
        """What `{prefix}_run.json` records of this extraction (and what a resumed shard must match)."""
        return {
            "command": "embed",
            "model": None if model_dir is None else str(model_dir),
            "dataset": dataset_location(dataset),
            "emb_mode": self.emb_mode,
            "emb_layer": self.emb_layer,
            "emb_label": self.emb_label,
            "filter_data": self.filter_data,
            "max_ncells": self.max_ncells,
            "forward_batch_size": self.forward_batch_size,
            "summary_stat": self.summary_stat,
            "num_buckets": self.num_buckets,
            "seed": self.seed,
            "device": self.device,
        }

    @staticmethod
    def _gene_embeddings(
        cells: list[np.ndarray], outputs: list[np.ndarray], special_ids: Sequence[int], dataset: Any
    ) -> tuple[np.ndarray, Any]:
        """Each gene's embedding averaged over its occurrences (a gene occurs at most once per cell)."""
        import pandas as pd

        tokens = np.concatenate(cells)
        states = np.concatenate(outputs).astype(np.float64)
        keep = ~np.isin(tokens, np.asarray(special_ids))
        tokens, states = tokens[keep], states[keep]
        unique, inverse, counts = np.unique(tokens, return_inverse=True, return_counts=True)
        sums = np.zeros((unique.size, states.shape[1]))
        np.add.at(sums, inverse, states)
        matrix = (sums / counts[:, None]).astype(np.float32)
        names = _token_names(dataset)
        meta = pd.DataFrame(
            {"token_id": unique, "gene": [names.get(int(t), str(t)) for t in unique], "n_cells": counts}
        )
        return matrix, meta

    def get_state_embs(self, embs: Embeddings, label: str) -> dict[str, np.ndarray]:
        """{label value: exact mean (or median, per summary_stat) embedding of its cells} (float64)."""
        if label not in embs.meta.columns:
            raise KeyError(f"no label {label!r} among the embeddings' columns {list(embs.meta.columns)}")
        values = embs.meta[label].astype(str).to_numpy()
        reduce = np.median if self.summary_stat and "median" in self.summary_stat else np.mean
        return {state: reduce(embs.matrix[values == state].astype(np.float64), axis=0) for state in sorted(set(values))}

    def plot_embs(
        self,
        embs: Embeddings,
        plot_style: str,
        output_dir: str | os.PathLike,
        output_prefix: str = "embeddings",
        label: str | None = None,
        max_cells: int = 2000,
    ) -> list[Path]:
        """UMAP of the embeddings coloured by `label`, or a clustered heatmap (cells x dimensions) with the label
        as a colour bar; PNG and PDF."""
        label = label or (self.labels_to_plot[0] if self.labels_to_plot else None)
        if label is None or label not in embs.meta.columns:
            raise ValueError(f"plot_embs needs a label column of the embeddings, one of {list(embs.meta.columns)}")
        out = ensure_dir(output_dir)
        matrix, values = embs.matrix, embs.meta[label].astype(str).to_numpy()
        if matrix.shape[0] > max_cells:
            pick = np.sort(np.random.default_rng(self.seed).choice(matrix.shape[0], max_cells, replace=False))
            matrix, values = matrix[pick], values[pick]
        stem = out / f"{output_prefix}_{plot_style}_{label}"
        if plot_style == "umap":
            return plot_umap(matrix, values, label, stem, self.seed, f"{embs.mode} embeddings, layer {embs.layer}")
        if plot_style == "heatmap":
            return plot_heatmap(matrix, values, label, stem, f"{embs.mode} embeddings, layer {embs.layer}")
        raise ValueError(f"plot_style {plot_style!r} is not 'umap' or 'heatmap'")


def _token_names(dataset: Any) -> dict[int, str]:
    """token id -> Ensembl ID, from the shipped V1 dictionary when it is the dataset's (else the ids)."""
    try:
        return {v: k for k, v in token_dictionary_for(dataset).items()}
    except (ValueError, OSError):
        return {}


def _palette(n: int) -> list:
    plt = matplotlib_pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_umap(
    matrix: np.ndarray, values: np.ndarray, label: str, stem: str | os.PathLike, seed: int = 0, title: str = ""
) -> list[Path]:
    import umap

    plt = matplotlib_pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap's notes about n_jobs with a fixed random_state
        coords = umap.UMAP(n_neighbors=min(15, matrix.shape[0] - 1), min_dist=0.3, random_state=seed).fit_transform(
            matrix
        )
    states = sorted(set(values))
    colours = _palette(len(states))
    figure, axis = plt.subplots(figsize=(7.5, 5.5))
    for state, colour in zip(states, colours, strict=True):
        chosen = values == state
        axis.scatter(coords[chosen, 0], coords[chosen, 1], s=8, color=colour, label=f"{state} ({chosen.sum()})")
    axis.set_xlabel("UMAP 1")
    axis.set_ylabel("UMAP 2")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title or "embeddings")
    axis.legend(title=label, fontsize=8, title_fontsize=9, markerscale=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(figure, stem)


def plot_heatmap(matrix: np.ndarray, values: np.ndarray, label: str, stem: str | os.PathLike, title: str = "") -> list:
    """Cells (rows, ordered by average-linkage clustering) x embedding dimensions, z-scored per dimension, with a
    colour bar of `label` beside the rows and a dendrogram above."""
    from scipy.cluster.hierarchy import dendrogram, leaves_list, linkage

    plt = matplotlib_pyplot()
    scaled = (matrix - matrix.mean(0)) / (matrix.std(0) + 1e-8)
    row_order = leaves_list(linkage(scaled, method="average", metric="euclidean"))
    column_link = linkage(scaled.T, method="average", metric="euclidean")
    column_order = leaves_list(column_link)
    states = sorted(set(values))
    colours = _palette(len(states))
    index = {s: i for i, s in enumerate(states)}
    figure = plt.figure(figsize=(9, 7))
    grid = figure.add_gridspec(2, 3, width_ratios=[0.4, 12, 0.4], height_ratios=[1.2, 8], wspace=0.03, hspace=0.02)
    tree = figure.add_subplot(grid[0, 1])
    dendrogram(column_link, ax=tree, no_labels=True, color_threshold=0, above_threshold_color="grey")
    tree.axis("off")
    bar = figure.add_subplot(grid[1, 0])
    from matplotlib.colors import ListedColormap

    bar.imshow(
        np.asarray([index[v] for v in values[row_order]])[:, None],
        aspect="auto",
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(states) - 0.5,
        interpolation="nearest",
    )
    bar.set_xticks([])
    bar.set_yticks([])
    bar.set_ylabel(f"cells ({len(values)}), clustered")
    heat = figure.add_subplot(grid[1, 1])
    image = heat.imshow(
        np.clip(scaled[row_order][:, column_order], -3, 3),
        aspect="auto",
        cmap="RdBu_r",
        vmin=-3,
        vmax=3,
        interpolation="nearest",
    )
    heat.set_yticks([])
    heat.set_xticks([])
    heat.set_xlabel(f"embedding dimensions ({matrix.shape[1]}, clustered)")
    colour_axis = figure.add_subplot(grid[1, 2])
    figure.colorbar(image, cax=colour_axis, label="z-score")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
    figure.legend(
        handles, states, title=label, fontsize=8, title_fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5)
    )
    figure.suptitle(title or "embeddings", y=0.93)
    return save_figure(figure, stem)
