"""The Ascend operators' own sources (kernels/ascend/op_kernel) executed on our functional model of the Ascend C API
(kernels/ascend/api_model), against the float64 oracle, and the model's teeth: bugs planted by hand in a copy of the
kernels must fail.

The subset here is tools/ascend_cases.quick_cases() (one case per behaviour: every dtype, tails of every kind,
padding, a cell with no gene, a mask with holes, dropout counted exactly against the specification, the keep
test's edge, several tiles per core); `make ascend-model` runs the full matrix. Needs only g++ (C++20).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tools import ascend_cases, ascend_model
from tools.ascend_cases import Case

KERNELS = ascend_model.KERNELS

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.mark.parametrize("case", ascend_cases.quick_cases(), ids=lambda c: c.name)
def test_kernel_on_the_api_model_matches_the_float64_oracle(case: Case) -> None:
    outcome, run = ascend_model.run_case(case)
    assert outcome.passed, "\n".join(outcome.problems)
    assert run.stats["vector_cores"] >= 1
    # Within the 910B's Unified Buffer, as the model checks on every InitBuffer.
    assert 0 < run.stats["ub_peak_bytes"] <= 192 * 1024


# ---- teeth: bugs planted in a copy of op_kernel ---------------------------------------------------------------------

# (file, the exact text, its replacement, the case that must catch it, what the failure must say). Each planted
# bug is one a device run would meet; the model must refuse each, and not only by luck of the numbers.
PLANTED = {
    "tail copy one row too long (LSE of a query block)": (
        "gf_flash_attention.cpp",
        "const AscendC::DataCopyExtParams copy = {1, rows * static_cast<uint32_t>(sizeof(float)), 0, 0, 0};\n"
        "        AscendC::DataCopyPad(lseGm_[rowOffset], lseRows, copy);",
        "const AscendC::DataCopyExtParams copy = {1, (rows + 1) * static_cast<uint32_t>(sizeof(float)), 0, 0, 0};\n"
        "        AscendC::DataCopyPad(lseGm_[rowOffset], lseRows, copy);",
        Case("flash_attention", "fp16", (1, 2, 65, 64)),
        "'lse'",  # past the end of lse (last block), or a race with the core owning the next block
    ),
    "tail copy one row short (LayerNorm input rows)": (
        "gf_add_layer_norm.cpp",
        "AscendC::DataCopy(in, xGm_[offset], rows * hidden_);",
        "AscendC::DataCopy(in, xGm_[offset], (rows - 1) * hidden_);",
        Case("add_layer_norm", "fp16", (3 * 65, 256)),
        "non-finite",  # the row not copied in is UB nothing wrote: the model fills UB with NaN bytes
    ),
    "PipeBarrier removed (LayerNorm: Add, then the row fill)": (
        "gf_add_layer_norm.cpp",
        "AscendC::Add(z, z, squares, static_cast<int32_t>(tile));\n        AscendC::PipeBarrier<PIPE_V>();",
        "AscendC::Add(z, z, squares, static_cast<int32_t>(tile));",
        Case("add_layer_norm", "fp16", (3 * 65, 256)),
        "pipe hazard",
    ),
    "WaitFlag removed (P to GM before the cube reads it)": (
        "gf_flash_attention.cpp",
        "probsQueue_.FreeTensor(narrow);\n        gf::WaitFor<HardEvent::MTE3_S>();",
        "probsQueue_.FreeTensor(narrow);",
        Case("flash_attention", "fp16", (1, 2, 65, 64)),
        "pipe hazard: read on CUBE",
    ),
    "UB buffer one block too small (gamma and beta)": (
        "gf_add_layer_norm.cpp",
        "pipe->InitBuffer(paramBuf_, 2 * hidden_ * sizeof(float));",
        "pipe->InitBuffer(paramBuf_, 2 * hidden_ * sizeof(float) - 32);",
        Case("add_layer_norm", "bf16", (63, 768)),
        "UB access past the end of its buffer",
    ),
    "wrong transpose flag (K read untransposed in S = Q K^T)": (
        "gf_flash_attention.cpp",
        "scoresMatmul.SetTensorB(keyGm_[headOffset + static_cast<uint64_t>(keyStart) * headDim_], true);",
        "scoresMatmul.SetTensorB(keyGm_[headOffset + static_cast<uint64_t>(keyStart) * headDim_], false);",
        Case("flash_attention", "fp16", (1, 2, 65, 64)),
        "",
    ),
    "wrong transpose flag (dV = P^T dO read as P dO)": (
        "gf_flash_attention_grad.cpp",
        "keyGradMatmul.SetTensorA(probsWs_, true);",
        "keyGradMatmul.SetTensorA(probsWs_, false);",
        Case("flash_attention_grad", "fp16", (1, 2, 129, 64)),
        "",
    ),
    "dropout keep test off by one (keep iff word >> 8 > threshold)": (
        "gf_dropout_lanes.h",
        "v.AddsFloat(keep, keep, 1.0f - static_cast<float>(threshold));",
        "v.AddsFloat(keep, keep, 0.0f - static_cast<float>(threshold));",
        Case(
            "flash_attention",
            "fp16",
            (1, 1, 64, 64),
            drop=ascend_cases.threshold_edge_probability(ascend_cases.EDGE_SEED),
            seed=ascend_cases.EDGE_SEED,
            census=True,
        ),
        "census",
    ),
}


def _planted_copy(tmp_path: Path, file: str, text: str, replacement: str) -> Path:
    copy = tmp_path / "op_kernel"
    shutil.copytree(KERNELS, copy)
    source = copy / file
    original = source.read_text()
    assert original.count(text) == 1, f"the text to plant the bug in must occur exactly once in {file}"
    source.write_text(original.replace(text, replacement))
    return copy


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_bug_planted_in_a_copy_of_the_kernels_fails_on_the_model(bug: str, tmp_path: Path) -> None:
    file, text, replacement, case, says = PLANTED[bug]
    outcome, _ = ascend_model.run_case(case)
    assert outcome.passed, "the case must pass on the kernels as they are: " + "; ".join(outcome.problems)
    planted, _ = ascend_model.run_case(case, _planted_copy(tmp_path, file, text, replacement))
    assert not planted.passed, f"planted bug not caught: {bug}"
    assert says in "\n".join(planted.problems), planted.problems


def test_hazard_tracker_fails_a_missing_barrier_the_sequential_numbers_hide(tmp_path: Path) -> None:
    """Without the PipeBarrier the sequential model still computes the right numbers; the tracker fails it anyway."""
    file, text, replacement, case, _ = PLANTED["PipeBarrier removed (LayerNorm: Add, then the row fill)"]
    copy = _planted_copy(tmp_path, file, text, replacement)
    unchecked, _ = ascend_model.run_case(case, copy, hazard_checks=False)
    assert unchecked.passed, unchecked.problems
    checked, _ = ascend_model.run_case(case, copy)
    assert any("pipe hazard" in p for p in checked.problems), checked.problems


def test_case_names_are_unique() -> None:
    names = [c.name for c in ascend_cases.full_cases()]
    assert len(names) == len(set(names))
    assert {c.op for c in ascend_cases.quick_cases()} == set(ascend_cases.OPS)


# ---- the model's own checks, one misuse each (tests/ops/ascend_model_misuse.cpp) -------------------------------------

MISUSE_SOURCE = Path(__file__).with_name("ascend_model_misuse.cpp")
MISUSES = {
    "deque-without-enque": "DeQue without EnQue",
    "use-after-free": "used after FreeTensor",
    "alloc-beyond-buffers": "AllocTensor with all 1 buffers of the queue in use",
    "enque-beyond-depth": "EnQue beyond the queue depth 1",
    "ub-overflow": "Unified Buffer overflow",
    "ub-past-buffer-end": "UB access past the end of its buffer",
    "datacopy-length-not-32-bytes": "not a multiple of 32",
    "datacopy-ub-misaligned": "UB address not 32-byte aligned",
    "gm-past-end": "GM access past the end of 'input'",
    "datacopypad-block-count": "blockCount outside 1..4095",
    "mask-out-of-range": "mask (continuous mode) 65 outside 1..64",
    "repeat-out-of-range": "repeatTimes 256 outside 0..255",
    "vector-operand-misaligned": "UB operand not 32-byte aligned",
    "wait-without-set": "WaitFlag with no matching SetFlag",
    "raw-without-barrier": "pipe hazard: read on V",
    "mte2-then-vector-without-flag": "pipe hazard: read on V of UB byte 0 written on MTE2",
    "vector-then-mte3-without-flag": "pipe hazard: read on MTE3 of UB byte 0 written on V",
    "cast-bf16-none": "CAST_NONE is not listed for A2",
    "write-into-input": "GM write into 'input', which the launch passed as an input the kernel only reads",
    "softmax-expmax-over-inmax": "SoftmaxFlashV2: expMaxTensor and inMaxTensor overlap",
    "partial-overlap-in-iteration": "Adds: src partly overlaps the destination within one iteration",
    "overlap-across-iterations": "Adds: iteration 1 reads src at UB byte 256, which iteration 0",
    "cast-narrowing-in-place": "Cast: src partly overlaps the destination within one iteration",
    "datacopypad-tail-while-vector-reads": "pipe hazard: write on MTE2 of UB byte 20 still being read on V",
}
CORRECT_USES = (
    "raw-with-barrier",
    "mte2-then-vector-with-flag",
    "queue-hand-off",
    "datacopypad-tail-is-dummy",
    "accumulation-over-iterations",
)


@pytest.fixture(scope="module")
def misuse_program() -> Path:
    digest = hashlib.sha256(MISUSE_SOURCE.read_bytes())
    for header in sorted(ascend_model.MODEL.rglob("*.h")):
        digest.update(header.read_bytes())
    target = ascend_model.CACHE / f"ascend_model_misuse_{digest.hexdigest()[:16]}"
    if not target.exists():
        ascend_model.CACHE.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".tmp{os.getpid()}")
        command = ["g++", "-std=c++20", "-O1", f"-I{ascend_model.MODEL}", str(MISUSE_SOURCE), "-o", str(partial)]
        subprocess.run(command, check=True, capture_output=True)
        partial.replace(target)
    return target


def _marked_line(scenario: str) -> int:
    """The line of the call marked // LINE in the scenario's branch of ascend_model_misuse.cpp."""
    lines = MISUSE_SOURCE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if f'scenario == "{scenario}"' in line)
    return next(i + 1 for i in range(start, len(lines)) if lines[i].rstrip().endswith("// LINE"))


