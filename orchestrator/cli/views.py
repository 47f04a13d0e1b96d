"""How the launch commands show runs to people and machines: the status table and JSON, action lines, events."""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text

from distillspec.contract import PendingReason
from orchestrator.backends import Submitted
from orchestrator.cli import console
from orchestrator.core.expansion import Expansion
from orchestrator.core.identity import jobset_name
from orchestrator.core.launch import DRY_RUN_RECREATE, LaunchReport
from orchestrator.core.reconcile import ActionKind, Waiting
from orchestrator.core.run_status import NOT_SUBMITTED, Phase, RunStatus

PHASE_STYLE = {
    Phase.SUCCEEDED: "green",
    Phase.FAILED: "red",
    Phase.DIVERGED: "red",
    Phase.STOPPED: "magenta",
    Phase.STALLED: "yellow",
    Phase.QUEUED: "cyan",
    Phase.RESTARTING: "yellow",
    Phase.STUCK: "red",
    Phase.RUNNING: "blue",
    Phase.PENDING: "dim",
}


def age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def status_table(expansion: Expansion, statuses) -> Table:
    table = Table(title=f"sweep {expansion.sweep.name}", title_justify="left")
    # A stuck run's reason alone (ImagePullBackOff) does not say which image or Secret, a failed run's
    # (TrainerExit) not what the trainer said, a queued run's (Pending) not which quota, a waiting run's
    # (SupervisorGone) not what starts it: a column says why.
    why = any(_says_why(statuses[run.run_id]) for run in expansion.runs)
    # The latest training log line's KL: `results` shows the held-out set's where a run has one, so say which.
    kl = "kl_div_T1 (train)"
    columns = ("#", "run id", "axis values", "phase", "restarts", "step", kl, "age") + (("why",) if why else ())
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "restarts", "step", kl, "age") else "left")
    for run in expansion.runs:
        s = statuses[run.run_id]
        step = "—" if s.step is None else f"{s.step}/{s.total_steps or '?'}"
        extra = (Text(console.printable(s.message) if _says_why(s) else ""),) if why else ()  # Text: no markup
        table.add_row(
            run.key,
            run.run_id,
            console.axis_text(run.axis_values),
            Text(s.shown, style=PHASE_STYLE.get(s.phase, "")),
            str(s.restarts),
            step,
            "—" if s.kl_div_t1 is None else f"{s.kl_div_t1:.4f}",
            age(s.age_seconds),
            *extra,
        )
    return table


# Pending runs that wait for something the user does (`sweep` again, `--retry-failed`), not for the backend.
_WAITING_FOR_YOU = (
    PendingReason.PREEMPTED,
    PendingReason.ORPHANED,
    PendingReason.SUPERVISOR_GONE,
    PendingReason.PREREQUISITE_FAILED,
    PendingReason.NOT_ACCEPTED,  # the sweep service refused the sweep: the reason is the fix
    PendingReason.NOT_OBSERVED,  # its outputs cannot be read: which path, and why
)


def _says_why(s: RunStatus) -> bool:
    if not s.message:
        return False
    # Kueue's words (which quota, how much more), the failure, the first step that was not finite, the rule that
    # stopped it
    if s.phase in (Phase.STUCK, Phase.FAILED, Phase.DIVERGED, Phase.QUEUED, Phase.STOPPED):
        return True
    if s.phase == Phase.PENDING and s.reason == PendingReason.NOT_CREATED:  # "cancelled before it started" waits
        return s.message != NOT_SUBMITTED  # for you too; "not submitted yet" for the sweep
    return s.phase == Phase.PENDING and (s.reason in _WAITING_FOR_YOU or s.reason == PendingReason.CLAIMED)


def status_json(expansion: Expansion, statuses) -> list[dict]:
    return [
        {
            "run_id": run.run_id,
            "jobset": run.jobset_name,
            "label": run.label,
            "role": run.role,
            "axis_values": dict(run.axis_values),
            "phase": str(s.phase),
            "reason": s.reason,
            "message": s.message,
            "owner_sweep": s.owner or None,
            "restarts": s.restarts,
            "step": s.step,
            "total_steps": s.total_steps,
            "kl_div_T1": s.kl_div_t1,
            "age_seconds": s.age_seconds,
            "output_path": run.output_path,
        }
        for run in expansion.runs
        for s in [statuses[run.run_id]]
    ]


def _verb(kind: ActionKind, outcome: Submitted | str | None, dry_run: str | None) -> tuple[str, str]:
    if outcome == "dry-run":
        return f"would create ({dry_run or 'dry run'})", "cyan"
    if outcome == DRY_RUN_RECREATE:
        return "would delete and create again (dry run)", "cyan"
    if outcome == "exists":
        return "exists", "dim"
    if outcome == "created":
        return ("created" if kind != ActionKind.WAIT else "queued"), "green"
    if outcome == "restarted":
        return "restarted", "green"
    if outcome == "failed":
        return "failed", "red"
    return {
        ActionKind.SKIP: ("skipped", "dim"),
        ActionKind.WAIT: ("waiting", "yellow"),
        ActionKind.BLOCKED: ("blocked", "red"),
    }.get(kind, (str(kind), ""))


