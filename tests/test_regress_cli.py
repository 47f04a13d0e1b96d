"""`distillctl regress` and `golden update` as CI runs them: exit codes 0-4, JUnit content, the markdown summary, and
the golden-file round trip."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from results_support import expanded, finish_all, write_outputs, write_sweep
from sweep_support import SWEEPS
from typer.testing import CliRunner

from orchestrator.backends import ClusterAccess
from orchestrator.cli import app
from orchestrator.cli import results as results_cli
from orchestrator.core import gate
from orchestrator.core import golden as golden_file
from orchestrator.core.run_status import RunStatus
from orchestrator.exit_codes import ExitCode

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def sweep(tmp_path):
    """A finished quickstart-shaped sweep and its golden file, written by `golden update`."""
    path = write_sweep(tmp_path)
    result = expanded(path)
    finish_all(result)
    golden = tmp_path / "golden.yaml"
    out = invoke("golden", "update", path, "-o", golden)
    assert out.exit_code == ExitCode.OK, out.output
    return path, golden, result


def junit(path):
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    return suite, suite.findall("testcase")


def doctor(golden, run_id: str, metric: str, factor: float) -> None:
    data = yaml.safe_load(golden.read_text())
    point = next(p for p in data["points"] if p["run_id"] == run_id)
    point["checks"][metric]["value"] *= factor
    golden.write_text(yaml.safe_dump(data, sort_keys=False))


def test_golden_update_writes_approx_checks_for_every_run(sweep):
    _, golden, result = sweep
    text = golden.read_text()
    assert text.startswith("# Golden values of sweep 'quickstart'")
    data, problems = golden_file.read_golden(golden)
    assert problems == [] and data.sweep == "quickstart" and data.window == 5
    assert [p.run_id for p in data.points] == [r.run_id for r in result.runs]
    teacher, point = data.points[0], data.points[1]
    assert list(teacher.checks) == ["distill/hard_loss"]  # a pre-trained teacher logs no KL or agreement
    assert set(point.checks) == set(golden_file.DEFAULT_METRICS)
    check = point.checks["distill/kl_div_T1"]
    assert isinstance(check, golden_file.Approx) and check.rtol == golden_file.DEFAULT_RTOL
    assert "distill/kl_div_T1: {check: approx, value: " in text  # one line per check


def test_regress_passes_on_the_same_outputs(sweep, tmp_path):
    path, golden, result = sweep
    out = invoke(
        "regress",
        path,
        "--golden",
        golden,
        "--junit",
        tmp_path / "ci" / "junit.xml",
        "--summary",
        tmp_path / "ci" / "summary.md",
    )
    assert out.exit_code == ExitCode.OK, out.output
    assert out.stdout.startswith("### ✅ distillctl regress `quickstart`: passed (exit 0)")
    assert (tmp_path / "ci" / "summary.md").read_text() == out.stdout
    suite, cases = junit(tmp_path / "ci" / "junit.xml")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("16", "0", "0")
    assert len(cases) == 16 and all(c.find("failure") is None and c.find("error") is None for c in cases)
    assert cases[1].get("classname") == f"quickstart.{result.points[0].run_id}"
    assert (
        cases[1].get("name")
        == "point 0 (loss.alpha.end=0.3, loss.beta.start=1.0, loss.beta.end=0.1): distill/kl_div_T1"
    )


def test_a_doctored_golden_value_is_a_metric_regression(sweep, tmp_path):
    path, golden, result = sweep
    best = result.points[3]
    doctor(golden, best.run_id, "distill/kl_div_T1", 0.5)
    out = invoke("regress", path, "--golden", golden, "--junit", tmp_path / "junit.xml")
    assert out.exit_code == ExitCode.FAILED
    assert "❌ distillctl regress `quickstart`: regressed (exit 1)" in out.stdout
    assert "15 passed, 1 regressed, 0 infrastructure problem(s)" in out.stdout
    suite, cases = junit(tmp_path / "junit.xml")
    assert (suite.get("failures"), suite.get("errors")) == ("1", "0")
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and failed[0].get("classname") == f"quickstart.{best.run_id}"
    failure = failed[0].find("failure")
    assert failure.get("type") == "MetricRegression" and "distill/kl_div_T1 = " in failure.get("message")
    assert "expected ≈ " in failure.text
    assert "better than the golden file" not in failure.text  # the run's KL is twice the file's: worse
    # Twice the run's KL in the file: the run is better, which the two-sided check flags too, and says so.
    doctor(golden, best.run_id, "distill/kl_div_T1", 4.0)
    out = invoke("regress", path, "--golden", golden, "--junit", tmp_path / "junit.xml")
    assert out.exit_code == ExitCode.FAILED
    (failure,) = [c.find("failure") for c in junit(tmp_path / "junit.xml")[1] if c.find("failure") is not None]
    assert "better than the golden file, which checks both ways" in failure.text
    # ... and the markdown summary (the PR comment) says it too: it read "regressed" with nothing else.
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ❌")]  # the failures, and every check
    assert rows and all("better than the golden file (the check is two-sided)" in row for row in rows)


def test_a_failed_point_is_an_infrastructure_failure(sweep, tmp_path):
    path, golden, result = sweep
    write_outputs(result.points[1], status="failed", steps=10)
    summary_file = Path(result.points[1].output_path) / "summary.json"
    said = "no files at data.path 'nope.txt' (hint: point data.path at text files)"
    summary_file.write_text(json.dumps({**json.loads(summary_file.read_text()), "message": said}))
    out = invoke("regress", path, "--golden", golden, "--junit", tmp_path / "junit.xml")
    assert out.exit_code == ExitCode.USAGE == 2
    assert "infrastructure failure (exit 2)" in out.stdout and "Failed (TrainerExit)" in out.stdout
    suite, cases = junit(tmp_path / "junit.xml")
    errors = [c.find("error") for c in cases if c.find("error") is not None]
    assert suite.get("errors") == "1" and errors[0].get("type") == "InfrastructureFailure"
    assert "the point is Failed (TrainerExit)" in errors[0].get("message")
    assert said in errors[0].get("message") and said in out.stdout  # why, as `results` says it (it was dropped)


def test_a_point_with_a_damaged_log_is_an_infrastructure_failure_not_a_regression(sweep, tmp_path):
    """A succeeded run whose metrics.jsonl lost its last record was gated on an earlier evaluation: a false
    regression (exit 1). Its outputs are damaged: exit 2, said; `results` warns and `golden update` refuses."""
    path, golden, result = sweep
    point = result.points[1]
    log = Path(point.output_path) / "metrics.jsonl"
    log.write_text(log.read_text()[:-40])  # the last record cut mid-write
    out = invoke("regress", path, "--golden", golden)
    assert out.exit_code == ExitCode.USAGE == 2, out.output
    said = " ".join(out.stdout.split())
    assert "its outputs are damaged: the last line of metrics.jsonl is cut off, though the run has ended" in said
    assert "0 regressed" in said
    table = invoke("results", path)
    assert table.exit_code == 0 and "warning[damaged_metrics]" in table.stderr, table.output
    again = invoke("golden", "update", path, "-o", tmp_path / "new.yaml")
    assert again.exit_code == ExitCode.USAGE and "1 run(s) have damaged outputs" in again.stderr, again.output
    assert not (tmp_path / "new.yaml").exists()
    # two damaged runs: both named (only the first was)
    other = result.points[0]
    with (Path(other.output_path) / "metrics.jsonl").open("a") as f:
        f.write("not a record\n")
    twice = invoke("golden", "update", path, "-o", tmp_path / "new.yaml")
    said = " ".join(twice.stderr.split())
    assert "2 run(s) have damaged outputs" in said and "are not metric records" in said, said
    assert "metrics.jsonl is cut off" in said


def test_a_point_that_never_ran_is_an_infrastructure_failure(sweep):
    path, golden, result = sweep
    run_dir = result.points[2].output_path
    import shutil

    shutil.rmtree(run_dir)
    out = invoke("regress", path, "--golden", golden)
    assert out.exit_code == 2 and "Pending (NotCreated)" in out.stdout


def test_infrastructure_beats_regression(sweep):
    path, golden, result = sweep
    doctor(golden, result.points[0].run_id, "distill/hard_loss", 3.0)
    write_outputs(result.points[1], status="diverged", steps=10)
    out = invoke("regress", path, "--golden", golden)
    assert out.exit_code == 2 and "1 regressed, 1 infrastructure problem(s)" in out.stdout


def _point(check: str) -> str:
    return f"sweep: quickstart\npoints: [{{run_id: x, checks: {check}}}]\n"


@pytest.mark.parametrize(
    "content, code, said",
    [
        (_point("{distill/kl_div_T1: {check: aprox, value: 1}}"), "bad_value", "did you mean 'approx'?"),
        (_point("{distill/kl_div_T1: {check: approx}}"), "missing_key", "checks.distill/kl_div_T1.value is required"),
        (_point("{distill/kl_div_T1: {check: approx, value: 1, rtol: -1}}"), "out_of_range", "rtol must be"),
        (_point("{distill/kl_div_T1: {check: approx, value: 1, rtoll: 1}}"), "unknown_key", "did you mean 'rtol'?"),
        (_point("{distill/kl_div_T1: {value: 1}}"), "missing_key", "add check: approx, band or deterministic"),
        (  # it said "unknown key 'rtol' ... did you mean 'rtol'?"
            _point("{distill/kl_div_T1: {check: band, low: 0.1, high: 0.2, rtol: 0.1}}"),
            "unknown_key",
            "a band check has no rtol: its keys are check, low, high",
        ),
        (_point("{distill/kl_div_T1: {check: band, low: 7, high: 3}}"), "band_backwards", "always fails"),
        (_point("{distill/kl_div_T1: {check: band}}"), "band_unbounded", "always passes"),
        # rtol 5 meant 5 %: the gate passed any value up to six times the golden one
        (_point("{distill/kl_div_T1: {check: approx, value: 1, rtol: 5}}"), "rtol_not_a_fraction", "0.05 for 5 %"),
        # a quoted number was read as one (every other wrong type is refused)
        (_point("{distill/kl_div_T1: {check: approx, value: '0.78'}}"), "wrong_type", "remove the quotes"),
        # the shorthand people write got pydantic's words alone, no fix
        (_point("{distill/kl_div_T1: 0.064}"), "wrong_type", "{check: approx, value: 0.064, rtol: 0.1}"),
        # a typo was "not logged": an infrastructure failure (exit 2), run after run
        (
            _point("{distill/kl_div_t1: {check: approx, value: 1}}"),
            "unknown_metric",
            "did you mean 'distill/kl_div_T1'",
        ),
        (_point("{kl_div_T1: {check: approx, value: 1}}"), "unknown_metric", "write it in full: distill/kl_div_T1"),
        ("sweep: quickstart\nsweep: other\npoints: []\n", "duplicate_key", "appears twice"),
        ("- a\n", "not_a_mapping", "golden update"),
        ("sweep: [unclosed\n", "yaml_syntax", ""),
        ("", "empty_file", "golden update"),
    ],
)
def test_an_invalid_golden_file_exits_4(sweep, tmp_path, content, code, said):
    path, _, _ = sweep
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    out = invoke("regress", path, "--golden", bad)
    assert out.exit_code == ExitCode.INVALID_SPEC == 4
    assert f"[{code}]" in out.stderr and str(bad) in out.stderr and said in out.stderr, out.stderr
    assert "Input should" not in out.stderr and "Traceback" not in out.stderr


def test_a_golden_file_that_does_not_match_the_sweep_exits_4(sweep, tmp_path):
    path, golden, _ = sweep
    data = yaml.safe_load(golden.read_text())
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**data, "sweep": "another"}))
    out = invoke("regress", path, "--golden", other)
    assert out.exit_code == 4 and "golden_sweep_mismatch" in out.stderr
    data["points"][1]["run_id"] = "zzzzzzzzzz"
    stale = tmp_path / "stale.yaml"
    stale.write_text(yaml.safe_dump(data))
    out = invoke("regress", path, "--golden", stale)
    assert out.exit_code == 4 and "golden_point_not_in_sweep" in out.stderr and "golden update" in out.stderr
    # at the file's line, as every other golden-file problem (these had none)
    lines = [text for text in out.stderr.splitlines() if "golden_point_not_in_sweep" in text]
    assert lines and all(text.startswith(f"{stale}:") for text in lines), out.stderr
    other_line = [text for text in invoke("regress", path, "--golden", other).stderr.splitlines() if "mismatch" in text]
    assert other_line and other_line[0].startswith(f"{other}:"), other_line


def test_a_missing_or_invalid_sweep_or_golden_exits_4_not_2(sweep, tmp_path):
    path, golden, _ = sweep
    assert invoke("regress", tmp_path / "nope.yaml", "--golden", golden).exit_code == 4
    assert invoke("regress", path, "--golden", tmp_path / "nope.yaml").exit_code == 4
    bad = tmp_path / "bad-sweep.yaml"
    bad.write_text("name: quickstart\nspec: {student: {model: nope}}\n")
    assert invoke("regress", bad, "--golden", golden).exit_code == 4


def test_runs_without_golden_values_are_reported_as_skipped(sweep, tmp_path):
    path, golden, result = sweep
    data = yaml.safe_load(golden.read_text())
    data["points"] = data["points"][1:]  # no checks for the teacher
    golden.write_text(yaml.safe_dump(data))
    out = invoke("regress", path, "--golden", golden, "--junit", tmp_path / "junit.xml")
    assert out.exit_code == 0 and "Not checked (no golden values): prerequisite 'teacher'." in out.stdout
    suite, cases = junit(tmp_path / "junit.xml")
    assert suite.get("skipped") == "1" and cases[-1].find("skipped") is not None
    # A point with no values that never ran (a grid that grew) says so, and what adds it.
    data["points"] = data["points"][1:]
    golden.write_text(yaml.safe_dump(data))
    shutil.rmtree(result.points[0].output_path)
    out = invoke("regress", path, "--golden", golden)
    said = " ".join(out.stdout.split())
    assert out.exit_code == 0 and f"{result.points[0].label} — Pending (NotCreated)" in said, said
    assert "`distillctl golden update` adds them once they have" in said


def test_waiting_that_times_out_exits_3_and_still_reports(sweep, tmp_path):
    path, golden, result = sweep
    write_outputs(result.points[0], status=None, steps=20)  # still running (from its outputs: not terminal)
    out = invoke(
        "regress",
        path,
        "--golden",
        golden,
        "--wait",
        "--timeout",
        "0",
        "--poll",
        "0.1",
        "--junit",
        tmp_path / "junit.xml",
    )
    assert out.exit_code == ExitCode.TIMEOUT == 3
    assert "timed out (exit 3)" in out.stdout and "still Pending (NotCreated) when the wait timed out" in out.stdout
    suite, _ = junit(tmp_path / "junit.xml")
    assert suite.get("errors") == "1"


def test_waiting_polls_the_status_function_until_every_run_is_terminal(sweep):
    """The launcher plugs its backend's statuses in as `statuses=`: here one that says Running twice."""
    _, golden, result = sweep
    expected, _ = golden_file.read_golden(golden)
    calls, sleeps, now = [], [], [0.0]

    def statuses(expansion, outputs):
        calls.append(1)
        real = results_cli.backend_statuses(ClusterAccess())(expansion, outputs)
        if len(calls) <= 2:
            return {**real, result.points[0].run_id: RunStatus("Running")}
        return real

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    report = gate.check_sweep(
        result, expected, statuses=statuses, wait=True, timeout=100, poll=30, clock=lambda: now[0], sleep=sleep
    )
    assert report.exit_code == ExitCode.OK and len(calls) == 3 and sleeps == [30, 30]
    calls.clear(), sleeps.clear()
    now[0] = 0.0
    report = gate.check_sweep(
        result,
        expected,
        statuses=lambda e, o: {
            **results_cli.backend_statuses(ClusterAccess())(e, o),
            result.points[0].run_id: RunStatus("Running"),
        },
        wait=True,
        timeout=50,
        poll=30,
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert report.exit_code == ExitCode.TIMEOUT and sleeps == [30, 20]
    assert any("still Running when the wait timed out" in o.message for o in report.outcomes)


def test_golden_update_refuses_an_unfinished_sweep(tmp_path):
    path = write_sweep(tmp_path)
    result = expanded(path)
    finish_all(result)
    write_outputs(result.points[2], status=None, steps=20)
    out = invoke("golden", "update", path, "-o", tmp_path / "golden.yaml")
    assert out.exit_code == ExitCode.USAGE
    assert "1 of 6 run(s) have not succeeded" in out.stderr and "point 2" in out.stderr
    assert not (tmp_path / "golden.yaml").exists()


def test_golden_update_bands_from_repeated_seeds(tmp_path):
    path = write_sweep(tmp_path, seeds=[0, 1])
    result = expanded(path)
    finish_all(result)
    golden = tmp_path / "golden.yaml"
    out = invoke("golden", "update", path, "-o", golden, "--metric", "distill/kl_div_T1", "--rtol", "0.05")
    assert out.exit_code == ExitCode.OK, out.output
    data, _ = golden_file.read_golden(golden)
    by_id = {p.run_id: p for p in data.points}
    for run in result.points:
        check = by_id[run.run_id].checks["distill/kl_div_T1"]
        assert isinstance(check, golden_file.Band)
        twin = next(
            r for r in result.points if r is not run and dict(r.axis_values, seed=0) == dict(run.axis_values, seed=0)
        )
        assert by_id[twin.run_id].checks["distill/kl_div_T1"] == check  # the two seeds of a point share one band
    # One teacher run (prerequisites are not seeded), and it logs no KL: left out (it was `checks: {}`, which
    # regress dropped from its report), and listed as not checked.
    assert result.prerequisites[0].run_id not in by_id
    checked = invoke("regress", path, "--golden", golden)
    assert (
        checked.exit_code == ExitCode.OK and "Not checked (no golden values): prerequisite 'teacher'" in checked.stdout
    )


def test_the_committed_quickstart_golden_file_matches_the_sweep():
    """A change to the quickstart sweep or its specs gives new run ids: the golden file must be written again
    (`distillctl golden update sweeps/quickstart.yaml -o sweeps/quickstart.golden.yaml` after `make demo`)."""
    from results_support import SWEEPS

    golden, problems = golden_file.read_golden(SWEEPS / "quickstart.golden.yaml")
    assert problems == [] and golden is not None
    result = expanded(SWEEPS / "quickstart.yaml")
    matched, problems = golden_file.match_sweep(golden, result.sweep.name, gate.point_keys(result))
    assert problems == [] and golden.match == "run_id" and matched == golden
    assert [p.run_id for p in golden.points] == [r.run_id for r in result.runs]


def test_match_by_axis_values_survives_new_run_ids(sweep, tmp_path):
    """A cluster CI job builds an image per commit: the image is part of every run id, so a golden file matched
    by run id would never match again; `--match axis_values` matches by role and axis values instead."""
    path, _, result = sweep
    by_values = tmp_path / "by-values.yaml"
    out = invoke("golden", "update", path, "-o", by_values, "--match", "axis_values")
    assert out.exit_code == 0
    data, _ = golden_file.read_golden(by_values)
    assert data.match == "axis_values" and data.points[1].axis_values == dict(result.points[0].axis_values)
    assert data.points[5].role == "baseline" and data.points[0].prerequisite == "teacher"
    # The same sweep with one more environment variable (as a new image would): every run id changes.
    moved = write_sweep(
        tmp_path,
        name="moved.yaml",
        output_base=str(tmp_path / "moved-runs"),
        target={"kind": "local", "output_base": str(tmp_path / "moved-runs"), "env": {"IMAGE": "sha-2"}},
    )
    moved_result = expanded(moved)
    assert not {r.run_id for r in moved_result.runs} & {r.run_id for r in result.runs}
    finish_all(moved_result)
    assert invoke("regress", moved, "--golden", by_values).exit_code == ExitCode.OK
    strict = invoke("regress", moved, "--golden", tmp_path / "golden.yaml")
    assert strict.exit_code == 4 and strict.stderr.count("golden_point_not_in_sweep") == 6
    # Numbers match by value: a hand-written `0` is the sweep's `0.0` (it was "not in the sweep", exit 4).
    text = by_values.read_text()
    assert "loss.beta.end: 0.0" in text
    by_values.write_text(text.replace("loss.beta.end: 0.0", "loss.beta.end: 0"))
    assert invoke("regress", moved, "--golden", by_values).exit_code == ExitCode.OK
    doctor(by_values, data.points[4].run_id, "distill/kl_div_T1", 0.5)  # still checked: against the new run
    assert invoke("regress", moved, "--golden", by_values).exit_code == ExitCode.FAILED


def test_golden_and_regress_use_eval_metrics_when_runs_have_them(tmp_path):
    """Points with a held-out set get checks on eval/* (their last evaluation); the teacher without one keeps
    its training check; regress reads the same values back and says which it used."""
    path = write_sweep(tmp_path)
    result = expanded(path)
    for run in result.runs:
        write_outputs(run, evaluate=run.prerequisite is None)
    golden = tmp_path / "golden.yaml"
    out = invoke("golden", "update", path, "-o", golden)
    assert out.exit_code == ExitCode.OK, out.output
    assert "eval metrics for 5 run(s) with a held-out set" in out.stderr
    data, problems = golden_file.read_golden(golden)
    assert problems == []
    assert list(data.points[0].checks) == ["distill/hard_loss"]  # the teacher: no eval set
    assert set(data.points[1].checks) == {"eval/kl_div_T1", "eval/hard_loss", "eval/top1_agreement"}
    assert "each run's last evaluation on its held-out set" in golden.read_text()

    out = invoke("regress", path, "--golden", golden)
    assert out.exit_code == ExitCode.OK, out.output
    assert "eval/* metrics: each run's last evaluation on its held-out set" in out.stdout
    best = result.points[3]
    doctor(golden, best.run_id, "eval/kl_div_T1", 0.5)
    out = invoke("regress", path, "--golden", golden)
    assert out.exit_code == ExitCode.FAILED and "`eval/kl_div_T1`" in out.stdout


def test_no_output_replaces_a_file_the_command_reads_or_one_of_the_users(sweep, tmp_path):
    path, golden, _ = sweep
    before = {p: p.read_text() for p in (path, golden)}
    spec = tmp_path / "mine.yaml"
    spec.write_text("student: {model: tiny-2l}\n")
    for args, said in [
        (("golden", "update", path, "-o", path), f"-o {path} is the sweep file"),
        (("golden", "update", path, "-o", spec), f"{spec} exists and is not a golden file"),
        (("golden", "update", path, "-o", tmp_path), f"-o {tmp_path} is a folder"),
        (("regress", path, "--golden", golden, "--junit", golden), f"--junit {golden} is the golden file"),
        (("regress", path, "--golden", golden, "--summary", path), f"--summary {path} is the sweep file"),
        (("regress", path, "--golden", golden, "--junit", tmp_path / "r", "--summary", tmp_path / "r"), "also where"),
    ]:
        result = invoke(*args)
        # regress exits 4 for unusable input: 2 is its "the runs failed"
        code = ExitCode.INVALID_SPEC if args[0] == "regress" else ExitCode.USAGE
        assert result.exit_code == code and said in result.stderr, result.output
    assert {p: p.read_text() for p in (path, golden)} == before and spec.read_text() == "student: {model: tiny-2l}\n"
    assert not (tmp_path / "r").exists()
    # The specs the sweep names and the runs' outputs are read too: a report over a run's summary.json left a
    # damaged run behind (every later regress exit 2), one over the base spec another sweep (both exit 0).
    import shutil

    own = tmp_path / "own-base.yaml"
    shutil.copy(SWEEPS / "tiny.yaml", own)
    other = write_sweep(tmp_path, "own.yaml", spec=str(own))
    summary = next((tmp_path / "runs").glob("*/summary.json"))
    kept = {p: p.read_bytes() for p in (own, summary)}
    for args, said in [
        (("regress", other, "--golden", golden, "--junit", own), f"--junit {own} is the sweep's base spec"),
        (("regress", path, "--golden", golden, "--summary", summary), "a run folder whose outputs this command reads"),
        (
            ("golden", "update", path, "-o", summary.parent / "golden.yaml"),
            "a run folder whose outputs this command reads",
        ),
    ]:
        result = invoke(*args)
        code = ExitCode.INVALID_SPEC if args[0] == "regress" else ExitCode.USAGE
        assert result.exit_code == code and said in " ".join(result.stderr.split()), result.output
    assert {p: p.read_bytes() for p in (own, summary)} == kept and not (summary.parent / "golden.yaml").exists()
    beside = invoke("regress", path, "--golden", golden, "--summary", tmp_path / "runs" / "report.md")
    assert beside.exit_code == ExitCode.OK, beside.output  # beside the run folders: harms nothing
    # A run folder that is a symlink (outputs gathered from elsewhere): a path into where it points is refused too.
    real = tmp_path / "elsewhere"
    shutil.move(summary.parent, real)
    summary.parent.symlink_to(real)
    linked = invoke("regress", path, "--golden", golden, "--summary", real / "summary.json")
    assert linked.exit_code == ExitCode.INVALID_SPEC and "a run folder whose outputs" in linked.stderr, linked.output
    again = invoke("golden", "update", path, "-o", golden)  # a golden file is what -o updates
    assert again.exit_code == ExitCode.OK, again.output
    # ... even one with a YAML error (it was "not a golden file", the hint sending the user in a circle), or empty;
    # a spec with a YAML error is still the user's.
    written = golden.read_text()
    assert "window: 5" in written
    for broken in (written.replace("window: 5", "window: [5"), ""):
        golden.write_text(broken)
        again = invoke("golden", "update", path, "-o", golden)
        assert again.exit_code == ExitCode.OK and golden.read_text() == written, again.output
    spec.write_text("student: {model: tiny-2l\n")
    refused = invoke("golden", "update", path, "-o", spec)
    assert refused.exit_code == ExitCode.USAGE, refused.output
    assert "is not a golden file (and cannot be read as YAML: line" in " ".join(refused.stderr.split())
    assert spec.read_text() == "student: {model: tiny-2l\n"
    # Another sweep's golden file: replaced, its gate would check this sweep (it was written over, exit 0).
    other = written.replace(f"sweep: {yaml.safe_load(written)['sweep']}", "sweep: another-sweep", 1)
    golden.write_text(other)
    refused = invoke("golden", "update", path, "-o", golden)
    assert refused.exit_code == ExitCode.USAGE and "is the golden file of sweep 'another-sweep'" in refused.stderr
    assert golden.read_text() == other
    conflicted = other + "<<<<<<< HEAD\n  oops: [\n"  # a merge conflict: not YAML, its sweep line still there
    golden.write_text(conflicted)
    refused = invoke("golden", "update", path, "-o", golden)
    assert refused.exit_code == ExitCode.USAGE and "of sweep 'another-sweep'" in refused.stderr, refused.output
    assert golden.read_text() == conflicted


def test_golden_update_refuses_a_gate_that_checks_nothing(sweep, tmp_path):
    path, _, _ = sweep
    out = tmp_path / "nothing.yaml"
    unknown = invoke("golden", "update", path, "-o", out, "--metric", "distill/kl_div_t1")
    assert unknown.exit_code == ExitCode.USAGE and "did you mean 'distill/kl_div_T1'?" in unknown.stderr
    never = invoke("golden", "update", path, "-o", out, "--metric", "distill/soft_loss")  # not in the written logs
    assert never.exit_code == ExitCode.USAGE and "the golden file would check nothing" in never.stderr
    infinite = invoke("golden", "update", path, "-o", out, "--rtol", "inf")
    assert infinite.exit_code == ExitCode.USAGE and "is not a tolerance" in infinite.output
    percent = invoke("golden", "update", path, "-o", out, "--rtol", "10")  # meant 10 %: passed 11 × the value
    assert percent.exit_code == ExitCode.USAGE and "--rtol is a fraction" in percent.output
    assert not out.exists()
    short = invoke("golden", "update", path, "-o", out, "--metric", "kl_div_T1")  # the short name, resolved
    assert short.exit_code == ExitCode.OK and "distill/kl_div_T1" in out.read_text(), short.output


def test_a_golden_file_that_checks_nothing_is_invalid_and_an_empty_point_is_not_checked(sweep, tmp_path):
    # `points: []` passed with exit 0 checking nothing; a point's `checks: {}` vanished from the report.
    path, golden, result = sweep
    data = yaml.safe_load(golden.read_text())
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({**data, "points": []}))
    out = invoke("regress", path, "--golden", empty)
    assert out.exit_code == ExitCode.INVALID_SPEC and "[golden_checks_nothing]" in out.stderr, out.output
    data["points"][1]["checks"] = {}
    golden.write_text(yaml.safe_dump(data))
    out = invoke("regress", path, "--golden", golden, "--junit", tmp_path / "junit.xml")
    assert out.exit_code == ExitCode.OK and f"Not checked (no golden values): {result.points[0].label}" in out.stdout
    suite, _ = junit(tmp_path / "junit.xml")
    assert suite.get("skipped") == "1"


