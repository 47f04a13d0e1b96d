"""`distillctl sweep`, `status`, `logs` and `cancel`: launching a sweep as a reconcile, and following it."""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator import console
from orchestrator.backends import Backend, LogRequest
from orchestrator.backends.kubernetes.client import ClusterAccess
from orchestrator.console import OutputFormat
from orchestrator.core import rendering
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.reconcile import DELETING, Action, reconcile
from orchestrator.core.run_status import RunStatus
from orchestrator.errors import DistillctlError, UsageError
from orchestrator.exit_codes import ExitCode
from orchestrator.following import DEFAULT_STALL_SECONDS, backend_for, sweep_status
from orchestrator.sweep_commands import expand_sweep

POLL_SECONDS = 2.0
DELETE_WAIT_SECONDS = 120.0

SweepArgument = Annotated[Path, typer.Argument(help="a sweep file")]
OutputOption = Annotated[OutputFormat, typer.Option("--output", help="text for people, json for machines")]
KubeconfigOption = Annotated[
    Optional[str],
    typer.Option("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"),
]
ContextOption = Annotated[
    Optional[str], typer.Option("--context", help="kubeconfig context (default: the current one)")
]
NamespaceOption = Annotated[
    Optional[str], typer.Option("--namespace", "-n", help="namespace (default: target.namespace)")
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation; allow large grids")]
ImageOption = Annotated[
    Optional[str],
    typer.Option(
        "--image", help="override target.image (part of every run id: status, logs and cancel need the same value)"
    ),
]
StallOption = Annotated[
    float, typer.Option("--stall-after", help="seconds without new metrics before a running point shows as Stalled")
]


class DryRunMode(str, Enum):
    client = "client"
    server = "server"


def _access(kubeconfig: str | None, context: str | None, namespace: str | None) -> ClusterAccess:
    return ClusterAccess(kubeconfig=kubeconfig, context=context, namespace=namespace)


def parse_labels(items: list[str] | None) -> dict[str, str]:
    labels = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r} is not KEY=VALUE", "e.g. --label distillctl.dev/ci-key=pr12-3f2a9c")
        labels[key] = value
    return labels


def _open(sweep: Path, access: ClusterAccess, yes: bool, **target_overrides) -> tuple[Expansion, Backend]:
    result = expand_sweep(sweep, tpu_type=None, slices=None, yes=yes, **target_overrides)
    assert result.sweep is not None
    for problem in result.problems:
        console.err.print(console.problem_line(problem))
    return result, backend_for(result.sweep.target, access)


# --- sweep ------------------------------------------------------------------------------------------------


