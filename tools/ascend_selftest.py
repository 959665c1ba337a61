#!/usr/bin/env python3
"""Self-test of the Ascend operators (kernels/ascend) on an Atlas machine (Atlas 800T A2, Ascend 910B).

    python tools/ascend_selftest.py                 # build, install, check, time
    python tools/ascend_selftest.py --skip-build    # the package is already installed and on ASCEND_CUSTOM_OPP_PATH

1. Environment: an NPU (/dev/davinci<N>), a CANN toolkit, MindSpore with its Ascend plugin. Without them the tool
   says what is missing and exits with status 3 (on a machine without an NPU this is all it does).
2. Build and install: kernels/ascend/build.sh, then the custom_opp_*.run package installed into --install-dir;
   the checks then run in a child process whose ASCEND_CUSTOM_OPP_PATH and LD_LIBRARY_PATH point at the installed
   package (what `source <dir>/vendors/mindformer_gf/bin/set_env.bash` does), since the Ascend runtime reads them
   when it starts.
3. Checks, in graph mode: forward and backward of GfFlashAttention(+Grad) and GfAddLayerNorm(+Grad) against the
   float64 oracles of mindformer_gf.reference (right-padded and holed key masks, a length that is no multiple of the
   tiles, a cell of length 1 and one of length 0, head_dim 64 and 128, dropout with a fixed seed against the hash
   mask of mindformer_gf.reference.attention_dropout); the builtin path's forward too.
   Then the cases the kernels pass on our functional model of the Ascend C API (tools/ascend_cases.py, the list
   `make test` / `make ascend-model` run; --model-cases quick|full|none), through the four raw operators, against
   the same float64 oracle and tolerances, so the first device run compares against the model's expectations.
4. Timing: fused (ours) vs builtin (ops.flash_attention_score, ops.layer_norm) vs composed, forward and
   forward+backward, printed as a table (and as JSON lines with --json).

Exit status: 0 all checks passed, 1 a check failed, 2 bad arguments, 3 no Ascend environment, 4 build or install
failed.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# the float64 oracles are the package's own (numpy only; importing them loads no MindSpore)
from mindformer_gf.reference.attention import attention_backward, attention_forward
from mindformer_gf.reference.errors import relative_error
from mindformer_gf.reference.normalization import add_layer_norm_backward, add_layer_norm_forward

REPOSITORY = Path(__file__).resolve().parent.parent
ASCEND_PROJECT = REPOSITORY / "kernels" / "ascend"
VENDOR = "mindformer_gf"
MARKER_HEADER = Path("op_api/include/aclnn_gf_flash_attention.h")

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ASCEND, EXIT_BUILD = 0, 1, 2, 3, 4
DEVICE_PATTERN = "/dev/davinci[0-9]*"
CANN_CANDIDATES = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")


# ---- 1. environment ----------------------------------------------------------------------------------------------
def find_cann(environ: Mapping[str, str], candidates: Sequence[str] = CANN_CANDIDATES) -> Path | None:
    """The CANN toolkit root, as kernels/ascend/build.sh looks for it."""
    for value in (environ.get("ASCEND_HOME_PATH"), environ.get("ASCEND_TOOLKIT_HOME"), *candidates):
        if value and (Path(value) / "compiler").is_dir():
            return Path(value)
    return None


def missing_environment(
    environ: Mapping[str, str],
    device_pattern: str = DEVICE_PATTERN,
    cann_candidates: Sequence[str] = CANN_CANDIDATES,
) -> list[str]:
    """What this machine lacks to build and run the Ascend operators (empty: nothing). Imports nothing heavy."""
    problems = []
    if not glob.glob(device_pattern):
        problems.append(
            f"no Ascend NPU: no device file matches {device_pattern} (the NPU driver of an Atlas 800T A2 creates them)"
        )
    if find_cann(environ, cann_candidates) is None:
        looked = ", ".join(["$ASCEND_HOME_PATH", "$ASCEND_TOOLKIT_HOME", *cann_candidates])
        problems.append(f"no CANN toolkit: none of {looked} holds a CANN installation (a 'compiler' directory)")
    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        problems.append("MindSpore is not installed in this Python")
    elif not (Path(next(iter(spec.submodule_search_locations))) / "lib" / "plugin" / "ascend").is_dir():
        problems.append("this MindSpore has no Ascend plugin (mindspore/lib/plugin/ascend)")
    return problems


# ---- 2. build and install ----------------------------------------------------------------------------------------
def build_and_install(cann: Path, install_dir: Path, build_dir: Path) -> Path:
    """Builds the .run package and installs it under install_dir; returns the installed vendor directory."""
    subprocess.run(
        [
            "bash",
            str(ASCEND_PROJECT / "build.sh"),
            "--cann",
            str(cann),
            "--vendor",
            VENDOR,
            "--build-dir",
            str(build_dir),
        ],
        check=True,
    )
    packages = sorted(build_dir.glob("custom_opp_*.run"), key=lambda path: path.stat().st_mtime)
    if not packages:
        raise RuntimeError(f"build.sh produced no custom_opp_*.run in {build_dir}")
    install_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", str(packages[-1]), f"--install-path={install_dir}"], check=True)
    vendor = install_dir / "vendors" / VENDOR
    if not (vendor / MARKER_HEADER).is_file():
        raise RuntimeError(f"the package installed, but {vendor / MARKER_HEADER} is missing")
    return vendor


def environment_with_package(environ: Mapping[str, str], vendor: Path) -> dict[str, str]:
    """`source <vendor>/bin/set_env.bash`: the package first on ASCEND_CUSTOM_OPP_PATH and its aclnn library on
    LD_LIBRARY_PATH."""
    updated = dict(environ)
    for name, value in (("ASCEND_CUSTOM_OPP_PATH", vendor), ("LD_LIBRARY_PATH", vendor / "op_api" / "lib")):
        updated[name] = f"{value}:{environ[name]}" if environ.get(name) else str(value)
    return updated


# ---- 3. checks -----------------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    name: str
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance


# Normwise tolerances for 16-bit inputs (fp32 accumulation): forward, backward.
TOLERANCES = {"float16": (5e-3, 1e-2), "bfloat16": (3e-2, 5e-2), "float32": (1e-5, 1e-4)}


def _ms():
    import mindspore as ms

    return ms


# Every function handed to ms.jit stays referenced: MindSpore caches compiled graphs by the function object, and a
# collected closure's id can come back for the next one, which would then run the old graph.
_COMPILED: list[Callable] = []


def _jit(function: Callable) -> Callable:
    compiled = _ms().jit(function)
    _COMPILED.extend((function, compiled))
    return compiled


def _jit_grad(function: Callable, positions: tuple[int, ...]) -> Callable:
    gradient = _ms().grad(function, grad_position=positions)
    _COMPILED.append(function)
    return _jit(gradient)


def _tensor(array, dtype_name: str):
    ms = _ms()
    return ms.Tensor(array.astype("float32"), ms.float32).astype(getattr(ms, dtype_name))


def _numpy(tensor):
    ms = _ms()
    return tensor.astype(ms.float32).asnumpy().astype("float64")


def _key_mask(lengths: Sequence[int], length: int, holes: float = 0.0, seed: int = 0):
    import numpy as np

    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    if holes > 0:
        mask = mask * (np.random.default_rng(seed).random(mask.shape) >= holes).astype(np.int32)
    return mask


def check_attention(
    name: str,
    implementation: Callable,
    dtype: str,
    shape: tuple[int, int, int, int],
    mask,
    drop: float = 0.0,
    seed: int = 0,
    backward: bool = True,
) -> list[CheckResult]:
    """Forward (and backward) of `implementation` (an attention function of mindformer_gf.ops) against float64."""
    import numpy as np

    from mindformer_gf.reference.attention_dropout import keep_mask, keep_scale

    ms = _ms()
    rng = np.random.default_rng(seed)
    q, k, v, d_out = (rng.standard_normal(shape) for _ in range(4))
    tensors = [_tensor(t, dtype) for t in (q, k, v)]
    q, k, v = (_numpy(t) for t in tensors)  # the values the operator sees
    mask_tensor = ms.Tensor(mask, ms.int32)
    seed_tensor = ms.Tensor([seed], ms.int64)
    training = drop > 0.0
    keep = keep_mask(seed, drop, *shape[:2], shape[2], shape[2]) if training else None
    scale = keep_scale(drop) if training else 1.0
    forward_tolerance, backward_tolerance = TOLERANCES[dtype]

    def attend(query, key, value):
        return implementation(query, key, value, mask_tensor, drop, training, seed_tensor)

    out = _jit(attend)(*tensors)
    expected, _ = attention_forward(q, k, v, mask, keep, scale)
    results = [CheckResult(f"{name}: forward", relative_error(_numpy(out), expected), forward_tolerance)]
    if backward:
        d_out_tensor = _tensor(d_out, dtype)

        def loss(query, key, value):
            return (attend(query, key, value).astype(ms.float32) * d_out_tensor.astype(ms.float32)).sum()

        grads = _jit_grad(loss, (0, 1, 2))(*tensors)
        expected_grads = attention_backward(q, k, v, mask, _numpy(d_out_tensor), keep, scale)
        for label, actual, wanted in zip(("dQ", "dK", "dV"), grads, expected_grads, strict=True):
            results.append(CheckResult(f"{name}: {label}", relative_error(_numpy(actual), wanted), backward_tolerance))
    return results


def check_attention_lse(dtype: str, shape: tuple[int, int, int, int], mask) -> list[CheckResult]:
    """The forward's second output: LSE on rows with keys, 0 (and O = 0) on a cell without any."""
    import numpy as np

    from mindformer_gf.ops import ascend

    ms = _ms()
    tensors = [_tensor(t, dtype) for t in np.random.default_rng(1).standard_normal((3, *shape))]
    out, lse = _jit(lambda q, k, v: ascend.attention_ascend_fused_with_lse(q, k, v, ms.Tensor(mask, ms.int32)))(
        *tensors
    )
    _, expected_lse = attention_forward(*(_numpy(t) for t in tensors), mask)
    empty = ~np.asarray(mask).astype(bool).any(-1)
    lse_error = float(np.abs(lse.asnumpy() - expected_lse).max())
    empty_output = float(np.abs(_numpy(out)[empty]).max()) if empty.any() else 0.0
    return [
        CheckResult("attention LSE (absolute)", lse_error, TOLERANCES[dtype][0] * 10),
        CheckResult("attention, cell without keys: |O|", empty_output, 0.0),
    ]


