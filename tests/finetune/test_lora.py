"""LoRA (strategy "lora") against independent oracles: the merged weight against W + (alpha / r) B A computed in
numpy, the unmerged model's logits against peft's on the same weights, its dropout against the numpy dropout
specification, and the adapters peft loads from what we save (and the other way round in tests/convert)."""

from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
from helpers.convert import SHAPES
from mindspore import Tensor

from mindformer_gf.finetune.lora import LoraSettings, lora_layers, merged_state_dict
from mindformer_gf.finetune.task_model import apply_strategy, parameter_counts
from mindformer_gf.pretrained import from_pretrained
from mindformer_gf.reference import dropout as ref

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

R, ALPHA = 4, 8.0
TARGETS = ("query", "key", "value", "dense")
PROJECTIONS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def save_hf_classifier(directory, architecture: str = "BertForSequenceClassification"):
    """A two-layer transformers classifier (3 labels) with random weights, saved."""
    torch.manual_seed(5)
    config = transformers.BertConfig(**{**SHAPES["small"], "num_hidden_layers": 2}, num_labels=3)
    getattr(transformers, architecture)(config).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_classifier_dir(tmp_path_factory):
    return save_hf_classifier(tmp_path_factory.mktemp("hf") / "classifier")


def lora_model(directory, seed: int = 0, dropout: float = 0.1, architecture: str = "BertForSequenceClassification"):
    """Our classifier from `directory` with LoRA (r 4, alpha 8) whose A and B are both random (B starts at zero,
    which would hide a wrong B)."""
    model = from_pretrained(directory, architecture)
    apply_strategy(model, "lora", lora=LoraSettings(R, ALPHA, dropout, TARGETS), seed=seed)
    rng = np.random.default_rng(seed)
    weights = model.state_dict()
    for key in weights:
        if ".lora_B." in key:
            weights[key] = rng.normal(0, 0.2, weights[key].shape).astype(np.float32)
    model.load_weights(weights)
    model.set_train(False)
    return model


def peft_model(hf_dir, ours, targets=TARGETS, layers=(0, 1), architecture="BertForSequenceClassification"):
    """peft's LoRA on transformers' model of `hf_dir`, with our adapters' values copied in."""
    base = getattr(transformers, architecture).from_pretrained(hf_dir).eval()
    config = peft.LoraConfig(
        r=R, lora_alpha=ALPHA, lora_dropout=0.1, target_modules=list(targets), layers_to_transform=list(layers)
    )
    model = peft.get_peft_model(base, config).eval()
    state = ours.state_dict()
    copied = 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                ours_name = name.replace("base_model.model.", "").replace(".default.", ".")
                parameter.copy_(torch.from_numpy(state[ours_name]))
                copied += 1
    assert copied == len([k for k in state if ".lora_" in k])
    return model


def test_lora_wraps_every_projection_of_every_layer_and_freezes_the_base(hf_classifier_dir):
    model = lora_model(hf_classifier_dir)
    expected = {f"bert.encoder.layer.{i}.{p}" for i in range(2) for p in PROJECTIONS}
    assert set(lora_layers(model)) == expected  # not the pooler: it is part of the head
    for name, parameter in model.parameters_and_names():
        trains = ".lora_" in name or name.startswith(("classifier.", "bert.pooler."))
        assert parameter.requires_grad == trains, name
    counts = parameter_counts(model)
    hidden, inner = SHAPES["small"]["hidden_size"], SHAPES["small"]["intermediate_size"]
    per_layer = 4 * R * (hidden + hidden) + R * (hidden + inner) + R * (inner + hidden)
    assert counts["trainable_adapters"] == 2 * per_layer
    assert counts["trainable_encoder"] == 0


def test_merged_weight_is_w_plus_alpha_over_r_b_a(hf_classifier_dir):
    model = lora_model(hf_classifier_dir)
    state = model.state_dict()
    merged = merged_state_dict(model)
    assert not [k for k in merged if ".lora_" in k]
    for name in lora_layers(model):
        w = state[f"{name}.weight"].astype(np.float64)
        a = state[f"{name}.lora_A.weight"].astype(np.float64)
        b = state[f"{name}.lora_B.weight"].astype(np.float64)
        assert a.shape == (R, w.shape[1]) and b.shape == (w.shape[0], R)
        expected = w + (ALPHA / R) * (b @ a)
        assert np.abs(expected - w).max() > 1e-2  # the update is not negligible
        np.testing.assert_allclose(merged[f"{name}.weight"], expected, rtol=1e-6, atol=1e-6, err_msg=name)
    for key, value in merged.items():
        if not key.endswith(".weight") or key[: -len(".weight")] not in lora_layers(model):
            np.testing.assert_array_equal(value, state[key], err_msg=key)


