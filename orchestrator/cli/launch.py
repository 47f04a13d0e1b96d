"""`distillctl sweep`, `status`, `logs` and `cancel`: each builds its sweep context, calls the core (launch, follow,
look, delete), prints what it returns, and exits."""

from __future__ import annotations

import functools
import shlex
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.options import (
    DEFAULT_STALL_SECONDS,
    CheckPathsOption,
    ContextOption,
    ImageOption,
    KubeconfigOption,
    NamespaceOption,
    OutputFormat,
    OutputOption,
    SlicesOption,
    StallOption,
    SweepArgument,
    SweepContext,
    TpuOption,
    WaitTimeoutOption,
    YesOption,
)


class DryRunMode(str, Enum):
    client = "client"
    server = "server"


class DeletionPolicy(str, Enum):
    Delete = "Delete"
    Keep = "Keep"


def bare_dry_run(arguments: list[str]) -> list[str]:
    """`--dry-run` alone means `--dry-run=client`, as in kubectl. Typer has no option with an optional value: it
    refused a bare `--dry-run` at the end ("requires an argument") and took the sweep file after it as its value."""
    modes = {mode.value for mode in DryRunMode}
    given = list(arguments)
    for i, argument in enumerate(given):
        if argument == "--":
            break
        if argument == "--dry-run" and (i + 1 == len(given) or given[i + 1] not in modes):
            given[i] = "--dry-run=client"
    return given


def _reading(sweep_file, kubeconfig, context, namespace, image, tpu_type, slices) -> SweepContext:
    """The context of a command that reads a sweep's runs (status, logs, cancel): any grid size, the target's
    overrides as the sweep was launched with them (part of run ids)."""
    return SweepContext.build(
        sweep_file,
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        yes=True,
        image=image,
        tpu_type=tpu_type,
        slices=slices,
    )


def parse_labels(items: list[str] | None) -> dict[str, str]:
    from orchestrator.errors import UsageError

    labels = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r} is not KEY=VALUE", "e.g. --label distillctl.dev/ci-key=pr12-3f2a9c")
        labels[key] = value
    return labels


# --- sweep ------------------------------------------------------------------------------------------------


def sweep(
    sweep_file: SweepArgument,
    dry_run: Annotated[
        Optional[DryRunMode],
        typer.Option(
            "--dry-run",
            help="client (also a bare --dry-run): render only, no cluster needed; server: the API server's dry run of "
            "what would be created",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the sweep to the end")] = False,
    timeout: WaitTimeoutOption = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="run failed and diverged points again (they resume)")
    ] = False,
    stall_after: StallOption = DEFAULT_STALL_SECONDS,
    image: ImageOption = None,
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    queue: Annotated[Optional[str], typer.Option("--queue", help="override target.queue (Kueue LocalQueue)")] = None,
    priority: Annotated[Optional[str], typer.Option("--priority", help="override target.priority")] = None,
    label: Annotated[
        Optional[list[str]],
        typer.Option(
            "--label",
            help="KEY=VALUE: an extra label on every JobSet created (repeat), e.g. a CI key; not part of run ids",
        ),
    ] = None,
    output: OutputOption = OutputFormat.text,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
    yes: YesOption = False,
    service: Annotated[
        bool,
        typer.Option(
            "--service",
            help="hand the sweep to the in-cluster controller (`distillctl serve`): apply it as a DistillationSweep",
        ),
    ] = False,
    retries: Annotated[
        Optional[int],
        typer.Option(
            "--retries",
            min=0,
            help="with --service: how many times the controller creates a failed or diverged run again (it resumes; "
            "default 0)",
        ),
    ] = None,
    deletion_policy: Annotated[
        Optional[DeletionPolicy],
        typer.Option(
            "--deletion-policy",
            help="with --service: Delete (the default): deleting the sweep deletes its JobSets first; Keep: they are "
            "left running",
        ),
    ] = None,
    check_paths: CheckPathsOption = False,
) -> None:
    """Create the sweep's runs that do not exist yet (prerequisites first); with --wait, follow them to the end.

    Running it again creates nothing new: runs are found by their ids, so a re-run, an interrupted run or two at
    once still end with one run per point."""
    from orchestrator.cli import console, views
    from orchestrator.core.launch import launch
    from orchestrator.errors import UsageError

    ctx = SweepContext.build(
        sweep_file,
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        yes=yes,
        labels=parse_labels(label),
        image=image,
        tpu_type=tpu_type,
        slices=slices,
        queue=queue,
        priority=priority,
    )
    if timeout is not None and not wait:
        raise UsageError("--timeout applies to --wait", "add --wait to follow the sweep, or drop --timeout")
    service_fields = {
        field: value
        for field, value in (
            ("retryFailed", retries),
            ("deletionPolicy", deletion_policy.value if deletion_policy else None),
        )
        if value is not None
    }
    if service_fields and not service:
        raise UsageError(
            "--retries and --deletion-policy apply to --service (the sweep service's resource)",
            "add --service, or use --retry-failed to run failed points again now",
        )
    if service:
        # The service launches and follows; these would be dropped (and --dry-run=server would really apply).
        given = [
            flag
            for flag, on in (
                ("--dry-run=server", dry_run is DryRunMode.server),
                ("--wait", wait),
                ("--retry-failed", retry_failed),
            )
            if on
        ]
        if given:
            raise UsageError(
                f"--service cannot be combined with {', '.join(given)}",
                "the service creates and follows the runs itself: `distillctl status SWEEP` follows them, --retries N "
                "lets it create a failed run again up to N times; --dry-run=client checks the sweep without the cluster",
            )
    paths = functools.partial(_check_paths, ctx) if check_paths else None
    if dry_run is DryRunMode.client:
        if service:  # checked as `--service` applies it: its image may be left to the service
            _service_dry_run(ctx, output, paths)
        else:
            expansion = ctx.expanded()
            if paths is not None:
                paths(expansion)
            _client_dry_run(expansion, output)
        return
    if service:
        _apply_to_service(ctx, output, service_fields, paths)
        return
    # served: a file that leaves its image to the service is still recognised as a served sweep (and refused here)
    expansion, backend = ctx.open(paths, served=True, launching=True)
    try:
        unknown = functools.partial(console.warn_once, _service_unknown(expansion.sweep.name))
        if dry_run is None and views.service_view(expansion, backend, on_forbidden=unknown) is not None:
            # Its JobSets beside the controller's: an edited file's new point was created here and called an orphan
            # there a moment later (followed by no one, deleted by `cancel --orphans`).
            name = expansion.sweep.name
            raise UsageError(
                f"sweep {name} is run by the distillctl service (DistillationSweep {name}): the controller creates "
                "and follows its runs",
                "apply the file to it with `distillctl sweep FILE --service` (an edit takes effect there); "
                "`distillctl status FILE` follows it",
            )
        if expansion.sweep.early_stopping.any:
            console.warn_once(_rules_not_acted(expansion, sweep_file))
        mode = dry_run.value if dry_run else None
        report = launch(expansion, backend, retry_failed=retry_failed, dry_run=mode, stall_after=stall_after)
        for problem in report.state.warnings:
            console.warn_once(problem)
        _warn_orphans(expansion, backend, ctx.path)  # an edited file: the runs of the points it dropped go on
        if adopted := getattr(backend, "adopted", []):
            console.err.print(
                f"note: {len(adopted)} trainer(s) a dead local supervisor left running were handed to the sweep's "
                f"supervisor, which resumes their runs if they die: {', '.join(adopted)}",
                markup=False,
            )
        _warn_stopped_runs(expansion, backend, ctx.path, dry_run=dry_run is not None)
        if output is OutputFormat.json:
            console.print_json(views.launch_json(report, mode))
        else:
            for line in views.launch_lines(report, mode):
                console.out.print(line)
        if not wait or dry_run is not None:
            return
        quiet = output is OutputFormat.json
        code = _follow(expansion, backend, stall_after=stall_after, timeout=timeout, quiet=quiet, path=sweep_file)
    finally:
        backend.close()
    if code:
        raise typer.Exit(int(code))


