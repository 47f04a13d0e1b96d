"""Metric aggregation over logging windows, from the trainer's (sum, count) pairs.

A window's value is Σsum / Σcount over its records: token-weighted, so a window with many padded tokens is not
over-counted, and never a mean of per-record means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orchestrator.run_outputs import LogLine

HARD_LOSS = "distill/hard_loss"


def last(log: Sequence[LogLine], window: int) -> Sequence[LogLine]:
    """The last `window` records (all of them when `window` is 0)."""
    return log[-window:] if window > 0 else log


def weighted_mean(records: Sequence[LogLine], name: str) -> float | None:
    total = count = 0.0
    for record in records:
        if name in record.metrics:
            s, c = record.metrics[name]
            total += s
            count += c
    return total / count if count > 0 else None


def metric(records: Sequence[LogLine], name: str) -> float | None:
    """A metric over `records`; `student_perplexity` is exp of the window's hard loss, not a mean of
    perplexities."""
    if name.endswith("student_perplexity"):
        hard = weighted_mean(records, HARD_LOSS)
        return math.exp(hard) if hard is not None and hard < 700 else None
    return weighted_mean(records, name)


def tokens_per_sec(log: Sequence[LogLine], window: int) -> float | None:
    """Throughput across the window: tokens done over wall time elapsed, from the record before the window."""
    records = last(log, window)
    if not records:
        return None
    start_index = len(log) - len(records) - 1
    if start_index >= 0:
        before, end = log[start_index], records[-1]
        if None not in (before.tokens, end.tokens, before.time, end.time) and end.time > before.time:
            return (end.tokens - before.tokens) / (end.time - before.time)
    rates = [r.tokens_per_sec for r in records if r.tokens_per_sec is not None]
    return sum(rates) / len(rates) if rates else None


def series(log: Sequence[LogLine], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric per record, for plots."""
    steps, values = [], []
    for record in log:
        value = metric([record], name)
        if value is not None:
            steps.append(record.step)
            values.append(value)
    return steps, values
