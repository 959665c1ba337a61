"""Schedules against transformers' schedulers; settings from YAML/JSON with overrides and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from mindformer_gf.train import PretrainSettings, learning_rate, load_settings, parse_overrides, save_settings


@pytest.mark.parametrize(
    "schedule, options",
    [
        ("linear", {}),
        ("cosine", {}),
        ("cosine_with_restarts", {"num_cycles": 1}),
        ("cosine_with_restarts", {"num_cycles": 3}),
        ("polynomial", {"power": 1.0}),
        ("polynomial", {"power": 2.0}),
        ("polynomial", {"power": 0.5}),
        ("constant", {}),
        ("constant_with_warmup", {}),
    ],
)
def test_schedules_match_transformers(schedule, options):
    """Every `lr_scheduler_type` of the reference, step by step against transformers' get_scheduler."""
    peak, warmup, total = 1e-3, 10, 50
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    specific = {}
    if schedule == "polynomial":
        specific = {"power": options["power"], "lr_end": 1e-7}
    elif schedule == "cosine_with_restarts":
        specific = {"num_cycles": options["num_cycles"]}
    scheduler = transformers.get_scheduler(schedule, optimizer, warmup, total, scheduler_specific_kwargs=specific)
    ours = {"min_ratio": 1e-7 / peak if schedule == "polynomial" else 0.0, **options}
    for step in range(total + 1):
        expected = optimizer.param_groups[0]["lr"]
        assert learning_rate(step, peak, warmup, total, schedule, **ours) == pytest.approx(expected, abs=1e-12), step
        optimizer.step()
        scheduler.step()
    # past the end the rate stays at its floor (transformers' cosine would rise again)
    assert learning_rate(70, peak, warmup, total, schedule, **ours) == learning_rate(
        total, peak, warmup, total, schedule, **ours
    )


def test_polynomial_power_changes_the_curve():
    # (1 - 0.5)^2 = 0.25 of the peak half way through the decay, against 0.5 for power 1
    assert learning_rate(30, 1.0, 10, 50, "polynomial", power=2.0) == pytest.approx(0.25)
    assert learning_rate(30, 1.0, 10, 50, "polynomial", power=1.0) == pytest.approx(0.5)


def test_min_lr_ratio_floor():
    assert learning_rate(50, 1.0, 10, 50, "linear", min_ratio=0.1) == pytest.approx(0.1)
    assert learning_rate(30, 1.0, 10, 50, "linear", min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)


def test_yaml_then_overrides_then_saved(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text("dataset: cells.dataset\nlearning_rate: 5.0e-4\nmodel_overrides: {num_hidden_layers: 2}\n")
    overrides = parse_overrides(["learning_rate=1e-4", "max_steps=7", "lr_schedule=cosine"])
    settings = load_settings(PretrainSettings, config, overrides)
    assert settings.learning_rate == 1e-4 and settings.max_steps == 7 and settings.lr_schedule == "cosine"
    assert settings.model_overrides == {"num_hidden_layers": 2}
    assert settings.weight_decay == 0.001 and settings.warmup_steps == 10_000  # the reference's defaults
    saved = save_settings(settings, tmp_path / "out" / "train_config.json")
    again = load_settings(PretrainSettings, saved)
    assert again == settings
    assert json.loads(saved.read_text())["max_steps"] == 7


def test_settings_errors(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        load_settings(PretrainSettings, None, {"dataset": "x", "learning_rte": 1})
    with pytest.raises(ValueError, match="lr_schedule"):
        load_settings(PretrainSettings, None, {"dataset": "x", "lr_schedule": "step"})
    with pytest.raises(ValueError, match="must be of type int"):
        load_settings(PretrainSettings, None, {"dataset": "x", "batch_size": "many"})
    with pytest.raises(ValueError, match="no dataset"):
        load_settings(PretrainSettings, None, {})
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["learning_rate"])
    with pytest.raises(ValueError, match="dynamic_shapes must be true, false or auto, got 'sometimes'"):
        load_settings(PretrainSettings, None, {"dataset": "x", "dynamic_shapes": "sometimes"})


def test_dynamic_shapes_setting_auto_true_false():
    from mindformer_gf.train.settings import TrainSettings, resolve_dynamic_shapes

    # pretraining's default is "auto"; the generic loop's (fine-tuning's) stays static
    assert PretrainSettings(dataset="x").dynamic_shapes == "auto" and TrainSettings().dynamic_shapes is False
    for written, value in (("auto", "auto"), ("true", True), ("false", False)):
        assert (
            load_settings(PretrainSettings, None, {"dataset": "x", "dynamic_shapes": written}).dynamic_shapes == value
        )
    assert [resolve_dynamic_shapes("auto", target) for target in ("CPU", "Ascend")] == [True, False]
    assert [resolve_dynamic_shapes(value, "Ascend") for value in (True, False)] == [True, False]
