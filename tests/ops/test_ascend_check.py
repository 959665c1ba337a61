"""tools/ascend_check.py: the Ascend C type-check against the public headers.

The check itself needs the headers (a CANN toolkit or four public checkouts, see kernels/ascend/README.md); CI has
neither, so it skips there and says how to configure it. What needs no header is tested always.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("ascend_check", ROOT / "tools" / "ascend_check.py")
ascend_check = importlib.util.module_from_spec(spec)
sys.modules["ascend_check"] = ascend_check
spec.loader.exec_module(ascend_check)


def configured() -> str | None:
    try:
        ascend_check.find_headers()
    except ascend_check.HeadersMissing as missing:
        return str(missing)
    return None


def test_without_headers_the_check_names_the_variables_to_set():
    with pytest.raises(ascend_check.HeadersMissing) as missing:
        ascend_check.find_headers({})
    assert all(name in str(missing.value) for name in ("ASCEND_HOME_PATH", *ascend_check.VARIABLES))
    with pytest.raises(ascend_check.HeadersMissing, match="GF_ASC_DEVKIT=/nowhere has no include/kernel_operator.h"):
        ascend_check.find_headers({name: "/nowhere" for name in ascend_check.VARIABLES})


def test_every_kernel_is_checked_in_every_declared_dtype_and_its_launch_mode():
    jobs = list(ascend_check.jobs())
    kernels = {(job.source.name, job.dtype, job.mode) for job in jobs if job.mode != "host"}
    assert kernels == {
        *((f"gf_flash_attention{grad}.cpp", dtype, "mix") for grad in ("", "_grad") for dtype in ("fp16", "bf16")),
        *(
            (f"gf_add_layer_norm{grad}.cpp", dtype, "aiv")
            for grad in ("", "_grad")
            for dtype in ("fp16", "bf16", "float")
        ),
    }
    assert sorted(job.source.name for job in jobs if job.mode == "host") == sorted(
        path.name for path in (ascend_check.PROJECT / "op_host").glob("*.cpp")
    )
    # The attention kernels' key mask is int32 and their statistics fp32 whatever the row dtype.
    bf16 = next(job for job in jobs if job.source.name == "gf_flash_attention.cpp" and job.dtype == "bf16")
    assert {"-DDTYPE_QUERY=bfloat16_t", "-DDTYPE_KEY_MASK=int32_t", "-DDTYPE_LSE=float"} <= set(bf16.defines)


def test_kernel_tiling_struct_has_the_registered_fields_in_order():
    for header in (ascend_check.PROJECT / "op_host").glob("*_tiling.h"):
        generated = ascend_check.kernel_tiling_header(header)
        declared = re.findall(r"TILING_DATA_FIELD_DEF(?:_STRUCT)?\((\w+), (\w+)\);", header.read_text())
        members = re.findall(r"^    (?:AscendC::tiling::)?(\w+) (\w+);$", generated, re.MULTILINE)
        assert members == declared
        assert "#define GET_TILING_DATA(tiling_data, tiling_arg)" in generated


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_every_source_type_checks_against_the_public_headers(capsys):
    reason = configured()
    if reason is not None:
        pytest.skip(f"{reason}; then run `make ascend-check`")
    status = ascend_check.main(["--jobs", os.environ.get("GF_ASCEND_CHECK_JOBS", "2")])
    table = capsys.readouterr().out
    assert status == 0, table
    assert table.count("| ok ") == len(list(ascend_check.jobs()))
