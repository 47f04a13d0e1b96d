"""Figures of a sweep: `kl_div_T1` and `hard_loss` against the optimizer step for every point, and each point's
α, β and temperature schedules. A point the table shows by its eval metrics (`Row.source`) is drawn from its
evaluations of the held-out set (`eval/kl_div_T1`, ...), the others from their training logs; the figures' notes
(and, when a sweep mixes both, the legend) say which.

Curves are built first (`Curve`, pure), then drawn on `matplotlib.figure.Figure`s directly (no pyplot, so no
global state and no display: the Agg canvas renders PNGs anywhere). One colour per point across every figure;
the baseline is black and dashed; the legend sits below the axes so it never covers a curve. Points whose curves
coincide exactly (the same α schedule, say) share one line drawn as alternating dashes of their colours.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator

from distillspec.config import DistillSpec
from orchestrator.core import aggregate
from orchestrator.core.results import (
    EVAL,
    HARD_LOSS,
    KL_T1,
    PLOT_FILES,
    PLOT_SOFTWARE,
    SCHEDULES_FILE,
    TRAIN,
    Results,
    Row,
)
from orchestrator.core.run_status import Phase
from orchestrator.outputs import LogLine

TEACHER_LOSS = "distill/teacher_loss"
SCHEDULES = (
    ("distill/alpha", "alpha", "α (weight of the soft loss)"),
    ("distill/beta_feature", "beta", "β (weight of the feature loss)"),
    ("distill/temperature", "temperature", "temperature T"),
)
METRIC_AXES = {
    KL_T1: ("kl_div_T1: KL(teacher ‖ student) at T = 1", "KL divergence (nats/token)"),
    HARD_LOSS: ("hard_loss: student cross-entropy on the labels", "cross-entropy (nats/token)"),
}
STEP_AXIS = "optimizer step"
SCHEDULE_SAMPLES = 200
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
DPI = 150
FONT = 11
LINE_WIDTH = 2.2
STRIPE = 4.0  # dash length of striped (coinciding) curves, in line widths
STRIPED_NOTE = "a striped line is several points with the same values"
BASELINE_DASHES = ((4, 2), (1, 1.5), (6, 2, 1, 2), (2, 3))
NOTE_WIDTH = 100  # characters of a panel's note per line (a long one ran into the next panel's)
ZOOM_FROM = 0.4  # the metric figures' right panel: this last fraction of the steps


@dataclasses.dataclass(frozen=True)
class Curve:
    """One line: a run's values against the optimizer step."""

    key: str  # run id
    label: str
    role: str
    steps: tuple[float, ...]
    values: tuple[float, ...]
    missing: str = ""  # why a run has no values here (its status), for the note that names it


def _legend_label(row: Row) -> str:
    star = "★ " if row.best else ""
    # a curve that ended in a failure or a divergence says so: its last values are no result
    ended = f" [{row.status.phase.lower()}]" if row.status.phase in (Phase.FAILED, Phase.DIVERGED) else ""
    if row.role == "baseline":
        return f"{star}{row.name}: baseline ({row.label}){ended}"
    return f"{star}{row.name}: {row.label}{ended}"


def plotted_rows(results: Results) -> list[Row]:
    """The points (prerequisites are runs of their own kind: a pre-trained teacher has no KL or schedules)."""
    return [r for r in results.rows if r.role != "prerequisite"]


def _shown_name(row: Row, name: str) -> str:
    """The logged metric a row's curve follows: the one its table cell came from (`Row.logged_as`: an offline
    point's evaluations hold its hard loss, not its KL), else the eval twin of `name` for a row shown by eval
    metrics."""
    if name in row.logged_as:
        return row.logged_as[name]
    return aggregate.eval_name(name) if row.source == EVAL else name


def _source(row: Row, name: str) -> str:
    return TRAIN if _shown_name(row, name) == name else EVAL


