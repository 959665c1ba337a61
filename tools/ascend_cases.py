"""The cases the Ascend operators are checked on: shapes, inputs, the float64 oracle and the tolerances.

One list for both places the kernels run: the functional model of the Ascend C API (tools/ascend_model.py, in CI)
and an Atlas machine (tools/ascend_selftest.py --model-cases), so the first device run compares against the same
expectations the model passed.

Oracle: float64 numpy from the plain formulas (mindformer_gf.reference.attention and .normalization: full score
matrices, no tiling, the textbook LayerNorm backward), fed the very inputs the kernel gets (already rounded to the
kernel's dtype), with the dropout keep mask of mindformer_gf.reference.attention_dropout (the specification); the
LayerNorm output is also checked against mindformer_gf.reference.bert's.

Tolerances, normwise (max |got - want| / max |want| per output), from the precision of the data, not tuned: u is the
unit roundoff of the kernel's 16-bit dtype (fp16 2^-11, bf16 2^-8). A 16-bit output passes through at most three
roundings to that dtype on its way (attention: P or dS to the dtype for the cube, the output itself; LayerNorm: the
output), each at most u relative, plus fp32 work far below u: tolerance 4u. fp32 outputs (LSE, mean, rstd, dgamma,
dbeta, every output of the fp32 LayerNorm) come from fp32 sums of at most 4,096 terms, whose error grows like
sqrt(n) 2^-24 <= 2^-18 for random signs; tolerance 2^-16 (4x that). Where an fp32 output depends on 16-bit
intermediates (dgamma from a 16-bit dy: no; LSE: no) nothing changes. Exp, Ln, Sqrt and Div come from libm in the
model (correctly rounded or within 1 ulp); the device's may differ by a few fp32 ulps, far inside these bounds.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mindformer_gf.config import PRESETS
from mindformer_gf.reference import attention_dropout
from mindformer_gf.reference.attention import attention_backward, attention_forward
from mindformer_gf.reference.bert import add_layer_norm
from mindformer_gf.reference.errors import relative_error
from mindformer_gf.reference.normalization import add_layer_norm_backward, add_layer_norm_forward

REPOSITORY = Path(__file__).resolve().parent.parent
OPS = ("add_layer_norm", "add_layer_norm_grad", "flash_attention", "flash_attention_grad")
UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8}
FP32_TOLERANCE = 2.0**-16
EPS = 1e-12


def tolerance(dtype: str, output_dtype: str) -> float:
    """Normwise tolerance of one output: 4u for a 16-bit output, 2^-16 for an fp32 one (see the module doc)."""
    return 4.0 * UNIT_ROUNDOFF[dtype] if output_dtype in UNIT_ROUNDOFF else FP32_TOLERANCE


@dataclass(frozen=True)
class Case:
    """One launch: op, dtype (gf_ops.json column), shape, key mask and dropout."""

    op: str
    dtype: str
    shape: tuple[int, ...]  # LayerNorm (rows, hidden); attention (batch, heads, length, head_dim)
    lengths: tuple[int, ...] = ()  # attention: valid keys per cell, right padding; () = every key valid
    holes: float = 0.0  # attention: fraction of keys masked out at random (a mask that is no prefix)
    drop: float = 0.0
    seed: int = 0
    statistics_gradient: bool = False  # LayerNorm backward: nonzero d_mean, d_rstd
    census: bool = False  # attention forward: Q = K = 0 and one-hot V, so O counts the kept entries exactly
    tags: tuple[str, ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        parts = [self.op, self.dtype, "x".join(map(str, self.shape))]
        if self.lengths:
            parts.append("len" + "-".join(map(str, self.lengths)))
        if self.holes:
            parts.append(f"holes{self.holes:g}")
        if self.drop:
            parts.append(f"drop{self.drop:g}s{self.seed}")
        if self.statistics_gradient:
            parts.append("dstats")
        if self.census:
            parts.append("census")
        return "-".join(parts)


# ---- dtypes ----------------------------------------------------------------------------------------------------------


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """The kernel's GM representation: fp16 as float16, bf16 as uint16 bits, float as float32."""
    if dtype == "fp16":
        return np.ascontiguousarray(np.asarray(x, np.float32).astype(np.float16))
    if dtype == "bf16":
        return np.ascontiguousarray(to_bf16_bits(x))
    return np.ascontiguousarray(np.asarray(x, np.float32))


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return from_bf16_bits(x).astype(np.float64)
    return np.asarray(x, np.float64)


