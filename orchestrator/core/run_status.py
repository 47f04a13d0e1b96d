"""The phase a person sees for a run, derived (never stored) from what the backend observes and what the run wrote.

Kubernetes-style: a backend reports conditions `{type, status, reason, message}` with upstream reasons kept
verbatim (`ReachedMaxRestarts`, `Pending`, ...); the output storage adds the trainer's own verdict
(`summary.json`) and liveness (the time of the last metrics record).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re

from distillspec.contract import (
    LABEL_QUEUE,
    STOPPED_REASONS,
    DivergedReason,
    FailedReason,
    PendingReason,
    QueuedReason,
    RestartingReason,
    StalledReason,
    StoppedReason,
    StuckReason,
)
from orchestrator.core import aggregate
from orchestrator.core.aggregate import KL_T1
from orchestrator.outputs import RunOutputs


class Phase(enum.StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    STUCK = "Stuck"  # its JobSet exists, but pods cannot start (image pull, missing Secret, unschedulable)
    STALLED = "Stalled"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DIVERGED = "Diverged"
    STOPPED = "Stopped"  # an early-stopping rule stopped it (the sweep service); never created again


TERMINAL: frozenset[Phase] = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.DIVERGED, Phase.STOPPED})
FAILED: frozenset[Phase] = frozenset({Phase.FAILED, Phase.DIVERGED})  # ended without a usable result
DEFAULT_STALL_SECONDS = 900.0  # no new metrics for this long while running: Stalled
# Pending reasons no backend moves on from: `distillctl sweep` submits the run (again). Waiting for one only ends in
# a timeout.
AWAITS_SUBMISSION = frozenset(
    {
        PendingReason.NOT_CREATED,
        PendingReason.PREEMPTED,
        PendingReason.SUPERVISOR_GONE,
        PendingReason.ORPHANED,
        PendingReason.NOT_ACCEPTED,
    }
)


@dataclasses.dataclass(frozen=True)
class Condition:
    """A backend's condition, as Kubernetes writes them (`Failed`, `Completed`, ...)."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""
    last_transition_time: float | None = None  # unix seconds; when `status` last changed


@dataclasses.dataclass(frozen=True)
class PodProblem:
    """Why one pod of a run is not running: a kubelet waiting reason, the scheduler's verdict, or a warning
    Event, with its message verbatim."""

    reason: str  # distillspec.contract.StuckReason
    message: str
    pod: str = ""

    @property
    def heals(self) -> bool:
        """Whether waiting can fix it. An image that does not exist or may not be pulled, an invalid image name,
        or a missing Secret/ConfigMap stay broken until someone changes the sweep or the cluster; a busy or
        scaling cluster (Unschedulable), a registry hiccup or a slow volume may pass."""
        if self.reason in (
            StuckReason.INVALID_IMAGE_NAME,
            StuckReason.ERR_IMAGE_NEVER_PULL,
            StuckReason.CREATE_CONTAINER_CONFIG_ERROR,
        ):
            return False
        if self.reason in (StuckReason.IMAGE_PULL_BACK_OFF, StuckReason.ERR_IMAGE_PULL):
            return not _PULL_WONT_HEAL.search(self.message)
        return True


# What a registry answers for an image that is not there or not ours to pull (containerd's and the registries'
# wording: `code = NotFound`, `manifest unknown`, `401 Unauthorized`, `403 Forbidden`, `denied`).
_PULL_WONT_HEAL = re.compile(r"not ?found|manifest unknown|unauthorized|forbidden|denied|\b40[134]\b", re.I)


