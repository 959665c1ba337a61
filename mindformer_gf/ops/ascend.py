"""The Ascend backends of `attention` and `add_layer_norm`: this project's Ascend C operators ("fused") and
MindSpore's own fused Ascend operators ("builtin"). Graph mode, device target Ascend (Atlas 800T A2 / 910B).

fused: the four operators of kernels/ascend (GfFlashAttention, GfFlashAttentionGrad, GfAddLayerNorm,
GfAddLayerNormGrad), built by kernels/ascend/build.sh into custom_opp_<os>_<arch>.run and installed either under
$ASCEND_OPP_PATH/vendors/mindformer_gf or in a directory named by ASCEND_CUSTOM_OPP_PATH (kernels/ascend/README.md;
tools/ascend_selftest.py does both). MindSpore calls them through their generated aclnn API with
`ops.Custom(func="<OpName>", func_type="aot", ...)`. Their inputs are the CPU kernels' (mindformer_gf.ops.cpu),
in the same order with the same names, and so is the attention dropout: the same counter-based hash keyed by the
same int64 seed (mindformer_gf.reference.attention_dropout), so a seed drops the same probabilities on both devices.

The operator names, input and output names and dtype columns in `OPERATORS` must be exactly those of the op
definitions (kernels/ascend/op_host/*.cpp, kernels/ascend/gf_ops.json): with any difference MindSpore silently falls
back and then reports no supported kernel. tests/ops/test_ascend_project.py compares them.

Custom operators are in no automatic-mixed-precision list, so the wrappers cast: attention runs in float16 or
bfloat16 (the Cube unit's input types; float32 inputs go in as float16, accumulation and softmax statistics stay
float32), LayerNorm in the input's dtype with float32 parameters and statistics. Outputs come back in the input's
dtype. Shapes are inferred in Python, which serves static shapes (fixed length buckets); dynamic-shape graphs would
need a C++ infer function as the CPU library has.

builtin: `ops.flash_attention_score` (input_layout "BNSD"; its attn_mask marks positions to DISCARD, the opposite of
our key mask; float16/bfloat16 only) and `ops.layer_norm` (aclnnLayerNorm). Its dropout uses MindSpore's own random
bits (DropoutGenMask), not our dropout hash, so `dropout_seed` does not apply to it. Its arguments come from
`flash_attention_options` / `flash_discard_mask` / `flash_drop_mask`; tests/ops/test_builtin_backend.py checks them on
the CPU against MindSpore's own inference of the real operators and an emulation of their documented semantics.

Key masks: any 0/1 pattern gives the composed path's result; a right-padded mask (the Geneformer case) is also the
cheap one, since the kernels then walk only the valid keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import mindspore as ms
from mindspore import ops
from mindspore.ops import CustomRegOp, DataType

from mindformer_gf.ops.dropout_seed import random_seed

VENDOR = "mindformer_gf"
# A header every installed package of ours has (MindSpore reads the aclnn prototypes from it).
MARKER_HEADER = Path("op_api/include/aclnn_gf_flash_attention.h")
INSTALL_HINT = (
    "build and install the Ascend operators first: `python tools/ascend_selftest.py` on the Atlas machine does it, "
    "or kernels/ascend/build.sh followed by `build_out/custom_opp_*.run --install-path=<dir>` and "
    "`source <dir>/vendors/mindformer_gf/bin/set_env.bash`; or choose attention_impl='builtin' or 'composed'"
)


class OperatorsMissing(RuntimeError):
    """The fused Ascend backend was requested but the operator package is not installed."""


@dataclass(frozen=True)
class OperatorSignature:
    """Inputs and outputs of one Ascend C operator as its OpDef declares them.

    `dtype_columns`: one tuple per supported dtype combination, the dtypes of the inputs then of the outputs.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dtype_columns: tuple[tuple[str, ...], ...]


