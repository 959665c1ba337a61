"""Every dropout mask of a training step, in numpy: the specification the model's dropout follows.

A training step's randomness is a pure function of where it happens, never of a generator's hidden state:

    step seed  = step_seed(run seed, step, micro-batch)           on the host, fed to the compiled graph as an input
    site seed  = site_seed(step seed, layer, site)                inside the graph, with 32-bit integer mixing
    keep mask  = keep_mask(site seed, p, shape)                   the attention kernel's counter-based hash

`micro-batch` counts the micro-batches of one optimisation step over all data-parallel ranks (rank r's m-th of M is
r * M + m), so a run on N ranks draws the masks of one process accumulating N times as many micro-batches.
`site` is one of SITES; `layer` is the encoder layer (0 for the embeddings and the classifier).

keep_mask views an activation as [outer, rows, columns] (columns = last axis, rows = the one before, outer = the
rest) and keeps x[o, r, c] iff `attention_dropout.dropout_words(seed, o, r, c) >> 8 >= floor(p * 2^24)`: the
attention-probability mask of `attention_dropout` with o in the place of b * H + h, over a [rows, columns] matrix.
What is kept is multiplied by 1 / (1 - p) in float32. Attention dropout uses `attention_dropout.keep_mask` itself,
with the site seed of SITES["attention"]. The site seeds are mixed with the same `mix32`.
"""

from __future__ import annotations

import math

import numpy as np

from mindformer_gf.reference.attention_dropout import LOW32, MIX_MULTIPLIER, keep_scale, mix32
from mindformer_gf.reference.attention_dropout import keep_mask as attention_keep_mask

SITES = {"embeddings": 0, "attention": 1, "attention_output": 2, "ffn_output": 3, "classifier": 4, "lora": 5}
SITES_PER_LAYER = 8
# LoRA's dropout (on the input of each adapted projection, as peft places it) draws one independent mask per
# projection: the "lora" site of the layer, told apart by the projection's index in the high bits of the code
# (site codes of layers below 2^21 stay below 2^24, so no LoRA code equals another site's).
LORA_PROJECTIONS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    "pooler.dense",
)
# LOW32, MIX_MULTIPLIER and mix32 are the spec's, re-exported for the graph's twin of site_seed (model/dropout.py).
__all__ = [
    "LORA_PROJECTIONS",
    "LOW32",
    "MIX_MULTIPLIER",
    "SITES",
    "SITES_PER_LAYER",
    "dropout",
    "keep_mask",
    "lora_site_code",
    "mix32",
    "site_code",
    "site_seed",
    "step_seed",
]


def step_seed(run_seed: int, step: int, micro_batch: int) -> int:
    """The seed of one micro-batch of one optimisation step, in [0, 2^63) (it travels as an int64)."""
    words = np.random.SeedSequence([int(run_seed) & LOW32, int(step), int(micro_batch)]).generate_state(2, np.uint32)
    return (int(words[1]) & 0x7FFFFFFF) << 32 | int(words[0])


def site_code(layer: int, site: str) -> int:
    return int(layer) * SITES_PER_LAYER + SITES[site]


def lora_site_code(layer: int, projection: str) -> int:
    """The site code of LoRA's dropout before `projection` (one of LORA_PROJECTIONS) of `layer` (the pooler: the
    number of layers)."""
    return site_code(layer, "lora") + (LORA_PROJECTIONS.index(projection) << 24)


def site_seed(seed: int, layer: int, site: str, code: int | None = None) -> int:
    """The seed (one int64 in [0, 2^63)) of dropout site `site` of `layer` under step seed `seed` (or of the site
    whose code is `code`, e.g. a `lora_site_code`)."""
    code = site_code(layer, site) if code is None else code
    low = mix32((int(seed) & LOW32) ^ mix32(code))
    high = mix32((int(seed) >> 32) ^ low) & 0x7FFFFFFF
    return high << 32 | low


def keep_mask(seed: int, drop_probability: float, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of `shape`: True where dropout with seed `seed` keeps the element."""
    shape = tuple(int(n) for n in shape)
    columns = shape[-1] if shape else 1
    rows = shape[-2] if len(shape) >= 2 else 1
    outer = math.prod(shape[:-2])
    return attention_keep_mask(seed, drop_probability, outer, 1, rows, columns).reshape(shape)


def dropout(x: np.ndarray, drop_probability: float, seed: int) -> np.ndarray:
    """x * keep / (1 - p) (x itself when p = 0)."""
    if drop_probability == 0.0:
        return x
    return x * keep_mask(seed, drop_probability, x.shape) * keep_scale(drop_probability)
