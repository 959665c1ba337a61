"""Stopping and resuming with dropout on: `gf pretrain` (2 accumulation steps) killed with SIGTERM writes a
checkpoint and exits; `--resume` from it continues so that every step's loss, the final weights and the final AdamW
state equal the uninterrupted run's bit for bit, and the metrics CSV reads as one run. Dropout masks are functions
of (run seed, step, micro-batch, layer, site), so a resumed run draws the masks the uninterrupted one drew.
(test_distributed.py stops and resumes a 2-worker msrun run, at Geneformer V1's rate.)"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers.train import TINY_MODEL

from mindformer_gf.reference import init_weights
from mindformer_gf.train import pretrain
from mindformer_gf.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

# Geneformer V2's dropout rate (hidden and attention)
V2_DROPOUT = {**TINY_MODEL, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
# A constant learning rate (no warmup, no decay) does not depend on the run's length, so a long run can be stopped
# anywhere and compared with a short uninterrupted one. 1e-2 moves every weight by ~1e-2 a step: a resume that lost
# the AdamW moments (or the step count behind their bias correction) ends ~1e-3 away, 1e3 x the tolerance.
CONSTANT_LR = dict(lr_schedule="constant", warmup_steps=0, learning_rate=1e-2, log_every=1)


def read_losses(path) -> dict[int, float]:
    with open(path) as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle) if row["loss"]}


def assert_same_final_state(run_dir, reference_dir, total: int) -> None:
    """The checkpoints both runs wrote after their last step hold identical weights and AdamW state."""
    ours, theirs = latest_checkpoint(run_dir / "checkpoints"), latest_checkpoint(reference_dir / "checkpoints")
    assert ours.name == theirs.name == f"step-{total:08d}"
    weights, optimizer, state = load_checkpoint(ours)
    ref_weights, ref_optimizer, ref_state = load_checkpoint(theirs)
    assert state["step"] == ref_state["step"] == total
    assert sorted(weights) == sorted(ref_weights) and sorted(optimizer) == sorted(ref_optimizer)
    for name in weights:
        np.testing.assert_array_equal(weights[name], ref_weights[name], err_msg=name)
    for name in optimizer:
        np.testing.assert_array_equal(optimizer[name], ref_optimizer[name], err_msg=name)


def assert_moved(run_dir, model_overrides: dict, seed: int = 0) -> None:
    """The run trained: weights far from their initial values (a run whose updates were skipped, or a resume that
    reset the weights, ends near them), AdamW moments nonzero."""
    from mindformer_gf.config import GeneformerConfig

    weights, optimizer, _ = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    config = GeneformerConfig.from_preset("Geneformer-V1-10M", architectures=["BertForMaskedLM"], **model_overrides)
    initial = init_weights(config, "BertForMaskedLM", seed)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert np.abs(weights[name] - initial[name]).max() > 1e-2
    assert all(np.abs(v).max() > 0 for k, v in optimizer.items() if k.endswith(name) and v.ndim)


def test_sigterm_then_resume_matches_uninterrupted_run_with_dropout_and_accumulation(tiny_settings, tmp_path):
    common = dict(model_overrides=V2_DROPOUT, gradient_accumulation=2, batch_size=2, save_every=10_000, **CONSTANT_LR)
    interrupted = tiny_settings(output_dir=str(tmp_path / "interrupted"), max_steps=100_000, **common)
    config_file = tmp_path / "pretrain.json"
    config_file.write_text(json.dumps(vars(interrupted)))
    metrics = tmp_path / "interrupted" / "metrics.csv"
    process = subprocess.Popen(
        [sys.executable, "-m", "mindformer_gf", "pretrain", "--config", str(config_file), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.is_file() and len(read_losses(metrics)) >= 4:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    (checkpoint,) = list_checkpoints(tmp_path / "interrupted" / "checkpoints")
    _, _, state = load_checkpoint(checkpoint)
    stopped = state["step"]
    assert stopped >= 4 and checkpoint.name == f"step-{stopped:08d}"
    assert max(read_losses(metrics)) == stopped

    total = stopped + 4
    resumed = pretrain(tiny_settings(output_dir=str(tmp_path / "interrupted"), max_steps=total, **common), resume=True)
    assert resumed.steps == total and len(resumed.losses) == 4
    reference = pretrain(tiny_settings(output_dir=str(tmp_path / "reference"), max_steps=total, **common))

    ours, theirs = read_losses(metrics), read_losses(tmp_path / "reference" / "metrics.csv")
    assert sorted(ours) == sorted(theirs) == list(range(1, total + 1))
    np.testing.assert_array_equal([ours[s] for s in ours], [theirs[s] for s in ours])
    np.testing.assert_array_equal(resumed.losses, reference.losses[stopped:])
    assert_same_final_state(tmp_path / "interrupted", tmp_path / "reference", total)
    assert_moved(tmp_path / "reference", V2_DROPOUT)


def test_resume_refuses_another_data_plan(tiny_settings, tmp_path):
    pretrain(tiny_settings(max_steps=2, save_every=2))
    with pytest.raises(ValueError, match="another data plan"):
        pretrain(tiny_settings(max_steps=4, batch_size=3), resume=True)