def _rules_not_acted(expansion, path=None):
    """The sweep's early-stopping rules, which only the sweep service acts on: a local sweep trained every point to
    its end and nothing said the rules were not applied."""
    from distillspec.problems import Problem

    on_cluster = expansion.sweep.target.kind == "kubernetes"
    return expansion.source.locate(
        Problem(
            ("early_stopping",),
            "early_stopping_not_acted",
            "the early_stopping rules are acted on only by the sweep service (`distillctl serve`): launched this way, "
            "every point trains to its end",
            (
                f"apply it with `distillctl sweep {path or 'FILE'} --service` to have them stop points; "
                if on_cluster
                else ""
            )
            + f"`distillctl early-stop replay {path or 'FILE'}` shows where they would stop each point",
            severity="warning",
        )
    )


def _service_unknown(name: str):
    """A launcher that may not read DistillationSweeps cannot know whether the service runs this sweep: said."""
    from distillspec.problems import Problem

    return Problem(
        (),
        "service_unknown",
        f"cannot tell whether the distillctl service runs sweep {name}: no right to get DistillationSweeps here (if "
        "it does, its controller calls the runs created now orphans)",
        'add get on distillationsweeps.distillctl.dev to your Role (README, "Running distillctl in a pod")',
        severity="warning",
    )


def _check_paths(ctx: SweepContext, expansion) -> None:
    """`--check-paths`: refuse the sweep before anything is created when a path its runs read is wrong; warn."""
    from orchestrator.cli import console

    for problem in ctx.path_problems(expansion):
        console.print_problem(problem)


def _served_source(ctx: SweepContext, check_paths=None):
    """`(source, expansion)` of the file as `--service` applies it (its image may be left to the controller), checked
    as `sweep` checks it; its launch advice printed as `sweep` gives it, and its paths checked when asked."""
    from orchestrator.cli import console
    from orchestrator.core.sweeps import with_memory_warnings
    from orchestrator.service.client import as_served, checked_source

    source, expansion = checked_source(ctx.path, ctx.overrides, yes=ctx.yes)
    for problem in with_memory_warnings(expansion).problems:
        console.print_problem(as_served(problem))
    if check_paths is not None:
        check_paths(expansion)
    return source, expansion


