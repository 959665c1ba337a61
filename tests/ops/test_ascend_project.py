"""The Ascend operator project (kernels/ascend) agrees with itself and with its Python registration.

Nothing here needs CANN or its headers (tests/ops/test_ascend_check.py type-checks the kernels when those are
configured). What can be checked without them is checked:
- the names: operator names, input and output names and their order, dtype columns, in gf_ops.json (msopgen),
  op_host/*.cpp (OpDef), the kernel entry points and mindformer_gf.ops.ascend; names in the op definition must
  match exactly, or MindSpore silently falls back and reports no supported kernel;
- the tiling structs: every field the kernels read is declared, set by the host and read by the kernel;
- the plain C++ the kernels share with the host, compiled with g++ and run: the buffer plan and the tiling
  functions' shape arithmetic (gf_tiling_plan.h) with the kernels' task split (gf_task_split.h), for every released
  model against the 910B's memories and the CPU kernel's tile sizes; the dropout hash, scalar (gf_dropout_hash.h)
  and in the vector unit's operations (gf_dropout_lanes.h, through a host emulation of the instructions), against
  the numpy specification.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mindformer_gf.config import PRESETS
from mindformer_gf.ops import ascend
from mindformer_gf.reference.attention_dropout import column_code, dropout_words, keep_mask, keep_threshold

PROJECT = Path(__file__).resolve().parents[2] / "kernels" / "ascend"
CPU_ATTENTION = PROJECT.parent / "cpu" / "flash_attention.cc"

GE_DTYPES = {
    "ge::DT_FLOAT16": "float16",
    "ge::DT_BF16": "bfloat16",
    "ge::DT_FLOAT": "float32",
    "ge::DT_INT32": "int32",
    "ge::DT_INT64": "int64",
}
JSON_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "float": "float32", "int32": "int32", "int64": "int64"}


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def columns(per_tensor: list[list[str]]) -> tuple[tuple[str, ...], ...]:
    """Per-tensor dtype lists -> per-combination columns (the layout of OperatorSignature.dtype_columns)."""
    assert len({len(types) for types in per_tensor}) == 1, per_tensor
    return tuple(zip(*per_tensor, strict=True))


def parse_op_json() -> dict[str, dict]:
    ops = {}
    for op in json.loads((PROJECT / "gf_ops.json").read_text()):
        tensors = op["input_desc"] + op["output_desc"]
        assert all(t["param_type"] == "required" and set(t["format"]) == {"ND"} for t in tensors)
        ops[op["op"]] = {
            "inputs": tuple(t["name"] for t in op["input_desc"]),
            "outputs": tuple(t["name"] for t in op["output_desc"]),
            "columns": columns([[JSON_DTYPES[name] for name in t["type"]] for t in tensors]),
            "attrs": op.get("attr", []),
        }
    return ops


def _dtype_list(expression: str, variables: dict[str, list[str]]) -> list[str]:
    expression = expression.strip()
    if expression in variables:
        return variables[expression]
    return [GE_DTYPES[item.strip()] for item in expression.strip("{}").split(",")]


def parse_op_host(path: Path) -> dict:
    """The OpDef of one op_host file: class, OP_ADD, inputs/outputs with their dtype lists, config, tiling."""
    text = path.read_text()
    variables = {
        name: _dtype_list(body, {})
        for name, body in re.findall(r"const std::vector<ge::DataType> (\w+) = (\{[^}]*\});", text)
    }
    tensors = {"Input": [], "Output": []}
    for kind, name, dtypes in re.findall(r'this->(Input|Output)\("(\w+)"\)[^;]*?\.DataType\(([^)]*)\)', text):
        tensors[kind].append((name, _dtype_list(dtypes, variables)))
    (class_name,) = re.findall(r"class (\w+) : public OpDef", text)
    return {
        "class": class_name,
        "op_add": re.findall(r"OP_ADD\((\w+)\);", text),
        "inputs": tuple(name for name, _ in tensors["Input"]),
        "outputs": tuple(name for name, _ in tensors["Output"]),
        "columns": columns([dtypes for _, dtypes in tensors["Input"] + tensors["Output"]]),
        "configs": re.findall(r'AddConfig\("(\w+)"\)', text),
        "text": text,
    }


def op_host_files() -> dict[str, dict]:
    parsed = [parse_op_host(path) for path in sorted((PROJECT / "op_host").glob("*.cpp"))]
    return {op["class"]: op for op in parsed}


def test_the_four_operators_are_defined_everywhere():
    names = {"GfFlashAttention", "GfFlashAttentionGrad", "GfAddLayerNorm", "GfAddLayerNormGrad"}
    assert set(parse_op_json()) == names
    assert set(op_host_files()) == names
    assert set(ascend.OPERATORS) == names
    for name, host in op_host_files().items():
        assert host["op_add"] == [name]
        assert host["configs"] == ["ascend910b"]


@pytest.mark.parametrize("name", sorted(ascend.OPERATORS))
def test_names_and_dtypes_match_between_json_op_host_and_python(name):
    python = ascend.OPERATORS[name]
    host = op_host_files()[name]
    op_json = parse_op_json()[name]
    assert host["inputs"] == op_json["inputs"] == python.inputs
    assert host["outputs"] == op_json["outputs"] == python.outputs
    assert host["columns"] == op_json["columns"] == python.dtype_columns
    assert op_json["attrs"] == []  # scalars travel as tensors, as in the CPU kernels


@pytest.mark.parametrize("name", sorted(ascend.OPERATORS))
def test_registration_carries_the_same_names(name):
    info = ascend.reg_info(ascend.OPERATORS[name])
    assert info["op_name"] == name
    assert tuple(item["name"] for item in info["inputs"]) == ascend.OPERATORS[name].inputs
    assert tuple(item["name"] for item in info["outputs"]) == ascend.OPERATORS[name].outputs
    assert len(info["dtype_format"]) == len(ascend.OPERATORS[name].dtype_columns)
    for column, formats in zip(ascend.OPERATORS[name].dtype_columns, info["dtype_format"], strict=True):
        assert tuple(dtype for dtype, _ in formats) == column


@pytest.mark.parametrize("name", sorted(ascend.OPERATORS))
def test_kernel_entry_takes_inputs_outputs_workspace_tiling_in_order(name):
    source = (PROJECT / "op_kernel" / f"{snake_case(name)}.cpp").read_text()
    match = re.search(r'extern "C" __global__ __aicore__ void (\w+)\(([^)]*)\)', source)
    assert match, f"no kernel entry in {snake_case(name)}.cpp"
    assert match.group(1) == snake_case(name)
    parameters = tuple(part.split()[-1] for part in match.group(2).split(","))
    assert all(part.split()[0] == "GM_ADDR" for part in match.group(2).split(","))
    signature = ascend.OPERATORS[name]
    assert parameters == (*signature.inputs, *signature.outputs, "workspace", "tiling")
    # The kernel is instantiated for the dtype of its first input (DTYPE_<NAME> is generated per input name).
    assert f"DTYPE_{signature.inputs[0].upper()}" in source or f"DTYPE_{signature.inputs[1].upper()}" in source


def test_kernel_cmake_lists_every_operator_with_its_file():
    cmake = (PROJECT / "op_kernel" / "CMakeLists.txt").read_text()
    listed = dict(re.findall(r"npu_op_kernel_sources\(ascendc_kernels OP_TYPE (\w+) KERNEL_FILE ([\w.]+)\)", cmake))
    assert listed == {name: f"{snake_case(name)}.cpp" for name in ascend.OPERATORS}


def tiling_fields(name: str) -> list[str]:
    header = (PROJECT / "op_host" / f"{snake_case(name)}_tiling.h").read_text()
    assert f"BEGIN_TILING_DATA_DEF({name}TilingData)" in header
    assert f"REGISTER_TILING_DATA_CLASS({name}, {name}TilingData)" in header
    return re.findall(r"TILING_DATA_FIELD_DEF(?:_STRUCT)?\(\w+, (\w+)\);", header)


@pytest.mark.parametrize("name", sorted(ascend.OPERATORS))
def test_tiling_fields_are_set_by_the_host_and_read_by_the_kernel(name):
    fields = tiling_fields(name)
    assert len(fields) == len(set(fields))
    host = op_host_files()[name]["text"]
    kernel = (PROJECT / "op_kernel" / f"{snake_case(name)}.cpp").read_text()
    read = set(re.findall(r"(?:tiling_?->|tilingData\.)(\w+)", kernel))
    assert read <= set(fields), f"kernel reads undeclared tiling fields {read - set(fields)}"
    for field in fields:
        assert re.search(rf"tiling\.(set_{field}\(|{field}\b)", host), f"{name}: host never sets {field}"
        assert field in read, f"{name}: tiling field {field} is never read by the kernel"


def test_kernel_names_its_tiling_struct_as_registered():
    for name in ascend.OPERATORS:
        kernel = (PROJECT / "op_kernel" / f"{snake_case(name)}.cpp").read_text()
        assert f"{name}TilingData" in kernel


def test_presets_and_build_script_agree_with_python():
    presets = json.loads((PROJECT / "CMakePresets.json").read_text())
    variables = presets["configurePresets"][0]["cacheVariables"]
    assert variables["ASCEND_COMPUTE_UNIT"]["value"] == "ascend910b"
    assert variables["vendor_name"]["value"] == ascend.VENDOR
    assert f'vendor="{ascend.VENDOR}"' in (PROJECT / "build.sh").read_text()
    assert str(ascend.MARKER_HEADER) == f"op_api/include/aclnn_{snake_case('GfFlashAttention')}.h"


def test_installed_package_is_found_through_either_variable(tmp_path):
    vendor = tmp_path / "opp" / "vendors" / ascend.VENDOR
    (vendor / ascend.MARKER_HEADER).parent.mkdir(parents=True)
    (vendor / ascend.MARKER_HEADER).write_text("")
    assert ascend.installed_package({"ASCEND_OPP_PATH": str(tmp_path / "opp")}) == vendor
    assert ascend.installed_package({"ASCEND_CUSTOM_OPP_PATH": f"/nowhere:{vendor}"}) == vendor
    assert ascend.installed_package({"ASCEND_CUSTOM_OPP_PATH": "/nowhere"}) is None
    assert ascend.installed_package({}) is None


def test_not_available_off_ascend():
    assert not ascend.is_available()
    with pytest.raises(ascend.OperatorsMissing, match="device target Ascend"):
        ascend.require_available()


# ---- the plain C++ shared by host and kernels, compiled with g++ --------------------------------------------------
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def compile_and_run(tmp_path: Path, source: str, *flags: str) -> str:
    program = tmp_path / "program.cc"
    program.write_text(source)
    binary = tmp_path / "program"
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{PROJECT / 'op_host'}",
            f"-I{PROJECT / 'op_kernel'}",
            "-O1",
            *flags,
            str(program),
            "-o",
            str(binary),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout


PLAN_DRIVER = r"""
#include <cstdint>
#include <cstdio>
#include "gf_tiling_plan.h"

