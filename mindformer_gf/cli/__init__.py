"""The `gf` command: one subcommand per module in this package, each parsing arguments and making one API call.

A subcommand module defines `register(subparsers)` (adds its parser and sets `run` as the handler) and nothing
else of substance; the work lives in the package's other modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mindformer_gf.threads import add_threads_argument, apply_threads

# Subcommand modules, in the order `gf --help` lists them.
SUBCOMMANDS = ("demo", "convert", "tokenize", "pretrain", "classify", "embed")


def build_parser() -> argparse.ArgumentParser:
    from mindformer_gf import __version__

    parser = argparse.ArgumentParser(prog="gf", description="Geneformer on MindSpore (CPU and Ascend)")
    parser.add_argument("--version", action="version", version=f"mindformer_gf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"mindformer_gf.cli.{name}").register(subparsers)
        add_threads_argument(subparsers.choices[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        apply_threads(args.threads)
    except ValueError as err:
        print(f"gf {args.command}: {err}", file=sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
