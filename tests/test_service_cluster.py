"""The sweep service on the real local control plane: the chart installs (its Role checked with
SubjectAccessReviews), two controllers run in this process with the chart's ServiceAccount token (kwok pods cannot
run one), and a sweep applied with `distillctl sweep --service` ends Succeeded with no client following it —
prerequisite first, exactly one JobSet per run. Bad resources are refused at admission or get a condition. Early
stopping acts on scripted metric curves as `replay` says it would; a killed controller's successor finishes its
sweep through a faulty API without a duplicate.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from orchestrator.backends import ClusterAccess
from orchestrator.backends.kubernetes.client import connect
from orchestrator.cli import app
from orchestrator.exit_codes import ExitCode
from orchestrator.service.controller import Controller, Options
from orchestrator.service.endpoints import Metrics
from orchestrator.service.resource import GROUP, PLURAL, VERSION, TargetDefaults
from tests.cluster.fault_proxy import FaultProxy, Rule
from tests.test_service_chart import CHART, helm_command

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]
RELEASE = "svc"
SERVICE_ACCOUNT = f"{RELEASE}-distillctl"
LEASE = "distillctl-controller"  # the chart's: one per namespace
NS = "default"  # where the test cluster's Kueue LocalQueues are
IMAGE = "example.invalid/distillctl-trainer:test"

SWEEP = """\
name: {name}
spec:
  student: {{model: tiny-2l}}
  teacher: {{model: tiny-4l, load_parameters_path: "${{prerequisites.teacher.output}}/checkpoints"}}
  batch: {{per_device_batch_size: 1, max_target_length: 16}}
  steps: 10
prerequisites:
  teacher:
    spec:
      mode: pretrain
      student: {{model: tiny-4l}}
      batch: {{per_device_batch_size: 1, max_target_length: 16}}
      steps: 10
axes:
  loss.temperature: [1.0, 2.0]
target:
  kind: kubernetes
  tpu_type: v6e-16
  image: {image}
  queue: {queue}
  output_base: {base}
  pod_annotations: {{distillctl.dev/run-duration: "2s"}}
"""


def jobsets(cp, sweep: str) -> list[dict]:
    listing = client.CustomObjectsApi(cp.client).list_namespaced_custom_object(
        "jobset.x-k8s.io", "v1alpha2", NS, "jobsets", label_selector=f"distillctl.dev/sweep={sweep}"
    )
    return listing["items"]


def resource(cp, name: str) -> dict | None:
    try:
        return client.CustomObjectsApi(cp.client).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def condition(cp, name: str, kind: str) -> dict:
    found = resource(cp, name) or {}
    return next((c for c in (found.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


@pytest.fixture(scope="module")
def installed(control_plane, tmp_path_factory):
    """The chart installed in `default`; yields helm (for upgrade and uninstall)."""
    cp = control_plane
    helm = helm_command(tmp_path_factory.mktemp("helm"))
    result = helm("install", RELEASE, str(CHART), "-n", NS, "--kubeconfig", str(cp.kubeconfig), "--wait=false")
    assert result.returncode == 0, result.stderr
    cp.wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in client.ApiextensionsV1Api(cp.client)
            .read_custom_resource_definition(f"{PLURAL}.{GROUP}")
            .status.conditions
            or []
        ),
        30,
        "the CRD to be established",
    )
    yield helm


@pytest.fixture(scope="module")
def sa_kubeconfig(control_plane, installed, tmp_path_factory) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest, like a mounted token)."""
    cp = control_plane
    token = (
        client.CoreV1Api(cp.client)
        .create_namespaced_service_account_token(
            SERVICE_ACCOUNT, NS, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
        )
        .status.token
    )
    config = yaml.safe_load(Path(cp.kubeconfig).read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def controllers(sa_kubeconfig):
    """Two replicas at once, as the chart's ServiceAccount; one holds the Lease."""
    started = []
    for identity in ("replica-a", "replica-b"):
        cluster = connect(ClusterAccess(kubeconfig=str(sa_kubeconfig), namespace=NS))
        options = Options(
            resync=5,
            lease_name=LEASE,
            identity=identity,
            lease_seconds=6,
            renew_deadline=4,
            retry_period=1,
            defaults=TargetDefaults(queue="multislice-queue", image=IMAGE),  # as the chart's `defaults:` pass them
        )
        controller = Controller(cluster, options, Metrics(use_prometheus_client=False))
        controller.start()
        started.append(controller)
    yield started
    for controller in started:
        controller.stop()
        controller.cluster.api.close()


def _review(cp, verb: str, resource: str, group: str = "", namespace: str | None = NS, name: str = "") -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{NS}:{SERVICE_ACCOUNT}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                resource=resource.split("/")[0],
                subresource=(resource.split("/") + [""])[1] or None,
                group=group,
                namespace=namespace,
                name=name or None,
            ),
        )
    )
    return client.AuthorizationV1Api(cp.client).create_subject_access_review(review).status.allowed


def serve_exit(cp, *args: str) -> subprocess.CompletedProcess:
    """`distillctl serve` as the chart runs it, for a failure at start-up (it does not get to serve)."""
    command = [sys.executable, "-m", "orchestrator.cli", "serve", "--kubeconfig", str(cp.kubeconfig), "-n", NS]
    return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_serve_without_the_chart_says_how_to_install_it(control_plane):
    """Defined before the first test that installs the chart (the CRD is not there yet). It used to watch a 404
    for ever, logging a warning every 10 seconds."""
    crds = client.ApiextensionsV1Api(control_plane.client).list_custom_resource_definition().items
    assert f"{PLURAL}.{GROUP}" not in {c.metadata.name for c in crds}
    result = serve_exit(control_plane, "--port", "0")
    assert result.returncode == 6, result.stderr
    assert "the distillctl service is not installed" in result.stderr
    assert "helm install distillctl charts/distillctl" in result.stderr and "Traceback" not in result.stderr


def test_serve_on_a_port_in_use_is_a_usage_error(control_plane, installed):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        result = serve_exit(control_plane, "--port", str(taken.getsockname()[1]))
    assert result.returncode == 2, result.stderr
    assert "cannot serve the endpoints on port" in result.stderr and "choose another --port" in result.stderr


