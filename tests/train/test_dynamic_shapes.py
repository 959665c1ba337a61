"""dynamic_shapes: one micro-step graph for every bucket width (instead of one per width), same losses."""

from __future__ import annotations

import numpy as np

from mindformer_gf.train import Trainer, pretrain


def test_one_graph_for_all_buckets_and_the_same_losses(tiny_settings, tmp_path, monkeypatch):
    caches = {}
    original = Trainer.train

    def spy(self, resume=None):
        result = original(self, resume)
        caches[self.settings.dynamic_shapes] = len(self.micro_step.compile_cache)
        return result

    monkeypatch.setattr(Trainer, "train", spy)
    static = pretrain(tiny_settings(output_dir=str(tmp_path / "static"), max_steps=10, dynamic_shapes=False))
    # the static run's plan (batches padded to their bucket's width), fed to one dynamic-shape graph
    dynamic = pretrain(
        tiny_settings(output_dir=str(tmp_path / "dynamic"), max_steps=10, dynamic_shapes=True, pad_to_bucket_width=True)
    )
    assert static.batch_shapes == dynamic.batch_shapes >= 2
    assert caches == {False: static.batch_shapes, True: 1}
    assert dynamic.compiled_graphs == 2
    np.testing.assert_allclose(dynamic.losses, static.losses, rtol=1e-5)
