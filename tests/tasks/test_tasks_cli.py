"""The `gf classify` / `gf embed` commands: arguments reach the settings, and `gf embed` writes what it says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mindformer_gf.cli import build_parser, main


def test_classify_arguments_become_fine_tuning_settings():
    from mindformer_gf.cli.classify import _gene_defaults, _settings

    args = build_parser().parse_args(
        "classify cell --dataset d --model m --output-dir o --label cell_type --epochs 0.9 --lr 8.04e-4 "
        "--schedule polynomial --warmup-steps 1812 --weight-decay 0.2588 --freeze-layers 2 --batch-size 12 "
        "--split 0.7,0.15,0.15 --group-by patient --filter phase=G1,S".split()
    )
    settings = _settings(args)
    assert (settings.num_epochs, settings.learning_rate, settings.lr_schedule) == (0.9, 8.04e-4, "polynomial")
    assert (settings.warmup_steps, settings.weight_decay, settings.freeze_layers) == (1812, 0.2588, 2)
    assert args.group_by == "patient" and args.filter == ["phase=G1,S"]
    gene = build_parser().parse_args(
        "classify gene --dataset d --model m --output-dir o --gene-labels x.csv --strategy adapters".split()
    )
    assert _gene_defaults(gene) == {"num_train_epochs": 1.0}  # no freeze_layers: adapters freeze the whole encoder
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            "classify cell --dataset d --model m --output-dir o --label x --strategy qlora".split()
        )
    lora = build_parser().parse_args(
        "classify cell --dataset d --model m --output-dir o --label x --strategy lora --lora-r 8 --lora-alpha 16 "
        "--lora-dropout 0.05 --lora-target-modules query,value".split()
    )
    settings = _settings(lora)
    assert settings.strategy == "lora"
    assert (settings.lora_r, settings.lora_alpha, settings.lora_dropout) == (8, 16.0, 0.05)
    assert settings.lora_target_modules == ("query", "value")


def test_gf_embed_writes_rows_in_input_order(tiny_model_dir, pbmc_dataset_dir, pbmc_dataset, tmp_path, capsys):
    code = main(
        [
            "embed",
            "--dataset",
            str(pbmc_dataset_dir),
            "--model",
            str(tiny_model_dir),
            "--output-dir",
            str(tmp_path),
            "--label",
            "cell_type",
            "--filter",
            "phase=S",
            "--num-buckets",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    frame = pd.read_csv(tmp_path / "embeddings.csv")
    expected_rows = np.flatnonzero(np.asarray(pbmc_dataset["phase"]) == "S")
    np.testing.assert_array_equal(frame["dataset_row"], expected_rows)
    assert np.load(tmp_path / "embeddings.npy").shape == (expected_rows.size, 32)
    assert f"{expected_rows.size} cell embeddings of 32 dimensions" in capsys.readouterr().out


def test_classify_with_bad_input_fails_in_one_line_and_writes_nothing(
    pbmc_dataset_dir, tiny_model_dir, tmp_path, capsys
):
    """A label column the dataset lacks, a split that does not add up, a model directory that is not one, a
    multitask split that cannot be stratified: each fails before the output directory exists (nothing half-written
    to clean up)."""
    data = ["--dataset", str(pbmc_dataset_dir), "--no-progress", "--model"]
    cases = [
        (["cell", *data, str(tiny_model_dir), "--label", "no_such_column"], "no_such_column"),
        (["cell", *data, str(tiny_model_dir), "--label", "cell_type", "--split", "0.5,0.1,0.1"], "split"),
        (["cell", *data, str(tmp_path / "no_model"), "--label", "cell_type"], "no_model"),
        (["multitask", *data, str(tiny_model_dir), "--tasks", "cell_type", "--max-cells", "20"], "stratify"),
    ]
    for k, (arguments, named) in enumerate(cases):
        out = tmp_path / f"out{k}"
        capsys.readouterr()
        assert main(["classify", *arguments, "--output-dir", str(out)]) != 0
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"gf classify {arguments[0]}: error:") and named in error and "\n" not in error, error
        assert not out.exists()