def metric_curves(results: Results, logs: Mapping[str, Sequence[LogLine]], name: str) -> list[Curve]:
    """Each point's per-record value of `name` (token-weighted within the record's logging interval), or of its
    `eval/` twin (one value per evaluation) where the table shows that one. A KL figure mixing points whose KL is
    over the whole vocabulary with offline ones (top-k and a tail bucket: lower, never comparable) says which is
    which."""
    out = []
    rows = plotted_rows(results)
    mixed = len({_source(r, name) for r in rows}) > 1
    kinds = len({r.kl_over for r in rows if r.kl_over}) > 1 if name == KL_T1 else False
    for row in rows:
        steps, values = aggregate.series(logs.get(row.run_id, ()), _shown_name(row, name))
        label = _legend_label(row) + (f" [{_source(row, name)}]" if mixed else "")
        label += f" [KL over {row.kl_over}]" if kinds and row.kl_over else ""
        missing = f"{row.name} ({row.status.shown})"
        out.append(Curve(row.run_id, label, row.role, tuple(steps), tuple(values), missing))
    return out


def reference_curve(results: Results, logs: Mapping[str, Sequence[LogLine]]) -> Curve | None:
    """The teacher's own cross-entropy on the same tokens (logged by distillation points: on the training batches,
    or on the held-out set by points shown by eval metrics), for the hard-loss figure: the floor the students
    approach."""
    for row in plotted_rows(results):
        steps, values = aggregate.series(logs.get(row.run_id, ()), _shown_name(row, TEACHER_LOSS))
        if steps:
            where = "the held-out set" if row.source == EVAL else "the same batches"
            return Curve("teacher", f"teacher's cross-entropy on {where}", "reference", tuple(steps), tuple(values))
    return None


def source_note(results: Results, logs: Mapping[str, Sequence[LogLine]] | None = None, name: str = KL_T1) -> str:
    """A metric figure's note: what one plotted value of `name` is, and what the table shows (of the runs that
    logged something, when `logs` is given: a run without values draws nothing to explain)."""
    window = results.aggregation.window
    train = "each value: token-weighted mean over one logging interval (the table: " + (
        f"the last {window})" if window else "all of them)"
    )
    held_out = "each value: one evaluation of the held-out set (the table: the last)"
    sources = {_source(r, name) for r in plotted_rows(results) if logs is None or logs.get(r.run_id)} or {TRAIN}
    if sources == {EVAL}:
        return held_out
    if EVAL in sources:
        return "[eval]: " + held_out + "; [train]: " + train.removeprefix("each value: ")
    return train


