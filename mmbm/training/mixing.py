"""Task mixing: which tasks each micro-step of an optimizer step trains, and with what loss scale.

Owns ``plan_micro_steps`` and ``MicroStep``. Two schedules, both of which show
every task to every optimizer step:

- ``"sum"``: each micro-step draws one image-text batch and one speech batch and
  sums the three weighted losses (caption and retrieval share one forward pass
  over the image-text batch).
- ``"round_robin"``: micro-steps take turns, caption, retrieval, speech, caption,
  ...; each draws only the batch its task needs (so caption and retrieval see
  different image-text batches), and a step needs a multiple of three micro-steps.

The scale of task t in a micro-step is ``weight_t / n_t``, n_t being how many
micro-steps of the step train t, so the step's gradient is always
``sum_t weight_t * mean(loss_t over its batches)`` whatever the schedule. A task
whose weight is 0 is left out of every micro-step (no batch, no forward pass),
which is how single-task runs are made.
Imports ``mmbm.errors`` and this package's ``config`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mmbm.errors import ConfigError
from mmbm.training.train_config import TASKS, Mixing

IMAGE_TEXT_TASKS = frozenset({"caption", "retrieval"})


@dataclass(frozen=True)
class MicroStep:
    """The tasks of one micro-step and the factor each task's loss is multiplied by."""

    scales: dict[str, float]  # task -> weight / (micro-steps of this optimizer step that train it)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if t in self.scales)

    @property
    def needs_image_text(self) -> bool:
        return bool(IMAGE_TEXT_TASKS & self.scales.keys())

    @property
    def needs_speech(self) -> bool:
        return "speech" in self.scales


def plan_micro_steps(mixing: Mixing, grad_accum: int, weights: Mapping[str, float]) -> tuple[MicroStep, ...]:
    """The ``grad_accum`` micro-steps of one optimizer step, in order."""
    if set(weights) != set(TASKS):
        raise ConfigError(f"task weights: need exactly {TASKS}, got {sorted(weights)}")
    if grad_accum < 1:
        raise ConfigError(f"grad_accum: must be >= 1, got {grad_accum}")
    active = tuple(task for task in TASKS if weights[task] > 0)  # a zero weight skips the task entirely
    if not active:
        raise ConfigError(f"task weights: at least one must be positive, got {dict(weights)}")
    if mixing == "sum":
        groups = [active] * grad_accum
    elif mixing == "round_robin":
        if grad_accum % len(TASKS):
            raise ConfigError(f"grad_accum: round_robin needs a multiple of {len(TASKS)}, got {grad_accum}")
        groups = [(active[i % len(active)],) for i in range(grad_accum)]
    else:
        raise ConfigError(f"mixing: must be 'sum' or 'round_robin', got {mixing!r}")
    counts = {task: sum(task in group for group in groups) for task in active}
    return tuple(MicroStep({task: weights[task] / counts[task] for task in group}) for group in groups)