def _apply_to_service(ctx: SweepContext, output: OutputFormat, fields: dict, check_paths=None) -> None:
    """Apply the sweep as a DistillationSweep; the controller creates its runs."""
    from orchestrator.backends.kubernetes.backend import KubernetesBackend
    from orchestrator.backends.kubernetes.client import connect
    from orchestrator.cli import console
    from orchestrator.errors import DistillctlError
    from orchestrator.exit_codes import ExitCode
    from orchestrator.service.client import apply_sweep, unserved_problem, wait_observed

    source, expansion = _served_source(ctx, check_paths)
    cluster = connect(ctx.access, default_namespace=source.sweep.target.namespace)
    try:
        # What `sweep` refuses before creating anything (a missing LocalQueue, PriorityClass or Secret, a quota that
        # never fits), checked with the user's rights: it was applied with exit 0, and only the resource's
        # condition said later, without the fix.
        KubernetesBackend(expansion.sweep.target, ctx.access, cluster=cluster).preflight(expansion)
        applied = apply_sweep(cluster, source, fields, say=lambda line: console.err.print(line, markup=False))
        metadata = applied["metadata"]
        seen = wait_observed(cluster, metadata["name"], metadata.get("generation"))
        if (
            seen is not None and seen.orphans
        ):  # an edit's dropped points run on, holding quota: said now, as `sweep` does
            console.warn_once(_orphans_problem(expansion, [(o.jobset, o.state) for o in seen.orphans], ctx.path))
        if seen is None:
            earlier = (applied.get("status") or {}).get("observedGeneration")
            problem = unserved_problem(metadata["name"], metadata["namespace"], earlier, metadata.get("generation"))
            console.print_problem(problem)
    finally:
        cluster.api.close()
    refused = next((c for c in (seen.conditions if seen else []) if c.type == "Accepted" and c.status == "False"), None)
    if refused is not None:  # said at once: it read "applied ... the controller creates its runs", exit 0
        raise DistillctlError(
            f"the controller refused DistillationSweep {metadata['namespace']}/{metadata['name']} ({refused.reason}): "
            f"{refused.message}",
            "fix the file and apply it again (`distillctl sweep FILE --service`); it creates no run until then",
            exit_code=REFUSAL_EXIT_CODES.get(refused.reason, ExitCode.INVALID_SPEC),  # as `sweep` exits for it
        )
    if output is OutputFormat.json:
        console.print_json({"kind": applied["kind"], "name": metadata["name"], "namespace": metadata["namespace"]})
        return
    console.out.print(
        f"applied {applied['kind']} {metadata['namespace']}/{metadata['name']}: the controller creates its runs "
        f"(`distillctl status {ctx.path}`, `kubectl get distillationsweeps`)",
        markup=False,
    )


# The controller's reasons for refusing a sweep, as exit codes: the ones `sweep` gives for the same (4 otherwise).
REFUSAL_EXIT_CODES = {
    "LocalQueueMissing": 9,
    "ClusterQueueMissing": 9,
    "QuotaNeverFits": 9,
    "PriorityClassMissing": 8,
    "ManifestRejected": 8,
}


def _service_dry_run(ctx, output: OutputFormat, check_paths=None) -> None:
    """`sweep --service --dry-run=client`: the DistillationSweep `--service` would apply, checked as it checks it,
    without the cluster (it refused a file that leaves target.image to the service: "not a valid sweep")."""
    import yaml

    from orchestrator.cli import console
    from orchestrator.service.resource import resource_from_source

    source, expansion = _served_source(ctx, check_paths)
    namespace = ctx.access.namespace or source.sweep.target.namespace or "default"
    body = resource_from_source(source, namespace)
    if output is OutputFormat.json:
        console.print_json(body)
    else:
        console.out.file.write(yaml.safe_dump(body, sort_keys=False))
    console.err.print(
        f"would apply DistillationSweep {namespace}/{source.sweep.name}: {len(expansion.runs)} run(s) (dry run: the "
        "cluster was not asked)",
        markup=False,
        soft_wrap=True,
    )


def _client_dry_run(expansion, output: OutputFormat) -> None:
    """Render every run as it would be submitted, without asking the cluster what already exists."""
    from rich.text import Text

    from distillspec.problems import has_errors
    from orchestrator.backends.xpk import command as xpk_command
    from orchestrator.cli import console
    from orchestrator.core import rendering
    from orchestrator.errors import InvalidSpecError

    target = expansion.sweep.target
    xpk = xpk_command.sweep_problems(expansion)  # the launch's refusals, said by the dry run that stands for it
    if has_errors(xpk):
        raise InvalidSpecError(f"{expansion.sweep.name} cannot be launched with xpk", xpk, "fix target: above")
    for problem in xpk:
        console.print_problem(problem)
    if expansion.sweep.early_stopping.any:
        console.print_problem(_rules_not_acted(expansion, expansion.source.file if expansion.source else None))
    for run in expansion.runs:
        if target.on_cluster:
            rendering.render_jobset(run, target)  # renders, or raises
    if output is OutputFormat.json:
        console.print_json(
            [
                {"run_id": run.run_id, "jobset": run.jobset_name, "label": run.label, "outcome": "dry-run-client"}
                for run in expansion.runs
            ]
        )
        return
    for run in expansion.runs:
        console.out.print(f"would create (client) {run.jobset_name}  {run.label}", markup=False)
    console.out.print(
        Text(
            f"{len(expansion.runs)} rendered (dry run: "
            + ("the run folders were" if not target.on_cluster else "the cluster was")
            + " not asked what exists; --dry-run=server asks "
            + ("them)" if not target.on_cluster else "it)"),
            style="bold",
        )
    )


