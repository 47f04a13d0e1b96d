"""What a real GKE TPU cluster does that the happy path does not: pods that cannot start, runs shared between sweeps.

Pure parts (reading pod status) are tested on Kubernetes' own client objects; the rest on the local control plane
(tests/cluster): the real scheduler for Unschedulable, kwok's `pod-waiting` stage for the kubelet's waiting reasons,
and Events written through the API server as the kubelet writes them.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kubernetes import client

from distillspec.contract import StuckReason
from orchestrator.backends.kubernetes.backend import needs_events, pod_problems, stuck_by_jobset
from orchestrator.exit_codes import ExitCode
from tests.test_launch_kubernetes import cancel_all, cli, first_worker_running, jobsets, pods_of, status_rows, wait_gone

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
  tpu_type: {tpu_type}
  slices: 1
  image: example.invalid/distillctl-trainer:test
  output_base: {base}
{extra}"""

PULL_NOT_FOUND = (
    'Back-off pulling image "example.invalid/distillctl-trainer:test": ErrImagePull: rpc error: code = NotFound '
    "desc = failed to pull and unpack image: not found"
)


def write(tmp_path: Path, name: str, *, temperatures=(1.0,), tpu_type="v5p-128", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    text = SWEEP.format(
        name=name, temperatures=list(temperatures), tpu_type=tpu_type, base=tmp_path / "runs", extra=extra
    )
    path.write_text(text)
    return path


def annotations(**values: str) -> str:
    return "  pod_annotations: " + json.dumps(values) + "\n"


# --- reading pod status (pure) ----------------------------------------------------------------------------------


def pod(name="p-0", *, node="n-0", conditions=(), waiting=None, uid="u-0") -> dict:
    """A Pending pod as the API serves it (JSON)."""
    statuses = []
    if waiting:
        statuses = [{"name": "trainer", "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}}}]
    return {
        "metadata": {"name": name, "uid": uid, "labels": {"jobset.sigs.k8s.io/jobset-name": "js"}},
        "spec": {"containers": [], **({"nodeName": node} if node else {})},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions],
            "containerStatuses": statuses,
        },
    }


def event(reason: str, message: str, minute: int) -> dict:
    return {
        "metadata": {"name": f"e{minute}"},
        "involvedObject": {"kind": "Pod", "uid": "u-0"},
        "reason": reason,
        "message": message,
        "type": "Warning",
        "lastTimestamp": f"2026-01-01T00:{minute:02d}:00Z",
    }


def test_pod_problems_read_scheduler_kubelet_and_events():
    unschedulable = pod(node=None, conditions=[("PodScheduled", "False", "Unschedulable", "0/4 nodes are available")])
    assert [(p.reason, p.message) for p in pod_problems(unschedulable)] == [
        ("Unschedulable", "0/4 nodes are available")
    ]
    secret = pod(waiting=("CreateContainerConfigError", 'secret "hf" not found'))
    assert [(p.reason, p.pod) for p in pod_problems(secret)] == [("CreateContainerConfigError", "p-0")]
    # Starting normally: nothing to say, unless a warning Event explains the wait (the latest one).
    creating = pod(waiting=("ContainerCreating", ""))
    assert pod_problems(creating) == ()
    events = [event("FailedMount", "old", 1), event("FailedMount", 'secret "hf" not found', 2), event("BackOff", "", 3)]
    assert [(p.reason, p.message) for p in pod_problems(creating, events)] == [("FailedMount", 'secret "hf" not found')]
    # By JobSet, with Events only where a bound pod waits without a reason of its own; a pod being torn down is not
    # the next attempt's problem.
    assert not needs_events([secret, unschedulable]) and needs_events([creating])
    leaving = {**secret, "metadata": {**secret["metadata"], "deletionTimestamp": "2026-01-01T00:05:00Z"}}
    assert stuck_by_jobset([creating, leaving], events) == {"js": (pod_problems(creating, events)[0],)}


# --- on the control plane -----------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_pods_that_cannot_start_say_why_and_wait_stops_on_what_will_not_heal(control_plane, tmp_path):
    cp = control_plane
    queue = "  queue: multislice-queue\n"
    pull = write(
        tmp_path,
        "pull",
        extra=queue
        + annotations(
            **{"distillctl.dev/waiting-reason": "ImagePullBackOff", "distillctl.dev/waiting-message": PULL_NOT_FOUND}
        ),
    )
    mount = write(
        tmp_path, "mount", extra=queue + annotations(**{"distillctl.dev/waiting-reason": "ContainerCreating"})
    )
    nowhere = write(tmp_path, "nowhere", tpu_type="v6e-32")  # no v6e 4x8 node pool: the scheduler has no node
    try:
        for path in (mount, nowhere):
            result = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
            assert result.exit_code == 0, result.output

        # --wait stops as soon as the image pull is known to fail, naming it (not at the timeout).
        started = time.monotonic()
        result = cli("sweep", str(pull), "--wait", "--timeout", "240", kubeconfig=cp.kubeconfig)
        assert result.exit_code == ExitCode.FAILED, result.output
        assert "cannot start" in result.stderr and "ImagePullBackOff" in result.stderr and "not found" in result.stderr
        assert time.monotonic() - started < 120
        (row,) = status_rows(pull, cp.kubeconfig).values()
        assert (row["phase"], row["reason"]) == ("Stuck", StuckReason.IMAGE_PULL_BACK_OFF)
        table = cli("status", str(pull), kubeconfig=cp.kubeconfig)
        assert "Stuck (ImagePullBackOff)" in table.stdout and "why" in table.stdout

        # Unschedulable, in the real scheduler's words; it may heal (capacity, autoscaling), so it does not end --wait.
        def unschedulable() -> dict:
            (row,) = status_rows(nowhere, cp.kubeconfig).values()
            return row if row["phase"] == "Stuck" else None

        row = cp.wait_for(unschedulable, 120, "the scheduler to give up on the v6e-32 pods", interval=2)
        assert row["reason"] == StuckReason.UNSCHEDULABLE and "nodes are available" in row["message"], row

        # A pod still creating its containers: the kubelet's FailedMount Event says why.
        name = jobsets(cp, "mount")[0]["metadata"]["name"]
        cp.wait_for(
            lambda: pods_of(cp, name) and all(p.status.container_statuses for p in pods_of(cp, name)),
            120,
            "pods",
            interval=1,
        )
        (row,) = status_rows(mount, cp.kubeconfig).values()
        assert row["phase"] == "Running"  # starting normally, as far as anyone can tell
        first = pods_of(cp, name)[0]
        now = datetime.datetime.now(datetime.timezone.utc)
        client.CoreV1Api(cp.client).create_namespaced_event(
            "default",
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name=f"{first.metadata.name}."),
                involved_object=client.V1ObjectReference(
                    kind="Pod", name=first.metadata.name, namespace="default", uid=first.metadata.uid, api_version="v1"
                ),
                reason="FailedMount",
                message='MountVolume.SetUp failed for volume "hf" : secret "hf" not found',
                type="Warning",
                source=client.V1EventSource(component="kubelet", host=first.spec.node_name),
                first_timestamp=now,
                last_timestamp=now,
                count=1,
            ),
        )
        (row,) = status_rows(mount, cp.kubeconfig).values()
        assert (row["phase"], row["reason"]) == ("Stuck", "FailedMount") and 'secret "hf" not found' in row["message"]
    finally:
        for path in (pull, mount, nowhere):
            cancel_all(path, cp.kubeconfig)
        for sweep in ("pull", "mount", "nowhere"):
            wait_gone(cp, sweep)


