"""Which tile-kernel tables of the CPU library this host runs, and the skip messages of those it does not."""

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
        f"algorithm ran through the 16-lane emulation in {emulated}, and its source (zmm shim included) on the "
        f"intrinsics model in tests/ops/test_avx512_model.py"
    )


def skip_unless_available(name: str, test_name: str) -> None:
    if isa_available(name):
        return
    if name == "avx512":
        pytest.skip(avx512_skip_reason(test_name))
    pytest.skip(f"this host ({cpu.host_cpu()}) does not run the {name} kernels")
