"""`gf demo` (what `make demo` runs): tokenize the shipped PBMC cells, pretrain a small model on them, fine-tune a
cell-type classifier, compare it with logistic regression on the same split, extract and plot embeddings."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the main job on built-in real data (about 5-10 minutes on 2 cores)", description=__doc__
    )
    parser.add_argument("--output-dir", default="demo_output", help="where everything is written (default demo_output)")
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run (numbers meaningless)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    # MindSpore's own warnings (deprecations inside the framework) would bury the demo's report; GLOG_v set by the
    # user still wins
    os.environ.setdefault("GLOG_v", "3")
    # imported here: the demo's stack (tokenizer, training, plots) loads only when it runs
    from mindformer_gf.tasks.pbmc_demo import run_demo

    run_demo(args.output_dir, quick=args.quick, progress=not args.no_progress)
    return 0