_LETTER_DTYPES = {"i": "int32", "l": "int64", "f": "float32"}
ATTENTION_DTYPES = ("float16", "bfloat16")
ROW_DTYPES = ("float16", "bfloat16", "float32")


def _columns(pattern: str, dtypes: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """One dtype column per T in `dtypes`; pattern letters: T = that dtype, i = int32, l = int64, f = float32."""
    return tuple(tuple(dtype if letter == "T" else _LETTER_DTYPES[letter] for letter in pattern) for dtype in dtypes)


ATTENTION_INPUTS = ("query", "key", "value", "key_mask", "seed", "drop_probability")

OPERATORS: dict[str, OperatorSignature] = {
    signature.name: signature
    for signature in (
        OperatorSignature(
            "GfFlashAttention",
            ATTENTION_INPUTS,
            ("out", "lse"),
            _columns("TTTilf" + "Tf", ATTENTION_DTYPES),
        ),
        OperatorSignature(
            "GfFlashAttentionGrad",
            (*ATTENTION_INPUTS, "out", "lse", "d_out", "d_lse"),
            ("d_query", "d_key", "d_value"),
            _columns("TTTilfTfTf" + "TTT", ATTENTION_DTYPES),
        ),
        OperatorSignature(
            "GfAddLayerNorm",
            ("x", "residual", "weight", "bias", "eps"),
            ("y", "mean", "rstd"),
            _columns("TTfff" + "Tff", ROW_DTYPES),
        ),
        OperatorSignature(
            "GfAddLayerNormGrad",
            ("dy", "x", "residual", "weight", "mean", "rstd", "d_mean", "d_rstd"),
            ("dx", "d_weight", "d_bias"),
            _columns("TTTfffff" + "Tff", ROW_DTYPES),
        ),
    )
}

_REG_DTYPES = {
    "float16": DataType.F16_Default,
    "bfloat16": DataType.BF16_Default,
    "float32": DataType.F32_Default,
    "int32": DataType.I32_Default,
    "int64": DataType.I64_Default,
}


# ---- availability ------------------------------------------------------------------------------------------------
def installed_package(environ: Mapping[str, str] | None = None) -> Path | None:
    """The installed vendor directory of our operators, or None: first ASCEND_CUSTOM_OPP_PATH's entries (what a
    package installed with --install-path adds), then $ASCEND_OPP_PATH/vendors/mindformer_gf (a default install)."""
    environ = os.environ if environ is None else environ
    candidates = [Path(entry) for entry in environ.get("ASCEND_CUSTOM_OPP_PATH", "").split(":") if entry]
    if environ.get("ASCEND_OPP_PATH"):
        candidates.append(Path(environ["ASCEND_OPP_PATH"]) / "vendors" / VENDOR)
    for candidate in candidates:
        if (candidate / MARKER_HEADER).is_file():
            return candidate
    return None


def on_ascend() -> bool:
    return ms.get_context("device_target") == "Ascend"


@cache
def graph_on_ascend() -> bool:
    """`on_ascend()` for code compiled in graph mode, where `ms.get_context` cannot be compiled: a call through the
    cache is evaluated once, at compile time (the device target of a process does not change)."""
    return on_ascend()


def is_available() -> bool:
    """Whether the fused Ascend backend can run here: device target Ascend and our operator package installed."""
    return on_ascend() and installed_package() is not None


def require_available() -> None:
    if not on_ascend():
        raise OperatorsMissing(f"the Ascend operators need device target Ascend, not {ms.get_context('device_target')}")
    if installed_package() is None:
        raise OperatorsMissing(f"the mindformer_gf Ascend operator package is not installed: {INSTALL_HINT}")


# ---- the custom operators ----------------------------------------------------------------------------------------
def reg_info(signature: OperatorSignature) -> dict:
    """MindSpore registration of `signature`: names and dtype columns exactly as in the OpDef."""
    reg = CustomRegOp(signature.name)
    for index, name in enumerate(signature.inputs):
        reg = reg.input(index, name, "required")
    for index, name in enumerate(signature.outputs):
        reg = reg.output(index, name, "required")
    for column in signature.dtype_columns:
        reg = reg.dtype_format(*(_REG_DTYPES[dtype] for dtype in column))
    return reg.target("Ascend").get_op_info()


def _custom(name: str, out_shape, out_dtype, bprop=None) -> ops.Custom:
    return ops.Custom(
        func=name,
        out_shape=out_shape,
        out_dtype=out_dtype,
        func_type="aot",
        bprop=bprop,
        reg_info=reg_info(OPERATORS[name]),
    )


def _attention_bprop(query, key, value, key_mask, seed, drop_probability, out, dout):
    d_query, d_key, d_value = _operators().attention_backward(
        query, key, value, key_mask, seed, drop_probability, out[0], out[1], dout[0], dout[1]
    )
    return d_query, d_key, d_value, ops.zeros_like(key_mask), ops.zeros_like(seed), ops.zeros_like(drop_probability)


def _add_layer_norm_bprop(x, residual, weight, bias, eps, out, dout):
    dx, d_weight, d_bias = _operators().add_layer_norm_backward(
        dout[0], x, residual, weight, out[1], out[2], dout[1], dout[2]
    )
    return dx, dx, d_weight, d_bias, ops.zeros_like(eps)


class _Operators:
    """The four custom operators, created once per process (on an Ascend device only)."""

    def __init__(self) -> None:
        require_available()
        self.attention_forward = _custom(
            "GfFlashAttention",
            lambda query, *_: (query, query[:-1]),
            lambda query, *_: (query, ms.float32),
            _attention_bprop,
        )
        self.attention_backward = _custom(
            "GfFlashAttentionGrad",
            lambda query, key, value, *_: (query, key, value),
            lambda query, *_: (query, query, query),
        )
        self.add_layer_norm_forward = _custom(
            "GfAddLayerNorm",
            lambda x, *_: (x, x[:-1], x[:-1]),
            lambda x, *_: (x, ms.float32, ms.float32),
            _add_layer_norm_bprop,
        )
        self.add_layer_norm_backward = _custom(
            "GfAddLayerNormGrad",
            lambda dy, x, residual, weight, *_: (x, weight, weight),
            lambda dy, x, *_: (x, ms.float32, ms.float32),
        )


@cache
def _operators() -> _Operators:
    return _Operators()


def _cube_dtype(dtype: ms.dtype) -> ms.dtype:
    """The attention operators' input dtype for a tensor of `dtype`: bfloat16 stays, everything else is float16."""
    return ms.bfloat16 if dtype == ms.bfloat16 else ms.float16


def _row_dtype(dtype: ms.dtype) -> ms.dtype:
    return dtype if dtype in (ms.float16, ms.bfloat16, ms.float32) else ms.float32


def _dropout_inputs(dropout_prob: float, training: bool, dropout_seed: ms.Tensor | None) -> tuple[ms.Tensor, ms.Tensor]:
    """(seed [1] int64, drop probability [1] float32) as the fused kernels (CPU and Ascend) take them."""
    if not 0.0 <= dropout_prob < 1.0:
        raise ValueError(f"dropout_prob must be in [0, 1), got {dropout_prob}")
    drop = dropout_prob if training else 0.0
    if drop > 0.0 and dropout_seed is None:
        # The CPU backend's seed source: a fresh seed per call inside the graph, same distribution on both devices.
        dropout_seed = random_seed()
    if dropout_seed is None:
        dropout_seed = ms.Tensor([0], ms.int64)
    return ops.reshape(ops.cast(dropout_seed, ms.int64), (1,)), ms.Tensor([drop], ms.float32)


# ---- fused (our operators) ----------------------------------------------------------------------------------------
def attention_ascend_fused_with_lse(
    query: ms.Tensor,
    key: ms.Tensor,
    value: ms.Tensor,
    attention_mask: ms.Tensor,
    dropout_prob: float = 0.0,
    training: bool = False,
    dropout_seed: ms.Tensor | None = None,
) -> tuple[ms.Tensor, ms.Tensor]:
    """GfFlashAttention: (output in the query's dtype, row log-sum-exp [batch, heads, length] float32)."""
    seed, drop = _dropout_inputs(dropout_prob, training, dropout_seed)
    dtype = query.dtype
    compute = _cube_dtype(dtype)
    key_mask = ops.cast(ops.cast(attention_mask, ms.bool_), ms.int32)
    out, lse = _operators().attention_forward(
        ops.cast(query, compute), ops.cast(key, compute), ops.cast(value, compute), key_mask, seed, drop
    )
    return ops.cast(out, dtype), lse


def attention_ascend_fused(
    query: ms.Tensor,
    key: ms.Tensor,
    value: ms.Tensor,
    attention_mask: ms.Tensor,
    dropout_prob: float = 0.0,
    training: bool = False,
    dropout_seed: ms.Tensor | None = None,
) -> ms.Tensor:
    """softmax(q k^T / sqrt(d) + key mask) v over [batch, heads, length, head_dim] on the Ascend C FlashAttention-2
    operator; the signature and semantics of `mindformer_gf.ops.cpu.attention` (the CPU kernel)."""
    return attention_ascend_fused_with_lse(query, key, value, attention_mask, dropout_prob, training, dropout_seed)[0]


def add_layer_norm_ascend_fused(
    x: ms.Tensor, residual: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float
) -> ms.Tensor:
    """LayerNorm(x + residual) over the last axis on the Ascend C operator, float32 statistics."""
    dtype = x.dtype
    rows = _row_dtype(dtype)
    y, _, _ = _operators().add_layer_norm_forward(
        ops.cast(x, rows),
        ops.cast(residual, rows),
        ops.cast(weight, ms.float32),
        ops.cast(bias, ms.float32),
        ms.Tensor([eps], ms.float32),
    )
    return ops.cast(y, dtype)


def layer_norm_ascend_fused(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float) -> ms.Tensor:
    """LayerNorm without a residual: nothing to fuse, so MindSpore's own aclnnLayerNorm (the builtin path)."""
    return layer_norm_ascend_builtin(x, weight, bias, eps)


# ---- builtin (MindSpore's Ascend operators) -----------------------------------------------------------------------
# The operators are looked up through these module names at graph-compile time, so tests on the CPU (where neither
# has a kernel) can put an emulation with the same signature in their place (tests/ops/test_builtin_backend.py).
flash_attention_score = ops.flash_attention_score
layer_norm_op = ops.layer_norm

# flash_attention_score's documented limits on the head size (D): a multiple of 16, at most 512.
FLASH_HEAD_DIM_MULTIPLE = 16
FLASH_MAX_HEAD_DIM = 512


def flash_attention_options(shape: tuple[int, ...], dropout_prob: float, training: bool) -> dict:
    """The scalar keyword arguments of `flash_attention_score` for [batch, heads, length, head_dim] tensors: head_num,
    keep_prob (1 - dropout_prob in training, 1 otherwise), scalar_value (1/sqrt(head_dim)), input_layout ("BNSD")."""
    if not 0.0 <= dropout_prob < 1.0:
        raise ValueError(f"dropout_prob must be in [0, 1), got {dropout_prob}")
    _, heads, _, head_dim = shape
    if head_dim % FLASH_HEAD_DIM_MULTIPLE or head_dim > FLASH_MAX_HEAD_DIM:
        raise ValueError(
            f"attention_impl 'builtin' (flash_attention_score) needs a head size that is a multiple of "
            f"{FLASH_HEAD_DIM_MULTIPLE} and at most {FLASH_MAX_HEAD_DIM}, got {head_dim}; use 'fused' or 'composed'"
        )
    return {
        "head_num": heads,
        "keep_prob": 1.0 - dropout_prob if training else 1.0,
        "scalar_value": head_dim**-0.5,
        "input_layout": "BNSD",
    }


def flash_discard_mask(attention_mask: ms.Tensor, length: int) -> ms.Tensor:
    """flash_attention_score's attn_mask from our key mask [batch, length] (1 = gene): uint8 [batch, 1, length,
    length] where 1 marks a score to DISCARD (the opposite of our convention), the same for every query row."""
    discard = ops.logical_not(ops.cast(attention_mask, ms.bool_))[:, None, None, :]
    return ops.cast(ops.broadcast_to(discard, (attention_mask.shape[0], 1, length, length)), ms.uint8)


def flash_drop_mask(batch: int, heads: int, length: int, keep_prob: float) -> ms.Tensor | None:
    """flash_attention_score's drop_mask: uint8 bits [batch, heads, length, length / 8] from DropoutGenMask (a bit
    is kept with probability keep_prob), whose output is whole 128-bit words, so the element count must be a
    multiple of 128; None without dropout (keep_prob 1), as the operator requires."""
    if keep_prob >= 1.0:
        return None
    count = batch * heads * length * length
    if length % 8 or count % 128:
        raise ValueError(
            f"the builtin attention's dropout needs length % 8 == 0 and batch*heads*length^2 % 128 == 0, got "
            f"batch={batch}, heads={heads}, length={length}; pad to a bucket of 16 or use attention_impl='fused'"
        )
    bits = _drop_gen_mask()((batch, heads, length, length), ms.Tensor(keep_prob, ms.float32))
    return ops.reshape(bits, (batch, heads, length, length // 8))


@cache
def _drop_gen_mask() -> ops.DropoutGenMask:
    # Created once, outside the graph (a call through the cache is evaluated at compile time).
    return ops.DropoutGenMask()


def attention_ascend_builtin(
    query: ms.Tensor,
    key: ms.Tensor,
    value: ms.Tensor,
    attention_mask: ms.Tensor,
    dropout_prob: float = 0.0,
    training: bool = False,
    dropout_seed: ms.Tensor | None = None,
) -> ms.Tensor:
    """The same attention on MindSpore's `ops.flash_attention_score` (BNSD, float16/bfloat16 inside). `dropout_seed`
    is ignored: the builtin draws its own dropout bits."""
    batch, heads, length, _ = query.shape
    options = flash_attention_options(query.shape, dropout_prob, training)
    dtype = query.dtype
    compute = _cube_dtype(dtype)
    out = flash_attention_score(
        ops.cast(query, compute),
        ops.cast(key, compute),
        ops.cast(value, compute),
        attn_mask=flash_discard_mask(attention_mask, length),
        drop_mask=flash_drop_mask(batch, heads, length, options["keep_prob"]),
        **options,
    )
    # A cell with no valid key attends to nothing and returns 0, as in every other backend. What the operator
    # returns for a row whose every score is discarded is not documented (it may be NaN): select, do not multiply.
    has_keys = (ops.cast(attention_mask, ms.int32).sum(-1) > 0)[:, None, None, None]
    return ops.where(has_keys, ops.cast(out, dtype), ops.zeros((), dtype))


def layer_norm_ascend_builtin(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float) -> ms.Tensor:
    """`ops.layer_norm` (aclnnLayerNorm) over the last axis, parameters in the input's dtype."""
    return layer_norm_op(x, (x.shape[-1],), ops.cast(weight, x.dtype), ops.cast(bias, x.dtype), eps)


def add_layer_norm_ascend_builtin(
    x: ms.Tensor, residual: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float
) -> ms.Tensor:
    """LayerNorm(x + residual) with MindSpore's operators: an Add, then aclnnLayerNorm."""
    return layer_norm_ascend_builtin(x + residual, weight, bias, eps)
