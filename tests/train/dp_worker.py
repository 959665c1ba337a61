"""One data-parallel worker for test_distributed.py, started by msrun: trains the tiny model for a few steps and
writes its final weights and the cells it read to <out>/rank<r>.npz."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mindformer_gf.data import MaskedLMCollator
from mindformer_gf.train import PretrainSettings, Trainer, init_distributed
from mindformer_gf.train.distributed import prepare_mindspore
from mindformer_gf.train.objectives import MaskedLMObjective
from mindformer_gf.train.pretrain import build_pretraining_data, build_pretraining_model


class RecordingCollator:
    """Collates as usual and remembers which cells this rank read."""

    def __init__(self, inner: MaskedLMCollator) -> None:
        self.inner = inner
        self.cells: list[int] = []

    def __call__(self, micro):
        self.cells.extend(int(i) for i in micro.cell_indices)
        return self.inner(micro)


def main(settings_file: str, out_dir: str) -> None:
    settings = PretrainSettings(**json.loads(Path(settings_file).read_text()))
    prepare_mindspore(settings.device)
    parallel = init_distributed()
    model = build_pretraining_model(settings)
    data = build_pretraining_data(settings, model.config, settings.gradient_accumulation * parallel.world_size)
    recorder = RecordingCollator(data.source.make_batch)
    data.source.make_batch = recorder
    initial = model.state_dict()["bert.encoder.layer.0.attention.self.query.weight"].copy()
    result = Trainer(model, MaskedLMObjective(model), data.source, settings, parallel).train()
    np.savez(
        Path(out_dir) / f"rank{parallel.rank}.npz",
        world_size=parallel.world_size,
        cells=np.asarray(recorder.cells),
        losses=np.asarray(result.losses),
        initial_query=initial,
        **{f"w/{name}": value for name, value in model.state_dict().items()},
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
