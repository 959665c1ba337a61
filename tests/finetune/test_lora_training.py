"""Strategy "lora" end to end on real PBMC cells with the tiny model: the loss falls, only the adapters and the
head change (the pretrained weights stay bit-identical), the saved model holds W + (alpha / r) B A, and peft loads
the saved adapter directory onto transformers' model of the pretrained weights with the same outputs as ours."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers.tasks import padded_rows, quick_settings
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformer_gf.finetune.task_model import LORA_ADAPTER_DIR, load_task_model
from mindformer_gf.pretrained import from_pretrained
from mindformer_gf.tasks import CellClassifier
from mindformer_gf.train.checkpoint import list_checkpoints, load_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.slow
R, ALPHA = 8, 16.0
STATES = ["Dendritic", "CD14+ Monocyte", "CD19+ B"]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, pbmc_dataset_dir, tmp_path_factory):
    settings = quick_settings(
        num_train_epochs=4.0,
        per_device_train_batch_size=12,
        learning_rate=3e-3,
        strategy="lora",
        lora_r=R,
        lora_alpha=ALPHA,
        lora_dropout=0.1,
        save_total_limit=None,
    )
    classifier = CellClassifier(state_key="cell_type", states=STATES, max_ncells=240, settings=settings)
    out = tmp_path_factory.mktemp("lora")
    result = classifier.run(pbmc_dataset_dir, tiny_model_dir, out, split_sizes=(0.6, 0.2, 0.2))
    return result, out


def test_loss_falls_and_only_adapters_and_head_train(lora_run, tiny_weights):
    result, out = lora_run
    losses = pd.read_csv(out / "training" / "metrics.csv")["loss"].to_numpy()
    assert losses[0] > 0.9 and losses[-2:].mean() < losses[0] - 0.1
    checkpoints = list_checkpoints(out / "training" / "checkpoints")
    assert checkpoints
    last, _, _ = load_checkpoint(checkpoints[-1])
    lora_keys = [k for k in last if ".lora_" in k]
    assert len(lora_keys) == 2 * 6 * 2  # 2 layers x 6 projections x (A, B)
    for key, value in tiny_weights.items():
        if key.startswith("bert.") and key in last:
            np.testing.assert_array_equal(last[key], value, err_msg=key)  # frozen: bit-identical
    assert all(np.abs(last[k]).max() > 0 for k in lora_keys if ".lora_B." in k)  # B started at zero
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= set(last)


def test_saved_model_is_merged_and_records_the_settings(lora_run, tiny_weights):
    result, out = lora_run
    model_dir = result.runs[0].model_dir
    task = json.loads((model_dir / "task.json").read_text())
    assert task["strategy"] == "lora" and task["lora_merged"] is True
    assert (task["lora_r"], task["lora_alpha"], task["lora_dropout"]) == (R, ALPHA, 0.1)
    assert task["lora_target_modules"] == ["query", "key", "value", "dense"]
    adapter = load_file(str(model_dir / LORA_ADAPTER_DIR / "adapter_model.safetensors"))
    saved = from_pretrained(model_dir, "BertForSequenceClassification").state_dict()
    assert not [k for k in saved if ".lora_" in k]
    prefix = "base_model.model."
    projections = {k[len(prefix) : -len(".lora_A.weight")] for k in adapter if k.endswith(".lora_A.weight")}
    assert len(projections) == 12
    for name in projections:
        a = adapter[f"{prefix}{name}.lora_A.weight"].astype(np.float64)
        b = adapter[f"{prefix}{name}.lora_B.weight"].astype(np.float64)
        expected = tiny_weights[f"{name}.weight"].astype(np.float64) + (ALPHA / R) * (b @ a)
        np.testing.assert_allclose(saved[f"{name}.weight"], expected, rtol=1e-6, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(saved["classifier.weight"], adapter[f"{prefix}classifier.weight"])


def test_peft_loads_the_saved_adapter_with_our_outputs(lora_run, tiny_model_dir, pbmc_dataset):
    result, _ = lora_run
    model_dir = result.runs[0].model_dir
    ids, mask = padded_rows(pbmc_dataset, np.arange(6))
    ours = load_task_model(model_dir)(Tensor(ids), Tensor(mask))[0].asnumpy()
    base = transformers.BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=len(STATES))
    theirs = peft.PeftModel.from_pretrained(base, model_dir / LORA_ADAPTER_DIR).eval()
    with torch.no_grad():
        logits = theirs(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(logits.numpy(), ours, rtol=1e-4, atol=2e-5)
