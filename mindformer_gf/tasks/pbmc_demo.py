"""`gf demo` (`make demo`): the main job on real cells shipped in the package, nothing downloaded.

1. tokenize the 700 PBMC cells of `pbmc68k_reduced.h5ad` (10x, 10 annotated cell types): `.raw.X` holds log1p of
   per-cell normalised counts by gene symbol, so expm1 recovers values proportional to counts (ranking within a
   cell is what the tokenizer uses, and a per-cell scale does not change it); symbols map to Ensembl IDs through the
   shipped V1 gene name dictionary;
2. split the cells into train / validation / test (stratified by cell type);
3. pretrain a small Geneformer (masked-gene modelling) from random weights on the train + validation cells only (no
   Geneformer weights can be downloaded here, and 560 cells teach a model little: the numbers say what it is);
4. fine-tune a cell-type classifier on the train cells, choose the epoch by validation macro-F1, test it;
5. the baseline: logistic regression (scikit-learn) on the same split, on the expression profile (log1p of
   normalised counts, standardised);
6. cell embeddings of every cell from the fine-tuned encoder, UMAP and clustered heatmap coloured by cell type;
7. in silico deletion: every gene of 5 CD14+ monocytes deleted in turn, the shift of each toward the dendritic
   cells' mean embedding, genes ranked by goal_state_shift statistics and plotted.
Prints accuracy and macro-F1 of both models on the same test cells, the time of each stage and the files written.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.data.pbmc68k import CELL_TYPE, expression_profile, tokenize_pbmc68k
from mindformer_gf.finetune.fit import FineTuneSettings
from mindformer_gf.finetune.metrics import classification_metrics
from mindformer_gf.io import write_json
from mindformer_gf.resources import example_cells_path
from mindformer_gf.tasks.cell import CellClassifier
from mindformer_gf.tasks.embeddings import EmbExtractor
from mindformer_gf.tasks.perturb import InSilicoPerturber, InSilicoPerturberStats, get_state_embs
from mindformer_gf.tokenizer.writer import save_dataset
from mindformer_gf.train import PretrainSettings, pretrain, unigram_entropy

# The demo model: small enough to pretrain and fine-tune on 2 CPU cores within minutes.
DEMO_MODEL = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
}


@dataclass
class DemoSettings:
    output_dir: str = "demo_output"
    pretrain_steps: int = 120
    pretrain_learning_rate: float = 3e-3
    finetune_epochs: float = 15.0
    finetune_learning_rate: float = 1e-3
    batch_size: int = 12
    split_sizes: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    model: dict = field(default_factory=lambda: dict(DEMO_MODEL))
    progress_bar: bool = True
    # padded widths (one graph compilation each) of pretraining, fine-tuning and embedding
    num_buckets: int = 3
    # genes kept per cell (the top-ranked ones); None: every gene the tokenizer writes
    genes_per_cell: int | None = None

    @classmethod
    def quick(cls, **changes: Any) -> DemoSettings:
        """Every stage on tiny sizes (a one-layer model, 64 genes per cell, a few steps, one graph per stage): the
        workflow end to end in well under a minute; the numbers mean nothing."""
        model = dict(DEMO_MODEL, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32)
        model["max_position_embeddings"] = 64
        quick = {
            "pretrain_steps": 4,
            "finetune_epochs": 0.5,
            "model": model,
            "num_buckets": 1,
            "genes_per_cell": 64,
        }
        return cls(**{**quick, **changes})


class StageClock:
    """Wall time of each named stage, printed as it finishes."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._started = time.perf_counter()

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        print(f"\n== {name} ==", flush=True)
        tick = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = time.perf_counter() - tick
        print(f"-- {name}: {self.times[name]:.1f} s", flush=True)
        return result

    @property
    def total(self) -> float:
        return time.perf_counter() - self._started


