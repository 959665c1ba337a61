"""The reference's fine-tuned models converted: GeneformerMultiTask checkpoints (CLS and attention pooling) into our
multitask model, and peft LoRA directories on their base model (merged, or kept as adapters). Each is checked
against a PyTorch module of the same structure on the same weights: GeneformerMultiTask's structure is built here
from torch.nn and transformers.BertModel (as its description says: `bert`, an optional `attention_pool` vector
[hidden, 1] whose softmax runs over every position, padding included, dropout, one nn.Linear per task), and the
LoRA adapters are peft's own. Outputs agree within 1e-4 relative (float32 summation order)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from helpers.convert import SHAPES
from mindspore import Tensor

from mindformer_gf.cli import main
from mindformer_gf.convert.reference_models import (
    HUGGINGFACE,
    PEFT_LORA,
    REFERENCE_MULTITASK,
    convert_lora_adapter,
    convert_reference_multitask,
    detect_source,
)
from mindformer_gf.finetune.lora import lora_layers
from mindformer_gf.finetune.task_model import load_task_model
from mindformer_gf.pretrained import from_pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RTOL, ATOL = 1e-4, 2e-5
TASK_SIZES = (3, 2)
MAPPINGS = {"task1": {"B cell": 0, "monocyte": 1, "T cell": 2}, "task2": {"G1": 0, "S": 1}}


class AttentionPoolLike(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.attention_weights = torch.nn.Parameter(torch.randn(hidden, 1))

    def forward(self, hidden_states):
        scores = torch.softmax(hidden_states @ self.attention_weights, dim=1)
        return (hidden_states * scores).sum(1)


class MultiTaskLike(torch.nn.Module):
    """GeneformerMultiTask's structure and state-dict names."""

    def __init__(self, config, sizes, attention_pooling: bool) -> None:
        super().__init__()
        self.bert = transformers.BertModel(config)
        self.attention_pool = AttentionPoolLike(config.hidden_size) if attention_pooling else None
        self.dropout = torch.nn.Dropout(0.1)
        self.classification_heads = torch.nn.ModuleList([torch.nn.Linear(config.hidden_size, n) for n in sizes])

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.attention_pool(hidden) if self.attention_pool is not None else hidden[:, 0]
        pooled = self.dropout(pooled)
        return [head(pooled) for head in self.classification_heads]


