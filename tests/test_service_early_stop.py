"""The service acting on early-stopping rules, over scripted metric curves (no cluster): the pure per-sweep plan
stops exactly the points the rules name, at the step they name, keeps the verdict so that neither its retry
budget nor a lost status restarts them, and `replay` over the same metrics agrees."""

from __future__ import annotations

import math

import pytest

from distillspec.contract import StoppedReason
from orchestrator.core import expansion as expansion_module
from orchestrator.core.early_stop import replay
from orchestrator.core.reconcile import ActionKind, reconcile
from orchestrator.core.run_status import Condition, Observation, Phase, RunStatus, derive
from orchestrator.outputs import LogLine, RunOutputs, read_run_outputs, write_stopped
from orchestrator.service import plan
from orchestrator.service.resource import ServiceSpec, SweepStatus

KL = "distill/kl_div_T1"
STEPS = list(range(10, 110, 10))
NOW = 1e9

GOOD = [1.0, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15]
PLATEAU = [1.0, 0.8, 0.6, 0.6, 0.61, 0.6, 0.6, 0.6, 0.6, 0.6]
DIVERGES = [1.0, 0.8, 0.5, 0.5, 6.0, math.nan, math.nan, math.nan, math.nan, math.nan]
WORSE = [1.2, 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6]
BASELINE = [1.0, 0.7, 0.5, 0.45, 0.4, 0.38, 0.36, 0.34, 0.32, 0.3]

SWEEP = """\
name: early
spec:
  student: {model: tiny-2l}
  teacher: {model: tiny-4l, load_parameters_path: gs://bucket/teacher/checkpoints}
  batch: {per_device_batch_size: 1, max_target_length: 16}
  steps: 100
axes:
  loss.temperature: [1.0, 2.0, 3.0, 4.0]
baseline:
  - {loss.alpha: 0.0, loss.beta: 0.0}
early_stopping:
  no_improvement: {patience: 3, min_delta: 0.01}
  worse_than_baseline: {at_step: 30, by: 0.1}
  divergence: {factor: 10}
target:
  kind: kubernetes
  tpu_type: v5p-8
  image: example.invalid/trainer:test
  output_base: gs://bucket/runs
"""


@pytest.fixture(scope="module")
def expanded(tmp_path_factory) -> expansion_module.Expansion:
    from distillspec.sweep import load_sweep

    path = tmp_path_factory.mktemp("early") / "early.yaml"
    path.write_text(SWEEP)
    source = load_sweep(path)
    assert source.ok, source.problems
    result = expansion_module.expand(source)
    assert result.ok, result.problems
    return result


def _curves(expanded) -> dict[str, list[float]]:
    points = [p for p in expanded.points if not p.is_baseline]
    (baseline,) = [p for p in expanded.points if p.is_baseline]
    assert len(points) == 4
    return {
        points[0].run_id: GOOD,
        points[1].run_id: PLATEAU,
        points[2].run_id: DIVERGES,
        points[3].run_id: WORSE,
        baseline.run_id: BASELINE,
    }


def _log(values: list[float], lines: int) -> tuple[LogLine, ...]:
    return tuple(
        LogLine(step, NOW - 10.0 * (lines - i), 160 * step, 1.0, {KL: (value * 4.0, 4.0)})
        for i, (step, value) in enumerate(zip(STEPS[:lines], values[:lines], strict=True))
    )


