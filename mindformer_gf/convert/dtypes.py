"""Tensor element types across the formats the converter reads and writes, and exact casts between them.

numpy has no bfloat16, so a bfloat16 tensor travels as its uint16 bit pattern together with the name "BF16";
widening it to float32 is a shift and therefore exact. Type names are the safetensors ones (F32, BF16, ...).
"""

from __future__ import annotations

import numpy as np

# safetensors dtype name -> numpy dtype the bytes are read as (BF16: the raw bit pattern).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

# `--dtype` choices -> dtype name ("keep" keeps each tensor's own).
DTYPE_CHOICES: dict[str, str | None] = {"keep": None, "float32": "F32", "float16": "F16", "bfloat16": "BF16"}

# MindSpore checkpoint `tensor_type` strings <-> our names.
MINDSPORE_TYPE_NAMES: dict[str, str] = {
    "Float64": "F64",
    "Float32": "F32",
    "Float16": "F16",
    "BFloat16": "BF16",
    "Int64": "I64",
    "Int32": "I32",
    "Int16": "I16",
    "Int8": "I8",
    "UInt8": "U8",
    "Bool": "BOOL",
}


def itemsize(dtype: str) -> int:
    return STORAGE_DTYPES[dtype].itemsize


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact: a bfloat16 is the upper half of the float32 with the same value."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Round to nearest, ties to even (what torch's `.to(torch.bfloat16)` does); NaN stays a quiet NaN."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounding_bias = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding_bias) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """The values as float32 (exact for F16 and BF16)."""
    if dtype == "BF16":
        return bfloat16_bits_to_float32(array)
    return np.asarray(array, dtype=np.float32)


def cast(array: np.ndarray, dtype: str, target: str | None) -> tuple[np.ndarray, str]:
    """`array` (stored as `dtype`) converted to `target` (None keeps it), returned with its dtype name."""
    if target is None or target == dtype:
        return array, dtype
    if dtype not in FLOAT_DTYPES or target not in FLOAT_DTYPES:
        raise ValueError(f"cannot cast a {dtype} tensor to {target}: only floating-point tensors are cast")
    if target == "BF16":
        source = array if dtype in ("F32", "F64") else to_float32(array, dtype)
        # float64 goes through float32 and may round twice; no released checkpoint stores float64.
        return float32_to_bfloat16_bits(np.asarray(source, dtype=np.float32)), "BF16"
    widened = to_float32(array, dtype) if dtype == "BF16" else array
    return np.asarray(widened, dtype=STORAGE_DTYPES[target]), target
