"""Stopping and resuming: `gf pretrain` killed with SIGTERM writes a checkpoint and exits; `--resume` from it
continues so that every step's loss equals the uninterrupted run's, and the metrics CSV reads as one run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mindformer_gf.train import pretrain
from mindformer_gf.train.checkpoint import list_checkpoints, load_checkpoint


def read_losses(path) -> dict[int, float]:
    with open(path) as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def test_sigterm_checkpoint_then_resume_matches_uninterrupted_run(tiny_settings, tmp_path):
    # During warmup the learning rate does not depend on the run's length, so a long run can be stopped anywhere
    # and compared with a short uninterrupted one. Dropout is off: CPU dropout kernels cannot be re-seeded.
    common = dict(warmup_steps=10_000, learning_rate=5e-2, save_every=10_000, log_every=1)
    interrupted = tiny_settings(output_dir=str(tmp_path / "interrupted"), max_steps=100_000, **common)
    config_file = tmp_path / "pretrain.json"
    config_file.write_text(json.dumps(vars(interrupted)))
    metrics = tmp_path / "interrupted" / "metrics.csv"
    process = subprocess.Popen(
        [sys.executable, "-m", "mindformer_gf", "pretrain", "--config", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
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

    total = stopped + 5
    resumed = pretrain(tiny_settings(output_dir=str(tmp_path / "interrupted"), max_steps=total, **common), resume=True)
    assert resumed.steps == total and len(resumed.losses) == 5
    reference = pretrain(tiny_settings(output_dir=str(tmp_path / "reference"), max_steps=total, **common))

    ours, theirs = read_losses(metrics), read_losses(tmp_path / "reference" / "metrics.csv")
    assert sorted(ours) == sorted(theirs) == list(range(1, total + 1))
    np.testing.assert_allclose(
        [ours[s] for s in range(1, total + 1)], [theirs[s] for s in range(1, total + 1)], rtol=1e-5
    )
    np.testing.assert_allclose(resumed.losses, reference.losses[stopped:], rtol=1e-5)
    # the run moved: consecutive losses differ, so equal curves are not an accident of a frozen model
    assert len({round(v, 6) for v in theirs.values()}) > total // 2


def test_resume_refuses_another_data_plan(tiny_settings, tmp_path):
    pretrain(tiny_settings(max_steps=2, save_every=2))
    with pytest.raises(ValueError, match="another data plan"):
        pretrain(tiny_settings(max_steps=4, batch_size=3), resume=True)
