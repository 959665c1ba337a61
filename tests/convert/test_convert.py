"""Hugging Face -> MindSpore -> Hugging Face on real files, checked against MindSpore's own checkpoint loader,
torch's tensors (bit equality) and transformers' outputs."""

from __future__ import annotations

import hashlib
import json

import mindspore as ms
import numpy as np
import pytest
import torch
from helpers.convert import AUTO_CLASSES, HF_CLASSES, LAYOUTS, bits, hf_model, parameters_by_name, save
from safetensors.torch import load_file, save_file

import mindformer_gf
from mindformer_gf.convert import convert_to_huggingface, convert_to_mindspore
from mindformer_gf.convert.readers import open_mindspore_weights
from mindformer_gf.pretrained import save_pretrained


def mindspore_checkpoint(directory) -> dict[str, np.ndarray]:
    """The converted weights as MindSpore's own loader reads them (bfloat16 widened to float32 by MindSpore)."""
    loaded = ms.load_checkpoint(str(directory / "mindspore_model.ckpt"))
    return {k: (v.astype(ms.float32) if v.dtype == ms.bfloat16 else v).asnumpy() for k, v in loaded.items()}


def probe(vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab_size, (3, 21), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


@pytest.mark.parametrize("shape", ["V1", "V2"])
@pytest.mark.parametrize("architecture", sorted(HF_CLASSES))
def test_round_trip_is_bit_exact_and_transformers_gives_the_same_outputs(tmp_path, architecture, shape):
    model = hf_model(architecture, shape)
    source = save(model, tmp_path / "hf")
    report = convert_to_mindspore(source, tmp_path / "ms", progress=False)

    expected = parameters_by_name(model)
    converted = mindspore_checkpoint(tmp_path / "ms")
    assert set(converted) == set(expected)
    for key, tensor in expected.items():
        np.testing.assert_array_equal(converted[key], bits(tensor), err_msg=key)
    assert report.tensor_count == len(expected) and report.architecture == architecture
    assert (tmp_path / "ms" / "config.json").read_bytes() == (source / "config.json").read_bytes()
    manifest = json.loads((tmp_path / "ms" / "conversion_manifest.json").read_text())
    assert manifest["tensor_count"] == len(expected) and manifest["format"] == "ckpt"
    assert manifest["tool_version"] == mindformer_gf.__version__
    for name in ("config.json", "model.safetensors"):
        assert manifest["source"]["sha256"][name] == hashlib.sha256((source / name).read_bytes()).hexdigest()

    convert_to_huggingface(tmp_path / "ms", tmp_path / "back", progress=False)
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert set(back) == set(load_file(source / "model.safetensors"))
    for key, tensor in back.items():
        assert tensor.dtype == expected[key].dtype and torch.equal(tensor, expected[key]), key
    reloaded = AUTO_CLASSES[architecture].from_pretrained(tmp_path / "back").eval()
    assert type(reloaded) is type(model)
    batch = probe(model.config.vocab_size)
    assert torch.equal(outputs(reloaded, batch), outputs(model, batch))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_file_layout_converts_bit_exactly(tmp_path, layout):
    model = hf_model("BertForMaskedLM", num_labels=2, seed=1)
    source = save(model, tmp_path / "hf", layout)
    report = convert_to_mindspore(source, tmp_path / "ms", progress=False)
    converted = mindspore_checkpoint(tmp_path / "ms")
    expected = parameters_by_name(model)
    assert set(converted) == set(expected)
    for key, tensor in expected.items():
        np.testing.assert_array_equal(converted[key], bits(tensor), err_msg=key)
    manifest = json.loads((tmp_path / "ms" / "conversion_manifest.json").read_text())
    assert set(manifest["source"]["sha256"]) == {"config.json"} | {p.name for p in source.iterdir()} - {"config.json"}
    if "bin" in layout:
        # torch.save stores the tied decoder: as the same storage in one file, as an equal copy across shards.
        how = "an equal copy" if layout == "sharded-bin" else "the same storage"
        assert report.skipped["cls.predictions.decoder.weight"] == (
            f"tied to bert.embeddings.word_embeddings.weight ({how})"
        )
    if layout == "bin-legacy":
        assert report.source_format == "pytorch (legacy)"


def test_the_v1_position_ids_buffer_is_skipped_and_reported(tmp_path):
    model = hf_model("BertForMaskedLM", "V1")
    position_ids = torch.arange(2048).reshape(1, 2048)
    source = save(model, tmp_path / "hf", "bin-legacy", extra={"bert.embeddings.position_ids": position_ids})
    report = convert_to_mindspore(source, tmp_path / "ms", progress=False)
    assert report.skipped["bert.embeddings.position_ids"].startswith("buffer arange")
    assert "bert.embeddings.position_ids" not in mindspore_checkpoint(tmp_path / "ms")
    assert any("skipped bert.embeddings.position_ids" in line for line in report.lines())


def test_a_decoder_stored_as_an_equal_copy_in_safetensors_is_accepted(tmp_path):
    model = hf_model("BertForMaskedLM")
    source = save(model, tmp_path / "hf")
    state = load_file(source / "model.safetensors")
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    report = convert_to_mindspore(source, tmp_path / "ms", progress=False)
    assert "equal copy" in report.skipped["cls.predictions.decoder.weight"]


def test_half_precision_sources_are_kept_bit_exactly_or_widened(tmp_path):
    fp16 = hf_model("BertForTokenClassification", dtype=torch.float16)
    source = save(fp16, tmp_path / "hf16")
    convert_to_mindspore(source, tmp_path / "ms16", progress=False)
    loaded = ms.load_checkpoint(str(tmp_path / "ms16" / "mindspore_model.ckpt"))
    for key, tensor in parameters_by_name(fp16).items():
        assert loaded[key].dtype == ms.float16
        np.testing.assert_array_equal(loaded[key].asnumpy(), bits(tensor), err_msg=key)
    convert_to_huggingface(tmp_path / "ms16", tmp_path / "back16", progress=False)
    back = load_file(tmp_path / "back16" / "model.safetensors")
    assert all(back[k].dtype == torch.float16 and torch.equal(back[k], t) for k, t in parameters_by_name(fp16).items())

    bf16 = hf_model("BertForSequenceClassification", dtype=torch.bfloat16)
    source = save(bf16, tmp_path / "hf-bf16", "bin")
    convert_to_mindspore(source, tmp_path / "ms-bf16", progress=False)
    convert_to_mindspore(source, tmp_path / "ms-bf16-f32", dtype="float32", progress=False)
    kept = ms.load_checkpoint(str(tmp_path / "ms-bf16" / "mindspore_model.ckpt"))
    widened = mindspore_checkpoint(tmp_path / "ms-bf16-f32")
    for key, tensor in parameters_by_name(bf16).items():
        assert kept[key].dtype == ms.bfloat16
        np.testing.assert_array_equal(kept[key].astype(ms.float32).asnumpy(), tensor.float().numpy(), err_msg=key)
        assert widened[key].dtype == np.float32
        np.testing.assert_array_equal(widened[key], tensor.float().numpy(), err_msg=key)
    with open_mindspore_weights(tmp_path / "ms-bf16") as weights:
        key = "bert.encoder.layer.0.output.dense.weight"
        np.testing.assert_array_equal(weights.tensors[key].read(), bits(bf16.state_dict()[key]))
    convert_to_huggingface(tmp_path / "ms-bf16", tmp_path / "back-bf16", progress=False)
    back = load_file(tmp_path / "back-bf16" / "model.safetensors")
    assert all(torch.equal(back[k], t) and back[k].dtype == torch.bfloat16 for k, t in parameters_by_name(bf16).items())


def test_narrowing_to_bfloat16_rounds_like_torch(tmp_path):
    model = hf_model("BertModel")
    source = save(model, tmp_path / "hf")
    report = convert_to_mindspore(source, tmp_path / "ms", dtype="bfloat16", format="safetensors", progress=False)
    assert report.dtypes == {"BF16": len(parameters_by_name(model))}
    converted = load_file(tmp_path / "ms" / "mindspore_model.safetensors")
    for key, tensor in parameters_by_name(model).items():
        assert torch.equal(converted[key], tensor.to(torch.bfloat16)), key


def test_safetensors_output_is_read_by_mindspore(tmp_path):
    model = hf_model("BertForSequenceClassification", "V2")
    source = save(model, tmp_path / "hf", "sharded-safetensors")
    convert_to_mindspore(source, tmp_path / "ms", format="safetensors", progress=False)
    assert not (tmp_path / "ms" / "mindspore_model.ckpt").exists()
    loaded = ms.load_checkpoint(str(tmp_path / "ms" / "mindspore_model.safetensors"), format="safetensors")
    for key, tensor in parameters_by_name(model).items():
        np.testing.assert_array_equal(loaded[key].asnumpy(), bits(tensor), err_msg=key)
    convert_to_huggingface(tmp_path / "ms", tmp_path / "back", progress=False)
    reloaded = AUTO_CLASSES["BertForSequenceClassification"].from_pretrained(tmp_path / "back").eval()
    batch = probe(model.config.vocab_size)
    assert torch.equal(outputs(reloaded, batch), outputs(model, batch))


def test_a_classifier_from_a_masked_lm_checkpoint_gets_fresh_heads_reported(tmp_path):
    mlm = hf_model("BertForMaskedLM", "V2")
    source = save(mlm, tmp_path / "hf", "bin")
    report = convert_to_mindspore(
        source,
        tmp_path / "ms",
        architecture="BertForSequenceClassification",
        num_labels=3,
        allow_missing=True,
        seed=7,
        progress=False,
    )
    fresh = ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias", "classifier.weight"]
    assert sorted(report.fresh) == fresh
    assert sorted(report.dropped) == sorted(k for k in mlm.state_dict() if k.startswith("cls."))
    manifest = json.loads((tmp_path / "ms" / "conversion_manifest.json").read_text())
    assert sorted(manifest["initialised_fresh"]) == fresh and manifest["fresh_seed"] == 7
    config = json.loads((tmp_path / "ms" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 3

    model = mindformer_gf.from_pretrained(tmp_path / "ms")
    assert type(model).__name__ == "BertForSequenceClassification"
    state = model.state_dict()
    assert state["classifier.weight"].shape == (3, 32) and state["classifier.weight"].std() > 0
    for key, tensor in parameters_by_name(mlm).items():
        if not key.startswith("cls."):
            np.testing.assert_array_equal(state[key], bits(tensor), err_msg=key)


def test_a_classifier_converted_to_a_bare_encoder_drops_its_head_and_keeps_its_outputs(tmp_path):
    classifier = hf_model("BertForSequenceClassification")
    source = save(classifier, tmp_path / "hf")
    report = convert_to_mindspore(source, tmp_path / "ms", architecture="BertModel", progress=False)
    assert report.dropped == ["classifier.bias", "classifier.weight"]
    assert all(not key.startswith("bert.") for key in mindspore_checkpoint(tmp_path / "ms"))
    convert_to_huggingface(tmp_path / "ms", tmp_path / "back", progress=False)
    encoder = AUTO_CLASSES["BertModel"].from_pretrained(tmp_path / "back").eval()
    batch = probe(classifier.config.vocab_size)
    assert torch.equal(outputs(encoder, batch), outputs(classifier.bert, batch))


def test_from_pretrained_takes_hugging_face_and_converted_directories_alike(tmp_path):
    model = hf_model("BertForTokenClassification", "V1")
    source = save(model, tmp_path / "hf", "bin")
    convert_to_mindspore(source, tmp_path / "ms", progress=False)
    from_hf = mindformer_gf.from_pretrained(source).state_dict()
    from_ms = mindformer_gf.from_pretrained(tmp_path / "ms").state_dict()
    expected = parameters_by_name(model)
    assert set(from_hf) == set(from_ms) == set(expected)
    for key, tensor in expected.items():
        np.testing.assert_array_equal(from_hf[key], bits(tensor), err_msg=key)
        np.testing.assert_array_equal(from_ms[key], bits(tensor), err_msg=key)


def test_save_pretrained_writes_a_directory_that_goes_back_to_transformers(tmp_path):
    model = hf_model("BertForMaskedLM")
    ours = mindformer_gf.from_pretrained(save(model, tmp_path / "hf"))
    save_pretrained(ours, tmp_path / "saved")
    convert_to_huggingface(tmp_path / "saved", tmp_path / "back", progress=False)
    reloaded = AUTO_CLASSES["BertForMaskedLM"].from_pretrained(tmp_path / "back").eval()
    batch = probe(model.config.vocab_size)
    assert torch.equal(outputs(reloaded, batch), outputs(model, batch))


@pytest.mark.parametrize("architecture", ["BertForMaskedLM", "BertForSequenceClassification"])
def test_verify_compares_the_converted_model_with_the_reference(tmp_path, architecture):
    source = save(hf_model(architecture, "V2"), tmp_path / "hf")
    report = convert_to_mindspore(source, tmp_path / "ms", verify=True, progress=False)
    assert report.max_relative_difference is not None and report.max_relative_difference < 1e-4
    assert any("verify: largest difference" in line for line in report.lines())