def test_a_tight_rtol_golden_file_passes_on_its_own_runs_and_a_failure_shows_why(sweep, tmp_path):
    # Values were rounded to 6 digits whatever --rtol: at 1e-6 the file failed against the runs it came from,
    # printing "0.109062 | ≈ 0.109062".
    path, _, result = sweep
    tight = tmp_path / "tight.yaml"
    assert invoke("golden", "update", path, "-o", tight, "--rtol", "1e-6").exit_code == ExitCode.OK
    assert invoke("regress", path, "--golden", tight).exit_code == ExitCode.OK
    doctor(tight, result.points[0].run_id, "distill/kl_div_T1", 1 + 3e-6)
    out = invoke("regress", path, "--golden", tight)
    assert out.exit_code == ExitCode.FAILED, out.output
    row = next(line for line in out.stdout.splitlines() if "❌" in line and "kl_div_T1" in line)
    observed, expected = row.split("|")[4].strip(), row.split("|")[5].strip()
    assert expected.startswith("≈ ") and observed != expected.split()[1], row


def test_naming_a_default_metric_keeps_its_eval_twin(tmp_path):
    # `--metric kl_div_T1` (the default's own name) moved the check to the training window.
    path = write_sweep(tmp_path)
    result = expanded(path)
    for run in result.runs:
        write_outputs(run, evaluate=run.prerequisite is None)
    golden = tmp_path / "golden.yaml"
    out = invoke("golden", "update", path, "-o", golden, "--metric", "kl_div_T1")
    assert out.exit_code == ExitCode.OK and "eval metrics for 5 run(s)" in out.stderr, out.output
    data, _ = golden_file.read_golden(golden)
    assert {name for p in data.points for name in p.checks} == {"eval/kl_div_T1"}
    literal = tmp_path / "literal.yaml"
    assert invoke("golden", "update", path, "-o", literal, "--metric", "distill/kl_div_T1").exit_code == 0
    data, _ = golden_file.read_golden(literal)  # a full name is taken as written
    assert {name for p in data.points for name in p.checks} == {"distill/kl_div_T1"}


