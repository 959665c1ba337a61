"""How far a backend's output is from the specification's: the one measure the kernel tests and tools use."""

from __future__ import annotations

import numpy as np


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: the normwise error of a whole tensor against the oracle."""
    expected = np.asarray(expected, np.float64)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / (scale if scale > 0 else 1.0))
