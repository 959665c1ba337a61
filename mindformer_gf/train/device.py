"""Device set-up and seeding, in one place for every job (pretraining, fine-tuning, inference)."""

from __future__ import annotations

import random

import mindspore as ms
import numpy as np

DEVICES = ("auto", "CPU", "Ascend")


def prepare_device(device: str = "auto") -> str:
    """Graph mode on `device` ("auto": MindSpore's default target, Ascend when present); returns the target.

    Call before building models and before `init_distributed`.
    """
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {DEVICES}")
    ms.set_context(mode=ms.GRAPH_MODE)
    if device != "auto" and ms.get_context("device_target") != device:
        ms.set_device(device)
    return ms.get_context("device_target")


def seed_everything(seed: int) -> None:
    """Python's, numpy's global and MindSpore's generators from `seed` (weight initialisation of fresh heads;
    data plans and dropout masks take their seeds explicitly)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    ms.set_seed(seed)
