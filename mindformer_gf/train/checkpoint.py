"""Training checkpoints: one directory per save, written atomically, the last K kept.

    <output_dir>/checkpoints/step-00001000/
        config.json, model.safetensors   a model directory: `from_pretrained` loads it as is
        optimizer.safetensors            AdamW moments by parameter name, and its step count
        trainer_state.json               step, skipped steps, loss scale, data-plan fingerprint, RNG states
        train_config.json                the settings of the run

A checkpoint is assembled in a hidden temporary directory beside the others and renamed into place in one step, so
a crash or SIGKILL mid-write leaves either the previous set or the new one, never a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from mindformer_gf.convert.writer import write_model_directory
from mindformer_gf.io import atomic_directory, write_json

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def capture_rng_state() -> dict[str, Any]:
    """Host random states (Python, numpy global) and MindSpore's default generator, as JSON-able values.

    The data plan and masking do not use them (they are pure functions of seed, epoch and cell), but user code in
    a loss or callback might.
    """
    import mindspore as ms

    py_state = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "mindspore": np.asarray(ms.get_rng_state().asnumpy()).tolist(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    import mindspore as ms

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], np.uint32), *np_state[2:]))
    ms.set_rng_state(ms.Tensor(np.asarray(state["mindspore"], np.uint8)))


def save_checkpoint(
    checkpoints_dir: str | os.PathLike,
    step: int,
    model: Any,
    optimizer_state: dict[str, np.ndarray],
    trainer_state: dict[str, Any],
    train_config: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep_last` ones. Returns its path."""
    root = Path(checkpoints_dir)
    final = root / checkpoint_name(step)
    with atomic_directory(final, force=True) as temporary:
        write_model_files(model, temporary)
        save_file(optimizer_state, str(temporary / "optimizer.safetensors"))
        write_json(temporary / "train_config.json", train_config, sort_keys=True, fsync=True)
        write_json(temporary / STATE_FILE, {**trainer_state, "step": int(step)}, sort_keys=True, fsync=True)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_model_files(model: Any, directory: Path) -> None:
    """config.json and model.safetensors (Hugging Face names, fp32) of `model` into the existing `directory`."""
    model.config.save_pretrained(directory)
    save_file(model.state_dict(), str(directory / "model.safetensors"), metadata={"format": "pt"})


def save_model_dir(model: Any, directory: str | os.PathLike) -> Path:
    """A model directory that `from_pretrained` loads (config.json and model.safetensors, Hugging Face names, fp32),
    written atomically; an existing one is replaced."""
    return write_model_directory(
        model.state_dict(), model.config, model.architecture, directory, layout="huggingface", force=True
    )


def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (a directory counts once its trainer state is in place)."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def latest_checkpoint(checkpoints_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(model weights by name, optimiser state, trainer state) of checkpoint directory `path`."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no {STATE_FILE})")
    with open(path / STATE_FILE, encoding="utf-8") as handle:
        state = json.load(handle)
    return load_file(str(path / "model.safetensors")), load_file(str(path / "optimizer.safetensors")), state
