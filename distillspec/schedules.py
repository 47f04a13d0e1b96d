"""α, β and temperature schedules, with the formulas of the distillation guide.

`progress = clip(step / max_steps, 0, 1)`; past `max_steps` the value freezes at `end`.
- constant: `start` (`end` is ignored)
- linear:   `start + (end - start) * progress`
- cosine:   `end + (start - end) * 0.5 * (1 + cos(pi * progress))`

`step` is the optimizer step. It may be a Python number (planning, `explain`) or an array inside a jitted step;
an array is computed with its own namespace (`step.__array_namespace__()`, the Array API), so this module never
imports JAX.
"""

from __future__ import annotations

import math
from typing import Literal

ScheduleKind = Literal["constant", "linear", "cosine"]
SCHEDULE_KINDS: tuple[ScheduleKind, ...] = ("constant", "linear", "cosine")


def schedule_value(kind: ScheduleKind, start: float, end: float | None, step, max_steps: int):
    """The scheduled value at optimizer step `step` of `max_steps`; `end=None` holds `start`."""
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULE_KINDS)}")
    if kind == "constant" or end is None:
        return start if isinstance(step, (int, float)) else _namespace(step).asarray(start, dtype="float32")
    if isinstance(step, (int, float)):
        progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
        cos = math.cos
    else:
        xp = _namespace(step)
        progress = xp.clip(xp.asarray(step, dtype="float32") / max(max_steps, 1), 0.0, 1.0)
        cos = xp.cos
    if kind == "linear":
        return start + (end - start) * progress
    return end + (start - end) * 0.5 * (1.0 + cos(math.pi * progress))


def _namespace(array):
    """The array's own module of functions (jax.numpy for a JAX array or tracer)."""
    return array.__array_namespace__()