@pytest.mark.parametrize("scenario", sorted(MISUSES))
def test_model_refuses_a_misuse_naming_the_source_line(misuse_program: Path, scenario: str) -> None:
    said = subprocess.run([misuse_program, scenario], capture_output=True, text=True, check=True).stdout.strip()
    assert said.startswith(f"ascend_model_misuse.cpp:{_marked_line(scenario)}: "), said
    assert MISUSES[scenario] in said, said


@pytest.mark.parametrize("scenario", CORRECT_USES)
def test_model_accepts_the_correct_use(misuse_program: Path, scenario: str) -> None:
    said = subprocess.run([misuse_program, scenario], capture_output=True, text=True, check=True).stdout.strip()
    assert said == "ok"


def test_model_half_conversion_matches_numpy_on_every_pattern(misuse_program: Path) -> None:
    listing = subprocess.run([misuse_program, "convert", "half-roundtrip"], capture_output=True, text=True, check=True)
    rows = np.array([[int(w, 16) for w in line.split()] for line in listing.stdout.splitlines()], np.uint64)
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    want = halves.astype(np.float32).view(np.uint32)
    numbers = ~np.isnan(halves)  # finite values and both infinities: exact both ways
    assert np.array_equal(rows[numbers, 0], want[numbers].astype(np.uint64))
    assert np.array_equal(rows[numbers, 1], np.arange(65536, dtype=np.uint64)[numbers])
    # NaN stays NaN both ways, with its sign
    nan_rows = rows[~numbers]
    assert np.all(np.isnan(nan_rows[:, 0].astype(np.uint32).view(np.float32)))
    assert np.all(np.isnan(nan_rows[:, 1].astype(np.uint16).view(np.float16)))
    assert np.array_equal(nan_rows[:, 1] >> 15, np.arange(65536, dtype=np.uint64)[~numbers] >> 15)