def test_chart_role_allows_what_the_controller_uses_and_nothing_else(control_plane, installed):
    cp = control_plane
    allowed = [
        ("watch", "distillationsweeps", GROUP),
        ("patch", "distillationsweeps", GROUP),
        ("patch", "distillationsweeps/status", GROUP),
        ("create", "jobsets", "jobset.x-k8s.io"),
        ("delete", "jobsets", "jobset.x-k8s.io"),
        ("patch", "jobsets", "jobset.x-k8s.io"),
        ("watch", "jobsets", "jobset.x-k8s.io"),
        ("list", "workloads", "kueue.x-k8s.io"),
        ("get", "localqueues", "kueue.x-k8s.io"),
        ("create", "events", ""),
        ("watch", "pods", ""),
        ("create", "leases", "coordination.k8s.io"),
    ]
    for verb, what, group in allowed:
        assert _review(cp, verb, what, group), (verb, what)
    assert _review(cp, "get", "priorityclasses", "scheduling.k8s.io", namespace=None)  # cluster-scoped, read only
    assert _review(cp, "get", "clusterqueues", "kueue.x-k8s.io", namespace=None)
    assert _review(cp, "list", "resourceflavors", "kueue.x-k8s.io", namespace=None)
    assert _review(cp, "get", "workloadpriorityclasses", "kueue.x-k8s.io", namespace=None)
    assert _review(cp, "update", "leases", "coordination.k8s.io", name=LEASE)
    denied = [
        ("get", "secrets", "", NS, ""),
        ("create", "pods", "", NS, ""),
        ("delete", "distillationsweeps", GROUP, NS, ""),
        ("create", "jobsets", "jobset.x-k8s.io", "kube-system", ""),
        ("update", "leases", "coordination.k8s.io", NS, "another-lease"),
        ("create", "clusterroles", "rbac.authorization.k8s.io", None, ""),
        ("create", "namespaces", "", None, ""),
        ("update", "clusterqueues", "kueue.x-k8s.io", None, ""),
        ("create", "priorityclasses", "scheduling.k8s.io", None, ""),
    ]
    for verb, what, group, namespace, name in denied:
        assert not _review(cp, verb, what, group, namespace, name), (verb, what, namespace, name)


def test_a_lease_the_role_does_not_name_is_said_once(control_plane, sa_kubeconfig, caplog):
    """A replica whose --lease the chart's Role does not name created it, led for one renewal, then stood by for
    ever with nothing in its log while its probes passed."""
    from orchestrator.service.election import LeaderElector

    cluster = connect(ClusterAccess(kubeconfig=str(sa_kubeconfig), namespace=NS))
    elector = LeaderElector(cluster, "not-the-charts-lease", "replica-x", lease_seconds=6, renew_deadline=4)
    try:
        with caplog.at_level("ERROR", logger="distillctl.serve"):
            assert elector._try()  # create may not be limited by name: it is allowed
            assert not elector._try() and not elector._try()  # update is not
        (said,) = [r.getMessage() for r in caplog.records]
        assert f"cannot update lease {NS}/not-the-charts-lease: forbidden" in said and "--lease" in said
    finally:
        client.CoordinationV1Api(control_plane.client).delete_namespaced_lease("not-the-charts-lease", NS)
        cluster.api.close()


def test_a_role_without_watch_is_said_once_with_the_rights_needed(control_plane, tmp_path, caplog):
    """A Role of one's own that allows list but not watch logged "watching pods: 403 Forbidden" every 10 s for
    ever, never naming what to grant."""
    import threading

    from orchestrator.backends.kubernetes.backend import as_json
    from orchestrator.service.controller import Informer

    core, rbac = client.CoreV1Api(control_plane.client), client.RbacAuthorizationV1Api(control_plane.client)
    name = "list-only"
    core.create_namespaced_service_account(NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    rbac.create_namespaced_role(
        NS,
        client.V1Role(
            metadata=client.V1ObjectMeta(name=name),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        NS,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=NS)],
        ),
    )
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    token = core.create_namespaced_service_account_token(name, NS, request).status.token
    config = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    cluster = connect(ClusterAccess(kubeconfig=str(tmp_path / "kubeconfig"), namespace=NS))
    stop = threading.Event()
    informer = Informer(
        "pods",
        as_json,
        (cluster.core.list_namespaced_pod, NS),
        resync=5,
        on_change=lambda _o: None,
        on_resync=lambda: None,
        metrics=Metrics(use_prometheus_client=False),
        stop=stop,
        namespace=NS,
    )
    try:
        with caplog.at_level("WARNING", logger="distillctl.serve"):
            informer.start()
            time.sleep(5)  # lists and is refused the watch several times (0.5 s, 1 s, 2 s apart)
            said = [r.getMessage() for r in caplog.records]
        assert said == [
            f"cannot watch pods in namespace {NS}: forbidden: the controller is not ready until its Role allows get, "
            "list and watch on them (the chart's Role does: `helm upgrade` restores it); it retries"
        ], said
    finally:
        stop.set()
        informer.stop()
        cluster.api.close()
        rbac.delete_namespaced_role_binding(name, NS)
        rbac.delete_namespaced_role(name, NS)
        core.delete_namespaced_service_account(name, NS)


def test_sweep_service_refuses_what_sweep_refuses_before_applying(control_plane, tmp_path):
    """A missing LocalQueue was applied with exit 0 ("the controller creates its runs"); only the resource's
    condition said so later, without the fix."""
    path = tmp_path / "svc-noq.yaml"
    path.write_text(SWEEP.format(name="svc-noq", queue="no-such-queue", image=IMAGE, base=tmp_path / "runs"))
    out = CliRunner().invoke(app, ["sweep", str(path), "--service", "--kubeconfig", str(control_plane.kubeconfig)])
    assert out.exit_code == ExitCode.NOT_ADMITTED, out.output
    assert "Kueue LocalQueue 'no-such-queue' does not exist" in out.stderr and "set target.queue" in out.stderr
    assert "warning[output_base_not_shared]" in out.stderr  # the launch advice `sweep` gives
    assert resource(control_plane, "svc-noq") is None


def test_sweep_service_says_at_once_when_the_controller_refuses_the_sweep(control_plane, controllers, tmp_path):
    """No output base and none among the controller's defaults (the chart's is empty): each run would write
    `runs/<id>` inside its pod. It was Accepted, and `sweep --service` said "applied", exit 0."""
    path = tmp_path / "svc-inpod.yaml"
    text = SWEEP.format(name="svc-inpod", queue="multislice-queue", image=IMAGE, base="")
    path.write_text("\n".join(line for line in text.splitlines() if line.strip() != "output_base:") + "\n")
    kube = ["--kubeconfig", str(control_plane.kubeconfig)]
    try:
        out = CliRunner().invoke(app, ["sweep", str(path), "--service", *kube])
        assert out.exit_code == ExitCode.INVALID_SPEC, out.output
        assert "the controller refused DistillationSweep default/svc-inpod" in out.stderr
        assert "output_base_in_pod" in out.stderr and not jobsets(control_plane, "svc-inpod")
    finally:
        CliRunner().invoke(app, ["cancel", str(path), "--service", "--yes", "--wait", *kube])


