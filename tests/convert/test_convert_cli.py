"""`gf convert`: exit codes and messages, --verify, and a run with PyTorch made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers.convert import bits, hf_model, parameters_by_name, save

from mindformer_gf.cli import main
from mindformer_gf.convert.readers import open_mindspore_weights


def test_convert_prints_a_report_and_goes_back(tmp_path, capsys):
    model = hf_model("BertForMaskedLM", "V2")
    source = save(model, tmp_path / "hf", "bin-legacy")
    assert main(["convert", str(source), str(tmp_path / "ms"), "--quiet", "--verify"]) == 0
    out = capsys.readouterr().out
    count = len(parameters_by_name(model))
    assert "(pytorch (legacy)) -> " in out and f"BertForMaskedLM, {count} tensors ({count} F32)" in out
    assert "skipped cls.predictions.decoder.weight: tied to bert.embeddings.word_embeddings.weight" in out
    assert "verify: largest difference" in out
    assert main(["convert", "--to", "huggingface", str(tmp_path / "ms"), str(tmp_path / "back"), "--quiet"]) == 0
    assert (tmp_path / "back" / "model.safetensors").is_file()


def test_verify_fails_above_the_tolerance_and_writes_nothing(tmp_path, capsys):
    source = save(hf_model("BertForSequenceClassification"), tmp_path / "hf")
    # float16 weights differ from the float32 source by their rounding: far above 1e-7.
    argv = ["convert", str(source), str(tmp_path / "ms"), "--dtype", "float16", "--verify", "--tolerance", "1e-7"]
    assert main([*argv, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "gf convert: error: verify: the converted model differs from the numpy reference" in err
    assert "above the tolerance 1e-07; nothing was written" in err
    assert not (tmp_path / "ms").exists()


def test_options_of_the_other_direction_are_errors(tmp_path, capsys):
    source = save(hf_model("BertForMaskedLM"), tmp_path / "hf")
    assert main(["convert", str(source), str(tmp_path / "ms"), "--quiet"]) == 0
    capsys.readouterr()
    argv = ["convert", "--to", "huggingface", str(tmp_path / "ms"), str(tmp_path / "back"), "--format", "ckpt"]
    assert main(argv) == 1
    assert "format only apply when converting to MindSpore" in capsys.readouterr().err
    assert main(["convert", str(source), str(tmp_path / "ms"), "--quiet"]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err


def test_python_m_convert_runs_without_torch(tmp_path):
    model = hf_model("BertForTokenClassification")
    source = save(model, tmp_path / "hf", "bin")
    # torch and transformers made unimportable: any import of them in the conversion fails the run.
    program = (
        "import runpy, sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
        f"sys.argv = ['mindformer_gf', 'convert', {str(source)!r}, {str(tmp_path / 'ms')!r}, '--quiet']; "
        "runpy.run_module('mindformer_gf', run_name='__main__', alter_sys=True)"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "converted" in completed.stdout
    with open_mindspore_weights(tmp_path / "ms") as weights:
        for key, tensor in parameters_by_name(model).items():
            np.testing.assert_array_equal(weights.tensors[key].read(), bits(tensor), err_msg=key)
