"""The CPU description benchmarks record, from /proc/cpuinfo texts written by hand after real machines'."""

from __future__ import annotations

from mindformer_gf.host import describe_cpu

AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni
"""

INTEL = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: sse4_2 avx fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni amx_bf16 \
avx512_fp16 amx_tile amx_int8
"""

ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes sve
CPU part\t: 0xd40
"""


def test_cpu_model_and_vector_extensions_of_three_kinds_of_host():
    assert describe_cpu(AMD) == {"cpu_model": "AMD EPYC 7B13", "vector_extensions": ["sse4_2", "avx", "fma", "avx2"]}
    intel = describe_cpu(INTEL)
    assert intel["cpu_model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert intel["vector_extensions"] == [
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
    ]
    arm = describe_cpu(ARM)  # no model name line: the platform's name stands in
    assert arm["vector_extensions"] == ["asimd", "sve"] and arm["cpu_model"]
    assert describe_cpu("")["vector_extensions"] == []