def test_a_sweep_no_controller_serves_is_said_by_sweep_and_status(control_plane, controllers, tmp_path, monkeypatch):
    """Applied into a namespace without the chart (a typo in -n), it read "applied ... the controller creates its
    runs", exit 0, and `status` showed Pending (NotCreated) for ever, with nothing said."""
    path = tmp_path / "svc-lonely.yaml"
    text = SWEEP.format(name="svc-lonely", queue="", image=IMAGE, base=tmp_path / "runs")  # no LocalQueue there
    path.write_text("\n".join(line for line in text.splitlines() if line != "  queue: ") + "\n")
    kube = ["--kubeconfig", str(control_plane.kubeconfig), "-n", "unserved"]
    client.CoreV1Api(control_plane.client).create_namespace({"metadata": {"name": "unserved"}})
    try:
        applied = CliRunner().invoke(app, ["sweep", str(path), "--service", *kube])
        assert applied.exit_code == 0, applied.output
        assert "warning[sweep_not_served]" in applied.stderr and "install the chart there" in applied.stderr
        # The resource's own fields, which no sweep-file key set (only kubectl patch could); a change from their
        # defaults is said as any other
        applied = CliRunner().invoke(
            app, ["sweep", str(path), "--service", "--retries", "2", "--deletion-policy", "Keep", *kube]
        )
        assert applied.exit_code == 0, applied.output
        assert "retryFailed 0 → 2" in applied.stderr and "deletionPolicy Delete → Keep" in applied.stderr
        found = client.CustomObjectsApi(control_plane.client).get_namespaced_custom_object(
            GROUP, VERSION, "unserved", PLURAL, "svc-lonely"
        )
        assert (found["spec"]["retryFailed"], found["spec"]["deletionPolicy"]) == (2, "Keep")
        # Applied again without them (an edit), they stay: they were dropped, and a cancel then deleted kept JobSets.
        again = CliRunner().invoke(app, ["sweep", str(path), "--service", *kube])
        assert again.exit_code == 0, again.output
        changed = CliRunner().invoke(app, ["sweep", str(path), "--service", "--retries", "1", *kube])
        assert "DistillationSweep svc-lonely: retryFailed 2 → 1" in changed.stderr, changed.output
        found = client.CustomObjectsApi(control_plane.client).get_namespaced_custom_object(
            GROUP, VERSION, "unserved", PLURAL, "svc-lonely"
        )
        assert (found["spec"]["retryFailed"], found["spec"]["deletionPolicy"]) == (1, "Keep")
        # Just applied, any controller would still be at it: not said (it was, on every served cluster); once a
        # controller had the time to act, it is.
        shown = CliRunner().invoke(app, ["status", str(path), *kube])
        assert shown.exit_code == 0 and "sweep_not_served" not in shown.stderr, shown.output
        monkeypatch.setattr("orchestrator.service.client.SERVE_GRACE_SECONDS", 0.0)
        shown = CliRunner().invoke(app, ["status", str(path), *kube])
        assert shown.exit_code == 0 and "warning[sweep_not_served]" in shown.stderr, shown.output
        # A plain `sweep` of a served sweep made JobSets beside the controller's (called orphans there at once).
        plain = CliRunner().invoke(app, ["sweep", str(path), *kube])
        assert plain.exit_code == ExitCode.USAGE and "is run by the distillctl service" in plain.stderr, plain.output
        assert "distillctl sweep FILE --service" in plain.stderr
        # Deleted under deletionPolicy Keep, its JobSets run on: the command that deletes them names the image the
        # service ran them with (the resource that recorded it is gone; without it the file names no run).
        kept = CliRunner().invoke(app, ["cancel", str(path), "--service", "--yes", "--output", "json", *kube])
        assert kept.exit_code == 0, kept.output
        assert f"`distillctl cancel FILE --image {IMAGE}` deletes them" in " ".join(kept.stderr.split())
        # JSON asked, JSON on stdout (it printed the text): the words above went to stderr.
        assert json.loads(kept.stdout) == {
            "deleted": "DistillationSweep/svc-lonely",
            "deletionPolicy": "Keep",
            "gone": False,
        }
    finally:
        client.CoreV1Api(control_plane.client).delete_namespace("unserved")


def test_the_holder_renews_a_lease_written_on_a_whole_second(control_plane, caplog):
    """The client wrote a datetime on a whole second without its fraction ("22:19:07+00:00"), which a Lease's
    MicroTime refuses: every renewal was a 400, silently, and a replica named in the Lease never led again."""
    import datetime

    from orchestrator.service.election import LeaderElector

    whole = datetime.datetime(2026, 12, 5, 22, 19, 7, tzinfo=datetime.timezone.utc)
    api = client.CoordinationV1Api(control_plane.client)
    api.create_namespaced_lease(
        NS,
        client.V1Lease(
            metadata=client.V1ObjectMeta(name="whole-second"),
            spec=client.V1LeaseSpec(holder_identity="replica-w", lease_duration_seconds=6),
        ),
    )
    # A whole second as another tool (kubectl, client-go) writes it; a patch body is sent as it is.
    at = "2026-12-05T22:19:07.000000Z"
    api.patch_namespaced_lease("whole-second", NS, {"spec": {"acquireTime": at, "renewTime": at}})
    cluster = connect(ClusterAccess(kubeconfig=str(control_plane.kubeconfig), namespace=NS))
    elector = LeaderElector(cluster, "whole-second", "replica-w", lease_seconds=6, renew_deadline=4)
    try:
        with caplog.at_level("ERROR", logger="distillctl.serve"):
            assert elector._try(), [r.getMessage() for r in caplog.records]
        spec = api.read_namespaced_lease("whole-second", NS).spec
        # kept (a whole second is written a microsecond later), and renewed
        assert spec.acquire_time - whole <= datetime.timedelta(microseconds=1) and spec.renew_time > whole
        elector._release()
        assert api.read_namespaced_lease("whole-second", NS).spec.holder_identity is None  # handed back
    finally:
        api.delete_namespaced_lease("whole-second", NS)
        cluster.api.close()


