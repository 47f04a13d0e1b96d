"""Backends for targets, and the status of every run of a sweep: what the backend observes plus what the run wrote."""

from __future__ import annotations

import time
from collections.abc import Mapping

from distillspec.problems import Problem
from distillspec.sweep import Target
from orchestrator import console
from orchestrator.backends import Backend
from orchestrator.backends.kubernetes.client import ClusterAccess
from orchestrator.core.expansion import Expansion
from orchestrator.core.run_status import DEFAULT_STALL_SECONDS, Observation, RunStatus, derive
from orchestrator.errors import UsageError
from orchestrator.outputs import RunOutputs, read_run_outputs


def backend_for(target: Target, access: ClusterAccess) -> Backend:
    if target.kind == "local":
        from orchestrator.backends.local.backend import LocalBackend

        return LocalBackend(target)
    if target.kind == "xpk":
        from orchestrator.backends.xpk.backend import XpkBackend

        return XpkBackend(target, access)
    from orchestrator.backends.kubernetes.backend import KubernetesBackend

    return KubernetesBackend(target, access)


def read_outputs_or_warn(expansion: Expansion) -> dict[str, RunOutputs]:
    """Each run's outputs; when the storage cannot be read at all (gs:// without gcsfs), a warning and no outputs:
    following a sweep still works from what the cluster says."""
    try:
        return {run.run_id: read_run_outputs(run.output_path) for run in expansion.runs}
    except UsageError as e:
        console.warn_once(
            Problem(
                (), "outputs_unreadable", f"{e.message}: steps and metrics are not shown", e.hint, severity="warning"
            )
        )
        return {run.run_id: RunOutputs(run.output_path, readable=False) for run in expansion.runs}


def derive_all(
    expansion: Expansion,
    observed: Mapping[str, Observation],
    outputs: Mapping[str, RunOutputs],
    *,
    now: float,
    stall_after: float = DEFAULT_STALL_SECONDS,
) -> dict[str, RunStatus]:
    """Each run's status from what the backend observed (absent: never created) and what it wrote."""
    return {
        run.run_id: derive(
            observed.get(run.run_id, Observation(exists=False)),
            outputs[run.run_id],
            now=now,
            stall_after=stall_after,
            total_steps=run.spec.steps,
        )
        for run in expansion.runs
    }


def sweep_status(
    expansion: Expansion, backend: Backend, *, stall_after: float = DEFAULT_STALL_SECONDS, now: float | None = None
) -> tuple[dict[str, RunStatus], dict[str, RunOutputs]]:
    """Each run's status and outputs, by run id (prerequisites included)."""
    observed = backend.observe(expansion)
    outputs = read_outputs_or_warn(expansion)
    now = time.time() if now is None else now
    return derive_all(expansion, observed, outputs, now=now, stall_after=stall_after), outputs
