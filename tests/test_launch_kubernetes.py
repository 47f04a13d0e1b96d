"""`distillctl sweep`, `status`, `logs` and `cancel` against the real local control plane (tests/cluster):
kube-apiserver with etcd, the JobSet and Kueue controllers, and kwok playing fake TPU nodes.

The cluster's ClusterQueue has TPU quota for one v5p-128 × 2 JobSet at a time, so a sweep's other points wait in
Kueue's queue. Pods "run" for `run_duration` (a pod annotation the kwok stages read) unless a test makes one exit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes import utils as k8s_utils
from typer.testing import CliRunner

from orchestrator.backends.kubernetes import client as kube_client
from orchestrator.backends.kubernetes.backend import COMPLETION_INDEX_LABEL, JOB_INDEX_LABEL
from orchestrator.cli import app
from orchestrator.exit_codes import ExitCode
from tests.cluster.fault_proxy import FaultProxy, Rule

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

SWEEP = """\
name: {name}
spec:
  student: {{model: tiny-2l}}
  teacher: {{model: tiny-4l, load_parameters_path: gs://bucket/teacher/checkpoints}}
  batch: {{per_device_batch_size: 1, max_target_length: 16}}
  steps: 10
axes:
  loss.temperature: {temperatures}
target:
  kind: kubernetes
  tpu_type: v5p-128
  slices: {slices}
  image: example.invalid/distillctl-trainer:test
  queue: {queue}
  priority: medium
  max_restarts: 2
  output_base: {base}
  pod_annotations: {{distillctl.dev/run-duration: "{duration}"}}
"""


def write_sweep(
    tmp_path: Path,
    name: str,
    *,
    points: int = 2,
    duration: str = "2s",
    slices: int = 2,
    queue: str = "multislice-queue",
) -> Path:
    temperatures = [1.0 + i for i in range(points)]
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        SWEEP.format(
            name=name, temperatures=temperatures, base=tmp_path / "runs", duration=duration, slices=slices, queue=queue
        )
    )
    return path


def cli(*args: str, kubeconfig) -> "CliRunner.Result":
    return runner.invoke(app, [*args, "--kubeconfig", str(kubeconfig)])


def jobsets(cp, sweep: str, *, deleting: bool = False) -> list[dict]:
    """The sweep's JobSets (with those being deleted, when `deleting`)."""
    api = client.CustomObjectsApi(cp.client)
    listing = api.list_namespaced_custom_object(
        "jobset.x-k8s.io", "v1alpha2", "default", "jobsets", label_selector=f"distillctl.dev/sweep={sweep}"
    )
    return [j for j in listing["items"] if deleting or not j["metadata"].get("deletionTimestamp")]


def status_rows(path: Path, kubeconfig) -> dict[str, dict]:
    result = cli("status", str(path), "--output", "json", kubeconfig=kubeconfig)
    assert result.exit_code == 0, result.output
    return {row["run_id"]: row for row in json.loads(result.stdout)}


def pods_of(cp, jobset_name: str) -> list[client.V1Pod]:
    core = client.CoreV1Api(cp.client)
    return core.list_namespaced_pod("default", label_selector=f"jobset.sigs.k8s.io/jobset-name={jobset_name}").items


def first_worker_running(cp, jobset_name: str) -> bool:
    """Whether the pod `distillctl logs` reads by default (slice 0, worker 0) runs. Another worker's pod can run
    first: the Job controller creates a slice's pods in no fixed order."""
    return any(
        p.status.phase == "Running"
        and (p.metadata.labels or {}).get(JOB_INDEX_LABEL) == "0"
        and (p.metadata.labels or {}).get(COMPLETION_INDEX_LABEL) == "0"
        for p in pods_of(cp, jobset_name)
    )


def cancel_all(path: Path, kubeconfig) -> None:
    cli("cancel", str(path), "--yes", kubeconfig=kubeconfig)


def wait_gone(cp, sweep: str, timeout: float = 120) -> None:
    cp.wait_for(lambda: not jobsets(cp, sweep, deleting=True), timeout, f"the JobSets of {sweep} to be deleted")


@pytest.fixture(autouse=True)
def _leave_the_cluster_empty(control_plane):
    """A test that fails before its own cancel must not leave JobSets holding the quota, or claims holding run
    ids: every later test would wait in Kueue's queue, or find its runs claimed, and fail for the wrong reason."""
    yield
    api = client.CustomObjectsApi(control_plane.client)
    if api.list_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", "default", "jobsets")["items"]:
        api.delete_collection_namespaced_custom_object(
            "jobset.x-k8s.io", "v1alpha2", "default", "jobsets", propagation_policy="Foreground"
        )
        control_plane.wait_for(
            lambda: not api.list_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", "default", "jobsets")["items"],
            120,
            "the JobSets left by the test to be deleted",
        )
    client.CoordinationV1Api(control_plane.client).delete_collection_namespaced_lease(
        "default", label_selector="distillctl.dev/run-id"
    )


# --- reconcile: exactly one JobSet per point ---------------------------------------------------------------


def test_sweep_creates_each_point_once_and_again_creates_nothing(control_plane, tmp_path):
    cp = control_plane
    path = write_sweep(tmp_path, "once", points=3, duration="60s")
    first = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
    assert first.exit_code == 0, first.output
    assert "3 created, 0 unchanged" in first.stdout
    assert len(jobsets(cp, "once")) == 3
    again = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
    assert again.exit_code == 0 and "0 created, 3 unchanged" in again.stdout
    assert len(jobsets(cp, "once")) == 3
    cancel_all(path, cp.kubeconfig)
    wait_gone(cp, "once")


def test_concurrent_and_interrupted_sweeps_end_with_one_jobset_per_point(control_plane, tmp_path):
    cp = control_plane
    path = write_sweep(tmp_path, "race", points=4, duration="60s")
    command = [sys.executable, "-m", "orchestrator.cli", "sweep", str(path), "--kubeconfig", str(cp.kubeconfig)]
    both = [
        subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in both]
    assert all(p.returncode == 0 for p in both), outputs
    assert len(jobsets(cp, "race")) == 4
    created = sum(int(re.search(r"(\d+) created, \d+ unchanged", out).group(1)) for out, _ in outputs)
    assert created == 4  # each JobSet created by exactly one of the two
    cancel_all(path, cp.kubeconfig)
    wait_gone(cp, "race")

    # Interrupted: kill a sweep as soon as its first JobSet exists, then run it again.
    victim = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cp.wait_for(lambda: jobsets(cp, "race") or victim.poll() is not None, 60, "a first JobSet")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    partial = len(jobsets(cp, "race"))
    again = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
    assert again.exit_code == 0, again.output
    assert len(jobsets(cp, "race")) == 4 and f"{4 - partial} created" in again.stdout
    cancel_all(path, cp.kubeconfig)
    wait_gone(cp, "race")


def test_an_interrupted_sweep_says_how_many_runs_it_created_and_hands_each_its_claim(control_plane, tmp_path):
    # SIGTERM midway through creating a grid printed only "terminated (SIGTERM)": the runs created went on unsaid.
    cp = control_plane
    leases = client.CoordinationV1Api(cp.client)
    path = write_sweep(tmp_path, "halted", points=10, duration="10m", slices=1)
    slow = [Rule("delay", method="POST", path_contains="/jobsets", delay=3.0, times=None)]
    with FaultProxy(cp, slow) as proxy:
        command = [sys.executable, "-m", "orchestrator.cli", "sweep", str(path), "--kubeconfig", str(proxy.kubeconfig)]
        victim = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        claimed = lambda: leases.list_namespaced_lease("default", label_selector="distillctl.dev/run-id").items  # noqa: E731
        cp.wait_for(lambda: claimed() or victim.poll() is not None, 60, "a first claim")
        time.sleep(0.5)  # the first creates are in flight (held by the proxy), the rest not begun
        victim.send_signal(signal.SIGTERM)
        _, stderr = victim.communicate(timeout=60)
    try:
        assert victim.returncode == ExitCode.TERMINATED, stderr
        created = jobsets(cp, "halted")
        assert 0 < len(created) < 10, stderr  # the creates in flight finished; the others never began
        said = " ".join(stderr.split())
        assert "terminated (SIGTERM)" in said and "error:" not in said, said
        assert f"{len(created)} of 10 run(s) were created before it stopped, and run on" in said, said
        # Every claim is its JobSet's (none holds a run for nobody), and there is one per JobSet.
        owners = {o.name for lease in claimed() for o in lease.metadata.owner_references or []}
        assert owners == {j["metadata"]["name"] for j in created} and len(claimed()) == len(created)
        again = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
        assert again.exit_code == 0 and f"{10 - len(created)} created, {len(created)} unchanged" in again.stdout
    finally:
        cancel_all(path, cp.kubeconfig)
        wait_gone(cp, "halted")


def test_retries_through_a_faulty_api_never_duplicate(control_plane, tmp_path):
    cp = control_plane
    path = write_sweep(tmp_path, "flaky", points=3, duration="60s")
    rules = [
        Rule("status", method="GET", path_contains="/jobsets", status=503),  # the first list fails
        Rule("status", method="POST", path_contains="/jobsets", status=429, retry_after=0.1),  # throttled
        Rule("drop", method="POST", path_contains="/jobsets"),  # created, but the answer is lost
        Rule("status", method="POST", path_contains="/jobsets", status=500),
    ]
    with FaultProxy(cp, rules) as proxy:
        result = cli("sweep", str(path), kubeconfig=proxy.kubeconfig)
        assert result.exit_code == 0, result.output
        actions = [action for _, _, action in proxy.events]
    assert {"status", "drop"} <= set(actions)
    assert len(jobsets(cp, "flaky")) == 3  # the dropped create was not repeated as a second JobSet
    assert "3 created" in result.stdout or "exists" in result.stdout
    cancel_all(path, cp.kubeconfig)
    wait_gone(cp, "flaky")


# --- dry runs and clusters that are not ready -----------------------------------------------------------------


def test_server_dry_run_creates_nothing(control_plane, tmp_path):
    cp = control_plane
    path = write_sweep(tmp_path, "dry", points=2)
    result = cli("sweep", str(path), "--dry-run", "server", kubeconfig=cp.kubeconfig)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("would create (server)") == 2
    assert "2 would be created (dry run: nothing was)" in result.stdout
    assert jobsets(cp, "dry") == []


def test_server_dry_run_surfaces_a_jobset_crd_older_than_the_fields_used(control_plane, tmp_path):
    cp = control_plane
    path = write_sweep(tmp_path, "oldcrd", points=1)
    ext = client.ApiextensionsV1Api(cp.client)
    crd = ext.read_custom_resource_definition("jobsets.jobset.x-k8s.io")
    original = client.ApiClient().sanitize_for_serialization(crd)
    older = json.loads(json.dumps(original))
    policy = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "failurePolicy"
    ]
    policy["properties"].pop("rules")  # as in a JobSet release before failure-policy rules
    older["metadata"] = {
        "name": original["metadata"]["name"],
        "resourceVersion": original["metadata"]["resourceVersion"],
    }
    older.pop("status", None)
    ext.replace_custom_resource_definition("jobsets.jobset.x-k8s.io", older)
    try:
        time.sleep(2)  # the apiserver picks up the new schema
        result = cli("sweep", str(path), "--dry-run", "server", kubeconfig=cp.kubeconfig)
    finally:
        current = ext.read_custom_resource_definition("jobsets.jobset.x-k8s.io")
        restored = {
            **original,
            "metadata": {"name": original["metadata"]["name"], "resourceVersion": current.metadata.resource_version},
        }
        restored.pop("status", None)
        ext.replace_custom_resource_definition("jobsets.jobset.x-k8s.io", restored)
        time.sleep(2)
    assert result.exit_code == ExitCode.CLUSTER_NOT_READY, result.output
    assert "older than the fields distillctl uses" in result.stderr and "unknown field" in result.stderr
    assert jobsets(cp, "oldcrd") == []


@pytest.mark.parametrize(
    ("group", "words"),
    [("jobset.x-k8s.io", "JobSet controller is not installed"), ("kueue.x-k8s.io", "Kueue is not installed")],
)
def test_missing_components_say_which_and_how_to_install(control_plane, tmp_path, group, words):
    path = write_sweep(tmp_path, "bare", points=1)
    with FaultProxy(control_plane, [Rule("hide_group", group=group, times=None)]) as proxy:
        result = cli("sweep", str(path), kubeconfig=proxy.kubeconfig)
    assert result.exit_code == ExitCode.CLUSTER_NOT_READY, result.output
    assert words in result.stderr and "kubectl apply --server-side" in result.stderr


def test_rbac_forbidden_is_its_own_exit_code(control_plane, tmp_path):
    path = write_sweep(tmp_path, "denied", points=1)
    with FaultProxy(control_plane, [Rule("impersonate", user="nobody", times=None)]) as proxy:
        result = cli("sweep", str(path), kubeconfig=proxy.kubeconfig)
    assert result.exit_code == ExitCode.FORBIDDEN, result.output
    assert "forbidden" in result.stderr and "RBAC" in result.stderr


def launcher_rbac() -> list[dict]:
    """The ServiceAccount, Role and RoleBinding the README's "Running distillctl in a pod" documents."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- launcher-rbac -->\n```yaml\n", 1)[1].split("```", 1)[0]
    return [doc for doc in yaml.safe_load_all(block) if doc]


def test_in_a_pod_it_uses_the_service_account_and_needs_only_the_documented_rbac(control_plane, tmp_path, monkeypatch):
    cp = control_plane
    docs = launcher_rbac()
    core, rbac = client.CoreV1Api(cp.client), client.RbacAuthorizationV1Api(cp.client)
    account = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    path = write_sweep(tmp_path, "inpod", points=1, duration="10m", slices=1)
    k8s_utils.create_from_dict(cp.client, {"kind": "List", "apiVersion": "v1", "items": docs})
    try:
        token = core.create_namespaced_service_account_token(account, "default", {"spec": {"expirationSeconds": 3600}})
        mounted = tmp_path / "serviceaccount"  # what the kubelet mounts into a pod
        mounted.mkdir()
        (mounted / "token").write_text(token.status.token)
        (mounted / "ca.crt").write_bytes(cp.ca_pem)
        (mounted / "namespace").write_text("default")
        monkeypatch.setattr(kube_client, "SERVICE_ACCOUNT_DIR", str(mounted))
        host, port = cp.server.removeprefix("https://").rsplit(":", 1)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        monkeypatch.delenv("KUBECONFIG", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config

        for args in (["sweep", str(path), "--dry-run=server"], ["sweep", str(path)]):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output
        assert "1 created" in result.stdout and "service_unknown" not in result.stderr
        # A Role without the documented get on DistillationSweeps cannot tell a served sweep from its own: said.
        role = next(d for d in docs if d["kind"] == "Role")
        rules = [r for r in role["rules"] if "distillationsweeps" not in r["resources"]]
        rbac.patch_namespaced_role(account, "default", {"rules": rules})
        blind = runner.invoke(app, ["sweep", str(path)])
        assert blind.exit_code == 0 and "warning[service_unknown]" in blind.stderr, blind.output
        rbac.patch_namespaced_role(account, "default", {"rules": role["rules"]})
        jobset = jobsets(cp, "inpod")[0]
        # 300 s: CI once saw this first pod take over 120 s (a loaded host; the Job controller backs off up to 60 s
        # per failed create); a timeout prints what the cluster held.
        cp.wait_for(lambda: first_worker_running(cp, jobset["metadata"]["name"]), 300, "slice 0, worker 0 running")
        status = runner.invoke(app, ["status", str(path), "--output", "json"])
        assert status.exit_code == 0 and json.loads(status.stdout)[0]["phase"] == "Running", status.output

        def readable_log() -> bool:
            logs = runner.invoke(app, ["logs", str(path), "0"])
            assert logs.exit_code == 0 and "kl_div_T1" in logs.stdout, logs.output  # said at a timeout
            return True

        # Polled: a fresh clone's run once found no pod for slice 0, worker 0 a moment after it ran (replaced
        # between the two looks); the RBAC to read pods and their logs is what this asserts.
        cp.wait_for(readable_log, 120, "the log of slice 0, worker 0")
        assert runner.invoke(app, ["cancel", str(path), "--yes"]).exit_code == 0
        wait_gone(cp, "inpod")

        # The Role cannot read ClusterQueues (cluster-scoped), so a run above the quota is created, and Kueue's
        # own word on it ends the wait at once.
        toobig = write_sweep(tmp_path, "toobig", points=1, slices=3)  # 3 × 64 chips > the queue's 128
        started = time.monotonic()
        result = runner.invoke(app, ["sweep", str(toobig), "--wait", "--timeout", "300"])
        assert result.exit_code == ExitCode.NOT_ADMITTED, result.output
        assert "will never admit" in result.stderr and "maximum capacity" in result.stderr
        assert time.monotonic() - started < 60  # said at once, not after the timeout
        assert runner.invoke(app, ["cancel", str(toobig), "--yes"]).exit_code == 0
        wait_gone(cp, "toobig")

        # What the Role does not grant is refused as forbidden, with the account named.
        elsewhere = tmp_path / "elsewhere.yaml"
        elsewhere.write_text(path.read_text().replace("kind: kubernetes", "kind: kubernetes\n  namespace: kube-system"))
        result = runner.invoke(app, ["sweep", str(elsewhere)])
        assert result.exit_code == ExitCode.FORBIDDEN, result.output
        assert f"system:serviceaccount:default:{account}" in result.stderr

        # A pod without a mounted token says so, instead of a kubeconfig hint.
        monkeypatch.setattr(kube_client, "SERVICE_ACCOUNT_DIR", str(tmp_path / "not-mounted"))
        result = runner.invoke(app, ["status", str(path)])
        assert result.exit_code == ExitCode.CLUSTER_UNREACHABLE, result.output
        assert "in-cluster configuration" in result.stderr and "automountServiceAccountToken" in result.stderr
    finally:
        cancel_all(path, cp.kubeconfig)
        core.delete_namespaced_service_account(account, "default")
        rbac.delete_namespaced_role(account, "default")
        rbac.delete_namespaced_role_binding(account, "default")


def test_unreachable_cluster_and_unknown_context(control_plane, tmp_path):
    path = write_sweep(tmp_path, "nowhere", points=1)
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(control_plane.kubeconfig.read_text().replace(control_plane.server, "https://127.0.0.1:9"))
    result = cli("status", str(path), kubeconfig=dead)
    assert result.exit_code == ExitCode.CLUSTER_UNREACHABLE and "cannot reach" in result.stderr
    result = runner.invoke(
        app, ["status", str(path), "--kubeconfig", str(control_plane.kubeconfig), "--context", "prod"]
    )
    assert result.exit_code == ExitCode.CLUSTER_UNREACHABLE and "use one of: distillctl-local" in result.stderr
    result = runner.invoke(app, ["status", str(path), "--kubeconfig", str(tmp_path / "missing")])
    assert result.exit_code == ExitCode.CLUSTER_UNREACHABLE and "no kubeconfig" in result.stderr


def test_a_kubeconfig_list_skips_missing_and_empty_files_as_kubectl_does(control_plane, tmp_path, monkeypatch):
    # KUBECONFIG=empty:real (a placeholder some tool created) was refused, "file is empty", exit 5.
    path = write_sweep(tmp_path, "listed", points=1)
    empty = tmp_path / "empty-kubeconfig"
    empty.write_text("\n")
    listed = os.pathsep.join([str(empty), str(tmp_path / "missing"), str(control_plane.kubeconfig)])
    monkeypatch.setenv("KUBECONFIG", listed)
    result = runner.invoke(app, ["status", str(path)])
    assert result.exit_code == 0 and "NotCreated" in result.stdout, result.output
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(empty), str(empty)]))
    result = runner.invoke(app, ["status", str(path)])
    assert result.exit_code == ExitCode.CLUSTER_UNREACHABLE, result.output
    assert "every kubeconfig KUBECONFIG lists is empty or missing" in result.stderr


def test_a_queue_that_does_not_exist_never_admits(control_plane, tmp_path):
    path = write_sweep(tmp_path, "noqueue", points=1, queue="no-such-queue")
    result = cli("sweep", str(path), kubeconfig=control_plane.kubeconfig)
    assert result.exit_code == ExitCode.NOT_ADMITTED and "does not exist" in result.stderr


def test_a_priority_class_that_does_not_exist_is_refused_before_anything_is_created(control_plane, tmp_path):
    path = write_sweep(tmp_path, "nopriority", points=1)
    path.write_text(path.read_text().replace("priority: medium", "priority: urgent"))
    result = cli("sweep", str(path), kubeconfig=control_plane.kubeconfig)
    assert result.exit_code == ExitCode.REJECTED, result.output
    assert "PriorityClass 'urgent' does not exist" in result.stderr and "very-low" in result.stderr  # the choices
    assert not jobsets(control_plane, "nopriority")


def test_a_workload_priority_class_that_does_not_exist_is_refused_and_one_that_does_is_used(control_plane, tmp_path):
    # Kueue makes no Workload for such a JobSet: the run sat `Queued (Suspended)` for ever with no reason.
    cp = control_plane
    custom = client.CustomObjectsApi(cp.client)
    path = write_sweep(tmp_path, "wpc", points=1, duration="10m")
    path.write_text(path.read_text() + "  workload_priority_class: research\n")
    result = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
    assert result.exit_code == ExitCode.REJECTED, result.output
    said = " ".join(result.stderr.split())
    assert "Kueue WorkloadPriorityClass 'research' does not exist" in said and "workload_priority_class" in said
    assert not jobsets(cp, "wpc")
    body = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "WorkloadPriorityClass", "metadata": {"name": "research"}}
    custom.create_cluster_custom_object("kueue.x-k8s.io", "v1beta1", "workloadpriorityclasses", {**body, "value": 100})
    try:
        result = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
        assert result.exit_code == 0 and "1 created" in result.stdout, result.output
        cp.wait_for(
            lambda: {r["phase"] for r in status_rows(path, cp.kubeconfig).values()} <= {"Running", "Succeeded"},
            60,
            "Kueue to admit the run with its priority",
        )
    finally:
        cancel_all(path, cp.kubeconfig)
        wait_gone(cp, "wpc")
        custom.delete_cluster_custom_object("kueue.x-k8s.io", "v1beta1", "workloadpriorityclasses", "research")


def test_a_run_preempted_by_a_higher_priority_run_says_so_and_runs_again_after_it(control_plane, tmp_path):
    # Kueue's eviction read "Queued (Pending): ... insufficient unused quota, 128 more needed", as if the run had
    # never started: nothing said it was preempted, or that it resumes from its checkpoint.
    cp = control_plane
    low = write_sweep(tmp_path, "lowp", points=1, duration="10m")
    low.write_text(low.read_text().replace("priority: medium", "priority: low"))
    high = write_sweep(tmp_path, "highp", points=1, duration="15s")
    high.write_text(high.read_text().replace("priority: medium", "priority: high"))
    try:
        assert cli("sweep", str(low), kubeconfig=cp.kubeconfig).exit_code == 0
        phases = lambda path: [
            (r["phase"], r["reason"], r["message"]) for r in status_rows(path, cp.kubeconfig).values()
        ]  # noqa: E731
        cp.wait_for(lambda: phases(low)[0][0] == "Running", 60, "the low-priority run to start")
        assert cli("sweep", str(high), kubeconfig=cp.kubeconfig).exit_code == 0  # the quota fits one run
        cp.wait_for(lambda: phases(low)[0][:2] == ("Queued", "Preempted"), 60, "Kueue to preempt the low run")
        ((_, _, message),) = phases(low)
        assert message.startswith("evicted by Kueue (Preempted to accommodate a workload"), message
        assert "resumes from its last checkpoint when admitted again, meanwhile: " in message, message
        shown = " ".join(cli("status", str(low), kubeconfig=cp.kubeconfig).stdout.split())
        assert "Queued (Preempted)" in shown and "evicted by Kueue" in shown  # the why column says it
        cp.wait_for(lambda: phases(high)[0][0] == "Succeeded", 90, "the high-priority run to finish")
        cp.wait_for(lambda: phases(low)[0][0] == "Running", 60, "the low run to be admitted again")
    finally:
        for path, name in ((low, "lowp"), (high, "highp")):
            cancel_all(path, cp.kubeconfig)
            wait_gone(cp, name)


def test_a_request_above_the_quota_is_refused_before_anything_is_created(control_plane, tmp_path):
    # A suspended JobSet still gets one Job per slice at once: 100000 slices made ~40,000 Jobs before Kueue spoke.
    cp = control_plane
    custom = client.CustomObjectsApi(cp.client)
    for slices, said in ((3, "flavor 2xv5p-128: google.com/tpu 192 > 128"), (100000, "6,400,000 google.com/tpu")):
        path = write_sweep(tmp_path, "toobig", points=1, slices=slices)  # 3 × 64 chips > the queue's 128
        result = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
        assert result.exit_code == ExitCode.NOT_ADMITTED, result.output
        assert "ClusterQueue 'cluster-queue' can never admit one run" in result.stderr and said in result.stderr
        assert "--slices" in result.stderr  # the hint
        assert not jobsets(cp, "toobig")
    leases = client.CoordinationV1Api(cp.client).list_namespaced_lease("default").items
    assert not [lease for lease in leases if lease.metadata.name.startswith("distillctl-run-")]  # no run claimed

    # A LocalQueue whose ClusterQueue does not exist admits nothing either.
    queue = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue", "metadata": {"name": "orphan-queue"}}
    queue["spec"] = {"clusterQueue": "no-such-cluster-queue"}
    custom.create_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", "default", "localqueues", queue)
    try:
        path = write_sweep(tmp_path, "orphan", points=1, queue="orphan-queue")
        result = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
        assert result.exit_code == ExitCode.NOT_ADMITTED, result.output
        assert "points to ClusterQueue 'no-such-cluster-queue', which does not exist" in result.stderr
        assert not jobsets(cp, "orphan")
    finally:
        custom.delete_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", "default", "localqueues", "orphan-queue")


# --- following: status, restarts, failures, logs, cancel ---------------------------------------------------


def test_status_follows_queueing_restarts_and_failures(control_plane, tmp_path):
    cp = control_plane
    path = write_sweep(tmp_path, "follow", points=3, duration="10m")
    assert cli("sweep", str(path), kubeconfig=cp.kubeconfig).exit_code == 0

    def phases() -> dict[str, str]:
        return {row["jobset"]: row["phase"] for row in status_rows(path, cp.kubeconfig).values()}

    cp.wait_for(lambda: sorted(phases().values()) == ["Queued", "Queued", "Running"], 120, "one running, two queued")
    rows = status_rows(path, cp.kubeconfig)
    queued = next(r for r in rows.values() if r["phase"] == "Queued")
    assert "insufficient" in queued["message"] and "google.com/tpu" in queued["message"]
    running = next(r["jobset"] for r in rows.values() if r["phase"] == "Running")
    # Its log: none yet, and why ("has no pods for slice 0, worker 0" alone sent people looking for pods).
    no_log = cli("logs", str(path), queued["jobset"], kubeconfig=cp.kubeconfig)
    assert no_log.exit_code == ExitCode.USAGE and "it is queued, suspended until Kueue admits it" in no_log.stderr

    # A worker exits 143 (SIGTERM, a preemption): the JobSet restarts.
    cp.wait_for(lambda: any(p.status.phase == "Running" for p in pods_of(cp, running)), 60, "running pods")
    pod = next(p for p in pods_of(cp, running) if p.status.phase == "Running")
    cp.set_pod_exit_code(pod.metadata.name, 143)
    cp.wait_for(lambda: status_rows(path, cp.kubeconfig)[running.rsplit("-", 1)[1]]["restarts"] == 1, 120, "restart 1")

    # After the restart a worker exits 1 (a user error): the JobSet fails at once, no more restarts.
    def fail_one() -> bool:
        pods = [
            p
            for p in pods_of(cp, running)
            if p.status.phase == "Running"
            and not p.metadata.deletion_timestamp
            and (p.metadata.labels or {}).get("jobset.sigs.k8s.io/restart-attempt") == "1"
        ]
        if pods:
            cp.set_pod_exit_code(pods[0].metadata.name, 1)
        return bool(pods)

    cp.wait_for(fail_one, 120, "a running pod of the second attempt")
    cp.wait_for(lambda: status_rows(path, cp.kubeconfig)[running.rsplit("-", 1)[1]]["phase"] == "Failed", 120, "failed")
    row = status_rows(path, cp.kubeconfig)[running.rsplit("-", 1)[1]]
    assert row["restarts"] == 1 and row["reason"]
    # No trainer verdict in the outputs here: the worker's exit says how it ended (JobSet names only its Job).
    assert "exited 1 (UserError)" in row["message"] and "worker" in row["message"], row
    table = cli("status", str(path), kubeconfig=cp.kubeconfig)
    assert f"Failed ({row['reason']})" in table.stdout and "Queued" in table.stdout

    # A failed point is left alone by the next sweep; --retry-failed replaces it.
    again = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
    assert again.exit_code == 0 and "--retry-failed" in again.stdout and "0 created" in again.stdout
    dry = cli("sweep", str(path), "--retry-failed", "--dry-run", "server", kubeconfig=cp.kubeconfig)
    assert dry.exit_code == 0 and "would delete and create again (dry run)" in dry.stdout
    assert running in {j["metadata"]["name"] for j in jobsets(cp, "follow")}  # a dry run deletes nothing
    cancel_all(path, cp.kubeconfig)
    wait_gone(cp, "follow")


def test_sweep_wait_ends_when_every_point_succeeds(control_plane, tmp_path):
    cp = control_plane
    path = write_sweep(tmp_path, "waits", points=2, duration="1s")
    result = cli("sweep", str(path), "--wait", "--timeout", "240", kubeconfig=cp.kubeconfig)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("Succeeded") >= 2
    assert {row["phase"] for row in status_rows(path, cp.kubeconfig).values()} == {"Succeeded"}
    cancel_all(path, cp.kubeconfig)
    wait_gone(cp, "waits")


def test_logs_of_one_worker_and_of_all(control_plane, tmp_path):
    cp = control_plane
    path = write_sweep(tmp_path, "talk", points=1, duration="10m")
    assert cli("sweep", str(path), kubeconfig=cp.kubeconfig).exit_code == 0
    name = jobsets(cp, "talk")[0]["metadata"]["name"]
    cp.wait_for(lambda: sum(p.status.phase == "Running" for p in pods_of(cp, name)) == 32, 120, "32 running pods")
    one = cli("logs", str(path), "0", kubeconfig=cp.kubeconfig)
    assert one.exit_code == 0, one.output
    assert "kl_div_T1" in one.stdout and one.stdout.count("\n") == 3
    every = cli("logs", str(path), name, "--all", kubeconfig=cp.kubeconfig)
    assert every.exit_code == 0 and every.stdout.count("\n") == 32 * 3
    assert "[1/15] " in every.stdout
    worker = cli("logs", str(path), "0", "--slice", "1", "--worker", "7", "--tail", "1", kubeconfig=cp.kubeconfig)
    assert worker.stdout.strip() == "succeeded (exit 0: done)"
    refused = cli("logs", str(path), "0", "--all", "--follow", kubeconfig=cp.kubeconfig)
    assert refused.exit_code == ExitCode.USAGE and "--follow follows one worker" in refused.stderr

    # --follow streams the running pod's log through the apiserver and kwok, and stays attached until stopped.
    command = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "logs",
        str(path),
        "0",
        "--follow",
        "--kubeconfig",
        str(cp.kubeconfig),
    ]
    # A shell runs background jobs with SIGINT ignored, and children inherit that: give the follower the default
    # disposition, as a terminal would, so that its Ctrl-C handling is what is tested.
    follower = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = [follower.stdout.readline() for _ in range(3)]
    assert lines[0].startswith("training") and "kl_div_T1" in lines[1], lines
    assert follower.poll() is None  # still following
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    cancel_all(path, cp.kubeconfig)
    wait_gone(cp, "talk")


def test_cancel_deletes_one_sweeps_jobsets_only(control_plane, tmp_path):
    cp = control_plane
    mine, theirs = (
        write_sweep(tmp_path, "mine", points=2, duration="10m"),
        write_sweep(tmp_path, "theirs", points=1, duration="11m"),  # not one of mine's points (those are shared)
    )
    assert cli("sweep", str(mine), kubeconfig=cp.kubeconfig).exit_code == 0
    assert cli("sweep", str(theirs), kubeconfig=cp.kubeconfig).exit_code == 0
    one = jobsets(cp, "mine")[0]["metadata"]["labels"]["distillctl.dev/run-id"]
    lonely = cli("cancel", str(mine), one, "--yes", "--timeout", "5", kubeconfig=cp.kubeconfig)
    assert lonely.exit_code == ExitCode.USAGE and "--timeout applies to --wait" in lonely.stderr
    # --wait: "deleted" once the JobSet and its pods are gone (the foreground deletion has ended), not before.
    partial = cli("cancel", str(mine), one, "--yes", "--wait", "--timeout", "120", kubeconfig=cp.kubeconfig)
    assert partial.exit_code == 0 and partial.stdout == f"deleted mine-{one}\n", partial.output
    assert len(jobsets(cp, "mine", deleting=True)) == 1
    refused = cli("cancel", str(mine), kubeconfig=cp.kubeconfig)  # no terminal to ask on: must pass --yes
    assert refused.exit_code == ExitCode.USAGE and "--yes" in refused.stderr
    # Without --wait the command returns while the pods stop, and says so.
    result = cli("cancel", str(mine), "--yes", "--output", "json", kubeconfig=cp.kubeconfig)
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert record["deleted"].startswith("mine-") and record["deleted"] != f"mine-{one}"
    assert isinstance(record["gone"], bool)
    if not record["gone"]:  # the deletion may end before we look; what must not be is a JobSet not being deleted
        assert jobsets(cp, "mine") == []
    wait_gone(cp, "mine")
    assert len(jobsets(cp, "theirs")) == 1
    rows = status_rows(mine, cp.kubeconfig)
    assert {r["phase"] for r in rows.values()} == {"Pending"}
    cancel_all(theirs, cp.kubeconfig)
    wait_gone(cp, "theirs")


def test_a_namespace_that_does_not_exist_is_named_not_its_missing_queue(control_plane, tmp_path):
    path = write_sweep(tmp_path, "no-ns")
    result = cli("sweep", str(path), "-n", "no-such-namespace", "--dry-run=server", kubeconfig=control_plane.kubeconfig)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "namespace 'no-such-namespace' does not exist" in result.stderr and "LocalQueue" not in result.stderr
    # Without a queue the first create answered a raw "404 namespaces ... not found", exit 1.
    unqueued = write_sweep(tmp_path, "no-ns-q", queue="")
    unqueued.write_text(unqueued.read_text().replace("  queue: \n", ""))
    result = cli("sweep", str(unqueued), "-n", "no-such-namespace", kubeconfig=control_plane.kubeconfig)
    assert result.exit_code == ExitCode.USAGE and "namespace 'no-such-namespace' does not exist" in result.stderr
    # Reading commands said every run was "not created" (and `cancel` that nothing ran), exit 0, on a typo of -n.
    for command in (["status", str(path)], ["cancel", str(path), "--yes"]):
        result = cli(*command, "-n", "no-such-namespace", kubeconfig=control_plane.kubeconfig)
        assert result.exit_code == ExitCode.USAGE, (command, result.output)
        assert "namespace 'no-such-namespace' does not exist" in result.stderr, (command, result.output)
    # `results` reads storage whatever the cluster says, and says why its statuses come from there.
    result = cli("results", str(path), "-n", "no-such-namespace", kubeconfig=control_plane.kubeconfig)
    assert "warning[statuses_from_outputs]" in result.stderr and "'no-such-namespace' does not exist" in result.stderr


def test_a_queue_changed_in_the_file_says_the_existing_runs_stay_where_they_are(control_plane, tmp_path):
    # Editing target.queue to move a stuck grid: `sweep` said "1 unchanged" and nothing moved, without a word.
    cp = control_plane
    custom = client.CustomObjectsApi(cp.client)
    queue = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue", "metadata": {"name": "second-queue"}}
    queue["spec"] = {"clusterQueue": "cluster-queue"}
    custom.create_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", "default", "localqueues", queue)
    path = write_sweep(tmp_path, "moved", points=1, duration="10m")
    try:
        assert cli("sweep", str(path), kubeconfig=cp.kubeconfig).exit_code == 0
        path.write_text(path.read_text().replace("queue: multislice-queue", "queue: second-queue"))
        again = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
        assert again.exit_code == 0 and "0 created, 1 unchanged" in again.stdout, again.output
        assert "warning[queue_changed]" in again.stderr and "1 in 'multislice-queue'" in again.stderr, again.stderr
        from orchestrator.cli import console

        console._warned.clear()  # once per process: this test's `sweep` ran in the same one
        shown = cli("status", str(path), kubeconfig=cp.kubeconfig)
        assert "warning[queue_changed]" in shown.stderr
        # A label given on the command line (cost attribution) does not reach the running run either: said too.
        labelled = cli("sweep", str(path), "--label", "team=distill", kubeconfig=cp.kubeconfig)
        assert labelled.exit_code == 0 and "0 created, 1 unchanged" in labelled.stdout, labelled.output
        said = " ".join(labelled.stderr.split())
        assert "warning[labels_changed]" in said and "team: (none) instead of 'distill'" in said, said
        assert "kubectl label jobsets -l distillctl.dev/sweep=moved" in said
    finally:
        cancel_all(path, cp.kubeconfig)
        wait_gone(cp, "moved")
        custom.delete_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", "default", "localqueues", "second-queue")


def test_a_secret_the_pods_need_that_does_not_exist_is_refused_before_anything_is_created(control_plane, tmp_path):
    # Every pod sat in CreateContainerConfigError once Kueue had admitted the run, its quota held for nothing.
    cp = control_plane
    path = write_sweep(tmp_path, "secretive", points=1)
    path.write_text(path.read_text() + "  secret_env: {HF_TOKEN: {secret: hf-token, key: token}}\n")
    result = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
    assert result.exit_code == ExitCode.REJECTED, result.output
    assert "Secret 'hf-token' (target.secret_env: HF_TOKEN) does not exist in namespace 'default'" in result.stderr
    assert "kubectl create secret generic hf-token" in result.stderr and not jobsets(cp, "secretive")
    core = client.CoreV1Api(cp.client)
    # A Secret without the key: the same CreateContainerConfigError ("couldn't find key token"), pod after pod.
    core.create_namespaced_secret("default", {"metadata": {"name": "hf-token"}, "stringData": {"hf_token": "x"}})
    try:
        keyless = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
        assert keyless.exit_code == ExitCode.REJECTED, keyless.output
        assert "has no key for target.secret_env HF_TOKEN (token); its keys: hf_token" in keyless.stderr
        assert not jobsets(cp, "secretive")
        core.patch_namespaced_secret("hf-token", "default", {"stringData": {"token": "x"}})
        dry = cli("sweep", str(path), "--dry-run=server", kubeconfig=cp.kubeconfig)
        assert dry.exit_code == 0 and "would create (server)" in dry.stdout, dry.output
    finally:
        core.delete_namespaced_secret("hf-token", "default")


def test_runs_of_the_same_file_under_another_image_are_not_orphans(control_plane, tmp_path):
    # `sweep --image B` after `sweep` with the file's image A called A's live grid orphans, and
    # `cancel --orphans` would have deleted it.
    cp = control_plane
    path = write_sweep(tmp_path, "builds", points=1, duration="10m")
    other = "example.invalid/distillctl-trainer:other"
    try:
        assert cli("sweep", str(path), kubeconfig=cp.kubeconfig).exit_code == 0
        from orchestrator.cli import console

        console._warned.clear()  # once per process
        second = cli("sweep", str(path), "--image", other, kubeconfig=cp.kubeconfig)
        assert second.exit_code == 0 and "1 created" in second.stdout, second.output
        assert "orphaned_runs" not in second.stderr and "warning[runs_of_another_image]" in second.stderr
        assert "example.invalid/distillctl-trainer:test" in second.stderr
        kept = cli("cancel", str(path), "--image", other, "--orphans", "--yes", kubeconfig=cp.kubeconfig)
        assert kept.exit_code == 0 and "no orphaned JobSets" in kept.stdout, kept.output
        assert len(jobsets(cp, "builds")) == 2
    finally:
        cli("cancel", str(path), "--image", other, "--yes", kubeconfig=cp.kubeconfig)
        cancel_all(path, cp.kubeconfig)
        wait_gone(cp, "builds")