int main() {
    // A generous stand-in for GetSoftMaxFlashV2MinTmpSize (the real one needs CANN): half the score tile.
    auto scratch = [](uint32_t br, uint32_t bc) { return br * bc * 2; };
    const uint32_t dims[] = {16, 32, 48, 64, 80, 96, 128, 192, 256};
    for (uint32_t d : dims) {
        for (int backward = 0; backward < 2; ++backward) {
            const gf_plan::AttentionPlan p = gf_plan::PlanAttention(d, 2, backward != 0, scratch);
            std::printf("attention %u %d %d %u %u %u %u %u\n", d, backward, p.fits ? 1 : 0, p.queryBlock,
                        p.keyBlock, p.ubBytes, p.scratchBytes, p.workspaceBytesPerCore);
        }
    }
    const uint32_t hiddens[] = {16, 64, 256, 512, 768, 896, 1024, 1152, 2032, 2048, 100};
    for (uint32_t h : hiddens) {
        for (uint32_t element = 2; element <= 4; element += 2) {
            for (int backward = 0; backward < 2; ++backward) {
                const gf_plan::LayerNormPlan p = gf_plan::PlanLayerNorm(h, element, backward != 0);
                std::printf("layernorm %u %u %d %d %u %u %u %u %u\n", h, element, backward, p.fits ? 1 : 0,
                            p.rowsPerTile, p.bufferCount, p.ubBytes, p.rowsPerColumnTile, p.columnUbBytes);
            }
        }
    }
    std::printf("usable %u\n", gf_plan::kUbUsableBytes);
    return 0;
}
"""


@needs_gxx
def test_buffer_plan_fits_the_910b_and_uses_the_cpu_tiles(tmp_path):
    lines = [line.split() for line in compile_and_run(tmp_path, PLAN_DRIVER).splitlines()]
    usable = int(next(line for line in lines if line[0] == "usable")[1])
    assert usable == 192 * 1024 - 8 * 1024
    cpu = CPU_ATTENTION.read_text()
    cpu_key_block = int(re.search(r"constexpr int kKeyBlock = (\d+);", cpu).group(1))

    attention = {(int(d), int(b)): list(map(int, rest)) for _, d, b, *rest in (l for l in lines if l[0] == "attention")}
    for (head_dim, backward), (fits, br, bc, ub, scratch, workspace) in attention.items():
        assert fits, f"head_dim {head_dim} backward={backward} does not fit"
        assert bc == cpu_key_block
        assert ub + scratch <= usable
        assert workspace > 0
        if not backward:
            assert scratch >= br * bc * 2  # the stand-in minimum softmax scratch was honoured
        assert br % 16 == 0  # whole 16 x 16 cube fractals (the CPU's query block is sized for its own GEMM)
    # Geneformer's head_dim (64) gets the full 64-row query block in both directions.
    assert attention[(64, 0)][1] == attention[(64, 1)][1] == 64

    layer_norm = {
        (int(h), int(e), int(b)): list(map(int, rest))
        for _, h, e, b, *rest in (l for l in lines if l[0] == "layernorm")
    }
    for (hidden, _element, backward), (fits, rows, buffers, ub, column_rows, column_ub) in layer_norm.items():
        if hidden % 16:
            assert not fits
            continue
        if not fits:
            continue
        assert 1 <= rows <= 64 and buffers in (1, 2) and ub <= usable
        if backward:
            assert column_rows & (column_rows - 1) == 0 and column_ub <= usable
    # Every Geneformer hidden size (V1 256, 512; V2 896, 1152) in every supported dtype.
    for hidden in (256, 512, 896, 1152):
        for element in (2, 4):
            for backward in (0, 1):
                assert layer_norm[(hidden, element, backward)][0] == 1, (hidden, element, backward)
    # Hidden 256 (V1) keeps double buffering with a useful number of rows.
    assert layer_norm[(256, 2, 0)][1] >= 16 and layer_norm[(256, 2, 0)][2] == 2


# The released models' (hidden, heads), lengths up to 4,096 (and a ragged one), batches 1 to 64, on the two 910B
# variants' cube-core counts (20: 910B3/B4, 24: 910B1/B2; two vector cores each).
RELEASED = sorted({(preset["hidden_size"], preset["num_attention_heads"]) for preset in PRESETS.values()})
LENGTHS = (256, 1000, 2048, 4096)
BATCHES = (1, 8, 64)
CUBE_CORES = (20, 24)

LAUNCH_DRIVER = r"""
#include <cstdint>
#include <cstdio>
#include "gf_task_split.h"
#include "gf_tiling_plan.h"