def schedule_curves(
    results: Results, logs: Mapping[str, Sequence[LogLine]], specs: Mapping[str, DistillSpec]
) -> dict[str, list[Curve]]:
    """α, β and T per point: the values the trainer logged when it logged them, else computed from the spec
    (`ScheduledValue.at`, the trainer's own formula: step k is the update with 0-based index k - 1) at
    `SCHEDULE_SAMPLES` steps."""
    out: dict[str, list[Curve]] = {}
    for logged, field, _ in SCHEDULES:
        curves = []
        for row in plotted_rows(results):
            steps, values = aggregate.series(logs.get(row.run_id, ()), logged)
            spec = specs.get(row.run_id)
            if not steps and spec is not None:
                schedule = getattr(spec.loss, field)
                every = max(spec.steps // SCHEDULE_SAMPLES, 1)
                steps = list(range(0, spec.steps + 1, every))
                values = [float(schedule.at(max(step - 1, 0), spec.steps)) for step in steps]
            curves.append(Curve(row.run_id, _legend_label(row), row.role, tuple(steps), tuple(values)))
        out[field] = curves
    return out


# --- drawing ----------------------------------------------------------------------------------------------


def _styles(curves: Sequence[Curve]) -> dict[str, dict]:
    """Line style per run: a colour per point (the same in every figure), black dashes for baselines, grey dots
    for the reference."""
    styles = {}
    points = [c for c in curves if c.role not in ("baseline", "reference")]
    baselines = [c for c in curves if c.role == "baseline"]
    for curve in curves:
        if curve.role == "baseline":  # black, a dash pattern each: two baselines (two seeds) told apart
            dashes = BASELINE_DASHES[baselines.index(curve) % len(BASELINE_DASHES)]
            styles[curve.key] = dict(color="black", linestyle=(0, dashes), linewidth=LINE_WIDTH, zorder=4)
        elif curve.role == "reference":
            styles[curve.key] = dict(color="0.45", linestyle=":", linewidth=LINE_WIDTH, zorder=2)
        else:
            styles[curve.key] = dict(
                color=COLOURS[points.index(curve) % len(COLOURS)], linewidth=LINE_WIDTH, zorder=3, solid_capstyle="butt"
            )
    return styles


def coinciding(curves: Sequence[Curve]) -> list[list[Curve]]:
    """Curves grouped by identical (steps, values), in order: a group of several is drawn striped."""
    groups: dict[tuple, list[Curve]] = {}
    for curve in curves:
        key = (curve.steps, tuple(round(v, 9) for v in curve.values))
        groups.setdefault(key, []).append(curve)
    return list(groups.values())


def _draw(axes, curves: Sequence[Curve], styles: Mapping[str, dict]) -> bool:
    """Plot `curves`; curves that coincide share the line as alternating dashes of their colours, so none
    hides another. True when some did."""
    striped = False
    for group in coinciding([c for c in curves if c.steps]):
        k = len(group)
        for j, curve in enumerate(group):
            style = dict(styles[curve.key])
            if k > 1:
                style.update(linestyle=(j * STRIPE, (STRIPE, (k - 1) * STRIPE)), zorder=3, dash_capstyle="butt")
                striped = True
            if len(curve.steps) == 1:  # a line needs two points: a run that logged once (diverged) was invisible
                style.setdefault("marker", "o")
            axes.plot(curve.steps, curve.values, **style)
    return striped


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _legend(figure: Figure, curves: Sequence[Curve], styles: Mapping[str, dict], note: str = "") -> None:
    handles = [Line2D([], [], **styles[c.key], label=c.label) for c in curves]
    columns = 1 if max((len(c.label) for c in curves), default=0) > 45 else 2
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=columns,
        fontsize=FONT - 1,
        frameon=False,
        title=note or None,
        title_fontsize=FONT - 2,
    )


def _decimal(value: float, _position=None) -> str:
    return f"{value:g}"


def _log_scale_helps(curves: Sequence[Curve]) -> bool:
    values = [v for c in curves for v in c.values if v > 0]
    return bool(values) and max(values) / min(values) > 20


def _zoom_range(curves: Sequence[Curve], start: float, log: bool) -> tuple[float, float] | None:
    """y limits that fit every curve from step `start` on, with a margin; None when nothing is there."""
    values = [v for c in curves for s, v in zip(c.steps, c.values) if s >= start and (v > 0 or not log)]
    if not values:
        return None
    low, high = min(values), max(values)
    if log:
        return low / 1.15, high * 1.15
    pad = (high - low) * 0.08 or abs(high) * 0.01 or 0.01
    return low - pad, high + pad


def _value_axis(axes, ylabel: str, log: bool, *, fine: bool = False) -> None:
    if log:
        axes.set_yscale("log")
        # Plain decimals, with the 2s and 5s between powers of ten labelled too (every digit on a zoomed axis that
        # spans about a decade): readable without counting ticks.
        axes.yaxis.set_major_formatter(FuncFormatter(_decimal))
        axes.yaxis.set_minor_locator(LogLocator(subs=tuple(range(2, 10)) if fine else (2.0, 5.0)))
        axes.yaxis.set_minor_formatter(FuncFormatter(_decimal))
    axes.set_xlabel(STEP_AXIS, fontsize=FONT + 1)
    axes.set_ylabel(ylabel, fontsize=FONT + 1)
    axes.tick_params(labelsize=FONT)
    axes.grid(True, which="major", alpha=0.3)
    axes.margins(x=0.01)


