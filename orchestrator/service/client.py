"""The CLI's side of the service: apply a sweep as a DistillationSweep, and read a sweep's status from it (`status`
and `results` show the controller's view when the sweep's resource exists)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from distillspec.contract import PendingReason
from distillspec.problems import Problem
from distillspec.sweep import SweepSource, override_target
from orchestrator.backends.kubernetes.client import Cluster, api_error
from orchestrator.core.aggregate import KL_T1
from orchestrator.core.expansion import DEFAULT_MAX_POINTS, GridTooLarge
from orchestrator.core.run_status import Phase, RunStatus, parse_timestamp
from orchestrator.core.sweeps import TargetOverrides, expand_checked, load_overridden, raise_for
from orchestrator.errors import DistillctlError, UsageError
from orchestrator.exit_codes import ExitCode
from orchestrator.service.resource import (
    DELETION_POLICY,
    FIELD_MANAGER,
    GROUP,
    KIND,
    PLURAL,
    SERVICE_MAX_POINTS,
    VERSION,
    ServiceSpec,
    SweepCondition,
    SweepStatus,
    resource_from_source,
    service_problems,
)

APPLY_PATCH = "application/apply-patch+yaml"
SERVICE_IMAGE = "controller-default-image@sha256:" + "0" * 64  # stands in for the controller's image in checks


def _service_supplied(problem: Problem) -> bool:
    """A missing target field the controller's defaults fill."""
    return problem.code == "target_field_missing" and tuple(problem.loc) == ("target", "image")


def as_served(problem: Problem) -> Problem:
    """A launch warning as it reads for a sweep the service runs: an unset queue is the controller's to fill (the
    chart's `defaults.queue`), which the client cannot see."""
    if problem.code != "no_queue":
        return problem
    return dataclasses.replace(
        problem,
        message="target.queue is unset: the sweep service's default queue (the chart's defaults.queue) applies; "
        "with none, the JobSets bypass Kueue (no quota, no all-slices-at-once admission, no preemption by priority)",
        hint="set target.queue to the cluster's Kueue LocalQueue unless the chart's defaults.queue names it",
    )


def checked_source(path, overrides: TargetOverrides = TargetOverrides(), *, yes: bool = False):
    """The sweep file at `path`, its target fields replaced by the command line's `overrides`, loaded and expanded
    as `sweep` would, so what `sweep` would reject never reaches the cluster (InvalidSpecError, UsageError naming a
    bad option value; a grid over the limit needs `yes`).

    A target that leaves `image` unset is let through: the controller's default image (the chart's
    `defaults.image`) completes it, and a controller without one says so in the resource's Accepted condition.
    Returns `(source, expansion)`: the file as it is applied, and its runs as the controller will expand them."""
    source = load_overridden(path, overrides, image_required=False)
    problems = tuple(p for p in source.problems if not _service_supplied(p)) + service_problems(source)
    raise_for(problems, path)
    assert source.sweep is not None
    checked = source
    if source.sweep.target.image is None:
        checked = override_target(source, image=SERVICE_IMAGE)  # expanded as the controller will, with its image
    # The service's own limit first: over it, "pass --yes" was the advice, and --yes was then refused too.
    expansion = expand_checked(checked, path, yes=True)
    if len(expansion.runs) > SERVICE_MAX_POINTS:
        raise DistillctlError(
            f"{path}: the sweep has {len(expansion.runs)} runs; the service runs at most {SERVICE_MAX_POINTS} per "
            "sweep (its status holds one entry per run, and the API server limits an object's size)",
            "split it into several sweeps, or run it with `distillctl sweep` without --service",
            exit_code=ExitCode.INVALID_SPEC,
        )
    if not yes and len(expansion.points) > DEFAULT_MAX_POINTS:
        raise UsageError(
            f"{path}: {GridTooLarge(len(expansion.points), DEFAULT_MAX_POINTS)}",
            "check the axes, or pass --yes to expand it anyway",
        )
    return source, expansion


