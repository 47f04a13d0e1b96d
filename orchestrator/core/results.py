"""A sweep's results: one row per run with its status and aggregated metrics, the best point and the
difference from the baseline. Pure: outputs and statuses are read by the caller.

A run that evaluated a held-out set (`eval:` in its spec) is shown by its eval metrics (`eval/kl_div_T1`, ...:
its last evaluation, the whole fixed set under the final model); a run without one by its training metrics,
aggregated the same explicit way (`Aggregation`): the token-weighted mean Σsum/Σcount of the trainer's
(sum, count) pairs over the last `window` records of `metrics.jsonl` (all of them when 0). Each row says which
(`Row.source`: `eval` or `train`), and so do the tables' headers. `student_perplexity` is exp of the mean hard
loss. Throughput is tokens over the time the trainer took for them (its logged rates) across the last `window`
records. Chip-hours are the trainer's wall time × the target's chips (TPU targets only; a local run has
no chips, so its wall time is shown instead).

The best point is the succeeded, non-baseline point with the lowest `kl_div_T1` (the guide's cross-run
metric: the KL at temperature 1 does not depend on each point's temperature schedule), among the points shown
by eval metrics when any is; with seeds, the configuration whose succeeded seeds have the lowest mean. Δ is against the baseline point with the same seed (any seed's when none has it),
the one with the lowest kl_div_T1 when there are several, and only when both are shown by the same kind of
metrics.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from distillspec import tpu
from distillspec.contract import PendingReason
from distillspec.sweep import Sweep
from orchestrator.core import aggregate, identity
from orchestrator.core.aggregate import FULL_VOCABULARY, HARD_LOSS, KL_T1, kl_support
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.run_status import DEFAULT_STALL_SECONDS, Observation, Phase, RunStatus, derive
from orchestrator.outputs import RunOutputs

PERPLEXITY = "distill/student_perplexity"
TOP1 = "distill/top1_agreement"
TABLE_METRICS = (KL_T1, HARD_LOSS, PERPLEXITY, TOP1)
# The files `results --plot DIR` writes (`orchestrator.cli.plots`), named here where no matplotlib is imported.
PLOT_FILES = {KL_T1: "kl_div_T1.png", HARD_LOSS: "hard_loss.png"}
SCHEDULES_FILE = "schedules.png"
PLOT_SOFTWARE = "distillctl results --plot"  # the PNGs' Software text: a file there that lacks it is not ours
DEFAULT_WINDOW = 5
EVAL, TRAIN = "eval", "train"  # where a row's metrics come from
# Some from the last evaluation, the rest from training: metrics an evaluation does not log (an offline student's
# eval has no teacher, so no eval/kl_div_T1 or eval/top1_agreement) are the training window's.
MIXED = "eval+train"

# A function from the sweep and what its runs wrote to each run's status; the launcher's backends supply one
# that also sees the cluster (queued, restarting, ...). `statuses_from_outputs` is the outputs-only view.
StatusFn = Callable[[Expansion, Mapping[str, RunOutputs]], Mapping[str, RunStatus]]


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """How a window of log records becomes one number."""

    window: int = DEFAULT_WINDOW

    @property
    def describe(self) -> str:
        return aggregate.describe_window(self.window)

    def header(self, name: str, sources: frozenset[str] = frozenset({"train"})) -> str:
        """A metric column's header: `kl_div_T1 (last 5)`, `kl_div_T1 (eval)`, ..."""
        return f"{short_metric(name)} ({self.source_note(sources)})"

    def source_note(self, sources: frozenset[str]) -> str:
        """What a metric column's header says about where its numbers come from."""
        if sources == {EVAL}:
            return "eval"
        if sources & {EVAL, MIXED}:
            return f"eval, else train {self.describe}"
        return self.describe

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "unit": "metrics.jsonl records (one per logging step); 0 means all",
            "method": "token-weighted mean: Σsum / Σcount of the logged (sum, count) pairs; perplexity = exp of the "
            "window's mean cross-entropy; tokens_per_sec = Δtokens / the time the trainer took for them (each "
            "record's tokens over its logged rate) across the window",
            "eval": "runs with a held-out eval set (metrics_from: eval) are shown by their last evaluation's eval/* "
            "metrics (Σsum / Σcount over the whole set), not by the training window; a metric their evaluation does "
            "not log (an offline student's: no teacher at eval) is the training window's (metrics_from: eval+train)",
        }


