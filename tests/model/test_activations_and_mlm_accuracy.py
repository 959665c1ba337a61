"""Against transformers, not against our own formulas: the activations (`ACT2FN`, which transformers' BERT calls) and
the masked-gene accuracy the training loop reports (the argmax of `BertForMaskedLM`'s logits on the same masked
batch, the model's weights exported with `mindformer_gf.convert`)."""

from __future__ import annotations

import numpy as np
import pytest
from mindspore import Tensor

from mindformer_gf.config import GeneformerConfig
from mindformer_gf.reference.bert import activation as reference_activation

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.activations import ACT2FN  # noqa: E402


def model_activation(name: str, x: np.ndarray, impl: str) -> np.ndarray:
    """The activation as the model's feed-forward cell applies it (dense layer set to the identity, graph mode)."""
    from mindformer_gf.model.bert import BertIntermediate

    width = 8
    config = GeneformerConfig(hidden_size=width, intermediate_size=width, num_attention_heads=1, hidden_act=name)
    cell = BertIntermediate(config, impl)
    cell.dense.weight.set_data(Tensor(np.eye(width, dtype=np.float32)))
    cell.dense.bias.set_data(Tensor(np.zeros(width, np.float32)))
    return cell(Tensor(x.astype(np.float32).reshape(-1, width))).asnumpy().reshape(x.shape)


@pytest.mark.parametrize("impl", ["composed", "fused"])  # fused: the CPU GELU kernel for "gelu"
@pytest.mark.parametrize("name", ["gelu_new", "silu", "gelu", "relu"])
def test_activations_equal_transformers_act2fn(name, impl):
    x = np.concatenate([np.linspace(-8, 8, 4000), np.random.default_rng(0).normal(0, 3, 1000)])
    theirs = ACT2FN[name](torch.from_numpy(x)).numpy()  # float64 in torch
    np.testing.assert_allclose(reference_activation(name, x), theirs, rtol=1e-12, atol=1e-15)
    ours = model_activation(name, x, impl)
    # float32 against float64: a few ulps. gelu (erf) and gelu_new (tanh) differ by up to 5e-4 near |x| = 2,
    # and silu and gelu by far more, so a swapped activation fails this.
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=2e-6)


def test_masked_lm_accuracy_equals_the_argmax_of_transformers_logits(tmp_path):
    from mindformer_gf.convert import convert_to_huggingface
    from mindformer_gf.data.masking import MaskingSpec, mask_batch
    from mindformer_gf.model import build_model
    from mindformer_gf.pretrained import save_pretrained
    from mindformer_gf.train import MaskedLMObjective, Trainer, TrainSettings

    # 10 genes: random weights then get some masked genes right and most wrong, so accuracy is strictly inside (0, 1)
    config = GeneformerConfig(
        vocab_size=12,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=48,
        hidden_act="relu",
        initializer_range=0.5,
    )
    model = build_model(config, "BertForMaskedLM", seed=3)
    rng = np.random.default_rng(1)
    cells = [rng.integers(2, 12, size=n) for n in rng.integers(20, 49, size=48)]
    spec = MaskingSpec(vocab_size=12, mask_token_id=1, special_token_ids=(0, 1))
    batch = mask_batch(cells, range(len(cells)), 48, spec, seed=4, epoch=0)

    class OneBatch:
        steps_per_epoch = 1

        def batches(self, step, rank, world):
            return [batch]

    settings = TrainSettings(output_dir=str(tmp_path / "run"), max_steps=1, warmup_steps=0, progress_bar=False)
    metrics = Trainer(model, MaskedLMObjective(model), OneBatch(), settings).evaluate(OneBatch())

    hf_dir = convert_to_huggingface(save_pretrained(model, tmp_path / "ms"), tmp_path / "hf").destination
    hf = transformers.BertForMaskedLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = hf(
            input_ids=torch.from_numpy(batch["input_ids"]).long(),
            attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
        ).logits.numpy()
    labelled = batch["labels"] != -100
    rows = np.nonzero(labelled)[0]
    picked = logits[rows, batch["masked_positions"][labelled]]  # [masked genes, vocab]
    labels = batch["labels"][labelled]
    accuracy = float((picked.argmax(-1) == labels).mean())
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(picked), torch.from_numpy(labels).long()))
    assert metrics["items"] == labels.size > 200
    assert 0.05 < accuracy < 0.9, accuracy
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
