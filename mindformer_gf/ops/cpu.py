"""The fused backend on CPU: this project's kernels (kernels/cpu) as MindSpore custom operators.

The kernels live in one shared library, `mindformer_gf/ops/_cpu_kernels.<python-suffix>.so`, built with the package
(`pip install -e .` or `python setup.py build_ext --inplace`). MindSpore loads it itself through
`ops.Custom(func="<path>:<Function>", func_type="aot")`; shapes are inferred by the library's C++ `<Function>InferShape`
functions, so graph mode with dynamic shapes (`Cell.set_inputs` with `None` dimensions) compiles once.

Each operator has a `bprop` calling the matching backward kernel, so `ms.grad` and training work in graph and
PyNative mode.

Attention dropout runs inside the kernel on the probabilities, from a counter-based hash (mix32 of a row key plus a
column code, see `mindformer_gf.reference.attention_dropout`): the mask is a pure function of (seed, cell, head,
query row, key column), so the backward kernel regenerates it instead of storing it. The seed must differ between
training steps and between layers. `attention(..., dropout_seed=None)` draws a fresh seed inside the graph on every
call (one random op per layer), which needs nothing from the caller; a caller that wants reproducible masks passes an
int64 tensor of shape [1] instead (both 32-bit halves enter the heads' keys); the model derives one per layer from
the step seed it is fed (`mindformer_gf.model.dropout`).

`dropout(x, p, seed)` (HashDropout) drops activations with the same generator, x viewed as [outer, rows, columns]
(`mindformer_gf.reference.dropout.keep_mask`); its backward is the same kernel on the incoming gradient.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path

import mindspore as ms
from mindspore import ops
from mindspore.ops import CustomRegOp, DataType

from mindformer_gf.host import describe_cpu
from mindformer_gf.ops.dropout_seed import random_seed

_LIBRARY_DIR = Path(__file__).resolve().parent
_LIBRARY_GLOB = "_cpu_kernels*.so"

BUILD_HINT = (
    "build them with `pip install -e .` (or `python setup.py build_ext --inplace` in the repository), which needs a "
    "C++17 compiler (g++), or choose attention_impl='composed'"
)


class KernelLibraryMissing(RuntimeError):
    """The fused backend was requested but its native library is not built."""


def library_path() -> Path | None:
    """Path of the built kernel library inside the package, or None when it has not been built."""
    candidates = sorted(_LIBRARY_DIR.glob(_LIBRARY_GLOB))
    return candidates[0] if candidates else None


def is_available() -> bool:
    """Whether the fused CPU kernel library is built (the device check is `dispatch.resolve_impl`'s)."""
    return library_path() is not None


def _require_library() -> Path:
    path = library_path()
    if path is None:
        raise KernelLibraryMissing(
            f"the fused CPU kernels are not built (no {_LIBRARY_DIR / _LIBRARY_GLOB}): {BUILD_HINT}"
        )
    return path


# The tile-kernel tables the library can hold (kernels/cpu/README.md, "Parallelism and instruction sets"): "avx512emu"
# is the AVX-512 algorithm on pairs of AVX2 registers, for testing it on CPUs without AVX-512; "auto" never picks it.
CPU_ISAS = ("avx512", "avx2", "avx512emu", "portable")
_CPU_ISA_VARIABLE = "MINDFORMER_GF_CPU_ISA"


@cache
def native() -> ctypes.CDLL:
    """The library opened with ctypes (the same loaded copy MindSpore uses): ISA and thread controls for tests.

    Raises ValueError (one line) when MINDFORMER_GF_CPU_ISA names an instruction set this CPU or build lacks: the
    library would otherwise quietly run the best available one instead."""
    library = ctypes.CDLL(str(_require_library()))
    library.MindformerGfCpuIsa.restype = ctypes.c_char_p
    library.MindformerGfSetCpuIsa.argtypes = [ctypes.c_char_p]
    library.MindformerGfCpuIsaAvailable.argtypes = [ctypes.c_char_p]
    library.MindformerGfDropoutWords.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_uint64,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
    ]
    library.MindformerGfDropoutColumnCodes.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32]
    library.MindformerGfDropoutFactors.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_uint64,
        ctypes.c_float,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
    ]
    requested = os.environ.get(_CPU_ISA_VARIABLE)
    if requested and requested != "auto" and not library.MindformerGfCpuIsaAvailable(requested.encode()):
        raise ValueError(f"{_CPU_ISA_VARIABLE}={requested}: {_unavailable_reason(requested, library)}")
    return library


