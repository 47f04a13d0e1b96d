"""Early stopping rules: each fires at the step its definition names and not before, over scripted curves; and
`distillctl early-stop replay` over a sweep's written outputs names the points, steps and chip-hours saved."""

from __future__ import annotations

import json
import math

import pytest
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


def test_offline_points_are_held_to_the_median_and_baseline_of_their_own_kind():
    # An offline point's top-k KL is always the lower: in a mixed sweep every online point read "worse than the
    # median" (and than an offline baseline).
    rules = EarlyStopping(median=MedianStopping(at_step=40, min_points=1))
    low = scripted([v / 3 for _, v in WORSE])  # the offline runs' top-k KL: a third of the online ones'
    curves = {"on-a": WORSE, "on-b": WORSE, "off-a": low, "off-b": low}
    kinds = {"on-a": "vocabulary", "on-b": "vocabulary", "off-a": "top-16+tail", "off-b": "top-16+tail"}
    mixed = evaluate(rules, {KL: curves}, points=list(curves))
    assert {"on-a", "on-b"} <= set(mixed)  # judged against the offline runs
    assert evaluate(rules, {KL: curves}, points=list(curves), kinds=kinds) == {}
    for metric in ("distill/soft_loss", "distill/total_loss"):  # the same KL term: × T², or mixed in
        on = EarlyStopping(median=MedianStopping(metric=metric, at_step=40, min_points=1))
        assert evaluate(on, {metric: curves}, points=list(curves), kinds=kinds) == {}
    versus = EarlyStopping(worse_than_baseline=WorseThanBaseline(at_step=30, by=0.1))
    curves = {"on": GOOD, "base-off": low}
    kinds = {"on": "vocabulary", "base-off": "top-16+tail"}
    assert evaluate(versus, {KL: curves}, points=["on"], baselines=["base-off"], kinds=kinds) == {}


def test_a_diverged_run_is_no_one_to_compare_with():
    # A NaN counted among "the others" moved the median and stopped a healthy point; a NaN baseline made min() NaN.
    nan = scripted([math.nan] * 10)
    median = EarlyStopping(median=MedianStopping(at_step=40, min_points=2))
    assert stops(median, {"good": GOOD, "worse": WORSE, "nan": nan}) == {}  # 2 others needed, 1 is finite
    assert stops(median, {"good": GOOD, "worse": WORSE, "plateau": PLATEAU, "nan": nan}) == {
        "worse": ("median", 40),
        "plateau": ("median", 60),
    }
    baseline = EarlyStopping(worse_than_baseline=WorseThanBaseline(at_step=30, by=0.1))
    assert stops(baseline, {"worse": WORSE, "nan": nan, "base": BASELINE}, baselines=["nan", "base"]) == {
        "worse": ("worse_than_baseline", 30)
    }


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
        (folder / "summary.json").write_text(json.dumps({"status": "running", "step": curves[point.run_id][-1][0]}))
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
    assert "damaged_metrics" not in text.stderr
    # A line of the log that is not a record: replayed from what is left, and said (it was silent; results warned)
    folder = tmp_path / "runs" / sweep.points[0].run_id
    with open(folder / "metrics.jsonl", "a") as log:
        log.write("garbage\n" + json.dumps({"step": 999, "metrics": {}}) + "\n")
    damaged = CliRunner().invoke(app, ["early-stop", "replay", str(path)])
    assert damaged.exit_code == 0 and "warning[damaged_metrics]" in damaged.stderr, damaged.output
    # The run ids of a sweep launched with --image (the file's image is another): replayed with the same --image
    # (the command had no such option, so those runs could not be replayed)
    other = path.with_name("other-image.yaml")
    other.write_text(path.read_text().replace("example.invalid/t:1", "example.invalid/t:0"))
    moved = CliRunner().invoke(app, ["early-stop", "replay", str(other), "--output", "json"])
    assert moved.exit_code == 2 and "nothing to replay" in moved.stderr, moved.output
    same = CliRunner().invoke(
        app, ["early-stop", "replay", str(other), "--image", "example.invalid/t:1", "--output", "json"]
    )
    assert same.exit_code == 0 and {r["key"]: r["rule"] for r in json.loads(same.stdout)}["1"] == "no_improvement"


