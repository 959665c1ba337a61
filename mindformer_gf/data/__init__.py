"""Batches for training and inference: length buckets, length-grouped plans, padding, masking, collation.

Pure numpy (and `datasets` for reading corpora); nothing here imports MindSpore.

Building blocks, in the order a run uses them:
- `load_corpus(path, vocab_size)`, `corpus_lengths(ds)`, `read_cells(ds, indices)`, `corpus_special_tokens(ds)`;
  `compact_vocabulary(path, new_path)` renumbers a corpus to the genes it holds (a small model's output layer);
- `choose_bucket_widths(lengths, num_buckets, max_length)` -> `LengthBuckets` (a few fixed padded widths: one graph
  compilation each);
- `LengthGroupedPlan(lengths, buckets, batch_size, group_size, seed)`: the run's order of micro-batches, a pure
  function of the step number (resume = step number; `group_size` = ranks x accumulation steps);
- a collate function per task: `MaskedLMCollator` (`mask_batch`: 15%, 80/10/10, specials never masked, fixed
  prediction slots per width) or `LabelledCollator` (`collate`: cell labels [B] or token labels [B, width], -100
  where none);
- `PlannedBatches(plan, collator)`: the step source the training loop consumes.

Fine-tuning example (cell classification):
    lengths = corpus_lengths(ds)
    buckets = choose_bucket_widths(lengths, num_buckets=4, max_length=2048)
    plan = LengthGroupedPlan(lengths, buckets, batch_size=12, group_size=world_size * accumulation, seed=0)
    source = PlannedBatches(plan, LabelledCollator(ds, 12, cell_labels=np.asarray(ds["label"])))
"""

from mindformer_gf.data.batches import LabelledCollator, MaskedLMCollator, PlannedBatches
from mindformer_gf.data.buckets import LengthBuckets, choose_bucket_widths
from mindformer_gf.data.collate import IGNORE_INDEX, collate, pad_cells
from mindformer_gf.data.corpus import (
    compact_vocabulary,
    corpus_lengths,
    corpus_special_tokens,
    load_corpus,
    read_cells,
)
from mindformer_gf.data.masking import MaskingSpec, cell_rng, mask_batch, mask_cell, special_tokens_from_metadata
from mindformer_gf.data.sampler import LengthGroupedPlan, MicroBatch

__all__ = [
    "IGNORE_INDEX",
    "LabelledCollator",
    "LengthBuckets",
    "LengthGroupedPlan",
    "MaskedLMCollator",
    "MaskingSpec",
    "MicroBatch",
    "PlannedBatches",
    "cell_rng",
    "choose_bucket_widths",
    "collate",
    "compact_vocabulary",
    "corpus_lengths",
    "corpus_special_tokens",
    "load_corpus",
    "mask_batch",
    "mask_cell",
    "pad_cells",
    "read_cells",
    "special_tokens_from_metadata",
]