@pytest.mark.cluster
def test_runs_are_owned_by_run_id_across_sweeps_and_orphans_are_listed_and_removed(control_plane, tmp_path):
    cp = control_plane
    extra = "  queue: multislice-queue\n" + annotations(**{"distillctl.dev/run-duration": "10m"})
    alpha = write(tmp_path, "alpha", temperatures=(1.0, 2.0), extra=extra)
    beta = write(tmp_path, "beta", temperatures=(2.0, 3.0), extra=extra)  # shares the point temperature=2.0
    try:
        assert cli("sweep", str(alpha), kubeconfig=cp.kubeconfig).exit_code == 0
        rows = status_rows(alpha, cp.kubeconfig)
        shared = next(run_id for run_id, row in rows.items() if row["axis_values"]["loss.temperature"] == 2.0)

        # Sweep beta finds the shared run under alpha's JobSet: it creates only its own point, never a second.
        result = cli("sweep", str(beta), kubeconfig=cp.kubeconfig)
        assert result.exit_code == 0 and "1 created, 1 unchanged" in result.stdout, result.output
        assert "owned by sweep alpha" in result.stdout
        assert f"alpha-{shared}" in result.stdout and f"beta-{shared}" not in result.stdout  # the JobSet that is
        assert [j["metadata"]["labels"]["distillctl.dev/run-id"] for j in jobsets(cp, "beta")] != [shared]
        row = status_rows(beta, cp.kubeconfig)[shared]
        assert row["owner_sweep"] == "alpha" and row["phase"] != "Pending", row
        assert "owned by sweep alpha" in cli("status", str(beta), kubeconfig=cp.kubeconfig).stdout

        # Beta's logs of the shared run are those of alpha's JobSet, which runs it (and stderr says so).
        name = f"alpha-{shared}"
        cp.wait_for(lambda: first_worker_running(cp, name), 120, "slice 0, worker 0 running")
        result = cli("logs", str(beta), shared, "--tail", "1", kubeconfig=cp.kubeconfig)
        assert result.exit_code == 0 and result.stdout.strip() == "succeeded (exit 0: done)", result.output
        assert f"owned by sweep alpha: log of {name}" in result.stderr, result.output

        # Cancelling beta leaves alpha's run alone, and says so.
        result = cli("cancel", str(beta), "--yes", kubeconfig=cp.kubeconfig)
        assert result.exit_code == 0 and result.stdout.startswith(("deleted beta-", "deleting beta-")), result.output
        assert len(result.stdout.splitlines()) == 1, result.output
        assert f"alpha-{shared}" in result.stderr and "owned by sweep alpha" in result.stderr
        wait_gone(cp, "beta")
        assert len(jobsets(cp, "alpha")) == 2

        # A failed run whose JobSet is gone (TTL) is failed by its outputs: not created again without --retry-failed.
        (own,) = [run_id for run_id in status_rows(beta, cp.kubeconfig) if run_id != shared]
        folder = tmp_path / "runs" / own
        folder.mkdir(parents=True, exist_ok=True)
        verdict = {
            "status": "failed",
            "exit_code": 1,
            "step": 3,
            "total_steps": 10,
            "updated_at": "2026-01-01T00:00:00Z",
        }
        (folder / "summary.json").write_text(json.dumps(verdict))
        result = cli("sweep", str(beta), kubeconfig=cp.kubeconfig)
        assert result.exit_code == 0 and "0 created" in result.stdout and "--retry-failed" in result.stdout
        assert jobsets(cp, "beta") == []
        dry = cli("sweep", str(beta), "--retry-failed", "--dry-run", "server", kubeconfig=cp.kubeconfig)
        assert dry.exit_code == 0 and "would delete and create again (dry run)" in dry.stdout, dry.output

        # Alpha's file loses the shared point: its JobSet is an orphan, listed by status and removed by --orphans.
        alpha.write_text(alpha.read_text().replace("[1.0, 2.0]", "[1.0]"))
        status = cli("status", str(alpha), kubeconfig=cp.kubeconfig)
        assert (
            status.exit_code == 0 and f"alpha-{shared}" in status.stderr and "--orphans` deletes them" in status.stderr
        )
        result = cli("cancel", str(alpha), "--orphans", "--yes", kubeconfig=cp.kubeconfig)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() in (f"deleted alpha-{shared}", f"deleting alpha-{shared} (its pods are stopping)")
        cp.wait_for(lambda: len(jobsets(cp, "alpha", deleting=True)) == 1, 120, "the orphan deleted", interval=1)
        again = cli("cancel", str(alpha), "--orphans", "--yes", kubeconfig=cp.kubeconfig)
        assert again.exit_code == 0 and "no orphaned JobSets" in again.stdout
    finally:
        for path in (alpha, beta):
            cancel_all(path, cp.kubeconfig)
        for sweep in ("alpha", "beta"):
            wait_gone(cp, sweep)


