"""What every benchmark script shares: the package's thread default, JSON-lines output and best-of-N timing.

Importing this module sizes the thread pools as the `gf` commands do (every core the process may use, or
GF_THREADS), before the script runs anything; every record says how many threads it ran with, and on which CPU:
its model name and the vector extensions it offers (AVX2, AVX-512, AMX, ...), so that figures from different hosts
are never compared by accident (torch uses AVX-512 and AMX where they exist; our CPU kernels use AVX2 at most).

`gemm_rate()` measures the machine's fp32 GEMM rate in the benchmark's own run; with the FLOP counts of
bench/flops.py each benchmark reports the fraction of that rate it reaches (`fraction_of_gemm`).

`interleaved_rounds()` times several sides and the GEMM in rounds, one call of each back to back per round: a ratio
or a fraction taken within a round compares figures measured seconds apart, so it is far steadier than one taken
between medians measured minutes apart on a shared machine whose speed drifts (`paired()` gives its median and range).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from mindformer_gf.host import describe_cpu
from mindformer_gf.threads import apply_threads

THREADS = apply_threads()

HOST = describe_cpu()


def emit(record: dict) -> None:
    """One JSON line with the thread count and the CPU added; the last line a script prints is its summary."""
    print(json.dumps({**record, "threads": THREADS, **HOST}, default=_plain), flush=True)


def _plain(value: object) -> object:
    """numpy scalars (a comparison's numpy.bool_, a median's float64) as the Python values JSON knows."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call (which also compiles the graph)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


GEMM_SIZE = 2048  # square fp32 GEMM: large enough for the BLAS to reach its rate on a few cores


def gemm_rate(size: int = GEMM_SIZE, repeats: int = 7) -> dict:
    """This machine's fp32 GEMM rate now: numpy's `a @ b` (its BLAS sgemm, with the threads set above) on
    [size, size] matrices, GFLOP/s as the median of `repeats` timed calls after one warm-up, with the range.

    The benchmarks divide their FLOP rate (bench/flops.py) by the median: the fraction of the machine's GEMM rate
    they reach, measured in the same run so that the load on a shared machine weighs on both alike."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        rates.append(2.0 * size**3 / (time.perf_counter() - start) / 1e9)
    return {"gemm_size": size, "gemm_gflops": float(np.median(rates)), "gemm_gflops_range": [min(rates), max(rates)]}


SETTLE_SECONDS = 0.5  # pause before each timed call of `interleaved_rounds`


def interleaved_rounds(
    calls: dict[str, Callable[[], object]], repeats: int, gemm_size: int = GEMM_SIZE
) -> tuple[dict[str, list[float]], list[float]]:
    """({name: wall seconds per round}, GEMM GFLOP/s per round): each of `repeats` rounds calls every side once, in
    order, then times one numpy fp32 [gemm_size]^2 GEMM; one untimed warm-up round first (it compiles the graphs)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((gemm_size, gemm_size), dtype=np.float32)
    b = rng.random((gemm_size, gemm_size), dtype=np.float32)
    sides = {**calls, "gemm": lambda: a @ b}
    for call in sides.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, call in sides.items():
            # the previous side's thread pool (OpenBLAS, torch's OpenMP, MindSpore's) spins for a while after its
            # call and would take cores from this one: let it go to sleep first
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    gemm_gflops = [2.0 * gemm_size**3 / t / 1e9 for t in seconds.pop("gemm")]
    return seconds, gemm_gflops


def paired(values: list[float]) -> tuple[float, list[float]]:
    """Median and [min, max] of per-round figures (a ratio or fraction computed within each round)."""
    return float(statistics.median(values)), [float(min(values)), float(max(values))]


def speedup_per_round(ours_seconds: list[float], their_seconds: list[float]) -> list[float]:
    """Their time / ours, round by round: how many times faster we were in each round."""
    return [theirs / ours for ours, theirs in zip(ours_seconds, their_seconds, strict=True)]


def fraction_per_round(flops: float, seconds: list[float], gemm_gflops: list[float]) -> list[float]:
    """FLOPs / seconds as a fraction of the GEMM rate of the same round."""
    return [flops / t / 1e9 / rate for t, rate in zip(seconds, gemm_gflops, strict=True)]


def merge_gemm_rates(*measurements: dict) -> dict:
    """One figure from GEMM rates measured at several points of a run (before and after each side): the median of
    their medians, the range over all."""
    import numpy as np

    return {
        "gemm_size": measurements[0]["gemm_size"],
        "gemm_gflops": float(np.median([m["gemm_gflops"] for m in measurements])),
        "gemm_gflops_range": [
            min(m["gemm_gflops_range"][0] for m in measurements),
            max(m["gemm_gflops_range"][1] for m in measurements),
        ],
    }


def fraction_of_gemm(flops: float, seconds: float, gemm: dict) -> float:
    """FLOPs / seconds as a fraction of the measured GEMM rate."""
    return flops / seconds / 1e9 / gemm["gemm_gflops"]


def timings_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times in ms of `repeats` calls after one untimed call."""
    fn()  # warm-up (compiles the graph)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summary(name: str, times: list[float]) -> float:
    """Emit one case's median and range of `timings_ms` and return the median."""
    median = statistics.median(times)
    emit({"case": name, "median_ms": round(median, 2), "min_ms": round(min(times), 2), "max_ms": round(max(times), 2)})
    return median