def test_a_failed_exact_check_shows_the_observed_value_in_full(sweep):
    path, golden, result = sweep
    data = yaml.safe_load(golden.read_text())
    point = data["points"][1]
    name, check = next(iter(point["checks"].items()))
    near = check["value"] * (1 + 1e-9)  # the golden value, rounded: not exactly what the run logged
    point["checks"] = {name: {"check": "deterministic", "value": near}}
    golden.write_text(yaml.safe_dump(data, sort_keys=False))
    out = invoke("regress", path, "--golden", golden)
    assert out.exit_code == ExitCode.FAILED, out.output
    row = next(line for line in out.stdout.splitlines() if f"`{name}`" in line and "❌" in line)
    shown = row.split("|")[4].strip()  # it read "| 0.109062 | == 0.109062 |": equal to 6 digits
    assert repr(float(shown)) == shown and f"{float(shown):.6g}" != shown and f"== {near!r}" in row, row


def test_points_the_sweeps_own_rule_stopped_are_not_checked_and_not_a_failure(sweep, tmp_path):
    # A stopped point made regress an infrastructure failure (exit 2) and golden update impossible, although a
    # sweep whose points succeeded or were stopped is Succeeded.
    from orchestrator.outputs import write_stopped

    path, golden, result = sweep
    stopped = result.points[1]
    write_outputs(stopped, status="preempted", steps=30)
    write_stopped(stopped.output_path, {"rule": "no_improvement", "step": 30, "message": "no gain in 3 lines"})
    out = invoke("regress", path, "--golden", golden, "--junit", tmp_path / "junit.xml")
    assert out.exit_code == ExitCode.OK, out.output
    assert f"Not checked (stopped by the sweep's early-stopping rule): {stopped.label}" in out.stdout
    suite, cases = junit(tmp_path / "junit.xml")
    assert suite.get("skipped") == "1" and any(c.get("classname") == "quickstart.stopped" for c in cases)
    again = tmp_path / "again.yaml"
    written = invoke("golden", "update", path, "-o", again)
    assert written.exit_code == ExitCode.OK and "left out 1 point(s) stopped" in written.stderr, written.output
    data, _ = golden_file.read_golden(again)
    assert stopped.run_id not in {p.run_id for p in data.points}


