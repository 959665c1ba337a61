"""`InSilicoPerturber`: the reference's in silico perturbation (delete, overexpress, inhibit, activate genes in a
cell's rank encoding and measure how its embedding moves), with the reference's arguments and semantics.

    from mindformer_gf.tasks import InSilicoPerturber
    isp = InSilicoPerturber(perturb_type="delete", genes_to_perturb="all", emb_mode="cell", max_ncells=10,
                            cell_states_to_model={"state_key": "cell_type", "start_state": "CD14+ Monocyte",
                                                  "goal_state": "Dendritic", "alt_states": []},
                            state_embs_dict=state_embs, emb_label=["cell_type"])
    table = isp.perturb_data("model_dir", "pbmc.dataset", "out", "pbmc_delete")   # out/pbmc_delete.parquet/

What is stored (the reference's semantics, checked against its outputs; output.py describes the table):
- without `cell_states_to_model`, affected "cell_emb": the MEAN over the cell's non-perturbed genes of the cosine
  between each gene's embedding in the perturbed cell and in the original (matched by gene, not position), not the
  cosine of pooled embeddings; in the cls modes, the cosine of the two <cls> embeddings;
- with `cell_states_to_model`, affected = each state s: cos(perturbed, s) - cos(original, s), where the original
  embedding is the mean over ALL its genes (the perturbed ones included) and the perturbed one the mean over the
  perturbed cell's genes; only cells of the start state are perturbed;
- `emb_mode` "cell_and_gene" / "cls_and_gene" also stores, per affected gene, that gene's cosine.

Faster than the reference by construction: no MLM logits, the encoder stops at `emb_layer`, each original cell runs
once, perturbed copies share full batches across cells, and a few padded widths bound the graph compilations.
A group whose genes occur in different numbers across the cells works with any batch size. Under msrun each rank
perturbs whole windows of the plan one process makes (cells whose originals and copies share batches), balanced by
genes squared (`infer.sharded`), and rank 0 merges the table: one process's, bit for bit.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.data import corpus_lengths, read_cells
from mindformer_gf.data.buckets import choose_bucket_widths
from mindformer_gf.finetune.labels import column_values, filter_rows
from mindformer_gf.finetune.task_model import encoder_of, load_encoder
from mindformer_gf.infer.datasets import open_dataset, special_token_ids
from mindformer_gf.infer.sharded import ShardedInference, cell_costs, input_stamps
from mindformer_gf.io import ensure_dir, read_json
from mindformer_gf.tasks.embeddings import EmbExtractor
from mindformer_gf.tasks.perturb.engine import Job, PerturbationEngine
from mindformer_gf.tasks.perturb.output import (
    RUN_FILE,
    PerturbationInputError,
    ShardedTable,
    finished_cells,
    jsonable,
    table_dir,
)
from mindformer_gf.tasks.perturb.plan import PERTURB_TYPES, CellLayout, cell_perturbations, count_perturbations
from mindformer_gf.tokenizer import load_gene_dictionaries, read_dictionary_file, token_dictionary_for
from mindformer_gf.train.device import prepare_device
from mindformer_gf.train.distributed import ParallelContext, launched_context

EMB_MODES = ("cell", "cls", "cell_and_gene", "cls_and_gene")
MODEL_TYPES = (
    "Pretrained",
    "GeneClassifier",
    "CellClassifier",
    "MTLCellClassifier",
    "Pretrained-Quantized",
    "MTLCellClassifier-Quantized",
)
# the reference loads these with bitsandbytes 8-bit weights for inference (CUDA-only); here: full precision, warned
QUANTIZED_MODEL_TYPES = ("Pretrained-Quantized", "MTLCellClassifier-Quantized")
SHUFFLE_SEED = 42  # the reference shuffles with seed 42 before taking max_ncells


class GeneNames:
    """Ensembl ID <-> token id (the dataset's token dictionary) and symbol -> Ensembl ID (the name dictionary)."""

    def __init__(self, token_dictionary: Mapping[str, int], name_to_id: Mapping[str, str]) -> None:
        self.token = {str(k): int(v) for k, v in token_dictionary.items()}
        self.ensembl = {v: k for k, v in self.token.items()}
        self.name_to_id = {str(k).upper(): str(v) for k, v in name_to_id.items()}
        self.id_to_name = {v: k for k, v in name_to_id.items()}

    @classmethod
    @functools.lru_cache(maxsize=4)
    def shipped(cls) -> GeneNames:
        """The shipped V1 token and gene-name dictionaries (read once per process)."""
        dictionaries = load_gene_dictionaries("V1", load_gene_names=True)
        return cls(dictionaries.token, dictionaries.gene_names or {})

    @classmethod
    def load(
        cls,
        dataset: Any = None,
        token_dictionary_file: str | None = None,
        gene_name_id_dictionary_file: str | None = None,
    ) -> GeneNames:
        if token_dictionary_file is None and gene_name_id_dictionary_file is None:
            if dataset is not None:
                token_dictionary_for(dataset)  # checks that the dataset was tokenized with the shipped dictionary
            return cls.shipped()
        if dataset is not None:
            token = token_dictionary_for(dataset, token_dictionary_file)
        elif token_dictionary_file is not None:
            token = read_dictionary_file(token_dictionary_file, "token")[0]
        else:
            token = load_gene_dictionaries("V1").token
        if gene_name_id_dictionary_file is None:
            names = load_gene_dictionaries("V1", load_gene_names=True).gene_names or {}
        else:
            names = read_dictionary_file(gene_name_id_dictionary_file, "gene_name")[0]
        return cls(token, names)

    def token_of(self, gene: str) -> int:
        """Token id of an Ensembl ID or a gene symbol; an unknown one is an input error naming it."""
        if gene in self.token:
            return self.token[gene]
        ensembl = self.name_to_id.get(str(gene).upper())
        if ensembl is not None and ensembl in self.token:
            return self.token[ensembl]
        raise PerturbationInputError(
            f"unknown gene {gene!r}: neither an Ensembl ID of the token dictionary nor a gene symbol of the name "
            "dictionary (give Ensembl IDs such as ENSG00000141510, or pass gene_name_id_dictionary_file / --gene-names)"
        )

    def id_of(self, token: int) -> str:
        return self.ensembl.get(int(token), str(int(token)))

    def name_of(self, ensembl_id: str) -> str | None:
        return self.id_to_name.get(ensembl_id)


def get_state_embs(
    cell_states_to_model: Mapping[str, Any],
    model_directory: str | os.PathLike,
    input_data_file: Any,
    emb_mode: str = "cell",
    emb_layer: int = -1,
    max_ncells: int | None = 1000,
    forward_batch_size: int = 32,
    summary_stat: str = "exact_mean",
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """{state: mean embedding of that state's cells} for every state of `cell_states_to_model` (start, goal and
    alt states), as the reference's `EmbExtractor.get_state_embs`; the `state_embs_dict` of InSilicoPerturber."""
    states = possible_states(cell_states_to_model)
    key = cell_states_to_model["state_key"]
    extractor = EmbExtractor(
        emb_mode="cls" if emb_mode.startswith("cls") else "cell",
        emb_layer=emb_layer,
        emb_label=[key],
        filter_data={key: states},
        max_ncells=max_ncells,
        forward_batch_size=forward_batch_size,
        summary_stat=summary_stat,
        progress=progress,
    )
    # whole on every rank under msrun: each rank's share of the perturbation needs every state
    embs = extractor.extract_embs(model_directory, input_data_file, parallel=ParallelContext())
    found = extractor.state_embs(embs, key)
    missing = [s for s in states if s not in found]
    if missing:
        raise PerturbationInputError(f"no cell of state(s) {missing} in column {key!r}")
    return {s: found[s] for s in states}


def possible_states(cell_states_to_model: Mapping[str, Any]) -> list[str]:
    alt = [s for s in (cell_states_to_model.get("alt_states") or []) if s is not None]
    states = [cell_states_to_model["start_state"], cell_states_to_model["goal_state"], *alt]
    return [str(s) for s in dict.fromkeys(states)]


class InSilicoPerturber:
    """The reference's InSilicoPerturber (see the module docstring for what is computed and stored).

    Reference arguments: perturb_type, perturb_rank_shift, genes_to_perturb ("all" or a list of Ensembl IDs or
    symbols, perturbed together), combos (0 / 1 with anchor_gene), anchor_gene, model_type, num_classes, emb_mode,
    cell_emb_style, filter_data, cell_states_to_model, state_embs_dict, max_ncells, cell_inds_to_perturb, emb_layer,
    forward_batch_size, nproc (unused), model_version, token_dictionary_file, clear_mem_ncells. This package adds:
    emb_label (columns carried into the table), gene_name_id_dictionary_file, output_format ("parquet" or "csv": the
    CSV in addition), num_buckets, shard_cells, progress, device.

    model_type: the encoder of the model directory is used whatever the type (pretrained, classifier, or this
    package's multitask model: MTLClassifier's saved `GeneformerMultiTask/`); the "-Quantized" types, 8-bit
    bitsandbytes inference in the reference (CUDA-only), run the full-precision model with a one-line warning.

    model_version: "V2" (the reference's default) or "V1"; as in the reference, "V1" turns emb_mode "cls" into
    "cell" and "cls_and_gene" into "cell_and_gene" (V1 models have no <cls>), with a warning. The token dictionary
    itself is the one recorded with the dataset (or token_dictionary_file).
    clear_mem_ncells: the reference writes its results every clear_mem_ncells / 10 cells; here that is the number of
    cells per written shard of the table (`shard_cells`, which overrides it when given).

    The reference's steps inside perturb_data are public as there: apply_additional_filters (the selection), the
    four isp_perturb_* paths (one selected dataset, one model, one layer -> the same table as perturb_data's) and
    update_perturbation_dictionary (its result dictionary, for code that builds one).
    """

    def __init__(
        self,
        perturb_type: str = "delete",
        perturb_rank_shift: int | None = None,
        genes_to_perturb: str | Sequence[str] = "all",
        combos: int = 0,
        anchor_gene: str | None = None,
        model_type: str = "Pretrained",
        num_classes: int = 0,
        emb_mode: str = "cls",
        cell_emb_style: str = "mean_pool",
        filter_data: Mapping[str, Sequence[Any]] | None = None,
        cell_states_to_model: Mapping[str, Any] | None = None,
        state_embs_dict: Mapping[str, Any] | None = None,
        max_ncells: int | None = None,
        cell_inds_to_perturb: str | Mapping[str, int] = "all",
        emb_layer: int = -1,
        forward_batch_size: int = 100,
        nproc: int = 4,
        model_version: str = "V2",
        token_dictionary_file: str | None = None,
        clear_mem_ncells: int = 1000,
        gene_name_id_dictionary_file: str | None = None,
        emb_label: Sequence[str] | None = None,
        output_format: str = "parquet",
        num_buckets: int = 4,
        shard_cells: int | None = None,
        progress: bool = True,
        device: str = "auto",
    ) -> None:
        def bad(message: str) -> PerturbationInputError:
            return PerturbationInputError(message)

        if perturb_type not in PERTURB_TYPES:
            raise bad(f"perturb_type {perturb_type!r} is not one of {PERTURB_TYPES}")
        if perturb_type in ("inhibit", "activate"):
            if perturb_rank_shift not in (1, 2, 3):
                raise bad(f"perturb_type {perturb_type!r} needs perturb_rank_shift 1, 2 or 3 (quartiles to move)")
        if emb_mode not in EMB_MODES:
            raise bad(f"emb_mode {emb_mode!r} is not one of {EMB_MODES}")
        if model_version not in ("V1", "V2"):
            raise bad(f"model_version must be 'V1' or 'V2', got {model_version!r}")
        if model_version == "V1" and emb_mode.startswith("cls"):
            warnings.warn(
                f"model_version V1: emb_mode {emb_mode!r} becomes {emb_mode.replace('cls', 'cell')!r} (V1 models have "
                "no <cls> token), as in the reference",
                UserWarning,
                stacklevel=2,
            )
            emb_mode = emb_mode.replace("cls", "cell")
        if int(clear_mem_ncells) < 1:
            raise bad(f"clear_mem_ncells must be at least 1, got {clear_mem_ncells}")
        if cell_emb_style != "mean_pool":
            raise bad(f"cell_emb_style {cell_emb_style!r}: only 'mean_pool' exists (as in the reference)")
        if model_type not in MODEL_TYPES:
            raise bad(f"model_type {model_type!r} is not one of {MODEL_TYPES}")
        if model_type in QUANTIZED_MODEL_TYPES:
            warnings.warn(
                f"model_type {model_type!r}: bitsandbytes 8-bit quantization is CUDA-only, so the model runs in full "
                f"precision here (the values 8-bit inference approximates); same as model_type "
                f"{model_type.removesuffix('-Quantized')!r}",
                UserWarning,
                stacklevel=2,
            )
        if emb_layer not in (-1, 0):
            raise bad(f"emb_layer must be -1 (second-to-last layer) or 0 (last layer), got {emb_layer}")
        if combos not in (0, 1):
            raise bad(f"combos must be 0 or 1, got {combos}")
        if combos == 1 and anchor_gene is None:
            raise bad("combos=1 perturbs anchor_gene with each other gene: give anchor_gene")
        if combos == 1 and genes_to_perturb != "all":
            raise bad("combos=1 pairs anchor_gene with every other gene of each cell: set genes_to_perturb='all'")
        if combos == 1 and perturb_type not in ("delete", "overexpress"):
            raise bad("combos=1 works with perturb_type 'delete' or 'overexpress'")
        if isinstance(genes_to_perturb, str):
            if genes_to_perturb != "all":
                genes_to_perturb = [genes_to_perturb]
        else:
            genes_to_perturb = [str(g) for g in genes_to_perturb]
            if not genes_to_perturb:
                raise bad("genes_to_perturb is empty: give 'all' or a list of genes")
        if perturb_type in ("inhibit", "activate") and genes_to_perturb != "all" and len(genes_to_perturb) > 1:
            raise bad(f"{perturb_type} moves one gene at a time: give genes_to_perturb='all' or a single gene")
        if cell_states_to_model is not None:
            for key in ("state_key", "start_state", "goal_state"):
                if key not in cell_states_to_model:
                    raise bad(f"cell_states_to_model needs {key!r} (state_key, start_state, goal_state, alt_states)")
            if state_embs_dict is None:
                raise bad("cell_states_to_model needs state_embs_dict (get_state_embs computes it)")
            missing = [s for s in possible_states(cell_states_to_model) if s not in state_embs_dict]
            if missing:
                raise bad(f"state_embs_dict has no embedding for state(s) {missing}")
        if output_format not in ("parquet", "csv"):
            raise bad(f"output_format must be 'parquet' or 'csv', got {output_format!r}")
        if cell_inds_to_perturb != "all" and not (
            isinstance(cell_inds_to_perturb, Mapping) and {"start", "end"} <= set(cell_inds_to_perturb)
        ):
            raise bad("cell_inds_to_perturb must be 'all' or {'start': i, 'end': j}")
        self.perturb_type = perturb_type
        self.perturb_rank_shift = perturb_rank_shift
        self.genes_to_perturb = genes_to_perturb
        self.combos = combos
        self.anchor_gene = anchor_gene
        self.model_type, self.num_classes = model_type, num_classes
        self.emb_mode = emb_mode
        self.filter_data = dict(filter_data or {})
        self.cell_states_to_model = dict(cell_states_to_model) if cell_states_to_model else None
        self.state_embs_dict = (
            {str(k): np.asarray(v, np.float64).reshape(-1) for k, v in state_embs_dict.items()}
            if state_embs_dict is not None
            else None
        )
        self.max_ncells = max_ncells
        self.cell_inds_to_perturb = cell_inds_to_perturb
        self.emb_layer = emb_layer
        self.forward_batch_size = int(forward_batch_size)
        self.token_dictionary_file = token_dictionary_file
        self.gene_name_id_dictionary_file = gene_name_id_dictionary_file
        self.emb_label = list(emb_label or [])
        self.output_format = output_format
        self.model_version = model_version
        self.clear_mem_ncells = int(clear_mem_ncells)
        # the reference flushes its results every clear_mem_ncells / 10 cells: our shard of the table
        self.num_buckets = num_buckets
        self.shard_cells = int(shard_cells) if shard_cells is not None else max(1, self.clear_mem_ncells // 10)
        self.progress, self.device = progress, device
        self.tokens_to_perturb: list[int] | None = None  # the group's token ids, once a run has resolved them

    # ---- selection -------------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one."""
        keys = (
            "perturb_type perturb_rank_shift genes_to_perturb combos anchor_gene emb_mode filter_data "
            "cell_states_to_model max_ncells cell_inds_to_perturb emb_layer emb_label"
        ).split()
        return {k: getattr(self, k) for k in keys}

    def select_rows(self, dataset: Any, names: GeneNames, group: list[int] | None, anchor: int | None) -> np.ndarray:
        """Dataset rows to perturb, in the reference's order: filtered, shuffled (seed 42), capped at max_ncells,
        sorted by length descending (stable), then sliced by cell_inds_to_perturb."""
        filters = dict(self.filter_data)
        if self.cell_states_to_model is not None:
            key, start = self.cell_states_to_model["state_key"], str(self.cell_states_to_model["start_state"])
            if key not in dataset.column_names:
                raise PerturbationInputError(
                    f"the dataset has no state column {key!r} (cell_states_to_model['state_key']); columns: "
                    f"{dataset.column_names}"
                )
            present = {str(v) for v in column_values(dataset, key)}
            missing = [s for s in possible_states(self.cell_states_to_model) if s not in present]
            if missing:
                raise PerturbationInputError(
                    f"state(s) {missing} do not occur in column {key!r} (values: {sorted(present)[:10]})"
                )
            filters[key] = [start]
        rows = filter_rows(dataset, filters) if filters else np.arange(len(dataset))
        needed = [anchor] if anchor is not None else (group if self.perturb_type == "delete" else None)
        if needed:
            has = np.asarray([np.isin(needed, c).all() for c in _cells_in_blocks(dataset, rows)], bool)
            if not has.any():
                what = "anchor_gene" if anchor is not None else "genes_to_perturb"
                ids = "+".join(names.id_of(t) for t in needed)
                raise PerturbationInputError(f"no selected cell holds {what} {ids}: check the gene and filter_data")
            rows = rows[has]
        order = np.random.default_rng(SHUFFLE_SEED).permutation(rows.size)
        rows = rows[order]
        if self.max_ncells is not None and rows.size > self.max_ncells:
            rows = rows[: self.max_ncells]
        lengths = corpus_lengths(dataset)[rows]
        rows = rows[np.argsort(-lengths, kind="stable")]
        if self.cell_inds_to_perturb != "all":
            rows = rows[int(self.cell_inds_to_perturb["start"]) : int(self.cell_inds_to_perturb["end"])]
        if rows.size == 0:
            raise PerturbationInputError("no cell left to perturb after filter_data, max_ncells and cell_inds")
        return rows

    def apply_additional_filters(self, filtered_input_data: Any) -> Any:
        """The reference's selection step: the cells perturb_data would perturb, as a dataset in that order
        (filter_data, start-state cells, cells holding the genes to delete / the anchor gene, max_ncells after a
        seeded shuffle, longest first, then cell_inds_to_perturb)."""
        dataset = filtered_input_data
        names = GeneNames.load(dataset, self.token_dictionary_file, self.gene_name_id_dictionary_file)
        group, anchor = self.resolve_genes(names, dataset)
        return dataset.select(self.select_rows(dataset, names, group, anchor))

    def resolve_genes(self, names: GeneNames, dataset: Any) -> tuple[list[int] | None, int | None]:
        """(group token ids or None for "all", anchor token id or None); genes occurring in no cell are errors."""
        group = None if self.genes_to_perturb == "all" else [names.token_of(g) for g in self.genes_to_perturb]
        anchor = names.token_of(self.anchor_gene) if self.anchor_gene is not None else None
        # overexpressing a gene no cell expresses is meaningful; deleting or moving one is not
        wanted = [anchor] if anchor is not None else []
        if self.perturb_type != "overexpress":
            wanted += group or []
        if wanted:
            found = np.zeros(len(wanted), bool)
            for cell in _cells_in_blocks(dataset, np.arange(len(dataset))):
                found |= np.isin(wanted, cell)
                if found.all():
                    break
            absent = [names.id_of(t) for t, f in zip(wanted, found, strict=True) if not f]
            if absent:
                raise PerturbationInputError(
                    f"gene(s) {absent} occur in no cell of the dataset: nothing to {self.perturb_type} (check the IDs)"
                )
        return group, anchor

    # ---- the run ---------------------------------------------------------------------------------------------------
    def perturb_data(
        self,
        model_directory: str | os.PathLike,
        input_data_file: Any,
        output_directory: str | os.PathLike,
        output_prefix: str,
        resume: bool = False,
        encoder: Any = None,
        parallel: ParallelContext | None = None,
        shard_timeout: float = 1800.0,
    ) -> Path | None:
        """Perturb the selected cells; returns the table's directory `{output_directory}/{output_prefix}.parquet`
        (plus `{output_prefix}.csv` with output_format="csv", and `{output_prefix}_run.json`: settings, ranks,
        seconds). `resume=True` continues an interrupted run; `encoder` (the model directory's, already loaded)
        reuses its compiled graphs across runs.

        Under msrun (or with `parallel` of several ranks) each rank perturbs whole windows of one process's plan,
        balanced by genes squared, into its own table under `{output_prefix}_shards/`; rank 0 merges them into the
        table one process writes (same rows, same order, same bits) and returns its directory, the other ranks
        return None."""
        prepare_device(self.device)
        encoder = encoder if encoder is not None else load_encoder(model_directory)
        dataset, names, group, anchor = self._open_inputs(encoder, input_data_file)
        selected = self.select_rows(dataset, names, group, anchor)
        layer_index = encoder.config.num_hidden_layers + self.emb_layer
        return self._perturb_rows(
            encoder,
            model_directory,
            dataset,
            selected,
            names,
            group,
            anchor,
            layer_index,
            output_directory,
            output_prefix,
            resume,
            parallel,
            shard_timeout,
        )

    def _open_inputs(self, encoder: Any, input_data: Any) -> tuple[Any, GeneNames, list[int] | None, int | None]:
        """(dataset checked against the model, gene names, group token ids or None, anchor token id or None)."""
        dataset = open_dataset(input_data, encoder.config.vocab_size)
        special = special_token_ids(dataset)
        cls_id = special.get("<cls>")
        if self.emb_mode.startswith("cls"):
            first = read_cells(dataset, [0])[0] if len(dataset) else np.zeros(0, np.int64)
            if cls_id is None or first.size == 0 or first[0] != cls_id:
                raise PerturbationInputError(
                    f"emb_mode {self.emb_mode!r} (the default, for V2 models) needs cells that start with <cls> (a "
                    f"V2 dataset); for this dataset pass model_version='V1' or emb_mode "
                    f"'{self.emb_mode.replace('cls', 'cell')}'"
                )
        for label in self.emb_label:
            if label not in dataset.column_names:
                raise PerturbationInputError(
                    f"no label column {label!r} in the dataset; columns: {dataset.column_names}"
                )
        names = GeneNames.load(dataset, self.token_dictionary_file, self.gene_name_id_dictionary_file)
        group, anchor = self.resolve_genes(names, dataset)
        self.tokens_to_perturb = group  # the reference's attribute: the group's token ids (None for "all")
        return dataset, names, group, anchor

    def _perturb_rows(
        self,
        encoder: Any,
        model_directory: str | os.PathLike | None,
        dataset: Any,
        selected: np.ndarray,
        names: GeneNames,
        group: list[int] | None,
        anchor: int | None,
        layer_index: int,
        output_directory: str | os.PathLike,
        output_prefix: str,
        resume: bool,
        parallel: ParallelContext | None,
        shard_timeout: float,
    ) -> Path | None:
        """Perturb the dataset rows `selected` (in that order) reading hidden state `layer_index`: the run of
        perturb_data and of the reference's four isp_perturb_* paths."""
        config = encoder.config
        special = special_token_ids(dataset)
        cls_id, eos_id = special.get("<cls>"), special.get("<eos>")
        settings = self.settings()
        if layer_index != config.num_hidden_layers + self.emb_layer:
            settings["layer_to_quant"] = int(layer_index)
        out = ensure_dir(output_directory)
        final_dir = table_dir(out, output_prefix)
        # read only: under msrun every rank skips the same finished cells, and rank 0 alone writes the table
        done = finished_cells(final_dir, settings, resume)
        rows = np.asarray([r for r in selected if int(r) not in done], np.int64)
        max_length = config.max_position_embeddings
        # widths from every selected cell, not a rank's share nor what is left: a cell gets the same padding always
        extra = len(group) if group is not None and self.perturb_type == "overexpress" else 1
        lengths = corpus_lengths(dataset)
        buckets = choose_bucket_widths(np.minimum(lengths[selected] + extra, max_length), self.num_buckets, max_length)
        states = self.cell_states_to_model is not None
        compare = (not states and self.emb_mode == "cell") or self.emb_mode.endswith("_and_gene")
        engine = PerturbationEngine(
            encoder,
            layer_index,
            "cls" if self.emb_mode.startswith("cls") else "mean",
            compare,
            self.forward_batch_size,
            buckets,
            special.get("<pad>", 0),
            sorted(set(special.values())),
        )
        labels = {c: column_values(dataset, c) for c in self.emb_label}
        context = _RunContext(self, engine, names, group, anchor, max_length, labels)
        parallel = parallel or launched_context()
        if parallel is None:
            raise RuntimeError("msrun's scheduler process has no share of the cells: return before perturbing")
        if rows.size == 0:  # a resumed run that had finished
            if not parallel.is_main:
                return None
            table = ShardedTable(final_dir, self.emb_label, settings, True)
            return self._write_outputs(table, out, output_prefix)
        # The plan of one process, from every selected cell (finished ones too): windows of consecutive cells whose
        # originals and perturbed copies are batched together. Ranks and resumed runs take whole windows, so every
        # copy runs in the batch (same rows, same width) it has in one uninterrupted process, bit for bit.
        counts = [
            count_perturbations(CellLayout.of(c, cls_id, eos_id), self.perturb_type, group, anchor)
            for c in _cells_in_blocks(dataset, selected)
        ]
        windows = [np.asarray(w, np.int64) for w in _windows(counts, self.forward_batch_size)]
        job = ShardedInference(
            cell_costs(lengths[selected], "genes_squared"),
            out,
            output_prefix,
            settings,
            inputs=input_stamps(model_directory, dataset),
            cost_model="genes_squared",
            parallel=parallel,
            resume=resume,
            timeout=shard_timeout,
            progress=self.progress,
            desc=self.perturb_type,
            groups=windows,
        )

        written: list[ShardedTable] = []

        def rank_table() -> ShardedTable:
            """One process writes the table itself; a rank of several writes its own (per-cell resume within the
            share), kept until rank 0 has merged it."""
            if not job.parallel.distributed:
                written.append(ShardedTable(final_dir, self.emb_label, settings, resume, self.shard_cells))
                return written[0]
            own = rank_table_dir(job, job.parallel.rank)
            own_settings = {**settings, "fingerprint": job.fingerprint}
            if own.exists() and (not resume or read_json_or_none(own / RUN_FILE) != jsonable(own_settings)):
                shutil.rmtree(own)  # another launch's cells
            return ShardedTable(own, self.emb_label, own_settings, True, shard_cells=self.shard_cells)

        def compute(positions: np.ndarray, advance: Callable[[int], None]) -> list[np.ndarray]:
            table = rank_table()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                for w in job.group_shares[job.parallel.rank]:
                    window = selected[windows[w]]
                    # finished cells (in the final table, or this rank's from an interrupted launch) are not
                    # written again; a window with any cell left runs whole, so the others keep their batches
                    finished = {int(r) for r in window if int(r) in done or int(r) in table.done}
                    if len(finished) < window.size:
                        layouts = [CellLayout.of(c, cls_id, eos_id) for c in read_cells(dataset, window)]
                        context.run_window(table, window, layouts, [counts[i] for i in windows[w]], finished)
                    advance(window.size)
            table.flush()
            return [selected[positions]]

        if job.run(compute) is None:
            return None  # another rank's share: rank 0 merges
        if job.parallel.distributed:
            import pandas as pd

            table = ShardedTable(final_dir, self.emb_label, settings, resume, shard_cells=self.shard_cells)
            cells: list[Any] = []
            for cell_rows in merged_rank_tables(job, rows):
                cells.append(cell_rows)
                if len(cells) == self.shard_cells:
                    table.add_rows(pd.concat(cells))
                    cells = []
            if cells:
                table.add_rows(pd.concat(cells))
        else:
            (table,) = written
        return self._write_outputs(table, out, output_prefix, job)

    def _write_outputs(self, table: ShardedTable, out: Path, prefix: str, job: Any = None) -> Path:
        files = [table.directory]
        if self.output_format == "csv":
            files.append(table.write_csv(out / f"{prefix}.csv"))
        if job is not None:
            job.finish(files)
        return table.directory

    # ---- the reference's steps inside perturb_data ----------------------------------------------------------------
    def isp_perturb_set(
        self, model: Any, filtered_input_data: Any, layer_to_quant: int, output_path_prefix: str | os.PathLike
    ) -> Path | None:
        """The reference's group path (genes_to_perturb a list, emb_mode "cell" / "cell_and_gene"): perturb every
        cell of `filtered_input_data` as it is (no further selection; apply_additional_filters makes perturb_data's
        selection) with `model` (a model directory, or an encoder already loaded: `load_encoder(dir)` or a task
        model holding one), reading hidden state `layer_to_quant` (0 = embeddings output, n = last layer; the
        reference's `num_hidden_layers + emb_layer`). Writes and returns `{output_path_prefix}.parquet/`, the table
        perturb_data writes (not the reference's pickles), with `cell` = the row of `filtered_input_data`: for
        `apply_additional_filters(data)` and that layer, perturb_data's table row for row, value for value."""
        return self._reference_path("isp_perturb_set", model, filtered_input_data, layer_to_quant, output_path_prefix)

    def isp_perturb_set_special(
        self, model: Any, filtered_input_data: Any, layer_to_quant: int, output_path_prefix: str | os.PathLike
    ) -> Path | None:
        """isp_perturb_set for the reference's models with special tokens (emb_mode "cls" / "cls_and_gene": <cls>
        embeddings, cells framed by <cls> ... <eos>)."""
        return self._reference_path(
            "isp_perturb_set_special", model, filtered_input_data, layer_to_quant, output_path_prefix
        )

    def isp_perturb_all(
        self, model: Any, filtered_input_data: Any, layer_to_quant: int, output_path_prefix: str | os.PathLike
    ) -> Path | None:
        """isp_perturb_set's counterpart for genes_to_perturb="all": each gene of each cell in turn (with
        anchor_gene under combos=1), emb_mode "cell" / "cell_and_gene"."""
        return self._reference_path("isp_perturb_all", model, filtered_input_data, layer_to_quant, output_path_prefix)

    def isp_perturb_all_special(
        self, model: Any, filtered_input_data: Any, layer_to_quant: int, output_path_prefix: str | os.PathLike
    ) -> Path | None:
        """isp_perturb_all for models with special tokens (emb_mode "cls" / "cls_and_gene")."""
        return self._reference_path(
            "isp_perturb_all_special", model, filtered_input_data, layer_to_quant, output_path_prefix
        )

    def _reference_path(
        self, name: str, model: Any, data: Any, layer_to_quant: int, output_path_prefix: str | os.PathLike
    ) -> Path | None:
        group_mode, special = name.startswith("isp_perturb_set"), name.endswith("_special")
        right = reference_path_name(self.genes_to_perturb != "all", self.emb_mode.startswith("cls"))
        if right != name:
            raise PerturbationInputError(
                f"{name} is the reference's path for genes_to_perturb "
                f"{'a list' if group_mode else repr('all')} with emb_mode "
                f"{'cls/cls_and_gene' if special else 'cell/cell_and_gene'}; with genes_to_perturb="
                f"{self.genes_to_perturb!r} and emb_mode={self.emb_mode!r} call {right} (or perturb_data, which "
                "chooses)"
            )
        prepare_device(self.device)
        directory = model if isinstance(model, (str, os.PathLike)) else None
        encoder = load_encoder(directory) if directory is not None else _encoder_of(model)
        layers = int(encoder.config.num_hidden_layers)
        if isinstance(layer_to_quant, bool) or not isinstance(layer_to_quant, (int, np.integer)):
            raise PerturbationInputError(f"layer_to_quant must be an int in 0..{layers}, got {layer_to_quant!r}")
        if not 0 <= int(layer_to_quant) <= layers:
            raise PerturbationInputError(
                f"layer_to_quant {layer_to_quant} is not a hidden state of this {layers}-layer model: give 0 "
                f"(embeddings) .. {layers} (last layer); perturb_data uses {layers} + emb_layer"
            )
        dataset, names, group, anchor = self._open_inputs(encoder, data)
        if len(dataset) == 0:
            raise PerturbationInputError("filtered_input_data holds no cells: nothing to perturb")
        prefix = Path(output_path_prefix)
        return self._perturb_rows(
            encoder, directory, dataset, np.arange(len(dataset), dtype=np.int64), names, group, anchor,
            int(layer_to_quant), prefix.parent, prefix.name, False, None, 1800.0,
        )  # fmt: skip

    def update_perturbation_dictionary(
        self, cos_sims_dict: dict, cos_sims_data: Any, gene_list: Sequence[Any] | None = None
    ) -> dict:
        """The reference's result dictionary step: append cosine similarities (`cos_sims_data`: an array, tensor or
        list, one value per cell or per perturbed gene) to `cos_sims_dict` under the reference's keys, and return
        the same (updated) dictionary.

        - genes_to_perturb a list (the reference's perturb_group): every value of `cos_sims_data` (squeezed) goes
          to `(group, "cell_emb")`, group = the token id of the gene, or the tuple of the token ids of several;
        - genes_to_perturb "all": value i goes to `(gene_list[i], "cell_emb")`.
        With `cell_states_to_model` the reference calls it once per state, on that state's dictionary and values.
        The token ids are those of the last run's dataset, or of token_dictionary_file / the shipped dictionary."""
        data = np.asarray(cos_sims_data.asnumpy() if hasattr(cos_sims_data, "asnumpy") else cos_sims_data)
        if gene_list is not None and (data.ndim == 0 or data.shape[0] != len(gene_list)):
            raise PerturbationInputError(
                f"cos_sims_data has {data.shape[0] if data.ndim else 'no'} rows but gene_list {len(gene_list)} "
                "genes: give one gene per row"
            )
        if self.genes_to_perturb != "all":
            tokens = self.tokens_to_perturb
            if tokens is None:
                names = GeneNames.load(None, self.token_dictionary_file, self.gene_name_id_dictionary_file)
                tokens = [names.token_of(g) for g in self.genes_to_perturb]
            key = tuple(tokens) if len(tokens) > 1 else tokens[0]
            values = np.squeeze(data).tolist()
            values = values if isinstance(values, list) else [values]  # one cell: a scalar after squeeze
            cos_sims_dict.setdefault((key, "cell_emb"), [])
            cos_sims_dict[(key, "cell_emb")] += values
            return cos_sims_dict
        if gene_list is None:
            raise PerturbationInputError(
                "genes_to_perturb='all' keys each value by its perturbed gene: give gene_list (one per row)"
            )
        for gene, value in zip(gene_list, data.tolist(), strict=True):
            cos_sims_dict.setdefault((gene, "cell_emb"), []).append(value)
        return cos_sims_dict


def reference_path_name(group: bool, special: bool) -> str:
    """The reference's isp_perturb_* method perturb_data runs for a group (or "all") and a <cls> mode (or not)."""
    return f"isp_perturb_{'set' if group else 'all'}{'_special' if special else ''}"


def _encoder_of(model: Any) -> Any:
    """The encoder of a loaded model (an encoder, or a task model holding one), put in eval mode (as the reference
    loads it): no dropout."""
    try:
        encoder = encoder_of(model)
    except TypeError as error:
        raise PerturbationInputError(
            f"model must be a model directory or a loaded model (load_encoder(dir)): {error}"
        ) from None
    encoder.set_train(False)
    return encoder


def rank_table_dir(job: ShardedInference, rank: int) -> Path:
    return job.shard_dir / f"rank{rank:05d}-of-{job.parallel.world_size:05d}.parquet"


def merged_rank_tables(job: ShardedInference, rows: np.ndarray) -> Iterator[Any]:
    """Rank 0: the rows of each cell (a DataFrame, as its rank wrote them) in the order of `rows`, the order of one
    process. A part is read when its first cell is due and dropped once its last one is out: memory holds a few
    parts, not the table."""
    import pandas as pd
    import pyarrow.parquet as pq

    where: dict[int, Path] = {}
    for rank in range(job.parallel.world_size):
        if job.shares[rank].size:
            for part in sorted(rank_table_dir(job, rank).glob("part-*.parquet")):
                where.update((int(c), part) for c in pq.read_table(part, columns=["cell"]).column(0).to_numpy())
    open_parts: dict[Path, dict[int, Any]] = {}
    for row in rows:
        part = where.get(int(row))
        if part is None:
            continue  # a cell without perturbations has no rows
        if part not in open_parts:
            frame = pd.read_parquet(part)
            open_parts[part] = {int(c): cell for c, cell in frame.groupby("cell", sort=False)}
        yield open_parts[part].pop(int(row))
        if not open_parts[part]:
            del open_parts[part]


def read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _cells_in_blocks(dataset: Any, rows: np.ndarray, block: int = 10_000) -> Iterator[np.ndarray]:
    """The token arrays of `rows`, read `block` rows at a time (memory bounded on large corpora)."""
    for start in range(0, len(rows), block):
        yield from read_cells(dataset, rows[start : start + block])


def _windows(counts: Sequence[int], batch_size: int, copies_per_window: int = 8) -> Iterator[list[int]]:
    """Consecutive cells whose originals run together: enough cells for `copies_per_window` full batches of
    perturbed copies (at most 256 cells)."""
    window: list[int] = []
    total = 0
    for i, n in enumerate(counts):
        window.append(i)
        total += n
        if total >= copies_per_window * batch_size or len(window) >= 256:
            yield window
            window, total = [], 0
    if window:
        yield window


class _RunContext:
    """The per-window work of perturb_data: originals once, perturbed copies through the engine, rows per cell."""

    def __init__(self, perturber, engine, names, group, anchor, max_length, labels) -> None:
        self.p, self.engine, self.names = perturber, engine, names
        self.group, self.anchor, self.max_length = group, anchor, max_length
        self.labels = labels
        states = perturber.cell_states_to_model
        self.states = possible_states(states) if states is not None else []
        self.state_matrix = (
            np.stack([perturber.state_embs_dict[s] for s in self.states]) if self.states else np.zeros((0, 1))
        )

    def state_cosines(self, embedding: np.ndarray) -> np.ndarray:
        e = np.asarray(embedding, np.float64)
        s = self.state_matrix
        return s @ e / np.maximum(np.linalg.norm(s, axis=1) * np.linalg.norm(e), 1e-8)

    def run_window(
        self,
        table: ShardedTable,
        rows: np.ndarray,
        layouts: list[CellLayout],
        counts: list[int],
        finished: Collection[int] = (),
    ) -> None:
        """Perturb the cells of one window and add their rows to `table` (but those of the `finished` cells): cells
        in window order, each cell's rows in the order of its perturbations (whatever order the batches finish in,
        so rows never depend on the batching)."""
        p = self.p
        cells = [np.concatenate([lay.head, lay.genes, lay.tail]) for lay in layouts]
        originals = self.engine.original_states(cells)
        original_embs = [self.engine.cell_embedding(c, h) for c, h in zip(cells, originals, strict=True)]
        results: list[dict[int, tuple[list, list, list]]] = [{} for _ in cells]

        def jobs() -> Iterator[Job]:
            for k, layout in enumerate(layouts):
                for index, perturbation in enumerate(
                    cell_perturbations(
                        layout, p.perturb_type, self.group, self.anchor, p.perturb_rank_shift, self.max_length
                    )
                ):
                    yield Job((k, index), perturbation, originals[k])

        for job, result in self.engine.run(jobs()):
            k, index = job.key
            perturbed, affected, values = results[k].setdefault(index, ([], [], []))
            pert = job.perturbation
            label = "+".join(self.names.id_of(t) for t in pert.genes)
            if self.states:
                shifts = self.state_cosines(result.embedding) - self.state_cosines(original_embs[k])
                perturbed += [label] * len(self.states)
                affected += self.states
                values += list(shifts)
            elif p.emb_mode.startswith("cls"):
                perturbed.append(label)
                affected.append("cell_emb")
                values.append(float(_cos(result.embedding, original_embs[k])))
            else:
                perturbed.append(label)
                affected.append("cell_emb")
                values.append(result.mean_cosine if pert.compared.any() else float("nan"))
            if result.gene_cosines is not None and p.emb_mode.endswith("_and_gene"):
                genes = pert.tokens[pert.compared]
                perturbed += [label] * genes.size
                affected += [self.names.id_of(t) for t in genes]
                values += list(result.gene_cosines)
        for k, row in enumerate(rows):
            assert len(results[k]) == counts[k], "every perturbation of the cell ran once"
            if int(row) in finished:
                continue
            ordered = [results[k][i] for i in sorted(results[k])]
            labels = {c: _plain(v[row]) for c, v in self.labels.items()}
            table.add_cell(int(row), labels, *(sum((part[j] for part in ordered), []) for j in range(3)))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
