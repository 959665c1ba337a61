"""MindSpore graph mode against the numpy reference (float64), V1-10M configuration with random weights."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindformer_gf import reference
from mindformer_gf.config import GeneformerConfig
from mindformer_gf.model import MODEL_CLASSES, build_model

LENGTHS = [37, 64, 5, 1]  # different lengths, padded on the right to 64


def relative_error(ours: np.ndarray, oracle: np.ndarray) -> float:
    return float(np.abs(ours - oracle).max() / np.abs(oracle).max())


@pytest.fixture(scope="module")
def v1_config(v1_config_path):
    return GeneformerConfig.from_json_file(v1_config_path).replace(id2label={0: "a", 1: "b", 2: "c"})


@pytest.mark.parametrize("impl", ["composed", "fused"])
@pytest.mark.parametrize("architecture", sorted(MODEL_CLASSES))
def test_every_head_and_hidden_state_matches_the_reference(v1_config, make_batch, architecture, impl):
    model = build_model(v1_config.replace(attention_impl=impl), architecture, seed=3)
    model.set_train(False)
    ids, mask = make_batch(LENGTHS, v1_config.vocab_size)
    output, hidden_states = model(Tensor(ids), Tensor(mask), output_hidden_states=True)
    expected, expected_hidden = reference.forward(model.state_dict(), ids, mask, v1_config, architecture)
    assert output.shape == expected.shape
    assert len(hidden_states) == v1_config.num_hidden_layers + 1
    valid = mask.astype(bool)
    if output.ndim == 3:  # per-token outputs: padded positions are outputs nobody reads
        assert relative_error(output.asnumpy()[valid], expected[valid]) < 1e-5
    else:
        assert relative_error(output.asnumpy(), expected) < 1e-5
    for ours, oracle in zip(hidden_states, expected_hidden, strict=True):
        assert relative_error(ours.asnumpy()[valid], oracle[valid]) < 1e-5


def test_masked_positions_give_the_same_logits_as_the_full_output(v1_config, make_batch):
    model = build_model(v1_config, "BertForMaskedLM", seed=4)
    model.set_train(False)
    ids, mask = make_batch(LENGTHS[:3], v1_config.vocab_size)
    positions = np.array([[0, 5, 36], [63, 1, 2], [4, 4, 0]], np.int32)
    (full,) = model(Tensor(ids), Tensor(mask))
    (picked,) = model(Tensor(ids), Tensor(mask), masked_positions=Tensor(positions))
    expected = np.take_along_axis(full.asnumpy(), positions[:, :, None], axis=1)
    np.testing.assert_allclose(picked.asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_padding_never_changes_valid_outputs(v1_config, make_batch):
    model = build_model(v1_config, "BertForTokenClassification", seed=5)
    model.set_train(False)
    ids, mask = make_batch([20, 13], v1_config.vocab_size)
    (short,) = model(Tensor(ids), Tensor(mask))
    padded_ids = np.pad(ids, ((0, 0), (0, 44)))
    padded_mask = np.pad(mask, ((0, 0), (0, 44)))
    # Garbage token ids under the padding must not matter either: only the mask says what is padding.
    padded_ids[:, 20:] = 7
    (long,) = model(Tensor(padded_ids), Tensor(padded_mask))
    for row, n in enumerate([20, 13]):
        np.testing.assert_allclose(long.asnumpy()[row, :n], short.asnumpy()[row, :n], rtol=1e-5, atol=1e-6)


def test_batch_order_does_not_matter(v1_config, make_batch):
    model = build_model(v1_config, "BertForSequenceClassification", seed=6)
    model.set_train(False)
    ids, mask = make_batch(LENGTHS, v1_config.vocab_size)
    order = np.array([2, 0, 3, 1])
    (logits,) = model(Tensor(ids), Tensor(mask))
    (shuffled,) = model(Tensor(ids[order]), Tensor(mask[order]))
    np.testing.assert_allclose(shuffled.asnumpy(), logits.asnumpy()[order], rtol=1e-5, atol=1e-6)
    assert np.abs(logits.asnumpy()[0] - logits.asnumpy()[1]).max() > 1e-4  # rows differ: the test can fail


def test_dropout_only_in_training_mode(make_batch):
    config = GeneformerConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_dropout_prob=0.3,
        attention_probs_dropout_prob=0.3,
    )
    model = build_model(config, "BertModel", seed=7)
    ids, mask = make_batch([16, 9], config.vocab_size)
    model.set_train(False)
    first = model(Tensor(ids), Tensor(mask))[0].asnumpy()
    second = model(Tensor(ids), Tensor(mask))[0].asnumpy()
    np.testing.assert_array_equal(first, second)
    expected, _ = reference.forward(model.state_dict(), ids, mask, config, "BertModel")
    assert relative_error(first[mask.astype(bool)], expected[mask.astype(bool)]) < 1e-5
    model.set_train(True)
    trained = model(Tensor(ids), Tensor(mask))[0].asnumpy()
    assert np.abs(trained - first).max() > 1e-2


def test_cells_longer_than_the_position_table_are_refused(make_batch):
    config = GeneformerConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    model = build_model(config, "BertModel", seed=0)
    ids, mask = make_batch([17], config.vocab_size)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model(Tensor(ids), Tensor(mask))


@pytest.mark.parametrize("impl", ["composed", "fused"])
def test_one_dynamic_shape_graph_takes_every_length_in_inference(v1_config, make_batch, impl):
    """Pretraining's held-out evaluation runs the model forward alone in a dynamic-shape graph: outputs match the
    reference at each length, and the graph compiles once (the length check must not become a runtime branch)."""
    model = build_model(v1_config.replace(attention_impl=impl), "BertForMaskedLM", seed=6)
    model.set_train(False)
    model.set_inputs(Tensor(shape=[None, None], dtype=ms.int32), Tensor(shape=[None, None], dtype=ms.int32))
    for lengths in ([9, 4], [23, 23, 2], [1]):
        ids, mask = make_batch(lengths, v1_config.vocab_size)
        (logits,) = model(Tensor(ids), Tensor(mask))
        expected, _ = reference.forward(model.state_dict(), ids, mask, v1_config, "BertForMaskedLM")
        valid = mask.astype(bool)
        assert logits.shape == expected.shape
        assert relative_error(logits.asnumpy()[valid], expected[valid]) < 1e-5
    assert len(model.compile_cache) == 1


@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "silu"])
def test_other_activations_match_the_reference(make_batch, activation):
    config = GeneformerConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_act=activation,
    )
    model = build_model(config, "BertForMaskedLM", seed=8)
    model.set_train(False)
    ids, mask = make_batch([16, 9], config.vocab_size)
    (logits,) = model(Tensor(ids), Tensor(mask))
    expected, _ = reference.forward(model.state_dict(), ids, mask, config)
    valid = mask.astype(bool)
    assert relative_error(logits.asnumpy()[valid], expected[valid]) < 1e-5
