"""Comparing a finished sweep with its golden file: per-check outcomes, JUnit XML and a markdown summary.

An outcome is a `pass`, a `regression` (the metric is off) or `infra` (the point failed, never ran, or did not log
the metric): CI must tell "the model got worse" from "the run did not happen". The exit code says which, in this
order: 3 when waiting for the sweep timed out (points were still running), 2 for any infrastructure problem, 1 for
any regression, 0 when every check passed.
"""

from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Literal

from orchestrator.core.aggregate import is_eval
from orchestrator.core.golden import GoldenFile
from orchestrator.core.markdown import cell as md_cell
from orchestrator.core.run_status import AWAITS_SUBMISSION, TERMINAL
from orchestrator.exit_codes import INFRA_FAILURE, ExitCode

Kind = Literal["pass", "regression", "infra"]


@dataclasses.dataclass(frozen=True)
class Observed:
    """What a point did: its phase (`Succeeded`, `Failed`, ...) and its aggregated metrics."""

    run_id: str
    label: str
    phase: str
    reason: str
    metrics: Mapping[str, float | None]
    damage: tuple[str, ...] = ()  # how its files disagree with themselves (`RunOutputs.damage`): not judged on them
    message: str = ""  # the status's own words (a failed trainer's reason), said with the phase

    @property
    def awaits_submission(self) -> bool:
        return self.phase == "Pending" and self.reason in AWAITS_SUBMISSION


@dataclasses.dataclass(frozen=True)
class Outcome:
    run_id: str
    label: str
    metric: str
    kind: Kind
    expected: str
    observed: float | None
    message: str
    exact: bool = False  # a deterministic check: the observed value is shown in full (6 digits could equal it)

    @property
    def shown(self) -> str:
        return "—" if self.observed is None else _number(self.observed, self.exact)


def _number(value: float, exact: bool) -> str:
    return repr(value) if exact else f"{value:.6g}"


@dataclasses.dataclass(frozen=True)
class RegressReport:
    sweep: str
    outcomes: tuple[Outcome, ...]
    timed_out: bool = False  # waited for the sweep and some point was still not finished at the deadline
    unchecked: tuple[str, ...] = ()  # labels of the sweep's runs the golden file has no checks for
    # Labels of points the sweep's own early-stopping rule stopped: what the sweep asked for (it counts as
    # succeeded), not an infrastructure failure; their metrics stop short, so they are not checked.
    stopped: tuple[str, ...] = ()
    window: int | None = None

    def count(self, kind: Kind) -> int:
        return sum(o.kind == kind for o in self.outcomes)

    @property
    def exit_code(self) -> ExitCode:
        if self.timed_out:
            return ExitCode.TIMEOUT
        if self.count("infra"):
            return INFRA_FAILURE
        return ExitCode.FAILED if self.count("regression") else ExitCode.OK

    @property
    def verdict(self) -> str:
        return {ExitCode.OK: "passed", ExitCode.FAILED: "regressed", ExitCode.TIMEOUT: "timed out"}.get(
            self.exit_code, "infrastructure failure"
        )