@pytest.mark.parametrize("architecture", ["BertForSequenceClassification", "BertForTokenClassification"])
def test_unmerged_and_merged_forward_equal_peft(tmp_path, make_batch, architecture):
    hf_dir = save_hf_classifier(tmp_path / "hf", architecture)
    ours = lora_model(hf_dir, seed=3, architecture=architecture)
    theirs = peft_model(hf_dir, ours, architecture=architecture)
    ids, mask = make_batch([30, 17, 5], SHAPES["small"]["vocab_size"], seed=1)
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    got = ours(Tensor(ids), Tensor(mask))[0].asnumpy()
    plain = from_pretrained(hf_dir, architecture)(Tensor(ids), Tensor(mask))[0]
    assert np.abs(expected.numpy() - plain.asnumpy()).max() > 1e-3  # the adapters change the output
    valid = mask.astype(bool) if got.ndim == 3 else slice(None)  # per-gene logits: the genes, not the padding
    np.testing.assert_allclose(got[valid], expected.numpy()[valid], rtol=1e-4, atol=2e-5)

    merged_model = from_pretrained(hf_dir, architecture)
    merged_model.load_weights(merged_state_dict(ours))
    merged_theirs = theirs.merge_and_unload()
    for name, parameter in merged_theirs.named_parameters():
        np.testing.assert_allclose(
            merged_state_dict(ours)[name], parameter.detach().numpy(), rtol=1e-6, atol=1e-6, err_msg=name
        )
    merged_logits = merged_model(Tensor(ids), Tensor(mask))[0].asnumpy()
    np.testing.assert_allclose(merged_logits[valid], got[valid], rtol=1e-4, atol=2e-5)


def test_lora_dropout_is_on_the_adapter_input_with_the_specified_mask(hf_classifier_dir):
    p = 0.25
    model = lora_model(hf_classifier_dir, seed=2, dropout=p)
    cell = lora_layers(model)["bert.encoder.layer.1.attention.self.value"]
    cell.set_train(True)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 9, SHAPES["small"]["hidden_size"])).astype(np.float32)
    step_seed = ref.step_seed(7, 3, 0)
    got = cell(Tensor(x), Tensor([step_seed], ms.int64)).asnumpy()
    w, b = cell.weight.asnumpy().astype(np.float64), cell.bias.asnumpy().astype(np.float64)
    a, bb = cell.lora_A.weight.asnumpy().astype(np.float64), cell.lora_B.weight.asnumpy().astype(np.float64)
    site = ref.site_seed(step_seed, 1, "lora", code=ref.lora_site_code(1, "attention.self.value"))
    dropped = ref.dropout(x, p, site).astype(np.float64)
    expected = x @ w.T + b + (ALPHA / R) * (dropped @ a.T @ bb.T)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the base projection sees the whole input: without dropout the result differs
    undropped = x @ w.T + b + (ALPHA / R) * (x @ a.T @ bb.T)
    assert np.abs(undropped - expected).max() > 1e-3
    cell.set_train(False)


def test_settings_reach_the_strategy_and_bad_values_are_refused():
    from mindformer_gf.finetune.fit import FineTuneSettings

    settings = FineTuneSettings(
        strategy="lora", lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_target_modules="query,value"
    )
    assert settings.lora == LoraSettings(8, 16.0, 0.0, ("query", "value"))
    defaults = FineTuneSettings().lora
    assert (defaults.r, defaults.alpha, defaults.dropout, defaults.target_modules) == (64, 128.0, 0.1, TARGETS)
    for bad, message in (
        ({"lora_r": 0}, "lora_r"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_target_modules": ()}, "lora_target_modules"),
    ):
        with pytest.raises(ValueError, match=message):
            FineTuneSettings(strategy="lora", **bad).validate()


def test_an_unknown_target_module_is_refused(hf_classifier_dir):
    model = from_pretrained(hf_classifier_dir, "BertForSequenceClassification")
    with pytest.raises(ValueError, match=r"\['qkv'\] name no projection"):
        apply_strategy(model, "lora", lora=LoraSettings(R, ALPHA, 0.1, ("query", "qkv")))


def test_multitask_model_with_lora_saves_merged_and_reloads_with_the_same_outputs(
    hf_classifier_dir, tmp_path, make_batch
):
    from mindformer_gf.finetune.task_model import MultitaskModel, load_task_model, save_task_model

    encoder = from_pretrained(hf_classifier_dir, "BertModel")
    model = MultitaskModel(encoder, [3, 2], "attention", seed=1)
    apply_strategy(model, "lora", lora=LoraSettings(R, ALPHA, 0.1, TARGETS))
    assert len(lora_layers(model)) == 12
    trainable = {name for name, p in model.parameters_and_names() if p.requires_grad}
    assert all(".lora_" in n or n.startswith(("heads.", "attention_pool.")) for n in trainable)
    weights = model.state_dict()
    rng = np.random.default_rng(8)
    for key in weights:
        if ".lora_B." in key:
            weights[key] = rng.normal(0, 0.2, weights[key].shape).astype(np.float32)
    model.load_weights(weights)
    model.set_train(False)
    ids, mask = make_batch([25, 11], SHAPES["small"]["vocab_size"], seed=2)
    expected = [t.asnumpy() for t in model(Tensor(ids), Tensor(mask))]
    task = {"kind": "multitask", "strategy": "lora", "task_sizes": [3, 2], "pooling": "attention"}
    save_task_model(model, tmp_path / "saved", task)
    saved = json.loads((tmp_path / "saved" / "task.json").read_text())
    assert saved["lora_merged"] is True and not [k for k in saved["extras"] if ".lora_" in k]
    reloaded = load_task_model(tmp_path / "saved")
    assert not lora_layers(reloaded)
    for got, want in zip(reloaded(Tensor(ids), Tensor(mask)), expected, strict=True):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-4, atol=2e-5)
