"""`distillctl results`, `regress` and `golden update`: each parses, reads the sweep's outputs, calls the core,
prints, and exits.

Run statuses come from one function, `backend_statuses`: the controller's, from the sweep's DistillationSweep
when `distillctl serve` runs it, else the sweep's backend (the cluster's JobSets and Kueue workloads, or the local
claim files) combined with what each run wrote. When the cluster cannot be reached the
statuses fall back to the outputs alone, with a warning: results still read from storage. The core's
`gate.check_sweep` takes the status function as a parameter.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.options import (
    DEFAULT_METRICS,
    DEFAULT_RTOL,
    DEFAULT_WINDOW,
    ContextOption,
    GridYesOption,
    ImageOption,
    KubeconfigOption,
    NamespaceOption,
    OutputBaseOption,
    SlicesOption,
    SweepArgument,
    SweepContext,
    TpuOption,
    WindowOption,
    finite_number,
)


class MatchBy(str, Enum):
    run_id = "run_id"
    axis_values = "axis_values"


class ResultsFormat(str, Enum):
    table = "table"
    md = "md"
    csv = "csv"
    json = "json"


# --- reading a sweep's state ------------------------------------------------------------------------------


def backend_statuses(access, output_base: str | None = None):
    """The status of every run of the sweep, from its backend (`access`: a ClusterAccess). The one place statuses
    come from. A local sweep read from a copy (`output_base`, --output-base) has no backend to ask: its claim files
    are in the sweep's own output_base, about other outputs, so the copy's outputs alone decide."""
    from distillspec.problems import Problem
    from orchestrator.backends import backend_for
    from orchestrator.cli import console
    from orchestrator.core import results
    from orchestrator.core.status import derive_all
    from orchestrator.errors import DistillctlError

    def statuses(expansion, outputs: Mapping):
        if output_base is not None and expansion.sweep.target.kind == "local":
            console.warn_once(
                Problem(
                    (),
                    "statuses_from_outputs",
                    f"--output-base {output_base}: a local sweep's runs read from a copy; statuses come from the "
                    "copy's outputs only (not from the runs of target.output_base)",
                    "drop --output-base to see the runs as they are",
                    severity="warning",
                )
            )
            return results.outputs_only(expansion, outputs)
        try:
            backend = backend_for(expansion.sweep.target, access)
            try:
                view = _service_view(expansion, backend)
                if view is not None and view.statuses is not None:  # the controller's view, from its resource
                    from orchestrator.cli.views import with_the_cluster

                    def live():
                        return derive_all(expansion, backend.observe(expansion), outputs, now=time.time())

                    return with_the_cluster(view, live)
                observed = backend.observe(expansion)
            finally:
                backend.close()
        except DistillctlError as e:  # the cluster is down or refuses: results still read from storage
            console.print_problem(
                Problem(
                    (),
                    "statuses_from_outputs",
                    f"{e.message}: statuses come from the runs' outputs only",
                    e.hint,
                    severity="warning",
                )
            )
            return results.outputs_only(expansion, outputs)
        return derive_all(expansion, observed, outputs, now=time.time())

    return statuses


def _service_view(expansion, backend):
    """The sweep's DistillationSweep (`service.client.Served`) where the controller runs it, its line on stderr."""
    from orchestrator.cli import views

    view = views.service_view(expansion, backend)
    if view is not None:
        views.show_service(view)
    return view


# --- results ----------------------------------------------------------------------------------------------


def _warn_no_outputs(expansion, outputs, statuses, output_base: str | None) -> None:
    """Warn when --output-base holds nothing of runs that finished: a wrong folder reads as runs with no metrics."""
    from distillspec.problems import Problem
    from orchestrator.cli import console
    from orchestrator.core import gate

    missing = gate.without_outputs(expansion, outputs, statuses) if output_base is not None else []
    readable = [out for out in outputs.values() if out.readable]
    if output_base is not None and readable and not any(out.exists for out in readable):
        console.warn_once(  # a local sweep read from a copy has no other status to say they finished
            Problem(
                (),
                "no_outputs",
                f"none of the sweep's {len(outputs)} run(s) has anything under --output-base {output_base} "
                f"(e.g. {readable[0].path})",
                "point --output-base at the folder (or bucket prefix) the run folders were copied to",
                severity="warning",
            )
        )
        return
    if missing:
        console.warn_once(
            Problem(
                (),
                "no_outputs",
                f"{len(missing)} finished run(s) have nothing under --output-base {output_base} "
                f"(e.g. {outputs[missing[0]].path}): their metrics show as missing",
                "point --output-base at the folder (or bucket prefix) the run folders were copied to",
                severity="warning",
            )
        )