def check_add_layer_norm(
    name: str, implementation: Callable, dtype: str, rows: tuple[int, int], hidden: int, backward: bool = True
) -> list[CheckResult]:
    import numpy as np

    ms = _ms()
    rng = np.random.default_rng(hidden)
    x, residual, dy = (rng.standard_normal((*rows, hidden)) for _ in range(3))
    weight, bias = 1.0 + 0.1 * rng.standard_normal(hidden), 0.1 * rng.standard_normal(hidden)
    eps = 1e-12
    x_tensor, residual_tensor, dy_tensor = (_tensor(t, dtype) for t in (x, residual, dy))
    weight_tensor, bias_tensor = (ms.Tensor(t.astype("float32")) for t in (weight, bias))
    x, residual, dy = (_numpy(t) for t in (x_tensor, residual_tensor, dy_tensor))
    weight, bias = (t.asnumpy().astype("float64") for t in (weight_tensor, bias_tensor))
    forward_tolerance, backward_tolerance = TOLERANCES[dtype]

    def normalise(a, b, w, c):
        return implementation(a, b, w, c, eps)

    y = _jit(normalise)(x_tensor, residual_tensor, weight_tensor, bias_tensor)
    expected, _, _ = add_layer_norm_forward(x, residual, weight, bias, eps)
    results = [CheckResult(f"{name}: forward", relative_error(_numpy(y), expected), forward_tolerance)]
    if backward:

        def loss(a, b, w, c):
            return (normalise(a, b, w, c).astype(ms.float32) * dy_tensor.astype(ms.float32)).sum()

        grads = _jit_grad(loss, (0, 1, 2, 3))(x_tensor, residual_tensor, weight_tensor, bias_tensor)
        dx, d_weight, d_bias = add_layer_norm_backward(dy, x, residual, weight, eps)
        for label, actual, wanted in zip(
            ("dx", "dresidual", "dweight", "dbias"), grads, (dx, dx, d_weight, d_bias), strict=True
        ):
            results.append(CheckResult(f"{name}: {label}", relative_error(_numpy(actual), wanted), backward_tolerance))
    return results