def test_model_rounding_to_16_bits_is_nearest_even(misuse_program: Path) -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            rng.standard_normal(20000).astype(np.float32) * np.float32(2.0) ** rng.integers(-30, 20, 20000),
            # exact ties of both formats, and values past fp16's range
            (np.arange(1, 2000, dtype=np.float32) + np.float32(0.5)) * np.float32(2.0**-10),
            np.float32(1.0) + np.arange(0, 4000, dtype=np.float32) * np.float32(2.0**-16),
            np.array([65504.0, 65519.99, 65520.0, 1e6, -1e6, 2.0**-25, 2.0**-24 * 1.5], np.float32),
        ]
    ).astype(np.float32)
    listing = subprocess.run(
        [misuse_program, "convert", "values"],
        input="\n".join(f"{int(b):08x}" for b in values.view(np.uint32)),
        capture_output=True,
        text=True,
        check=True,
    )
    got = np.array([[int(w, 16) for w in line.split()] for line in listing.stdout.splitlines()], np.uint32)
    with np.errstate(over="ignore"):  # values past fp16's range: numpy rounds them to infinity, as the model must
        want_half = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(got[:, 0].astype(np.uint16), want_half)
    # bf16: the nearest of the two bf16 neighbours (ties to the even one), computed in float64
    low = (values.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)
    step = np.abs(low) * 0 + 2.0 ** (np.floor(np.log2(np.abs(low))) - 7)
    high = low + np.sign(values) * step
    exact = values.astype(np.float64)
    pick_high = (np.abs(high - exact) < np.abs(exact - low)) | (
        (np.abs(high - exact) == np.abs(exact - low)) & ((values.view(np.uint32) >> 16) & 1 == 1)
    )
    want = (values.view(np.uint32) >> 16) + pick_high.astype(np.uint32)
    assert np.array_equal(got[:, 1], want)


