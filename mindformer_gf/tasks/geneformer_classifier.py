"""The reference's `Classifier` (geneformer/classifier.py): cell-state and gene classification through
`prepare_data` -> `validate` / `train_all_data` -> `evaluate_saved_model` -> `plot_conf_mat` / `plot_roc` /
`plot_predictions`, with the reference's keyword names, defaults and file names, run by our cell and gene classifiers
(mindformer_gf.tasks.cell / gene) on MindSpore.

    from mindformer_gf import Classifier        # was: from geneformer import Classifier
    cc = Classifier(classifier="cell", cell_state_dict={"state_key": "cell_type", "states": "all"},
                    training_args={"num_train_epochs": 1}, freeze_layers=2, num_crossval_splits=1)
    cc.prepare_data(input_data_file="pbmc.dataset", output_directory="out", output_prefix="pbmc")
    all_metrics = cc.validate(model_directory="model_dir", prepared_input_data_file="out/pbmc_labeled.dataset",
                              id_class_dict_file="out/pbmc_id_class_dict.pkl", output_directory="out",
                              output_prefix="pbmc")

Files, as the reference names them (`prefix` = output_prefix, `run` = `{yymmdd}_geneformer_{cell|gene}Classifier_
{prefix}`): `{prefix}_id_class_dict.pkl` ({class id: class name}), `{prefix}_labeled.dataset` (or `_labeled_train` /
`_labeled_test`: the cells with the class id in column "label" (cell) or per-token class ids in "labels" (gene, -100
elsewhere)); `run/ksplit{n}/` per split with the fine-tuned model in `ksplit{n}/model/` (a MindSpore model directory;
`evaluate_saved_model(model_directory=".../ksplit1/")` finds it there), the training records in `ksplit{n}/training/`,
`ksplit{n}/{prefix}_pred_dict.pkl` ({"pred_ids", "label_ids", "predictions": logits}); `run/{prefix}_eval_metrics_
dict.pkl` ({"conf_matrix", "macro_f1": [per split], "acc": [per split], "all_roc_metrics"}); `evaluate_saved_model`
writes `{prefix}_pred_dict.pkl` and `{prefix}_test_metrics_dict.pkl` into its output directory; the plots
`{prefix}_conf_mat`, `{prefix}_roc`, `{prefix}_pred` (.pdf and .png).

What differs by design (docs/moving-from-geneformer.md, "Classifier"):
- Pickles hold plain data only (the reference pickles a pandas DataFrame and transformers' PredictionOutput): in the
  pickles `conf_matrix` is the nested dict `DataFrame.to_dict()` gives ({predicted class: {true class: count}});
  `pandas.DataFrame(d)` rebuilds the reference's frame. The returned metrics hold the DataFrame itself. Pickles are
  read through mindformer_gf.safe_pickle (plain data only).
- Classes are numbered in sorted order of their names (the reference numbers them in `set` order, which changes
  between Python processes); an `id_class_dict_path` given to `prepare_data` fixes any other numbering.
- Splits are stratified by class unless `stratify_splits_col` names another column (the reference splits at random
  then); 5-fold cross-validation uses stratified folds (the reference: contiguous fifths of the shuffled cells); gene
  folds hold out each gene once per 5 folds and split the held-out genes into eval and test genes in the reference's
  proportions. `attr_to_split` + `attr_to_balance`: grouped splits of our splitter, redrawn up to `max_trials` times
  until every balanced attribute's p-value (rank-sum test for numbers, chi-square for categories) reaches
  `pval_threshold`, as the reference does with its own draws.
- `max_ncells` for genes caps each split's cells (as the reference); `rare_threshold` drops classes below that
  fraction of the cells (the reference's `remove_rare` fails on any value > 0).
- `train_classifier` returns a `TrainedClassifier` (the model directory, and `.model` loads it) instead of a
  transformers Trainer.
- `n_hyperopt_trials` runs our Optuna search (mindformer_gf.finetune.search; Ray is not used): per split, that many
  trials over `ray_config` (a {setting: spec} search space in our format, or Ray Tune domain objects, read by their
  bounds), each scored by validation macro-F1, the best trial's model kept; like the reference, `validate` then returns
  None.
- `ngpu`, `nproc`: training and evaluation are data-parallel over the devices msrun starts (`msrun --worker_num=N
  --local_worker_num=N your_script.py` runs the same script on N Ascend devices; rank 0 writes the files); `ngpu`
  is only checked against that launch. Data preparation is vectorised numpy: `nproc` is accepted and not needed.
- `quantize`: bitsandbytes 4/8-bit bases are CUDA-only and refused; `quantize={"peft_config": {...}}` trains LoRA
  adapters on the full-precision base (our "lora" strategy with the config's r, lora_alpha, lora_dropout,
  target_modules).
- `training_args`: transformers' TrainingArguments names that have an equivalent here map onto
  FineTuneSettings (num_train_epochs, learning_rate, lr_scheduler_type, warmup_steps, warmup_ratio, weight_decay,
  per_device_train_batch_size, seed, data_seed, max_grad_norm, save_total_limit, disable_tqdm); FineTuneSettings'
  own fields are accepted too (e.g. "strategy", "device"); the trainer-plumbing names (output_dir, logging_steps,
  evaluation_strategy, ...) are accepted and have no effect (a warning names them); anything else is an error.
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
import os
import pickle
import tempfile
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.finetune.fit import FineTuneSettings
from mindformer_gf.finetune.labels import ALL_STATES, GeneLabels, PreparedCells, cells_holding, token_label_arrays
from mindformer_gf.finetune.splits import Split, gene_folds, k_fold_splits, split_by_fractions
from mindformer_gf.io import atomic_directory, ensure_dir, matplotlib_pyplot, save_figure, write_bytes

logger = logging.getLogger("mindformer_gf.tasks")

IGNORE_LABEL = -100
REFERENCE_SPLIT_SIZES = {"train": 0.8, "valid": 0.1, "test": 0.1}
# the reference's split seed (datasets' train_test_split(seed=42), shuffle(seed=42))
SPLIT_SEED = 42

BITSANDBYTES_REFUSAL = (
    "quantize with a bitsandbytes 4/8-bit base is CUDA-only (bitsandbytes has no Ascend or CPU kernels here): pass "
    'quantize={"peft_config": {"r": 64, "lora_alpha": 128, "lora_dropout": 0.1}} to train LoRA adapters on the '
    "full-precision base instead"
)

# transformers TrainingArguments names with a FineTuneSettings field of the same meaning
TRAINING_ARGS_SAME_NAME = (
    "num_train_epochs",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "per_device_train_batch_size",
    "seed",
    "max_grad_norm",
    "save_total_limit",
)
# TrainingArguments names that steer the transformers Trainer's plumbing (where it logs and saves, when it evaluates,
# how it loads data): our loop evaluates once per epoch and keeps the best checkpoint by validation macro-F1 itself
TRAINING_ARGS_WITHOUT_EFFECT = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "do_train",
        "do_eval",
        "do_predict",
        "evaluation_strategy",
        "eval_strategy",
        "eval_steps",
        "save_strategy",
        "save_steps",
        "logging_steps",
        "logging_strategy",
        "logging_dir",
        "logging_first_step",
        "group_by_length",
        "length_column_name",
        "load_best_model_at_end",
        "metric_for_best_model",
        "greater_is_better",
        "per_device_eval_batch_size",
        "report_to",
        "run_name",
        "fp16",
        "bf16",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "remove_unused_columns",
        "push_to_hub",
        "optim",
        "disable_tqdm_for_eval",
        "torch_compile",
        "ddp_find_unused_parameters",
    }
)


def settings_from_training_args(training_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """FineTuneSettings changes for the reference's `training_args` (transformers TrainingArguments names, or our
    FineTuneSettings fields); names without an effect here are dropped with a warning, unknown names refused."""
    if training_args is None:
        return {}
    if not isinstance(training_args, Mapping):
        raise ValueError(f"training_args must be a dict of TrainingArguments options, got {type(training_args)}")
    ours = {f.name for f in fields(FineTuneSettings)}
    changes: dict[str, Any] = {}
    dropped = []
    for name, value in training_args.items():
        if name in TRAINING_ARGS_SAME_NAME or name in ours:
            changes[name] = value
        elif name == "disable_tqdm":
            changes["progress_bar"] = not value
        elif name == "data_seed":
            changes["split_seed"] = value
        elif name in TRAINING_ARGS_WITHOUT_EFFECT:
            dropped.append(name)
        elif name == "gradient_accumulation_steps" and int(value) == 1:
            continue
        else:
            raise ValueError(
                f"training_args {name!r} has no equivalent here: use one of {sorted(TRAINING_ARGS_SAME_NAME)}, "
                "disable_tqdm, data_seed, or a FineTuneSettings field"
            )
    if dropped:
        logger.warning("training_args %s steer transformers' Trainer and have no effect here", sorted(dropped))
    return changes


# peft's target modules for a BERT model when a LoraConfig names none (peft's per-architecture default table)
PEFT_BERT_DEFAULT_TARGETS = ("query", "value")


def lora_settings_from_quantize(quantize: bool | Mapping[str, Any] | None) -> dict[str, Any]:
    """FineTuneSettings changes for the reference's `quantize`: {} for False; {"strategy": "lora", lora_r,
    lora_alpha, lora_dropout, lora_target_modules} for {"peft_config": ...}; a bitsandbytes base is refused."""
    if quantize is None or quantize is False:
        return {}
    if quantize is True:
        raise ValueError(BITSANDBYTES_REFUSAL)
    if not isinstance(quantize, Mapping):
        raise ValueError(f'quantize must be False, True or a dict {{"peft_config": ...}}, got {quantize!r}')
    unknown = sorted(set(quantize) - {"bnb_config", "peft_config"})
    if unknown:
        raise ValueError(f"quantize keys {unknown} are unknown: the reference's are 'bnb_config' and 'peft_config'")
    if quantize.get("bnb_config") is not None:
        raise ValueError(BITSANDBYTES_REFUSAL)
    peft = quantize.get("peft_config")
    if peft is None:
        return {}  # the reference: neither config given, nothing quantized and no adapters

    def field_of(name: str) -> Any:
        return peft.get(name) if isinstance(peft, Mapping) else getattr(peft, name, None)

    settings: dict[str, Any] = {"strategy": "lora"}
    for ours, theirs in (
        ("lora_r", "r"),
        ("lora_alpha", "lora_alpha"),
        ("lora_dropout", "lora_dropout"),
        ("lora_target_modules", "target_modules"),
    ):
        value = field_of(theirs)
        if value is not None:
            settings[ours] = tuple(value) if ours == "lora_target_modules" and not isinstance(value, str) else value
    # a LoraConfig naming no target modules is adapted by peft on its default for BERT, query and value only
    settings.setdefault("lora_target_modules", PEFT_BERT_DEFAULT_TARGETS)
    return settings


def search_space_from_ray_config(ray_config: Mapping[str, Any] | None) -> dict[str, dict[str, Any]] | None:
    """Our search space ({setting: {"type": ...}}) from the reference's `ray_config`: entries already in our format
    stay; Ray Tune domains are read by their bounds (`tune.choice` -> categorical, `tune.uniform` / `loguniform` /
    `randint` -> float / log float / int); a list is a choice, a plain value a fixed choice."""
    if ray_config is None:
        return None
    if not isinstance(ray_config, Mapping):
        raise ValueError(f"ray_config must be a dict {{setting: range}}, got {type(ray_config)}")
    space: dict[str, dict[str, Any]] = {}
    for name, spec in ray_config.items():
        if isinstance(spec, Mapping) and "type" in spec:
            space[name] = dict(spec)
        elif hasattr(spec, "categories"):
            space[name] = {"type": "categorical", "choices": list(spec.categories)}
        elif hasattr(spec, "lower") and hasattr(spec, "upper"):
            sampler = type(getattr(spec, "sampler", None)).__name__
            kind = "int" if type(spec).__name__ == "Integer" else "float"
            upper = spec.upper - 1 if kind == "int" else spec.upper  # tune.randint excludes its upper bound
            space[name] = {"type": kind, "low": spec.lower, "high": upper, "log": sampler == "LogUniform"}
        elif isinstance(spec, (list, tuple)):
            space[name] = {"type": "categorical", "choices": list(spec)}
        elif isinstance(spec, (int, float, str)):
            space[name] = {"type": "categorical", "choices": [spec]}
        else:
            raise ValueError(f"ray_config[{name!r}]: cannot read {spec!r} as a range; use {{'type': 'float', ...}}")
    return space


def roc_metrics(y_true: Sequence[int], logits: np.ndarray) -> dict[str, Any]:
    """The reference's binary ROC record: fpr, tpr, tpr interpolated at 100 evenly spaced fpr (first point 0), AUC
    and the number of curve points (its weight when folds are pooled)."""
    from sklearn.metrics import auc, roc_curve

    from mindformer_gf.finetune.metrics import softmax

    score = softmax(np.asarray(logits, np.float64))[:, 1]
    fpr, tpr, _ = roc_curve(np.asarray(y_true), score)
    mean_fpr = np.linspace(0, 1, 100)
    interp_tpr = np.interp(mean_fpr, fpr, tpr)
    interp_tpr[0] = 0.0
    return {"fpr": fpr, "tpr": tpr, "interp_tpr": interp_tpr, "auc": float(auc(fpr, tpr)), "tpr_wt": len(tpr)}


def cross_valid_roc_metrics(
    all_tpr: Sequence[np.ndarray], all_roc_auc: Sequence[float], all_tpr_wt: Sequence[int]
) -> tuple[np.ndarray, float, float]:
    """(mean tpr, AUC, AUC sd) over splits, each weighted by its number of curve points (as the reference)."""
    weights = np.asarray(all_tpr_wt, np.float64) / float(np.sum(all_tpr_wt))
    mean_tpr = np.sum([tpr * w for tpr, w in zip(all_tpr, weights, strict=True)], axis=0)
    mean_tpr[-1] = 1.0
    aucs = np.asarray(all_roc_auc, np.float64)
    roc_auc = float(np.sum(aucs * weights))
    roc_auc_sd = math.sqrt(float(np.average((aucs - roc_auc) ** 2, weights=weights)))
    return mean_tpr, roc_auc, roc_auc_sd


def _plain(value: Any) -> Any:
    """`value` as plain data for a pickle (numpy arrays stay: the allow-list unpickler reads them)."""
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return {str(c): {str(i): float(v) for i, v in col.items()} for c, col in value.items()}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_plain_pickle(path: str | os.PathLike, data: Any) -> Path:
    """A pickle of plain data (dict, list, str, numbers, numpy arrays), written under a temporary name."""
    return write_bytes(path, pickle.dumps(_plain(data), protocol=4))


def read_plain_pickle(path: str | os.PathLike) -> Any:
    from mindformer_gf.safe_pickle import safe_load

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the file prepare_data / validate wrote")
    return safe_load(str(path))


def _id_class_dict(path: str | os.PathLike) -> dict[int, str]:
    mapping = read_plain_pickle(path)
    if not isinstance(mapping, Mapping) or len(mapping) < 2:
        raise ValueError(f"{path} is not an id -> class dict with at least two classes (prepare_data writes one)")
    return {int(k): str(v) for k, v in mapping.items()}


def _save_dataset(dataset: Any, path: str | os.PathLike) -> Path:
    """`dataset.save_to_disk(path)` under a temporary name, renamed into place (an older one replaced)."""
    with atomic_directory(path, force=True) as staging:
        dataset.save_to_disk(str(staging))
    return Path(path)


def _open(path_or_dataset: Any) -> Any:
    from mindformer_gf.infer.datasets import open_dataset

    if isinstance(path_or_dataset, (str, os.PathLike)) and not Path(path_or_dataset).exists():
        raise FileNotFoundError(f"{path_or_dataset} does not exist: pass a tokenized .dataset directory")
    return open_dataset(path_or_dataset)


def _datestamp() -> str:
    now = datetime.datetime.now()
    return f"{str(now.year)[-2:]}{now.month:02d}{now.day:02d}"


def _resolve_model_directory(model_directory: str | os.PathLike) -> Path:
    """A model directory, or a ksplit folder whose fine-tuned model is in its `model/`."""
    directory = Path(model_directory)
    if (directory / "config.json").is_file():
        return directory
    if (directory / "model" / "config.json").is_file():
        return directory / "model"
    raise FileNotFoundError(f"{directory} holds no model (config.json): pass a model directory or a ksplit folder")


def _balance_pvalue(train: np.ndarray, held_out: np.ndarray) -> tuple[Any, Any, float]:
    """(train summary, held-out summary, p-value): rank-sum test of numbers, chi-square of category counts."""
    from collections import Counter

    from scipy.stats import chisquare, ranksums

    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) for v in [*train, *held_out])
    if numeric:
        train, held_out = np.asarray(train, np.float64), np.asarray(held_out, np.float64)
        pvalue = ranksums(train, held_out, nan_policy="omit").pvalue
        return float(np.nanmean(train)), float(np.nanmean(held_out)), float(pvalue)
    observed, expected = Counter(map(str, train)), Counter(map(str, held_out))
    categories = sorted(set(observed) | set(expected))
    obs = np.asarray([observed[c] for c in categories], np.float64)
    exp = np.asarray([expected[c] for c in categories], np.float64) * obs.sum() / max(1, sum(expected.values()))
    pvalue = chisquare(obs, exp).pvalue if np.all(exp > 0) else 0.0
    return dict(observed), dict(expected), float(pvalue)


def balance_gene_occurrences(
    cells: Sequence[np.ndarray], label_of: Mapping[int, int], max_trials: int = 25
) -> dict[int, int]:
    """The reference's `gene_balance` for binary gene classes: when the occurrences of class-0 genes in `cells` are
    not within 0.8-1.25 times those of class-1 genes, drop a random share of the more frequent class's genes (redrawn
    up to `max_trials` times with a growing or shrinking share) until they are; the genes kept ({token: class})."""
    import random

    tokens = np.concatenate([np.asarray(c, np.int64) for c in cells]) if len(cells) else np.zeros(0, np.int64)
    present, counts = np.unique(tokens, return_counts=True)
    occurrences = dict(zip(present.tolist(), counts.tolist(), strict=True))

    def ratio(genes: Mapping[int, int]) -> float:
        per_class = [sum(occurrences.get(t, 0) for t, c in genes.items() if c == k) for k in (0, 1)]
        return per_class[0] / per_class[1] if per_class[1] else math.inf

    original = ratio(label_of)
    if 0.8 <= original <= 1.25:
        return dict(label_of)
    frequent = 0 if original > 1.25 else 1
    candidates = sorted(t for t, c in label_of.items() if c == frequent)
    current, boost = original, 1.0
    best = (abs(math.log(original)) if 0 < original < math.inf else math.inf, dict(label_of))
    for trial in range(max_trials):
        excess = current if frequent == 0 else 1.0 / current
        n_remove = max(1, int(np.floor(len(candidates) - len(candidates) / (excess * boost))))
        removed = set(random.Random(trial).sample(candidates, min(n_remove, len(candidates) - 1)))
        kept = {t: c for t, c in label_of.items() if t not in removed}
        current = ratio(kept)
        if 0 < current < math.inf and abs(math.log(current)) < best[0]:
            best = (abs(math.log(current)), kept)
        if 0.8 <= current <= 1.25:
            return kept
        too_many = current > 1.25 if frequent == 0 else current < 0.8
        boost *= 1.1 if too_many else 0.9
    logger.warning("gene sets not balanced within 0.8-1.25 after %d trials: keeping the closest", max_trials)
    return best[1]


def balanced_attribute_split(
    dataset: Any,
    labels: np.ndarray,
    attr_to_split: str,
    attr_to_balance: Sequence[str],
    held_out_fraction: float,
    max_trials: int,
    pval_threshold: float,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """(kept positions, held-out positions, balance table): groups of `attr_to_split` (e.g. patients) held out whole,
    redrawn until every attribute of `attr_to_balance` has p >= `pval_threshold` between the two sides (per group, as
    the reference), else the draw with the highest mean p-value of `max_trials`."""
    import pandas as pd

    from mindformer_gf.finetune.labels import column_values

    groups = column_values(dataset, attr_to_split).astype(str)
    per_group = {a: column_values(dataset, a) if a != "label" else np.asarray(labels) for a in attr_to_balance}
    first = {g: i for i, g in reversed(list(enumerate(groups)))}
    rows, best = [], None
    for trial in range(max(1, int(max_trials))):
        split = split_by_fractions(labels, (1.0 - held_out_fraction, 0.0, held_out_fraction), groups, trial)
        kept, held = np.unique(groups[split.train]), np.unique(groups[split.test])
        record: dict[str, Any] = {"trial_num": trial + 1, "train_ids": kept.tolist(), "eval_ids": held.tolist()}
        pvalues = []
        for attr, values in per_group.items():
            train_summary, held_summary, pvalue = _balance_pvalue(
                [values[first[g]] for g in kept], [values[first[g]] for g in held]
            )
            record |= {
                f"{attr}_train_mean_or_counts": train_summary,
                f"{attr}_eval_mean_or_counts": held_summary,
                f"{attr}_pval": pvalue,
            }
            pvalues.append(pvalue)
        record["mean_pval"] = float(np.nanmean(pvalues)) if pvalues else 1.0
        rows.append(record)
        if best is None or record["mean_pval"] > best[0]["mean_pval"]:
            best = (record, split)
        if all(p >= pval_threshold for p in pvalues if not np.isnan(p)):
            best = (record, split)
            break
    else:
        logger.warning(
            "no split among %d trials has p >= %s for all of %s: keeping trial %d",
            max_trials,
            pval_threshold,
            list(attr_to_balance),
            best[0]["trial_num"],
        )
    return best[1].train, best[1].test, pd.DataFrame(rows)


def _is_option(value: Any, option: Any) -> bool:
    """`value` is `option` (None, or a str / int of the same type) or an instance of the type `option` (a bool is
    not an int here)."""
    if isinstance(option, type):
        return isinstance(value, option) and (option is bool or not isinstance(value, bool))
    if option is None:
        return value is None
    return type(value) is type(option) and value == option


@dataclass
class TrainedClassifier:
    """What `train_classifier` leaves (the reference returns a transformers Trainer): the fine-tuned model's
    directory, the run's output directory, and our run record (CellRunResult, or the gene fold's result dict)."""

    model_directory: Path
    output_directory: Path
    run: Any
    valid_metrics: dict[str, Any] | None = None

    @property
    def model(self) -> Any:
        """The fine-tuned model, loaded (MindSpore)."""
        from mindformer_gf.finetune.task_model import load_task_model

        return load_task_model(self.model_directory)


class Classifier:
    """The reference's `geneformer.Classifier` (cell-state or gene classifier), keyword for keyword.

    classifier: "cell" or "gene". quantize: False; {"peft_config": {...}} trains LoRA adapters (our "lora"
    strategy); True or a "bnb_config" (bitsandbytes, CUDA-only) is refused. cell_state_dict: {"state_key": column,
    "states": "all" | [states]}. gene_class_dict: {class: [Ensembl IDs]}. filter_data: {column: [values]}.
    rare_threshold: drop cell classes below this fraction of the cells. max_ncells / max_ncells_per_class: caps.
    training_args: transformers TrainingArguments names (see the module docstring for the mapping) or FineTuneSettings
    fields; None: the reference's defaults (cell: 10 epochs, gene: 1; batch 12, lr 5e-5, linear schedule with 500
    warmup steps for 6-layer models, else none; weight decay 0.001). ray_config: the search space of
    `validate(n_hyperopt_trials=N)`. freeze_layers: encoder layers frozen (from the bottom). num_crossval_splits: 0
    (train_all_data only), 1 or 5. split_sizes: {"train", "valid", "test"} fractions summing to 1.
    stratify_splits_col: the column splits are stratified by (default: the class). no_eval: train without choosing
    the checkpoint on the validation cells. forward_batch_size: cells per evaluation batch. model_version: "V1" or
    "V2" (which token dictionary maps gene_class_dict's Ensembl IDs; V2's is not shipped: pass token_dictionary_file).
    nproc: accepted (data preparation here is vectorised). ngpu: devices of an msrun launch (`msrun --worker_num=N
    --local_worker_num=N script.py`; one process otherwise).
    """

    valid_option_dict = {
        "classifier": {"cell", "gene"},
        "quantize": {bool, dict},
        "cell_state_dict": {None, dict},
        "gene_class_dict": {None, dict},
        "filter_data": {None, dict},
        "rare_threshold": {int, float},
        "max_ncells": {None, int},
        "max_ncells_per_class": {None, int},
        "training_args": {None, dict},
        "freeze_layers": {int},
        "num_crossval_splits": {0, 1, 5},
        "split_sizes": {None, dict},
        "no_eval": {bool},
        "stratify_splits_col": {None, str},
        "forward_batch_size": {int},
        "model_version": {"V1", "V2"},
        "token_dictionary_file": {None, str},
        "nproc": {int},
        "ngpu": {int},
    }

    def __init__(
        self,
        classifier: str | None = None,
        quantize: bool | dict[str, Any] = False,
        cell_state_dict: dict[str, Any] | None = None,
        gene_class_dict: dict[str, list[str]] | None = None,
        filter_data: dict[str, Any] | None = None,
        rare_threshold: float = 0,
        max_ncells: int | None = None,
        max_ncells_per_class: int | None = None,
        training_args: dict[str, Any] | None = None,
        ray_config: dict[str, Any] | None = None,
        freeze_layers: int = 0,
        num_crossval_splits: int = 1,
        split_sizes: dict[str, float] = {"train": 0.8, "valid": 0.1, "test": 0.1},  # noqa: B006 (the reference's)
        stratify_splits_col: str | None = None,
        no_eval: bool = False,
        forward_batch_size: int = 100,
        model_version: str = "V2",
        token_dictionary_file: str | os.PathLike | None = None,
        nproc: int = 4,
        ngpu: int = 1,
    ) -> None:
        self.classifier = classifier
        self.model_type = {"cell": "CellClassifier", "gene": "GeneClassifier"}.get(classifier or "")
        self.quantize = quantize
        self.cell_state_dict = copy.deepcopy(cell_state_dict)
        self.gene_class_dict = copy.deepcopy(gene_class_dict)
        self.filter_data = copy.deepcopy(filter_data)
        self.rare_threshold = rare_threshold
        self.max_ncells = max_ncells
        self.max_ncells_per_class = max_ncells_per_class
        self.training_args = training_args
        self.ray_config = ray_config
        self.freeze_layers = freeze_layers
        self.num_crossval_splits = num_crossval_splits
        self.split_sizes = dict(split_sizes) if split_sizes is not None else dict(REFERENCE_SPLIT_SIZES)
        self.stratify_splits_col = stratify_splits_col
        self.no_eval = no_eval
        self.forward_batch_size = forward_batch_size
        self.model_version = model_version
        self.token_dictionary_file = None if token_dictionary_file is None else str(token_dictionary_file)
        self.nproc = nproc
        self.ngpu = ngpu
        if self.training_args is None:
            logger.warning(
                "no training_args: the reference's default hyperparameters are used; tuning them per task is "
                "recommended (validate(n_hyperopt_trials=N))"
            )
        self.validate_options()
        self.train_size = self.split_sizes["train"]
        self.valid_size = self.split_sizes["valid"]
        self.oos_test_size = self.split_sizes["test"]
        self.eval_size = self.valid_size / (self.train_size + self.valid_size)
        # what the keywords become here, worked out now so that a bad value fails before any work
        self._training_changes = settings_from_training_args(self.training_args)
        self._lora_changes = lora_settings_from_quantize(self.quantize)
        self._search_space = search_space_from_ray_config(self.ray_config)
        if self.filter_data is None:
            self.filter_data = {}
        if self.classifier == "cell" and self.cell_state_dict["states"] != ALL_STATES:
            self.filter_data[self.cell_state_dict["state_key"]] = list(self.cell_state_dict["states"])
        if self.classifier == "gene" and self._token_dictionary_known():
            self._gene_tokens(self.gene_token_dict)  # the reference checks the genes against the dictionary here
        self._check_launch()

    def _check_launch(self) -> None:
        """ngpu against the devices of this launch: msrun starts one process per device (ngpu itself starts none)."""
        from mindformer_gf.train.distributed import launched_by_msrun

        workers = int(os.environ.get("MS_WORKER_NUM", "1")) if launched_by_msrun() else 1
        if self.ngpu > 1 and workers == 1:
            logger.warning(
                "ngpu=%d: one process here; to use %d devices, launch the script with msrun --worker_num=%d "
                "--local_worker_num=%d",
                self.ngpu,
                self.ngpu,
                self.ngpu,
                self.ngpu,
            )
        elif workers != self.ngpu and workers > 1:
            logger.warning(
                "ngpu=%d, but msrun started %d workers: running data-parallel on %d", self.ngpu, workers, workers
            )

    # ---- options ---------------------------------------------------------------------------------------------------
    def validate_options(self) -> None:
        """Every option within the reference's valid values, and consistent with the others (ValueError if not)."""
        for name, allowed in self.valid_option_dict.items():
            value = getattr(self, name)
            if any(_is_option(value, option) for option in allowed):
                continue
            shown = sorted(a.__name__ if isinstance(a, type) else repr(a) for a in allowed)
            raise ValueError(f"invalid {name}={value!r}: valid options are {shown}")
        if self.filter_data is not None:
            for key, value in list(self.filter_data.items()):
                if not isinstance(value, list):
                    self.filter_data[key] = [value]
                    logger.warning("filter_data values must be lists: %s becomes [%r]", key, value)
        if self.classifier == "cell":
            if self.cell_state_dict is None or set(self.cell_state_dict) != {"state_key", "states"}:
                raise ValueError(
                    'a cell classifier needs cell_state_dict={"state_key": <column>, "states": "all" or [states]}'
                )
            states = self.cell_state_dict["states"]
            if states != ALL_STATES:
                if not isinstance(states, list):
                    raise ValueError('cell_state_dict["states"] must be "all" or a list of states to model')
                if len(states) < 2:
                    raise ValueError('cell_state_dict["states"] must list at least 2 states to classify')
        if self.classifier == "gene":
            if not self.gene_class_dict or len(self.gene_class_dict) < 2:
                raise ValueError("a gene classifier needs gene_class_dict with at least 2 classes {class: [genes]}")
            empty = [k for k, v in self.gene_class_dict.items() if not v]
            if empty:
                raise ValueError(f"gene_class_dict classes {empty} list no genes")
        keys = set(self.split_sizes)
        if keys != {"train", "valid", "test"}:
            raise ValueError(f"split_sizes needs the keys train, valid, test; got {sorted(keys)}")
        if not math.isclose(sum(self.split_sizes.values()), 1.0, abs_tol=1e-9) or min(self.split_sizes.values()) < 0:
            raise ValueError(
                f"split_sizes train, valid and test must be fractions summing to 1, got {self.split_sizes}"
            )
        if self.split_sizes["train"] <= 0 or self.split_sizes["train"] + self.split_sizes["valid"] <= 0:
            raise ValueError("split_sizes['train'] must be > 0")
        if self.freeze_layers < 0 or self.forward_batch_size < 1:
            raise ValueError("freeze_layers must be >= 0 and forward_batch_size >= 1")
        if self.max_ncells is not None and self.max_ncells < 1:
            raise ValueError(f"max_ncells must be None or >= 1, got {self.max_ncells}")
        if self.ngpu < 1 or self.nproc < 1:
            raise ValueError("ngpu and nproc must be >= 1")
        if self.classifier == "gene" and self.max_ncells_per_class is not None:
            logger.warning("max_ncells_per_class applies to cell classifiers only (as in the reference)")

    def _token_dictionary_known(self) -> bool:
        return self.token_dictionary_file is not None or self.model_version == "V1"

    @property
    def gene_token_dict(self) -> dict[str, int]:
        """Ensembl ID -> token: `token_dictionary_file`, else the model version's (V1 is shipped; V2 is not)."""
        from mindformer_gf.tokenizer import load_gene_dictionaries
        from mindformer_gf.tokenizer.dictionaries import read_dictionary_file

        if self.token_dictionary_file is not None:
            return read_dictionary_file(self.token_dictionary_file, "token")[0]
        if self.model_version == "V1":
            return load_gene_dictionaries("V1").token
        raise ValueError(
            "model_version='V2' maps gene IDs with the V2 token dictionary, which is not shipped with mindformer_gf: "
            "pass token_dictionary_file=.../token_dictionary_gc104M.pkl (or model_version='V1' for V1 data)"
        )

    @property
    def token_gene_dict(self) -> dict[int, str]:
        return {v: k for k, v in self.gene_token_dict.items()}

    def _gene_tokens(self, token: Mapping[str, int]) -> dict[str, list[int]]:
        """gene_class_dict as tokens; the reference's errors for genes (or whole classes) not in the dictionary."""
        all_genes = {g for genes in self.gene_class_dict.values() for g in genes}
        missing = sorted(g for g in all_genes if g not in token)
        if len(missing) == len(all_genes):
            raise ValueError("none of gene_class_dict's genes are in the token dictionary: are they Ensembl IDs?")
        if missing:
            logger.warning("genes to classify not in the token dictionary: %s", missing)
        tokens = {k: sorted({token[g] for g in v if g in token}) for k, v in self.gene_class_dict.items()}
        empty = [k for k, v in tokens.items() if not v]
        if empty:
            raise ValueError(f"class(es) {empty} hold no gene of the token dictionary")
        return tokens

    def fine_tune_settings(self, model_directory: str | os.PathLike, **changes: Any) -> FineTuneSettings:
        """The training settings of a run from `model_directory`: the reference's defaults for this classifier and
        model depth, then `training_args`, freeze_layers, forward_batch_size, the LoRA part of `quantize`."""
        from mindformer_gf.infer.datasets import model_config_of

        layers = model_config_of(_resolve_model_directory(model_directory)).num_hidden_layers
        values: dict[str, Any] = {
            "num_train_epochs": 10.0 if self.classifier == "cell" else 1.0,
            "per_device_train_batch_size": 12,
            "learning_rate": 5e-5,
            "lr_scheduler_type": "linear",
            # the reference's defaults for 6-layer models; transformers' (no warmup) for the others
            "warmup_steps": 500 if layers == 6 else 0,
            "weight_decay": 0.001,
            "freeze_layers": self.freeze_layers,
            "forward_batch_size": self.forward_batch_size,
            "save_total_limit": 0,
            "seed": 42,  # transformers' TrainingArguments default
        }
        values |= self._training_changes | self._lora_changes | changes
        settings = FineTuneSettings().replace(**values)
        settings.validate()
        return settings

    def _run_directory(self, output_directory: str | os.PathLike, output_prefix: str) -> Path:
        return ensure_dir(
            Path(output_directory) / f"{_datestamp()}_geneformer_{self.classifier}Classifier_{output_prefix}"
        )

    # ---- data ------------------------------------------------------------------------------------------------------
    def prepare_data(
        self,
        input_data_file: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        split_id_dict: dict[str, Any] | None = None,
        test_size: float | None = None,
        attr_to_split: str | None = None,
        attr_to_balance: list[str] | None = None,
        max_trials: int = 100,
        pval_threshold: float = 0.1,
        id_class_dict_path: str | os.PathLike | None = None,
    ) -> None:
        """Label the cells (cell: class id in column "label"; gene: per-token class ids in column "labels", cells
        holding a gene to classify) and write `{prefix}_id_class_dict.pkl` and `{prefix}_labeled.dataset`, or
        `_labeled_train` / `_labeled_test` (split_id_dict {"attr_key", "train", "test"}; or, for cells, a held-out
        `test_size` (default split_sizes["test"]), grouped by `attr_to_split` and balanced on `attr_to_balance`)."""
        if test_size is None:
            test_size = self.oos_test_size
        if attr_to_split is not None and attr_to_balance is None:
            raise ValueError("splitting by attr_to_split while balancing needs attr_to_balance too (a list of columns)")
        if attr_to_balance is not None and not isinstance(attr_to_balance, list):
            attr_to_balance = [attr_to_balance]
        if split_id_dict is not None and not {"attr_key", "train", "test"} <= set(split_id_dict):
            raise ValueError('split_id_dict needs the keys "attr_key", "train" and "test"')
        data = _open(input_data_file)
        out = ensure_dir(output_directory)
        reserved = "label" if self.classifier == "cell" else "labels"
        if reserved in data.column_names:
            raise ValueError(f"column {reserved!r} is reserved for class ids: rename it in {input_data_file}")
        if self.classifier == "cell":
            labeled, id_class_dict = self._label_cells(data, id_class_dict_path)
        else:
            if id_class_dict_path is not None:
                logger.warning("id_class_dict_path applies to cell classifiers only (as in the reference)")
            labeled, id_class_dict = self._label_genes(data)
        write_plain_pickle(out / f"{output_prefix}_id_class_dict.pkl", id_class_dict)
        if split_id_dict is not None:
            key = split_id_dict["attr_key"]
            for part in ("train", "test"):
                rows = self._rows_with(labeled, key, split_id_dict[part])
                _save_dataset(labeled.select(rows), out / f"{output_prefix}_labeled_{part}.dataset")
        elif self.classifier == "cell" and test_size is not None and 0 < test_size < 1:
            labels = np.asarray(labeled["label"])
            if attr_to_split is None:
                split = split_by_fractions(
                    self._strata(labeled, labels), (1.0 - test_size, 0.0, test_size), None, SPLIT_SEED
                )
                train, test = split.train, split.test
            else:
                train, test, balance = balanced_attribute_split(
                    labeled, labels, attr_to_split, attr_to_balance, test_size, max_trials, pval_threshold
                )
                balance.to_csv(out / f"{output_prefix}_train_test_balance_df.csv")
            _save_dataset(labeled.select(train), out / f"{output_prefix}_labeled_train.dataset")
            _save_dataset(labeled.select(test), out / f"{output_prefix}_labeled_test.dataset")
        else:
            _save_dataset(labeled, out / f"{output_prefix}_labeled.dataset")

    @staticmethod
    def _rows_with(data: Any, column: str, values: Sequence[Any]) -> np.ndarray:
        from mindformer_gf.finetune.labels import filter_rows

        return filter_rows(data, {column: list(values)})

    def _strata(self, data: Any, labels: np.ndarray) -> np.ndarray:
        """What splits are stratified by: the column stratify_splits_col (as codes), else the class."""
        if self.stratify_splits_col is None:
            return labels
        from mindformer_gf.finetune.labels import column_values

        return np.unique(column_values(data, self.stratify_splits_col).astype(str), return_inverse=True)[1]

    def _cell_task(self, settings: FineTuneSettings | None = None, state_key: str | None = None) -> Any:
        from mindformer_gf.tasks.cell import CellClassifier

        states = self.cell_state_dict["states"]
        return CellClassifier(
            state_key=state_key or self.cell_state_dict["state_key"],
            states=states if state_key is None else ALL_STATES,
            filter_data=self.filter_data if state_key is None else None,
            rare_threshold=float(self.rare_threshold) if state_key is None else 0.0,
            max_ncells=self.max_ncells if state_key is None else None,
            max_ncells_per_class=self.max_ncells_per_class if state_key is None else None,
            settings=settings or FineTuneSettings(seed=SPLIT_SEED),
        )

    def _label_cells(self, data: Any, id_class_dict_path: str | os.PathLike | None) -> tuple[Any, dict[int, str]]:
        state_key = self.cell_state_dict["state_key"]
        prepared = self._cell_task().prepare_data(data)
        id_class_dict = dict(prepared.id2label)
        labels = prepared.labels
        if id_class_dict_path is not None:
            given = _id_class_dict(id_class_dict_path)
            class_id = {v: k for k, v in given.items()}
            unknown = sorted(set(id_class_dict.values()) - set(class_id))
            if unknown:
                raise ValueError(f"classes {unknown} are not in {id_class_dict_path} ({sorted(class_id)})")
            labels = np.asarray([class_id[id_class_dict[i]] for i in labels], np.int64)
            id_class_dict = given
        labeled = data.select(prepared.indices).flatten_indices().remove_columns(state_key)
        return labeled.add_column("label", [int(v) for v in labels]), id_class_dict

    def _label_genes(self, data: Any) -> tuple[Any, dict[int, str]]:
        from mindformer_gf.tasks.gene import GeneClassifier
        from mindformer_gf.tokenizer import token_dictionary_for

        # V2 without a dictionary file: the shipped V1 dictionary if the data were tokenized with it (checked against
        # the dataset's record), else an error asking for the file
        token = self.gene_token_dict if self._token_dictionary_known() else token_dictionary_for(data)
        self._gene_tokens(token)
        genes_task = GeneClassifier(
            {k: list(v) for k, v in self.gene_class_dict.items()},
            filter_data=self.filter_data,
            token_dictionary_file=self.token_dictionary_file,
            settings=FineTuneSettings(seed=SPLIT_SEED),
        )
        genes, rows, cells = genes_task.prepare_data(data)
        mapping = dict(zip(genes.tokens.tolist(), genes.labels.tolist(), strict=True))
        labels = [lab.tolist() for lab in token_label_arrays(cells, mapping)]
        labeled = data.select(rows).flatten_indices().add_column("labels", labels)
        return labeled, dict(genes.id2label)

    # ---- training --------------------------------------------------------------------------------------------------
    def train_all_data(
        self,
        model_directory: str | os.PathLike,
        prepared_input_data_file: str | os.PathLike,
        id_class_dict_file: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        save_eval_output: bool = True,
        gene_balance: bool = False,
    ) -> TrainedClassifier:
        """Fine-tune on every prepared cell (or every labelled gene), without evaluation, into
        `{output_directory}/{yymmdd}_geneformer_{classifier}Classifier_{prefix}/` (the model in its `model/`)."""
        self._check_gene_balance(gene_balance)
        id_class_dict = _id_class_dict(id_class_dict_file)
        data = _open(prepared_input_data_file)
        out = self._run_directory(output_directory, output_prefix)
        if self.classifier == "gene":
            data = self._gene_split_data(data, *self._gene_targets(data), None, "train", gene_balance)
        return self.train_classifier(model_directory, len(id_class_dict), data, None, out, id_class_dict=id_class_dict)

    def _check_gene_balance(self, gene_balance: bool) -> None:
        if gene_balance and (self.classifier != "gene" or len(self.gene_class_dict) != 2):
            raise ValueError("gene_balance balances the genes of binary gene classifications only")

    def train_classifier(
        self,
        model_directory: str | os.PathLike,
        num_classes: int,
        train_data: Any,
        eval_data: Any,
        output_directory: str | os.PathLike,
        predict: bool = False,
        *,
        id_class_dict: Mapping[int, str] | None = None,
        settings: FineTuneSettings | None = None,
    ) -> TrainedClassifier:
        """Fine-tune on `train_data` (cell: "label" column; gene: per-token "labels"), choosing the checkpoint by
        macro-F1 on `eval_data` (cell classifiers, unless no_eval); the model goes to `output_directory/model/`.
        `predict` (cell) writes the eval predictions to `output_directory/predictions.pkl`."""
        from datasets import concatenate_datasets

        out = Path(output_directory)
        if (out / "model" / "config.json").is_file():
            raise FileExistsError(f"a model is already saved in {out / 'model'}: choose another output directory")
        out = ensure_dir(out)
        id_class_dict = dict(id_class_dict or {i: f"LABEL_{i}" for i in range(num_classes)})
        if len(id_class_dict) != num_classes:
            raise ValueError(f"num_classes={num_classes} but id_class_dict has {len(id_class_dict)} classes")
        if self.no_eval and eval_data is not None:
            logger.warning("no_eval=True: the model is trained without evaluation")
        settings = settings or self.fine_tune_settings(model_directory)
        train_data = _open(train_data)
        eval_data = None if eval_data is None else _open(eval_data)
        combined = train_data if eval_data is None else concatenate_datasets([train_data, eval_data])
        n_train = len(train_data)
        train = np.arange(n_train)
        held = np.arange(n_train, len(combined))
        if self.classifier == "cell":
            return self._train_cells(model_directory, combined, train, held, id_class_dict, out, predict, settings)
        if predict:
            logger.warning("predictions during training are not available for gene classifiers (as the reference)")
        # the reference trains gene classifiers without evaluation during training (evaluation_strategy "no")
        return self._train_genes(model_directory, train_data, id_class_dict, out, settings)

    def _train_cells(
        self,
        model_directory: str | os.PathLike,
        data: Any,
        train: np.ndarray,
        held: np.ndarray,
        id_class_dict: dict[int, str],
        out: Path,
        predict: bool,
        settings: FineTuneSettings,
    ) -> TrainedClassifier:
        labels = np.asarray(data["label"], np.int32)
        prepared = PreparedCells(np.arange(len(data), dtype=np.int64), labels, id_class_dict, "label")
        valid = np.zeros(0, np.int64) if self.no_eval else held
        split = Split(train, valid, np.zeros(0, np.int64), out.name)
        run = self._cell_task(settings, state_key="label").train(model_directory, data, prepared, split, out)
        trained = TrainedClassifier(run.model_dir, out, run, run.valid_metrics)
        if predict and held.size:
            self.evaluate_model(
                run.model_dir,
                len(id_class_dict),
                id_class_dict,
                data.select(held),
                predict=True,
                output_directory=out,
                output_prefix="predictions",
            )
            # the reference's name for the trainer's predictions of the eval cells
            os.replace(out / "predictions_pred_dict.pkl", out / "predictions.pkl")
        return trained

    def _train_genes(
        self,
        model_directory: str | os.PathLike,
        data: Any,
        id_class_dict: dict[int, str],
        out: Path,
        settings: FineTuneSettings,
    ) -> TrainedClassifier:
        """Our gene fold (GeneClassifier._run_fold) on the genes labelled in `data` ("labels" column), with no gene
        held out: the cells holding one are trained on, with the class id on every labelled token."""
        from mindformer_gf.infer.datasets import dataset_for_model, model_config_of
        from mindformer_gf.tasks.gene import GeneClassifier

        config = model_config_of(_resolve_model_directory(model_directory))
        data, pad_id = dataset_for_model(data, config)
        tokens, labels = self._gene_targets(data)
        genes = GeneLabels(self._gene_names(tokens), tokens, labels, id_class_dict)
        cells = [np.asarray(c, np.int64) for c in data["input_ids"]]
        gene_task = GeneClassifier({v: [] for v in id_class_dict.values()}, settings=settings)
        result, _ = gene_task._run_fold(
            0,
            model_directory,
            data,
            genes,
            np.arange(len(data)),
            cells,
            np.asarray([len(c) for c in cells]),
            np.arange(tokens.size),
            np.zeros(0, np.int64),
            out,
            pad_id,
            settings,
        )
        return TrainedClassifier(out / "model", out, result)

    def _gene_names(self, tokens: np.ndarray) -> list[str]:
        try:
            names = self.token_gene_dict
        except ValueError:
            names = {}
        return [names.get(int(t), str(int(t))) for t in tokens]

    # ---- (cross-)validation ----------------------------------------------------------------------------------------
    def validate(
        self,
        model_directory: str | os.PathLike,
        prepared_input_data_file: str | os.PathLike,
        id_class_dict_file: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        split_id_dict: dict[str, Any] | None = None,
        attr_to_split: str | None = None,
        attr_to_balance: list[str] | None = None,
        gene_balance: bool = False,
        max_trials: int = 100,
        pval_threshold: float = 0.1,
        save_eval_output: bool = True,
        predict_eval: bool = True,
        predict_trainer: bool = False,
        n_hyperopt_trials: int = 0,
        save_gene_split_datasets: bool = True,
        debug_gene_split_datasets: bool = False,
    ) -> dict[str, Any] | None:
        """Train and evaluate num_crossval_splits (1 or 5) splits into `.../ksplit{n}/`; returns (and, with
        save_eval_output, pickles as `{prefix}_eval_metrics_dict.pkl`) {"conf_matrix" (summed over splits),
        "macro_f1" and "acc" (per split), "all_roc_metrics" (two classes)}. With n_hyperopt_trials, a search per split
        instead, returning None (as the reference)."""
        if self.num_crossval_splits == 0:
            raise ValueError("num_crossval_splits must be 1 or 5 to validate (0 is train_all_data's)")
        self._check_gene_balance(gene_balance)
        if attr_to_split is not None and attr_to_balance is None:
            raise ValueError("splitting by attr_to_split while balancing needs attr_to_balance too (a list of columns)")
        if attr_to_balance is not None and not isinstance(attr_to_balance, list):
            attr_to_balance = [attr_to_balance]
        id_class_dict = _id_class_dict(id_class_dict_file)
        num_classes = len(id_class_dict)
        data = _open(prepared_input_data_file)
        settings = self.fine_tune_settings(model_directory)
        out = self._run_directory(output_directory, output_prefix)
        if self.classifier == "cell":
            splits = self._cell_splits(data, split_id_dict, attr_to_split, attr_to_balance, max_trials, pval_threshold)
            if attr_to_split is not None and split_id_dict is None and self.num_crossval_splits == 1:
                splits[0][2].to_csv(out / f"{output_prefix}_train_valid_balance_df.csv")
            pairs = [(data.select(train), data.select(held), None) for train, held, _ in splits]
        else:
            pairs = self._gene_split_pairs(
                data, out, output_prefix, save_gene_split_datasets, debug_gene_split_datasets, gene_balance
            )
            if pairs is None:
                return None
        results = []
        for n, (train_data, eval_data, _test_data) in enumerate(pairs, start=1):
            print(f"****** Validation split: {n}/{self.num_crossval_splits} ******")
            ksplit = out / f"ksplit{n}"
            if n_hyperopt_trials:
                self.hyperopt_classifier(
                    model_directory, num_classes, train_data, eval_data, ksplit, n_trials=n_hyperopt_trials
                )
                continue
            trained = self.train_classifier(
                model_directory,
                num_classes,
                train_data,
                eval_data,
                ksplit,
                predict_trainer,
                id_class_dict=id_class_dict,
                settings=settings,
            )
            results.append(
                self.evaluate_model(
                    trained.model_directory,
                    num_classes,
                    id_class_dict,
                    eval_data,
                    predict_eval,
                    ksplit,
                    output_prefix,
                )
            )
        if n_hyperopt_trials or any(r is None for r in results):
            return None  # a search (as the reference), or a rank other than 0 of an msrun launch
        all_metrics = self._pool(results, id_class_dict)
        if save_eval_output:
            write_plain_pickle(out / f"{output_prefix}_eval_metrics_dict.pkl", all_metrics)
        return all_metrics

    def _cell_splits(
        self,
        data: Any,
        split_id_dict: dict[str, Any] | None,
        attr_to_split: str | None,
        attr_to_balance: list[str] | None,
        max_trials: int,
        pval_threshold: float,
    ) -> list[tuple[np.ndarray, np.ndarray, Any]]:
        """[(train positions, eval positions, balance table or None)] per split."""
        labels = np.asarray(data["label"], np.int32)
        if self.num_crossval_splits == 1:
            if split_id_dict is not None:
                if not {"attr_key", "train", "eval"} <= set(split_id_dict):
                    raise ValueError('validate\'s split_id_dict needs the keys "attr_key", "train" and "eval"')
                key = split_id_dict["attr_key"]
                return [
                    (
                        self._rows_with(data, key, split_id_dict["train"]),
                        self._rows_with(data, key, split_id_dict["eval"]),
                        None,
                    )
                ]
            if attr_to_split is not None:
                train, held, balance = balanced_attribute_split(
                    data, labels, attr_to_split, attr_to_balance, self.eval_size, max_trials, pval_threshold
                )
                return [(train, held, balance)]
            split = split_by_fractions(
                self._strata(data, labels), (1.0 - self.eval_size, 0.0, self.eval_size), None, SPLIT_SEED
            )
            return [(split.train, split.test, None)]
        if split_id_dict is not None or attr_to_split is not None:
            raise ValueError("split_id_dict and attr_to_split apply to num_crossval_splits=1 only (as the reference)")
        folds = k_fold_splits(self._strata(data, labels), self.num_crossval_splits, None, 0.0, SPLIT_SEED)
        return [(np.sort(np.concatenate([f.train, f.valid])), f.test, None) for f in folds]

    def _gene_targets(self, data: Any) -> tuple[np.ndarray, np.ndarray]:
        """(tokens of the labelled genes, their class ids), read from the prepared data's "labels" column."""
        found: dict[int, int] = {}
        for tokens, labels in zip(data["input_ids"], data["labels"], strict=True):
            tokens, labels = np.asarray(tokens), np.asarray(labels)
            hit = labels != IGNORE_LABEL
            found.update(zip(tokens[hit].tolist(), labels[hit].tolist(), strict=True))
        if not found:
            raise ValueError("the prepared data labels no gene (column 'labels' is all -100): run prepare_data first")
        order = sorted(found)
        return np.asarray(order, np.int64), np.asarray([found[t] for t in order], np.int32)

    def _gene_split_data(
        self,
        data: Any,
        targets: np.ndarray,
        labels: np.ndarray,
        index: np.ndarray | None,
        name: str,
        balance: bool = False,
    ) -> Any:
        """The cells holding a gene of `targets[index]` (at most max_ncells, drawn at random), relabelled: the class
        id on those genes, -100 elsewhere (the reference's prep_gene_classifier_split); `balance` first drops genes
        of the more frequent class (balance_gene_occurrences)."""
        index = np.arange(targets.size) if index is None else index
        cells = [np.asarray(c, np.int64) for c in data["input_ids"]]
        holding = cells_holding(cells, targets[index])
        if holding.size == 0:
            raise ValueError(f"no cell holds a {name} gene of this split")
        if balance:
            label_of = dict(zip(targets[index].tolist(), labels[index].tolist(), strict=True))
            kept = balance_gene_occurrences([cells[i] for i in holding], label_of)
            index = index[np.isin(targets[index], list(kept))]
            holding = cells_holding(cells, targets[index])
        if self.max_ncells and holding.size > self.max_ncells:
            rng = np.random.default_rng(SPLIT_SEED)
            holding = np.sort(rng.choice(holding, self.max_ncells, replace=False))
        mapping = dict(zip(targets[index].tolist(), labels[index].tolist(), strict=True))
        relabelled = [lab.tolist() for lab in token_label_arrays([cells[i] for i in holding], mapping)]
        subset = data.select(holding).flatten_indices().remove_columns("labels")
        return subset.add_column("labels", relabelled)

    def _gene_split_pairs(
        self, data: Any, out: Path, prefix: str, save: bool, debug: bool, balance: bool = False
    ) -> list[tuple[Any, Any, Any]] | None:
        """Per split: (train, eval, test) cells of the reference's gene folds: int(1 / (1 - train)) stratified folds
        of genes; each held-out fold divided into eval and test genes in the proportion of split_sizes."""
        from sklearn.model_selection import train_test_split

        targets, labels = self._gene_targets(data)
        n_splits = int(1 / (1 - self.train_size)) if self.train_size < 1 else 5
        too_few = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True), strict=True) if n < 5}
        if too_few:
            raise ValueError(f"classes {too_few} (id: genes in the data) have fewer than 5 genes to (cross-)validate")
        folds = gene_folds(labels, n_splits, 0)[: self.num_crossval_splits]
        test_ratio = self.oos_test_size / (self.eval_size + self.oos_test_size) if self.oos_test_size > 0 else 0.0
        pairs = []
        for n, (train, held) in enumerate(folds, start=1):
            eval_genes, test_genes = held, np.zeros(0, np.int64)
            if test_ratio > 0:
                counts = np.bincount(labels[held])
                stratify = labels[held] if counts[counts > 0].min() >= 2 else None
                eval_genes, test_genes = train_test_split(held, test_size=test_ratio, stratify=stratify, random_state=0)
            train_data = self._gene_split_data(data, targets, labels, train, "train", balance)
            eval_data = self._gene_split_data(data, targets, labels, np.sort(eval_genes), "eval")
            test_data = None
            if test_genes.size:
                test_data = self._gene_split_data(data, targets, labels, np.sort(test_genes), "test")
            if save:
                _save_dataset(train_data, out / f"{prefix}_train_gene_labeled_ksplit{n}.dataset")
                _save_dataset(eval_data, out / f"{prefix}_valid_gene_labeled_ksplit{n}.dataset")
                if test_data is not None:
                    _save_dataset(test_data, out / f"{prefix}_test_gene_labeled_ksplit{n}.dataset")
            if debug:
                logger.warning("debug_gene_split_datasets=True: stopping after saving the gene split datasets")
                return None
            pairs.append((train_data, eval_data, test_data))
        return pairs

    def _pool(self, results: list[dict[str, Any]], id_class_dict: dict[int, str]) -> dict[str, Any]:
        import pandas as pd

        names = [id_class_dict[i] for i in sorted(id_class_dict)]
        total = np.sum([r["conf_mat"] for r in results], axis=0).astype(np.float64)
        all_metrics: dict[str, Any] = {
            "conf_matrix": pd.DataFrame(total, columns=names, index=names),
            "macro_f1": [r["macro_f1"] for r in results],
            "acc": [r["acc"] for r in results],
            "all_roc_metrics": None,  # not reported for more than two classes (as the reference)
        }
        if len(names) == 2:
            mean_tpr, roc_auc, roc_auc_sd = cross_valid_roc_metrics(
                [r["roc_metrics"]["interp_tpr"] for r in results],
                [r["roc_metrics"]["auc"] for r in results],
                [r["roc_metrics"]["tpr_wt"] for r in results],
            )
            all_metrics["all_roc_metrics"] = {
                "mean_tpr": mean_tpr,
                "mean_fpr": np.linspace(0, 1, 100),
                "all_roc_auc": [r["roc_metrics"]["auc"] for r in results],
                "roc_auc": roc_auc,
                "roc_auc_sd": roc_auc_sd,
            }
        return all_metrics

    # ---- hyperparameter search -------------------------------------------------------------------------------------
    def hyperopt_classifier(
        self,
        model_directory: str | os.PathLike,
        num_classes: int,
        train_data: Any,
        eval_data: Any,
        output_directory: str | os.PathLike,
        n_trials: int = 100,
        *,
        id_class_dict: Mapping[int, str] | None = None,
    ) -> Any:
        """`n_trials` trials of our Optuna search (Ray is not used) over `ray_config` (default: the reference's
        default space), each a `train_classifier` run in `output_directory/search/trial-NNN/` scored by macro-F1 on
        `eval_data`; returns the search (mindformer_gf.finetune.search.SearchResult), the best trial's model kept."""
        from mindformer_gf.finetune.search import search_hyperparameters

        if eval_data is None:
            raise ValueError("a hyperparameter search needs eval_data to score the trials")
        if self.no_eval:
            logger.warning("no_eval=True: the search scores its trials on eval_data anyway (as the reference)")
        base = self.fine_tune_settings(model_directory)
        task = types.SimpleNamespace(settings=base)
        classes = dict(id_class_dict or {i: f"LABEL_{i}" for i in range(num_classes)})
        no_eval, self.no_eval = self.no_eval, False

        def run_trial(trial_task: Any, trial_dir: Path) -> Any:
            trained = self.train_classifier(
                model_directory,
                num_classes,
                train_data,
                eval_data,
                trial_dir,
                id_class_dict=classes,
                settings=trial_task.settings,
            )
            if self.classifier == "gene":  # no checkpoint choice for genes: the trial is scored on eval_data
                scored = self.evaluate_model(trained.model_directory, num_classes, classes, eval_data)
                trained.valid_metrics = None if scored is None else {"macro_f1": scored["macro_f1"]}
            return trained

        try:
            return search_hyperparameters(task, run_trial, n_trials, output_directory, self._search_space)
        finally:
            self.no_eval = no_eval

    # ---- evaluation ------------------------------------------------------------------------------------------------
    def evaluate_model(
        self,
        model: Any,
        num_classes: int,
        id_class_dict: Mapping[int, str],
        eval_data: Any,
        predict: bool = False,
        output_directory: str | os.PathLike | None = None,
        output_prefix: str | None = None,
        predict_metadata: list[str] | None = None,
    ) -> dict[str, Any] | None:
        """Predict `eval_data` with `model` (a model directory, a TrainedClassifier, or a loaded model) and score
        it: {"conf_mat", "macro_f1", "acc", "roc_metrics" (two classes)}. `predict` writes
        `{output_prefix}_pred_dict.pkl` ({"pred_ids", "label_ids", "predictions": logits, "prediction_metadata"})
        into `output_directory`."""
        from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

        id_class_dict = {int(k): str(v) for k, v in id_class_dict.items()}
        if len(id_class_dict) != num_classes:
            raise ValueError(f"num_classes={num_classes} but id_class_dict has {len(id_class_dict)} classes")
        if predict and (output_directory is None or output_prefix is None):
            raise ValueError("predict=True writes the predictions: pass output_directory and output_prefix")
        eval_data = _open(eval_data)
        if predict_metadata is not None:
            absent = [m for m in predict_metadata if m not in eval_data.column_names]
            if absent:
                raise ValueError(f"predict_metadata columns {absent} are not in the evaluation data")
        predicted = self._predict(model, id_class_dict, eval_data, output_directory)
        if predicted is None:
            return None  # another rank of an msrun launch: rank 0 scores and writes
        logits, y_true, rows = predicted
        y_pred = logits.argmax(axis=1)
        ids = sorted(id_class_dict)
        result = {
            "conf_mat": confusion_matrix(y_true, y_pred, labels=ids),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
            "acc": float(accuracy_score(y_true, y_pred)),
            "roc_metrics": roc_metrics(y_true, logits) if num_classes == 2 else None,
        }
        if predict:
            pred_dict: dict[str, Any] = {
                "pred_ids": y_pred.tolist(),
                "label_ids": y_true.tolist(),
                "predictions": logits.tolist(),
            }
            if predict_metadata is not None:
                columns = {m: eval_data[m] for m in predict_metadata}
                pred_dict["prediction_metadata"] = {m: [column[int(r)] for r in rows] for m, column in columns.items()}
            write_plain_pickle(Path(output_directory) / f"{output_prefix}_pred_dict.pkl", pred_dict)
        return result

    def _predict(
        self, model: Any, id_class_dict: dict[int, str], data: Any, output_directory: str | os.PathLike | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(logits in id_class_dict's class order, true class ids, dataset row of each prediction): one per cell
        (cell), one per labelled token (gene)."""
        from mindformer_gf.data import corpus_lengths
        from mindformer_gf.finetune.runs import bucket_widths, load_saved_model, sharded_forward
        from mindformer_gf.infer.datasets import dataset_for_model
        from mindformer_gf.train.device import prepare_device

        settings = FineTuneSettings(
            forward_batch_size=self.forward_batch_size,
            progress_bar=self._training_changes.get("progress_bar", True),
            num_buckets=self._training_changes.get("num_buckets", FineTuneSettings.num_buckets),
        )
        prepare_device(settings.device)
        architecture = "BertForSequenceClassification" if self.classifier == "cell" else "BertForTokenClassification"
        if isinstance(model, TrainedClassifier):
            model = model.model_directory
        if isinstance(model, (str, os.PathLike)):
            model, _ = load_saved_model(_resolve_model_directory(model), architecture)
        data, pad_id = dataset_for_model(data, model.config)
        order = self._model_columns(model, id_class_dict)
        rows = np.arange(len(data))
        buckets = bucket_widths(corpus_lengths(data)[rows], settings, model.config.max_position_embeddings)
        with tempfile.TemporaryDirectory(dir=output_directory) as scratch:
            record = {"command": "Classifier.evaluate_model", "classifier": self.classifier}
            merged, job = sharded_forward(model, data, rows, settings, buckets, scratch, "evaluation", record, pad_id)
            if merged is None:
                return None
            job.remove_shards()
        if self.classifier == "cell":
            logits = np.asarray(merged[0], np.float64)[:, order]
            return logits, np.asarray(data["label"], np.int64), rows
        picked, truth, where = [], [], []
        for row, (cell_logits, labels) in enumerate(zip(merged[0], data["labels"], strict=True)):
            labels = np.asarray(labels)[: len(cell_logits)]
            hit = np.flatnonzero(labels != IGNORE_LABEL)
            picked.append(np.asarray(cell_logits, np.float64)[hit][:, order])
            truth.append(labels[hit])
            where.append(np.full(hit.size, row))
        return np.concatenate(picked), np.concatenate(truth).astype(np.int64), np.concatenate(where)

    @staticmethod
    def _model_columns(model: Any, id_class_dict: dict[int, str]) -> list[int]:
        """The model's output column of each class of id_class_dict (in id order), matched by name; a model whose
        classes are unnamed (LABEL_i) is taken in id order."""
        model_names = {int(k): str(v) for k, v in (getattr(model.config, "id2label", None) or {}).items()}
        if len(model_names) != len(id_class_dict):
            raise ValueError(
                f"the model has {len(model_names)} classes, id_class_dict {len(id_class_dict)}: pass the id_class_dict "
                "of the run that trained it"
            )
        column = {name: i for i, name in model_names.items()}
        if set(column) == set(id_class_dict.values()):
            return [column[id_class_dict[i]] for i in sorted(id_class_dict)]
        if all(name == f"LABEL_{i}" for i, name in model_names.items()):
            return sorted(model_names)
        raise ValueError(
            f"the model's classes {sorted(column)} are not id_class_dict's {sorted(id_class_dict.values())}"
        )

    def evaluate_saved_model(
        self,
        model_directory: str | os.PathLike,
        id_class_dict_file: str | os.PathLike,
        test_data_file: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        predict: bool = True,
        predict_metadata: list[str] | None = None,
    ) -> dict[str, Any] | None:
        """Score a fine-tuned model (its directory, or the ksplit folder holding it) on prepared test data; writes
        `{prefix}_pred_dict.pkl` (predict) and `{prefix}_test_metrics_dict.pkl` into `output_directory` and returns
        {"conf_matrix", "macro_f1", "acc", "all_roc_metrics"}."""
        import pandas as pd

        id_class_dict = _id_class_dict(id_class_dict_file)
        model_dir = _resolve_model_directory(model_directory)
        test_data = _open(test_data_file)
        out = ensure_dir(output_directory)
        result = self.evaluate_model(
            model_dir, len(id_class_dict), id_class_dict, test_data, predict, out, output_prefix, predict_metadata
        )
        if result is None:
            return None  # another rank of an msrun launch
        names = [id_class_dict[i] for i in sorted(id_class_dict)]
        all_metrics: dict[str, Any] = {
            "conf_matrix": pd.DataFrame(result["conf_mat"], columns=names, index=names),
            "macro_f1": result["macro_f1"],
            "acc": result["acc"],
            "all_roc_metrics": None,
        }
        if len(names) == 2:
            all_metrics["all_roc_metrics"] = {
                "mean_tpr": result["roc_metrics"]["interp_tpr"],
                "mean_fpr": np.linspace(0, 1, 100),
                "all_roc_auc": result["roc_metrics"]["auc"],
            }
        write_plain_pickle(out / f"{output_prefix}_test_metrics_dict.pkl", all_metrics)
        return all_metrics

    # ---- plots -----------------------------------------------------------------------------------------------------
    def plot_conf_mat(
        self,
        conf_mat_dict: Mapping[str, Any],
        output_directory: str | os.PathLike,
        output_prefix: str,
        custom_class_order: list[str] | None = None,
    ) -> list[Path]:
        """Row-normalised confusion matrix per model ({model name: conf_matrix DataFrame, or its dict form}) as
        `{prefix}_conf_mat.pdf/.png` (several models: `{prefix}_{model}_conf_mat`, where the reference overwrites one
        file with the next)."""
        import pandas as pd

        from mindformer_gf.finetune.metrics import plot_confusion_matrix

        written = []
        for name, matrix in conf_mat_dict.items():
            frame = matrix if isinstance(matrix, pd.DataFrame) else pd.DataFrame(matrix)
            if custom_class_order is not None:
                unknown = sorted(set(custom_class_order) - set(map(str, frame.index)))
                if unknown:
                    raise ValueError(f"custom_class_order names {unknown}, not classes of {name}: {list(frame.index)}")
                frame = frame.reindex(index=custom_class_order, columns=custom_class_order)
            stem = f"{output_prefix}_conf_mat" if len(conf_mat_dict) == 1 else f"{output_prefix}_{name}_conf_mat"
            written += plot_confusion_matrix(
                frame.to_numpy(), list(map(str, frame.index)), Path(output_directory) / stem, str(name)
            )
        return written

    def plot_roc(
        self,
        roc_metric_dict: Mapping[str, Mapping[str, Any]],
        model_style_dict: Mapping[str, Mapping[str, Any]],
        title: str,
        output_directory: str | os.PathLike,
        output_prefix: str,
    ) -> list[Path]:
        """Mean ROC curve per model ({model name: all_roc_metrics}) with its AUC (± sd over splits) as
        `{prefix}_roc.pdf/.png`; styles {model name: {"color", "linestyle"}}."""
        plt = matplotlib_pyplot()
        figure, axis = plt.subplots(figsize=(6.0, 5.0))
        for name, metrics in roc_metric_dict.items():
            if metrics is None:
                raise ValueError(f"{name} has no ROC metrics: they exist for two-class classifiers only")
            style = model_style_dict.get(name, {})
            aucs = np.atleast_1d(metrics["all_roc_auc"])
            if "roc_auc" in metrics and aucs.size > 1:
                label = f"{name} (AUC {metrics['roc_auc']:0.2f} ± {metrics['roc_auc_sd']:0.2f})"
            else:
                label = f"{name} (AUC {metrics.get('roc_auc', aucs[0]):0.2f})"
            axis.plot(
                metrics["mean_fpr"],
                metrics["mean_tpr"],
                color=style.get("color"),
                linestyle=style.get("linestyle", "-"),
                lw=2,
                label=label,
            )
        axis.plot([0, 1], [0, 1], color="black", lw=2, linestyle="--")
        axis.set_xlim(0.0, 1.0)
        axis.set_ylim(0.0, 1.05)
        axis.set_xlabel("False Positive Rate")
        axis.set_ylabel("True Positive Rate")
        axis.set_title(title)
        axis.legend(loc="lower right")
        return save_figure(figure, Path(output_directory) / f"{output_prefix}_roc")

    def plot_predictions(
        self,
        predictions_file: str | os.PathLike,
        id_class_dict_file: str | os.PathLike,
        title: str,
        output_directory: str | os.PathLike,
        output_prefix: str,
        custom_class_order: list[str] | None = None,
        kwargs_dict: dict[str, Any] | None = None,
    ) -> list[Path]:
        """Heat map of the predictions' logits (a row per prediction, sorted by true class; a column per class) with
        the true class as a colour bar, as `{prefix}_pred.pdf/.png`. kwargs_dict: matplotlib imshow options (cmap,
        vmin, vmax; the reference's seaborn clustermap options without a counterpart are ignored with a note)."""
        import pandas as pd

        predictions = read_plain_pickle(predictions_file)
        id_class_dict = _id_class_dict(id_class_dict_file)
        if not isinstance(predictions, Mapping) or not {"label_ids", "predictions"} <= set(predictions):
            raise ValueError(
                f"{predictions_file} holds no predictions: pass a {{prefix}}_pred_dict.pkl or predictions.pkl"
            )
        logits = np.asarray(predictions["predictions"], np.float64)
        if logits.ndim != 2 or logits.shape[1] != len(id_class_dict):
            raise ValueError(f"the predictions have {logits.shape[-1]} classes, id_class_dict {len(id_class_dict)}")
        classes = [id_class_dict[i] for i in sorted(id_class_dict)]
        frame = pd.DataFrame(logits, columns=classes)
        order = classes
        if custom_class_order is not None:
            unknown = sorted(set(custom_class_order) - set(classes))
            if unknown:
                raise ValueError(f"custom_class_order names {unknown}, which are not classes ({classes})")
            frame, order = frame.reindex(columns=custom_class_order), list(custom_class_order)
        rank = {c: i for i, c in enumerate(order)}
        true = [id_class_dict[int(i)] for i in predictions["label_ids"]]
        frame["true"] = true
        frame = frame.sort_values(by="true", key=lambda s: s.map(rank), kind="stable")
        options = {"cmap": "coolwarm", "aspect": "auto", "interpolation": "nearest"}
        center = 0.0
        ignored = []
        for key, value in (kwargs_dict or {}).items():
            if key in ("cmap", "vmin", "vmax", "aspect", "interpolation", "norm", "alpha"):
                options[key] = value
            elif key == "center":
                center = value
            else:
                ignored.append(key)
        if ignored:
            logger.warning(
                "plot_predictions: kwargs %s are seaborn clustermap options without a counterpart here", ignored
            )
        values = frame[order].to_numpy()
        if "vmin" not in options and "vmax" not in options and center is not None:
            reach = float(np.max(np.abs(values - center))) if values.size else 1.0
            options["vmin"], options["vmax"] = center - reach, center + reach
        plt = matplotlib_pyplot()
        figure, (bar, axis) = plt.subplots(1, 2, figsize=(7.5, 7.0), gridspec_kw={"width_ratios": [1, 12]}, sharey=True)
        colours = plt.get_cmap("tab20")
        codes = frame["true"].map(rank).to_numpy()
        bar.imshow(codes[:, None], cmap=colours, vmin=0, vmax=19, aspect="auto", interpolation="nearest")
        bar.set_xticks([])
        bar.set_yticks([])
        bar.set_xlabel("true")
        image = axis.imshow(values, **options)
        axis.set_xticks(range(len(order)), labels=order, rotation=45, ha="right")
        axis.set_yticks([])
        axis.set_xlabel("predicted (logit)")
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours(rank[c] % 20)) for c in order]
        figure.legend(handles, order, title=title, loc="upper center", ncol=min(4, len(order)))
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        return save_figure(figure, Path(output_directory) / f"{output_prefix}_pred")