def test_sweep_applied_as_a_resource_runs_to_the_end_with_no_client(control_plane, controllers, tmp_path):
    cp = control_plane
    path = tmp_path / "svc-a.yaml"
    # No image and no queue: the controllers' defaults (the chart's `defaults:` values) complete the target.
    text = SWEEP.format(name="svc-a", queue="", image="", base=tmp_path / "runs")
    path.write_text("\n".join(line for line in text.splitlines() if line not in ("  image: ", "  queue: ")) + "\n")
    applied = CliRunner().invoke(app, ["sweep", str(path), "--service", "--kubeconfig", str(cp.kubeconfig)])
    assert applied.exit_code == 0, applied.output
    assert "applied DistillationSweep default/svc-a" in applied.stdout

    # Edited while running: once every run has its JobSet, temperature 2.0 is replaced by 3.0. The new point is
    # created, the kept ones are left, and the removed one's JobSet is reported as an orphan, not deleted.
    cp.wait_for(lambda: len(jobsets(cp, "svc-a")) == 3, 90, "the points' JobSets")
    before = {j["metadata"]["name"] for j in jobsets(cp, "svc-a")}
    path.write_text(path.read_text().replace("[1.0, 2.0]", "[1.0, 3.0]"))
    edited = CliRunner().invoke(app, ["sweep", str(path), "--service", "--kubeconfig", str(cp.kubeconfig)])
    assert edited.exit_code == 0, edited.output

    def finished() -> bool:
        found = resource(cp, "svc-a") or {}
        done = (found.get("status") or {}).get("observedGeneration") == found["metadata"]["generation"]
        return done and condition(cp, "svc-a", "Succeeded").get("status") == "True"

    cp.wait_for(finished, 150, "the edited sweep to succeed")
    found = resource(cp, "svc-a")
    status = found["status"]
    assert (status["points"], status["succeeded"], status["failed"]) == (3, 3, 0)
    assert found["metadata"]["finalizers"] == ["distillctl.dev/jobsets"]
    made = jobsets(cp, "svc-a")
    (orphan,) = before - {r["jobset"] for r in status["runs"]}
    assert [o["jobset"] for o in status["orphans"]] == [orphan]
    assert not next(j for j in made if j["metadata"]["name"] == orphan)["metadata"].get("deletionTimestamp")
    # The edit's apply said so at once, as a plain `sweep` does (it said only "applied", and the orphan held quota).
    said = " ".join(edited.stderr.split())
    assert "warning[orphaned_runs]" in said and f"{orphan} (" in said and "--orphans` deletes them" in said, said
    kept = sorted(j["metadata"]["name"] for j in made if j["metadata"]["name"] != orphan)
    assert kept == sorted(r["jobset"] for r in status["runs"])  # one each
    assert before - {orphan} <= set(kept)  # the kept runs' JobSets are the ones created before the edit
    by_role = {j["metadata"]["labels"]["distillctl.dev/role"]: j for j in made}
    teacher_done = next(c for c in by_role["prerequisite"]["status"]["conditions"] if c["type"] == "Completed")
    points = [j for j in made if j["metadata"]["labels"]["distillctl.dev/role"] == "point"]
    assert all(p["metadata"]["creationTimestamp"] >= teacher_done["lastTransitionTime"] for p in points)

    assert {j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] for j in made} == {"multislice-queue"}
    # The CLI's status reads the controller's view; its run ids are the CLI's own for the file with the default
    # image written in (queue is not part of run ids): the image the controller filled in is taken from the
    # resource when the file leaves it unset (it took --image, else no run was the resource's).
    kube = ["--kubeconfig", str(cp.kubeconfig)]
    shown = CliRunner().invoke(app, ["status", str(path), "--output", "json", *kube])
    assert shown.exit_code == 0, shown.output
    assert f"which filled in what the file leaves unset: target.image {IMAGE}" in " ".join(shown.stderr.split())
    assert "service_runs_differ" not in shown.stderr
    assert {r["run_id"] for r in json.loads(shown.stdout)} == {r["runId"] for r in status["runs"]}
    assert all(r["age_seconds"] >= 0 for r in json.loads(shown.stdout))  # from the JobSets' creation (was none)
    assert "DistillationSweep svc-a: Succeeded (AllSucceeded: 3 run(s))" in shown.stderr  # its conditions
    assert "1 orphaned JobSet(s)" in shown.stderr and f"{orphan} (" in shown.stderr  # and `status`'s own warning
    # A plain `sweep` of it (the file leaves its image to the service) is the served sweep's, and refused as such
    # (it read "not a valid sweep: target.image missing", exit 4).
    plain = CliRunner().invoke(app, ["sweep", str(path), *kube])
    assert plain.exit_code == 2 and "is run by the distillctl service" in plain.stderr, plain.output
    # Another image than the controller filled in: other run ids than the resource's, said (it looked unsaid).
    other = CliRunner().invoke(app, ["status", str(path), "--image", "example.invalid/other:1", *kube])
    assert other.exit_code == 0 and "warning[service_runs_differ]" in other.stderr, other.output
    assert f"--image {IMAGE}, the image it runs with" in other.stderr  # the resource's pinned image
    compared = CliRunner().invoke(app, ["results", str(path), "--format", "json", *kube])
    assert compared.exit_code == 0, compared.output
    assert "DistillationSweep svc-a: Succeeded" in compared.stderr
    assert {r["status"]["phase"] for r in json.loads(compared.stdout)["runs"]} == {"Succeeded"}

    # `cancel` would delete runs the controller creates again (succeeded points ran twice): it says so instead.
    cancelled = CliRunner().invoke(app, ["cancel", str(path), "--yes", "--image", IMAGE, *kube])
    assert cancelled.exit_code == 2 and "is run by the distillctl service" in cancelled.stderr, cancelled.output
    assert len(jobsets(cp, "svc-a")) == len(made)
    # `cancel --orphans` with a file older than the resource (its temperature still 2.0): the file's orphans would
    # be the service's live 3.0 run, created again at once; the controller's list names the real one.
    stale = tmp_path / "stale" / "svc-a.yaml"
    stale.parent.mkdir()
    stale.write_text(path.read_text().replace("[1.0, 3.0]", "[1.0, 2.0]"))
    cleaned = CliRunner().invoke(app, ["cancel", str(stale), "--orphans", "--yes", "--image", IMAGE, *kube])
    assert cleaned.exit_code == 0 and cleaned.stdout.split()[1] == orphan, cleaned.output
    live = [j for j in jobsets(cp, "svc-a") if j["metadata"]["name"] != orphan]
    assert len(live) == len(made) - 1 and not any(j["metadata"].get("deletionTimestamp") for j in live)
    # The default image the controller filled in is kept with the sweep (a new default would make new run ids).
    assert resource(cp, "svc-a")["status"]["pinned"] == {"image": IMAGE}

    # One replica acted: the Lease names it, and the Events came from it alone.
    lease = client.CoordinationV1Api(cp.client).read_namespaced_lease(LEASE, NS)
    assert lease.spec.holder_identity in ("replica-a", "replica-b")
    events = client.CoreV1Api(cp.client).list_namespaced_event(NS, field_selector="involvedObject.name=svc-a").items
    assert {e.reporting_instance for e in events} == {lease.spec.holder_identity}
    reasons = [e.reason for e in events]
    assert reasons.count("Created") == 4 and "SweepSucceeded" in reasons and reasons.count("Orphaned") == 1

    # Deleting the resource deletes its JobSets first (deletionPolicy: Delete). Applied again meanwhile, the sweep
    # waits for it to go (it landed on the resource on its way out, shown running, and was gone with it).
    client.CustomObjectsApi(cp.client).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "svc-a")
    again = CliRunner().invoke(app, ["sweep", str(path), "--service", *kube])
    assert again.exit_code == 0, again.output
    assert resource(cp, "svc-a") is not None and not resource(cp, "svc-a")["metadata"].get("deletionTimestamp")
    client.CustomObjectsApi(cp.client).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "svc-a")
    cp.wait_for(lambda: resource(cp, "svc-a") is None, 60, "the resource to go")
    assert all(j["metadata"].get("deletionTimestamp") for j in jobsets(cp, "svc-a"))
    # Gone, the resource no longer says which image the file left to it: said (it read "not a valid sweep").
    gone = CliRunner().invoke(app, ["status", str(path), *kube])
    said = " ".join(gone.stderr.split())
    assert gone.exit_code == 2 and "there is no DistillationSweep svc-a in namespace" in said, gone.output
    assert "give --image IMAGE" in said


