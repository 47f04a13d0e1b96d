"""The CLI's side of the service: apply a sweep as a DistillationSweep, and read a sweep's status from it."""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException

from distillspec.sweep import load_sweep, override_target
from orchestrator.backends.kubernetes.client import Cluster, api_error
from orchestrator.core import expansion
from orchestrator.core.aggregate import KL_T1
from orchestrator.core.run_status import Phase, RunStatus
from orchestrator.core.sweeps import raise_for
from orchestrator.errors import DistillctlError
from orchestrator.exit_codes import ExitCode
from orchestrator.service.resource import FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION, SweepStatus, resource_from_source

APPLY_PATCH = "application/apply-patch+yaml"


def apply_sweep(cluster: Cluster, path, changes: dict[str, Any], service: dict[str, Any] | None = None) -> dict:
    """Server-side apply the sweep file at `path`, its target fields replaced by `changes` (the command line's
    overrides), as a DistillationSweep (field manager `distillctl`); returns the applied resource. The sweep is
    expanded first, so what `sweep` would reject never reaches the cluster (InvalidSpecError, UsageError)."""
    source = load_sweep(path)
    raise_for(source.problems, path)
    if changes:
        source = override_target(source, **changes)
    raise_for(expansion.expand(source, max_points=None).problems, path)
    body = resource_from_source(source, cluster.namespace)
    body["spec"].update(service or {})
    name = body["metadata"]["name"]
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
            raise DistillctlError(
                f"the cluster does not serve {PLURAL}.{GROUP}: the distillctl service is not installed",
                "install it: helm install distillctl charts/distillctl (or run `distillctl sweep` without --service)",
                exit_code=ExitCode.CLUSTER_NOT_READY,
            ) from None
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


def read_status(cluster: Cluster, name: str) -> SweepStatus | None:
    """The status the controller wrote for sweep `name`; None when there is no such resource, no CRD, or no right
    to read it (a launcher's Role need not know the service exists)."""
    try:
        found = cluster.call(
            f"read {KIND} {name}",
            cluster.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            name,
            passthrough=frozenset({403, 404}),
        )
    except ApiException:
        return None
    return SweepStatus.model_validate(found.get("status") or {})


def run_statuses(status: SweepStatus) -> dict[str, RunStatus]:
    """The resource's per-run status as the CLI's RunStatus, by run id (for the same table `status` prints)."""
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
        )
        for run in status.runs
    }