def host_cpu() -> str:
    """The CPU's model name (`mindformer_gf.host.describe_cpu`), for messages and reports."""
    return str(describe_cpu()["cpu_model"])


def available_cpu_isas() -> list[str]:
    """The instruction sets (of CPU_ISAS) this build has and this CPU runs, best first."""
    return [name for name in CPU_ISAS if native().MindformerGfCpuIsaAvailable(name.encode())]


def _unavailable_reason(name: str, library: ctypes.CDLL) -> str:
    available = [isa for isa in CPU_ISAS if library.MindformerGfCpuIsaAvailable(isa.encode())]
    problem = "unknown instruction set" if name not in CPU_ISAS else f"not available on this host ({host_cpu()})"
    return f"{problem}; use 'auto' or one of {', '.join(repr(isa) for isa in available)}"


def cpu_isa() -> str:
    """The instruction set the kernels use now: "avx512", "avx2", "avx512emu" or "portable"."""
    return native().MindformerGfCpuIsa().decode()


def set_cpu_isa(name: str) -> None:
    """Switch the kernels to one of CPU_ISAS or "auto" (the best this CPU runs), for the whole process.

    Raises ValueError (one line, naming the host's CPU and the instruction sets it does run) when `name` is unknown
    or unavailable here; the choice is then unchanged."""
    if native().MindformerGfSetCpuIsa(name.encode()) != 0:
        raise ValueError(f"instruction set {name!r}: {_unavailable_reason(name, native())}")


def _float_formats(count: int) -> tuple:
    return (DataType.F32_Default,) * count


def _attention_forward_info(name: str) -> str:
    reg = CustomRegOp(name)
    for index, name in enumerate(("query", "key", "value", "key_mask", "seed", "drop_probability")):
        reg = reg.input(index, name)
    reg = reg.output(0, "out").output(1, "lse")
    formats = _float_formats(3) + (DataType.I32_Default, DataType.I64_Default) + _float_formats(3)
    return reg.dtype_format(*formats).target("CPU").get_op_info()


def _attention_backward_info(name: str) -> str:
    reg = CustomRegOp(name)
    names = ("query", "key", "value", "key_mask", "seed", "drop_probability", "out", "lse", "d_out", "d_lse")
    for index, name in enumerate(names):
        reg = reg.input(index, name)
    reg = reg.output(0, "d_query").output(1, "d_key").output(2, "d_value")
    formats = _float_formats(3) + (DataType.I32_Default, DataType.I64_Default) + _float_formats(5 + 3)
    return reg.dtype_format(*formats).target("CPU").get_op_info()


def _dropout_info(name: str) -> str:
    reg = CustomRegOp(name).input(0, "x").input(1, "seed").input(2, "drop_probability").output(0, "y")
    formats = (DataType.F32_Default, DataType.I64_Default, DataType.F32_Default, DataType.F32_Default)
    return reg.dtype_format(*formats).target("CPU").get_op_info()