def test_a_deleted_sweep_hands_a_run_another_sweep_shares_to_it(control_plane, controllers, tmp_path):
    """Two served sweeps with the same prerequisite share its JobSet; deleting the one that created it hands the
    JobSet to the other instead of deleting it (a running teacher killed) or leaving it to a sweep that is gone
    (its status read "owned by sweep <deleted>" for ever, and a failure was never retried)."""
    cp = control_plane
    kube = ["--kubeconfig", str(cp.kubeconfig)]
    for name, temperatures in (("share-a", "[1.0, 2.0]"), ("share-b", "[4.0]")):
        text = SWEEP.format(name=name, queue="multislice-queue", image=IMAGE, base=tmp_path / "runs")
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.replace("[1.0, 2.0]", temperatures).replace('"2s"', '"600s"'))  # the teacher runs on
        applied = CliRunner().invoke(app, ["sweep", str(path), "--service", *kube])
        assert applied.exit_code == 0, applied.output
        if name == "share-a":
            cp.wait_for(lambda: len(jobsets(cp, "share-a")) == 1, 60, "share-a's teacher JobSet")
    (teacher,) = jobsets(cp, "share-a")

    def teacher_state(sweep: str) -> dict:
        runs = ((resource(cp, sweep) or {}).get("status") or {}).get("runs") or []
        return next((r for r in runs if r["role"] == "prerequisite"), {})

    cp.wait_for(lambda: teacher_state("share-b").get("owner") == "share-a", 60, "share-b to see share-a's teacher")
    client.CustomObjectsApi(cp.client).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "share-a")
    cp.wait_for(lambda: resource(cp, "share-a") is None, 60, "share-a to go")
    (kept,) = jobsets(cp, "share-b")
    assert kept["metadata"]["uid"] == teacher["metadata"]["uid"] and not kept["metadata"].get("deletionTimestamp")
    cp.wait_for(lambda: teacher_state("share-b").get("owner") == "", 60, "share-b to take the teacher as its own")
    assert teacher_state("share-b")["phase"] in ("Running", "Queued", "Pending"), teacher_state("share-b")
    assert not jobsets(cp, "share-a")
    client.CustomObjectsApi(cp.client).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "share-b")
    cp.wait_for(lambda: resource(cp, "share-b") is None, 60, "share-b to go")


def test_bad_resources_are_refused_at_admission_or_get_a_condition(control_plane, controllers, tmp_path):
    cp = control_plane
    api = client.CustomObjectsApi(cp.client)
    # Its own teacher (11 steps): another test's sweep with the same prerequisite, left behind when that test failed,
    # shared its run, and this status showed it Succeeded (one failure read as two).
    own = SWEEP.replace("      steps: 10\naxes:", "      steps: 11\naxes:")
    assert own != SWEEP
    base = yaml.safe_load(own.format(name="svc-bad", queue="multislice-queue", image=IMAGE, base=tmp_path / "runs"))
    del base["name"]
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DistillationSweep", "metadata": {"name": "svc-bad"}}

    wrong_type = {**body, "spec": {**base, "spec": {**base["spec"], "steps": "ten"}}}
    with pytest.raises(ApiException) as e:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, wrong_type)
    assert e.value.status == 422 and "spec.spec.steps" in e.value.body

    unknown = {**body, "spec": {**base, "axis": {}}}
    with pytest.raises(ApiException) as e:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, unknown, field_validation="Strict")
    assert e.value.status == 400 and "unknown field" in e.value.body and "spec.axis" in e.value.body

    # A quantity written as a number (`cpu: 8`) is one, as in a pod spec: the CRD says int-or-string.
    numeric = {**body, "spec": {**base, "target": {**base["target"], "resources": {"requests": {"cpu": 8}}}}}
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, numeric, field_validation="Strict", dry_run="All")

    # Valid by the schema, not by the guide's rules: the CLI's code, in a condition.
    rules = {**body, "spec": {**base, "spec": {**base["spec"], "loss": {"alpha": 1.5}}}}
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, rules)
    cp.wait_for(lambda: condition(cp, "svc-bad", "Accepted").get("status") == "False", 30, "Accepted=False")
    accepted = condition(cp, "svc-bad", "Accepted")
    assert accepted["reason"] == "InvalidSpec" and "alpha_out_of_range" in accepted["message"]

    # Valid, but it cannot run here: the LocalQueue does not exist.
    api.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "svc-bad", {"spec": {"spec": {"loss": None}, "target": {"queue": "no-such-queue"}}}
    )
    cp.wait_for(lambda: condition(cp, "svc-bad", "Accepted").get("reason") == "LocalQueueMissing", 30, "the reason")
    assert not jobsets(cp, "svc-bad")
    assert resource(cp, "svc-bad")["status"]["phase"] == "Refused"  # `kubectl get`'s Status column
    # `status` says the runs will not be created and why: it read "Pending (NotCreated)", as if about to be.
    path = tmp_path / "svc-bad.yaml"
    path.write_text(own.format(name="svc-bad", queue="no-such-queue", image=IMAGE, base=tmp_path / "runs"))
    shown = CliRunner().invoke(app, ["status", str(path), "--output", "json", "--kubeconfig", str(cp.kubeconfig)])
    assert shown.exit_code == 0, shown.output
    runs = json.loads(shown.stdout)
    assert {(r["phase"], r["reason"]) for r in runs} == {("Pending", "NotAccepted")}, runs
    assert all("refused the sweep (LocalQueueMissing)" in r["message"] for r in runs)
    table = CliRunner().invoke(app, ["status", str(path), "--kubeconfig", str(cp.kubeconfig)])
    assert "why" in table.stdout and "refused the sweep" in table.stdout  # the table's why column too

    # Valid, but the API server would refuse its pods: the PriorityClass does not exist.
    api.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "svc-bad", {"spec": {"target": {"queue": "multislice-queue", "priority": "urgent"}}}
    )
    cp.wait_for(lambda: condition(cp, "svc-bad", "Accepted").get("reason") == "PriorityClassMissing", 30, "the reason")
    assert "PriorityClass 'urgent' does not exist" in condition(cp, "svc-bad", "Accepted")["message"]
    assert not jobsets(cp, "svc-bad")

    # Valid, but one run asks for more chips than the ClusterQueue has: said before a Job per slice is made.
    api.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "svc-bad", {"spec": {"target": {"priority": None, "slices": 100000}}}
    )
    cp.wait_for(lambda: condition(cp, "svc-bad", "Accepted").get("reason") == "QuotaNeverFits", 30, "the reason")
    assert "google.com/tpu 1,600,000 > 16" in condition(cp, "svc-bad", "Accepted")["message"]
    assert not jobsets(cp, "svc-bad")

    # More runs than a status can hold (a traceback per pass above 100,000, and from ~9,000 on every status write
    # failed, holding up the other sweeps): a condition.
    grid = {"loss.temperature": [1.0 + i / 100 for i in range(50)], "seed": list(range(50))}
    api.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "svc-bad", {"spec": {"target": {"slices": None}, "axes": grid}}
    )
    cp.wait_for(lambda: condition(cp, "svc-bad", "Accepted").get("reason") == "GridTooLarge", 30, "the reason")
    assert "2500 points, over the limit of 2000" in condition(cp, "svc-bad", "Accepted")["message"]
    assert not jobsets(cp, "svc-bad")
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "svc-bad")
    cp.wait_for(lambda: resource(cp, "svc-bad") is None, 30, "the resource to go")


