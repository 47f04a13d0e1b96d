"""Leader election through a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

A candidate takes the Lease when it is free or its holder has not renewed it for `lease_seconds` — measured on the
candidate's own clock from when it last saw the record change, so hosts' clocks need not agree. Writes carry the
Lease's resourceVersion: of two candidates racing for a free Lease, the API server lets one win (409 for the other).
A leader that cannot renew within `renew_deadline` stops acting before anyone else may take over
(`renew_deadline < lease_seconds`), so two replicas never both act.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator.backends.kubernetes.client import CONNECTION_ERRORS, Cluster

log = logging.getLogger("distillctl.serve")


class LeaderElector:
    def __init__(
        self,
        cluster: Cluster,
        name: str,
        identity: str,
        *,
        lease_seconds: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started: Callable[[], None] = lambda: None,
        on_stopped: Callable[[], None] = lambda: None,
        on_error: Callable[[str], None] = lambda operation: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        assert renew_deadline < lease_seconds
        self.cluster, self.name, self.identity = cluster, name, identity
        self.lease_seconds, self.renew_deadline, self.retry_period = lease_seconds, renew_deadline, retry_period
        self.on_started, self.on_stopped, self.on_error = on_started, on_stopped, on_error
        self.clock = clock
        self._api = client.CoordinationV1Api(cluster.api)
        self._leader_until = 0.0  # our clock: we act only before this
        self._observed: tuple | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._leading = False
        self._stop = threading.Event()
        self._said: set[tuple[str, int]] = set()  # (operation, status) of the failures already logged

    @property
    def is_leader(self) -> bool:
        return self._leading and self.clock() < self._leader_until

    def run(self) -> None:
        """Try to acquire or renew every `retry_period` until `stop()`; releases the Lease on the way out."""
        while not self._stop.is_set():
            started = self.clock()
            ok = self._try()
            if ok:
                self._leader_until = started + self.renew_deadline
                if not self._leading:
                    self._leading = True
                    self.on_started()
            elif self._leading and self.clock() >= self._leader_until:
                self._leading = False
                self.on_stopped()
            self._stop.wait(self.retry_period)
        if self._leading:
            self._leading = False
            self.on_stopped()
            self._release()

    def stop(self) -> None:
        self._stop.set()

    def _failed(self, operation: str, error: BaseException | None = None) -> None:
        """Count a failed Lease call; an answer that keeps this replica a standby for ever while its probes pass is
        also said, once per operation and status: a refusal (403: a `--lease` the Role does not name, say), or any
        other but 409 (a race another replica won)."""
        self.on_error(operation)
        if not isinstance(error, ApiException) or error.status == 409 or (operation, error.status) in self._said:
            return
        self._said.add((operation, error.status))
        if error.status == 403:
            log.error(
                "cannot %s %s/%s: forbidden: this replica never acts until its Role allows get and update on that "
                "Lease (the chart's Role names distillctl-controller, one per namespace; --lease must be that name)",
                operation,
                self.cluster.namespace,
                self.name,
            )
        else:
            log.error(
                "cannot %s %s/%s: %s %s: %s",
                operation,
                self.cluster.namespace,
                self.name,
                error.status,
                error.reason,
                (error.body or "")[:300],
            )

    def _now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    def _try(self) -> bool:
        """One attempt to hold the Lease; True when we hold it now."""
        ns = self.cluster.namespace
        try:
            lease = self._api.read_namespaced_lease(self.name, ns, _request_timeout=self.retry_period * 2)
        except ApiException as e:
            if e.status != 404:
                self._failed("read lease", e)
                return False
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=ns),
                spec=self._spec(acquire=True, transitions=0),
            )
            try:
                self._api.create_namespaced_lease(ns, body, _request_timeout=self.retry_period * 2)
                return True
            except ApiException as e:
                self._failed("create lease", e)  # 409: another candidate created it first
                return False
            except CONNECTION_ERRORS:
                self.on_error("create lease")
                return False
        except CONNECTION_ERRORS:
            self.on_error("read lease")
            return False
        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, spec.renew_time, spec.lease_transitions)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        held_by_other = spec.holder_identity and spec.holder_identity != self.identity
        duration = spec.lease_duration_seconds or self.lease_seconds
        if held_by_other and self.clock() < self._observed_at + duration:
            return False
        lease.spec = self._spec(
            acquire=spec.holder_identity != self.identity,
            transitions=(spec.lease_transitions or 0) + (1 if spec.holder_identity != self.identity else 0),
            acquired=spec.acquire_time,
        )
        try:
            self._api.replace_namespaced_lease(self.name, ns, lease, _request_timeout=self.retry_period * 2)
        except ApiException as e:
            self._failed("update lease", e)  # 409: someone else wrote it since we read it
            return False
        except CONNECTION_ERRORS:
            self.on_error("update lease")
            return False
        return True

    def _spec(self, *, acquire: bool, transitions: int, acquired=None) -> client.V1LeaseSpec:
        now = self._now()
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self.lease_seconds),
            acquire_time=micro_time(now if acquire or acquired is None else acquired),
            renew_time=micro_time(now),
            lease_transitions=transitions,
        )

    def _release(self) -> None:
        """Hand the Lease back (an empty holder) so a successor need not wait out the duration."""
        try:
            lease = self._api.read_namespaced_lease(self.name, self.cluster.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                lease.spec.acquire_time = micro_time(lease.spec.acquire_time)
                lease.spec.renew_time = micro_time(lease.spec.renew_time)
                self._api.replace_namespaced_lease(self.name, self.cluster.namespace, lease)
        except (ApiException, *CONNECTION_ERRORS):
            pass  # it expires by itself


def micro_time(moment: datetime.datetime | None) -> datetime.datetime | None:
    """A Lease time the API server will parse. The client writes a datetime with `isoformat()`, which drops the
    fraction on a whole second ("22:19:07+00:00"), and a Lease's MicroTime refuses that (400): the holder never
    renewed its Lease again. (It converts strings back to datetimes, so the fix is in the value: a whole second is
    written one microsecond later.)"""
    if moment is None or moment.microsecond:
        return moment
    return moment + datetime.timedelta(microseconds=1)
