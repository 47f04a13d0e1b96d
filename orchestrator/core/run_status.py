"""The phase a person sees for a run, derived (never stored) from what the backend observes and what the run wrote.

Kubernetes-style: a backend reports conditions `{type, status, reason, message}` with upstream reasons kept
verbatim (`ReachedMaxRestarts`, `Pending`, ...); the output storage adds the trainer's own verdict
(`summary.json`) and liveness (the time of the last metrics record).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Literal

from orchestrator.core import aggregate
from orchestrator.core.aggregate import KL_T1
from orchestrator.outputs import RunOutputs

Phase = Literal["Pending", "Queued", "Running", "Restarting", "Succeeded", "Failed", "Diverged", "Stalled"]
TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed", "Diverged"})
DEFAULT_STALL_SECONDS = 900.0  # no new metrics for this long while running: Stalled


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""


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
    lost: str = ""  # local backend: the process ended without a verdict
    deleting: bool = False  # being deleted (a cancel in progress): its name is not free yet

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind and c.status == "True"), None)


@dataclasses.dataclass(frozen=True)
class RunStatus:
    phase: Phase
    reason: str = ""
    message: str = ""
    restarts: int = 0
    step: int | None = None
    total_steps: int | None = None
    kl_div_t1: float | None = None
    age_seconds: float | None = None
    last_metrics_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def never_admitted(self) -> bool:
        """Queued for good: Kueue says the request exceeds what the queue could ever give it (not that the
        quota is busy: that reads "insufficient unused quota ... N more needed")."""
        return self.phase == "Queued" and "> maximum capacity" in self.message

    @property
    def shown(self) -> str:
        """`Queued (Pending)`, `Restarting 2`, `Failed (ReachedMaxRestarts)`."""
        if self.phase == "Restarting":
            return f"Restarting {self.restarts}"
        return f"{self.phase} ({self.reason})" if self.reason else self.phase


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
        last_metrics_at=last_time,
    )
    final = outputs.verdict or {}  # summary.json, or a failed worker's file when summary.json says no more
    verdict = final.get("status") if _current(final, observation) else None
    if observation.deleting:
        return RunStatus("Pending", "Deleting", "the previous run is still being deleted", **common)
    if verdict == "diverged":
        return RunStatus("Diverged", "LossNotFinite", "the loss became NaN or infinite", **common)
    if failed := observation.condition("Failed"):
        return RunStatus("Failed", failed.reason, failed.message, **common)
    if observation.condition("Completed") or (verdict == "succeeded" and not observation.active):
        return RunStatus("Succeeded", **common)
    if not observation.exists:
        if verdict == "failed":
            return RunStatus("Failed", "TrainerExit", _failure_message(final), **common)
        if verdict == "preempted":  # stopped by SIGTERM (cancel, preemption): it resumes when created again
            return RunStatus(
                "Pending", "Preempted", "stopped with a checkpoint; resumes when submitted again", **common
            )
        if verdict == "running":  # nothing runs it any more (deleted, or its machine went away)
            return RunStatus(
                "Pending", "Orphaned", "outputs say running, but no run exists; resumes when submitted", **common
            )
        return RunStatus("Pending", "NotCreated", "not submitted yet", **common)
    if observation.lost:
        return RunStatus("Failed", "ProcessLost", observation.lost, **common)
    if observation.suspended or observation.queue_reason:
        return RunStatus("Queued", observation.queue_reason or "Suspended", observation.queue_message, **common)
    if observation.restarts and not observation.active:
        return RunStatus("Restarting", "Restarting", f"attempt {observation.restarts + 1} is starting", **common)
    # Stalled: running, yet nothing logged for stall_after, counted from the later of the last record and the start
    # of this attempt (time spent queued, or before a resume, is not stalling). Unreadable outputs say nothing.
    started = max((t for t in (last_time, observation.started_at) if t is not None), default=observation.created_at)
    if observation.active and outputs.readable and started is not None and now - started > stall_after:
        since = int(now - started)
        return RunStatus("Stalled", "NoNewMetrics", f"no new metrics for {since}s", **common)
    return RunStatus("Running", **common)


def _failure_message(verdict: dict) -> str:
    """`exit code 1`, and for a process other than 0 which one and why (its summary.json cannot say it)."""
    text = f"exit code {verdict.get('exit_code')}"
    if isinstance(verdict.get("process_index"), int):
        text += f" on process {verdict['process_index']}" + (
            f": {verdict['message']}" if verdict.get("message") else ""
        )
    return text


CLOCK_SLACK_SECONDS = 5.0  # summary.json times have whole seconds; hosts' clocks differ a little


def _current(summary: dict, observation: Observation) -> bool:
    """Whether summary.json speaks for the run the backend sees: always when nothing is running (the outputs are
    then the truth), else only when it was written during the current attempt."""
    if not observation.exists or observation.condition("Failed") or observation.condition("Completed"):
        return True
    attempt_start = observation.started_at or observation.created_at
    written = _timestamp(summary.get("updated_at"))
    return attempt_start is None or (written is not None and written >= attempt_start - CLOCK_SLACK_SECONDS)


def _timestamp(value) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _last_metrics_time(outputs: RunOutputs) -> float | None:
    times = [r.time for r in outputs.log if r.time is not None]
    return times[-1] if times else None
