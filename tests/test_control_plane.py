"""End-to-end tests against the local control plane (tests/cluster).

JobSets here are written by hand in the shape XPK gives a multi-host TPU
workload (xpk src/xpk/commands/workload.py): replicatedJob `slice-job` with one
Job per slice, Indexed completions = VMs per slice, backoffLimit 0,
exclusive placement per node pool, the queue-name label, XPK's
podFailurePolicy and JobSet failurePolicy.
"""

from __future__ import annotations

import stat
import time
from collections import defaultdict

import pytest

from tests.cluster import RUN_DURATION_ANNOTATION, ComponentError, ControlPlane

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NS = "default"
GROUP, VERSION = "jobset.x-k8s.io", "v1alpha2"
KUEUE = ("kueue.x-k8s.io", "v1beta2")
CONTAINER = "jax-tpu"
# XPK: restart (rather than fail) on exit codes 42 and 127-255; others fail the Job.
RESTART_EXIT_CODES = [42, *range(127, 256)]


def tpu_jobset(
    name: str,
    *,
    slices: int = 2,
    vms_per_slice: int = 16,
    chips_per_vm: int = 4,
    max_restarts: int = 3,
    pod_annotations: dict[str, str] | None = None,
    queue: str = "multislice-queue",
) -> dict:
    """A v5p-128 multislice JobSet shaped like the one XPK renders."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "JobSet",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"kueue.x-k8s.io/queue-name": queue, "xpk.google.com/workload": name},
            "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"},
        },
        "spec": {
            "failurePolicy": {
                "rules": [{"action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}],
                "maxRestarts": max_restarts,
            },
            "replicatedJobs": [
                {
                    "name": "slice-job",
                    "replicas": slices,
                    "template": {
                        "spec": {
                            "parallelism": vms_per_slice,
                            "completions": vms_per_slice,
                            "completionMode": "Indexed",
                            "backoffLimit": 0,
                            "podFailurePolicy": {
                                "rules": [
                                    {
                                        "action": "FailJob",
                                        "onPodConditions": [],
                                        "onExitCodes": {
                                            "containerName": CONTAINER,
                                            "operator": "NotIn",
                                            "values": RESTART_EXIT_CODES,
                                        },
                                    }
                                ]
                            },
                            "template": {
                                "metadata": {
                                    "labels": {"xpk.google.com/workload": name},
                                    "annotations": dict(pod_annotations or {}),
                                },
                                "spec": {
                                    "restartPolicy": "Never",
                                    "nodeSelector": {
                                        "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                        "cloud.google.com/gke-tpu-topology": "4x4x4",
                                    },
                                    "priorityClassName": "medium",
                                    "hostNetwork": True,
                                    "dnsPolicy": "ClusterFirstWithHostNet",
                                    "terminationGracePeriodSeconds": 30,
                                    "tolerations": [
                                        {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}
                                    ],
                                    "containers": [
                                        {
                                            "name": CONTAINER,
                                            "image": "us-docker.pkg.dev/example/distillctl/trainer:test",
                                            "command": ["bash", "-c", "python -m trainer.distill"],
                                            "resources": {"limits": {"google.com/tpu": chips_per_vm}},
                                        }
                                    ],
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


# ----------------------------------------------------------------- helpers


class Cluster:
    """Small helpers over the control plane for these tests."""

    def __init__(self, cp: ControlPlane) -> None:
        from kubernetes import client

        self.cp = cp
        self.core = client.CoreV1Api(cp.client)
        self.custom = client.CustomObjectsApi(cp.client)
        self.created: list[str] = []

    def create_jobset(self, body: dict) -> dict:
        self.created.append(body["metadata"]["name"])
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "jobsets", body)

    def jobset(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, "jobsets", name)

    def condition(self, obj: dict, type_: str) -> dict | None:
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return c
        return None

    def wait_jobset_condition(self, name: str, type_: str, timeout: float = 120) -> dict:
        def check():
            js = self.jobset(name)
            c = self.condition(js, type_)
            return js if c and c["status"] == "True" else None

        return self.cp.wait_for(check, timeout, f"JobSet {name} condition {type_}")

    def workload(self, jobset: str) -> dict | None:
        items = self.custom.list_namespaced_custom_object(*KUEUE, NS, "workloads")["items"]
        for wl in items:
            if any(o["kind"] == "JobSet" and o["name"] == jobset for o in wl["metadata"].get("ownerReferences", [])):
                return wl
        return None

    def wait_admitted(self, jobset: str, timeout: float = 60) -> dict:
        def check():
            wl = self.workload(jobset)
            c = wl and self.condition(wl, "Admitted")
            return wl if c and c["status"] == "True" else None

        return self.cp.wait_for(check, timeout, f"Kueue to admit JobSet {jobset}")

    def pods(self, jobset: str, restart_attempt: int | None = None) -> list:
        selector = f"jobset.sigs.k8s.io/jobset-name={jobset}"
        if restart_attempt is not None:
            selector += f",jobset.sigs.k8s.io/restart-attempt={restart_attempt}"
        return self.core.list_namespaced_pod(NS, label_selector=selector).items

    def wait_pods_running(self, jobset: str, count: int, restart_attempt: int | None = None, timeout: float = 120):
        def check():
            pods = [
                p
                for p in self.pods(jobset, restart_attempt)
                if p.status.phase == "Running" and not p.metadata.deletion_timestamp
            ]
            return pods if len(pods) >= count else None

        return self.cp.wait_for(check, timeout, f"{count} running pods of JobSet {jobset}")

    def node_pool(self, node: str) -> str:
        return self.core.read_node(node).metadata.labels["cloud.google.com/gke-nodepool"]

    def cleanup(self) -> None:
        """Delete the JobSets a test made; wait until Kueue has released their quota."""
        for name in self.created:
            try:
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, NS, "jobsets", name, propagation_policy="Foreground"
                )
            except Exception:  # noqa: BLE001 - already gone
                pass

        def released():
            left = [n for n in self.created if self.workload(n) is not None]
            left += [p.metadata.name for n in self.created for p in self.pods(n)]
            return not left

        self.cp.wait_for(released, 120, "deleted JobSets' workloads and pods to go away")


@pytest.fixture
def cluster(control_plane):
    c = Cluster(control_plane)
    yield c
    c.cleanup()
    control_plane.check()


# ------------------------------------------------------------------- tests


def test_fake_tpu_capacity(cluster):
    """Node pools, taints and XPK's Kueue objects are in place."""
    nodes = cluster.core.list_node().items
    pools = defaultdict(list)
    for n in nodes:
        pools[n.metadata.labels["cloud.google.com/gke-nodepool"]].append(n)
    assert {p: len(ns) for p, ns in pools.items()} == {
        "tpu-v5p-128-np-0": 16,
        "tpu-v5p-128-np-1": 16,
        "tpu-v6e-16-np-0": 4,
    }
    n = pools["tpu-v5p-128-np-0"][0]
    assert n.metadata.labels["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5p-slice"
    assert n.metadata.labels["cloud.google.com/gke-tpu-topology"] == "4x4x4"
    assert n.status.allocatable["google.com/tpu"] == "4"
    assert [(t.key, t.effect) for t in n.spec.taints] == [("google.com/tpu", "NoSchedule")]
    lq = cluster.custom.get_namespaced_custom_object(*KUEUE, NS, "localqueues", "multislice-queue")
    assert lq["spec"]["clusterQueue"] == "cluster-queue"
    # XPK writes v1beta1; reading it back exercises Kueue's conversion webhook.
    cq = cluster.custom.get_cluster_custom_object("kueue.x-k8s.io", "v1beta1", "clusterqueues", "cluster-queue")
    quota = {
        (f["name"], r["name"]): r["nominalQuota"]
        for g in cq["spec"]["resourceGroups"]
        for f in g["flavors"]
        for r in f["resources"]
    }
    assert quota[("2xv5p-128", "google.com/tpu")] in (128, "128")
    prios = {pc.metadata.name: pc.value for pc in _scheduling(cluster).list_priority_class().items}
    assert {k: prios[k] for k in ("very-low", "low", "medium", "high", "very-high")} == {
        "very-low": 100,
        "low": 250,
        "medium": 500,
        "high": 750,
        "very-high": 1000,
    }


def _scheduling(cluster):
    from kubernetes import client

    return client.SchedulingV1Api(cluster.cp.client)


def test_jobset_admitted_placed_per_pool_and_completes(cluster):
    cluster.create_jobset(tpu_jobset("train-ok"))
    wl = cluster.wait_admitted("train-ok")
    flavors = wl["status"]["admission"]["podSetAssignments"][0]["flavors"]
    assert flavors["google.com/tpu"] == "2xv5p-128"

    # Record where each slice ran while pods exist, then wait for completion.
    placement: dict[str, set] = defaultdict(set)

    def all_scheduled():
        pods = cluster.pods("train-ok")
        if len(pods) < 32 or any(not p.spec.node_name for p in pods):
            return False
        for p in pods:
            placement[p.metadata.labels["jobset.sigs.k8s.io/job-index"]].add(cluster.node_pool(p.spec.node_name))
        return True

    cluster.cp.wait_for(all_scheduled, 120, "all 32 pods of train-ok to be scheduled")
    assert len(placement) == 2
    assert all(len(pools) == 1 for pools in placement.values()), placement
    assert placement["0"] != placement["1"], placement  # one slice per node pool
    assert set().union(*placement.values()) == {"tpu-v5p-128-np-0", "tpu-v5p-128-np-1"}

    js = cluster.wait_jobset_condition("train-ok", "Completed", timeout=180)
    assert js["status"].get("restarts", 0) == 0

    # Kueue marks the Workload Finished after the JobSet completes, on its own reconcile: wait for it.
    def finished():
        wl = cluster.workload("train-ok")
        return (cluster.condition(wl, "Finished") or {}).get("status") == "True"

    cluster.cp.wait_for(finished, 60, "Kueue to mark train-ok's Workload Finished")


def test_exit_143_restarts_jobset(cluster):
    # Pods keep running until the test ends them.
    cluster.create_jobset(tpu_jobset("train-restart", pod_annotations={RUN_DURATION_ANNOTATION: "10m"}))
    cluster.wait_admitted("train-restart")
    pods = cluster.wait_pods_running("train-restart", 32, restart_attempt=0)
    victim = sorted(p.metadata.name for p in pods)[5]
    cluster.cp.set_pod_exit_code(victim, 143)  # SIGTERM: in XPK's restart list

    def restarted():
        js = cluster.jobset("train-restart")
        return js if (js.get("status") or {}).get("restarts", 0) >= 1 else None

    js = cluster.cp.wait_for(restarted, 120, "JobSet train-restart to restart")
    assert js["status"]["restarts"] == 1
    assert not (cluster.condition(js, "Failed") or {}).get("status") == "True"
    # The whole JobSet is recreated: all 32 pods come back under restart attempt 1.
    cluster.wait_pods_running("train-restart", 32, restart_attempt=1, timeout=180)


def test_exit_1_fails_jobset_at_once(cluster):
    cluster.create_jobset(tpu_jobset("train-fail", pod_annotations={RUN_DURATION_ANNOTATION: "10m"}))
    cluster.wait_admitted("train-fail")
    pods = cluster.wait_pods_running("train-fail", 32, restart_attempt=0)
    victim = sorted(p.metadata.name for p in pods)[20]
    cluster.cp.set_pod_exit_code(victim, 1)  # not in the restart list: podFailurePolicy FailJob

    js = cluster.wait_jobset_condition("train-fail", "Failed", timeout=120)
    assert (js.get("status") or {}).get("restarts", 0) == 0
    failed = cluster.condition(js, "Failed")
    assert "FailJobSet" in failed["reason"] or "PodFailurePolicy" in failed.get("message", ""), failed


def test_second_jobset_waits_for_quota(cluster):
    cluster.create_jobset(tpu_jobset("train-first", pod_annotations={RUN_DURATION_ANNOTATION: "10m"}))
    cluster.wait_admitted("train-first")
    cluster.create_jobset(tpu_jobset("train-second"))

    def pending():
        wl = cluster.workload("train-second")
        c = wl and cluster.condition(wl, "QuotaReserved")
        return c if c and c["status"] == "False" and "insufficient" in c.get("message", "") else None

    reason = cluster.cp.wait_for(pending, 60, "Kueue to hold train-second for quota")
    assert "google.com/tpu" in reason["message"], reason
    time.sleep(2)  # it stays held
    assert cluster.jobset("train-second")["spec"]["suspend"] is True
    admitted = cluster.condition(cluster.workload("train-second"), "Admitted")
    assert admitted is None or admitted["status"] != "True", admitted

    # Finish the first JobSet: every pod exits 0.
    for p in cluster.wait_pods_running("train-first", 32):
        cluster.cp.set_pod_exit_code(p.metadata.name, 0)
    cluster.wait_jobset_condition("train-first", "Completed", timeout=120)

    cluster.wait_admitted("train-second", timeout=120)
    cluster.cp.wait_for(
        lambda: cluster.jobset("train-second")["spec"]["suspend"] is False, 30, "Kueue to unsuspend train-second"
    )
    cluster.wait_jobset_condition("train-second", "Completed", timeout=180)


def test_server_side_dry_run_rejects_invalid_jobset(cluster):
    from kubernetes.client.exceptions import ApiException

    def dry_run(body):
        return cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "jobsets", body, dry_run="All")

    # Valid: accepted, and nothing is stored.
    dry_run(tpu_jobset("dry-run-ok"))
    with pytest.raises(ApiException) as e:
        cluster.jobset("dry-run-ok")
    assert e.value.status == 404

    # Rejected by the JobSet validating webhook: generated pod names exceed 63 characters.
    with pytest.raises(ApiException) as e:
        dry_run(tpu_jobset("x" * 50))
    assert e.value.status in (400, 403, 422), e.value
    assert "JobSet name is too long" in e.value.body

    # Rejected by the CRD schema.
    bad = tpu_jobset("dry-run-bad-action")
    bad["spec"]["failurePolicy"]["rules"][0]["action"] = "Explode"
    with pytest.raises(ApiException) as e:
        dry_run(bad)
    assert e.value.status == 422
    assert "Unsupported value" in e.value.body and "Explode" in e.value.body


def test_crashed_component_is_named_with_its_log(tmp_path):
    """A component that dies during start-up is reported by name, with its log tail."""
    fake_etcd = tmp_path / "etcd"
    fake_etcd.write_text("#!/bin/sh\necho 'etcdmain: listen tcp: bind: address already in use' >&2\nexit 3\n")
    fake_etcd.chmod(fake_etcd.stat().st_mode | stat.S_IEXEC)
    cp = ControlPlane(tmp_path / "cp", binaries={"etcd": str(fake_etcd)}, with_fixtures=False)
    with pytest.raises(ComponentError) as e:
        cp.start()
    assert e.value.component == "etcd"
    assert "exited with status 3" in str(e.value)
    assert "address already in use" in str(e.value)
    assert not cp.supervisor.components