def _follow(
    expansion, backend, *, stall_after: float, timeout: float | None, quiet: bool = False, path: Path | None = None
) -> int:
    """Print the follow events (a live table on a terminal, transitions in a log); the exit code of the end.
    Ctrl-C stops following, not the runs: it says so, and how to follow or stop them (exit 130)."""
    from rich.live import Live

    from orchestrator.cli import boundary, console, views
    from orchestrator.core.follow import Finished, Outcome, follow
    from orchestrator.core.reconcile import ActionKind
    from orchestrator.core.run_status import Phase
    from orchestrator.exit_codes import ExitCode

    live = Live(console=console.out, auto_refresh=False) if console.out.is_terminal and not quiet else None
    previous: dict[str, str] = {}
    blocked: dict[str, str] = {}
    if live:
        live.start()
    try:

        def outage(message: str) -> None:
            console.err.print(f"{time.strftime('%H:%M:%S')} {message}", markup=False, highlight=False)

        for event in follow(expansion, backend, stall_after=stall_after, timeout=timeout, on_outage=outage):
            if isinstance(event, Finished):
                break
            blocked = {a.run.run_id: a.reason for a in event.actions if a.kind == ActionKind.BLOCKED}
            for problem in event.state.warnings:
                console.warn_once(problem)
            if live:
                live.update(views.status_table(expansion, event.state.statuses), refresh=True)
            elif not quiet:
                for line in views.transitions(expansion, dict(event.state.statuses), previous):
                    console.out.print(line, markup=False, highlight=False)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (boundary.Terminated)
        if live:
            live.stop()
        live = None
        named = _named(path)
        console.print_stopped(
            "stopped following; the runs go on",
            f"`distillctl status {named} --watch` follows them again, `distillctl cancel {named}` stops them",
        )
        return boundary.interrupted_code(e)
    finally:
        if live:
            live.stop()
    statuses = event.state.statuses
    if not live and not quiet:
        console.print_wide(views.status_table(expansion, statuses))
    if event.outcome is Outcome.SUCCEEDED:
        return ExitCode.OK
    first = statuses[event.runs[0].run_id] if event.runs else None
    if event.outcome is Outcome.NEVER_ADMITTED:
        console.print_error(
            f"Kueue will never admit {len(event.runs)} run(s) as configured: {first.message}",
            "lower target.slices or the TPU type, or raise the ClusterQueue's quota",
        )
        return ExitCode.NOT_ADMITTED
    if event.outcome is Outcome.WILL_NOT_START:
        named = "; ".join(f"{r.jobset_name}: {views.verdict(statuses[r.run_id])}" for r in event.runs[:5])
        console.print_error(
            f"{len(event.runs)} run(s) cannot start, and waiting will not fix it: {named}",
            "fix the image or create the missing Secret, then `distillctl cancel` and `distillctl sweep` again",
        )
        return ExitCode.FAILED
    if event.outcome is Outcome.TIMED_OUT_QUEUED:
        console.print_error(
            f"timed out with {len(event.runs)} run(s) still queued: {first.reason}: {first.message}",
            "Kueue has not admitted them: check the ClusterQueue's quota for this TPU type",
        )
        return ExitCode.NOT_ADMITTED
    if event.outcome is Outcome.TIMED_OUT:
        queued = sum(statuses[run.run_id].phase == Phase.QUEUED for run in expansion.runs)
        behind = f" ({queued} still queued behind this sweep's running runs)" if queued else ""
        console.print_error(
            f"timed out before every run finished{behind}", "the runs keep going; `distillctl status` follows them"
        )
        return ExitCode.TIMEOUT
    # A point whose prerequisite failed never started: it is counted, not listed as "not submitted yet".
    failed = [r for r in event.runs if r.run_id not in blocked]
    named = "; ".join(f"{r.jobset_name}: {views.verdict(statuses[r.run_id])}" for r in failed[:5])
    if len(failed) < len(event.runs):
        named += f"; {len(event.runs) - len(failed)} blocked by a failed prerequisite"
    console.print_error(
        f"{len(event.runs)} of {len(expansion.runs)} run(s) did not succeed: {named}",
        _unsucceeded_hint([statuses[r.run_id] for r in failed], blocked=len(failed) < len(event.runs)),
    )
    return ExitCode.FAILED


def _unsucceeded_hint(statuses, *, blocked: bool) -> str:
    """What to do about runs a follow ended on: a failed one (or a blocked point) takes --retry-failed; a stopped
    one (cancelled, preempted: Pending) only `sweep` again, which resumes it."""
    from distillspec.contract import FailedReason
    from orchestrator.core.run_status import Phase

    hint = ["`distillctl status` says why (`distillctl logs` shows a run's output)"]
    if any(s.reason == FailedReason.OUTPUT_NOT_WRITABLE for s in statuses):
        hint.append("make the named output folders writable first (each run would fail the same way again)")
    if blocked or any(s.phase in (Phase.FAILED, Phase.DIVERGED) for s in statuses):
        hint.append("--retry-failed runs the failed ones again")
    if any(s.phase == Phase.PENDING for s in statuses):
        hint.append("`distillctl sweep` again resumes the stopped ones")
    return "; ".join(hint)


