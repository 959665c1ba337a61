"""Training: the generic loop, AdamW and schedules, mixed precision, data parallelism, checkpoints and metrics.

Generic use (pretraining and fine-tuning alike):
    settings = TrainSettings(output_dir="run", max_steps=1000, learning_rate=5e-5, warmup_steps=100)
    trainer = Trainer(model, objective, source, settings)   # objective: an `Objective` cell (see below)
    result = trainer.train(resume="auto")                   # -> TrainResult (steps, losses, checkpoint, ...)

- `objective`: an `Objective` cell, `construct(*arrays named by .input_names) -> (loss_sum, item_count, *metric
  sums named by .metric_names)`, e.g. `MaskedLMObjective(model)`, `ClassificationObjective(model)`. Sums, not means:
  the loop divides by the global item count of the step (over ranks and accumulation steps).
- `source`: a step source (`mindformer_gf.data.PlannedBatches`): the micro-batches of each step, a pure function of
  the step number, so resuming needs only the step.
- outputs in `settings.output_dir`: `metrics.csv` (step, loss, accuracy, lr, grad norm, loss scale, skipped steps,
  cells/s, tokens/s, padding waste), `loss_curve.png`, `train_config.json`, `checkpoints/step-XXXXXXXX/` (last
  `save_total_limit` kept; each one is also a model directory for `from_pretrained`).
- settings: `TrainSettings`/`PretrainSettings` from YAML/JSON via `load_settings(cls, path, overrides)`.
- data parallel: start the same command under `msrun`; `init_distributed()` joins the group and the loop averages
  gradients over ranks (see `mindformer_gf.train.distributed`).
Pretraining end to end: `pretrain(PretrainSettings(...))`.
"""

from mindformer_gf.train.distributed import ParallelContext, init_distributed
from mindformer_gf.train.loop import Trainer, TrainResult
from mindformer_gf.train.objectives import ClassificationObjective, MaskedLMObjective, summed_cross_entropy
from mindformer_gf.train.optim import AdamW, build_adamw, decays_weight
from mindformer_gf.train.pretraining import pretrain, unigram_entropy
from mindformer_gf.train.schedule import learning_rate
from mindformer_gf.train.settings import (
    PretrainSettings,
    TrainSettings,
    load_settings,
    parse_overrides,
    save_settings,
)
from mindformer_gf.train.step import Objective

__all__ = [
    "AdamW",
    "ClassificationObjective",
    "MaskedLMObjective",
    "Objective",
    "ParallelContext",
    "PretrainSettings",
    "TrainResult",
    "TrainSettings",
    "Trainer",
    "build_adamw",
    "decays_weight",
    "init_distributed",
    "learning_rate",
    "load_settings",
    "parse_overrides",
    "pretrain",
    "save_settings",
    "summed_cross_entropy",
    "unigram_entropy",
]