def test_a_report_file_that_cannot_be_written_keeps_the_verdict_and_its_exit_code(sweep, tmp_path):
    # A regression with an unwritable --junit printed nothing and exited 2 (infrastructure): CI would retry it.
    path, golden, result = sweep
    folder = tmp_path / "a-folder"
    folder.mkdir()
    early = invoke("regress", path, "--golden", golden, "--junit", folder)
    assert early.exit_code == ExitCode.INVALID_SPEC and "--junit" in early.stderr and "is a folder" in early.stderr
    assert f"e.g. {folder / 'junit.xml'}" in " ".join(early.stderr.split())
    # A mistyped --output-base exits 4 (the command's input), not 2 (the runs failed: CI would retry it).
    typo = invoke("regress", path, "--golden", golden, "--output-base", tmp_path / "nosuch")
    assert typo.exit_code == ExitCode.INVALID_SPEC and "no such folder" in typo.stderr, typo.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    passing = invoke("regress", path, "--golden", golden, "--junit", blocker / "junit.xml")  # its parent is a file
    assert passing.exit_code == ExitCode.INVALID_SPEC and "passed (exit 0)" in passing.stdout, passing.output
    doctor(golden, result.points[3].run_id, "distill/kl_div_T1", 0.5)
    out = invoke("regress", path, "--golden", golden, "--junit", blocker / "junit.xml")  # its parent is a file
    assert out.exit_code == ExitCode.FAILED and "regressed (exit 1)" in out.stdout, out.output
    assert "cannot write" in out.stderr