# --- status -----------------------------------------------------------------------------------------------


def status(
    sweep_file: SweepArgument,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="refresh in place until interrupted (with --output json: a line of JSON each time a run changes)",
        ),
    ] = False,
    output: OutputOption = OutputFormat.text,
    stall_after: StallOption = DEFAULT_STALL_SECONDS,
    image: ImageOption = None,
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """One row per run: phase, restarts, step, latest kl_div_T1 and age.

    When `distillctl serve` runs the sweep (its DistillationSweep exists), the phases are the controller's and its
    conditions are printed on stderr."""
    from rich.live import Live

    from orchestrator.cli import boundary, console, views
    from orchestrator.core.follow import POLL_SECONDS
    from orchestrator.core.status import look

    ctx = _reading(sweep_file, kubeconfig, context, namespace, image, tpu_type, slices)
    # Launch advice (a mutable tag, a local output base) was `sweep`'s to give: printed on every refresh of a
    # status, or before every log, it buried what the command shows.
    expansion, backend = ctx.open(about=(), served=True)
    ctx.warn_if_nothing_written(expansion)

    shown = [""]

    def statuses():
        view = views.service_view(expansion, backend)
        if view is not None:
            views.show_service(view, shown)
            if view.statuses is not None:  # the controller's view, from the DistillationSweep's status
                return views.with_the_cluster(view, lambda: look(expansion, backend, now=time.time()).statuses)
        state = look(expansion, backend, now=time.time(), stall_after=stall_after)
        for problem in state.warnings:
            console.warn_once(problem)
        if view is not None:  # a refused sweep: its runs are not about to be created
            from orchestrator.service.client import refusal, refused_runs

            if (refused := refusal(view)) is not None:
                return refused_runs(state.statuses, refused)
        return state.statuses

    if watch:
        statuses = _riding_out_outages(statuses)

    try:
        _warn_orphans(expansion, backend, ctx.path)
        if output is OutputFormat.json and watch:
            _watch_json(expansion, statuses)
        if output is OutputFormat.json:
            console.print_json(views.status_json(expansion, statuses()))
            return
        if not watch:
            console.print_wide(views.status_table(expansion, statuses()))
            return
        if not console.out.is_terminal:  # a log, not a screen: the table once, then a line per change
            previous: dict[str, str] = {}
            console.print_wide(views.status_table(expansion, current := statuses()))
            views.transitions(expansion, current, previous)
            while True:
                time.sleep(POLL_SECONDS)
                for line in views.transitions(expansion, statuses(), previous):
                    console.out.print(line, markup=False, highlight=False)
        with Live(console=console.out, auto_refresh=False) as live:
            while True:
                live.update(views.status_table(expansion, statuses()), refresh=True)
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt as e:
        if not watch or isinstance(e, boundary.Terminated):
            raise  # SIGTERM (a CI job's timeout, `kill`): 143, which a wrapper can tell from a watch ended by hand
        return  # --watch runs until Ctrl-C: that is its end, not an error
    finally:
        backend.close()


def _riding_out_outages(statuses):
    """`statuses` for `status --watch`: while the API server does not answer (a control-plane upgrade), the last
    statuses again, said on stderr, for up to `follow.OUTAGE_SECONDS`; then its error (exit 5)."""
    from orchestrator.cli import console
    from orchestrator.core.follow import Outage
    from orchestrator.errors import DistillctlError

    def tell(message: str) -> None:
        console.err.print(f"{time.strftime('%H:%M:%S')} {message}", markup=False, highlight=False)

    outage = Outage(tell)
    last: list = [None]

    def tolerant():
        try:
            current = statuses()
        except DistillctlError as e:
            if last[0] is None or not outage.rides_out(e):  # the first look has nothing to show again
                raise
            return last[0]
        outage.answered()
        last[0] = current
        return current

    return tolerant


def _watch_json(expansion, statuses) -> None:
    """JSON Lines until interrupted: the rows, as one line, now and each time a run changes (its age aside)."""
    import json

    from orchestrator.cli import views
    from orchestrator.core.follow import POLL_SECONDS

    last = None
    while True:
        rows = views.status_json(expansion, statuses())
        changed = json.dumps([{k: v for k, v in row.items() if k != "age_seconds"} for row in rows])
        if changed != last:
            sys.stdout.write(json.dumps(rows, separators=(",", ":")) + "\n")
            sys.stdout.flush()
            last = changed
        time.sleep(POLL_SECONDS)


# --- logs and cancel --------------------------------------------------------------------------------------


def find_run(expansion, key: str):
    """A run by run id, JobSet name, point index or prerequisite name."""
    from orchestrator.errors import UsageError

    for run in expansion.runs:
        if key in {run.run_id, run.jobset_name, run.key} or (run.prerequisite is None and key == str(run.index)):
            return run
    choices = ", ".join(f"{run.key} ({run.run_id})" for run in expansion.runs)
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
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Print a run's trainer log (slice 0, worker 0 by default)."""
    from orchestrator.backends import LogRequest

    ctx = _reading(sweep_file, kubeconfig, context, namespace, image, tpu_type, slices)
    request = LogRequest(slice=slice_, worker=worker, all=all_, follow=follow, tail=tail)
    expansion, backend = ctx.open(
        check=lambda expansion: _check_worker(expansion.sweep.target, request), about=(), served=True
    )
    try:
        target = find_run(expansion, run)
        if hasattr(backend, "log_source"):  # the JobSet that runs the run id, maybe another sweep's: named on stderr
            source = backend.log_source(target)
            if source.owner:
                from orchestrator.cli import console

                console.err.print(
                    f"{target.run_id} is owned by sweep {source.owner}: log of {source.name}", markup=False
                )
            lines = backend.logs(target, request, source)
        else:
            lines = backend.logs(target, request)
        for line in lines:
            sys.stdout.write(line)
            sys.stdout.flush()
    finally:
        backend.close()