def launch_lines(report: LaunchReport, dry_run: str | None) -> list[Text]:
    """One line per run (what was done or decided, and why), then a count."""
    lines = []
    for action in report.actions:
        outcome = report.submitted.get(action.run.run_id)
        verb, style = _verb(action.kind, outcome, dry_run)
        line = Text()
        owner = _owner(report, action.run)
        line.append(f"{verb:>9} ", style=style)
        if action.waiting_for == Waiting.CLAIM:  # the claimer's JobSet does not exist yet: no name to give
            line.append(f"run {action.run.run_id}  {action.run.label}")
            line.append(f"  ({action.reason})", style="dim")
            lines.append(line)
            continue
        if outcome == "exists" and not owner:
            # Created meanwhile, by a sweep started at the same moment (whose JobSet name is not known here) or
            # by this one's own earlier attempt: naming this sweep's JobSet named one that may not exist.
            line.append(f"run {action.run.run_id}  {action.run.label}")
            line.append(
                "  (created at the same moment by another sweep or an earlier attempt: `distillctl status` shows it)",
                style="dim",
            )
            lines.append(line)
            continue
        line.append(f"{_jobset(action.run, owner)}  {action.run.label}")
        started = outcome in ("created", "restarted") and action.kind == ActionKind.WAIT
        if outcome != "failed" and action.kind != ActionKind.CREATE and not started:
            line.append(f"  ({action.reason})", style="dim")
        lines.append(line)
    outcomes = list(report.submitted.values())
    would = sum(1 for v in outcomes if v in ("dry-run", DRY_RUN_RECREATE))
    if would:
        unchanged = len(report.actions) - would
        lines.append(Text(f"{would} would be created (dry run: nothing was), {unchanged} unchanged", style="bold"))
        return lines
    created, restarted, failed = (outcomes.count(kind) for kind in ("created", "restarted", "failed"))
    parts = [f"{created} created"]
    parts += [f"restarted {restarted} run(s) from their checkpoints"] if restarted else []
    parts += [f"{failed} failed at once (`distillctl status` says why)"] if failed else []
    unchanged = len(report.actions) - created - restarted - failed
    lines.append(Text(", ".join([*parts, f"{unchanged} unchanged"]), style="bold"))
    return lines


def verdict(s: RunStatus) -> str:
    """`Failed (OutputNotWritable: <path>: <error>)`: the phase with its reason and message."""
    return f"{s.phase} ({s.reason}: {s.message})" if s.reason and s.message else s.shown


def _owner(report: LaunchReport, run) -> str:
    """The other sweep whose JobSet runs this point (run ids are shared), else ""."""
    status = report.state.statuses.get(run.run_id)
    return status.owner if status is not None else ""


def _jobset(run, owner: str) -> str:
    """The JobSet that runs `run`: another sweep's, when it owns it (`<sweep>-<run id>`)."""
    return jobset_name(owner, run.run_id) if owner else run.jobset_name


def launch_json(report: LaunchReport, dry_run: str | None) -> list[dict]:
    return [
        {
            "run_id": a.run.run_id,
            "jobset": _jobset(a.run, _owner(report, a.run)),
            "owner": _owner(report, a.run) or None,
            "label": a.run.label,
            "action": str(a.kind),
            "reason": a.reason,
            "outcome": report.submitted.get(a.run.run_id),
            "dry_run": dry_run,
        }
        for a in report.actions
    ]


def transitions(expansion: Expansion, statuses: dict[str, RunStatus], previous: dict[str, str]) -> list[str]:
    """A line for each run whose shown phase changed since `previous` (which is updated)."""
    lines = []
    for run in expansion.runs:
        shown = statuses[run.run_id].shown
        if previous.get(run.run_id) != shown:
            previous[run.run_id] = shown
            lines.append(f"{time.strftime('%H:%M:%S')} {run.jobset_name} {shown}")
    return lines


# --- the service's view -------------------------------------------------------------------------------


def service_view(expansion, backend, on_forbidden=None):
    """The sweep's DistillationSweep when the controller runs it (None otherwise): `service.client.Served`;
    `on_forbidden` is called when this user may not read it."""
    cluster = getattr(backend, "cluster", None)
    if cluster is None or expansion.sweep.target.kind != "kubernetes":
        return None
    from orchestrator.service.client import served

    return served(cluster, expansion, on_forbidden)


def with_the_cluster(view, live):
    """The controller's run statuses, where the cluster has not seen a run end that they show going (a warning
    when it has: a stopped controller's resource showed a failed run Running for ever). `live()`: the cluster's
    statuses, asked only when some run is shown going (a finished sweep's refresh reads no outputs)."""
    from orchestrator.cli import console
    from orchestrator.service.client import behind_problem, with_the_cluster

    if all(s.terminal for s in view.statuses.values()):
        return view.statuses
    merged, behind = with_the_cluster(view.statuses, live())
    if behind:
        console.warn_once(behind_problem(view.name, view.namespace, behind))
    return merged


def show_service(view, shown: list[str] | None = None) -> None:
    """The resource's conditions on stderr (the table or JSON on stdout stays the runs'), only when they changed
    since `shown[0]` (`--watch` asks every few seconds); a warning when its runs are not this file's."""
    from distillspec.problems import Problem
    from orchestrator.cli import console
    from orchestrator.service.client import mismatch_hint, summary, unserved_problem

    seen = view.status.observedGeneration
    unserved = view.waiting_for_controller(time.time())  # not said of the moment a controller takes to act
    if seen is None and not view.status.conditions:
        if unserved:
            console.warn_once(unserved_problem(view.name, view.namespace))
        return
    if unserved:  # an edit no controller saw
        console.warn_once(unserved_problem(view.name, view.namespace, seen, view.generation))
    line = summary(view)
    if shown is None or line != shown[0]:
        if shown is not None:
            shown[0] = line
        console.err.print(line, markup=False, highlight=False, soft_wrap=True)
    if view.missing:
        console.warn_once(
            Problem(
                (),
                "service_runs_differ",
                f"the DistillationSweep {view.name} does not have these runs: statuses come from the cluster",
                mismatch_hint(view),
                severity="warning",
            )
        )
