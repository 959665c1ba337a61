"""Precision choice per device and the dynamic loss scale's rules (halve and skip on overflow, double after a
window of finite steps)."""

from __future__ import annotations

import pytest

from mindformer_gf.train.precision import DynamicLossScale, resolve_precision


def test_precision_per_device():
    assert resolve_precision("auto", "CPU") == "fp32"
    assert resolve_precision("auto", "Ascend") == "bf16"
    assert resolve_precision("fp16", "Ascend") == "fp16"
    with pytest.raises(ValueError, match="train in fp32"):
        resolve_precision("bf16", "CPU")


def test_dynamic_loss_scale_rules():
    scale = DynamicLossScale(scale=1024.0, window=3)
    for finite, expected in [(True, 1024), (True, 1024), (True, 2048), (False, 1024), (True, 1024), (False, 512)]:
        scale.update(finite)
        assert scale.scale == expected
    restored = DynamicLossScale(window=3)
    restored.load_state(scale.state())
    assert (restored.scale, restored.good_steps) == (512.0, 0)
    disabled = DynamicLossScale(scale=1024.0, enabled=False)
    disabled.update(False)
    assert disabled.scale == 1.0