def reference_multitask_dir(directory, attention_pooling: bool, seed: int = 0, mappings_inside: bool = True):
    """A GeneformerMultiTask directory as the reference's save_model/save_hyperparameters leave it."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**SHAPES["small"], "num_hidden_layers": 2})
    model = MultiTaskLike(config, TASK_SIZES, attention_pooling).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    directory.mkdir(parents=True)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    config.to_json_file(directory / "config.json")
    hyper = {"learning_rate": 1e-4, "dropout_rate": 0.1, "use_task_weights": False, "task_weights": None}
    hyper.update({"max_layers_to_freeze": 0, "use_attention_pooling": attention_pooling})
    (directory / "hyperparameters.json").write_text(json.dumps(hyper))
    mappings = directory / "task_label_mappings.pkl" if mappings_inside else directory.parent / "mappings.pkl"
    mappings.write_bytes(pickle.dumps(MAPPINGS))
    return model, mappings


def torch_outputs(model, ids, mask):
    with torch.no_grad():
        return [t.numpy() for t in model(torch.tensor(ids, dtype=torch.long), torch.tensor(mask))]


@pytest.mark.parametrize("attention_pooling", [False, True], ids=["cls", "attention"])
def test_geneformer_multitask_converts_with_its_outputs(tmp_path, make_batch, capsys, attention_pooling):
    source = tmp_path / "GeneformerMultiTask"
    reference, mappings = reference_multitask_dir(source, attention_pooling, mappings_inside=attention_pooling)
    assert detect_source(source) == REFERENCE_MULTITASK
    destination = tmp_path / "ours"
    if attention_pooling:
        argv = ["convert", str(source), str(destination), "--quiet", "--task-columns", "cell_type,phase"]
        assert main(argv) == 0
        assert "MultitaskModel (attention pooling, 2 tasks)" in capsys.readouterr().out
    else:  # the mappings elsewhere, passed by name
        convert_reference_multitask(source, destination, label_mappings=mappings)
    task = json.loads((destination / "task.json").read_text())
    assert task["kind"] == "multitask"
    assert task["tasks"] == (["cell_type", "phase"] if attention_pooling else ["task1", "task2"])
    assert task["task_sizes"] == list(TASK_SIZES) and task["pooling"] == ("attention" if attention_pooling else "cls")
    assert task["id2labels"] == [{"0": "B cell", "1": "monocyte", "2": "T cell"}, {"0": "G1", "1": "S"}]

    ids, mask = make_batch([40, 23, 6], SHAPES["small"]["vocab_size"], seed=3)  # padded: the pool sees padding
    expected = torch_outputs(reference, ids, mask)
    ours = load_task_model(destination)(Tensor(ids), Tensor(mask))
    assert len(ours) == 2
    for got, want in zip(ours, expected, strict=True):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=RTOL, atol=ATOL)
    # the encoder alone is what embeddings and perturbations read
    encoder = from_pretrained(destination, "BertModel")
    hidden = reference.bert(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    valid = mask.astype(bool)
    np.testing.assert_allclose(
        encoder(Tensor(ids), Tensor(mask))[0].asnumpy()[valid],
        hidden.last_hidden_state.detach().numpy()[valid],
        rtol=RTOL,
        atol=ATOL,
    )


def test_multitask_pooling_that_contradicts_its_hyperparameters_is_refused(tmp_path, capsys):
    source = tmp_path / "GeneformerMultiTask"
    reference_multitask_dir(source, attention_pooling=False)
    hyper = json.loads((source / "hyperparameters.json").read_text())
    (source / "hyperparameters.json").write_text(json.dumps({**hyper, "use_attention_pooling": True}))
    assert main(["convert", str(source), str(tmp_path / "ours"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "use_attention_pooling=True but the checkpoint has no attention_pool" in err and "\n" not in err
    assert not (tmp_path / "ours").exists()
    assert main(["convert", str(source), str(tmp_path / "ours"), "--keep-adapters"]) == 1
    assert "--base-model/--keep-adapters are for LoRA adapters" in capsys.readouterr().err


# ---- peft LoRA ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory):
    """A peft LoRA (r 4, alpha 8) saved by peft on a saved transformers classifier, every factor random. peft's
    suffix rule with no layers_to_transform also adapts the pooler's dense."""
    peft = pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("peft")
    torch.manual_seed(2)
    config = transformers.BertConfig(**{**SHAPES["small"], "num_hidden_layers": 2}, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(root / "base")
    base = transformers.BertForSequenceClassification.from_pretrained(root / "base")
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "key", "value", "dense"], task_type="SEQ_CLS"
    )
    model = peft.get_peft_model(base, lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name or "modules_to_save" in name:
                parameter.normal_(0, 0.2)
    model.save_pretrained(root / "adapter")
    return model.eval(), root


def peft_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()


def test_peft_adapter_converts_merged_and_kept(peft_adapter, tmp_path, make_batch, capsys):
    model, root = peft_adapter
    adapter = root / "adapter"
    assert detect_source(adapter) == PEFT_LORA and detect_source(root / "base") == HUGGINGFACE
    ids, mask = make_batch([33, 12, 4], SHAPES["small"]["vocab_size"], seed=5)
    expected = peft_logits(model, ids, mask)
    plain = from_pretrained(root / "base")(Tensor(ids), Tensor(mask))[0].asnumpy()
    assert np.abs(plain - expected).max() > 1e-3  # the adapters and the saved classifier matter

    convert_lora_adapter(adapter, tmp_path / "merged")  # the base from adapter_config.json
    merged = from_pretrained(tmp_path / "merged")
    assert not [k for k in merged.state_dict() if ".lora_" in k]
    np.testing.assert_allclose(merged(Tensor(ids), Tensor(mask))[0].asnumpy(), expected, rtol=RTOL, atol=ATOL)

    argv = ["convert", str(adapter), str(tmp_path / "kept"), "--keep-adapters", "--base-model", str(root / "base")]
    assert main(argv) == 0
    assert "peft LoRA on" in capsys.readouterr().out
    kept = load_task_model(tmp_path / "kept")
    assert len(lora_layers(kept)) == 2 * 6 + 1  # every layer's six projections and the pooler
    np.testing.assert_allclose(kept(Tensor(ids), Tensor(mask))[0].asnumpy(), expected, rtol=RTOL, atol=ATOL)


def test_reference_style_adapter_with_peft_default_targets(peft_adapter, tmp_path, make_batch):
    """As the reference's Classifier writes them: LoraConfig without target_modules (peft's BERT default, query
    and value), task_type TOKEN_CLS on a cell classifier: --architecture BertForSequenceClassification."""
    peft = pytest.importorskip("peft")
    _, root = peft_adapter
    base = transformers.BertForSequenceClassification.from_pretrained(root / "base")
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, task_type="TOKEN_CLS"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name or "modules_to_save" in name:
                parameter.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "adapter")
    with pytest.warns(UserWarning, match="writes TOKEN_CLS for cell classifiers too"):
        convert_lora_adapter(tmp_path / "adapter", tmp_path / "as-genes")
    assert from_pretrained(tmp_path / "as-genes").architecture == "BertForTokenClassification"
    convert_lora_adapter(tmp_path / "adapter", tmp_path / "ours", architecture="BertForSequenceClassification")
    ids, mask = make_batch([26, 8], SHAPES["small"]["vocab_size"], seed=7)
    ours = from_pretrained(tmp_path / "ours")
    assert ours.architecture == "BertForSequenceClassification"
    expected = peft_logits(model.eval(), ids, mask)
    np.testing.assert_allclose(ours(Tensor(ids), Tensor(mask))[0].asnumpy(), expected, rtol=RTOL, atol=ATOL)


