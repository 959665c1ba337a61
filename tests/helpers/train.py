"""Tiny models and corpora shared by the training tests (seconds, not minutes)."""

from __future__ import annotations

import numpy as np

from mindformer_gf.data import MaskingSpec, mask_batch
from mindformer_gf.train import MaskedLMObjective

TINY_MODEL = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
SPECIAL_TOKENS = {"<pad>": 0, "<mask>": 1}
STEP_WIDTH = 32  # padded width of the micro-batches of make_steps


def write_corpus(directory, num_cells: int, min_length: int, max_length: int, vocab_size: int, seed: int = 0):
    """A tokenized-dataset directory of random cells (genes drawn from a skewed distribution, so there is
    something to learn) with `input_ids` and `length` columns, as `gf tokenize` writes them."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    genes = np.arange(2, vocab_size)
    weights = 1.0 / np.arange(1, genes.size + 1)
    weights /= weights.sum()
    lengths = rng.integers(min_length, max_length + 1, size=num_cells)
    cells = [rng.choice(genes, size=min(int(n), genes.size), replace=False, p=weights).tolist() for n in lengths]
    Dataset.from_dict({"input_ids": cells, "length": [len(c) for c in cells]}).save_to_disk(str(directory))
    return directory


class ListSource:
    """A step source over fixed micro-batches; remembers the weights seen when each step's batches are requested
    (= the weights after the previous step)."""

    def __init__(self, steps: list[list[dict]], model=None) -> None:
        self.steps = steps
        self.model = model
        self.weights_before: dict[int, dict[str, np.ndarray]] = {}
        self.steps_per_epoch = len(steps)
        self.items_per_batch = 10

    def batches(self, step, rank=0, world_size=1):
        if self.model is not None:
            self.weights_before[step] = {k: v.copy() for k, v in self.model.state_dict().items()}
        return self.steps[step]

    def step_tokens(self, step):
        rows = [b["attention_mask"] for b in self.steps[step]]
        return sum(r.shape[0] for r in rows), int(sum(r.sum() for r in rows)), int(sum(r.size for r in rows))

    def fingerprint(self):
        return {"steps": len(self.steps)}


def make_steps(num_steps: int, rows_per_micro: int, poison_step: int | None = None) -> list[list[dict]]:
    rng = np.random.default_rng(4)
    spec = MaskingSpec(TINY_MODEL["vocab_size"], SPECIAL_TOKENS["<mask>"], tuple(SPECIAL_TOKENS.values()))
    steps = []
    for step in range(num_steps):
        micro = []
        for part in range(2):
            lengths = rng.integers(5, STEP_WIDTH + 1, size=rows_per_micro)
            cells = [rng.integers(2, TINY_MODEL["vocab_size"], size=n) for n in lengths]
            index = [step * 100 + part * 10 + r for r in range(rows_per_micro)]
            batch = mask_batch(cells, index, STEP_WIDTH, spec, seed=0, epoch=0)
            if poison_step is not None:
                batch["poison"] = np.array([np.inf if step == poison_step else 1.0], np.float32)
            micro.append(batch)
        steps.append(micro)
    return steps


class PoisonedObjective(MaskedLMObjective):
    """The masked-LM loss times a per-batch factor: inf makes every gradient of that step non-finite."""

    input_names = MaskedLMObjective.input_names + ("poison",)

    def construct(self, dropout_seed, input_ids, attention_mask, masked_positions, labels, poison):
        loss_sum, count, correct = super().construct(dropout_seed, input_ids, attention_mask, masked_positions, labels)
        return loss_sum * poison[0], count, correct
