"""Shared fixtures: MindSpore in graph mode on the CPU, paths to test data, small configs."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "assets"


@pytest.fixture(scope="session", autouse=True)
def graph_mode_cpu():
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def v1_config_path() -> Path:
    return DATA / "geneformer-v1" / "config_gf-6L-30M-i2048.json"


def padded_batch(lengths: list[int], vocab_size: int, max_len: int | None = None, seed: int = 0):
    """Random gene tokens (ids >= 2) for cells of `lengths`, right-padded with 0, and their attention mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    width = max_len or max(lengths)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(2, vocab_size, size=n)
        mask[row, :n] = 1
    return ids, mask


@pytest.fixture(scope="session")
def make_batch():
    return padded_batch
