"""The xpk backend: `xpk workload create` per missing point, followed through the Kubernetes API.

XPK itself needs gcloud and a GKE cluster to submit. Here `xpk` on PATH is a thin wrapper around the real XPK
(`.venv-xpk`, `make xpk`) that runs it with `--dry-run --output-manifest-file` — XPK builds its own manifest from
our command line — and creates that manifest on the local control plane, as XPK would on GKE. Everything after
that (Kueue admission, the JobSet controller, finding the runs again by name) is real.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.exit_codes import ExitCode
from tests.test_launch_kubernetes import status_rows

REPO = Path(__file__).resolve().parents[1]
XPK_BIN = Path(os.environ.get("XPK_BIN", REPO / ".venv-xpk" / "bin" / "xpk"))
runner = CliRunner()

SWEEP = """\
name: {name}
spec:
  student: {{model: tiny-2l}}
  teacher: {{model: tiny-4l, load_parameters_path: gs://bucket/teacher/checkpoints}}
  batch: {{per_device_batch_size: 1, max_target_length: 16}}
  steps: {steps}
axes:
  loss.temperature: [1.0, 2.0]
target:
  kind: xpk
  cluster: demo
  project: demo-project
  zone: us-east5-a
  tpu_type: v5p-128
  slices: 2
  image: example.invalid/distillctl-trainer:test
  priority: medium
  max_restarts: 1
  output_base: {base}
"""

WRAPPER = '''#!{python}
"""xpk, as far as it can go without gcloud: XPK's own manifest (dry run), created on the test cluster."""
import os, subprocess, sys, tempfile
import yaml
from kubernetes import client, config

work = tempfile.mkdtemp()
manifest = os.path.join(work, "manifest.yaml")
with open(os.path.join(os.environ["XPK_CALLS"], str(os.getpid())), "w") as f:
    f.write(" ".join(sys.argv[1:]))
if len(os.listdir(os.environ["XPK_CALLS"])) > int(os.environ.get("XPK_FAIL_AFTER", "1000")):
    sys.exit("[XPK] Exiting XPKMain with error code 1: the project's TPU quota is exhausted")
done = subprocess.run(["{xpk}", *sys.argv[1:], "--dry-run", "--skip-validation", "--output-manifest-file", manifest],
                      cwd=work, env={{**os.environ, "HOME": work}}, capture_output=True, text=True)
if done.returncode != 0:
    sys.stderr.write(done.stdout + done.stderr)
    sys.exit(done.returncode)
config.load_kube_config(os.environ["KUBECONFIG"])
api = client.CustomObjectsApi()
for doc in yaml.safe_load_all(open(manifest)):
    if doc and doc.get("kind") == "JobSet":
        api.create_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", doc["metadata"].get("namespace", "default"),
                                            "jobsets", doc)
'''


@pytest.fixture
def xpk_on_path(tmp_path, monkeypatch, control_plane):
    if not XPK_BIN.is_file():
        pytest.fail(f"XPK is not installed at {XPK_BIN}: run `make xpk` (make test does)")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    wrapper = bin_dir / "xpk"
    wrapper.write_text(WRAPPER.format(python=sys.executable, xpk=XPK_BIN))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    monkeypatch.setenv("XPK_CALLS", str(calls))
    return calls


def write_sweep(tmp_path: Path, name: str, steps: int = 10) -> Path:
    """A two-point sweep; another `steps` gives other run ids (a run id is shared by every sweep with its point, so
    one test's JobSets being deleted would hold up another's)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(SWEEP.format(name=name, base=tmp_path / "runs", steps=steps))
    return path


@pytest.mark.cluster
def test_xpk_creates_missing_points_once_and_follows_them(control_plane, tmp_path, xpk_on_path):
    cp = control_plane
    path = write_sweep(tmp_path, "viaxpk")
    first = runner.invoke(app, ["sweep", str(path), "--kubeconfig", str(cp.kubeconfig)])
    assert first.exit_code == 0, first.output
    assert "2 created" in first.stdout and len(list(xpk_on_path.iterdir())) == 2
    call = next(xpk_on_path.iterdir()).read_text()
    assert call.startswith("workload create --cluster demo") and "--workload viaxpk-" in call
    names = {j["metadata"]["name"] for j in _all_jobsets(cp)} & {f"viaxpk-{rid}" for rid in _run_ids(path, cp)}
    assert len(names) == 2  # XPK named the JobSets after --workload

    again = runner.invoke(app, ["sweep", str(path), "--kubeconfig", str(cp.kubeconfig)])
    assert again.exit_code == 0 and "0 created, 2 unchanged" in again.stdout
    assert len(list(xpk_on_path.iterdir())) == 2  # xpk was not called again

    # Kueue admits XPK's JobSets from multislice-queue; status follows them through the API.
    cp.wait_for(
        lambda: {r["phase"] for r in status_rows(path, cp.kubeconfig).values()} <= {"Succeeded", "Running", "Queued"},
        60,
        "statuses",
    )
    cp.wait_for(
        lambda: all(r["phase"] == "Succeeded" for r in status_rows(path, cp.kubeconfig).values()),
        180,
        "both points to succeed",
    )
    logs = runner.invoke(app, ["logs", str(path), "0", "--kubeconfig", str(cp.kubeconfig)])
    assert logs.exit_code == 0 and "kl_div_T1" in logs.stdout, logs.output  # XPK's container is named trainer
    deleted = runner.invoke(app, ["cancel", str(path), "--yes", "--kubeconfig", str(cp.kubeconfig)])
    assert deleted.exit_code == 0 and len(deleted.stdout.splitlines()) == 2, deleted.output
    assert all(line.startswith(("deleted ", "deleting ")) for line in deleted.stdout.splitlines())


@pytest.mark.cluster
def test_an_xpk_create_failing_midway_says_which_runs_it_created(control_plane, tmp_path, xpk_on_path, monkeypatch):
    # The second `xpk workload create` failing printed its error alone: the first run, created, went on unsaid.
    cp = control_plane
    path = write_sweep(tmp_path, "halfxpk", steps=11)
    monkeypatch.setenv("XPK_FAIL_AFTER", "1")
    try:
        result = runner.invoke(app, ["sweep", str(path), "--kubeconfig", str(cp.kubeconfig)])
        assert result.exit_code == 1, result.output
        said = " ".join(result.stderr.split())
        assert "`xpk workload create` failed" in said and "TPU quota is exhausted" in said, said
        assert "1 of 2 run(s) were created before it stopped, and run on: `distillctl sweep` again creates" in said
        assert len([j for j in _all_jobsets(cp) if j["metadata"]["name"].startswith("halfxpk-")]) == 1
    finally:
        runner.invoke(app, ["cancel", str(path), "--yes", "--kubeconfig", str(cp.kubeconfig)])
        cp.wait_for(
            lambda: not [j for j in _all_jobsets(cp) if j["metadata"]["name"].startswith("halfxpk-")],
            120,
            "the JobSet deleted",
        )


@pytest.mark.cluster
def test_xpk_runs_dropped_from_the_file_are_orphans_to_cancel(control_plane, tmp_path, xpk_on_path):
    # XPK labels its JobSets its own way: runs an edited file no longer had were found by our labels only, so
    # status never warned of them and `cancel --orphans` found nothing while they held the quota.
    cp = control_plane
    path = write_sweep(tmp_path, "orphxpk", steps=12)
    try:
        first = runner.invoke(app, ["sweep", str(path), "--kubeconfig", str(cp.kubeconfig)])
        assert first.exit_code == 0 and "2 created" in first.stdout, first.output
        kept = set(_run_ids(path, cp))
        path.write_text(path.read_text().replace("[1.0, 2.0]", "[1.0]"))
        shown = runner.invoke(app, ["status", str(path), "--output", "json", "--kubeconfig", str(cp.kubeconfig)])
        assert shown.exit_code == 0, shown.output
        dropped = {f"orphxpk-{rid}" for rid in kept - {row["run_id"] for row in json.loads(shown.stdout)}}
        assert len(dropped) == 1
        warned = " ".join(shown.stderr.split())
        assert "warning[orphaned_runs]" in warned and next(iter(dropped)) in warned, warned
        cancelled = runner.invoke(app, ["cancel", str(path), "--orphans", "--yes", "--kubeconfig", str(cp.kubeconfig)])
        assert cancelled.exit_code == 0 and next(iter(dropped)) in cancelled.stdout, cancelled.output
        cp.wait_for(lambda: not dropped & {j["metadata"]["name"] for j in _all_jobsets(cp)}, 120, "the orphan deleted")
        assert len([j for j in _all_jobsets(cp) if j["metadata"]["name"].startswith("orphxpk-")]) == 1
    finally:
        path.write_text(path.read_text().replace("[1.0]", "[1.0, 2.0]"))
        runner.invoke(app, ["cancel", str(path), "--yes", "--kubeconfig", str(cp.kubeconfig)])


def test_xpks_jobsets_read_our_labels_from_their_names():
    from orchestrator.backends.xpk.backend import as_ours, selects

    def jobset(name, labels, command="DISTILLCTL_SPEC=... DISTILLCTL_RUN_ID=abcdefgh23 python -m trainer"):
        pod = {"spec": {"containers": [{"name": "trainer", "command": ["bash", "-c", command]}]}}
        job = {"name": "slice-job", "template": {"spec": {"template": pod}}}
        return {"metadata": {"name": name, "labels": labels}, "spec": {"replicatedJobs": [job]}}

    ours = as_ours(jobset("alpha-end-abcdefgh23", {"xpk.google.com/workload": "alpha-end-abcdefgh23"}))
    labels = ours["metadata"]["labels"]
    assert labels["distillctl.dev/sweep"] == "alpha-end" and labels["distillctl.dev/run-id"] == "abcdefgh23"
    assert selects("distillctl.dev/run-id=abcdefgh23,distillctl.dev/sweep=alpha-end", labels)
    assert not selects("distillctl.dev/run-id=abcdefgh24", labels) and selects("", {})
    for other in (
        jobset("someones-training", {"xpk.google.com/workload": "someones-training"}),  # not <sweep>-<run id>
        jobset("alpha-abcdefgh23", {"xpk.google.com/workload": "other"}),  # not XPK's for this name
        jobset("alpha-abcdefgh23", {}),
        # a hand-made XPK workload whose name only looks like ours (another trainer): cancel --orphans deleted it
        jobset("llama-distill-baselinev2", {"xpk.google.com/workload": "llama-distill-baselinev2"}, "python train.py"),
    ):
        assert "distillctl.dev/run-id" not in (as_ours(other)["metadata"]["labels"] or {})


def _all_jobsets(cp) -> list[dict]:
    from kubernetes import client

    api = client.CustomObjectsApi(cp.client)
    return api.list_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", "default", "jobsets")["items"]


def _run_ids(path: Path, cp) -> list[str]:
    return list(status_rows(path, cp.kubeconfig))


def test_xpk_missing_from_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing here
    path = write_sweep(tmp_path, "noxpk")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    result = runner.invoke(app, ["sweep", str(path), "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == ExitCode.CLUSTER_NOT_READY
    assert "`xpk` is not on PATH" in result.stderr and "pip install xpk" in result.stderr


def test_no_kubeconfig_and_no_xpk_are_said_together(tmp_path, monkeypatch):
    """Each was said only once the other was fixed: two round trips on a fresh machine."""
    monkeypatch.setenv("PATH", str(tmp_path))
    path = write_sweep(tmp_path, "noxpk")
    result = runner.invoke(app, ["sweep", str(path), "--kubeconfig", str(tmp_path / "absent")])
    assert result.exit_code == ExitCode.CLUSTER_UNREACHABLE, result.output
    said = " ".join(result.stderr.split())
    assert "no kubeconfig at" in said and "`xpk` is not on PATH" in said and "pip install xpk" in said, said
    # `status`, `logs` and `cancel` never run xpk: theirs is the kubeconfig alone (they named xpk as missing too)
    for command in (["status"], ["logs", "0"], ["cancel", "--yes"]):
        read = runner.invoke(app, [*command[:1], str(path), *command[1:], "--kubeconfig", str(tmp_path / "absent")])
        said = " ".join(read.stderr.split())
        assert read.exit_code == ExitCode.CLUSTER_UNREACHABLE, (command, read.output)
        assert "no kubeconfig at" in said and "not on PATH" not in said, (command, said)