def test_the_report_names_points_in_the_sweeps_words_not_a_stale_files(sweep):
    path, golden, result = sweep
    data = yaml.safe_load(golden.read_text())
    data["points"][1]["label"] = "point 9 (an old name)"
    golden.write_text(yaml.safe_dump(data, sort_keys=False))
    out = invoke("regress", path, "--golden", golden)
    assert out.exit_code == ExitCode.OK and "an old name" not in out.stdout
    assert result.points[0].label in out.stdout


def test_waiting_stops_for_runs_nothing_will_start_and_for_unchecked_runs_not_at_all(sweep):
    """`regress --wait` waited its whole timeout (an hour by default) for a point nothing submits (never created, or
    cancelled: Pending (Preempted)), then called it a timeout. Now it gives such runs a grace (a sweep service
    creates them seconds after its DistillationSweep) and stops: exit 2, naming what starts them. Runs the golden file
    does not check are not waited for."""
    _, golden, result = sweep
    expected, _ = golden_file.read_golden(golden)
    unchecked, pending = result.points[0].run_id, result.points[1].run_id
    expected = expected.model_copy(update={"points": [p for p in expected.points if p.run_id != unchecked]})
    sleeps, now = [], [0.0]

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    def statuses(expansion, outputs):
        real = results_cli.backend_statuses(ClusterAccess())(expansion, outputs)
        return {**real, unchecked: RunStatus("Running"), pending: RunStatus("Pending", "Preempted")}

    report = gate.check_sweep(
        result, expected, statuses=statuses, wait=True, timeout=3600, poll=30, clock=lambda: now[0], sleep=sleep
    )
    assert not report.timed_out and report.exit_code == ExitCode.USAGE == 2
    assert now[0] == gate.AWAITING_GRACE_SECONDS, sleeps  # the grace, not the hour
    [outcome] = [o for o in report.outcomes if o.kind == "infra"]
    assert outcome.run_id == pending
    assert outcome.message == "the point is Pending (Preempted): nothing starts it until `distillctl sweep` submits it"

    # Submitted within the grace: waited for as any run.
    calls = []

    def submitted_later(expansion, outputs):
        calls.append(1)
        real = results_cli.backend_statuses(ClusterAccess())(expansion, outputs)
        return {**real, pending: RunStatus("Pending", "NotCreated")} if len(calls) <= 2 else real

    now[0] = 0.0
    report = gate.check_sweep(
        result, expected, statuses=submitted_later, wait=True, timeout=3600, poll=30, clock=lambda: now[0], sleep=sleep
    )
    assert report.exit_code == ExitCode.OK and len(calls) == 3


