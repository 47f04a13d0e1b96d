"""The names of the metrics the trainer logs, defined once and JAX-free: the trainer logs exactly these
(`trainer.loss`, `trainer.step` import them) and the sweep file's early-stopping rules are checked against them.

A run logs its mode's training metrics on every log line (`distill/...`, whatever the mode: the guide's tags), and
with an `eval:` set the held-out metrics (`eval/...`) on the lines of the steps that evaluate it. A
`mode: teacher_logits` run writes a logit cache and logs no metrics. Perplexities carry the cross-entropy's
`(sum, count)`; a window's value is exp(Σsum/Σcount) (`PERPLEXITY_METRICS`).

Metric names in files are full names (`distill/kl_div_T1`); a name without a `/` means the first of a run's
metrics that ends with it (`kl_div_T1`: `distill/kl_div_T1`), as `orchestrator.core.early_stop` reads curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distillspec.config import DistillSpec

PERPLEXITY_METRICS = ("distill/student_perplexity", "distill/teacher_perplexity", "eval/student_perplexity")
DISTILL_METRICS = (
    "distill/soft_loss",
    "distill/hard_loss",
    "distill/teacher_loss",
    "distill/kl_div_at_T",
    "distill/kl_div_T1",
    "distill/student_perplexity",
    "distill/teacher_perplexity",
    "distill/out_proj_feature_loss",
    "distill/total_loss",
    "distill/alpha",
    "distill/beta_feature",
    "distill/temperature",
    "distill/top1_agreement",
)
PRETRAIN_METRICS = ("distill/hard_loss", "distill/student_perplexity", "distill/total_loss")
# The held-out set under online distillation (the teacher in memory), and under pretraining or offline
# distillation (no teacher to compare with: the student's loss only).
EVAL_METRICS = (
    "eval/kl_div_T1",
    "eval/hard_loss",
    "eval/student_perplexity",
    "eval/top1_agreement",
    "eval/teacher_loss",
)
PRETRAIN_EVAL_METRICS = ("eval/hard_loss", "eval/student_perplexity")
# Every name some run logs, training metrics first (the order a short name is resolved in).
ALL_METRICS: tuple[str, ...] = tuple(
    dict.fromkeys(DISTILL_METRICS + PRETRAIN_METRICS + EVAL_METRICS + PRETRAIN_EVAL_METRICS)
)
EVAL_PREFIX = "eval/"
# Better when higher (the others, losses, KL and perplexities, are better lower).
HIGHER_IS_BETTER = ("distill/top1_agreement", "eval/top1_agreement")
# The loss's schedules as they were at each step: settings, not measures of the student.
SCHEDULE_METRICS = ("distill/alpha", "distill/beta_feature", "distill/temperature")


def training_metrics(spec: DistillSpec) -> tuple[str, ...]:
    """The metrics on every log line of a run of `spec`."""
    if spec.mode == "teacher_logits":
        return ()
    return DISTILL_METRICS if spec.mode == "distill" else PRETRAIN_METRICS


def held_out_metrics(spec: DistillSpec) -> tuple[str, ...]:
    """The metrics a run of `spec` logs on a held-out set, when it has one."""
    if spec.mode == "teacher_logits":
        return ()
    return EVAL_METRICS if spec.is_online_distillation else PRETRAIN_EVAL_METRICS


def eval_metrics(spec: DistillSpec) -> tuple[str, ...]:
    """The held-out metrics a run of `spec` logs (none without an `eval:` set)."""
    return held_out_metrics(spec) if spec.eval is not None else ()


def logged_metrics(spec: DistillSpec) -> tuple[str, ...]:
    """Every metric a run of `spec` logs."""
    return training_metrics(spec) + eval_metrics(spec)


def resolve(name: str, names: Sequence[str] = ALL_METRICS) -> str | None:
    """The metric of `names` that `name` means: itself, or for a name without a `/` the first that ends with
    `/name`; None when there is none."""
    if "/" in name:
        return name if name in names else None
    return next((known for known in names if known.endswith("/" + name)), None)


def did_you_mean(name: str, names: Sequence[str] = ALL_METRICS) -> str:
    """A hint for a name that `resolve` does not find in `names`: the closest name, else the list."""
    short = "/" not in name
    candidates = list(dict.fromkeys(n.split("/", 1)[1] for n in names)) if short else list(names)
    lowered = {c.lower(): c for c in candidates}
    close = get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return f"did you mean {lowered[close[0]]!r}?"
    return f"metrics: {', '.join(names)}" if names else ""


def not_logged_reason(name: str, spec: DistillSpec) -> str:
    """Why a run of `spec` does not log the metric `name` (one of ALL_METRICS, not in `logged_metrics(spec)`)."""
    if spec.mode == "teacher_logits":
        return "a mode: teacher_logits run writes a logit cache and logs no metrics"
    full = resolve(name) or name
    if full.startswith(EVAL_PREFIX):
        if full in held_out_metrics(spec):
            return "eval/ metrics are logged only by runs with a held-out set (`eval:`), and this spec has none"
        return (
            "a run without a teacher in memory (pretrain, offline distillation) logs only "
            + ", ".join(PRETRAIN_EVAL_METRICS)
            + " on a held-out set"
        )
    kind = "pretrain" if spec.mode == "pretrain" else "distill"
    return f"a {kind} run logs {', '.join(logged_metrics(spec))}"
