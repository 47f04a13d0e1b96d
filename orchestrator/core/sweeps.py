"""Load and expand a sweep file, with command-line overrides of its target: the first stage of every command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from distillspec import tpu
from distillspec.problems import Problem
from distillspec.sweep import SweepSource, load_sweep, override_target
from orchestrator.core import expansion
from orchestrator.errors import USAGE_CODES, DistillctlError, InvalidSpecError, UsageError
from orchestrator.exit_codes import ExitCode


@dataclasses.dataclass(frozen=True)
class TargetOverrides:
    """Values given on the command line that replace the sweep's `target` fields (None: keep the file's)."""

    tpu_type: str | None = None
    slices: int | None = None
    image: str | None = None
    queue: str | None = None
    priority: str | None = None
    output_base: str | None = None  # not part of run ids: where their outputs are read
    labels: tuple[tuple[str, str], ...] = ()  # added to target.labels


def expand_sweep(path: Path, overrides: TargetOverrides = TargetOverrides(), *, yes: bool = False):
    """The sweep in `path`, loaded and expanded with `overrides` applied (an `Expansion`), or the error that says
    why not: UsageError (unreadable file, unknown TPU type, a bad option value, too many points without `yes`),
    InvalidSpecError (every problem, located)."""
    source = load_overridden(path, overrides)
    raise_for(source.problems, path)
    return expand_checked(resolve_image(source), path, yes=yes)


def load_overridden(path: Path, overrides: TargetOverrides, *, image_required: bool = True) -> SweepSource:
    """The sweep in `path` with `overrides` applied to its target, its problems kept for the caller, or a UsageError
    when the file cannot be read or a command-line value is wrong (the option is named, not the file).

    `image_required=False` (the service, whose default image completes a target) lets --tpu-type turn a local
    sweep into a cluster one without --image."""
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
    fields = ("slices", "image", "queue", "priority", "output_base")
    changes = {k: getattr(overrides, k) for k in fields if getattr(overrides, k) is not None}
    if tpu_type is not None:
        changes["tpu_type"] = tpu_type
        if sweep.target.kind == "local":
            changes["kind"] = "kubernetes"  # a TPU type means a cluster run
            if image_required and "image" not in changes and sweep.target.image is None:
                # else target.image is blamed, a line the user never wrote
                raise UsageError(
                    f"--tpu-type makes the local sweep {sweep.name} a cluster run, and a cluster run needs an image",
                    "pass --image too (run ids include it); drop --tpu-type to read or run the local runs",
                )
    if overrides.labels:
        changes["labels"] = {**sweep.target.labels, **dict(overrides.labels)}
    if sweep.target.kind == "local" and "kind" not in changes:
        # A local run has no image, queue, priority or JobSet labels: say so rather than take the option in silence.
        ignored = [OPTIONS[k] for k in ("slices", "image", "queue", "priority", "labels") if k in changes]
        changes = {k: v for k, v in changes.items() if OPTIONS[k] not in ignored}
        if ignored:
            problem = Problem(
                (),
                "option_ignored",
                f"{', '.join(ignored)} ignored: sweep {sweep.name} runs locally (target.kind: local), with no "
                "slices, image, Kueue queue, priority or JobSet labels",
                "drop the option, or pass --tpu-type (and --image) to run the sweep on a cluster",
                severity="warning",
            )
            source = dataclasses.replace(source, problems=(*source.problems, problem))
    if changes:
        source = override_target(source, **changes)  # target rules run again: --image completes a target
        _raise_for_options(source.problems, overrides)
    return source


# The command-line option that sets each target field (TargetOverrides).
OPTIONS = {
    "tpu_type": "--tpu-type",
    "slices": "--slices",
    "image": "--image",
    "queue": "--queue",
    "priority": "--priority",
    "labels": "--label",
}


def _raise_for_options(problems, overrides: TargetOverrides) -> None:
    """UsageError for the first error in a value given on the command line: the option is wrong, not the file
    (`--label a=b=c` read as an error at the file's `target:` line, exit 4)."""
    given = {field for field in OPTIONS if field != "labels" and getattr(overrides, field) is not None}
    labels = dict(overrides.labels)
    for problem in problems:
        loc = tuple(problem.loc)
        if not problem.is_error or len(loc) < 2 or loc[0] != "target":
            continue
        if loc[1] in given or (loc[1] == "labels" and len(loc) > 2 and loc[2] in labels):
            value = f"{loc[2]}={labels[loc[2]]}" if loc[1] == "labels" else getattr(overrides, loc[1])
            message = problem.message.removesuffix(" (given on the command line)")
            raise UsageError(f"{OPTIONS[loc[1]]} {value}: {message}", problem.hint)


def expand_checked(source: SweepSource, path: Path, *, yes: bool = False) -> expansion.Expansion:
    """`source` expanded, or the error that says why not: UsageError (too many points without `yes`),
    InvalidSpecError (every problem, located)."""
    try:
        result = expansion.expand(source, max_points=None if yes else expansion.DEFAULT_MAX_POINTS)
    except expansion.GridTooLarge as e:
        if e.limit >= expansion.HARD_MAX_GRID:  # --yes does not lift this one: the file itself is the problem
            raise DistillctlError(
                f"{path}: {e}",
                "split it into several sweeps, or use fewer values per axis",
                exit_code=ExitCode.INVALID_SPEC,
            ) from None
        raise UsageError(f"{path}: {e}", "check the axes, or pass --yes to expand it anyway") from None
    raise_for(result.problems, path)
    assert isinstance(result, expansion.Expansion)
    return result


def with_memory_warnings(result: expansion.Expansion, rows=None) -> expansion.Expansion:
    """`result` with `plan`'s memory warnings among its problems (from its `rows` when the caller has them):
    `sweep`, `render` and their dry runs launched a run estimated at 154 GB per chip on a 32 GB TPU without a word
    (only `plan` said so). Only the commands that launch or show runs ask: a command reading finished runs has no
    use for them."""
    from orchestrator.core import plan

    found = plan.memory_problems(plan.plan(result) if rows is None else rows, result.sweep.target)
    return dataclasses.replace(result, problems=(*result.problems, *(result.locate(p) for p in found)))


def resolve_image(source: SweepSource) -> SweepSource:
    """With `target.resolve_image`, a cluster image named by tag becomes `name@<digest>` as its registry says now
    (`orchestrator.registry`); when the registry cannot say, the tag stays and a warning says why (run ids then
    hash the tag, as without the option)."""
    target = source.sweep.target if source.sweep else None
    if target is None or not (target.resolve_image and target.on_cluster and target.image):
        return source
    from orchestrator import registry  # urllib: only when a sweep asks for it (CLI start-up time)

    name = registry.parse_image(target.image)
    if name.digest:
        return source
    try:
        digest = registry.resolve_digest(target.image)
    except registry.ImageNotResolved as e:
        problem = Problem(
            ("target", "image"),
            "image_not_resolved",
            f"{e.message}: run ids hash the tag {target.image!r}",
            e.hint,
            severity="warning",
        )
        return dataclasses.replace(source, problems=(*source.problems, source.locate(problem)))
    return override_target(source, image=name.with_digest(digest))


def raise_for(problems: tuple[Problem, ...], path: Path) -> None:
    """Raise when `problems` hold an error: a usage error when the file could not be read, else an invalid sweep."""
    errors = [p for p in problems if p.is_error]
    if not errors:
        return
    if all(p.code in USAGE_CODES for p in errors) and errors[0].loc == ():
        raise UsageError(errors[0].message, errors[0].hint)
    raise InvalidSpecError(f"{path} is not a valid sweep", problems, "fix the problems above")