def _warn_damage(outputs) -> None:
    """Say which runs' files disagree with themselves (`RunOutputs.damage`): their rows are computed from what is
    left, which may be another step's values."""
    from orchestrator.cli import console
    from orchestrator.core.status import damage_warnings

    for problem in damage_warnings(outputs):
        console.print_problem(problem)


def results_command(
    sweep: SweepArgument,
    format: Annotated[
        ResultsFormat,
        typer.Option(
            "--format",
            "--output",
            "-f",
            help="table for people, md for a pull-request comment, csv and json (raw numbers) for machines",
        ),
    ] = ResultsFormat.table,
    window: WindowOption = DEFAULT_WINDOW,
    plot: Annotated[
        Optional[str],  # not Path: a blank value (an unset shell variable) would read as "."
        typer.Option(
            "--plot", metavar="<path>", help="write kl_div_T1.png, hard_loss.png and schedules.png to this folder"
        ),
    ] = None,
    output_base: OutputBaseOption = None,
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    image: ImageOption = None,
    yes: GridYesOption = False,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Compare a sweep's runs: one row each, with status, metrics, cost and Δ vs the baseline.

    Metrics: token-weighted means over each run's last --window log records. ★: lowest kl_div_T1.

    Outputs are read from local paths or gs:// URLs (gs:// needs the `gcs` extra).
    """
    from orchestrator.cli import console, results_format
    from orchestrator.core import gate, results
    from orchestrator.errors import cannot_write

    ctx = SweepContext.build(
        sweep,
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        yes=yes,
        tpu_type=tpu_type,
        slices=slices,
        image=image,
    )
    expansion = ctx.expanded(about=(), served=True)
    if output_base is None:
        ctx.warn_if_nothing_written(expansion)
    if plot is not None:  # before the table is printed: a script must not get a whole table and exit 2
        _refuse_plot_clobbering(Path(plot), plot, sweep, expansion, output_base)
        try:
            Path(plot).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise cannot_write(Path(plot), e, folder=True) from None
    outputs, statuses = gate.observe(expansion, output_base, backend_statuses(ctx.access, output_base))
    _warn_damage(outputs)
    _warn_no_outputs(expansion, outputs, statuses, output_base)
    table = results.build(expansion, outputs, statuses, window=window)
    if format is ResultsFormat.json:
        console.print_json(results_format.to_json(table))
    elif format is ResultsFormat.csv:
        console.out.file.write(results_format.csv_text(table))
    elif format is ResultsFormat.md:
        console.out.file.write(results_format.markdown(table))
    else:
        console.print_wide(results_format.text_table(table))
    console.out.file.flush()
    if plot is not None:
        from orchestrator.cli import plots  # matplotlib takes seconds to import: only when plotting

        logs = {run_id: out.log for run_id, out in outputs.items()}
        specs = {run.run_id: run.spec for run in expansion.runs}
        try:
            written = plots.write_plots(table, logs, specs, Path(plot))
        except OSError as e:
            failed = Path(e.filename) if e.filename else Path(plot)
            raise cannot_write(failed, e, folder=failed == Path(plot)) from None
        for path in written:
            console.err.print(f"wrote {path}", markup=False)


# --- regress ----------------------------------------------------------------------------------------------


def _invalid(e):
    """For regress a sweep or golden file that cannot be used is an invalid spec (4), never exit 2, which
    regress reserves for infrastructure failures."""
    from orchestrator.errors import DistillctlError
    from orchestrator.exit_codes import ExitCode

    if e.exit_code == ExitCode.INVALID_SPEC:
        return e
    return DistillctlError(e.message, e.hint, exit_code=ExitCode.INVALID_SPEC)


def _progress(state, left: float) -> None:
    from orchestrator.cli import console

    done = sum(status.terminal for status in state[1].values())
    awaiting = sum(status.awaits_submission for status in state[1].values())
    note = f", {awaiting} await `distillctl sweep` (nothing else starts them)" if awaiting else ""
    console.err.print(f"waiting: {done}/{len(state[1])} run(s) finished{note}, {left:.0f} s left", markup=False)


def _refuse_clobbering(
    outputs: dict[str, Path | None], inputs: dict[str, Path], expansion=None, output_base: str | None = None
) -> None:
    """UsageError when a file to write is one this command reads (the sweep, the golden file, the specs the sweep
    names, anything under the runs' output base) or another output: each would be replaced by a report (a run's
    summary.json replaced by a JUnit report was a damaged run from then on)."""
    from orchestrator.errors import UsageError

    seen: dict[Path, str] = {}
    for what, path in {**inputs, **_spec_files(expansion)}.items():
        seen.setdefault(path.resolve(), what)
    base = output_base or (expansion.sweep.target.output_base if expansion is not None else None)
    # The sweep's run folders (a report beside them under the output base harms nothing).
    runs = (
        [(Path(base) / run.run_id).resolve() for run in expansion.runs]  # a symlinked run folder: where it points
        if base and "://" not in base and expansion is not None
        else []
    )
    for flag, path in outputs.items():
        if path is None:
            continue
        other = seen.get(path.resolve())
        if other is not None:
            raise UsageError(f"{flag} {path} is {other}: writing it would replace it", f"give {flag} another path")
        inside = next((folder for folder in runs if path.resolve().is_relative_to(folder)), None)
        if inside is not None:
            raise UsageError(
                f"{flag} {path} is inside {inside}, a run folder whose outputs this command reads",
                f"give {flag} a path outside the run folders",
            )
        seen[path.resolve()] = f"also where {flag} writes"
        marker = REPORT_MARKERS.get(flag)
        # Last, with the sweep known: a file it reads is named as what it is (the checks above).
        if marker is not None and expansion is not None and path.is_file() and not _replaceable(path, marker):
            # `--summary README.md` (a typo) replaced the file: `golden update -o` refuses the same
            raise UsageError(
                f"{flag} {path} exists and is not a report regress wrote: writing it would replace it",
                f"give {flag} a new path (or delete that file first)",
            )


def _refuse_plot_clobbering(folder: Path, given: str, sweep, expansion, output_base: str | None) -> None:
    """UsageError for a `--plot` folder that is blank or an input, or that holds, under a plot's name, a file that
    is not a plot distillctl wrote or that is (through a link) one of the inputs: a user's kl_div_T1.png, and a
    link to the sweep file, were replaced by a PNG."""
    from orchestrator.core.results import PLOT_FILES, PLOT_SOFTWARE, SCHEDULES_FILE
    from orchestrator.errors import UsageError

    if not given.strip():  # `--plot "$OUT"` with OUT unset wrote into the current directory
        raise UsageError("--plot is blank", "give the folder to write the plots to")
    if folder.is_symlink() and not folder.exists():  # mkdir said only "File exists"
        raise UsageError(
            f"--plot {given}: a link to {os.readlink(folder)}, which does not exist",
            "create the folder it points to, or give --plot another folder",
        )
    files = {f"--plot's {name}": folder / name for name in (*PLOT_FILES.values(), SCHEDULES_FILE)}
    _refuse_clobbering({"--plot": folder, **files}, {"the sweep file": Path(sweep)}, expansion, output_base)
    for path in files.values():
        if path.exists() and not path.is_file():  # found only after the table was printed, with exit 2
            raise UsageError(
                f"--plot {folder}: {path} is {'a folder' if path.is_dir() else 'not a file'}: a plot cannot be "
                "written there",
                "give --plot another folder (or move it away)",
            )
        if path.is_symlink() or (path.exists() and not _our_plot(path, PLOT_SOFTWARE)):
            raise UsageError(
                f"--plot {folder}: {path} exists and is not a plot distillctl wrote"
                + (" (it is a link)" if path.is_symlink() else "")
                + ": writing it would replace it",
                "give --plot another folder (or move that file away)",
            )


def _our_plot(path: Path, software: str) -> bool:
    """A PNG that `results --plot` wrote (its Software text; Matplotlib's before it said so), empty, or unreadable
    (the write then says what is wrong)."""

    def ours(head: bytes) -> bool:
        if not head:
            return True
        if not head.startswith(b"\x89PNG"):
            return False
        if software.encode() in head:
            return True
        # Before the Software text, distillctl's plots said only Matplotlib: one of that size (13 × 6.8 in or
        # 14 × 6.2 in at 150 dpi) is taken for one; a user's own Matplotlib figure of another size is not replaced.
        size = (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
        return b"Software\x00Matplotlib" in head and size in ((1950, 1020), (2100, 930))

    return _head_says(path, ours)


# How an earlier report of each kind begins (`regress.junit_xml`'s suite name, `regress.markdown`'s title line): a
# file that does not is the user's, not ours to replace — pytest's JUnit file, notes that mention the command.
REPORT_MARKERS = {
    "--junit": re.compile(r'\A(<\?xml[^>]*\?>\s*)?<testsuites[^>]*>\s*<testsuite name="distillctl\.'),
    "--summary": re.compile(r"\A### \S+ distillctl regress `"),
}


def _replaceable(path: Path, marker: re.Pattern) -> bool:
    """Whether an existing file may be written over: empty, an earlier report (it begins as `marker` says), or
    unreadable (the write then says what is wrong)."""
    return _head_says(
        path,
        lambda head: not head.strip() or marker.match(head.decode("utf-8", errors="replace").lstrip()) is not None,
    )


def _head_says(path: Path, ours) -> bool:
    """`ours(the file's first 4 KiB)`: whether an output file in the way is one of ours to write over; True when it
    cannot be read (the write then says what is wrong)."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return True
    return ours(head)


def _spec_files(expansion) -> dict[str, Path]:
    """The spec files a sweep reads, by what they are (`the base spec`, `prerequisite NAME's spec`)."""
    source = getattr(expansion, "source", None)
    if source is None:
        return {}
    named = [("the sweep's base spec", source.base)]
    named += [(f"the spec of prerequisite {name}", spec) for name, spec in source.prerequisites.items()]
    return {what: Path(spec.file) for what, spec in named if spec is not None and spec.file and spec.file != "-"}


def _write(path: Path, text: str) -> None:
    from orchestrator.errors import cannot_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise cannot_write(path, e) from None


def regress(
    sweep: SweepArgument,
    golden: Annotated[Path, typer.Option("--golden", help="the golden file (distillctl golden update writes one)")],
    junit: Annotated[Optional[Path], typer.Option("--junit", help="write a JUnit XML report here")] = None,
    summary: Annotated[Optional[Path], typer.Option("--summary", help="also write the markdown summary here")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until every run has finished (or --timeout)")] = False,
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", help="with --wait: give up after this many seconds (exit 3; default 3600)"),
    ] = None,
    poll: Annotated[
        Optional[float],
        typer.Option("--poll", help="with --wait: seconds between looks (default 30, at least 0.1)"),
    ] = None,
    output_base: OutputBaseOption = None,
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    image: ImageOption = None,
    yes: GridYesOption = False,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Gate CI on a sweep: check its runs against a golden file.

    Prints a markdown summary (and writes --junit and --summary files).

    Exit 0: every check passed; 1: a metric regressed; 2: infrastructure failure (a run failed or never ran).

    Exit 3: timed out waiting (--wait); 4: unusable input (an invalid sweep or golden file, a bad path).
    """
    from orchestrator.cli import console
    from orchestrator.core import gate
    from orchestrator.core import regress as regression
    from orchestrator.errors import DistillctlError, UsageError
    from orchestrator.exit_codes import ExitCode
    from orchestrator.outputs import check_output_base

    # Unusable input exits 4, as an invalid golden file does: 2 says the runs failed, and CI must tell them apart.
    try:
        # Checked here, not by Typer (exit 2, which regress says of failed runs): unusable input is 4.
        given = [flag for flag, value in (("--timeout", timeout), ("--poll", poll)) if value is not None]
        if given and not wait:  # they were ignored: a gate meant to wait read the runs once
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{' and '.join(given)} {verb} to --wait", "add --wait to wait for the runs, or drop it")
        for flag, value, least in (("--timeout", timeout, 0.0), ("--poll", poll, 0.1)):
            if value is not None and not (math.isfinite(value) and value >= least):  # nan waited for ever, inf too
                raise UsageError(f"{flag} {value} is not a number of seconds ≥ {least:g}", f"give {flag} seconds")
        if str(sweep) == "-" and str(golden) == "-":  # the second read got the first one's bytes
            raise UsageError(
                "the sweep and the golden file are both standard input (-)", "give one of them as a file path"
            )
        _refuse_clobbering(
            {"--junit": junit, "--summary": summary}, {"the sweep file": sweep, "the golden file": golden}
        )
        for flag, path, example in (("--junit", junit, "junit.xml"), ("--summary", summary, "summary.md")):
            if path is not None and path.is_dir():  # said now, not after --wait waited for the sweep
                raise UsageError(f"{flag} {path} is a folder", f"give {flag} a file path, e.g. {path / example}")
    except DistillctlError as e:
        raise _invalid(e) from None
    ctx = SweepContext.build(
        sweep,
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        yes=yes,
        tpu_type=tpu_type,
        slices=slices,
        image=image,
    )
    try:
        expansion = ctx.expanded(about=(), served=True)
        expected = gate.load_golden(golden, expansion)
        if output_base is not None:  # a typo is the command's input, not failed runs (exit 2 says those)
            check_output_base(output_base)
    except DistillctlError as e:
        raise _invalid(e) from None
    try:
        _refuse_clobbering(
            {"--junit": junit, "--summary": summary},
            {"the sweep file": sweep, "the golden file": golden},
            expansion,
            output_base,
        )
    except DistillctlError as e:
        raise _invalid(e) from None
    if output_base is None:
        ctx.warn_if_nothing_written(expansion)
    report = gate.check_sweep(
        expansion,
        expected,
        statuses=backend_statuses(ctx.access, output_base),
        output_base=output_base,
        wait=wait,
        timeout=3600.0 if timeout is None else timeout,
        poll=30.0 if poll is None else max(poll, 0.1),
        on_wait=_progress,
    )
    text = regression.markdown(report)
    from orchestrator.cli import boundary

    with boundary.printing_a_verdict():  # the report files and the verdict come whoever reads stdout
        console.out.file.write(text)  # first: the verdict reaches the log whatever happens to the report files
        console.out.file.flush()
    code = report.exit_code
    for path, content in ((junit, lambda: regression.junit_xml(report)), (summary, lambda: text)):
        if path is None:
            continue
        try:
            _write(path, content())
        except DistillctlError as e:  # a regression stays exit 1: CI must not retry it as infrastructure
            console.print_error(e.message, e.hint)
            # A passing gate whose report path is unusable: the command's input (4), as a --junit folder is; 2
            # says the runs failed.
            code = code if code != ExitCode.OK else ExitCode.INVALID_SPEC
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


# --- golden update ----------------------------------------------------------------------------------------

golden_app = typer.Typer(
    help="Golden files: the metric values `distillctl regress` checks a sweep against.", no_args_is_help=True
)


def _relative_tolerance(value: float) -> float:
    """--rtol is a fraction: 10 (meant as 10 %) wrote checks that pass a value eleven times the golden one."""
    value = finite_number("a tolerance: a finite number >= 0, e.g. 0.1 (10 %)", zero=True)(value)
    if value >= 1:
        raise typer.BadParameter(f"{value:g} is {value * 100:g} %: --rtol is a fraction, e.g. 0.1 for 10 %")
    return value


@golden_app.command("update")
def golden_update(
    sweep: SweepArgument,
    out: Annotated[Path, typer.Option("-o", "--out", help="the golden file to write")],
    window: Annotated[
        Optional[int],
        typer.Option(
            "--window",
            min=0,
            help="aggregate each metric over the last N log records (token-weighted, from the (sum, count) pairs); "
            f"0: every record; default: the updated file's, else {DEFAULT_WINDOW}",
        ),
    ] = None,
    rtol: Annotated[
        float,
        typer.Option(
            "--rtol",
            callback=_relative_tolerance,
            help="relative tolerance of approx checks (runs without repeated seeds)",
        ),
    ] = DEFAULT_RTOL,
    metric: Annotated[
        Optional[list[str]],
        typer.Option(
            "--metric",
            help="a metric to check (repeat); default: "
            + ", ".join(DEFAULT_METRICS)
            + " (their eval/ twins for runs with a held-out eval set)",
        ),
    ] = None,
    match: Annotated[
        Optional[MatchBy],
        typer.Option(
            "--match",
            help="how regress finds each golden point's run: run_id "
            "(strict: any spec or image change needs a new golden file) or axis_values (role and axis "
            "values: for CI images built per commit); default: the updated file's, else run_id",
        ),
    ] = None,
    output_base: OutputBaseOption = None,
    tpu_type: TpuOption = None,
    slices: SlicesOption = None,
    image: ImageOption = None,
    yes: GridYesOption = False,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Write a golden file from a finished sweep.

    Runs repeated over seeds get a band: mean ± max(4σ, rtol·|mean|) over the seeds.

    Other runs get an approx check with --rtol. Refuses (exit 2) while any run has not succeeded.
    """
    from distillspec import metrics
    from orchestrator.cli import console
    from orchestrator.core import gate, results
    from orchestrator.core import golden as golden_file
    from orchestrator.core.run_status import Phase
    from orchestrator.errors import UsageError

    ctx = SweepContext.build(
        sweep,
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        yes=yes,
        tpu_type=tpu_type,
        slices=slices,
        image=image,
    )
    resolved = []  # kl_div_T1: (distill/kl_div_T1, True): a bare name, checked on its eval twin where there is one
    for name in metric or ():
        if (full := metrics.resolve(name)) is None:
            raise UsageError(f"--metric {name!r} is not a metric the trainer logs", metrics.did_you_mean(name))
        resolved.append((full, "/" not in name))
    wanted = [full for full, _ in resolved] or list(golden_file.DEFAULT_METRICS)
    twinned = [full for full, bare in resolved if bare] if resolved else wanted
    expansion = ctx.expanded(about=(), served=True)
    if output_base is None:
        ctx.warn_if_nothing_written(expansion)
    _refuse_clobbering({"-o": out}, {"the sweep file": sweep}, expansion, output_base)
    if out.is_dir():  # said now, as regress says it of --junit (it was "cannot write out: Is a directory")
        raise UsageError(f"-o {out} is a folder", f"give -o a file path, e.g. {out / 'golden.yaml'}")
    if out.is_file() and (why := golden_file.not_replaceable(out, expansion.sweep.name)):
        raise UsageError(
            f"{out} exists and {why}: writing it would replace it",
            "give -o a new path, or the golden file to update",
        )
    # The file being updated keeps how it is matched and aggregated unless told otherwise: a CI file written
    # `--match axis_values` turned run_id (its next run failed "golden point not in sweep"), silently.
    kept = []
    if out.is_file():
        earlier, _ = golden_file.read_golden(out)
        if earlier is not None and match is None and earlier.match != MatchBy.run_id.value:
            match, kept = MatchBy(earlier.match), [*kept, f"match {earlier.match}"]
        if earlier is not None and window is None and earlier.window != DEFAULT_WINDOW:
            window, kept = earlier.window, [*kept, f"window {earlier.window}"]
    match = match or MatchBy.run_id
    window = DEFAULT_WINDOW if window is None else window
    outputs, statuses = gate.observe(expansion, output_base, backend_statuses(ctx.access, output_base))
    _warn_damage(outputs)
    _warn_no_outputs(expansion, outputs, statuses, output_base)
    # A point the sweep's early-stopping rule stopped is what the sweep asked for: left out, not a refusal.
    stopped = [run for run in expansion.runs if statuses[run.run_id].phase == Phase.STOPPED]
    unfinished = [run for run in expansion.runs if statuses[run.run_id].phase not in (Phase.SUCCEEDED, Phase.STOPPED)]
    if unfinished:
        listed = "; ".join(f"{run.label}: {statuses[run.run_id].shown}" for run in unfinished[:5])
        more = f" and {len(unfinished) - 5} more" if len(unfinished) > 5 else ""
        raise UsageError(
            f"{len(unfinished)} of {len(expansion.runs)} run(s) have not succeeded ({listed}{more})",
            f"golden values come from a finished sweep: `distillctl results {sweep}` shows where it stands",
        )
    damaged = [run for run in expansion.runs if outputs[run.run_id].damage]
    if damaged:  # its values would be another step's, written into the file every later run is held to
        listed = "; ".join(
            f"{run.label or run.run_id}: {', '.join(outputs[run.run_id].damage)}" for run in damaged[:5]
        ) + (f"; and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        raise UsageError(
            f"{len(damaged)} run(s) have damaged outputs ({listed})",
            "golden values come from intact outputs: copy the run folders again from where they were written, or "
            "delete the damaged ones and `distillctl sweep` to run those points again",
        )
    # A run that evaluated a held-out set is checked on the eval twins (eval/kl_div_T1, ...) of the default metrics
    # and of bare --metric names (kl_div_T1): naming a default must not move its check to the training window.
    chosen = {}
    for run in expansion.runs:
        twins, source = results.preferred_names(outputs[run.run_id], twinned)
        by_name = dict(zip(twinned, twins))
        chosen[run.run_id] = ([by_name.get(name, name) for name in wanted], source if twinned else "given")
    names = list(dict.fromkeys(name for run_names, _ in chosen.values() for name in run_names))
    groups = gate.seed_groups(expansion)
    finished = [
        golden_file.Finished(
            run.run_id,
            run.label,
            groups[run.run_id],
            results.run_metrics(outputs[run.run_id], window, chosen[run.run_id][0]),
            run.role,
            run.prerequisite,
            dict(run.axis_values),
        )
        for run in expansion.runs
        if run not in stopped
    ]
    not_finite = [
        (run, name, value)
        for run in finished
        for name, value in run.values.items()
        if name in names and value is not None and not math.isfinite(value)
    ]
    if not_finite:  # left out of the file without a word, and regress then passed without checking them
        run, name, value = not_finite[0]
        raise UsageError(
            f"{len(not_finite)} value(s) of succeeded runs are not finite ({run.label or run.run_id}: {name} = "
            f"{value})",
            "a golden value comes from a finite number: the run's last log records hold a NaN or infinite sum; "
            "run that point again, or leave the metric out with --metric",
        )
    derived = golden_file.derive(expansion.sweep.name, window, finished, metrics=names, rtol=rtol, match=match.value)
    header = (
        f"Golden values of sweep {expansion.sweep.name!r} for `distillctl regress {sweep} --golden {out}`.\n"
        f"Written by `distillctl golden update {sweep} -o {out}` from finished runs; rerun it after an intended "
        "change.\nChecks: approx (|x - value| <= atol + rtol·|value|), band (low <= x <= high), deterministic "
        "(exact).\nValues: eval/* metrics are each run's last evaluation on its held-out set; the others are "
        "token-weighted means over the last `window` log records of each run (0: all)."
    )
    checks = sum(len(p.checks) for p in derived.points)
    if not checks:  # a gate that checks nothing passes whatever the runs do
        raise UsageError(
            f"no run has a finite value of {', '.join(names)}: the golden file would check nothing",
            f"`distillctl results {sweep}` shows what the runs logged; choose metrics with --metric",
        )
    _write(out, golden_file.dump(derived, header))
    on_eval = sum(source not in (results.TRAIN, "given") for _, source in chosen.values())
    which = f"; eval metrics for {on_eval} run(s) with a held-out set" if on_eval else ""
    which = which or ("; training metrics" if twinned else "")
    console.err.print(f"wrote {out}: {checks} check(s) on {len(derived.points)} run(s){which}", markup=False)
    if kept:
        console.err.print(f"kept the file's {' and '.join(kept)} (--match/--window change them)", markup=False)
    if stopped:
        console.err.print(
            f"left out {len(stopped)} point(s) stopped by the sweep's early-stopping rule: "
            + ", ".join(run.label for run in stopped),
            markup=False,
        )
