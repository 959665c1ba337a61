"""`gf convert SRC DST`: a Hugging Face model directory to a MindSpore one, or back with `--to huggingface`.

The reference's fine-tuned models are recognised by their files: a peft LoRA directory (adapter_config.json +
adapter_model.safetensors) converts onto its base model, merged or (`--keep-adapters`) kept; a GeneformerMultiTask
checkpoint (`classification_heads.*` keys) becomes a multitask model of this package."""

from __future__ import annotations

import argparse

from mindformer_gf.config import ARCHITECTURES

EPILOG = """examples:
  gf convert Geneformer-V2-104M gf-v2-104m-ms --verify
  gf convert gf-v1-10m gf-v1-10m-ms --format safetensors --dtype float32
  gf convert gf-v1-10m gf-v1-classifier-ms --architecture BertForSequenceClassification --num-labels 3 --allow-missing
  gf convert --to huggingface my-finetuned-ms my-finetuned-hf
  gf convert lora-run/checkpoint gf-lora-merged --base-model Geneformer-V2-104M   # peft LoRA, merged
  gf convert lora-run/checkpoint gf-lora --keep-adapters --base-model Geneformer-V2-104M
  gf convert mtl-models/GeneformerMultiTask gf-mtl --label-mappings mtl-results/task_label_mappings.pkl"""


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
    reference = parser.add_argument_group("the reference's fine-tuned models (detected from SRC's files)")
    reference.add_argument(
        "--base-model", default=None, help="base model of a peft LoRA SRC (default: its base_model_name_or_path)"
    )
    reference.add_argument(
        "--keep-adapters",
        action="store_true",
        help="keep a LoRA SRC's adapters apart (DST/lora_adapter/) instead of merging them into the weights",
    )
    reference.add_argument(
        "--label-mappings",
        default=None,
        help="the reference's task_label_mappings.pkl for a GeneformerMultiTask SRC (default: the one inside SRC)",
    )
    reference.add_argument(
        "--task-columns",
        default=None,
        help="comma-separated dataset columns of a GeneformerMultiTask's tasks, in the reference's task_columns order",
    )
    parser.set_defaults(run=run)


# options of the plain converter that a reference fine-tuned model's conversion does not take
PLAIN_ONLY = ("format", "dtype", "architecture", "num_labels", "allow_missing", "seed", "verify", "tolerance")


def run_reference_model(args: argparse.Namespace, kind: str) -> int:
    from mindformer_gf.convert.reference_models import PEFT_LORA, convert_lora_adapter, convert_reference_multitask

    # a LoRA adapter's task_type may name the wrong head (the reference's cell classifiers say TOKEN_CLS)
    plain_only = [o for o in PLAIN_ONLY if not (kind == PEFT_LORA and o == "architecture")]
    given = [o for o in plain_only if getattr(args, o) not in (None, False)]
    if args.to != "mindspore" or given:
        options = ", ".join(f"--{o.replace('_', '-')}" for o in given) or "--to huggingface"
        raise ValueError(
            f"{args.src} is a {kind} model, converted to this package's layout only; drop {options} (convert the "
            "result with --to huggingface afterwards)"
        )
    if kind == PEFT_LORA:
        if args.label_mappings or args.task_columns:
            raise ValueError(
                f"--label-mappings/--task-columns are for GeneformerMultiTask checkpoints; {args.src} is a LoRA adapter"
            )
        report = convert_lora_adapter(
            args.src,
            args.dst,
            base_model=args.base_model,
            merge=not args.keep_adapters,
            architecture=args.architecture,
            force=args.force,
        )
    else:
        if args.base_model or args.keep_adapters:
            raise ValueError(f"--base-model/--keep-adapters are for LoRA adapters; {args.src} is a GeneformerMultiTask")
        columns = args.task_columns.split(",") if args.task_columns else None
        report = convert_reference_multitask(
            args.src, args.dst, label_mappings=args.label_mappings, task_columns=columns, force=args.force
        )
    print("\n".join(report.lines()))
    return 0


def run(args: argparse.Namespace) -> int:
    # imported here: the converter's readers load only for `gf convert`
    from mindformer_gf.convert import convert
    from mindformer_gf.convert.reference_models import HUGGINGFACE, detect_source

    kind = detect_source(args.src)
    if kind != HUGGINGFACE:
        return run_reference_model(args, kind)
    if args.base_model or args.keep_adapters or args.label_mappings or args.task_columns:
        raise ValueError(
            f"{args.src} is neither a peft LoRA directory nor a GeneformerMultiTask checkpoint: --base-model, "
            "--keep-adapters, --label-mappings and --task-columns do not apply"
        )
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
