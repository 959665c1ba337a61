"""`gf classify cell|gene|multitask`: fine-tune a pretrained Geneformer on a tokenized dataset and evaluate it.

    gf classify cell --dataset pbmc.dataset --model pretrained --output-dir out --label cell_type \\
        --split 0.7,0.15,0.15 --epochs 10 --lr 5e-5 --freeze-layers 2
    gf classify cell ... --folds 5 --group-by patient          # 5 stratified folds, no patient in two folds
    gf classify cell ... --label n_genes --regression          # numeric target: one-output head, MSE
    gf classify cell --evaluate --model out/model ...          # score a fine-tuned model on every selected cell
    gf classify gene --dataset pbmc.dataset --model pretrained --output-dir out \\
        --gene-labels dosage_sens_tf_labels.csv --folds 5
    gf classify multitask --dataset pbmc.dataset --model pretrained --output-dir out --tasks cell_type,phase \\
        --pooling attention
    gf classify gene --evaluate --model out/fold0/model ...    # a fold's model on the labelled genes it never saw
    gf classify multitask --evaluate --model out/model ...     # the model's tasks on every selected cell
    gf classify cell ... --search-trials 20             # Optuna search (the reference's n_hyperopt_trials)
Strategies (every task): --strategy finetune (with --freeze-layers N), adapters (--adapter-size), extra_layer,
lora (--lora-r, --lora-alpha, --lora-dropout, --lora-target-modules; the saved model has the adapters merged in,
and peft's adapter directory beside it in model/lora_adapter/).
Under msrun (one process per device): training is data parallel; every evaluation pass (validation cells at each
checkpoint, test cells, --evaluate) is shared among the ranks by genes per cell, and rank 0 writes the files one
process writes (`predictions_run.json` records the split). --output-dir must be seen by every machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict

from mindformer_gf.cli import UsageError
from mindformer_gf.train.distributed import init_distributed, launched_by_msrun, launched_context
from mindformer_gf.train.schedule import SCHEDULES

TRAINING_FLAGS = {
    # flag: (settings field, type, help)
    "epochs": ("num_train_epochs", float, "training epochs (fractions allowed)"),
    "batch-size": ("per_device_train_batch_size", int, "cells per training batch (reference: 12)"),
    "lr": ("learning_rate", float, "peak learning rate"),
    "schedule": ("lr_scheduler_type", str, "the reference's lr_scheduler_type (transformers' schedules)"),
    "polynomial-power": ("lr_power", float, "power of the polynomial schedule (default 1)"),
    "lr-end": ("lr_end", float, "final learning rate of the polynomial schedule (default 1e-7)"),
    "warmup-steps": ("warmup_steps", int, "linear warmup steps"),
    "warmup-ratio": ("warmup_ratio", float, "warmup as a fraction of all steps (overrides --warmup-steps)"),
    "weight-decay": ("weight_decay", float, "AdamW weight decay (not on biases and LayerNorm)"),
    "seed": ("seed", int, "seed of splits, sampling and fresh heads"),
    "strategy": ("strategy", str, "finetune, adapters, extra_layer or lora"),
    "freeze-layers": ("freeze_layers", int, "freeze the first N encoder layers (strategy finetune)"),
    "adapter-size": ("adapter_size", int, "adapter bottleneck width (strategy adapters)"),
    "lora-r": ("lora_r", int, "LoRA rank (strategy lora; default 64, the reference's)"),
    "lora-alpha": ("lora_alpha", float, "LoRA alpha: the update is scaled by alpha / r (default 128)"),
    "lora-dropout": ("lora_dropout", float, "dropout on the LoRA adapters' input (default 0.1)"),
    "lora-target-modules": (
        "lora_target_modules",
        str,
        "comma-separated projections LoRA adapts, peft's names (default query,key,value,dense)",
    ),
    "num-buckets": ("num_buckets", int, "padded widths (one graph compilation each)"),
    "forward-batch-size": ("forward_batch_size", int, "cells per inference batch"),
    "evals-per-epoch": ("evals_per_epoch", int, "validation checkpoints per epoch"),
    "device": ("device", str, "auto, CPU or Ascend"),
}


CHOICES = {
    "lr_scheduler_type": SCHEDULES,
    "strategy": ("finetune", "adapters", "extra_layer", "lora"),
    "device": ("auto", "CPU", "Ascend"),
}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="tokenized dataset directory (gf tokenize)")
    parser.add_argument("--model", required=True, help="pretrained model directory (Hugging Face or MindSpore)")
    parser.add_argument("--output-dir", required=True, help="where results, plots and the fine-tuned model go")
    parser.add_argument(
        "--filter", action="append", default=[], metavar="COLUMN=V1,V2", help="keep cells whose COLUMN is one of V1,V2"
    )
    parser.add_argument("--max-cells", type=int, default=None, help="at most this many cells (random)")
    training = parser.add_argument_group("training")
    for flag, (dest, kind, help_text) in TRAINING_FLAGS.items():
        training.add_argument(
            f"--{flag}", dest=dest, type=kind, default=None, help=help_text, choices=CHOICES.get(dest)
        )
    training.add_argument("--keep-checkpoints", action="store_true", help="keep every evaluated checkpoint")
    search = parser.add_argument_group("hyperparameter search (Optuna; the reference's n_hyperopt_trials)")
    search.add_argument(
        "--search-trials", type=int, default=0, metavar="N", help="search N trials by validation macro-F1 (0: none)"
    )
    search.add_argument(
        "--search-space",
        metavar="JSON",
        help='search space file {setting: {"type": "float"|"int"|"categorical", ...}} (default: the reference\'s)',
    )
    training.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="fine-tune and evaluate: cell or gene classification, multitask",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    cell = kinds.add_parser("cell", help="cell classification (or --regression on a numeric column)")
    _add_common(cell)
    cell.add_argument("--label", required=True, help="dataset column holding each cell's state")
    cell.add_argument("--states", default="all", help="comma-separated states to keep (default all)")
    cell.add_argument("--rare-threshold", type=float, default=0.0, help="drop classes below this fraction of cells")
    cell.add_argument("--max-cells-per-class", type=int, default=None)
    cell.add_argument("--split", default="0.8,0.1,0.1", help="train,valid,test fractions (default 0.8,0.1,0.1)")
    cell.add_argument("--folds", type=int, default=0, help="k stratified folds instead of one split")
    cell.add_argument("--group-by", default=None, help="column (e.g. patient) whose groups never straddle splits")
    cell.add_argument("--regression", action="store_true", help="predict the numeric column --label (MSE)")
    _add_evaluation(cell, "a fine-tuned cell classifier: predict and score every selected cell")
    cell.set_defaults(run=data_parallel(run_cell))

    gene = kinds.add_parser("gene", help="gene classification with k folds over genes")
    _add_common(gene)
    labels = gene.add_mutually_exclusive_group(required=True)
    labels.add_argument("--gene-labels", help="CSV (one column of Ensembl IDs per class) or JSON {class: [IDs]}")
    labels.add_argument(
        "--gene-class", action="append", metavar="CLASS=FILE", help="a class and its text file (one ID a line); repeat"
    )
    labels.add_argument("--gene-values", help="per-gene numbers (CSV gene,value or JSON) for gene regression")
    gene.add_argument("--folds", type=int, default=5, help="folds over genes (default 5)")
    gene.add_argument("--token-dictionary", default=None, help="token dictionary of the dataset (default shipped V1)")
    _add_evaluation(
        gene, "a fold's fine-tuned gene model: score every occurrence of a labelled gene it was not trained on"
    )
    gene.set_defaults(run=data_parallel(run_gene))

    multi = kinds.add_parser("multitask", help="several cell labels at once: shared encoder, one head per task")
    _add_common(multi)
    multi.add_argument(
        "--tasks", help="comma-separated dataset columns, one task each (with --evaluate: default the model's)"
    )
    multi.add_argument("--task-weights", default=None, help="comma-separated loss weights (default 1 each)")
    multi.add_argument("--regression-tasks", default="", help="comma-separated tasks that are numeric (MSE)")
    multi.add_argument("--pooling", choices=("cls", "attention"), default="cls", help="position 0 or attention")
    multi.add_argument("--split", default="0.8,0.1,0.1", help="train,valid,test fractions")
    multi.add_argument("--group-by", default=None, help="column whose groups never straddle splits")
    _add_evaluation(multi, "a fine-tuned multitask model: predict and score every selected cell on its tasks")
    multi.set_defaults(run=data_parallel(run_multitask))


def _add_evaluation(parser: argparse.ArgumentParser, what: str) -> None:
    evaluation = parser.add_argument_group("evaluation only (shards over the ranks under msrun)")
    evaluation.add_argument("--evaluate", action="store_true", help=f"--model is {what}; no training")
    evaluation.add_argument("--resume", action="store_true", help="keep the shards of an interrupted --evaluate run")
    evaluation.add_argument(
        "--shard-timeout", type=float, default=1800.0, help="fail when a rank shows no progress this long (s)"
    )


def _settings(args: argparse.Namespace, **defaults: object):
    # imported here: the task stack (datasets, scikit-learn, MindSpore) loads only for the command that runs it
    from mindformer_gf.tasks import FineTuneSettings

    changes = dict(defaults)
    for dest, _, _ in TRAINING_FLAGS.values():
        if getattr(args, dest) is not None:
            changes[dest] = getattr(args, dest)
    lr_end = changes.pop("lr_end", None)
    changes["save_total_limit"] = None if args.keep_checkpoints else 0
    changes["progress_bar"] = not args.no_progress
    settings = FineTuneSettings().replace(**changes)
    if lr_end is not None:
        # --lr-end is the polynomial schedule's final rate; the settings hold it as a fraction of the peak
        settings = settings.replace(min_lr_ratio=FineTuneSettings.upgrade_value("lr_end", lr_end, asdict(settings)))
    return settings


def _filters(pairs: list[str]) -> dict[str, list[str]]:
    filters = {}
    for pair in pairs:
        column, sep, values = pair.partition("=")
        if not sep or not column or not values:
            raise UsageError(f"--filter expects COLUMN=V1,V2, got {pair!r}")
        filters[column] = values.split(",")
    return filters


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--split expects three fractions like 0.8,0.1,0.1, got {text!r}") from None
    if len(values) != 3:
        raise UsageError(f"--split expects three fractions like 0.8,0.1,0.1, got {text!r}")
    return values


def _search(args: argparse.Namespace) -> dict[str, object]:
    """run()'s search arguments: trials and the space read from --search-space."""
    space = None
    if args.search_space:
        import json

        with open(args.search_space, encoding="utf-8") as handle:
            try:
                space = json.load(handle)
            except json.JSONDecodeError as err:
                raise UsageError(f"--search-space {args.search_space}: not JSON ({err})") from None
    if args.search_trials < 0:
        raise UsageError(f"--search-trials must be >= 0, got {args.search_trials}")
    return {"n_hyperopt_trials": args.search_trials, "search_space": space}