def run_checks(dtype: str, hidden_sizes: Sequence[int]) -> list[CheckResult]:
    from mindformer_gf.ops import ascend

    fused, builtin = ascend.attention_ascend_fused, ascend.attention_ascend_builtin
    # 200 keys: three key blocks of 128 do not divide it, nor four query blocks of 64.
    padded = _key_mask((200, 131, 1, 0), 200)
    holed = _key_mask((200, 200), 200, holes=0.3, seed=3)
    results = []
    results += check_attention("attention, right-padded cells 200/131/1/0", fused, dtype, (4, 2, 200, 64), padded)
    results += check_attention("attention, mask with holes", fused, dtype, (2, 2, 200, 64), holed)
    results += check_attention("attention, head_dim 128", fused, dtype, (1, 2, 300, 128), _key_mask((300,), 300))
    results += check_attention("attention, dropout 0.1 seed 7", fused, dtype, (2, 2, 160, 64), padded[:2, :160], 0.1, 7)
    results += check_attention_lse(dtype, (4, 2, 200, 64), padded)
    results += check_attention(
        "builtin attention (flash_attention_score)",
        builtin,
        dtype,
        (4, 2, 208, 64),
        _key_mask((208, 131, 1, 0), 208),
        backward=False,
    )
    for hidden in hidden_sizes:
        for rows_dtype in (dtype, "float32"):
            results += check_add_layer_norm(
                f"add+LayerNorm {rows_dtype} hidden {hidden}",
                ascend.add_layer_norm_ascend_fused,
                rows_dtype,
                (3, 37),
                hidden,
            )
    results += check_add_layer_norm(
        "builtin add+LayerNorm", ascend.add_layer_norm_ascend_builtin, dtype, (3, 37), hidden_sizes[0], backward=False
    )
    return results


