"""Aggregation from (sum, count) pairs, golden files and regress outcomes."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest

from orchestrator import aggregate
from orchestrator.exit_codes import ExitCode
from orchestrator.golden import Approx, Band, Deterministic, GoldenFile, GoldenPoint, derive
from orchestrator.regress import Observed, evaluate, junit_xml, markdown
from orchestrator.run_outputs import LogLine, parse_log_line, read_run_outputs


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


def test_partial_and_garbage_lines_are_skipped(tmp_path):
    good = {"step": 10, "time": 1.0, "tokens": 64, "tokens_per_sec": 5.0, "metrics": {"distill/kl_div_T1": {"sum": 3.0, "count": 2.0}}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(good) + "\nnot json\n" + json.dumps(good)[:20])
    (tmp_path / "summary.json").write_text('{"status": "runn')  # cut off mid-write
    outputs = read_run_outputs(str(tmp_path))
    assert [r.step for r in outputs.log] == [10] and outputs.log[0].metrics["distill/kl_div_T1"] == (3.0, 2.0)
    assert outputs.summary is None and outputs.exists


def test_missing_directory_reads_as_empty(tmp_path):
    outputs = read_run_outputs(str(tmp_path / "never-ran"))
    assert not outputs.exists and outputs.last_step is None
    assert parse_log_line("") is None


def golden() -> GoldenFile:
    return GoldenFile(sweep="s", points=[
        GoldenPoint(run_id="a", label="alpha=0.3", checks={"distill/kl_div_T1": Approx(value=1.0, rtol=0.1),
                                                          "distill/hard_loss": Band(low=2.0, high=3.0)}),
        GoldenPoint(run_id="b", label="baseline", checks={"distill/teacher_loss": Deterministic(value=1.25)}),
    ])  # fmt: skip


def test_regress_passes():
    observed = {"a": Observed("a", "alpha=0.3", "Succeeded", "", {"distill/kl_div_T1": 1.05, "distill/hard_loss": 2.5}),
                "b": Observed("b", "baseline", "Succeeded", "", {"distill/teacher_loss": 1.25})}  # fmt: skip
    report = evaluate(golden(), observed)
    assert report.exit_code == ExitCode.OK and report.count("pass") == 3


def test_regress_metric_regression_exits_1():
    observed = {"a": Observed("a", "", "Succeeded", "", {"distill/kl_div_T1": 1.2, "distill/hard_loss": 3.5}),
                "b": Observed("b", "", "Succeeded", "", {"distill/teacher_loss": 1.2500001})}  # fmt: skip
    report = evaluate(golden(), observed)
    assert report.exit_code == ExitCode.FAILED and report.count("regression") == 3


def test_regress_infra_failure_exits_2():
    observed = {"a": Observed("a", "", "Failed", "PodFailurePolicy", {})}
    report = evaluate(golden(), observed)
    assert report.exit_code == 2
    messages = [o.message for o in report.outcomes]
    assert any("Failed (PodFailurePolicy)" in m for m in messages) and any("not in the sweep" in m for m in messages)


def test_junit_and_markdown():
    observed = {"a": Observed("a", "alpha=0.3", "Succeeded", "", {"distill/kl_div_T1": 5.0, "distill/hard_loss": 2.5}),
                "b": Observed("b", "baseline", "Running", "", {})}  # fmt: skip
    report = evaluate(golden(), observed)
    root = ET.fromstring(junit_xml(report).split("?>", 1)[1])
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    assert root.find(".//failure").get("type") == "MetricRegression"
    text = markdown(report)
    assert "| ❌ | alpha=0.3 | `distill/kl_div_T1` | 5 |" in text and "⚠️" in text and "infrastructure failure" in text


def test_golden_derive_bands_from_seeds_and_approx_otherwise():
    observed = [("r1", "a s0", "a", {"distill/kl_div_T1": 1.0}), ("r2", "a s1", "a", {"distill/kl_div_T1": 1.2}),
                ("r3", "b", "b", {"distill/kl_div_T1": 2.0, "distill/hard_loss": None})]  # fmt: skip
    g = derive("s", 5, observed)
    band = g.points[0].checks["distill/kl_div_T1"]
    assert isinstance(band, Band) and band.low < 1.0 and band.high > 1.2
    assert g.points[1].checks["distill/kl_div_T1"] == band
    assert g.points[2].checks == {"distill/kl_div_T1": Approx(value=2.0, rtol=0.1)}
    assert GoldenFile.model_validate(g.model_dump()) == g
