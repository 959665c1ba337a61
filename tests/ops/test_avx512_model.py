"""The zmm table's own source (kernels/cpu/tile_kernels_avx512.cc, shim `Avx512Lanes` included) run on a scalar model
of the AVX-512F intrinsics (tests/ops/avx512_model/immintrin.h, written from Intel's documented semantics), on any
x86-64 host: the bit-for-bit comparisons of test_avx512_paths.py against AVX2 and against the ymm-pair emulation.

Why: the zmm table runs only on AVX-512 hardware, which the development host lacks; the emulation shares its
algorithm (tile_kernels_lane16.h) but not its shim, so a mistake in the shim (a mask intrinsic's argument order, a
rounding immediate, a compare predicate, the reduction's extract, an inverted mask) would first show on an AVX-512
CI host. Here the shim's every intrinsic call goes through the model, so such a mistake shows as a difference from
the AVX2 and emulated tables, bit for bit, on this host.

The model build: g++ with the shadow immintrin.h first on the include path, the target attributes replaced
(MFGF_LANE16_TARGET / MFGF_LANE16_FUNCTION), -mno-avx512f (the library is checked to hold no AVX-512 instruction).
-O1 -fexpensive-optimizations -mfma: the real tables are built at -O3 with target("...fma"), where GCC contracts the
two scalar multiply-subtracts of tile_kernels_lane16.h's LayerNorm backward (`through_mean - rstd * mean_g`) into
FMAs; the model build must do the same to compute the same bits (the modelled intrinsics themselves cannot be
contracted: each result lane passes through an opaque asm statement). What the model cannot show: anything below
the intrinsics' documented semantics (encoding, the compiler's instruction selection and register allocation, the
zmm state the OS saves, speed). That still needs an AVX-512 host: test_avx512_paths.py's "avx512" cases run there.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_avx512_paths as paths
from helpers.cpu_isas import skip_unless_available

from mindformer_gf.ops import cpu

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(__file__).resolve().parent / "avx512_model"
KERNELS = ROOT / "kernels" / "cpu"
CACHE = ROOT / "build" / "avx512_model"
SOURCES = [KERNELS / "tile_kernels_avx512.cc", KERNELS / "tile_kernels_probe.cc", MODEL_DIR / "model_tables.cc"]
HEADERS = [
    MODEL_DIR / "immintrin.h",
    KERNELS / "tile_kernels_lane16.h",
    KERNELS / "tile_kernels.h",
    KERNELS / "aot_abi.h",
]
FLAGS = [
    "-std=c++17",
    "-O1",
    "-fexpensive-optimizations",
    "-mfma",
    "-mno-avx512f",
    "-fno-math-errno",
    "-fvisibility=hidden",
    "-fPIC",
    "-shared",
    "-DMFGF_LANE16_TARGET=inline",
    "-DMFGF_LANE16_FUNCTION=",
    f"-I{MODEL_DIR}",  # before the system's: the model shadows <immintrin.h>
    f"-I{KERNELS}",
]
MODEL = "avx512model"  # the modelled zmm table, as the tests name it (the library itself calls it "avx512")

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the AVX-512 model library"),
    pytest.mark.skipif(
        platform.machine().lower() not in ("x86_64", "amd64"), reason="the zmm table is compiled on x86-64 only"
    ),
]


def build_model_library(sources: list[Path] = SOURCES) -> Path:
    """The modelled zmm table with the probe API, built once per content of its sources (cached under build/)."""
    digest = hashlib.sha256(" ".join(FLAGS).encode())
    for path in [*sources, *HEADERS]:
        digest.update(path.read_bytes())
    target = CACHE / f"libtile_avx512_model_{digest.hexdigest()[:16]}.so"
    CACHE.mkdir(parents=True, exist_ok=True)
    # One build at a time (pytest-xdist workers wait for the first instead of compiling it again).
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            partial = target.with_suffix(f".tmp{os.getpid()}")
            command = ["g++", *FLAGS, *map(str, sources), "-Wl,-Bsymbolic", "-o", str(partial)]
            result = subprocess.run(command, capture_output=True, text=True)
            assert result.returncode == 0, f"the model build failed:\n{result.stderr[-4000:]}"
            partial.replace(target)
    return target


@pytest.fixture(scope="module")
def model_path(request) -> Path:
    # Built with -mfma (see the module's docstring), so it runs where the AVX2+FMA table does.
    skip_unless_available("avx2", request.node.name)
    return build_model_library()


@pytest.fixture(scope="module")
def model_library(model_path: Path) -> ctypes.CDLL:
    library = paths.declare_probe_api(ctypes.CDLL(str(model_path)))
    library.MindformerGfAvx512ModelTableName.restype = ctypes.c_char_p
    return library


class RoutedProbe:
    """The probe API of the real library, except that the table MODEL is answered by the model library's "avx512"."""

    def __init__(self, real: ctypes.CDLL, model: ctypes.CDLL):
        self._real, self._model = real, model

    def __getattr__(self, name: str):
        real_function, model_function = getattr(self._real, name), getattr(self._model, name)

        def call(isa: bytes, *args):
            if isa == MODEL.encode():
                return model_function(b"avx512", *args)
            return real_function(isa, *args)

        return call


