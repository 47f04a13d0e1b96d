"""Early stopping rules: each fires at the step its definition names and not before, over scripted curves; and
`distillctl early-stop replay` over a sweep's written outputs names the points, steps and chip-hours saved."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from distillspec.sweep import (
    Divergence,
    EarlyStopping,
    MedianStopping,
    NoImprovement,
    WorseThanBaseline,
    validate_sweep_data,
)
from orchestrator.cli import app
from orchestrator.core.early_stop import evaluate
from tests.results_support import expanded, write_sweep

KL = "distill/kl_div_T1"
STEPS = list(range(10, 110, 10))


def scripted(values: list[float]) -> list[tuple[int, float]]:
    return list(zip(STEPS, values, strict=False))


GOOD = scripted([1.0, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15])
PLATEAU = scripted([1.0, 0.8, 0.6, 0.6, 0.61, 0.6, 0.6, 0.6, 0.6, 0.6])
DIVERGES = scripted([1.0, 0.8, 0.5, 0.5, 6.0, math.nan, math.nan, math.nan, math.nan, math.nan])
WORSE = scripted([1.2, 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6])
BASELINE = scripted([1.0, 0.7, 0.5, 0.45, 0.4, 0.38, 0.36, 0.34, 0.32, 0.3])


def stops(rules: EarlyStopping, curves: dict, baselines=()) -> dict[str, tuple[str, int]]:
    points = [k for k in curves if k not in baselines]
    found = evaluate(rules, {KL: curves}, points=points, baselines=list(baselines))
    return {run: (stop.rule, stop.step) for run, stop in found.items()}


def test_no_improvement_fires_after_patience_lines_without_a_better_value():
    rules = EarlyStopping(no_improvement=NoImprovement(patience=3, min_delta=0.01))
    assert stops(rules, {"good": GOOD, "plateau": PLATEAU}) == {"plateau": ("no_improvement", 60)}


def test_divergence_fires_on_a_jump_or_a_non_finite_value():
    assert stops(EarlyStopping(divergence=Divergence(factor=10)), {"d": DIVERGES, "g": GOOD}) == {
        "d": ("divergence", 50)
    }
    assert stops(EarlyStopping(divergence=Divergence(factor=100)), {"d": DIVERGES}) == {"d": ("divergence", 60)}


def test_worse_than_baseline_is_checked_once_at_its_step():
    rules = EarlyStopping(worse_than_baseline=WorseThanBaseline(at_step=30, by=0.1))
    curves = {"good": GOOD, "worse": WORSE, "base": BASELINE}
    assert stops(rules, curves, baselines=["base"]) == {"worse": ("worse_than_baseline", 30)}
    late = EarlyStopping(worse_than_baseline=WorseThanBaseline(at_step=30, by=0.5))
    assert stops(late, curves, baselines=["base"]) == {}  # within the margin then: never checked again


def test_median_stopping_needs_enough_others_at_the_step():
    rules = EarlyStopping(median=MedianStopping(at_step=40, min_points=2))
    curves = {"good": GOOD, "worse": WORSE, "plateau": PLATEAU}
    # At step 40: good 0.5, plateau 0.6, worse 0.9 -> worse is above the median of the others (0.55).
    assert stops(rules, curves) == {"worse": ("median", 40), "plateau": ("median", 60)}
    assert stops(EarlyStopping(median=MedianStopping(at_step=40, min_points=3)), curves) == {}


def test_rules_are_validated_with_the_sweep_files_codes():
    _, problems = validate_sweep_data(
        {"name": "s", "spec": {}, "early_stopping": {"no_improvement": {"patience": 0}, "median": {"at_stp": 5}}}
    )
    found = {(p.loc, p.code) for p in problems}
    assert (("early_stopping", "no_improvement", "patience"), "out_of_range") in found
    assert any(loc[:2] == ("early_stopping", "median") and code == "unknown_key" for loc, code in found)


def test_replay_reads_the_runs_outputs_and_counts_chip_hours_saved(tmp_path):
    path = write_sweep(
        tmp_path,
        axes={"loss.alpha.end": [0.3, 0.5, 0.7]},
        zip=[],
        early_stopping={
            "no_improvement": {"metric": "kl_div_T1", "patience": 3, "min_delta": 0.01},
            "worse_than_baseline": {"at_step": 30, "by": 0.1},
        },
        target={
            "kind": "kubernetes",
            "tpu_type": "v6e-16",
            "image": "example.invalid/t:1",
            "output_base": str(tmp_path / "runs"),
        },
    )
    sweep = expanded(path)
    curves = dict(zip([p.run_id for p in sweep.points], [GOOD, PLATEAU, WORSE, BASELINE], strict=True))
    for point in sweep.points:
        folder = tmp_path / "runs" / point.run_id
        folder.mkdir(parents=True)
        lines = [
            {"step": step, "metrics": {KL: {"sum": value * 100, "count": 100.0}}}
            for step, value in curves[point.run_id]
        ]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(app, ["early-stop", "replay", str(path), "--output", "json"])
    assert result.exit_code == 0, result.output
    rows = {row["key"]: row for row in json.loads(result.stdout)}
    assert {k: (r["rule"], r["step"]) for k, r in rows.items()} == {
        "0": (None, None),
        "1": ("no_improvement", 60),
        "2": ("worse_than_baseline", 30),
    }
    assert rows["2"]["steps_saved"] == 70 and rows["2"]["chip_hours_saved"] > rows["1"]["chip_hours_saved"] > 0
    text = CliRunner().invoke(app, ["early-stop", "replay", str(path)])
    assert text.exit_code == 0 and "2 of 3 point(s) would have stopped; 110 steps" in text.stdout


def test_replay_without_rules_says_what_to_add(tmp_path):
    result = CliRunner().invoke(app, ["early-stop", "replay", str(write_sweep(tmp_path))])
    assert result.exit_code == 2 and "no early_stopping rules" in result.output
