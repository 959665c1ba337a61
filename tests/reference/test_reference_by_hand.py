"""The numpy reference's building blocks against values worked out by hand."""

import numpy as np
import pytest

from mindformer_gf import reference
from mindformer_gf.reference.bert import activation, merge_heads, split_heads


def test_layer_norm_of_a_known_row():
    # mean 2.5, variance 1.25 -> (x - 2.5) / sqrt(1.25)
    out = reference.layer_norm(np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4), np.zeros(4), eps=0.0)
    np.testing.assert_allclose(out, (np.array([1.0, 2.0, 3.0, 4.0]) - 2.5) / np.sqrt(1.25), rtol=1e-15)
    scaled = reference.add_layer_norm(
        np.zeros(2), np.array([0.0, 2.0]), np.array([2.0, 3.0]), np.array([1.0, 1.0]), 0.0
    )
    np.testing.assert_allclose(scaled, [2.0 * -1 + 1, 3.0 * 1 + 1])


def test_attention_with_two_keys_by_hand():
    # d = 4: scores q.k / 2 = [1, 0] -> softmax [e/(1+e), 1/(1+e)]
    q = np.array([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    k = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).reshape(1, 1, 2, 4)
    v = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]).reshape(1, 1, 2, 4)
    out = reference.scaled_dot_product_attention(q, k, v, np.array([[1, 1]]))
    e = np.e
    np.testing.assert_allclose(out[0, 0, 0], [e / (1 + e), 1 / (1 + e), 0, 0], rtol=1e-15)
    masked = reference.scaled_dot_product_attention(q, k, v, np.array([[0, 1]]))
    np.testing.assert_allclose(masked[0, 0, 0], [0, 1, 0, 0])
    nothing = reference.scaled_dot_product_attention(q, k, v, np.array([[0, 0]]))
    np.testing.assert_array_equal(nothing, 0.0)


def test_cross_entropy_ignores_minus_100_by_hand():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    labels = np.array([[0, -100]])
    assert reference.cross_entropy(logits, labels) == pytest.approx(-np.log(0.5))
    labels = np.array([[1, 2]])
    assert reference.cross_entropy(logits, labels) == pytest.approx(-(np.log(0.25) + np.log(0.8)) / 2)


def test_activations_at_known_points():
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(activation("relu", x), [0, 0, 2])
    # gelu(x) = x * Phi(x); Phi(2) = 0.9772498680518208, Phi(-1) = 0.15865525393145707
    np.testing.assert_allclose(activation("gelu", x), [-0.15865525393145707, 0, 2 * 0.9772498680518208], rtol=1e-12)
    np.testing.assert_allclose(activation("silu", x), x / (1 + np.exp(-x)))


def test_heads_split_and_merge_are_inverse():
    x = np.arange(2 * 3 * 8, dtype=float).reshape(2, 3, 8)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 2)
    np.testing.assert_array_equal(heads[1, 2, 0], x[1, 0, 4:6])
    np.testing.assert_array_equal(merge_heads(heads), x)