def test_ours_to_peft_and_back(peft_adapter, tmp_path, make_batch):
    """peft's adapter -> ours (kept) -> our peft-layout writer -> peft -> the same outputs."""
    peft = pytest.importorskip("peft")
    from mindformer_gf.finetune.lora import write_peft_adapter

    model, root = peft_adapter
    convert_lora_adapter(root / "adapter", tmp_path / "kept", merge=False)
    ours = load_task_model(tmp_path / "kept")
    settings = json.loads((tmp_path / "kept" / "task.json").read_text())
    from mindformer_gf.finetune.lora import LoraSettings

    lora = LoraSettings(settings["lora_r"], settings["lora_alpha"], 0.1, tuple(settings["lora_target_modules"]))
    write_peft_adapter(ours, tmp_path / "again", lora, str(root / "base"), modules_to_save=["classifier"])
    base = transformers.BertForSequenceClassification.from_pretrained(root / "base")
    again = peft.PeftModel.from_pretrained(base, tmp_path / "again").eval()
    ids, mask = make_batch([21, 9], SHAPES["small"]["vocab_size"], seed=6)
    np.testing.assert_allclose(peft_logits(again, ids, mask), peft_logits(model, ids, mask), rtol=RTOL, atol=ATOL)


def test_adapters_this_package_cannot_reproduce_are_refused(peft_adapter, tmp_path, capsys):
    _, root = peft_adapter
    broken = tmp_path / "dora"
    broken.mkdir()
    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (broken / "adapter_model.safetensors").write_bytes((root / "adapter" / "adapter_model.safetensors").read_bytes())
    assert main(["convert", str(broken), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "DoRA (use_dora) adapters are not supported" in err and "\n" not in err
    (broken / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    assert main(["convert", str(broken), str(tmp_path / "out")]) == 1
    assert "names no base model; pass --base-model DIR" in capsys.readouterr().err
    assert main(["convert", str(root / "adapter"), str(tmp_path / "out"), "--dtype", "float16"]) == 1
    assert "drop --dtype" in capsys.readouterr().err
    # the reference's cell classifiers carry task_type TOKEN_CLS: --architecture decides; a wrong one shows
    token = ["convert", str(root / "adapter"), str(tmp_path / "out"), "--architecture", "BertForTokenClassification"]
    assert main(token) == 1
    err = capsys.readouterr().err.strip()
    assert "the adapter adapts ['bert.pooler.dense'], which the BertForTokenClassification" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
