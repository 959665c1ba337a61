"""One data-parallel worker for test_distributed.py, started by msrun: trains the tiny model (dropout on) for
`stop_at` steps, then, as a resumed run, from the checkpoint rank 0 wrote to the settings' `max_steps`; writes its
final weights, losses and the cells it read to <out>/rank<r>.npz."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mindformer_gf.data import MaskedLMCollator
from mindformer_gf.train import PretrainSettings, Trainer, init_distributed
from mindformer_gf.train.checkpoint import checkpoint_name, latest_checkpoint
from mindformer_gf.train.device import prepare_device
from mindformer_gf.train.objectives import MaskedLMObjective
from mindformer_gf.train.pretraining import build_pretraining_data, build_pretraining_model


class RecordingCollator:
    """Collates as usual and remembers which cells this rank read."""

    def __init__(self, inner: MaskedLMCollator, cells: list[int]) -> None:
        self.inner = inner
        self.cells = cells

    def __call__(self, micro):
        self.cells.extend(int(i) for i in micro.cell_indices)
        return self.inner(micro)


def train(settings: PretrainSettings, parallel, cells: list[int], resume: bool):
    model = build_pretraining_model(settings)
    data = build_pretraining_data(settings, model.config, settings.gradient_accumulation * parallel.world_size)
    data.source.make_batch = RecordingCollator(data.source.make_batch, cells)
    initial = model.state_dict()["bert.encoder.layer.0.attention.self.query.weight"].copy()
    result = Trainer(model, MaskedLMObjective(model), data.source, settings, parallel).train(resume=resume)
    return model, result, initial


def wait_for_checkpoint(settings: PretrainSettings, step: int, timeout: float = 120.0) -> None:
    """Rank 0 alone writes checkpoints: the other ranks wait until the one to resume from is complete."""
    deadline = time.monotonic() + timeout
    wanted = checkpoint_name(step)
    while time.monotonic() < deadline:
        found = latest_checkpoint(Path(settings.output_dir) / "checkpoints")
        if found is not None and found.name == wanted:
            return
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint {wanted} under {settings.output_dir} after {timeout} s")


def main(settings_file: str, out_dir: str, stop_at: str) -> None:
    settings = PretrainSettings(**json.loads(Path(settings_file).read_text()))
    prepare_device(settings.device)
    parallel = init_distributed()
    cells: list[int] = []
    _, first, initial = train(replace(settings, max_steps=int(stop_at)), parallel, cells, resume=False)
    wait_for_checkpoint(settings, int(stop_at))
    model, resumed, _ = train(settings, parallel, cells, resume=True)
    np.savez(
        Path(out_dir) / f"rank{parallel.rank}.npz",
        world_size=parallel.world_size,
        cells=np.asarray(cells),
        losses=np.asarray(first.losses + resumed.losses),
        initial_query=initial,
        **{f"w/{name}": value for name, value in model.state_dict().items()},
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
