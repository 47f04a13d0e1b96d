"""A sweep is a reconcile, not a submit: from what exists, decide what to create. Pure.

The cluster (or, locally, the output storage) is the truth. Each run is looked at on its own:
- Succeeded: skip, whoever ran it (the same point in another sweep shares its id and outputs).
- Failed or Diverged: left alone, unless `retry_failed` (then it is created again and resumes from its checkpoint).
- Queued, Running, Restarting, Stalled: it exists; skip.
- Pending (never created, or preempted and gone): create it once every prerequisite it depends on has
  succeeded; wait while one is still on its way; block when one failed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

from orchestrator.core.expansion import Point
from orchestrator.core.run_status import RunStatus

ActionKind = Literal["create", "recreate", "skip", "wait", "blocked"]
FAILED = frozenset({"Failed", "Diverged"})
DELETING = "the previous run is still being deleted"


@dataclasses.dataclass(frozen=True)
class Action:
    kind: ActionKind
    run: Point
    reason: str

    @property
    def submits(self) -> bool:
        return self.kind in ("create", "recreate")


def reconcile(runs: Sequence[Point], statuses: Mapping[str, RunStatus], *, retry_failed: bool = False) -> list[Action]:
    """One action per run, in the order given (prerequisites first)."""
    actions = []
    for run in runs:
        status = statuses[run.run_id]
        if status.phase == "Succeeded":
            actions.append(Action("skip", run, "succeeded"))
        elif status.phase in FAILED:
            if retry_failed:
                actions.append(Action("recreate", run, f"retrying: {status.shown}"))
            else:
                actions.append(Action("skip", run, f"{status.shown}; --retry-failed runs it again"))
        elif status.phase != "Pending":
            actions.append(Action("skip", run, f"exists: {status.shown}"))
        elif status.reason == "Deleting":
            actions.append(Action("wait", run, DELETING))
        else:
            actions.append(_pending(run, statuses, retry_failed))
    return actions


def _pending(run: Point, statuses: Mapping[str, RunStatus], retry_failed: bool) -> Action:
    for name, run_id in run.depends_on.items():
        status = statuses.get(run_id)
        if status is None or status.phase == "Succeeded":
            continue
        if status.phase in FAILED and not retry_failed:
            return Action("blocked", run, f"prerequisite {name!r} is {status.shown}")
        return Action("wait", run, f"waiting for prerequisite {name!r} ({status.shown})")
    return Action("create", run, "new")