@pytest.mark.cluster
def test_preemption_restarts_for_free_and_a_plain_sigterm_spends_max_restarts(control_plane, tmp_path):
    cp = control_plane
    extra = "  queue: multislice-queue\n  max_restarts: 0\n" + annotations(**{"distillctl.dev/run-duration": "10m"})
    path = write(tmp_path, "preempt", extra=extra)
    try:
        assert cli("sweep", str(path), kubeconfig=cp.kubeconfig).exit_code == 0
        name = jobsets(cp, "preempt")[0]["metadata"]["name"]

        def running_pod(attempt: int):
            pods = [
                p
                for p in pods_of(cp, name)
                if p.status.phase == "Running"
                and not p.metadata.deletion_timestamp
                and (p.metadata.labels or {}).get("jobset.sigs.k8s.io/restart-attempt") == str(attempt)
            ]
            return pods[0] if pods else None

        def restarted(count: int):
            status = jobsets(cp, "preempt")[0].get("status") or {}
            return status if status.get("restarts") == count else None

        # A worker stopped by a disruption (its node shut down: a spot VM reclaimed) carries DisruptionTarget and
        # exits 143: a free restart.
        pod = cp.wait_for(lambda: running_pod(0), 120, "a running pod", interval=1)
        cp.set_pod_exit_code(pod.metadata.name, 143, disruption="TerminationByKubelet")
        status = cp.wait_for(lambda: restarted(1), 120, "restart 1", interval=1)
        assert not status.get("restartsCountTowardsMax"), status

        # A plain exit 143 (SIGTERM without DisruptionTarget) spends the budget like any retryable failure, so a
        # trainer that keeps exiting 143 is bounded: with max_restarts 0 the run fails.
        pod = cp.wait_for(lambda: running_pod(1), 120, "a running pod of attempt 1", interval=1)
        cp.set_pod_exit_code(pod.metadata.name, 143)
        row = cp.wait_for(
            lambda: next(r for r in status_rows(path, cp.kubeconfig).values() if r["phase"] == "Failed"),
            120,
            "the run to fail",
            interval=2,
        )
        assert row["reason"] == "ReachedMaxRestarts" and row["restarts"] == 1, row
    finally:
        cancel_all(path, cp.kubeconfig)
        wait_gone(cp, "preempt")


