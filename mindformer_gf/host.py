"""Which CPU a process runs on: its model name and the vector extensions it offers (AVX2, AVX-512, AMX, ...).

Benchmarks record it beside their figures (torch uses AVX-512 and AMX where they exist, our CPU kernels AVX-512F or
AVX2, never AMX, so ratios move with the host), and the last bits of float32 results may differ between hosts.
"""

from __future__ import annotations

import platform
from pathlib import Path

# /proc/cpuinfo flags worth telling apart, in the order they are reported
VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "fma",
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)


def describe_cpu(cpuinfo: str | None = None) -> dict[str, object]:
    """{"cpu_model": name, "vector_extensions": [the flags of VECTOR_FLAGS the CPU has]} from /proc/cpuinfo (or
    `cpuinfo`, its text); without one (not Linux), the platform's processor name and no flags."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    model: str | None = None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if model is None and key in ("model name", "cpu model") and value:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {
        "cpu_model": model or platform.processor() or platform.machine() or "unknown",
        "vector_extensions": [flag for flag in VECTOR_FLAGS if flag in flags],
    }
