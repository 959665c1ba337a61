"""`from_pretrained`: a model directory in, a ready MindSpore model out."""

from __future__ import annotations

import warnings
from pathlib import Path

from mindformer_gf.config import GeneformerConfig
from mindformer_gf.convert import load_hf_weights
from mindformer_gf.model import GeneformerPreTrainedModel, build_model

# Parameters a checkpoint may lack and that are then initialised fresh: a classifier built from a pretrained
# (masked-LM) checkpoint has no pooler and no classifier yet.
FRESH_ALLOWED_PREFIXES = ("bert.pooler.", "pooler.", "classifier.")


def from_pretrained(
    directory: str | Path, architecture: str | None = None, seed: int = 0, **config_overrides: object
) -> GeneformerPreTrainedModel:
    """Build the model named by config.json's `architectures` (or `architecture`) and load the directory's weights.

    Heads absent from the checkpoint (pooler, classifier) are initialised with `seed` and reported in a warning.
    """
    config = GeneformerConfig.from_pretrained(directory)
    if config_overrides:
        config = config.replace(**config_overrides)
    architecture = architecture or config.architecture
    weights, missing = load_hf_weights(directory, config, architecture)
    not_fresh = [name for name in missing if not name.startswith(FRESH_ALLOWED_PREFIXES)]
    if not_fresh:
        raise KeyError(f"{directory}: the checkpoint lacks parameters of {architecture}: {not_fresh}")
    model = build_model(config, architecture, seed=seed if missing else None)
    if missing:
        warnings.warn(f"{directory}: initialised fresh (not in the checkpoint): {missing}", stacklevel=2)
        weights = {**model.state_dict(), **weights}
    model.load_weights(weights)
    model.set_train(False)
    return model