static const uint32_t kShapes[][2] = {@SHAPES@};
static const uint32_t kLengths[] = {@LENGTHS@};
static const uint32_t kBatches[] = {@BATCHES@};
static const uint32_t kCubeCores[] = {@CUBE_CORES@};

int main() {
    auto scratch = [](uint32_t br, uint32_t bc) { return br * bc * 2; };  // stand-in for the softmax API minimum
    for (const auto& shape : kShapes) {
        const uint32_t hidden = shape[0], heads = shape[1], headDim = hidden / heads;
        for (uint32_t length : kLengths) for (uint32_t batch : kBatches) for (uint32_t cubes : kCubeCores) {
            for (int backward = 0; backward < 2; ++backward) {
                const gf_plan::AttentionLaunch a = gf_plan::PlanAttentionLaunch(
                    batch, heads, length, headDim, 2, backward != 0, cubes, scratch);
                std::printf("attention %u %u %u %u %u %d | %d %u %u %u %u %u %u %u %u %u %u %u %u %u %u %u %llu\n",
                            hidden, heads, length, batch, cubes, backward, a.plan.fits ? 1 : 0, a.plan.queryBlock,
                            a.plan.keyBlock, a.plan.dropoutRows, a.plan.ubBytes, a.plan.scratchBytes,
                            a.queryBlocksPerHead, a.keyBlocksPerHead, a.taskCount, a.keyTaskCount,
                            a.queryTaskCount, a.keyTaskCost, a.queryTaskCost, a.blockDim, a.vectorCores,
                            a.plan.workspaceBytesPerCore,
                            (unsigned long long)a.workspaceBytes);
                for (uint32_t core = 0; core <= a.vectorCores; ++core) {
                    const uint64_t begin = backward ? gf::CostSplitBegin(a.keyTaskCount, a.keyTaskCost,
                                                                         a.queryTaskCount, a.queryTaskCost, core,
                                                                         a.vectorCores)
                                                    : gf::EvenSplitBegin(a.taskCount, core, a.vectorCores);
                    std::printf("%llu ", (unsigned long long)begin);
                }
                std::printf("\n");
            }
            for (uint32_t element = 2; element <= 4; element += 2) for (int backward = 0; backward < 2; ++backward) {
                const uint32_t rows = batch * length;
                const gf_plan::LayerNormLaunch l =
                    gf_plan::PlanLayerNormLaunch(rows, hidden, element, backward != 0, 2 * cubes);
                std::printf("layernorm %u %u %u %u %d | %d %u %u %u %u %u %u\n", hidden, rows, element, 2 * cubes,
                            backward, l.plan.fits ? 1 : 0, l.plan.rowsPerTile, l.plan.ubBytes,
                            l.plan.columnUbBytes, l.tileCount, l.sliceCount, l.coreCount);
                for (uint32_t core = 0; core <= l.coreCount; ++core) {
                    std::printf("%llu ", (unsigned long long)gf::EvenSplitBegin(l.tileCount, core, l.coreCount));
                }
                std::printf("\n");
            }
        }
    }
    return 0;
}
"""


def launch_driver() -> str:
    return (
        LAUNCH_DRIVER.replace("@SHAPES@", ", ".join(f"{{{h}, {n}}}" for h, n in RELEASED))
        .replace("@LENGTHS@", ", ".join(map(str, LENGTHS)))
        .replace("@BATCHES@", ", ".join(map(str, BATCHES)))
        .replace("@CUBE_CORES@", ", ".join(map(str, CUBE_CORES)))
    )


def ceil_div(value: int, unit: int) -> int:
    return -(-value // unit)


def check_split(begins: list[int], costs: list[int]) -> None:
    """Contiguous ranges that cover every task once; no core above an even share by more than one task."""
    assert begins[0] == 0 and begins[-1] == len(costs)
    assert all(a <= b for a, b in zip(begins, begins[1:], strict=False))
    prefix = np.concatenate([[0], np.cumsum(costs)])
    loads = [prefix[b] - prefix[a] for a, b in zip(begins, begins[1:], strict=False)]
    assert max(loads) <= prefix[-1] / (len(begins) - 1) + max(costs), (max(loads), prefix[-1], len(begins) - 1)


@needs_gxx
def test_launch_plans_of_the_released_shapes_fit_the_910b_and_split_every_task_once(tmp_path):
    """Executes the tiling functions' shape arithmetic (gf_plan::Plan*Launch) and the kernels' task split for every
    released model, length up to 4,096 and batch 1 to 64; the expected values are worked out here independently."""
    lines = compile_and_run(tmp_path, launch_driver()).splitlines()
    cpu_key_block = int(re.search(r"constexpr int kKeyBlock = (\d+);", CPU_ATTENTION.read_text()).group(1))
    usable = 192 * 1024 - 8 * 1024
    checked = {"attention": 0, "layernorm": 0}
    for header, split in zip(lines[::2], lines[1::2], strict=True):
        kind, *values = header.replace("|", "").split()
        begins = list(map(int, split.split()))
        checked[kind] += 1
        if kind == "attention":
            hidden, heads, length, batch, cubes, backward = map(int, values[:6])
            fits, br, bc, dropout_rows, ub, scratch = map(int, values[6:12])
            q_blocks, k_blocks, tasks, key_tasks, query_tasks, key_cost, query_cost = map(int, values[12:19])
            blocks, vector_cores, per_core, total = map(int, values[19:])
            assert fits and hidden // heads == 64
            assert (br, bc) == (64, cpu_key_block)  # Br: whole 16 x 16 fractals; Bc: the CPU kernel's key block
            assert ub + scratch <= usable and (backward or scratch >= br * bc * 2)
            # The dropout hash's 3 word vectors of dropout_rows x Bc lanes and its Bc column codes are counted, in whole
            # 256-byte repeats.
            assert dropout_rows in (1, 2, 4, 8, 16) and dropout_rows * bc % 64 == 0
            assert ub >= (3 * dropout_rows + 1) * bc * 4
            pairs = batch * heads
            assert q_blocks == ceil_div(length, 64)
            if backward:
                assert k_blocks == ceil_div(length, 128)
                assert (key_tasks, query_tasks) == (pairs * k_blocks, pairs * q_blocks)
                assert (key_cost, query_cost) == (4 * q_blocks, 3 * k_blocks)
                assert tasks == key_tasks + query_tasks
                costs = [key_cost] * key_tasks + [query_cost] * query_tasks
            else:
                assert tasks == pairs * q_blocks
                costs = [1] * tasks
            assert blocks == min(cubes, ceil_div(tasks, 2)) and vector_cores == 2 * blocks
            assert total == vector_cores * per_core and total <= 64 * 2**20  # GM workspace: a few MB of 64 GB HBM
            check_split(begins, costs)
        else:
            hidden, rows, element, vector_cores, backward, fits, rows_per_tile, ub, column_ub, tiles, slices, cores = (
                map(int, values)
            )
            assert fits and 1 <= rows_per_tile <= 64 and ub <= usable and column_ub <= usable
            assert tiles == ceil_div(rows, rows_per_tile)
            assert slices == (hidden // 16 if backward else 0)
            assert cores == min(vector_cores, max(tiles, slices))
            check_split(begins, [1] * tiles)
    assert checked == {
        "attention": len(RELEASED) * len(LENGTHS) * len(BATCHES) * len(CUBE_CORES) * 2,
        "layernorm": len(RELEASED) * len(LENGTHS) * len(BATCHES) * len(CUBE_CORES) * 4,
    }


HASH_DRIVER = r"""
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include "gf_dropout_hash.h"

