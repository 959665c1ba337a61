"""Readers and writers without torch, checked against torch and the safetensors library; untrusted pickles refused."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from helpers.convert import (
    ExecsCode,
    WritesAFile,
    bits,
    hf_model,
    malicious_state_dict_pickle,
    replace_zip_member,
    save,
)
from safetensors.torch import load_file, save_file

from mindformer_gf.convert.dtypes import bfloat16_bits_to_float32, cast, float32_to_bfloat16_bits
from mindformer_gf.convert.readers import open_huggingface_weights
from mindformer_gf.convert.safetensors_io import SafetensorsReader, SafetensorsWriter
from mindformer_gf.convert.tensors import CheckpointError
from mindformer_gf.convert.torch_bin import TorchBinReader
from mindformer_gf.safe_pickle import UnsafePickleError


def awkward_tensors() -> dict[str, torch.Tensor]:
    """Every element type a checkpoint may hold, plus views that are not plain contiguous storages."""
    torch.manual_seed(3)
    base = torch.randn(6, 5)
    return {
        "f32": torch.randn(4, 3),
        "f16": torch.randn(7).half(),
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f64": torch.randn(2, 2).double(),
        "i64": torch.arange(10).reshape(1, 10),
        "transposed": base.t(),  # strides (1, 5)
        "sliced": base[1:4, 2:],  # offset 7 into the storage
        "shared": base,  # same storage as the two views above
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pytorch_bin_reads_every_dtype_and_view_bit_exactly(tmp_path, legacy):
    tensors = awkward_tensors()
    path = tmp_path / "pytorch_model.bin"
    torch.save(tensors, path, _use_new_zipfile_serialization=not legacy)
    with TorchBinReader(path) as reader:
        assert reader.format == ("legacy" if legacy else "zip")
        assert set(reader.tensors) == set(tensors)
        for key, tensor in tensors.items():
            ours = reader.tensors[key].read()
            assert ours.shape == tuple(tensor.shape) and ours.flags.c_contiguous, key
            np.testing.assert_array_equal(ours, bits(tensor), err_msg=key)
            assert ours.dtype == bits(tensor).dtype, key
        # Views of one storage are recognised as such only when they are the same view.
        assert reader.tensors["shared"].identity != reader.tensors["sliced"].identity


def test_a_recompressed_zip_checkpoint_still_reads_bit_exactly(tmp_path):
    tensors = awkward_tensors()
    path = tmp_path / "pytorch_model.bin"
    torch.save(tensors, path)
    with zipfile.ZipFile(path) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name, content in members:
            target.writestr(name, content)
    with TorchBinReader(path) as reader:
        for key, tensor in tensors.items():
            np.testing.assert_array_equal(reader.tensors[key].read(), bits(tensor), err_msg=key)


def test_tied_weights_in_a_bin_share_one_storage_identity(tmp_path):
    model = hf_model("BertForMaskedLM")
    save(model, tmp_path, "bin")
    with open_huggingface_weights(tmp_path) as weights:
        decoder = weights.tensors["cls.predictions.decoder.weight"]
        embeddings = weights.tensors["bert.embeddings.word_embeddings.weight"]
        assert decoder.identity == embeddings.identity
        bias = weights.tensors["cls.predictions.bias"]
        assert weights.tensors["cls.predictions.decoder.bias"].identity == bias.identity


def test_safetensors_reader_matches_the_safetensors_library(tmp_path):
    tensors = {k: v.contiguous() for k, v in awkward_tensors().items() if k not in ("shared", "sliced")}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    with SafetensorsReader(tmp_path / "x.safetensors") as reader:
        assert reader.metadata == {"format": "pt"}
        for key, tensor in tensors.items():
            np.testing.assert_array_equal(reader.tensors[key].read(), bits(tensor), err_msg=key)


def test_safetensors_writer_output_is_read_by_the_safetensors_library(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "a": (rng.standard_normal((3, 4)).astype(np.float32), "F32"),
        "b": (rng.standard_normal(5).astype(np.float16), "F16"),
        "c": (float32_to_bfloat16_bits(rng.standard_normal((2, 3)).astype(np.float32)), "BF16"),
    }
    path = tmp_path / "out.safetensors"
    with SafetensorsWriter(path, [(k, d, a.shape) for k, (a, d) in arrays.items()], {"format": "pt"}) as writer:
        for key, (array, dtype) in arrays.items():
            writer.write(key, array, dtype)
    loaded = load_file(path)
    for key, (array, _) in arrays.items():
        np.testing.assert_array_equal(bits(loaded[key]), array)
    assert loaded["c"].dtype == torch.bfloat16


def test_bfloat16_rounding_matches_torch():
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
            # exact ties between two bfloat16 values, both parities
            bfloat16_bits_to_float32(np.arange(0, 4000, dtype=np.uint16) + 0x3F00) + np.float32(2**-9),
            np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-45, np.nan], np.float32),
        ]
    ).astype(np.float32)
    expected = bits(torch.from_numpy(values).to(torch.bfloat16))
    ours = float32_to_bfloat16_bits(values)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(ours[finite], expected[finite])
    assert np.isnan(bfloat16_bits_to_float32(ours[~finite])).all()


def test_half_precision_widens_exactly_and_narrows_like_torch():
    values = torch.randn(1000)
    half, dtype = cast(values.numpy(), "F32", "F16")
    assert dtype == "F16"
    np.testing.assert_array_equal(half, values.half().numpy())
    widened, _ = cast(bits(values.to(torch.bfloat16)), "BF16", "F32")
    np.testing.assert_array_equal(widened, values.to(torch.bfloat16).float().numpy())


# ---- untrusted pickles ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload_class", [WritesAFile, ExecsCode], ids=["os.system", "builtins.exec"])
def test_a_zip_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, payload_class):
    target = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    torch.save({"x": torch.zeros(2)}, path)
    payload = malicious_state_dict_pickle(payload_class(target))
    replace_zip_member(path, "/data.pkl", payload)
    with pytest.raises(UnsafePickleError, match=r"pytorch_model.bin: refusing to load global (posix|os|builtins)\."):
        TorchBinReader(path)
    assert not target.exists()
    # The same bytes do run code under plain pickle, so the refusal above is what kept the file from appearing.
    pickle.loads(payload)
    assert target.exists()


def test_a_legacy_checkpoint_with_code_in_its_first_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps(WritesAFile(target), protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        TorchBinReader(path)
    assert not target.exists()


def test_a_legacy_checkpoint_with_code_in_its_state_dict_is_refused(tmp_path):
    target = tmp_path / "pwned"
    genuine = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, genuine, _use_new_zipfile_serialization=False)
    stream = io.BytesIO(genuine.getvalue())
    header = b"".join(pickle.dumps(pickle.load(stream), protocol=2) for _ in range(3))
    crafted = header + malicious_state_dict_pickle(WritesAFile(target)) + pickle.dumps([], protocol=2)
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(crafted)
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        TorchBinReader(path)
    assert not target.exists()


def test_a_persistent_id_that_is_not_a_storage_is_refused(tmp_path):
    class Reference:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (("module", "anything"), 0, (1,), (1,), False, None))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("module", "os", "system") if isinstance(obj, tuple) and obj[:1] == ("module",) else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"x": Reference()})
    path = tmp_path / "pytorch_model.bin"
    torch.save({"x": torch.zeros(1)}, path)
    replace_zip_member(path, "/data.pkl", buffer.getvalue())
    with pytest.raises(UnsafePickleError, match="persistent id"):
        TorchBinReader(path)


@pytest.mark.parametrize(
    "global_name", ["torch\nFloatStorage", "torch._utils\n_rebuild_tensor_v2", "collections\nOrderedDict"]
)
@pytest.mark.parametrize(
    "state", [b"}X\x05\x00\x00\x00dtypeX\x03\x00\x00\x00F64s", b"N}X\x0b\x00\x00\x00__defaults__)s\x86"]
)
def test_a_pickle_that_modifies_allow_listed_objects_is_refused_and_changes_nothing(tmp_path, global_name, state):
    # GLOBAL <allowed object>, then BUILD with a __dict__ update or a slot assignment, as a crafted file would.
    crafted = b"\x80\x02c" + global_name.encode() + b"\n" + state + b"b."
    path = tmp_path / "pytorch_model.bin"
    torch.save({"x": torch.zeros(2)}, path)
    replace_zip_member(path, "/data.pkl", crafted)
    with pytest.raises((UnsafePickleError, CheckpointError)):
        TorchBinReader(path)
    genuine = tmp_path / "genuine.bin"
    torch.save({"x": torch.arange(4.0)}, genuine)
    with TorchBinReader(genuine) as reader:
        assert reader.tensors["x"].dtype == "F32"
        np.testing.assert_array_equal(reader.tensors["x"].read(), np.arange(4.0, dtype=np.float32))


# ---- damaged files --------------------------------------------------------------------------------------------
def test_a_truncated_safetensors_file_is_named_as_such(tmp_path):
    save_file({"a": torch.zeros(100)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-40])
    with pytest.raises(CheckpointError, match="a claims bytes 0..400 but the file holds 360 bytes.*truncated"):
        SafetensorsReader(tmp_path / "model.safetensors")


def test_a_safetensors_header_that_is_not_json_is_named_as_such(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 6) + b"{oops}" + b"\0" * 16)
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        SafetensorsReader(tmp_path / "model.safetensors")


def test_a_file_that_is_not_a_pytorch_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(CheckpointError, match="neither a zip archive nor a legacy PyTorch checkpoint"):
        TorchBinReader(tmp_path / "pytorch_model.bin")


def test_a_storage_shorter_than_its_tensor_is_named_as_damaged(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"x": torch.zeros(8)}, path)
    replace_zip_member(path, "/data/0", bytes(12))
    with TorchBinReader(path) as reader, pytest.raises(CheckpointError, match="has 12 bytes, the pickle says 32"):
        reader.tensors["x"].read()


def test_a_tar_format_checkpoint_is_explained(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("pickle")
        archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(CheckpointError, match="tar-format PyTorch checkpoint .PyTorch < 0.4."):
        TorchBinReader(path)