def test_a_sweep_file_on_standard_input_is_read_once(sweep, monkeypatch):
    # `-` worked for plan and sweep; status, results, regress and golden read the file twice, found standard
    # input empty the second time and called the user's file empty (exit 4).
    path, golden, _ = sweep
    monkeypatch.chdir(path.parent)  # a piped sweep's relative paths are relative to the current directory
    for args in (["regress", "-", "--golden", str(golden)], ["status", "-"], ["results", "-"]):
        out = runner.invoke(app, args, input=path.read_text())
        assert out.exit_code == ExitCode.OK and "empty" not in out.stderr, (args, out.output)
    both = runner.invoke(app, ["regress", "-", "--golden", "-"], input=path.read_text())
    assert both.exit_code == ExitCode.INVALID_SPEC and "both standard input" in both.stderr, both.output


def test_golden_update_of_an_existing_file_keeps_its_match_and_window(sweep):
    # A CI golden file written `--match axis_values` turned `run_id` when updated by the README's command (its
    # next run on a new image failed "golden point not in sweep"), and its window went back to 5, unsaid.
    path, golden, _ = sweep
    first = invoke("golden", "update", path, "-o", golden, "--match", "axis_values", "--window", "3")
    assert first.exit_code == ExitCode.OK, first.output
    again = invoke("golden", "update", path, "-o", golden)
    assert again.exit_code == ExitCode.OK, again.output
    data, _ = golden_file.read_golden(golden)
    assert (data.match, data.window) == ("axis_values", 3)
    assert "kept the file's match axis_values and window 3" in again.stderr
    changed = invoke("golden", "update", path, "-o", golden, "--match", "run_id")
    assert changed.exit_code == ExitCode.OK and golden_file.read_golden(golden)[0].match == "run_id"
    assert "match" not in changed.stderr.split("kept")[-1] or "kept the file's window 3" in changed.stderr


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--timeout", "60"], "--timeout applies to --wait"),
        (["--poll", "5", "--timeout", "1"], "--timeout and --poll apply to --wait"),
        (["--wait", "--timeout", "nan"], "--timeout nan is not a number of seconds ≥ 0"),
        (["--wait", "--timeout", "inf"], "--timeout inf is not a number of seconds ≥ 0"),  # waited for ever
        (["--wait", "--timeout", "-1"], "--timeout -1.0 is not a number of seconds ≥ 0"),
        (["--wait", "--poll", "0"], "--poll 0.0 is not a number of seconds ≥ 0.1"),
    ],
)
def test_wait_options_without_wait_or_out_of_range_are_refused(sweep, options, said):
    """--timeout and --poll without --wait were ignored (a gate meant to wait read the runs once); nan read
    "must be ≥ 0" and inf waited for ever."""
    path, golden, _ = sweep
    out = invoke("regress", path, "--golden", golden, *options)
    # unusable input: 4, as the README's table says (2 reads as failed runs)
    assert out.exit_code == ExitCode.INVALID_SPEC and said in " ".join(out.stderr.split()), out.output