EARLY = """\
name: svc-e
spec:
  student: {{model: tiny-2l}}
  teacher: {{model: tiny-4l, load_parameters_path: gs://bucket/teacher/checkpoints}}
  batch: {{per_device_batch_size: 1, max_target_length: 16}}
  steps: 100
axes:
  loss.temperature: [1.0, 2.0]
early_stopping:
  no_improvement: {{patience: 3, min_delta: 0.01}}
target:
  kind: kubernetes
  tpu_type: v5p-128
  image: {image}
  queue: multislice-queue
  output_base: {base}
  pod_annotations: {{distillctl.dev/run-duration: "600s"}}
"""
KL = "distill/kl_div_T1"
IMPROVING = [1.0, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15]
PLATEAU = [1.0, 0.8, 0.6, 0.6, 0.61, 0.6, 0.6, 0.6, 0.6, 0.6]  # no gain of 0.01 in 3 lines after step 30


def test_early_stopping_stops_the_named_point_on_the_cluster_and_replay_agrees(control_plane, controllers, tmp_path):
    """Two points run (pods held by kwok), their metrics scripted in the output base as a trainer writes them: the
    acting controller stops the plateau at step 60 (stopped.json first, then its JobSet goes), the other keeps
    running, and `early-stop replay` over the same folders names the same point and step."""
    cp = control_plane
    path = tmp_path / "svc-e.yaml"
    runs = tmp_path / "runs"
    path.write_text(EARLY.format(image=IMAGE, base=runs))
    kube = ["--kubeconfig", str(cp.kubeconfig)]
    applied = CliRunner().invoke(app, ["sweep", str(path), "--service", *kube])
    assert applied.exit_code == 0, applied.output
    cp.wait_for(lambda: len(jobsets(cp, "svc-e")) == 2, 60, "both points' JobSets")
    keep, stop = sorted(jobsets(cp, "svc-e"), key=lambda j: _axis_values(j)["loss.temperature"])
    curves = {keep["metadata"]["labels"]["distillctl.dev/run-id"]: IMPROVING}
    curves[stop["metadata"]["labels"]["distillctl.dev/run-id"]] = PLATEAU
    for run_id, curve in curves.items():
        folder = runs / run_id
        folder.mkdir(parents=True, exist_ok=True)
        lines = [{"step": 10 * (i + 1), "metrics": {KL: {"sum": v * 100, "count": 100.0}}} for i, v in enumerate(curve)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    def row(run_id: str) -> dict:
        found = resource(cp, "svc-e") or {}
        return next((r for r in (found.get("status") or {}).get("runs", []) if r["runId"] == run_id), {})

    stopped_id = stop["metadata"]["labels"]["distillctl.dev/run-id"]
    cp.wait_for(lambda: row(stopped_id).get("phase") == "Stopped", 60, "the plateau to be stopped")
    stopped = row(stopped_id)
    assert stopped["reason"] == "NoImprovement" and stopped["stopped"]["step"] == 60, stopped
    assert json.loads((runs / stopped_id / "stopped.json").read_text())["rule"] == "no_improvement"

    def stop_gone() -> bool:
        left = [j for j in jobsets(cp, "svc-e") if j["metadata"]["name"] == stop["metadata"]["name"]]
        return all(j["metadata"].get("deletionTimestamp") for j in left)

    cp.wait_for(stop_gone, 30, "the stopped point's JobSet to go")
    kept_id = keep["metadata"]["labels"]["distillctl.dev/run-id"]
    assert row(kept_id).get("phase") != "Stopped"
    assert keep["metadata"]["name"] in {j["metadata"]["name"] for j in jobsets(cp, "svc-e")}

    replayed = CliRunner().invoke(app, ["early-stop", "replay", str(path), "--output", "json"])
    assert replayed.exit_code == 0, replayed.output
    rules = {r["run_id"]: (r["rule"], r["step"]) for r in json.loads(replayed.stdout)}
    assert rules == {stopped_id: ("no_improvement", 60), kept_id: (None, None)}

    client.CustomObjectsApi(cp.client).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "svc-e")
    cp.wait_for(lambda: resource(cp, "svc-e") is None, 60, "the resource to go")