KNOBS = """\
  capacity: spot
  node_selector: {example.com/pool: distill}
  tolerations: [{key: example.com/dedicated, operator: Exists, effect: NoSchedule}]
  resources: {requests: {cpu: "2", memory: 8Gi}, limits: {memory: 16Gi}}
  dev_shm_size: 4Gi
  host_network: false
  volumes: [{name: scratch, emptyDir: {sizeLimit: 1Gi}}]
  volume_mounts: [{name: scratch, mountPath: /scratch}]
"""


@pytest.mark.cluster
def test_the_platform_knobs_reach_the_pods_through_the_api_server_and_the_jobset_controller(control_plane, tmp_path):
    cp = control_plane
    path = write(tmp_path, "knobs", tpu_type="v5p-8", extra=KNOBS)  # no queue: a warning, and no Kueue gate
    try:
        result = cli("sweep", str(path), kubeconfig=cp.kubeconfig)
        assert result.exit_code == 0, result.output
        assert "no_queue" in result.stderr and "bypass Kueue" in result.stderr
        name = jobsets(cp, "knobs")[0]["metadata"]["name"]
        cp.wait_for(lambda: pods_of(cp, name), 120, "the JobSet controller to create the pod", interval=1)
        (created,) = pods_of(cp, name)
        spec = created.spec
        assert spec.node_selector["cloud.google.com/gke-spot"] == "true"
        assert spec.node_selector["example.com/pool"] == "distill"
        assert {(t.key, t.effect) for t in spec.tolerations} >= {
            ("google.com/tpu", None),
            ("cloud.google.com/gke-spot", "NoSchedule"),
            ("example.com/dedicated", "NoSchedule"),
        }
        volumes = {v.name: v for v in spec.volumes}
        assert volumes["dshm-2"].empty_dir.medium == "Memory" and volumes["dshm-2"].empty_dir.size_limit == "4Gi"
        assert volumes["scratch"].empty_dir.size_limit == "1Gi"
        (container,) = spec.containers
        assert {(m.name, m.mount_path) for m in container.volume_mounts} >= {
            ("dshm-2", "/dev/shm"),
            ("scratch", "/scratch"),
        }
        assert container.resources.limits == {"google.com/tpu": "4", "memory": "16Gi"}
        assert container.resources.requests == {"cpu": "2", "memory": "8Gi", "google.com/tpu": "4"}
        assert not spec.host_network
    finally:
        cancel_all(path, cp.kubeconfig)
        wait_gone(cp, "knobs")


