"""`gf perturb` and `gf perturb-stats`: in silico perturbation and its statistics (the reference's
InSilicoPerturber and InSilicoPerturberStats).

gf perturb --dataset pbmc.dataset --model model_dir --output-dir isp --prefix delete_all \\
    --state-key cell_type --start-state "CD14+ Monocyte" --goal-state Dendritic --max-cells 10 --label cell_type
gf perturb ... --perturb-type overexpress --genes CD14,ENSG00000105369       # one group, perturbed together
gf perturb ... --perturb-type delete --anchor-gene CD14                      # combos=1: the anchor + each gene
gf perturb ... --resume                                                      # continue an interrupted run
msrun --worker_num=8 --local_worker_num=8 --master_addr=127.0.0.1 --master_port=8118 --log_dir=logs --join=True \
    $(which gf) perturb ...          # each device a share of the cells (genes squared); rank 0 merges the table
gf perturb-stats --input isp/delete_all.parquet --output-dir isp --prefix stats --mode goal_state_shift \\
    --state-key cell_type --start-state "CD14+ Monocyte" --goal-state Dendritic
"""

from __future__ import annotations

import argparse

from mindformer_gf.cli.classify import _filters
from mindformer_gf.train.distributed import launched_context


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "perturb",
        help="in silico perturbation: delete / overexpress / inhibit / activate genes, measure the shift",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, help="tokenized dataset directory (gf tokenize)")
    parser.add_argument("--model", required=True, help="model directory: pretrained, classifier or a task model")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument(
        "--prefix", default="perturb", help="output prefix: OUTPUT_DIR/PREFIX.parquet/ (default perturb)"
    )
    parser.add_argument("--perturb-type", choices=("delete", "overexpress", "inhibit", "activate"), default="delete")
    parser.add_argument("--rank-shift", type=int, choices=(1, 2, 3), default=None, help="quartiles (inhibit/activate)")
    parser.add_argument("--genes", default="all", help="'all' (each gene alone) or a comma list: one group")
    parser.add_argument("--anchor-gene", default=None, help="combos=1: perturb this gene with each other gene")
    parser.add_argument(
        "--emb-mode", choices=("cell", "cls", "cell_and_gene", "cls_and_gene"), default="cell", help="default cell"
    )
    parser.add_argument("--layer", type=int, choices=(-1, 0), default=-1, help="0 = last layer, -1 = second-to-last")
    parser.add_argument("--label", action="append", default=[], help="dataset column carried into the table; repeat")
    parser.add_argument("--filter", action="append", default=[], metavar="COLUMN=V1,V2", help="keep matching cells")
    parser.add_argument("--max-cells", type=int, default=None, help="at most this many cells (the reference's pick)")
    parser.add_argument("--cell-inds", default=None, metavar="START:END", help="slice of the selected cells")
    _add_states(parser)
    parser.add_argument("--batch-size", type=int, default=100, help="perturbed cells per forward batch (default 100)")
    parser.add_argument("--num-buckets", type=int, default=4, help="padded widths (one graph compilation each)")
    parser.add_argument("--csv", action="store_true", help="also write OUTPUT_DIR/PREFIX.csv")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run (same arguments)")
    parser.add_argument(
        "--shard-timeout", type=float, default=1800.0, help="under msrun: fail when a rank shows no progress this long"
    )
    parser.add_argument("--shard-cells", type=int, default=100, help="cells per written shard (default 100)")
    parser.add_argument("--token-dictionary", default=None, help="the dataset's token dictionary (default shipped V1)")
    parser.add_argument("--gene-names", default=None, help="symbol -> Ensembl ID dictionary (default shipped)")
    parser.add_argument("--device", default="auto", help="auto, CPU or Ascend")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)

    stats = subparsers.add_parser(
        "perturb-stats",
        help="statistics of gf perturb runs: goal_state_shift, vs_null, mixture_model, aggregate_*",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("--input", action="append", required=True, help="a gf perturb table (PREFIX.parquet); repeat")
    stats.add_argument("--null", action="append", default=[], help="null-run table(s), for --mode vs_null")
    stats.add_argument("--output-dir", required=True)
    stats.add_argument("--prefix", default="perturb_stats")
    stats.add_argument(
        "--mode",
        choices=("goal_state_shift", "vs_null", "mixture_model", "aggregate_data", "aggregate_gene_shifts"),
        default="goal_state_shift",
    )
    stats.add_argument("--genes", default="all", help="'all' or the comma list perturbed as one group")
    stats.add_argument("--anchor-gene", default=None, help="the anchor of a combos=1 run")
    _add_states(stats)
    stats.add_argument("--token-dictionary", default=None)
    stats.add_argument("--gene-names", default=None)
    stats.set_defaults(run=run_stats)


def _add_states(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cell states (cell_states_to_model)")
    group.add_argument("--state-key", default=None, help="dataset column of the states")
    group.add_argument("--start-state", default=None)
    group.add_argument("--goal-state", default=None)
    group.add_argument("--alt-states", default="", help="comma list")


def _states(args: argparse.Namespace, command: str) -> dict | None:
    given = [args.state_key, args.start_state, args.goal_state]
    if not any(given):
        return None
    if not all(given):
        raise SystemExit(f"gf {command}: cell states need --state-key, --start-state and --goal-state together")
    alt = [s for s in args.alt_states.split(",") if s]
    return {
        "state_key": args.state_key,
        "start_state": args.start_state,
        "goal_state": args.goal_state,
        "alt_states": alt,
    }


def _genes(text: str) -> str | list[str]:
    return "all" if text == "all" else [g.strip() for g in text.split(",") if g.strip()]


def run(args: argparse.Namespace) -> int:
    # imported here: scipy.stats and statsmodels load only for the perturbation commands
    from mindformer_gf.tasks.perturb import InSilicoPerturber, get_state_embs

    parallel = launched_context()
    if parallel is None:
        return 0
    states = _states(args, "perturb")
    cell_inds = "all"
    if args.cell_inds:
        start, sep, end = args.cell_inds.partition(":")
        if not sep or not start.isdigit() or not end.isdigit():
            raise SystemExit(f"gf perturb: --cell-inds expects START:END, got {args.cell_inds!r}")
        cell_inds = {"start": int(start), "end": int(end)}
    try:
        state_embs = None
        if states is not None:
            state_embs = get_state_embs(
                states, args.model, args.dataset, emb_mode=args.emb_mode, emb_layer=args.layer,
                progress=not args.no_progress and parallel.is_main,
            )  # fmt: skip
        perturber = InSilicoPerturber(
            perturb_type=args.perturb_type,
            perturb_rank_shift=args.rank_shift,
            genes_to_perturb=_genes(args.genes),
            combos=1 if args.anchor_gene else 0,
            anchor_gene=args.anchor_gene,
            emb_mode=args.emb_mode,
            filter_data=_filters(args.filter),
            cell_states_to_model=states,
            state_embs_dict=state_embs,
            max_ncells=args.max_cells,
            cell_inds_to_perturb=cell_inds,
            emb_layer=args.layer,
            forward_batch_size=args.batch_size,
            token_dictionary_file=args.token_dictionary,
            gene_name_id_dictionary_file=args.gene_names,
            emb_label=args.label,
            output_format="csv" if args.csv else "parquet",
            num_buckets=args.num_buckets,
            shard_cells=args.shard_cells,
            progress=not args.no_progress,
            device=args.device,
        )
        path = perturber.perturb_data(
            args.model, args.dataset, args.output_dir, args.prefix, resume=args.resume, parallel=parallel,
            shard_timeout=args.shard_timeout,
        )  # fmt: skip
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise SystemExit(f"gf perturb: {_message(err)}") from None
    if path is None:
        print(f"rank {parallel.rank} of {parallel.world_size}: share perturbed; rank 0 writes the table")
        return 0
    print(f"perturbation table: {path}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    # imported here: scipy.stats and statsmodels load only for the perturbation commands
    from mindformer_gf.tasks.perturb import InSilicoPerturberStats

    parallel = launched_context()
    if parallel is None or not parallel.is_main:
        return 0  # seconds of pandas on one table: rank 0 alone computes and writes it (under msrun)
    try:
        stats = InSilicoPerturberStats(
            mode=args.mode,
            genes_perturbed=_genes(args.genes),
            combos=1 if args.anchor_gene else 0,
            anchor_gene=args.anchor_gene,
            cell_states_to_model=_states(args, "perturb-stats"),
            model_version="V2" if args.token_dictionary else "V1",  # the shipped dictionary unless one is given
            token_dictionary_file=args.token_dictionary,
            gene_name_id_dictionary_file=args.gene_names,
        )
        result = stats.get_stats(args.input, args.null or None, args.output_dir, args.prefix)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise SystemExit(f"gf perturb-stats: {_message(err)}") from None
    print(f"{len(result.table)} rows: {result.csv}")
    for path in result.plots:
        print(f"  {path}")
    return 0


def _message(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
