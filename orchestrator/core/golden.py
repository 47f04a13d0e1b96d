"""Golden files: the metric values a sweep's points are expected to reach, each with an explicit check.

```yaml
sweep: quickstart
window: 5                      # records per point the values aggregate over (token-weighted)
match: run_id                  # or axis_values (see below)
points:
  - run_id: k3v9x0q2ab
    label: point 0 (loss.alpha.end=0.3)
    role: point                # point | baseline | prerequisite
    axis_values: {loss.alpha.end: 0.3}
    checks:
      distill/kl_div_T1: {check: approx, value: 0.123, rtol: 0.1, atol: 0.002}
      distill/hard_loss: {check: band, low: 1.0, high: 1.3}
      distill/teacher_loss: {check: deterministic, value: 1.0123}
```

`match` says how a golden point finds its run in the sweep. `run_id` (the default) is strict: any change to a
spec or to the target fields that enter the run id (TPU type, slices, image, env) leaves the golden file
unmatched, and regress says it must be written again. `axis_values` matches by role, prerequisite name and
axis values instead, for sweeps whose run ids change on purpose between otherwise equal runs — a cluster CI
job that builds an image per commit (the image is part of the run id).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from distillspec import metrics as metric_names
from distillspec.problems import Loc, Problem
from distillspec.pydantic_problems import problems_from
from distillspec.yaml_source import YamlSourceError, parse_yaml, read_text_file

FORMAT_HINT = "`distillctl golden update SWEEP -o FILE` writes one; README: Results and regression gates"
DEFAULT_METRICS = ("distill/kl_div_T1", "distill/hard_loss", "distill/top1_agreement")
DEFAULT_RTOL = 0.1
SEED_SIGMAS = 4.0
# Below this magnitude a relative tolerance is no tolerance (a top1_agreement of 0 allowed only 0: one agreeing
# token on another CPU was a regression): checks there get an absolute one, rtol × this.
NEAR_ZERO = 0.01


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class Approx(_Frozen):
    """|observed - value| <= atol + rtol * |value| (numpy.isclose's rule)."""

    check: Literal["approx"] = "approx"
    value: float
    rtol: Annotated[float, Field(ge=0)] = DEFAULT_RTOL
    atol: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("rtol")
    @classmethod
    def _a_fraction(cls, rtol: float) -> float:
        # rtol 5 meant "5 %" and let the value grow sixfold: a gate that passes everything.
        if rtol >= 1:
            raise PydanticCustomError(
                "rtol_not_a_fraction",
                "rtol {rtol} lets the value move by {percent} % of itself: rtol is a fraction, not a percentage",
                {"rtol": rtol, "percent": f"{rtol * 100:g}"},
            )
        return rtol

    def passes(self, observed: float) -> bool:
        return abs(observed - self.value) <= self.atol + self.rtol * abs(self.value)

    def describe(self, precise: bool = False) -> str:
        # The tolerances to every digit too where a failed check shows them: `rtol 0.070487` hid 0.0704871.
        return f"≈ {_shown(self.value, precise)} (rtol {_shown(self.rtol, precise)}, atol {_shown(self.atol, precise)})"


class Band(_Frozen):
    """low <= observed <= high (either side may be open, not both)."""

    check: Literal["band"] = "band"
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Band:
        if self.low is None and self.high is None:
            raise PydanticCustomError("band_unbounded", "a band needs low, high or both: without them it always passes")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise PydanticCustomError(
                "band_backwards",
                "band low {low} is above high {high}: it always fails",
                {"low": self.low, "high": self.high},
            )
        return self

    def passes(self, observed: float) -> bool:
        return (self.low is None or observed >= self.low) and (self.high is None or observed <= self.high)

    def describe(self, precise: bool = False) -> str:
        low = "-∞" if self.low is None else _shown(self.low, precise)
        high = "∞" if self.high is None else _shown(self.high, precise)
        return f"in [{low}, {high}]"


class Deterministic(_Frozen):
    """Exactly equal: for metrics a fixed seed on fixed hardware must reproduce bit for bit."""

    check: Literal["deterministic"] = "deterministic"
    value: float

    def passes(self, observed: float) -> bool:
        return observed == self.value

    def describe(self, precise: bool = False) -> str:
        return f"== {self.value!r}"


def _shown(value: float, precise: bool) -> str:
    """6 significant digits; every digit where a failed check must show why (3.20349 was "above" 3.20349)."""
    return repr(value) if precise else f"{value:.6g}"


Check = Annotated[Approx | Band | Deterministic, Field(discriminator="check")]
CHECK_KINDS = ("approx", "band", "deterministic")


Role = Literal["point", "baseline", "prerequisite"]
Match = Literal["run_id", "axis_values"]


def point_key(role: str, prerequisite: str | None, axis_values: Mapping[str, Any]) -> str:
    """What identifies a run within its sweep apart from its run id: role, prerequisite name and axis values, numbers
    by value (a hand-written `0` is the sweep's `0.0`: it was "not in the sweep")."""
    return json.dumps([role, prerequisite, _by_value(dict(axis_values))], sort_keys=True, separators=(",", ":"))


def _by_value(value: Any) -> Any:
    """`value` with every integral float as the int it equals (JSON tells 0 from 0.0; YAML readers write either)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    return value


class GoldenPoint(_Frozen):
    run_id: str
    label: str = ""
    role: Role = "point"
    prerequisite: str | None = None
    axis_values: dict[str, Any] = {}
    checks: dict[str, Check]  # empty: a run `golden update` found no checked metric in (reported as skipped)

    @property
    def key(self) -> str:
        return point_key(self.role, self.prerequisite, self.axis_values)


class GoldenFile(_Frozen):
    sweep: str
    window: Annotated[int, Field(ge=0)] = 5
    match: Match = "run_id"
    points: list[GoldenPoint]


@dataclasses.dataclass(frozen=True)
class Finished:
    """A finished run, as `derive` needs it. Runs that differ only by seed share a `seed_group`."""

    run_id: str
    label: str
    seed_group: str
    values: Mapping[str, float | None]
    role: Role = "point"
    prerequisite: str | None = None
    axis_values: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _round(x: float, direction) -> float:
    """x to 6 significant digits, rounded in `direction` (math.floor or math.ceil)."""
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10 ** (5 - math.floor(math.log10(abs(x))))
    return direction(x * scale) / scale


def derive(
    sweep: str,
    window: int,
    observed: Sequence[Finished],
    metrics: Sequence[str] = DEFAULT_METRICS,
    rtol: float = DEFAULT_RTOL,
    match: Match = "run_id",
) -> GoldenFile:
    """A golden file from finished runs.

    With two or more seeds in a seed group each metric becomes a band of mean ± max(4σ, rtol·|mean|) over the
    group, the spread the seeds showed (bounds rounded outwards to 6 significant digits); a lone run gets an
    `approx` check (rtol; value to 6 significant digits, exact below rtol 1e-4), or with rtol 0 a `deterministic` one (the exact value).
    A value under NEAR_ZERO in magnitude is checked with an absolute tolerance of rtol × NEAR_ZERO.
    """
    groups: dict[str, list[Mapping[str, float | None]]] = {}
    for run in observed:
        groups.setdefault(run.seed_group, []).append(run.values)
    points = []
    for run in observed:
        values, group = run.values, run.seed_group
        checks: dict[str, Check] = {}
        for name in metrics:
            value = values.get(name)
            if value is None or not math.isfinite(value):
                continue
            seeds = [v[name] for v in groups[group] if v.get(name) is not None and math.isfinite(v[name])]
            if len(seeds) >= 2:
                mean = statistics.fmean(seeds)
                half = max(SEED_SIGMAS * statistics.stdev(seeds), rtol * max(abs(mean), NEAR_ZERO))
                # Rounded outwards: a rounded band never excludes a value the seeds produced.
                checks[name] = Band(low=_round(mean - half, math.floor), high=_round(mean + half, math.ceil))
            elif rtol == 0:
                checks[name] = Deterministic(value=value)  # exact: no rounding either
            else:
                # 6 significant digits read well, but their rounding (up to 5e-6 relative) would fail a tighter
                # rtol against the very runs the value came from: below 1e-4 the value is written exactly.
                atol = rtol * NEAR_ZERO if abs(value) < NEAR_ZERO else 0.0
                checks[name] = Approx(value=float(f"{value:.6g}") if rtol >= 1e-4 else value, rtol=rtol, atol=atol)
        if not checks:
            continue  # nothing of it to check (a pre-trained teacher logs no KL): regress lists it as not checked
        points.append(
            GoldenPoint(
                run_id=run.run_id,
                label=run.label,
                role=run.role,
                prerequisite=run.prerequisite,
                axis_values=dict(run.axis_values),
                checks=checks,
            )
        )
    return GoldenFile(sweep=sweep, window=window, match=match, points=points)


# --- files ------------------------------------------------------------------------------------------------


def not_replaceable(path: str | Path, sweep: str | None = None) -> str:
    """Why `golden update` must not replace the existing file `path`: a spec or anything else of the user's would be
    lost, or (`sweep` given) another sweep's golden file (its gate would then check this sweep). '' when it may: a
    golden file of `sweep`, valid or not (one with a YAML error too: its top-level `points:` says what it is, and
    `golden update` writes every value anew), or an empty file."""
    text = read_text_file(path)
    if not text.strip():
        return ""
    try:
        document = parse_yaml(text)
    except YamlSourceError as e:
        if re.search(r"^points:", text, re.MULTILINE):
            # A merge-conflicted golden file does not parse, yet its `sweep:` line still says whose it is.
            named = re.search(r"^sweep:\s*['\"]?([A-Za-z0-9][-A-Za-z0-9.]*)", text, re.MULTILINE)
            if sweep is not None and named and named.group(1) != sweep:
                return f"is the golden file of sweep {named.group(1)!r}, not of {sweep!r} (and does not parse as YAML)"
            return ""
        where = f"line {e.position.line}: " if e.position is not None else ""
        return f"is not a golden file (and cannot be read as YAML: {where}{e.message})"
    if isinstance(document.data, dict) and "points" in document.data:
        other = document.data.get("sweep")
        if sweep is not None and isinstance(other, str) and other != sweep:
            return f"is the golden file of sweep {other!r}, not of {sweep!r}"
        return ""
    return "is not a golden file (it has no `points:`)"


def read_golden(path: str | Path) -> tuple[GoldenFile | None, list[Problem]]:
    """A golden file and every problem with it, located by line (never raises for bad input)."""
    file = str(path)
    try:
        document = parse_yaml(read_text_file(path), empty_hint=FORMAT_HINT)
    except YamlSourceError as e:
        where = e.position
        return None, [
            Problem(
                (),
                e.code,
                e.message,
                e.hint,
                file=file,
                line=where.line if where else None,
                column=where.column if where else None,
            )
        ]
    problems = [
        Problem(loc, "duplicate_key", f"key {loc[-1]!r} appears twice; the later value would silently win", "keep one")
        for loc, _ in document.duplicate_keys
    ]
    golden = None
    if not isinstance(document.data, dict):
        problems.append(Problem((), "not_a_mapping", "a golden file is a mapping with sweep: and points:", FORMAT_HINT))
    else:
        try:
            golden = GoldenFile.model_validate(document.data)
            problems += _unknown_metrics(golden)
            if not any(point.checks for point in golden.points):  # a gate that checks nothing always passes
                problems.append(
                    Problem(
                        ("points",),
                        "golden_checks_nothing",
                        "this golden file checks no metric of any point: regress would pass whatever the runs did",
                        "write it with `distillctl golden update SWEEP -o FILE` (each point's checks: under points:)",
                    )
                )
        except ValidationError as e:
            # The discriminator's tag (`approx`) is in pydantic's locations, not in the file.
            problems += problems_from(
                e,
                document.data,
                root="the golden file",
                did_you_mean=_did_you_mean_in(document.data),
                hints=HINTS,
                tags=CHECK_KINDS,
            )
    located = []
    for p in problems:
        if p.code == "wrong_type" and len(p.loc) == 4 and p.loc[0] == "points" and p.loc[2] == "checks":
            p = dataclasses.replace(p, hint=_check_shape_hint(document.data, p.loc))
        where = document.position_of(p.loc)
        located.append(
            dataclasses.replace(
                p, file=file, line=where.line if where else None, column=where.column if where else None
            )
        )
    return (golden if not located else None), located


def located_in(path: str | Path, problems: list[Problem]) -> list[Problem]:
    """`problems` of the golden file at `path` with the line and column of their location (`match_sweep` knows the
    model, not the file: its problems had no line)."""
    if str(path) == "-":  # standard input is read once
        return problems
    try:
        document = parse_yaml(read_text_file(path))
    except YamlSourceError:
        return problems
    out = []
    for p in problems:
        where = document.position_of(p.loc) if p.line is None else None
        out.append(dataclasses.replace(p, line=where.line, column=where.column) if where else p)
    return out


def _check_shape_hint(data: Any, loc: Loc) -> str:
    """The hint for a check that is not a mapping (`eval/kl_div_T1: 0.064`, the shorthand people write): the
    mapping it could be, with its own value."""
    try:
        value = data["points"][loc[1]]["checks"][loc[3]]
    except (KeyError, IndexError, TypeError):
        value = None
    shown = value if isinstance(value, (int, float)) and not isinstance(value, bool) else "V"
    return (
        f"a check is a mapping: {{check: approx, value: {shown}, rtol: {DEFAULT_RTOL}}}, {{check: band, low: L, "
        f"high: H}} or {{check: deterministic, value: {shown}}}"
    )


def _unknown_metrics(golden: GoldenFile) -> list[Problem]:
    """Checks of names the trainer never logs: a typo read as "not logged", an infrastructure failure, run after
    run. Names are written in full, as `golden update` writes them (`distill/kl_div_T1`, `eval/kl_div_T1`)."""
    found = []
    for i, point in enumerate(golden.points):
        for name in point.checks:
            full = metric_names.resolve(name)
            if full == name:
                continue
            hint = f"write it in full: {full}" if full else metric_names.did_you_mean(name)
            found.append(
                Problem(
                    ("points", i, "checks", name), "unknown_metric", f"{name!r} is not a metric the trainer logs", hint
                )
            )
    return found


HINTS = {
    "union_tag_invalid": "check is one of approx, band, deterministic",
    "union_tag_not_found": "add check: approx, band or deterministic",
    "band_unbounded": "give low, high or both",
    "band_backwards": "swap low and high",
    "rtol_not_a_fraction": "write the fraction: 0.05 for 5 % (a wider gate is a band: {check: band, low: L, high: H})",
    "model_type": FORMAT_HINT,
    "dict_type": FORMAT_HINT,
    "list_type": FORMAT_HINT,
}
_FIELDS = {
    "file": list(GoldenFile.model_fields),
    "point": list(GoldenPoint.model_fields),
    "check": sorted({*Approx.model_fields, *Band.model_fields, *Deterministic.model_fields}),
}


_CHECK_FIELDS = {"approx": Approx, "band": Band, "deterministic": Deterministic}


def _did_you_mean_in(data: Any):
    """`_did_you_mean` for the file `data`: a check's keys are its own kind's (rtol is not a band's)."""

    def did_you_mean(loc: Loc) -> str:
        if len(loc) > 3:
            check = _at(data, loc[:-1])
            kind = _CHECK_FIELDS.get(check.get("check")) if isinstance(check, dict) else None
            if kind is not None:
                known = list(kind.model_fields)
                if loc[-1] in _FIELDS["check"]:  # another kind's key
                    return f"a {check['check']} check has no {loc[-1]}: its keys are {', '.join(known)}"
                return _closest(str(loc[-1]), known)
        return _did_you_mean(loc)

    return did_you_mean


def _at(data: Any, loc: Loc) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _closest(key: str, known: list[str]) -> str:
    from difflib import get_close_matches

    close = get_close_matches(key, known, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"valid keys here: {', '.join(known)}"


def _did_you_mean(loc: Loc) -> str:
    depth = len(loc)
    known = _FIELDS["file"] if depth == 1 else _FIELDS["point"] if depth == 3 else _FIELDS["check"]
    return _closest(str(loc[-1]), known)


def match_sweep(
    golden: GoldenFile, sweep: str, keys: Mapping[str, str], *, file: str | None = None
) -> tuple[GoldenFile, list[Problem]]:
    """`golden` with each point's `run_id` set to the sweep run it matches (by run id, or by `point_key` when
    `match: axis_values`), and every reason it does not belong to the sweep: another sweep's name, points the
    sweep no longer has (a changed spec or target gives new run ids), two points matching one run.
    `keys` maps each of the sweep's run ids to its `point_key`."""
    hint = "if the change is intended, write a new golden file with `distillctl golden update`"
    problems = []
    if golden.sweep != sweep:
        problems.append(
            Problem(
                ("sweep",),
                "golden_sweep_mismatch",
                f"the golden file is for sweep {golden.sweep!r}, not {sweep!r}",
                hint,
                file=file,
            )
        )
    by_key: dict[str, list[str]] = {}
    for run_id, key in keys.items():
        by_key.setdefault(key, []).append(run_id)
    points, claimed = [], {}
    for i, point in enumerate(golden.points):
        name = point.label or point.run_id
        if golden.match == "run_id":
            found = [point.run_id] if point.run_id in keys else []
            why = f"{name}: run id {point.run_id} is not in the sweep (its spec or target changed?)"
        else:
            found = by_key.get(point.key, [])
            why = f"{name}: no run of the sweep has role {point.role} and axis values {dict(point.axis_values)}"
        if len(found) != 1:
            problems.append(
                Problem(
                    ("points", i),
                    "golden_point_not_in_sweep" if not found else "golden_point_ambiguous",
                    why if not found else f"{name}: matches {len(found)} runs",
                    hint,
                    file=file,
                )
            )
            continue
        if found[0] in claimed:
            problems.append(
                Problem(
                    ("points", i),
                    "golden_point_duplicate",
                    f"{name}: the same run as points[{claimed[found[0]]}]",
                    "keep one of them",
                    file=file,
                )
            )
            continue
        claimed[found[0]] = i
        points.append(point.model_copy(update={"run_id": found[0]}))
    return golden.model_copy(update={"points": points}), problems


class _Dumper(yaml.SafeDumper):
    pass


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data.values())  # a check: one line
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)


_Dumper.add_representer(dict, _represent_dict)


def dump(golden: GoldenFile, header: str = "") -> str:
    """The golden file as YAML: one line per check, a `#` comment header."""
    data = golden.model_dump(mode="json", exclude_none=True)
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=200)
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + text