def _check_worker(target, request) -> None:
    """Refuse a --slice or --worker the run does not have (its pods would just be "not found")."""
    from distillspec import tpu
    from orchestrator.errors import UsageError

    if request.all or (request.slice == 0 and request.worker == 0):
        return
    if target.kind == "local":
        raise UsageError(
            f"a local run is one process: it has no slice {request.slice}, worker {request.worker}",
            "drop --slice and --worker",
        )
    slices, workers = target.slices, tpu.lookup(str(target.tpu_type)).vms_per_slice
    for flag, asked, count, what in (
        ("--slice", request.slice, slices, f"{slices} slice(s) (target.slices)"),
        ("--worker", request.worker, workers, f"{workers} worker(s) per slice ({target.tpu_type})"),
    ):
        if asked >= count:
            raise UsageError(f"{flag} {asked}: the run has {what}", f"choose {flag} from 0 to {count - 1}, or --all")


def _warn_orphans(expansion, backend, path=None) -> None:
    """On stderr: this sweep's JobSets for runs its file no longer has (they hold quota until they finish)."""
    from distillspec.problems import Problem
    from orchestrator.cli import console

    orphans, others = backend.leftovers(expansion) if hasattr(backend, "leftovers") else ([], {})
    for image, count in sorted(others.items()):
        console.warn_once(
            Problem(
                (),
                "runs_of_another_image",
                f"{count} JobSet(s) of sweep {expansion.sweep.name} run another image than this command's: {image}",
                f"they are this file's runs under that image, not orphans: `--image {image}` shows them",
                severity="warning",
            )
        )
    earlier = backend.earlier_runs(expansion) if hasattr(backend, "earlier_runs") else 0
    if earlier:
        console.warn_once(
            Problem(
                (),
                "earlier_runs",
                f"{earlier} run(s) of sweep {expansion.sweep.name} under {expansion.sweep.target.output_base} ran "
                "for points this file no longer has, and none of its own points has started: the file (or a spec it "
                "names) changed every run id since",
                "`distillctl sweep FILE` runs the new points; the earlier runs' outputs stay, and the file as it "
                "was shows them",
                severity="warning",
            )
        )
    if orphans:
        console.warn_once(_orphans_problem(expansion, [(o.name, o.state) for o in orphans], path))


def _warn_stopped_runs(expansion, backend, path=None, *, dry_run: bool = False) -> None:
    """On stderr, once: runs of this sweep that `cancel` stopped with a checkpoint, for points the file no longer
    has (an edit gave each point a new id, which starts from step 0)."""
    from distillspec.problems import Problem
    from orchestrator.cli import console

    stopped = backend.stopped_runs(expansion, said=not dry_run) if hasattr(backend, "stopped_runs") else []
    if not stopped:
        return
    listed = ", ".join(f"{run} (checkpoint at step {step})" for run, step in stopped[:10])
    console.warn_once(
        Problem(
            (),
            "stopped_runs_superseded",
            f"{len(stopped)} run(s) of sweep {expansion.sweep.name} that `cancel` stopped are for points this file no "
            f"longer has: {listed}{' ...' if len(stopped) > 10 else ''}; an edited point gets a new id, and its run "
            "starts from step 0",
            f"to resume one instead, put the file back as it was and run `distillctl sweep {path or 'FILE'}`; the "
            f"stopped runs' outputs stay under {expansion.sweep.target.output_base}",
            severity="warning",
        )
    )


def _orphans_problem(expansion, orphans: list[tuple[str, str]], path=None):
    """`orphaned_runs`: this sweep's runs (name, state) for points its file no longer has."""
    from distillspec.problems import Problem

    listed = ", ".join(f"{name} ({state})" for name, state in orphans[:10]) + (" ..." if len(orphans) > 10 else "")
    what, does = _orphan_words(expansion)
    return Problem(
        (),
        "orphaned_runs",
        f"{len(orphans)} {what} of sweep {expansion.sweep.name} are for runs no longer in the sweep file: {listed}",
        f"`distillctl cancel {_named(path)} --orphans` {does} them (outputs and checkpoints stay)",
        severity="warning",
    )


def _named(path) -> str:
    """The sweep file as a hint's command names it (standard input cannot be read again: SWEEP)."""
    return shlex.quote(str(path)) if path and str(path) != "-" else "SWEEP"


def _orphan_words(expansion) -> tuple[str, str]:
    """What an orphan is on this target, and what `cancel --orphans` does to it."""
    if expansion.sweep.target.kind == "local":
        return "run(s)", "stops"  # trainers (or queued runs) of the sweep's supervisor
    return "JobSet(s)", "deletes"


