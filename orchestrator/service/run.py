"""Running the controller as a process: connect, serve the endpoints, start, and stop cleanly on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from orchestrator.backends import ClusterAccess
from orchestrator.backends.kubernetes.client import connect
from orchestrator.errors import UsageError
from orchestrator.service import endpoints
from orchestrator.service.client import require_served
from orchestrator.service.controller import Controller, Options
from orchestrator.service.endpoints import Metrics
from orchestrator.service.resource import NO_DEFAULTS, TargetDefaults


def run(
    *,
    namespace: str | None,
    port: int,
    resync: float,
    lease: str,
    identity: str | None,
    stall_after: float,
    kubeconfig: str | None = None,
    context: str | None = None,
    defaults: TargetDefaults = NO_DEFAULTS,
) -> None:
    """Serve until SIGTERM or SIGINT; the Lease is released on the way out so a successor starts at once."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = connect(ClusterAccess(kubeconfig=kubeconfig, context=context, namespace=namespace))
    require_served(cluster)
    identity = identity or f"{socket.gethostname()}-{os.getpid()}"
    metrics = Metrics()
    options = Options(resync=resync, stall_after=stall_after, lease_name=lease, identity=identity, defaults=defaults)
    controller = Controller(cluster, options, metrics)
    try:
        server = endpoints.serve(port, metrics, lambda: controller.healthy, lambda: controller.ready)
    except OSError as e:
        raise UsageError(
            f"cannot serve the endpoints on port {port}: {e.strerror or e}", "choose another --port"
        ) from None
    logging.getLogger("distillctl.serve").info(
        "serving namespace %s as %s; endpoints on :%d; target defaults %s",
        cluster.namespace,
        identity,
        server.server_address[1],
        defaults.model_dump(exclude_none=True) or "none",
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    controller.start()
    try:
        done.wait()
    finally:
        controller.stop()
        server.shutdown()
        cluster.api.close()
