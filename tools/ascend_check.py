"""Type-check the Ascend C operators (kernels/ascend) with g++ against the public Ascend C headers.

    python tools/ascend_check.py            # table: file, dtype, mode, result, first error; exit 1 on any failure
    make ascend-check

Every op_kernel source is compiled with ``g++ -std=c++17 -fsyntax-only`` in Ascend C's CPU-debug mode for arch 2201
(Atlas A2 / 910B), once per dtype column that gf_ops.json declares, in the core modes the kernel runs in (the LayerNorm
kernels on the vector cores only; the attention kernels as a mixed cube + vector launch, i.e. once as the cube side
and once as the vector side); every op_host source is compiled once. Nothing is linked or run: CANN's CPU model of
the intrinsics (libcpudebug_model.a) is not published.

Where the headers come from, first match wins:
  ASCEND_HOME_PATH   a CANN toolkit (set by its set_env.sh): asc/include, asc/impl, tools/tikicpulib, include
  or four checkouts of the public repositories, each named by a variable:
  GF_ASC_DEVKIT      hicann/asc-devkit (or its mirror mirror-cann/asc-devkit): include/, impl/, the generator of
                     kernel_tiling/kernel_tiling.h
  GF_ASC_TOOLS       hicann/asc-tools: cpudebug/include (stub_def.h, kernel_fp16.h, ...)
  GF_METADEF         hicann/metadef: inc/external (register/op_def_registry.h, graph/types.h, ...)
  GF_SECUREC         openeuler-mirror/libboundscheck: include/securec.h
The header commits this project was last checked against are listed in kernels/ascend/README.md. The headers are
under the CANN Open Software License: they are read where they are, never copied into this repository.

What CANN does not publish, kernels/ascend/typecheck/ stands in for (our files, kept small): stub_fun.h (the
intrinsics the headers call), empty headers that are only named, and this script generates the kernel-side tiling
structs from op_host/*_tiling.h (CANN's build generates them from the registered TilingData classes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1] / "kernels" / "ascend"
STAND_INS = PROJECT / "typecheck"
ARCH = "2201"  # dav-2201: Atlas A2 training / inference (Ascend 910B), A3

VARIABLES = ("GF_ASC_DEVKIT", "GF_ASC_TOOLS", "GF_METADEF", "GF_SECUREC")
HOW_TO_CONFIGURE = (
    "no Ascend C headers: source a CANN toolkit's set_env.sh (ASCEND_HOME_PATH), or check out the public "
    "repositories and set GF_ASC_DEVKIT=<asc-devkit> GF_ASC_TOOLS=<asc-tools> GF_METADEF=<metadef> "
    "GF_SECUREC=<libboundscheck> (see kernels/ascend/README.md, 'Type-check')"
)

# gf_ops.json dtype names -> the C++ types the kernels are instantiated with (DTYPE_<NAME>).
KERNEL_TYPES = {"fp16": "half", "bf16": "bfloat16_t", "float": "float", "int32": "int32_t", "int64": "int64_t"}

# Core modes. "aiv": a vector-only launch, compiled as the vector core's pass (__DAV_VEC__). "mix": a cube + vector
# launch in CPU-debug form, one translation unit holding both cores' code (ASCEND_IS_AIV / ASCEND_IS_AIC are run-time
# tests on g_coreType there), so the cube path and the vector path are both type-checked. A cube-only pass
# (__DAV_CUBE__) is not checked: REGIST_MATMUL_OBJ names g_kfcClient, which the public headers declare for vector
# passes only, so g++ rejects the headers' own macro there (the device compiler discards the branch).
MODES = {
    "aiv": ("-D__DAV_VEC__", "-D__DAV_C220_VEC__"),
    "mix": ("-D__MIX_CORE_AIC_RATION__=2",),
}


class HeadersMissing(RuntimeError):
    """Neither a CANN toolkit nor the four checkouts are configured."""


@dataclass(frozen=True)
class Headers:
    """Include directories for the kernel side and the host side, and the kernel_tiling.h generator."""

    kernel: tuple[Path, ...]
    host: tuple[Path, ...]
    tiling_generator: Path | None  # None: the toolkit ships kernel_tiling/kernel_tiling.h itself
    tiling_definitions: Path | None
    origin: str
    stub_fun_stand_in: bool  # CANN ships the real stub_fun.h; the checkouts need ours


def _existing(paths: list[Path]) -> tuple[Path, ...]:
    return tuple(path for path in paths if path.is_dir())


def find_headers(environ: Mapping[str, str] = os.environ) -> Headers:
    """The headers named by the environment (a CANN toolkit first, else the four checkouts)."""
    cann = environ.get("ASCEND_HOME_PATH")
    if cann and Path(cann, "asc", "include").is_dir():
        root = Path(cann)
        asc = root / "asc"
        kernel = [root / "tools" / "tikicpulib" / "lib" / "include", root / "include", asc, asc / "include"]
        kernel += [asc / "impl" / part for part in ("adv_api", "basic_api", "c_api", "utils")]
        kernel += [asc / "include" / part for part in ("adv_api", "adv_api/matmul", "basic_api", "interface", "utils")]
        stand_in = not (root / "tools" / "tikicpulib" / "lib" / "include" / "stub_fun.h").is_file()
        return Headers(_existing(kernel), _existing([root / "include"]), None, None, f"CANN at {root}", stand_in)
    missing = [name for name in VARIABLES if not environ.get(name)]
    if missing:
        raise HeadersMissing(HOW_TO_CONFIGURE)
    devkit, tools, metadef, securec = (Path(environ[name]) for name in VARIABLES)
    for name, path, marker in (
        ("GF_ASC_DEVKIT", devkit, "include/kernel_operator.h"),
        ("GF_ASC_TOOLS", tools, "cpudebug/include/stub_def.h"),
        ("GF_METADEF", metadef, "inc/external/asc/register/op_def_registry.h"),
        ("GF_SECUREC", securec, "include/securec.h"),
    ):
        if not (path / marker).is_file():
            raise HeadersMissing(f"{name}={path} has no {marker}; point it at a checkout of the repository")
    kernel = [tools / "cpudebug" / "include", tools / "cpudebug" / "utils", devkit, devkit / "include", devkit / "impl"]
    kernel += [devkit / "include" / part for part in ("basic_api", "adv_api", "adv_api/matmul", "utils", "interface")]
    kernel += [devkit / "impl" / part for part in ("basic_api", "adv_api", "utils")]
    host = [
        metadef / "inc",
        metadef / "inc" / "external",
        metadef / "inc" / "external" / "asc",
        devkit / "include" / "adv_api",
        devkit / "include" / "utils",
    ]
    host += [securec / "include"]
    generator = devkit / "impl" / "adv_api" / "cmake" / "scripts" / "gen_kernel_tiling_data_def.py"
    origin = "checkouts named by GF_ASC_DEVKIT, GF_ASC_TOOLS, GF_METADEF, GF_SECUREC"
    return Headers(_existing(kernel), _existing(host), generator, devkit / "include" / "adv_api", origin, True)


# ---- the kernel-side tiling structs (what CANN's build generates from the registered TilingData classes) ---------
TILING_FIELD = re.compile(r"TILING_DATA_FIELD_DEF(_STRUCT)?\((\w+), (\w+)\);")


def kernel_tiling_header(tiling_header: Path) -> str:
    """A kernel-side struct with the fields of op_host/<op>_tiling.h, and GET_TILING_DATA filling one from GM."""
    text = tiling_header.read_text()
    (name,) = re.findall(r"BEGIN_TILING_DATA_DEF\((\w+)\)", text)
    fields = []
    for is_struct, field_type, field in TILING_FIELD.findall(text):
        fields.append(f"    {'AscendC::tiling::' if is_struct else ''}{field_type} {field};")
    body = "\n".join(fields)
    return f"""// Generated by tools/ascend_check.py from {tiling_header.name}.
