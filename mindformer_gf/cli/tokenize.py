"""`gf tokenize INPUT... OUTPUT_DIR --prefix P`: rank value encode .h5ad/.loom files into a Geneformer dataset."""

from __future__ import annotations

import argparse

from mindformer_gf.tokenizer.cli import add_tokenize_arguments, run_tokenize


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenize", help="rank value encode .h5ad/.loom files into a Geneformer dataset (HF datasets on disk)"
    )
    add_tokenize_arguments(parser)
    parser.set_defaults(run=run_tokenize)