def logistic_regression_baseline(
    features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, class_names: list[str], seed: int
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    model.fit(features[train], labels[train])
    probabilities = np.zeros((test.size, len(class_names)))
    probabilities[:, model.classes_] = model.predict_proba(features[test])
    return classification_metrics(labels[test], probabilities, class_names)


def run_demo(output_dir: str | os.PathLike = "demo_output", quick: bool = False, progress: bool = True) -> dict:
    """Run the demo into `output_dir`; `quick` shortens every stage (a smoke test, numbers meaningless)."""
    make = DemoSettings.quick if quick else DemoSettings
    settings = make(output_dir=str(output_dir), progress_bar=progress)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not progress:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock()
    source = example_cells_path("pbmc68k_reduced")
    print(f"mindformer_gf demo: cell-type classification of {source.name} (700 PBMCs, 10 types) -> {out}/")

    # 1. tokenize
    def tokenize_cells() -> Any:
        from datasets import load_from_disk

        attributes = {"barcode": "barcode", CELL_TYPE: CELL_TYPE, "louvain": "louvain", "phase": "phase"}
        result = tokenize_pbmc68k(out / "data", "pbmc68k", attributes, progress, settings.genes_per_cell)
        dataset = load_from_disk(str(result.path))
        lengths = np.asarray(dataset["length"])
        genes = next(iter(result.files.values()))  # the one input file's counts
        print(
            f"{result.cells_written} cells -> {result.path}; genes per cell {lengths.min()}-{lengths.max()} "
            f"(mean {lengths.mean():.0f}); {genes.get('cells_empty_dropped', 0)} empty cells dropped"
        )
        return dataset

    dataset = clock.run("tokenize", tokenize_cells)

    # 2. split (the classifier's own preparation and splitter, so fine-tuning sees the same cells)

    finetune = FineTuneSettings(
        num_train_epochs=settings.finetune_epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.finetune_learning_rate,
        lr_scheduler_type="linear",
        warmup_ratio=0.1,
        weight_decay=0.001,
        seed=settings.seed,
        num_buckets=settings.num_buckets,
        progress_bar=progress,
    )
    classifier = CellClassifier(state_key=CELL_TYPE, settings=finetune)
    classify_dir = out / "cell_classifier"
    prepared = classifier.prepare_data(dataset, classify_dir)
    (split,) = classifier.make_splits(dataset, prepared, settings.split_sizes)
    write_json(classify_dir / "splits.json", {"split": split.as_dict()})
    print(
        f"classes: {prepared.class_counts()}\nsplit: {split.train.size} train, {split.valid.size} validation, "
        f"{split.test.size} test cells (stratified by cell type)"
    )

    # 3. pretrain on the train + validation cells only
    def pretrain_model() -> Path:
        pretrain_rows = np.sort(prepared.indices[np.concatenate([split.train, split.valid])])
        corpus = out / "data" / "pretrain_cells.dataset"
        save_dataset(dataset.select(pretrain_rows), corpus, overwrite=True)
        result = pretrain(
            PretrainSettings(
                dataset=str(corpus),
                output_dir=str(out / "pretrain"),
                model="Geneformer-V1-10M",
                model_overrides=dict(settings.model),
                max_steps=settings.pretrain_steps,
                per_device_train_batch_size=settings.batch_size,
                learning_rate=settings.pretrain_learning_rate,
                lr_scheduler_type="cosine",
                min_lr_ratio=0.1,
                warmup_steps=max(1, settings.pretrain_steps // 10),
                num_buckets=settings.num_buckets,
                save_every=settings.pretrain_steps,
                save_total_limit=1,
                log_every=max(1, settings.pretrain_steps // 20),
                seed=settings.seed,
                progress_bar=progress,
            )
        )
        losses = result.losses
        head, tail = np.mean(losses[: max(1, len(losses) // 10)]), np.mean(losses[-max(1, len(losses) // 10) :])
        tokens = np.concatenate(dataset.select(pretrain_rows).with_format("numpy")["input_ids"])
        print(
            f"pretrained {result.steps} steps on {pretrain_rows.size} cells: masked-gene loss {head:.3f} (first "
            f"10%) -> {tail:.3f} (last 10%); context-free baseline (entropy of the gene frequencies) "
            f"{unigram_entropy(tokens):.3f}"
        )
        return out / "pretrain" / "model"

    model_dir = clock.run("pretrain (masked-gene modelling, random start)", pretrain_model)

    # 4. fine-tune and test
    run = clock.run("fine-tune cell classifier", classifier.train, model_dir, dataset, prepared, split, classify_dir)

    # 5. baseline
    def baseline() -> dict[str, Any]:
        barcodes = np.asarray(dataset.with_format("numpy")["barcode"]).astype(str)[prepared.indices]
        features = expression_profile(source, barcodes)
        names = [prepared.id2label[i] for i in range(prepared.num_classes)]
        metrics = logistic_regression_baseline(features, prepared.labels, split.train, split.test, names, settings.seed)
        write_json(out / "baseline_logistic_regression.json", metrics)
        return metrics

    baseline_metrics = clock.run("baseline: logistic regression on expression", baseline)

    # 6. embeddings and plots
    def embed() -> list[Path]:
        extractor = EmbExtractor(
            emb_mode="cell",
            emb_layer=-1,
            emb_label=[CELL_TYPE, "louvain"],
            max_ncells=None,
            summary_stat="exact_mean",
            num_buckets=settings.num_buckets,
            seed=settings.seed,
            progress=progress,
        )
        embs = extractor.extract_embs(run.model_dir, dataset, out / "embeddings", "pbmc68k_cells")
        files = list(embs.files)
        files += extractor.plot_embs(embs, "umap", out / "embeddings", "pbmc68k_cells", label=CELL_TYPE)
        files += extractor.plot_embs(embs, "heatmap", out / "embeddings", "pbmc68k_cells", label=CELL_TYPE)
        print(f"{embs.matrix.shape[0]} cell embeddings of {embs.matrix.shape[1]} dimensions (layer -1)")
        return files

    clock.run("embeddings and plots", embed)
    clock.run(
        "in silico deletion toward another cell type",
        perturbation_stage,
        run.model_dir,
        dataset,
        out,
        progress,
        n_cells=2 if quick else PERTURB_CELLS,
        max_state_cells=60 if quick else None,
    )

    test = run.test_metrics
    n_pretrain = int(split.train.size + split.valid.size)
    summary = {
        "test_cells": int(split.test.size),
        "geneformer_small": {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"]},
        "logistic_regression": {"accuracy": baseline_metrics["accuracy"], "macro_f1": baseline_metrics["macro_f1"]},
        "stage_seconds": {k: round(v, 1) for k, v in clock.times.items()},
        "total_seconds": round(clock.total, 1),
        "model": settings.model,
    }
    write_json(out / "demo_summary.json", summary)
    print(f"\n== results on the same {split.test.size} test cells ==")
    print(f"{'model':62s} {'accuracy':>9s} {'macro-F1':>9s}")
    print(
        f"{f'small Geneformer (pretrained here on {n_pretrain} cells), fine-tuned':62s} "
        f"{test['accuracy']:9.3f} {test['macro_f1']:9.3f}"
    )
    print(
        f"{'logistic regression on the expression profile':62s} "
        f"{baseline_metrics['accuracy']:9.3f} {baseline_metrics['macro_f1']:9.3f}"
    )
    print("\n== time per stage ==")
    for name, seconds in clock.times.items():
        print(f"{seconds:8.1f} s  {name}")
    print(f"{clock.total:8.1f} s  total")
    print(f"\n== files written under {out}/ ==")
    for path in sorted(p for p in out.rglob("*") if _listed(p, out)):
        print(f"  {path.relative_to(out)}{'/' if path.is_dir() else ''}")
    return summary


# The perturbation stage: delete every gene of a few monocytes and rank the genes whose loss moves them most
# toward dendritic cells (a related myeloid type).
PERTURB_START, PERTURB_GOAL, PERTURB_CELLS = "CD14+ Monocyte", "Dendritic", 5


def perturbation_stage(
    model_dir: str | os.PathLike,
    dataset: Any,
    out: Path,
    progress: bool = True,
    n_cells: int = PERTURB_CELLS,
    max_state_cells: int | None = None,
) -> list[Path]:
    """`gf perturb` + `gf perturb-stats --mode goal_state_shift` on the fine-tuned model: every gene of `n_cells`
    start-state cells deleted in turn, shifts toward the goal state's mean embedding (over at most
    `max_state_cells` cells of each state), the top genes plotted."""
    import shutil

    states = {"state_key": CELL_TYPE, "start_state": PERTURB_START, "goal_state": PERTURB_GOAL, "alt_states": []}
    target = out / "perturbation"
    shutil.rmtree(target / "delete_all.parquet", ignore_errors=True)  # a fresh run of the demo, not a resume
    state_embs = get_state_embs(states, model_dir, dataset, max_ncells=max_state_cells, progress=progress)
    perturber = InSilicoPerturber(
        perturb_type="delete",
        genes_to_perturb="all",
        cell_states_to_model=states,
        state_embs_dict=state_embs,
        max_ncells=n_cells,
        emb_mode="cell",
        emb_label=[CELL_TYPE],
        forward_batch_size=64,
        progress=progress,
    )
    table = perturber.perturb_data(model_dir, dataset, target, "delete_all")
    stats = InSilicoPerturberStats(model_version="V1", mode="goal_state_shift", cell_states_to_model=states)
    result = stats.get_stats(table, None, target, "goal_state_shift")
    # genes seen in one or two cells top a 5-cell ranking by chance: show those deleted in most of the cells
    often = result.table[result.table.N_Detections >= min(3, n_cells)]
    print(
        f"deleted every gene of {n_cells} {PERTURB_START} cells: {len(result.table)} genes, "
        f"{int(result.table.Sig.sum())} with FDR < 0.05; largest mean shifts toward {PERTURB_GOAL} among the "
        f"{len(often)} genes in >= {min(3, n_cells)} cells:"
    )
    for _, row in often.head(5).iterrows():
        print(
            f"  {row.Gene_name or row.Ensembl_ID:10s} shift {row.Shift_to_goal_end:+.4f}  FDR {row.Goal_end_FDR:.3g}  "
            f"({row.N_Detections} cells)"
        )
    return [table, result.csv, *result.plots]


def _listed(path: Path, root: Path) -> bool:
    """Files, and datasets as one directory each (not their shards)."""
    parts = path.relative_to(root).parts
    if any(p.endswith(".dataset") for p in parts[:-1]) or any(p.startswith(".") for p in parts):
        return False
    return path.is_file() or path.name.endswith(".dataset")
