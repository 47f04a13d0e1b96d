"""The GitHub Actions workflows pass actionlint (built from the Go module proxy by hack/tools/actionlint.sh,
cached under ~/.cache/distillctl/tools), and the sweep files they name by default are committed and valid."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from distillspec.sweep import load_sweep
from orchestrator.core.expansion import expand

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def actionlint() -> str:
    explicit = os.environ.get("ACTIONLINT")
    if explicit:
        return explicit
    cached = sorted((ROOT / ".cache" / "tools" / "bin").glob("actionlint-*"))
    if cached:
        return str(cached[-1])
    if shutil.which("go") is None:
        pytest.skip("actionlint is not built and there is no Go to build it: run hack/tools/actionlint.sh")
    built = subprocess.run([str(ROOT / "hack/tools/actionlint.sh")], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    return built.stdout.strip()


def test_workflows_pass_actionlint():
    assert WORKFLOWS
    done = subprocess.run([actionlint(), *map(str, WORKFLOWS)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_gke_job_defaults_name_committed_valid_sweeps():
    workflow = yaml.safe_load((ROOT / ".github/workflows/regression.yml").read_text())
    inputs = workflow[True]["workflow_dispatch"]["inputs"]  # YAML 1.1 reads the key `on` as true
    sweep = ROOT / inputs["sweep"]["default"]
    result = expand(load_sweep(sweep))
    assert result.ok, [p.message for p in result.problems if p.is_error]
    assert result.sweep.target.kind == "kubernetes" and result.sweep.target.output_base.startswith("gs://")
    assert result.prerequisites  # the job relies on `sweep --wait` to order them
    steps = " ".join(str(step.get("run", "")) for step in workflow["jobs"]["gke"]["steps"])
    assert "distillctl cancel" in steps and "--wait" in steps and "GKE_KUBECONFIG" not in steps
