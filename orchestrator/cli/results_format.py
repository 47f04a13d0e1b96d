"""The results table as text (a rich Table), markdown (a pull-request comment), CSV and JSON.

JSON and CSV carry raw numbers (full precision, `null`/empty for missing) and the aggregation's parameters;
text and markdown round for people and mark the best point with ★.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from rich.table import Table
from rich.text import Text

from orchestrator.cli.console import printable
from orchestrator.core.markdown import cell as md_cell
from orchestrator.core.results import (
    EVAL,
    FULL_VOCABULARY,
    KL_T1,
    MIXED,
    TABLE_METRICS,
    Results,
    Row,
    seed_group,
    short_metric,
)
from orchestrator.core.run_status import Phase

MISSING = "—"
BEST = "★"


# --- numbers for people -----------------------------------------------------------------------------------


def number(value: float | None, digits: int = 4) -> str:
    """`digits` significant digits, `—` when missing; inf/nan spelled out."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"


def rate(value: float | None) -> str:
    """Throughput: a whole number with thousands separators."""
    return MISSING if value is None or not math.isfinite(value) else f"{value:,.0f}"


def duration(seconds: float | None) -> str:
    """`8.9 s`, `12 m 05 s`, `3 h 07 m`."""
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def signed(delta: float | None, relative: float | None) -> str:
    if delta is None or not math.isfinite(delta):
        return MISSING
    text = f"{delta:+.3g}".replace("-", "−")
    if relative is not None and math.isfinite(relative):
        text += f" ({relative:+.0%})".replace("-", "−")
    return text


def steps(row: Row) -> str:
    if row.step is None:  # not started (`0/300` read as "started, at step 0"; `status` says `—`)
        return MISSING if row.total_steps is None else f"{MISSING}/{row.total_steps}"
    return f"{row.step}/{row.total_steps}" if row.total_steps is not None else str(row.step)


def role(row: Row) -> str:
    return {"baseline": "baseline", "prerequisite": "prerequisite"}.get(row.role, "")


def cost(results: Results, row: Row) -> str:
    return duration(row.wall_time_sec) if results.chips is None else number(row.chip_hours, 3)


def cost_header(results: Results, sep: str = " ") -> str:
    return "wall time" if results.chips is None else f"chip-h{sep}({results.chips} chips)"


def title(results: Results) -> str:
    where = "local" if results.chips is None else f"{results.tpu_type} × {results.chips} chips"
    return f"{results.sweep}: {len(results.rows)} run(s) on {where}"


def legend(results: Results) -> str:
    """What the numbers mean, one line."""
    window = results.aggregation.window
    span = f"the last {window} log records" if window else "every log record"
    train = f"token-weighted mean (Σsum/Σcount) over {span} of each run"
    held_out = "eval/* metrics of each run's last evaluation on its held-out set"
    sources = results.sources
    if sources == {EVAL}:
        parts = [f"metrics: {held_out}; perplexity = exp(mean hard loss)"]
    elif sources & {EVAL, MIXED}:
        parts = [
            f"metrics: {held_out} where a run has one (column `from`), else {train}"
            + (
                "; eval+train: what its evaluation does not log (offline: no teacher at eval) is training's"
                if MIXED in sources
                else ""
            )
            + "; perplexity = exp(mean hard loss)"
        ]
    else:
        parts = [f"metrics: {train}; perplexity = exp(mean hard loss)"]
    finished = [r for r in results.rows if r.role != "prerequisite" and r.status.phase == Phase.SUCCEEDED]
    ended = [
        r
        for r in results.rows
        if r.role != "prerequisite" and r.status.phase in (Phase.FAILED, Phase.DIVERGED, Phase.STOPPED)
    ]
    if finished and all(r.damage for r in finished):  # they logged it: their outputs are not to be trusted
        why_none = " (the finished points' outputs are damaged)"
    elif finished:
        why_none = " (no finished point logged it)"
    else:
        why_none = " (no point succeeded)" if ended else " (none finished yet)"
    parts.append(f"{BEST} lowest kl_div_T1 among finished points" + ("" if results.best else why_none))
    if len(results.best_rows) > 1:
        parts[-1] += " (with seeds: the configuration with the lowest mean over its seeds, each seed marked)"
    offline = sorted({r.kl_over for r in results.rows if r.kl_over not in (None, FULL_VOCABULARY)})
    if offline:
        parts.append(
            f"kl_div_T1 of offline points (column `kl over`: {', '.join(offline)}) is over the teacher's top-k tokens "
            "and one bucket for the rest: lower than over the whole vocabulary for the same student, so compared "
            f"only with points of the same kind, and {BEST} goes to a whole-vocabulary point when there is one"
        )
    failed = [r for r in results.rows if r.status.phase in (Phase.FAILED, Phase.DIVERGED) and r.status.message]
    if failed:  # the status column says Failed (UserError); why is what a reader wants next (`status` says it too)
        parts.append(
            "why: "
            + "; ".join(
                f"{r.name} {r.status.phase} ({r.status.reason}): {printable(r.status.message)}" for r in failed[:3]
            )
            + (f"; and {len(failed) - 3} more (`distillctl status`)" if len(failed) > 3 else "")
        )
    damaged = [r for r in results.rows if r.damage]
    if damaged:
        parts.append(
            "⚠ damaged outputs (never ranked): "
            + "; ".join(f"{r.name}: {', '.join(r.damage)}" for r in damaged[:3])
            + (f"; and {len(damaged) - 3} more" if len(damaged) > 3 else "")
        )
    if results.baselines:
        names = ", ".join(b.name for b in results.baselines)
        several = len(results.baselines) > len({b.seed for b in results.baselines})
        parts.append(
            f"Δkl vs the best (lowest kl_div_T1) of the baselines {names}"
            if several
            else f"Δkl vs the baseline {names}"
        )
        if len(sources) > 1:  # a run's eval KL is never compared with a baseline's training KL
            parts[-1] += " where both are shown by the same kind of metrics (eval or train)"
    return "; ".join(parts)


