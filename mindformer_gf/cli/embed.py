"""`gf embed`: cell (or gene) embeddings from a model's encoder, as CSV and .npy in input order, with plots.

gf embed --dataset pbmc.dataset --model model_dir --output-dir out --label cell_type --plot umap,heatmap
gf embed ... --mode gene --layer 0          # per-gene embeddings from the last layer
gf embed ... --summary exact_mean           # also the mean embedding of each cell_type

On every device (one process per device, each embedding a share of the cells; rank 0 writes the files):
msrun --worker_num=8 --local_worker_num=8 --master_addr=127.0.0.1 --master_port=8118 --log_dir=logs --join=True \
      $(which gf) embed --dataset pbmc.dataset --model model_dir --output-dir out     # add --resume after a failure
"""

from __future__ import annotations

import argparse

from mindformer_gf.cli import UsageError
from mindformer_gf.cli.classify import _filters
from mindformer_gf.train.distributed import launched_context


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="extract cell or gene embeddings (encoder only) and plot them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, help="tokenized dataset directory (gf tokenize)")
    parser.add_argument("--model", required=True, help="model directory: pretrained, classifier or a task model")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--prefix", default="embeddings", help="output file prefix (default embeddings)")
    parser.add_argument("--mode", choices=("cell", "cls", "gene"), default="cell", help="cell mean, <cls>, or genes")
    parser.add_argument(
        "--layer", type=int, default=-1, help="0 = last layer, -1 = second-to-last (default), ... (reference)"
    )
    parser.add_argument("--label", action="append", default=[], help="dataset column to carry and plot; repeat")
    parser.add_argument("--plot", default="", help="comma-separated: umap, heatmap")
    parser.add_argument("--summary", choices=("mean", "median", "exact_mean", "exact_median"), default=None)
    parser.add_argument("--max-cells", type=int, default=None, help="embed at most this many cells (random)")
    parser.add_argument(
        "--filter", action="append", default=[], metavar="COLUMN=V1,V2", help="keep cells whose COLUMN is one of V1,V2"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="cells per forward batch")
    parser.add_argument("--num-buckets", type=int, default=4, help="padded widths (one graph compilation each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, CPU or Ascend")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--resume", action="store_true", help="under msrun: keep the shards of an interrupted run, redo the rest"
    )
    parser.add_argument(
        "--shard-timeout",
        type=float,
        default=1800.0,
        help="under msrun: fail when a rank shows no progress for this many seconds (default 1800)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    parallel = launched_context()
    if parallel is None:
        return 0

    # imported here: the task stack (datasets, scikit-learn, MindSpore) loads only for the command that runs it
    from mindformer_gf.tasks import EmbExtractor

    plots = [p.strip() for p in args.plot.split(",") if p.strip()]
    unknown = sorted(set(plots) - {"umap", "heatmap"})
    if unknown:
        raise UsageError(f"--plot takes umap and/or heatmap, got {unknown}")
    if plots and not args.label:
        raise UsageError("--plot needs --label COLUMN to colour the cells by")
    extractor = EmbExtractor(
        emb_mode=args.mode,
        emb_layer=args.layer,
        emb_label=args.label,
        filter_data=_filters(args.filter),
        max_ncells=args.max_cells,
        forward_batch_size=args.batch_size,
        summary_stat=args.summary,
        num_buckets=args.num_buckets,
        seed=args.seed,
        progress=not args.no_progress,
        device=args.device,
        resume=args.resume,
        shard_timeout=args.shard_timeout,
    )
    embs = extractor.extract_embs(args.model, args.dataset, args.output_dir, args.prefix, parallel=parallel)
    if embs is None:
        print(f"rank {parallel.rank} of {parallel.world_size}: share embedded; rank 0 writes the files")
        return 0
    files = list(embs.files)
    for style in plots:
        for label in args.label:
            files += extractor.plot_embs(embs, style, args.output_dir, args.prefix, label=label)
    print(f"{embs.matrix.shape[0]} {args.mode} embeddings of {embs.matrix.shape[1]} dimensions (layer {args.layer})")
    for path in files:
        print(f"  {path}")
    return 0
