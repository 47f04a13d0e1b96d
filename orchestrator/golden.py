"""Golden files: the metric values a sweep's points are expected to reach, each with an explicit check.

```yaml
sweep: quickstart
window: 5                      # records per point the values aggregate over (token-weighted)
points:
  - run_id: k3v9x0q2ab
    label: loss.alpha.end=0.3
    checks:
      distill/kl_div_T1: {check: approx, value: 0.123, rtol: 0.1, atol: 0.002}
      distill/hard_loss: {check: band, low: 1.0, high: 1.3}
      distill/teacher_loss: {check: deterministic, value: 1.0123}
```
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainer.problems import Problem
from trainer.yaml_source import YamlSourceError, parse_yaml, read_text_file

DEFAULT_METRICS = ("distill/kl_div_T1", "distill/hard_loss", "distill/top1_agreement")
DEFAULT_RTOL = 0.1
SEED_SIGMAS = 4.0


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Approx(_Frozen):
    """|observed - value| <= atol + rtol * |value| (numpy.isclose's rule)."""

    check: Literal["approx"] = "approx"
    value: float
    rtol: Annotated[float, Field(ge=0)] = DEFAULT_RTOL
    atol: Annotated[float, Field(ge=0)] = 0.0

    def passes(self, observed: float) -> bool:
        return abs(observed - self.value) <= self.atol + self.rtol * abs(self.value)

    def describe(self) -> str:
        return f"≈ {self.value:.6g} (rtol {self.rtol:g}, atol {self.atol:g})"


class Band(_Frozen):
    """low <= observed <= high (either side may be open)."""

    check: Literal["band"] = "band"
    low: float | None = None
    high: float | None = None

    def passes(self, observed: float) -> bool:
        return (self.low is None or observed >= self.low) and (self.high is None or observed <= self.high)

    def describe(self) -> str:
        low = "-∞" if self.low is None else f"{self.low:.6g}"
        high = "∞" if self.high is None else f"{self.high:.6g}"
        return f"in [{low}, {high}]"


class Deterministic(_Frozen):
    """Exactly equal: for metrics a fixed seed on fixed hardware must reproduce bit for bit."""

    check: Literal["deterministic"] = "deterministic"
    value: float

    def passes(self, observed: float) -> bool:
        return observed == self.value

    def describe(self) -> str:
        return f"== {self.value!r}"


Check = Annotated[Approx | Band | Deterministic, Field(discriminator="check")]


class GoldenPoint(_Frozen):
    run_id: str
    label: str = ""
    checks: dict[str, Check]


class GoldenFile(_Frozen):
    sweep: str
    window: Annotated[int, Field(ge=0)] = 5
    points: list[GoldenPoint]


def derive(
    sweep: str,
    window: int,
    observed: Sequence[tuple[str, str, str, Mapping[str, float | None]]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    rtol: float = DEFAULT_RTOL,
) -> GoldenFile:
    """A golden file from finished points given as (run_id, label, seed_group, {metric: value}).

    Points that differ only by seed share a `seed_group`: with two or more seeds each metric becomes a band of
    mean ± max(4σ, rtol·|mean|) over the group, the spread the seeds showed; a lone point gets an `approx` check.
    """
    groups: dict[str, list[Mapping[str, float | None]]] = {}
    for _, _, group, values in observed:
        groups.setdefault(group, []).append(values)
    points = []
    for run_id, label, group, values in observed:
        checks: dict[str, Check] = {}
        for name in metrics:
            value = values.get(name)
            if value is None or not math.isfinite(value):
                continue
            seeds = [v[name] for v in groups[group] if v.get(name) is not None and math.isfinite(v[name])]
            if len(seeds) >= 2:
                mean = statistics.fmean(seeds)
                half = max(SEED_SIGMAS * statistics.stdev(seeds), rtol * abs(mean))
                checks[name] = Band(low=round(mean - half, 6), high=round(mean + half, 6))
            else:
                checks[name] = Approx(value=float(f"{value:.6g}"), rtol=rtol)
        points.append(GoldenPoint(run_id=run_id, label=label, checks=checks))
    return GoldenFile(sweep=sweep, window=window, points=points)


# --- files ------------------------------------------------------------------------------------------------


def read_golden(path: str | Path) -> tuple[GoldenFile | None, list[Problem]]:
    """A golden file and every problem with it, located by line (never raises for bad input)."""
    file = str(path)
    try:
        document = parse_yaml(read_text_file(path))
    except YamlSourceError as e:
        where = e.position
        return None, [Problem((), e.code, e.message, e.hint, file=file, line=where.line if where else None,
                              column=where.column if where else None)]  # fmt: skip
    try:
        return GoldenFile.model_validate(document.data), []
    except ValidationError as e:
        problems = []
        for error in e.errors(include_url=False):
            # Drop the discriminator's tag (`approx`) from locations: the file has no such key.
            loc = tuple(part for part in error["loc"] if part not in ("approx", "band", "deterministic"))
            where = document.position_of(loc)
            problems.append(Problem(loc, error["type"], error["msg"], "see `distillctl golden update --help` for the format",
                                    file=file, line=where.line if where else None, column=where.column if where else None))  # fmt: skip
        return None, problems


def mismatches(golden: GoldenFile, sweep: str, run_ids: Iterable[str], *, file: str | None = None) -> list[Problem]:
    """Why a golden file does not belong to a sweep: another sweep's name, or points the sweep no longer has
    (a changed spec gives new run ids)."""
    hint = "if the change is intended, write a new golden file with `distillctl golden update`"
    problems = []
    if golden.sweep != sweep:
        problems.append(Problem(("sweep",), "golden_sweep_mismatch",
                                f"the golden file is for sweep {golden.sweep!r}, not {sweep!r}", hint, file=file))  # fmt: skip
    known = set(run_ids)
    for i, point in enumerate(golden.points):
        if point.run_id not in known:
            problems.append(Problem(("points", i, "run_id"), "golden_point_not_in_sweep",
                                    f"{point.label or point.run_id}: run id {point.run_id} is not in the sweep (its spec or "
                                    "target changed?)", hint, file=file))  # fmt: skip
    return problems


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
