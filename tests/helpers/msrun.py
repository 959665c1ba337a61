"""One way for the tests to start a program on 2 CPU workers with msrun, MindSpore's launcher."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mindformer_gf

VENV_BIN = Path(sys.executable).parent
GF = VENV_BIN / "gf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def msrun(program: list[str], cwd: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess, str]:
    """`program` on 2 workers, logs in cwd/logs; returns the result and msrun's output with every worker's log.

    msrun starts plain `python`, so this environment's bin goes first on PATH; this checkout first on PYTHONPATH;
    one thread per worker (two workers share the two cores)."""
    root = str(Path(mindformer_gf.__file__).parents[1])
    env = {
        **os.environ,
        "PATH": str(VENV_BIN) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    logs = cwd / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    command = ["msrun", "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1"]
    command += [f"--master_port={free_port()}", f"--log_dir={logs}", "--join=True", *program]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    text = completed.stdout + completed.stderr + "".join(p.read_text() for p in sorted(logs.glob("*.log")))
    return completed, text


def msrun_gf(command: str, arguments: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, str]:
    """`gf COMMAND ARGUMENTS` on 2 CPU workers."""
    return msrun([str(GF), command, *arguments], cwd)
