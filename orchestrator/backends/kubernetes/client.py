"""Talking to a Kubernetes API server: configuration as kubectl takes it, retries, and errors people can act on.

Every call goes through `call()`: 429, 5xx and dropped connections are retried with exponential backoff (honouring
Retry-After); anything else becomes a `ClusterError` with an exit code. Creating a JobSet is safe to retry because
its name is derived from the run id: a create whose response was lost comes back as 409 AlreadyExists, never as a
second JobSet.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader

from orchestrator.backends import ClusterAccess
from orchestrator.errors import DistillctlError, UsageError
from orchestrator.exit_codes import ExitCode

T = TypeVar("T")

RETRYABLE_STATUS = {429, 500, 502, 503, 504}
REQUEST_TIMEOUT_SECONDS = 60
CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


class ClusterError(DistillctlError):
    exit_code = ExitCode.CLUSTER_UNREACHABLE


@dataclasses.dataclass(frozen=True)
class Retry:
    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 5.0


@dataclasses.dataclass
class Cluster:
    """A connected API client and the namespace commands act in."""

    api: client.ApiClient
    namespace: str
    retry: Retry = dataclasses.field(default_factory=Retry)
    server: str = ""

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def call(
        self, what: str, fn: Callable[..., T], *args: Any, passthrough: frozenset[int] = frozenset(), **kwargs: Any
    ) -> T:
        """`fn(*args, **kwargs)` with retries; `what` names the action in error messages. An ApiException whose
        status is in `passthrough` is raised as it is, for the caller to interpret (409 on create, say)."""
        delay = self.retry.base_delay
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT_SECONDS)  # a hung server must not hang --wait
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except ApiException as e:
                if e.status in passthrough:
                    raise
                if e.status not in RETRYABLE_STATUS or attempt == self.retry.attempts:
                    raise api_error(what, e, self) from None
                wait = _retry_after(e) or delay
            except CONNECTION_ERRORS as e:
                if attempt == self.retry.attempts:
                    raise unreachable(self.server, e) from None
                wait = delay
            time.sleep(min(wait, self.retry.max_delay) * (0.5 + random.random()))
            delay = min(delay * 2, self.retry.max_delay)
        raise AssertionError("unreachable")


def _retry_after(e: ApiException) -> float | None:
    try:
        return float((e.headers or {}).get("Retry-After"))
    except (TypeError, ValueError):
        return None


# Where the kubelet mounts a pod's service-account credentials.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def connect(access: ClusterAccess, default_namespace: str | None = None, retry: Retry | None = None) -> Cluster:
    """A client for the cluster `access` names; raises ClusterError for a missing kubeconfig or context."""
    configuration = client.Configuration()
    namespace = access.namespace
    from_env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    default_path = os.path.expanduser("~/.kube/config")
    try:
        if (
            access.kubeconfig
            or from_env
            or os.path.exists(default_path)
            or not os.environ.get("KUBERNETES_SERVICE_HOST")
        ):
            # --kubeconfig is one file; $KUBECONFIG may list several, which the client merges as kubectl does.
            path = access.kubeconfig or (None if from_env else default_path)
            missing = [p for p in ([path] if path else from_env) if not os.path.exists(p)]
            if missing and (path or len(missing) == len(from_env)):
                raise ClusterError(
                    f"no kubeconfig at {', '.join(missing)}",
                    "point --kubeconfig (or KUBECONFIG) at your cluster's kubeconfig, e.g. from "
                    "`gcloud container clusters get-credentials`, or `make cluster-up` for the local test cluster",
                )
            if path is None and len(from_env) > 1:
                # kubectl merges the files that exist and skips empty ones (a placeholder a tool created); the
                # client refused the whole list for one empty file ("file is empty", exit 5).
                path = os.pathsep.join(p for p in from_env if os.path.exists(p) and _has_content(p))
                if not path:
                    raise ClusterError(
                        f"every kubeconfig KUBECONFIG lists is empty or missing: {', '.join(from_env)}",
                        "point KUBECONFIG (or --kubeconfig) at your cluster's kubeconfig, e.g. from "
                        "`gcloud container clusters get-credentials`",
                    )
            contexts, current = config.list_kube_config_contexts(config_file=path)
            names = [c["name"] for c in contexts]
            if access.context and access.context not in names:
                raise ClusterError(
                    f"context {access.context!r} is not in {path or os.environ['KUBECONFIG']}",
                    f"use one of: {', '.join(names) or '(none)'}",
                )
            chosen = next((c for c in contexts if c["name"] == access.context), current)
            config.load_kube_config(config_file=path, context=access.context, client_configuration=configuration)
            namespace = namespace or default_namespace or (chosen or {}).get("context", {}).get("namespace")
        else:
            # In a pod: its service account's token (re-read as the kubelet rotates it) and the cluster's CA.
            try:
                InClusterConfigLoader(
                    token_filename=os.path.join(SERVICE_ACCOUNT_DIR, "token"),
                    cert_filename=os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt"),
                ).load_and_set(configuration)
            except ConfigException as e:
                raise ClusterError(
                    f"no kubeconfig, and the in-cluster configuration cannot be loaded: {e}",
                    f"in a pod, mount its service account's token ({SERVICE_ACCOUNT_DIR}; "
                    "automountServiceAccountToken); elsewhere pass --kubeconfig or set KUBECONFIG",
                ) from None
            namespace = namespace or default_namespace or _incluster_namespace()
    except ConfigException as e:
        raise ClusterError(f"cannot load the cluster configuration: {e}", "check --kubeconfig and --context") from None
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as e:
        # The client reads the file itself and lets these through: a folder, YAML that does not parse or is not a
        # mapping, bytes that are not UTF-8, credentials that are not base64 (each was an internal error).
        where = access.kubeconfig or os.environ.get("KUBECONFIG") or "the kubeconfig"
        what = "is a folder, not a file" if isinstance(e, IsADirectoryError) else f"cannot be read: {_first_line(e)}"
        raise ClusterError(
            f"kubeconfig {where} {what}",
            "point --kubeconfig (or KUBECONFIG) at the file `gcloud container clusters get-credentials` writes",
        ) from None
    configuration.retries = False  # retries are ours, with backoff and error mapping
    return Cluster(client.ApiClient(configuration), namespace or "default", retry or Retry(), configuration.host)


def _has_content(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return bool(f.read(4096).strip())
    except OSError:
        return True  # a folder or an unreadable file: let the loader say what it is


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _incluster_namespace() -> str:
    try:
        with open(os.path.join(SERVICE_ACCOUNT_DIR, "namespace")) as f:
            return f.read().strip()
    except OSError:
        return "default"


def unreachable(server: str, e: BaseException) -> ClusterError:
    return ClusterError(
        f"cannot reach the Kubernetes API server at {server or 'the configured address'} ({type(e).__name__})",
        "check that the cluster is up and that --kubeconfig/--context point at it (`kubectl cluster-info`)",
    )


def api_error(what: str, e: ApiException, cluster: Cluster) -> DistillctlError:
    """An API error as a message, a hint and an exit code."""
    message = server_message(e)
    server = (cluster.server if cluster else "") or "the configured address"
    if e.status == 0 and "SSL" in str(e.reason):  # urllib3's TLS failure, wrapped by the client as status 0
        return ClusterError(
            f"{what}: the API server at {server} failed TLS verification ({_leading_line(str(e.reason))})",
            "its certificate is not signed by the kubeconfig's certificate authority: fetch fresh credentials "
            "(e.g. `gcloud container clusters get-credentials`), or check --kubeconfig/--context and any proxy",
            exit_code=ExitCode.CLUSTER_UNREACHABLE,
        )
    if e.status == 0:  # other transport failures the client wraps as status 0
        return ClusterError(
            f"{what}: no answer from the API server at {server} ({_leading_line(str(e.reason))})",
            "check that the cluster is up and that --kubeconfig/--context point at it (`kubectl cluster-info`)",
        )
    if e.status == 404 and _missing_namespace(e):  # the namespace, not the object asked for
        return UsageError(
            f"{what}: namespace {cluster.namespace!r} does not exist on the cluster",
            "check -n/--namespace or target.namespace (kubectl get namespaces lists them)",
        )
    if e.status == 401:
        return ClusterError(
            f"{what}: unauthorized ({message})",
            "refresh your credentials (gcloud auth login, or a new kubeconfig)",
            exit_code=ExitCode.FORBIDDEN,
        )
    if e.status == 403 and "admission webhook" in message:  # a webhook's verdict on the object, not RBAC
        return DistillctlError(
            f"{what}: a webhook rejected it: {message}",
            "fix the sweep's target (`distillctl plan` shows each point's shape); `distillctl sweep "
            "--dry-run=server` shows this before anything is created",
            exit_code=ExitCode.REJECTED,
        )
    if e.status == 403:
        resource = _forbidden_resource(e)
        verb = re.search(r"cannot (\w+) resource", message)
        hint = (
            # The verb refused first (a `cancel --service` user lacks delete, not "get and patch"); then `serve`,
            # which has the chart's Role only where the chart is installed.
            f"ask for {verb.group(1) if verb else 'the'} rights on {resource} in namespace {cluster.namespace!r} (a "
            "launcher needs get and patch to apply sweeps, delete for `cancel --service`); for `distillctl serve`, "
            f"install the chart there (helm install distillctl charts/distillctl -n {cluster.namespace}): its Role "
            "holds the controller's rights"
            if "distillationsweeps" in resource
            else f"ask for RBAC rights on {resource} in namespace {cluster.namespace!r} (README, "
            '"Running distillctl in a pod", lists the Role a launcher needs)'
        )
        return ClusterError(f"{what}: forbidden ({message})", hint, exit_code=ExitCode.FORBIDDEN)
    if e.status == 404 and "the server could not find the requested resource" in message.lower():
        return ClusterError(
            f"{what}: the API server does not serve this resource ({message})",
            "install the JobSet controller and its CRDs",
            exit_code=ExitCode.CLUSTER_NOT_READY,
        )
    if e.status == 404 and not _is_status(e):
        # Not the API server's own "not found" (a Status object): a URL that is not a Kubernetes API server (a
        # kubeconfig's server field pointing at a web page, a proxy) answered. The bare "404 Not Found" said nothing.
        return ClusterError(
            f"{what}: the server at {server} answered 404 ({message}), not as a Kubernetes API server does",
            "check that --kubeconfig/--context point at the cluster's API server (`kubectl cluster-info`)",
            exit_code=ExitCode.CLUSTER_UNREACHABLE,
        )
    if e.status in (400, 422):
        return DistillctlError(
            f"{what}: the API server rejected it: {message}",
            "fix the sweep's target or template; `distillctl sweep --dry-run=server` shows this "
            "before anything is created",
            exit_code=ExitCode.REJECTED,
        )
    if e.status in RETRYABLE_STATUS:
        return ClusterError(
            f"{what}: the API server kept failing ({e.status} {message})",
            "try again later; the cluster may be overloaded or upgrading",
        )
    return DistillctlError(f"{what}: {e.status} {message}", exit_code=ExitCode.FAILED)


def _leading_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def _body(e: ApiException) -> dict:
    """The error's body as JSON (a Status object, from an API server), else {}."""
    import json

    try:
        body = json.loads(e.body or "")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _status_details(e: ApiException) -> dict:
    return _body(e).get("details") or {}


def _missing_namespace(e: ApiException) -> bool:
    """A 404 Status whose missing object is a namespace (creating in one that does not exist)."""
    return _status_details(e).get("kind") == "namespaces"


def _forbidden_resource(e: ApiException) -> str:
    """The resource a 403 Status names ("leases.coordination.k8s.io"), else JobSets (what distillctl mostly asks)."""
    details = _status_details(e)
    kind, group = details.get("kind"), details.get("group")
    if not kind:
        return "JobSets"
    return f"{kind}.{group}" if group else str(kind)


def _is_status(e: ApiException) -> bool:
    """Whether the error's body is a Kubernetes Status object (every answer of an API server has one)."""
    return _body(e).get("kind") == "Status"


def server_message(e: ApiException) -> str:
    body = _body(e)
    if not body:
        return str(e.reason or e.body or "")
    return str(body.get("message") or e.reason)
