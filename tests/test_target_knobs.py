"""Target fields a GKE TPU platform needs: /dev/shm, capacity (spot, flex-start, reservation), node selectors,
tolerations, volumes, mounts, resources, the machine type of ambiguous topologies, host network, and the
warnings that say what a target leaves open (no Kueue queue, an image tag). Rendered manifests are checked
against both JobSet CRDs and Kubernetes' own schemas (strict); the control-plane test is in
tests/test_launch_kubernetes_gke.py."""

from __future__ import annotations

import pytest
import yaml
from sweep_support import JOBSET_VERSIONS, TARGET, expanded, jobset_errors, load, pod_template_errors, sweep_data

from orchestrator.backends.xpk import command as xpk_command
from orchestrator.core import rendering

GCSFUSE = {
    "name": "data",
    "csi": {"driver": "gcsfuse.csi.storage.gke.io", "readOnly": True, "volumeAttributes": {"bucketName": "b"}},
}
KNOBS = {
    "capacity": "spot",
    "node_selector": {"example.com/pool": "distill"},
    "tolerations": [{"key": "example.com/dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "128Gi"}},
    "dev_shm_size": "32Gi",
    "host_network": False,
    "service_account": "distill-runner",
    "pod_annotations": {"gke-gcsfuse/volumes": "true"},
}
MOUNTS = {"volumes": [GCSFUSE], "volume_mounts": [{"name": "data", "mountPath": "/data", "readOnly": True}]}


def pod_of(doc: dict) -> dict:
    return doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


def rendered(tmp_path, name="sweep.yaml", **target):
    result = expanded(tmp_path, sweep_data(target={**TARGET, **target}), name)
    assert result.ok, [p.message for p in result.problems if p.is_error]
    return result, yaml.safe_load(rendering.render_jobset(result.points[0], result.sweep.target))


def test_every_knob_renders_valid_manifests_and_only_mounts_change_the_run_id(tmp_path):
    plain, _ = rendered(tmp_path, "plain.yaml")
    scheduled, doc = rendered(tmp_path, "knobs.yaml", **KNOBS)
    mounted, mounted_doc = rendered(tmp_path, "mounts.yaml", **KNOBS, **MOUNTS)
    for manifest in (doc, mounted_doc):
        for version in JOBSET_VERSIONS:
            assert jobset_errors(manifest, version) == [], version
        assert pod_template_errors(manifest) == []
    # where a run is placed does not change what it computes; what is mounted at a path can
    annotated = expanded(tmp_path, sweep_data(target={**TARGET, "pod_annotations": KNOBS["pod_annotations"]}), "a.yaml")
    assert scheduled.points[0].run_id == annotated.points[0].run_id != plain.points[0].run_id
    assert mounted.points[0].run_id != scheduled.points[0].run_id
    pod = pod_of(mounted_doc)
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-spot": "true",
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
        "cloud.google.com/gke-tpu-topology": "4x4x4",
        "example.com/pool": "distill",
    }
    assert pod["tolerations"] == [
        {"key": "google.com/tpu", "operator": "Exists"},
        {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "example.com/dedicated", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert pod["volumes"] == [{"name": "dshm-2", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}}, GCSFUSE]
    (container,) = pod["containers"]
    assert container["volumeMounts"] == [
        {"name": "dshm-2", "mountPath": "/dev/shm"},
        {"name": "data", "mountPath": "/data", "readOnly": True},
    ]
    assert container["resources"] == {
        "limits": {"google.com/tpu": 4, "memory": "128Gi"},
        "requests": {"cpu": "8", "memory": "64Gi"},
    }
    assert pod["hostNetwork"] is False and "dnsPolicy" not in pod and pod["serviceAccountName"] == "distill-runner"


def test_numbers_are_quantities_as_kubernetes_reads_them(tmp_path):
    # `cpu: 8` was refused with "quote the value"; a pod spec takes it, and so does the CRD (int-or-string).
    numbers = {"resources": {"requests": {"cpu": 8, "memory": 0.5}}, "dev_shm_size": 1024}
    result, doc = rendered(tmp_path, "numbers.yaml", **numbers)
    assert pod_of(doc)["containers"][0]["resources"]["requests"] == {"cpu": "8", "memory": "0.5"}
    assert pod_of(doc)["volumes"][0]["emptyDir"]["sizeLimit"] == "1024"
    quoted, _ = rendered(tmp_path, "quoted.yaml", resources={"requests": {"cpu": "8", "memory": "0.5"}})
    assert result.points[0].run_id == quoted.points[0].run_id
    source = load(tmp_path, sweep_data(target={**TARGET, "resources": {"requests": {"cpu": True}}}), "bool.yaml")
    assert [p.code for p in source.problems if p.is_error] != []


def test_defaults_follow_xpk_and_pin_the_machine_type_only_where_the_topology_is_ambiguous(tmp_path):
    _, v5p = rendered(tmp_path, "v5p.yaml")
    pod = pod_of(v5p)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["volumes"] == [{"name": "dshm-2", "emptyDir": {"medium": "Memory"}}]
    assert "node.kubernetes.io/instance-type" not in pod["nodeSelector"]
    for tpu_type, machine in (("v5litepod-8", "ct5lp-hightpu-4t"), ("v6e-8", "ct6e-standard-4t")):
        _, doc = rendered(tmp_path, f"{tpu_type}.yaml", tpu_type=tpu_type, slices=1)
        assert pod_of(doc)["nodeSelector"]["node.kubernetes.io/instance-type"] == machine
        assert doc["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] == 2
    _, pinned = rendered(tmp_path, "pinned.yaml", machine_type_selector=True)
    assert pod_of(pinned)["nodeSelector"]["node.kubernetes.io/instance-type"] == "ct5p-hightpu-4t"
    _, bare = rendered(tmp_path, "bare.yaml", dev_shm=False)
    assert "volumes" not in pod_of(bare) and "volumeMounts" not in pod_of(bare)["containers"][0]


@pytest.mark.parametrize(
    ("capacity", "label", "value"),
    [
        ({"capacity": "flex-start"}, "cloud.google.com/gke-queued", "true"),
        ({"capacity": "reservation", "reservation": "tpu-res-1"}, "cloud.google.com/reservation-name", "tpu-res-1"),
    ],
)
def test_capacity_selects_xpks_node_labels(tmp_path, capacity, label, value):
    result, doc = rendered(tmp_path, **capacity)
    assert pod_of(doc)["nodeSelector"][label] == value
    assert not jobset_errors(doc, "v0.10.1") and not pod_template_errors(doc)
    flag = {"flex-start": ["--flex"], "reservation": ["--reservation", "tpu-res-1"]}[capacity["capacity"]]
    argv = xpk_command.xpk_command(result.points[0], result.sweep.target.model_copy(update={"cluster": "c"})).argv
    assert " ".join(flag) in " ".join(argv)


@pytest.mark.parametrize(
    ("target", "code", "loc"),
    [
        ({"capacity": "reservation"}, "target_field_missing", ("target", "reservation")),
        ({"reservation": "r"}, "reservation_without_capacity", ("target", "reservation")),
        ({"node_selector": {"cloud.google.com/gke-spot": "true"}}, "reserved_node_selector", None),
        ({"node_selector": {"bad key!": "x"}}, "bad_label", None),
        ({"tolerations": [{"operator": "Exists", "value": "x"}]}, "bad_toleration", ("target", "tolerations", 0)),
        ({"tolerations": [{"key": "k", "tolerationSeconds": 5}]}, "bad_toleration", None),
        ({"volumes": [{"name": "v"}]}, "volume_source", ("target", "volumes", 0)),
        ({"volumes": [{"name": "dshm-2", "emptyDir": {}}]}, "duplicate_volume", None),
        ({"volumes": [GCSFUSE], "volume_mounts": [{"name": "dat", "mountPath": "/d"}]}, "unknown_volume", None),
        (
            {"volumes": [GCSFUSE], "volume_mounts": [{"name": "data", "mountPath": "/dev/shm"}]},
            "duplicate_mount_path",
            None,
        ),
        ({"volumes": [GCSFUSE], "volume_mounts": [{"name": "data", "mountPath": "data"}]}, "bad_mount_path", None),
        ({"resources": {"limits": {"google.com/tpu": "4"}}}, "reserved_resource", None),
        ({"resources": {"limits": {"google.com/tpu": 4}}}, "reserved_resource", None),  # a number, not "4"
        ({"resources": {"requests": {"memory": "lots"}}}, "bad_quantity", None),
        ({"resources": {"requests": {"cpu": -2}}}, "bad_quantity", None),
        ({"dev_shm_size": "1 GB"}, "bad_quantity", ("target", "dev_shm_size")),
        ({"image": "UPPER CASE::bad"}, "bad_image", ("target", "image")),
    ],
)
def test_bad_knobs_are_errors_with_hints(tmp_path, target, code, loc):
    source = load(tmp_path, sweep_data(target={**TARGET, **target}))
    problems = [p for p in source.problems if p.is_error and p.code == code]
    assert problems, [(p.code, p.message) for p in source.problems]
    assert all(p.hint and p.line for p in problems)
    if loc is not None:
        assert problems[0].loc == loc


def test_slices_past_a_jobsets_replicas_are_refused(tmp_path):
    # 10^20 slices rendered as `replicas: 100000000000000000000`, which the API server refuses.
    source = load(tmp_path, sweep_data(target={**TARGET, "slices": 2**31}))
    [problem] = [p for p in source.problems if p.is_error]
    assert (problem.code, problem.loc) == ("out_of_range", ("target", "slices")) and "2147483647" in problem.message


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ({"queue": None}, "no_queue"),
        ({"image": "example.com/distill:1"}, "mutable_image_tag"),
        ({"service_account": "runner"}, "host_network_workload_identity"),
        ({"tpu_type": "v6e-8", "slices": 1, "machine_type_selector": False}, "ambiguous_topology"),
    ],
)
def test_what_a_target_leaves_open_is_a_warning(tmp_path, target, code):
    source = load(tmp_path, sweep_data(target={**TARGET, **target}))
    assert source.ok
    assert [p.code for p in source.problems] == [code]
    assert source.problems[0].severity == "warning"


def test_xpk_warns_about_knobs_it_cannot_express(tmp_path):
    source = load(tmp_path, sweep_data(target={**TARGET, **KNOBS, **MOUNTS, "kind": "xpk", "cluster": "c"}))
    ignored = {p.loc[1] for p in xpk_command.problems(source.sweep.target) if p.code == "xpk_ignores"}
    assert {"node_selector", "tolerations", "resources", "volumes", "dev_shm_size", "host_network"} <= ignored


def test_a_bad_node_selector_names_the_part_that_is_wrong(tmp_path):
    # "a/b/c: 'x' is not a Kubernetes label selector entry" blamed the value as much as the key.
    source = load(tmp_path, sweep_data(target={**TARGET, "node_selector": {"a/b/c": "x", "pool": "no spaces"}}))
    said = {p.loc[-1]: p.message for p in source.problems if p.code == "bad_label"}
    assert said == {
        "a/b/c": "node_selector key 'a/b/c' is not a Kubernetes label key",
        "pool": "node_selector pool: 'no spaces' is not a Kubernetes label value",
    }