def _print_search(result: object) -> None:
    search = getattr(result, "search", None)
    if search is not None:
        print(
            f"search: best of {len(search.trials)} trials is trial {search.best_trial} (validation score "
            f"{search.best_score:.4f}): {search.best_params}; see {search.files[0].parent}"
        )


def _csv_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def run_cell(args: argparse.Namespace) -> int:
    # imported here: the task stack (datasets, scikit-learn, MindSpore) loads only for the command that runs it
    from mindformer_gf.tasks import CellClassifier

    classifier = CellClassifier(
        state_key=args.label,
        states="all" if args.states == "all" else _csv_list(args.states),
        filter_data=_filters(args.filter),
        rare_threshold=args.rare_threshold,
        max_ncells=args.max_cells,
        max_ncells_per_class=args.max_cells_per_class,
        regression=args.regression,
        settings=_settings(args),
    )
    if args.evaluate:
        return _evaluate(classifier, args)
    result = classifier.run(
        args.dataset, args.model, args.output_dir, _fractions(args.split), args.folds, args.group_by, **_search(args)
    )
    _print_search(result)
    for run in result.runs:
        print(f"{run.name}: test {_brief(run.test_metrics)}; model {run.model_dir}")
    if "folds" in result.summary:
        print(
            "folds: " + ", ".join(f"{k} {v['mean']:.3f} +- {v['std']:.3f}" for k, v in result.summary["folds"].items())
        )
    if "pooled" in result.summary:
        print(f"all folds pooled: {_brief(result.summary['pooled'])}")
    print(f"outputs in {result.output_dir}")
    return 0