def run_model_cases(which: str) -> list[CheckResult]:
    """The functional model's cases (tools/ascend_cases.py) on the device: the raw operators get the very buffers
    the model's launch gets (inputs in the kernel's argument order), and each output is held to the same tolerance."""
    import numpy as np

    from mindformer_gf.ops import ascend
    from tools import ascend_cases

    ms = _ms()
    operators = ascend._operators()
    run = {
        "add_layer_norm": operators.add_layer_norm_forward,
        "add_layer_norm_grad": operators.add_layer_norm_backward,
        "flash_attention": operators.attention_forward,
        "flash_attention_grad": operators.attention_backward,
    }
    cases = ascend_cases.quick_cases() if which == "quick" else list(ascend_cases.full_cases())
    results = []
    for case in cases:
        prepared = ascend_cases.prepare(case)
        inputs = []
        for array in prepared.arrays[: min(prepared.outputs)]:
            if array.dtype == np.uint16:  # bf16 bit patterns: exact through float32
                inputs.append(ms.Tensor(ascend_cases.from_bf16_bits(array), ms.float32).astype(ms.bfloat16))
            else:
                inputs.append(ms.Tensor(array))
        outputs = run[case.op](*inputs)
        got = {}
        for name, tensor in zip((prepared.names[i] for i in prepared.outputs), outputs, strict=True):
            values = tensor.astype(ms.float32).asnumpy()
            got[name] = ascend_cases.to_bf16_bits(values) if prepared.output_dtypes[name] == "bf16" else values
        outcome = ascend_cases.compare(case, prepared, got)
        for name, error in outcome.errors.items():
            results.append(CheckResult(f"model case {case.name}: {name}", error, outcome.tolerances[name]))
        if outcome.problems and not outcome.errors:
            results.append(CheckResult(f"model case {case.name}: {'; '.join(outcome.problems)}", 1.0, 0.0))
        for problem in outcome.problems:
            if problem.startswith("census"):
                results.append(CheckResult(f"model case {case.name}: {problem}", 1.0, 0.0))
    return results