def test_a_failed_check_shows_its_tolerance_to_every_digit():
    """The observed value was shown to every digit and the tolerance to six: a failure at the boundary read as a
    pass (`rtol 0.0704871` for 0.07048712)."""
    check = golden_file.Approx(value=3.2, rtol=0.07048712, atol=1.5e-9)
    assert check.describe(precise=True) == "≈ 3.2 (rtol 0.07048712, atol 1.5e-09)"
    assert check.describe() == "≈ 3.2 (rtol 0.0704871, atol 1.5e-09)"  # the summary's table: six digits


def test_golden_update_refuses_a_value_that_is_not_finite(tmp_path):
    """A NaN in a succeeded run's last records left its point out of the golden file without a word, and `regress`
    on that file then passed (exit 0) without checking it."""
    path = write_sweep(tmp_path)
    result = expanded(path)
    finish_all(result)
    log = Path(result.points[1].output_path) / "metrics.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    lines[-1]["metrics"]["distill/kl_div_T1"]["sum"] = float("nan")
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = invoke("golden", "update", path, "-o", tmp_path / "golden.yaml")
    assert out.exit_code == ExitCode.USAGE, out.output
    said = " ".join(out.stderr.split())
    assert "value(s) of succeeded runs are not finite" in said and "kl_div_T1 = nan" in said, said
    assert not (tmp_path / "golden.yaml").exists()


