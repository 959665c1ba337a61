"""The `gf` command: one subcommand per module in this package, each parsing arguments and making one API call.

A subcommand module defines `register(subparsers)` (adds its parser and sets `run` as the handler) and nothing
else of substance; the work lives in the package's other modules.

Errors are reported here, once for every subcommand: an expected failure (bad input the user can fix: our own error
classes, a missing or existing file, a missing column, a bad value) becomes one line `gf <command>: error: <message>`
on stderr and exit status 1 (2 for a bad argument, as argparse does); `--debug` or GF_DEBUG=1 adds the traceback.
Anything else is a bug: its traceback is shown with a request to report it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from mindformer_gf import __version__
from mindformer_gf.safe_pickle import UnsafePickleError
from mindformer_gf.threads import add_threads_argument, apply_threads

# Subcommand modules, in the order `gf --help` lists them.
SUBCOMMANDS = ("demo", "convert", "tokenize", "pretrain", "classify", "embed", "perturb")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


class UsageError(Exception):
    """A bad command-line argument found after parsing (reported like argparse's own errors: exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gf", description="Geneformer on MindSpore (CPU and Ascend)")
    parser.add_argument("--version", action="version", version=f"mindformer_gf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"mindformer_gf.cli.{name}").register(subparsers)
    _add_common_flags(parser, top=True)
    return parser


def _add_common_flags(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """`--debug` on `gf` and on every (sub)subcommand, `--threads` on every (sub)subcommand, and each parser's name
    recorded as `prog` for the error line. The defaults are SUPPRESS so that a subcommand's parser does not reset a
    value given before it."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    if not top:
        add_threads_argument(parser)
    parser.set_defaults(prog=parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_common_flags(child)


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is bad input the user can fix, not a bug.

    Our own error classes (ConfigError, CheckpointError, TokenizerInputError, DictionaryMismatchError, ... all
    ValueErrors) always are; so are OSErrors (the file system's answer about the user's paths: missing, existing,
    unwritable) and refused pickles. A plain ValueError, KeyError (a missing column) or NotImplementedError (an option
    this device lacks) is one of our validation messages when our code raised it; raised inside another library
    (numpy, MindSpore, ...) it is not, and counts as a bug.
    """
    if isinstance(error, (OSError, UnsafePickleError, UsageError)):
        return True
    if type(error).__module__.split(".")[0] == "mindformer_gf":
        return True
    if isinstance(error, (ValueError, KeyError, NotImplementedError)):
        return _raised_in_package(error)
    return False


def _raised_in_package(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    innermost = Path(frames[-1].filename).resolve()
    return _PACKAGE_DIR in innermost.parents


def error_message(error: BaseException) -> str:
    """The one line shown for a user error: the message (an OSError's file name spelt out), newlines folded."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        message = f"{error.filename}: {error.strerror}"
    elif isinstance(error, KeyError) and len(error.args) == 1:
        message = str(error.args[0])  # str(KeyError) would quote the message
    else:
        message = str(error) or type(error).__name__
    return " ".join(message.split())


def _debug_requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("GF_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    prog = getattr(args, "prog", "gf")
    try:
        try:
            apply_threads(getattr(args, "threads", None))
        except ValueError as err:
            raise UsageError(str(err)) from None
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place where errors become exit statuses
        if not is_user_error(error):
            traceback.print_exc()
            print(
                f"{prog}: internal error: {type(error).__name__}: {error_message(error)}\n"
                "This is a bug in mindformer_gf, not a problem with your input: please report it to the mindformer_gf "
                "developers with the command and the traceback above.",
                file=sys.stderr,
            )
            return 1
        if _debug_requested(args):
            traceback.print_exc()
        print(f"{prog}: error: {error_message(error)}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