# ---- 4. timing -----------------------------------------------------------------------------------------------------
def _synchronize() -> None:
    ms = _ms()
    runtime = getattr(ms, "runtime", None)
    if runtime is not None and hasattr(runtime, "synchronize"):
        runtime.synchronize()
    else:
        ms.hal.synchronize()


def time_call(function: Callable, arguments: Sequence, repeat: int) -> float:
    """Median milliseconds of function(*arguments) over `repeat` runs, after three to compile and warm up."""
    for _ in range(3):
        function(*arguments)
    _synchronize()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function(*arguments)
        _synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


def _attention_runner(function: Callable, mask, drop: float) -> tuple[Callable, Callable]:
    """(forward, loss) closures for timing: training-mode attention with dropout `drop` (free variables, which graph
    mode compiles as constants, rather than default arguments)."""
    ms = _ms()

    def attend(query, key, value):
        return function(query, key, value, mask, drop, True, None)

    def loss(query, key, value):
        return attend(query, key, value).astype(ms.float32).sum()

    return attend, loss


def _layer_norm_runner(function: Callable) -> tuple[Callable, Callable]:
    ms = _ms()

    def normalise(x, residual, weight, bias):
        return function(x, residual, weight, bias, 1e-12)

    def loss(x, residual, weight, bias):
        return normalise(x, residual, weight, bias).astype(ms.float32).sum()

    return normalise, loss


