"""Fixtures for the fused-kernel tests: every instruction-set path of the CPU library this host runs.

The AVX-512 table runs only where the CPU has AVX-512F. Its algorithm (16-lane tiles, tail predicates, the 16-lane
reduction tree and dropout hash) also runs everywhere AVX2 does as "avx512emu", the same template instantiated on
pairs of ymm registers (kernels/cpu/tile_kernels_lane16.h), which returns the same bits. So on an AVX2-only host a
test's "avx512" case skips, naming the "avx512emu" case that ran its algorithm instead."""

from __future__ import annotations

import pytest
from helpers.cpu_isas import skip_unless_available

from mindformer_gf.ops import cpu


@pytest.fixture(params=["avx2", "portable", "avx512emu", "avx512"])
def cpu_isa(request, record_property) -> str:
    """Runs the test once per tile-kernel table, restoring the default afterwards; records and prints which ran."""
    skip_unless_available(request.param, request.node.name)
    cpu.set_cpu_isa(request.param)
    assert cpu.cpu_isa() == request.param
    record_property("cpu_isa", request.param)
    print(f"cpu_isa: {request.node.name} ran the {request.param} tile kernels on {cpu.host_cpu()}")
    yield request.param
    cpu.set_cpu_isa("auto")