@pytest.mark.cluster
def test_two_sweeps_racing_for_a_shared_point_create_one_jobset_and_claims_are_released(
    control_plane, tmp_path, monkeypatch
):
    from distillspec.sweep import load_sweep
    from orchestrator.backends import ClusterAccess
    from orchestrator.backends.kubernetes import backend as kube
    from orchestrator.core.expansion import expand

    cp = control_plane
    leases = client.CoordinationV1Api(cp.client)
    custom = client.CustomObjectsApi(cp.client)
    extra = annotations(**{"distillctl.dev/run-duration": "10m"})
    sweeps = {name: write(tmp_path, name, temperatures=(2.0,), tpu_type="v5p-8", extra=extra) for name in ("ra", "rb")}
    expansions = {name: expand(load_sweep(path)) for name, path in sweeps.items()}
    backends = {
        name: kube.KubernetesBackend(e.sweep.target, ClusterAccess(kubeconfig=str(cp.kubeconfig)))
        for name, e in expansions.items()
    }
    (run_id,) = {run.run_id for run in expansions["ra"].runs}
    assert {run.run_id for run in expansions["rb"].runs} == {run_id}  # one point, shared by both sweeps

    def submit(name: str) -> str:
        return backends[name].submit(expansions[name].runs, expansions[name])[run_id]

    def run_jobsets(*, deleting: bool = False) -> list[dict]:
        listing = custom.list_namespaced_custom_object(
            "jobset.x-k8s.io", "v1alpha2", "default", "jobsets", label_selector=f"distillctl.dev/run-id={run_id}"
        )
        return [j for j in listing["items"] if deleting or not j["metadata"].get("deletionTimestamp")]

    def claim() -> client.V1Lease | None:
        try:
            return leases.read_namespaced_lease(kube.claim_name(run_id), "default")
        except client.ApiException as e:
            assert e.status == 404
            return None

    try:
        # Both sweeps create at the same moment: the claim lets exactly one of them create a JobSet.
        barrier = threading.Barrier(2)

        def racing(name: str) -> str:
            barrier.wait()
            return submit(name)

        with ThreadPoolExecutor(2) as pool:
            outcomes = dict(zip(sweeps, pool.map(racing, sweeps), strict=True))
        assert sorted(outcomes.values()) == ["created", "exists"], outcomes
        winner = next(name for name, outcome in outcomes.items() if outcome == "created")
        loser = next(name for name in sweeps if name != winner)
        (jobset,) = run_jobsets()
        assert jobset["metadata"]["labels"]["distillctl.dev/sweep"] == winner
        held = claim()
        assert held.spec.holder_identity == winner
        assert [o.uid for o in held.metadata.owner_references] == [jobset["metadata"]["uid"]]
        assert submit(loser) == "exists" and len(run_jobsets()) == 1  # and again later, still one

        # Cancelling the winner deletes its JobSet and releases its claim at once (not only through the garbage
        # collector, which waits for the JobSet to be gone).
        backends[winner].delete(expansions[winner].runs)
        assert claim() is None
        cp.wait_for(lambda: not run_jobsets(deleting=True), 120, "the winner's JobSet gone", interval=1)
        assert submit(loser) == "created"
        assert [j["metadata"]["labels"]["distillctl.dev/sweep"] for j in run_jobsets()] == [loser]
        assert claim().spec.holder_identity == loser
        backends[loser].delete(expansions[loser].runs)
        cp.wait_for(
            lambda: claim() is None and not run_jobsets(deleting=True), 120, "the loser's run deleted", interval=1
        )

        # A sweep killed between claiming and creating leaves an unowned claim: live for a grace period, then stale.
        body = {"metadata": {"name": kube.claim_name(run_id)}, "spec": {"holderIdentity": "ghost"}}
        leases.create_namespaced_lease("default", body)
        assert submit(winner) == "exists" and not run_jobsets()
        # Meanwhile the run is not "not created" with nothing said: status names the claimer and the takeover, and
        # `sweep` waits for it instead of saying it exists.
        row = status_rows(sweeps[winner], cp.kubeconfig)[run_id]
        assert (row["phase"], row["reason"], row["owner_sweep"]) == ("Pending", "Claimed", "ghost"), row
        assert re.search(r"claimed \d+ s ago by sweep ghost, .* takes the point over in \d+ s", row["message"]), row
        swept = cli("sweep", str(sweeps[winner]), kubeconfig=cp.kubeconfig)
        assert swept.exit_code == 0, swept.output
        assert re.search(rf"waiting run {run_id} .*claimed \d+ s ago by sweep ghost", " ".join(swept.output.split()))
        assert "0 created, 1 unchanged" in swept.output and not run_jobsets()
        monkeypatch.setattr(kube, "CLAIM_GRACE_SECONDS", 0)
        assert submit(winner) == "created" and claim().spec.holder_identity == winner

        # A sweep killed between creating its JobSet and handing it the claim: its next run owns the claim,
        # so the claim goes with the JobSet and never holds the run for nobody.
        leases.patch_namespaced_lease(kube.claim_name(run_id), "default", {"metadata": {"ownerReferences": None}})
        assert not claim().metadata.owner_references
        assert submit(winner) == "exists"
        (jobset,) = run_jobsets()
        assert [o.uid for o in claim().metadata.owner_references] == [jobset["metadata"]["uid"]]
    finally:
        for name, backend in backends.items():
            backend.delete(expansions[name].runs)
            backend.close()
        cp.wait_for(lambda: not run_jobsets(), 120, "the race's JobSets deleted", interval=1)
        try:  # an unowned claim (a failure midway) has no JobSet to be collected with
            leases.delete_namespaced_lease(kube.claim_name(run_id), "default")
        except client.ApiException as e:
            assert e.status == 404  # collected with its JobSet already
