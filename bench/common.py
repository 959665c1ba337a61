"""What every benchmark script shares: JSON-lines output and best-of-N timing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable


def emit(record: dict) -> None:
    """One JSON line; the last line a script prints is its summary."""
    print(json.dumps(record), flush=True)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call (which also compiles the graph)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
