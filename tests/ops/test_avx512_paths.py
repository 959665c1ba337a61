"""The AVX-512 tile kernels (kernels/cpu/tile_kernels_lane16.h) against the AVX2 ones, float64 numpy and the dropout
reference, table by table through the library's probe API (kernels/cpu/tile_kernels_probe.cc), then through the
MindSpore operators; and the dispatcher's choice and errors.

"avx512" is the zmm table: it runs only where the CPU has AVX-512F. "avx512emu" is the same algorithm on pairs of
ymm registers and runs wherever AVX2 does; it returns the same bits as "avx512" (one template, lane-wise IEEE
operations, one reduction tree), which `test_avx512_matches_its_emulation_bit_for_bit` checks where both run.

What is compared with AVX2 and how:
- bit for bit: gemm (every C element is the same FMA chain over k in order), row_max, the exp values, multiply,
  scale, softmax_grad, the dropout column codes and keep factors, LayerNorm's dgamma/dbeta, HashDropout's output;
- within the reduction-order bound: sums of n terms (exp_shift_sum's return, dot, LayerNorm statistics and its
  backward's row sums) are added in another order (lane c mod 16 and a 4-level tree instead of c mod 8, a 3-level
  tree and up to 7 scalar tail additions), so each differs from AVX2's by at most
  (ceil(n/8) + ceil(n/16) + 16) * 2^-24 * sum |term|  (`sum_order_bound`, first-order error analysis with slack);
  what depends on those sums is checked with that bound carried through its formula.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import re
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from helpers.cpu_isas import avx512_skip_reason, isa_available, skip_unless_available
from helpers.fused_ops import TOLERANCE, random_problem, run_forward, run_gradients
from helpers.oracles import attention_backward, attention_forward, relative_error
from mindspore import Tensor

from mindformer_gf.host import describe_cpu
from mindformer_gf.ops import cpu
from mindformer_gf.reference.attention_dropout import column_code, head_key, keep_mask, keep_scale

UNIT_ROUNDOFF = 2.0**-24
PANEL = 16  # kPanelWidth
FLOAT_P = ctypes.POINTER(ctypes.c_float)
SEED = (77 << 32) + 1234567

_c = ctypes.c_char_p
_i, _i64, _f, _u32, _u64, _p = (
    ctypes.c_int,
    ctypes.c_int64,
    ctypes.c_float,
    ctypes.c_uint32,
    ctypes.c_uint64,
    ctypes.c_void_p,
)


def probe() -> ctypes.CDLL:
    return declare_probe_api(cpu.native())


def declare_probe_api(library: ctypes.CDLL) -> ctypes.CDLL:
    """The argument types of tile_kernels_probe.cc's functions, on any library built with it."""
    library.MindformerGfTileTableCompiled.argtypes = [_c]
    library.MindformerGfTileGemm.argtypes = [_c, _i, _i, _i, _f, _p, _i64, _i64, _p, _i64, _i64, _p, _i64, _i, _p]
    library.MindformerGfTileRowKernels.argtypes = [_c, _p, _p, _p, _i, _f, _p]
    library.MindformerGfTileElementwise.argtypes = [_c, _p, _p, _p, _p, _p, _i, _f, _f, _i]
    library.MindformerGfTileDropout.argtypes = [_c, _p, _p, _i, _u64, _f, _u32, _u32, _u32]
    library.MindformerGfTileLayerNorm.argtypes = [_c, _p, _p, _p, _p, _f, _i, _i, _p, _p, _p]
    library.MindformerGfTileLayerNormBackward.argtypes = [_c, _p, _p, _p, _p, _p, _p, _p, _p, _i, _i, _p, _p, _p]
    return library


def ptr(array: np.ndarray | None) -> int | None:
    return None if array is None else array.ctypes.data


def sum_order_bound(terms: np.ndarray) -> np.ndarray:
    """Largest difference between the AVX2 and the 16-lane float32 sums of `terms` along the last axis."""
    n = terms.shape[-1]
    depth = math.ceil(n / 8) + math.ceil(n / 16) + 16
    return depth * UNIT_ROUNDOFF * np.abs(terms.astype(np.float64)).sum(axis=-1)


