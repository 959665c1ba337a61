"""Against the real thing: transformers' BERT classes with random weights, saved with save_pretrained, loaded into
our MindSpore model (from_pretrained) and into the numpy reference. Logits and hidden states within 1e-4."""

import json

import numpy as np
import pytest
from helpers.convert import read_state_dict
from mindspore import Tensor

import mindformer_gf
from mindformer_gf import reference
from mindformer_gf.config import GeneformerConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_CLASSES = {
    "BertForMaskedLM": transformers.BertForMaskedLM,
    "BertForSequenceClassification": transformers.BertForSequenceClassification,
    "BertForTokenClassification": transformers.BertForTokenClassification,
    "BertModel": transformers.BertModel,
}
# A V2-shaped config (Geneformer-V2-104M) with two layers instead of twelve.
V2_SHAPED = dict(
    vocab_size=20275,
    hidden_size=768,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=4096,
    num_hidden_layers=2,
    hidden_act="relu",
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    pad_token_id=0,
    type_vocab_size=2,
)


def relative_error(ours: np.ndarray, oracle: np.ndarray) -> float:
    return float(np.abs(ours - oracle).max() / np.abs(oracle).max())


def save_hf_model(directory, config_dict: dict, architecture: str, num_labels: int, seed: int):
    torch.manual_seed(seed)
    hf_config = transformers.BertConfig(**config_dict, num_labels=num_labels, architectures=[architecture])
    model = HF_CLASSES[architecture](hf_config).eval()
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("shape", ["V1", "V2-shaped"])
@pytest.mark.parametrize("architecture", sorted(HF_CLASSES))
def test_logits_and_hidden_states_match_transformers(tmp_path, v1_config_path, make_batch, shape, architecture):
    config_dict = json.loads(v1_config_path.read_text()) if shape == "V1" else dict(V2_SHAPED)
    config_dict.pop("architectures", None)
    hf_model = save_hf_model(tmp_path, config_dict, architecture, num_labels=3, seed=11)
    lengths = [48, 30, 7]
    ids, mask = make_batch(lengths, config_dict["vocab_size"], seed=2)
    with torch.no_grad():
        hf_out = hf_model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            output_hidden_states=True,
        )
    hf_main = (hf_out.last_hidden_state if architecture == "BertModel" else hf_out.logits).numpy()
    hf_hidden = [h.numpy() for h in hf_out.hidden_states]

    model = mindformer_gf.from_pretrained(tmp_path)
    assert type(model).__name__ == architecture
    ours_main, ours_hidden = model(Tensor(ids), Tensor(mask), output_hidden_states=True)

    config = GeneformerConfig.from_pretrained(tmp_path)
    weights = {k: v for k, v in read_state_dict(tmp_path).items() if not k.endswith("position_ids")}
    ref_main, ref_hidden = reference.forward(weights, ids, mask, config, architecture)

    valid = mask.astype(bool)
    select = (lambda a: a[valid]) if hf_main.ndim == 3 else (lambda a: a)
    assert relative_error(select(ours_main.asnumpy()), select(hf_main)) < 1e-4
    assert relative_error(select(ref_main), select(hf_main)) < 1e-4
    assert len(ours_hidden) == len(hf_hidden) == config.num_hidden_layers + 1
    for ours, ref, hf in zip(ours_hidden, ref_hidden, hf_hidden, strict=True):
        assert relative_error(ours.asnumpy()[valid], hf[valid]) < 1e-4
        assert relative_error(ref[valid], hf[valid]) < 1e-4


def test_classifier_from_a_masked_lm_checkpoint_initialises_its_head_fresh(tmp_path, v1_config_path, make_batch):
    config_dict = json.loads(v1_config_path.read_text())
    config_dict.pop("architectures")
    config_dict["num_hidden_layers"] = 2
    hf_mlm = save_hf_model(tmp_path, config_dict, "BertForMaskedLM", num_labels=2, seed=5)

    def classifier(seed):
        with pytest.warns(UserWarning, match="bert.pooler.dense.weight"):
            return mindformer_gf.from_pretrained(
                tmp_path, architecture="BertForSequenceClassification", seed=seed, num_labels=8
            )

    model = classifier(seed=3)
    weights = model.state_dict()
    for key, value in hf_mlm.state_dict().items():
        if key.startswith("bert.") and not key.endswith("position_ids"):
            np.testing.assert_array_equal(weights[key], value.numpy(), err_msg=key)
    # the fresh head: N(0, initializer_range) weights (std within 10%: 2,048 and 65,536 draws), zero biases
    config = GeneformerConfig.from_pretrained(tmp_path).replace(num_labels=8)
    for key in ("classifier.weight", "bert.pooler.dense.weight"):
        assert weights[key].std() == pytest.approx(config.initializer_range, rel=0.1), key
        assert abs(weights[key].mean()) < 0.2 * config.initializer_range, key
    np.testing.assert_array_equal(weights["classifier.bias"], 0)
    np.testing.assert_array_equal(weights["bert.pooler.dense.bias"], 0)
    # the same seed gives the same head, another seed another one
    again, other = classifier(seed=3).state_dict(), classifier(seed=4).state_dict()
    np.testing.assert_array_equal(again["classifier.weight"], weights["classifier.weight"])
    np.testing.assert_array_equal(again["bert.pooler.dense.weight"], weights["bert.pooler.dense.weight"])
    assert not np.array_equal(other["classifier.weight"], weights["classifier.weight"])
    # the logits are the reference's on the model's own weights (encoder from the checkpoint, fresh head)
    ids, mask = make_batch([12, 4, 30], config_dict["vocab_size"])
    (logits,) = model(Tensor(ids), Tensor(mask))
    expected, _ = reference.forward(weights, ids, mask, config, "BertForSequenceClassification")
    assert logits.shape == (3, 8)
    assert relative_error(logits.asnumpy(), expected) < 1e-5


def test_v1_v2_vocabulary_mismatch_is_explained(tmp_path, v1_config_path):
    config_dict = json.loads(v1_config_path.read_text())
    config_dict.pop("architectures")
    config_dict["num_hidden_layers"] = 1
    save_hf_model(tmp_path, config_dict, "BertForMaskedLM", num_labels=2, seed=0)
    with pytest.raises(ValueError, match="V1 vocabulary .25426 tokens. and the config a V2"):
        mindformer_gf.from_pretrained(tmp_path, vocab_size=20275)
