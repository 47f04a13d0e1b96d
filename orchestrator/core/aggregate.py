"""Metric aggregation over logging windows, from the trainer's (sum, count) pairs.

A window's value is Σsum / Σcount over its records: token-weighted, so a window with many padded tokens is not
over-counted, and never a mean of per-record means.

Held-out metrics (`eval/...`, logged on the steps that evaluated the run's `eval` set) are read differently: a
run's value is its last evaluation (`run_value`), the whole fixed set under the final model — an average of
evaluations at different steps would mix models, and the set has no sampling noise to average away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orchestrator.outputs import LogLine

HARD_LOSS = "distill/hard_loss"
KL_T1 = "distill/kl_div_T1"  # the guide's cross-run comparison metric
EVAL_PREFIX = "eval/"
# The trainer logs these with the cross-entropy's (sum, count); their value is exp(Σsum/Σcount)
# (`trainer.loss.PERPLEXITY_METRICS`). The student's falls back to the hard loss, which is the same cross-entropy.
PERPLEXITY_OF = {
    "distill/student_perplexity": HARD_LOSS,
    "distill/teacher_perplexity": "distill/teacher_loss",
    "eval/student_perplexity": "eval/hard_loss",
}
MAX_EXP = 700.0  # exp overflows a float past ~709


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
    """A metric over `records`: Σsum/Σcount; a perplexity is exp of the window's mean cross-entropy, never a
    mean of per-record perplexities (inf past exp's range; None when nothing was logged)."""
    if name in PERPLEXITY_OF:
        loss = weighted_mean(records, name)
        if loss is None:
            loss = weighted_mean(records, PERPLEXITY_OF[name])
        if loss is None:
            return None
        return math.exp(loss) if loss < MAX_EXP else math.inf
    return weighted_mean(records, name)


def is_eval(name: str) -> bool:
    return name.startswith(EVAL_PREFIX)


def eval_name(name: str) -> str:
    """The held-out twin of a training metric: `distill/kl_div_T1` -> `eval/kl_div_T1`."""
    return EVAL_PREFIX + name.split("/", 1)[-1]


def last_evaluation(log: Sequence[LogLine]) -> Sequence[LogLine]:
    """The latest record holding held-out metrics, as a one-record window (empty when the run never evaluated)."""
    for record in reversed(log):
        if any(is_eval(name) for name in record.metrics):
            return [record]
    return []


def run_value(log: Sequence[LogLine], window: int, name: str) -> float | None:
    """A run's value of `name`: a held-out metric from its last evaluation; a training metric over its last
    `window` records (all when 0)."""
    return metric(last_evaluation(log) if is_eval(name) else last(log, window), name)


def describe_window(window: int) -> str:
    """How column headers name the aggregation: `last 5` or `all`."""
    return f"last {window}" if window > 0 else "all"


def tokens_per_sec(log: Sequence[LogLine], window: int) -> float | None:
    """Throughput across the window: the tokens each record added over the time the trainer took for them (its
    logged rate), summed. Wall time between records is used only where a record has no rate: across a resume it
    holds the downtime between the attempts (a run killed and retried read ~30x slower than it trained)."""
    records = last(log, window)
    if not records:
        return None
    start_index = len(log) - len(records) - 1
    tokens = seconds = 0.0
    for previous, record in zip([log[start_index] if start_index >= 0 else None, *records[:-1]], records):
        # The log's first record counts the tokens since the run began (its rate is over them, compilation left
        # out): a window over every record is the whole run, as summary.json's rate is (it dropped that interval).
        before = 0 if previous is None else previous.tokens
        if None in (before, record.tokens):
            continue
        added = record.tokens - before
        if record.tokens_per_sec:
            took = added / record.tokens_per_sec
        elif previous is not None and None not in (previous.time, record.time) and record.time > previous.time:
            took = record.time - previous.time
        else:
            continue
        tokens, seconds = tokens + added, seconds + took
    if seconds > 0 and tokens > 0:
        return tokens / seconds
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


FULL_VOCABULARY = "vocabulary"


def kl_support(spec) -> str:
    """What a run's logged kl_div_T1 is a divergence over: the whole vocabulary, or (an offline student, from a
    logit cache) the teacher's top-k tokens and one bucket for the rest, `top-16+tail`. The second is at or
    below the first for the same student (at T=1) and grows with k: the two never compare."""
    if getattr(spec, "offline_data_dir", None) and getattr(spec, "mode", "distill") == "distill":
        return f"top-{spec.top_k}+tail" if spec.top_k else "top-k+tail"
    return FULL_VOCABULARY
