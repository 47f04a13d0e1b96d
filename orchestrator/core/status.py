"""The status of every run of a sweep: what its backend observes plus what the run wrote to its outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from distillspec.contract import LABEL_SWEEP, LABEL_WORKLOAD_PRIORITY, PendingReason
from distillspec.problems import Problem
from orchestrator.backends import Backend
from orchestrator.core.expansion import Expansion
from orchestrator.core.run_status import DEFAULT_STALL_SECONDS, FAILED, Observation, Phase, RunStatus, derive
from orchestrator.errors import UsageError
from orchestrator.outputs import OutputStoreError, RunOutputs, read_many_run_outputs


@dataclasses.dataclass(frozen=True)
class SweepState:
    """One look at a sweep: each run's status and outputs by run id, and warnings met while looking."""

    statuses: Mapping[str, RunStatus]
    outputs: Mapping[str, RunOutputs]
    warnings: tuple[Problem, ...] = ()


def read_outputs(expansion: Expansion, *, strict: bool = True) -> tuple[dict[str, RunOutputs], tuple[Problem, ...]]:
    """Each run's outputs; when this machine cannot read the storage (gs:// without gcsfs), a warning and no
    outputs: following a sweep still works from what the cluster says. When the store itself cannot be read (no
    such bucket, no answer, refused credentials: OutputStoreError), `strict` raises it — to a person asking for
    the runs' state, no outputs would read as runs never created — and otherwise (launching, following, the sweep
    service: their pods may reach a store this machine cannot) it is the same warning."""
    try:
        return read_many_run_outputs({run.run_id: run.output_path for run in expansion.runs}), ()
    except UsageError as e:
        if strict and isinstance(e, OutputStoreError):
            raise
        warning = Problem(
            (), "outputs_unreadable", f"{e.message}: steps and metrics are not shown", e.hint, severity="warning"
        )
        return {run.run_id: RunOutputs(run.output_path, readable=False) for run in expansion.runs}, (warning,)


def derive_all(
    expansion: Expansion,
    observed: Mapping[str, Observation],
    outputs: Mapping[str, RunOutputs],
    *,
    now: float,
    stall_after: float = DEFAULT_STALL_SECONDS,
    retry: str = "`distillctl sweep --retry-failed` runs it again",
) -> dict[str, RunStatus]:
    """Each run's status from what the backend observed (absent: never created) and what it wrote. A point not
    created because a prerequisite failed says so (it read "not submitted yet", as if `sweep` would submit it), and
    `retry`: what runs the prerequisite again (the sweep service's way is not the CLI's)."""
    statuses = {
        run.run_id: derive(
            observed.get(run.run_id, Observation(exists=False)),
            outputs[run.run_id],
            now=now,
            stall_after=stall_after,
            total_steps=run.spec.steps,
        )
        for run in expansion.runs
    }
    for run in expansion.runs:
        status = statuses[run.run_id]
        if status.phase != Phase.PENDING or status.reason not in (PendingReason.NOT_CREATED, PendingReason.PREEMPTED):
            continue
        failed = [(name, statuses[rid]) for name, rid in run.depends_on.items() if statuses[rid].phase in FAILED]
        if failed:
            name, prerequisite = failed[0]
            message = f"prerequisite {name!r} is {prerequisite.shown}; {retry}"
            statuses[run.run_id] = dataclasses.replace(
                status, reason=PendingReason.PREREQUISITE_FAILED, message=message
            )
    return statuses


def look(
    expansion: Expansion,
    backend: Backend,
    *,
    now: float,
    stall_after: float = DEFAULT_STALL_SECONDS,
    strict_outputs: bool = True,
) -> SweepState:
    """Each run's status and outputs, by run id (prerequisites included). `strict_outputs`: see `read_outputs`."""
    observed = backend.observe(expansion)
    outputs, warnings = read_outputs(expansion, strict=strict_outputs)
    statuses = derive_all(expansion, observed, outputs, now=now, stall_after=stall_after)
    changed = queue_changes(expansion, observed, statuses) + label_changes(expansion, observed, statuses)
    return SweepState(statuses, outputs, warnings + changed + damage_warnings(outputs))


