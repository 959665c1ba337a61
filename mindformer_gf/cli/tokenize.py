"""`gf tokenize INPUT... OUTPUT_DIR --prefix P`: rank value encode .h5ad/.loom files into a Geneformer dataset."""

from __future__ import annotations

import argparse

from mindformer_gf.tokenizer.readers import SUPPORTED_FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenize", help="rank value encode .h5ad/.loom files into a Geneformer dataset (HF datasets on disk)"
    )
    add_tokenize_arguments(parser)
    parser.set_defaults(run=run_tokenize)


def _attribute_pair(text: str) -> tuple[str, str]:
    name, _, output = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:OUTPUT_NAME, got {text!r}")
    return name, output or name


def add_tokenize_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `tokenize` arguments to `parser` (a subcommand parser)."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=".h5ad/.loom files or directories of them")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the dataset is written to OUTPUT_DIR/PREFIX.dataset")
    parser.add_argument("--prefix", required=True, help="name of the output dataset (PREFIX.dataset)")
    parser.add_argument("--force", action="store_true", help="replace an existing PREFIX.dataset")
    parser.add_argument("--model-version", choices=("V1", "V2"), default="V1", help="dictionary version (default V1)")
    parser.add_argument(
        "--gene-id",
        choices=("ensembl", "symbol"),
        default="ensembl",
        help="genes are identified by Ensembl IDs (default) or gene symbols mapped through the gene name dictionary",
    )
    parser.add_argument(
        "--gene-id-attr",
        metavar="NAME",
        help="gene attribute holding the IDs (default 'ensembl_id'; with --gene-id symbol the .h5ad var index or the "
        "loom 'Gene' attribute); 'index' means the .h5ad var index",
    )
    parser.add_argument(
        "--custom-attr",
        action="append",
        type=_attribute_pair,
        default=[],
        metavar="NAME[:OUTPUT]",
        help="cell attribute to copy into the dataset, optionally renamed; repeat for several",
    )
    parser.add_argument("--nproc", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--chunk-size", type=int, default=512, help="cells read and encoded at a time (default 512)")
    parser.add_argument(
        "--model-input-size", type=int, help="tokens per cell, special tokens included (default 2048 V1, 4096 V2)"
    )
    special = parser.add_mutually_exclusive_group()
    special.add_argument(
        "--special-token", dest="special_token", action="store_true", default=None, help="add <cls>/<eos> (V2 default)"
    )
    special.add_argument("--no-special-token", dest="special_token", action="store_false", help="no <cls>/<eos>")
    parser.add_argument(
        "--no-collapse-gene-ids",
        dest="collapse_gene_ids",
        action="store_false",
        help="refuse genes that map to the same Ensembl ID instead of summing them",
    )
    parser.add_argument("--token-dictionary", metavar="FILE", help="token dictionary (.pkl or .json.gz)")
    parser.add_argument("--gene-median", metavar="FILE", help="gene median dictionary (.pkl or .json.gz)")
    parser.add_argument("--gene-mapping", metavar="FILE", help="Ensembl ID mapping dictionary (.pkl), e.g. V2's")
    parser.add_argument("--gene-name-dictionary", metavar="FILE", help="gene symbol -> Ensembl ID dictionary")
    parser.add_argument("--file-format", choices=SUPPORTED_FORMATS, help="only read files of this type in directories")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_tokenize(args: argparse.Namespace) -> int:
    """Run `gf tokenize` with parsed arguments; prints the output path and counts, returns the exit code."""
    # imported here: the tokenizer pulls in pyarrow, scipy and anndata, which `gf --help` should not pay for
    from mindformer_gf.tokenizer.tokenizer import tokenize

    result = tokenize(
        args.inputs,
        args.output_dir,
        args.prefix,
        overwrite=args.force,
        file_format=args.file_format,
        custom_attr_name_dict=dict(args.custom_attr),
        nproc=args.nproc,
        chunk_size=args.chunk_size,
        model_input_size=args.model_input_size,
        special_token=args.special_token,
        collapse_gene_ids=args.collapse_gene_ids,
        model_version=args.model_version,
        token_dictionary_file=args.token_dictionary,
        gene_median_file=args.gene_median,
        gene_mapping_file=args.gene_mapping,
        gene_name_file=args.gene_name_dictionary,
        gene_id=args.gene_id,
        gene_id_attr=args.gene_id_attr,
        progress=not args.no_progress,
    )
    print(f"wrote {result.cells_written} cells to {result.path}")
    for path, counts in result.files.items():
        details = ", ".join(f"{key} {value}" for key, value in counts.items() if value)
        print(f"  {path}: {details}")
    return 0
