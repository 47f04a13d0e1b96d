"""The `DistillationSweep` custom resource: its API coordinates, the service's own spec fields, the status models,
and the two conversions between a sweep file and the resource.

The resource's spec is a sweep file's content with the base spec (and each prerequisite's spec) inlined in native
layout, `metadata.name` standing for the sweep's `name`, plus the service's fields (`deletionPolicy`,
`retryFailed`). The controller turns it back into a `SweepSource` and expands it with the same core as the CLI, so a
point's run id is the same whichever front end created it.

Status fields are camelCase (it is a Kubernetes API); the models below are what the CRD's status schema is
generated from, and what the controller writes.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import posixpath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distillspec.problems import Problem
from distillspec.sweep import SweepSource, Target, is_remote, parse_sweep

GROUP = "distillctl.dev"
VERSION = "v1alpha1"
KIND = "DistillationSweep"
PLURAL = "distillationsweeps"
SINGULAR = "distillationsweep"
SHORT_NAMES = ["dsweep"]
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "distillctl"
FINALIZER = "distillctl.dev/jobsets"  # the sweep's JobSets are deleted (or kept) before the resource goes

# Spec fields of the resource that are not sweep-file fields.
DELETION_POLICY = "deletionPolicy"
RETRY_FAILED = "retryFailed"
SERVICE_FIELDS = (DELETION_POLICY, RETRY_FAILED)


class TargetDefaults(BaseModel):
    """The controller's defaults for target fields a resource leaves unset (`distillctl serve --default-*`, from
    the chart's `defaults:` values). Filled in before the sweep is validated and expanded, so a point's run id and
    JobSet are what the CLI gives for the file with these values written in its target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str | None = None
    priority: str | None = None
    image: str | None = None
    output_base: str | None = None

    def fill(self, target: dict[str, Any]) -> dict[str, Any]:
        """`target` (a resource's `spec.target`) with each default set where the target has no value of its own."""
        return {**target, **self.filling(target)}

    def filling(self, target: dict[str, Any]) -> dict[str, Any]:
        """The defaults `fill` sets in `target`: those it has no value of its own for. An `output_base` equal to
        the sweep file's default (`runs`) reads as unset: `sweep --service` leaves defaults out of the resource, so
        the two cannot be told apart."""
        out = {}
        for key, value in self.model_dump(exclude_none=True).items():
            unset = target.get(key) is None or (key == "output_base" and target[key] == Target().output_base)
            if unset and value:
                out[key] = value
        return out

    def pinned(self, kept: dict[str, str]) -> TargetDefaults:
        """These defaults with the values a sweep was first run with (`SweepStatus.pinned`) in place of today's."""
        return self.model_copy(update={k: v for k, v in kept.items() if k in PINNED_DEFAULTS})


# Defaults a sweep keeps once the controller has run it with them: the image is part of every run id and the
# output base holds the runs' outputs, so a new default (a `helm upgrade --set defaults.image=...`) would make
# every point of a finished sweep a new run, trained again from the start.
PINNED_DEFAULTS = ("image", "output_base")


NO_DEFAULTS = TargetDefaults()

# The most runs a DistillationSweep may have: its status holds one entry per run (~250 bytes, more with a failure
# message), and the API server refuses an object over ~1.5-2 MiB; at 9000 runs every status write failed after
# ~40 s, holding up every other sweep on the controller's one worker.
SERVICE_MAX_POINTS = 2000


class ServiceSpec(BaseModel):
    """What the service adds to a sweep file's fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deletionPolicy: Literal["Delete", "Keep"] = Field(
        "Delete", description="Delete: deleting the sweep deletes the JobSets it created; Keep: they are left running"
    )
    retryFailed: int = Field(
        0, ge=0, description="how many times the controller creates a failed or diverged run again (it resumes)"
    )


# --- status ---------------------------------------------------------------------------------------------------


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SweepCondition(_Status):
    """One condition, as Kubernetes writes them: Accepted, Running, Succeeded, Failed."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    lastTransitionTime: str = Field(description="RFC 3339, when `status` last changed")
    observedGeneration: int | None = None


class StopRecord(_Status):
    """An early-stopping verdict: the rule (the sweep file's `early_stopping` key), the step it fired at, why.
    Kept in the status (and in the run's `stopped.json`) so the run is never created again."""

    rule: str
    step: int
    message: str = ""


class RunState(_Status):
    """One run of the sweep (a prerequisite, a point or a baseline)."""

    key: str = Field(description="the point's index, `3b` for a baseline, or the prerequisite's name")
    runId: str
    jobset: str
    role: Literal["prerequisite", "point", "baseline"]
    phase: str = Field(
        description="Pending, Queued, Running, Restarting, Stuck, Stalled, Succeeded, Failed, Diverged, Stopped"
    )
    reason: str = ""
    message: str = ""
    restarts: int = 0
    retries: int = Field(0, description="how many times the controller created it again after it failed")
    retrying: bool = Field(False, description="deleted after a failure, to be created again once gone")
    step: int | None = None
    totalSteps: int | None = None
    metrics: dict[str, float] = Field({}, description="the latest log record's metrics (mean over its tokens)")
    owner: str = Field("", description="another sweep whose JobSet runs this point (the same run id)")
    stopped: StopRecord | None = Field(None, description="the early-stopping rule that stopped it: never created again")
    created: datetime.datetime | None = Field(None, description="when its JobSet was created (`status` shows the age)")


class OrphanRun(_Status):
    """A JobSet of this sweep for a run its spec no longer has (the sweep was edited): left as it is, since deleting
    a run is the user's decision (`distillctl cancel FILE --orphans`, or kubectl)."""

    jobset: str
    runId: str
    state: Literal["queued", "active", "finished"]


