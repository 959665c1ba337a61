"""`gf pretrain`: masked-gene-modelling pretraining from a config file, with command-line overrides.

    gf pretrain --config pretrain.yaml --dataset cells.dataset --output-dir run --max-steps 20000
    gf pretrain --config pretrain.yaml --resume              # continue from the newest checkpoint in output_dir

Data parallel over 8 devices of one machine (msrun starts `python`, so the environment's bin comes first on PATH):
    msrun --worker_num=8 --local_worker_num=8 --master_addr=127.0.0.1 --master_port=8118 --log_dir=logs
          --join=True $(which gf) pretrain --config pretrain.yaml
"""

from __future__ import annotations

import argparse
import logging
import signal

from mindformer_gf.train.settings import RENAMED_SETTINGS

# settings field -> (type, help), a flag each (--num-train-epochs, ...), for the settings one changes most; the rest
# go through --set key=value
FLAGS = {
    "dataset": (str, "tokenized dataset directory (gf tokenize)"),
    "output_dir": (str, "checkpoints, metrics.csv, loss_curve.png and the final model go here"),
    "model": (str, "a preset to train from scratch (Geneformer-V1-10M, ...) or a model directory to continue"),
    "max_steps": (int, "optimisation steps (0: num_train_epochs over the corpus)"),
    "num_train_epochs": (float, "epochs when max_steps is 0"),
    "per_device_train_batch_size": (int, "cells per micro-batch per device"),
    "gradient_accumulation_steps": (int, "micro-batches per optimisation step per device"),
    "learning_rate": (float, "peak learning rate (default 1e-3)"),
    "lr_scheduler_type": (str, "linear (default), cosine, cosine_with_restarts, polynomial, constant[_with_warmup]"),
    "warmup_steps": (int, "warmup steps (default 10000)"),
    "precision": (str, "auto (fp32 on CPU, bf16 on Ascend), fp32, bf16 or fp16 (dynamic loss scaling)"),
    "device": (str, "auto, CPU or Ascend"),
    "attention_impl": (str, "auto, fused, builtin or composed"),
    "dynamic_shapes": (
        str,
        "auto (default: on the CPU one graph, each batch padded to its longest cell; on Ascend one graph per length "
        "bucket), true or false",
    ),
    "num_buckets": (
        int,
        "length buckets: cells of a batch come from one bucket (default 8); static shapes pad to them",
    ),
    "save_every": (int, "checkpoint every this many steps"),
    "save_total_limit": (int, "checkpoints kept"),
    "log_every": (int, "metrics row every this many steps"),
    "max_cells": (int, "use at most this many cells (0: all)"),
    "seed": (int, "seed of initialisation, data order and masking"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain (or continue pretraining) a Geneformer model by masked-gene modelling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML or JSON file of settings (see mindformer_gf.train.PretrainSettings)")
    old_names = {new: old for old, new in RENAMED_SETTINGS.items()}
    for name, (kind, text) in FLAGS.items():
        # the flag of a setting's earlier name stays as a second spelling (the options of `gf pretrain` do not change)
        flags = ["--" + n.replace("_", "-") for n in (name, old_names.get(name)) if n]
        parser.add_argument(*flags, dest=name, type=kind, default=None, help=text)
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
    # imported here: MindSpore and the training loop load only for the command that trains
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