@pytest.fixture
def routed(model_library, monkeypatch, request) -> None:
    """test_avx512_paths' helpers, with MODEL routed to the model library; its comparisons need AVX2 and the
    emulation, which run wherever the model does (x86-64 with AVX2)."""
    skip_unless_available("avx2", request.node.name)
    skip_unless_available("avx512emu", request.node.name)
    monkeypatch.setattr(paths, "probe", lambda: RoutedProbe(paths.declare_probe_api(cpu.native()), model_library))


def parametrize_like(test):
    """The parametrize marks of a test_avx512_paths test, so its cases run here unchanged."""

    def apply(function):
        for mark in reversed(getattr(test, "pytestmark", [])):
            if mark.name == "parametrize":
                function = pytest.mark.parametrize(*mark.args, **mark.kwargs)(function)
        return function

    return apply


# ------------------------------------------------------------------------------------------ the model library itself


AVX512_OPERAND = re.compile(r"%zmm\d+|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b")


def test_model_library_holds_the_zmm_table_and_no_avx512_instruction(model_library, model_path):
    """The table came from tile_kernels_avx512.cc through the model (with the real header it would not compile
    without target attributes), and nothing in the library needs AVX-512 to run."""
    assert model_library.MindformerGfAvx512ModelTableName() == b"avx512"
    assert model_library.MindformerGfTileTableCompiled(b"avx512") == 1
    assert model_library.MindformerGfTileTableCompiled(b"avx2") == 0
    if shutil.which("objdump") is None:
        pytest.skip("no objdump: the absence of AVX-512 instructions was not checked")
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(model_path)], capture_output=True, text=True, check=True
    ).stdout
    offending = [line for line in listing.splitlines() if AVX512_OPERAND.search(line)]
    assert not offending, offending[:3]


# ------------------------------------------------------------- test_avx512_paths' comparisons with AVX2, on the model


@parametrize_like(paths.test_gemm_is_bit_identical_to_avx2)
def test_modelled_zmm_gemm_is_bit_identical_to_avx2(routed, m, n, k):
    paths.test_gemm_is_bit_identical_to_avx2(MODEL, m, n, k)


@parametrize_like(paths.test_row_kernels_match_avx2_and_float64)
def test_modelled_zmm_row_kernels_match_avx2_and_float64(routed, n):
    paths.test_row_kernels_match_avx2_and_float64(MODEL, n)


@parametrize_like(paths.test_elementwise_kernels_are_bit_identical_to_avx2)
def test_modelled_zmm_elementwise_kernels_are_bit_identical_to_avx2(routed, n):
    paths.test_elementwise_kernels_are_bit_identical_to_avx2(MODEL, n)


@parametrize_like(paths.test_dropout_codes_and_factors_are_bit_identical_to_avx2_and_the_reference)
def test_modelled_zmm_dropout_is_bit_identical_to_avx2_and_the_reference(routed, outer, row, col0, columns):
    paths.test_dropout_codes_and_factors_are_bit_identical_to_avx2_and_the_reference(MODEL, outer, row, col0, columns)


@parametrize_like(paths.test_layer_norm_rows_match_avx2_within_the_reduction_bound)
def test_modelled_zmm_layer_norm_matches_avx2(routed, width, with_residual):
    paths.test_layer_norm_rows_match_avx2_within_the_reduction_bound(MODEL, width, with_residual)


# ------------------------------------------------------------------ the modelled zmm table against its emulation


def row_kernels(isa: str, x: np.ndarray, y: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray]:
    x_exp, out = x.copy(), np.empty(3, np.float32)
    assert paths.probe().MindformerGfTileRowKernels(isa.encode(), *map(paths.ptr, (x, y, x_exp)), len(x), shift,
                                                    paths.ptr(out)) == 0  # fmt: skip
    return out, x_exp


def elementwise(isa: str, x, p, dpd, factor, use_factor: int) -> list[np.ndarray]:
    buffers = [x.copy(), x.copy(), dpd.copy()]
    assert paths.probe().MindformerGfTileElementwise(
        isa.encode(), *map(paths.ptr, buffers), paths.ptr(p), paths.ptr(factor), use_factor, 0.3, -0.7, len(x)
    ) == 0  # fmt: skip
    return buffers


