"""The Helm chart, without a cluster: `helm lint`, and `helm template` output checked against Kubernetes' own
schemas (strict), the controller's Role exactly what it calls, and the pod locked down. Uses the helm that
hack/cluster builds for the test control plane."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "distillctl"


def helm_command(home: Path):
    """`run(*args)`: the helm that hack/cluster builds, with its caches under `home`; skips when not built."""
    from tests.cluster import upstream

    try:
        binary = upstream.load_build(("helm",))["helm"]["binary"]
    except upstream.NotBuilt as e:
        pytest.skip(str(e))
    env = {**os.environ, **{f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env)

    return run


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    return helm_command(tmp_path_factory.mktemp("helm"))


def template(helm, *args: str) -> list[dict]:
    result = helm("template", "rel", str(CHART), "--namespace", "team", *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_chart_lints_clean(helm):
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_rendered_manifests_are_valid_kubernetes_objects(helm):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = template(helm, "--include-crds", "--set", "replicas=2")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "distillationsweeps.distillctl.dev"
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    assert all(d["metadata"].get("namespace") == "team" for d in docs if d["kind"] not in cluster_scoped)
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["metadata"]["name"] == "team-rel-distillctl"  # per namespace: a release of the name elsewhere
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-distillctl", "namespace": "team"}]
    monitored = template(helm, "--set", "metrics.serviceMonitor.enabled=true")
    assert [d["spec"]["endpoints"][0]["path"] for d in monitored if d["kind"] == "ServiceMonitor"] == ["/metrics"]


def test_deployment_runs_serve_locked_down_with_probes(helm):
    deployment = next(d for d in template(helm) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["distillctl", "serve"]
    assert "--namespace=team" in container["args"] and "--lease=distillctl-controller" in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["privileged"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["serviceAccountName"] == "rel-distillctl"
    assert not [a for a in container["args"] if a.startswith("--default-")]  # no defaults unless set

    values = {
        "queue": "team-queue",
        "priority": "high",
        "image": "r/trainer@sha256:" + "ab" * 32,
        "outputBase": "gs://bkt/runs",
    }
    sets = [f"defaults.{k}={v}" for k, v in values.items()]
    (deployment,) = [d for d in template(helm, "--set", ",".join(sets)) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--default-")] == [
        "--default-queue=team-queue",
        "--default-priority=high",
        "--default-image=r/trainer@sha256:" + "ab" * 32,
        "--default-output-base=gs://bkt/runs",
    ]


def test_role_grants_exactly_what_the_controller_calls(helm):
    role = next(d for d in template(helm) if d["kind"] == "Role")
    granted = {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    lease = ("distillctl-controller",)  # one per namespace, whatever the release
    assert granted == {
        *{("distillctl.dev", "distillationsweeps", v, ()) for v in ("get", "list", "watch", "patch")},
        ("distillctl.dev", "distillationsweeps/status", "patch", ()),
        *{
            ("jobset.x-k8s.io", "jobsets", v, ()) for v in ("get", "list", "watch", "create", "patch", "delete")
        },  # patch: a deleted sweep hands shared runs on
        *{("kueue.x-k8s.io", "workloads", v, ()) for v in ("get", "list", "watch")},
        ("kueue.x-k8s.io", "localqueues", "get", ()),
        ("", "events", "create", ()),
        *{("", "pods", v, ()) for v in ("list", "watch")},
        ("coordination.k8s.io", "leases", "create", ()),
        *{("coordination.k8s.io", "leases", v, ()) for v in ("get", "patch", "delete")},  # runs' claims
        ("coordination.k8s.io", "leases", "get", lease),
        ("coordination.k8s.io", "leases", "update", lease),
    }
    (cluster_role,) = [d for d in template(helm) if d["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == [
        {"apiGroups": ["scheduling.k8s.io"], "resources": ["priorityclasses"], "verbs": ["get", "list"]},
        {
            "apiGroups": ["kueue.x-k8s.io"],
            "resources": ["clusterqueues", "resourceflavors", "workloadpriorityclasses"],
            "verbs": ["get", "list"],
        },
    ]


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("defualts.queue=q", "additional properties 'defualts' not allowed"),  # was ignored: no default queue
        ("replica=2", "additional properties 'replica' not allowed"),  # was ignored: one replica
        ("replicas=two", "at '/replicas': got string, want integer"),  # failed at install, unmarshalling
        ("resync=abc", "at '/resync': got string, want number"),  # installed, then crash-looped
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("resync=100000", "at '/resync'"),  # past serve --resync's 86400: the pod crash-looped
        # combinations that rendered objects matching or naming nothing
        ("metrics.service.enabled=false,metrics.serviceMonitor.enabled=true", "needs metrics.service.enabled"),
        ("serviceAccount.create=false", "set serviceAccount.name"),
        # defaults serve refuses at start-up: installed, then crash-looped with exit 2
        ("defaults.queue=a b", "at '/defaults/queue'"),
        ("defaults.priority=Bad_Prio", "at '/defaults/priority'"),
        ("defaults.image=Bad Image", "at '/defaults/image'"),
        ("defaults.outputBase=runs", "at '/defaults/outputBase'"),  # every sweep relying on it would be refused
        ("image.tag=latest!", "at '/image/tag'"),
    ],
)
def test_values_are_checked_against_the_charts_schema(helm, setting, said):
    result = helm("template", "rel", str(CHART), "--set", setting)
    assert result.returncode != 0 and said in result.stderr, result.stderr


def test_a_long_release_name_fits_every_name_it_makes(helm):
    # The fullname was cut at 63 and the metrics Service appended "-metrics": releases of 45-53 characters failed
    # to install; and namespace + fullname was cut at 63 for cluster-scoped names that may be 253 long, so two
    # releases in one long namespace got the same ClusterRole.
    release = "r" * 53  # Helm's longest
    result = helm("template", release, str(CHART), "--namespace", "n" * 63)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        limit = 253 if doc["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding") else 63
        assert len(doc["metadata"]["name"]) <= limit, doc["metadata"]["name"]
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["metadata"]["name"].endswith("-metrics")
    roles = {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"}
    other = helm("template", "r" * 52 + "s", str(CHART), "--namespace", "n" * 63)
    assert roles.isdisjoint(
        d["metadata"]["name"] for d in yaml.safe_load_all(other.stdout) if d and d["kind"] == "ClusterRole"
    )


def test_the_controller_image_can_be_pinned_by_digest(helm):
    digest = "sha256:" + "ab" * 32
    (deployment,) = [d for d in template(helm, "--set", f"image.tag={digest}") if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/example/distillctl@{digest}"


def test_the_schemas_image_pattern_is_target_images():
    """defaults.image becomes `serve --default-image`, checked as target.image is: one grammar."""
    from distillspec.sweep import IMAGE_REFERENCE

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["defaults"]["properties"]["image"]["pattern"] == "^$|" + IMAGE_REFERENCE.pattern