class BestPoint(_Status):
    key: str
    runId: str
    klDivT1: float


class SweepStatus(_Status):
    observedGeneration: int | None = None
    phase: Literal["Running", "Succeeded", "Failed", "Refused"] | None = Field(
        None,
        description="Refused (Accepted is False), Running, Succeeded or Failed: what its conditions say, in a word",
    )
    points: int = Field(0, description="runs in the sweep, prerequisites included")
    succeeded: int = 0
    running: int = Field(0, description="runs queued, running, restarting, stuck or stalled")
    failed: int = Field(0, description="runs failed or diverged")
    stopped: int = Field(0, description="points stopped by an early-stopping rule")
    conditions: list[SweepCondition] = []
    runs: list[RunState] = []
    best: BestPoint | None = Field(None, description="the point with the lowest latest kl_div_T1")
    orphans: list[OrphanRun] = Field(
        [], description="JobSets of this sweep for runs its spec no longer has: left, not deleted"
    )
    pinned: dict[str, str] = Field(
        {},
        description="controller defaults (image, output_base) this sweep's target was first run with: kept when "
        "the controller's defaults change, so that its points keep their run ids",
    )


# --- sweep file <-> resource ----------------------------------------------------------------------------------


def resource_from_source(source: SweepSource, namespace: str) -> dict[str, Any]:
    """The DistillationSweep for a loaded, valid sweep: base and prerequisite specs inlined (native layout, the
    sweep's overrides left to the controller's expansion), the target's namespace set to where it is applied."""
    assert source.sweep is not None and source.base is not None
    data = source.sweep.model_dump(mode="json", exclude_defaults=True)
    name = data.pop("name")
    data["spec"] = source.base.copy_data()
    for key, prerequisite in source.prerequisites.items():
        data["prerequisites"][key]["spec"] = prerequisite.copy_data()
    data.setdefault("target", {})["namespace"] = namespace
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": data,
    }


def split_spec(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A resource's spec as (the sweep file's fields, the service's fields)."""
    sweep = {k: copy.deepcopy(v) for k, v in spec.items() if k not in SERVICE_FIELDS}
    service = {k: v for k, v in spec.items() if k in SERVICE_FIELDS}
    return sweep, service


def service_problems(source: SweepSource) -> tuple[Problem, ...]:
    """What the service cannot run that a sweep file may say (located in the file or resource)."""
    if source.sweep is None or source.sweep.target.kind != "local":
        return ()
    problem = Problem(
        ("target", "kind"),
        "local_target",
        "target.kind is local (also when the sweep has no target, or a target without a kind): local runs start on "
        "the machine that runs `distillctl sweep`, and the service runs sweeps in the cluster",
        "set target.kind: kubernetes (with tpu_type and image), or run `distillctl sweep` without --service",
    )
    return (source.locate(problem),)


def _output_in_pod(source: SweepSource) -> tuple[Problem, ...]:
    """A relative output base, once the controller's defaults are in: each run wrote `runs/<id>` inside its own
    pod (the chart's `defaults.outputBase` is empty by default), its checkpoints and metrics gone with the pod, and
    the controller (whose own folder that is not) never read a metric: no steps, no early stopping."""
    if source.sweep is None or source.sweep.target.kind == "local":  # `local_target` says what is wrong there
        return ()
    base = source.sweep.target.output_base
    if is_remote(base) or posixpath.isabs(base):
        return ()
    problem = Problem(
        ("target", "output_base"),
        "output_base_in_pod",
        f"target.output_base {base!r} is a folder inside each run's pod (a relative path): its checkpoints and "
        "metrics would go with the pod, and the controller could not read them",
        "set target.output_base to a bucket (gs://BUCKET/runs) or an absolute path on a volume the pods and the "
        "controller mount, or the chart's defaults.outputBase for every sweep",
    )
    return (source.locate(problem),)


def source_from_resource(
    resource: dict[str, Any], defaults: TargetDefaults = NO_DEFAULTS
) -> tuple[SweepSource, ServiceSpec]:
    """The sweep a resource describes, loaded as a sweep file would be (its target completed by the controller's
    `defaults`), and its service fields. Never raises for bad input: problems (the CLI's codes and messages) are
    in the source."""
    metadata = resource.get("metadata") or {}
    sweep, service = split_spec(resource.get("spec") or {})
    sweep = {"name": metadata.get("name", ""), **sweep}
    target = sweep.get("target", {})
    namespace = metadata.get("namespace", "default")
    elsewhere = None
    if isinstance(target, dict):  # anything else is the sweep parser's problem to report
        if target.get("namespace") not in (None, namespace):
            elsewhere = Problem(
                ("target", "namespace"),
                "namespace_mismatch",
                f"target.namespace is {target['namespace']!r} but the {KIND} is in namespace {namespace!r}: the "
                "service runs a sweep's JobSets in its resource's namespace",
                f"drop target.namespace, or apply the resource in namespace {target['namespace']!r}",
            )
        sweep["target"] = {**defaults.fill(target), "namespace": namespace}
    text = yaml.safe_dump(sweep, sort_keys=False)
    where = f"{KIND.lower()}/{metadata.get('name', '')}"
    source = parse_sweep(text, file=where)
    found = service_problems(source) + ((source.locate(elsewhere),) if elsewhere else ()) + _output_in_pod(source)
    source = dataclasses.replace(source, problems=source.problems + found)
    try:
        return source, ServiceSpec.model_validate(service)
    except ValidationError as e:
        problems = [Problem(tuple(map(str, err["loc"])), "bad_value", err["msg"], "") for err in e.errors()]
        return dataclasses.replace(source, problems=source.problems + tuple(problems)), ServiceSpec()