int main() {
    const uint64_t seeds[] = {0u, 0x9abcdef012345678u, 7u, 0xffffffffffffffffu};
    for (uint64_t seed : seeds) {
        const uint32_t lo = static_cast<uint32_t>(seed), hi = static_cast<uint32_t>(seed >> 32);
        for (uint32_t pair : {0u, 1u, 2u, 0xffffffffu}) {
            for (uint32_t row : {0u, 1u, 4u, 0xffffffffu}) {
                for (uint32_t column : {0u, 1u, 6u, 129u, 0xffffffffu}) {
                    const uint32_t key = gf::DropoutHeadKey(lo, hi, pair);
                    const uint32_t code = gf::DropoutColumnCode(key, column);
                    const uint32_t word = gf::DropoutWord(gf::DropoutRowKey(key, row), code);
                    std::printf("word %llu %u %u %u %u\n", (unsigned long long)seed, pair, row, column, word);
                }
            }
        }
    }
    const float probabilities[] = {0.0f, 1e-9f, 0.02f, 0.1f, 0.3333333f, 0.5f, 0.9f, 0.99999994f};
    for (float p : probabilities) {
        std::printf("threshold %.9g %u\n", p, gf::DropThreshold(p));
    }
    return 0;
}
"""


@needs_gxx
def test_kernel_hash_and_threshold_match_the_numpy_specification(tmp_path):
    lines = [line.split() for line in compile_and_run(tmp_path, HASH_DRIVER).splitlines()]
    words = [list(map(int, line[1:])) for line in lines if line[0] == "word"]
    assert len(words) == 4 * 4 * 4 * 5
    for seed, pair, row, column, word in words:
        assert word == int(dropout_words(seed, pair, row, column)), (seed, pair, row, column)
    thresholds = [line for line in lines if line[0] == "threshold"]
    assert len(thresholds) == 8
    for line in thresholds:
        assert int(line[2]) == keep_threshold(float(np.float32(line[1]))), line


# The vector unit's part of the hash (gf_dropout_lanes.h), run through a host emulation of the 910B instructions it
# uses: each method is one Ascend C instruction's effect on the lanes (int32 Muls, Adds and Sub wrap modulo 2^32;
# uint32 shifts are logical; And/Or are 16-bit instructions, emulated on the two halves of each lane).
LANES_DRIVER = r"""
#include <cstdint>
#include <cstdio>
#include <vector>
#include "gf_dropout_lanes.h"
#include "gf_tiling_plan.h"

