"""Every constructor and method keyword of the reference's six classes (tests/assets/reference_api_names.json:
facts read from the reference snapshot, github explorerwjy/Geneformer dff467cb, with `ast`) is accepted by ours by
name, with the reference's default unless a documented exception below says why not.

A keyword counts as accepted only as an explicit parameter (inspect.signature), not through **kwargs. A keyword the
reference requires may have a default here (we accept more).
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

import mindformer_gf

ROWS = json.loads((Path(__file__).parent / "assets" / "reference_api_names.json").read_text())

# the reference's defaults that name a module constant: the packaged dictionary files of the current model version.
# Ours is None, meaning the same thing (the shipped file of `model_version`), resolved when the object is built.
PACKAGED_FILE_CONSTANTS = {
    "GENE_MEDIAN_FILE",
    "TOKEN_DICTIONARY_FILE",
    "ENSEMBL_MAPPING_FILE",
    "ENSEMBL_DICTIONARY_FILE",
}

# (class, method, keyword) -> (our default, why it differs). Keep this short: each entry is also in
# docs/moving-from-geneformer.md.
DEFAULT_EXCEPTIONS: dict[tuple[str, str, str], tuple[Any, str]] = {
    ("TranscriptomeTokenizer", "__init__", "model_input_size"): (
        None,
        "None = the model_version's size (4096 for V2, as the reference's default; 2048 for V1)",
    ),
    ("TranscriptomeTokenizer", "__init__", "special_token"): (
        None,
        "None = the model_version's choice (True for V2, as the reference's default; False for V1)",
    ),
    ("TranscriptomeTokenizer", "tokenize_data", "file_format"): (
        None,
        "None = every supported format in the directory (a single file's own suffix); 'loom' still selects .loom",
    ),
    ("TranscriptomeTokenizer", "tokenize_files", "file_format"): (
        None,
        "None = every supported format in the directory (a single file's own suffix); 'loom' still selects .loom",
    ),
}


def _row_id(row: dict[str, Any]) -> str:
    return f"{row['class']}.{row['method']}({row['keyword']})"


def _reference_default(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return ast.parse(text, mode="eval").body  # a name: compared by the rules above


def _our_class(name: str) -> type:
    return getattr(mindformer_gf, name)


def test_the_json_covers_the_six_classes() -> None:
    assert {row["class"] for row in ROWS} == set(mindformer_gf.GENEFORMER_CLASSES)
    assert len(ROWS) == len({_row_id(row) for row in ROWS}) == 251


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_reference_keyword_is_accepted_with_its_default(row: dict[str, Any]) -> None:
    cls = _our_class(row["class"])
    method = getattr(cls, row["method"], None)
    assert method is not None, f"{cls.__name__} has no method {row['method']}"
    parameters = inspect.signature(method).parameters
    parameter = parameters.get(row["keyword"])
    assert parameter is not None, f"{_row_id(row)}: not a parameter of ours ({list(parameters)})"
    assert parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if row["required"]:
        return
    assert parameter.default is not inspect.Parameter.empty, f"{_row_id(row)}: required here, optional there"
    key = (row["class"], row["method"], row["keyword"])
    if key in DEFAULT_EXCEPTIONS:
        assert parameter.default == DEFAULT_EXCEPTIONS[key][0], f"{_row_id(row)}: the documented exception changed"
        return
    reference = _reference_default(row["default"])
    if isinstance(reference, ast.Name):
        assert reference.id in PACKAGED_FILE_CONSTANTS, f"{_row_id(row)}: unknown reference constant {reference.id}"
        assert parameter.default is None, f"{_row_id(row)}: the packaged file is selected by None here"
        return
    assert type(parameter.default) is type(reference) and parameter.default == reference, (
        f"{_row_id(row)}: our default {parameter.default!r}, the reference's {reference!r}"
    )


def test_exceptions_name_real_rows() -> None:
    keys = {(row["class"], row["method"], row["keyword"]) for row in ROWS}
    assert set(DEFAULT_EXCEPTIONS) <= keys
