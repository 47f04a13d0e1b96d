"""Sweep -> points: the grid, expanded deterministically, every point a validated spec with a stable identity.

Order: the cartesian product of the factors in file order — each `axes` entry, then each `zip` group, then
`seeds` — with the last factor varying fastest; points matching an `exclude` entry are dropped; then each
`baseline` entry (once per seed). With no axes the grid is the base spec alone. Indices number the final
list from 0.

For each point the spec data is: the base spec, then `overrides`, then the point's axis values, then
`${prerequisites.<name>.output}` placeholders filled with the prerequisite's output path. That data is
validated with the spec model and its cross-field checks; the run id hashes the resolved spec and the target
(`identity.run_id`), and the point's spec is given `name = run id` and `output_dir = target.output_base`, so
the trainer writes to `<output_base>/<run id>/`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from types import MappingProxyType
from typing import Any, Callable, Mapping

from distillspec import layout, spec_paths, tpu
from distillspec import logit_cache_manifest as logit_cache
from distillspec.config import DOCUMENT_SOURCES, DistillSpec
from distillspec.places import place
from distillspec.problems import Loc, Problem, has_errors
from distillspec.specfile import validate_data
from distillspec.sweep import (
    PLACEHOLDER,
    SpecSource,
    Sweep,
    SweepSource,
    axis_entries,
    is_remote,
    late_rule_problems,
    same_value,
    unlogged_metric_problems,
)
from distillspec.yaml_source import copy_plain
from orchestrator.core import identity

DEFAULT_MAX_POINTS = 64  # larger grids need an explicit yes (`--yes`)
HARD_MAX_GRID = 100_000  # never enumerated, whatever the caller allows


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep. `axis_values` are as the user wrote them (dotted or MaxText names; `seed` when the
    sweep has `seeds:`). `spec` is validated, with `name` = `run_id` and `output_dir` = the target's output base.
    `depends_on` maps prerequisite names to their run ids. `prerequisite` is set on prerequisite runs."""

    sweep: str
    index: int
    axis_values: Mapping[str, Any]
    spec: DistillSpec
    run_id: str
    spec_hash: str
    spec_json: str  # the canonical JSON of the resolved `spec`, as the trainer receives it; `spec_hash` hashes it
    jobset_name: str
    output_path: str
    is_baseline: bool
    seed: int
    depends_on: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    prerequisite: str | None = None

    @property
    def role(self) -> str:
        """`prerequisite`, `baseline` or `point`."""
        return "prerequisite" if self.prerequisite is not None else ("baseline" if self.is_baseline else "point")

    @property
    def key(self) -> str:
        """The short name of a run in tables and commands: its index, `3b` for a baseline, or the prerequisite's
        name."""
        if self.prerequisite is not None:
            return self.prerequisite
        return f"{self.index}b" if self.is_baseline else str(self.index)

    @property
    def label(self) -> str:
        """How messages name the point: `point 3 (loss.alpha.end=0.5, seed=1)`."""
        if self.prerequisite is not None:
            return f"prerequisite {self.prerequisite!r}"
        return _label(self.index, self.axis_values, self.is_baseline)


