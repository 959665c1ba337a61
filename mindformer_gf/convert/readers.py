"""The weights of a model directory, Hugging Face or MindSpore, as a table of tensors read on demand.

Hugging Face directories hold `model.safetensors`, `pytorch_model.bin`, or a sharded set described by
`model.safetensors.index.json` / `pytorch_model.bin.index.json` (transformers' order of preference). Directories
written by this package hold `mindspore_model.ckpt` or `mindspore_model.safetensors` and `conversion_manifest.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from mindformer_gf.convert.ms_checkpoint import MindSporeCheckpointReader
from mindformer_gf.convert.safetensors_io import SafetensorsReader
from mindformer_gf.convert.tensors import CheckpointError, TensorInfo
from mindformer_gf.convert.torch_bin import TorchBinReader

HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_PYTORCH = "pytorch_model.bin"
HF_PYTORCH_INDEX = "pytorch_model.bin.index.json"
MINDSPORE_WEIGHTS = {"ckpt": "mindspore_model.ckpt", "safetensors": "mindspore_model.safetensors"}
MANIFEST = "conversion_manifest.json"
CONFIG = "config.json"

# File name -> how to read it, in transformers' order of preference.
HF_LAYOUTS = (
    (HF_SAFETENSORS, "safetensors", SafetensorsReader),
    (HF_SAFETENSORS_INDEX, "safetensors (sharded)", SafetensorsReader),
    (HF_PYTORCH, "pytorch", TorchBinReader),
    (HF_PYTORCH_INDEX, "pytorch (sharded)", TorchBinReader),
)


@dataclass
class ModelWeights:
    """The tensors of a model directory by their file names; close it (or use `with`) when done."""

    directory: Path
    kind: str  # "huggingface" or "mindspore"
    format: str
    files: list[str]
    tensors: dict[str, TensorInfo]
    readers: list = field(default_factory=list, repr=False)

    @property
    def nbytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    def close(self) -> None:
        for reader in self.readers:
            reader.close()

    def __enter__(self) -> ModelWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mindspore_weights_file(directory: str | os.PathLike) -> Path | None:
    """The MindSpore weights of a directory written by this package, or None for any other directory."""
    for name in MINDSPORE_WEIGHTS.values():
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def _check_directory(directory: Path) -> None:
    if not directory.exists():
        raise FileNotFoundError(f"{directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; give the model directory (the one holding config.json)")


def open_model_weights(directory: str | os.PathLike) -> ModelWeights:
    """Open whichever weights `directory` holds: MindSpore ones if present, else Hugging Face ones."""
    directory = Path(directory)
    _check_directory(directory)
    if mindspore_weights_file(directory) is not None:
        return open_mindspore_weights(directory)
    return open_huggingface_weights(directory)


def open_mindspore_weights(directory: str | os.PathLike) -> ModelWeights:
    directory = Path(directory)
    _check_directory(directory)
    path = mindspore_weights_file(directory)
    if path is None and any((directory / name).is_file() for name, _, _ in HF_LAYOUTS):
        raise CheckpointError(
            f"{directory} already is a Hugging Face model directory (as gf pretrain writes model/): transformers and "
            "mindformer_gf.from_pretrained load it as it is; `gf convert SRC DST` makes a MindSpore checkpoint of it"
        )
    if path is None:
        raise CheckpointError(
            f"{directory} is not a MindSpore model directory: it has none of {sorted(MINDSPORE_WEIGHTS.values())}. "
            "Convert a Hugging Face directory with `gf convert SRC DST`."
        )
    reader = MindSporeCheckpointReader(path) if path.suffix == ".ckpt" else SafetensorsReader(path)
    return ModelWeights(directory, "mindspore", path.suffix.lstrip("."), [path.name], reader.tensors, [reader])


def open_huggingface_weights(directory: str | os.PathLike) -> ModelWeights:
    directory = Path(directory)
    _check_directory(directory)
    for name, layout, reader_class in HF_LAYOUTS:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            return _open_sharded(directory, name, layout, reader_class)
        reader = reader_class(path)
        layout = f"{layout} ({reader.format})" if isinstance(reader, TorchBinReader) else layout
        return ModelWeights(directory, "huggingface", layout, [name], reader.tensors, [reader])
    if mindspore_weights_file(directory) is not None:
        raise CheckpointError(
            f"{directory} is a MindSpore model directory (written by gf convert), not a Hugging Face one; convert it "
            "back with `gf convert --to huggingface`, or load it with mindformer_gf.from_pretrained"
        )
    present = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(
        f"{directory} holds no model weights: expected {HF_SAFETENSORS}, {HF_PYTORCH}, a sharded set "
        f"({HF_SAFETENSORS_INDEX} or {HF_PYTORCH_INDEX}) or {' / '.join(MINDSPORE_WEIGHTS.values())}; "
        f"found {present[:20]}"
    )


def _open_sharded(directory: Path, index_name: str, layout: str, reader_class) -> ModelWeights:
    try:
        index = json.loads((directory / index_name).read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError, UnicodeDecodeError):
        raise CheckpointError(f"{directory / index_name}: not a shard index (JSON with a weight_map)") from None
    shards = sorted(set(weight_map.values()))
    outside = [s for s in shards if Path(s).name != s or s in ("", ".", "..")]
    if outside:
        raise CheckpointError(f"{index_name} names shard files outside its directory: {outside}; refusing to read them")
    absent = [s for s in shards if not (directory / s).is_file()]
    if absent:
        raise CheckpointError(f"{directory}: {index_name} lists shards that are not there: {absent}")
    readers = []
    tensors: dict[str, TensorInfo] = {}
    try:
        for shard in shards:
            reader = reader_class(directory / shard)
            readers.append(reader)
            for key, info in reader.tensors.items():
                if key in tensors:
                    raise CheckpointError(f"{directory}: {key} is in both {tensors[key].file} and {shard}")
                tensors[key] = info
        misplaced = [k for k, shard in weight_map.items() if k not in tensors or tensors[k].file != shard]
        if misplaced:
            raise CheckpointError(
                f"{directory}: {index_name} places tensors in shards that do not hold them: {misplaced[:10]}"
            )
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return ModelWeights(directory, "huggingface", layout, [index_name, *shards], tensors, readers)


def file_sha256(path: str | os.PathLike, progress: bool = False) -> str:
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with (
        open(path, "rb") as handle,
        tqdm(
            total=size, unit="B", unit_scale=True, desc=f"sha256 {Path(path).name}", disable=not progress, leave=False
        ) as bar,
    ):
        while chunk := handle.read(8 * 2**20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()