def metric_figure(sweep: str, name: str, curves: Sequence[Curve], reference: Curve | None, window_note: str) -> Figure:
    """The whole run on the left; on the right the last `ZOOM_FROM` of the steps with the y axis fitted to them,
    where the points' final differences show."""
    title, ylabel = METRIC_AXES.get(name, (name, name))
    shown = [c for c in curves if c.steps] + ([reference] if reference is not None else [])
    figure = _figure(13, 6.8)
    figure.suptitle(f"{sweep} — {title}", fontsize=FONT + 2, x=0.01, ha="left")
    if not shown:
        whole = figure.add_subplot()
        whole.set_title(window_note, fontsize=FONT - 1, color="0.35", loc="left")
        _value_axis(whole, ylabel, log=False)
        whole.set_xticks([])
        whole.set_yticks([])
        missing = [c.missing for c in curves if c.missing]  # which runs, and where each stands
        whole.text(
            0.5,
            0.5,
            "no point has logged this metric yet"
            + ("\n\n" + textwrap.fill(f"no values: {', '.join(missing)}", NOTE_WIDTH) if missing else ""),
            ha="center",
            va="center",
            transform=whole.transAxes,
            fontsize=FONT + 1,
        )
        return figure
    whole, zoom = figure.subplots(1, 2, width_ratios=(3, 2))
    whole.set_title(textwrap.fill(window_note, NOTE_WIDTH), fontsize=FONT - 1, color="0.35", loc="left")
    styles = _styles(shown)
    log = _log_scale_helps(shown)
    striped = _draw(whole, shown, styles)
    _draw(zoom, shown, styles)
    _value_axis(whole, ylabel + (", log scale" if log else ""), log)
    last = max(s for c in shown for s in c.steps)
    first = min(s for c in shown for s in c.steps)
    start = first + (last - first) * (1 - ZOOM_FROM)
    limits = _zoom_range(shown, start, log)
    _value_axis(zoom, "", log, fine=limits is not None and limits[1] / limits[0] < 15)
    if last > start:  # one logged step: no span to zoom into (matplotlib warned of a singular range)
        zoom.set_xlim(start, last + (last - start) * 0.02)
    if limits is not None:
        zoom.set_ylim(*limits)
    zoom.set_title(f"the last {ZOOM_FROM:.0%} of the steps, zoomed", fontsize=FONT - 1, color="0.35", loc="left")
    missing = [c.missing for c in curves if not c.steps and c.missing]
    notes = ([STRIPED_NOTE] if striped else []) + ([f"no values: {', '.join(missing)}"] if missing else [])
    _legend(figure, shown, styles, "; ".join(notes))
    return figure


def schedules_figure(sweep: str, curves: Mapping[str, Sequence[Curve]]) -> Figure:
    figure = _figure(14, 6.2)
    grid = figure.subplots(1, len(SCHEDULES), sharex=True)
    all_curves = next(iter(curves.values()), [])
    styles = _styles(all_curves)
    striped = False
    for axes, (_, field, ylabel) in zip(grid, SCHEDULES, strict=True):
        striped |= _draw(axes, curves.get(field, []), styles)
        axes.set_title(ylabel, fontsize=FONT + 1)
        axes.set_xlabel(STEP_AXIS, fontsize=FONT)
        axes.set_ylabel(field, fontsize=FONT)
        axes.tick_params(labelsize=FONT - 1)
        axes.grid(True, alpha=0.3)
        axes.margins(x=0.01, y=0.08)
    figure.suptitle(
        f"{sweep} — loss-weight schedules per point (as logged; from the spec where not logged)",
        fontsize=FONT + 2,
        x=0.01,
        ha="left",
    )
    if all_curves:
        _legend(figure, all_curves, styles, STRIPED_NOTE if striped else "")
    return figure


def write_plots(
    results: Results, logs: Mapping[str, Sequence[LogLine]], specs: Mapping[str, DistillSpec], out_dir: Path
) -> list[Path]:
    """Write `kl_div_T1.png`, `hard_loss.png` and `schedules.png` to `out_dir` (created); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, filename in PLOT_FILES.items():
        reference = reference_curve(results, logs) if name == HARD_LOSS else None
        note = source_note(results, logs, name)
        figure = metric_figure(results.sweep, name, metric_curves(results, logs, name), reference, note)
        written.append(_save(figure, out_dir / filename))
    schedules = schedules_figure(results.sweep, schedule_curves(results, logs, specs))
    written.append(_save(schedules, out_dir / SCHEDULES_FILE))
    return written


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": PLOT_SOFTWARE})
    return path
