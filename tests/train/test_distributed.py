"""Data parallel with msrun: 2 CPU workers (MCCL) read disjoint shares of each step, start from identical weights,
and end with identical weights equal to a single process running the same global batch (2 accumulation steps), with
dropout on (Geneformer V1's 0.02) and the workers' run stopped after one step and resumed from rank 0's checkpoint:
rank r's m-th micro-batch draws the masks of the single process's micro-batch r * M + m."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.msrun import msrun
from helpers.train import TINY_MODEL

from mindformer_gf.train import Trainer
from mindformer_gf.train.objectives import MaskedLMObjective
from mindformer_gf.train.pretraining import build_pretraining_data, build_pretraining_model

WORKER = Path(__file__).with_name("dp_worker.py")


@pytest.mark.skipif(shutil.which("msrun") is None, reason="msrun (MindSpore's launcher) is not on PATH")
def test_two_workers_equal_single_process_over_the_same_global_batch(tiny_settings, tmp_path):
    steps, stop_at = 3, 1
    dropout = {**TINY_MODEL, "hidden_dropout_prob": 0.02, "attention_probs_dropout_prob": 0.02}
    common = dict(max_steps=steps, batch_size=2, warmup_steps=1, learning_rate=1e-2, save_every=100)
    common.update(model_overrides=dropout, num_buckets=1)
    settings = tiny_settings(output_dir=str(tmp_path / "dp"), gradient_accumulation=1, **common)
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(vars(settings)))
    out = tmp_path / "out"
    out.mkdir()
    completed, text = msrun([str(WORKER), str(settings_file), str(out), str(stop_at)], tmp_path)
    assert completed.returncode == 0, text[-6000:]
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]
    assert all(int(r["world_size"]) == 2 for r in ranks)

    # each rank read its own cells: disjoint shares that together make every step's global batch
    assert not set(ranks[0]["cells"]) & set(ranks[1]["cells"])
    single_settings = tiny_settings(output_dir=str(tmp_path / "single"), gradient_accumulation=2, **common)
    model = build_pretraining_model(single_settings)
    data = build_pretraining_data(single_settings, model.config, group_size=2)
    plan = data.source.plan
    global_cells = sorted(int(i) for s in range(steps) for m in plan.step(s) for i in m.cell_indices)
    assert sorted(np.concatenate([ranks[0]["cells"], ranks[1]["cells"]]).tolist()) == global_cells

    result = Trainer(model, MaskedLMObjective(model), data.source, single_settings).train()
    single = model.state_dict()
    assert np.array_equal(ranks[0]["initial_query"], ranks[1]["initial_query"])
    for name, value in single.items():
        np.testing.assert_array_equal(ranks[0][f"w/{name}"], ranks[1][f"w/{name}"], err_msg=name)
        np.testing.assert_allclose(ranks[0][f"w/{name}"], value, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(ranks[0]["losses"], result.losses, rtol=1e-5)
    # training moved the weights, so agreement is not the agreement of untouched initial values
    moved = ranks[0]["w/bert.encoder.layer.0.attention.self.query.weight"] - ranks[0]["initial_query"]
    assert np.abs(moved).max() > 1e-3