def apply_sweep(
    cluster: Cluster,
    source: SweepSource,
    service: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> dict:
    """Server-side apply a checked sweep (`checked_source`) as a DistillationSweep (field manager `distillctl`) in
    the cluster's namespace; returns the applied resource."""
    body = resource_from_source(source, cluster.namespace)
    name = body["metadata"]["name"]
    # The service fields a user set before (`--deletion-policy Keep`, `--retries 2`) stay unless given again: an
    # apply without them removed them (this field manager owned them), and a later cancel deleted kept JobSets.
    found = read_resource(cluster, name)
    existing = (found or {}).get("spec") or {}
    current = {field: existing[field] for field in ("deletionPolicy", "retryFailed") if field in existing}
    given = service or {}
    for field, value in given.items():
        before = current.get(field, ServiceSpec.model_fields[field].default)  # unset reads as its default
        if found is not None and before != value:
            say(f"{KIND} {name}: {field} {before} → {value}")
    body["spec"].update({**current, **given})
    _wait_deleted(cluster, name, say)
    try:
        applied = cluster.call(
            f"apply {KIND} {name}",
            cluster.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
            passthrough=frozenset({404}),
        )
    except ApiException as e:
        if e.status == 404:
            raise _not_installed("or run `distillctl sweep` without --service") from None
        raise api_error(f"apply {KIND} {name}", e, cluster) from None
    # The client reads a body only for 200: an apply that created the resource (201) returns None.
    return applied or cluster.call(
        f"read {KIND} {name}",
        cluster.custom.get_namespaced_custom_object,
        GROUP,
        VERSION,
        cluster.namespace,
        PLURAL,
        name,
    )


DELETION_WAIT_SECONDS = 120.0


def _wait_deleted(
    cluster: Cluster, name: str, say: Callable[[str], None], timeout: float = DELETION_WAIT_SECONDS
) -> None:
    """Wait while a DistillationSweep of this name is being deleted: applied then, the apply lands on the resource
    on its way out (accepted, shown running) and is gone with it once the controller has deleted its JobSets.
    Raises a timeout error (exit 3) when it is still going after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        found = read_resource(cluster, name)
        if found is None or not (found.get("metadata") or {}).get("deletionTimestamp"):
            return  # none (or not ours to read: the apply says what is wrong), or not being deleted
        if time.monotonic() >= deadline:
            raise DistillctlError(
                f"{KIND} {name} is still being deleted after {timeout:g} s (the controller deletes its JobSets "
                "first, under deletionPolicy Delete)",
                f"apply it again once `kubectl get {PLURAL} {name}` finds nothing; if no controller runs, the "
                f"finalizer stays: install the service again, or remove the finalizer",
                exit_code=ExitCode.TIMEOUT,
            )
        if not said:
            say(f"{KIND} {name} is being deleted: waiting until it is gone to apply it again")
            said = True
        time.sleep(1.0)


def delete_resource(cluster: Cluster, name: str) -> str:
    """Delete the DistillationSweep `name` (`cancel --service`); returns its deletionPolicy: under `Delete` the
    controller deletes its JobSets before the resource goes, under `Keep` they run on."""
    found = read_resource(cluster, name)
    if found is None:
        raise DistillctlError(
            f"there is no {KIND} {name} in namespace {cluster.namespace!r} to delete",
            "without --service, `distillctl cancel` deletes the runs `distillctl sweep` created; -n/--namespace "
            "names another namespace",
            exit_code=ExitCode.USAGE,
        )
    policy = str((found.get("spec") or {}).get(DELETION_POLICY) or "Delete")
    try:
        cluster.call(
            f"delete {KIND} {name}",
            cluster.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            name,
            passthrough=frozenset({404}),
        )
    except ApiException:
        pass  # gone meanwhile
    return policy


def wait_gone(cluster: Cluster, name: str, timeout: float | None) -> bool:
    """Wait until the DistillationSweep `name` is gone (the controller removes its finalizer once its JobSets are
    deleted, under `Delete`); False when it is still there after `timeout` seconds (None: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while read_resource(cluster, name) is not None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(1.0)
    return True


def require_served(cluster: Cluster) -> None:
    """Raise the error that says how to install the CRD when the cluster does not serve DistillationSweeps (the
    controller would otherwise watch a 404 for ever)."""
    try:
        cluster.call(
            f"list {KIND}s",
            cluster.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            limit=1,
            passthrough=frozenset({404}),
        )
    except ApiException:  # only a 404 passes through
        raise _not_installed(f"the chart brings its CRD; `kubectl get crd {PLURAL}.{GROUP}` shows it") from None


def _not_installed(more: str) -> DistillctlError:
    return DistillctlError(
        f"the cluster does not serve {PLURAL}.{GROUP}: the distillctl service is not installed",
        f"install it: helm install distillctl charts/distillctl ({more})",
        exit_code=ExitCode.CLUSTER_NOT_READY,
    )


def read_resource(
    cluster: Cluster, name: str, on_forbidden: Callable[[], None] | None = None, *, forbidden_raises: bool = False
) -> dict | None:
    """The DistillationSweep `name`; None when there is no such resource, no CRD, or no right to read it (a
    launcher's Role need not know the service exists; `on_forbidden` is called then: such a launcher cannot tell
    a served sweep from its own). `forbidden_raises`: no right to read it is the forbidden error instead."""
    try:
        return cluster.call(
            f"read {KIND} {name}",
            cluster.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            name,
            passthrough=frozenset({404} if forbidden_raises else {403, 404}),
        )
    except ApiException as e:
        if e.status == 403 and on_forbidden is not None:
            on_forbidden()
        return None


def pinned_defaults(access, target, name: str) -> dict[str, str] | None:
    """The controller defaults the DistillationSweep `name` was run with (`status.pinned`: image, output_base;
    empty when no controller has run it); None when there is no such resource. Raises DistillctlError when the
    cluster cannot be asked or refuses the read (the caller decides whether that matters)."""
    from orchestrator.backends import backend_for

    backend = backend_for(target, access)
    try:
        found = read_resource(backend.cluster, name, forbidden_raises=True)
    finally:
        backend.close()
    if found is None:
        return None
    try:
        return dict(SweepStatus.model_validate(found.get("status") or {}).pinned)
    except ValueError:
        return {}


def read_status(cluster: Cluster, name: str) -> SweepStatus | None:
    """The status the controller wrote for sweep `name` (None as `read_resource`)."""
    found = read_resource(cluster, name)
    return None if found is None else SweepStatus.model_validate(found.get("status") or {})


def run_statuses(status: SweepStatus, now: float) -> dict[str, RunStatus]:
    """The resource's per-run status as the CLI's RunStatus, by run id (for the same table `status` prints)."""
    created = {run.runId: run.created.timestamp() for run in status.runs if run.created is not None}
    return {
        run.runId: RunStatus(
            Phase(run.phase),
            run.reason,
            run.message,
            restarts=run.restarts,
            step=run.step,
            total_steps=run.totalSteps,
            kl_div_t1=run.metrics.get(KL_T1),
            owner=run.owner,
            age_seconds=now - created[run.runId] if run.runId in created else None,
            created_at=created.get(run.runId),
        )
        for run in status.runs
    }


def with_the_cluster(service: dict[str, RunStatus], live: Mapping[str, RunStatus]) -> tuple[dict[str, RunStatus], int]:
    """The controller's statuses, except where the cluster has seen a run end that the resource still shows going
    (its controller stopped or lagging: a failed run read Running for ever); and how many runs that is. Terminal
    statuses only the controller knows (Stopped by an early-stopping rule) stay."""
    merged, behind = dict(service), 0
    for run_id, said in service.items():
        seen = live.get(run_id)
        if seen is not None and not said.terminal and seen.terminal:
            merged[run_id], behind = seen, behind + 1
    return merged, behind


def behind_problem(name: str, namespace: str, behind: int) -> Problem:
    return Problem(
        (),
        "service_status_behind",
        f"the DistillationSweep {name}'s status is behind the cluster: {behind} run(s) it shows going have ended "
        "(statuses of those come from the cluster)",
        f"is its controller running? `kubectl get lease distillctl-controller -n {namespace or 'NAMESPACE'}` names the replica "
        "that leads, `kubectl logs` of the chart's Deployment says why not",
        severity="warning",
    )


@dataclasses.dataclass(frozen=True)
class Served:
    """A sweep's DistillationSweep as the CLI shows it: its status, and its runs' statuses by run id when they are
    the expansion's runs (None when the resource names other run ids: a file edited since, or a target the
    controller completed with defaults the command line did not give)."""

    name: str
    status: SweepStatus
    statuses: dict[str, RunStatus] | None
    missing: tuple[str, ...] = ()  # the expansion's run ids the resource does not have
    namespace: str = ""
    generation: int | None = None  # the resource's: a status of an older one has not seen the last change
    changed_at: float | None = None  # when the resource was last applied or edited (its managedFields' times)

    def waiting_for_controller(self, now: float) -> bool:
        """Whether no controller has acted on the last change although it had time to (`SERVE_GRACE_SECONDS`):
        a status read right after an apply is one generation behind for a moment on any served cluster."""
        seen = self.status.observedGeneration
        behind = (seen is None and not self.status.conditions) or (
            seen is not None and self.generation is not None and seen < self.generation
        )
        return behind and (self.changed_at is None or now - self.changed_at >= SERVE_GRACE_SECONDS)


# How long a controller may take to act on a change before the CLI says none does (`sweep --service` waits 10 s).
SERVE_GRACE_SECONDS = 30.0


def changed_at(resource: dict) -> float | None:
    """The latest time a client (not the controller's status writes) changed `resource`, from its managedFields."""
    times = [
        parse_timestamp(entry.get("time"))
        for entry in (resource.get("metadata") or {}).get("managedFields") or []
        if entry.get("subresource") != "status"
    ]
    return max((t for t in times if t is not None), default=None)


def served(cluster: Cluster, expansion, on_forbidden: Callable[[], None] | None = None) -> Served | None:
    """The controller's view of `expansion`'s sweep, from the DistillationSweep of the same name in the cluster's
    namespace; None when there is none (or no CRD, or no right to read it). Without a status (no controller has
    taken it up) or runs (refused, or nothing decided yet) its statuses are None."""
    name = expansion.sweep.name
    resource = read_resource(cluster, name, on_forbidden)
    if resource is None:
        return None
    found = SweepStatus.model_validate(resource.get("status") or {})
    generation = (resource.get("metadata") or {}).get("generation")
    changed = changed_at(resource)
    if not found.runs:  # not taken up, rejected (Accepted=False says why) or nothing decided yet
        return Served(name, found, None, namespace=cluster.namespace, generation=generation, changed_at=changed)
    statuses = run_statuses(found, time.time())
    missing = tuple(run.run_id for run in expansion.runs if run.run_id not in statuses)
    return Served(name, found, None if missing else statuses, missing, cluster.namespace, generation, changed)


def refusal(view: Served) -> SweepCondition | None:
    """The resource's Accepted=False condition: why the controller creates none of its (other) runs."""
    return next((c for c in view.status.conditions if c.type == "Accepted" and c.status == "False"), None)


def refused_runs(statuses: dict[str, RunStatus], refused: SweepCondition) -> dict[str, RunStatus]:
    """`statuses` with the runs not created marked Pending (NotAccepted) and the controller's reason: a refused
    sweep read "Pending (NotCreated)", as if the controller were about to create them."""
    why = f"the sweep service refused the sweep ({refused.reason}): {refused.message}"
    return {
        run_id: RunStatus(Phase.PENDING, PendingReason.NOT_ACCEPTED, why)
        if status.phase == Phase.PENDING and status.reason == PendingReason.NOT_CREATED
        else status
        for run_id, status in statuses.items()
    }


def unserved_problem(name: str, namespace: str, seen: int | None = None, generation: int | None = None) -> Problem:
    """A DistillationSweep no controller has taken up: applied into a namespace without the chart (or with its
    controller down), it read Pending (NotCreated) for ever, with nothing said. `seen`: the generation its status
    is of, when it has one (an edit applied while the controller is down)."""
    state = (
        "it has no status yet"
        if seen is None
        else f"its status is of generation {seen}, the resource is at {generation}: the last change is not acted on"
    )
    return Problem(
        (),
        "sweep_not_served",
        f"no distillctl controller has taken up DistillationSweep {name} in namespace {namespace!r} ({state}): its "
        "runs are created (and changed) only once one does",
        f"if none serves {namespace!r}, install the chart there (helm install distillctl charts/distillctl -n "
        f"{namespace}), or check the controller's pod (kubectl get pods -n {namespace} -l "
        "app.kubernetes.io/name=distillctl)",
        severity="warning",
    )


def wait_observed(cluster: Cluster, name: str, generation: int | None, seconds: float = 10.0) -> SweepStatus | None:
    """The sweep's status once a controller reports having seen `generation` of it, within `seconds` (None: no
    controller did)."""
    deadline = time.monotonic() + seconds
    while True:
        found = read_status(cluster, name)
        if found is not None and found.observedGeneration is not None and found.observedGeneration >= (generation or 0):
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def summary(view: Served) -> str:
    """One line for people: the resource's conditions that hold (with their reasons), its counts and best point."""
    status = view.status
    # Accepted=True goes without saying; Accepted=False is why nothing runs.
    held = [c for c in status.conditions if (c.status == "True") != (c.type == "Accepted")]
    shown = ", ".join(
        (c.type if c.status == "True" else f"not {c.type}")
        + f" ({c.reason}"
        + (f": {c.message})" if c.message else ")")
        for c in held
    )
    counts = (
        f"{status.points} run(s): {status.succeeded} succeeded, {status.running} active (queued or running), "
        f"{status.failed} failed" + (f", {status.stopped} stopped" if status.stopped else "")
    )
    if status.orphans:
        counts += f"; {len(status.orphans)} orphaned JobSet(s) (`distillctl cancel FILE --orphans` deletes them)"
    best = f"; best {status.best.key} ({status.best.runId}) {KL_T1} {status.best.klDivT1:.4f}" if status.best else ""
    return f"{KIND} {view.name}: {shown or 'no conditions yet'}; {counts}{best}"


def mismatch_hint(view: Served) -> str:
    pinned = view.status.pinned.get("image")
    given = f"--image {pinned}, the image it runs with" if pinned else "e.g. --image"
    return (
        f"{len(view.missing)} run id(s) of this file are not the resource's: the file changed since it was applied "
        "(`distillctl sweep FILE --service` applies it again), or the controller filled target fields the file "
        f"leaves unset (pass them, {given}, to name the same runs)"
    )
