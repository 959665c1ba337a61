"""Reproduces the polynomial coefficients of the exact-GELU kernel (kernels/cpu/tile_kernels_avx2.cc, normal_cdf_ps)
from float64 scipy.special.ndtr. (The float32 evaluation's error is measured by tests/ops/test_gelu.py.)

Phi(x) = 1/2 + x P(x^2) for |x| < 0.75 (P of degree 5); Q(a) = Phi(-a) = exp(-a^2/2) w S(w), w = 1/(1 + a/2), for
0.75 <= a <= 13.5 (S of degree 8). Both are least-squares fits of the relative error on Chebyshev nodes, in float64;
the kernel stores them rounded to float32. Run: python tools/gelu_coefficients.py (needs scipy).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

CENTRAL_END = 0.75
TAIL_END = 13.5
TAIL_SCALE = 0.5


def chebyshev_nodes(low: float, high: float, count: int) -> np.ndarray:
    k = np.arange(count)
    return (low + high) / 2 + (high - low) / 2 * np.cos(np.pi * (k + 0.5) / count)


def relative_fit(variable: np.ndarray, target: np.ndarray, degree: int) -> np.ndarray:
    """Coefficients (lowest first) minimising sum ((p(variable) - target) / target)^2."""
    basis = np.vander(variable, degree + 1, increasing=True)
    coefficients, *_ = np.linalg.lstsq(basis / target[:, None], np.ones_like(target), rcond=None)
    return coefficients


def main() -> None:
    x = chebyshev_nodes(0.0, CENTRAL_END, 4000)
    central = relative_fit(x * x, (ndtr(x) - 0.5) / x, 5)
    w = chebyshev_nodes(1 / (1 + TAIL_SCALE * TAIL_END), 1 / (1 + TAIL_SCALE * CENTRAL_END), 6000)
    a = (1 / w - 1) / TAIL_SCALE
    tail = relative_fit(w, ndtr(-a) * np.exp(a * a / 2) / w, 8)
    print("P (x^2, lowest first):", [float(np.float32(c)) for c in central])
    print("S (w, lowest first):  ", [float(np.float32(c)) for c in tail])


if __name__ == "__main__":
    main()
