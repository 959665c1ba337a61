"""Thread default: every core the process may run on (its affinity mask), for MindSpore's CPU kernels, our kernel
pool and OpenMP/BLAS; GF_THREADS and `--threads` override it; nothing pins threads for users."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mindformer_gf.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, threadpoolctl
import mindspore as ms
from mindspore._c_expression import RuntimeConf
from mindformer_gf.threads import apply_threads, resolve_threads
from mindformer_gf.ops import cpu
import os
default = resolve_threads()  # GF_THREADS unset: the affinity mask
os.environ["GF_THREADS"] = "3"
applied = apply_threads()
print(json.dumps({
    "default": default,
    "applied": applied,
    "kernel_pool": cpu.native().MindformerGfNumThreads(),
    "blas": sorted({pool["num_threads"] for pool in threadpoolctl.threadpool_info()}),
    "mindspore_configured": RuntimeConf.get_instance().is_op_threads_num_configured(),
}))
"""


def probe(cpus: set[int]) -> dict:
    """The default a fresh process pinned to `cpus` resolves, and the counts its pools take with GF_THREADS=3."""
    environment = {k: v for k, v in os.environ.items() if k not in ("GF_THREADS", "OMP_NUM_THREADS")}
    completed = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_default_is_the_affinity_mask_and_gf_threads_overrides_it():
    got = probe({min(os.sched_getaffinity(0))})
    assert got == {"default": 1, "applied": 3, "kernel_pool": 3, "blas": [3], "mindspore_configured": True}


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [(["--threads", "0"], {}, "at least 1"), ([], {"GF_THREADS": "many"}, "GF_THREADS='many'")],
)
def test_bad_thread_count_is_one_clear_line(argv, env, message, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["pretrain", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("gf pretrain:")


def test_makefile_pins_no_threads():
    exported = [line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("export")]
    assert not [line for line in exported if "THREADS" in line], exported
