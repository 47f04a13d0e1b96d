"""Checking a sweep against its golden file (`regress`), and what golden files and checks need of a sweep: its
runs' outputs (read from storage) and statuses (from a status function, so the caller picks the source)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

from distillspec.contract import PendingReason
from orchestrator.core import golden as golden_file
from orchestrator.core import identity, results
from orchestrator.core import regress as regression
from orchestrator.core.expansion import Expansion
from orchestrator.core.reconcile import ActionKind, reconcile
from orchestrator.core.results import StatusFn
from orchestrator.core.run_status import Phase, RunStatus
from orchestrator.core.waiting import poll_until
from orchestrator.errors import InvalidSpecError
from orchestrator.outputs import RunOutputs, check_output_base, read_many_run_outputs


def output_paths(expansion: Expansion, output_base: str | None) -> dict[str, str]:
    """run id -> where its outputs are: `<output base>/<run id>`."""
    if output_base is None:
        return {run.run_id: run.output_path for run in expansion.runs}
    return {run.run_id: identity.output_path(output_base, run.run_id) for run in expansion.runs}


def read_outputs(expansion: Expansion, output_base: str | None) -> dict[str, RunOutputs]:
    if output_base is not None:
        check_output_base(output_base)
    return read_many_run_outputs(output_paths(expansion, output_base))


State = tuple[dict[str, RunOutputs], Mapping[str, RunStatus]]


def observe(expansion: Expansion, output_base: str | None, statuses: StatusFn) -> State:
    """What every run wrote, and its status."""
    outputs = read_outputs(expansion, output_base)
    return outputs, statuses(expansion, outputs)


def without_outputs(expansion: Expansion, outputs: Mapping[str, RunOutputs], statuses) -> list[str]:
    """The run ids that finished (their backend says so) but have nothing where their outputs are read: with an
    --output-base, a folder the runs were not copied to."""
    finished = (Phase.SUCCEEDED, Phase.FAILED, Phase.DIVERGED)
    return [
        run.run_id
        for run in expansion.runs
        if statuses[run.run_id].phase in finished
        and (out := outputs.get(run.run_id)) is not None
        and out.readable
        and not out.exists
    ]


def load_golden(path: Path, expansion: Expansion) -> golden_file.GoldenFile:
    golden, problems = golden_file.read_golden(path)
    if golden is not None:
        golden, problems = golden_file.match_sweep(golden, expansion.sweep.name, point_keys(expansion), file=str(path))
        problems = golden_file.located_in(path, problems)
    if problems:
        raise InvalidSpecError(f"{path} is not a usable golden file for {expansion.sweep.name!r}", problems)
    assert golden is not None
    return golden


def observed(
    expansion: Expansion,
    outputs: Mapping[str, RunOutputs],
    statuses: Mapping[str, RunStatus],
    *,
    window: int,
    metrics: list[str],
) -> dict[str, regression.Observed]:
    out = {}
    for run in expansion.runs:
        status = statuses.get(run.run_id) or RunStatus(Phase.PENDING, PendingReason.NOT_OBSERVED)
        found = outputs.get(run.run_id) or RunOutputs(run.output_path)
        values = results.run_metrics(found, window, metrics)
        out[run.run_id] = regression.Observed(
            run.run_id, run.label, status.phase, status.reason, values, found.damage, status.message
        )
    return out


AWAITING_GRACE_SECONDS = 120.0  # how long `regress --wait` gives runs that await submission before it stops


def check_sweep(
    expansion: Expansion,
    expected: golden_file.GoldenFile,
    *,
    statuses: StatusFn,
    output_base: str | None = None,
    wait: bool = False,
    timeout: float = 3600.0,
    poll: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[State, float], None] | None = None,
) -> regression.RegressReport:
    """Read the sweep's outputs and statuses (`statuses`: e.g. the CLI's `backend_statuses`), waiting with `wait` until
    every run is terminal or `timeout` seconds pass, and check them against `expected`."""

    checked = {point.run_id for point in expected.points if point.checks}
    awaiting_since: list[float] = []  # when every open checked run came to await submission, while they do

    def look() -> State:
        return observe(expansion, output_base, statuses)

    def finished(state: State) -> bool:
        # Only the runs the golden file checks are waited for. A point whose prerequisite failed will never run,
        # nor will one nothing submits (NotCreated, Preempted, SupervisorGone): waiting only ended in a timeout.
        statuses = state[1]
        if any(run.run_id not in statuses for run in expansion.runs):
            return False
        blocked = {a.run.run_id for a in reconcile(expansion.runs, statuses) if a.kind == ActionKind.BLOCKED}
        open_runs = [
            statuses[run.run_id]
            for run in expansion.runs
            if run.run_id in checked and not (statuses[run.run_id].terminal or run.run_id in blocked)
        ]
        if not all(status.awaits_submission for status in open_runs):
            awaiting_since.clear()
            return False
        if open_runs and not awaiting_since:
            awaiting_since.append(clock())
        # A grace: the sweep service creates a run seconds after its DistillationSweep is applied.
        return not open_runs or clock() - awaiting_since[0] >= AWAITING_GRACE_SECONDS

    if wait:
        (outputs, found), timed_out = poll_until(
            look, finished, timeout=timeout, every=poll, clock=clock, sleep=sleep, on_wait=on_wait
        )
    else:
        (outputs, found), timed_out = look(), False
    metrics = sorted({name for point in expected.points for name in point.checks})
    seen = observed(expansion, outputs, found, window=expected.window, metrics=metrics)
    return regression.evaluate(expected, seen, timed_out=timed_out)


def point_keys(expansion: Expansion) -> dict[str, str]:
    """run id -> what identifies the run besides its id (golden files with `match: axis_values`)."""
    return {run.run_id: golden_file.point_key(run.role, run.prerequisite, run.axis_values) for run in expansion.runs}


def seed_groups(expansion: Expansion) -> dict[str, str]:
    """run id -> its seed group: runs that differ only by `seed` share one."""
    return {
        run.run_id: golden_file.point_key(
            run.role, run.prerequisite, {k: v for k, v in run.axis_values.items() if k != "seed"}
        )
        for run in expansion.runs
    }
