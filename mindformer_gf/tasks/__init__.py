"""The fine-tuning tasks: cell classification, gene classification, embeddings with plots, multitask classification.

Each task runs on the package's training loop (`mindformer_gf.train.Trainer`) in MindSpore graph mode, on the CPU or
Ascend with the same code, and writes files one can open (CSV, JSON, PNG/PDF, a MindSpore model directory).

    from mindformer_gf.tasks import CellClassifier, GeneClassifier, EmbExtractor, MultitaskClassifier
    from mindformer_gf.tasks import FineTuneSettings

- `CellClassifier(state_key, ..., settings)`.run(dataset, model_dir, out)      `gf classify cell`
- `GeneClassifier(gene_classes, n_folds, ..., settings)`.run(dataset, model_dir, out)   `gf classify gene`
- `EmbExtractor(emb_mode, emb_layer, emb_label, ...)`.extract_embs / plot_embs   `gf embed`
- `MultitaskClassifier(task_columns, ..., pooling)`.run(dataset, model_dir, out)    `gf classify multitask`
- `MTLClassifier(task_columns=..., train_path=..., val_path=..., ...)`: the reference's multitask workflow
  (run_optuna_study / run_manual_tuning / load_and_evaluate_test_model) over MultitaskClassifier's model.
- `Classifier(classifier="cell" | "gene", ...)`: the reference's class, keyword for keyword, over the first two
  (mindformer_gf.tasks.geneformer_classifier)
- `InSilicoPerturber(...)`.perturb_data / `InSilicoPerturberStats(mode, ...)`.get_stats    `gf perturb`,
  `gf perturb-stats` (mindformer_gf.tasks.perturb)

`FineTuneSettings` carries the training options (epochs, batch size, learning rate, schedule and warmup, weight
decay, seed) and the strategy: "finetune" with `freeze_layers`, "adapters" (bottleneck adapters, encoder frozen),
"extra_layer" (one fresh layer on top, encoder frozen); `regression=True` on a task swaps the classifier for a
one-output head trained with MSE. `run_demo()` is `gf demo` / `make demo`.
"""

from __future__ import annotations

from typing import Any

from mindformer_gf.finetune.fit import FineTuneSettings
from mindformer_gf.tasks.cell import CellClassifier, CellRunResult, CellTaskResult
from mindformer_gf.tasks.embeddings import Embeddings, EmbExtractor
from mindformer_gf.tasks.gene import GeneClassifier, GeneTaskResult
from mindformer_gf.tasks.geneformer_mtl import MTLClassifier
from mindformer_gf.tasks.multitask import MultitaskClassifier, MultitaskResult


def __getattr__(name: str) -> Any:
    if name == "Classifier":  # the reference's Classifier (its prepare/validate/evaluate workflow)
        from mindformer_gf.tasks.geneformer_classifier import Classifier

        return Classifier
    # the perturbation classes load lazily: importing the tasks must not pay for scipy.stats and statsmodels
    if name in ("InSilicoPerturber", "InSilicoPerturberStats", "get_state_embs"):
        from mindformer_gf.tasks import perturb

        return getattr(perturb, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_demo(*args: Any, **kwargs: Any) -> Any:
    """The main job on the shipped PBMC cells (see mindformer_gf.tasks.pbmc_demo)."""
    # imported here: the demo's stack (tokenizer, pretraining, plots) loads only when it runs
    from mindformer_gf.tasks.pbmc_demo import run_demo as _run_demo

    return _run_demo(*args, **kwargs)


__all__ = [
    "CellClassifier",
    "CellRunResult",
    "CellTaskResult",
    "Classifier",
    "EmbExtractor",
    "Embeddings",
    "FineTuneSettings",
    "GeneClassifier",
    "GeneTaskResult",
    "InSilicoPerturber",
    "InSilicoPerturberStats",
    "MTLClassifier",
    "MultitaskClassifier",
    "MultitaskResult",
    "run_demo",
]