def storage_dtype(dtype: str) -> type:
    return {"fp16": np.float16, "bf16": np.uint16, "float": np.float32}[dtype]


# ---- inputs and expectations ---------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Buffers in the kernel's argument order (inputs then outputs) and what each output should be."""

    names: list[str]
    arrays: list[np.ndarray]
    outputs: list[int]  # indices of the outputs in `arrays`
    expected: dict[str, np.ndarray]
    output_dtypes: dict[str, str]
    keep: np.ndarray | None = None  # attention with dropout: the specification's keep mask


def key_mask(case: Case) -> np.ndarray:
    batch, _, length, _ = case.shape
    lengths = case.lengths or (length,) * batch
    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    if case.holes:
        rng = np.random.default_rng(case.seed + 17)
        mask = mask * (rng.random(mask.shape) >= case.holes).astype(np.int32)
    return np.ascontiguousarray(mask)


def _rng(case: Case) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(case.name.encode()))


def _rounded(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(storage, exact float64 values of the storage)."""
    stored = to_storage(x, dtype)
    return stored, from_storage(stored, dtype)


def prepare(case: Case) -> Prepared:
    rng = _rng(case)
    if case.op in ("add_layer_norm", "add_layer_norm_grad"):
        return _prepare_layer_norm(case, rng)
    return _prepare_attention(case, rng)


def _prepare_layer_norm(case: Case, rng: np.random.Generator) -> Prepared:
    rows, hidden = case.shape
    x, xv = _rounded(rng.standard_normal((rows, hidden)) * 2.0 + 0.5, case.dtype)
    r, rv = _rounded(rng.standard_normal((rows, hidden)), case.dtype)
    weight = (1.0 + 0.3 * rng.standard_normal(hidden)).astype(np.float32)
    bias = (0.2 * rng.standard_normal(hidden)).astype(np.float32)
    y_want, mean, rstd = add_layer_norm_forward(xv, rv, weight.astype(np.float64), bias.astype(np.float64), EPS)
    y_ref = add_layer_norm(xv, rv, weight.astype(np.float64), bias.astype(np.float64), EPS)
    assert np.allclose(y_ref, y_want, rtol=1e-9, atol=1e-9), "the two float64 LayerNorm references disagree"
    nan = storage_dtype(case.dtype)
    if case.op == "add_layer_norm":
        eps = np.array([EPS], np.float32)
        arrays = [x, r, weight, bias, eps, _poison((rows, hidden), nan), _poison(rows), _poison(rows)]
        names = ["x", "residual", "weight", "bias", "eps", "y", "mean", "rstd"]
        expected = {"y": y_want, "mean": mean, "rstd": rstd}
        out_dtypes = {"y": case.dtype, "mean": "float", "rstd": "float"}
        return Prepared(names, arrays, [5, 6, 7], expected, out_dtypes)
    dy, dyv = _rounded(rng.standard_normal((rows, hidden)), case.dtype)
    mean32, rstd32 = mean.astype(np.float32), rstd.astype(np.float32)
    if case.statistics_gradient:
        d_mean = rng.standard_normal(rows).astype(np.float32)
        d_rstd = rng.standard_normal(rows).astype(np.float32)
    else:
        d_mean = np.zeros(rows, np.float32)
        d_rstd = np.zeros(rows, np.float32)
    dx, d_weight, d_bias = add_layer_norm_backward(
        dyv, xv, rv, weight, EPS, d_mean, d_rstd, statistics=(mean32, rstd32)
    )
    arrays = [
        dy,
        x,
        r,
        weight,
        mean32,
        rstd32,
        d_mean,
        d_rstd,
        _poison((rows, hidden), nan),
        _poison(hidden),
        _poison(hidden),
    ]
    names = ["dy", "x", "residual", "weight", "mean", "rstd", "d_mean", "d_rstd", "dx", "d_weight", "d_bias"]
    expected = {"dx": dx, "d_weight": d_weight, "d_bias": d_bias}
    out_dtypes = {"dx": case.dtype, "d_weight": "float", "d_bias": "float"}
    return Prepared(names, arrays, [8, 9, 10], expected, out_dtypes)


def _poison(shape, dtype=np.float32) -> np.ndarray:
    """Outputs start as NaN (all-ones bits for bf16), so whatever the kernel leaves unwritten shows."""
    if dtype == np.uint16:
        return np.full(shape, 0xFFFF, np.uint16)
    return np.full(shape, np.nan, dtype)


def _prepare_attention(case: Case, rng: np.random.Generator) -> Prepared:
    batch, heads, length, head_dim = case.shape
    mask = key_mask(case)
    shape = (batch, heads, length, head_dim)
    if case.census:
        q, qv = _rounded(np.zeros(shape), case.dtype)
        k, kv = _rounded(np.zeros(shape), case.dtype)
        onehot = np.zeros(shape)
        onehot[:, :, np.arange(length), np.arange(length) % head_dim] = 1.0
        v, vv = _rounded(onehot, case.dtype)
    else:
        q, qv = _rounded(rng.standard_normal(shape), case.dtype)
        k, kv = _rounded(rng.standard_normal(shape), case.dtype)
        v, vv = _rounded(rng.standard_normal(shape), case.dtype)
    seed = np.array([case.seed], np.int64)
    drop = np.array([case.drop], np.float32)
    keep = None
    scale = 1.0
    if case.drop > 0:
        keep = attention_dropout.keep_mask(case.seed, case.drop, batch, heads, length, length)
        scale = attention_dropout.keep_scale(case.drop)
    out, lse = attention_forward(qv, kv, vv, mask, keep, scale)
    nan = storage_dtype(case.dtype)
    if case.op == "flash_attention":
        arrays = [q, k, v, mask, seed, drop, _poison(shape, nan), _poison(shape[:3])]
        names = ["query", "key", "value", "key_mask", "seed", "drop_probability", "out", "lse"]
        expected = {"out": out, "lse": lse}
        return Prepared(names, arrays, [6, 7], expected, {"out": case.dtype, "lse": "float"}, keep)
    out_s, out_v = _rounded(out, case.dtype)
    lse32 = lse.astype(np.float32)
    d_out, d_out_v = _rounded(rng.standard_normal(shape), case.dtype)
    d_lse = (0.5 * rng.standard_normal(shape[:3])).astype(np.float32)
    dq, dk, dv = attention_backward(qv, kv, vv, mask, d_out_v, keep, scale, d_lse.astype(np.float64))
    # The kernel takes D = rowsum(dO o O) from the O it is given (rounded to the dtype): the oracle's D is exact, and
    # the difference is the O rounding already counted in the tolerance.
    del out_v
    arrays = [
        q,
        k,
        v,
        mask,
        seed,
        drop,
        out_s,
        lse32,
        d_out,
        d_lse,
        _poison(shape, nan),
        _poison(shape, nan),
        _poison(shape, nan),
    ]
    names = [
        "query",
        "key",
        "value",
        "key_mask",
        "seed",
        "drop_probability",
        "out",
        "lse",
        "d_out",
        "d_lse",
        "d_query",
        "d_key",
        "d_value",
    ]
    # Padding keys (outside a right-padded cell's extent) get exactly zero gradient, as on the CPU.
    expected = {"d_query": dq, "d_key": dk, "d_value": dv}
    dtypes = {"d_query": case.dtype, "d_key": case.dtype, "d_value": case.dtype}
    return Prepared(names, arrays, [10, 11, 12], expected, dtypes, keep)


@dataclass
class Outcome:
    case: Case
    errors: dict[str, float]
    tolerances: dict[str, float]
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def compare(case: Case, prepared: Prepared, results: dict[str, np.ndarray]) -> Outcome:
    """Normwise error of each output against the oracle; NaNs, unwritten outputs and (census) mask counts checked."""
    errors, tolerances, problems = {}, {}, []
    for name, want in prepared.expected.items():
        got = (
            from_storage(results[name], prepared.output_dtypes[name])
            if prepared.output_dtypes[name] == "bf16"
            else (np.asarray(results[name], np.float64))
        )
        tol = tolerance(case.dtype, prepared.output_dtypes[name]) if case.dtype in UNIT_ROUNDOFF else FP32_TOLERANCE
        tolerances[name] = tol
        if not np.all(np.isfinite(got)):
            problems.append(f"{name}: {int(np.sum(~np.isfinite(got)))} non-finite values (unwritten or overflow)")
            errors[name] = float("inf")
            continue
        errors[name] = relative_error(got, want)
        if errors[name] > tol:
            problems.append(f"{name}: normwise error {errors[name]:.3g} > tolerance {tol:.3g}")
    if case.census and "out" in results:
        problems += census_problems(case, prepared, from_storage(results["out"], case.dtype))
    return Outcome(case, errors, tolerances, problems)


def census_problems(case: Case, prepared: Prepared, out: np.ndarray) -> list[str]:
    """With Q = K = 0 and V[j] = e_(j mod d), O[i, c] (1 - p) n = the count of kept keys j = c (mod d) of row i (n
    valid keys): integers, compared exactly with the specification's mask. In bits: for L <= d, O > 0 iff kept."""
    batch, heads, length, head_dim = case.shape
    mask = key_mask(case).astype(bool)
    keep = prepared.keep if prepared.keep is not None else np.ones((batch, heads, length, length), bool)
    problems = []
    for b in range(batch):
        valid = int(mask[b].sum())
        if valid == 0:
            continue
        kept = keep[b] & mask[b][None, None, :]
        want = np.zeros((heads, length, head_dim), np.int64)
        for c in range(head_dim):
            want[:, :, c] = kept[:, :, c::head_dim].sum(-1)
        factor = valid * (1.0 - np.float64(np.float32(case.drop)))
        got = np.rint(out[b] * factor).astype(np.int64)
        bad = int(np.sum(got != want))
        if bad:
            problems.append(f"census: cell {b}: {bad} of {want.size} kept-key counts differ from the specification")
    return problems


# ---- the case lists ----------------------------------------------------------------------------------------------

# Released models, (hidden, heads) from mindformer_gf.config.PRESETS: V1-10M 256 and 4 heads of 64, V2-104M 768 and
# 12, V2-316M 1,152 and 18.
MODELS = {
    name: (PRESETS[f"Geneformer-{name}"]["hidden_size"], PRESETS[f"Geneformer-{name}"]["num_attention_heads"])
    for name in ("V1-10M", "V2-104M", "V2-316M")
}
HEAD_DIM = 64
LENGTHS = (1, 63, 64, 65, 127, 129, 1000, 2048, 4096)
LAYER_NORM_DTYPES = ("fp16", "bf16", "float")
ATTENTION_DTYPES = ("fp16", "bf16")


def full_cases() -> Iterator[Case]:
    """`make ascend-model`: every op, every declared dtype, every released model's widths, every length."""
    seen = set()
    for case in _full_cases():
        if case.name not in seen:
            seen.add(case.name)
            yield case


def _full_cases() -> Iterator[Case]:
    for dtype in LAYER_NORM_DTYPES:
        for hidden, _ in MODELS.values():
            for length in LENGTHS:
                for batch in (1, 3):
                    yield Case("add_layer_norm", dtype, (batch * length, hidden))
                    yield Case("add_layer_norm_grad", dtype, (batch * length, hidden))
            yield Case("add_layer_norm_grad", dtype, (3 * 65, hidden), statistics_gradient=True)
    for dtype in ATTENTION_DTYPES:
        for model, (_, heads) in MODELS.items():
            for length in LENGTHS:
                # Long sequences with all of a model's heads cost minutes each on the model: the larger models run
                # the long lengths with batch 1 and 2 heads (the per-head work is identical; the task split is
                # covered by the shorter lengths with every head).
                many = length <= 1000 or model == "V1-10M"
                head_count = heads if many else 2
                for batch in (1, 3) if length <= 1000 else (1,):
                    lengths = () if batch == 1 else (length, max(1, length * 2 // 3), 0)
                    for op in ("flash_attention", "flash_attention_grad"):
                        yield Case(op, dtype, (batch, head_count, length, HEAD_DIM), lengths)
                        if length == 65 or (length == 1000 and model == "V1-10M"):
                            yield Case(op, dtype, (batch, head_count, length, HEAD_DIM), lengths, drop=0.1, seed=7)
            for op in ("flash_attention", "flash_attention_grad"):
                yield Case(op, dtype, (2, heads, 200, HEAD_DIM), (200, 200), holes=0.3, seed=3)
        yield Case(
            "flash_attention",
            dtype,
            (1, 1, 64, 64),
            drop=threshold_edge_probability(EDGE_SEED),
            seed=EDGE_SEED,
            census=True,
        )
        for length in (64, 129, 1000):
            yield Case(
                "flash_attention",
                dtype,
                (2, 3, length, HEAD_DIM),
                (length, length // 2),
                drop=0.2,
                seed=11,
                census=True,
            )


def threshold_edge_probability(seed: int) -> float:
    """A drop probability whose 24-bit threshold equals word >> 8 of entry P[0, 0, 0, 0] for `seed`: that entry sits
    exactly on the keep test's edge (kept, since the rule is >=), so an off-by-one in the test shows in one count.
    p = v / 2^24 is exact in float32 for v < 2^24."""
    word = attention_dropout.dropout_words(seed, np.uint32(0), np.uint32(0), np.uint32(0))
    edge = int(np.uint32(word) >> np.uint32(8))
    probability = float(np.float32(edge / 2.0**24))
    assert attention_dropout.keep_threshold(probability) == edge
    return probability


EDGE_SEED = 5


def quick_cases() -> list[Case]:
    """`make test`: one case per behaviour (tails, padding, empty cell, holes, dropout, census, every dtype)."""
    return [
        Case("add_layer_norm", "fp16", (3 * 65, 256)),
        Case("add_layer_norm", "bf16", (129, 1152)),
        Case("add_layer_norm", "float", (63, 768)),
        Case("add_layer_norm_grad", "fp16", (3 * 65, 256), statistics_gradient=True),
        Case("add_layer_norm_grad", "bf16", (129, 1152)),
        Case("add_layer_norm_grad", "float", (63, 768)),
        Case("flash_attention", "fp16", (3, 4, 129, 64), (129, 86, 0)),
        Case("flash_attention", "bf16", (1, 4, 65, 64)),
        Case("flash_attention", "fp16", (2, 2, 200, 64), (200, 200), holes=0.3, seed=3),
        Case("flash_attention", "bf16", (2, 2, 129, 64), (129, 64), drop=0.2, seed=11, census=True),
        Case("flash_attention", "fp16", (1, 2, 1, 64)),
        Case(
            "flash_attention",
            "fp16",
            (1, 1, 64, 64),
            drop=threshold_edge_probability(EDGE_SEED),
            seed=EDGE_SEED,
            census=True,
        ),
        Case("add_layer_norm", "fp16", (3000, 256)),
        Case("add_layer_norm_grad", "bf16", (3000, 256)),
        Case("flash_attention_grad", "fp16", (3, 2, 129, 64), (129, 86, 0)),
        Case("flash_attention_grad", "bf16", (1, 2, 65, 64), drop=0.1, seed=7),
        Case("flash_attention_grad", "fp16", (2, 2, 200, 64), (200, 200), holes=0.3, seed=3),
    ]