#pragma once
#include <cstdint>
#include "kernel_tiling/kernel_tiling.h"
struct {name} {{
{body}
}};
#define GET_TILING_DATA(tiling_data, tiling_arg) \\
    {name} tiling_data;                       \\
    AscendC::gf_check_copy_tiling(&tiling_data, tiling_arg)
namespace AscendC {{
template <typename T>
__aicore__ inline void gf_check_copy_tiling(T* data, GM_ADDR tiling)
{{
    const __gm__ uint8_t* src = reinterpret_cast<const __gm__ uint8_t*>(tiling);
    uint8_t* dst = reinterpret_cast<uint8_t*>(data);
    for (uint32_t i = 0; i < sizeof(T); ++i) {{
        dst[i] = src[i];
    }}
}}
}}  // namespace AscendC
"""


# ---- what to compile ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    source: Path
    dtype: str  # a gf_ops.json dtype column label, or "-" for host files
    mode: str  # "aiv", "mix" or "host"
    defines: tuple[str, ...]


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def kernel_mode_names(source: Path) -> tuple[str, ...]:
    """The launch modes a kernel declares: AIV only, or mixed cube + vector (checked as both sides)."""
    text = source.read_text()
    if "KERNEL_TYPE_AIV_ONLY" in text:
        return ("aiv",)
    if re.search(r"KERNEL_TYPE_MIX_AIC_1_\d", text):
        return ("mix",)
    raise ValueError(f"{source.name}: no KERNEL_TASK_TYPE_DEFAULT with an AIV-only or mixed launch")


def jobs() -> Iterator[Job]:
    for op in json.loads((PROJECT / "gf_ops.json").read_text()):
        source = PROJECT / "op_kernel" / f"{snake_case(op['op'])}.cpp"
        tensors = op["input_desc"] + op["output_desc"]
        for column in range(len(tensors[0]["type"])):
            defines = []
            for tensor in tensors:
                dtype = tensor["type"][column]
                defines += [f"-DDTYPE_{tensor['name'].upper()}={KERNEL_TYPES[dtype]}"]
                defines += [f"-DORIG_DTYPE_{tensor['name'].upper()}={KERNEL_TYPES[dtype]}"]
            label = tensors[0]["type"][column]
            for mode in kernel_mode_names(source):
                yield Job(source, label, mode, (*MODES[mode], *defines))
    for source in sorted((PROJECT / "op_host").glob("*.cpp")):
        yield Job(source, "-", "host", ())


def first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if " error: " in line or line.startswith("error:") or "fatal error" in line:
            where, _, message = line.partition(" error: ")
            short = where.replace(str(PROJECT) + "/", "")
            return f"{Path(short).name.rstrip(':')}: {message or line}"[:160]
    return stderr.strip().splitlines()[-1][:160] if stderr.strip() else ""


def compile_flags(headers: Headers, generated: Path, job: Job) -> list[str]:
    common = ["g++", "-std=c++17", "-fsyntax-only", "-w"]
    if job.mode == "host":
        includes = [STAND_INS / "host", generated, *headers.host, PROJECT / "op_host"]
        return [*common, "-DNO_OPERATOR_IMPL", *(f"-I{path}" for path in includes), str(job.source)]
    op = job.source.stem
    defines = ["-DASCENDC_CPU_DEBUG=1", f"-D__NPU_ARCH__={ARCH}", "-D__CCE_AICORE__=220", *job.defines]
    stand_ins = [STAND_INS] if headers.stub_fun_stand_in else []
    includes = [*stand_ins, generated, *headers.kernel, PROJECT / "op_kernel"]
    tiling = generated / f"{op}_tiling_data.h"
    return [
        *common,
        *defines,
        *(f"-I{path}" for path in includes),
        "-include",
        "kernel_operator.h",
        "-include",
        str(tiling),
        str(job.source),
    ]


def generate(headers: Headers, directory: Path) -> None:
    """kernel_tiling/kernel_tiling.h (Ascend C's API tiling structs) and one tiling header per operator."""
    if headers.tiling_generator is not None:
        target = directory / "kernel_tiling" / "kernel_tiling.h"
        target.parent.mkdir(parents=True)
        subprocess.run(
            [sys.executable, str(headers.tiling_generator), str(headers.tiling_definitions), str(target)],
            check=True,
            capture_output=True,
        )
    if headers.tiling_definitions is not None:
        # A toolkit's include path has the API headers as lib/... (kernels) and tiling/tiling_api.h (host); in the
        # repository they are include/adv_api/...: links give the checkout the toolkit's spelling
        # (the toolkit's install step makes the same links: lib -> adv_api, lib/matmul_intf.h -> matmul/...).
        (directory / "lib").mkdir()
        for entry in headers.tiling_definitions.iterdir():
            (directory / "lib" / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        matmul = headers.tiling_definitions / "matmul" / "matmul_intf.h"
        (directory / "lib" / "matmul_intf.h").symlink_to(matmul)
        (directory / "tiling").mkdir()
        (directory / "tiling" / "tiling_api.h").symlink_to(headers.tiling_definitions / "tiling_api.h")
    for header in (PROJECT / "op_host").glob("*_tiling.h"):
        op = header.name.removesuffix("_tiling.h")
        (directory / f"{op}_tiling_data.h").write_text(kernel_tiling_header(header))


@dataclass(frozen=True)
class Result:
    job: Job
    ok: bool
    error: str


def run(headers: Headers, workers: int = 2, only: str | None = None) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="gf_ascend_check_") as temporary:
        generated = Path(temporary)
        generate(headers, generated)

        def check(job: Job) -> Result:
            done = subprocess.run(compile_flags(headers, generated, job), capture_output=True, text=True)
            return Result(job, done.returncode == 0, "" if done.returncode == 0 else first_error(done.stderr))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(check, [job for job in jobs() if only is None or only in str(job.source)]))


def table(results: list[Result]) -> str:
    rows = [("file", "dtype", "mode", "result", "first error")]
    for result in results:
        rows.append(
            (
                str(result.job.source.relative_to(PROJECT)),
                result.job.dtype,
                result.job.mode,
                "ok" if result.ok else "FAIL",
                result.error,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) for row in rows]
    lines = [line + f" | {row[4]}".rstrip() for line, row in zip(lines, rows, strict=True)]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|---")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel g++ processes (default 2)")
    parser.add_argument("--only", help="check only the sources whose name contains this text")
    arguments = parser.parse_args(argv)
    if shutil.which("g++") is None:
        print("ascend_check: g++ is not installed (apt-get install g++)", file=sys.stderr)
        return 2
    try:
        headers = find_headers()
    except HeadersMissing as missing:
        print(f"ascend_check: {missing}", file=sys.stderr)
        return 2
    results = run(headers, arguments.jobs, arguments.only)
    print(f"Ascend C type-check (g++ -std=c++17 -fsyntax-only, CPU-debug, arch {ARCH}); headers: {headers.origin}")
    print(table(results))
    failed = sum(not result.ok for result in results)
    print(f"{len(results) - failed} of {len(results)} compile clean")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
