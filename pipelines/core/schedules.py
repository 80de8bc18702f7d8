"""Learning-rate schedules, per optimizer step.

* ``step``: the paper's small-scale schedule, ``lr · gamma^(number of milestones passed)``, where a
  milestone (an epoch number) is passed once that epoch has started (the official code decays at
  the start of epochs 155, 170 and 185 of 200).
* ``cosine``: half a cosine from ``lr`` to 0 over the epochs after the warm-up, evaluated every step.

Either may start with a linear warm-up over ``warmup_epochs`` (fractional epochs, per step).
"""

from __future__ import annotations

import math
from typing import Any


def learning_rate(step: int, steps_per_epoch: int, epochs: int, lr: float, schedule: dict[str, Any]) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    Args:
        step: global step index.
        steps_per_epoch: optimizer steps in one epoch.
        epochs: total epochs of the run.
        lr: the peak learning rate.
        schedule: ``name`` (step | cosine), ``milestones`` and ``gamma`` (step), ``warmup_epochs``.

    Returns:
        The learning rate.
    """
    progress = step / max(1, steps_per_epoch)  # epochs done, fractional
    warmup = float(schedule.get("warmup_epochs") or 0)
    if progress < warmup:
        return lr * (progress + 1 / max(1, steps_per_epoch)) / warmup
    if schedule["name"] == "step":
        epoch = step // max(1, steps_per_epoch)
        passed = sum(1 for m in schedule.get("milestones") or [] if epoch >= m)
        return lr * float(schedule["gamma"]) ** passed
    span = max(1e-12, epochs - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / span)))