def sweep(
    sweep_file: SweepArgument,
    dry_run: Annotated[
        Optional[DryRunMode],
        typer.Option(
            "--dry-run",
            help="client: render only (no cluster needed); server: the API server's dry run of what would be created",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the sweep to the end")] = False,
    timeout: Annotated[
        Optional[float], typer.Option("--timeout", help="with --wait: give up after this many seconds (exit 3)")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="run failed and diverged points again (they resume)")
    ] = False,
    stall_after: StallOption = DEFAULT_STALL_SECONDS,
    image: ImageOption = None,
    queue: Annotated[Optional[str], typer.Option("--queue", help="override target.queue (Kueue LocalQueue)")] = None,
    priority: Annotated[Optional[str], typer.Option("--priority", help="override target.priority")] = None,
    label: Annotated[
        Optional[list[str]],
        typer.Option(
            "--label",
            help="KEY=VALUE: an extra label on every JobSet created (repeat), e.g. a CI key; not part of run ids",
        ),
    ] = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
    yes: YesOption = False,
) -> None:
    """Create the sweep's runs that do not exist yet (prerequisites first); with --wait, follow them to the end.

    Running it again creates nothing new: runs are found by their ids, so a re-run, an interrupted run or two at
    once still end with one run per point."""
    access = _access(kubeconfig, context, namespace)
    overrides = dict(image=image, queue=queue, priority=priority, labels=parse_labels(label))
    if dry_run is DryRunMode.client:
        _client_dry_run(expand_sweep(sweep_file, tpu_type=None, slices=None, yes=yes, **overrides))
        return
    expansion, backend = _open(sweep_file, access, yes, **overrides)
    try:
        backend.preflight(expansion)
        statuses, _ = sweep_status(expansion, backend, stall_after=stall_after)
        actions = reconcile(expansion.runs, statuses, retry_failed=retry_failed)
        if dry_run is None:
            _recreate_failed(backend, expansion, actions)
        submitted = _submit(backend, expansion, actions, dry_run)
        _print_actions(actions, submitted, dry_run)
        if not wait or dry_run is not None:
            return
        code = _follow(backend, expansion, stall_after=stall_after, timeout=timeout)
    finally:
        backend.close()
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def _client_dry_run(expansion: Expansion) -> None:
    """Render every run as it would be submitted, without asking the cluster what already exists."""
    assert expansion.sweep is not None
    target = expansion.sweep.target
    for run in expansion.runs:
        if target.on_cluster:
            rendering.render_jobset(run, target)  # renders, or raises
        console.out.print(f"would create (client) {run.jobset_name}  {run.label}", markup=False)
    console.out.print(
        Text(
            f"{len(expansion.runs)} rendered (dry run: the cluster was not asked what exists; "
            "--dry-run=server asks it)",
            style="bold",
        )
    )


def _to_submit(backend: Backend, actions: list[Action]) -> list[Point]:
    """Runs to hand to the backend now: new ones; with a backend that orders prerequisites itself, also the ones
    that wait for a prerequisite."""
    return [
        a.run
        for a in actions
        if a.submits or (a.kind == "wait" and backend.handles_dependencies and a.reason != DELETING)
    ]


def _submit(
    backend: Backend, expansion: Expansion, actions: list[Action], dry_run: DryRunMode | None
) -> dict[str, str]:
    runs = _to_submit(backend, actions)
    if dry_run is not None:
        # The failed run a retry would replace still exists, so the server cannot dry-run its creation.
        recreated = {a.run.run_id for a in actions if a.kind == "recreate"}
        runs = [run for run in runs if run.run_id not in recreated]
        done = backend.submit(runs, expansion, dry_run=dry_run.value) if runs else {}
        return {**done, **{run_id: "dry-run-recreate" for run_id in recreated}}
    return backend.submit(runs, expansion) if runs else {}


def _recreate_failed(backend: Backend, expansion: Expansion, actions: list[Action]) -> None:
    """--retry-failed: remove the failed runs first, so the new ones start clean (and resume from checkpoints)."""
    runs = [a.run for a in actions if a.kind == "recreate"]
    if not runs:
        return
    backend.delete(runs)
    deadline = time.monotonic() + DELETE_WAIT_SECONDS
    wanted = {run.run_id for run in runs}
    while wanted & {run_id for run_id, seen in backend.observe(expansion).items() if seen.exists}:
        if time.monotonic() > deadline:
            raise DistillctlError(
                "the failed runs were not deleted in time", "check the cluster, then run the sweep again"
            )
        time.sleep(1.0)


def _print_actions(actions: list[Action], submitted: dict[str, str], dry_run: DryRunMode | None) -> None:
    for action in actions:
        outcome = submitted.get(action.run.run_id)
        if outcome == "dry-run":
            verb, style = f"would create ({dry_run.value if dry_run else 'dry run'})", "cyan"
        elif outcome == "dry-run-recreate":
            verb, style = "would delete and create again (dry run)", "cyan"
        elif outcome == "exists":
            verb, style = "exists (already there: a concurrent or retried create)", "dim"
        elif outcome == "created":
            verb, style = ("created" if action.kind != "wait" else "queued"), "green"
        elif outcome == "restarted":
            verb, style = "restarted", "green"
        elif outcome == "failed":
            verb, style = "failed", "red"
        else:
            verb, style = {
                "skip": ("skipped", "dim"),
                "wait": ("waiting", "yellow"),
                "blocked": ("blocked", "red"),
            }.get(action.kind, (action.kind, ""))
        line = Text()
        line.append(f"{verb:>9} ", style=style)
        line.append(f"{action.run.jobset_name}  {action.run.label}")
        if (
            outcome != "failed"
            and action.kind != "create"
            and not (outcome in ("created", "restarted") and action.kind == "wait")
        ):
            line.append(f"  ({action.reason})", style="dim")
        console.out.print(line)
    created = sum(1 for v in submitted.values() if v == "created")
    would = sum(1 for v in submitted.values() if v in ("dry-run", "dry-run-recreate"))
    if would:
        console.out.print(
            Text(f"{would} would be created (dry run: nothing was), {len(actions) - would} unchanged", style="bold")
        )
    else:
        restarted = sum(1 for v in submitted.values() if v == "restarted")
        failed = sum(1 for v in submitted.values() if v == "failed")
        parts = [f"{created} created"]
        parts += [f"restarted {restarted} run(s) from their checkpoints"] if restarted else []
        parts += [f"{failed} failed at once (`distillctl status` says why)"] if failed else []
        unchanged = len(actions) - created - restarted - failed
        console.out.print(Text(", ".join([*parts, f"{unchanged} unchanged"]), style="bold"))


def _follow(backend: Backend, expansion: Expansion, *, stall_after: float, timeout: float | None) -> ExitCode:
    """Poll until every run is terminal (creating points whose prerequisites have finished); the exit code."""
    deadline = None if timeout is None else time.monotonic() + timeout
    previous: dict[str, str] = {}
    live = Live(console=console.out, auto_refresh=False) if console.out.is_terminal else None
    if live:
        live.start()
    try:
        while True:
            statuses, _ = sweep_status(expansion, backend, stall_after=stall_after)
            actions = reconcile(expansion.runs, statuses)
            ready = _to_submit(backend, actions)  # points whose prerequisites finished; runs a dead supervisor lost
            if ready:
                backend.submit(ready, expansion)
            if live:
                live.update(status_table(expansion, statuses), refresh=True)
            else:
                _print_transitions(expansion, statuses, previous)
            hopeless = [run for run in expansion.runs if statuses[run.run_id].never_admitted]
            if hopeless:
                if not live:
                    console.print_wide(status_table(expansion, statuses))
                s = statuses[hopeless[0].run_id]
                console.print_error(
                    f"Kueue will never admit {len(hopeless)} run(s) as configured: {s.message}",
                    "lower target.slices or the TPU type, or raise the ClusterQueue's quota",
                )
                return ExitCode.NOT_ADMITTED
            blocked = [a for a in actions if a.kind == "blocked"]
            if all(
                statuses[run.run_id].terminal or run.run_id in {a.run.run_id for a in blocked} for run in expansion.runs
            ):
                break
            if deadline is not None and time.monotonic() > deadline:
                if not live:
                    console.print_wide(status_table(expansion, statuses))
                return _timeout_code(expansion, statuses)
            time.sleep(POLL_SECONDS)
    finally:
        if live:
            live.stop()
    if not live:
        console.print_wide(status_table(expansion, statuses))
    failed = [r for r in expansion.runs if statuses[r.run_id].phase != "Succeeded"]
    if failed:
        named = "; ".join(f"{r.jobset_name}: {_verdict(statuses[r.run_id])}" for r in failed[:5])
        console.print_error(
            f"{len(failed)} of {len(expansion.runs)} run(s) did not succeed: {named}",
            "`distillctl status` and `distillctl logs` say why; --retry-failed runs them again",
        )
        return ExitCode.FAILED
    return ExitCode.OK


def _verdict(s: RunStatus) -> str:
    """`Failed (OutputNotWritable: <path>: <error>)`: the phase with its reason and message."""
    return f"{s.phase} ({s.reason}: {s.message})" if s.reason and s.message else s.shown


def _timeout_code(expansion: Expansion, statuses: dict[str, RunStatus]) -> ExitCode:
    queued = [r for r in expansion.runs if statuses[r.run_id].phase == "Queued"]
    if queued and expansion.sweep is not None and expansion.sweep.target.on_cluster:
        s = statuses[queued[0].run_id]
        console.print_error(
            f"timed out with {len(queued)} run(s) still queued: {s.reason}: {s.message}",
            "Kueue has not admitted them: check the ClusterQueue's quota for this TPU type",
        )
        return ExitCode.NOT_ADMITTED
    console.print_error("timed out before every run finished", "the runs keep going; `distillctl status` follows them")
    return ExitCode.TIMEOUT


def _print_transitions(expansion: Expansion, statuses: dict[str, RunStatus], previous: dict[str, str]) -> None:
    for run in expansion.runs:
        shown = statuses[run.run_id].shown
        if previous.get(run.run_id) != shown:
            previous[run.run_id] = shown
            console.out.print(f"{time.strftime('%H:%M:%S')} {run.jobset_name} {shown}", markup=False, highlight=False)


# --- status -----------------------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


PHASE_STYLE = {
    "Succeeded": "green",
    "Failed": "red",
    "Diverged": "red",
    "Stalled": "yellow",
    "Queued": "cyan",
    "Restarting": "yellow",
    "Running": "blue",
    "Pending": "dim",
}


def status_table(expansion: Expansion, statuses: dict[str, RunStatus]) -> Table:
    name = expansion.sweep.name if expansion.sweep else ""
    table = Table(title=f"sweep {name}", title_justify="left")
    for column in ("#", "run id", "axis values", "phase", "restarts", "step", "kl_div_T1", "age"):
        table.add_column(column, justify="right" if column in ("#", "restarts", "step", "kl_div_T1", "age") else "left")
    for run in expansion.runs:
        s = statuses[run.run_id]
        step = "—" if s.step is None else f"{s.step}/{s.total_steps or '?'}"
        table.add_row(
            console.run_key(run),
            run.run_id,
            console.axis_text(run.axis_values),
            Text(s.shown, style=PHASE_STYLE.get(s.phase, "")),
            str(s.restarts),
            step,
            "—" if s.kl_div_t1 is None else f"{s.kl_div_t1:.4f}",
            _age(s.age_seconds),
        )
    return table


def status_json(expansion: Expansion, statuses: dict[str, RunStatus]) -> list[dict]:
    return [
        {
            "run_id": run.run_id,
            "jobset": run.jobset_name,
            "label": run.label,
            "role": run.role,
            "axis_values": dict(run.axis_values),
            "phase": s.phase,
            "reason": s.reason,
            "message": s.message,
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


def status(
    sweep_file: SweepArgument,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh in place until interrupted")] = False,
    output: OutputOption = OutputFormat.text,
    stall_after: StallOption = DEFAULT_STALL_SECONDS,
    image: ImageOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """One row per run: phase, restarts, step, latest kl_div_T1 and age."""
    expansion, backend = _open(sweep_file, _access(kubeconfig, context, namespace), yes=True, image=image)
    try:
        if output is OutputFormat.json:
            statuses, _ = sweep_status(expansion, backend, stall_after=stall_after)
            console.print_json(status_json(expansion, statuses))
            return
        if not watch:
            statuses, _ = sweep_status(expansion, backend, stall_after=stall_after)
            console.print_wide(status_table(expansion, statuses))
            return
        if not console.out.is_terminal:  # a log, not a screen: one table per refresh
            while True:
                statuses, _ = sweep_status(expansion, backend, stall_after=stall_after)
                console.out.print(Text(time.strftime("%H:%M:%S"), style="dim"))
                console.print_wide(status_table(expansion, statuses))
                time.sleep(POLL_SECONDS)
        with Live(console=console.out, auto_refresh=False) as live:
            while True:
                statuses, _ = sweep_status(expansion, backend, stall_after=stall_after)
                live.update(status_table(expansion, statuses), refresh=True)
                time.sleep(POLL_SECONDS)
    finally:
        backend.close()


# --- logs and cancel --------------------------------------------------------------------------------------


def find_run(expansion: Expansion, key: str) -> Point:
    """A run by run id, JobSet name, point index or prerequisite name."""
    for run in expansion.runs:
        keys = {run.run_id, run.jobset_name, console.run_key(run)}
        if key in keys or (run.prerequisite is None and key == str(run.index)):
            return run
    choices = ", ".join(f"{console.run_key(run)} ({run.run_id})" for run in expansion.runs)
    raise UsageError(
        f"no run {key!r} in this sweep", f"use a run id, JobSet name, point index or prerequisite: {choices}"
    )


def logs(
    sweep_file: SweepArgument,
    run: Annotated[str, typer.Argument(help="run id, JobSet name, point index or prerequisite name")],
    slice_: Annotated[int, typer.Option("--slice", min=0, help="slice (Job) index")] = 0,
    worker: Annotated[int, typer.Option("--worker", min=0, help="worker (pod) index in the slice")] = 0,
    all_: Annotated[bool, typer.Option("--all", help="every worker of every slice, prefixed [slice/worker]")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    tail: Annotated[Optional[int], typer.Option("--tail", min=1, help="only the last N lines")] = None,
    image: ImageOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Print a run's trainer log (slice 0, worker 0 by default)."""
    expansion, backend = _open(sweep_file, _access(kubeconfig, context, namespace), yes=True, image=image)
    try:
        target = find_run(expansion, run)
        request = LogRequest(slice=slice_, worker=worker, all=all_, follow=follow, tail=tail)
        for line in backend.logs(target, request):
            sys.stdout.write(line)
            sys.stdout.flush()
    finally:
        backend.close()


def cancel(
    sweep_file: SweepArgument,
    runs: Annotated[
        Optional[list[str]], typer.Argument(help="runs to cancel (default: every run of the sweep)")
    ] = None,
    yes: YesOption = False,
    image: ImageOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Stop and delete this sweep's runs (never another sweep's); finished outputs and checkpoints stay."""
    expansion, backend = _open(sweep_file, _access(kubeconfig, context, namespace), yes=True, image=image)
    try:
        chosen = [find_run(expansion, key) for key in runs] if runs else list(expansion.runs)
        existing = backend.observe(expansion)
        chosen = [run for run in chosen if run.run_id in existing and existing[run.run_id].exists]
        if not chosen:
            console.out.print("nothing to cancel: none of these runs exists")
            return
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"cancel would delete {len(chosen)} run(s)", "pass --yes to confirm without a prompt")
            names = "\n  ".join(run.jobset_name for run in chosen)
            if not typer.confirm(f"Delete {len(chosen)} run(s) of sweep {expansion.sweep.name}?\n  {names}\n"):
                raise typer.Exit(int(ExitCode.FAILED))
        for name in backend.delete(chosen):
            console.out.print(f"deleted {name}", markup=False)
    finally:
        backend.close()
