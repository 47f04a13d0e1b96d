"""Where runs execute. One interface; the sweep's `target.kind` picks the implementation.

A backend observes runs (by run id), submits one, deletes some, and streams a run's logs. It keeps no state of its
own: Kubernetes backends read the cluster (JobSets labelled with sweep and run id), the local backend reads the
output storage (a claim file beside each run's outputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.run_status import Observation

if TYPE_CHECKING:
    from distillspec.sweep import Target

DryRun = Literal["client", "server"]
# What a submit did with a run: created it (from step 0); restarted it (it resumes from its checkpoint: the local
# backend, after a crash or a cancel); found it already there (another submit or sweep owns it); or failed it at
# once (the local backend: its output folder cannot be written). A dry run only says what it would do.
Submitted = Literal["created", "restarted", "exists", "failed", "dry-run"]


def note_partial_submit(e: BaseException, created: int, total: int) -> None:
    """Add to an exception that ends a submit midway (Ctrl-C, SIGTERM, an API error) how many runs it created:
    they run on, and the message said nothing of them. The command line's boundary prints the note."""
    if created and total > 1:
        e.add_note(
            f"{created} of {total} run(s) were created before it stopped, and run on: `distillctl sweep` again "
            "creates the rest (none twice), `distillctl status` shows them"
        )


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A run of this sweep for a run id the sweep file no longer has (an edited file): a JobSet on a cluster, a
    trainer (or a queued run) of the sweep's supervisor locally. Nothing else shows or stops it."""

    name: str
    run_id: str
    state: str  # "queued", "active" or "finished"


@dataclasses.dataclass(frozen=True)
class ClusterAccess:
    """Where the cluster is, as kubectl takes it: --kubeconfig (else $KUBECONFIG, ~/.kube/config, in-cluster),
    --context, and the namespace (flag, else the target's, else the context's, else `default`)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


@dataclasses.dataclass(frozen=True)
class LogRequest:
    slice: int = 0
    worker: int = 0
    all: bool = False
    follow: bool = False
    tail: int | None = None


class Backend(Protocol):
    # True when the backend orders runs after their prerequisites itself (the local supervisor): runs waiting for
    # a prerequisite are handed over at once. Otherwise a point is submitted once its prerequisites succeeded.
    handles_dependencies: bool

    def preflight(self, expansion: Expansion) -> None:
        """Raise a DistillctlError when the runs cannot be launched at all (missing CRDs, no xpk, no queue)."""

    def observe(self, expansion: Expansion) -> dict[str, Observation]:
        """What exists for each run of the sweep, by run id (runs that do not exist may be absent)."""

    def submit(
        self, runs: Sequence[Point], expansion: Expansion, *, dry_run: DryRun | None = None
    ) -> dict[str, Submitted]:
        """Create these runs (by run id: what happened, see `Submitted`); an existing one is left alone ("exists"),
        never duplicated. Called with no runs too, when nothing is new (the local backend then passes a changed
        target.parallelism to the sweep's running supervisor)."""

    def delete(self, runs: Sequence[Point]) -> list[str]:
        """Stop and remove these runs; returns the names of what was deleted."""

    def still_there(self, names: Sequence[str]) -> list[str]:
        """Which of these deleted runs are still stopping (a cluster deletes in the background: a JobSet stays
        until its pods are gone); empty where `delete` waits for them itself (local)."""

    def logs(self, run: Point, request: LogRequest) -> Iterator[str]:
        """Lines of the run's trainer output."""

    def close(self) -> None:
        """Release connections; a local backend leaves its runs running."""


def backend_for(target: Target, access: ClusterAccess, *, launching: bool = False) -> Backend:
    """The backend of `target.kind`; each is imported only when used (the Kubernetes client takes a while).
    `launching`: for `sweep`, which needs what creates runs (the `xpk` binary) as well as the cluster."""
    if target.kind == "local":
        from orchestrator.backends.local.backend import LocalBackend

        return LocalBackend(target)
    if target.kind == "xpk":
        from orchestrator.backends.xpk.backend import XpkBackend

        return XpkBackend(target, access, launching=launching)
    from orchestrator.backends.kubernetes.backend import KubernetesBackend

    return KubernetesBackend(target, access)
