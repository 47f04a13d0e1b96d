"""Rendered JobSets: byte-identical, valid against both JobSet CRDs and (strictly) Kubernetes' own schemas,
with XPK's multi-host shape, the exit-code policy, labels, annotations and the environment."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sweep_support import (
    EXAMPLE_SWEEPS,
    JOBSET_VERSIONS,
    SWEEPS,
    TARGET,
    expanded,
    jobset_errors,
    load,
    pod_template_errors,
    sweep_data,
)

from distillspec.config import DistillSpec
from distillspec.sweep import load_sweep, override_target
from orchestrator.backends.xpk import command as xpk_command
from orchestrator.core import identity, rendering
from orchestrator.core.expansion import expand

SHAPES = {"v5p-128x2": {"tpu_type": "v5p-128", "slices": 2}, "v6e-256": {"tpu_type": "v6e-256", "slices": 1}}


def example_sweep(name: str, **target):
    source = load_sweep(SWEEPS / f"{name}.yaml")
    return expand(override_target(source, **target) if target else source)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", EXAMPLE_SWEEPS)
def test_every_example_sweep_renders_valid_manifests(name, shape):
    result = example_sweep(name, **SHAPES[shape])
    assert result.ok, [p.message for p in result.problems if p.is_error]
    manifests = rendering.render(result)
    assert len(manifests) == len(result.points) >= 2
    for m in manifests:
        doc = yaml.safe_load(m.text)
        assert m.filename == f"{doc['metadata']['name']}.yaml"
        for version in JOBSET_VERSIONS:
            assert jobset_errors(doc, version) == [], (m.name, version)
        assert pod_template_errors(doc) == [], m.name
    # re-rendering changes nothing, byte for byte
    assert [m.text for m in rendering.render(example_sweep(name, **SHAPES[shape]))] == [m.text for m in manifests]


def manifest(tmp_path, **fields):
    result = expanded(tmp_path, sweep_data(**fields))
    assert result.ok, result.problems
    return yaml.safe_load(rendering.render(result)[0].text), result


def test_the_jobset_has_xpks_multi_host_tpu_shape(tmp_path):
    doc, result = manifest(tmp_path)
    point = result.points[0]
    assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and doc["kind"] == "JobSet"
    assert (
        doc["metadata"]["annotations"]["alpha.jobset.sigs.k8s.io/exclusive-topology"] == "cloud.google.com/gke-nodepool"
    )
    (rjob,) = doc["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert rjob["name"] == "slice-job" and rjob["replicas"] == 2
    assert job["parallelism"] == job["completions"] == 16 and job["completionMode"] == "Indexed"
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
        "cloud.google.com/gke-tpu-topology": "4x4x4",
    }
    assert pod["tolerations"] == [{"key": "google.com/tpu", "operator": "Exists"}]
    (container,) = pod["containers"]
    assert container["resources"] == {"limits": {"google.com/tpu": 4}}
    assert container["command"] == ["python", "-m", "trainer"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "medium" and pod["terminationGracePeriodSeconds"] == 300
    assert doc["spec"]["ttlSecondsAfterFinished"] == 43200
    assert doc["metadata"]["name"] == point.jobset_name


def test_the_exit_code_policy_fails_fast_on_user_errors_and_restarts_on_retryable_codes(tmp_path):
    doc, _ = manifest(tmp_path, target={**TARGET, "restartable_exit_codes": [75]})
    policy = doc["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == 3
    preemption, fail = policy["rules"]
    assert fail == {
        "name": "failJobSetOnNonRetryableExit",
        "action": "FailJobSet",
        "onJobFailureReasons": ["PodFailurePolicy"],
    }
    # Preemption restarts without spending maxRestarts; it is matched first, by the Job controller's message.
    assert preemption["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    assert preemption["onJobFailureReasons"] == ["PodFailurePolicy"]
    # Only a disruption (the DisruptionTarget condition) is free; a plain exit 143 is a retryable code that spends
    # maxRestarts (no FailJob rule matches it: the Job fails by its backoffLimit and the JobSet's default restarts).
    disrupted, rule = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]["rules"]
    assert disrupted == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    patterns = preemption["onJobFailureMessagePatterns"]
    assert any(
        re.search(p, "Pod default/x-0 has condition DisruptionTarget matching FailJob rule at index 0")
        for p in patterns
    )
    for message in (
        "Container trainer for pod default/x-0 failed with exit code 1 matching FailJob rule at index 1",
        "Job has reached the specified backoff limit",
    ):
        assert not any(re.search(p, message) for p in patterns)
    retryable = rule["onExitCodes"]["values"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "NotIn"
    assert (
        rule["onExitCodes"]["containerName"]
        == doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["name"]
    )
    assert sorted(retryable) == retryable and set(retryable) == {42, 75, *range(127, 256)}
    # the trainer's codes: 42 retry and 143 SIGTERM restart the JobSet; 1 (user error) and 65 (diverged) fail it
    assert {42, 143} <= set(retryable) and not {0, 1, 65} & set(retryable)


def test_labels_and_annotations_identify_the_run(tmp_path):
    doc, result = manifest(
        tmp_path, axes={"loss.alpha.end": [0.3]}, seeds=[4], target={**TARGET, "workload_priority_class": "research"}
    )
    point = result.points[0]
    labels, annotations = doc["metadata"]["labels"], doc["metadata"]["annotations"]
    assert labels["distillctl.dev/sweep"] == "t" and labels["distillctl.dev/run-id"] == point.run_id
    assert labels["distillctl.dev/spec-hash"] == point.spec_hash and labels["distillctl.dev/role"] == "point"
    assert labels["kueue.x-k8s.io/queue-name"] == "multislice-queue"
    assert labels["kueue.x-k8s.io/priority-class"] == "research"
    assert all(len(v) <= 63 for v in labels.values())
    assert json.loads(annotations["distillctl.dev/axis-values"]) == {"loss.alpha.end": 0.3, "seed": 4}
    assert annotations["distillctl.dev/output-path"] == point.output_path
    pod_labels = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == {"distillctl.dev/sweep": "t", "distillctl.dev/run-id": point.run_id}


def test_the_resolved_spec_reaches_the_trainer_and_env_is_one_mapping(tmp_path):
    target = {
        **TARGET,
        "env": {"XLA_FLAGS": "--xla_foo", "A_FIRST": "1"},
        "secret_env": {"HF_TOKEN": {"secret": "hf", "key": "token"}},
    }
    doc, result = manifest(tmp_path, target=target)
    env = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names == sorted(names) == ["A_FIRST", "DISTILLCTL_RUN_ID", "DISTILLCTL_SPEC", "HF_TOKEN", "XLA_FLAGS"]
    by_name = {e["name"]: e for e in env}
    assert by_name["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    spec = json.loads(by_name["DISTILLCTL_SPEC"]["value"])
    point = result.points[0]
    # Fields added after the identity scheme are left out while they hold their default (identity.LATER_DEFAULTS):
    # the trainer reads the same spec, and spec_hash hashes exactly this text.
    assert DistillSpec.model_validate(spec) == point.spec.resolved() and spec["name"] == point.run_id
    assert (
        identity.spec_hash(point.spec)
        == point.spec_hash
        == hashlib.sha256(by_name["DISTILLCTL_SPEC"]["value"].encode()).hexdigest()[: identity.SPEC_HASH_LENGTH]
    )
    assert by_name["DISTILLCTL_RUN_ID"]["value"] == point.run_id


@pytest.mark.parametrize(
    "tunables, want",
    [
        (None, None),  # unset: the trainer image's own ENV applies
        ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
        ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # the user's choice stands
    ],
)
def test_a_users_glibc_tunables_keep_the_trainers_huge_pages_on_every_backend(tmp_path, tunables, want):
    env = {} if tunables is None else {"GLIBC_TUNABLES": tunables}
    doc, result = manifest(tmp_path, target={**TARGET, "env": env})
    rendered = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["name"]: e.get("value") for e in rendered}.get("GLIBC_TUNABLES") == want
    target = result.sweep.target.model_copy(update={"kind": "xpk", "cluster": "c"})
    argv = list(xpk_command.xpk_command(result.points[0], target).argv)
    flags = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert [f for f in flags if f.startswith("GLIBC_TUNABLES=")] == ([] if want is None else [f"GLIBC_TUNABLES={want}"])


def test_env_precedence_later_layers_win():
    first = {"X": rendering.EnvVar("X", value="user")}
    second = {"X": rendering.EnvVar("X", value="distillctl"), "A": rendering.EnvVar("A", value="a")}
    assert rendering.merge_env(first, second) == (
        rendering.EnvVar("A", value="a"),
        rendering.EnvVar("X", value="distillctl"),
    )


def test_optional_fields_are_left_out_when_unset(tmp_path):
    target = {k: v for k, v in TARGET.items() if k not in ("queue", "priority")} | {"host_network": False}
    doc, _ = manifest(tmp_path, target=target)
    pod = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert "priorityClassName" not in pod and "dnsPolicy" not in pod and "serviceAccountName" not in pod
    assert pod["hostNetwork"] is False
    assert "kueue.x-k8s.io/queue-name" not in doc["metadata"]["labels"]
    for version in JOBSET_VERSIONS:
        assert jobset_errors(doc, version) == []


def test_prerequisites_render_with_their_role_and_dependents_name_them(tmp_path):
    data = sweep_data(
        prerequisites={"teacher": {"spec": {"student": {"model": "tiny-4l"}, "mode": "pretrain"}}},
        overrides={"teacher.load_parameters_path": "${prerequisites.teacher.output}/checkpoints"},
    )
    result = expanded(tmp_path, data)
    pre, point = (yaml.safe_load(m.text) for m in rendering.render(result))
    assert pre["metadata"]["labels"]["distillctl.dev/role"] == "prerequisite"
    depends = json.loads(point["metadata"]["annotations"]["distillctl.dev/depends-on"])
    assert depends == {"teacher": result.prerequisites[0].run_id}


def test_a_local_target_has_nothing_to_render(tmp_path):
    result = expanded(tmp_path, sweep_data(target={"kind": "local"}))
    with pytest.raises(rendering.RenderError):
        rendering.render(result)


def test_the_schema_check_rejects_fields_newer_than_v0_10_1(tmp_path):
    doc, _ = manifest(tmp_path)
    doc["spec"]["volumeClaimPolicies"] = []
    assert jobset_errors(doc, "v0.10.1") and not jobset_errors(doc, "v0.12.0")


def test_the_pod_check_is_strict(tmp_path):
    doc, _ = manifest(tmp_path)
    doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = "x"
    assert pod_template_errors(doc)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
        st.lists(st.one_of(st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False)), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )
)
@example(1e-06)
@example([1e20, "\u2028", "\x85"])
@example({"a": 1, "b\ufeff": 2})
def test_a_tojson_scalar_reads_back_as_the_same_value(value):
    assert yaml.safe_load(f"key: {rendering.yaml_scalar(value)}\n") == {"key": value}


def test_extra_target_labels_reach_the_jobset_but_not_the_run_id(tmp_path):
    plain = expanded(tmp_path, sweep_data(), "a.yaml")
    labelled = expanded(
        tmp_path, sweep_data(target={**TARGET, "labels": {"distillctl.dev/ci-key": "pr12-abc"}}), "b.yaml"
    )
    assert [p.run_id for p in plain.points] == [p.run_id for p in labelled.points]
    jobset = yaml.safe_load(rendering.render_jobset(labelled.points[0], labelled.sweep.target))
    assert jobset["metadata"]["labels"]["distillctl.dev/ci-key"] == "pr12-abc"


@pytest.mark.parametrize("labels", [{"distillctl.dev/run-id": "x"}, {"bad key!": "x"}, {"team": "not ok!"}])
def test_reserved_or_malformed_labels_are_rejected(tmp_path, labels):
    source = load(tmp_path, sweep_data(target={**TARGET, "labels": labels}))
    assert "bad_label" in [p.code for p in source.problems if p.is_error]


def test_pod_annotations_reach_every_pod_and_change_the_run_id(tmp_path):
    plain = expanded(tmp_path, sweep_data(), "a.yaml")
    annotated = expanded(
        tmp_path, sweep_data(target={**TARGET, "pod_annotations": {"gke-gcsfuse/volumes": "true"}}), "b.yaml"
    )
    assert plain.points[0].run_id != annotated.points[0].run_id
    jobset = yaml.safe_load(rendering.render_jobset(annotated.points[0], annotated.sweep.target))
    pod = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}
    assert not jobset_errors(jobset, "v0.10.1") and not pod_template_errors(jobset)
