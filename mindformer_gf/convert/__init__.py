"""Checkpoint reading and writing: Hugging Face model directories in, MindSpore model directories out (and back)."""

from mindformer_gf.convert.hf import load_hf_weights
from mindformer_gf.convert.names import NON_PARAMETER_KEYS, to_hf_name, to_model_name

__all__ = ["NON_PARAMETER_KEYS", "load_hf_weights", "to_hf_name", "to_model_name"]
