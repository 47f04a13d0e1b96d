"""Following a sweep to its end, as a stream of events.

Each round looks at every run, submits what has become ready (points whose prerequisites finished; runs a dead
local supervisor lost) and yields a `Polled` event; the last event is a `Finished` with the outcome. Printing and
exit codes belong to the front end (the CLI prints the events, the service writes them to the sweep's status);
time is injected, so the loop is tested with a fake clock and no sleeping.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Iterator

from distillspec.contract import PendingReason
from orchestrator.backends import Backend
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.launch import to_submit
from orchestrator.core.reconcile import Action, ActionKind, reconcile
from orchestrator.core.run_status import DEFAULT_STALL_SECONDS, Phase
from orchestrator.core.status import SweepState, look
from orchestrator.errors import DistillctlError
from orchestrator.exit_codes import ExitCode

POLL_SECONDS = 2.0


ADMITTED = (Phase.RUNNING, Phase.RESTARTING, Phase.STALLED, Phase.STUCK)  # phases that hold a queue's quota


OUTAGE_SECONDS = 900.0  # how long a follower waits for an API server that stopped answering


class Outage:
    """An API server that stopped answering (a control-plane upgrade lasts minutes while the runs go on): waited
    for up to `limit` seconds; `tell` is told when it went and when it is back."""

    def __init__(
        self,
        tell: Callable[[str], None],
        *,
        limit: float = OUTAGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.tell, self.limit, self.clock = tell, limit, clock
        self.since: float | None = None

    def rides_out(self, e: DistillctlError) -> bool:
        """Whether to wait and look again after `e` (else the caller raises it): only while the cluster is
        unreachable, and not for longer than the limit."""
        if e.exit_code != ExitCode.CLUSTER_UNREACHABLE:
            return False
        now = self.clock()
        if self.since is None:
            self.since = now
            self.tell(f"{e.message}; retrying for up to {self.limit / 60:g} minutes (the runs go on)")
            return True
        return now - self.since <= self.limit

    def answered(self) -> None:
        if self.since is not None:
            self.tell(f"the API server answers again, after {self.clock() - self.since:.0f} s")
            self.since = None


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"  # every run succeeded
    FAILED = "failed"  # every run ended (or is blocked by a failed prerequisite), some did not succeed
    NEVER_ADMITTED = "never_admitted"  # Kueue says the request exceeds what the queue could ever give
    WILL_NOT_START = "will_not_start"  # pods stuck on what waiting will not fix (missing image or Secret)
    TIMED_OUT_QUEUED = "timed_out_queued"  # the timeout passed with runs still waiting for Kueue
    TIMED_OUT = "timed_out"  # the timeout passed; the runs keep going


@dataclasses.dataclass(frozen=True)
class Polled:
    """One look at the sweep, and the runs handed to the backend after it."""

    state: SweepState
    actions: tuple[Action, ...]
    submitted: tuple[Point, ...]


@dataclasses.dataclass(frozen=True)
class Finished:
    """The end: `runs` are the ones the outcome is about (failed, never admitted, still queued)."""

    outcome: Outcome
    state: SweepState
    runs: tuple[Point, ...] = ()


Event = Polled | Finished


def follow(
    expansion: Expansion,
    backend: Backend,
    *,
    stall_after: float = DEFAULT_STALL_SECONDS,
    timeout: float | None = None,
    poll: float = POLL_SECONDS,
    wall: Callable[[], float] = time.time,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_outage: Callable[[str], None] = lambda message: None,
) -> Iterator[Event]:
    """Events until every run is terminal or blocked, Kueue will never admit one, one's pods are stuck on what
    waiting will not fix, or `timeout` seconds pass. An API server that stops answering is waited for up to
    `OUTAGE_SECONDS` (`on_outage` is told when it goes and when it is back)."""
    deadline = None if timeout is None else clock() + timeout
    seen: set[str] = set()  # runs this follower saw exist
    outage = Outage(on_outage, clock=clock)
    while True:
        try:
            state = look(expansion, backend, now=wall(), stall_after=stall_after, strict_outputs=False)  # as launch
        except DistillctlError as e:
            # A follower that gave up after 7 s of a control-plane upgrade ended a multi-day `--wait` (and CI's
            # job) with exit 5.
            if (deadline is not None and clock() > deadline) or not outage.rides_out(e):
                raise
            sleep(poll)
            continue
        outage.answered()
        statuses = state.statuses
        # A run seen existing that is gone (deleted, or stopped with a checkpoint) was stopped on purpose: `cancel`,
        # a supervisor told to stop. Created again here, a cancel was undone within a poll. Runs lost to a crash
        # (a killed supervisor: SupervisorGone, Orphaned) are still handed over again.
        cancelled = {rid for rid in seen if _stopped_on_purpose(statuses[rid])}
        seen |= {rid for rid, status in statuses.items() if status.phase != Phase.PENDING}
        actions = tuple(reconcile(expansion.runs, statuses))
        ready = tuple(run for run in to_submit(backend, actions) if run.run_id not in cancelled)
        if ready:
            backend.submit(ready, expansion)
        yield Polled(state, actions, ready)
        hopeless = tuple(run for run in expansion.runs if statuses[run.run_id].never_admitted)
        if hopeless:
            yield Finished(Outcome.NEVER_ADMITTED, state, hopeless)
            return
        stuck = tuple(run for run in expansion.runs if statuses[run.run_id].will_not_start)
        if stuck:
            yield Finished(Outcome.WILL_NOT_START, state, stuck)
            return
        blocked = {a.run.run_id for a in actions if a.kind == ActionKind.BLOCKED}
        # Points waiting on a cancelled prerequisite wait for nobody: as blocked.
        blocked |= {
            a.run.run_id
            for a in actions
            if a.kind == ActionKind.WAIT and any(rid in cancelled for rid in a.run.depends_on.values())
        }
        if all(statuses[run.run_id].terminal or run.run_id in blocked | cancelled for run in expansion.runs):
            # Stopped by an early-stopping rule (the service's verdict) is what the sweep asked for, not a failure.
            done = (Phase.SUCCEEDED, Phase.STOPPED)
            failed = tuple(run for run in expansion.runs if statuses[run.run_id].phase not in done)
            yield Finished(Outcome.FAILED if failed else Outcome.SUCCEEDED, state, failed)
            return
        if deadline is not None and clock() > deadline:
            queued = tuple(run for run in expansion.runs if statuses[run.run_id].phase == Phase.QUEUED)
            # Runs of this sweep that hold quota: the queued ones may only wait for them, not for a quota that
            # is too small (exit 9 and "check the ClusterQueue's quota" sent people to the wrong place).
            admitted = any(statuses[run.run_id].phase in ADMITTED for run in expansion.runs)
            if queued and expansion.sweep.target.on_cluster and not admitted:
                yield Finished(Outcome.TIMED_OUT_QUEUED, state, queued)
            else:
                yield Finished(Outcome.TIMED_OUT, state)
            return
        sleep(poll)


def _stopped_on_purpose(status) -> bool:
    """Gone without a crash: deleted (NotCreated) or stopped with a checkpoint (Preempted)."""
    return status.phase == Phase.PENDING and status.reason in (PendingReason.NOT_CREATED, PendingReason.PREEMPTED)
