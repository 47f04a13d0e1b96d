"""Our v5p-128 × 2 JobSet against the manifest XPK itself writes for the same point.

XPK runs offline: `xpk workload create --dry-run --skip-validation --output-manifest-file F` prints the
kubectl/gcloud commands it would run and writes its manifest without a cluster or credentials. It needs its
own pinned dependencies, so it lives in `.venv-xpk` (`make xpk`), or at `$XPK_BIN`. The command line we give
it is our own `render --as xpk` output for the point, so the test also checks that XPK accepts it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from sweep_support import ROOT, SWEEPS

from distillspec.sweep import load_sweep, override_target
from orchestrator.backends.xpk import command as xpk_command
from orchestrator.core import rendering
from orchestrator.core.expansion import expand

XPK_BIN = Path(os.environ.get("XPK_BIN", ROOT / ".venv-xpk" / "bin" / "xpk"))


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    if not XPK_BIN.is_file():
        pytest.skip(f"XPK is not installed at {XPK_BIN}: run `make xpk`")
    source = override_target(
        load_sweep(SWEEPS / "alpha-end.yaml"),
        tpu_type="v5p-128",
        slices=2,
        cluster="demo",
        project="demo-project",
        zone="us-east5-a",
        restartable_exit_codes=[75],
    )
    result = expand(source)
    assert result.ok
    point, target = result.points[0], result.sweep.target
    assert not [p for p in xpk_command.problems(target) if p.is_error]
    work = tmp_path_factory.mktemp("xpk")
    out = work / "xpk-manifest.yaml"
    argv = list(xpk_command.xpk_command(point, target).argv)
    argv[0] = str(XPK_BIN)
    run = subprocess.run(
        argv + ["--dry-run", "--skip-validation", "--output-manifest-file", str(out)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HOME": str(work)},
    )
    assert run.returncode == 0 and out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    ours = yaml.safe_load(rendering.render_jobset(point, target))
    return ours, yaml.safe_load(out.read_text())


def _job(doc):
    (rjob,) = doc["spec"]["replicatedJobs"]
    return rjob


def _pod(doc):
    return _job(doc)["template"]["spec"]["template"]["spec"]


def test_same_counts(both):
    ours, theirs = both
    assert _job(ours)["name"] == _job(theirs)["name"] == "slice-job"
    assert _job(ours)["replicas"] == _job(theirs)["replicas"] == 2
    for key in ("parallelism", "completions", "backoffLimit"):
        assert _job(ours)["template"]["spec"][key] == _job(theirs)["template"]["spec"][key], key
    assert ours["metadata"]["name"] == theirs["metadata"]["name"]


def test_same_selectors_tolerations_and_limits(both):
    ours, theirs = both
    assert _pod(ours)["nodeSelector"] == _pod(theirs)["nodeSelector"]
    assert _pod(ours)["tolerations"] == _pod(theirs)["tolerations"]
    assert _pod(ours)["containers"][0]["resources"]["limits"] == _pod(theirs)["containers"][0]["resources"]["limits"]
    assert _pod(ours)["containers"][0]["image"] == _pod(theirs)["containers"][0]["image"]
    for key in ("restartPolicy", "hostNetwork", "dnsPolicy", "priorityClassName", "terminationGracePeriodSeconds"):
        assert _pod(ours)[key] == _pod(theirs)[key], key
    assert (
        ours["metadata"]["annotations"]["alpha.jobset.sigs.k8s.io/exclusive-topology"]
        == theirs["metadata"]["annotations"]["alpha.jobset.sigs.k8s.io/exclusive-topology"]
    )
    assert (
        ours["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
        == theirs["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    )
    assert ours["spec"]["ttlSecondsAfterFinished"] == theirs["spec"]["ttlSecondsAfterFinished"]


def test_same_failure_policy(both):
    """XPK's policy plus distillctl's preemption rules: the same exit-code rule, and before it the rules that make
    a preempted worker (DisruptionTarget) restart the JobSet without spending maxRestarts (XPK spends them)."""
    ours, theirs = both
    assert ours["spec"]["failurePolicy"]["maxRestarts"] == theirs["spec"]["failurePolicy"]["maxRestarts"] == 3
    preemption, *rest = ours["spec"]["failurePolicy"]["rules"]
    assert preemption["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    # XPK leaves the rule's name to the JobSet webhook's defaulting; the v0.10.1 CRD requires one, so we set it
    strip = [{k: v for k, v in rule.items() if k != "name"} for rule in rest]
    assert strip == theirs["spec"]["failurePolicy"]["rules"]
    *first, our_rule = _job(ours)["template"]["spec"]["podFailurePolicy"]["rules"]
    assert [rule["action"] for rule in first] == ["FailJob"]
    assert first[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    (their_rule,) = _job(theirs)["template"]["spec"]["podFailurePolicy"]["rules"]
    assert our_rule["action"] == their_rule["action"] == "FailJob"
    assert our_rule["onExitCodes"]["operator"] == their_rule["onExitCodes"]["operator"] == "NotIn"
    assert sorted(our_rule["onExitCodes"]["values"]) == sorted(their_rule["onExitCodes"]["values"])
    assert 75 in our_rule["onExitCodes"]["values"]
    # each names its own container
    assert our_rule["onExitCodes"]["containerName"] == _pod(ours)["containers"][0]["name"]
    assert their_rule["onExitCodes"]["containerName"] == _pod(theirs)["containers"][0]["name"]


def test_xpk_runs_the_same_spec(both):
    import base64
    import json
    import re

    ours, theirs = both
    script = "\n".join(_pod(theirs)["containers"][0]["command"])
    encoded = re.search(r"echo ([A-Za-z0-9+/=]+) \| base64 -d", script).group(1)
    env = {e["name"]: e["value"] for e in _pod(ours)["containers"][0]["env"] if "value" in e}
    assert json.loads(base64.b64decode(encoded)) == json.loads(env["DISTILLCTL_SPEC"])
    assert "python -m trainer" in script


def test_same_dev_shm_volume(both):
    ours, theirs = both
    assert _pod(ours)["volumes"] == _pod(theirs)["volumes"] == [{"name": "dshm-2", "emptyDir": {"medium": "Memory"}}]
    ours_mounts = _pod(ours)["containers"][0]["volumeMounts"]
    assert ours_mounts == _pod(theirs)["containers"][0]["volumeMounts"] == [{"name": "dshm-2", "mountPath": "/dev/shm"}]


def test_xpk_labels_its_jobset_and_pods_with_the_workload_name_we_read_runs_from(both):
    # The xpk backend finds XPK's JobSets (status, orphans, logs) and their stuck pods by this label alone.
    from orchestrator.backends.xpk.backend import XPK_WORKLOAD_LABEL, XpkBackend, as_ours

    ours, theirs = both
    name = theirs["metadata"]["name"]
    assert theirs["metadata"]["labels"][XPK_WORKLOAD_LABEL] == name == ours["metadata"]["name"]
    for job in theirs["spec"]["replicatedJobs"]:
        assert job["template"]["spec"]["template"]["metadata"]["labels"][XPK_WORKLOAD_LABEL] == name
    assert XpkBackend.pending_pods["label_selector"] == XPK_WORKLOAD_LABEL
    read = as_ours(theirs)["metadata"]["labels"]
    for label in (rendering.LABEL_SWEEP, rendering.LABEL_RUN_ID):
        assert read[label] == ours["metadata"]["labels"][label]
