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
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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
                checks[name] = Approx(value=value, rtol=rtol)
        points.append(GoldenPoint(run_id=run_id, label=label, checks=checks))
    return GoldenFile(sweep=sweep, window=window, points=points)
