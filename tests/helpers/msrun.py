"""One way for the tests to start a program on 2 CPU workers with msrun, MindSpore's launcher."""

from __future__ import annotations

import os
import shutil
import signal
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


def launch_environment() -> dict[str, str]:
    """msrun starts plain `python`, so this environment's bin goes first on PATH; this checkout first on PYTHONPATH;
    one thread per worker (two workers share the two cores)."""
    root = str(Path(mindformer_gf.__file__).parents[1])
    return {
        **os.environ,
        "PATH": str(VENV_BIN) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }


def msrun(program: list[str], cwd: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess, str]:
    """`program` on 2 workers, logs in cwd/logs; returns the result and msrun's output with every worker's log."""
    env = launch_environment()
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


def msrun_nodes(program: list[str], cwd: Path, nodes: int = 2, timeout: float = 300) -> list[tuple[int, str]]:
    """`program` as `nodes` machines of one worker each, all on this one: one msrun launcher per node, started
    together (`--worker_num=nodes --local_worker_num=1 --node_rank=i`, the same master), as the README launches
    several Atlas machines. Returns each launcher's exit status and its output with its worker's log (logs in
    cwd/logs/node{i})."""
    env = launch_environment()
    port = free_port()
    launchers = []
    for node in range(nodes):
        logs = cwd / "logs" / f"node{node}"
        shutil.rmtree(logs, ignore_errors=True)
        command = ["msrun", f"--worker_num={nodes}", "--local_worker_num=1", f"--node_rank={node}"]
        command += ["--master_addr=127.0.0.1", f"--master_port={port}", f"--log_dir={logs}", "--join=True", *program]
        # a session of its own: on a timeout the launcher is killed with its workers
        launcher = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            start_new_session=True,
        )
        launchers.append((logs, launcher))
    results = []
    for logs, launcher in launchers:
        try:
            output, _ = launcher.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            output, _ = launcher.communicate()
        results.append((launcher.returncode, output + "".join(p.read_text() for p in sorted(logs.glob("*.log")))))
    return results