@pytest.fixture(params=["avx512emu", "avx512"])
def lane16_isa(request, record_property) -> str:
    """The two tables of the 16-lane algorithm, each compared with the AVX2 table (which must run here)."""
    skip_unless_available(request.param, request.node.name)
    skip_unless_available("avx2", request.node.name)
    record_property("cpu_isa", request.param)
    print(f"cpu_isa: {request.node.name} ran the {request.param} tile kernels against avx2 on {cpu.host_cpu()}")
    return request.param


# ---------------------------------------------------------------------------------------------------- the dispatcher


def cpu_flags() -> set[str]:
    flags = set(describe_cpu()["vector_extensions"])
    if not flags:
        pytest.skip("no /proc/cpuinfo flags: the CPU's extensions cannot be read independently of the library")
    return flags


def test_dispatcher_reports_the_isa_it_chose():
    """auto picks AVX-512 when the CPU (per /proc/cpuinfo, read here independently) has avx512f, else AVX2+FMA, else
    portable; the emulation is available exactly where AVX2 is, and never chosen by auto."""
    flags = cpu_flags()
    has_avx2 = {"avx2", "fma"} <= flags
    has_avx512 = has_avx2 and "avx512f" in flags
    cpu.set_cpu_isa("auto")
    expected = "avx512" if has_avx512 else "avx2" if has_avx2 else "portable"
    print(f"host {cpu.host_cpu()}: auto chose {cpu.cpu_isa()}, available {cpu.available_cpu_isas()}")
    assert cpu.cpu_isa() == expected
    expected_available = [
        name
        for name, present in (("avx512", has_avx512), ("avx2", has_avx2), ("avx512emu", has_avx2), ("portable", True))
        if present
    ]
    assert cpu.available_cpu_isas() == expected_available
    for name in expected_available:
        cpu.set_cpu_isa(name)
        assert cpu.cpu_isa() == name
    cpu.set_cpu_isa("auto")


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the SIMD tables are compiled on x86-64 only"
)
def test_every_table_is_compiled_into_the_x86_64_library():
    """The AVX-512 table is in the library even where the CPU cannot run it (its tests then skip), and the table
    names the library reports are its own."""
    library = probe()
    for name in cpu.CPU_ISAS:
        assert library.MindformerGfTileTableCompiled(name.encode()) == 1, name
    assert library.MindformerGfTileTableCompiled(b"avx1024") == 0
    for name in cpu.available_cpu_isas():
        cpu.set_cpu_isa(name)
        assert cpu.cpu_isa() == name
    cpu.set_cpu_isa("auto")


