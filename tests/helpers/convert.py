"""Real Hugging Face model directories for the converter tests, written by transformers and torch.save."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
import transformers

from mindformer_gf.convert.dtypes import to_float32
from mindformer_gf.convert.readers import open_huggingface_weights

HF_CLASSES = {
    "BertForMaskedLM": transformers.BertForMaskedLM,
    "BertForSequenceClassification": transformers.BertForSequenceClassification,
    "BertForTokenClassification": transformers.BertForTokenClassification,
    "BertModel": transformers.BertModel,
}
AUTO_CLASSES = {
    "BertForMaskedLM": transformers.AutoModelForMaskedLM,
    "BertForSequenceClassification": transformers.AutoModelForSequenceClassification,
    "BertForTokenClassification": transformers.AutoModelForTokenClassification,
    "BertModel": transformers.AutoModel,
}
COMMON = dict(
    hidden_act="relu",
    layer_norm_eps=1e-12,
    type_vocab_size=2,
    pad_token_id=0,
    hidden_dropout_prob=0.02,
    attention_probs_dropout_prob=0.02,
)
# Shapes that matter for the converter kept (vocabulary, positions); width and depth shrunk for speed.
SHAPES = {
    "small": dict(
        COMMON,
        vocab_size=64,
        max_position_embeddings=64,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        num_hidden_layers=1,
    ),
    "V1": dict(
        COMMON,
        vocab_size=25426,
        max_position_embeddings=2048,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
    ),
    "V2": dict(
        COMMON,
        vocab_size=20275,
        max_position_embeddings=4096,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
    ),
}
LAYOUTS = ("safetensors", "bin", "bin-legacy", "sharded-safetensors", "sharded-bin")


def hf_model(architecture: str, shape: str = "small", num_labels: int = 3, seed: int = 0, dtype=None):
    torch.manual_seed(seed)
    config = transformers.BertConfig(**SHAPES[shape], num_labels=num_labels, architectures=[architecture])
    model = HF_CLASSES[architecture](config).eval()
    # Biases and LayerNorm start at 0/1; random values make a swapped or dropped tensor visible in outputs.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.to(dtype) if dtype is not None else model


def save(model, directory: Path, layout: str = "safetensors", extra: dict | None = None) -> Path:
    """Write `model` as a Hugging Face directory in `layout`; `extra` tensors go into the .bin state dict."""
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(model.state_dict(), **(extra or {}))
    if layout == "safetensors":
        model.save_pretrained(directory)
    elif layout == "sharded-safetensors":
        model.save_pretrained(directory, max_shard_size="10KB")
        assert (directory / "model.safetensors.index.json").is_file()
    else:
        model.config.save_pretrained(directory)
        if layout == "bin":
            torch.save(state, directory / "pytorch_model.bin")
        elif layout == "bin-legacy":
            torch.save(state, directory / "pytorch_model.bin", _use_new_zipfile_serialization=False)
        elif layout == "sharded-bin":
            keys = list(state)
            # Halves in file order: the word embeddings land in the first shard, the tied decoder in the second.
            half = len(keys) // 2
            halves = {"pytorch_model-00001-of-00002.bin": keys[:half], "pytorch_model-00002-of-00002.bin": keys[half:]}
            weight_map = {}
            for file_name, shard_keys in halves.items():
                torch.save({k: state[k] for k in shard_keys}, directory / file_name)
                weight_map.update(dict.fromkeys(shard_keys, file_name))
            index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
            (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
        else:
            raise ValueError(layout)
    return directory


def bits(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's exact stored values as numpy (bfloat16 as its uint16 bit pattern)."""
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def parameters_by_name(model) -> dict[str, torch.Tensor]:
    """The model's parameters under their file keys, without tied copies and buffers."""
    state = model.state_dict()
    return {k: v for k, v in state.items() if not k.startswith("cls.predictions.decoder.") and "position_ids" not in k}


class WritesAFile:
    """Unpickling this runs `touch path`: a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, path: os.PathLike) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class ExecsCode:
    """Unpickling this calls builtins.exec on source that creates a file."""

    def __init__(self, path: os.PathLike) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


def replace_zip_member(path: Path, suffix: str, data: bytes) -> None:
    """Rewrite the zip at `path` with the member ending in `suffix` replaced by `data`."""
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, content in members:
            target.writestr(info, data if info.filename.endswith(suffix) else content)


def malicious_state_dict_pickle(payload) -> bytes:
    return pickle.dumps({"bert.embeddings.word_embeddings.weight": payload}, protocol=2)


def read_state_dict(directory: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face model directory's weights (any layout) by file key, in memory (small models);
    bfloat16 widened to float32."""
    with open_huggingface_weights(directory) as weights:
        return {
            key: to_float32(info.read(), info.dtype) if info.dtype == "BF16" else info.read()
            for key, info in weights.tensors.items()
        }