def test_the_service_says_why_a_run_is_stuck(control_plane, controllers, tmp_path):
    """A pod that cannot pull its image (kwok's stage sets the kubelet's waiting reason): the resource's run reads
    Stuck (ImagePullBackOff) with the kubelet's message, as `status` says it, from the controller's pod watch."""
    cp = control_plane
    path = tmp_path / "svc-p.yaml"
    text = EARLY.format(image=IMAGE, base=tmp_path / "runs").replace("name: svc-e", "name: svc-p")
    text = text.replace("[1.0, 2.0]", "[1.0]").replace(
        '{distillctl.dev/run-duration: "600s"}',
        '{distillctl.dev/waiting-reason: ImagePullBackOff, distillctl.dev/waiting-message: "manifest unknown"}',
    )
    path.write_text(text)
    applied = CliRunner().invoke(app, ["sweep", str(path), "--service", "--kubeconfig", str(cp.kubeconfig)])
    assert applied.exit_code == 0, applied.output

    def stuck() -> dict | None:
        runs = ((resource(cp, "svc-p") or {}).get("status") or {}).get("runs") or []
        return runs[0] if runs and runs[0].get("phase") == "Stuck" else None

    row = cp.wait_for(stuck, 90, "the run to read Stuck")
    assert row["reason"] == "ImagePullBackOff" and "manifest unknown" in row["message"], row
    # Stopped from distillctl (it took kubectl): the resource goes, and its JobSets first (deletionPolicy Delete).
    kube = ["--kubeconfig", str(cp.kubeconfig)]
    refused = CliRunner().invoke(app, ["cancel", str(path), "--service", *kube])
    assert refused.exit_code == 2 and "pass --yes" in refused.stderr, refused.output
    stopped = CliRunner().invoke(app, ["cancel", str(path), "--service", "--yes", "--wait", "--timeout", "90", *kube])
    assert stopped.exit_code == 0, stopped.output
    assert "deleting DistillationSweep svc-p: the controller deletes its JobSets first" in stopped.stdout
    assert "is gone, and its JobSets with it" in stopped.stdout
    assert resource(cp, "svc-p") is None and all(j["metadata"].get("deletionTimestamp") for j in jobsets(cp, "svc-p"))
    again = CliRunner().invoke(app, ["cancel", str(path), "--service", "--yes", *kube])
    assert again.exit_code == 2 and "there is no DistillationSweep svc-p in namespace 'default'" in again.stderr


def _axis_values(jobset: dict) -> dict:
    return json.loads(jobset["metadata"]["annotations"]["distillctl.dev/axis-values"])


@pytest.mark.slow
def test_a_manifest_the_cluster_refuses_is_a_condition_not_a_hot_retry(control_plane, controllers, tmp_path):
    """An admission policy (a ValidatingAdmissionPolicy, as a platform team writes one) refuses this sweep's
    JobSets: the controller retried the create several times a second, and the resource said nothing."""
    cp = control_plane
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "no-svc-r"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["jobset.x-k8s.io"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE"],
                        "resources": ["jobsets"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "object.metadata.labels['distillctl.dev/sweep'] != 'svc-r'",
                    "message": "svc-r may not run here",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "no-svc-r"},
        "spec": {"policyName": "no-svc-r", "validationActions": ["Deny"]},
    }
    cp.apply([policy, binding])
    admission = client.AdmissionregistrationV1Api(cp.client)
    try:
        path = tmp_path / "svc-r.yaml"
        text = EARLY.format(image=IMAGE, base=tmp_path / "runs").replace("name: svc-e", "name: svc-r")
        path.write_text(text.replace("[1.0, 2.0]", "[1.0]").replace("\nearly_stopping:\n  no_improvement:", "\n#"))
        time.sleep(2)  # the policy reaches the API server's admission cache
        applied = CliRunner().invoke(app, ["sweep", str(path), "--service", "--kubeconfig", str(cp.kubeconfig)])
        # applied, and the refusal said at once (it read "applied ... the controller creates its runs", exit 0)
        assert applied.exit_code == ExitCode.REJECTED, applied.output  # as `sweep` exits for a rejected manifest
        assert "the controller refused DistillationSweep default/svc-r (ManifestRejected)" in applied.stderr

        def refused() -> dict:
            found = condition(cp, "svc-r", "Accepted")
            return found if found.get("reason") == "ManifestRejected" else {}

        accepted = cp.wait_for(refused, 60, "Accepted=False (ManifestRejected)")
        assert accepted["status"] == "False" and "svc-r may not run here" in accepted["message"], accepted
        assert jobsets(cp, "svc-r") == []
        events = client.CoreV1Api(cp.client).list_namespaced_event(NS, field_selector="involvedObject.name=svc-r")
        assert any(e.type == "Warning" for e in events.items)
    finally:
        admission.delete_validating_admission_policy_binding("no-svc-r")
        admission.delete_validating_admission_policy("no-svc-r")
    client.CustomObjectsApi(cp.client).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "svc-r")
    cp.wait_for(lambda: resource(cp, "svc-r") is None, 60, "the resource to go")


