"""`gf pretrain` end to end on a tiny model: config file + overrides, one graph compilation (dynamic shapes, the CPU
default) over cells of many lengths with every batch padded to its longest cell, metrics CSV and loss curve,
checkpoints kept last K, the final model loadable by from_pretrained."""

from __future__ import annotations

import csv
import json

import numpy as np
from mindspore import Tensor

from mindformer_gf.cli import main
from mindformer_gf.data import corpus_lengths, load_corpus
from mindformer_gf.pretrained import from_pretrained
from mindformer_gf.train import Trainer
from mindformer_gf.train.checkpoint import list_checkpoints, load_checkpoint
from mindformer_gf.train.pretraining import build_pretraining_data, build_pretraining_model


def test_gf_pretrain_compiles_once_and_writes_outputs(tiny_settings, tmp_path, monkeypatch):
    settings = tiny_settings(max_steps=12, save_every=3, keep_last=2)
    config_file = tmp_path / "pretrain.json"
    config_file.write_text(json.dumps({k: v for k, v in vars(settings).items() if k != "max_steps"}))

    # count graphs MindSpore compiles: distinct shapes fed to the micro-step, and the compile cache of both cells
    seen = {}
    original_train = Trainer.train

    def spy(self, resume=None):
        result = original_train(self, resume)
        seen["micro_cache"] = len(self.micro_step.compile_cache)
        seen["apply_cache"] = len(self.apply_step.compile_cache)
        seen["result"] = result
        return result

    monkeypatch.setattr(Trainer, "train", spy)
    assert main(["pretrain", "--config", str(config_file), "--max-steps", "12", "--set", "learning_rate=2e-3"]) == 0

    model = build_pretraining_model(settings)
    data = build_pretraining_data(settings, model.config, group_size=1)
    plan = data.source.plan
    micro = [plan.step(s)[0] for s in range(12)]
    # on the CPU the default ("auto") is one dynamic-shape graph, each batch padded to its own longest cell
    assert [m.width for m in micro] == [int(plan.lengths[m.cell_indices].max()) for m in micro]
    widths_used = {m.width for m in micro}
    assert len(widths_used) > 3  # more batch shapes than the 3 buckets...
    assert seen["result"].batch_shapes == len(widths_used)
    assert seen["micro_cache"] == 1 and seen["apply_cache"] == 1  # ...and one graph for all of them
    assert seen["result"].compiled_graphs == 2

    run = tmp_path / "run"
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert all(float(r["lr"]) > 0 for r in rows[1:]) and float(rows[0]["lr"]) == 0.0  # warmup starts at 0
    assert all(0.0 <= float(r["padding_waste"]) < 1.0 and float(r["accuracy"]) <= 1.0 for r in rows)
    assert any(float(r["cells_per_s"]) > 0 for r in rows)
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["learning_rate"] == 2e-3 and saved["max_steps"] == 12

    # save_every=3, keep_last=2: of steps 3, 6, 9, 12 the last two remain, each with the run's settings
    checkpoints = list_checkpoints(run / "checkpoints")
    assert [p.name for p in checkpoints] == ["step-00000009", "step-00000012"]
    saved = json.loads((checkpoints[-1] / "train_config.json").read_text())
    assert saved["learning_rate"] == 2e-3 and saved["dynamic_shapes"] is True  # what ran, not "auto"
    weights, optimizer_state, state = load_checkpoint(checkpoints[-1])
    assert state["step"] == 12 and state["skipped_steps"] == 0
    assert optimizer_state["step"][0] == 12

    final = from_pretrained(run / "model", "BertForMaskedLM")
    for name, value in final.state_dict().items():
        assert np.array_equal(value, weights[name]), name
    # trained weights differ from the initial ones (the comparisons above are not vacuous)
    assert not np.array_equal(weights["cls.predictions.bias"], model.state_dict()["cls.predictions.bias"])
    ids = np.zeros((1, 8), np.int32)
    assert final(Tensor(ids + 5), Tensor(ids + 1))[0].shape == (1, 8, 64)


def test_plan_padding_waste_is_measured_against_lengths(tiny_settings):
    settings = tiny_settings()
    model = build_pretraining_model(settings)
    data = build_pretraining_data(settings, model.config, group_size=1)
    lengths = corpus_lengths(load_corpus(settings.dataset))
    plan = data.source.plan
    fed = sum(plan.step_tokens(s)[2] for s in range(plan.steps_per_epoch))
    assert data.padding_waste == 1 - lengths.sum() / fed
    # buckets beat padding every cell to the longest one
    assert data.padding_waste < 1 - lengths.mean() / lengths.max()
