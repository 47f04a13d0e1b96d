"""A real, local Kubernetes control plane with fake TPU capacity, for tests.

`ControlPlane().start()` runs, as local processes on 127.0.0.1 (free ports):

* etcd, kube-apiserver (self-signed PKI, RBAC, admin kubeconfig),
  kube-controller-manager and kube-scheduler, built from k8s.io/kubernetes;
* the JobSet controller (v0.10.1, as XPK installs it) and Kueue (v0.17.1),
  with their CRDs and admission/conversion webhooks reachable by the apiserver;
* kwok, which plays the kubelet for fake nodes (stages in manifests/).

and then creates fake TPU node pools shaped like an XPK-made GKE cluster, XPK's
Kueue objects (ResourceFlavors, ClusterQueue `cluster-queue`, LocalQueue
`multislice-queue` in `default`) and priority classes.

Webhooks: JobSet runs with internal cert management off and serves a
certificate from our CA; its webhook configurations use
`clientConfig.url: https://127.0.0.1:<port>/...`. Kueue cannot (with internal
cert management off it insists on metrics certificates under /etc/kueue), so it
keeps its own cert rotator: its webhook configurations and conversion webhooks
name the Service kueue-system/kueue-webhook-service, an ExternalName Service
for 127.0.0.1 (the apiserver resolves ExternalName services for webhooks), and
this module plays the kubelet that mounts Kueue's certificate Secret into its
cert dir.
"""

from __future__ import annotations

import base64
import collections
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import yaml

from . import certs, upstream
from .paths import SESSIONS_DIR
from .processes import ComponentError, Supervisor, log_tail, reap_stale_sessions

EXIT_CODE_ANNOTATION = "distillctl.dev/exit-code"
DISRUPTION_REASON_ANNOTATION = "distillctl.dev/disruption-reason"
RUN_DURATION_ANNOTATION = "distillctl.dev/run-duration"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FIELD_MANAGER = "distillctl-tests"
KUEUE_NAMESPACE = "kueue-system"
KUEUE_WEBHOOK_SERVICE = "kueue-webhook-service"
KUEUE_WEBHOOK_SECRET = "kueue-webhook-server-cert"
SERVICE_CIDR = "10.96.0.0/16"
# What a fake pod's `trainer` container logs (kwok serves it to the apiserver's log endpoint).
POD_LOG = "training → gs://bucket/run (steps 0..20)\nstep 10  loss 2.1000  kl_div_T1 0.5000  1,000 tok/s\nsucceeded (exit 0: done)\n"

_PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ControlPlane:
    """A local control plane; use as a context manager or call start()/stop().

    Args:
      workdir: the cluster's folder, for certificates, configs, etcd data and
        logs; its contents are replaced (default: a new
        temporary folder, removed by stop() unless keep_workdir or the
        environment sets DISTILLCTL_CLUSTER_KEEP=1).
      pod_run_ms: how long a fake pod "runs" before it succeeds (kwok stage
        pod-complete); per pod, the annotation distillctl.dev/run-duration wins.
      detach: start processes that outlive this Python process (for
        `python -m tests.cluster up`); otherwise each dies with its parent.
      with_fixtures: create the fake TPU node pools and XPK's Kueue objects.
      binaries: override built binaries by component name (etcd, kube, jobset,
        kueue, kwok), e.g. to test failure handling.
    """

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        pod_run_ms: int = 2000,
        detach: bool = False,
        keep_workdir: bool = False,
        with_fixtures: bool = True,
        start_timeout: float = 180.0,
        binaries: dict[str, str] | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="distillctl-cluster-"))
        self.pod_run_ms = pod_run_ms
        self.detach = detach
        self.keep_workdir = keep_workdir or os.environ.get("DISTILLCTL_CLUSTER_KEEP") == "1"
        self.with_fixtures = with_fixtures
        self.start_timeout = start_timeout
        self.binaries = dict(binaries or {})
        self.kubeconfig = self.workdir / "kubeconfig"
        self.log_dir = self.workdir / "logs"
        self.state_file = self.workdir / "state.json"
        self.supervisor = Supervisor(self.state_file, self.log_dir, die_with_parent=not detach)
        self.ports: dict[str, int] = {}
        self.server = ""
        self.timings: dict[str, float] = {}
        self.startup_seconds: float | None = None
        self._session_link: Path | None = None
        self._api_client = None
        self._started = False

    # ------------------------------------------------------------------ public

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ControlPlane":
        """Start everything; raises ComponentError (naming the component, with its
        log tail) or TimeoutError, after stopping what was started."""
        t0 = time.monotonic()
        self._deadline = t0 + self.start_timeout
        try:
            required = tuple(c for c in ("etcd", "kube", "jobset", "kueue", "kwok") if c not in self.binaries)
            self._build = upstream.load_build(required)
            for name, path in self.binaries.items():
                self._build.setdefault(name, {})["binary"] = path
            reap_stale_sessions()
            try:
                self._start_once()
            except ComponentError as e:
                # Ports are picked free, then released for the components to bind:
                # another process may take one in between. Retry once, on new ports.
                if "address already in use" not in str(e) or self.binaries:
                    raise
                self._reset()
                self._start_once()
        except BaseException:
            self.stop()
            raise
        self._started = True
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start_once(self) -> None:
        self._t_last = time.monotonic()
        self._prepare()
        self._register_session()
        self._start_etcd()
        self._start_apiserver()
        self._start_kube_controllers()
        self._install_api_extensions()
        self._start_addons()
        if self.with_fixtures:
            self._create_nodes()
        self._mount_kueue_certs()
        self._wait_addons_ready()
        if self.with_fixtures:
            self._apply_kueue_fixtures()
        self._wait_cluster_ready()

    def _reset(self) -> None:
        """Stop what a failed attempt started and empty the folder for another."""
        self.supervisor.stop()
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        for child in self.workdir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        self.timings.clear()

    def stop(self) -> None:
        if self._api_client is not None:
            try:
                self._api_client.close()
            except Exception:
                pass
            self._api_client = None
        self.supervisor.stop()
        if self._session_link is not None:
            try:
                self._session_link.unlink()
            except FileNotFoundError:
                pass
            self._session_link = None
        if self._own_workdir and not self.keep_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._started = False

    def check(self) -> None:
        """Raise ComponentError if any component has died."""
        self.supervisor.check()

    def api_client(self):
        """A kubernetes.client.ApiClient authenticated as cluster admin."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    @property
    def client(self):
        """A shared ApiClient (closed by stop())."""
        if self._api_client is None:
            self._api_client = self.api_client()
        return self._api_client

    def log(self, component: str, lines: int = 40) -> str:
        return log_tail(self.log_dir / f"{component}.log", lines)

    # ----------------------------------------------------- helpers for tests

    def wait_for(
        self,
        condition: Callable[[], Any],
        timeout: float = 60.0,
        what: str = "condition",
        interval: float = 0.25,
    ) -> Any:
        """Poll `condition` until it returns a truthy value (returned).

        Raises ComponentError at once if a component dies meanwhile, and
        TimeoutError (with the last exception seen, if any) after `timeout`.
        """
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        while True:
            self.supervisor.check()
            try:
                value = condition()
                if value:
                    return value
            except ComponentError:
                raise
            except Exception as e:  # noqa: BLE001 - retried until the deadline
                last_exc = e
            if time.monotonic() >= deadline:
                msg = f"timed out after {timeout:.0f}s waiting for {what}"
                if last_exc is not None:
                    msg += f" (last error: {type(last_exc).__name__}: {str(last_exc)[:500]})"
                raise TimeoutError(f"{msg}\n{self.snapshot()}")
            time.sleep(interval)

    def snapshot(self, namespace: str = "default") -> str:
        """What the cluster holds when a wait times out: JobSets, Kueue Workloads, pods and the latest events, one
        line each, so that a failure far away (CI) says whether Kueue, the scheduler or a controller stalled."""
        from kubernetes import client

        custom, core = client.CustomObjectsApi(self.client), client.CoreV1Api(self.client)
        lines = ["the cluster at the timeout:"]
        try:
            for kind, group, version in (
                ("jobsets", "jobset.x-k8s.io", "v1alpha2"),
                ("workloads", "kueue.x-k8s.io", "v1beta2"),
            ):
                for item in custom.list_namespaced_custom_object(group, version, namespace, kind)["items"]:
                    conditions = [
                        f"{c['type']}={c['status']}({c.get('reason', '')}: {c.get('message', '')[:120]})"
                        for c in item.get("status", {}).get("conditions", [])
                    ]
                    deleting = " deleting" if item["metadata"].get("deletionTimestamp") else ""
                    lines.append(f"  {kind[:-1]} {item['metadata']['name']}{deleting}: {'; '.join(conditions) or '-'}")
            pods: dict[str, list] = {}  # by JobSet: a slice has up to 16 pods, one line each would drown the rest
            for pod in core.list_namespaced_pod(namespace).items:
                pods.setdefault((pod.metadata.labels or {}).get("jobset.sigs.k8s.io/jobset-name", "-"), []).append(pod)
            for owner, group in sorted(pods.items()):
                phases = collections.Counter(
                    f"{p.status.phase}{' deleting' if p.metadata.deletion_timestamp else ''}" for p in group
                )
                unscheduled = [
                    c.message
                    for p in group
                    for c in p.status.conditions or []
                    if c.type == "PodScheduled" and c.status == "False"
                ]
                counts = ", ".join(f"{n} {phase}" for phase, n in sorted(phases.items()))
                lines.append(f"  pods of {owner}: {counts}" + (f" ({unscheduled[0][:200]})" if unscheduled else ""))
            warnings = [
                e
                for e in core.list_namespaced_event(namespace).items
                if e.type == "Warning" and not e.reason.startswith("FailedToUpdateEndpoint")  # kwok pods' 127.0.0.1
            ]
            warnings.sort(key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
            for event in warnings[-10:]:
                kind, name = event.involved_object.kind, event.involved_object.name
                lines.append(f"  warning {kind}/{name}: {event.reason}: {(event.message or '')[:200]}")
        except Exception as e:  # noqa: BLE001 - the snapshot only adds to a failure; it must not replace it
            lines.append(f"  (the snapshot stopped: {type(e).__name__}: {str(e)[:200]})")
        return "\n".join(lines)

    def apply(self, objs: dict | list[dict], namespace: str | None = None) -> list[dict]:
        """Server-side apply objects (dicts); returns the applied objects."""
        from kubernetes import dynamic

        if isinstance(objs, dict):
            objs = [objs]
        dyn = dynamic.DynamicClient(self.client, cache_file=str(self.workdir / "discovery.json"))
        out = []
        for obj in objs:
            res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            kwargs = {}
            if res.namespaced:
                kwargs["namespace"] = obj["metadata"].get("namespace") or namespace or "default"
            applied = res.server_side_apply(
                body=obj,
                name=obj["metadata"]["name"],
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                **kwargs,
            )
            out.append(applied.to_dict())
        return out

    def apply_file(self, path: str | Path, namespace: str | None = None) -> list[dict]:
        return self.apply(upstream.load_yaml_docs(Path(path)), namespace)

    def set_pod_exit_code(
        self, pod: str, code: int, namespace: str = "default", *, disruption: str | None = None
    ) -> None:
        """Make a running fake pod terminate now with container exit code `code`; with `disruption` (a reason such
        as "TerminationByKubelet") it also gets the DisruptionTarget condition, as a preempted pod does."""
        from kubernetes import client

        annotations = {EXIT_CODE_ANNOTATION: str(code)}
        if disruption:
            annotations[DISRUPTION_REASON_ANNOTATION] = disruption
        client.CoreV1Api(self.client).patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": annotations}})

    # ---------------------------------------------------------------- startup

    def _mark(self, step: str) -> None:
        now = time.monotonic()
        self.timings[step] = round(now - self._t_last, 2)
        self._t_last = now

    def _remaining(self) -> float:
        return max(1.0, self._deadline - time.monotonic())

    def _prepare(self) -> None:
        w = self.workdir
        for d in ("pki", "etcd", "logs", "jobset-certs", "kueue-certs", "kcm", "scheduler", "apiserver", "home"):
            (w / d).mkdir(parents=True, exist_ok=True)
        names = [
            "etcd",
            "etcd_peer",
            "apiserver",
            "kcm",
            "scheduler",
            "jobset_webhook",
            "jobset_health",
            "kueue_webhook",
            "kueue_health",
            "kwok_server",
        ]
        self.ports = dict(zip(names, free_ports(len(names))))
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"
        self.supervisor.info = {"workdir": str(w), "server": self.server, "kubeconfig": str(self.kubeconfig)}

        pki = w / "pki"
        ca = certs.CertificateAuthority()
        self.ca_pem = ca.cert_pem
        ca.pair.write(pki, "ca")
        ca.issue(
            "kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", "10.96.0.1"),
            server=True,
        ).write(pki, "apiserver")
        self.admin = ca.issue("distillctl-admin", organizations=("system:masters",), client=True)
        self.admin.write(pki, "admin")
        certs.service_account_keys().write(pki, "sa")  # sa.crt holds the public key
        jobset = ca.issue(
            "jobset-webhook",
            dns_names=("localhost", "jobset-webhook-service.jobset-system.svc"),
            ip_addresses=("127.0.0.1",),
            server=True,
        )
        jobset.write(w / "jobset-certs", "tls")
        self._write_kubeconfig(self.kubeconfig)
        self._mark("prepare")

    def _write_kubeconfig(self, path: Path) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "distillctl-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": upstream.b64(self.ca_pem),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": upstream.b64(self.admin.cert_pem),
                        "client-key-data": upstream.b64(self.admin.key_pem),
                    },
                }
            ],
            "contexts": [{"name": "distillctl-local", "context": {"cluster": "distillctl-local", "user": "admin"}}],
            "current-context": "distillctl-local",
        }
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)

    def _register_session(self) -> None:
        """Link the state file under .cluster/sessions so a later run can reap it."""
        if self.detach:
            return
        SESSIONS_DIR.mkdir(parents=True, exist_ok=True)
        link = SESSIONS_DIR / f"{os.getpid()}-{self.workdir.name}.json"
        try:
            link.unlink()
        except FileNotFoundError:
            pass
        link.symlink_to(self.state_file)
        self._session_link = link

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: "" for k in _PROXY_VARS}
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env.update(extra)
        return env

    def _binary(self, name: str) -> str:
        return self._build[name]["binary"]

    def _source(self, name: str) -> Path:
        return Path(self._build[name]["source"])

    def _start(self, name: str, argv: list, **env: str):
        # Proxy variables set to "" are removed (not inherited).
        full = dict(os.environ)
        for k, v in self._env(**env).items():
            if v == "":
                full.pop(k, None)
            else:
                full[k] = v
        return self.supervisor.start(name, argv, env=full, cwd=self.workdir)

    def _start_etcd(self) -> None:
        p = self.ports
        etcd = self._binary("etcd")
        argv = [
            etcd,
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
            f"--initial-cluster=default=http://127.0.0.1:{p['etcd_peer']}",
            "--initial-cluster-state=new",
            "--log-level=warn",
        ]
        if _etcd_supports(etcd, "--unsafe-no-fsync"):
            argv.append("--unsafe-no-fsync")
        self._start("etcd", argv)
        self.wait_for(
            lambda: http_ok(f"http://127.0.0.1:{p['etcd']}/health"),
            self._remaining(),
            "etcd to be healthy",
            interval=0.1,
        )
        self._mark("etcd")

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        p = self.ports
        self._start(
            "kube-apiserver",
            [
                self._binary("kube"),
                "apiserver",
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.crt'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=Node,RBAC",
                # Pod logs: the apiserver asks the node's kubelet endpoint, which kwok serves on 127.0.0.1.
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.wait_for(
            lambda: http_ok(f"{self.server}/readyz", ctx),
            self._remaining(),
            "kube-apiserver /readyz",
            interval=0.2,
        )
        self._mark("kube-apiserver")

    def _start_kube_controllers(self) -> None:
        pki = self.workdir / "pki"
        p = self.ports
        kc = str(self.kubeconfig)
        self._start(
            "kube-controller-manager",
            [
                self._binary("kube"),
                "controller-manager",
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['kcm']}",
                f"--cert-dir={self.workdir / 'kcm'}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--cluster-name=distillctl-local",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--concurrent-job-syncs=10",
                "--profiling=false",
                "--v=1",
            ],
        )
        sched_cfg = self.workdir / "scheduler" / "config.yaml"
        sched_cfg.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": kc, "qps": 200, "burst": 400},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        self._start(
            "kube-scheduler",
            [
                self._binary("kube"),
                "scheduler",
                f"--config={sched_cfg}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={self.workdir / 'scheduler'}",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._mark("kube-controllers-started")

    # -- CRDs, webhook configurations, kwok stages

    def _kueue_service_ref(self, path: str) -> dict:
        return {
            "service": {
                "namespace": KUEUE_NAMESPACE,
                "name": KUEUE_WEBHOOK_SERVICE,
                "path": path,
                "port": self.ports["kueue_webhook"],
            },
        }

    def _jobset_url(self, path: str) -> dict:
        return {
            "url": f"https://127.0.0.1:{self.ports['jobset_webhook']}{path}",
            "caBundle": upstream.b64(self.ca_pem),
        }

    def _install_api_extensions(self) -> None:
        crds = (
            upstream.crds(self._source("jobset"))  # single version: no conversion webhook needed
            + upstream.crds(self._source("kueue"), self._kueue_service_ref("/convert"))
            + upstream.kwok_crds(self._source("kwok"), ("stages", "clusterlogs"))
        )
        self.apply(crds)
        namespaces = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
            for n in (KUEUE_NAMESPACE, "jobset-system")
        ]
        self.apply(namespaces)
        self.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": KUEUE_WEBHOOK_SERVICE, "namespace": KUEUE_NAMESPACE},
                    # The apiserver resolves an ExternalName Service to <externalName>:<webhook port>
                    # and checks the certificate for kueue-webhook-service.kueue-system.svc.
                    "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
                },
                {
                    # Kueue's cert rotator fills it; _mount_kueue_certs copies it to Kueue's cert dir.
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": KUEUE_WEBHOOK_SECRET, "namespace": KUEUE_NAMESPACE},
                },
            ]
        )
        webhooks = upstream.webhook_configurations(self._source("jobset"), "jobset-", self._jobset_url)
        webhooks += upstream.webhook_configurations(self._source("kueue"), "kueue-", self._kueue_service_ref)
        self.apply(webhooks)
        self._wait_crds_established([c["metadata"]["name"] for c in crds])
        self.apply(self._kwok_stages())
        self.apply([self._kwok_logs()])
        self._mark("crds+webhooks")

    def _wait_crds_established(self, names: list[str]) -> None:
        from kubernetes import client

        api = client.ApiextensionsV1Api(self.client)

        def established() -> bool:
            for n in names:
                crd = api.read_custom_resource_definition(n)
                conds = {c.type: c.status for c in (crd.status.conditions or [])}
                if conds.get("Established") != "True":
                    return False
            return True

        self.wait_for(established, self._remaining(), "CRDs to be established", interval=0.1)

    def _kwok_logs(self) -> dict:
        """Every `trainer` container's log is POD_LOG (a trainer's console output, written once here)."""
        path = self.workdir / "trainer.log"
        # The CRI log format a kubelet reads: `<RFC 3339 time> <stream> <F: full line> <text>`.
        path.write_text(
            "".join(
                f"2026-01-01T00:00:0{i}.000000000Z stdout F {line}\n" for i, line in enumerate(POD_LOG.splitlines())
            )
        )
        return {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterLogs",
            "metadata": {"name": "trainer-logs"},
            "spec": {"logs": [{"containers": ["trainer"], "logsFile": str(path), "follow": False}]},
        }

    def _kwok_stages(self) -> list[dict]:
        stages = upstream.load_yaml_docs(upstream.MANIFESTS / "kwok-stages.yaml")
        for s in stages:
            if s["metadata"]["name"] == "pod-complete":
                s["spec"]["delay"]["durationMilliseconds"] = int(self.pod_run_ms)
        return stages

    # -- JobSet, Kueue, kwok

    def _start_addons(self) -> None:
        p = self.ports
        kc = str(self.kubeconfig)
        jobset_cfg = self.workdir / "jobset-config.yaml"
        jobset_cfg.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
                    "kind": "Configuration",
                    "leaderElection": {"leaderElect": False},
                    "internalCertManagement": {"enable": False},
                    "webhook": {
                        "port": p["jobset_webhook"],
                        "host": "127.0.0.1",
                        "certDir": str(self.workdir / "jobset-certs"),
                    },
                    "metrics": {"bindAddress": "0"},
                    "health": {"healthProbeBindAddress": f"127.0.0.1:{p['jobset_health']}"},
                    "clientConnection": {"qps": 500, "burst": 500},
                }
            )
        )
        self._start(
            "jobset-controller",
            [
                self._binary("jobset"),
                f"--config={jobset_cfg}",
                f"--kubeconfig={kc}",
                "--metrics-bind-address=0",
                f"--health-probe-bind-address=127.0.0.1:{p['jobset_health']}",
                "--zap-log-level=info",
            ],
        )
        kueue_cfg = self.workdir / "kueue-config.yaml"
        kueue_cfg.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "config.kueue.x-k8s.io/v1beta2",
                    "kind": "Configuration",
                    "namespace": KUEUE_NAMESPACE,
                    "health": {"healthProbeBindAddress": f"127.0.0.1:{p['kueue_health']}"},
                    "metrics": {"bindAddress": "0"},
                    "webhook": {
                        "port": p["kueue_webhook"],
                        "host": "127.0.0.1",
                        "certDir": str(self.workdir / "kueue-certs"),
                    },
                    "leaderElection": {"leaderElect": False},
                    "internalCertManagement": {
                        "enable": True,
                        "webhookServiceName": KUEUE_WEBHOOK_SERVICE,
                        "webhookSecretName": KUEUE_WEBHOOK_SECRET,
                    },
                    "clientConnection": {"qps": 200, "burst": 400},
                    "manageJobsWithoutQueueName": False,
                    "integrations": {"frameworks": ["jobset.x-k8s.io/jobset", "batch/job"]},
                    # The visibility API server would listen on all interfaces; not needed here.
                    "featureGates": {"VisibilityOnDemand": False},
                }
            )
        )
        self._start(
            "kueue-controller",
            [
                self._binary("kueue"),
                f"--config={kueue_cfg}",
                f"--kubeconfig={kc}",
                "--zap-log-level=info",
            ],
        )
        (self.workdir / "kwok.yaml").write_text("")  # no stages from files: they are Stage objects
        self._start(
            "kwok",
            [
                self._binary("kwok"),
                f"--kubeconfig={kc}",
                f"--config={self.workdir / 'kwok.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                "--enable-crds=Stage,ClusterLogs",
                "--node-lease-duration-seconds=40",
                "--cidr=10.0.0.0/16",
                # Every fake node's kubelet endpoint is kwok's own server on loopback: `kubectl logs` works.
                "--node-ip=127.0.0.1",
                f"--node-port={p['kwok_server']}",
                f"--server-address=127.0.0.1:{p['kwok_server']}",
            ],
            HOME=str(self.workdir / "home"),
        )
        self._mark("addons-started")

    def _mount_kueue_certs(self) -> None:
        """Play the kubelet: copy Kueue's webhook cert Secret into its cert dir."""
        from kubernetes import client

        core = client.CoreV1Api(self.client)

        def secret_data():
            s = core.read_namespaced_secret(KUEUE_WEBHOOK_SECRET, KUEUE_NAMESPACE)
            data = s.data or {}
            return data if data.get("tls.crt") and data.get("tls.key") else None

        data = self.wait_for(secret_data, self._remaining(), "Kueue to generate its webhook certificate")
        cert_dir = self.workdir / "kueue-certs"
        for key, value in data.items():
            tmp = cert_dir / f".{key}.tmp"
            tmp.write_bytes(base64.b64decode(value))
            tmp.replace(cert_dir / key)
        self._mark("kueue-certs")

    def _wait_addons_ready(self) -> None:
        p = self.ports
        self.wait_for(
            lambda: http_ok(f"http://127.0.0.1:{p['jobset_health']}/readyz"),
            self._remaining(),
            "jobset-controller /readyz",
        )
        self.wait_for(
            lambda: http_ok(f"http://127.0.0.1:{p['kueue_health']}/readyz"),
            self._remaining(),
            "kueue-controller /readyz",
        )
        self._mark("addons-ready")

    # -- fixtures

    def _create_nodes(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.client)
        # A few requests in flight at once (the client's connection pool holds 4).
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(core.create_node, tpu_nodes()))
        self._mark("nodes")

    def _apply_kueue_fixtures(self) -> None:
        docs = upstream.load_yaml_docs(upstream.MANIFESTS / "kueue-tpu.yaml")
        # Kueue's webhooks answer once its cert is injected and served; retry until then.
        self.wait_for(
            lambda: self.apply(docs) or True,
            self._remaining(),
            "Kueue webhooks to accept the queue objects",
            interval=0.5,
        )
        self._mark("kueue-objects")

    def _wait_cluster_ready(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.client)
        p = self.ports
        insecure = _insecure_context()
        self.wait_for(
            lambda: http_ok(f"https://127.0.0.1:{p['kcm']}/healthz", insecure),
            self._remaining(),
            "kube-controller-manager /healthz",
        )
        self.wait_for(
            lambda: http_ok(f"https://127.0.0.1:{p['scheduler']}/healthz", insecure),
            self._remaining(),
            "kube-scheduler /healthz",
        )
        # Pods need the namespace's default ServiceAccount (made by the controller-manager).
        self.wait_for(
            lambda: core.read_namespaced_service_account("default", "default"),
            self._remaining(),
            "the default ServiceAccount",
        )
        if self.with_fixtures:
            expected = sum(pool["nodes"] for pool in node_pools()["pools"])

            def nodes_ready() -> bool:
                nodes = core.list_node().items
                ready = [
                    n
                    for n in nodes
                    if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
                    and not any(t.key.startswith("node.kubernetes.io/") for t in (n.spec.taints or []))
                ]
                return len(ready) >= expected

            self.wait_for(nodes_ready, self._remaining(), f"{expected} fake nodes to be Ready")
            custom = client.CustomObjectsApi(self.client)

            def queue_active() -> bool:
                cq = custom.get_cluster_custom_object("kueue.x-k8s.io", "v1beta2", "clusterqueues", "cluster-queue")
                return any(
                    c["type"] == "Active" and c["status"] == "True" for c in cq.get("status", {}).get("conditions", [])
                )

            self.wait_for(queue_active, self._remaining(), "ClusterQueue cluster-queue to be Active")
        self._mark("ready")