def test_a_killed_controller_is_replaced_and_no_run_is_created_twice(control_plane, installed, tmp_path):
    """kill -9 of the acting `distillctl serve` once the prerequisite's JobSet exists; a second process takes the
    Lease when it expires and finishes the sweep through a faulty API (the fault-injecting proxy: a failed list, a
    JobSet created whose answer is lost, a 500 and a 429 on creates, a failed status write): one JobSet per run.
    Its own namespace, so the replicas of the other tests (which watch `default`) stay out of it."""
    cp = control_plane
    ns = _namespace_with_queue(cp, "svc-kill")
    path = tmp_path / "svc-k.yaml"
    text = SWEEP.format(name="svc-k", queue="", image=IMAGE, base=tmp_path / "runs")  # the queue: serve's default
    path.write_text("\n".join(line for line in text.splitlines() if line != "  queue: ") + "\n")
    kube = ["--kubeconfig", str(cp.kubeconfig), "-n", ns]

    def serve(identity: str, kubeconfig: Path = cp.kubeconfig) -> subprocess.Popen:
        command = [sys.executable, "-m", "orchestrator.cli", "serve", "--kubeconfig", str(kubeconfig), "-n", ns]
        command += ["--port", "0", "--resync", "5"]
        command += ["--default-queue", "q"]  # as the chart's `defaults.queue` passes it
        with open(tmp_path / f"{identity}.log", "w") as log:  # the child keeps its own descriptor
            return subprocess.Popen([*command, "--identity", identity], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def listed() -> list[dict]:
        found = client.CustomObjectsApi(cp.client).list_namespaced_custom_object(
            "jobset.x-k8s.io", "v1alpha2", ns, "jobsets", label_selector="distillctl.dev/sweep=svc-k"
        )
        return found["items"]

    first = serve("first")
    try:
        applied = CliRunner().invoke(app, ["sweep", str(path), "--service", *kube])
        assert applied.exit_code == 0, applied.output
        cp.wait_for(listed, 60, "the prerequisite's JobSet")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    jobset_creates = f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/{ns}/jobsets"
    faults = [
        Rule("status", method="GET", path_contains="/workloads", status=503),  # its first list of Workloads
        Rule("drop", method="POST", path_contains=jobset_creates),  # created, but the answer is lost
        Rule("status", method="POST", path_contains=jobset_creates, status=500),
        Rule("status", method="POST", path_contains=jobset_creates, status=429, retry_after=0.1),
        Rule("status", method="PATCH", path_contains="/distillationsweeps/svc-k/status", status=503),
    ]
    with FaultProxy(cp, faults) as proxy:
        second = serve("second", proxy.kubeconfig)
        try:
            cp.wait_for(
                lambda: _condition_in(cp, ns, "svc-k", "Succeeded").get("status") == "True", 180, "the sweep to succeed"
            )
            names = [j["metadata"]["name"] for j in listed()]
            assert len(names) == 3 == len(set(names)), names  # the lost answer's JobSet was not created again
            assert {j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] for j in listed()} == {"q"}
            lease = client.CoordinationV1Api(cp.client).read_namespaced_lease("distillctl-controller", ns)
            assert lease.spec.holder_identity == "second"
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, (tmp_path / "second.log").read_text()
        fired = {(method, action) for method, _, action in proxy.events if action != "forward"}
    assert {("GET", "status"), ("POST", "drop"), ("POST", "status"), ("PATCH", "status")} <= fired, fired
    released = client.CoordinationV1Api(cp.client).read_namespaced_lease("distillctl-controller", ns)
    assert not released.spec.holder_identity  # handed back on SIGTERM: a successor need not wait
    client.CoreV1Api(cp.client).delete_namespace(ns)


def _namespace_with_queue(cp, ns: str) -> str:
    """A namespace of a test's own (the replicas of the other tests watch `default`), with a LocalQueue `q`."""
    client.CoreV1Api(cp.client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    queue = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue", "metadata": {"name": "q", "namespace": ns}}
    cp.apply({**queue, "spec": {"clusterQueue": "cluster-queue"}})
    return ns


def _condition_in(cp, ns: str, name: str, kind: str) -> dict:
    found = client.CustomObjectsApi(cp.client).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return next((c for c in (found.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def test_chart_upgrades_and_uninstalls(control_plane, installed):
    cp = control_plane
    kube = ["-n", NS, "--kubeconfig", str(cp.kubeconfig)]
    upgraded = installed("upgrade", RELEASE, str(CHART), *kube, "--set", "replicas=2")
    assert upgraded.returncode == 0, upgraded.stderr
    deployment = client.AppsV1Api(cp.client).read_namespaced_deployment(SERVICE_ACCOUNT, NS)
    assert deployment.spec.replicas == 2
    removed = installed("uninstall", RELEASE, *kube)
    assert removed.returncode == 0, removed.stderr
    rbac = client.RbacAuthorizationV1Api(cp.client)
    selector = f"app.kubernetes.io/instance={RELEASE}"
    assert not rbac.list_namespaced_role(NS, label_selector=selector).items
    assert not rbac.list_cluster_role(label_selector=selector).items


def test_the_controller_image_serves_a_sweep_to_the_end(control_plane, installed, tmp_path):
    """The chart's image (orchestrator/Dockerfile, built here with podman as `make image-controller` builds it):
    `distillctl serve` in the container, on the host's network, takes a sweep applied with `sweep --service` to the
    end. The chart pointed at an image nothing in the repository built (a pod in ImagePullBackOff). Its own
    namespace, as the killed-controller test."""
    import shutil

    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (`make image-tools` installs Debian's podman, runc and mmdebstrap)")
    podman = str(REPO / "hack" / "image" / "podman.sh")
    tag = "distillctl:test"
    build = subprocess.run(
        [str(REPO / "hack" / "image" / "build.sh"), tag, "orchestrator"], capture_output=True, text=True, timeout=3000
    )
    assert build.returncode == 0, (build.stdout[-4000:], build.stderr[-4000:])
    cp = control_plane
    ns = _namespace_with_queue(cp, "svc-image")
    runs = tmp_path / "runs"
    runs.mkdir()
    path = tmp_path / "svc-img.yaml"
    path.write_text(SWEEP.format(name="svc-img", queue="q", image=IMAGE, base=runs))
    kube = tmp_path / "kube"
    kube.mkdir()
    shutil.copy(cp.kubeconfig, kube / "kubeconfig")
    (kube / "kubeconfig").chmod(0o644)  # the image's user (uid 10001) reads it
    name = "distillctl-image-test"
    serve = [podman, "run", "--rm", "--name", name, "--network", "host", "--volume", f"{kube}:/kube:ro"]
    serve += ["--volume", f"{runs}:{runs}:ro", f"localhost/{tag}"]
    serve += ["serve", "--kubeconfig", "/kube/kubeconfig", "-n", ns, "--port", "0", "--resync", "5"]
    with open(tmp_path / "serve.log", "w") as log:
        controller = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
    try:
        applied = CliRunner().invoke(
            app, ["sweep", str(path), "--service", "--kubeconfig", str(cp.kubeconfig), "-n", ns]
        )
        assert applied.exit_code == 0, applied.output

        def succeeded() -> bool:
            if controller.poll() is not None:  # the container's own words, not a timeout
                pytest.fail(f"the controller's container exited: {(tmp_path / 'serve.log').read_text()[-3000:]}")
            return _condition_in(cp, ns, "svc-img", "Succeeded").get("status") == "True"

        cp.wait_for(succeeded, 240, "the sweep to succeed")
        found = client.CustomObjectsApi(cp.client).list_namespaced_custom_object(
            "jobset.x-k8s.io", "v1alpha2", ns, "jobsets", label_selector="distillctl.dev/sweep=svc-img"
        )
        assert len(found["items"]) == 3
    finally:
        subprocess.run([podman, "stop", "--time", "30", name], capture_output=True, timeout=60)
        code = controller.wait(60)
        client.CoreV1Api(cp.client).delete_namespace(ns)
    assert code == 0, (tmp_path / "serve.log").read_text()  # SIGTERM: the Lease handed back, exit 0
