"""Early stopping rules (the sweep file's `early_stopping`), evaluated over runs' metric curves. Pure.

A curve is one value per log line, `(step, value)`, from the run's `metrics.jsonl` (each line's Σsum/Σcount).
Each point is walked line by line and stopped at the first line where a rule fires, using only what was known
by that step: its own lines so far, and for the baseline and median rules the others' latest values at or before
that step. Baselines and prerequisites are never stopped. Lower is better for every metric.

`replay` runs the rules over finished runs (`distillctl early-stop replay`) so a team can tune them on history:
which point each rule would have stopped, at which step, and the chip-hours that would have been saved.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence

from distillspec import tpu
from distillspec.sweep import EarlyStopping, early_stopping_rules
from orchestrator.core import aggregate, cost
from orchestrator.core.expansion import Expansion, Point
from orchestrator.outputs import RunOutputs

Curve = Sequence[tuple[int, float]]


@dataclasses.dataclass(frozen=True)
class Stop:
    rule: str  # no_improvement, worse_than_baseline, divergence, median
    step: int
    message: str


def resolve_metric(name: str, outputs: RunOutputs) -> str:
    """`kl_div_T1` -> `distill/kl_div_T1` when the run logged that; full names are kept."""
    if "/" in name:
        return name
    for line in outputs.log:
        for logged in line.metrics:
            if logged.endswith("/" + name):
                return logged
    return name


def curve(outputs: RunOutputs, metric: str) -> list[tuple[int, float]]:
    """The metric at each log line that has it."""
    name = resolve_metric(metric, outputs)
    points = []
    for line in outputs.log:
        if name in line.metrics:
            value = aggregate.metric([line], name)
            if value is not None:
                points.append((line.step, value))
    return points


def value_at(points: Curve, step: int) -> float | None:
    """The latest value at or before `step` (None before the first line)."""
    i = bisect.bisect_right([s for s, _ in points], step)
    return points[i - 1][1] if i else None


def _finite(value: float | None) -> bool:
    """A value a comparison can use: NaN or inf (a diverged run, the divergence rule's to stop) is none."""
    return value is not None and math.isfinite(value)


# Metrics that carry the KL term an offline point computes over the teacher's top-k and a tail bucket: soft_loss is
# that KL × T², total_loss mixes it in.
KL_TERMS = ("kl_div", "soft_loss", "total_loss")


def evaluate(
    rules: EarlyStopping,
    curves: Mapping[str, Mapping[str, Curve]],
    *,
    points: Sequence[str],
    baselines: Sequence[str] = (),
    kinds: Mapping[str, str] | None = None,
) -> dict[str, Stop]:
    """The first stop of each point in `points` (absent: never stopped). `curves[metric][run]` holds every run's
    curve for each metric the rules name (baselines' too). `kinds`: what each run's KL is over
    (`aggregate.kl_support`): a point is held to the median and the baseline of its own kind only, when a rule
    judges a KL (an offline point's top-k KL is always the lower: every online point read "worse than the
    median")."""
    kinds = kinds or {}
    on_kl = any(
        rule is not None and any(term in rule.metric for term in KL_TERMS)
        for rule in (rules.median, rules.worse_than_baseline)
    )
    stops = {}
    for run in points:
        peers, bases = points, baselines
        if on_kl and kinds:
            peers = [p for p in points if kinds.get(p) == kinds.get(run)]
            bases = [b for b in baselines if kinds.get(b) == kinds.get(run)]
        stop = _first_stop(rules, curves, run, peers, bases)
        if stop is not None:
            stops[run] = stop
    return stops


def _first_stop(rules, curves, run, points, baselines) -> Stop | None:
    lines = {name: curves.get(rule.metric, {}).get(run, []) for name, rule in early_stopping_rules(rules)}
    steps = sorted({s for values in lines.values() for s, _ in values})
    baseline_checked = False
    for step in steps:
        if (rule := rules.divergence) is not None and _at(lines["divergence"], step):
            seen = [v for s, v in lines["divergence"] if s <= step]
            finite = [v for v in seen if math.isfinite(v)]
            if not math.isfinite(seen[-1]):
                return Stop("divergence", step, f"{rule.metric} is {seen[-1]}")
            low = min(finite)
            if low > 0 and seen[-1] > rule.factor * low:
                return Stop(
                    "divergence", step, f"{rule.metric} {seen[-1]:.4g} > {rule.factor:g} × its lowest {low:.4g}"
                )
        if (rule := rules.no_improvement) is not None and _at(lines["no_improvement"], step):
            seen = [v for s, v in lines["no_improvement"] if s <= step]
            if len(seen) > rule.patience:
                before, recent = min(seen[: -rule.patience]), min(seen[-rule.patience :])
                if recent > before - rule.min_delta:
                    return Stop(
                        "no_improvement",
                        step,
                        f"{rule.metric}: best of the last {rule.patience} lines {recent:.4g} is not "
                        f"{rule.min_delta:g} below {before:.4g}",
                    )
        if (rule := rules.worse_than_baseline) is not None and not baseline_checked and step >= rule.at_step:
            baseline_checked = True
            mine = value_at(lines["worse_than_baseline"], step)
            theirs = [value_at(curves.get(rule.metric, {}).get(b, []), step) for b in baselines]
            theirs = [v for v in theirs if _finite(v)]  # a diverged baseline compares with nothing
            if _finite(mine) and theirs and mine > min(theirs) + rule.by:
                return Stop(
                    "worse_than_baseline",
                    step,
                    f"{rule.metric} {mine:.4g} > baseline {min(theirs):.4g} + {rule.by:g} at step {step}",
                )
        if (rule := rules.median) is not None and step >= rule.at_step and _at(lines["median"], step):
            mine = value_at(lines["median"], step)
            others = [curves.get(rule.metric, {}).get(p, []) for p in points if p != run]
            reached = [value_at(c, step) for c in others if c and c[-1][0] >= step]
            reached = [v for v in reached if _finite(v)]  # a diverged point would shift the median
            if _finite(mine) and len(reached) >= rule.min_points:
                median = statistics.median(reached)
                if mine > median:
                    return Stop("median", step, f"{rule.metric} {mine:.4g} > the median {median:.4g} of {len(reached)}")
    return None


def _at(points: Curve, step: int) -> bool:
    """Whether the run logged a line at `step` (rules about its own values fire on its own lines)."""
    i = bisect.bisect_left([s for s, _ in points], step)
    return i < len(points) and points[i][0] == step


def curves_for(rules: EarlyStopping, outputs: Mapping[str, RunOutputs]) -> dict[str, dict[str, list]]:
    """`curves[metric][run id]` for every metric the rules name."""
    return {
        rule.metric: {rid: curve(out, rule.metric) for rid, out in outputs.items()}
        for _, rule in early_stopping_rules(rules)
    }


@dataclasses.dataclass(frozen=True)
class Replayed:
    """What the rules would have done to one point of a finished sweep."""

    run: Point
    stop: Stop | None
    last_step: int | None  # how far it actually ran
    steps_saved: int
    chip_hours_saved: float | None  # None: the target names no TPU type


def replay(expansion: Expansion, outputs: Mapping[str, RunOutputs]) -> list[Replayed]:
    """The sweep's early-stopping rules over its runs' outputs, one row per point (baselines are references)."""
    rules = expansion.sweep.early_stopping
    points = [p for p in expansion.points if not p.is_baseline]
    baselines = [p.run_id for p in expansion.points if p.is_baseline]
    kinds = {p.run_id: aggregate.kl_support(p.spec) for p in expansion.points}
    stops = evaluate(
        rules, curves_for(rules, outputs), points=[p.run_id for p in points], baselines=baselines, kinds=kinds
    )
    target = expansion.sweep.target
    tpu_type = tpu.lookup(target.tpu_type) if target.tpu_type else None
    rows = []
    for point in points:
        stop, last = stops.get(point.run_id), outputs[point.run_id].last_step
        saved = max(0, last - stop.step) if stop is not None and last is not None else 0
        hours = None
        if tpu_type is not None:
            hours = cost.chip_hours(point.spec, tpu_type, slices=target.slices) * saved / point.spec.steps
        rows.append(Replayed(point, stop, last, saved, hours))
    return rows
