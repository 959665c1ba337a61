"""One settings vocabulary for pretraining and fine-tuning (transformers' TrainingArguments names where it has one);
the names of the previous release still work, with a DeprecationWarning, and mean the same thing."""

from __future__ import annotations

import dataclasses

import pytest

from mindformer_gf.finetune.fit import schedule_for_trainer
from mindformer_gf.tasks import FineTuneSettings
from mindformer_gf.train import PretrainSettings, TrainSettings, load_settings

SHARED_KNOBS = {
    "num_train_epochs",
    "per_device_train_batch_size",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "lr_power",
    "lr_num_cycles",
    "min_lr_ratio",
    "weight_decay",
    "max_grad_norm",
    "save_total_limit",
    "seed",
    "device",
    "precision",
}


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_fine_tuning_and_pretraining_name_their_shared_knobs_alike():
    assert SHARED_KNOBS <= _names(TrainSettings)
    assert SHARED_KNOBS <= _names(FineTuneSettings)
    # transformers.TrainingArguments spells these so too
    transformers = pytest.importorskip("transformers")
    arguments = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    assert {"num_train_epochs", "learning_rate", "lr_scheduler_type", "warmup_steps"} <= arguments
    assert {"weight_decay", "max_grad_norm", "seed", "save_total_limit", "gradient_accumulation_steps"} <= arguments
    assert "per_device_train_batch_size" in arguments
    assert "gradient_accumulation_steps" in _names(TrainSettings)


def test_old_training_setting_names_warn_and_mean_the_new_ones():
    with pytest.warns(DeprecationWarning) as caught:
        old = PretrainSettings(lr_schedule="cosine", keep_last=2, gradient_accumulation=3, num_epochs=2.0)
    assert {"'lr_schedule'", "'keep_last'", "'gradient_accumulation'", "'num_epochs'"} <= {
        str(w.message).split()[2] for w in caught
    }
    new = PretrainSettings(
        lr_scheduler_type="cosine", save_total_limit=2, gradient_accumulation_steps=3, num_train_epochs=2.0
    )
    assert old == new
    with pytest.warns(DeprecationWarning, match="'lr_schedule' is now called 'lr_scheduler_type'"):
        assert new.lr_schedule == "cosine"
    with pytest.raises(AttributeError):
        new.no_such_setting  # noqa: B018
    with pytest.raises(ValueError, match="same knob"):
        TrainSettings(lr_schedule="cosine", lr_scheduler_type="linear")


def test_old_names_in_a_settings_file_and_overrides(tmp_path):
    path = tmp_path / "pretrain.yaml"
    path.write_text("dataset: cells.dataset\nlr_schedule: polynomial\nkeep_last: 5\nlr_power: 2.0\n")
    with pytest.warns(DeprecationWarning):
        settings = load_settings(PretrainSettings, path, {"num_epochs": "1.5"})
    assert (settings.lr_scheduler_type, settings.save_total_limit, settings.num_train_epochs) == ("polynomial", 5, 1.5)


def test_old_fine_tuning_names_keep_their_meaning():
    # lr_end was the polynomial schedule's absolute end; it is now a fraction of the peak: 1e-6 / 1e-4
    with pytest.warns(DeprecationWarning):
        old = FineTuneSettings(learning_rate=1e-4, lr_schedule="polynomial", lr_end=1e-6, polynomial_power=2.0)
    assert old.min_lr_ratio == pytest.approx(0.01, rel=1e-12) and old.lr_power == 2.0
    assert schedule_for_trainer(old) == {
        "lr_scheduler_type": "polynomial",
        "min_lr_ratio": pytest.approx(0.01, rel=1e-12),
        "lr_power": 2.0,
        "lr_num_cycles": 1,
    }
    # lr_end never applied to the other schedules: they still decay to 0
    with pytest.warns(DeprecationWarning):
        linear = FineTuneSettings(learning_rate=1e-4, lr_end=1e-6)
    assert linear.min_lr_ratio is None and schedule_for_trainer(linear)["min_lr_ratio"] == 0.0
    # the default polynomial end is transformers' lr_end of 1e-7, as before
    default = FineTuneSettings(learning_rate=1e-4, lr_scheduler_type="polynomial")
    assert schedule_for_trainer(default)["min_lr_ratio"] == pytest.approx(1e-7 / 1e-4, rel=1e-12)
    with pytest.warns(DeprecationWarning):
        assert FineTuneSettings(keep_checkpoints=True).save_total_limit is None
    with pytest.warns(DeprecationWarning):
        assert FineTuneSettings(keep_checkpoints=False).save_total_limit == 0
    with pytest.warns(DeprecationWarning):
        replaced = FineTuneSettings(learning_rate=2e-4, lr_scheduler_type="polynomial").replace(
            lr_end=1e-6, num_cycles=3
        )
    assert replaced.min_lr_ratio == pytest.approx(1e-6 / 2e-4, rel=1e-12) and replaced.lr_num_cycles == 3


def test_gf_pretrain_takes_the_old_and_the_new_flags():
    from mindformer_gf.cli import build_parser

    for flag in ("--lr-schedule", "--lr-scheduler-type"):
        args = build_parser().parse_args(["pretrain", flag, "cosine"])
        assert args.lr_scheduler_type == "cosine"
    for flag in ("--keep-last", "--save-total-limit"):
        assert build_parser().parse_args(["pretrain", flag, "4"]).save_total_limit == 4
