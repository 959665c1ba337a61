"""Tiny models and corpora for training tests (seconds, not minutes)."""

from __future__ import annotations

import pytest
from helpers.train import SPECIAL_TOKENS, TINY_MODEL, write_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "cells.dataset", 96, 4, 60, TINY_MODEL["vocab_size"])


@pytest.fixture
def tiny_settings(tiny_corpus, tmp_path):
    from mindformer_gf.train import PretrainSettings

    def make(**changes):
        base = dict(
            dataset=str(tiny_corpus),
            output_dir=str(tmp_path / "run"),
            model="Geneformer-V1-10M",
            model_overrides=dict(TINY_MODEL),
            special_tokens=dict(SPECIAL_TOKENS),
            device="CPU",
            max_steps=6,
            batch_size=4,
            warmup_steps=2,
            num_buckets=3,
            bucket_granularity=16,
            log_every=1,
            save_every=3,
            progress_bar=False,
        )
        base.update(changes)
        return PretrainSettings(**base)

    return make
