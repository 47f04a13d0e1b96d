"""A sweep is a reconcile, not a submit: from what exists, decide what to create. Pure.

The cluster (or, locally, the output storage) is the truth. Each run is looked at on its own:
- Succeeded: skip, whoever ran it (the same point in another sweep shares its id and outputs).
- Failed or Diverged (also when its JobSet is gone: the verdict is read from its outputs): left alone, unless
  `retry_failed` (then it is created again and resumes from its checkpoint; not when another sweep owns it).
- Stopped (an early-stopping rule's verdict, kept in its outputs and the sweep's status): left alone for good;
  `retry_failed` does not restart it.
- Queued, Running, Restarting, Stuck, Stalled: it exists (created by this sweep or another with the same point:
  either way its outputs are the same); skip.
- Pending (never created, or preempted and gone): create it once every prerequisite it depends on has
  succeeded; wait while one is still on its way; block when one failed. Not one whose outputs cannot be read
  (NotObserved: permissions): its run may well have succeeded, and a new one would fail on the same folder.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

from distillspec.contract import PendingReason
from orchestrator.core.expansion import Point
from orchestrator.core.run_status import FAILED, Phase, RunStatus


class ActionKind(enum.StrEnum):
    CREATE = "create"
    RECREATE = "recreate"  # --retry-failed: delete the failed run, create it again (it resumes)
    SKIP = "skip"
    WAIT = "wait"
    BLOCKED = "blocked"  # a prerequisite failed: this run will never start unless it is retried


class Waiting(enum.StrEnum):
    """What a `wait` action waits for."""

    PREREQUISITE = "prerequisite"
    DELETION = "deletion"  # the previous run of the same id is still being deleted
    CLAIM = "claim"  # another sweep claimed the point and has not created its run yet


@dataclasses.dataclass(frozen=True)
class Action:
    kind: ActionKind
    run: Point
    reason: str
    waiting_for: Waiting | None = None

    @property
    def submits(self) -> bool:
        return self.kind in (ActionKind.CREATE, ActionKind.RECREATE)


def reconcile(runs: Sequence[Point], statuses: Mapping[str, RunStatus], *, retry_failed: bool = False) -> list[Action]:
    """One action per run, in the order given (prerequisites first)."""
    actions = []
    for run in runs:
        status = statuses[run.run_id]
        if status.phase == Phase.SUCCEEDED:
            actions.append(Action(ActionKind.SKIP, run, "succeeded"))
        elif status.phase == Phase.STOPPED:  # an early-stopping verdict: never created again, retries or not
            actions.append(Action(ActionKind.SKIP, run, f"{status.shown}; stopped early, never restarted"))
        elif status.phase in FAILED:
            if retry_failed and status.owner:  # its JobSet is another sweep's: never replaced from here
                actions.append(Action(ActionKind.SKIP, run, f"{status.shown}; retry it from sweep {status.owner}"))
            elif retry_failed:
                actions.append(Action(ActionKind.RECREATE, run, f"retrying: {status.shown}"))
            else:
                actions.append(Action(ActionKind.SKIP, run, f"{status.shown}; --retry-failed runs it again"))
        elif status.phase != Phase.PENDING:
            actions.append(Action(ActionKind.SKIP, run, f"exists: {status.shown}"))
        elif status.reason == PendingReason.DELETING:
            actions.append(Action(ActionKind.WAIT, run, status.message, Waiting.DELETION))
        elif status.reason == PendingReason.CLAIMED:
            actions.append(Action(ActionKind.WAIT, run, status.message, Waiting.CLAIM))
        elif status.reason == PendingReason.NOT_OBSERVED:  # its outputs cannot be read: not "never created"
            reason = f"{status.shown}: {status.message}; submitted once its outputs can be read"
            actions.append(Action(ActionKind.SKIP, run, reason))
        else:
            actions.append(_pending(run, statuses, retry_failed))
    return actions


def _pending(run: Point, statuses: Mapping[str, RunStatus], retry_failed: bool) -> Action:
    for name, run_id in run.depends_on.items():
        status = statuses.get(run_id)
        if status is None or status.phase == Phase.SUCCEEDED:
            continue
        if status.phase in FAILED and not retry_failed:
            return Action(ActionKind.BLOCKED, run, f"prerequisite {name!r} is {status.shown}")
        return Action(ActionKind.WAIT, run, f"waiting for prerequisite {name!r} ({status.shown})", Waiting.PREREQUISITE)
    return Action(ActionKind.CREATE, run, "new")