@dataclasses.dataclass(frozen=True)
class Expansion:
    """The outcome of expanding a loaded sweep: points (empty on any error), prerequisite runs, and every problem."""

    sweep: Sweep
    points: tuple[Point, ...]
    prerequisites: tuple[Point, ...]
    problems: tuple[Problem, ...]
    grid_size: int = 0  # points in the product, before exclusion
    excluded: int = 0
    source: SweepSource | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return not has_errors(list(self.problems))

    def locate(self, problem: Problem) -> Problem:
        """A later stage's problem (`plan`'s memory warnings) at its line: a target field in the sweep file, a spec
        field where the sweep file or the base spec sets it."""
        if self.source is None or problem.file is not None:
            return problem
        if problem.loc[:1] == ("target",):
            return self.source.locate(problem)
        return _where_set(self.sweep, self.source, problem)

    @property
    def runs(self) -> tuple[Point, ...]:
        """Prerequisites first, then points: the order a launcher starts them in."""
        return self.prerequisites + self.points


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A sweep that could not be loaded at all (unreadable, or its own fields invalid): only problems."""

    problems: tuple[Problem, ...]
    points: tuple[Point, ...] = ()
    prerequisites: tuple[Point, ...] = ()
    ok: bool = False

    @property
    def runs(self) -> tuple[Point, ...]:
        return ()


class GridTooLarge(ValueError):
    def __init__(self, count: int, limit: int):
        self.count, self.limit = count, limit
        super().__init__(f"the sweep expands to {count} points, over the limit of {limit}")


@dataclasses.dataclass(frozen=True)
class _Draft:
    """A point before validation: where each value came from, for messages."""

    index: int
    assignments: tuple[tuple[Loc, str, Any], ...]  # (file loc of the value, path as written, value)
    is_baseline: bool
    seed: int | None

    @property
    def axis_values(self) -> dict[str, Any]:
        return {text: value for _, text, value in self.assignments}


def _label(index: int, axis_values: Mapping[str, Any], is_baseline: bool) -> str:
    values = ", ".join(f"{k}={_short(v)}" for k, v in axis_values.items())
    kind = "baseline point" if is_baseline else "point"
    return f"{kind} {index}" + (f" ({values})" if values else " (the base spec)")


def _short(value: Any) -> str:
    return identity.canonical_json(value) if isinstance(value, (dict, list)) else str(value)


def count_points(sweep: Sweep) -> int:
    """Points before exclusion: the product of factor sizes plus baselines, each times the seeds."""
    sizes = [len(v) for v in sweep.axes.values()] + [len(next(iter(g.values()), [])) for g in sweep.zip]
    seeds = max(len(sweep.seeds), 1)
    return math.prod(sizes) * seeds + len(sweep.baseline) * seeds


def expand(source: SweepSource, *, max_points: int | None = DEFAULT_MAX_POINTS) -> Expansion | Rejected:
    """Expand a loaded sweep. Pure. Raises GridTooLarge when there are more than `max_points` points (None:
    no limit below HARD_MAX_GRID); every other problem is returned, located in the sweep or spec file."""
    sweep = source.sweep
    if sweep is None:
        return Rejected(source.problems)
    if not source.ok or source.base is None:
        return Expansion(sweep, (), (), source.problems)
    upper = count_points(sweep)
    if upper > HARD_MAX_GRID:  # said as such whatever the caller allows: "pass --yes" only led to this
        raise GridTooLarge(upper, HARD_MAX_GRID)
    grid = _grid(sweep)
    kept, unused = _exclude(sweep, grid)
    drafts = kept + _baselines(sweep, start=len(kept))
    drafts = [dataclasses.replace(d, index=i) for i, d in enumerate(drafts)]
    if max_points is not None and len(drafts) > max_points:
        raise GridTooLarge(len(drafts), max_points)

    problems: list[Problem] = list(source.problems) + [source.locate(p) for p in unused]
    prerequisites, found = _prerequisites(sweep, source)
    problems += found
    if has_errors(found):
        return Expansion(sweep, (), prerequisites, tuple(problems), len(grid), len(grid) - len(kept))
    outputs = {p.prerequisite: p for p in prerequisites}
    points: list[Point] = []
    grouped: dict[tuple, list[str]] = {}
    # Placeholders can only come from the base spec, the sweep's overrides or an axis value: look once.
    templated = bool(
        outputs
        and (
            _referenced(dict(source.base.data))
            or _referenced(dict(sweep.overrides))
            or any(_referenced(value) for draft in drafts for _, _, value in draft.assignments)
        )
    )
    common = _common(sweep, source.base, templated)
    encodings = identity.Encodings()
    for draft in drafts:
        point, found = _point(sweep, source, draft, outputs, templated, common, encodings)
        if point is not None:  # early-stopping rules on a metric this point does not log, or after its end
            rules = sweep.early_stopping
            sweeps = [
                *unlogged_metric_problems(rules, point.spec, is_baseline=draft.is_baseline),
                *(late_rule_problems(rules, point.spec) if not draft.is_baseline else ()),
                *_seed_problems(sweep, point.spec),
                *_cache_problems(point.spec, prerequisites),
            ]  # at the sweep file's keys, in the words of its spec's file (a MaxText one's)
            found += [source.locate(source.base.in_file_words(p, native_loc=False)) for p in sweeps]
            found += _relative_path_problems(sweep, source, point.spec)
            found += _layout_problems(sweep, source, point.spec)
        for p in found:
            grouped.setdefault((p.loc, p.file, p.line, p.column, p.code, p.message, p.hint, p.severity), []).append(
                _label(draft.index, draft.axis_values, draft.is_baseline)
            )
        if point is not None:
            points.append(point)
    problems += [source.locate(p) for p in _replaced_blocks(sweep, source.base, source.prerequisites)]
    problems += [_named(key, labels, len(drafts)) for key, labels in grouped.items()]
    problems += _duplicates(source, prerequisites + tuple(points), drafts)
    problems += _same_training(source, tuple(points), drafts)
    problems += _names(source, prerequisites + tuple(points))
    problems += [source.locate(p) for p in _median_problems(sweep, sum(not p.is_baseline for p in points))]
    ok = not has_errors(problems)
    return Expansion(
        sweep, tuple(points) if ok else (), prerequisites, tuple(problems), len(grid), len(grid) - len(kept), source
    )


def _median_problems(sweep: Sweep, points: int) -> list[Problem]:
    """A warning when the median rule needs more other points than the sweep has: it never fires."""
    rule = sweep.early_stopping.median
    if rule is None or points - 1 >= rule.min_points:
        return []
    return [
        Problem(
            ("early_stopping", "median", "min_points"),
            "rule_never_fires",
            f"the median rule compares a point with the median of at least {rule.min_points} other point(s) (baselines "
            f"are not counted); this sweep has {points} point(s), so it never fires",
            f"set min_points to {max(points - 1, 1)} or less, or remove the rule",
            severity="warning",
        )
    ]


def _seed_problems(sweep: Sweep, spec) -> list[Problem]:
    """A warning when the sweep varies `seed` for a point whose student is not randomly initialised: the seed
    seeds only that initialisation (the data order is `data.seed`'s), so its seeds would be identical runs, and a
    golden band from them a band of width zero."""
    varied = ("seeds",) if len(sweep.seeds) > 1 else ("axes", "seed") if len(sweep.axes.get("seed", [])) > 1 else None
    student = spec.student
    if varied is None or not (student.init == "teacher" or student.load_parameters_path):
        return []
    where = "starts from the teacher (init: teacher)" if student.init == "teacher" else "loads its weights"
    return [
        Problem(
            varied,
            "seed_changes_nothing",
            f"seed only seeds the student's random initialisation, and this student {where}: its seeds would be "
            "identical runs",
            "vary data.seed instead (the order of the training data), e.g. axes: {data.seed: [0, 1, 2]}",
            severity="warning",
        )
    ]


def _relative_path_problems(
    sweep: Sweep, source: SweepSource, spec: DistillSpec, prerequisite: str | None = None
) -> list[Problem]:
    """A warning for each relative path a cluster's pods would read (and a TensorBoard folder they would write
    inside their container): they resolve it in the trainer container's
    working directory, where nothing from this machine is (the quickstart's `runs/tiny-teacher/checkpoints`
    launched on a cluster, and every pod failed at start). A warning, not an error: an image may hold the files.
    Located where the sweep file sets the path (a point's overrides or axes, or `prerequisite`'s overrides), else in
    the spec file."""
    if not sweep.target.on_cluster:
        return []
    files = spec.data.source in ("text", "tokens", *DOCUMENT_SOURCES)
    paths = {
        ("student", "load_parameters_path"): spec.student.load_parameters_path,
        ("teacher", "load_parameters_path"): spec.teacher.load_parameters_path if spec.teacher else None,
        ("data", "path"): spec.data.path if files else None,
        ("eval", "path"): spec.eval.path if files and spec.eval is not None else None,
        ("offline_data_dir",): spec.offline_data_dir,
    }
    found = []
    for loc, path in paths.items():
        if not path or path.startswith(("/", "~")) or is_remote(path):
            continue
        said = (
            f"{path!r} is a relative path: the {sweep.target.kind} target's pods resolve it in the trainer "
            "container's working directory, not this machine's"
        )
        hint = "use a bucket (gs://my-bucket/...) or an absolute path on a volume target.volumes mounts"
        problem = Problem(loc, "relative_path_on_cluster", said, hint, severity="warning")
        found.append(_of_run(sweep, source, problem, prerequisite))
    events = spec.logging.tensorboard_dir if spec.logging.tensorboard else None
    if events and not is_remote(events) and sweep.target.shared_mount(events) is None:  # as output_base_not_shared
        said = (
            f"logging.tensorboard_dir {events!r} is a path inside the {sweep.target.kind} target's trainer "
            "container: the events are lost with the pod"
        )
        hint = (
            "use a bucket (gs://my-bucket/tensorboard) or a path on a shared volume (a PersistentVolumeClaim or CSI "
            "volume) that target.volume_mounts mounts"
        )
        problem = Problem(("logging", "tensorboard_dir"), "tensorboard_dir_not_shared", said, hint, severity="warning")
        found.append(_of_run(sweep, source, problem, prerequisite))
    return found


def _of_run(sweep: Sweep, source: SweepSource, problem: Problem, prerequisite: str | None) -> Problem:
    """`problem` of a point's spec or of `prerequisite`'s, its message naming the prerequisite, located where the
    sweep file sets the field (`_where_set`)."""
    if prerequisite is not None:
        problem = dataclasses.replace(problem, message=f"prerequisite {prerequisite!r}: {problem.message}")
    return _where_set(sweep, source, problem, prerequisite)


def _where_set(sweep: Sweep, source: SweepSource, problem: Problem, prerequisite: str | None = None) -> Problem:
    """`problem` (its loc a spec field) located where the sweep file sets that field (a point's overrides or axes,
    or `prerequisite`'s overrides), else in the spec file."""
    if prerequisite is None:
        spec_source, settings = source.base, {"overrides": sweep.overrides, "axes": sweep.axes}
    else:
        spec_source = source.prerequisites[prerequisite]
        settings = {("prerequisites", prerequisite, "overrides"): sweep.prerequisites[prerequisite].overrides}
    assert spec_source is not None
    for depth in range(len(problem.loc), 0, -1):  # `batch.per_device_batch_size`, or the whole `batch` block
        dotted = ".".join(problem.loc[:depth])
        for at, values in settings.items():
            # the field itself, or (for a block such as `mesh`) the first of its fields the file sets
            key = next((k for k in values if k == dotted or k.startswith(dotted + ".")), None)
            if key is not None:
                return source.locate(dataclasses.replace(problem, loc=(*_tuple(at), key)))
    return spec_source.locate(problem)


def _layout_problems(
    sweep: Sweep, source: SweepSource, spec: DistillSpec, prerequisite: str | None = None
) -> list[Problem]:
    """The trainer's start-up check of the mesh and the batch (`distillspec.layout`) against the target's chips:
    a mesh the slices cannot hold, or a per_device_batch_size that splits a row, was found only once Kueue had
    admitted the run and every pod exited 1."""
    target = sweep.target
    if not target.on_cluster or target.tpu_type is None:
        return []  # a local run's device count is the machine's
    devices = tpu.lookup(target.tpu_type).devices * target.slices
    try:
        layout.check(spec.mesh, spec.batch.per_device_batch_size, devices, target.slices)
    except layout.LayoutError as e:
        where = f"{target.slices} × {target.tpu_type} ({devices} devices)"
        problem = Problem(e.field, "layout_does_not_fit", f"on {where}: {e.message}", e.hint)
        return [_of_run(sweep, source, problem, prerequisite)]
    if target.slices > 1:
        shape = layout.mesh_shape(spec.mesh, devices, target.slices)
        across = dict(zip(layout.MESH_AXES, layout.dcn_split(shape, target.slices)))
        crossing = [axis for axis in ("fsdp", "tensor") if across[axis] > 1]
        if crossing:
            problem = Problem(
                ("mesh",),
                "mesh_axis_across_slices",
                f"mesh {dict(zip(layout.MESH_AXES, shape))} on {target.slices} slices puts "
                + " and ".join(f"{axis} across {across[axis]} slices" for axis in crossing)
                + ": "
                + ("every layer's weight all-gather" if "fsdp" in crossing else "every tensor-parallel reduction")
                + " then crosses the data-centre network (DCN), not the slice's interconnect",
                f"make mesh.data a multiple of the slice count ({target.slices}), or leave mesh.data and mesh.fsdp "
                "unset (data-parallel across slices, FSDP inside each)",
                severity="warning",
            )
            return [_of_run(sweep, source, problem, prerequisite)]
    return []


def _tuple(key: str | tuple[str, ...]) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else key


def _cache_problems(spec, prerequisites: tuple[Point, ...]) -> list[Problem]:
    """An offline point whose logit cache is a prerequisite's: the trainer's check of the cache it will find
    (teacher, tokenizer, data, k, length, micro-batches and their rows), now rather than after the prerequisites
    have run."""
    if not spec.offline_data_dir:
        return []
    for writer in prerequisites:
        if writer.spec.mode != "teacher_logits" or place(spec.offline_data_dir) != place(
            f"{writer.output_path}/{logit_cache.CACHE_FOLDER}"
        ):
            continue
        manifest = {**logit_cache.expected(writer.spec), "micro_batches": logit_cache.micro_batches_needed(writer.spec)}
        where = f"of prerequisite {writer.prerequisite!r}"
        problem = logit_cache.mismatch(where, manifest, spec) or logit_cache.too_short(where, manifest, spec)
        theirs, mine = writer.spec.data.tokenizer, spec.data.tokenizer
        if problem is None and theirs and mine and theirs != mine and "byte" in (theirs, mine):
            problem = (  # two files are compared by their bytes at start (a copy elsewhere is the same tokenizer)
                f"the logit cache {where} is written with data.tokenizer {writer.spec.data.tokenizer!r}, this "
                f"point reads {spec.data.tokenizer!r}",
                "",
            )
        # A micro-batch's rows are per_device_batch_size × the devices (the mesh only splits them), and a point
        # runs on the devices its cache prerequisite ran on.
        if problem is None and writer.spec.batch.per_device_batch_size != spec.batch.per_device_batch_size:
            problem = (
                f"the logit cache {where} holds micro-batches of batch.per_device_batch_size "
                f"{writer.spec.batch.per_device_batch_size:g} × the devices; this point reads "
                f"{spec.batch.per_device_batch_size:g} × the devices",
                "",
            )
        if problem is not None:
            hint = (
                f"give prerequisite {writer.prerequisite!r} the point's teacher, data, tokenizer, batch and top_k "
                "(and at least its "
                "steps × gradient_accumulation_steps), or one cache prerequisite per value that differs"
            )
            return [Problem(("prerequisites", writer.prerequisite), "logit_cache_mismatch", problem[0], hint)]
    return []


def path_problems(expansion: Expansion, check: Callable[[DistillSpec], list[Problem]]) -> tuple[Problem, ...]:
    """`check` (validate --check-paths' checks of one spec) over every run of the sweep, each problem once with the
    points it concerns, located where the sweep file sets the path. A path under a prerequisite's output is left out:
    it is written when that one runs (an offline point's cache is checked against its writer by `expand`); so is a
    cluster target's local path: it is the pods' (on a volume), not this machine's."""
    source = expansion.source
    assert source is not None
    written = [place(run.output_path) for run in expansion.prerequisites]
    on_cluster = expansion.sweep.target.on_cluster
    grouped: dict[tuple, list[str]] = {}
    for run in expansion.runs:
        for problem in check(run.spec):
            value = _value_at(run.spec, problem.loc)
            if isinstance(value, str) and (
                any(_within(place(value), folder) for folder in written) or (on_cluster and "://" not in value)
            ):
                continue
            p = _where_set(expansion.sweep, source, problem, run.prerequisite)
            key = (p.loc, p.file, p.line, p.column, p.code, p.message, p.hint, p.severity)
            grouped.setdefault(key, []).append(run.label)
    return tuple(_named(key, labels, len(expansion.runs)) for key, labels in grouped.items())


def _value_at(spec: DistillSpec, loc: Loc) -> Any:
    value: Any = spec
    for part in loc:
        value = getattr(value, str(part), None)
    return value


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _named(key: tuple, labels: list[str], total: int) -> Problem:
    loc, file, line, column, code, message, hint, severity = key
    if total > 1 and len(labels) == total:
        where = "every point"
    elif len(labels) > 1:
        where = f"{labels[0]} and {len(labels) - 1} more point(s)"
    else:
        where = labels[0]
    return Problem(loc, code, f"{where}: {message}", hint, severity, file, line, column)


# --- the grid ---------------------------------------------------------------------------------------------


def _factors(sweep: Sweep) -> list[list[tuple[tuple[Loc, str, Any], ...]]]:
    """Each factor is a list of alternatives; an alternative is the assignments it makes."""
    factors = [[((("axes", text, i), text, v),) for i, v in enumerate(values)] for text, values in sweep.axes.items()]
    for g, group in enumerate(sweep.zip):
        n = len(next(iter(group.values()), []))
        factors.append(
            [tuple((("zip", g, text, i), text, values[i]) for text, values in group.items()) for i in range(n)]
        )
    if sweep.seeds:
        factors.append([((("seeds", i), "seed", s),) for i, s in enumerate(sweep.seeds)])
    return factors


def _grid(sweep: Sweep) -> list[_Draft]:
    out = []
    for combo in itertools.product(*_factors(sweep)):
        assignments = tuple(a for alternative in combo for a in alternative)
        seed = next((v for _, text, v in assignments if text == "seed" and sweep.seeds), None)
        out.append(_Draft(len(out), assignments, False, seed))
    return out


def _exclude(sweep: Sweep, grid: list[_Draft]) -> tuple[list[_Draft], list[Problem]]:
    used = [False] * len(sweep.exclude)
    kept = []
    for draft in grid:
        values = draft.axis_values
        hits = [
            i
            for i, entry in enumerate(sweep.exclude)
            if entry and all(k in values and same_value(values[k], v) for k, v in entry.items())
        ]
        for i in hits:
            used[i] = True
        if not hits:
            kept.append(draft)
    if grid and not kept:
        return kept, [
            Problem(
                ("exclude",),
                "exclude_everything",
                f"exclude removes all {len(grid)} point(s) of the grid",
                "remove the entries that match every point, or change the axes",
                severity="error" if not sweep.baseline else "warning",
            )
        ]
    unused = [
        Problem(
            ("exclude", i),
            "exclude_unused",
            "this exclude entry matches no point of the grid",
            "check its values against the axes",
            severity="warning",
        )
        for i, hit in enumerate(used)
        if not hit and sweep.exclude[i]
    ]
    return kept, unused


def _baselines(sweep: Sweep, start: int) -> list[_Draft]:
    seeds = [((("seeds", i), "seed", s),) for i, s in enumerate(sweep.seeds)] or [()]
    out = []
    for b, entry in enumerate(sweep.baseline):
        for seed in seeds:
            assignments = tuple((("baseline", b, text), text, value) for text, value in entry.items()) + seed
            out.append(_Draft(start + len(out), assignments, True, seed[0][2] if seed else None))
    return out


# --- points -----------------------------------------------------------------------------------------------


def _fill(value: Any, outputs: Mapping[str, Point]) -> Any:
    if isinstance(value, str):
        # a name with no output (a later prerequisite's) stays as written; the sweep's checks report it
        return PLACEHOLDER.sub(
            lambda m: outputs[m.group(1)].output_path if m.group(1) in outputs else m.group(0), value
        )
    if isinstance(value, dict):
        return {k: _fill(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, outputs) for v in value]
    return value


def _referenced(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        return set().union(*(_referenced(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_referenced(v) for v in value)) if value else set()
    return set()


def _build(
    sweep: Sweep,
    base: SpecSource,
    overrides: Mapping[str, Any],
    assignments: tuple[tuple[Loc, str, Any], ...],
    override_loc: Loc,
    outputs: Mapping[str, Point],
    templated: bool = True,
    common: _Common | None = None,
) -> tuple[DistillSpec | None, dict[str, str], list[Problem]]:
    """Validate one run's spec data; problems are located where the offending value is written. `templated`
    False says no value can hold a `${prerequisites...}` placeholder (nothing to look for or fill). With
    `common` (the base spec and `overrides` already validated), only the blocks the assignments touch are
    validated again: the others are the common spec's own, equal to what validating them again would give."""
    origins: list[tuple[Loc, Loc]] = []  # (native loc, file loc)
    if common is None:
        data = base.copy_data()
        for text, value in overrides.items():
            native = spec_paths.assign(data, text, copy_plain(value))
            origins.append((native, override_loc + (text,)))
    else:
        data = dict(common.data)  # set_value copies what it changes: untouched blocks stay shared
        origins += common.origins
    for file_loc, text, value in assignments:
        native = spec_paths.assign(data, text, copy_plain(value))
        origins.append((native, file_loc))
    mentioned = _referenced(data) if templated else set()
    depends_on = {name: outputs[name].run_id for name in sorted(mentioned) if name in outputs}
    if mentioned:
        data = _fill(data, outputs)
    if common is not None:
        data = _reuse(data, common.data, common.spec)
    spec, found = validate_data(data, owned=common is not None)
    located = [
        _locate_in_sweep(p, file_loc)
        for file_loc, text, value in [*((override_loc + (t,), t, v) for t, v in overrides.items()), *assignments]
        if isinstance(value, str)
        for p in spec_paths.value_warnings(text, value)
    ]
    for p in found:
        # Set by the sweep: a problem at or under an override's place, or at a block the override sets a key of
        # (`eval` for `eval_interval`: it was put at the spec file's first line)
        origin = next(
            (
                file_loc
                for native, file_loc in reversed(origins)
                if p.loc[: len(native)] == native or (p.loc and native[: len(p.loc)] == p.loc)
            ),
            None,
        )
        located.append(_locate_in_sweep(base.in_file_words(p), origin) if origin is not None else base.locate(p))
    return spec, depends_on, located


@dataclasses.dataclass(frozen=True)
class _Common:
    """What every point of a sweep shares: the base spec's data with the sweep's `overrides`, its validated spec,
    and where each override was written."""

    data: dict[str, Any]
    spec: DistillSpec
    origins: tuple[tuple[Loc, Loc], ...]


def _common(sweep: Sweep, base: SpecSource, templated: bool) -> _Common | None:
    """The shared part, validated once; None when it is invalid on its own (a point may still complete it, so
    points are then validated whole) or when values may hold placeholders (filled per point)."""
    if templated:
        return None
    data = base.copy_data()
    origins = []
    for text, value in sweep.overrides.items():
        try:
            native = spec_paths.assign(data, text, copy_plain(value))
        except spec_paths.UnknownPath:
            return None
        origins.append((native, ("overrides", text)))
    spec, found = validate_data(data)
    if spec is None or found:
        return None
    return _Common(data, spec, tuple(origins))


def _reuse(data: dict[str, Any], common_data: dict[str, Any], model: Any) -> dict[str, Any]:
    """`data` with each block still shared with `common_data` replaced by the common spec's validated block
    (pydantic takes a model instance as it is); blocks on an assigned path are looked into, and any other
    shared value is copied, so validation may change `data` freely."""
    out = dict(data)
    for key, value in data.items():
        if not isinstance(value, (dict, list)):
            continue  # a scalar: immutable, and validated again cheaply
        shared = common_data.get(key)
        validated = getattr(model, key, None)
        if not identity.is_model(validated):
            out[key] = copy_plain(value) if value is shared else value
        elif value is shared:
            out[key] = validated
        elif isinstance(value, dict) and isinstance(shared, dict):
            out[key] = _reuse(value, shared, validated)
    return out


def _replaced_blocks(sweep: Sweep, base: SpecSource, prerequisites: Mapping[str, SpecSource] = {}) -> list[Problem]:
    """A warning for each mapping the sweep sets where the base spec (with the overrides) has a mapping with keys
    it leaves out: the value replaces the block, so `optimizer: {learning_rate: 1e-3}` dropped the base's
    warmup_fraction while `optimizer.learning_rate: 1e-3` keeps it, and the two read alike."""
    data = base.copy_data()
    found: list[Problem] = []

    def check(loc: Loc, text: str, value: Any, within: dict[str, Any], later: tuple[str, ...] = ()) -> None:
        """`later`: overrides written after this one (a dotted key that sets a dropped field again)."""
        if not isinstance(value, dict):
            return
        try:
            native = spec_paths.resolve(text)
        except spec_paths.UnknownPath:
            return  # said by the sweep's own checks
        current: Any = within
        for key in native:
            current = current.get(key) if isinstance(current, dict) else None
        if not isinstance(current, dict):
            return
        again = set()
        for other in later:
            try:
                native_other = spec_paths.resolve(other)
            except spec_paths.UnknownPath:
                continue
            if native_other[: len(native)] == native and len(native_other) > len(native):
                again.add(native_other[len(native)])
        dropped = [key for key in current if key not in value and current[key] is not None and key not in again]
        if dropped:
            dotted = ".".join(native)
            # a field the block has (the user's own key may not be one: `student: {remat_policy: ...}`)
            known = [k for k in value if f"{dotted}.{k}" in spec_paths.native_paths()]
            example = next(iter(known or current), "field")
            found.append(
                Problem(
                    loc,
                    "override_replaces_block",
                    f"{text}: {{...}} replaces the whole {dotted} block, dropping "
                    + ", ".join(f"{k}: {current[k]!r}" for k in dropped[:4])
                    + (f" and {len(dropped) - 4} more" if len(dropped) > 4 else ""),
                    f"to change only some of its fields, write their dotted paths ({dotted}.{example}: ...); to "
                    "replace the block, list every field you mean to keep",
                    severity="warning",
                )
            )

    def in_order(at: Loc, overrides: Mapping[str, Any], within: dict[str, Any]) -> None:
        written = list(overrides.items())
        for i, (text, value) in enumerate(written):  # in order, as they are applied
            check((*at, text), text, value, within, tuple(t for t, _ in written[i + 1 :]))
            try:
                spec_paths.assign(within, text, copy_plain(value))
            except spec_paths.UnknownPath:
                continue

    for name, prerequisite in sweep.prerequisites.items():
        if (spec := prerequisites.get(name)) is not None:
            in_order(("prerequisites", name, "overrides"), prerequisite.overrides, spec.copy_data())
    in_order(("overrides",), sweep.overrides, data)
    for loc, text, values in axis_entries(sweep):
        said = len(found)
        for i, value in enumerate(values):
            if len(found) == said:  # once per axis: its values drop alike
                check((*loc, i), text, value, data)
    for i, point in enumerate(sweep.baseline):
        for text, value in point.items():
            check(("baseline", i, text), text, value, data)
    return found


def _locate_in_sweep(problem: Problem, loc: Loc) -> Problem:
    return dataclasses.replace(problem, loc=loc, file=None)  # the sweep file's position is added by the caller


def _finish(
    sweep: Sweep,
    spec: DistillSpec,
    *,
    index: int,
    axis_values: Mapping[str, Any],
    is_baseline: bool,
    depends_on: Mapping[str, str],
    prerequisite: str | None,
    encodings: identity.Encodings | None = None,
) -> Point:
    target = sweep.target
    run, spec_hash, spec_json = identity.identify(spec, target, encodings)
    final = spec.model_copy(update={"name": run, "output_dir": target.output_base})
    return Point(
        sweep=sweep.name,
        index=index,
        axis_values=MappingProxyType(dict(axis_values)),
        spec=final,
        run_id=run,
        spec_hash=spec_hash,
        spec_json=spec_json,
        jobset_name=identity.jobset_name(sweep.name, run),
        output_path=identity.output_path(target.output_base, run),
        is_baseline=is_baseline,
        seed=final.seed,
        depends_on=MappingProxyType(dict(depends_on)),
        prerequisite=prerequisite,
    )


def _prerequisites(sweep: Sweep, source: SweepSource) -> tuple[tuple[Point, ...], list[Problem]]:
    out, problems = [], []
    earlier: dict[str, Point] = {}  # a prerequisite may use the outputs of those listed before it
    for i, (name, prerequisite) in enumerate(sweep.prerequisites.items()):
        base = source.prerequisites.get(name)
        if base is None:
            continue  # its spec could not be read; reported by the loader
        spec, depends_on, found = _build(
            sweep, base, prerequisite.overrides, (), ("prerequisites", name, "overrides"), dict(earlier)
        )
        problems += [
            _in_file(source, dataclasses.replace(p, message=f"prerequisite {name!r}: {p.message}")) for p in found
        ]
        if spec is not None:
            problems += _relative_path_problems(sweep, source, spec, prerequisite=name)
            problems += _layout_problems(sweep, source, spec, prerequisite=name)
            point = _finish(
                sweep, spec, index=i, axis_values={}, is_baseline=False, depends_on=depends_on, prerequisite=name
            )
            out.append(point)
            earlier[name] = point
    return tuple(out), problems


def _in_file(source: SweepSource, problem: Problem) -> Problem:
    return problem if problem.file is not None else source.locate(problem)


def _point(
    sweep: Sweep,
    source: SweepSource,
    draft: _Draft,
    outputs: Mapping[str, Point],
    templated: bool = True,
    common: _Common | None = None,
    encodings: identity.Encodings | None = None,
) -> tuple[Point | None, list[Problem]]:
    assert source.base is not None
    spec, depends_on, found = _build(
        sweep, source.base, sweep.overrides, draft.assignments, ("overrides",), outputs, templated, common
    )
    found = [_in_file(source, p) for p in found]
    if spec is None:
        return None, found
    point = _finish(
        sweep,
        spec,
        index=draft.index,
        axis_values=draft.axis_values,
        is_baseline=draft.is_baseline,
        depends_on=depends_on,
        prerequisite=None,
        encodings=encodings,
    )
    return point, found


def _first_loc(draft: _Draft | None) -> Loc:
    if draft is None or not draft.assignments:
        return ("spec",)
    return draft.assignments[0][0]


def _duplicates(source: SweepSource, runs: tuple[Point, ...], drafts: list[_Draft]) -> list[Problem]:
    seen: dict[str, Point] = {}
    out = []
    by_index = {d.index: d for d in drafts}
    for run in runs:
        if run.run_id in seen:
            first = seen[run.run_id]
            loc = ("prerequisites", run.prerequisite) if run.prerequisite else _first_loc(by_index.get(run.index))
            out.append(
                source.locate(
                    Problem(
                        loc,
                        "duplicate_point",
                        f"{run.label} and {first.label} resolve to the same spec (run id {run.run_id})",
                        "remove one of them: values that mean the same run (a layer preset and the list it resolves to) or a "
                        "baseline equal to a grid point resolve alike",
                    )
                )
            )
        else:
            seen[run.run_id] = run
    return out


def _without_ignored_ends(spec: DistillSpec) -> DistillSpec | None:
    """`spec` with the `end` of its constant schedules removed (the trainer ignores them), None when it has none."""
    changes = {
        name: value.model_copy(update={"end": None})
        for name in ("alpha", "temperature", "beta")
        if (value := getattr(spec.loss, name)).schedule == "constant" and value.end is not None
    }
    return spec.model_copy(update={"loss": spec.loss.model_copy(update=changes)}) if changes else None


def _same_training(source: SweepSource, points: tuple[Point, ...], drafts: list[_Draft]) -> list[Problem]:
    """A warning for points that differ only in a value the trainer ignores (a constant schedule's `end` on an
    axis): two run ids, the same training twice (each point's `end_ignored` did not say they were duplicates)."""
    sweep = source.sweep
    assert sweep is not None
    by_index = {d.index: d for d in drafts}
    trained: dict[str, Point] = {p.run_id: p for p in points}
    out = []
    for point in points:
        bare = _without_ignored_ends(point.spec)
        if bare is None:
            continue
        same = identity.identify(bare, sweep.target)[0]
        first = trained.setdefault(same, point)
        if first is not point:
            out.append(
                source.locate(
                    Problem(
                        _first_loc(by_index.get(point.index)),
                        "same_training",
                        f"{point.label} and {first.label} differ only in the end of a constant schedule, which the "
                        "trainer ignores: the same training twice, under two run ids",
                        "drop the end from the axis (or give the schedule a shape: linear or cosine)",
                        severity="warning",
                    )
                )
            )
    return out


def _names(source: SweepSource, runs: tuple[Point, ...]) -> list[Problem]:
    sweep = source.sweep
    assert sweep is not None
    target = sweep.target
    if not target.on_cluster or target.tpu_type is None:
        return []
    shape = tpu.lookup(target.tpu_type)
    seen: set[tuple] = set()
    out = []
    for run in runs:
        for p in identity.name_problems(
            run.jobset_name, slices=target.slices, vms_per_slice=shape.vms_per_slice, kind=target.kind
        ):
            key = (p.code, len(run.jobset_name))
            if key not in seen:
                seen.add(key)
                out.append(source.locate(p))
    return out
