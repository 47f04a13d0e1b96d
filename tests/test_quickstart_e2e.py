"""The quickstart as a user runs it: the sweep on the local backend (teacher pre-training first), results and
plots, and the regression gate against the committed golden file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "sweeps" / "quickstart.yaml"
GOLDEN = REPO / "sweeps" / "quickstart.golden.yaml"
pytestmark = pytest.mark.slow


def distillctl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DISTILLCTL_SPEC"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The quickstart sweep, run to the end in a fresh folder (its outputs land in ./runs/quickstart)."""
    cwd = tmp_path_factory.mktemp("quickstart")
    done = distillctl("sweep", str(SWEEP), "--wait", "--timeout", "600", cwd=cwd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return cwd


def test_distilled_students_beat_the_labels_only_baseline(finished):
    done = distillctl("results", str(SWEEP), "--format", "json", "--plot", "plots", cwd=finished)
    assert done.returncode == 0, done.stderr
    rows = [r for r in json.loads(done.stdout)["runs"] if r["role"] != "prerequisite"]
    kl: dict[str, list[float]] = {"point": [], "baseline": []}
    for row in rows:
        assert row["metrics_from"] == "eval"  # every run evaluates held-out batches
        kl[row["role"]].append(row["metrics"]["distill/kl_div_T1"])
    assert len(kl["point"]) == 4 and len(kl["baseline"]) == 1
    assert max(kl["point"]) < 0.6 * kl["baseline"][0]
    for name in ("kl_div_T1.png", "hard_loss.png", "schedules.png"):
        assert (finished / "plots" / name).stat().st_size > 10_000


def test_regress_passes_on_the_committed_golden_file(finished, tmp_path):
    done = distillctl(
        "regress", str(SWEEP), "--golden", str(GOLDEN), "--junit", str(tmp_path / "junit.xml"), cwd=finished
    )
    assert done.returncode == 0, done.stdout
    assert 'failures="0"' in (tmp_path / "junit.xml").read_text()


def test_regress_fails_with_exit_1_on_a_doctored_golden_file(finished, tmp_path):
    golden = yaml.safe_load(GOLDEN.read_text())
    point = next(p for p in golden["points"] if p["role"] == "point")
    check = point["checks"]["eval/kl_div_T1"]
    check["value"] = check["value"] / 2 if "value" in check else check["low"] / 2
    doctored = tmp_path / "doctored.yaml"
    doctored.write_text(yaml.safe_dump(golden))
    done = distillctl(
        "regress", str(SWEEP), "--golden", str(doctored), "--junit", str(tmp_path / "junit.xml"), cwd=finished
    )
    assert done.returncode == 1, done.stdout
    assert 'failures="1"' in (tmp_path / "junit.xml").read_text()
