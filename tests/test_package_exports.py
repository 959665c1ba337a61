"""The reference's six classes importable from `mindformer_gf`, lazily: importing the package loads neither MindSpore
nor torch."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

import mindformer_gf

SIX_CLASSES = [
    "TranscriptomeTokenizer",
    "Classifier",
    "MTLClassifier",
    "EmbExtractor",
    "InSilicoPerturber",
    "InSilicoPerturberStats",
]


def test_import_loads_neither_mindspore_nor_torch() -> None:
    code = (
        "import json, sys, mindformer_gf; "
        "print(json.dumps([m for m in ('mindspore', 'torch', 'datasets') if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_six_names_listed() -> None:
    assert set(SIX_CLASSES) <= set(mindformer_gf.__all__)
    assert set(SIX_CLASSES) <= set(dir(mindformer_gf))


@pytest.mark.parametrize("name", SIX_CLASSES)
def test_each_class_imports_from_the_package(name: str) -> None:
    module_name = mindformer_gf.GENEFORMER_CLASSES[name]
    cls = getattr(mindformer_gf, name)
    assert cls is getattr(importlib.import_module(module_name), name)
    assert cls.__name__ == name


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NotAClass'"):
        mindformer_gf.NotAClass  # noqa: B018
