"""Launching a sweep is a reconcile: look at what exists, decide, hand the backend what is missing.

The backend does the I/O; time is injected (`clock`, `sleep`), so this is tested without a cluster or waiting.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

from orchestrator.backends import Backend, DryRun, Submitted
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.reconcile import Action, ActionKind, Waiting, reconcile
from orchestrator.core.run_status import DEFAULT_STALL_SECONDS
from orchestrator.core.status import SweepState, look
from orchestrator.errors import DistillctlError

DELETE_WAIT_SECONDS = 120.0
DRY_RUN_RECREATE = "dry-run-recreate"  # a retry that a dry run only describes: the failed run still exists


@dataclasses.dataclass(frozen=True)
class LaunchReport:
    """What `sweep` decided for each run (`actions`, prerequisites first) and what the backend did with the runs
    it was handed (`submitted`, by run id)."""

    state: SweepState
    actions: tuple[Action, ...]
    submitted: Mapping[str, Submitted | str]


def to_submit(backend: Backend, actions: Sequence[Action]) -> list[Point]:
    """Runs to hand to the backend now: new ones; with a backend that orders prerequisites itself, also the ones
    that wait for a prerequisite."""
    return [
        a.run
        for a in actions
        if a.submits
        or (a.kind == ActionKind.WAIT and backend.handles_dependencies and a.waiting_for == Waiting.PREREQUISITE)
    ]


def launch(
    expansion: Expansion,
    backend: Backend,
    *,
    retry_failed: bool = False,
    dry_run: DryRun | None = None,
    stall_after: float = DEFAULT_STALL_SECONDS,
    wall: Callable[[], float] = time.time,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LaunchReport:
    """Create the sweep's runs that do not exist yet (prerequisites first). With `retry_failed`, failed runs are
    deleted first and created again (they resume from their checkpoints). A dry run deletes and creates nothing."""
    backend.preflight(expansion)
    # An unreadable store is a warning here: the pods may reach a store this machine cannot.
    state = look(expansion, backend, now=wall(), stall_after=stall_after, strict_outputs=False)
    actions = tuple(reconcile(expansion.runs, state.statuses, retry_failed=retry_failed))
    runs = to_submit(backend, actions)
    recreated = [a.run for a in actions if a.kind == ActionKind.RECREATE]
    if dry_run is not None:
        # The failed run a retry would replace still exists, so the server cannot dry-run its creation.
        ids = {run.run_id for run in recreated}
        runs = [run for run in runs if run.run_id not in ids]
        done = backend.submit(runs, expansion, dry_run=dry_run) if runs else {}
        return LaunchReport(state, actions, {**done, **{run_id: DRY_RUN_RECREATE for run_id in ids}})
    if recreated:
        delete_and_wait(backend, expansion, recreated, clock=clock, sleep=sleep)
    # Called with nothing new too: a local supervisor that runs takes a changed target.parallelism from it.
    return LaunchReport(state, actions, backend.submit(runs, expansion))


def delete_and_wait(
    backend: Backend,
    expansion: Expansion,
    runs: Sequence[Point],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    limit: float = DELETE_WAIT_SECONDS,
) -> None:
    """Delete `runs` and wait until the backend no longer sees them (their names are free again)."""
    backend.delete(runs)
    deadline = clock() + limit
    wanted = {run.run_id for run in runs}
    while wanted & {run_id for run_id, seen in backend.observe(expansion).items() if seen.exists}:
        if clock() > deadline:
            raise DistillctlError(
                "the failed runs were not deleted in time", "check the cluster, then run the sweep again"
            )
        sleep(1.0)
