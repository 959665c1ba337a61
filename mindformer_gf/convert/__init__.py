"""Checkpoint reading and writing: Hugging Face model directories in, MindSpore model directories out (and back).

No PyTorch is needed: safetensors, pytorch_model.bin (zip and legacy formats, read through a restricted unpickler)
and sharded sets are read one tensor at a time.
"""

from mindformer_gf.convert.converter import (
    ConversionReport,
    VerificationError,
    convert,
    convert_to_huggingface,
    convert_to_mindspore,
    verify_conversion,
)
from mindformer_gf.convert.names import NON_PARAMETER_KEYS, to_hf_name, to_model_name
from mindformer_gf.convert.plan import WeightPlan, plan_weights
from mindformer_gf.convert.readers import ModelWeights, open_model_weights
from mindformer_gf.convert.tensors import CheckpointError, TensorInfo

__all__ = [
    "NON_PARAMETER_KEYS",
    "CheckpointError",
    "ConversionReport",
    "ModelWeights",
    "TensorInfo",
    "VerificationError",
    "WeightPlan",
    "convert",
    "convert_to_huggingface",
    "convert_to_mindspore",
    "open_model_weights",
    "plan_weights",
    "to_hf_name",
    "to_model_name",
    "verify_conversion",
]