def dropout(isa: str, columns: int, drop: float, row: int, outer: int, col0: int) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = np.zeros(columns, np.uint32), np.zeros(columns, np.float32)
    assert paths.probe().MindformerGfTileDropout(
        isa.encode(), paths.ptr(codes), paths.ptr(factors), columns, paths.SEED, drop, row, outer, col0
    ) == 0  # fmt: skip
    return codes, factors


def assert_same_bits(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.tobytes() == expected.tobytes(), f"{what}: the modelled zmm table and the emulation differ"


def test_modelled_zmm_table_is_bit_identical_to_its_emulation(routed):
    """Every kernel, sums included (one algorithm, one reduction tree): the zmm shim on the model and the ymm-pair shim
    on AVX2 must give the same bits. Inputs include the edges the shim's intrinsics decide: -inf and NaN-free masked
    scores (row max over a -inf-filled tail), exp below, at and just above its cutoff, at exact halves of ln 2
    (round-to-nearest-even of the magic-number rounding), signed zeros, and every tail length 1..16 past 0, 1 and 2 full
    vectors."""
    rng = np.random.default_rng(2026)
    for m, n, k in paths.GEMM_SHAPES:
        a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        c0, row_scale = rng.standard_normal((m, n)).astype(np.float32), rng.random(m).astype(np.float32)
        for mode in (0, 1, 2):
            for transpose_a in (False, True):
                for packed_b in (False, True):
                    args = (a, b, m, n, k, transpose_a, packed_b, mode, c0, row_scale)
                    assert_same_bits(paths.gemm(MODEL, *args), paths.gemm("avx512emu", *args), f"gemm {m, n, k}")
    ln2 = np.float32(np.log(2.0))
    lengths = [n for base in (0, 16, 32) for n in range(base + 1, base + 17)] + [100, 257]
    for n in lengths:
        # Scores: normal, large, exactly (j + 0.5) ln 2 from the shift, below exp's range, -inf, signed zeros.
        x = (4.0 * rng.standard_normal(n)).astype(np.float32)
        x[rng.random(n) < 0.2] = -np.inf
        halves = (np.arange(n) % 7 - 3 + 0.5).astype(np.float32) * ln2
        x = np.where(rng.random(n) < 0.2, halves, x).astype(np.float32)
        x[rng.random(n) < 0.1] = -100.0
        x[rng.random(n) < 0.1] = -0.0
        x[0] = np.float32(-88.0)  # exp's clamp at shift 0: the exponent field is 0, the result exactly 0
        x[n - 1] = np.float32(-87.68)  # at shift 0 just above the cutoff: 2^-126 times the polynomial
        x[n // 2] = 3.0
        y = rng.standard_normal(n).astype(np.float32)
        finite = np.where(np.isfinite(x), x, np.float32(-1.5)).astype(np.float32)
        for shift in (0.0, 3.0):
            model, emulated = row_kernels(MODEL, x, finite, shift), row_kernels("avx512emu", x, finite, shift)
            assert_same_bits(model[0][[0, 2]], emulated[0][[0, 2]], f"row max / exp sum, n = {n}")
            assert_same_bits(model[1], emulated[1], f"exp values, n = {n}")
            model, emulated = row_kernels(MODEL, finite, y, shift), row_kernels("avx512emu", finite, y, shift)
            assert_same_bits(model[0], emulated[0], f"row max / dot / exp sum, n = {n}")
            assert_same_bits(model[1], emulated[1], f"exp values, n = {n}")
        p, dpd = rng.random(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        factor = np.where(rng.random(n) < 0.3, 0.0, 1.25).astype(np.float32)
        for use_factor in (0, 1):
            for model, emulated in zip(
                elementwise(MODEL, finite, p, dpd, factor, use_factor),
                elementwise("avx512emu", finite, p, dpd, factor, use_factor),
                strict=True,
            ):
                assert_same_bits(model, emulated, f"multiply / scale / softmax_grad, n = {n}")
        for drop in (0.1, 0.5):
            for model, emulated in zip(
                dropout(MODEL, n, drop, 5, 2, 48), dropout("avx512emu", n, drop, 5, 2, 48), strict=True
            ):
                assert_same_bits(model, emulated, f"dropout, n = {n}")
        rows = (2.0 + rng.standard_normal((3, n))).astype(np.float32)
        residual = rng.standard_normal((3, n)).astype(np.float32)
        gamma, beta = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        for res in (residual, None):
            forward = [paths.layer_norm_rows(isa, rows, res, gamma, beta, 1e-5) for isa in (MODEL, "avx512emu")]
            for model, emulated in zip(*forward, strict=True):
                assert_same_bits(model, emulated, f"layer norm, width {n}")
            _, mean, rstd = forward[1]
            stats = (mean, rstd, rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32))
            dy = rng.standard_normal((3, n)).astype(np.float32)
            backward = [
                paths.layer_norm_rows_backward(isa, dy, rows, res, gamma, *stats) for isa in (MODEL, "avx512emu")
            ]
            for model, emulated in zip(*backward, strict=True):
                assert_same_bits(model, emulated, f"layer norm backward, width {n}")


# ------------------------------------------------------------------------- masked tails stay inside their buffers


GUARD_PAGE_PROGRAM = r"""
import ctypes, mmap, sys
import numpy as np

library = ctypes.CDLL(sys.argv[1])
_i, _i64, _p = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
library.MindformerGfTileGemm.argtypes = [
    ctypes.c_char_p, _i, _i, _i, ctypes.c_float, _p, _i64, _i64, _p, _i64, _i64, _p, _i64, _i, _p
]
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE
keep = []


def guarded(values, dtype=np.float32):
    # A copy of `values` whose last element ends where an inaccessible page begins: any access past it faults.
    values = np.asarray(values, dtype)
    pages = -(-values.nbytes // PAGE) + 1
    region = mmap.mmap(-1, pages * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    assert libc.mprotect(base + (pages - 1) * PAGE, PAGE, 0) == 0
    start = (pages - 1) * PAGE - values.nbytes
    array = np.frombuffer(region, dtype, count=values.size, offset=start)
    array[:] = values
    keep.append(region)
    return array


def p(array):
    return ctypes.c_void_p(array.ctypes.data)


A = b"avx512"
rng = np.random.default_rng(0)
for n in (1, 5, 16, 17, 31, 37):
    x = rng.standard_normal(n)
    out = np.empty(3, np.float32)
    assert library.MindformerGfTileRowKernels(A, p(guarded(x)), p(guarded(x)), p(guarded(x)), n, ctypes.c_float(1.0),
                                              p(out)) == 0
    assert library.MindformerGfTileElementwise(A, p(guarded(x)), p(guarded(x)), p(guarded(x)), p(guarded(x)),
                                               p(guarded(x)), 1, ctypes.c_float(0.5), ctypes.c_float(0.1), n) == 0
    assert library.MindformerGfTileDropout(A, p(guarded(np.zeros(n), np.uint32)), p(guarded(np.zeros(n))), n,
                                           ctypes.c_uint64(7), ctypes.c_float(0.1), 3, 1, 0) == 0
    rows = 2
    xs, g = guarded(rng.standard_normal(rows * n)), guarded(rng.standard_normal(n))
    y, mean, rstd = guarded(np.zeros(rows * n)), guarded(np.zeros(rows)), guarded(np.ones(rows))
    assert library.MindformerGfTileLayerNorm(A, p(xs), p(guarded(xs)), p(g), p(guarded(g)), ctypes.c_float(1e-5),
                                             rows, n, p(y), p(mean), p(rstd)) == 0
    assert library.MindformerGfTileLayerNormBackward(A, p(guarded(xs)), p(xs), p(guarded(xs)), p(g), p(mean),
                                                     p(rstd), p(guarded(np.zeros(rows))), p(guarded(np.zeros(rows))),
                                                     rows, n, p(guarded(np.zeros(rows * n))),
                                                     p(guarded(np.zeros(n))), p(guarded(np.zeros(n)))) == 0
    # GEMM: row-major B (k x n) and C (m x n) each ending at a guard page; n is the ragged column count.
    m, k = 3, 4
    a, b, c = guarded(rng.standard_normal(m * k)), guarded(rng.standard_normal(k * n)), guarded(np.zeros(m * n))
    for mode in (0, 1, 2):
        assert library.MindformerGfTileGemm(A, m, n, k, ctypes.c_float(1.0), p(a), k, 1, p(b), n, 16, p(c), n, mode,
                                            p(guarded(np.ones(m)))) == 0
print("ok")
"""


def test_modelled_zmm_tails_never_touch_memory_past_their_buffers(model_path):
    """Every buffer of every kernel ends where an inaccessible page begins, and the modelled masked loads and stores
    touch only enabled lanes (as the hardware's fault suppression guarantees): a shim that read or wrote a tail with
    an unmasked access (blending afterwards) would fault here, and on an AVX-512 host only at a page edge."""
    result = subprocess.run(
        [sys.executable, "-c", GUARD_PAGE_PROGRAM, str(model_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        f"the modelled zmm table touched memory past a buffer's end (exit {result.returncode}): {result.stderr[-2000:]}"
    )
