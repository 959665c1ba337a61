"""Training steps against an independent oracle: transformers' BertForMaskedLM trained with torch's AdamW, gradient
clipping and the same learning rates on the same batches. Gradient accumulation over two micro-batches with different
numbers of masked genes must equal one batch of the mean loss (what HF computes). Then: a non-finite step is skipped
and counted, with weights and optimiser state untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from helpers.train import TINY_MODEL, ListSource, PoisonedObjective, make_steps

from mindformer_gf.pretrained import from_pretrained
from mindformer_gf.train import MaskedLMObjective, Trainer, TrainSettings, decays_weight, learning_rate
from mindformer_gf.train.precision import DynamicLossScale


def to_full_labels(batch: dict) -> np.ndarray:
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    for row in range(labels.shape[0]):
        used = batch["labels"][row] != -100
        labels[row, batch["masked_positions"][row][used]] = batch["labels"][row][used]
    return labels


@pytest.fixture
def hf_model_dir(tmp_path):
    torch.manual_seed(3)
    config = transformers.BertConfig(**TINY_MODEL, hidden_act="relu", layer_norm_eps=1e-12, type_vocab_size=2)
    model = transformers.BertForMaskedLM(config)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", model


def test_accumulated_steps_match_transformers_and_torch_adamw(hf_model_dir, tmp_path):
    directory, hf_model = hf_model_dir
    steps = make_steps(3, rows_per_micro=2)
    settings = TrainSettings(
        output_dir=str(tmp_path / "ours"),
        max_steps=3,
        batch_size=2,
        gradient_accumulation=2,
        warmup_steps=1,
        learning_rate=5e-3,
        weight_decay=0.01,
        # a large epsilon makes Adam sensitive to the gradients' scale, so a normalisation error would show
        adam_epsilon=1e-4,
        max_grad_norm=0.5,
        device="CPU",
        progress_bar=False,
        log_every=1,
    )
    model = from_pretrained(directory, "BertForMaskedLM")
    result = Trainer(model, MaskedLMObjective(model), ListSource(steps), settings).train()

    hf_model.train()
    named = dict(hf_model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named.items() if decays_weight(n)], "weight_decay": 0.01},
            {"params": [p for n, p in named.items() if not decays_weight(n)], "weight_decay": 0.0},
        ],
        lr=5e-3,
        eps=1e-4,
    )
    hf_losses, hf_norms = [], []
    for step, micro in enumerate(steps):
        ids = np.concatenate([b["input_ids"] for b in micro])
        mask = np.concatenate([b["attention_mask"] for b in micro])
        labels = np.concatenate([to_full_labels(b) for b in micro])
        out = hf_model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            labels=torch.from_numpy(labels),
        )
        optimizer.zero_grad()
        out.loss.backward()
        hf_norms.append(float(torch.nn.utils.clip_grad_norm_(hf_model.parameters(), 0.5)))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, 5e-3, 1, 3, "linear")
        optimizer.step()
        hf_losses.append(float(out.loss.detach()))

    # different numbers of masked genes in the two micro-batches: a mean of means would differ from HF's loss
    counts = [(b["labels"] != -100).sum() for b in steps[0]]
    assert counts[0] != counts[1]
    np.testing.assert_allclose(result.losses, hf_losses, rtol=1e-5)
    import csv

    with open(tmp_path / "ours" / "metrics.csv") as handle:
        norms = [float(row["grad_norm"]) for row in csv.DictReader(handle)]
    np.testing.assert_allclose(norms, hf_norms, rtol=1e-4)
    assert max(hf_norms) > 0.5  # clipping was engaged
    ours = model.state_dict()
    hf_state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    for name, value in ours.items():
        np.testing.assert_allclose(value, hf_state[name], rtol=1e-4, atol=2e-6, err_msg=name)


def test_non_finite_step_is_skipped_and_counted(tmp_path):
    from mindformer_gf.config import GeneformerConfig
    from mindformer_gf.model import build_model

    model = build_model(GeneformerConfig(**TINY_MODEL), "BertForMaskedLM", seed=1)
    source = ListSource(make_steps(4, rows_per_micro=2, poison_step=1), model)
    settings = TrainSettings(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        batch_size=2,
        gradient_accumulation=2,
        warmup_steps=0,
        device="CPU",
        progress_bar=False,
        log_every=1,
    )
    trainer = Trainer(model, PoisonedObjective(model), source, settings)
    # fp16-style dynamic loss scaling, to check it halves on the bad step
    trainer.loss_scale = DynamicLossScale(scale=1024.0, window=100, enabled=True)
    result = trainer.train()
    assert result.skipped_steps == 1
    after_poison, before_poison = source.weights_before[2], source.weights_before[1]
    for name, value in before_poison.items():
        assert np.array_equal(after_poison[name], value), name
    # the healthy steps did move the weights (the comparison above can fail)
    assert not np.array_equal(
        source.weights_before[1]["cls.predictions.bias"], source.weights_before[0]["cls.predictions.bias"]
    )
    assert not np.array_equal(model.state_dict()["cls.predictions.bias"], after_poison["cls.predictions.bias"])
    # AdamW counted only the three applied steps; the loss scale halved once
    assert trainer.optimizer.state_arrays()["step"][0] == 3
    assert trainer.loss_scale.scale == 512.0
    import csv

    with open(tmp_path / "run" / "metrics.csv") as handle:
        assert [int(row["skipped_steps"]) for row in csv.DictReader(handle)] == [0, 1, 1, 1]
