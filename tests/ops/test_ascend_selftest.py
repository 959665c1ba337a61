"""tools/ascend_selftest.py off the Atlas machine: it must say plainly that it cannot run here, and the parts of it
that need no NPU (its check harness, its table) must be right, since on the Atlas machine they
are what judges the Ascend operators."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mindformer_gf.ops import cpu

REPOSITORY = Path(__file__).resolve().parents[2]
TOOL = REPOSITORY / "tools" / "ascend_selftest.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("ascend_selftest", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


selftest = load_tool()


def environment_without_ascend() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("ASCEND")}


@pytest.mark.parametrize("arguments", [[], ["--skip-build", "--dtype", "float16"]])
def test_exits_with_a_clear_message_when_there_is_no_ascend(arguments):
    if not selftest.missing_environment(environment_without_ascend()):
        pytest.skip("this machine has an NPU and CANN: the tool would really run")
    run = subprocess.run(
        [sys.executable, str(TOOL), *arguments],
        env=environment_without_ascend(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == selftest.EXIT_NO_ASCEND == 3
    assert "Traceback" not in run.stdout + run.stderr
    assert "cannot build or run the Ascend operators" in run.stderr
    assert "no Ascend NPU" in run.stderr
    assert "Atlas 800T A2" in run.stderr


def test_bad_arguments_exit_with_usage_status(capsys):
    assert selftest.main(["--dtype", "int8"], environ={}) == selftest.EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_environment_detection_names_each_missing_piece(tmp_path):
    devices = tmp_path / "dev"
    cann = tmp_path / "cann"
    nothing = selftest.missing_environment({}, str(devices / "davinci[0-9]*"), (str(cann),))
    assert any("no Ascend NPU" in problem for problem in nothing)
    assert any("no CANN toolkit" in problem for problem in nothing)

    devices.mkdir()
    (devices / "davinci0").touch()
    (cann / "compiler").mkdir(parents=True)
    found = selftest.missing_environment({}, str(devices / "davinci[0-9]*"), (str(cann),))
    assert not any("NPU" in problem or "CANN" in problem for problem in found)
    assert selftest.find_cann({"ASCEND_HOME_PATH": str(cann)}, ()) == cann


def test_installed_package_goes_first_on_the_search_paths(tmp_path):
    environ = selftest.environment_with_package({"ASCEND_CUSTOM_OPP_PATH": "/old", "PATH": "/bin"}, tmp_path / "v")
    assert environ["ASCEND_CUSTOM_OPP_PATH"] == f"{tmp_path / 'v'}:/old"
    assert environ["LD_LIBRARY_PATH"] == str(tmp_path / "v" / "op_api" / "lib")
    assert environ["PATH"] == "/bin"


# ---- the check harness, run on the CPU kernels (same signatures as the Ascend wrappers) ---------------------------
needs_cpu_kernels = pytest.mark.skipif(not cpu.is_available(), reason=f"CPU kernels not built: {cpu.BUILD_HINT}")


@needs_cpu_kernels
def test_attention_checks_pass_on_the_cpu_kernel_with_dropout():
    mask = selftest._key_mask((50, 17), 50)
    results = selftest.check_attention("cpu fused", cpu.attention, "float32", (2, 2, 50, 16), mask, 0.1, 7)
    assert [result.name.split(": ")[1] for result in results] == ["forward", "dQ", "dK", "dV"]
    assert all(result.passed for result in results), results


@needs_cpu_kernels
def test_attention_checks_catch_a_wrong_mask():
    """The harness is not vacuous: attention with the wrong dropout seed fails the forward check."""
    mask = selftest._key_mask((50, 17), 50)

    def wrong_seed(query, key, value, key_mask, drop, training, seed):
        return cpu.attention(query, key, value, key_mask, drop, training, seed + 1)

    results = selftest.check_attention("wrong seed", wrong_seed, "float32", (2, 2, 50, 16), mask, 0.1, 7, False)
    assert not results[0].passed


@needs_cpu_kernels
def test_layer_norm_checks_pass_on_the_cpu_kernel():
    results = selftest.check_add_layer_norm("cpu fused", cpu.add_layer_norm, "float32", (3, 5), 32)
    assert [result.name.split(": ")[1] for result in results] == ["forward", "dx", "dresidual", "dweight", "dbias"]
    assert all(result.passed for result in results), results


def test_table_reports_speedups_over_the_composed_path():
    rows = [
        {"operation": "attention", "impl": "fused", "forward_ms": 1.0, "forward_backward_ms": 2.0},
        {"operation": "attention", "impl": "composed", "forward_ms": 3.0, "forward_backward_ms": 8.0},
    ]
    table = selftest.format_table(rows).splitlines()
    assert table[0].split()[:3] == ["operation", "impl", "fwd"]
    fused_line = next(line for line in table if " fused " in line).split()
    assert fused_line[-2:] == ["3.00", "4.00"]


@needs_cpu_kernels
def test_timing_runners_compile_and_time_on_the_cpu_kernels():
    import mindspore as ms

    rng = np.random.default_rng(0)
    q, k, v = (ms.Tensor(rng.standard_normal((1, 2, 32, 16)).astype(np.float32)) for _ in range(3))
    mask = ms.Tensor(selftest._key_mask((24,), 32), ms.int32)
    attend, loss = selftest._attention_runner(cpu.attention, mask, 0.1)
    assert selftest.time_call(selftest._jit(attend), (q, k, v), 1) > 0
    assert selftest.time_call(selftest._jit_grad(loss, (0, 1, 2)), (q, k, v), 1) > 0
    x, residual = (ms.Tensor(rng.standard_normal((2, 8, 32)).astype(np.float32)) for _ in range(2))
    weight, bias = ms.Tensor(np.ones(32, np.float32)), ms.Tensor(np.zeros(32, np.float32))
    normalise, norm_loss = selftest._layer_norm_runner(cpu.add_layer_norm)
    assert selftest.time_call(selftest._jit(normalise), (x, residual, weight, bias), 1) > 0
    assert selftest.time_call(selftest._jit_grad(norm_loss, (0, 1, 2, 3)), (x, residual, weight, bias), 1) > 0