def _headers(results: Results, sep: str = " ") -> list[str]:
    """Column headers; metric headers name their aggregation (`kl_div_T1 (last 5)`), `sep` between the two."""
    window = results.aggregation
    return (
        ["#", "point", "role", "status", "restarts", "step"]
        + (["from"] if _mixed(results) else [])
        + ([f"kl{sep}over"] if _offline(results) else [])
        + [window.header(m, results.sources).replace(" (", f"{sep}(", 1) for m in TABLE_METRICS]
        + [f"tokens/s{sep}({window.describe})", cost_header(results, sep), f"Δkl_div_T1{sep}vs baseline"]
    )


def _mixed(results: Results) -> bool:
    """Some rows show eval metrics and others training metrics: a `from` column says which."""
    return len(results.sources) > 1 or MIXED in results.sources


def _offline(results: Results) -> bool:
    """Some points are offline students: a `kl over` column says what each kl_div_T1 is over."""
    return any(r.kl_over not in (None, FULL_VOCABULARY) for r in results.rows)


def _cells(results: Results, row: Row) -> list[str]:
    return (
        [
            row.name,
            (f"{BEST} " if row.best else "") + row.label,
            role(row),
            row.status.shown + (" ⚠ damaged outputs" if row.damage else ""),
            str(row.status.restarts),
            steps(row),
        ]
        + ([_metrics_from(row) or MISSING] if _mixed(results) else [])
        + ([row.kl_over or MISSING] if _offline(results) else [])
        + [number(row.metrics.get(m)) for m in TABLE_METRICS]
        + [rate(row.tokens_per_sec), cost(results, row), signed(row.delta_kl, row.delta_kl_relative)]
    )


# --- formats ----------------------------------------------------------------------------------------------


def text_table(results: Results) -> Table:
    # Text, not markup: a trainer's message or an axis value may hold `[/data/x.jsonl]`, which rich read as a tag
    # (a closing tag that matches none ended the command as an internal error)
    table = Table(
        title=Text(title(results)), title_justify="left", caption=Text(legend(results)), caption_justify="left"
    )
    for i, header in enumerate(_headers(results, "\n")):
        table.add_column(Text(header), justify="right" if i >= 4 else "left")
    for row in results.rows:
        style = "bold green" if row.best else ("dim" if row.role == "prerequisite" else None)
        table.add_row(*(Text(cell) for cell in _cells(results, row)), style=style)
    return table