@dataclasses.dataclass(frozen=True)
class Row:
    """One run of the sweep, as the table shows it (raw numbers; formatting is the caller's)."""

    run_id: str
    index: int
    role: str  # point | baseline | prerequisite
    name: str  # `0`, `4b`, `teacher`: the same numbering as `distillctl plan`
    label: str  # axis values, shortened (`alpha.end=0.3, beta.start=1.0`), or the prerequisite's name
    axis_values: Mapping[str, Any]
    seed: int
    status: RunStatus
    step: int | None
    total_steps: int | None
    metrics: Mapping[str, float | None]
    tokens_per_sec: float | None
    wall_time_sec: float | None
    chip_hours: float | None
    output_path: str
    source: str = TRAIN  # EVAL: `metrics` are the run's last evaluation on its held-out set
    # The logged metric each of `metrics` came from (`eval/kl_div_T1` for `distill/kl_div_T1` under EVAL).
    logged_as: Mapping[str, str] = dataclasses.field(default_factory=dict)
    baseline_run_id: str | None = None
    delta_kl: float | None = None  # kl_div_T1 - the baseline's (negative: better than no distillation)
    delta_kl_relative: float | None = None  # delta_kl / the baseline's kl_div_T1
    best: bool = False
    damage: tuple[str, ...] = ()  # how its files disagree with themselves (`RunOutputs.damage`): never ranked
    kl_over: str | None = FULL_VOCABULARY  # what its kl_div_T1 is over (`kl_support`); None: a run without one


@dataclasses.dataclass(frozen=True)
class Results:
    sweep: str
    target_kind: str
    tpu_type: str | None
    chips: int | None  # all slices together; None for a local target
    aggregation: Aggregation
    rows: tuple[Row, ...]

    @property
    def best(self) -> Row | None:
        return next((r for r in self.rows if r.best), None)

    @property
    def best_rows(self) -> tuple[Row, ...]:
        """The best configuration's rows: one, or each of its seeds."""
        return tuple(r for r in self.rows if r.best)

    @property
    def baselines(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.role == "baseline")

    @property
    def sources(self) -> frozenset[str]:
        """Where the shown rows' metrics come from (`eval`, `train`; rows without any value do not count)."""
        shown = {r.source for r in self.rows if any(v is not None for v in r.metrics.values())}
        return frozenset(shown or {TRAIN})

    @property
    def axis_names(self) -> list[str]:
        names: dict[str, None] = {}
        for row in self.rows:
            names.update(dict.fromkeys(row.axis_values))
        return list(names)


# --- statuses ---------------------------------------------------------------------------------------------


def statuses_from_outputs(
    runs: Sequence[Point], outputs: Mapping[str, RunOutputs], *, now: float, stall_after: float = DEFAULT_STALL_SECONDS
) -> dict[str, RunStatus]:
    """Each run's status from its outputs alone (no backend): Succeeded, Failed or Diverged from summary.json's
    verdict; Running while the trainer's summary says `running` (Stalled when its last metrics line is older
    than `stall_after` seconds: a process killed without a verdict looks like this); Pending otherwise."""
    out = {}
    for run in runs:
        found = outputs.get(run.run_id) or RunOutputs(run.output_path)
        running = (found.summary or {}).get("status") == "running"
        observation = Observation(exists=True, active=True) if running else Observation(exists=False)
        status = derive(observation, found, now=now, stall_after=stall_after, total_steps=run.spec.steps)
        if status.phase == Phase.PENDING and status.reason == PendingReason.NOT_CREATED:
            # No outputs says nothing of whether it exists: a table pasted from an unreachable cluster's sweep
            # read "NotCreated" for runs that were running.
            status = dataclasses.replace(
                status,
                reason=PendingReason.NOT_OBSERVED,
                message="its outputs hold no verdict that can be read, and its backend was not asked"
                if found.exists
                else "no outputs, and its backend was not asked",
            )
        out[run.run_id] = status
    return out


def outputs_only(expansion: Expansion, outputs: Mapping[str, RunOutputs]) -> dict[str, RunStatus]:
    """A `StatusFn` that sees only the outputs, at the current time."""
    return statuses_from_outputs(expansion.runs, outputs, now=time.time())


# --- labels -----------------------------------------------------------------------------------------------


def short_metric(name: str) -> str:
    return name.split("/", 1)[-1]


def _value_text(value: Any) -> str:
    return identity.canonical_json(value) if isinstance(value, (dict, list)) else str(value)


