"""A fault-injecting proxy in front of the test apiserver, for testing how clients behave when the API misbehaves.

It listens on 127.0.0.1 (plain HTTP) and forwards every request to the real apiserver over TLS with the admin
client certificate. Rules, matched in order against the method and path, make it instead:

* `status`: answer with an error status itself (503, 429 with Retry-After, ...) without forwarding;
* `drop`: forward the request, then close the connection without answering (the server did the work, the client
  never hears of it: a create that must not be repeated as a duplicate);
* `hide_group`: forward, but remove an API group from discovery (a cluster without JobSet or Kueue installed);
* `impersonate`: forward as another user (real RBAC answers: 403 for a user with no rights).
* `delay`: forward after `delay` seconds (a slow API server: a command interrupted midway).

Each rule fires `times` times (None: always). Everything it does is recorded in `events`. Requests are bounded by
the test using it; the proxy serves only loopback.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}


@dataclasses.dataclass
class Rule:
    action: str  # status | drop | hide_group | impersonate | delay
    method: str | None = None
    path_contains: str | None = None
    status: int = 503
    retry_after: float | None = None
    group: str = ""
    user: str = ""
    times: int | None = 1
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


class FaultProxy:
    def __init__(self, control_plane, rules: list[Rule] | None = None):
        self.cp = control_plane
        self.rules = list(rules or [])
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        pki = Path(control_plane.workdir) / "pki"
        self._tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._server: ThreadingHTTPServer | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="fault-proxy-"))
        self.kubeconfig = self._folder / "kubeconfig"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        port = self._server.server_address[1]
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "proxy", "user": {}}],
                    "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
                    "current-context": "proxy",
                }
            )
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _rule_for(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    if rule.times is not None:
                        rule.times -= 1
                    self.events.append((method, path, rule.action))
                    return rule
            self.events.append((method, path, "forward"))
        return None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        method, path = request.command, request.path
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        rule = self._rule_for(method, path)
        if rule is not None and rule.action == "status":
            payload = json.dumps(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "code": rule.status,
                    "message": f"injected {rule.status}",
                }
            ).encode()
            request.send_response(rule.status)
            request.send_header("Content-Type", "application/json")
            if rule.retry_after is not None:
                request.send_header("Retry-After", str(rule.retry_after))
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"host", "authorization"}}
        if rule is not None and rule.action == "impersonate":
            headers["Impersonate-User"] = rule.user
        if rule is not None and rule.action == "delay":
            time.sleep(rule.delay)
        connection = http.client.HTTPSConnection(*self._upstream, context=self._tls, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            status, reason, upstream_headers = response.status, response.reason, response.getheaders()
        finally:
            connection.close()
        if rule is not None and rule.action == "drop":
            request.close_connection = True
            request.connection.shutdown(2)  # the server did it; the client hears nothing
            return
        if rule is not None and rule.action == "hide_group" and status == 200:
            data = _without_group(path, data, rule.group)
            if data is None:
                status, reason, data = 404, "Not Found", b'{"kind":"Status","code":404,"message":"not found"}'
        request.send_response(status, reason)
        for key, value in upstream_headers:
            if key.lower() not in HOP_BY_HOP:
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def _without_group(path: str, data: bytes, group: str) -> bytes | None:
    """Discovery without `group`: drop it from /apis, and 404 for /apis/<group>/... (None)."""
    bare = path.split("?", 1)[0].rstrip("/")
    if bare.startswith(f"/apis/{group}"):
        return None
    if bare == "/apis":
        listing = json.loads(data)
        listing["groups"] = [g for g in listing.get("groups", []) if g.get("name") != group]
        return json.dumps(listing).encode()
    return data