static_assert(gf::kDropoutWordVectors == gf_plan::kDropoutWordVectors, "the UB plan counts the kernel's registers");

struct HostLanes {
    using Words = uint32_t*;
    using Floats = float*;
    uint32_t count;
    void Done() {}
    void ShiftRight(Words d, Words a, uint32_t n) { for (uint32_t i = 0; i < count; ++i) d[i] = a[i] >> n; }
    void MulScalar(Words d, Words a, uint32_t m) {
        for (uint32_t i = 0; i < count; ++i) {
            const int64_t product = int64_t(int32_t(a[i])) * int64_t(int32_t(m));  // vmuls.s32: low 32 bits kept
            d[i] = uint32_t(uint64_t(product));
        }
    }
    // int32 Adds / Sub wrap: the same bits as uint32 arithmetic modulo 2^32.
    void AddsRange(Words d, uint32_t offset, Words a, uint32_t value, uint32_t n) {
        for (uint32_t i = 0; i < n; ++i) d[offset + i] = a[i] + value;
    }
    void Sub(Words d, Words a, Words b) { for (uint32_t i = 0; i < count; ++i) d[i] = a[i] - b[i]; }
    static uint32_t Halves(uint32_t a, uint32_t b, bool isOr) {
        const uint16_t lo = isOr ? uint16_t(a) | uint16_t(b) : uint16_t(a) & uint16_t(b);
        const uint16_t hi = isOr ? uint16_t(a >> 16) | uint16_t(b >> 16) : uint16_t(a >> 16) & uint16_t(b >> 16);
        return (uint32_t(hi) << 16) | lo;
    }
    void And(Words d, Words a, Words b) { for (uint32_t i = 0; i < count; ++i) d[i] = Halves(a[i], b[i], false); }
    void Or(Words d, Words a, Words b) { for (uint32_t i = 0; i < count; ++i) d[i] = Halves(a[i], b[i], true); }
    void ColumnIndex(Words d, uint32_t offset, uint32_t first, uint32_t n) {
        for (uint32_t i = 0; i < n; ++i) d[offset + i] = first + i;
    }
    Floats AsFloats(Words w) { return reinterpret_cast<Floats>(w); }
    void ToFloat(Floats d, Words s) { for (uint32_t i = 0; i < count; ++i) d[i] = float(int32_t(s[i])); }
    void AddsFloat(Floats d, Floats a, float s) { for (uint32_t i = 0; i < count; ++i) d[i] = a[i] + s; }
    void MaxsFloat(Floats d, Floats a, float s) { for (uint32_t i = 0; i < count; ++i) d[i] = a[i] > s ? a[i] : s; }
    void MinsFloat(Floats d, Floats a, float s) { for (uint32_t i = 0; i < count; ++i) d[i] = a[i] < s ? a[i] : s; }
};

