"""mindformer_gf: Geneformer on MindSpore, with a pure-numpy reference, for Ascend and CPU.

Importing the package is cheap: MindSpore is only imported when a model is built.
"""

from __future__ import annotations

from typing import Any

from mindformer_gf.config import ConfigError, GeneformerConfig

__version__ = "0.1.0"
__all__ = ["ConfigError", "GeneformerConfig", "from_pretrained", "save_pretrained", "__version__"]


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
