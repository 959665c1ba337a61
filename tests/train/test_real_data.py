"""Real cells: a small model pretrained on the 700 tokenized pbmc68k_reduced cells predicts held-out masked genes
clearly better than the unigram baseline (the entropy of the held-out masked genes' own frequency distribution,
i.e. the best context-free guess, even fitted on the answers)."""

from __future__ import annotations

import numpy as np

from mindformer_gf.data import compact_vocabulary
from mindformer_gf.data.pbmc68k import tokenize_pbmc68k
from mindformer_gf.train import PretrainSettings, pretrain, unigram_entropy
from mindformer_gf.train.pretraining import build_pretraining_model, held_out_masked_genes


def test_pretraining_on_pbmc68k_beats_the_unigram_baseline(tmp_path):
    tokenized = tokenize_pbmc68k(tmp_path, "pbmc68k").path
    dataset, vocab_size = compact_vocabulary(tokenized, tmp_path / "pbmc68k_compact.dataset")
    settings = PretrainSettings(
        dataset=str(dataset),
        output_dir=str(tmp_path / "run"),
        model="Geneformer-V1-10M",
        model_overrides=dict(
            vocab_size=vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
        ),
        special_tokens={"<pad>": 0, "<mask>": 1},
        device="CPU",
        max_steps=400,
        batch_size=8,
        learning_rate=3e-3,
        lr_schedule="cosine",
        min_lr_ratio=0.1,
        warmup_steps=20,
        eval_fraction=0.15,
        num_buckets=3,
        bucket_granularity=32,
        log_every=10,
        save_every=1000,
        progress_bar=False,
    )
    model = build_pretraining_model(settings)
    labels = held_out_masked_genes(settings, model.config)
    baseline = unigram_entropy(labels)
    assert labels.size > 2000 and 5.5 < baseline < np.log(vocab_size)

    result = pretrain(settings)
    assert result.evaluation is not None and result.evaluation["items"] == labels.size
    print(f"held-out masked-gene loss {result.evaluation['loss']:.3f} vs unigram baseline {baseline:.3f}")
    assert result.evaluation["loss"] < baseline - 0.3
    assert result.evaluation["accuracy"] > 2.0 / (vocab_size - 2)