# AVX-512 instructions: any zmm register, opmask register, or the EVEX-only registers 16-31.
AVX512_OPERAND = re.compile(r"%zmm\d+|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b")


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or shutil.which("objdump") is None,
    reason="needs an x86-64 library and binutils' objdump",
)
def test_avx512_instructions_only_in_the_avx512_table():
    """The library must load and run on x86-64 CPUs without AVX-512: in its disassembly, every instruction with an
    AVX-512 operand belongs to a function of the zmm table (`Avx512Lanes`), which only the dispatcher's checked
    choice calls; and that table does contain them (it is compiled, with 24-accumulator FMAs in the GEMM)."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", str(cpu.library_path())],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    function, outside, inside = "", set(), 0
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line
        elif AVX512_OPERAND.search(line):
            if "Avx512Lanes" in function:
                inside += "vfmadd231ps" in line and "%zmm" in line
            else:
                outside.add(function)
    if not function:
        pytest.skip("the library has no symbols (stripped): functions cannot be told apart")
    assert not outside, f"AVX-512 instructions outside the AVX-512 table: {sorted(outside)[:3]}"
    assert inside >= 24


def test_forcing_an_unavailable_isa_is_a_one_line_error():
    cpu.set_cpu_isa("auto")
    chosen = cpu.cpu_isa()
    unavailable = ["avx1024"] + [name for name in cpu.CPU_ISAS if not isa_available(name)]
    for name in unavailable:
        with pytest.raises(ValueError) as error:
            cpu.set_cpu_isa(name)
        message = str(error.value)
        print(message)
        assert "\n" not in message and repr(name) in message and "'auto'" in message
        assert ("unknown" in message) if name == "avx1024" else (cpu.host_cpu() in message)
        assert cpu.cpu_isa() == chosen  # unchanged


@pytest.mark.parametrize("requested", ["avx1024", "avx512"])
def test_environment_variable_naming_an_unavailable_isa_is_a_one_line_error(requested):
    if requested == "avx512" and isa_available("avx512"):
        requested = "avx512emu" if not isa_available("avx512emu") else None
    if requested is None:
        pytest.skip("every instruction set the library knows runs on this host")
    code = "from mindformer_gf.ops import cpu\ncpu.native()\n"
    environment = {**os.environ, "MINDFORMER_GF_CPU_ISA": requested}
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    print(last)
    assert last.startswith(f"ValueError: MINDFORMER_GF_CPU_ISA={requested}: ") and "use 'auto' or one of" in last


# -------------------------------------------------------------------------------- table against table, via the probe


# (m, n, k): ragged rows (not multiples of the 12-row tiles, or of AVX2's 6), columns inside one panel, on the edge
# of one or two panels and past them, the attention's shapes (72-row query blocks, 128-key blocks, D = 64).
GEMM_SHAPES = [
    (1, 1, 1),
    (7, 15, 5),
    (12, 16, 64),
    (13, 17, 3),
    (25, 33, 40),
    (72, 128, 64),
    (72, 64, 128),
    (128, 64, 72),
]


def gemm(isa, a, b, m, n, k, transpose_a, packed_b, mode, c0, row_scale, alpha=0.37):
    """C of the named table for A (m x k, or stored k x m when transpose_a) and B (k x n, row-major or in panels)."""
    if packed_b:
        panels = -(-n // PANEL)
        padded = np.zeros((k, panels * PANEL), np.float32)
        padded[:, :n] = b
        storage = np.ascontiguousarray(padded.reshape(k, panels, PANEL).transpose(1, 0, 2))
        b_row_stride, b_panel_stride = PANEL, PANEL * k
    else:
        storage, b_row_stride, b_panel_stride = b, n, PANEL
    a_storage = np.ascontiguousarray(a.T) if transpose_a else a
    a_row, a_col = (1, m) if transpose_a else (k, 1)
    c = c0.copy()
    status = probe().MindformerGfTileGemm(
        isa.encode(), m, n, k, alpha, ptr(a_storage), a_row, a_col, ptr(storage), b_row_stride, b_panel_stride,
        ptr(c), n, mode, ptr(row_scale)
    )  # fmt: skip
    assert status == 0
    return c


@pytest.mark.parametrize(("m", "n", "k"), GEMM_SHAPES)
def test_gemm_is_bit_identical_to_avx2(lane16_isa, m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    row_scale = rng.uniform(0.1, 1.0, m).astype(np.float32)
    alpha = np.float32(0.37)
    for mode in (0, 1, 2):
        product = alpha * (a.astype(np.float64) @ b.astype(np.float64))
        expected = [product, c0 + product, row_scale[:, None] * c0 + product][mode]
        for transpose_a in (False, True):
            for packed_b in (False, True):
                args = (a, b, m, n, k, transpose_a, packed_b, mode, c0, row_scale)
                actual = gemm(lane16_isa, *args)
                np.testing.assert_array_equal(actual, gemm("avx2", *args))
                # And against float64: k FMAs each within one rounding of a partial sum bounded by sum |a b|.
                bound = (k + 3) * UNIT_ROUNDOFF * (np.abs(a) @ np.abs(b) * alpha + np.abs(c0) * (mode > 0)) + 1e-30
                assert np.all(np.abs(actual - expected) <= bound)


@pytest.mark.parametrize("n", [1, 7, 8, 15, 16, 17, 31, 33, 64, 100, 128])
def test_row_kernels_match_avx2_and_float64(lane16_isa, n):
    """row_max equal; exp values bit-identical (same polynomial, same operations); the sums of exp_shift_sum and dot
    within the reduction-order bound of AVX2's, and of float64's (masked lanes, -inf and underflow included)."""
    rng = np.random.default_rng(n)
    x = (3.0 * rng.standard_normal(n)).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    x[:: max(1, n // 3)] = -np.inf if n > 2 else x[0]  # masked scores
    x[-1] = 5.0  # keeps a finite maximum
    if n > 4:
        x[1] = -95.0  # below exp's range: exactly 0
    y_finite = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    results = {}
    for isa in (lane16_isa, "avx2"):
        x_exp = x.copy()
        out = np.empty(3, np.float32)
        assert (
            probe().MindformerGfTileRowKernels(isa.encode(), ptr(y_finite), ptr(y), ptr(x_exp), n, 5.0, ptr(out)) == 0
        )
        results[isa] = (out, x_exp)
    (out, x_exp), (out2, x_exp2) = results[lane16_isa], results["avx2"]
    assert out[0] == out2[0] == y_finite.max()
    np.testing.assert_array_equal(x_exp, x_exp2)
    # exp of the float32 difference; the degree-6 Taylor polynomial is within a few ulps, and from below -87.68
    # (where round(x log2 e) = -127) the kernels return exactly 0. Between there and -87.33, exp is below float32's
    # normal range: absolute error up to the smallest normal.
    shifted = (x - np.float32(5.0)).astype(np.float64)
    exact_exp = np.where(shifted < -87.69, 0.0, np.exp(shifted))
    subnormal_range = np.float32(2.0**-126) * (shifted < -87.33)
    assert np.all(np.abs(x_exp - exact_exp) <= 8 * UNIT_ROUNDOFF * exact_exp + subnormal_range)
    assert x_exp[shifted < -87.69].tolist() == [0.0] * int(np.sum(shifted < -87.69))
    assert x_exp[x == -np.inf].tolist() == [0.0] * int(np.sum(x == -np.inf))
    dot_terms = y_finite.astype(np.float64) * y
    assert abs(float(out[1]) - float(out2[1])) <= sum_order_bound(dot_terms)
    assert abs(float(out[1]) - dot_terms.sum()) <= sum_order_bound(dot_terms)
    assert abs(float(out[2]) - float(out2[2])) <= sum_order_bound(x_exp)
    assert abs(float(out[2]) - exact_exp.sum()) <= sum_order_bound(x_exp) + 8 * UNIT_ROUNDOFF * exact_exp.sum()


@pytest.mark.parametrize("n", [1, 5, 12, 16, 23, 40, 48, 72, 100, 128])
def test_elementwise_kernels_are_bit_identical_to_avx2(lane16_isa, n):
    rng = np.random.default_rng(100 + n)
    x, p, dpd = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    factor = np.where(rng.random(n) < 0.2, 0.0, 1.25).astype(np.float32)
    for use_factor in (0, 1):
        results = []
        for isa in (lane16_isa, "avx2"):
            # One element past the end of each buffer must never be written (tail predicates).
            buffers = [np.append(v, np.float32(7.5)) for v in (x, x, dpd)]
            assert probe().MindformerGfTileElementwise(
                isa.encode(), *map(ptr, buffers), ptr(p), ptr(factor), use_factor, 0.3, 0.2, n
            ) == 0  # fmt: skip
            assert all(b[n] == np.float32(7.5) for b in buffers)
            results.append([b[:n] for b in buffers])
        for actual, reference in zip(*results, strict=True):
            np.testing.assert_array_equal(actual, reference)
        multiplied, scaled, grad = results[0]
        np.testing.assert_array_equal(multiplied, x * factor)
        np.testing.assert_array_equal(scaled, x * np.float32(0.3))
        dp = dpd * factor if use_factor else dpd
        # Three roundings (dP z, - D, x P), the subtraction possibly cancelling: bounded by |P| (|dP z| + |D|).
        exact = p.astype(np.float64) * (dpd.astype(np.float64) * (factor if use_factor else 1.0) - 0.2)
        assert np.all(np.abs(grad - exact) <= 3 * UNIT_ROUNDOFF * np.abs(p) * (np.abs(dp) + 0.2))


@pytest.mark.parametrize(("outer", "row", "col0", "columns"), [(0, 0, 0, 128), (3, 71, 128, 37), (9, 4000, 16, 1)])
def test_dropout_codes_and_factors_are_bit_identical_to_avx2_and_the_reference(lane16_isa, outer, row, col0, columns):
    for drop in (0.02, 0.1, 0.5):
        results = []
        for isa in (lane16_isa, "avx2"):
            codes = np.full(columns + 1, 0xDEADBEEF, np.uint32)
            factors = np.full(columns + 1, 7.5, np.float32)
            assert probe().MindformerGfTileDropout(
                isa.encode(), ptr(codes), ptr(factors), columns, SEED, drop, row, outer, col0
            ) == 0  # fmt: skip
            assert codes[columns] == 0xDEADBEEF and factors[columns] == np.float32(7.5)
            results.append((codes[:columns], factors[:columns]))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
        columns_range = np.arange(col0, col0 + columns)
        np.testing.assert_array_equal(results[0][0], column_code(int(head_key(SEED, outer)), columns_range))
        expected = keep_mask(SEED, drop, 1, outer + 1, row + 1, col0 + columns)[0, outer, row, col0:]
        np.testing.assert_array_equal(results[0][1] != 0, expected)
        np.testing.assert_array_equal(results[0][1][expected], np.float32(keep_scale(drop)))


def layer_norm_rows(isa, x, residual, gamma, beta, eps):
    rows, width = x.shape
    y = np.empty_like(x)
    mean, rstd = np.empty(rows, np.float32), np.empty(rows, np.float32)
    status = probe().MindformerGfTileLayerNorm(
        isa.encode(), ptr(x), ptr(residual), ptr(gamma), ptr(beta), eps, rows, width, ptr(y), ptr(mean), ptr(rstd)
    )
    assert status == 0
    return y, mean, rstd


def layer_norm_rows_backward(isa, dy, x, residual, gamma, mean, rstd, dmean, drstd):
    rows, width = x.shape
    dx = np.empty_like(x)
    dgamma, dbeta = np.zeros(width, np.float32), np.zeros(width, np.float32)
    status = probe().MindformerGfTileLayerNormBackward(
        isa.encode(), *map(ptr, (dy, x, residual, gamma, mean, rstd, dmean, drstd)), rows, width,
        ptr(dx), ptr(dgamma), ptr(dbeta)
    )  # fmt: skip
    assert status == 0
    return dx, dgamma, dbeta


@pytest.mark.parametrize("width", [1, 7, 16, 77, 256, 512])
@pytest.mark.parametrize("with_residual", [True, False])
def test_layer_norm_rows_match_avx2_within_the_reduction_bound(lane16_isa, width, with_residual):
    rng = np.random.default_rng(width)
    rows = 9
    x = (3.0 + 2.0 * rng.standard_normal((rows, width))).astype(np.float32)
    residual = rng.standard_normal((rows, width)).astype(np.float32) if with_residual else None
    gamma = (1.0 + 0.1 * rng.standard_normal(width)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(width)).astype(np.float32)
    eps = np.float32(1e-5)
    y, mean, rstd = layer_norm_rows(lane16_isa, x, residual, gamma, beta, eps)
    y2, mean2, rstd2 = layer_norm_rows("avx2", x, residual, gamma, beta, eps)
    z = x + residual if with_residual else x  # the kernels' own float32 z
    centred = z.astype(np.float64) - mean2[:, None]
    mean_bound = sum_order_bound(z) / width
    squares = (centred**2).sum(axis=1)
    rstd_rel_bound = (
        0.5 * (sum_order_bound(centred**2) + 2 * np.abs(centred).sum(axis=1) * mean_bound) / (squares + width * eps)
        + 4 * UNIT_ROUNDOFF
    )
    assert np.all(np.abs(mean.astype(np.float64) - mean2) <= mean_bound)
    assert np.all(np.abs(rstd.astype(np.float64) - rstd2) <= rstd_rel_bound * rstd2)
    zhat = centred * rstd2[:, None]
    y_bound = np.abs(gamma) * (rstd2[:, None] * mean_bound[:, None] + np.abs(zhat) * rstd_rel_bound[:, None]) + (
        8 * UNIT_ROUNDOFF * (np.abs(y2) + np.abs(beta))
    )
    assert np.all(np.abs(y.astype(np.float64) - y2) <= y_bound)

    dy = rng.standard_normal((rows, width)).astype(np.float32)
    dmean, drstd = rng.standard_normal(rows).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    dx, dgamma, dbeta = layer_norm_rows_backward(lane16_isa, dy, x, residual, gamma, mean2, rstd2, dmean, drstd)
    dx2, dgamma2, dbeta2 = layer_norm_rows_backward("avx2", dy, x, residual, gamma, mean2, rstd2, dmean, drstd)
    # Same saved statistics in: dgamma and dbeta are elementwise, so equal bit for bit.
    np.testing.assert_array_equal(dgamma, dgamma2)
    np.testing.assert_array_equal(dbeta, dbeta2)
    g = dy.astype(np.float64) * gamma
    dx_bound = (
        rstd2[:, None] / width * (sum_order_bound(g)[:, None] + np.abs(zhat) * sum_order_bound(g * zhat)[:, None])
    )
    dx_bound += 8 * UNIT_ROUNDOFF * (rstd2[:, None] * (np.abs(g) + np.abs(g).mean(axis=1, keepdims=True)) + np.abs(dx2))
    assert np.all(np.abs(dx.astype(np.float64) - dx2) <= dx_bound)


def test_avx512_matches_its_emulation_bit_for_bit(request):
    """Where the CPU runs AVX-512: the zmm table and the ymm-pair emulation return the same bits in every kernel."""
    if not isa_available("avx512"):
        pytest.skip(avx512_skip_reason("every [avx512emu-...] case of this file"))
    print(f"cpu_isa: avx512 and avx512emu ran on {cpu.host_cpu()}")
    rng = np.random.default_rng(5)
    for m, n, k in GEMM_SHAPES:
        a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        c0, row_scale = rng.standard_normal((m, n)).astype(np.float32), rng.random(m).astype(np.float32)
        for mode in (0, 1, 2):
            for transpose_a, packed_b in ((False, False), (True, True)):
                args = (a, b, m, n, k, transpose_a, packed_b, mode, c0, row_scale)
                np.testing.assert_array_equal(gemm("avx512", *args), gemm("avx512emu", *args))
    for n in (1, 17, 100, 512):
        x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        outs = []
        for isa in ("avx512", "avx512emu"):
            x_exp, out = x.copy(), np.empty(3, np.float32)
            probe().MindformerGfTileRowKernels(isa.encode(), ptr(x), ptr(y), ptr(x_exp), n, 1.0, ptr(out))
            outs.append((out, x_exp))
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        np.testing.assert_array_equal(outs[0][1], outs[1][1])
        rows = rng.standard_normal((3, n)).astype(np.float32)
        gamma, beta = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        forward = [layer_norm_rows(isa, rows, rows[::-1].copy(), gamma, beta, 1e-5) for isa in ("avx512", "avx512emu")]
        for actual, reference in zip(*forward, strict=True):
            np.testing.assert_array_equal(actual, reference)
        _, mean, rstd = forward[0]
        stats = (mean, rstd, rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32))
        backward = [
            layer_norm_rows_backward(isa, x[None].repeat(3, 0), rows, None, gamma, *stats)
            for isa in ("avx512", "avx512emu")
        ]
        for actual, reference in zip(*backward, strict=True):
            np.testing.assert_array_equal(actual, reference)


# ------------------------------------------------------------------------------- the operators, table against table


def with_isa(name, run):
    cpu.set_cpu_isa(name)
    try:
        assert cpu.cpu_isa() == name
        return run()
    finally:
        cpu.set_cpu_isa("auto")


# Forward: O and LSE differ from AVX2 only through l (each key block's row sum of P, <= 128 terms, in another
# order; the blocks are combined in the same order): relative to l at most (16 + 8 + 16) u per block, and O = (P V)/l
# with P V bit-identical, so |dO| <= 40 u |O|-ish and |dLSE| <= 40 u. Stated with 2x slack.
FORWARD_RELATIVE = 80 * UNIT_ROUNDOFF


@pytest.mark.parametrize("dropout_prob", [0.0, 0.1])
def test_attention_forward_matches_avx2(lane16_isa, dropout_prob):
    q, k, v, mask = random_problem(3, 2, 200, 64, [200, 129, 7], seed=7)

    def forward():
        return run_forward(q, k, v, mask, dropout_prob=dropout_prob, seed=SEED)

    out, lse = with_isa(lane16_isa, forward)
    out2, lse2 = with_isa("avx2", forward)
    print(f"{lane16_isa} vs avx2: out {relative_error(out, out2):.2e}, lse {relative_error(lse, lse2):.2e}")
    scale = np.abs(out2).max(axis=-1, keepdims=True)
    assert np.all(np.abs(out - out2) <= FORWARD_RELATIVE * scale)
    assert np.all(np.abs(lse - lse2) <= FORWARD_RELATIVE * np.maximum(np.abs(lse2), 1.0))
    if dropout_prob == 0.0:
        expected_out, _ = attention_forward(q, k, v, mask)
        assert relative_error(out, expected_out) <= TOLERANCE


def test_attention_backward_matches_avx2(lane16_isa):
    """Gradients differ from AVX2's through the forward's l and the backward's D_i = dot(dO_i, O_i) (64 terms in
    another order), each a few tens of u relative to what they scale; dS = P (dP - D) turns D's error into an error
    of dQ, dK of at most s |dD| max |K| (or |Q|) per row. Checked as a normalised error against AVX2 with a bound of
    1e-5, and against float64 with the tolerance every table meets."""
    q, k, v, mask = random_problem(2, 2, 150, 64, [150, 77], seed=8)
    rng = np.random.default_rng(9)
    w_out = rng.standard_normal(q.shape).astype(np.float32)
    w_lse = rng.standard_normal(q.shape[:-1]).astype(np.float32)

    def gradients():
        return run_gradients(q, k, v, mask, w_out, w_lse)

    grads = with_isa(lane16_isa, gradients)
    grads2 = with_isa("avx2", gradients)
    expected = attention_backward(q, k, v, mask, w_out, d_lse=w_lse)
    for name, actual, reference, oracle in zip("qkv", grads, grads2, expected, strict=True):
        error = relative_error(actual, reference)
        print(f"{lane16_isa} vs avx2: d{name} {error:.2e}")
        assert error <= 1e-5
        assert relative_error(actual, oracle) <= TOLERANCE


def test_hash_dropout_operator_is_bit_identical_to_avx2(lane16_isa):
    x = np.random.default_rng(10).standard_normal((3, 37, 100)).astype(np.float32)

    def run():
        return cpu.dropout(Tensor(x), 0.1, Tensor(np.array([SEED], np.int64))).asnumpy()

    y = with_isa(lane16_isa, run)
    np.testing.assert_array_equal(y, with_isa("avx2", run))
    assert 0 < np.mean(y == 0) < 0.2


def test_add_layer_norm_operator_matches_avx2(lane16_isa):
    rng = np.random.default_rng(11)
    x, residual = (
        rng.standard_normal((2, 40, 256)).astype(np.float32),
        rng.standard_normal((2, 40, 256)).astype(np.float32),
    )
    gamma, beta = rng.standard_normal(256).astype(np.float32), rng.standard_normal(256).astype(np.float32)

    def run():
        outputs = cpu._kernels().add_layer_norm_forward(
            *map(Tensor, (x, residual, gamma, beta)), Tensor([1e-12], ms.float32)
        )
        return [t.asnumpy() for t in outputs]

    y, mean, rstd = with_isa(lane16_isa, run)
    y2, mean2, rstd2 = with_isa("avx2", run)
    z = (x + residual).reshape(-1, 256)
    mean_bound = sum_order_bound(z).reshape(mean.shape) / 256
    assert np.all(np.abs(mean - mean2) <= mean_bound)
    # rstd: half the relative error of the centred sum of squares (its own order bound, ~40 u here) plus roundings.
    np.testing.assert_allclose(rstd, rstd2, rtol=40 * UNIT_ROUNDOFF)
    np.testing.assert_allclose(y, y2, rtol=0, atol=64 * UNIT_ROUNDOFF * np.abs(y2).max())