def test_controller_stops_exactly_the_named_points_at_their_step_and_replay_agrees(expanded):
    """The sweep runs in lockstep, one log line per pass; a stopped point's trainer saves on SIGTERM (summary
    `preempted`), its JobSet goes, and its curve ends there."""
    curves = _curves(expanded)
    lines = dict.fromkeys(curves, 0)  # how far each run has logged
    stopped_at: dict[str, tuple[str, int, int]] = {}  # run id -> (rule, the stop's step, the step when stopped)
    stopped_files: dict[str, dict] = {}
    deleting: set[str] = set()
    gone: set[str] = set()
    previous: SweepStatus | None = None
    service = ServiceSpec(retryFailed=3)  # a retry budget never restarts a stopped point

    def outputs(final: bool = False) -> dict[str, RunOutputs]:
        out = {}
        for run in expanded.runs:
            rid = run.run_id
            summary = {"status": "preempted", "step": STEPS[lines[rid] - 1]} if rid in stopped_files else None
            if final and rid not in stopped_files:
                summary = {"status": "succeeded", "step": 100, "total_steps": 100}
            out[rid] = RunOutputs(
                run.output_path, log=_log(curves[rid], lines[rid]), summary=summary, stopped=stopped_files.get(rid)
            )
        return out

    def observed(final: bool = False) -> dict[str, Observation]:
        seen = {}
        for rid in curves:
            if rid in gone:
                continue
            if rid in deleting:
                seen[rid] = Observation(exists=True, deleting=True)
            elif final:
                seen[rid] = Observation(exists=True, conditions=(Condition("Completed", "True"),))
            else:
                seen[rid] = Observation(exists=True, active=True, created_at=NOW - 100)
        return seen

    for tick in range(1, len(STEPS) + 1):
        gone |= deleting  # last pass's deletions have finished
        deleting = set()
        for rid in curves:
            if rid not in stopped_files:
                lines[rid] = tick
        decided = plan.plan(expanded, observed(), outputs(), service=service, previous=previous, generation=1, now=NOW)
        assert not decided.create and not decided.delete  # nothing re-created, nothing retried
        for run, record in decided.stop:
            assert run.run_id not in stopped_at, "stopped twice"
            stopped_at[run.run_id] = (record.rule, record.step, STEPS[tick - 1])
            stopped_files[run.run_id] = record.model_dump(mode="json")  # what the controller writes first
            deleting.add(run.run_id)
        previous = decided.status

    gone |= deleting
    final = plan.plan(
        expanded, observed(final=True), outputs(final=True), service=service, previous=previous, generation=1, now=NOW
    )
    assert not final.create and not final.delete and not final.stop

    good, plateau, diverges, worse = (p.run_id for p in expanded.points if not p.is_baseline)
    # Each stopped on the pass that first saw the step its rule names.
    assert stopped_at == {
        plateau: ("no_improvement", 60, 60),
        diverges: ("divergence", 50, 50),
        worse: ("worse_than_baseline", 30, 30),
    }
    rows = {r.runId: r for r in final.status.runs}
    assert rows[good].phase == "Succeeded"
    assert {rid: (rows[rid].phase, rows[rid].reason) for rid in stopped_at} == {
        plateau: ("Stopped", StoppedReason.NO_IMPROVEMENT),
        diverges: ("Stopped", StoppedReason.DIVERGENCE),
        worse: ("Stopped", StoppedReason.WORSE_THAN_BASELINE),
    }
    assert rows[worse].stopped.step == 30 and rows[worse].step == 30  # its curve ended where it was stopped
    assert final.status.stopped == 3 and final.status.failed == 0
    conditions = {c.type: (c.status, c.reason, c.message) for c in final.status.conditions}
    # A point the divergence rule stopped blew up: the sweep did not succeed (it read SucceededOrStopped).
    assert conditions["Failed"] == (
        "True",
        "RunsFailed",
        "1 of 5 run(s) did not succeed (1 stopped by the divergence rule)",
    )
    assert final.status.phase == "Failed"  # the column `kubectl get` shows (it read "Valid" and zeros)
    assert final.status.best.runId == good  # never a diverged point, whatever its last kl_div_T1
    blown = {p.run_id: RunStatus(Phase.STOPPED, StoppedReason.DIVERGENCE, kl_div_t1=0.01) for p in expanded.points}
    assert plan._best(expanded.points, blown) is None  # every point diverged: no best (one read kl_div_T1 20)

    # `distillctl early-stop replay` over the metrics the runs left agrees with what the controller did.
    replayed = {r.run.run_id: (r.stop.rule, r.stop.step) for r in replay(expanded, outputs(final=True)) if r.stop}
    assert replayed == {rid: (rule, step) for rid, (rule, step, _) in stopped_at.items()}

    # Had that point succeeded instead, the stopped points are choices the sweep asked for: it succeeded.
    without = {rid: status for rid, status in outputs(final=True).items() if rid != diverges}
    without[diverges] = RunOutputs("x", summary={"status": "succeeded", "step": 100, "total_steps": 100})
    del stopped_files[diverges]
    unchanged = plan.plan(
        expanded, observed(final=True), without, service=service, previous=None, generation=1, now=NOW
    )
    assert {c.type: (c.status, c.reason) for c in unchanged.status.conditions}["Succeeded"] == (
        "True",
        "SucceededOrStopped",
    )


def test_a_stop_is_kept_when_the_status_is_lost_and_never_retried(expanded, tmp_path):
    """The controller's `stopped.json` alone keeps a point stopped: the CLI's derive reads it, `--retry-failed`
    skips it, and a plan with no previous status deletes a JobSet that somehow still runs and creates nothing."""
    point = next(p for p in expanded.points if not p.is_baseline)
    write_stopped(str(tmp_path), {"rule": "median", "step": 40, "message": "above the median"})
    read = read_run_outputs(str(tmp_path))
    status = derive(Observation(exists=False), read, now=NOW, stall_after=900)
    assert (status.phase, status.reason, status.shown) == (
        Phase.STOPPED,
        StoppedReason.MEDIAN,
        "Stopped (MedianStopping)",
    )
    assert "step 40" in status.message
    (action,) = reconcile([point], {point.run_id: status}, retry_failed=True)
    assert action.kind == ActionKind.SKIP

    outs = {
        r.run_id: RunOutputs(r.output_path, stopped=read.stopped if r.run_id == point.run_id else None)
        for r in expanded.runs
    }
    running = {point.run_id: Observation(exists=True, active=True, created_at=NOW - 100)}
    decided = plan.plan(
        expanded, running, outs, service=ServiceSpec(retryFailed=5), previous=None, generation=1, now=NOW
    )
    assert [(r.run_id, rec.rule) for r, rec in decided.stop] == [(point.run_id, "median")]
    assert point.run_id not in {r.run_id for r in decided.create}
    again = plan.plan(
        expanded, {}, outs, service=ServiceSpec(retryFailed=5), previous=decided.status, generation=1, now=NOW
    )
    assert point.run_id not in {r.run_id for r in again.create} and not again.stop
