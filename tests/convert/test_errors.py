"""Every bad input gets its own message naming the problem and the fix; a failed conversion leaves nothing behind."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.convert import WritesAFile, hf_model, malicious_state_dict_pickle, replace_zip_member, save
from safetensors.torch import load_file, save_file

from mindformer_gf.convert import CheckpointError, convert_to_huggingface, convert_to_mindspore
from mindformer_gf.convert import writer as converter_module
from mindformer_gf.safe_pickle import UnsafePickleError


def edit_config(directory, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name)


@pytest.fixture
def mlm_dir(tmp_path):
    return save(hf_model("BertForMaskedLM", num_labels=2), tmp_path / "hf")


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path, mlm_dir):
    edit_config(mlm_dir, intermediate_size=48)
    with pytest.raises(
        CheckpointError,
        match=r"bert.encoder.layer.0.intermediate.dense.weight: checkpoint shape \(32, 16\) but the config gives "
        r"\(48, 16\)",
    ):
        convert_to_mindspore(mlm_dir, tmp_path / "ms", progress=False)
    assert not (tmp_path / "ms").exists()


def test_a_v1_checkpoint_with_a_v2_config_is_explained(tmp_path):
    source = save(hf_model("BertForMaskedLM", "V1"), tmp_path / "hf")
    edit_config(source, vocab_size=20275)
    with pytest.raises(CheckpointError) as raised:
        convert_to_mindspore(source, tmp_path / "ms", progress=False)
    message = str(raised.value)
    assert "bert.embeddings.word_embeddings.weight: checkpoint shape (25426, 32) but the config gives (20275, 32)" in (
        message
    )
    assert "a V1 vocabulary (25426 tokens) and the config a V2 one (20275)" in message
    assert "V1 and V2 Geneformer models and dictionaries do not mix" in message


def test_a_classifier_with_another_label_count_is_explained(tmp_path):
    source = save(hf_model("BertForSequenceClassification", num_labels=3), tmp_path / "hf")
    edit_config(source, id2label={"0": "a", "1": "b"}, label2id={"a": 0, "b": 1})
    with pytest.raises(CheckpointError, match="classifier has 3 labels; set id2label in config.json"):
        convert_to_mindspore(source, tmp_path / "ms", progress=False)


def test_extra_layers_are_unexpected_keys_named_with_the_layer_count(tmp_path):
    source = save(hf_model("BertForTokenClassification", "V2"), tmp_path / "hf")
    edit_config(source, num_hidden_layers=1)
    with pytest.raises(CheckpointError) as raised:
        convert_to_mindspore(source, tmp_path / "ms", progress=False)
    assert "keys that BertForTokenClassification has no parameter for: ['bert.encoder.layer.1." in str(raised.value)
    assert "The checkpoint has 2 layers and the config num_hidden_layers=1" in str(raised.value)


def test_an_unknown_key_is_named(tmp_path, mlm_dir):
    state = load_file(mlm_dir / "model.safetensors")
    state["bert.encoder.adapter.weight"] = torch.zeros(3)
    save_file(state, mlm_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"has no parameter for: \['bert.encoder.adapter.weight'\]"):
        convert_to_mindspore(mlm_dir, tmp_path / "ms", progress=False)


def test_missing_encoder_weights_are_named_even_with_allow_missing(tmp_path, mlm_dir):
    state = load_file(mlm_dir / "model.safetensors")
    del state["bert.encoder.layer.0.attention.self.key.bias"]
    save_file(state, mlm_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError,
        match=r"the checkpoint lacks parameters of BertForMaskedLM: \['bert.encoder.layer.0.attention.self.key.bias'\]",
    ):
        convert_to_mindspore(mlm_dir, tmp_path / "ms", allow_missing=True, progress=False)


def test_fewer_layers_than_the_config_are_explained(tmp_path, mlm_dir):
    edit_config(mlm_dir, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="The checkpoint has 1 layers and the config num_hidden_layers=3"):
        convert_to_mindspore(mlm_dir, tmp_path / "ms", progress=False)


def test_a_missing_head_needs_allow_missing(tmp_path, mlm_dir):
    with pytest.raises(CheckpointError) as raised:
        convert_to_mindspore(mlm_dir, tmp_path / "ms", architecture="BertForSequenceClassification", progress=False)
    message = str(raised.value)
    assert "no BertForSequenceClassification head" in message and "--allow-missing" in message
    assert "'bert.pooler.dense.weight'" in message and "'classifier.weight'" in message
    assert not (tmp_path / "ms").exists()


def test_a_bare_encoder_cannot_become_a_masked_lm(tmp_path):
    source = save(hf_model("BertModel"), tmp_path / "hf")
    with pytest.raises(CheckpointError, match=r"lacks parameters of BertForMaskedLM: \['cls.predictions"):
        convert_to_mindspore(source, tmp_path / "ms", architecture="BertForMaskedLM", allow_missing=True)


def test_an_untied_decoder_is_refused(tmp_path):
    model = hf_model("BertForMaskedLM")
    state = dict(model.state_dict())
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"].clone() + 1.0
    source = tmp_path / "hf"
    source.mkdir()
    model.config.save_pretrained(source)
    torch.save(state, source / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cls.predictions.decoder.weight differs from .*untied decoder"):
        convert_to_mindspore(source, tmp_path / "ms", progress=False)


def test_a_parameter_given_twice_is_refused(tmp_path, mlm_dir):
    state = load_file(mlm_dir / "model.safetensors")
    state["embeddings.LayerNorm.bias"] = state["bert.embeddings.LayerNorm.bias"].clone()
    save_file(state, mlm_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="are both bert.embeddings.LayerNorm.bias; keep one of them"):
        convert_to_mindspore(mlm_dir, tmp_path / "ms", progress=False)


def test_an_integer_parameter_is_refused(tmp_path, mlm_dir):
    state = load_file(mlm_dir / "model.safetensors")
    state["cls.predictions.bias"] = torch.zeros(64, dtype=torch.int32)
    save_file(state, mlm_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="cls.predictions.bias: element type I32, but parameters are floating"):
        convert_to_mindspore(mlm_dir, tmp_path / "ms", progress=False)


# ---- directories --------------------------------------------------------------------------------------------------
def test_a_directory_without_weights_is_named(tmp_path, mlm_dir):
    (mlm_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no model weights: expected model.safetensors, pytorch_model.bin"):
        convert_to_mindspore(mlm_dir, tmp_path / "ms", progress=False)


def test_a_directory_without_config_is_named(tmp_path, mlm_dir):
    (mlm_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        convert_to_mindspore(mlm_dir, tmp_path / "ms", progress=False)


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json|does not exist"):
        convert_to_mindspore(tmp_path / "nowhere", tmp_path / "ms", progress=False)


def test_directions_are_not_mixed_up(tmp_path, mlm_dir):
    with pytest.raises(CheckpointError, match="already is a Hugging Face model directory.*gf convert SRC DST"):
        convert_to_huggingface(mlm_dir, tmp_path / "back", progress=False)
    empty = tmp_path / "config_only"
    empty.mkdir()
    (empty / "config.json").write_bytes((mlm_dir / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="is not a MindSpore model directory.*gf convert SRC DST"):
        convert_to_huggingface(empty, tmp_path / "back", progress=False)
    convert_to_mindspore(mlm_dir, tmp_path / "ms", progress=False)
    with pytest.raises(CheckpointError, match="is a MindSpore model directory.*--to huggingface"):
        convert_to_mindspore(tmp_path / "ms", tmp_path / "ms2", progress=False)


def test_a_shard_index_naming_an_absent_shard_is_named(tmp_path):
    source = save(hf_model("BertForMaskedLM"), tmp_path / "hf", "sharded-safetensors")
    (source / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"lists shards that are not there: \['model-00002-of-00002"):
        convert_to_mindspore(source, tmp_path / "ms", progress=False)


def test_a_shard_index_pointing_outside_its_directory_is_refused(tmp_path):
    source = save(hf_model("BertForMaskedLM"), tmp_path / "hf", "sharded-safetensors")
    index_path = source / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="names shard files outside its directory.*refusing"):
        convert_to_mindspore(source, tmp_path / "ms", progress=False)


def test_a_shard_index_that_misplaces_a_tensor_is_named(tmp_path):
    source = save(hf_model("BertForMaskedLM"), tmp_path / "hf", "sharded-safetensors")
    index_path = source / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["bert.embeddings.word_embeddings.weight"] = "model-00002-of-00002.safetensors"
    index["weight_map"]["bert.encoder.layer.9.output.dense.weight"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="places tensors in shards that do not hold them"):
        convert_to_mindspore(source, tmp_path / "ms", progress=False)


# ---- safe writes --------------------------------------------------------------------------------------------------
def test_an_existing_destination_is_kept_without_force_and_replaced_with_it(tmp_path, mlm_dir):
    destination = tmp_path / "ms"
    destination.mkdir()
    (destination / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        convert_to_mindspore(mlm_dir, destination, progress=False)
    assert (destination / "precious.txt").read_text() == "keep me"
    convert_to_mindspore(mlm_dir, destination, force=True, progress=False)
    assert sorted(p.name for p in destination.iterdir()) == [
        "config.json",
        "conversion_manifest.json",
        "mindspore_model.ckpt",
    ]
    assert leftovers(tmp_path) == []


def test_a_conversion_failing_halfway_leaves_nothing_and_keeps_the_old_destination(tmp_path):
    source = save(hf_model("BertForMaskedLM"), tmp_path / "hf", "bin")
    # The pickle is intact; one storage is short, which shows only when that tensor is read, mid-conversion.
    replace_zip_member(source / "pytorch_model.bin", "/data/5", bytes(8))
    with pytest.raises(CheckpointError, match="storage .*data/5 has 8 bytes"):
        convert_to_mindspore(source, tmp_path / "ms", progress=False)
    assert not (tmp_path / "ms").exists() and leftovers(tmp_path) == []

    (tmp_path / "ms").mkdir()
    (tmp_path / "ms" / "old.txt").write_text("old")
    with pytest.raises(CheckpointError):
        convert_to_mindspore(source, tmp_path / "ms", force=True, progress=False)
    assert [p.name for p in (tmp_path / "ms").iterdir()] == ["old.txt"] and leftovers(tmp_path) == []


def test_an_interrupted_conversion_leaves_nothing(tmp_path, mlm_dir, monkeypatch):
    real_write = converter_module.MindSporeCheckpointWriter.write
    calls = []

    def interrupted_write(self, name, array, dtype):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(self, name, array, dtype)

    monkeypatch.setattr(converter_module.MindSporeCheckpointWriter, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        convert_to_mindspore(mlm_dir, tmp_path / "ms", progress=False)
    assert len(calls) == 3 and not (tmp_path / "ms").exists() and leftovers(tmp_path) == []


def test_the_source_is_never_the_destination(tmp_path, mlm_dir):
    with pytest.raises(CheckpointError, match="is .inside. the source"):
        convert_to_mindspore(mlm_dir, mlm_dir, force=True, progress=False)
    with pytest.raises(CheckpointError, match="is .inside. the source"):
        convert_to_mindspore(mlm_dir, mlm_dir / "ms", progress=False)
    with pytest.raises(CheckpointError, match="contains the source"):
        convert_to_mindspore(mlm_dir, tmp_path, force=True, progress=False)
    assert (mlm_dir / "model.safetensors").is_file()


def test_a_crafted_checkpoint_is_refused_end_to_end_and_nothing_runs(tmp_path, mlm_dir):
    target = tmp_path / "pwned"
    source = save(hf_model("BertForMaskedLM"), tmp_path / "hf-bin", "bin")
    replace_zip_member(source / "pytorch_model.bin", "/data.pkl", malicious_state_dict_pickle(WritesAFile(target)))
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        convert_to_mindspore(source, tmp_path / "ms", progress=False)
    assert not target.exists() and not (tmp_path / "ms").exists()