def markdown(results: Results) -> str:
    """A GitHub-flavoured markdown section: title, the table, then what the numbers mean."""
    headers = _headers(results)
    align = ["---:" if i == 0 or i >= 4 else "---" for i in range(len(headers))]
    lines = [f"### distillctl results: `{results.sweep}`", ""]
    best, seeds = results.best, results.best_rows
    sown = [r for r in results.rows if best is not None and r.role == "point" and seed_group(r) == seed_group(best)]
    if len(sown) > 1:  # a configuration over its seeds: their mean, and how far apart they are
        kl = "eval/kl_div_T1" if best.source == EVAL else "kl_div_T1"
        values = [r.metrics[KL_T1] for r in seeds]
        label = ", ".join(part for part in best.label.split(", ") if not part.startswith("seed="))
        of = f"{len(seeds)} of {len(sown)} seeds succeeded" if len(seeds) < len(sown) else f"{len(seeds)} seeds"
        line = (
            f"Best point: **{md_cell(label)}** (mean of {of}: {', '.join(str(r.seed) for r in seeds)}), "
            f"{kl} {number(sum(values) / len(values))} ({number(min(values))} to {number(max(values))})"
        )
        deltas = [r.delta_kl for r in seeds]
        if all(d is not None for d in deltas):
            line += f", {signed(sum(deltas) / len(deltas), None)} vs the baseline (mean over the seeds)"
        lines += [line + ".", ""]
    elif best is not None:
        kl = "eval/kl_div_T1" if best.source == EVAL else "kl_div_T1"
        line = f"Best point: **{md_cell(best.label)}** (`{best.run_id}`), {kl} {number(best.metrics.get(KL_T1))}"
        if best.delta_kl is not None:
            base = next((r for r in results.rows if r.run_id == best.baseline_run_id), None)
            named = f" {base.name} ({md_cell(base.label)})" if base is not None and len(results.baselines) > 1 else ""
            line += f", {signed(best.delta_kl, best.delta_kl_relative)} vs the baseline{named}"
        lines += [line + ".", ""]
    lines += ["| " + " | ".join(md_cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    for row in results.rows:
        cells = _cells(results, row)
        if row.best:
            cells = [f"**{c}**" if c and c != MISSING else c for c in cells]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    lines += ["", f"<sub>{title(results)}. {md_cell(legend(results))}.</sub>"]
    return "\n".join(lines) + "\n"


CSV_FIXED = ["index", "name", "run_id", "role", "label"]


def csv_text(results: Results) -> str:
    """One header line, one line per run; axis values get a column each; numbers at full precision."""
    axes = results.axis_names
    columns = (
        CSV_FIXED
        + [f"axis:{a}" for a in axes]
        + [
            "seed",
            "phase",
            "reason",
            "message",
            "restarts",
            "step",
            "total_steps",
            "window",
            "metrics_from",
            "kl_div_T1_over",
        ]
        + [short_metric(m) for m in TABLE_METRICS]
        + [
            "tokens_per_sec",
            "wall_time_sec",
            "chip_hours",
            "delta_kl_div_T1",
            "delta_kl_div_T1_relative",
            "baseline_run_id",
            "best",
            "damage",
            "output_path",
        ]
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in results.rows:
        writer.writerow(
            [_index(row), row.name, row.run_id, row.role, row.label]
            + [_csv(row.axis_values[a]) if a in row.axis_values else "" for a in axes]
            + [
                row.seed,
                row.status.phase,
                row.status.reason,
                row.status.message,
                row.status.restarts,
                _csv(row.step),
                _csv(row.total_steps),
                results.aggregation.window,
                _metrics_from(row) or "",
                row.kl_over or "",
            ]
            + [_csv(row.metrics.get(m)) for m in TABLE_METRICS]
            + [
                _csv(row.tokens_per_sec),
                _csv(row.wall_time_sec),
                _csv(row.chip_hours),
                _csv(row.delta_kl),
                _csv(row.delta_kl_relative),
                row.baseline_run_id or "",
                "true" if row.best else "false",
                "; ".join(row.damage),  # a damaged row is never ranked: a CSV reader must not rank it either
                row.output_path,
            ]
        )
    return buffer.getvalue()


def _csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _metrics_from(row: Row) -> str | None:
    """Where a row's metrics come from (eval, train, eval+train); None before it has any (a queued run with an
    eval set read "train")."""
    return row.source if any(v is not None for v in row.metrics.values()) else None


def _index(row: Row) -> int | str | None:
    """A point's place in the grid (`plan`'s number); none for a prerequisite, which its name says (it read 0, as
    point 0 does)."""
    return None if row.role == "prerequisite" else row.index


def _json_number(value: float | None) -> float | str | None:
    """JSON has no inf/nan: those become strings so nothing is silently dropped."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


def to_json(results: Results) -> dict[str, Any]:
    best = results.best
    return {
        "sweep": results.sweep,
        "target": {"kind": results.target_kind, "tpu_type": results.tpu_type, "chips": results.chips},
        "aggregation": results.aggregation.to_json(),
        "metrics": list(TABLE_METRICS),
        "best": best.run_id if best else None,
        "best_runs": [r.run_id for r in results.best_rows],  # the best configuration's seeds (one run without seeds)
        "baselines": [b.run_id for b in results.baselines],
        "runs": [
            {
                "index": _index(row),
                "name": row.name,
                "run_id": row.run_id,
                "role": row.role,
                "label": row.label,
                "axis_values": dict(row.axis_values),
                "seed": row.seed,
                "status": {
                    "phase": row.status.phase,
                    "reason": row.status.reason,
                    "message": row.status.message,
                    "shown": row.status.shown,
                },
                "restarts": row.status.restarts,
                "step": row.step,
                "total_steps": row.total_steps,
                "metrics": {m: _json_number(row.metrics.get(m)) for m in TABLE_METRICS},
                "metrics_from": _metrics_from(row),
                # which logged metric each value is (an eval run's distill/kl_div_T1 is its eval/kl_div_T1)
                "metrics_logged_as": dict(row.logged_as),
                # kl_div_T1 over the whole vocabulary, or an offline student's over top-k + tail: never compared
                "kl_div_T1_over": row.kl_over,
                "tokens_per_sec": _json_number(row.tokens_per_sec),
                "wall_time_sec": _json_number(row.wall_time_sec),
                "chip_hours": _json_number(row.chip_hours),
                "baseline_run_id": row.baseline_run_id,
                "delta_kl_div_T1": _json_number(row.delta_kl),
                "delta_kl_div_T1_relative": _json_number(row.delta_kl_relative),
                "best": row.best,
                "damage": list(row.damage),
                "output_path": row.output_path,
            }
            for row in results.rows
        ],
    }
