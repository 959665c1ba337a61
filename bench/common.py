"""What every benchmark script shares: the package's thread default, JSON-lines output and best-of-N timing.

Importing this module sizes the thread pools as the `gf` commands do (every core the process may use, or
GF_THREADS), before the script runs anything; every record says how many threads it ran with, and on which CPU:
its model name and the vector extensions it offers (AVX2, AVX-512, AMX, ...), so that figures from different hosts
are never compared by accident (torch uses AVX-512 and AMX where they exist; our CPU kernels use AVX2 at most).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from mindformer_gf.host import describe_cpu
from mindformer_gf.threads import apply_threads

THREADS = apply_threads()

HOST = describe_cpu()


def emit(record: dict) -> None:
    """One JSON line with the thread count and the CPU added; the last line a script prints is its summary."""
    print(json.dumps({**record, "threads": THREADS, **HOST}), flush=True)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call (which also compiles the graph)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