def damage_warnings(outputs: Mapping[str, RunOutputs]) -> tuple[Problem, ...]:
    """`damaged_metrics` for each run whose files disagree with themselves or cannot be read (`RunOutputs.damage`):
    its row, its status's step and kl_div_T1, are computed from what is left (`status` said nothing of what
    `results` warned about)."""
    found = []
    for run in outputs.values():
        if not run.damage:
            continue
        hint = (
            "check the permissions of the run's folder and its files (the user running distillctl must read them), "
            "and that nothing else is in their place"
            if run.unreadable
            else "the files were edited, cut or replaced: copy the run's folder again from where it was written, or "
            "delete it and `distillctl sweep` to run the point again (a running trainer rewrites metrics.jsonl from "
            "its checkpoint when it resumes)"
        )
        message = f"{'; '.join(run.damage)}: the run's row is computed from what is left"
        found.append(Problem((), "damaged_metrics", message, hint, severity="warning", file=run.path))
    return tuple(found)


def _unfinished_own_runs(
    expansion: Expansion, observed: Mapping[str, Observation], statuses: Mapping[str, RunStatus]
) -> list[Observation]:
    """Observations of this sweep's runs that exist and have not finished (another sweep's are left to it)."""
    found = []
    for run in expansion.runs:
        seen = observed.get(run.run_id)
        if seen is not None and seen.exists and not seen.owner and not statuses[run.run_id].terminal:
            found.append(seen)
    return found


def label_changes(
    expansion: Expansion, observed: Mapping[str, Observation], statuses: Mapping[str, RunStatus]
) -> tuple[Problem, ...]:
    """A warning when this sweep's unfinished runs carry other values than target.labels (and
    target.workload_priority_class) now give: labels apply when a run is created, so a `--label team=x` or an edited
    label (cost attribution, a Kueue priority) changed nothing on them, without a word."""
    target = expansion.sweep.target
    if not target.on_cluster:
        return ()
    wanted = dict(target.labels)
    if target.workload_priority_class is not None:
        wanted[LABEL_WORKLOAD_PRIORITY] = target.workload_priority_class
    differing: dict[str, set[str]] = {}  # key -> the values the runs carry instead
    count = 0
    for seen in _unfinished_own_runs(expansion, observed, statuses):
        if not seen.labels:
            continue  # a backend that does not say (local)
        carried = dict(seen.labels)
        off = {key: carried.get(key) for key, value in wanted.items() if carried.get(key) != value}
        for key, value in off.items():
            differing.setdefault(key, set()).add("(none)" if value is None else repr(value))
        count += bool(off)
    if not count:
        return ()
    what = "; ".join(
        f"{key}: {', '.join(sorted(values))} instead of {wanted[key]!r}" for key, values in sorted(differing.items())
    )
    field = "target.labels" + (", target.workload_priority_class" if LABEL_WORKLOAD_PRIORITY in differing else "")
    sweep = expansion.sweep.name
    return (
        Problem(
            ("target", "labels"),
            "labels_changed",
            f"{count} unfinished run(s) of this sweep were created with other labels than {field} now give "
            f"({what}): labels apply when a run is created",
            f"to relabel them in place: `kubectl label jobsets -l {LABEL_SWEEP}={sweep} KEY=VALUE --overwrite`"
            + (
                "; a Kueue priority is fixed when a run is admitted: `distillctl cancel` them and `distillctl sweep` "
                "again (they resume from their checkpoints)"
                if LABEL_WORKLOAD_PRIORITY in differing
                else ""
            )
            + "; new runs get the new labels",
            severity="warning",
        ),
    )


def queue_changes(
    expansion: Expansion, observed: Mapping[str, Observation], statuses: Mapping[str, RunStatus]
) -> tuple[Problem, ...]:
    """A warning when this sweep's unfinished runs sit in another Kueue queue than target.queue now names: a queue
    applies when a run is created, so an edit meant to move a stuck grid moved nothing, without a word."""
    wanted = expansion.sweep.target.queue if expansion.sweep.target.on_cluster else None
    if not wanted:
        return ()
    elsewhere: dict[str, int] = {}
    for seen in _unfinished_own_runs(expansion, observed, statuses):  # a finished run has nothing to move
        if seen.queue and seen.queue != wanted:
            elsewhere[seen.queue] = elsewhere.get(seen.queue, 0) + 1
    if not elsewhere:
        return ()
    where = ", ".join(f"{n} in {queue!r}" for queue, n in sorted(elsewhere.items()))
    return (
        Problem(
            ("target", "queue"),
            "queue_changed",
            f"{sum(elsewhere.values())} unfinished run(s) of this sweep were created in another queue than "
            f"{wanted!r} ({where}): a queue applies when a run is created",
            "to move them, `distillctl cancel` them and `distillctl sweep` again (they resume from their "
            "checkpoints); new runs go to the new queue",
            severity="warning",
        ),
    )