def run_timing(dtype: str, batch: int, heads: int, length: int, head_dim: int, hidden: int, repeat: int) -> list[dict]:
    import numpy as np

    from mindformer_gf.ops import ascend, composed

    ms = _ms()
    rng = np.random.default_rng(0)
    shape = (batch, heads, length, head_dim)
    q, k, v = (_tensor(rng.standard_normal(shape), dtype) for _ in range(3))
    # Cells of 3/4 of the length: the padding a length bucket leaves.
    mask = ms.Tensor(_key_mask([length * 3 // 4] * batch, length), ms.int32)
    x, residual = (_tensor(rng.standard_normal((batch, length, hidden)), dtype) for _ in range(2))
    weight, bias = ms.Tensor(np.ones(hidden, np.float32)), ms.Tensor(np.zeros(hidden, np.float32))

    def composed_attention(query, key, value, key_mask, drop, training, seed):
        return composed.attention(query, key, value, key_mask, drop, training)

    attention = {
        "fused": ascend.attention_ascend_fused,
        "builtin": ascend.attention_ascend_builtin,
        "composed": composed_attention,
    }
    layer_norm = {
        "fused": ascend.add_layer_norm_ascend_fused,
        "builtin": ascend.add_layer_norm_ascend_builtin,
        "composed": composed.add_layer_norm,
    }
    rows = []
    # With and without dropout: the difference is the cost of the vector-unit dropout hash (kernels/ascend/README.md).
    for (impl, function), drop in ((item, drop) for drop in (0.1, 0.0) for item in attention.items()):
        attend, loss = _attention_runner(function, mask, drop)
        rows.append(
            {
                "operation": f"attention B={batch} H={heads} L={length} d={head_dim} (dropout {drop})",
                "impl": impl,
                "forward_ms": time_call(_jit(attend), (q, k, v), repeat),
                "forward_backward_ms": time_call(_jit_grad(loss, (0, 1, 2)), (q, k, v), repeat),
            }
        )
    for impl, function in layer_norm.items():
        normalise, loss = _layer_norm_runner(function)
        arguments = (x, residual, weight, bias)
        rows.append(
            {
                "operation": f"add+LayerNorm [{batch}, {length}, {hidden}]",
                "impl": impl,
                "forward_ms": time_call(_jit(normalise), arguments, repeat),
                "forward_backward_ms": time_call(_jit_grad(loss, (0, 1, 2, 3)), arguments, repeat),
            }
        )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """One line per (operation, impl), with the speed-up of each over the composed path of the same operation."""
    composed = {row["operation"]: row for row in rows if row["impl"] == "composed"}
    header = f"{'operation':<52} {'impl':<9} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd x':>7} {'fwd+bwd x':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        base = composed.get(row["operation"])
        speedup = (
            (base["forward_ms"] / row["forward_ms"], base["forward_backward_ms"] / row["forward_backward_ms"])
            if base
            else (float("nan"), float("nan"))
        )
        lines.append(
            f"{row['operation']:<52} {row['impl']:<9} {row['forward_ms']:>9.3f} {row['forward_backward_ms']:>11.3f} "
            f"{speedup[0]:>7.2f} {speedup[1]:>10.2f}"
        )
    return "\n".join(lines)


# ---- driver --------------------------------------------------------------------------------------------------------
def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-build", action="store_true", help="use the package already on ASCEND_CUSTOM_OPP_PATH")
    parser.add_argument("--cann", type=Path, help="CANN toolkit root (default: found as build.sh finds it)")
    parser.add_argument("--build-dir", type=Path, default=ASCEND_PROJECT / "build_out")
    parser.add_argument("--install-dir", type=Path, default=ASCEND_PROJECT / "build_out" / "installed")
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="bfloat16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1152], help="LayerNorm widths to check")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per measurement")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument(
        "--model-cases",
        choices=("quick", "full", "none"),
        default="quick",
        help="also run the functional model's cases (tools/ascend_cases.py): the make-test subset or the full matrix",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON lines")
    parser.add_argument("--device-id", type=int, default=0)
    return parser.parse_args(argv)


def run_on_device(args: argparse.Namespace) -> int:
    ms = _ms()
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O0"})
    ms.set_device("Ascend", args.device_id)
    from mindformer_gf.ops import ascend

    if not ascend.is_available():
        print(
            f"ascend_selftest: the operator package is not visible to MindSpore: {ascend.INSTALL_HINT}", file=sys.stderr
        )
        return EXIT_BUILD
    results = run_checks(args.dtype, args.hidden)
    if args.model_cases != "none":
        results += run_model_cases(args.model_cases)
    width = max(len(result.name) for result in results)
    for result in results:
        verdict = "ok  " if result.passed else "FAIL"
        print(f"{verdict} {result.name:<{width}}  error {result.error:.3e}  (tolerance {result.tolerance:.1e})")
    failed = [result for result in results if not result.passed]
    print(f"\n{len(results) - len(failed)} of {len(results)} checks passed ({args.dtype})")
    if args.json:
        for result in results:
            print(json.dumps({"check": result.name, "error": result.error, "tolerance": result.tolerance}))
    if not args.skip_timing:
        rows = run_timing(args.dtype, args.batch, args.heads, args.length, args.head_dim, args.hidden[0], args.repeat)
        print()
        print(format_table(rows))
        if args.json:
            for row in rows:
                print(json.dumps(row))
    return EXIT_FAILED if failed else EXIT_PASSED


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    try:
        args = parse_arguments(argv)
    except SystemExit as exit_request:
        return EXIT_USAGE if exit_request.code else EXIT_PASSED

    problems = missing_environment(environ)
    if problems:
        print("ascend_selftest: this machine cannot build or run the Ascend operators:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(
            "It is meant for an Atlas 800T A2 (Ascend 910B) with its NPU driver, CANN and MindSpore's Ascend plugin; "
            "on other machines the CPU kernels (attention_impl='fused' on CPU) are tested by `make test`.",
            file=sys.stderr,
        )
        return EXIT_NO_ASCEND

    if REPOSITORY.as_posix() not in sys.path:
        sys.path.insert(0, REPOSITORY.as_posix())
    if args.skip_build:
        return run_on_device(args)

    cann = args.cann or find_cann(environ)
    try:
        vendor = build_and_install(cann, args.install_dir.resolve(), args.build_dir.resolve())
    except (subprocess.CalledProcessError, RuntimeError) as error:
        print(f"ascend_selftest: build or install failed: {error}", file=sys.stderr)
        return EXIT_BUILD
    child = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv, "--skip-build"],
        env=environment_with_package(environ, vendor),
        check=False,
    )
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
