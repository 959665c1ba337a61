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


MODEL_TYPES = ("Pretrained", "GeneClassifier", "CellClassifier")
GENE_EMB_STYLES = ("mean_pool", "all")
RENAMED = {"model_dir": "model_directory", "dataset": "input_data_file", "output_dir": "output_directory"}


def _renamed(method: str, given: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Our earlier argument names (model_dir, dataset, output_dir) still work, with a DeprecationWarning."""
    for old, value in given.items():
        new = RENAMED.get(old)
        if new is None:
            raise TypeError(f"{method}() got an unexpected keyword argument {old!r}")
        if values.get(new) is not None:
            raise TypeError(f"{method}() got both {old!r} and its reference name {new!r}: pass {new!r} only")
        warnings.warn(f"{method}({old}=...) is now {new}= (the reference's name)", DeprecationWarning, stacklevel=3)
        values[new] = value
    return values


def _torch_tensor(values: np.ndarray) -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError(
            "output_torch_embs=True needs torch, which mindformer_gf does not install: pip install torch (CPU), "
            "or leave output_torch_embs=False and use the numpy embeddings"
        ) from None
    return torch.from_numpy(np.ascontiguousarray(values))


class EmbExtractor:
    """The reference's EmbExtractor (rows in input order, encoder only), with the reference's arguments.

    Reference arguments, with its defaults: model_type ("Pretrained", "GeneClassifier", "CellClassifier": the
    encoder of any of them is read from the model directory; num_classes is checked against a classifier's
    config), emb_mode ("cls"; "cell" = mean over the genes; "gene"), cell_emb_style ("mean_pool", the only one),
    gene_emb_style ("mean_pool" = each gene's embedding averaged over its cells; "all" = every contextual gene
    embedding, one row per gene and cell), filter_data, max_ncells (1000), emb_layer (-1), emb_label, labels_to_plot,
    forward_batch_size (100), nproc (accepted; filtering runs in this process), summary_stat, save_tdigest (refused
    with a summary_stat: summaries are exact here, there is no t-digest), model_version ("V2"; "V1" turns emb_mode
    "cls" into "cell", as in the reference), token_dictionary_file (the dataset's recorded dictionary otherwise;
    used for gene names). This package adds: num_buckets, seed, progress, device, resume, shard_timeout.
    """

    def __init__(
        self,
        model_type: str = "Pretrained",
        num_classes: int = 0,
        emb_mode: str = "cls",
        cell_emb_style: str = "mean_pool",
        gene_emb_style: str = "mean_pool",
        filter_data: Mapping[str, Sequence[Any]] | None = None,
        max_ncells: int | None = 1000,
        emb_layer: int = -1,
        emb_label: Sequence[str] | None = None,
        labels_to_plot: Sequence[str] | None = None,
        forward_batch_size: int = 100,
        nproc: int = 4,
        summary_stat: str | None = None,
        save_tdigest: bool = False,
        model_version: str = "V2",
        token_dictionary_file: str | os.PathLike | None = None,
        num_buckets: int = 4,
        seed: int = 0,
        progress: bool = True,
        device: str = "auto",
        resume: bool = False,
        shard_timeout: float = 1800.0,
    ) -> None:
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not one of {MODEL_TYPES}")
        if emb_mode not in EMB_MODES:
            raise ValueError(f"emb_mode {emb_mode!r} is not one of {EMB_MODES}")
        if cell_emb_style != "mean_pool":
            raise ValueError(f"cell_emb_style {cell_emb_style!r}: only 'mean_pool' exists (as in the reference)")
        if gene_emb_style not in GENE_EMB_STYLES:
            raise ValueError(f"gene_emb_style {gene_emb_style!r} is not one of {GENE_EMB_STYLES}")
        if summary_stat not in SUMMARY_STATS:
            raise ValueError(f"summary_stat {summary_stat!r} is not one of {SUMMARY_STATS}")
        if model_version not in ("V1", "V2"):
            raise ValueError(f"model_version must be 'V1' or 'V2', got {model_version!r}")
        if emb_layer > 0:
            raise ValueError(
                f"emb_layer counts back from the last layer (0 = last, -1 = second-to-last), got {emb_layer}"
            )
        if save_tdigest and summary_stat is not None:
            raise ValueError(
                "save_tdigest=True: no t-digests are made here, summary_stat is computed exactly over the cells' "
                "embeddings (written to {prefix}.npy); leave save_tdigest=False"
            )
        if save_tdigest:
            warnings.warn("save_tdigest=True without summary_stat saves nothing (as in the reference)", stacklevel=2)
        if model_version == "V1" and emb_mode == "cls":
            warnings.warn(
                "model_version V1: emb_mode 'cls' becomes 'cell' (V1 models have no <cls> token), as in the reference",
                UserWarning,
                stacklevel=2,
            )
            emb_mode = "cell"
        self.model_type = model_type
        self.num_classes = int(num_classes)
        self.emb_mode = emb_mode
        self.cell_emb_style = cell_emb_style
        self.gene_emb_style = gene_emb_style
        self.emb_layer = int(emb_layer)
        self.emb_label = list(emb_label or [])
        self.labels_to_plot = list(labels_to_plot or self.emb_label)
        # the reference turns single filter values into lists
        self.filter_data = {
            k: list(v) if isinstance(v, (list, tuple, set)) else [v] for k, v in dict(filter_data or {}).items()
        }
        self.max_ncells = max_ncells
        self.forward_batch_size = int(forward_batch_size)
        self.nproc = int(nproc)
        self.summary_stat = summary_stat
        self.save_tdigest = bool(save_tdigest)
        self.model_version = model_version
        self.token_dictionary_file = token_dictionary_file
        self.num_buckets = num_buckets
        self.seed = seed
        self.progress = progress
        self.device = device
        # under msrun: keep the shards an interrupted run finished; fail when a rank shows no progress this long
        self.resume = resume
        self.shard_timeout = shard_timeout

    def select_rows(self, dataset: Any, extra_filter: Mapping[str, Sequence[Any]] | None = None) -> np.ndarray:
        """Dataset rows to embed, ascending: the filtered cells, subsampled to `max_ncells` (reproducibly)."""
        filters = {**self.filter_data, **dict(extra_filter or {})}
        rows = filter_rows(dataset, filters) if filters else np.arange(len(dataset))
        if self.max_ncells and rows.size > self.max_ncells:
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, self.max_ncells, replace=False))
        return rows

    def _check_model_type(self, encoder: nn.Cell) -> None:
        labels = getattr(encoder.config, "num_labels", None)
        if self.model_type != "Pretrained" and self.num_classes and labels and int(labels) != self.num_classes:
            raise ValueError(
                f"num_classes={self.num_classes} but the {self.model_type} model has {labels} classes in its "
                "config.json: pass num_classes={labels} (or 0)"
            )

    def extract_embs(
        self,
        model_directory: str | os.PathLike | None = None,
        input_data_file: Any = None,
        output_directory: str | os.PathLike | None = None,
        output_prefix: str = "embeddings",
        output_torch_embs: bool = False,
        cell_state: Mapping[str, Any] | None = None,
        encoder: nn.Cell | None = None,
        parallel: ParallelContext | None = None,
        **renamed: Any,
    ) -> Any:
        """Embed the selected cells; returns an `Embeddings` (`.frame()` is the table, `.matrix` the numpy array)
        and writes `{prefix}.csv` (metadata columns then one column per dimension), `{prefix}.npy` and
        `{prefix}_run.json` when `output_directory` is given, and with `summary_stat`
        `{prefix}_{stat}_by_{label}.csv`.

        As the reference: output_torch_embs=True returns (embeddings, a torch tensor of them) (torch needed);
        `cell_state` ({column: value}) embeds only that state's cells, writes nothing and returns their summary
        (exact mean, or median with summary_stat "exact_median") as a numpy vector (a torch tensor with
        output_torch_embs). Our earlier names model_dir / dataset / output_dir still work (DeprecationWarning).

        Under msrun (or with `parallel` of several ranks) every rank embeds its share; rank 0 returns all the
        embeddings and writes the files, the other ranks return None."""
        import pandas as pd

        values = _renamed(
            "extract_embs",
            renamed,
            {
                "model_directory": model_directory,
                "input_data_file": input_data_file,
                "output_directory": output_directory,
            },
        )
        model_directory, input_data_file = values["model_directory"], values["input_data_file"]
        output_directory = values["output_directory"]
        if input_data_file is None or (model_directory is None and encoder is None):
            raise TypeError("extract_embs() needs model_directory and input_data_file")
        if output_torch_embs:
            _torch_tensor(np.zeros(0, np.float32))  # fails early, before the work, without torch
        if cell_state is not None:
            return self._state_summary(model_directory, input_data_file, cell_state, output_torch_embs, encoder)
        output_dir = output_directory
        prepare_device(self.device)
        encoder = encoder if encoder is not None else load_encoder(model_directory)
        self._check_model_type(encoder)
        config = encoder.config
        dataset = open_dataset(input_data_file, config.vocab_size)
        n_layers = config.num_hidden_layers
        if not -n_layers <= self.emb_layer <= 0:
            raise ValueError(f"emb_layer {self.emb_layer} is outside -{n_layers}..0 for a {n_layers}-layer model")
        for label in self.emb_label:
            if label not in dataset.column_names:
                raise ValueError(f"no column {label!r} (emb_label) in the dataset; columns: {dataset.column_names}")
        special = special_token_ids(dataset)
        special_ids = sorted(set(special.values()))
        rows = self.select_rows(dataset, getattr(self, "_state_filter", None))
        if rows.size == 0:
            raise ValueError("no cell left after filter_data (and cell_state): check the column values")
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
                    "emb_mode 'cls' (the default, for V2 models) needs cells that start with <cls> (V2 tokenization, "
                    "special_token=True); for this dataset pass model_version='V1' or emb_mode='cell' (mean over genes)"
                )

        job = ShardedInference(
            cell_costs(lengths, "genes"),
            output_dir if output_dir is not None else ".",
            output_prefix,
            self.run_settings(model_directory, dataset),
            inputs=input_stamps(model_directory, dataset),
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
            names = _token_names(dataset, self.token_dictionary_file)
            matrix, meta = self._gene_embeddings(cells, outputs, special_ids, names, self.gene_emb_style)
        else:
            matrix = np.asarray(outputs, np.float32)
            meta = pd.DataFrame({"dataset_row": rows})
            for label in self.emb_label:
                meta[label] = column_values(dataset, label)[rows]
        embs = Embeddings(matrix, meta, self.emb_mode, self.emb_layer)
        if output_dir is not None and not getattr(self, "_state_filter", None):
            out = ensure_dir(output_dir)
            embs.files.append(write_csv(out / f"{output_prefix}.csv", embs.frame()))
            with atomic_file(out / f"{output_prefix}.npy") as tmp:
                np.save(tmp, matrix, allow_pickle=False)
            embs.files.append(out / f"{output_prefix}.npy")
            if self.summary_stat and self.emb_mode != "gene":
                for label in self.emb_label:
                    states = self.state_embs(embs, label)
                    frame = pd.DataFrame(states).T
                    frame.index.name = label
                    stat = self.summary_stat.replace("exact_", "")
                    embs.files.append(write_csv(out / f"{output_prefix}_{stat}_by_{label}.csv", frame, index=True))
            embs.files.append(job.finish(embs.files))
        if output_torch_embs:
            return embs, _torch_tensor(matrix)
        return embs

    def _state_summary(
        self,
        model_directory: Any,
        input_data_file: Any,
        cell_state: Mapping[str, Any],
        output_torch_embs: bool,
        encoder: nn.Cell | None,
    ) -> Any:
        """The summary embedding of one state's cells (the reference's extract_embs with cell_state)."""
        if self.emb_mode == "gene":
            raise ValueError("cell_state summarises cell embeddings: use emb_mode 'cell' or 'cls'")
        self._state_filter = {k: v if isinstance(v, (list, tuple)) else [v] for k, v in cell_state.items()}
        try:
            # whole on every rank under msrun: each rank's later work needs every state
            embs = self.extract_embs(model_directory, input_data_file, encoder=encoder, parallel=ParallelContext())
        finally:
            del self._state_filter
        reduce = np.median if self.summary_stat and "median" in self.summary_stat else np.mean
        summary = reduce(embs.matrix.astype(np.float64), axis=0)
        return _torch_tensor(summary) if output_torch_embs else summary

    def get_state_embs(
        self,
        cell_states_to_model: Mapping[str, Any] | None = None,
        model_directory: str | os.PathLike | None = None,
        input_data_file: Any = None,
        output_directory: str | os.PathLike | None = None,
        output_prefix: str = "state_embs",
        output_torch_embs: bool = True,
        encoder: nn.Cell | None = None,
        **renamed: Any,
    ) -> dict[str, Any]:
        """{state: exact mean (or median, per summary_stat) embedding of that state's cells} for the start, goal
        and alt states of `cell_states_to_model`: InSilicoPerturber's `state_embs_dict`; written to
        `{output_directory}/{output_prefix}.pkl` as lists of floats (plain data; the reference pickles tensors).
        The values returned are torch tensors as the reference's when output_torch_embs (the default) and torch is
        installed, numpy arrays otherwise.

        The earlier form `get_state_embs(embs, label)` (an Embeddings and a label column) is `state_embs`."""
        if isinstance(cell_states_to_model, Embeddings):
            warnings.warn(
                "get_state_embs(embs, label) is now state_embs(embs, label); get_state_embs takes the reference's "
                "arguments",
                DeprecationWarning,
                stacklevel=2,
            )
            return self.state_embs(cell_states_to_model, model_directory)  # type: ignore[arg-type]
        values = _renamed(
            "get_state_embs",
            renamed,
            {
                "model_directory": model_directory,
                "input_data_file": input_data_file,
                "output_directory": output_directory,
            },
        )
        if cell_states_to_model is None or values["input_data_file"] is None:
            raise TypeError("get_state_embs() needs cell_states_to_model, model_directory and input_data_file")
        for key in ("state_key", "start_state", "goal_state"):
            if key not in cell_states_to_model:
                raise ValueError(f"cell_states_to_model needs {key!r} (state_key, start_state, goal_state, alt_states)")
        if self.emb_mode == "gene":
            raise ValueError("state embeddings are cell embeddings: use emb_mode 'cell' or 'cls'")
        key = cell_states_to_model["state_key"]
        alt = [s for s in (cell_states_to_model.get("alt_states") or []) if s is not None]
        states = list(dict.fromkeys([cell_states_to_model["start_state"], cell_states_to_model["goal_state"], *alt]))
        if encoder is None:
            encoder = load_encoder(values["model_directory"])
        found = {
            str(state): self._state_summary(
                values["model_directory"], values["input_data_file"], {key: state}, False, encoder
            )
            for state in states
        }
        if values["output_directory"] is not None:
            import pickle

            path = ensure_dir(values["output_directory"]) / f"{output_prefix}.pkl"
            with atomic_file(path) as tmp, open(tmp, "wb") as handle:
                # plain lists of floats: loadable with mindformer_gf.safe_pickle, and InSilicoPerturber takes them
                pickle.dump({k: np.asarray(v, np.float64).tolist() for k, v in found.items()}, handle, protocol=4)
        if output_torch_embs:
            try:
                import torch
            except ImportError:
                return found
            return {k: torch.from_numpy(v) for k, v in found.items()}
        return found

    def run_settings(self, model_dir: str | os.PathLike | None, dataset: Any) -> dict[str, Any]:
        """What `{prefix}_run.json` records of this extraction (and what a resumed shard must match)."""
        return {
            "command": "embed",
            "model": None if model_dir is None else str(model_dir),
            "dataset": dataset_location(dataset),
            "model_type": self.model_type,
            "emb_mode": self.emb_mode,
            "gene_emb_style": self.gene_emb_style,
            "emb_layer": self.emb_layer,
            "emb_label": self.emb_label,
            "filter_data": {**self.filter_data, **dict(getattr(self, "_state_filter", None) or {})},
            "max_ncells": self.max_ncells,
            "forward_batch_size": self.forward_batch_size,
            "summary_stat": self.summary_stat,
            "num_buckets": self.num_buckets,
            "seed": self.seed,
            "device": self.device,
        }

    @staticmethod
    def _gene_embeddings(
        cells: list[np.ndarray],
        outputs: list[np.ndarray],
        special_ids: Sequence[int],
        names: Mapping[int, str],
        style: str = "mean_pool",
    ) -> tuple[np.ndarray, Any]:
        """Each gene's embedding averaged over its occurrences (a gene occurs at most once per cell); with style
        "all" every occurrence, one row per (gene, cell), the cells numbered 0.. per gene ("Identifier")."""
        import pandas as pd

        tokens = np.concatenate(cells)
        states = np.concatenate(outputs).astype(np.float64)
        keep = ~np.isin(tokens, np.asarray(special_ids))
        tokens, states = tokens[keep], states[keep]
        if style == "all":
            order = np.argsort(tokens, kind="stable")  # by gene, then cell order
            tokens, states = tokens[order], states[order]
            _, first = np.unique(tokens, return_index=True)
            starts = np.repeat(first, np.diff(np.append(first, tokens.size)))
            meta = pd.DataFrame(
                {
                    "token_id": tokens,
                    "gene": [names.get(int(t), str(t)) for t in tokens],
                    "Identifier": np.arange(tokens.size) - starts,
                }
            )
            return states.astype(np.float32), meta
        unique, inverse, counts = np.unique(tokens, return_inverse=True, return_counts=True)
        sums = np.zeros((unique.size, states.shape[1]))
        np.add.at(sums, inverse, states)
        matrix = (sums / counts[:, None]).astype(np.float32)
        meta = pd.DataFrame(
            {"token_id": unique, "gene": [names.get(int(t), str(t)) for t in unique], "n_cells": counts}
        )
        return matrix, meta

    def state_embs(self, embs: Embeddings, label: str) -> dict[str, np.ndarray]:
        """{label value: exact mean (or median, per summary_stat) embedding of its cells} (float64)."""
        if label not in embs.meta.columns:
            raise KeyError(f"no label {label!r} among the embeddings' columns {list(embs.meta.columns)}")
        values = embs.meta[label].astype(str).to_numpy()
        reduce = np.median if self.summary_stat and "median" in self.summary_stat else np.mean
        return {state: reduce(embs.matrix[values == state].astype(np.float64), axis=0) for state in sorted(set(values))}

    def _as_embeddings(self, embs: Any) -> Embeddings:
        """An Embeddings, or a table in the reference's layout (dimension columns, then the emb_label columns)."""
        if isinstance(embs, tuple):
            embs = embs[0]  # (embeddings, torch tensor) from output_torch_embs=True
        if isinstance(embs, Embeddings):
            return embs
        import pandas as pd

        if not isinstance(embs, pd.DataFrame):
            raise TypeError(f"plot_embs needs the embeddings extract_embs returned, got {type(embs).__name__}")
        labels = [c for c in embs.columns if c in self.emb_label or c in self.labels_to_plot]
        meta_names = labels + [c for c in ("dataset_row", "token_id", "gene", "n_cells") if c in embs.columns]
        matrix = embs.drop(columns=meta_names).to_numpy(np.float32)
        return Embeddings(matrix, embs[meta_names].reset_index(drop=True), self.emb_mode, self.emb_layer)

    def plot_embs(
        self,
        embs: Any,
        plot_style: str,
        output_directory: str | os.PathLike | None = None,
        output_prefix: str = "embeddings",
        max_ncells_to_plot: int | None = 1000,
        kwargs_dict: Mapping[str, Any] | None = None,
        label: str | None = None,
        **renamed: Any,
    ) -> list[Path]:
        """For each label of labels_to_plot (or the one `label`), a UMAP of the embeddings coloured by it
        (`{prefix}_umap_{label}`), or a clustered heatmap (cells x dimensions) with it as a colour bar
        (`{prefix}_heatmap_{label}`); PNG and PDF. At most max_ncells_to_plot cells (a reproducible sample; capped
        at max_ncells as in the reference; None = all). kwargs_dict: for "umap" the scatter's settings ("size" as
        in scanpy, or matplotlib's), for "heatmap" cmap / vmin / vmax / figsize. `embs`: what extract_embs returned,
        or a table in the reference's layout."""
        if "max_cells" in renamed:
            warnings.warn("plot_embs(max_cells=...) is now max_ncells_to_plot=", DeprecationWarning, stacklevel=2)
            max_ncells_to_plot = renamed.pop("max_cells")
        output_directory = _renamed("plot_embs", renamed, {"output_directory": output_directory})["output_directory"]
        if output_directory is None:
            raise TypeError("plot_embs() needs output_directory")
        if plot_style not in ("umap", "heatmap"):
            raise ValueError(f"plot_style {plot_style!r} is not 'umap' or 'heatmap'")
        embs = self._as_embeddings(embs)
        absent = [x for x in self.labels_to_plot if x not in embs.meta.columns]
        if label is None and absent:
            warnings.warn(f"labels_to_plot {absent} are not columns of the embeddings: not plotted", stacklevel=2)
        labels = [label] if label is not None else [x for x in self.labels_to_plot if x in embs.meta.columns]
        if not labels or any(x not in embs.meta.columns for x in labels):
            raise ValueError(
                f"plot_embs needs a label column of the embeddings (labels_to_plot or label=), one of "
                f"{list(embs.meta.columns)}"
            )
        if max_ncells_to_plot is not None and self.max_ncells is not None:
            max_ncells_to_plot = min(max_ncells_to_plot, self.max_ncells)
        out = ensure_dir(output_directory)
        matrix, meta = embs.matrix, embs.meta
        if max_ncells_to_plot is not None and matrix.shape[0] > max_ncells_to_plot:
            pick = np.sort(np.random.default_rng(self.seed).choice(matrix.shape[0], max_ncells_to_plot, replace=False))
            matrix, meta = matrix[pick], meta.iloc[pick]
        options = dict(kwargs_dict or {})
        written: list[Path] = []
        title = f"{embs.mode} embeddings, layer {embs.layer}"
        for name in labels:
            values = meta[name].astype(str).to_numpy()
            stem = out / f"{output_prefix}_{plot_style}_{name}"
            if plot_style == "umap":
                written += plot_umap(matrix, values, name, stem, self.seed, title, options)
            else:
                written += plot_heatmap(matrix, values, name, stem, title, options)
        return written


def _token_names(dataset: Any, token_dictionary_file: str | os.PathLike | None = None) -> dict[int, str]:
    """token id -> Ensembl ID, from the dataset's token dictionary (the shipped V1 one or the file; else the ids)."""
    try:
        return {v: k for k, v in token_dictionary_for(dataset, token_dictionary_file).items()}
    except (ValueError, OSError):
        return {}


def _palette(n: int) -> list:
    plt = matplotlib_pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


HEATMAP_OPTIONS = ("cmap", "vmin", "vmax", "figsize")


def plot_umap(
    matrix: np.ndarray,
    values: np.ndarray,
    label: str,
    stem: str | os.PathLike,
    seed: int = 0,
    title: str = "",
    options: Mapping[str, Any] | None = None,
) -> list[Path]:
    """options: the scatter's settings; "size" as in scanpy's umap (the reference's kwargs_dict), or matplotlib's."""
    import umap

    scatter = {"s": 8, **{("s" if k == "size" else k): v for k, v in dict(options or {}).items()}}

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
        axis.scatter(coords[chosen, 0], coords[chosen, 1], color=colour, label=f"{state} ({chosen.sum()})", **scatter)
    axis.set_xlabel("UMAP 1")
    axis.set_ylabel("UMAP 2")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title or "embeddings")
    axis.legend(title=label, fontsize=8, title_fontsize=9, markerscale=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(figure, stem)


def plot_heatmap(
    matrix: np.ndarray,
    values: np.ndarray,
    label: str,
    stem: str | os.PathLike,
    title: str = "",
    options: Mapping[str, Any] | None = None,
) -> list:
    """Cells (rows, ordered by average-linkage clustering) x embedding dimensions, z-scored per dimension, with a
    colour bar of `label` beside the rows and a dendrogram above. options: cmap, vmin, vmax, figsize."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(HEATMAP_OPTIONS))
    if unknown:
        raise ValueError(f"kwargs_dict {unknown} are not heatmap settings here; use {HEATMAP_OPTIONS}")
    from scipy.cluster.hierarchy import dendrogram, leaves_list, linkage

    plt = matplotlib_pyplot()
    scaled = (matrix - matrix.mean(0)) / (matrix.std(0) + 1e-8)
    row_order = leaves_list(linkage(scaled, method="average", metric="euclidean"))
    column_link = linkage(scaled.T, method="average", metric="euclidean")
    column_order = leaves_list(column_link)
    states = sorted(set(values))
    colours = _palette(len(states))
    index = {s: i for i, s in enumerate(states)}
    figure = plt.figure(figsize=options.get("figsize", (9, 7)))
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
        cmap=options.get("cmap", "RdBu_r"),
        vmin=options.get("vmin", -3),
        vmax=options.get("vmax", 3),
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
