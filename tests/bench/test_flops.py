"""bench/flops.py's FLOP counts against counts worked out by hand for a tiny model, and bench/common.py's
fraction of the GEMM rate."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import flops  # noqa: E402

# hidden 4, FFN 8, 2 heads of 2, vocabulary 10, 3 layers
TINY = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=3, vocab_size=10)


def test_attention_forward_by_hand() -> None:
    # batch 2, heads 2, length 3, head_dim 2: per (cell, head) Q K^T is [3, 2] x [2, 3]: 9 outputs of 2 multiply-adds
    # = 36 FLOPs; P V is [3, 3] x [3, 2]: 6 outputs of 3 = 36; 4 (cell, head) pairs: 4 x 72 = 288
    assert flops.attention_forward_flops(2, 2, 3, 2) == 288
    # 2 valid keys of 3: Q K^T [3, 2] x [2, 2] = 6 x 2 x 2 = 24, P V [3, 2] x [2, 2] = 24; 4 pairs: 192
    assert flops.attention_forward_flops(2, 2, 3, 2, valid=2) == 192
    # backward: 5 products of the forward's size (dV, dP, dQ, dK, recomputed S) against its 2: 288 x 5 / 2
    assert flops.attention_backward_flops(2, 2, 3, 2) == 720


def test_encoder_forward_by_hand() -> None:
    # batch 2, length 3: 6 tokens. Q, K, V, output: [6, 4] x [4, 4] = 6 x 4 outputs x 4 x 2 = 192 each, 768 for 4;
    # FFN in [6, 4] x [4, 8] = 48 x 8 = 384, out [6, 8] x [8, 4] = 24 x 16 = 384; attention (2 heads of 2) as in
    # test_attention_forward_by_hand: 288. One layer: 768 + 768 + 288 = 1824; three layers 5472
    assert flops.encoder_layer_flops(TINY, 2, 3) == 1824
    assert flops.encoder_forward_flops(TINY, 2, 3) == 5472
    assert flops.encoder_forward_flops(TINY, 2, 3, layers=2) == 3648


def test_heads_training_and_perturbation_by_hand() -> None:
    # MLM head at 5 positions: transform [5, 4] x [4, 4] = 160, decoder [5, 4] x [4, 10] = 50 x 8 = 400
    assert flops.mlm_head_flops(TINY, 5) == 560
    # training step, batch 2, length 3, 1 masked slot per cell: 3 x (5472 + head at 2 positions (224)) = 17088
    assert flops.training_step_flops(TINY, 2, 3, 1) == 3 * (5472 + 224)
    assert flops.training_step_flops(TINY, 2, 3, 1) == 17088
    # ours: layers 1..2 of 3, no head: 2 x 1824; the reference: 3 layers + full logits at 6 positions (672)
    assert flops.perturbation_flops(TINY, 2, 3, layers=2) == 3648
    assert flops.reference_perturbation_flops(TINY, 2, 3) == 5472 + 672


def test_counts_scale_as_the_shapes_say() -> None:
    # linear in the batch; attention quadratic in the length, the rest linear
    assert flops.encoder_forward_flops(TINY, 4, 3) == 2 * flops.encoder_forward_flops(TINY, 2, 3)
    linear_part = 1824 - 288
    assert flops.encoder_layer_flops(TINY, 2, 6) == 2 * linear_part + 4 * 288


def test_fraction_of_gemm() -> None:
    from common import fraction_of_gemm, merge_gemm_rates

    gemm = merge_gemm_rates(
        {"gemm_size": 64, "gemm_gflops": 100.0, "gemm_gflops_range": [90.0, 110.0]},
        {"gemm_size": 64, "gemm_gflops": 80.0, "gemm_gflops_range": [70.0, 85.0]},
        {"gemm_size": 64, "gemm_gflops": 120.0, "gemm_gflops_range": [100.0, 130.0]},
    )
    assert gemm == {"gemm_size": 64, "gemm_gflops": 100.0, "gemm_gflops_range": [70.0, 130.0]}
    # 50 GFLOP in 1 s against 100 GFLOP/s
    assert fraction_of_gemm(50e9, 1.0, gemm) == pytest.approx(0.5)


def test_gemm_rate_measures() -> None:
    from common import gemm_rate

    rate = gemm_rate(size=64, repeats=3)
    low, high = rate["gemm_gflops_range"]
    assert rate["gemm_size"] == 64 and 0 < low <= rate["gemm_gflops"] <= high


def test_interleaved_rounds_call_each_side_once_per_round_in_order(monkeypatch) -> None:
    import common

    monkeypatch.setattr(common, "SETTLE_SECONDS", 0.0)
    interleaved_rounds = common.interleaved_rounds
    log = []
    seconds, gemm = interleaved_rounds({"ours": lambda: log.append("ours"), "hf": lambda: log.append("hf")}, 3, 32)
    # one untimed warm-up round, then 3 rounds, each side then the GEMM (not logged)
    assert log == ["ours", "hf"] * 4
    assert set(seconds) == {"ours", "hf"} and all(len(times) == 3 for times in seconds.values())
    assert len(gemm) == 3 and all(rate > 0 for rate in gemm)


def test_per_round_speedups_and_fractions_by_hand() -> None:
    from common import fraction_per_round, paired, speedup_per_round

    # round 1: we took 1 s, they 3 s; round 2: 2 s against 4 s; round 3: 1 s against 1.5 s
    speedups = speedup_per_round([1.0, 2.0, 1.0], [3.0, 4.0, 1.5])
    assert speedups == [3.0, 2.0, 1.5]
    assert paired(speedups) == (2.0, [1.5, 3.0])
    # 100 GFLOP in 1 s against 200 GFLOP/s, in 2 s against 100 GFLOP/s
    assert fraction_per_round(100e9, [1.0, 2.0], [200.0, 100.0]) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError):
        speedup_per_round([1.0], [1.0, 2.0])


def test_emit_writes_numpy_scalars_as_json_values(capsys):
    """A summary's goals compare numpy medians (numpy.bool_): the line must still be JSON (bench/pretrain.py crashed
    at its summary before)."""
    import json

    import common  # noqa: E402
    import numpy as np

    common.emit({"goal": np.median([1.0, 4.0]) >= 2.0, "median": np.float64(2.5), "count": np.int64(3)})
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["goal"], line["median"], line["count"]) == (True, 2.5, 3)
    assert type(line["goal"]) is bool