def data_parallel(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`run` (a training command) under msrun: every rank trains, data parallel (the step source plans one
    micro-batch per rank), and every rank predicts its share of the cells of each evaluation pass (the validation
    cells at each checkpoint, the test cells with the chosen weights), as `--evaluate` does; rank 0 merges them,
    scores, chooses the checkpoint and writes every output. The other ranks run the same commands in step with it
    (their collective operations must match) and write their own outputs into a scratch directory that is removed;
    their shards go beside rank 0's outputs. A single process runs `run` as it is."""

    @functools.wraps(run)
    def on_every_rank(args: argparse.Namespace) -> int:
        if getattr(args, "evaluate", False) or not launched_by_msrun():
            return run(args)  # --evaluate shards the cells itself
        if os.environ.get("MS_ROLE") == "MS_SCHED":
            try:
                init_distributed()  # msrun's scheduler: the cluster's meta server while the workers train
            except RuntimeError:
                return 1  # a worker failed or vanished: its own log says why
            return 0
        if args.search_trials:
            raise UsageError(
                "--search-trials runs on one device (trials are pruned on rank 0's scores): search without msrun, "
                "then train the chosen settings under msrun"
            )
        parallel = init_distributed()
        if parallel.is_main:
            return run(args)
        # imported here: datasets and the sharding protocol load only for a run under msrun
        from mindformer_gf.infer.sharded import shards_meet_in

        scratch = tempfile.mkdtemp(prefix=f"gf-classify-rank{parallel.rank}-")
        output_dir, args.output_dir, args.no_progress = args.output_dir, scratch, True
        try:
            with contextlib.redirect_stdout(io.StringIO()), shards_meet_in(scratch, output_dir):
                run(args)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(
            f"rank {parallel.rank} of {parallel.world_size}: trained data parallel and predicted its shares of the "
            "evaluation cells; rank 0 writes the outputs"
        )
        return 0

    return on_every_rank


def _evaluate(classifier, args: argparse.Namespace) -> int:
    """`--evaluate`: the classifier scores the saved model `--model`, each rank its share of the cells."""
    parallel = launched_context()  # None in msrun's scheduler process: it has no share of the cells
    if parallel is None:
        return 0
    metrics = classifier.evaluate_saved_model(
        args.model,
        args.dataset,
        args.output_dir,
        resume=args.resume,
        shard_timeout=args.shard_timeout,
        parallel=parallel,
    )
    if metrics is None:
        print(f"rank {parallel.rank} of {parallel.world_size}: share predicted; rank 0 writes the files")
        return 0
    for task, task_metrics in metrics.get("tasks", {"evaluated": metrics}).items():
        print(f"{task}: {_brief(task_metrics)}")
    print(f"outputs in {args.output_dir}")
    return 0


def run_gene(args: argparse.Namespace) -> int:
    # imported here: the task stack (datasets, scikit-learn, MindSpore) loads only for the command that runs it
    from mindformer_gf.tasks import GeneClassifier

    if args.gene_class:
        classes: object = dict(pair.split("=", 1) for pair in args.gene_class)
    else:
        classes = args.gene_values or args.gene_labels
    classifier = GeneClassifier(
        classes,
        n_folds=args.folds,
        filter_data=_filters(args.filter),
        max_ncells=args.max_cells,
        regression=args.gene_values is not None,
        token_dictionary_file=args.token_dictionary,
        settings=_settings(args, **_gene_defaults(args)),
    )
    if args.evaluate:
        return _evaluate(classifier, args)
    result = classifier.run(args.dataset, args.model, args.output_dir, **_search(args))
    _print_search(result)
    for fold in result.summary["folds"]:
        print(f"fold {fold['fold']}: {fold['test_genes']} test genes, {fold['test_occurrences']} occurrences")
    print(f"overall (gene occurrences): {_brief(result.summary['overall'])}")
    print(f"per gene: {_brief(result.summary['per_gene'])}")
    print(f"outputs in {result.output_dir}")
    return 0


def _gene_defaults(args: argparse.Namespace) -> dict[str, object]:
    """The reference's gene classifier: 1 epoch, 4 layers frozen (for the finetune strategy)."""
    defaults: dict[str, object] = {"num_train_epochs": 1.0}
    if (args.strategy or "finetune") == "finetune":
        defaults["freeze_layers"] = 4
    return defaults


def run_multitask(args: argparse.Namespace) -> int:
    # imported here: the task stack (datasets, scikit-learn, MindSpore) loads only for the command that runs it
    from mindformer_gf.tasks import MultitaskClassifier

    if args.tasks is None and not args.evaluate:
        raise UsageError("--tasks is required: the dataset columns to learn, e.g. --tasks cell_type,phase")
    weights = [float(w) for w in _csv_list(args.task_weights)] if args.task_weights else None
    classifier = MultitaskClassifier(
        _csv_list(args.tasks) if args.tasks else _model_tasks(args.model),
        task_weights=weights,
        regression_tasks=_csv_list(args.regression_tasks),
        pooling=args.pooling,
        filter_data=_filters(args.filter),
        max_ncells=args.max_cells,
        settings=_settings(args),
    )
    if args.evaluate:
        return _evaluate(classifier, args)
    result = classifier.run(
        args.dataset, args.model, args.output_dir, _fractions(args.split), args.group_by, **_search(args)
    )
    _print_search(result)
    for task, metrics in result.test_metrics.items():
        print(f"{task}: test {_brief(metrics)}")
    print(f"model {result.model_dir}; outputs in {result.output_dir}")
    return 0


def _model_tasks(model_dir: str) -> list[str]:
    """The tasks a saved multitask model was trained on (its task.json)."""
    # imported here: MindSpore loads only when a saved model is read
    from mindformer_gf.finetune.task_model import read_task

    task = read_task(model_dir) or {}
    if task.get("kind") != "multitask":
        raise UsageError(f"--model {model_dir} is not a multitask model of gf classify multitask (no task.json)")
    return list(task["tasks"])


def _brief(metrics: dict | None) -> str:
    if not metrics:
        return "no test cells"
    keys = ("accuracy", "macro_f1", "roc_auc", "r2", "mse", "pearson_r", "n")
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float)))
