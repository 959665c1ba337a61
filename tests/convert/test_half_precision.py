"""bf16 and fp16 weights through every file we write (.ckpt, safetensors, the Hugging Face export), read back by
MindSpore's own `load_checkpoint`, by `from_pretrained` and by transformers, compared with torch's own cast of the
same float32 weights (the independent oracle: round to nearest even)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch
from helpers.convert import AUTO_CLASSES, hf_model, parameters_by_name, save

import mindformer_gf
from mindformer_gf.convert import convert_to_huggingface, convert_to_mindspore
from mindformer_gf.pretrained import save_pretrained

HALF = {"float16": (torch.float16, ms.float16), "bfloat16": (torch.bfloat16, ms.bfloat16)}
WEIGHTS_FILE = {"ckpt": "mindspore_model.ckpt", "safetensors": "mindspore_model.safetensors"}


def widened(tensor: torch.Tensor) -> np.ndarray:
    """The exact float32 value of a half-precision tensor."""
    return tensor.float().numpy()


@pytest.mark.parametrize("file_format", sorted(WEIGHTS_FILE))
@pytest.mark.parametrize("dtype", sorted(HALF))
def test_half_precision_weights_load_in_mindspore_from_pretrained_and_transformers(tmp_path, dtype, file_format):
    torch_dtype, ms_dtype = HALF[dtype]
    model = hf_model("BertForMaskedLM")
    expected = {key: tensor.to(torch_dtype) for key, tensor in parameters_by_name(model).items()}

    converted = tmp_path / "ms"
    convert_to_mindspore(save(model, tmp_path / "hf"), converted, dtype=dtype, format=file_format, progress=False)
    # MindSpore's own loader (under numpy 2 it refused bf16 safetensors: the reason numpy is pinned below 2)
    loaded = ms.load_checkpoint(str(converted / WEIGHTS_FILE[file_format]), format=file_format)
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert loaded[key].dtype == ms_dtype, key
        np.testing.assert_array_equal(loaded[key].astype(ms.float32).asnumpy(), widened(tensor), err_msg=key)

    ours = mindformer_gf.from_pretrained(converted)
    state = ours.state_dict()
    for key, tensor in expected.items():
        np.testing.assert_array_equal(state[key], widened(tensor), err_msg=key)

    # save_pretrained writes the same dtype again, and the Hugging Face export keeps it for transformers
    resaved = save_pretrained(ours, tmp_path / "resaved", format=file_format, dtype=dtype)
    convert_to_huggingface(resaved, tmp_path / "back", progress=False)
    reloaded = AUTO_CLASSES["BertForMaskedLM"].from_pretrained(tmp_path / "back", dtype="auto")
    back = parameters_by_name(reloaded)
    for key, tensor in expected.items():
        assert back[key].dtype == torch_dtype, key
        assert torch.equal(back[key], tensor), key
    state = mindformer_gf.from_pretrained(tmp_path / "back").state_dict()
    for key, tensor in expected.items():
        np.testing.assert_array_equal(state[key], widened(tensor), err_msg=key)
