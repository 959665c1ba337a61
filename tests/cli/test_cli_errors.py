"""`gf`'s error reporting: every command turns one bad input into the single line `gf <command>: error: ...` with
exit status 1 (2 for a bad argument), the traceback only with --debug or GF_DEBUG=1; a bug keeps its traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mindformer_gf.cli import main


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """A tokenized-dataset directory of four cells with a `cell_type` column (no label the tests ask for)."""
    from datasets import Dataset

    path = tmp_path_factory.mktemp("cli") / "cells.dataset"
    cells = [[2, 3, 4], [5, 6], [7, 8, 9, 10], [3, 5]]
    Dataset.from_dict(
        {"input_ids": cells, "length": [len(c) for c in cells], "cell_type": ["a", "b", "a", "b"]}
    ).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A directory that looks like a model (config.json) for commands that reach the dataset first."""
    from mindformer_gf.config import GeneformerConfig

    path = tmp_path_factory.mktemp("model")
    config = GeneformerConfig.from_preset("Geneformer-V1-10M", num_hidden_layers=1, hidden_size=32)
    (path / "config.json").write_text(json.dumps(config.to_dict()))
    return path


def run_gf(argv: list[str], capsys) -> tuple[int, list[str]]:
    """`gf argv` in this process: (exit status, stderr lines that are not Python warnings)."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        code = stop.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip() and "Warning" not in line]


def expect_one_line(argv: list[str], capsys, expected: str, status: int = 1) -> None:
    code, lines = run_gf(argv, capsys)
    assert (code, lines) == (status, [expected])


@pytest.fixture(autouse=True)
def no_debug_from_the_environment(monkeypatch):
    monkeypatch.delenv("GF_DEBUG", raising=False)


def test_tokenize_missing_input(tmp_path, capsys):
    missing = tmp_path / "cells.h5ad"
    expect_one_line(
        ["tokenize", str(missing), str(tmp_path / "out"), "--prefix", "p", "--no-progress"],
        capsys,
        f"gf tokenize: error: {missing}: no such file or directory",
    )


def test_convert_missing_source(tmp_path, capsys):
    code, lines = run_gf(["convert", str(tmp_path / "nothing"), str(tmp_path / "ms"), "--quiet"], capsys)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"gf convert: error: {tmp_path / 'nothing'}")


def test_pretrain_missing_dataset(tmp_path, capsys):
    missing = tmp_path / "cells.dataset"
    argv = ["pretrain", "--dataset", str(missing), "--output-dir", str(tmp_path / "run"), "--no-progress"]
    expect_one_line(argv, capsys, f"gf pretrain: error: no tokenized dataset at {missing}; make one with `gf tokenize`")


def test_pretrain_bad_value(tmp_path, capsys):
    argv = ["pretrain", "--dataset", "d", "--set", "batch_size=many"]
    expect_one_line(argv, capsys, "gf pretrain: error: setting batch_size must be of type int, got 'many'")
    argv = ["pretrain", "--dataset", "d", "--dynamic-shapes", "maybe"]
    expect_one_line(argv, capsys, "gf pretrain: error: dynamic_shapes must be true, false or auto, got 'maybe'")


def test_classify_cell_missing_label_column(small_dataset, model_dir, tmp_path, capsys):
    argv = ["classify", "cell", "--dataset", str(small_dataset), "--model", str(model_dir)]
    argv += ["--output-dir", str(tmp_path / "out"), "--label", "disease", "--no-progress"]
    expected = (
        "gf classify cell: error: the dataset has no column 'disease'; columns: ['input_ids', 'length', 'cell_type']"
    )
    expect_one_line(argv, capsys, expected)


def test_classify_cell_bad_value(small_dataset, model_dir, tmp_path, capsys):
    argv = ["classify", "cell", "--dataset", str(small_dataset), "--model", str(model_dir)]
    argv += ["--output-dir", str(tmp_path / "out"), "--label", "cell_type", "--epochs", "-1"]
    expected = (
        "gf classify cell: error: num_train_epochs must be > 0, per_device_train_batch_size and forward_batch_size >= 1"
    )
    expect_one_line(argv, capsys, expected)


def test_classify_gene_missing_label_file(small_dataset, model_dir, tmp_path, capsys):
    missing = tmp_path / "labels.csv"
    argv = ["classify", "gene", "--dataset", str(small_dataset), "--model", str(model_dir)]
    argv += ["--output-dir", str(tmp_path / "out"), "--gene-labels", str(missing), "--no-progress"]
    expect_one_line(argv, capsys, f"gf classify gene: error: gene label file {missing} not found")


def test_classify_multitask_bad_split_is_a_usage_error(small_dataset, model_dir, tmp_path, capsys):
    argv = ["classify", "multitask", "--dataset", str(small_dataset), "--model", str(model_dir)]
    argv += ["--output-dir", str(tmp_path / "out"), "--tasks", "cell_type", "--split", "0.8,0.2"]
    expected = "gf classify multitask: error: --split expects three fractions like 0.8,0.1,0.1, got '0.8,0.2'"
    expect_one_line(argv, capsys, expected, status=2)


def test_embed_missing_model(small_dataset, tmp_path, capsys):
    argv = ["embed", "--dataset", str(small_dataset), "--model", str(tmp_path / "model")]
    argv += ["--output-dir", str(tmp_path / "out"), "--no-progress"]
    expected = f"gf embed: error: {tmp_path / 'model'} has no config.json; is it a Hugging Face model directory?"
    expect_one_line(argv, capsys, expected)


def test_demo_output_dir_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("")
    expect_one_line(
        ["demo", "--output-dir", str(target), "--no-progress"], capsys, f"gf demo: error: {target}: File exists"
    )


def test_argparse_usage_errors_exit_2(capsys):
    code, lines = run_gf(["classify", "cell", "--dataset", "d"], capsys)
    assert code == 2 and lines[-1].startswith("gf classify cell: error: the following arguments are required")


def test_debug_flag_and_environment_show_the_traceback(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "cells.h5ad"
    argv = ["tokenize", str(missing), str(tmp_path / "out"), "--prefix", "p"]
    for command, env in (([*argv, "--debug"], None), (["--debug", *argv], None), (argv, "1")):
        if env:
            monkeypatch.setenv("GF_DEBUG", env)
        code, lines = run_gf(command, capsys)
        assert code == 1 and lines[0] == "Traceback (most recent call last):"
        assert lines[-1] == f"gf tokenize: error: {missing}: no such file or directory"


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    import mindformer_gf.cli.demo as demo_cli

    # a ValueError raised inside another library (json here) is not one of our messages: a bug
    monkeypatch.setattr(demo_cli, "run", lambda args: json.loads("{"))
    code, lines = run_gf(["demo"], capsys)
    assert code == 1 and lines[0] == "Traceback (most recent call last):"
    assert lines[-2].startswith("gf demo: internal error: JSONDecodeError: Expecting property name")
    assert "This is a bug in mindformer_gf" in lines[-1] and "report it" in lines[-1]

    def crash(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(demo_cli, "run", crash)
    code, lines = run_gf(["demo"], capsys)
    assert code == 1 and "RuntimeError: boom" in lines and lines[-2] == "gf demo: internal error: RuntimeError: boom"


def test_the_real_command_prints_one_line(tmp_path):
    """As a user sees it: the whole stderr of `python -m mindformer_gf` is the one line."""
    missing = tmp_path / "cells.h5ad"
    env = {**os.environ, "GF_DEBUG": ""}
    done = subprocess.run(
        [sys.executable, "-m", "mindformer_gf", "tokenize", str(missing), str(tmp_path), "--prefix", "p"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (1, f"gf tokenize: error: {missing}: no such file or directory\n")