def _layer_norm_info(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> str:
    reg = CustomRegOp(name)
    for index, input_name in enumerate(inputs):
        reg = reg.input(index, input_name)
    for index, output_name in enumerate(outputs):
        reg = reg.output(index, output_name)
    return reg.dtype_format(*_float_formats(len(inputs) + len(outputs))).target("CPU").get_op_info()


def _custom(function: str, outputs: int, reg_info: str, bprop=None) -> ops.Custom:
    return ops.Custom(
        f"{_require_library()}:{function}",
        out_shape=None,
        out_dtype=ms.float32 if outputs == 1 else (ms.float32,) * outputs,
        func_type="aot",
        bprop=bprop,
        reg_info=reg_info,
    )


def _attention_input_grads(backward, query, key, value, key_mask, seed, drop_probability, out, dout):
    """The forward's input gradients from `backward` (either layout): dQ, dK, dV, and zeros for the mask, the seed
    and the drop probability, which take no gradient."""
    d_query, d_key, d_value = backward(
        query, key, value, key_mask, seed, drop_probability, out[0], out[1], dout[0], dout[1]
    )
    return d_query, d_key, d_value, ops.zeros_like(key_mask), ops.zeros_like(seed), ops.zeros_like(drop_probability)


def _attention_bprop(query, key, value, key_mask, seed, drop_probability, out, dout):
    return _attention_input_grads(
        _kernels().attention_backward, query, key, value, key_mask, seed, drop_probability, out, dout
    )


def _attention_sequence_major_bprop(query, key, value, key_mask, seed, drop_probability, out, dout):
    return _attention_input_grads(
        _kernels().attention_backward_sequence_major, query, key, value, key_mask, seed, drop_probability, out, dout
    )


def _add_layer_norm_bprop(x, residual, weight, bias, eps, out, dout):
    dx, d_weight, d_bias = _kernels().add_layer_norm_backward(
        dout[0], x, residual, weight, out[1], out[2], dout[1], dout[2]
    )
    return dx, dx, d_weight, d_bias, ops.zeros_like(eps)


def _dropout_bprop(x, seed, drop_probability, out, dout):
    # y = x * factor(seed): the gradient is dy times the same factors, i.e. the same kernel on dy
    return _kernels().dropout(dout, seed, drop_probability), ops.zeros_like(seed), ops.zeros_like(drop_probability)


def _gelu_bprop(x, out, dout):
    return (_kernels().gelu_backward(dout, x),)


def _dense_bprop(x, weight, bias, out, dout):
    return _kernels().dense_backward(dout, x, weight)


def _log_sum_exp_bprop(x, out, dout):
    return (_kernels().log_sum_exp_backward(dout, x, out),)


def _layer_norm_bprop(x, weight, bias, eps, out, dout):
    dx, d_weight, d_bias = _kernels().layer_norm_backward(dout[0], x, weight, out[1], out[2], dout[1], dout[2])
    return dx, d_weight, d_bias, ops.zeros_like(eps)


class _Kernels:
    """The custom operators, created once per process (MindSpore registers each by name)."""

    def __init__(self) -> None:
        native()  # checks MINDFORMER_GF_CPU_ISA before any kernel can run on another instruction set than requested
        # the optimiser step's gradient norm (kernels/cpu/adamw.cc); FusedAdamW is built per parameter count below
        self.flat_grad_norm = _custom("FlatGradNorm", 1, _layer_norm_info("FlatGradNorm", ("grad", "scale"), ("out",)))
        self.attention_forward = _custom(
            "FlashAttentionForward", 2, _attention_forward_info("FlashAttentionForward"), _attention_bprop
        )
        self.attention_backward = _custom(
            "FlashAttentionBackward", 3, _attention_backward_info("FlashAttentionBackward")
        )
        # The same kernels over [batch, length, heads, head_dim]: the projections' own layout, no head transposes.
        self.attention_forward_sequence_major = _custom(
            "FlashAttentionForwardBLHD",
            2,
            _attention_forward_info("FlashAttentionForwardBLHD"),
            _attention_sequence_major_bprop,
        )
        self.attention_backward_sequence_major = _custom(
            "FlashAttentionBackwardBLHD", 3, _attention_backward_info("FlashAttentionBackwardBLHD")
        )
        self.dropout = _custom("HashDropout", 1, _dropout_info("HashDropout"), _dropout_bprop)
        self.dense_forward = _custom(
            "DenseForward", 1, _layer_norm_info("DenseForward", ("x", "weight", "bias"), ("y",)), _dense_bprop
        )
        self.dense_backward = _custom(
            "DenseBackward",
            3,
            _layer_norm_info("DenseBackward", ("dy", "x", "weight"), ("dx", "d_weight", "d_bias")),
        )
        self.log_sum_exp_forward = _custom(
            "LogSumExpForward", 1, _layer_norm_info("LogSumExpForward", ("x",), ("lse",)), _log_sum_exp_bprop
        )
        self.log_sum_exp_backward = _custom(
            "LogSumExpBackward", 1, _layer_norm_info("LogSumExpBackward", ("d_lse", "x", "lse"), ("dx",))
        )
        self.gelu_forward = _custom("GeluForward", 1, _layer_norm_info("GeluForward", ("x",), ("y",)), _gelu_bprop)
        self.gelu_backward = _custom("GeluBackward", 1, _layer_norm_info("GeluBackward", ("dy", "x"), ("dx",)))
        self.add_layer_norm_forward = _custom(
            "AddLayerNormForward",
            3,
            _layer_norm_info("AddLayerNormForward", ("x", "residual", "weight", "bias", "eps"), ("y", "mean", "rstd")),
            _add_layer_norm_bprop,
        )
        self.add_layer_norm_backward = _custom(
            "AddLayerNormBackward",
            3,
            _layer_norm_info(
                "AddLayerNormBackward",
                ("dy", "x", "residual", "weight", "mean", "rstd", "d_mean", "d_rstd"),
                ("dx", "d_weight", "d_bias"),
            ),
        )
        self.layer_norm_forward = _custom(
            "LayerNormForward",
            3,
            _layer_norm_info("LayerNormForward", ("x", "weight", "bias", "eps"), ("y", "mean", "rstd")),
            _layer_norm_bprop,
        )
        self.layer_norm_backward = _custom(
            "LayerNormBackward",
            3,
            _layer_norm_info(
                "LayerNormBackward",
                ("dy", "x", "weight", "mean", "rstd", "d_mean", "d_rstd"),
                ("dx", "d_weight", "d_bias"),
            ),
        )


@cache
def _kernels() -> _Kernels:
    return _Kernels()


@cache
def _fused_adamw(count: int) -> ops.Custom:
    """FusedAdamW over `count` parameters: its registration lists every input, so there is one per count (MindSpore
    keys registrations by the registered name)."""
    inputs = ("grad", "exp_avg", "exp_avg_sq", "hyper", "decays", *(f"param{i}" for i in range(count)))
    return _custom("FusedAdamW", 1, _layer_norm_info(f"FusedAdamW{count}", inputs, ("applied",)))


# Graph mode compiles the functions below into the caller's graph; there a call to the cached factory is resolved
# at compile time like any other Python constant, so the operators are built once, on first use.
# Only ranks are checked here: sizes can be dynamic in graph mode, and a Python test on a dynamic size turns the
# graph into one MindSpore must interpret at run time. The kernels check every size and name what is wrong.
def _check_attention_ranks(
    query: ms.Tensor, key: ms.Tensor, value: ms.Tensor, attention_mask: ms.Tensor, sequence_major: bool
) -> None:
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        layout = "[batch, length, heads, head_dim]" if sequence_major else "[batch, heads, length, head_dim]"
        raise ValueError(
            f"attention: query, key and value must be {layout}, got ranks {query.ndim}, {key.ndim}, {value.ndim}"
        )
    if attention_mask.ndim != 2:
        raise ValueError(f"attention: attention_mask must be [batch, length], got rank {attention_mask.ndim}")


def _check_layer_norm_ranks(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> None:
    if x.ndim < 1 or weight.ndim != 1 or bias.ndim != 1:
        raise ValueError(
            f"layer norm: x needs a feature axis and weight, bias must be vectors, got ranks {x.ndim}, "
            f"{weight.ndim}, {bias.ndim}"
        )


def _float32(x: ms.Tensor) -> ms.Tensor:
    # The dtype is a compile-time constant in graph mode: float32 inputs reach the kernel without a copy.
    return x if x.dtype == ms.float32 else ops.cast(x, ms.float32)


def _like(y: ms.Tensor, dtype) -> ms.Tensor:
    return y if dtype == ms.float32 else ops.cast(y, dtype)


def attention_with_lse(
    query: ms.Tensor,
    key: ms.Tensor,
    value: ms.Tensor,
    attention_mask: ms.Tensor,
    dropout_prob: float = 0.0,
    training: bool = False,
    dropout_seed: ms.Tensor | None = None,
    sequence_major: bool = False,
) -> tuple[ms.Tensor, ms.Tensor]:
    """Fused attention returning (output, row log-sum-exp [batch, heads, length]); see `attention`."""
    if not 0.0 <= dropout_prob < 1.0:
        raise ValueError(f"dropout_prob must be in [0, 1), got {dropout_prob}")
    _check_attention_ranks(query, key, value, attention_mask, sequence_major)
    drop = dropout_prob if training else 0.0
    if drop > 0.0 and dropout_seed is None:
        dropout_seed = random_seed()
    if dropout_seed is None:
        dropout_seed = ms.Tensor([0], ms.int64)
    dtype = query.dtype
    key_mask = ops.cast(ops.cast(attention_mask, ms.bool_), ms.int32)
    forward = _kernels().attention_forward_sequence_major if sequence_major else _kernels().attention_forward
    out, lse = forward(
        _float32(query),
        _float32(key),
        _float32(value),
        key_mask,
        ops.reshape(ops.cast(dropout_seed, ms.int64), (1,)),
        ms.Tensor([drop], ms.float32),
    )
    return _like(out, dtype), lse


def attention(
    query: ms.Tensor,
    key: ms.Tensor,
    value: ms.Tensor,
    attention_mask: ms.Tensor,
    dropout_prob: float = 0.0,
    training: bool = False,
    dropout_seed: ms.Tensor | None = None,
    sequence_major: bool = False,
) -> ms.Tensor:
    """softmax(q k^T / sqrt(d) + key mask) v over [batch, heads, length, head_dim], fused (FlashAttention-2).

    sequence_major: query, key, value and the output are [batch, length, heads, head_dim] instead.

    attention_mask [batch, length]: nonzero = valid key. A row with no valid key returns 0. Computed in float32 (other
    dtypes are cast in and out). In training with dropout_prob > 0 the probabilities are dropped inside the kernel;
    dropout_seed (int64, one element) picks the mask, or a fresh random seed is drawn per call when it is None.
    """
    return attention_with_lse(query, key, value, attention_mask, dropout_prob, training, dropout_seed, sequence_major)[
        0
    ]


def dropout(x: ms.Tensor, drop_probability: float, seed: ms.Tensor) -> ms.Tensor:
    """x * keep / (1 - p) with the keep mask of `mindformer_gf.reference.dropout.keep_mask` for `seed` (int64 [1]):
    the attention kernel's dropout hash over x viewed as [outer, rows, columns]."""
    dtype = x.dtype
    y = _kernels().dropout(
        _float32(x), ops.reshape(ops.cast(seed, ms.int64), (1,)), ms.Tensor([drop_probability], ms.float32)
    )
    return _like(y, dtype)


def flat_grad_norm(grad: ms.Tensor, scale: ms.Tensor) -> ms.Tensor:
    """[norm of grad * scale, 1.0 if every element and the norm are finite else 0.0] for a flat float32 `grad`
    and a float32 [1] `scale`; the sum of squares accumulates in float64. Reads only."""
    return _kernels().flat_grad_norm(grad, scale)


def fused_adamw(
    grad: ms.Tensor, exp_avg: ms.Tensor, exp_avg_sq: ms.Tensor, hyper: ms.Tensor, decays: ms.Tensor, *params
) -> ms.Tensor:
    """AdamW in place over flat float32 buffers and `params` (see kernels/cpu/adamw.cc for `hyper`'s layout): writes
    the parameters and moments where they are, zeroes `grad`, returns [apply flag]. The moments and parameters must
    be the Parameters themselves (MindSpore hands the kernel their storage); nothing later in the graph may read any
    argument expecting its old value."""
    return _fused_adamw(len(params))(grad, exp_avg, exp_avg_sq, hyper, decays, *params)


def add_layer_norm(x: ms.Tensor, residual: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float) -> ms.Tensor:
    """LayerNorm(x + residual) over the last axis in one pass, float32 statistics."""
    _check_layer_norm_ranks(x, weight, bias)
    dtype = x.dtype
    y, _, _ = _kernels().add_layer_norm_forward(
        _float32(x), _float32(residual), _float32(weight), _float32(bias), ms.Tensor([eps], ms.float32)
    )
    return _like(y, dtype)


def layer_norm(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float) -> ms.Tensor:
    """LayerNorm over the last axis, float32 statistics."""
    _check_layer_norm_ranks(x, weight, bias)
    dtype = x.dtype
    y, _, _ = _kernels().layer_norm_forward(_float32(x), _float32(weight), _float32(bias), ms.Tensor([eps], ms.float32))
    return _like(y, dtype)


def gelu(x: ms.Tensor) -> ms.Tensor:
    """Exact GELU x Phi(x) (Phi the standard normal CDF, through erf, not the tanh approximation), computed in
    float32 (other dtypes are cast in and out); its gradient is the GeluBackward kernel."""
    dtype = x.dtype
    return _like(_kernels().gelu_forward(_float32(x)), dtype)


def dense(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
    """x weight^T + bias over x [..., K], weight [N, K], bias [N], in float32 on the tile kernels' GEMM
    (kernels/cpu/dense.cc, forward and backward); other dtypes are cast in and out."""
    dtype = x.dtype
    return _like(_kernels().dense_forward(_float32(x), _float32(weight), _float32(bias)), dtype)


def log_sum_exp(x: ms.Tensor) -> ms.Tensor:
    """log sum exp over the last axis of x [..., C] -> [...], computed in float32 (other dtypes are cast in and
    out); its gradient is the softmax times the incoming gradient (kernels/cpu/log_sum_exp.cc)."""
    dtype = x.dtype
    return _like(_kernels().log_sum_exp_forward(_float32(x)), dtype)