def test_replay_says_what_plan_says_of_the_rules_and_refuses_to_replay_nothing(tmp_path):
    # It printed no warning (a rule acting after the last step never fires) and, with no outputs where it looked
    # (another directory, a wrong --output-base), "0 of 3 point(s) would have stopped" with exit 0.
    path = write_sweep(tmp_path, early_stopping={"median": {"at_step": 1000}})
    result = CliRunner().invoke(app, ["early-stop", "replay", str(path)])
    assert result.exit_code == 2 and "warning[rule_after_the_end]" in result.stderr, result.output
    assert "has logged metrics under" in result.stderr and "nothing to replay" in result.stderr


def test_sweep_says_its_rules_are_not_acted_on_without_the_service(tmp_path):
    """A local sweep with early_stopping rules trained every point to its end, and nothing said the rules were not
    applied (only `distillctl serve` acts on them)."""
    path = write_sweep(tmp_path, early_stopping={"no_improvement": {"patience": 3}})
    result = CliRunner().invoke(app, ["sweep", str(path), "--dry-run=client"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "warning[early_stopping_not_acted] early_stopping" in said and "early-stop replay" in said, said
    assert "--service" not in said  # a local sweep: there is no service to hand it to
    assert f"distillctl early-stop replay {path}" in said  # the file's own name, not FILE
    plain = CliRunner().invoke(app, ["sweep", str(write_sweep(tmp_path)), "--dry-run=client"])
    assert "early_stopping_not_acted" not in plain.stderr


def test_replay_without_rules_says_what_to_add(tmp_path):
    result = CliRunner().invoke(app, ["early-stop", "replay", str(write_sweep(tmp_path))])
    assert result.exit_code == 2 and "no early_stopping rules" in result.output


# --- the rules' metric names, checked against what the trainer logs (distillspec.metrics) -----------------------


def test_a_metric_no_run_logs_is_an_error_at_its_line_with_the_closest_name(tmp_path):
    from tests.sweep_support import load, sweep_data, write

    data = sweep_data(
        early_stopping={
            "no_improvement": {"metric": "distill/kl_div_t1", "patience": 3},
            "divergence": {"metric": "eval/los"},
            "median": {"metric": "kl_div", "at_step": 5},
            "worse_than_baseline": {"metric": "hard_loss", "at_step": 5},  # a short name that resolves: fine
        }
    )
    path = write(tmp_path, data)
    source = load(tmp_path, data)
    found = {p.loc[1]: p for p in source.problems}
    assert set(found) == {"no_improvement", "divergence", "median"} and not source.ok
    lines = path.read_text().splitlines()
    for rule, (typo, suggested) in {
        "no_improvement": ("distill/kl_div_t1", "distill/kl_div_T1"),
        "divergence": ("eval/los", "eval/hard_loss"),
        "median": ("kl_div", "kl_div_T1"),
    }.items():
        problem = found[rule]
        assert (
            problem.code == "unknown_metric" and problem.is_error and problem.loc == ("early_stopping", rule, "metric")
        )
        assert problem.file == str(path) and lines[problem.line - 1].strip() == f"metric: {typo}", problem
        assert f"did you mean {suggested!r}?" in problem.hint and repr(typo) in problem.message
    # The CLI stops there (exit 4), naming file:line.
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 4 and f"{path}:{found['divergence'].line}:" in result.output
    assert "error[unknown_metric]" in result.output


@pytest.mark.parametrize("metric", ["top1_agreement", "eval/top1_agreement", "distill/alpha", "temperature"])
def test_a_metric_that_does_not_go_down_is_refused(tmp_path, metric):
    # The rules read lower as better: on top1_agreement, no_improvement "stopped" every point at its first lines.
    from tests.sweep_support import load, sweep_data

    source = load(tmp_path, sweep_data(early_stopping={"no_improvement": {"metric": metric, "patience": 3}}))
    (problem,) = [p for p in source.problems if p.is_error]
    assert problem.code == "metric_not_lower_is_better" and "kl_div_T1" in problem.hint and problem.line


def test_the_metric_names_are_the_trainers_own_list():
    """One list: the trainer imports it (its tests check it logs exactly these), the sweep checks against it."""
    from distillspec import metrics

    assert metrics.resolve("kl_div_T1") == "distill/kl_div_T1"  # training metrics first, as early_stop reads curves
    assert metrics.resolve("eval/top1_agreement") == "eval/top1_agreement" and metrics.resolve("eval/los") is None
    assert set(metrics.PRETRAIN_METRICS) < set(metrics.DISTILL_METRICS)
    assert set(metrics.PRETRAIN_EVAL_METRICS) < set(metrics.EVAL_METRICS)
    pytest.importorskip("jax")
    from trainer import loss, step

    assert loss.DISTILL_METRICS is metrics.DISTILL_METRICS and loss.PRETRAIN_METRICS is metrics.PRETRAIN_METRICS
    assert loss.PERPLEXITY_METRICS is metrics.PERPLEXITY_METRICS and step.EVAL_METRICS is metrics.EVAL_METRICS


def test_a_metric_these_points_do_not_log_is_a_warning_on_each(tmp_path):
    from tests.sweep_support import expanded, sweep_data

    rules = {
        "no_improvement": {"metric": "eval/kl_div_T1", "patience": 3},
        "worse_than_baseline": {"metric": "distill/soft_loss", "at_step": 5},
    }
    baseline = [{"loss.alpha.start": 0.0, "loss.alpha.end": 0.0}]
    # No held-out set: eval/ metrics are never logged; the baseline is only read by worse_than_baseline.
    result = expanded(
        tmp_path, sweep_data(axes={"loss.temperature": [1.0, 2.0]}, baseline=baseline, early_stopping=rules)
    )
    assert result.ok and len(result.points) == 3
    (warning,) = [p for p in result.problems if p.code == "metric_not_logged"]
    assert warning.severity == "warning" and warning.loc == ("early_stopping", "no_improvement", "metric")
    assert warning.message.startswith("point 0 (loss.temperature=1.0) and 1 more point(s): 'eval/kl_div_T1'")
    assert "held-out set" in warning.message and "`eval:`" in warning.hint and "'distill/kl_div_T1'" in warning.hint
    assert warning.line is not None

    # With one, they are; in pretrain points distill-only metrics are not, and eval/ ones only the student's loss.
    spec = sweep_data()["spec"] | {"eval": {"batches": 1, "every_steps": 5}}
    fine = expanded(tmp_path, sweep_data(spec=spec, axes={"loss.temperature": [1.0, 2.0]}, early_stopping=rules))
    assert fine.ok and [p for p in fine.problems if p.code == "metric_not_logged"] == []
    pretrain = expanded(tmp_path, sweep_data(spec=spec, axes={"mode": ["distill", "pretrain"]}, early_stopping=rules))
    warned = {p.loc[1]: p for p in pretrain.problems if p.code == "metric_not_logged"}
    assert set(warned) == {"no_improvement", "worse_than_baseline"} and pretrain.ok
    for problem in warned.values():
        assert problem.message.startswith("point 1 (mode=pretrain): ")
    assert "logs only eval/hard_loss, eval/student_perplexity" in warned["no_improvement"].message
    assert "a pretrain run logs distill/hard_loss, distill/student_perplexity, distill/total_loss" in (
        warned["worse_than_baseline"].message
    )


def test_a_rule_after_the_last_step_is_a_warning(tmp_path):
    from tests.sweep_support import expanded, sweep_data

    rules = {"median": {"at_step": 99999, "min_points": 2}}
    result = expanded(tmp_path, sweep_data(axes={"loss.temperature": [1.0, 2.0]}, early_stopping=rules))
    (warning,) = [p for p in result.problems if p.code == "rule_after_the_end"]
    assert result.ok and warning.severity == "warning" and warning.loc == ("early_stopping", "median", "at_step")
    assert "after the last step" in warning.message and warning.line is not None


def test_a_median_rule_that_needs_more_points_than_the_sweep_has_is_warned_of(tmp_path):
    # min_points counts the other points: with two points and min_points 2 it silently never fired.
    from tests.sweep_support import expanded, sweep_data

    rules = {"median": {"at_step": 5, "min_points": 2}}
    result = expanded(tmp_path, sweep_data(axes={"loss.temperature": [1.0, 2.0]}, early_stopping=rules))
    (warning,) = [p for p in result.problems if p.code == "rule_never_fires"]
    assert "this sweep has 2 point(s)" in warning.message and "set min_points to 1" in warning.hint and warning.line
    three = expanded(tmp_path, sweep_data(axes={"loss.temperature": [1.0, 2.0, 3.0]}, early_stopping=rules))
    assert not [p for p in three.problems if p.code == "rule_never_fires"]
