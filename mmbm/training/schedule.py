"""The learning-rate schedule: linear warmup, then cosine decay to a floor.

Owns ``Schedule`` (frozen: peak LR, warmup steps, planned steps, floor ratio)
and its pure ``lr_at(step)``. The trainer sets each parameter group's LR from
it before every optimizer step, so the LR is a function of the step alone and a
resumed run needs only the schedule's fields (saved in the checkpoint) to
continue it exactly. Cosine decay as in SGDR (arXiv:1608.03983) without
restarts; warmup as in arXiv:1706.02677. Imports ``mmbm.errors`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmbm.errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    """LR for step s (0-based, the step about to be taken) of a run of ``total_steps`` steps.

    Warmup: ``peak * (s + 1) / warmup_steps`` for s < warmup_steps, reaching the
    peak on the last warmup step. Then cosine from the peak at s = warmup_steps
    to ``peak * min_ratio`` at s = total_steps (and after it).
    """

    peak: float
    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.peak <= 0:
            raise ConfigError(f"lr: peak learning rate must be positive, got {self.peak}")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ConfigError(f"schedule: need warmup_steps >= 0 and total_steps >= 1, got "
                              f"{self.warmup_steps} and {self.total_steps}")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_ratio}")

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        floor = self.peak * self.min_ratio
        return floor + (self.peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
