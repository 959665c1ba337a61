"""mindformer_gf: Geneformer on MindSpore, with a pure-numpy reference, for Ascend and CPU.

Importing the package is cheap: MindSpore is only imported when a model is built.
"""

from __future__ import annotations

from typing import Any

from mindformer_gf.config import ConfigError, GeneformerConfig

__version__ = "0.1.0"

# the reference's six classes (`from geneformer import ...`), each imported from its module on first use: importing
# the package stays cheap (no MindSpore, no torch) while `from mindformer_gf import EmbExtractor` works
GENEFORMER_CLASSES = {
    "TranscriptomeTokenizer": "mindformer_gf.tokenizer",
    "Classifier": "mindformer_gf.tasks.geneformer_classifier",
    "MTLClassifier": "mindformer_gf.tasks.geneformer_mtl",
    "EmbExtractor": "mindformer_gf.tasks.embeddings",
    "InSilicoPerturber": "mindformer_gf.tasks.perturb",
    "InSilicoPerturberStats": "mindformer_gf.tasks.perturb",
}

__all__ = [
    "ConfigError",
    "GeneformerConfig",
    "from_pretrained",
    "save_pretrained",
    "__version__",
    *GENEFORMER_CLASSES,
]


def __getattr__(name: str) -> Any:
    module_name = GENEFORMER_CLASSES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'mindformer_gf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def from_pretrained(directory: str, **kwargs: Any) -> Any:
    """Build the model named by `directory/config.json`'s `architectures` and load its weights."""
    # imported here: MindSpore loads only when a model is built (importing the package stays cheap)
    from mindformer_gf.pretrained import from_pretrained as _from_pretrained

    return _from_pretrained(directory, **kwargs)


def save_pretrained(model: Any, directory: str, **kwargs: Any) -> Any:
    """Write a model as a MindSpore model directory (see `mindformer_gf.pretrained.save_pretrained`)."""
    # imported here: MindSpore loads only when a model is built (importing the package stays cheap)
    from mindformer_gf.pretrained import save_pretrained as _save_pretrained

    return _save_pretrained(model, directory, **kwargs)
