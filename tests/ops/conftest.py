"""Fixtures for the fused-kernel tests: every instruction-set path of the CPU library this host runs.

The AVX-512 table runs only where the CPU has AVX-512F. Its algorithm (16-lane tiles, tail predicates, the 16-lane
reduction tree and dropout hash) also runs everywhere AVX2 does as "avx512emu", the same template instantiated on
pairs of ymm registers (kernels/cpu/tile_kernels_lane16.h), which returns the same bits. So on an AVX2-only host a
test's "avx512" case skips, naming the "avx512emu" case that ran its algorithm instead."""

from __future__ import annotations

import re

import pytest

from mindformer_gf.ops import cpu


def isa_available(name: str) -> bool:
    return name in cpu.available_cpu_isas()


def avx512_skip_reason(test_name: str) -> str:
    """The skip message of an "avx512" case on a host without AVX-512F, naming the emulated case that ran."""
    emulated = re.sub(r"(?<=[\[-])avx512(?=[\]-])", "avx512emu", test_name)
    return (
        f"AVX-512 not available on this host ({cpu.host_cpu()}): the AVX-512 path was compiled but not run; its "
        f"algorithm ran through the 16-lane emulation in {emulated}"
    )


def skip_unless_available(name: str, test_name: str) -> None:
    if isa_available(name):
        return
    if name == "avx512":
        pytest.skip(avx512_skip_reason(test_name))
    pytest.skip(f"this host ({cpu.host_cpu()}) does not run the {name} kernels")


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
