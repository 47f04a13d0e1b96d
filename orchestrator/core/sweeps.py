"""Load and expand a sweep file, with command-line overrides of its target: the first stage of every command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from distillspec import tpu
from distillspec.problems import Problem
from distillspec.sweep import load_sweep, override_target
from orchestrator.core import expansion
from orchestrator.errors import USAGE_CODES, InvalidSpecError, UsageError


@dataclasses.dataclass(frozen=True)
class TargetOverrides:
    """Values given on the command line that replace the sweep's `target` fields (None: keep the file's)."""

    tpu_type: str | None = None
    slices: int | None = None
    image: str | None = None
    queue: str | None = None
    priority: str | None = None
    labels: tuple[tuple[str, str], ...] = ()  # added to target.labels


def expand_sweep(path: Path, overrides: TargetOverrides = TargetOverrides(), *, yes: bool = False):
    """The sweep in `path`, loaded and expanded with `overrides` applied (an `Expansion`), or the error that says
    why not: UsageError (unreadable file, unknown TPU type, too many points without `yes`), InvalidSpecError
    (every problem, located)."""
    tpu_type = overrides.tpu_type
    if tpu_type is not None:
        try:
            tpu_type = tpu.lookup(tpu_type).name
        except tpu.UnknownTpuType as e:
            raise UsageError(str(e), "`distillctl tpus` lists the TPU types distillctl knows") from None
    source = load_sweep(path)
    if source.sweep is None:
        raise_for(source.problems, path)
    sweep = source.sweep
    assert sweep is not None  # load_sweep returns no sweep only with errors, raised above
    fields = ("slices", "image", "queue", "priority")
    changes = {k: getattr(overrides, k) for k in fields if getattr(overrides, k) is not None}
    if tpu_type is not None:
        changes["tpu_type"] = tpu_type
        if sweep.target.kind == "local":
            changes["kind"] = "kubernetes"  # a TPU type means a cluster run
    if overrides.labels:
        changes["labels"] = {**sweep.target.labels, **dict(overrides.labels)}
    if changes:
        source = override_target(source, **changes)  # target rules run again: --image completes a target
    raise_for(source.problems, path)
    try:
        result = expansion.expand(source, max_points=None if yes else expansion.DEFAULT_MAX_POINTS)
    except expansion.GridTooLarge as e:
        raise UsageError(str(e), "check the axes, or pass --yes to expand it anyway") from None
    raise_for(result.problems, path)
    assert isinstance(result, expansion.Expansion)
    return result


def raise_for(problems: tuple[Problem, ...], path: Path) -> None:
    """Raise when `problems` hold an error: a usage error when the file could not be read, else an invalid sweep."""
    errors = [p for p in problems if p.is_error]
    if not errors:
        return
    if all(p.code in USAGE_CODES for p in errors) and errors[0].loc == ():
        raise UsageError(errors[0].message, errors[0].hint)
    raise InvalidSpecError(f"{path} is not a valid sweep", problems, "fix the problems above")
