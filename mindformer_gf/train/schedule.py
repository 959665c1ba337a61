"""Learning-rate schedules as pure functions of the step (so a resumed run needs only the step number).

The names and curves are transformers' `get_scheduler` ones, which the reference's `lr_scheduler_type` selects:
every schedule but "constant" warms up linearly from 0 to the peak over `warmup_steps`, then
- "linear": decays linearly to `min_ratio` x peak at `total_steps`;
- "cosine": half a cosine down to `min_ratio` x peak;
- "cosine_with_restarts": `num_cycles` cosines, each restarting at the peak (hard restarts);
- "polynomial": (1 - progress) ** `power` from the peak down to `min_ratio` x peak (transformers' lr_end / lr);
- "constant_with_warmup": the peak after warmup;
- "constant": the peak from the first step (transformers ignores warmup for it, and so do we).
`min_ratio` (default 0) is our addition: a floor as a fraction of the peak. Past `total_steps` the rate stays at its
end value (transformers' plain cosine would rise again).
"""

from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def learning_rate(
    step: int,
    peak: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "linear",
    min_ratio: float = 0.0,
    power: float = 1.0,
    num_cycles: int = 1,
) -> float:
    """The learning rate used by optimisation step `step` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; use one of {SCHEDULES}")
    if schedule == "constant":
        return peak
    if warmup_steps > 0 and step < warmup_steps:
        return peak * step / warmup_steps
    if schedule == "constant_with_warmup":
        return peak
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule == "linear":
        factor = 1.0 - progress
    elif schedule == "polynomial":
        factor = (1.0 - progress) ** power
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # cosine_with_restarts
        factor = 0.0 if progress >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0)))
    return peak * (min_ratio + (1.0 - min_ratio) * factor)