@dataclasses.dataclass(frozen=True)
class Observation:
    """What a backend sees of one run, normalised across backends."""

    exists: bool
    conditions: tuple[Condition, ...] = ()
    suspended: bool = False
    restarts: int = 0
    active: bool = False  # some pod/process of the current attempt is running
    queue_reason: str = ""  # Kueue's reason while not admitted
    queue_message: str = ""
    created_at: float | None = None  # unix seconds
    started_at: float | None = None  # when the current attempt was let run (admitted by Kueue, process started)
    deleting: bool = False  # being deleted (a cancel in progress): its name is not free yet
    pod_problems: tuple[PodProblem, ...] = ()  # pods of the current attempt that cannot start, and why
    owner: str = ""  # the sweep that created it, when not the sweep being looked at (run ids are shared)
    name: str = ""  # the backend's name for it (a JobSet's), when known
    lost: str = ""  # submitted once, yet nothing will run it now, and why (a local supervisor that is gone)
    labels: tuple[tuple[str, str], ...] = ()  # a cluster run's labels as created (its JobSet's, sorted)
    failed_worker: str = ""  # a failed run's first failed worker and its exit (`slice 0, worker 3 exited 137 (...)`)
    claimed_at: float | None = None  # no run yet, but `owner` claimed it then (unix seconds) and may create it
    claim_expires_at: float | None = None  # when that claim turns stale and any sweep may take the run over
    # Stopped by `cancel` (a local run's record of it): its trainer may still be saving its checkpoint, its outputs
    # still saying running. Read "Orphaned" then, `sweep --wait` handed it over again and undid the cancel.
    cancelled: bool = False

    @property
    def queue(self) -> str:
        """The Kueue LocalQueue a cluster run was created in (its queue label), "" when it has none."""
        return dict(self.labels).get(LABEL_QUEUE, "")

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind and c.status == "True"), None)


@dataclasses.dataclass(frozen=True)
class RunStatus:
    phase: Phase
    reason: str = ""  # CamelCase: distillspec.contract's reasons, or the backend's verbatim
    message: str = ""
    restarts: int = 0
    step: int | None = None
    total_steps: int | None = None
    kl_div_t1: float | None = None
    age_seconds: float | None = None
    created_at: float | None = None  # unix seconds: the service's status carries this, not the age
    last_metrics_at: float | None = None
    since: float | None = None  # when the backend's deciding condition last changed (unix seconds), if known
    heals: bool = True  # False: Stuck on something waiting will not fix (a missing image or Secret)
    owner: str = ""  # another sweep that created this run (the same point, the same outputs): it is left to it

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def diverged(self) -> bool:
        """Its loss blew up: Diverged, or stopped by the early-stopping divergence rule (a failure, not a choice)."""
        return self.phase == Phase.DIVERGED or (self.phase == Phase.STOPPED and self.reason == StoppedReason.DIVERGENCE)

    @property
    def never_admitted(self) -> bool:
        """Queued for good: Kueue says the request exceeds what the queue could ever give it (not that the
        quota is busy: that reads "insufficient unused quota ... N more needed")."""
        return self.phase == Phase.QUEUED and "> maximum capacity" in self.message

    @property
    def awaits_submission(self) -> bool:
        """Pending until `distillctl sweep` submits it: nothing else starts it."""
        return self.phase == Phase.PENDING and self.reason in AWAITS_SUBMISSION

    @property
    def will_not_start(self) -> bool:
        """Stuck on something that waiting will not fix: `--wait` stops and names it."""
        return self.phase == Phase.STUCK and not self.heals

    @property
    def shown(self) -> str:
        """`Queued (Pending)`, `Restarting 2`, `Failed (ReachedMaxRestarts)`, `Running (owned by sweep a)`."""
        if self.phase == Phase.RESTARTING:
            text = f"Restarting {self.restarts}"
        else:
            text = f"{self.phase} ({self.reason})" if self.reason else str(self.phase)
        return f"{text} (owned by sweep {self.owner})" if self.owner else text