// The kernel's buffer layout (gf::DropoutRegistersIn): the width column codes, then three vectors of rows x width.
struct Bank {
    std::vector<uint32_t> storage;
    gf::DropoutRegisters<HostLanes> r;
    Bank(uint32_t rows, uint32_t width) : storage((gf::kDropoutWordVectors * rows + 1) * width) {
        uint32_t* p = storage.data();
        r.codes = p;
        r.word = p + width;
        r.t0 = r.word + rows * width;
        r.t1 = r.t0 + rows * width;
    }
};

int main() {
    // Column codes of a key block (mix32 as 14 vector instructions), and the words of 3 rows x 40 columns before the
    // keep test (r.word after Mix32Lanes), for several seeds and heads.
    const uint64_t seeds[] = {0u, 0x9abcdef012345678u, 7u, 0xffffffffffffffffu};
    for (uint64_t seed : seeds) {
        for (uint32_t pair = 0; pair < 3; ++pair) {
            const uint32_t rows = 3, width = 40, firstColumn = 1000u * pair + 0xfffffff0u * (pair == 2);
            const uint32_t firstRow = 65536u * pair;
            Bank bank(rows, width);
            HostLanes columns{width};
            const uint32_t headKey = gf::DropoutHeadKey(uint32_t(seed), uint32_t(seed >> 32), pair);
            gf::ColumnCodesLanes(columns, bank.r, headKey, firstColumn);
            for (uint32_t j = 0; j < width; ++j) {
                std::printf("code %u %u %u\n", headKey, firstColumn + j, bank.r.codes[j]);
            }
            HostLanes v{rows * width};
            for (uint32_t i = 0; i < rows; ++i) {
                v.AddsRange(bank.r.word, i * width, bank.r.codes, gf::DropoutRowKey(headKey, firstRow + i), width);
            }
            gf::Mix32Lanes(v, bank.r.word, bank.r.t0, bank.r.t1);
            for (uint32_t i = 0; i < v.count; ++i) {
                std::printf("word %llu %u %u %u %u\n", (unsigned long long)seed, pair, firstRow + i / width,
                            firstColumn + i % width, bank.r.word[i]);
            }
        }
    }
    // The keep test at its edges: words whose top 24 bits are at, just below and just above thresholds.
    const uint32_t highs[] = {0u, 1u, 2u, 0x7FFFFFu, 0x800000u, 0x800001u, 0xFFFFFEu, 0xFFFFFFu};
    const uint32_t thresholds[] = {0u, 1u, 2u, 0x800000u, 0x800001u, 0xFFFFFFu, 0x1000000u};
    const uint32_t n = 2 * sizeof(highs) / sizeof(highs[0]);
    for (uint32_t t : thresholds) {
        HostLanes v{n};
        Bank bank(1, n);
        for (uint32_t i = 0; i < n; ++i) bank.r.word[i] = (highs[i / 2] << 8) | (i % 2 ? 0xFFu : 0u);
        std::vector<uint32_t> words(bank.r.word, bank.r.word + n);
        gf::KeepMaskFromWords(v, v.AsFloats(bank.r.t0), bank.r.word, t);
        for (uint32_t i = 0; i < n; ++i) std::printf("edge %u %u %.1f\n", words[i], t, v.AsFloats(bank.r.t0)[i]);
    }
    // The keep mask of a small attention as the kernels run it: seed (123 << 32) + 456789, p = 0.1, 2 cells x 3
    // heads x 5 rows, the key block of columns 128 .. 133, 2 rows a call.
    const uint64_t seed = (uint64_t(123) << 32) + 456789u;
    const uint32_t threshold = gf::DropThreshold(0.1f), width = 6;
    for (uint32_t pair = 0; pair < 6; ++pair) {
        Bank bank(2, width);
        HostLanes columns{width};
        const uint32_t headKey = gf::DropoutHeadKey(uint32_t(seed), uint32_t(seed >> 32), pair);
        gf::ColumnCodesLanes(columns, bank.r, headKey, 128u);
        for (uint32_t row = 0; row < 5; row += 2) {
            const uint32_t rows = row + 2 <= 5 ? 2 : 1;
            HostLanes v{rows * width};
            const float* keep = gf::KeepMaskLanes(v, bank.r, headKey, row, rows, width, threshold);
            for (uint32_t i = 0; i < v.count; ++i) std::printf("keep %.1f\n", keep[i]);
        }
    }
    return 0;
}
"""


@needs_gxx
def test_vector_hash_formulation_matches_the_numpy_specification(tmp_path):
    """mix32 with Or-minus-And xor and low-half multiplies, the row-key add and the fp32 keep test, as the vector
    unit runs them, against mindformer_gf/reference/attention_dropout.py bit for bit."""
    lines = [line.split() for line in compile_and_run(tmp_path, LANES_DRIVER, "-fno-strict-aliasing").splitlines()]
    codes = [list(map(int, line[1:])) for line in lines if line[0] == "code"]
    assert len(codes) == 4 * 3 * 40
    heads, columns = np.array([c[0] for c in codes], np.uint32), np.array([c[1] for c in codes], np.uint32)
    assert [code for _, _, code in codes] == column_code(heads, columns).tolist()
    words = np.array([list(map(int, line[1:])) for line in lines if line[0] == "word"], np.uint64)
    assert len(words) == 4 * 3 * 120
    for seed in {int(w[0]) for w in words}:
        mine = words[words[:, 0] == seed]
        assert mine[:, 4].tolist() == dropout_words(seed, mine[:, 1], mine[:, 2], mine[:, 3]).tolist()

    edges = [line for line in lines if line[0] == "edge"]
    assert len(edges) == 16 * 7
    for _, word, threshold, keep in edges:
        assert float(keep) == (1.0 if int(word) >> 8 >= int(threshold) else 0.0), (word, threshold, keep)

    keeps = np.array([float(line[1]) for line in lines if line[0] == "keep"]).reshape(2, 3, 5, 6)
    assert (keeps == keep_mask((123 << 32) + 456789, 0.1, 2, 3, 5, 134)[..., 128:]).all()
