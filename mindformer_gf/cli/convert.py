"""`gf convert SRC DST`: a Hugging Face model directory to a MindSpore one, or back with `--to huggingface`."""

from __future__ import annotations

import argparse

from mindformer_gf.config import ARCHITECTURES

EPILOG = """examples:
  gf convert Geneformer-V2-104M gf-v2-104m-ms --verify
  gf convert gf-v1-10m gf-v1-10m-ms --format safetensors --dtype float32
  gf convert gf-v1-10m gf-v1-classifier-ms --architecture BertForSequenceClassification --num-labels 3 --allow-missing
  gf convert --to huggingface my-finetuned-ms my-finetuned-hf"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a Hugging Face Geneformer model directory to MindSpore (or back)",
        description=(
            "Convert a Hugging Face model directory (config.json + model.safetensors, pytorch_model.bin or a sharded "
            "set) into a MindSpore model directory (config.json, mindspore_model.ckpt, conversion_manifest.json), or "
            "a MindSpore one back into config.json + model.safetensors for transformers. Needs no PyTorch; "
            "pickled .bin files are read with an allow-list, so a file that tries to run code is refused."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="source model directory")
    parser.add_argument("dst", help="destination directory (must not exist unless --force)")
    parser.add_argument("--to", choices=("mindspore", "huggingface"), default="mindspore", help="output kind")
    parser.add_argument(
        "--format", choices=("ckpt", "safetensors"), default=None, help="MindSpore weights file format (default ckpt)"
    )
    parser.add_argument(
        "--dtype",
        choices=("keep", "float32", "float16", "bfloat16"),
        default=None,
        help="element type of the written weights (default keep: each tensor's own)",
    )
    parser.add_argument(
        "--architecture", choices=ARCHITECTURES, default=None, help="model class to build (default: config.json's)"
    )
    parser.add_argument("--num-labels", type=int, default=None, help="labels of a new classifier head")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="initialise a pooler/classifier the checkpoint lacks instead of failing (never encoder weights)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of freshly initialised heads (default 0)")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare the converted model with the numpy reference on the source weights; fail above tolerance",
    )
    parser.add_argument(
        "--tolerance", type=float, default=None, help="--verify relative tolerance (default by dtype, 1e-4 for fp32)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here: the converter's readers load only for `gf convert`
    from mindformer_gf.convert import convert

    if args.verify:
        import mindspore as ms

        # --verify runs the model; the package runs its models in graph mode (MindSpore's default is PyNative).
        ms.set_context(mode=ms.GRAPH_MODE)
    # CheckpointError and ConfigError are ValueErrors, a missing source or an existing destination OSErrors: `gf`
    # (mindformer_gf.cli.main) turns them into one line naming the problem and the fix.
    report = convert(
        args.src,
        args.dst,
        to=args.to,
        format=args.format,
        dtype=args.dtype,
        architecture=args.architecture,
        num_labels=args.num_labels,
        allow_missing=args.allow_missing,
        seed=args.seed,
        force=args.force,
        verify=args.verify,
        tolerance=args.tolerance,
        progress=not args.quiet,
    )
    print("\n".join(report.lines()))
    return 0