def test_level0_mask_block_and_repeat_strides_follow_the_documentation(misuse_program: Path) -> None:
    """Add (bit mask, block stride 0 and 2, repeat strides), Brcb and WholeReduceSum on src[i] = i, against the rules
    of the SIMD pages worked out here: lane l of repeat r of a 32-bit operand is element
    (r * repStride + (l // 8) * blkStride) * 8 + l % 8; bit l of mask[0] selects lane l; Brcb puts src[8 r + i] in
    every element of dst block r * dstRepStride + i * dstBlkStride; WholeReduceSum puts the sum of repeat r's first
    `mask` lanes at dst[r * dstRepStride]."""
    listing = subprocess.run([misuse_program, "level0-listing"], capture_output=True, text=True, check=True)
    got = np.array([float(v) for v in listing.stdout.split()])
    want = np.full(3 * 256, -1.0)

    def element(r: int, lane: int, blk: int, rep: int) -> int:
        return (r * rep + (lane // 8) * blk) * 8 + lane % 8

    add = want[:256]
    for r in range(2):
        for lane in [0, 9, *range(17, 24), 63]:
            add[element(r, lane, 1, 9)] = element(r, lane, 2, 16) + 512 + element(r, lane, 0, 1)
    brcb = want[256:512]
    for r in range(2):
        for i in range(8):
            block = r * 16 + i * 2
            brcb[block * 8 : block * 8 + 8] = 8 + 8 * r + i
    reduce = want[512:]
    for r in range(3):
        reduce[r * 2] = sum(element(r, lane, 2, 20) for lane in range(40))
    np.testing.assert_array_equal(got, want)
