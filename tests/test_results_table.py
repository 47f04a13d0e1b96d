"""`distillctl results`: the table's rows, aggregation, best point, Δ vs baseline, partial outputs, every format."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
from results_support import (
    LOG_EVERY,
    START_TIME,
    STEPS,
    SWEEPS,
    TOKENS_PER_STEP,
    expanded,
    final_kl,
    finish_all,
    write_outputs,
    write_sweep,
)
from typer.testing import CliRunner

from orchestrator.cli import app, results_format
from orchestrator.core import results
from orchestrator.exit_codes import ExitCode
from orchestrator.outputs import read_run_outputs

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def table(result, window=results.DEFAULT_WINDOW) -> results.Results:
    outputs = {run.run_id: read_run_outputs(run.output_path) for run in result.runs}
    statuses = results.statuses_from_outputs(result.runs, outputs, now=2e9)
    return results.build(result, outputs, statuses, window=window)


@pytest.fixture
def finished(tmp_path):
    result = expanded(write_sweep(tmp_path))
    finish_all(result)
    return result


def test_one_row_per_run_with_status_steps_metrics_and_roles(finished):
    t = table(finished)
    assert [r.role for r in t.rows] == ["prerequisite", "point", "point", "point", "point", "baseline"]
    assert [r.name for r in t.rows] == ["teacher", "0", "1", "2", "3", "4b"]
    assert t.rows[0].label == f"spec {SWEEPS / 'tiny-teacher.yaml'}"
    assert t.rows[1].label == "alpha.end=0.3, beta.start=1.0, beta.end=0.1"  # the shared `loss.` prefix dropped
    assert t.rows[5].label == "alpha=0.0, beta=0.0"
    for row in t.rows:
        assert row.status.phase == "Succeeded" and row.status.restarts == 0
        assert (row.step, row.total_steps) == (STEPS, STEPS)
        assert row.wall_time_sec == 90.0 and row.chip_hours is None  # local target: wall time, no chips
        assert row.tokens_per_sec == pytest.approx(TOKENS_PER_STEP)  # Δtokens/Δtime: 512 tokens per second
    point = t.rows[1]
    # The last 4 records of a synthetic run (window 5 > records: every record), token-weighted.
    assert point.metrics[results.KL_T1] == pytest.approx(
        final_kl(finished.points[0])
        + 2.5 * sum(math.exp(-6 * s / STEPS) for s in range(LOG_EVERY, STEPS + 1, LOG_EVERY)) / 4
    )
    assert point.metrics[results.PERPLEXITY] == pytest.approx(math.exp(point.metrics[results.HARD_LOSS]))
    assert t.rows[0].metrics[results.KL_T1] is None  # a pre-trained teacher logs no KL


def test_window_aggregates_sum_count_pairs_not_a_mean_of_means(tmp_path):
    result = expanded(write_sweep(tmp_path))
    finish_all(result)
    point = result.points[0]
    # Rewrite the point's log: two records with very different token counts.
    lines = [
        {
            "step": 10,
            "time": 1.0,
            "tokens": 100,
            "metrics": {"distill/kl_div_T1": {"sum": 10.0, "count": 10.0, "value": 1.0}},
        },
        {
            "step": 20,
            "time": 2.0,
            "tokens": 200,
            "metrics": {"distill/kl_div_T1": {"sum": 90.0, "count": 30.0, "value": 3.0}},
        },
    ]
    (tmp_path / "runs" / point.run_id / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    row = next(r for r in table(result, window=2).rows if r.run_id == point.run_id)
    assert row.metrics[results.KL_T1] == pytest.approx(2.5)  # 100/40, not (1 + 3)/2
    row = next(r for r in table(result, window=1).rows if r.run_id == point.run_id)
    assert row.metrics[results.KL_T1] == pytest.approx(3.0)
    assert results.Aggregation(0).header(results.KL_T1) == "kl_div_T1 (all)"
    assert results.Aggregation(5).header(results.KL_T1) == "kl_div_T1 (last 5)"


def test_best_point_and_delta_against_the_baseline(finished):
    t = table(finished)
    best = t.best
    assert best is not None and best.label == "alpha.end=0.7, beta.start=0.0, beta.end=0.0"
    assert sum(r.best for r in t.rows) == 1
    baseline = t.rows[5]
    assert baseline.delta_kl is None and not baseline.best  # the baseline is never "best"
    for row in t.rows[1:5]:
        assert row.baseline_run_id == baseline.run_id
        assert row.delta_kl == pytest.approx(row.metrics[results.KL_T1] - baseline.metrics[results.KL_T1])
        assert row.delta_kl < 0  # every distilled student beats the no-distillation baseline on kl_div_T1
        assert row.delta_kl_relative == pytest.approx(row.delta_kl / baseline.metrics[results.KL_T1])


def test_partial_outputs_of_running_and_missing_points(tmp_path):
    result = expanded(write_sweep(tmp_path))
    teacher, p0, p1, p2, p3, base = result.runs
    write_outputs(teacher)
    write_outputs(p0, status=None, steps=20, tail='{"step": 30, "time": 1800000030.0, "tok')  # running, cut off
    write_outputs(p1, status="failed", steps=10)
    write_outputs(p2, status="diverged", steps=30)
    (tmp_path / "runs" / p3.run_id).mkdir(parents=True)
    # Half-written: never the trainer's (it writes summary.json whole, renamed into place), so damage, said.
    (tmp_path / "runs" / p3.run_id / "summary.json").write_text('{"status": "runn')
    t = table(result)  # base: never ran
    rows = {r.run_id: r for r in t.rows}
    assert rows[p0.run_id].step == 20 and rows[p0.run_id].total_steps == STEPS
    assert rows[p0.run_id].status.phase == "Pending"  # from outputs alone, running looks like not started
    assert rows[p0.run_id].metrics[results.KL_T1] is not None and rows[p0.run_id].wall_time_sec is None
    assert rows[p1.run_id].status.shown == "Failed (TrainerExit)"
    assert rows[p2.run_id].status.phase == "Diverged"
    assert rows[p3.run_id].step is None and rows[p3.run_id].metrics[results.KL_T1] is None
    assert rows[base.run_id].status.shown == "Pending (NotObserved)" and rows[base.run_id].step is None
    assert t.best is None  # nothing finished: no best point, and no Δ without a baseline value
    assert all(r.delta_kl is None for r in t.rows)
    text = results_format.markdown(t)
    assert (
        "| 3 | alpha.end=0.7, beta.start=0.0, beta.end=0.0 |  | Pending (NotObserved) ⚠ damaged outputs | 0 | —/40 |"
        in text
    )
    assert "; 3: summary.json is not a JSON object" in text
    # A log without a summary.json: the trainer writes that before its first record, so it was deleted or cut short.
    assert "⚠ damaged outputs (never ranked): 0: metrics.jsonl holds records but there is no summary.json" in text
    assert "(no point succeeded)" in results_format.legend(t)  # one failed, one diverged: not "none finished yet"


def test_text_table_names_the_aggregation_and_marks_the_best(finished, tmp_path):
    result = invoke("results", str(tmp_path / "sweep.yaml"))
    assert result.exit_code == ExitCode.OK, result.output
    out = result.stdout
    assert "quickstart: 6 run(s) on local" in out and "(last 5)" in out and "wall time" in out
    assert "★ alpha.end=0.7, beta.start=0.0, beta.end=0.0" in out and "baseline" in out and "prerequisite" in out
    assert "40/40" in out and "Succeeded" in out and "−" in out  # Δ printed with a real minus sign
    assert result.stderr == ""


def test_markdown_reads_as_a_pull_request_comment(finished, tmp_path):
    result = invoke("results", str(tmp_path / "sweep.yaml"), "--format", "md", "--window", "2")
    assert result.exit_code == ExitCode.OK
    lines = result.stdout.splitlines()
    assert lines[0] == "### distillctl results: `quickstart`"
    assert lines[2].startswith("Best point: **alpha.end=0.7, beta.start=0.0, beta.end=0.0**")
    header = next(line for line in lines if line.startswith("| # |"))
    assert "kl_div_T1 (last 2)" in header and "Δkl_div_T1 vs baseline" in header
    separator = lines[lines.index(header) + 1]
    assert separator.count("|") == header.count("|") and "---:" in separator
    best = next(line for line in lines if "★" in line)
    assert best.startswith("| **3** | **★ alpha.end=0.7") and "| **** |" not in best
    assert lines[-1].startswith("<sub>") and "last 2 log records" in lines[-1]


def test_csv_is_machine_friendly(finished, tmp_path):
    result = invoke("results", str(tmp_path / "sweep.yaml"), "--format", "csv", "--window", "0")
    assert result.exit_code == ExitCode.OK
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 6 and rows[0]["role"] == "prerequisite"
    assert rows[1]["axis:loss.alpha.end"] == "0.3" and rows[5]["axis:loss.alpha"] == "0.0"
    assert {r["window"] for r in rows} == {"0"}
    assert float(rows[1]["kl_div_T1"]) > float(rows[4]["kl_div_T1"])  # full precision, parseable
    assert rows[0]["kl_div_T1"] == "" and rows[4]["best"] == "true" and rows[1]["best"] == "false"
    assert float(rows[1]["delta_kl_div_T1"]) < 0 and rows[1]["baseline_run_id"] == rows[5]["run_id"]
    assert [r["index"] for r in rows[:2]] == ["", "0"]  # the prerequisite has no grid index (it read 0, as point 0)


def test_json_has_raw_numbers_and_the_aggregation(finished, tmp_path):
    result = invoke("results", str(tmp_path / "sweep.yaml"), "--output", "json")
    assert result.exit_code == ExitCode.OK
    data = json.loads(result.stdout)
    assert data["aggregation"]["window"] == 5 and "Σsum / Σcount" in data["aggregation"]["method"]
    assert data["target"] == {"kind": "local", "tpu_type": None, "chips": None}
    runs = {r["name"]: r for r in data["runs"]}
    assert data["best"] == runs["3"]["run_id"] and data["baselines"] == [runs["4b"]["run_id"]]
    kl = runs["3"]["metrics"]["distill/kl_div_T1"]
    assert isinstance(kl, float) and kl == table(finished).best.metrics[results.KL_T1]  # not rounded
    assert runs["3"]["status"] == {"phase": "Succeeded", "reason": "", "message": "", "shown": "Succeeded"}
    assert runs["teacher"]["metrics"]["distill/kl_div_T1"] is None
    assert runs["teacher"]["index"] is None and runs["0"]["index"] == 0
    assert runs["0"]["axis_values"] == {"loss.alpha.end": 0.3, "loss.beta.start": 1.0, "loss.beta.end": 0.1}


def test_tpu_targets_show_chip_hours(tmp_path):
    path = write_sweep(
        tmp_path,
        target={
            "kind": "kubernetes",
            "tpu_type": "v5p-8",
            "slices": 2,
            "image": "x/y:1",
            "output_base": str(tmp_path / "runs"),
        },
    )
    result = expanded(path)
    finish_all(result)
    t = table(result)
    assert t.chips == 8 and t.tpu_type == "v5p-8"  # v5p-8: 4 chips per slice, 2 slices
    assert t.rows[1].chip_hours == pytest.approx(90.0 * 8 / 3600)
    assert "chip-h (8 chips)" in results_format.markdown(t)


def test_seeded_points_compare_with_the_baseline_of_their_seed(tmp_path):
    result = expanded(write_sweep(tmp_path, seeds=[0, 1]))
    finish_all(result)
    t = table(result)
    baselines = {b.seed: b.run_id for b in t.baselines}
    assert len(baselines) == 2
    for row in t.rows:
        if row.role == "point":
            assert row.baseline_run_id == baselines[row.seed]
            assert "seed=" in row.label


def test_with_several_baselines_delta_is_against_the_best_one(tmp_path):
    # Δ and the markdown headline used the first baseline: a point "−13 % vs the baseline" was worse than the
    # second one, which the footer named too.
    two = [{"loss.alpha": 0.0, "loss.beta": 0.0}, {"loss.alpha": 0.9, "loss.beta": 0.0}]
    result = expanded(write_sweep(tmp_path, baseline=two))
    finish_all(result)
    first, second = [p for p in result.points if p.is_baseline]
    write_outputs(second, kl_end=0.001)  # better than every point
    t = table(result)
    for row in t.rows:
        if row.role == "point":
            assert row.baseline_run_id == second.run_id and row.delta_kl > 0
    assert "Δkl vs the best (lowest kl_div_T1) of the baselines" in results_format.legend(t)
    text = results_format.markdown(t)
    headline = next(line for line in text.splitlines() if line.startswith("Best point"))
    name = next(r.name for r in t.rows if r.run_id == second.run_id)
    assert f"vs the baseline {name} (" in headline and "+" in headline, headline


def test_a_bad_sweep_is_reported_not_crashed(tmp_path):
    missing = invoke("results", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == ExitCode.USAGE and "no such file" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: quickstart\nspec: {student: {model: nope}}\n")
    invalid = invoke("results", str(bad))
    assert invalid.exit_code == ExitCode.INVALID_SPEC and "unknown model" in invalid.stderr


def test_statuses_from_outputs_alone(tmp_path):
    result = expanded(write_sweep(tmp_path))
    teacher, p0, p1, *_ = result.runs
    write_outputs(teacher)
    write_outputs(p0, status="running", steps=20)  # its last metrics line: START_TIME + 20
    write_outputs(p1, status="preempted", steps=20)
    outputs = {run.run_id: read_run_outputs(run.output_path) for run in result.runs}
    fresh = results.statuses_from_outputs(result.runs, outputs, now=START_TIME + 60)
    assert fresh[teacher.run_id].phase == "Succeeded" and fresh[p0.run_id].phase == "Running"
    assert fresh[p0.run_id].step == 20 and fresh[p0.run_id].total_steps == STEPS
    assert fresh[p1.run_id].phase in ("Failed", "Pending")  # preempted: resumes when submitted again
    assert fresh[result.points[-1].run_id].shown == "Pending (NotObserved)"
    stale = results.statuses_from_outputs(result.runs, outputs, now=START_TIME + 20 + results.DEFAULT_STALL_SECONDS + 1)
    assert stale[p0.run_id].shown == "Stalled (NoNewMetrics)" and not stale[p0.run_id].terminal


def test_runs_with_an_eval_set_are_shown_by_their_last_evaluation(tmp_path):
    """eval/* metrics win over the training window, and the table says so: a header note when every run has them,
    a `from` column when only some do; Δ and the best point never compare eval with training numbers."""
    from results_support import EVAL_TOKENS

    result = expanded(write_sweep(tmp_path))
    for run in result.runs:
        write_outputs(run, evaluate=True)
    t = table(result)
    assert t.sources == {"eval"} and all(r.source == "eval" for r in t.rows)
    point = t.rows[1]
    # the last evaluation (step 40) alone, not a mean over the window's records
    assert point.metrics[results.KL_T1] == pytest.approx(final_kl(result.runs[1]) + 2.5 * math.exp(-6) + 0.05)
    assert point.metrics[results.PERPLEXITY] == pytest.approx(math.exp(point.metrics[results.HARD_LOSS]))
    assert t.best is not None and t.rows[1].delta_kl is not None
    assert "kl_div_T1 (eval)" in results_format.markdown(t)
    assert "eval/kl_div_T1" in results_format.markdown(t).split("\n")[2]  # the best-point line
    parsed = list(csv.DictReader(io.StringIO(results_format.csv_text(t))))
    assert {row["metrics_from"] for row in parsed} == {"eval"}
    run = json.loads(json.dumps(results_format.to_json(t)))["runs"][1]
    assert run["metrics_from"] == "eval"
    # the keys are the table's metrics; which logged metric each value is, machines read here
    assert run["metrics_logged_as"]["distill/kl_div_T1"] == "eval/kl_div_T1"
    assert EVAL_TOKENS  # the synthetic eval set's token count (the values above are its Σsum/Σcount)

    write_outputs(result.runs[-1])  # the baseline without an eval set: mixed sources
    t = table(result)
    assert t.sources == {"eval", "train"} and t.rows[-1].source == "train"
    assert all(r.delta_kl is None for r in t.rows)  # eval KL minus training KL would mean nothing
    text = results_format.markdown(t)
    assert "| from |" in text and "(eval, else train last 5)" in text
    assert "where both are shown by the same kind of metrics" in results_format.legend(t)  # why every Δ is empty


def test_a_metric_the_evaluation_does_not_log_comes_from_training(tmp_path):
    """An offline student's evaluation has no teacher: no eval/kl_div_T1 or eval/top1_agreement. Its KL column was
    empty (and "no finished point logged it") although training logged it: it is the training window's, and the
    row says its metrics come from both."""
    result = expanded(write_sweep(tmp_path))
    for run in result.runs:
        run_dir = write_outputs(run, evaluate=True)
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for record in lines:
            for name in ("eval/kl_div_T1", "eval/top1_agreement"):
                record["metrics"].pop(name, None)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    t = table(result)
    point = t.rows[1]
    assert point.source == "eval+train" and "eval+train" in t.sources  # the teacher (no KL at all): eval
    training = results.run_metrics(read_run_outputs(result.runs[1].output_path), results.DEFAULT_WINDOW)
    assert point.metrics[results.KL_T1] == pytest.approx(training[results.KL_T1])  # the training window's
    assert point.metrics[results.HARD_LOSS] != pytest.approx(training[results.HARD_LOSS])  # the evaluation's
    assert t.best is not None and point.delta_kl is not None  # train KL against train KL
    text = results_format.markdown(t)
    assert "| from |" in text and "(eval, else train last 5)" in text and "no teacher at eval" in text
    assert json.loads(json.dumps(results_format.to_json(t)))["runs"][1]["metrics_from"] == "eval+train"
    # A run without any metric (a logit-cache writer, a queued run) comes from nowhere: it read "train".
    import dataclasses

    empty = dataclasses.replace(point, metrics={name: None for name in point.metrics})
    assert results_format._cells(t, empty)[6] == results_format.MISSING


def test_results_cli_header_names_eval(tmp_path):
    result = expanded(write_sweep(tmp_path))
    for run in result.runs:
        write_outputs(run, evaluate=True)
    out = invoke("results", str(tmp_path / "sweep.yaml"), "--format", "md")
    assert out.exit_code == ExitCode.OK, out.output
    assert "kl_div_T1 (eval)" in out.stdout and "last evaluation on its held-out set" in out.stdout


def test_an_output_base_that_is_not_a_folder_is_a_usage_error(tmp_path):
    path = write_sweep(tmp_path)
    # `gs://` read as runs that wrote nothing (exit 0, under `gs:/<run id>`); `file:///absent` passed where `/absent`
    # did not; a bucket name the sweep file refuses was asked over the network.
    for base, said in (
        (tmp_path / "absent", "no such folder"),
        (path, "is a file, not a folder"),
        (f"file://{tmp_path / 'absent'}", "no such folder"),
        ("gs://", "names no bucket"),
        ("gs://A_B/x", "names no valid bucket"),
        ("file://", "'file://' names no folder"),  # it read "--output-base : no such folder"
        (f"file://localhost{tmp_path / 'absent'}", f"{tmp_path / 'absent'}: no such folder"),  # RFC 8089's form
        ("file://otherhost/x", "names the host 'otherhost'"),
        ("s3://", "names no bucket"),  # it passed: runs that wrote nothing
        # read as a folder named `file:rel` ("no such folder" beside an existing ./rel), and `file:` as `file:`
        ("file:rel", "'file:rel' is a file URL with a relative path (rel) hint: write the path itself (rel)"),
        ("file:", "'file:' names no folder"),
    ):
        result = CliRunner().invoke(app, ["results", str(path), "--output-base", str(base)])
        assert result.exit_code == ExitCode.USAGE and said in " ".join(result.stderr.split()), result.output
    # every reader gets /abs for file://localhost/abs (the check alone did: the runs were read under `localhost/`)
    from orchestrator.cli.options import _local_file_url

    assert _local_file_url("file://localhost/a/b") == "/a/b" and _local_file_url("file:///a/b") == "file:///a/b"
    # scheme and host in any case (RFC 3986), and RFC 8089's one-slash form: they were refused or read as no folder
    for spelled, read in (("FILE://LocalHost/a/b", "/a/b"), ("File:///a/b", "file:///a/b"), ("file:/a/b", "/a/b")):
        assert _local_file_url(spelled) == read, spelled
    # the parsing both readers share (the sweep check's hint: "write it as a path (/a/b)")
    from distillspec.places import file_url

    assert file_url("file:///sp%20ace/a") == ("", "/sp ace/a")  # a URL's path is percent-encoded
    assert [file_url(u) for u in ("file:/a", "file:///a", "FILE://LocalHost/a", "file:a", "file://h", "gs://b/a")] == [
        ("", "/a"),
        ("", "/a"),
        ("LocalHost", "/a"),
        ("", "a"),
        ("h", ""),
        None,
    ]


def test_a_markdown_cell_keeps_its_row_whole():
    from orchestrator.core.markdown import cell

    # An axis value with a line break (a YAML block string) split the results row in two.
    assert cell("prompt: a|b\nsecond line\r\nthird") == "prompt: a\\|b second line third"


def test_reading_a_local_sweep_from_another_directory_says_where_its_output_base_is(tmp_path, monkeypatch):
    # From another directory every run read "Pending (NotCreated)", and golden update refused "not succeeded",
    # with nothing saying that the relative output_base was looked for here.
    path = write_sweep(tmp_path, output_base="runs/here")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "here").mkdir(parents=True)
    assert "output_base_missing" not in invoke("results", str(path)).stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for command in (["results", str(path)], ["status", str(path)]):
        out = invoke(*command)
        assert "warning[output_base_missing]" in out.stderr, out.output
        assert f"relative to the current directory, {elsewhere}" in out.stderr and "absolute path" in out.stderr
    # a file in the folder's place: said too (every run read NotCreated without a word; `sweep` refuses it)
    (elsewhere / "runs").mkdir()
    (elsewhere / "runs" / "here").write_text("not a folder")
    for command in (["results", str(path)], ["status", str(path)], ["cancel", str(path), "--yes"]):
        out = invoke(*command)
        said = " ".join(out.stderr.split())
        assert "warning[output_base_missing]" in said and "is a file, not a folder" in said, (command, out.output)


def test_a_local_sweep_read_from_a_copy_takes_its_statuses_from_the_copy(tmp_path):
    # The statuses came from the claim files of target.output_base (the originals, all exited 0): a run whose
    # copy says failed read Succeeded and could be ★ best.
    import shutil

    from orchestrator.backends.local import claims as local_claims

    path = write_sweep(tmp_path)
    result = expanded(path)
    finish_all(result)
    for run in result.runs:
        claim = local_claims.Claim(run.run_id, "quickstart", "t", 1, state="exited", exit_code=0)
        (Path(run.output_path) / local_claims.CLAIM_FILE).write_text(json.dumps(claim.to_json()))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "runs", copy)
    failed = result.points[3]  # the best KL
    summary = copy / failed.run_id / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "failed", "exit_code": 1}))
    assert json.loads(invoke("results", str(path), "-f", "json").stdout)["best"] == failed.run_id
    out = invoke("results", str(path), "-f", "json", "--output-base", str(copy))
    rows = {row["run_id"]: row for row in json.loads(out.stdout)["runs"]}
    assert rows[failed.run_id]["status"]["phase"] == "Failed" and json.loads(out.stdout)["best"] != failed.run_id
    assert "warning[statuses_from_outputs]" in out.stderr and "output_base_missing" not in out.stderr


def test_status_leaves_launch_advice_to_sweep(tmp_path):
    # Every `status` (each refresh of --watch's screen) and every `logs` printed the sweep's launch warnings again
    # (a mutable image tag, a local output base...), above the table it was asked for.
    path = write_sweep(tmp_path, target={"kind": "local", "output_base": str(tmp_path / "runs"), "tpu_type": "v5p-8"})
    assert "warning[tpu_type_ignored]" in invoke("plan", str(path)).stderr
    out = invoke("status", str(path))
    assert out.exit_code == 0 and "tpu_type_ignored" not in out.stderr and "quickstart" in out.stdout, out.output


@pytest.mark.parametrize(
    ("names", "prefix"),
    [
        (["loss.alpha.end", "loss.beta.start"], "loss."),
        (["loss.alpha.end"], "loss."),  # one axis: `alpha.end=0.3`, not `end=0.3` (α, β or T?)
        (["loss.temperature"], "loss."),
        (["student.attention.window.size"], "student.attention."),
        (["steps"], ""),
        (["loss.alpha.end", "seed"], "loss."),
        (["loss.alpha.end", "student.num_layers"], ""),
    ],
)
def test_labels_drop_the_shared_prefix_but_keep_what_was_swept(names, prefix):
    assert results._common_prefix(names) == prefix


def test_a_damaged_run_is_never_the_best_and_a_diverged_one_gets_no_delta(finished):
    """The best point's metrics.jsonl cut at its last record: it was still crowned, with an earlier step's values,
    and the markdown a reader pastes bore no trace. A diverged run's Δ read +219728201%."""
    best = table(finished).best
    log = Path(best.output_path) / "metrics.jsonl"
    log.write_text(log.read_text()[:-40])
    diverged = next(r for r in finished.points if r.run_id != best.run_id)
    write_outputs(diverged, status="diverged", steps=30)
    t = table(finished)
    rows = {r.run_id: r for r in t.rows}
    assert rows[best.run_id].damage and not rows[best.run_id].best
    assert t.best is not None and t.best.run_id not in (best.run_id, diverged.run_id)
    assert rows[diverged.run_id].delta_kl is None and rows[diverged.run_id].metrics[results.KL_T1] is not None
    text = results_format.markdown(t)
    assert f"Best point: **{t.best.label}**" in text and "Succeeded ⚠ damaged outputs" in text
    [shown] = [r for r in results_format.to_json(t)["runs"] if r["run_id"] == best.run_id]
    assert shown["damage"] == list(rows[best.run_id].damage) and not shown["best"]
    # why it diverged is said beside the table and in the CSV (only the JSON carried the message)
    message = rows[diverged.run_id].status.message
    assert message and f"why: {rows[diverged.run_id].name} Diverged" in text and message in text
    assert "message" in results_format.csv_text(t).splitlines()[0].split(",")
    import csv
    import io

    by_id = {r["run_id"]: r for r in csv.DictReader(io.StringIO(results_format.csv_text(t)))}
    assert "metrics.jsonl" in by_id[best.run_id]["damage"] and by_id[t.best.run_id]["damage"] == ""
    # a message that reads as rich markup is printed as it is (`[/data/x]` ended results and status with exit 70)
    summary = Path(diverged.output_path) / "summary.json"
    said = "missing file [/data/train.jsonl] and [bold]x[/bold]"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "message": said}))
    sweep_file = Path(finished.source.file)
    for command in ("results", "status"):
        out = invoke(command, str(sweep_file))
        assert out.exit_code == 0 and "[/data/train.jsonl]" in " ".join(out.stdout.split()), out.output
    # a terminal escape in it is written out, not sent to the reader's terminal (it coloured what followed)
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "message": "bad \x1b[31mred"}))
    for command in ("results", "status"):
        out = invoke(command, str(sweep_file))
        assert "\x1b" not in out.stdout and "\\x1b[31mred" in out.stdout, out.output


def test_with_seeds_the_best_is_the_configuration_with_the_lowest_mean(tmp_path):
    """With seeds, ★ crowned one lucky seed: here a configuration whose seeds reach 0.035 beats one whose seed 0
    reached 0.030 and seed 1 0.060. golden update already grouped seeds; results now does too."""
    result = expanded(write_sweep(tmp_path, seeds=[0, 1]))
    finish_all(result)
    points = [p for p in result.points if not p.is_baseline]

    def config(point):
        return tuple(sorted((k, str(v)) for k, v in point.axis_values.items() if k != "seed"))

    lucky, steady = sorted({config(p) for p in points})[:2]
    for point in points:
        kl = {lucky: 0.030 if point.seed == 0 else 0.060, steady: 0.035}.get(config(point), 0.090)
        write_outputs(point, kl_end=kl)
    t = table(result)
    best = t.best_rows
    assert len(best) == 2 and {r.seed for r in best} == {0, 1}
    assert {config(p) for p in points if p.run_id in {r.run_id for r in best}} == {steady}
    text = results_format.markdown(t)
    headline = text.split("Best point: ")[1].split("\n")[0]
    assert "(mean of 2 seeds: 0, 1)" in headline and "seed=" not in headline, headline
    assert results_format.to_json(t)["best_runs"] == [r.run_id for r in best]
    # One of the best configuration's seeds failed: a configuration whose seeds all succeeded is ranked first
    # (one surviving seed is a lucky seed), and a partial one's headline says how many of its seeds count.
    failed = next(p for p in points if config(p) == steady and p.seed == 1)
    write_outputs(failed, status="failed", steps=10)
    t = table(result)
    assert {config(p) for p in points if p.run_id in {r.run_id for r in t.best_rows}} == {lucky}
    for point in points:
        if config(point) != steady:
            write_outputs(point, status="failed", steps=10)
    t = table(result)
    headline = results_format.markdown(t).split("Best point: ")[1].split("\n")[0]
    assert "(mean of 1 of 2 seeds succeeded: 0)" in headline, headline


def test_a_run_without_metrics_says_no_source(tmp_path):
    # A queued point (its spec evaluates a held-out set) read "metrics_from": "train" before it had any metric.
    result = expanded(write_sweep(tmp_path))
    write_outputs(result.runs[0])
    t = table(result)
    runs = {r["run_id"]: r for r in results_format.to_json(t)["runs"]}
    assert runs[result.points[0].run_id]["metrics_from"] is None
    assert runs[result.runs[0].run_id]["metrics_from"] == "train"


def test_an_offline_points_top_k_kl_is_never_ranked_or_compared_with_a_whole_vocabulary_one(tmp_path):
    # An offline student's kl_div_T1 is over the teacher's top-k tokens and a tail bucket: always the lower. In a
    # sweep mixing online and offline points the offline one took ★ and "−49 % vs the baseline" while the two
    # students were equally good.
    from results_support import sweep_data

    overrides = {**sweep_data("unused")["overrides"], "loss.beta": 0.0}
    offline = {"offline_data_dir": [None, str(tmp_path / "cache")], "top_k": [None, 16]}
    result = expanded(write_sweep(tmp_path, overrides=overrides, axes={"loss.alpha.end": [0.7]}, zip=[offline]))
    finish_all(result)
    online_point, offline_point = [p for p in result.points if p.role == "point"]
    write_outputs(offline_point, kl_end=0.001)  # the lower number, over top-16 + tail
    t = table(result)
    rows = {r.run_id: r for r in t.rows}
    assert rows[offline_point.run_id].kl_over == "top-16+tail" and rows[online_point.run_id].kl_over == "vocabulary"
    assert t.best.run_id == online_point.run_id
    assert rows[offline_point.run_id].delta_kl is None and rows[online_point.run_id].delta_kl is not None
    text = results_format.legend(t)
    assert "kl_div_T1 of offline points (column `kl over`: top-16+tail)" in text
    assert "★ goes to a whole-vocabulary point when there is one" in text  # it said "ranked ... with the same kind"
    assert "kl over" in results_format.markdown(t)
    runs = json.loads(json.dumps(results_format.to_json(t)))["runs"]
    assert runs[2]["kl_div_T1_over"] == "top-16+tail" and runs[0]["kl_div_T1_over"] is None  # the teacher: no KL
    assert "top-16+tail" in results_format.csv_text(t)


def test_finished_runs_of_a_file_edited_since_are_named_when_none_of_its_points_ran(tmp_path):
    # An edit of the base spec changes every run id: status showed every point Pending (NotCreated), and the
    # finished runs of the file as it was were never named again.
    from orchestrator.backends.local import claims as local_claims

    path = write_sweep(tmp_path)
    result = expanded(path)
    finish_all(result)
    for run in result.runs:  # as the sweep's supervisor leaves them: claimed, then exited
        claim = local_claims.try_claim(run.output_path, run.run_id, "quickstart")
        assert local_claims.write_claim(run.output_path, dataclasses.replace(claim, state="exited", exit_code=0))
    shown = invoke("status", str(path))
    assert shown.exit_code == ExitCode.OK and "earlier_runs" not in shown.stderr
    from results_support import sweep_data

    edited = {**sweep_data("unused")["overrides"], "optimizer.learning_rate": 1e-3}  # every point's run id
    write_sweep(tmp_path, overrides=edited)
    edited = invoke("status", str(path))
    assert edited.exit_code == ExitCode.OK, edited.output
    said = " ".join(edited.stderr.split())
    assert "warning[earlier_runs]" in said and "of sweep quickstart" in said and "ran for points" in said, said


def test_results_json_is_strict_json_when_a_summary_holds_an_infinite_time(tmp_path):
    """A summary.json whose wall_time_sec is infinite (json reads `Infinity`) came out as `Infinity`, which strict
    JSON readers (jq) refuse; every other number field already became a string."""
    import dataclasses

    result = expanded(write_sweep(tmp_path))
    finish_all(result)
    t = table(result)
    t = dataclasses.replace(t, rows=tuple(dataclasses.replace(r, wall_time_sec=math.inf) for r in t.rows))
    text = json.dumps(results_format.to_json(t), allow_nan=False)
    assert {r["wall_time_sec"] for r in json.loads(text)["runs"]} == {"inf"}


def test_outputs_that_cannot_be_read_are_said_not_read_as_never_started(finished):
    """A succeeded run whose files could not be read showed "Pending (NotCreated): not submitted yet" in status,
    results and regress (which then advised `distillctl sweep`). Here a folder is where one run's summary.json goes,
    and another's metrics.jsonl (permissions do the same for a user other than root). A file where a run's whole
    folder goes is no run at all: NotCreated, and `sweep` fails it at once naming the path (test_local_faults)."""
    import shutil

    first, second, third = finished.points[0], finished.points[1], finished.points[2]
    for point, name in ((first, "metrics.jsonl"), (second, "summary.json")):
        (Path(point.output_path) / name).unlink()
        (Path(point.output_path) / name).mkdir()
    shutil.rmtree(third.output_path)
    Path(third.output_path).write_text("not a folder")
    rows = {r.run_id: r for r in table(finished).rows}
    row = rows[second.run_id]
    assert (row.status.phase, row.status.reason) == ("Pending", "NotObserved"), row.status
    assert "cannot read" in row.status.message and "summary.json: Is a directory" in row.status.message, row.status
    # its verdict readable, its log not: Succeeded, and damaged (never ranked, its metrics are not there)
    assert (
        rows[first.run_id].status.phase == "Succeeded"
        and "metrics.jsonl: Is a directory" in rows[first.run_id].damage[0]
    )
    assert rows[first.run_id].damage and rows[second.run_id].damage and not (rows[first.run_id].best or row.best)
    assert rows[third.run_id].status.reason == "NotObserved" and not rows[third.run_id].damage  # results: no outputs
    out = invoke("status", str(finished.source.file))
    said = " ".join(out.stdout.split())
    assert out.exit_code == 0 and said.count("NotObserved") == 1 and said.count("NotCreated") == 1, out.output
    assert "summary.json: Is a directory" in said, out.stdout  # the table's why column says which path
    # `sweep` does not submit them as never created (a succeeded run then read Failed (OutputNotWritable))
    launched = invoke("sweep", str(finished.source.file), "--dry-run=server")
    said = " ".join(launched.output.split())
    assert launched.exit_code == 0 and said.count("would create") == 1, launched.output
    assert said.count("submitted once its outputs can be read") == 1, launched.output


def test_status_says_what_results_says_of_damaged_outputs(finished):
    """A succeeded run's metrics.jsonl cut at its last record: `results` warned (damaged_metrics) while `status`
    showed the earlier step's kl_div_T1 without a word; unreadable files get the permissions hint."""
    import shutil

    cut, moved = finished.points[0], finished.points[1]
    log = Path(cut.output_path) / "metrics.jsonl"
    log.write_text(log.read_text()[:-40])
    (Path(moved.output_path) / "summary.json").unlink()
    (Path(moved.output_path) / "summary.json").mkdir()
    out = invoke("status", str(finished.source.file))
    said = " ".join(out.stderr.split())
    assert out.exit_code == 0 and said.count("warning[damaged_metrics]") == 2, out.output
    assert "the files were edited, cut or replaced" in said and "check the permissions" in said
    # `logs` of a run whose folder is a file says so (it said "has no log yet: it has not started")
    shutil.rmtree(moved.output_path)
    Path(moved.output_path).write_text("")
    logs = invoke("logs", str(finished.source.file), moved.key)
    assert logs.exit_code == ExitCode.USAGE and "a file is where the run's folder goes" in logs.stderr, logs.output


def test_the_same_warning_about_two_runs_is_said_for_each(capsys):
    # warn_once keyed on the words alone: a second run whose log was cut alike went unsaid in the same command
    from distillspec.problems import Problem
    from orchestrator.cli import console

    for folder in ("runs/a", "runs/b", "runs/a"):
        console.warn_once(Problem((), "damaged_metrics", "the same words", "h", severity="warning", file=folder))
    said = capsys.readouterr().err
    assert said.count("the same words") == 2 and "runs/a" in said and "runs/b" in said, said