def _common_prefix(names: Sequence[str]) -> str:
    """The dotted prefix every axis name shares (`loss.`), so labels say `alpha.end=0.3`. Never a whole name, and
    never a leaf's own parent when the name has one below the top: one axis `loss.alpha.end` reads `alpha.end=0.3`,
    not `end=0.3`, which does not say whether α, β or T was swept."""
    dotted = [n.split(".") for n in names if n != "seed"]
    if not dotted:
        return ""
    prefix: list[str] = []
    for parts in zip(*(d[: min(len(d) - 1, max(1, len(d) - 2))] for d in dotted)):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix) + "." if prefix else ""


def labels(runs: Sequence[Point], sweep: Sweep | None = None) -> dict[str, str]:
    """run id -> a short label: the axis values without their shared dotted prefix; for a prerequisite, the spec
    it runs (`spec tiny-teacher.yaml`)."""
    prefix = _common_prefix([name for run in runs for name in run.axis_values])
    out = {}
    for run in runs:
        if run.prerequisite is not None:
            prerequisite = sweep.prerequisites.get(run.prerequisite) if sweep is not None else None
            spec = prerequisite.spec if prerequisite is not None else None
            out[run.run_id] = f"spec {spec}" if isinstance(spec, str) else "inline spec"
            continue
        parts = [
            f"{name.removeprefix(prefix) if name != 'seed' else name}={_value_text(v)}"
            for name, v in run.axis_values.items()
        ]
        out[run.run_id] = ", ".join(parts) or "base spec"
    return out


# --- the table --------------------------------------------------------------------------------------------


def _chips(expansion: Expansion) -> tuple[str | None, int | None]:
    target = expansion.sweep.target
    if not target.on_cluster or target.tpu_type is None:
        return None, None
    return target.tpu_type, tpu.lookup(target.tpu_type).chips * target.slices


def run_metrics(outputs: RunOutputs, window: int, names: Sequence[str] = TABLE_METRICS) -> dict[str, float | None]:
    """`names` as named: `eval/...` from the last evaluation, others over the last `window` records."""
    return {name: aggregate.run_value(outputs.log, window, name) for name in names}


def evaluated(outputs: RunOutputs) -> bool:
    """Whether the run logged held-out (`eval/...`) metrics."""
    return bool(aggregate.last_evaluation(outputs.log))


def preferred_names(outputs: RunOutputs, names: Sequence[str]) -> tuple[list[str], str]:
    """The metrics a run is judged by: the held-out twins of `names` its last evaluation logged (`eval/kl_div_T1`
    for `distill/kl_div_T1`), the others as named; and where they come from (`eval`, `train` or `eval+train`)."""
    evaluation = aggregate.last_evaluation(outputs.log)
    if not evaluation:
        return list(names), TRAIN
    evaluated, trained = evaluation[0].metrics, {name for record in outputs.log for name in record.metrics}
    # A metric neither logged (a pretraining run's KL) stays the eval twin: nothing is taken from training.
    chosen = [n if aggregate.eval_name(n) not in evaluated and n in trained else aggregate.eval_name(n) for n in names]
    return chosen, EVAL if all(c != n for c, n in zip(chosen, names)) else MIXED


def preferred_metrics(
    outputs: RunOutputs, window: int, names: Sequence[str] = TABLE_METRICS
) -> tuple[dict[str, float | None], str, dict[str, str]]:
    """`({training name: value}, source, {training name: the logged name it came from})`: the run's eval metrics
    under the training names when it evaluated, else its training metrics over the window."""
    chosen, source = preferred_names(outputs, names)
    values = run_metrics(outputs, window, chosen)
    return {name: values[c] for name, c in zip(names, chosen)}, source, dict(zip(names, chosen))