def test_a_report_path_that_holds_the_users_file_is_refused_and_kept(sweep, tmp_path):
    """`--summary README.md` or `--junit other-sweep.yaml` replaced the file without a word (`golden update -o`
    refused the same); an earlier report, or an empty file, is still written over."""
    path, golden, _ = sweep
    notes = tmp_path / "NOTES.md"
    notes.write_text("# my notes\n\nSee `distillctl regress` for the gate.\n")
    pytest_xml = tmp_path / "pytest.xml"  # another tool's JUnit report, which a CI job keeps beside ours
    pytest_xml.write_text('<?xml version="1.0"?>\n<testsuites><testsuite name="pytest" tests="120"/></testsuites>\n')
    for flag, mine in (("--summary", notes), ("--junit", notes), ("--junit", pytest_xml), ("--summary", pytest_xml)):
        before = mine.read_text()
        out = invoke("regress", path, "--golden", golden, flag, mine)
        assert out.exit_code == ExitCode.INVALID_SPEC, out.output
        assert f"{flag} {mine} exists and is not a report regress wrote" in " ".join(out.stderr.split())
        assert mine.read_text() == before
    junit_path, summary_path = tmp_path / "junit.xml", tmp_path / "summary.md"
    summary_path.write_text("")
    for _ in range(2):  # a second run replaces its own reports
        out = invoke("regress", path, "--golden", golden, "--junit", junit_path, "--summary", summary_path)
        assert out.exit_code == ExitCode.OK, out.output
    assert "distillctl regress" in summary_path.read_text() and "<testsuite" in junit_path.read_text()


def test_a_checked_metric_that_became_nan_is_a_regression_not_infrastructure(sweep):
    """A run of the code under test whose checked metric is NaN: regress said exit 2 (infrastructure, which CI
    retries); the numbers the code computed are its regression, exit 1."""
    path, golden, result = sweep
    log = Path(result.points[1].output_path) / "metrics.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    lines[-1]["metrics"]["distill/kl_div_T1"]["sum"] = float("nan")
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = invoke("regress", path, "--golden", golden)
    assert out.exit_code == ExitCode.FAILED, out.output
    assert "| nan |" in out.stdout and "1 regressed, 0 infrastructure" in out.stdout, out.stdout
