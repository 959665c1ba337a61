"""A tokenized dataset opened for a model: checked against its vocabulary, with its special tokens."""

from __future__ import annotations

import os
import warnings
from typing import Any

from mindformer_gf.config import GeneformerConfig
from mindformer_gf.data import corpus_special_tokens, load_corpus


def open_dataset(dataset_or_dir: Any, vocab_size: int | None = None) -> Any:
    """A tokenized dataset (or its directory), checked against the model's vocabulary when given."""
    return load_corpus(dataset_or_dir, vocab_size)


def model_config_of(model_dir: str | os.PathLike) -> GeneformerConfig:
    return GeneformerConfig.from_pretrained(model_dir)


def special_token_ids(dataset: Any) -> dict[str, int]:
    """The dataset's special tokens ({"<pad>": 0, "<mask>": 1, maybe "<cls>", "<eos>"}), without a warning for
    datasets that do not record them (Geneformer's <pad>=0 and <mask>=1 are then assumed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return corpus_special_tokens(dataset)


def dataset_for_model(dataset: Any, config: Any) -> tuple[Any, int]:
    """`dataset` checked against the model's vocabulary, and its <pad> id: 0 (Geneformer's) when the dataset
    records none."""
    dataset = open_dataset(dataset, config.vocab_size)
    return dataset, special_token_ids(dataset).get("<pad>", 0)
