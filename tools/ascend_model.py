#!/usr/bin/env python3
"""Run the Ascend C operators' own sources (kernels/ascend/op_kernel) on our functional model of the Ascend C API.

    python tools/ascend_model.py            # the full matrix (make ascend-model); exit 1 on any mismatch or check
    python tools/ascend_model.py --quick    # the representative subset make test runs
    python tools/ascend_model.py --only flash_attention --jobs 2

Each (kernel, dtype) is compiled with plain g++ against kernels/ascend/api_model (our kernel_operator.h: no CANN
header) into a shared library, cached under build/ascend_model by a hash of every source it is made of; the cases
(tools/ascend_cases.py) are launched through ctypes with numpy buffers and compared with the float64 oracle.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import ascend_cases  # noqa: E402
from tools.ascend_cases import Case, Outcome  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
PROJECT = REPOSITORY / "kernels" / "ascend"
MODEL = PROJECT / "api_model"
KERNELS = PROJECT / "op_kernel"
HOST = PROJECT / "op_host"
CACHE = Path(os.environ.get("GF_ASCEND_MODEL_CACHE", REPOSITORY / "build" / "ascend_model"))
OP_NUMBER = {"add_layer_norm": 1, "add_layer_norm_grad": 2, "flash_attention": 3, "flash_attention_grad": 4}
KERNEL_TYPES = {"fp16": "half", "bf16": "bfloat16_t", "float": "float"}
FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-Wall", "-Wno-unused-variable", "-Wno-unused-but-set-variable")


class BuildError(RuntimeError):
    pass


def _sources(kernel_dir: Path) -> list[Path]:
    files = sorted(MODEL.rglob("*.h")) + [MODEL / "gf_model_launch.cpp"]
    files += sorted(kernel_dir.glob("*.cpp")) + sorted(kernel_dir.glob("*.h"))
    files += sorted(HOST.glob("*_tiling.h")) + [HOST / "gf_tiling_plan.h"]
    return files


def library(op: str, dtype: str, kernel_dir: Path = KERNELS) -> Path:
    """The shared library of one kernel source in one dtype, built if its sources changed."""
    kernel_dir = Path(kernel_dir)
    digest = hashlib.sha256()
    for path in _sources(kernel_dir):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    digest.update(f"{op} {dtype}".encode())
    target = CACHE / f"gf_{op}_{dtype}_{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    kernel_type = KERNEL_TYPES[dtype]
    command = [
        os.environ.get("CXX", "g++"),
        *FLAGS,
        f"-I{MODEL}",
        f"-I{HOST}",
        f"-DGFM_OP={OP_NUMBER[op]}",
        f"-DDTYPE_X={kernel_type}",
        f"-DDTYPE_QUERY={kernel_type}",
        f'-DGFM_KERNEL_SOURCE="{kernel_dir / ("gf_" + op + ".cpp")}"',
        str(MODEL / "gf_model_launch.cpp"),
    ]
    with tempfile.NamedTemporaryFile(dir=CACHE, suffix=".so.tmp", delete=False) as partial:
        partial_path = Path(partial.name)
    try:
        done = subprocess.run([*command, "-o", str(partial_path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BuildError(f"g++ failed for {op} {dtype}:\n{done.stderr[-6000:]}")
        partial_path.replace(target)  # whole library or nothing
    finally:
        partial_path.unlink(missing_ok=True)
    return target


_LOADED: dict[Path, ctypes.CDLL] = {}


@dataclass
class Run:
    results: dict[str, np.ndarray]
    error: str
    stats: dict[str, int]


def launch(case: Case, prepared: ascend_cases.Prepared, lib_path: Path, hazard_checks: bool = True) -> Run:
    """One launch of the kernel on the model with the prepared buffers."""
    lib = _LOADED.get(lib_path)
    if lib is None:
        lib = ctypes.CDLL(str(lib_path))
        lib.gfm_launch.restype = ctypes.c_int
        _LOADED[lib_path] = lib
    arrays = [np.ascontiguousarray(a) for a in prepared.arrays]
    count = len(arrays)
    shape = (ctypes.c_uint32 * 4)(*case.shape, *([0] * (4 - len(case.shape))))
    pointers = (ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays])
    sizes = (ctypes.c_uint64 * count)(*[a.nbytes for a in arrays])
    names = (ctypes.c_char_p * count)(*[n.encode() for n in prepared.names])
    written = (ctypes.c_int * count)(*[1 if i in prepared.outputs else 0 for i in range(count)])
    error = ctypes.create_string_buffer(4096)
    stats = (ctypes.c_uint64 * 4)()
    status = lib.gfm_launch(shape, count, pointers, sizes, names, written, int(hazard_checks), error, 4096, stats)
    results = {prepared.names[i]: arrays[i] for i in prepared.outputs}
    message = error.value.decode(errors="replace") if status else ""
    keys = ("vector_cores", "ub_peak_bytes", "instructions", "block_dim")
    return Run(results, message, dict(zip(keys, (int(s) for s in stats), strict=True)))


def run_case(case: Case, kernel_dir: Path = KERNELS, hazard_checks: bool = True) -> tuple[Outcome, Run]:
    prepared = ascend_cases.prepare(case)
    run = launch(case, prepared, library(case.op, case.dtype, kernel_dir), hazard_checks)
    if run.error:
        return Outcome(case, {}, {}, [f"model check: {run.error}"]), run
    return ascend_cases.compare(case, prepared, run.results), run


def build_all(cases: Iterable[Case], kernel_dir: Path = KERNELS, jobs: int = 2) -> None:
    pairs = sorted({(c.op, c.dtype) for c in cases})
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda pair: library(pair[0], pair[1], kernel_dir), pairs))


def format_outcome(outcome: Outcome, seconds: float, run: Run) -> str:
    errors = " ".join(f"{k}={v:.2e}/{outcome.tolerances.get(k, 0):.1e}" for k, v in outcome.errors.items())
    status = "ok  " if outcome.passed else "FAIL"
    line = f"{status} {outcome.case.name:60s} {seconds:7.1f}s cores={run.stats['vector_cores']:2d} "
    line += f"ub={run.stats['ub_peak_bytes']:6d} {errors}"
    if not outcome.passed:
        line += "\n     " + "\n     ".join(outcome.problems)
    return line


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the representative subset (make test)")
    parser.add_argument("--only", choices=sorted(OP_NUMBER), help="one operator")
    parser.add_argument("--dtype", choices=sorted(KERNEL_TYPES), help="one dtype")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compiles (default 2)")
    parser.add_argument("--kernel-dir", type=Path, default=KERNELS, help="op_kernel sources to run (default ours)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    cases = ascend_cases.quick_cases() if args.quick else list(ascend_cases.full_cases())
    cases = [
        c for c in cases if (args.only is None or c.op == args.only) and (args.dtype is None or c.dtype == args.dtype)
    ]
    start = time.monotonic()
    try:
        build_all(cases, args.kernel_dir, args.jobs)
    except BuildError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"built {len({(c.op, c.dtype) for c in cases})} kernel libraries in {time.monotonic() - start:.0f} s")
    failed = 0
    worst: dict[tuple[str, str, str], tuple[float, float]] = {}
    for case in cases:
        began = time.monotonic()
        outcome, run = run_case(case, args.kernel_dir)
        print(format_outcome(outcome, time.monotonic() - began, run), flush=True)
        failed += not outcome.passed
        for name, value in outcome.errors.items():
            key = (case.op, case.dtype, name)
            worst[key] = (max(worst.get(key, (0.0, 0.0))[0], value), outcome.tolerances[name])
    print("\nlargest normwise error per output (tolerance):")
    for (op, dtype, name), (value, tol) in sorted(worst.items()):
        print(f"  {op:22s} {dtype:5s} {name:9s} {value:.3e} ({tol:.1e})")
    print(f"\n{len(cases) - failed} of {len(cases)} cases passed in {time.monotonic() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
