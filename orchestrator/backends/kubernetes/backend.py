"""The Kubernetes backend: one JobSet per run, found again by its labels; Kueue's view of queued runs.

Creation is idempotent by construction: the JobSet's name is `<sweep>-<run id>`, so a second create — a re-run,
a concurrent `distillctl sweep`, a retry after a dropped connection — gets 409 AlreadyExists, never a duplicate.
A run id is shared by every sweep with that point, and two sweeps have different JobSet names for it: before its
JobSet, a run is claimed by a Lease named by the run id alone (`claim_name`), whose create the API server lets only
one sweep win. The claim is owned by the JobSet once it exists, so the garbage collector releases it with the
JobSet (cancel, TTL); a claim whose holder's JobSet is gone is stale and taken over (`_claim`).
Manifests are sent with strict field validation, so a JobSet CRD older than the fields we use is an error that
says so, not a silently dropped field.
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from distillspec import tpu
from distillspec.contract import (
    LABEL_RUN_ID,
    STUCK_EVENT_REASONS,
    STUCK_WAITING_REASONS,
    StuckReason,
    exit_reason,
)
from distillspec.sweep import Target
from orchestrator.backends import DryRun, LogRequest, Orphan, Submitted, note_partial_submit
from orchestrator.backends.kubernetes import quota
from orchestrator.backends.kubernetes.client import (
    CONNECTION_ERRORS,
    REQUEST_TIMEOUT_SECONDS,
    Cluster,
    ClusterAccess,
    ClusterError,
    api_error,
    connect,
    server_message,
    unreachable,
)
from orchestrator.core import rendering
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.run_status import Condition, Observation, PodProblem, parse_timestamp
from orchestrator.errors import CannotRunError, DistillctlError, UsageError
from orchestrator.exit_codes import ExitCode

JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
KUEUE_GROUP = "kueue.x-k8s.io"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
CREATE_CONCURRENCY = 8

# The pods that can be stuck (distillctl's, still Pending) and the Events that can say why: the CLI lists them, the
# service watches them.
PENDING_PODS = {"label_selector": LABEL_RUN_ID, "field_selector": "status.phase=Pending"}
POD_WARNINGS = "involvedObject.kind=Pod,type=Warning"

CLAIM_PREFIX = "distillctl-run-"  # + run id: the Lease that says which sweep runs it
# A claim not yet owned by a JobSet is live this long: a sweep creates its JobSet right after the claim, so an
# older unowned claim whose holder has no JobSet is one a sweep left behind (killed between the two creates).
CLAIM_GRACE_SECONDS = 120
CLAIM_ATTEMPTS = 3

INSTALL_JOBSET = (
    "install JobSet {version} (what XPK installs): kubectl apply --server-side -f "
    "https://github.com/kubernetes-sigs/jobset/releases/download/{version}/manifests.yaml"
)
INSTALL_KUEUE = (
    "install Kueue (xpk cluster create does), or remove target.queue to submit without queueing: kubectl apply "
    "--server-side -f https://github.com/kubernetes-sigs/kueue/releases/download/v0.17.1/manifests.yaml"
)


class KubernetesBackend:
    handles_dependencies = False  # a point is created once its prerequisites have succeeded
    container = rendering.CONTAINER_NAME  # the trainer's container in each pod

    def __init__(self, target: Target, access: ClusterAccess, cluster: Cluster | None = None):
        self.target = target
        self.cluster = cluster or connect(access, default_namespace=target.namespace)
        self._kueue_version: str | None = None
        self._namespace_seen = False  # the namespace is known to exist (`_check_namespace` passed, or it held JobSets)

    # --- preflight ----------------------------------------------------------------------------------------

    def _check_namespace(self) -> None:
        """UsageError when the namespace does not exist (what else is missing there is beside the point). Reading
        a namespace needs a cluster-scoped right a launcher may lack: then nothing is said."""
        try:
            self.cluster.core.read_namespace(self.cluster.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as e:
            if e.status == 404:
                raise UsageError(
                    f"namespace {self.cluster.namespace!r} does not exist on the cluster",
                    "check -n/--namespace or target.namespace (kubectl get namespaces lists them)",
                ) from None
        except CONNECTION_ERRORS:
            pass

    def preflight(self, expansion: Expansion) -> None:
        self._check_namespace()  # else a missing one surfaced as a raw 404 from the first create
        self._namespace_seen = True
        groups = self._served_groups()
        if JOBSET[0] not in groups or JOBSET[1] not in groups[JOBSET[0]]:
            raise ClusterError(
                f"the cluster does not serve JobSets ({JOBSET[0]}/{JOBSET[1]}): the JobSet controller is not installed",
                INSTALL_JOBSET.format(version=self.target.jobset_version),
                exit_code=ExitCode.CLUSTER_NOT_READY,
            )
        if self.target.queue:
            if KUEUE_GROUP not in groups:
                raise ClusterError(
                    f"target.queue is {self.target.queue!r} but Kueue is not installed on the cluster",
                    INSTALL_KUEUE,
                    exit_code=ExitCode.CLUSTER_NOT_READY,
                )
            self._kueue_version = groups[KUEUE_GROUP][0]
            try:
                local_queue = self.cluster.custom.get_namespaced_custom_object(
                    KUEUE_GROUP, self._kueue_version, self.cluster.namespace, "localqueues", self.target.queue
                )
            except ApiException as e:
                if e.status == 404:
                    self._check_namespace()
                    raise CannotRunError(
                        f"Kueue LocalQueue {self.target.queue!r} does not exist in namespace {self.cluster.namespace!r}: "
                        "no point would ever be admitted",
                        "set target.queue (or --queue) to an existing LocalQueue (kubectl get localqueues -A), or create it",
                        reason="LocalQueueMissing",
                        exit_code=ExitCode.NOT_ADMITTED,
                    ) from None
                raise api_error("read the Kueue LocalQueue", e, self.cluster) from None
            self._check_quota(str((local_queue.get("spec") or {}).get("clusterQueue") or ""))
        if self.target.priority:
            self._check_priority_class(self.target.priority)
        if self.target.workload_priority_class and KUEUE_GROUP in groups:
            self._check_workload_priority_class(self.target.workload_priority_class, groups[KUEUE_GROUP][0])
        self._check_secrets()

    def _check_secrets(self) -> None:
        """The Secrets `target.secret_env` names: a missing one left every pod in CreateContainerConfigError after
        Kueue had admitted the run (its quota held for nothing). A caller not allowed to read Secrets is not stopped:
        the check is skipped (the service's Role does not grant it)."""
        wanted: dict[str, list[str]] = {}
        for variable, ref in sorted(self.target.secret_env.items()):
            wanted.setdefault(ref.secret, []).append(variable)
        for secret, variables in wanted.items():
            try:
                found = self.cluster.core.read_namespaced_secret(
                    secret, self.cluster.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            except ApiException as e:
                if e.status != 404:
                    return  # 403 (no right to read Secrets) or worse: the pods will say
                raise CannotRunError(
                    f"Secret {secret!r} (target.secret_env: {', '.join(variables)}) does not exist in namespace "
                    f"{self.cluster.namespace!r}: no pod of any run could start",
                    f"create it (kubectl create secret generic {secret} -n {self.cluster.namespace} "
                    "--from-literal=KEY=...), or fix the name in target.secret_env",
                    reason="SecretMissing",
                    exit_code=ExitCode.REJECTED,
                ) from None
            except CONNECTION_ERRORS:
                return
            # A key the Secret lacks: the same CreateContainerConfigError ("couldn't find key"), pod after pod.
            keys = set(found.data or {}) | set(getattr(found, "string_data", None) or {})
            missing = [
                f"{variable} ({self.target.secret_env[variable].key})"
                for variable in variables
                if self.target.secret_env[variable].key not in keys
            ]
            if missing:
                raise CannotRunError(
                    f"Secret {secret!r} in namespace {self.cluster.namespace!r} has no key for target.secret_env "
                    f"{', '.join(missing)}; its keys: {', '.join(sorted(keys)) or 'none'}",
                    "fix the key in target.secret_env, or add it to the Secret",
                    reason="SecretKeyMissing",
                    exit_code=ExitCode.REJECTED,
                )

    def _check_quota(self, name: str) -> None:
        """CannotRunError when the LocalQueue's ClusterQueue does not exist or could never admit one run (`quota`),
        before any JobSet exists. A caller not allowed to read ClusterQueues (cluster-scoped) is not stopped: Kueue
        then says it of the first run, and `status` shows it."""
        if not name:
            return
        version = self._kueue_version
        try:
            cluster_queue = self.cluster.custom.get_cluster_custom_object(KUEUE_GROUP, version, "clusterqueues", name)
        except ApiException as e:
            if e.status == 403:
                return
            if e.status != 404:
                raise api_error("read the Kueue ClusterQueue", e, self.cluster) from None
            raise CannotRunError(
                f"Kueue LocalQueue {self.target.queue!r} points to ClusterQueue {name!r}, which does not exist: "
                "no point would ever be admitted",
                "create the ClusterQueue, or set target.queue (or --queue) to a LocalQueue whose ClusterQueue exists "
                "(kubectl get localqueues -A shows each one's)",
                reason="ClusterQueueMissing",
                exit_code=ExitCode.NOT_ADMITTED,
            ) from None
        try:
            listing = self.cluster.custom.list_cluster_custom_object(KUEUE_GROUP, version, "resourceflavors")
            flavors = {f["metadata"]["name"]: (f.get("spec") or {}).get("nodeLabels") or {} for f in listing["items"]}
        except ApiException as e:
            if e.status != 403:
                raise api_error("list the Kueue ResourceFlavors", e, self.cluster) from None
            flavors = None
        request = quota.run_request(self.target)
        why = quota.never_admitted(request, rendering.node_selector(self.target), cluster_queue, flavors)
        if why is None:
            return
        chips = request.get(tpu.RESOURCE, 0)
        # Which field asks too much: the chips (slices, TPU type), or what target.resources adds per pod.
        fields = (
            "target.slices and target.tpu_type (--slices, --tpu-type)"
            if tpu.RESOURCE in why
            else "target.resources (what each pod requests besides its chips)"
        )
        raise CannotRunError(
            f"Kueue's ClusterQueue {name!r} can never admit one run of this sweep ({self.target.slices} × "
            f"{self.target.tpu_type}, {int(chips):,} {tpu.RESOURCE}): {why}",
            f"check {fields}, or raise the ClusterQueue's quota (kubectl get clusterqueue {name} -o yaml)",
            reason="QuotaNeverFits",
            exit_code=ExitCode.NOT_ADMITTED,
        )

    def _check_priority_class(self, name: str) -> None:
        """The API server refuses every pod whose PriorityClass does not exist, so such a JobSet would sit with no
        pods; say so before creating one. A caller not allowed to read PriorityClasses (cluster-scoped) is not
        stopped: the check is skipped."""
        api = client.SchedulingV1Api(self.cluster.api)
        try:
            api.read_priority_class(name, _request_timeout=30)
        except ApiException as e:
            if e.status == 403:
                return
            if e.status != 404:
                raise api_error("read the PriorityClass", e, self.cluster) from None
            try:
                known = sorted(c.metadata.name for c in api.list_priority_class(_request_timeout=30).items)
            except ApiException:
                known = []
            raise CannotRunError(
                f"PriorityClass {name!r} does not exist: the API server would refuse every pod of every run",
                "set target.priority (or --priority) to an existing PriorityClass"
                + (f" ({', '.join(known)})" if known else " (kubectl get priorityclasses)"),
                reason="PriorityClassMissing",
                exit_code=ExitCode.REJECTED,
            ) from None

    def _check_workload_priority_class(self, name: str, version: str) -> None:
        """Kueue makes no Workload for a JobSet whose WorkloadPriorityClass does not exist: the run sat suspended for
        ever, `Queued (Suspended)` with no reason (Kueue says it only in its own log). Said before creating one; a
        caller not allowed to read them (cluster-scoped) is not stopped."""
        try:
            self.cluster.custom.get_cluster_custom_object(
                KUEUE_GROUP, version, "workloadpriorityclasses", name, _request_timeout=30
            )
        except ApiException as e:
            if e.status == 403:
                return
            if e.status != 404:
                raise api_error("read the Kueue WorkloadPriorityClass", e, self.cluster) from None
            try:
                listing = self.cluster.custom.list_cluster_custom_object(
                    KUEUE_GROUP, version, "workloadpriorityclasses", _request_timeout=30
                )
                known = sorted(c["metadata"]["name"] for c in listing.get("items", []))
            except ApiException:
                known = []
            raise CannotRunError(
                f"Kueue WorkloadPriorityClass {name!r} does not exist: Kueue would never queue a run of this sweep "
                "(each would stay suspended)",
                "set target.workload_priority_class to an existing one"
                + (f" ({', '.join(known)})" if known else " (kubectl get workloadpriorityclasses)")
                + ", or drop it",
                reason="WorkloadPriorityClassMissing",
                exit_code=ExitCode.REJECTED,
            ) from None

    def _served_groups(self) -> dict[str, list[str]]:
        """API group -> served versions, preferred first."""
        found = self.cluster.call("list the API groups", client.ApisApi(self.cluster.api).get_api_versions)
        groups = {}
        for group in found.groups or []:
            versions = [v.version for v in group.versions]
            preferred = group.preferred_version.version if group.preferred_version else None
            groups[group.name] = sorted(versions, key=lambda v: v != preferred)
        return groups

    # --- observing ----------------------------------------------------------------------------------------

    def _jobsets(self, selector: str = LABEL_RUN_ID, what: str = "list the JobSets") -> list[dict]:
        """distillctl's JobSets in the namespace matching `selector` (all of them by default), whatever sweep created
        them: a run id is shared by every sweep with that point (and so are its outputs), so a run is found by its
        id, never by the sweep's label."""
        listing = self.cluster.call(
            what,
            self.cluster.custom.list_namespaced_custom_object,
            *JOBSET[:2],
            self.cluster.namespace,
            JOBSET[2],
            label_selector=selector,
        )
        items = listing.get("items", [])
        if not items and not self._namespace_seen:
            # An empty list is also what a namespace that does not exist gives: every run read "not created"
            # (`status -n typo`), and `cancel` found nothing to stop while the runs went on elsewhere.
            self._check_namespace()
            self._namespace_seen = True
        return items

    def _workloads(self) -> dict[str, dict]:
        """Kueue Workloads by the uid of the JobSet that owns them (empty when Kueue is absent)."""
        version = self._kueue_version or self._served_groups().get(KUEUE_GROUP, [None])[0]
        if version is None:
            return {}
        self._kueue_version = version
        listing = self.cluster.call(
            "list Kueue workloads",
            self.cluster.custom.list_namespaced_custom_object,
            KUEUE_GROUP,
            version,
            self.cluster.namespace,
            "workloads",
        )
        return workloads_by_owner(listing.get("items", []))

    def _stuck_pods(self) -> dict[str, tuple[PodProblem, ...]]:
        """Why pods of distillctl's JobSets are not running, by JobSet name: one list of the Pending pods (few,
        normally none), and the Warning Events only when a pod is waiting without a reason of its own."""
        core, namespace = self.cluster.core, self.cluster.namespace
        pods = self.cluster.call(
            "list the pending pods", as_json, core.list_namespaced_pod, namespace, **self.pending_pods
        )
        events = {"items": []}
        if needs_events(pods["items"]):
            events = self.cluster.call(
                "list the pods' warning events",
                as_json,
                core.list_namespaced_event,
                namespace,
                field_selector=POD_WARNINGS,
            )
        return stuck_by_jobset(pods["items"], events["items"])

    # The run pods that can be stuck, as a list selector (XPK labels its pods its own way).
    pending_pods: Mapping[str, str] = PENDING_PODS

    def observe(self, expansion: Expansion) -> dict[str, Observation]:
        """Each run's JobSet, found by its run id: one this sweep created, or another sweep's (then `owner` names
        that sweep, and this sweep neither creates a second nor deletes it)."""
        jobsets = self._jobsets()
        chosen = choose_jobsets(jobsets, expansion)
        workloads = self._workloads() if chosen else {}
        running = any(not (j.get("spec") or {}).get("suspend") for j in chosen.values())
        stuck = self._stuck_pods() if running else {}
        unseen = len(chosen) < len(expansion.runs)
        claims = pending_claims(self._claims(), chosen, now=time.time()) if unseen else {}
        return observations(chosen, expansion, workloads, stuck, self._failed_workers(chosen.values()), claims)

    def _claims(self) -> list[dict]:
        """The namespace's Leases (runs' claims among them). Forbidden (a launcher Role without `list` on leases)
        is no claims: they only explain a run another sweep is about to create."""
        try:
            listing = self.cluster.call(
                "list the runs' claims",
                as_json,
                self._leases.list_namespaced_lease,
                self.cluster.namespace,
                passthrough=frozenset({403}),
            )
        except ApiException:
            return []
        return listing.get("items", [])

    def _failed_workers(self, jobsets) -> dict[str, str]:
        """Which worker of each failed JobSet exited how, by JobSet name (one list of Failed pods, only when a
        JobSet failed): JobSet's condition names the first failed Job, not the exit code (137: killed, OOM?)."""
        failed = sorted(
            j["metadata"]["name"]
            for j in jobsets
            if any(
                c.get("type") == "Failed" and c.get("status") == "True"
                for c in (j.get("status") or {}).get("conditions") or []
            )
        )
        if not failed:
            return {}
        pods = self.cluster.call(
            "list the failed pods",
            as_json,
            self.cluster.core.list_namespaced_pod,
            self.cluster.namespace,
            label_selector=f"{JOBSET_NAME_LABEL} in ({','.join(failed)})",
            field_selector="status.phase=Failed",
        )
        return failed_workers(pods["items"])

    def orphans(self, expansion: Expansion) -> list[Orphan]:
        """JobSets labelled with this sweep's name whose run ids the sweep no longer has (an edited sweep file):
        nothing shows or cancels them otherwise, and they keep holding Kueue quota until they finish."""
        return find_orphans(self._jobsets(), expansion)

    def leftovers(self, expansion: Expansion) -> tuple[list[Orphan], dict[str, int]]:
        """The orphans, and the sweep's JobSets that run another image (counted by image), from one listing."""
        jobsets = self._jobsets()
        return find_orphans(jobsets, expansion), other_images(jobsets, expansion)

    # --- submitting ---------------------------------------------------------------------------------------

    def manifest(self, run: Point) -> dict:
        body = yaml.safe_load(rendering.render_jobset(run, self.target))
        body["metadata"]["namespace"] = self.cluster.namespace
        return body

    def submit(
        self, runs: Sequence[Point], expansion: Expansion, *, dry_run: DryRun | None = None
    ) -> dict[str, Submitted]:
        if dry_run == "client":
            for run in runs:
                self.manifest(run)  # renders, or raises
            return {run.run_id: "dry-run" for run in runs}
        pool = ThreadPoolExecutor(max_workers=CREATE_CONCURRENCY)
        futures = [pool.submit(self._create, run, dry_run == "server") for run in runs]
        try:
            results = [future.result() for future in futures]
        except BaseException as e:  # Ctrl-C, SIGTERM, an API error: what was created stays, and is said
            # The creates in flight finish (each hands its claim to its JobSet); the ones not begun never start.
            pool.shutdown(wait=True, cancel_futures=True)
            done = [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None]
            note_partial_submit(e, done.count("created"), len(runs))
            raise
        pool.shutdown()
        return {run.run_id: result for run, result in zip(runs, results, strict=True)}

    def _create(self, run: Point, server_dry_run: bool) -> Submitted:
        kwargs = {"field_validation": "Strict"}
        if server_dry_run:
            kwargs["dry_run"] = "All"
        elif self._claim(run, run.sweep) != run.sweep:
            return "exists"  # another sweep runs this point (status shows "owned by sweep X"): never a second
        what = f"create JobSet {run.jobset_name}"
        try:
            created = self.cluster.call(
                what,
                self.cluster.custom.create_namespaced_custom_object,
                *JOBSET[:2],
                self.cluster.namespace,
                JOBSET[2],
                self.manifest(run),
                passthrough=frozenset({409, 400, 422}),
                **kwargs,
            )
        except ApiException as e:
            if e.status == 409:
                if not server_dry_run:
                    # Our own retried create, or a sweep killed between its create and `_own_claim`: the claim
                    # must still end owned by the JobSet, or it would outlive it (and hold the run for nobody).
                    self._own_existing_claim(run)
                return "exists"  # a concurrent sweep, a re-run, or our own retried create: never a duplicate
            if not server_dry_run:
                self._release(run)  # rejected: the point is not running, so another sweep may take it
            message = server_message(e)
            if "unknown field" in message:
                raise DistillctlError(
                    f"the cluster's JobSet CRD is older than the fields distillctl uses: {message}",
                    f"upgrade JobSet to {self.target.jobset_version} or later, or set target.jobset_version to the "
                    "installed version",
                    exit_code=ExitCode.CLUSTER_NOT_READY,
                ) from None
            raise api_error(what, e, self.cluster) from None
        if server_dry_run:
            return "dry-run"
        self._own_claim(run, created)
        return "created"

    # --- claims: one sweep per run id ---------------------------------------------------------------------

    @property
    def _leases(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.cluster.api)

    def _claim(self, run: Point, sweep: str) -> str:
        """Claim `run` for `sweep`; returns the sweep that holds it (`sweep` when this one does). The create is
        the arbiter: of two sweeps racing for a point, the API server lets exactly one create the Lease."""
        name = claim_name(run.run_id)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "labels": {LABEL_RUN_ID: run.run_id, rendering.LABEL_SWEEP: sweep}},
            "spec": {"holderIdentity": sweep},
        }
        holder = sweep
        for _ in range(CLAIM_ATTEMPTS):
            try:
                self.cluster.call(
                    f"claim run {run.run_id}",
                    self._leases.create_namespaced_lease,
                    self.cluster.namespace,
                    body,
                    passthrough=frozenset({409}),
                )
                return sweep
            except ApiException:
                pass  # 409: claimed already
            try:
                lease = self.cluster.call(
                    f"read the claim {name}",
                    self._leases.read_namespaced_lease,
                    name,
                    self.cluster.namespace,
                    passthrough=frozenset({404}),
                )
            except ApiException:
                continue  # 404: released meanwhile; claim again
            holder = lease.spec.holder_identity or ""
            if holder == sweep or not self._stale(lease, run.run_id, holder):
                return holder
            try:  # taken over only if nobody changed it since we read it: two takers cannot both delete it
                self.cluster.call(
                    f"release the stale claim {name}",
                    self._leases.delete_namespaced_lease,
                    name,
                    self.cluster.namespace,
                    body=client.V1DeleteOptions(
                        preconditions=client.V1Preconditions(
                            uid=lease.metadata.uid, resource_version=lease.metadata.resource_version
                        )
                    ),
                    passthrough=frozenset({404, 409}),
                )
            except ApiException:
                pass  # someone else released or renewed it: read it again
        return holder

    def _stale(self, lease: client.V1Lease, run_id: str, holder: str) -> bool:
        """A claim whose holder has no JobSet for the run (none, or one being deleted), once it is owned by a
        JobSet (which is gone) or older than the grace period (its sweep died between the two creates)."""
        metadata = lease.metadata
        created = metadata.creation_timestamp
        young = created and (datetime.datetime.now(datetime.UTC) - created).total_seconds() < CLAIM_GRACE_SECONDS
        if young and not metadata.owner_references:
            return False
        held = self._jobsets(
            f"{LABEL_RUN_ID}={run_id},{rendering.LABEL_SWEEP}={holder}", f"list the JobSets of run {run_id}"
        )
        return all((j.get("metadata") or {}).get("deletionTimestamp") for j in held)

    def _own_claim(self, run: Point, jobset: dict) -> None:
        """Make the JobSet the claim's owner, so the garbage collector releases the claim with the JobSet."""
        metadata = jobset.get("metadata") or {}
        owner = {
            "apiVersion": f"{JOBSET[0]}/{JOBSET[1]}",
            "kind": "JobSet",
            "name": metadata.get("name", run.jobset_name),
            "uid": metadata.get("uid", ""),
        }
        try:
            self.cluster.call(
                f"hand the claim of run {run.run_id} to its JobSet",
                self._leases.patch_namespaced_lease,
                claim_name(run.run_id),
                self.cluster.namespace,
                {"metadata": {"ownerReferences": [owner]}},
            )
        except DistillctlError:
            pass  # the JobSet is created; an unowned claim stays valid while that JobSet exists (`_stale`)

    def _own_existing_claim(self, run: Point) -> None:
        try:
            jobset = self.cluster.call(
                f"read JobSet {run.jobset_name}",
                self.cluster.custom.get_namespaced_custom_object,
                *JOBSET[:2],
                self.cluster.namespace,
                JOBSET[2],
                run.jobset_name,
                passthrough=frozenset({404}),
            )
        except ApiException:
            return  # deleted meanwhile: the claim is stale and the next sweep takes it over
        self._own_claim(run, jobset)

    def _release(self, run: Point) -> None:
        """Delete the run's claim if this run's sweep holds it (never another sweep's claim)."""
        name = claim_name(run.run_id)
        try:
            lease = self.cluster.call(
                f"read the claim {name}",
                self._leases.read_namespaced_lease,
                name,
                self.cluster.namespace,
                passthrough=frozenset({404}),
            )
            if (lease.spec.holder_identity or "") != run.sweep:
                return
            self.cluster.call(
                f"release the claim of run {run.run_id}",
                self._leases.delete_namespaced_lease,
                name,
                self.cluster.namespace,
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=lease.metadata.uid)),
                passthrough=frozenset({404, 409}),
            )
        except ApiException:
            pass  # 404: not there; 409: replaced meanwhile by another sweep's claim

    # --- deleting and logs --------------------------------------------------------------------------------

    def delete(self, runs: Sequence[Point]) -> list[str]:
        """Delete the runs' JobSets and release their claims at once, so that another sweep with the same runs
        can start them without waiting for the garbage collector (or for a claim left unowned to go stale)."""
        deleted = self.delete_jobsets([run.jobset_name for run in runs])
        for run in runs:
            self._release(run)
        return deleted

    def delete_jobsets(self, names: Sequence[str]) -> list[str]:
        """Delete these JobSets (and their pods); returns the names that were there to delete."""
        deleted = []
        for name in names:
            try:
                self.cluster.call(
                    f"delete JobSet {name}",
                    self.cluster.custom.delete_namespaced_custom_object,
                    *JOBSET[:2],
                    self.cluster.namespace,
                    JOBSET[2],
                    name,
                    propagation_policy="Foreground",
                    passthrough=frozenset({404}),
                )
                deleted.append(name)
            except ApiException:
                pass  # 404: already gone
        return deleted

    def delete_orphans(self, names: Sequence[str]) -> list[str]:
        """`cancel --orphans`: the JobSets `orphans` named."""
        return self.delete_jobsets(names)

    def still_there(self, names: Sequence[str]) -> list[str]:
        """The JobSets of `names` that still exist: deleted in the foreground, each stays (with a deletion
        timestamp) until its Jobs and pods are gone, which takes up to the pods' termination grace period. One
        listing of the namespace's JobSets however many names (`cancel --wait` asks every second); every JobSet,
        not only those with distillctl's labels, since XPK labels the ones it creates its own way."""
        if not names:
            return []
        present = {j["metadata"]["name"] for j in self._jobsets("", "list the JobSets being deleted")}
        return [name for name in names if name in present]

    def log_source(self, run: Point) -> LogSource:
        """The JobSet whose pods speak for `run`: found by its run id as `status` finds it (`choose_jobsets`), so
        a run another sweep created is read from that sweep's JobSet; this sweep's name when there is none."""
        found = self._jobsets(f"{LABEL_RUN_ID}={run.run_id}", f"list the JobSets of run {run.run_id}")
        if not found:
            return LogSource(run.jobset_name)
        chosen = min(found, key=lambda j: _preference(j, run.sweep))
        owner = _labels(chosen).get(rendering.LABEL_SWEEP, "")
        return LogSource(chosen["metadata"]["name"], "" if owner == run.sweep else owner)

    def _pods(self, jobset: str, request: LogRequest) -> list[client.V1Pod]:
        selector = f"{JOBSET_NAME_LABEL}={jobset}"
        if not request.all:
            selector += f",{JOB_INDEX_LABEL}={request.slice},{COMPLETION_INDEX_LABEL}={request.worker}"
        pods = self.cluster.call(
            f"list the pods of {jobset}",
            self.cluster.core.list_namespaced_pod,
            self.cluster.namespace,
            label_selector=selector,
        ).items
        newest: dict[tuple[str, str], client.V1Pod] = {}
        for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp):
            labels = pod.metadata.labels or {}
            newest[(labels.get(JOB_INDEX_LABEL, ""), labels.get(COMPLETION_INDEX_LABEL, ""))] = pod  # latest attempt
        return [newest[key] for key in sorted(newest, key=lambda k: (int(k[0] or 0), int(k[1] or 0)))]

    def logs(self, run: Point, request: LogRequest, source: LogSource | None = None) -> Iterator[str]:
        """The trainer's log in the pods of `source` (else `log_source(run)`: the JobSet that runs the run id)."""
        jobset = (source or self.log_source(run)).name
        pods = self._pods(jobset, request)
        if request.follow and len(pods) > 1:
            raise UsageError("--follow follows one worker", "drop --all, or choose one with --slice and --worker")
        if not pods:
            where = "" if request.all else f" for slice {request.slice}, worker {request.worker}"
            raise UsageError(f"{jobset} has no pods{where}{self._why_no_pods(jobset)}", "`distillctl status` says why")
        for pod in pods:
            labels = pod.metadata.labels or {}
            prefix = f"[{labels.get(JOB_INDEX_LABEL)}/{labels.get(COMPLETION_INDEX_LABEL)}] " if request.all else ""
            what = f"read the log of pod {pod.metadata.name}"
            if request.follow and len(pods) == 1:
                yield from self._follow_log(pod.metadata.name, request.tail, what)
                continue
            text = self.cluster.call(
                what,
                self.cluster.core.read_namespaced_pod_log,
                pod.metadata.name,
                self.cluster.namespace,
                container=self.container,
                tail_lines=request.tail,
            )
            yield from (prefix + line + "\n" for line in (text or "").splitlines())

    def _why_no_pods(self, jobset: str) -> str:
        """Why a JobSet has no pods, when its object says: suspended (Kueue has not admitted it), or gone."""
        try:
            found = self.cluster.call(
                f"read JobSet {jobset}",
                self.cluster.custom.get_namespaced_custom_object,
                *JOBSET[:2],
                self.cluster.namespace,
                JOBSET[2],
                jobset,
                passthrough=frozenset({404}),
            )
        except ApiException:
            return ": it does not exist (not created yet, or deleted)"
        except DistillctlError:
            return ""  # the pods were the question; reading the JobSet is only a courtesy
        if (found.get("spec") or {}).get("suspend"):
            return ": it is queued, suspended until Kueue admits it"
        return ""

    def _follow_log(self, pod: str, tail: int | None, what: str) -> Iterator[str]:
        """A pod's log as it grows, whole lines only (a line may straddle two chunks of the stream)."""
        stream = self.cluster.call(
            what,
            self.cluster.core.read_namespaced_pod_log,
            pod,
            self.cluster.namespace,
            container=self.container,
            follow=True,
            tail_lines=tail,
            _preload_content=False,
            _request_timeout=None,
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            for chunk in stream.stream(amt=4096, decode_content=True):
                pending += decoder.decode(chunk)
                *lines, pending = pending.split("\n")
                yield from (line + "\n" for line in lines)
        except CONNECTION_ERRORS as e:
            raise unreachable(self.cluster.server, e) from None
        finally:
            stream.release_conn()
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending + "\n"

    def close(self) -> None:
        self.cluster.api.close()


@dataclasses.dataclass(frozen=True)
class LogSource:
    """The JobSet whose pods hold a run's log, and the sweep that owns it when another sweep does ("" else)."""

    name: str
    owner: str = ""


def find_orphans(jobsets: Sequence[dict], expansion: Expansion) -> list[Orphan]:
    """Among `jobsets` (a namespace's distillctl JobSets), those labelled with the expansion's sweep whose run ids
    it no longer has and that are not being deleted, by name. Shared by `status`/`cancel --orphans` and the
    controller's status. The same file launched with another --image (two trainer builds compared, CI's image
    per commit) is not among them (`other_images`): its runs are not the file's leftovers, and `cancel
    --orphans` deleted that live grid."""
    found = [
        Orphan(jobset["metadata"]["name"], _labels(jobset).get(LABEL_RUN_ID, ""), _state(jobset))
        for jobset, other_image in _leftovers(jobsets, expansion)
        if other_image is None
    ]
    return sorted(found, key=lambda o: o.name)


def other_images(jobsets: Sequence[dict], expansion: Expansion) -> dict[str, int]:
    """This sweep's live JobSets that run another image than its target's, counted by image (`--image` shows
    them): left out of the orphans."""
    counts: dict[str, int] = {}
    for _, image in _leftovers(jobsets, expansion):
        if image is not None:
            counts[image] = counts.get(image, 0) + 1
    return counts


def _leftovers(jobsets: Sequence[dict], expansion: Expansion) -> Iterator[tuple[dict, str | None]]:
    """The sweep's live JobSets (labelled with its name, not being deleted) for run ids it does not have, each with
    the image it runs when that is another than the sweep's target names (else None)."""
    sweep = expansion.sweep.name if expansion.sweep else ""
    wanted = {run.run_id for run in expansion.runs}
    image = expansion.sweep.target.image if expansion.sweep else None
    for jobset in jobsets:
        labels = _labels(jobset)
        if labels.get(rendering.LABEL_SWEEP) != sweep or labels.get(LABEL_RUN_ID) in wanted:
            continue
        if jobset["metadata"].get("deletionTimestamp"):
            continue
        theirs = jobset_image(jobset)
        yield jobset, (theirs if image and theirs not in (None, image) else None)


def jobset_image(jobset: dict) -> str | None:
    """The trainer image a JobSet runs (its first container's), None when the manifest does not say."""
    for replicated in (jobset.get("spec") or {}).get("replicatedJobs") or []:
        pod = ((((replicated.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}
        for container in pod.get("containers") or []:
            if container.get("image"):
                return str(container["image"])
    return None


def claim_name(run_id: str) -> str:
    """The Lease that claims a run for one sweep: named by the run id alone, so every sweep races for the same."""
    return CLAIM_PREFIX + run_id


def choose_jobsets(jobsets: Sequence[dict], expansion: Expansion) -> dict[str, dict]:
    """The JobSet that speaks for each of the sweep's runs, by run id, among every distillctl JobSet of the
    namespace (a run id is shared by every sweep with that point)."""
    sweep = expansion.sweep.name if expansion.sweep else ""
    wanted = {run.run_id for run in expansion.runs}
    candidates: dict[str, list[dict]] = {}
    for jobset in jobsets:
        run_id = _labels(jobset).get(LABEL_RUN_ID)
        if run_id in wanted:
            candidates.setdefault(run_id, []).append(jobset)
    return {run_id: min(found, key=lambda j: _preference(j, sweep)) for run_id, found in candidates.items()}


def workloads_by_owner(workloads: Sequence[dict]) -> dict[str, dict]:
    """Kueue Workloads by the uid of the JobSet that owns them."""
    owned = {}
    for workload in workloads:
        for owner in workload.get("metadata", {}).get("ownerReferences", []):
            owned[owner.get("uid")] = workload
    return owned


def failed_workers(pods: Sequence[dict]) -> dict[str, str]:
    """`slice S, worker W exited N (Reason)` for the first failed worker (by slice, then worker) of each JobSet, from
    its Failed pods' JSON: the container's terminated state (the kubelet's reason too: OOMKilled)."""
    found: dict[str, tuple[tuple[int, int], str]] = {}
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        jobset = labels.get(JOBSET_NAME_LABEL)
        if not jobset:
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            ended = ((container.get("state") or {}).get("terminated")) or {}
            code = ended.get("exitCode")
            if not code:
                continue
            where = (int(labels.get(JOB_INDEX_LABEL) or 0), int(labels.get(COMPLETION_INDEX_LABEL) or 0))
            why = exit_reason(int(code)) + (
                f", {ended['reason']}" if ended.get("reason") not in (None, "Error") else ""
            )
            text = f"slice {where[0]}, worker {where[1]} exited {code} ({why})"
            if jobset not in found or where < found[jobset][0]:
                found[jobset] = (where, text)
    return {jobset: text for jobset, (_, text) in found.items()}


@dataclasses.dataclass(frozen=True)
class PendingClaim:
    """A run claimed by a sweep that has not created its JobSet (yet): being created, or its sweep was killed
    between the two creates (then the claim turns stale at `expires_at`, and any sweep takes the run over)."""

    holder: str
    claimed_at: float  # unix seconds
    expires_at: float


def pending_claims(leases: Sequence[dict], chosen: Mapping[str, dict], *, now: float) -> dict[str, PendingClaim]:
    """By run id, the claims of runs with no JobSet that `_stale` would not take over yet: unowned and younger than
    the grace period. A sweep that saw only "not created" for two minutes created nothing and said why nowhere."""
    found = {}
    for lease in leases:
        metadata = lease.get("metadata") or {}
        name = metadata.get("name") or ""
        run_id = name.removeprefix(CLAIM_PREFIX)
        if not name.startswith(CLAIM_PREFIX) or run_id in chosen or metadata.get("ownerReferences"):
            continue
        created = parse_timestamp(metadata.get("creationTimestamp"))
        if created is None or now - created >= CLAIM_GRACE_SECONDS:
            continue
        holder = (lease.get("spec") or {}).get("holderIdentity") or ""
        found[run_id] = PendingClaim(holder, created, created + CLAIM_GRACE_SECONDS)
    return found


def observations(
    chosen: dict[str, dict],
    expansion: Expansion,
    workloads: dict[str, dict],
    stuck: dict[str, tuple[PodProblem, ...]],
    failed: Mapping[str, str] | None = None,
    claims: Mapping[str, PendingClaim] | None = None,
) -> dict[str, Observation]:
    """Observations of the chosen JobSets (`choose_jobsets`), with Kueue Workloads by their owner's uid and stuck
    pods' problems by JobSet name; runs with no JobSet that another sweep claimed (`pending_claims`) as claimed.
    Pure: the CLI lists what it needs, the service reads its watch caches."""
    sweep = expansion.sweep.name if expansion.sweep else ""
    observed = {}
    for run in expansion.runs:
        claim = (claims or {}).get(run.run_id)
        if claim is not None and run.run_id not in chosen and claim.holder != run.sweep:
            observed[run.run_id] = Observation(
                exists=False, owner=claim.holder, claimed_at=claim.claimed_at, claim_expires_at=claim.expires_at
            )
    for run_id, jobset in chosen.items():
        metadata = jobset["metadata"]
        owner = _labels(jobset).get(rendering.LABEL_SWEEP, "")
        observed[run_id] = dataclasses.replace(
            observe_jobset(jobset, workloads.get(metadata.get("uid")), stuck.get(metadata.get("name"), ())),
            owner="" if owner == sweep else owner,
            name=metadata.get("name", ""),
            labels=tuple(sorted(_labels(jobset).items())),
            failed_worker=(failed or {}).get(metadata.get("name", ""), ""),
        )
    return observed


def _labels(jobset: dict) -> dict[str, str]:
    return (jobset.get("metadata") or {}).get("labels") or {}


def _finished(jobset: dict) -> bool:
    conditions = (jobset.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Completed", "Failed") and c.get("status") == "True" for c in conditions)


def _state(jobset: dict) -> str:
    if _finished(jobset):
        return "finished"
    return "queued" if (jobset.get("spec") or {}).get("suspend") else "active"


def _preference(jobset: dict, sweep: str) -> tuple:
    """Which of a run's JobSets speaks for it (smallest first): one not being deleted, still going, this sweep's,
    the oldest."""
    metadata = jobset.get("metadata") or {}
    return (
        bool(metadata.get("deletionTimestamp")),
        _finished(jobset),
        _labels(jobset).get(rendering.LABEL_SWEEP) != sweep,
        metadata.get("creationTimestamp") or "",
    )


def as_json(list_fn, *args, **kwargs) -> dict:
    """A core API list as plain JSON, as custom objects come: the pure readers below and the service's watch caches
    take dicts. A watch (`watch=True`) streams as it would."""
    if kwargs.get("watch"):
        return list_fn(*args, **kwargs)
    return json.loads(list_fn(*args, _preload_content=False, **kwargs).data)


def _waiting_pods(pods: Iterable[dict]) -> list[dict]:
    """Pending pods not being torn down (an attempt being deleted says nothing about the next)."""
    return [
        p
        for p in pods
        if (p.get("status") or {}).get("phase") == "Pending" and not (p.get("metadata") or {}).get("deletionTimestamp")
    ]


def needs_events(pods: Iterable[dict]) -> bool:
    """Whether a pending pod is bound to a node and waits with no reason of its own: only Events can say why."""
    return any(not pod_problems(p) and (p.get("spec") or {}).get("nodeName") for p in _waiting_pods(pods))


def stuck_by_jobset(pods: Iterable[dict], events: Iterable[dict] = ()) -> dict[str, tuple[PodProblem, ...]]:
    """Why pods are not running (`pod_problems`), by the name of their JobSet; Warning `events` matched by pod uid."""
    by_pod: dict[str, list[dict]] = {}
    for event in events:
        by_pod.setdefault((event.get("involvedObject") or {}).get("uid", ""), []).append(event)
    found: dict[str, list[PodProblem]] = {}
    for pod in _waiting_pods(pods):
        metadata = pod.get("metadata") or {}
        problems = pod_problems(pod, by_pod.get(metadata.get("uid", ""), ()))
        if problems:
            found.setdefault((metadata.get("labels") or {}).get(JOBSET_NAME_LABEL, ""), []).extend(problems)
    return {name: tuple(problems) for name, problems in found.items()}


def _event_time(event: dict) -> float:
    when = (
        event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get("creationTimestamp")
    )
    return parse_timestamp(when) or 0.0


def pod_problems(pod: dict, events: Sequence[dict] = ()) -> tuple[PodProblem, ...]:
    """Why a Pending pod (its JSON) is not running, as the scheduler and the kubelet wrote it: PodScheduled=False
    (Unschedulable, with the scheduler's message), a container's waiting reason that is not a start-up step
    (ImagePullBackOff, CreateContainerConfigError, ...), or else the latest of its Warning `events` that explains
    a pod stuck creating its containers (FailedMount). Empty while the pod is merely starting."""
    name = (pod.get("metadata") or {}).get("name", "")
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            if condition.get("reason") == StuckReason.UNSCHEDULABLE:
                return (PodProblem(StuckReason.UNSCHEDULABLE, condition.get("message") or "", name),)
    containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    problems = tuple(
        PodProblem(waiting["reason"], waiting.get("message") or "", name)
        for c in containers
        for waiting in [(c.get("state") or {}).get("waiting") or {}]
        if waiting.get("reason") in STUCK_WAITING_REASONS
    )
    if problems:
        return problems
    explaining = [e for e in events if e.get("reason") in STUCK_EVENT_REASONS]
    if explaining:
        latest = max(explaining, key=_event_time)
        return (PodProblem(latest["reason"], latest.get("message") or "", name),)
    return ()


def observe_jobset(jobset: dict, workload: dict | None, stuck: tuple[PodProblem, ...] = ()) -> Observation:
    """A JobSet (and its Kueue Workload) as an Observation: conditions verbatim, Kueue's reason while queued, and
    why its pending pods are not running (`stuck`, from `pod_problems`)."""
    status = jobset.get("status") or {}
    conditions = tuple(
        Condition(
            c.get("type", ""),
            c.get("status", ""),
            c.get("reason", ""),
            c.get("message", ""),
            parse_timestamp(c.get("lastTransitionTime")),
        )
        for c in status.get("conditions") or []
    )
    suspended = bool((jobset.get("spec") or {}).get("suspend"))
    active = any((r.get("active") or 0) + (r.get("ready") or 0) > 0 for r in status.get("replicatedJobsStatus") or [])
    reason = message = ""
    if suspended:
        reason, message = "WaitingForKueue", "the JobSet is suspended and Kueue has not admitted it yet"
        workload_conditions = ((workload or {}).get("status") or {}).get("conditions") or []
        for condition in workload_conditions:
            if condition.get("type") in ("QuotaReserved", "Admitted") and condition.get("status") == "False":
                reason, message = condition.get("reason", reason), condition.get("message", message)
                break
        evicted = next(
            (c for c in workload_conditions if c.get("type") == "Evicted" and c.get("status") == "True"), None
        )
        if evicted:
            # Kueue took its quota back (a higher-priority run, a timeout): it read "Queued (Pending) ... 128 more
            # needed", as if it had never run; its pods were stopped and it resumes from its last checkpoint.
            reason = evicted.get("reason") or "Evicted"
            message = (
                f"evicted by Kueue ({evicted.get('message', '')}); resumes from its last checkpoint when admitted "
                f"again, meanwhile: {message}"
            )
    metadata = jobset.get("metadata") or {}
    resumed = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Suspended" and c.get("status") == "False"), None
    )  # Kueue let it run: the attempt started then, not at creation
    return Observation(
        exists=True,
        conditions=conditions,
        suspended=suspended,
        restarts=int(status.get("restarts") or 0),
        active=active,
        queue_reason=reason,
        queue_message=message,
        created_at=parse_timestamp(metadata.get("creationTimestamp")),
        deleting=bool(metadata.get("deletionTimestamp")),
        started_at=parse_timestamp((resumed or {}).get("lastTransitionTime")),
        pod_problems=() if suspended else stuck,
    )
