"""The controller's HTTP endpoints: `/healthz` (its threads are alive), `/readyz` (its caches are synced and the
API server still answers its watches) and `/metrics` in Prometheus' text format — prometheus_client's registry
when it is installed, else a small exposition of the same three families written here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RUNS = ("distillctl_runs", "Runs of DistillationSweeps by sweep and phase, as last reconciled")
RECONCILE = ("distillctl_reconcile_seconds", "Time to reconcile one sweep")
API_ERRORS = ("distillctl_api_errors_total", "Kubernetes API calls that failed, by operation")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class Metrics:
    """Runs by phase (a gauge per sweep and phase), reconcile latency (a histogram), API errors (a counter)."""

    def __init__(self, use_prometheus_client: bool = True):
        self._lock = threading.Lock()
        self._client = None
        if use_prometheus_client:
            try:
                import prometheus_client
            except ImportError:
                prometheus_client = None
            if prometheus_client is not None:
                self._client = prometheus_client
                self.registry = prometheus_client.CollectorRegistry()
                self._runs = prometheus_client.Gauge(*RUNS, ["sweep", "phase"], registry=self.registry)
                self._reconcile = prometheus_client.Histogram(*RECONCILE, buckets=BUCKETS, registry=self.registry)
                self._errors = prometheus_client.Counter(
                    API_ERRORS[0].removesuffix("_total"), API_ERRORS[1], ["operation"], registry=self.registry
                )
        self._runs_plain: dict[tuple[str, str], int] = {}
        self._hist = [0] * len(BUCKETS)
        self._hist_sum = 0.0
        self._errors_plain: dict[str, int] = {}

    def set_runs(self, sweep: str, counts: dict[str, int]) -> None:
        """The sweep's runs by phase (phases absent from `counts` read 0); an empty `counts` forgets the sweep."""
        with self._lock:
            old = {phase for (s, phase) in self._runs_plain if s == sweep}
            for phase in old - counts.keys():
                del self._runs_plain[(sweep, phase)]
                if self._client:
                    self._runs.remove(sweep, phase)
            for phase, n in counts.items():
                self._runs_plain[(sweep, phase)] = n
                if self._client:
                    self._runs.labels(sweep, phase).set(n)

    def forget_runs(self) -> None:
        """No run gauges at all: a replica that stops leading stops reconciling, and its last values stayed exported
        beside the new leader's (the chart's Service scrapes every replica: sums counted runs twice)."""
        with self._lock:
            for sweep, phase in list(self._runs_plain):
                if self._client:
                    self._runs.remove(sweep, phase)
            self._runs_plain.clear()

    def observe_reconcile(self, seconds: float) -> None:
        with self._lock:
            if self._client:
                self._reconcile.observe(seconds)
            self._hist_sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._hist[i] += 1

    def api_error(self, operation: str) -> None:
        with self._lock:
            if self._client:
                self._errors.labels(operation).inc()
            self._errors_plain[operation] = self._errors_plain.get(operation, 0) + 1

    def exposition(self) -> tuple[bytes, str]:
        """The metrics as Prometheus text, and its content type."""
        if self._client:
            return self._client.generate_latest(self.registry), self._client.CONTENT_TYPE_LATEST
        return self.plain_exposition().encode(), "text/plain; version=0.0.4; charset=utf-8"

    def plain_exposition(self) -> str:
        with self._lock:
            lines = [f"# HELP {RUNS[0]} {RUNS[1]}", f"# TYPE {RUNS[0]} gauge"]
            for (sweep, phase), n in sorted(self._runs_plain.items()):
                lines.append(f'{RUNS[0]}{{phase="{_escape(phase)}",sweep="{_escape(sweep)}"}} {n}')
            lines += [f"# HELP {RECONCILE[0]} {RECONCILE[1]}", f"# TYPE {RECONCILE[0]} histogram"]
            for bound, n in zip(BUCKETS, self._hist, strict=True):
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'{RECONCILE[0]}_bucket{{le="{le}"}} {n}')
            lines += [f"{RECONCILE[0]}_count {self._hist[-1]}", f"{RECONCILE[0]}_sum {self._hist_sum}"]
            lines += [f"# HELP {API_ERRORS[0]} {API_ERRORS[1]}", f"# TYPE {API_ERRORS[0]} counter"]
            for operation, n in sorted(self._errors_plain.items()):
                lines.append(f'{API_ERRORS[0]}{{operation="{_escape(operation)}"}} {n}')
            return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def serve(
    port: int, metrics: Metrics, healthy: Callable[[], bool], ready: Callable[[], bool], host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Start the endpoints on a daemon thread; `server.server_address` has the bound port (0: any free one)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, kind = metrics.exposition()
                self._reply(200, body, kind)
            elif path in ("/healthz", "/livez"):
                ok = healthy()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
            elif path == "/readyz":
                ok = ready()
                self._reply(
                    200 if ok else 503,
                    b"ok\n" if ok else b"caches not synced, or the API server cannot be read (the log says which)\n",
                )
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass  # probes every few seconds would drown the controller's own log

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="endpoints", daemon=True).start()
    return server
