"""Fixtures for the fused-kernel tests: both instruction-set paths of the CPU library."""

from __future__ import annotations

import pytest

from mindformer_gf.ops import cpu


def _has_avx2() -> bool:
    try:
        cpu.set_cpu_isa("avx2")
    except ValueError:
        return False
    finally:
        cpu.set_cpu_isa("auto")
    return True


@pytest.fixture(params=["avx2", "portable"])
def cpu_isa(request) -> str:
    """Runs the test once per tile-kernel table (AVX2+FMA and portable C++), restoring the default afterwards."""
    if request.param == "avx2" and not _has_avx2():
        pytest.skip("this CPU has no AVX2/FMA")
    cpu.set_cpu_isa(request.param)
    assert cpu.cpu_isa() == request.param
    yield request.param
    cpu.set_cpu_isa("auto")