def build(
    expansion: Expansion,
    outputs: Mapping[str, RunOutputs],
    statuses: Mapping[str, RunStatus],
    *,
    window: int = DEFAULT_WINDOW,
) -> Results:
    """The results table: prerequisites first, then points in sweep order."""
    tpu_type, chips = _chips(expansion)
    names = labels(expansion.runs, expansion.sweep)
    rows = []
    for run in expansion.runs:
        out = outputs.get(run.run_id) or RunOutputs(run.output_path)
        status = statuses.get(run.run_id) or RunStatus("Pending", "NotObserved")
        wall = out.wall_time_sec
        metrics, source, logged = preferred_metrics(out, window)
        rows.append(
            Row(
                run_id=run.run_id,
                index=run.index,
                role=run.role,
                name=run.key,
                label=names[run.run_id],
                axis_values=run.axis_values,
                seed=run.seed,
                status=status,
                step=out.last_step if out.last_step is not None else status.step,
                total_steps=out.total_steps or status.total_steps or run.spec.steps,
                metrics=metrics,
                source=source,
                logged_as=logged,
                tokens_per_sec=aggregate.tokens_per_sec(out.log, window),
                wall_time_sec=wall,
                chip_hours=None if chips is None or wall is None else wall * chips / 3600.0,
                output_path=out.path,
                damage=out.damage,
                kl_over=kl_support(run.spec) if run.spec.mode == "distill" else None,  # a pretrain logs no KL
            )
        )
    rows = _compare(rows)
    return Results(expansion.sweep.name, expansion.sweep.target.kind, tpu_type, chips, Aggregation(window), tuple(rows))


def _comparable(row: Row) -> bool:
    """A row whose kl_div_T1 is a result to compare: finite, not a diverged run's, not from damaged files."""
    return _finite(row.metrics.get(KL_T1)) and row.status.phase != "Diverged" and not row.damage


def _compare(rows: list[Row]) -> list[Row]:
    """Δkl against each point's baseline, and the best point marked."""
    baselines = [r for r in rows if r.role == "baseline"]
    out = []
    for row in rows:
        if row.role != "point" or not baselines:
            out.append(row)
            continue
        # The best baseline of the point's seed (of any, when none has it): with several baselines (no
        # distillation, a plain fine-tune) Δ asks whether distilling beat the best way of doing without it, as
        # the worse_than_baseline rule does; the first alone could make a point look better than it is.
        same_seed = [b for b in baselines if b.seed == row.seed] or baselines
        usable = [b for b in same_seed if _comparable(b) and _same_kind(b, row)]
        base = min(usable, key=lambda b: b.metrics[KL_T1]) if usable else same_seed[0]
        kl, base_kl = row.metrics.get(KL_T1), base.metrics.get(KL_T1)
        # A diverged run's last values (1e6, or inf) are no result to compare: its Δ read +219728201%.
        comparable = _comparable(row) and _comparable(base) and _same_kind(row, base)
        delta = kl - base_kl if comparable else None
        relative = delta / base_kl if delta is not None and base_kl else None
        out.append(dataclasses.replace(row, baseline_run_id=base.run_id, delta_kl=delta, delta_kl_relative=relative))
    finished = [
        r
        for r in out
        if r.role == "point" and r.status.phase == "Succeeded" and _finite(r.metrics.get(KL_T1)) and not r.damage
    ]
    if any(r.source == EVAL for r in finished):  # never rank one run's held-out KL against another's training KL
        finished = [r for r in finished if r.source == EVAL]
    # Nor a top-k KL (an offline student's, always the lower) against a whole-vocabulary one: the whole
    # vocabulary's are ranked when there are any; top-k ones only among themselves, with one k.
    kinds = {r.kl_over for r in finished}
    if len(kinds) > 1:
        finished = [r for r in finished if r.kl_over == FULL_VOCABULARY]
    if finished:
        # Seeds are repeats of one configuration, not points of their own: the best is the configuration whose
        # finished seeds have the lowest mean (the lowest single run crowned a lucky seed), each of its rows marked.
        groups: dict[tuple, list[Row]] = {}
        for row in finished:
            groups.setdefault(seed_group(row), []).append(row)
        # Configurations whose every seed succeeded are ranked first: one surviving seed of three is a lucky seed.
        seeds = {key: sum(seed_group(r) == key for r in out if r.role == "point") for key in groups}
        whole = [rows for key, rows in groups.items() if len(rows) == seeds[key]]
        chosen = min(whole or groups.values(), key=lambda rows: sum(r.metrics[KL_T1] for r in rows) / len(rows))
        out = [dataclasses.replace(r, best=True) if any(r is c for c in chosen) else r for r in out]
    return out


def _same_kind(row: Row, other: Row) -> bool:
    """Whether two rows' kl_div_T1 compare: both held-out or both training, over the same support."""
    return row.source == other.source and row.kl_over == other.kl_over


def seed_group(row: Row) -> tuple:
    """What a row's configuration is apart from its seed: its role and its other axis values."""
    return (row.role, tuple(sorted((k, _value_text(v)) for k, v in row.axis_values.items() if k != "seed")))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