def cancel(
    sweep_file: SweepArgument,
    runs: Annotated[
        Optional[list[str]], typer.Argument(help="runs to cancel (default: every run of the sweep)")
    ] = None,
    orphans: Annotated[
        bool,
        typer.Option(
            "--orphans", help="only this sweep's runs (JobSets; local trainers) for points no longer in the sweep file"
        ),
    ] = False,
    service: Annotated[
        bool,
        typer.Option(
            "--service",
            help="delete the sweep's DistillationSweep (the service's runs go with it under its deletionPolicy "
            "Delete; Keep leaves them)",
        ),
    ] = False,
    yes: YesOption = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="wait until the runs are gone (on a cluster: their JobSets and pods)")
    ] = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = OutputFormat.text,
    image: ImageOption = None,
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Stop and delete this sweep's runs (never another sweep's); finished outputs and checkpoints stay. On a
    cluster the deletion goes on in the background while the pods stop (each has its grace period to save a
    checkpoint): `deleting NAME` says so, and --wait waits until they are gone."""
    from orchestrator.cli import console, views
    from orchestrator.errors import UsageError
    from orchestrator.exit_codes import ExitCode

    if timeout is not None and not wait:
        raise UsageError("--timeout applies to --wait", "add --wait to wait until the runs are gone, or drop --timeout")
    ctx = _reading(sweep_file, kubeconfig, context, namespace, image, tpu_type, slices)
    expansion, backend = ctx.open(about=(), served=True)
    try:
        if service:
            if runs or orphans:
                raise UsageError(
                    "--service deletes the whole DistillationSweep", "drop the run arguments and --orphans"
                )
            _cancel_service(expansion, backend, yes=yes, wait=wait, timeout=timeout, output=output)
            return
        if orphans:
            if runs:
                raise UsageError("--orphans takes no runs", "drop the run arguments")
            _cancel_orphans(expansion, backend, yes=yes, output=output, wait=wait, timeout=timeout)
            return
        ctx.warn_if_nothing_written(expansion)  # from another directory: "nothing to cancel" while they run
        if not runs:  # an edited file: the runs of the points it dropped are not its runs, and go on (said)
            _warn_orphans(expansion, backend, ctx.path)
        asked = [find_run(expansion, key) for key in runs] if runs else list(expansion.runs)
        existing = backend.observe(expansion)
        chosen = [run for run in asked if run.run_id in existing and existing[run.run_id].exists]
        for run in [run for run in chosen if existing[run.run_id].owner]:
            console.err.print(  # the same point in another sweep: that sweep's to cancel, with its outputs
                f"left {existing[run.run_id].name or run.run_id}: owned by sweep {existing[run.run_id].owner}",
                markup=False,
            )
        chosen = [run for run in chosen if not existing[run.run_id].owner]
        if expansion.sweep.target.kind == "local":  # a finished local run is a record, not something to stop
            chosen = [run for run in chosen if not _ended(existing[run.run_id])]
        if chosen and views.service_view(expansion, backend) is not None:  # the controller would create them again
            name = expansion.sweep.name
            raise UsageError(
                f"sweep {name} is run by the distillctl service (DistillationSweep {name}): it would create the "
                "deleted runs again",
                "stop it with `distillctl cancel FILE --service` (the DistillationSweep's deletionPolicy says "
                "whether its JobSets go too)",
            )
        if not chosen:
            # Runs another sweep owns were named above ("left ..."); of the rest, say why nothing stops. (It said
            # "Running (owned by sweep X) and nothing runs it" of a run that sweep runs.)
            mine = [run for run in asked if not (run.run_id in existing and existing[run.run_id].owner)]
            if output is OutputFormat.json:
                console.print_json([])
            elif mine:
                console.out.print(f"nothing to cancel: {_nothing_running(expansion, backend, mine)}", markup=False)
            else:
                console.out.print(f"nothing of sweep {expansion.sweep.name}'s to cancel", markup=False)
            return
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"cancel would delete {len(chosen)} run(s)", "pass --yes to confirm without a prompt")
            names = "\n  ".join(run.jobset_name for run in chosen)
            if not typer.confirm(f"Delete {len(chosen)} run(s) of sweep {expansion.sweep.name}?\n  {names}\n"):
                raise typer.Exit(int(ExitCode.FAILED))
        _report_deleted(backend, backend.delete(chosen), output, wait=wait, timeout=timeout)
    finally:
        backend.close()


def _ended(observation) -> bool:
    return not observation.active and any(observation.condition(kind) is not None for kind in ("Completed", "Failed"))


def _nothing_running(expansion, backend, asked) -> str:
    """Why none of the `asked` runs has anything to stop, from their phases (outputs included): a finished run is
    not "a run that does not exist"."""
    from collections import Counter

    from orchestrator.core.status import look

    statuses = look(expansion, backend, now=time.time()).statuses
    if len(asked) == 1:
        return f"{asked[0].jobset_name} is {statuses[asked[0].run_id].shown} and nothing runs it"
    phases = Counter(statuses[run.run_id].phase.value for run in asked)
    counted = ", ".join(f"{n} {phase}" for phase, n in sorted(phases.items()))
    return f"none of these {len(asked)} runs is running ({counted})"


def _cancel_service(
    expansion, backend, *, yes: bool, wait: bool, timeout: float | None, output: OutputFormat = OutputFormat.text
) -> None:
    """`cancel --service`: delete the sweep's DistillationSweep; the controller deletes its JobSets first (under
    deletionPolicy Delete) and then lets the resource go. With `wait`, until it is gone (exit 3 after `timeout`).
    With JSON output, stdout holds one object (`deleted`, `deletionPolicy`, `gone`) and the words go to stderr."""
    from orchestrator.cli import console
    from orchestrator.errors import DistillctlError, UsageError
    from orchestrator.exit_codes import ExitCode
    from orchestrator.service import client as service

    cluster = getattr(backend, "cluster", None)
    if cluster is None or expansion.sweep.target.kind != "kubernetes":
        raise UsageError(
            f"--service is for sweeps the service runs on Kubernetes; this one's target is {expansion.sweep.target.kind}",
            "drop --service",
        )
    name = expansion.sweep.name
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"cancel would delete DistillationSweep {name}", "pass --yes to confirm without a prompt")
        if not typer.confirm(f"Delete DistillationSweep {name} (namespace {cluster.namespace})?"):
            raise typer.Exit(int(ExitCode.FAILED))
    policy = service.delete_resource(cluster, name)
    as_json = output is OutputFormat.json
    say = console.err.print if as_json else console.out.print

    def answer(gone: bool) -> None:
        if as_json:
            console.print_json({"deleted": f"DistillationSweep/{name}", "deletionPolicy": policy, "gone": gone})

    if policy == "Keep":
        say(
            f"deleted DistillationSweep {name}; its JobSets run on (deletionPolicy Keep): `distillctl cancel FILE "
            f"--image {shlex.quote(str(expansion.sweep.target.image))}` deletes them (the image the service ran them "
            "with: the resource that recorded it is gone)",
            markup=False,
        )
        answer(False)  # deleted; not waited for (its JobSets run on)
        return
    say(
        f"deleting DistillationSweep {name}: the controller deletes its JobSets first (deletionPolicy Delete)"
        + ("" if wait else "; `cancel --service --wait` waits until it is gone"),
        markup=False,
    )
    if wait:
        if not service.wait_gone(cluster, name, timeout):
            raise DistillctlError(
                f"DistillationSweep {name} is still there after {timeout:g} s",
                "the controller deletes its JobSets first; if no controller runs, its finalizer keeps it: install "
                "the service again, or remove the finalizer",
                exit_code=ExitCode.TIMEOUT,
            )
        say(f"DistillationSweep {name} is gone, and its JobSets with it", markup=False)
    answer(wait)


def _cancel_orphans(expansion, backend, *, yes: bool, output: OutputFormat, wait: bool, timeout: float | None) -> None:
    from orchestrator.cli import console
    from orchestrator.errors import UsageError
    from orchestrator.exit_codes import ExitCode

    if not hasattr(backend, "orphans"):
        raise UsageError(f"--orphans is not for {expansion.sweep.target.kind!r} targets")
    from orchestrator.cli import views

    view = views.service_view(expansion, backend)
    if view is not None:
        # The controller's list: this file may be older than the resource (an edit with kubectl), and its orphans
        # would then be the service's live runs, which the controller creates again at once.
        names = [o.jobset for o in view.status.orphans]
    else:
        names = [o.name for o in backend.orphans(expansion)]
    what, does = _orphan_words(expansion)
    if not names:
        if output is OutputFormat.json:
            console.print_json([])
        else:
            console.out.print(f"no orphaned {what.replace('(s)', 's')}")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"cancel would stop {len(names)} {what}", "pass --yes to confirm without a prompt")
        listed = "\n  ".join(names)
        asked = f"{does.capitalize()[:-1]} {len(names)} orphaned {what} of sweep {expansion.sweep.name}?"
        if not typer.confirm(f"{asked}\n  {listed}\n"):
            raise typer.Exit(int(ExitCode.FAILED))
    _report_deleted(backend, backend.delete_orphans(names), output, wait=wait, timeout=timeout)


def _report_deleted(backend, deleted: list[str], output: OutputFormat, *, wait: bool, timeout: float | None) -> None:
    """Say what was deleted: `deleted NAME` once it is gone, `deleting NAME` while its pods still stop (a cluster
    deletes in the background). With `wait`, first wait until they are gone (exit 3 after `timeout` seconds)."""
    from orchestrator.cli import console
    from orchestrator.exit_codes import ExitCode

    left = backend.still_there(deleted)
    deadline = None if timeout is None else time.monotonic() + timeout
    while wait and left and (deadline is None or time.monotonic() < deadline):
        time.sleep(1.0)
        left = backend.still_there(left)
    if output is OutputFormat.json:
        console.print_json([{"deleted": name, "gone": name not in left} for name in deleted])
    else:
        for name in deleted:
            if name in left:
                console.out.print(f"deleting {name} (its pods are stopping)", markup=False)
            else:
                console.out.print(f"deleted {name}", markup=False)
        if left and not wait:
            console.err.print("`status` shows them until they are gone; `cancel --wait` waits for them", markup=False)
    if wait and left:
        console.print_error(
            f"timed out after {timeout:g} s: {len(left)} run(s) still stopping",
            "wait longer (--timeout), or see their pods with `distillctl status`",
        )
        raise typer.Exit(int(ExitCode.TIMEOUT))
