"""Reading what a run wrote: `metrics.jsonl` and `summary.json` under its output path (local or fsspec URL).

A running point's files may be missing or half-written (the last line cut off mid-write): those read as absent
or shorter, never as an error.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import fsspec


@dataclasses.dataclass(frozen=True)
class LogLine:
    """One `metrics.jsonl` record: `metrics[name] = (sum, count)` accumulated since the previous record."""

    step: int
    time: float | None
    tokens: int | None
    tokens_per_sec: float | None
    metrics: dict[str, tuple[float, float]]


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    path: str
    log: tuple[LogLine, ...] = ()
    summary: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None

    @property
    def last_step(self) -> int | None:
        if self.summary and isinstance(self.summary.get("step"), int):
            return self.summary["step"]
        return self.log[-1].step if self.log else None

    @property
    def exists(self) -> bool:
        return bool(self.log) or self.summary is not None


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _read_text(path: str) -> str | None:
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, UnicodeDecodeError):
        return None
    except OSError:
        return None


def _read_json(path: str) -> dict | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_log_line(line: str) -> LogLine | None:
    """A record, or None for a blank, cut-off or foreign line."""
    try:
        raw = json.loads(line)
        metrics = {
            str(name): (float(pair["sum"]), float(pair["count"]))
            for name, pair in (raw.get("metrics") or {}).items()
            if isinstance(pair, dict) and "sum" in pair and "count" in pair
        }
        return LogLine(
            step=int(raw["step"]),
            time=_float(raw.get("time")),
            tokens=int(raw["tokens"]) if isinstance(raw.get("tokens"), (int, float)) else None,
            tokens_per_sec=_float(raw.get("tokens_per_sec")),
            metrics=metrics,
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_run_outputs(path: str) -> RunOutputs:
    """Everything readable under `path` (a run's output directory)."""
    text = _read_text(join(path, "metrics.jsonl")) or ""
    lines = tuple(record for record in map(parse_log_line, text.splitlines()) if record is not None)
    return RunOutputs(path, lines, _read_json(join(path, "summary.json")), _read_json(join(path, "spec.json")))
