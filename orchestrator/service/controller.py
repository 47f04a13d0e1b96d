"""`distillctl serve`: the controller of DistillationSweeps in one namespace. All the I/O of the service is here.

- Informers list and then watch DistillationSweeps, distillctl's JobSets, their pending pods (why a run is stuck:
  Unschedulable, ImagePullBackOff, ...) and (when Kueue is installed) Kueue Workloads into caches; each watch ends
  after `resync` seconds and the list is read again (a resync: every sweep is reconciled, so outputs written
  since — steps, metrics, the trainer's verdict — are seen).
- A sweep is queued when it or one of its JobSets changes; one worker reconciles the queue, each sweep with
  `plan.plan` (the CLI's expansion, derive and reconcile) over the caches, and writes what it decided: JobSets
  created through the Kubernetes backend (409 on a create is "exists": never a duplicate), failed runs deleted
  for a retry, the status subresource, and Events.
- Only the holder of the Lease acts; the others keep their caches warm.
- The finalizer: a sweep being deleted hands each JobSet another live sweep also has (a shared prerequisite or
  point) to that sweep, relabelled, and has the rest deleted (`deletionPolicy: Delete`) or left (`Keep`) before the
  finalizer is removed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from distillspec.contract import LABEL_RUN_ID, LABEL_SWEEP
from distillspec.problems import Problem
from distillspec.sweep import Target
from orchestrator.backends.kubernetes.backend import (
    JOBSET,
    KUEUE_GROUP,
    PENDING_PODS,
    KubernetesBackend,
    as_json,
    choose_jobsets,
    find_orphans,
    observations,
    stuck_by_jobset,
    workloads_by_owner,
)
from orchestrator.backends.kubernetes.client import CONNECTION_ERRORS, Cluster
from orchestrator.core import expansion as expansion_module
from orchestrator.core.run_status import DEFAULT_STALL_SECONDS
from orchestrator.core.status import read_outputs
from orchestrator.errors import CannotRunError, DistillctlError
from orchestrator.exit_codes import ExitCode
from orchestrator.outputs import write_stopped
from orchestrator.service import plan as planning
from orchestrator.service.election import LeaderElector
from orchestrator.service.endpoints import Metrics
from orchestrator.service.resource import (
    FINALIZER,
    GROUP,
    KIND,
    PINNED_DEFAULTS,
    PLURAL,
    SERVICE_MAX_POINTS,
    VERSION,
    OrphanRun,
    SweepStatus,
    TargetDefaults,
    source_from_resource,
)

log = logging.getLogger("distillctl.serve")
DEFAULT_RESYNC_SECONDS = 60.0


class Informer:
    """A namespaced resource, listed then watched into a cache by name; `on_change(obj)` after each event,
    `on_resync()` after each list."""

    def __init__(
        self,
        what: str,
        list_fn: Callable[..., dict],
        args: tuple,
        *,
        resync: float,
        on_change: Callable[[dict], None],
        on_resync: Callable[[], None],
        metrics: Metrics,
        stop: threading.Event,
        label_selector: str | None = None,
        field_selector: str | None = None,
        namespace: str = "",
    ):
        self.what, self.list_fn, self.args, self.namespace = what, list_fn, args, namespace
        self._said: set[tuple[str, int]] = set()  # (verb, status) of refusals logged as errors
        self.resync, self.on_change, self.on_resync = resync, on_change, on_resync
        self.metrics, self._stop = metrics, stop
        self.selectors = {
            k: v for k, v in (("label_selector", label_selector), ("field_selector", field_selector)) if v
        }
        self._items: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._watch: watch.Watch | None = None
        self.thread = threading.Thread(target=self._run, name=f"informer-{what}", daemon=True)

    def items(self) -> list[dict]:
        with self._lock:
            return list(self._items.values())

    def get(self, name: str) -> dict | None:
        with self._lock:
            return self._items.get(name)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def _kwargs(self) -> dict:
        return dict(self.selectors)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            verb = "list"
            try:
                listing = self.list_fn(*self.args, **self._kwargs(), _request_timeout=60)
                with self._lock:
                    self._items = {o["metadata"]["name"]: o for o in listing.get("items", [])}
                version = listing["metadata"].get("resourceVersion")
                self.synced.set()
                self.on_resync()
                self._watch = watch.Watch()
                verb = "watch"
                for event in self._watch.stream(
                    self.list_fn,
                    *self.args,
                    **self._kwargs(),
                    resource_version=version,
                    timeout_seconds=max(1, int(self.resync)),
                    allow_watch_bookmarks=True,
                    deserialize=False,
                ):
                    if self._stop.is_set():
                        break
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "BOOKMARK" or "metadata" not in obj:
                        continue
                    with self._lock:
                        if kind == "DELETED":
                            self._items.pop(obj["metadata"]["name"], None)
                        else:
                            self._items[obj["metadata"]["name"]] = obj
                    self.on_change(obj)
                delay = 0.5
            except ApiException as e:
                if self._stop.is_set():
                    break
                if e.status != 410:  # 410 Gone: the watch's version is too old; list again
                    # Not ready until a list succeeds again: with revoked credentials (403) /readyz said ok for
                    # ever while nothing could be read, and nothing on the pod showed it.
                    self.synced.clear()
                    self.metrics.api_error(f"watch {self.what}")
                    self._refused(verb, e)
                    self._stop.wait(delay)
                    delay = min(delay * 2, 10.0)
            except (*CONNECTION_ERRORS, ValueError) as e:
                if self._stop.is_set():
                    break  # stop() closed the watch's connection
                self.synced.clear()
                self.metrics.api_error(f"watch {self.what}")
                log.warning("watching %s: %s", self.what, e)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _refused(self, verb: str, error: ApiException) -> None:
        """A refusal (403) is said once per verb as an error naming the rights it needs (a Role without `watch`
        logged "watching pods: 403 Forbidden" every 10 s for ever, never saying what to grant); others each time."""
        if error.status != 403:
            log.warning("watching %s: %s %s", self.what, error.status, error.reason)
            return
        if (verb, 403) in self._said:
            return
        self._said.add((verb, 403))
        log.error(
            "cannot %s %s in namespace %s: forbidden: the controller is not ready until its Role allows get, list and "
            "watch on them (the chart's Role does: `helm upgrade` restores it); it retries",
            verb,
            self.what,
            self.namespace or "?",
        )


class WorkQueue:
    """Sweep names to reconcile: each at most once in the queue, handed out one at a time."""

    def __init__(self):
        self._pending: list[str] = []
        self._cond = threading.Condition()

    def add(self, name: str) -> None:
        with self._cond:
            if name not in self._pending:
                self._pending.append(name)
                self._cond.notify()

    def get(self, timeout: float) -> str | None:
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout)
            return self._pending.pop(0) if self._pending else None


@dataclasses.dataclass
class Options:
    resync: float = DEFAULT_RESYNC_SECONDS
    stall_after: float = DEFAULT_STALL_SECONDS
    lease_name: str = "distillctl-controller"
    identity: str = ""
    lease_seconds: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Target fields a sweep leaves unset (the chart's `defaults:`).
    defaults: TargetDefaults = dataclasses.field(default_factory=TargetDefaults)


class Controller:
    def __init__(self, cluster: Cluster, options: Options, metrics: Metrics | None = None):
        self.cluster, self.options = cluster, options
        self.namespace = cluster.namespace
        self.metrics = metrics or Metrics()
        self.queue = WorkQueue()
        self._stop = threading.Event()
        self._last: dict[str, SweepStatus] = {}  # by uid: what we last wrote (the cache may not show it yet)
        self._run_index: dict[str, set[str]] = {}  # run id -> sweeps that have it
        # sweep -> its run ids at its last pass (empty while it is refused): who inherits a deleted sweep's JobSets
        self._runs_of: dict[str, frozenset[str]] = {}
        custom = cluster.custom
        common = {"resync": options.resync, "metrics": self.metrics, "stop": self._stop, "namespace": self.namespace}
        self.sweeps = Informer(
            PLURAL,
            custom.list_namespaced_custom_object,
            (GROUP, VERSION, self.namespace, PLURAL),
            on_change=lambda o: self.queue.add(o["metadata"]["name"]),
            on_resync=self._enqueue_all,
            **common,
        )
        self.jobsets = Informer(
            "jobsets",
            custom.list_namespaced_custom_object,
            (*JOBSET[:2], self.namespace, JOBSET[2]),
            on_change=self._run_object_changed,
            on_resync=lambda: None,
            label_selector=LABEL_RUN_ID,
            **common,
        )
        # Pending pods of runs (few, normally none): why a run that is not really running is stuck, as `status`
        # says it (a field-selected watch reports a pod that leaves Pending as deleted).
        self.pods = Informer(
            "pods",
            as_json,
            (cluster.core.list_namespaced_pod, self.namespace),
            on_change=self._run_object_changed,
            on_resync=lambda: None,
            **PENDING_PODS,
            **common,
        )
        self.workloads: Informer | None = None
        kueue = self._kueue_version()
        if kueue:
            self.workloads = Informer(
                "workloads",
                custom.list_namespaced_custom_object,
                (KUEUE_GROUP, kueue, self.namespace, "workloads"),
                on_change=self._workload_changed,
                on_resync=lambda: None,
                **common,
            )
        self.elector = LeaderElector(
            cluster,
            options.lease_name,
            options.identity,
            lease_seconds=options.lease_seconds,
            renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
            on_started=self._became_leader,
            on_stopped=self._no_longer_leader,
            on_error=self.metrics.api_error,
        )
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------------------------

    def _no_longer_leader(self) -> None:
        log.info("%s: no longer the leader", self.options.identity)
        self.metrics.forget_runs()  # the leader exports them now

    def _kueue_version(self) -> str | None:
        found = self.cluster.call("list the API groups", client.ApisApi(self.cluster.api).get_api_versions)
        groups = found.groups or []
        for group in groups:
            if group.name == KUEUE_GROUP:
                return group.preferred_version.version
        return None

    def informers(self) -> list[Informer]:
        return [i for i in (self.sweeps, self.jobsets, self.pods, self.workloads) if i is not None]

    @property
    def ready(self) -> bool:
        return all(i.synced.is_set() for i in self.informers())

    @property
    def healthy(self) -> bool:
        return all(t.is_alive() for t in self._threads) and all(i.thread.is_alive() for i in self.informers())

    def start(self) -> None:
        for informer in self.informers():
            informer.start()
        for target, name in ((self.elector.run, "election"), (self._work, "worker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and wait for every thread (informers included, up to `timeout` in all): a thread still reading a
        watch when the process exits can abort the interpreter's shutdown (SIGABRT), and a successor waits for no
        Lease only if this process ends cleanly."""
        self._stop.set()
        self.elector.stop()
        for informer in self.informers():
            informer.stop()
        deadline = time.monotonic() + timeout
        for thread in [*self._threads, *(i.thread for i in self.informers())]:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _became_leader(self) -> None:
        log.info("%s: now the leader", self.options.identity)
        self._enqueue_all()

    def _enqueue_all(self) -> None:
        for sweep in self.sweeps.items():
            self.queue.add(sweep["metadata"]["name"])

    def _run_object_changed(self, obj: dict) -> None:
        """A JobSet or pod of a run changed: its run id's sweeps (and the sweep it is labelled with) are queued."""
        labels = obj["metadata"].get("labels") or {}
        names = set(self._run_index.get(labels.get(LABEL_RUN_ID, ""), ()))
        if labels.get(LABEL_SWEEP):
            names.add(labels[LABEL_SWEEP])
        for name in names:
            self.queue.add(name)

    def _workload_changed(self, workload: dict) -> None:
        uids = {o.get("uid") for o in workload["metadata"].get("ownerReferences") or []}
        for jobset in self.jobsets.items():
            if jobset["metadata"].get("uid") in uids:
                self._run_object_changed(jobset)

    # --- the worker -----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            name = self.queue.get(timeout=1.0)
            if name is None or not self.elector.is_leader:
                continue  # a new leader queues every sweep again
            if not self.ready:
                self._stop.wait(0.2)
                self.queue.add(name)
                continue
            started = time.monotonic()
            try:
                self.reconcile(name)
            except (DistillctlError, ApiException, *CONNECTION_ERRORS) as e:
                self.metrics.api_error("reconcile")
                log.warning("reconciling %s: %s", name, getattr(e, "message", e))
                threading.Timer(min(self.options.resync, 5.0), self.queue.add, (name,)).start()
            except Exception:  # a bug must not stop the other sweeps
                log.exception("reconciling %s", name)
            finally:
                self.metrics.observe_reconcile(time.monotonic() - started)

    def reconcile(self, name: str) -> None:
        """One pass over one sweep, from the caches."""
        resource = self.sweeps.get(name)
        if resource is None:
            self.metrics.set_runs(name, {})
            self._runs_of.pop(name, None)
            return
        metadata = resource["metadata"]
        if metadata.get("deletionTimestamp"):
            self._finalize(resource)
            return
        self._runs_of.setdefault(name, frozenset())
        if FINALIZER not in (metadata.get("finalizers") or []):
            self._patch(name, {"metadata": {"finalizers": [*(metadata.get("finalizers") or []), FINALIZER]}})
        previous = self._previous(resource)
        generation = metadata.get("generation")
        now = time.time()
        defaults = self.options.defaults.pinned(previous.pinned) if previous else self.options.defaults
        source, service = source_from_resource(resource, defaults)
        if not source.ok:
            rejected = planning.rejected(source.problems, reason="InvalidSpec", **_at(generation, previous, now))
            self._write(resource, rejected)
            return
        try:
            expanded = expansion_module.expand(source, max_points=SERVICE_MAX_POINTS)
        except expansion_module.GridTooLarge as e:  # a traceback per pass, and no word on the resource
            problem = Problem(
                (),
                "grid_too_large",
                f"{e}: the service keeps one status entry per run, and the API server's limit on an object's size "
                f"allows about {SERVICE_MAX_POINTS}",
                "split it into several sweeps, or run it with `distillctl sweep` (without --service)",
            )
            self._write(resource, planning.rejected([problem], reason="GridTooLarge", **_at(generation, previous, now)))
            return
        if not expanded.ok or not isinstance(expanded, expansion_module.Expansion):
            self._write(
                resource, planning.rejected(expanded.problems, reason="InvalidSpec", **_at(generation, previous, now))
            )
            return
        backend = KubernetesBackend(expanded.sweep.target, None, cluster=self.cluster)
        try:
            backend.preflight(expanded)
        except DistillctlError as e:
            problem = Problem((), "cannot_run", e.message, e.hint)
            reason = e.reason if isinstance(e, CannotRunError) else "CannotRun"
            self._write(resource, planning.rejected([problem], reason=reason, **_at(generation, previous, now)))
            return
        for run in expanded.runs:
            self._run_index.setdefault(run.run_id, set()).add(name)
        self._runs_of[name] = frozenset(run.run_id for run in expanded.runs)
        jobsets = self.jobsets.items()
        chosen = choose_jobsets(jobsets, expanded)
        workloads = workloads_by_owner(self.workloads.items()) if self.workloads else {}
        observed = observations(chosen, expanded, workloads, stuck_by_jobset(self.pods.items()))
        outputs, _ = read_outputs(expanded, strict=False)  # its pods may reach a store the controller cannot
        orphans = [OrphanRun(jobset=o.name, runId=o.run_id, state=o.state) for o in find_orphans(jobsets, expanded)]
        decided = planning.plan(
            expanded,
            observed,
            outputs,
            service=service,
            previous=previous,
            generation=generation,
            now=now,
            stall_after=self.options.stall_after,
            orphans=orphans,
        )
        target = (resource.get("spec") or {}).get("target") or {}
        kept = {k: v for k, v in defaults.filling(target).items() if k in PINNED_DEFAULTS}
        decided = dataclasses.replace(decided, status=decided.status.model_copy(update={"pinned": kept}))
        if not self.elector.is_leader:
            return  # lost the Lease while reading: the new leader decides
        for run, record in decided.stop:
            # The verdict first, where every front end reads it: a crash before the delete is repaired by the next
            # pass, and the trainer's SIGTERM checkpoint never reads as "resume me".
            write_stopped(run.output_path, record.model_dump(mode="json"))
        if decided.stop:
            backend.delete([run for run, _ in decided.stop])
        if decided.delete:
            backend.delete(decided.delete)
        if decided.create:
            try:
                submitted = backend.submit(decided.create, expanded)
                decided = decided.created_only({run_id for run_id, what in submitted.items() if what == "created"})
            except DistillctlError as e:
                if e.exit_code != ExitCode.REJECTED:
                    raise
                # The API server or a webhook refuses the manifest: retrying at once changes nothing (it was
                # retried several times a second, with no word on the resource). Say why; the resync tries again.
                problem = Problem((), "manifest_rejected", e.message, e.hint)
                rejected = planning.rejected([problem], reason="ManifestRejected", **_at(generation, previous, now))
                self._write(resource, rejected)
                return
        self._write(resource, decided)
        self.metrics.set_runs(name, _by_phase(decided.status))

    def _previous(self, resource: dict) -> SweepStatus | None:
        uid = resource["metadata"].get("uid", "")
        if uid in self._last:
            return self._last[uid]
        try:
            return SweepStatus.model_validate(resource.get("status") or {})
        except ValidationError:
            return None

    def _write(self, resource: dict, decided: planning.Plan) -> None:
        """The status (when it changed) and the Events."""
        metadata = resource["metadata"]
        status = decided.status.model_dump(mode="json", exclude_none=True)
        if status != (resource.get("status") or {}) and status != _dump(self._last.get(metadata.get("uid", ""))):
            self.cluster.call(
                f"update the status of {KIND} {metadata['name']}",
                self.cluster.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                metadata["name"],
                [{"op": "add", "path": "/status", "value": status}],  # replaces it whole: no stale keys
                _content_type="application/json-patch+json",
            )
        self._last[metadata.get("uid", "")] = decided.status
        for event in decided.events:
            self._event(resource, event)

    def _event(self, resource: dict, event: planning.Event) -> None:
        metadata = resource["metadata"]
        now = planning.timestamp(time.time())
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{metadata['name']}.", namespace=self.namespace),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=KIND,
                name=metadata["name"],
                namespace=self.namespace,
                uid=metadata.get("uid"),
                resource_version=metadata.get("resourceVersion"),
            ),
            type=event.type,
            reason=event.reason,
            message=event.message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="distillctl"),
            reporting_component="distillctl.dev/controller",
            reporting_instance=self.options.identity,
        )
        try:
            self.cluster.core.create_namespaced_event(self.namespace, body, _request_timeout=10)
        except (ApiException, *CONNECTION_ERRORS):
            self.metrics.api_error("create event")  # an Event is a courtesy: the status holds the truth

    def _patch(self, name: str, body: dict) -> None:
        self.cluster.call(
            f"update {KIND} {name}",
            self.cluster.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            body,
        )

    def _finalize(self, resource: dict) -> None:
        """Hand the JobSets another live sweep also has to it, delete the rest (unless the policy keeps them), then
        let the resource go."""
        metadata = resource["metadata"]
        finalizers = metadata.get("finalizers") or []
        if FINALIZER not in finalizers:
            return
        live = [
            s["metadata"]["name"]
            for s in self.sweeps.items()
            if s["metadata"]["name"] != metadata["name"] and not s["metadata"].get("deletionTimestamp")
        ]
        if unseen := [other for other in live if other not in self._runs_of]:
            # A new leader has not read every sweep yet: read them first, or a shared run would be deleted (or
            # left labelled with a sweep that is gone, which no sweep retries).
            for other in unseen:
                self.queue.add(other)
            self.queue.add(metadata["name"])
            return
        mine = [
            j for j in self.jobsets.items() if (j["metadata"].get("labels") or {}).get(LABEL_SWEEP) == metadata["name"]
        ]
        heirs = inheritance(mine, {other: self._runs_of[other] for other in live})
        for jobset, heir in heirs.items():
            self._relabel(jobset, heir)
        if heirs:
            log.info("%s: handed %d shared run(s) to the sweeps that also have them", metadata["name"], len(heirs))
        spec = resource.get("spec") or {}
        if spec.get("deletionPolicy", "Delete") == "Delete":
            going = [
                j["metadata"]["name"]
                for j in mine
                if j["metadata"]["name"] not in heirs and not j["metadata"].get("deletionTimestamp")
            ]
            if going:
                KubernetesBackend(Target(kind="kubernetes"), None, cluster=self.cluster).delete_jobsets(going)
            if going or any(j["metadata"]["name"] not in heirs for j in mine):
                return  # their deletion events queue the sweep again
        self._patch(
            metadata["name"],
            {
                "metadata": {
                    "finalizers": [f for f in finalizers if f != FINALIZER],
                    "resourceVersion": metadata.get("resourceVersion"),  # a conflict, not a lost finalizer
                }
            },
        )
        self._last.pop(metadata.get("uid", ""), None)
        self._runs_of.pop(metadata["name"], None)
        self.metrics.set_runs(metadata["name"], {})

    def _relabel(self, jobset: str, sweep: str) -> None:
        """Make `sweep` the JobSet's sweep: it then retries, stops and cancels the run as its own."""
        self.cluster.call(
            f"hand JobSet {jobset} to sweep {sweep}",
            self.cluster.custom.patch_namespaced_custom_object,
            *JOBSET[:2],
            self.namespace,
            JOBSET[2],
            jobset,
            {"metadata": {"labels": {LABEL_SWEEP: sweep}}},
        )


def inheritance(jobsets: list[dict], runs_of: dict[str, frozenset[str]]) -> dict[str, str]:
    """For a deleted sweep's JobSets (not being deleted): the live sweep, first by name, that has the same run, by
    JobSet name. A run no other sweep has is not inherited."""
    heirs = {}
    for jobset in jobsets:
        run_id = (jobset["metadata"].get("labels") or {}).get(LABEL_RUN_ID)
        having = sorted(name for name, runs in runs_of.items() if run_id in runs)
        if having and not jobset["metadata"].get("deletionTimestamp"):
            heirs[jobset["metadata"]["name"]] = having[0]
    return heirs


def _at(generation, previous, now) -> dict:
    return {"generation": generation, "previous": previous, "now": now}


def _dump(status: SweepStatus | None) -> dict | None:
    return status.model_dump(mode="json", exclude_none=True) if status is not None else None


def _by_phase(status: SweepStatus) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in status.runs:
        counts[run.phase] = counts.get(run.phase, 0) + 1
    return counts
