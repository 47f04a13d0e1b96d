"""One sweep's reconcile for the service, pure: (the resource, what is observed) -> what to do and the new status.

The decisions are the CLI's: the same expansion (run ids, prerequisites first), the same `derive` of each run's
phase and the same `reconcile` of phases into actions. The service adds only what a long-lived front end needs:
a retry budget per run (`spec.retryFailed`) instead of a `--retry-failed` flag, a status to write back, the
Events for what changed since the last status, and early stopping: the sweep's `early_stopping` rules
(`core.early_stop`, the same evaluation `distillctl early-stop replay` runs) over the runs' metric curves; a point
a rule names while it still runs is stopped (its JobSet deleted: the trainer saves a checkpoint on SIGTERM) and its
verdict is kept, in its `stopped.json` and in the status, so that neither the retry budget nor a lagging cache
ever creates it again.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping, Sequence

from distillspec.contract import PendingReason
from distillspec.problems import Problem, format_loc
from orchestrator.core import aggregate, early_stop
from orchestrator.core.aggregate import FULL_VOCABULARY, kl_support
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.reconcile import FAILED, Action, ActionKind, reconcile
from orchestrator.core.run_status import DEFAULT_STALL_SECONDS, Observation, Phase, RunStatus, stopped_status
from orchestrator.core.status import derive_all
from orchestrator.outputs import RunOutputs
from orchestrator.service.resource import (
    BestPoint,
    OrphanRun,
    RunState,
    ServiceSpec,
    StopRecord,
    SweepCondition,
    SweepStatus,
)

ACTIVE = frozenset({Phase.QUEUED, Phase.RUNNING, Phase.RESTARTING, Phase.STUCK, Phase.STALLED})
WARNING_PHASES = frozenset({Phase.FAILED, Phase.DIVERGED, Phase.STUCK, Phase.STALLED})


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event to emit on the sweep: `type` Normal or Warning, a CamelCase reason."""

    type: str
    reason: str
    message: str
    run_id: str | None = None  # the run a Created event announces (dropped when the create found it there)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the controller does for one sweep: create `create` (prerequisites first), delete `delete` (failed
    runs to be created again once gone), stop `stop` (write each run's `stopped.json`, then delete its JobSet),
    write `status`, emit `events`."""

    status: SweepStatus
    actions: tuple[Action, ...] = ()
    create: tuple[Point, ...] = ()
    delete: tuple[Point, ...] = ()
    events: tuple[Event, ...] = ()
    stop: tuple[tuple[Point, StopRecord], ...] = ()

    def created_only(self, created: set[str]) -> Plan:
        """This plan with a Created event only for the runs of `created` (run ids the submission really created:
        one found already there, say another controller's or a JobSet relabelled by hand, was not)."""
        kept = tuple(e for e in self.events if e.reason != "Created" or e.run_id in created)
        return dataclasses.replace(self, events=kept)


def timestamp(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rejected(
    problems: Sequence[Problem], *, reason: str, generation: int | None, previous: SweepStatus | None, now: float
) -> Plan:
    """The plan for a resource that cannot run: Accepted=False with the problems (as `validate` words them). What
    the status recorded before stays (runs, their retries, counts): the runs it created go on, and a moment of
    rejection (a LocalQueue deleted and made again, an edit undone) must not reset their retry budget."""
    errors = [p for p in problems if p.is_error] or list(problems)
    # With each problem's fix, as `validate` prints it: for a resource applied with kubectl or GitOps the condition is
    # all its author reads ("did you mean 'distill/kl_div_T1'?" was dropped).
    message = "; ".join(
        (f"{format_loc(p.loc)}: {p.message} [{p.code}]" if p.loc else p.message) + (f" → {p.hint}" if p.hint else "")
        for p in errors[:5]
    )
    conditions = _conditions(
        previous, {"Accepted": ("False", reason, message)}, generation=generation, now=now, only=True
    )
    update = {"observedGeneration": generation, "conditions": conditions, "phase": "Refused"}
    status = previous.model_copy(update=update) if previous else SweepStatus(**update)
    changed = _condition_changed(previous, "Accepted", "False", reason)
    return Plan(status, events=(Event("Warning", reason, message),) if changed else ())


def plan(
    expansion: Expansion,
    observed: Mapping[str, Observation],
    outputs: Mapping[str, RunOutputs],
    *,
    service: ServiceSpec,
    previous: SweepStatus | None,
    generation: int | None,
    now: float,
    stall_after: float = DEFAULT_STALL_SECONDS,
    orphans: Sequence[OrphanRun] = (),
) -> Plan:
    """The actions for a valid sweep, and its new status. `orphans`: the sweep's JobSets for runs its spec no longer
    has (it was edited while running); they are reported in the status (and by a Warning Event when new), never
    deleted: as `distillctl status` warns and `cancel --orphans` deletes, on the user's word. The runs the edit
    added are created as any missing run; the runs it kept keep their JobSets (same run ids)."""
    before = {r.runId: r for r in (previous.runs if previous else [])}
    statuses = derive_all(
        expansion,
        observed,
        outputs,
        now=now,
        stall_after=stall_after,
        retry="with retries left (`distillctl sweep FILE --service --retries N`) the controller creates it again",
    )
    # Runs deleted to be created again: until the new JobSet exists, the old outputs' verdict is not theirs.
    retrying = set()
    for run_id in (rid for rid, r in before.items() if r.retrying and rid in statuses):
        seen = observed.get(run_id, Observation(exists=False))
        if seen.exists and not seen.deleting:
            continue  # created again: its phase is its own
        retrying.add(run_id)
        if not seen.exists:
            statuses[run_id] = dataclasses.replace(
                statuses[run_id], phase=Phase.PENDING, reason="Retrying", message="created again after a failure"
            )
    kept = _kept_successes(statuses, observed, before)
    stops, new_stops = _stops(expansion, statuses, outputs, before)
    for run_id, record in stops.items():
        if statuses[run_id].phase != Phase.SUCCEEDED:  # a run that finished before its stop keeps its success
            shown = stopped_status(record.model_dump())
            statuses[run_id] = dataclasses.replace(
                statuses[run_id], phase=shown.phase, reason=shown.reason, message=shown.message, since=None
            )
    allowed = {
        run.run_id: (before[run.run_id].retries if run.run_id in before else 0) < service.retryFailed
        for run in expansion.runs
    }
    actions = _actions(expansion.runs, statuses, allowed)
    create = tuple(a.run for a in actions if a.kind == ActionKind.CREATE)
    delete = tuple(a.run for a in actions if a.kind == ActionKind.RECREATE)
    create_ids, delete_ids = {r.run_id for r in create}, {r.run_id for r in delete}

    runs = []
    events: list[Event] = []
    for run in expansion.runs:
        status = statuses[run.run_id]
        old = before.get(run.run_id)
        retries = (old.retries if old else 0) + (run.run_id in delete_ids)
        # `retrying` remembers, across the deletion, that the run is to be created again.
        again = run.run_id in delete_ids or (run.run_id in retrying and run.run_id not in create_ids)
        state = (
            before[run.run_id]
            if run.run_id in kept
            else _run_state(
                run, status, outputs.get(run.run_id), retries, retrying=again, stopped=stops.get(run.run_id)
            )
        )
        runs.append(state)
        if run.run_id in new_stops:
            events.append(
                Event("Normal", "Stopped", f"{run.label} ({run.jobset_name}): {status.shown}: {status.message}")
            )
        elif run.run_id in create_ids:
            events.append(Event("Normal", "Created", f"created JobSet {run.jobset_name} for {run.label}", run.run_id))
        elif run.run_id in delete_ids:
            events.append(Event("Normal", "Retrying", f"{run.label} is {status.shown}: retry {retries}"))
        elif old is None or old.phase != state.phase:
            kind = "Warning" if status.phase in WARNING_PHASES else "Normal"
            message = f"{run.label} ({run.jobset_name}): {status.shown}" + (
                f": {status.message}" if status.message else ""
            )
            events.append(Event(kind, f"Run{status.phase}", message))

    counts = {
        "succeeded": sum(statuses[r.run_id].phase == Phase.SUCCEEDED for r in expansion.runs),
        "running": sum(statuses[r.run_id].phase in ACTIVE for r in expansion.runs),
        "failed": sum(statuses[r.run_id].phase in FAILED for r in expansion.runs),
        "stopped": sum(statuses[r.run_id].phase == Phase.STOPPED for r in expansion.runs),
    }
    # A point's JobSet to delete for its stop: each pass while it is still there (a crash between the verdict and
    # the delete, or a delete that failed, is repaired by the next), never another sweep's.
    stop = tuple(
        (run, stops[run.run_id])
        for run in expansion.runs
        if statuses[run.run_id].phase == Phase.STOPPED
        and (seen := observed.get(run.run_id)) is not None
        and seen.exists
        and not seen.deleting
        and not seen.owner
    )
    blocked = {a.run.run_id for a in actions if a.kind == ActionKind.BLOCKED}
    settled = (
        not create
        and not delete
        and not stop
        and all(statuses[r.run_id].terminal or r.run_id in blocked for r in expansion.runs)
    )
    total = len(expansion.runs)
    # Stopped by the divergence rule is a blown-up loss, not a choice: such a sweep read Succeeded, its best point
    # one whose kl_div_T1 had gone to 20.
    diverging = sum(statuses[r.run_id].phase == Phase.STOPPED and statuses[r.run_id].diverged for r in expansion.runs)
    if settled and counts["succeeded"] + counts["stopped"] - diverging == total:
        # Stopped early is a decision the sweep asked for, not a failure.
        reason = "AllSucceeded" if not counts["stopped"] else "SucceededOrStopped"
        message = f"{total} run(s)" + (f", {counts['stopped']} stopped early" if counts["stopped"] else "")
        wanted = {"Running": ("False", "Finished", ""), "Succeeded": ("True", reason, message)}
        wanted["Failed"] = ("False", reason, "")
    elif settled:
        notes = [f"{len(blocked)} blocked by a failed prerequisite"] if blocked else []
        if diverging:
            notes.append(f"{diverging} stopped by the divergence rule")
        message = (
            f"{total - counts['succeeded'] - (counts['stopped'] - diverging)} of {total} run(s) did not succeed"
            + (f" ({', '.join(notes)})" if notes else "")
        )
        wanted = {
            "Running": ("False", "Finished", ""),
            "Succeeded": ("False", "RunsFailed", message),
            "Failed": ("True", "RunsFailed", message),
        }
    else:
        stuck = [r for r in expansion.runs if statuses[r.run_id].will_not_start or statuses[r.run_id].never_admitted]
        reason, message = "RunsActive", f"{counts['running']} active, {counts['succeeded']} of {total} succeeded"
        if stuck:
            first = statuses[stuck[0].run_id]
            reason = "NeverAdmitted" if first.never_admitted else "WillNotStart"
            message = f"{len(stuck)} run(s) cannot go on as configured: {stuck[0].jobset_name}: {first.message}"
        wanted = {
            "Running": ("True", reason, message),
            "Succeeded": ("False", "RunsActive", ""),
            "Failed": ("False", "RunsActive", ""),
        }
    wanted = {"Accepted": ("True", "Valid", f"{total} run(s)"), **wanted}
    for kind in ("Succeeded", "Failed"):
        state, reason, message = wanted[kind]
        if state == "True" and _condition_changed(previous, kind, state, reason):
            events.append(Event("Normal" if kind == "Succeeded" else "Warning", f"Sweep{kind}", message))
    known = {o.jobset for o in (previous.orphans if previous else [])}
    new_orphans = [o for o in orphans if o.jobset not in known]
    if new_orphans:
        named = ", ".join(f"{o.jobset} ({o.state})" for o in new_orphans[:10])
        events.append(
            Event(
                "Warning",
                "Orphaned",
                f"{len(new_orphans)} JobSet(s) for runs the sweep no longer has, left as they are: {named}",
            )
        )
    best = _best(expansion.points, statuses)
    phase = next((kind for kind in ("Succeeded", "Failed", "Running") if wanted[kind][0] == "True"), "Running")
    status = SweepStatus(
        observedGeneration=generation,
        phase=phase,
        points=total,
        **counts,
        conditions=_conditions(previous, wanted, generation=generation, now=now),
        runs=runs,
        best=best,
        orphans=sorted(orphans, key=lambda o: o.jobset),
    )
    return Plan(status, tuple(actions), create, delete, tuple(events), stop)


def _kept_successes(
    statuses: dict[str, RunStatus], observed: Mapping[str, Observation], before: Mapping[str, RunState]
) -> set[str]:
    """The runs the status recorded as Succeeded whose JobSet is gone (its `ttl_seconds_after_finished`) and whose
    outputs say nothing (none the controller can read): they stay Succeeded, as recorded. They read NotCreated and
    were created again: with outputs the controller could not read (a bucket without Workload Identity for its
    ServiceAccount), every finished point trained again each TTL, for ever. Outputs that say otherwise win."""
    kept = set()
    for run_id, status in statuses.items():
        old = before.get(run_id)
        seen = observed.get(run_id, Observation(exists=False))
        if (
            old is not None
            and old.phase == Phase.SUCCEEDED
            and (not seen.exists or seen.deleting)  # gone, or going: the TTL's deletion is seen first (Deleting)
            and status.phase == Phase.PENDING
            and status.reason in (PendingReason.NOT_CREATED, PendingReason.DELETING)
        ):
            statuses[run_id] = RunStatus(
                Phase.SUCCEEDED,
                old.reason,
                old.message,
                step=old.step,
                total_steps=old.totalSteps,
                kl_div_t1=old.metrics.get(aggregate.KL_T1),
            )
            kept.add(run_id)
    return kept


def _stops(
    expansion: Expansion,
    statuses: Mapping[str, RunStatus],
    outputs: Mapping[str, RunOutputs],
    before: Mapping[str, RunState],
) -> tuple[dict[str, StopRecord], set[str]]:
    """Every run stopped by a rule (kept in the previous status or its `stopped.json`, or named by the rules now),
    and which of them are stopped by this pass. The rules see every point's curve (a median needs the others);
    only a point still on its way is stopped now: a finished one is a result, and one whose JobSet another sweep
    created is that sweep's to stop."""
    stops = {rid: state.stopped for rid, state in before.items() if state.stopped is not None and rid in statuses}
    for rid, out in outputs.items():
        if rid in statuses and rid not in stops and isinstance(out.stopped, dict):
            try:
                stops[rid] = StopRecord.model_validate(out.stopped)
            except ValueError:
                stops[rid] = StopRecord(
                    rule=str(out.stopped.get("rule", "")), step=0, message="unreadable stopped.json"
                )
    rules = expansion.sweep.early_stopping
    new: set[str] = set()
    if not rules.any:
        return stops, new
    points = [p.run_id for p in expansion.points if not p.is_baseline]
    baselines = [p.run_id for p in expansion.points if p.is_baseline]
    kinds = {p.run_id: kl_support(p.spec) for p in expansion.points}
    found = early_stop.evaluate(
        rules, early_stop.curves_for(rules, outputs), points=points, baselines=baselines, kinds=kinds
    )
    for rid, stop in found.items():
        status = statuses[rid]
        if rid in stops or status.terminal or status.owner:
            continue
        stops[rid] = StopRecord(rule=stop.rule, step=stop.step, message=stop.message)
        new.add(rid)
    return stops, new


def _actions(runs: Sequence[Point], statuses: Mapping[str, RunStatus], allowed: Mapping[str, bool]) -> list[Action]:
    """`reconcile`'s actions, a run retried while its own retry budget lasts (and its dependants waiting for it
    rather than blocked)."""
    plain = reconcile(runs, statuses, retry_failed=False)
    retry = reconcile(runs, statuses, retry_failed=True)
    chosen = []
    for run, without, with_retry in zip(runs, plain, retry, strict=True):
        status = statuses[run.run_id]
        if status.phase in FAILED:
            use_retry = allowed[run.run_id]
        else:
            failed = [rid for rid in run.depends_on.values() if rid in statuses and statuses[rid].phase in FAILED]
            use_retry = bool(failed) and all(allowed[rid] for rid in failed)
        chosen.append(with_retry if use_retry else without)
    return chosen


def _run_state(
    run: Point,
    status: RunStatus,
    outputs: RunOutputs | None,
    retries: int,
    *,
    retrying: bool,
    stopped: StopRecord | None = None,
) -> RunState:
    metrics = {}
    if outputs is not None and outputs.log:
        latest = outputs.log[-1:]
        for name in latest[0].metrics:
            value = aggregate.metric(latest, name)
            if value is not None and math.isfinite(value):
                metrics[name] = value
    return RunState(
        key=run.key,
        runId=run.run_id,
        jobset=run.jobset_name,
        role=run.role,
        phase=str(status.phase),
        reason=status.reason,
        message=status.message,
        restarts=status.restarts,
        retries=retries,
        retrying=retrying,
        step=status.step,
        totalSteps=status.total_steps,
        metrics=metrics,
        owner=status.owner,
        stopped=stopped,
        created=_timestamp(status.created_at),
    )


def _timestamp(unix: float | None) -> datetime.datetime | None:
    """A Kubernetes timestamp (whole seconds, UTC) as the status stores it: the same on every pass."""
    return None if unix is None else datetime.datetime.fromtimestamp(round(unix), tz=datetime.timezone.utc)


def _best(points: Sequence[Point], statuses: Mapping[str, RunStatus]) -> BestPoint | None:
    # Never a run that failed or diverged: its last kl_div_T1 is no result (a diverged point was named best).
    scored = [
        (statuses[p.run_id].kl_div_t1, p)
        for p in points
        if statuses[p.run_id].kl_div_t1 is not None
        and statuses[p.run_id].phase not in FAILED
        and not statuses[p.run_id].diverged
    ]
    scored = [(kl, p) for kl, p in scored if math.isfinite(kl)]
    # An offline student's top-k KL is always the lower: ranked only when no point has a whole-vocabulary one.
    if len({kl_support(p.spec) for _, p in scored}) > 1:
        scored = [(kl, p) for kl, p in scored if kl_support(p.spec) == FULL_VOCABULARY]
    if not scored:
        return None
    kl, point = min(scored, key=lambda item: item[0])
    return BestPoint(key=point.key, runId=point.run_id, klDivT1=kl)


def _condition_changed(previous: SweepStatus | None, kind: str, state: str, reason: str) -> bool:
    old = next((c for c in (previous.conditions if previous else []) if c.type == kind), None)
    return old is None or old.status != state or old.reason != reason


def _conditions(
    previous: SweepStatus | None,
    wanted: Mapping[str, tuple[str, str, str]],
    *,
    generation: int | None,
    now: float,
    only: bool = False,
) -> list[SweepCondition]:
    """The conditions, each keeping its lastTransitionTime while its status stays the same."""
    old = {c.type: c for c in (previous.conditions if previous else [])}
    out = []
    for kind, (state, reason, message) in wanted.items():
        before = old.get(kind)
        since = before.lastTransitionTime if before is not None and before.status == state else timestamp(now)
        out.append(
            SweepCondition(
                type=kind,
                status=state,
                reason=reason,
                message=message,
                lastTransitionTime=since,
                observedGeneration=generation,
            )
        )
    if not only:
        return out
    return out + [c for kind, c in old.items() if kind not in wanted]