# ---------------------------------------------------------------- fixtures


def node_pools() -> dict:
    return yaml.safe_load((upstream.MANIFESTS / "tpu-node-pools.yaml").read_text())


def tpu_nodes() -> list[dict]:
    """Node objects for the fake TPU node pools of manifests/tpu-node-pools.yaml."""
    spec = node_pools()
    nodes = []
    for pool in spec["pools"]:
        for i in range(pool["nodes"]):
            name = f"gke-{pool['name']}-{i:02d}"
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "type": "kwok",
                            "node.kubernetes.io/instance-type": pool["machineType"],
                            "topology.kubernetes.io/zone": spec["zone"],
                            "topology.kubernetes.io/region": spec["region"],
                            "cloud.google.com/gke-nodepool": pool["name"],
                            "cloud.google.com/gke-tpu-accelerator": pool["accelerator"],
                            "cloud.google.com/gke-tpu-topology": pool["topology"],
                            "cloud.google.com/machine-family": pool["machineType"].split("-")[0],
                            "cloud.google.com/gke-os-distribution": "cos",
                        },
                    },
                    "spec": {"taints": list(spec.get("taints", []))},
                    "status": {
                        "capacity": dict(pool["capacity"]),
                        "allocatable": dict(pool["capacity"]),
                    },
                }
            )
    return nodes


def _etcd_supports(etcd: str, flag: str) -> bool:
    try:
        out = subprocess.run([etcd, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in (out.stdout + out.stderr)
