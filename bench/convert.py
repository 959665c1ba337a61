"""Converter benchmark: a Geneformer-V2-316M-shaped checkpoint (1.27 GB) to a MindSpore directory.

Writes the checkpoint one tensor at a time (random weights, the released layout: config.json + model.safetensors,
or pytorch_model.bin with `--source bin`, which needs torch), runs `gf convert` on it in a child process, and prints
JSON lines; the last one is the summary: `seconds` (wall time of the conversion), `peak_rss_mb` (the child's peak
resident memory) and `file_mb` (the checkpoint's size), with the targets peak < 1.5 x file and < 60 s.
Everything generated is removed at the end.

    python bench/convert.py [--source safetensors|bin] [--format ckpt|safetensors] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit

from mindformer_gf.config import GeneformerConfig
from mindformer_gf.convert.safetensors_io import SafetensorsWriter

PRESET = "Geneformer-V2-316M"
ARCHITECTURE = "BertForMaskedLM"
TARGET_RSS_OVER_FILE = 1.5
TARGET_SECONDS = 60.0


def random_weights(config: GeneformerConfig, seed: int = 0):
    """(name, float32 array) one at a time, in the parameter table's order."""
    rng = np.random.default_rng(seed)
    for name, shape in config.parameter_shapes(ARCHITECTURE).items():
        array = rng.standard_normal(size=shape, dtype=np.float32)
        array *= config.initializer_range
        yield name, array


def write_safetensors(directory: Path, config: GeneformerConfig) -> Path:
    path = directory / "model.safetensors"
    entries = [(name, "F32", shape) for name, shape in config.parameter_shapes(ARCHITECTURE).items()]
    with SafetensorsWriter(path, entries, {"format": "pt"}) as writer:
        for name, array in random_weights(config):
            writer.write(name, array, "F32")
    return path


def write_pytorch_bin(directory: Path, config: GeneformerConfig) -> Path:
    import torch

    path = directory / "pytorch_model.bin"
    torch.save({name: torch.from_numpy(array) for name, array in random_weights(config)}, path)
    return path


def generate(source: Path, source_format: str) -> None:
    """Write config.json and the checkpoint into `source` (run in a child process: see `main`)."""
    config = GeneformerConfig.from_preset(PRESET, architectures=[ARCHITECTURE])
    config.save_pretrained(source)
    if source_format == "safetensors":
        write_safetensors(source, config)
    else:
        write_pytorch_bin(source, config)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def run_measured(command: list[str], log_dir: Path) -> tuple[int, float, float, str, str]:
    """Run `command`; return (exit code, seconds, the child's own peak RSS in MiB, stdout, stderr).

    os.wait4 gives the rusage of this one child. Linux carries the peak RSS of the launching process's memory
    over an exec, so the launcher stays small (it never holds the checkpoint) and its RSS is reported too.
    """
    stdout_path, stderr_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, seconds, usage.ru_maxrss / 1024, stdout_path.read_text(), stderr_path.read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("safetensors", "bin"), default="safetensors")
    parser.add_argument("--format", choices=("ckpt", "safetensors"), default="ckpt")
    parser.add_argument("--workdir", default=None, help="where to write the checkpoints (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--generate-into", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_into:
        generate(Path(args.generate_into), args.source)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="gf-bench-convert-", dir=args.workdir))
    source, destination = workdir / "hf", workdir / "ms"
    try:
        source.mkdir()
        # Generated in a child so that this process, which launches the measured conversion, stays small.
        started = time.perf_counter()
        generator = [sys.executable, __file__, "--source", args.source, "--generate-into", str(source)]
        subprocess.run(generator, check=True)
        weights = source / ("model.safetensors" if args.source == "safetensors" else "pytorch_model.bin")
        file_mb = weights.stat().st_size / 2**20
        parameters = GeneformerConfig.from_preset(PRESET).num_parameters(ARCHITECTURE)
        emit(
            {
                "stage": "generate",
                "preset": PRESET,
                "file": weights.name,
                "file_mb": round(file_mb, 1),
                "parameters": parameters,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )

        command = [sys.executable, "-m", "mindformer_gf", "convert", str(source), str(destination)]
        command += ["--format", args.format, "--quiet"]
        launcher_rss_mb = rss_mb()
        returncode, seconds, peak_rss_mb, stdout, stderr = run_measured(command, workdir)
        if returncode != 0:
            emit({"stage": "convert", "error": stderr[-2000:], "returncode": returncode})
            return 1
        output_mb = sum(p.stat().st_size for p in destination.iterdir()) / 2**20
        emit(
            {
                "stage": "convert",
                "command": " ".join(command[1:]),
                "output_mb": round(output_mb, 1),
                "launcher_rss_mb": round(launcher_rss_mb, 1),
                "report": stdout.strip().splitlines()[0],
            }
        )
        emit(
            {
                "seconds": round(seconds, 2),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "file_mb": round(file_mb, 1),
                "peak_rss_over_file": round(peak_rss_mb / file_mb, 3),
                "source": args.source,
                "format": args.format,
                "targets_met": bool(peak_rss_mb < TARGET_RSS_OVER_FILE * file_mb and seconds < TARGET_SECONDS),
            }
        )
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
