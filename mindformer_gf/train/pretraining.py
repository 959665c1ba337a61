"""Masked-gene-modelling pretraining: a tokenized corpus and a model (preset from scratch, or a model directory to
continue) -> checkpoints, metrics, loss curve and a final model directory (`<output_dir>/model`).

    from mindformer_gf.train import PretrainSettings, pretrain
    result = pretrain(PretrainSettings(dataset="cells.dataset", output_dir="run", max_steps=1000))
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np

from mindformer_gf.config import PRESET_ALIASES, PRESETS, GeneformerConfig
from mindformer_gf.data import (
    IGNORE_INDEX,
    LengthBuckets,
    LengthGroupedPlan,
    MaskedLMCollator,
    MaskingSpec,
    PlannedBatches,
    choose_bucket_widths,
    corpus_lengths,
    corpus_special_tokens,
    load_corpus,
    special_tokens_from_metadata,
)
from mindformer_gf.model import build_model
from mindformer_gf.pretrained import from_pretrained
from mindformer_gf.train.checkpoint import save_model_dir
from mindformer_gf.train.device import prepare_device
from mindformer_gf.train.distributed import init_distributed
from mindformer_gf.train.loop import Trainer, TrainResult
from mindformer_gf.train.objectives import MaskedLMObjective
from mindformer_gf.train.settings import PretrainSettings, resolve_dynamic_shapes

logger = logging.getLogger("mindformer_gf.train")


def build_pretraining_model(settings: PretrainSettings):
    """A BertForMaskedLM: a fresh preset (initialised with `seed`, identical on every rank) or a model directory."""
    overrides = dict(settings.model_overrides)
    if settings.attention_impl != "auto":
        overrides["attention_impl"] = settings.attention_impl
    if settings.model in PRESETS or settings.model in PRESET_ALIASES:
        config = GeneformerConfig.from_preset(settings.model, architectures=["BertForMaskedLM"], **overrides)
        return build_model(config, "BertForMaskedLM", seed=settings.seed)
    if Path(settings.model).is_dir():
        return from_pretrained(settings.model, "BertForMaskedLM", seed=settings.seed, **overrides)
    raise ValueError(
        f"model {settings.model!r} is neither a preset ({sorted(PRESETS)}) nor a model directory with config.json"
    )


@dataclass
class PretrainingData:
    source: PlannedBatches
    spec: MaskingSpec
    padding_waste: float
    bucket_widths: tuple[int, ...]
    eval_source: PlannedBatches | None = None


def masked_lm_source(
    dataset: Any,
    spec: MaskingSpec,
    buckets: LengthBuckets,
    batch_size: int,
    group_size: int,
    seed: int,
    pad_token_id: int,
    shuffle: bool = True,
    pad_to_longest: bool = False,
) -> PlannedBatches:
    """Masked-gene-modelling batches of `dataset` in a length-grouped plan over `buckets`."""
    plan = LengthGroupedPlan(corpus_lengths(dataset), buckets, batch_size, group_size, seed, shuffle, pad_to_longest)
    collator = MaskedLMCollator(dataset, spec, batch_size, seed, pad_token_id)
    return PlannedBatches(plan, collator, items_per_batch=batch_size * spec.mask_slots(buckets.max_width))


def build_pretraining_data(settings: PretrainSettings, model_config, group_size: int) -> PretrainingData:
    """Corpus -> length buckets -> plan -> masked batches, checked against the model's vocabulary and length;
    plus held-out batches when `eval_dataset` or `eval_fraction` is set."""
    dataset = load_corpus(settings.dataset, model_config.vocab_size)
    if settings.max_cells:
        dataset = dataset.select(range(min(settings.max_cells, len(dataset))))
    held_out = None
    if settings.eval_fraction:
        order = np.random.default_rng([settings.seed, 0xE7A1]).permutation(len(dataset))
        count = max(1, int(round(settings.eval_fraction * len(dataset))))
        held_out = dataset.select(np.sort(order[:count]))
        dataset = dataset.select(np.sort(order[count:]))
    elif settings.eval_dataset:
        held_out = load_corpus(settings.eval_dataset, model_config.vocab_size)
    special = dict(settings.special_tokens) or corpus_special_tokens(dataset)
    mask_id, special_ids = special_tokens_from_metadata(special)
    pad_id = special.get("<pad>", 0)
    spec = MaskingSpec(model_config.vocab_size, mask_id, special_ids, settings.mask_probability)
    lengths = corpus_lengths(dataset)
    # the widest bucket must also hold the longest held-out cell
    all_lengths = lengths if held_out is None else np.concatenate([lengths, corpus_lengths(held_out)])
    buckets = choose_bucket_widths(
        all_lengths, settings.num_buckets, model_config.max_position_embeddings, settings.bucket_granularity
    )
    # a batch padded to its longest cell is a new shape: only a dynamic-shape graph takes it without compiling again
    target = ms.get_context("device_target")
    longest = resolve_dynamic_shapes(settings.dynamic_shapes, target) and not settings.pad_to_bucket_width
    source = masked_lm_source(
        dataset,
        spec,
        buckets,
        settings.per_device_train_batch_size,
        group_size,
        settings.seed,
        pad_id,
        pad_to_longest=longest,
    )
    eval_source = None
    if held_out is not None:
        eval_source = masked_lm_source(
            held_out,
            spec,
            buckets,
            settings.per_device_train_batch_size,
            1,
            settings.seed,
            pad_id,
            False,
            pad_to_longest=longest,
        )
    return PretrainingData(source, spec, source.plan.padding_waste(), buckets.widths, eval_source)


def pretrain(settings: PretrainSettings, resume: str | bool | None = None) -> TrainResult:
    """Run (or resume) masked-gene-modelling pretraining as `settings` say; returns the run's summary."""
    settings.validate()
    target = prepare_device(settings.device)
    # the saved train_config.json says which shapes ran, not "auto"
    settings = dataclasses.replace(settings, dynamic_shapes=resolve_dynamic_shapes(settings.dynamic_shapes, target))
    parallel = init_distributed()
    model = build_pretraining_model(settings)
    group_size = settings.gradient_accumulation_steps * parallel.world_size
    data = build_pretraining_data(settings, model.config, group_size)
    logger.info(
        "corpus: %d steps per epoch, buckets %s, padding waste %.3f",
        data.source.steps_per_epoch,
        data.bucket_widths,
        data.padding_waste,
    )
    run_config: dict[str, Any] = {**asdict(settings), "bucket_widths": list(data.bucket_widths)}
    trainer = Trainer(
        model, MaskedLMObjective(model), data.source, settings, parallel, run_config, eval_source=data.eval_source
    )
    result = trainer.train(resume)
    if parallel.is_main and not result.stopped_by_signal:
        save_model_dir(model, Path(settings.output_dir) / "model")
    return result


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats) of the empirical token distribution: the loss of a model that ignores context."""
    _, counts = np.unique(np.asarray(tokens), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def held_out_masked_genes(settings: PretrainSettings, model_config: Any) -> np.ndarray:
    """The genes the held-out evaluation of `pretrain(settings)` asks for (the masked positions of its held-out
    batches, in order): their `unigram_entropy` is the loss to beat."""
    held_out = build_pretraining_data(settings, model_config, group_size=1).eval_source
    if held_out is None:
        raise ValueError("the settings hold out no cells: set eval_fraction or eval_dataset")
    labels = np.concatenate([b["labels"].ravel() for s in range(held_out.steps_per_epoch) for b in held_out.batches(s)])
    return labels[labels != IGNORE_INDEX]