def evaluate(golden: GoldenFile, observed: Mapping[str, Observed], *, timed_out: bool = False) -> RegressReport:
    """Every check of `golden` against what the points did. `timed_out`: the caller stopped waiting for
    points that had not finished (they are reported as such, and the exit code is TIMEOUT)."""
    outcomes: list[Outcome] = []
    stopped: list[str] = []
    for point in golden.points:
        if not point.checks:
            continue  # `checks: {}`: listed as not checked, not silently dropped from the report
        seen = observed.get(point.run_id)
        label = (seen.label if seen else "") or point.label  # the sweep's own words, not a stale file's
        if seen is not None and seen.phase == "Stopped":
            stopped.append((label or point.run_id) + (f" ({seen.reason})" if seen.reason else ""))
            continue
        if seen is None:
            outcomes.append(
                Outcome(
                    point.run_id,
                    label,
                    "*",
                    "infra",
                    "a finished point",
                    None,
                    "this point is not in the sweep (its spec changed?); run `distillctl golden "
                    "update` if the change is intended",
                )
            )
            continue
        if seen.phase != "Succeeded":
            why = f"{seen.phase}" + (f" ({seen.reason})" if seen.reason else "")
            message = f"the point is {why}" + (f": {seen.message}" if seen.message else "")
            if seen.awaits_submission:
                message += ": nothing starts it until `distillctl sweep` submits it"
            if timed_out and seen.phase not in TERMINAL:
                message = f"the point was still {why} when the wait timed out"
            outcomes.append(Outcome(point.run_id, label, "*", "infra", "Succeeded", None, message))
            continue
        if seen.damage:  # its values would be another step's: a false regression (or pass) either way
            message = f"its outputs are damaged: {'; '.join(seen.damage)}"
            outcomes.append(Outcome(point.run_id, label, "*", "infra", "intact outputs", None, message))
            continue
        for name, check in point.checks.items():
            value = seen.metrics.get(name)
            if value is None:
                outcomes.append(
                    Outcome(point.run_id, label, name, "infra", check.describe(), value, f"{name} was not logged")
                )
            elif not math.isfinite(value):  # what the code under test computed: a regression, not CI's trouble
                outcomes.append(
                    Outcome(
                        point.run_id,
                        label,
                        name,
                        "regression",
                        check.describe(precise=True),
                        value,
                        f"{name} is {value}, expected {check.describe(precise=True)}",
                    )
                )
            elif check.passes(value):
                outcomes.append(Outcome(point.run_id, label, name, "pass", check.describe(), value, ""))
            else:
                outcomes.append(
                    Outcome(
                        point.run_id,
                        label,
                        name,
                        "regression",
                        check.describe(precise=True),
                        value,
                        f"{name} = {_number(value, True)}, expected {check.describe(precise=True)}"
                        + _better_note(name, check, value),
                        True,  # every digit: rounded, a failed value could read as the bound it passed
                    )
                )
    checked = {point.run_id for point in golden.points if point.checks}
    # A point the golden file has no values for is not checked; one that has not run says so (a grid that grew, its
    # new points never launched, passed with them listed as if they had).
    unchecked = tuple(
        (seen.label or run_id)
        + ("" if seen.phase == "Succeeded" else f" — {seen.phase}" + (f" ({seen.reason})" if seen.reason else ""))
        for run_id, seen in observed.items()
        if run_id not in checked
    )
    return RegressReport(golden.sweep, tuple(outcomes), timed_out, unchecked, tuple(stopped), golden.window)


# Metrics where higher is better (the others, losses, KL and perplexity, are better lower).
_HIGHER_IS_BETTER = ("agreement", "accuracy")


def _better_note(name: str, check, value: float) -> str:
    """Said of a value outside its check on the better side: the check is two-sided (a change of behaviour either
    way), and "regressed" alone read as "got worse"."""
    higher = any(word in name for word in _HIGHER_IS_BETTER)
    center = getattr(check, "value", None)
    if center is None:  # a band: better is past the bound on the good side
        bound = check.high if higher else check.low
        better = bound is not None and (value > bound if higher else value < bound)
    else:
        better = value > center if higher else value < center
    if not better:
        return ""
    return (
        f" — {_BETTER}, which checks both ways: if the change is intended, write it again with "
        "`distillctl golden update`"
    )


_BETTER = "better than the golden file"


