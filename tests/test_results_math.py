"""Aggregation from (sum, count) pairs, golden files and regress outcomes."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest

from orchestrator.core import aggregate
from orchestrator.core.golden import Approx, Band, Deterministic, Finished, GoldenFile, GoldenPoint, derive
from orchestrator.core.regress import Observed, evaluate, junit_xml, markdown
from orchestrator.exit_codes import ExitCode
from orchestrator.outputs import LogLine, parse_log_line, read_run_outputs


def line(step, kl=None, hard=None, tokens=None, time=None, rate=None):
    metrics = {}
    if kl is not None:
        metrics["distill/kl_div_T1"] = kl
    if hard is not None:
        metrics["distill/hard_loss"] = hard
    return LogLine(step, time, tokens, rate, metrics)


def test_window_mean_is_token_weighted_not_a_mean_of_means():
    # Two records: mean 1.0 over 10 tokens, mean 3.0 over 30 tokens -> 2.5, not 2.0.
    log = [line(1, kl=(10.0, 10.0)), line(2, kl=(90.0, 30.0))]
    assert aggregate.weighted_mean(log, "distill/kl_div_T1") == pytest.approx(2.5)
    assert aggregate.metric(aggregate.last(log, 1), "distill/kl_div_T1") == pytest.approx(3.0)
    assert aggregate.last(log, 0) == log


def test_perplexity_is_exp_of_window_hard_loss():
    log = [line(1, hard=(2.0, 2.0)), line(2, hard=(6.0, 2.0))]
    assert aggregate.metric(log, "distill/student_perplexity") == pytest.approx(math.exp(2.0))


def test_missing_metric_and_zero_counts():
    log = [line(1, kl=(0.0, 0.0))]
    assert aggregate.metric(log, "distill/kl_div_T1") is None
    assert aggregate.metric(log, "distill/hard_loss") is None


def test_throughput_from_token_and_time_deltas():
    log = [line(1, tokens=100, time=10.0, rate=1.0), line(2, tokens=300, time=12.0), line(3, tokens=500, time=14.0)]
    assert aggregate.tokens_per_sec(log, 2) == pytest.approx(100.0)  # 400 tokens in 4 s
    assert aggregate.tokens_per_sec(log[:1], 1) == pytest.approx(1.0)  # no earlier record: the logged rate


def test_a_window_over_every_record_is_the_whole_runs_throughput():
    # The first record's tokens (since the run began, at its logged rate) were left out: a 3-record run read 11,492
    # tok/s where its summary said 8,859.
    log = [line(1, tokens=100, time=10.0, rate=50.0), line(2, tokens=300, time=12.0, rate=100.0)]
    assert aggregate.tokens_per_sec(log, 0) == pytest.approx(300 / 4.0)  # 100 tokens in 2 s, 200 in 2 s
    assert aggregate.tokens_per_sec(log, 1) == pytest.approx(100.0)  # the last record alone


def test_throughput_across_a_resume_leaves_out_the_downtime():
    # Killed after step 2 and retried an hour later: the wall clock between the records held the hour (733 tok/s
    # shown for a run that trained at ~20,000); each record's own rate is the time the trainer took.
    log = [
        line(1, tokens=1000, time=0.0, rate=100.0),
        line(2, tokens=2000, time=10.0, rate=100.0),
        line(3, tokens=3000, time=3610.0, rate=200.0),  # 1000 tokens in 5 s of training, after the downtime
    ]
    assert aggregate.tokens_per_sec(log, 2) == pytest.approx(2000 / 15.0)


def test_partial_and_garbage_lines_are_skipped(tmp_path):
    good = {
        "step": 10,
        "time": 1.0,
        "tokens": 64,
        "tokens_per_sec": 5.0,
        "metrics": {"distill/kl_div_T1": {"sum": 3.0, "count": 2.0}},
    }
    (tmp_path / "metrics.jsonl").write_text(json.dumps(good) + "\nnot json\n" + json.dumps(good)[:20])
    (tmp_path / "summary.json").write_text('{"status": "runn')  # cut off mid-write
    outputs = read_run_outputs(str(tmp_path))
    assert [r.step for r in outputs.log] == [10] and outputs.log[0].metrics["distill/kl_div_T1"] == (3.0, 2.0)
    assert outputs.summary is None and outputs.exists
    assert outputs.skipped_lines == 1  # "not json"; the cut-off last line is a write in progress


def test_a_byte_that_is_not_utf8_spoils_its_line_not_the_file(tmp_path):
    good = json.dumps({"step": 10, "metrics": {"distill/kl_div_T1": {"sum": 3.0, "count": 2.0}}})
    later = good.replace('"step": 10', '"step": 20')
    (tmp_path / "metrics.jsonl").write_bytes(good.encode() + b"\n\xff\xfe\n" + later.encode() + b"\n")
    outputs = read_run_outputs(str(tmp_path))
    assert [r.step for r in outputs.log] == [10, 20] and outputs.skipped_lines == 1


def _run_folder(tmp_path, steps: list[int], summary: dict | str | None, tail: str = "", mode: str = "distill"):
    """A run folder: one record per step in `steps`, then `tail` (no newline: a cut-off line), and summary.json."""
    records = [{"step": step, "metrics": {"distill/kl_div_T1": {"sum": 3.0, "count": 2.0}}} for step in steps]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    if summary is not None:
        (tmp_path / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    (tmp_path / "spec.json").write_text(json.dumps({"mode": mode}))
    return read_run_outputs(str(tmp_path))


@pytest.mark.parametrize(
    ("steps", "summary", "tail", "mode", "said"),
    [
        # A succeeded run's log ends at its last step: values from an earlier one would be shown as its result.
        (
            [10, 20],
            {"status": "succeeded", "step": 20},
            '{"step": 30, "metr',
            "distill",
            "cut off, though the run has ended (succeeded)",
        ),
        (
            [10],
            {"status": "succeeded", "step": 20},
            "",
            "distill",
            "ends at step 10, though summary.json says the run succeeded at step 20",
        ),
        ([], {"status": "succeeded", "step": 20}, "", "distill", "holds no records, though summary.json says"),
        ([10, 20, 10], {"status": "succeeded", "step": 20}, "", "distill", "ends at step 10"),  # a stale line appended
        ([10], '{"status": "succ', "", "distill", "summary.json is not a JSON object"),
        ([10], {"status": "failed", "step": 15}, '{"st', "distill", "cut off, though the run has ended (failed)"),
        # A JSON object that is not the trainer's (a hand edit): a run with records read "no outputs", or Succeeded.
        ([10], {"status": "weird", "step": 10}, "", "distill", "status 'weird' is none of the trainer's"),
        ([10], {"status": "failed", "step": "forty"}, "", "distill", "summary.json's step 'forty' is not a count"),
        ([10], {"status": "failed", "step": -5}, "", "distill", "summary.json's step -5 is not a count"),
        ([10], {"step": 10}, "", "distill", "summary.json has no status"),
        ([10], {"status": "failed", "step": 10, "wall_time_sec": "fast"}, "", "distill", "wall_time_sec 'fast' is"),
        # Intact: a write in progress, a failed run that logged every 10 steps, a logits cache writer (no log).
        ([], None, "", "distill", None),
        ([10], {"status": "running", "step": 10}, '{"st', "distill", None),
        # No summary.json beside records: the trainer writes it before its first (deleted, or a copy cut short).
        ([10], None, '{"st', "distill", "holds records but there is no summary.json"),
        ([10], {"status": "failed", "step": 15}, "", "distill", None),
        ([], {"status": "succeeded", "step": 20}, "", "teacher_logits", None),
        ([10, 20], {"status": "succeeded", "step": 20}, "", "distill", None),
    ],
)
def test_outputs_that_disagree_with_themselves_are_damage(tmp_path, steps, summary, tail, mode, said):
    damage = _run_folder(tmp_path, steps, summary, tail, mode).damage
    if said is None:
        assert damage == ()
    else:
        assert len(damage) == 1 and said in damage[0], damage


def test_missing_directory_reads_as_empty(tmp_path):
    outputs = read_run_outputs(str(tmp_path / "never-ran"))
    assert not outputs.exists and outputs.last_step is None
    assert parse_log_line("") is None


def golden() -> GoldenFile:
    return GoldenFile(
        sweep="s",
        points=[
            GoldenPoint(
                run_id="a",
                label="alpha=0.3",
                checks={"distill/kl_div_T1": Approx(value=1.0, rtol=0.1), "distill/hard_loss": Band(low=2.0, high=3.0)},
            ),
            GoldenPoint(run_id="b", label="baseline", checks={"distill/teacher_loss": Deterministic(value=1.25)}),
        ],
    )


def test_regress_passes():
    observed = {
        "a": Observed("a", "alpha=0.3", "Succeeded", "", {"distill/kl_div_T1": 1.05, "distill/hard_loss": 2.5}),
        "b": Observed("b", "baseline", "Succeeded", "", {"distill/teacher_loss": 1.25}),
    }
    report = evaluate(golden(), observed)
    assert report.exit_code == ExitCode.OK and report.count("pass") == 3


def test_regress_metric_regression_exits_1():
    observed = {
        "a": Observed("a", "", "Succeeded", "", {"distill/kl_div_T1": 1.2, "distill/hard_loss": 3.5}),
        "b": Observed("b", "", "Succeeded", "", {"distill/teacher_loss": 1.2500001}),
    }
    report = evaluate(golden(), observed)
    assert report.exit_code == ExitCode.FAILED and report.count("regression") == 3


def test_regress_infra_failure_exits_2():
    observed = {"a": Observed("a", "", "Failed", "PodFailurePolicy", {})}
    report = evaluate(golden(), observed)
    assert report.exit_code == 2
    messages = [o.message for o in report.outcomes]
    assert any("Failed (PodFailurePolicy)" in m for m in messages) and any("not in the sweep" in m for m in messages)


def test_junit_and_markdown():
    observed = {
        "a": Observed("a", "alpha=0.3", "Succeeded", "", {"distill/kl_div_T1": 5.0, "distill/hard_loss": 2.5}),
        "b": Observed("b", "baseline", "Running", "", {}),
    }
    report = evaluate(golden(), observed)
    root = ET.fromstring(junit_xml(report).split("?>", 1)[1])
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    assert root.find(".//failure").get("type") == "MetricRegression"
    text = markdown(report)
    assert "| ❌ | alpha=0.3 | `distill/kl_div_T1` | 5.0 |" in text and "⚠️" in text and "infrastructure failure" in text


def test_golden_derive_bands_from_seeds_and_approx_otherwise():
    observed = [
        Finished("r1", "a s0", "a", {"distill/kl_div_T1": 1.0}),
        Finished("r2", "a s1", "a", {"distill/kl_div_T1": 1.2}),
        Finished("r3", "b", "b", {"distill/kl_div_T1": 2.0, "distill/hard_loss": None}),
    ]
    g = derive("s", 5, observed)
    band = g.points[0].checks["distill/kl_div_T1"]
    assert isinstance(band, Band) and band.low < 1.0 and band.high > 1.2
    assert g.points[1].checks["distill/kl_div_T1"] == band
    assert g.points[2].checks == {"distill/kl_div_T1": Approx(value=2.0, rtol=0.1)}
    assert GoldenFile.model_validate(g.model_dump()) == g


# A line as the trainer branch's `trainer/metrics_io.py` writes it (from a real tiny distillation run, trimmed).
TRAINER_LINE = (
    '{"step": 10, "time": 1795924241.338, "tokens": 5120, "tokens_per_sec": 3178.0720210620093, '
    '"step_time_sec": 0.1611039638519287, "learning_rate": 0.0019814055413007736, "metrics": {'
    '"distill/alpha": {"sum": 4255.20947265625, "count": 5120.0, "value": 0.8310956001281739}, '
    '"distill/hard_loss": {"sum": 26849.5078125, "count": 5120.0, "value": 5.244044494628906}, '
    '"distill/kl_div_T1": {"sum": 13337.4736328125, "count": 5120.0, "value": 2.6049753189086915}, '
    '"distill/out_proj_feature_loss": {"sum": 4687.12109375, "count": 10240.0, "value": 0.45772666931152345}, '
    '"distill/student_perplexity": {"sum": 26849.5078125, "count": 5120.0, "value": 189.4347228307814}, '
    '"distill/teacher_loss": {"sum": 11967.5771484375, "count": 5120.0, "value": 2.337417411804199}, '
    '"distill/teacher_perplexity": {"sum": 11967.5771484375, "count": 5120.0, "value": 10.354460694130594}, '
    '"distill/top1_agreement": {"sum": 696.0, "count": 5120.0, "value": null}}}'
)


def test_the_trainers_real_line_format():
    record = parse_log_line(TRAINER_LINE)
    assert record is not None and record.step == 10 and record.tokens == 5120
    assert record.step_time_sec == pytest.approx(0.1611, rel=1e-3) and record.learning_rate == pytest.approx(
        0.00198, rel=1e-3
    )
    assert record.metrics["distill/kl_div_T1"] == (13337.4736328125, 5120.0)
    assert record.metrics["distill/top1_agreement"] == (696.0, 5120.0)  # a null `value` is ignored: pairs are read
    # Each logged `value` is what the pairs give back.
    for name, expected in (
        ("distill/kl_div_T1", 2.6049753189086915),
        ("distill/student_perplexity", 189.4347228307814),
        ("distill/teacher_perplexity", 10.354460694130594),
        ("distill/out_proj_feature_loss", 0.45772666931152345),
    ):
        assert aggregate.metric([record], name) == pytest.approx(expected, rel=1e-9)


def test_teacher_perplexity_is_exp_of_its_own_cross_entropy():
    log = [LogLine(1, None, None, None, {"distill/teacher_loss": (2.0, 1.0), "distill/hard_loss": (5.0, 1.0)})]
    assert aggregate.metric(log, "distill/teacher_perplexity") == pytest.approx(math.exp(2.0))
    assert aggregate.metric(log, "distill/student_perplexity") == pytest.approx(math.exp(5.0))
    huge = [LogLine(1, None, None, None, {"distill/hard_loss": (800.0, 1.0)})]
    assert aggregate.metric(huge, "distill/student_perplexity") == math.inf


def test_a_restarted_attempt_replaces_the_steps_it_logged_again(tmp_path):
    def rec(step, kl):
        return json.dumps(
            {"step": step, "time": float(step), "metrics": {"distill/kl_div_T1": {"sum": kl, "count": 1.0}}}
        )

    # Attempt 1 logged 10..30, was killed, attempt 2 resumed from the checkpoint at 20 and logged 30, 40 again.
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join([rec(10, 1), rec(20, 2), rec(30, 9), rec(30, 3), rec(40, 4)]) + "\n"
    )
    outputs = read_run_outputs(str(tmp_path))
    assert [(r.step, r.metrics["distill/kl_div_T1"][0]) for r in outputs.log] == [(10, 1), (20, 2), (30, 3), (40, 4)]


def test_lines_with_bad_numbers_are_skipped():
    assert parse_log_line('{"step": "ten", "metrics": {}}') is None
    assert parse_log_line('{"step": true, "metrics": {}}') is None
    record = parse_log_line('{"step": 5, "metrics": {"a": {"sum": "x", "count": 1}, "b": {"sum": 1, "count": 2}}}')
    assert record is not None and record.metrics == {"b": (1.0, 2.0)}
    # A pair over no tokens, or a negative count, says nothing (it read as nan or inf in the table).
    record = parse_log_line('{"step": 5, "metrics": {"a": {"sum": 1, "count": 0}, "b": {"sum": 1, "count": -5}}}')
    assert record is not None and record.metrics == {}


def test_last_step_is_the_furthest_either_file_reports(tmp_path):
    line = {"step": 130, "time": 1.0, "metrics": {}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running", "step": 100, "total_steps": 200}))
    outputs = read_run_outputs(str(tmp_path))
    assert outputs.last_step == 130 and outputs.total_steps == 200  # summary.json is rewritten only at checkpoints
    (tmp_path / "metrics.jsonl").write_text("")
    assert read_run_outputs(str(tmp_path)).last_step == 100


def test_golden_derive_never_fails_its_own_runs():
    value = 0.123456789123
    exact = derive("s", 5, [Finished("r", "r", "r", {"distill/kl_div_T1": value})], rtol=0.0)
    assert exact.points[0].checks["distill/kl_div_T1"] == Deterministic(value=value)
    seeds = [Finished(f"r{i}", "", "g", {"distill/kl_div_T1": v}) for i, v in enumerate((1.234567e-7, 1.234569e-7))]
    band = derive("s", 5, seeds, rtol=0.0).points[0].checks["distill/kl_div_T1"]
    assert all(band.passes(v) for v in (1.234567e-7, 1.234569e-7)) and band.low < band.high


def test_golden_values_at_zero_get_an_absolute_tolerance():
    # A top1_agreement of 0 was written `approx, value: 0.0, atol: 0.0` (or a band from 0 to 0): only an exact 0
    # passed, and one agreeing token on another CPU failed the gate.
    agree = "distill/top1_agreement"
    lone = derive("s", 5, [Finished("r", "r", "r", {agree: 0.0, "distill/kl_div_T1": 2.5})])
    check = lone.points[0].checks[agree]
    assert check.atol == pytest.approx(0.001) and check.passes(0.0005) and not check.passes(0.01)
    assert lone.points[0].checks["distill/kl_div_T1"].atol == 0.0  # a value of its own size keeps rtol alone
    seeds = [Finished(f"r{i}", f"r{i}", "g", {agree: 0.0}) for i in range(3)]
    band = derive("s", 5, seeds).points[0].checks[agree]
    assert band.low < 0 < band.high and band.passes(0.0005)
