"""`gf pretrain`: masked-gene-modelling pretraining from a config file, with command-line overrides.

    gf pretrain --config pretrain.yaml --dataset cells.dataset --output-dir run --max-steps 20000
    gf pretrain --config pretrain.yaml --resume              # continue from the newest checkpoint in output_dir
    msrun --worker_num=8 --local_worker_num=8 --master_addr=127.0.0.1 --master_port=8118 --log_dir=logs \
        --join=True $(which gf) pretrain --config pretrain.yaml   # data parallel over 8 devices
"""

from __future__ import annotations

import argparse
import logging
import signal

# command-line flag -> settings field, for the settings one changes most; the rest go through --set key=value
FLAGS = {
    "dataset": str,
    "output_dir": str,
    "model": str,
    "max_steps": int,
    "num_epochs": float,
    "batch_size": int,
    "gradient_accumulation": int,
    "learning_rate": float,
    "lr_schedule": str,
    "warmup_steps": int,
    "precision": str,
    "device": str,
    "attention_impl": str,
    "num_buckets": int,
    "save_every": int,
    "keep_last": int,
    "log_every": int,
    "max_cells": int,
    "seed": int,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain (or continue pretraining) a Geneformer model by masked-gene modelling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML or JSON file of settings (see mindformer_gf.train.PretrainSettings)")
    for name, kind in FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set weight_decay=0.01 --set 'model_overrides={num_hidden_layers: 2}'",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint in output_dir, or from the given checkpoint directory",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mindformer_gf.train import PretrainSettings, load_settings, parse_overrides, pretrain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    overrides.update(parse_overrides(args.overrides))
    if args.no_progress:
        overrides["progress_bar"] = False
    settings = load_settings(PretrainSettings, args.config, overrides)
    result = pretrain(settings, resume=args.resume)
    print(
        f"trained {result.steps} steps (skipped {result.skipped_steps}), last loss {result.final_loss:.4f}, "
        f"{result.compiled_graphs} graph compilations; outputs in {result.output_dir}"
    )
    return 128 + signal.SIGTERM if result.stopped_by_signal else 0