def junit_xml(report: RegressReport) -> str:
    """JUnit XML: one testcase per (point, metric); regressions are failures, infrastructure problems errors."""
    suite = ET.Element(
        "testsuite",
        name=f"distillctl.{report.sweep}",
        tests=str(len(report.outcomes)),
        failures=str(report.count("regression")),
        errors=str(report.count("infra")),
        skipped=str(len(report.unchecked) + len(report.stopped)),
    )
    for o in report.outcomes:
        case = ET.SubElement(
            suite, "testcase", classname=f"{report.sweep}.{o.run_id}", name=f"{o.label or o.run_id}: {o.metric}"
        )
        if o.kind == "regression":
            ET.SubElement(case, "failure", message=o.message, type="MetricRegression").text = o.message
        elif o.kind == "infra":
            ET.SubElement(case, "error", message=o.message, type="InfrastructureFailure").text = o.message
        elif o.observed is not None:
            ET.SubElement(case, "system-out").text = f"{o.metric} = {o.shown}, expected {o.expected}"
    for label in report.unchecked:
        case = ET.SubElement(suite, "testcase", classname=f"{report.sweep}.unchecked", name=label)
        ET.SubElement(case, "skipped", message="the golden file has no checks for this run")
    for label in report.stopped:
        case = ET.SubElement(suite, "testcase", classname=f"{report.sweep}.stopped", name=label)
        ET.SubElement(case, "skipped", message="stopped by the sweep's early-stopping rule: not checked")
    suite.set("tests", str(len(report.outcomes) + len(report.unchecked) + len(report.stopped)))
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


_ICON = {"pass": "✅", "regression": "❌", "infra": "⚠️"}


def markdown(report: RegressReport) -> str:
    """A pull-request comment: the verdict, the checks that did not pass, then every check folded away."""
    passed, regressed, infra = report.count("pass"), report.count("regression"), report.count("infra")
    icon = {ExitCode.OK: "✅", ExitCode.FAILED: "❌"}.get(report.exit_code, "⚠️")
    window = (
        ""
        if report.window is None
        else (
            f" Values: token-weighted mean over the last {report.window} log records."
            if report.window
            else " Values: token-weighted mean over every log record."
        )
    )
    if any(is_eval(o.metric) for o in report.outcomes):
        window += " eval/* metrics: each run's last evaluation on its held-out set."
        if all(is_eval(o.metric) for o in report.outcomes if o.metric != "*"):
            window = " Values: eval/* metrics, each run's last evaluation on its held-out set."
    lines = [
        f"### {icon} distillctl regress `{report.sweep}`: {report.verdict} (exit {int(report.exit_code)})",
        "",
        f"{passed} passed, {regressed} regressed, {infra} infrastructure problem(s).{window}",
        "",
    ]
    problems = [o for o in report.outcomes if o.kind != "pass"]
    if problems:
        lines += _table(problems) + [""]
    if report.outcomes:
        lines += [f"<details><summary>All {len(report.outcomes)} checks</summary>", ""] + _table(report.outcomes)
        lines += ["", "</details>"]
    if report.unchecked:
        lines += ["", f"Not checked (no golden values): {md_cell('; '.join(report.unchecked))}."]
        if any(" — " in label for label in report.unchecked):
            lines += [
                "",
                "Points the golden file has no values for have not all run: `distillctl golden update` adds "
                "them once they have.",
            ]
    if report.stopped:
        lines += [
            "",
            f"Not checked (stopped by the sweep's early-stopping rule): {md_cell(', '.join(report.stopped))}.",
        ]
    return "\n".join(lines) + "\n"


def _table(outcomes: list[Outcome] | tuple[Outcome, ...]) -> list[str]:
    lines = ["| | point | metric | observed | expected |", "| --- | --- | --- | ---: | --- |"]
    for o in outcomes:
        observed = o.shown
        expected = o.expected if o.kind != "infra" else f"{o.expected} — {o.message}"
        if o.kind == "regression" and _BETTER in o.message:  # the PR comment read "regressed" for an improvement
            expected += f" — {_BETTER} (the check is two-sided)"
        lines.append(
            f"| {_ICON[o.kind]} | {md_cell(o.label or o.run_id)} | `{o.metric}` | {observed} | {md_cell(expected)} |"
        )
    return lines