def derive(
    observation: Observation, outputs: RunOutputs, *, now: float, stall_after: float, total_steps: int | None = None
) -> RunStatus:
    """The run's status. Order matters: the trainer's own verdict (diverged, succeeded) beats the backend's — but
    only a verdict this attempt wrote: a retried run must not read as its predecessor's result."""
    summary = outputs.summary or {}
    last_time = _last_metrics_time(outputs)
    common = dict(
        restarts=observation.restarts,
        step=outputs.last_step,
        total_steps=summary.get("total_steps") if isinstance(summary.get("total_steps"), int) else total_steps,
        kl_div_t1=aggregate.metric(aggregate.last(outputs.log, 1), KL_T1),
        age_seconds=(now - observation.created_at) if observation.created_at else None,
        created_at=observation.created_at,
        last_metrics_at=last_time,
        owner=observation.owner,
    )
    final = outputs.verdict or {}  # summary.json, or a failed worker's file when summary.json says no more
    verdict = final.get("status") if _current(final, observation) else None
    if outputs.stopped is not None and final.get("status") != "succeeded":  # it finished before the stop
        return stopped_status(outputs.stopped, **common)
    if observation.deleting:
        return RunStatus(Phase.PENDING, PendingReason.DELETING, "the previous run is still being deleted", **common)
    if verdict == "diverged":  # the trainer's words name the first step that was not finite
        said = str(final.get("message") or "") or "the loss became NaN or infinite"
        return RunStatus(Phase.DIVERGED, DivergedReason.LOSS_NOT_FINITE, said, **common)
    if failed := observation.condition("Failed"):
        message = failed.message
        said = str(final.get("message") or "") if verdict == "failed" else ""  # the trainer's own words, this attempt
        if said and said not in message:
            message = f"{message}: {said}" if message else said
        elif not said and observation.failed_worker:  # no verdict (killed, a crash): how its worker ended
            message = f"{message}: {observation.failed_worker}" if message else observation.failed_worker
        reason = failed.reason
        if verdict == "failed" and final.get("failure_reason") == "output_not_writable":  # a full disk too
            reason = FailedReason.OUTPUT_NOT_WRITABLE  # the exit code (1) alone read UserError
        return RunStatus(Phase.FAILED, reason, message, since=failed.last_transition_time, **common)
    completed = observation.condition("Completed")
    if completed or (verdict == "succeeded" and not observation.active):
        return RunStatus(Phase.SUCCEEDED, since=completed.last_transition_time if completed else None, **common)
    if not observation.exists:
        if observation.claimed_at is not None:  # before the outputs' word: the claimer is about to run it again
            return RunStatus(Phase.PENDING, PendingReason.CLAIMED, _claimed_message(observation, now), **common)
        if observation.lost:  # queued again since its outputs were written: they are an earlier attempt's
            return RunStatus(Phase.PENDING, PendingReason.SUPERVISOR_GONE, observation.lost, **common)
        if verdict == "failed":
            return RunStatus(Phase.FAILED, FailedReason.TRAINER_EXIT, _failure_message(final), **common)
        if verdict == "preempted":  # stopped by SIGTERM (cancel, preemption): it resumes when created again
            said = _preempted_message(final)
            said = f"cancelled: {said}" if observation.cancelled else said  # not a preemption's
            return RunStatus(Phase.PENDING, PendingReason.PREEMPTED, said, **common)
        if observation.cancelled and verdict == "running":
            return RunStatus(Phase.PENDING, PendingReason.PREEMPTED, CANCELLED_MESSAGE, **common)
        if verdict == "running":  # nothing runs it any more (deleted, or its machine went away)
            return RunStatus(
                Phase.PENDING,
                PendingReason.ORPHANED,
                "outputs say running, but no run exists; resumes when submitted",
                **common,
            )
        if outputs.unreadable:  # read as absent, a run that succeeded read "not submitted yet"
            said = "; ".join(outputs.unreadable)
            return RunStatus(Phase.PENDING, PendingReason.NOT_OBSERVED, f"{said}: check its permissions", **common)
        said = "cancelled before it started; submitted again by `sweep`" if observation.cancelled else NOT_SUBMITTED
        return RunStatus(Phase.PENDING, PendingReason.NOT_CREATED, said, **common)
    if observation.suspended or observation.queue_reason:
        reason = observation.queue_reason or QueuedReason.SUSPENDED
        return RunStatus(Phase.QUEUED, reason, observation.queue_message, **common)
    if observation.pod_problems:
        # A Job counts pending pods as active: without this the run would read Running while nothing runs.
        # The problem that will not heal comes first; one pod speaks for the others (they share a template).
        problem = min(observation.pod_problems, key=lambda p: p.heals)
        where = f"pod {problem.pod}: " if problem.pod else ""
        return RunStatus(Phase.STUCK, problem.reason, where + problem.message, heals=problem.heals, **common)
    if observation.restarts and not observation.active:
        return RunStatus(
            Phase.RESTARTING,
            RestartingReason.RESTARTING,
            f"attempt {observation.restarts + 1} is starting",
            **common,
        )
    # Stalled: running, yet nothing logged for stall_after, counted from the later of the last record and the start
    # of this attempt (time spent queued, or before a resume, is not stalling). Unreadable outputs say nothing.
    started = max((t for t in (last_time, observation.started_at) if t is not None), default=observation.created_at)
    if observation.active and outputs.readable and started is not None and now - started > stall_after:
        since = int(now - started)
        return RunStatus(Phase.STALLED, StalledReason.NO_NEW_METRICS, f"no new metrics for {since}s", **common)
    return RunStatus(Phase.RUNNING, **common)


