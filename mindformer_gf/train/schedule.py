"""Learning-rate schedules as pure functions of the step (so a resumed run needs only the step number).

"linear": warmup from 0 to the peak over `warmup_steps`, then linear decay to `min_ratio` x peak at `total_steps`
(the reference's schedule, as transformers' get_linear_schedule_with_warmup). "cosine": same warmup, then half a
cosine to `min_ratio` x peak. "constant": warmup, then the peak.
"""

from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine", "constant")


def learning_rate(
    step: int, peak: float, warmup_steps: int, total_steps: int, schedule: str = "linear", min_ratio: float = 0.0
) -> float:
    """The learning rate used by optimisation step `step` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; use one of {SCHEDULES}")
    if warmup_steps > 0 and step < warmup_steps:
        return peak * step / warmup_steps
    if schedule == "constant":
        return peak
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (min_ratio + (1.0 - min_ratio) * factor)