def _claimed_message(observation: Observation, now: float) -> str:
    age = max(0, round(now - observation.claimed_at))
    left = max(0, round((observation.claim_expires_at or now) - now))
    return (
        f"claimed {age} s ago by sweep {observation.owner}, which has not created its run yet; if it never does "
        f"(killed in between), a sweep takes the point over in {left} s"
    )


NOT_SUBMITTED = "not submitted yet"
CANCELLED_MESSAGE = "cancelled; resumes from its latest checkpoint when submitted again"


def _preempted_message(final: dict) -> str:
    """A stopped run's state in the trainer's terms: a stop before the first step saved nothing (it said "stopped
    with a checkpoint" then too)."""
    step = final.get("step")
    if step == 0:
        return "stopped before its first step, nothing saved; starts from step 0 when submitted again"
    said = str(final.get("message") or "")
    if "no checkpoint" in said or "incomplete" in said:  # checkpoint.enabled false; a teacher_logits run's cache
        return f"{said}; starts again when submitted"
    where = f" at step {step}" if isinstance(step, int) else ""
    return f"stopped{where} with a checkpoint; resumes from it when submitted again"


def _failure_message(verdict: dict) -> str:
    """`exit code 1: <the trainer's words>`, and for a process other than 0 which one (its summary.json cannot say
    it). The words were said only for another process: a failed run read "exit code 1" in `status` and `regress`."""
    text = f"exit code {verdict.get('exit_code')}"
    if isinstance(verdict.get("process_index"), int):
        text += f" on process {verdict['process_index']}"
    return text + (f": {verdict['message']}" if verdict.get("message") else "")


CLOCK_SLACK_SECONDS = 5.0  # summary.json times have whole seconds; hosts' clocks differ a little


def _current(summary: dict, observation: Observation) -> bool:
    """Whether summary.json speaks for the run the backend sees: always when nothing is running (the outputs are
    then the truth), else only when it was written during the current attempt."""
    if not observation.exists or observation.condition("Failed") or observation.condition("Completed"):
        return True
    attempt_start = observation.started_at or observation.created_at
    written = parse_timestamp(summary.get("updated_at"))
    return attempt_start is None or (written is not None and written >= attempt_start - CLOCK_SLACK_SECONDS)


def parse_timestamp(value) -> float | None:
    """Unix seconds from an RFC 3339 time (`2026-12-01T10:00:00Z`); None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _last_metrics_time(outputs: RunOutputs) -> float | None:
    times = [r.time for r in outputs.log if r.time is not None]
    return times[-1] if times else None


def stopped_status(record: dict, **common) -> RunStatus:
    """A run an early-stopping rule stopped, from its `stopped.json` record (`rule`, `step`, `message`)."""
    rule = str(record.get("rule", ""))
    step = record.get("step")
    message = (
        f"stopped at step {step}: {record.get('message', '')}" if step is not None else str(record.get("message", ""))
    )
    return RunStatus(Phase.STOPPED, STOPPED_REASONS.get(rule, rule or "EarlyStopped"), message, **common)
