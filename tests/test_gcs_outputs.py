"""Runs whose outputs live on gs://, as on GKE, against a Cloud Storage emulator (fake-gcs-server, built from
source like the control plane; tests/cluster/gcs.py): the trainer reads its text corpus from a gs:// glob,
writes every output and checkpoint there (gcsfs, orbax and tensorstore), stops on SIGTERM with a checkpoint
there and resumes from it, distills from a teacher checkpoint there, and `distillctl results` and `regress` read
it all back. A bucket that does not exist, an endpoint that does not answer and refused credentials are errors,
never runs that were not created.

Each run is started as its pod would start it: `python -m trainer` with the point's resolved spec in
DISTILLCTL_SPEC (what the rendered JobSet carries), here on this machine's CPU.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import fsspec
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.core.rendering import spec_json
from orchestrator.exit_codes import ExitCode
from tests.results_support import expanded, sweep_data, write_sweep

REPO = Path(__file__).resolve().parents[1]
BUCKET = "distill-ci"
runner = CliRunner()
pytestmark = pytest.mark.slow


def run_pod(point, env: dict[str, str], *, stop_at_checkpoint: str | None = None) -> subprocess.CompletedProcess:
    """`python -m trainer` as the point's pod runs it; with `stop_at_checkpoint`, SIGTERM once that checkpoint
    directory exists (the trainer saves another checkpoint and exits 143)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env, "DISTILLCTL_SPEC": spec_json(point)},
    )
    if stop_at_checkpoint:
        fs = fsspec.filesystem("gs", token="anon")
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            fs.invalidate_cache()
            if fs.exists(stop_at_checkpoint):
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.2)
    out, _ = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def test_runs_write_resume_and_report_on_gs(gcs, tmp_path, monkeypatch):
    gcs.create_bucket(BUCKET)
    for name, value in gcs.env.items():
        monkeypatch.setenv(name, value)  # this process (results, regress, gcsfs below) and the trainers
    base = f"gs://{BUCKET}/runs"
    fs = fsspec.filesystem("gs", token="anon")
    for module in (textwrap, argparse):  # a corpus every Python installation ships
        fs.put_file(module.__file__, f"gs://{BUCKET}/corpus/{Path(module.__file__).stem}.txt")
    corpus = {"data.source": "text", "data.path": f"gs://{BUCKET}/corpus/*.txt"}
    sweep = tmp_path / "ongcs.yaml"
    data = sweep_data(base, name="ongcs", baseline=[], zip=[])
    # Students long enough (120 steps, 11 checkpoints on the emulator) that a SIGTERM sent when the first
    # checkpoint appears always lands mid-run.
    data["overrides"].update({**corpus, "steps": 120, "checkpoint.every_steps": 10})
    data["prerequisites"]["teacher"]["overrides"].update(corpus)
    sweep.write_text(yaml.safe_dump(data, sort_keys=False))
    expansion = expanded(sweep)
    teacher = next(r for r in expansion.runs if r.role == "prerequisite")
    students = [r for r in expansion.runs if r.role == "point"]
    assert teacher.spec.data.path == students[0].spec.data.path == corpus["data.path"]

    done = run_pod(teacher, gcs.env)
    assert done.returncode == 0, done.stdout
    outputs = {Path(p).name for p in fs.ls(f"{base}/{teacher.run_id}")}
    assert {"spec.json", "metrics.jsonl", "summary.json", "checkpoints", "tensorboard"} <= outputs, outputs
    assert fs.ls(f"{base}/{teacher.run_id}/checkpoints")

    # A student distilled from the teacher's gs:// checkpoint, stopped by SIGTERM mid-run and run again.
    first, second = students
    stopped = run_pod(first, gcs.env, stop_at_checkpoint=f"{base}/{first.run_id}/checkpoints/10")
    assert stopped.returncode == 143, stopped.stdout
    summary = json.loads(fs.cat(f"{base}/{first.run_id}/summary.json"))
    assert summary["status"] == "preempted" and summary["step"] < first.spec.steps, summary
    resumed = run_pod(first, gcs.env)
    assert resumed.returncode == 0, resumed.stdout
    summary = json.loads(fs.cat(f"{base}/{first.run_id}/summary.json"))
    assert summary["status"] == "succeeded" and summary["resumed_from_step"] >= 10, summary
    steps = [json.loads(line)["step"] for line in fs.cat(f"{base}/{first.run_id}/metrics.jsonl").decode().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == first.spec.steps, steps  # no step logged twice
    assert run_pod(second, gcs.env).returncode == 0

    # results and regress read it all back from gs:// (statuses from the outputs: no cluster here).
    table = runner.invoke(app, ["results", str(sweep), "--format", "json"])
    assert table.exit_code == ExitCode.OK, table.output
    rows = {row["run_id"]: row for row in json.loads(table.stdout)["runs"]}
    for student in students:
        row = rows[student.run_id]
        assert row["status"]["phase"] == "Succeeded" and row["step"] == student.spec.steps, row
        assert row["metrics"]["distill/kl_div_T1"] > 0 and row["output_path"] == f"{base}/{student.run_id}", row
    golden = tmp_path / "golden.yaml"
    assert runner.invoke(app, ["golden", "update", str(sweep), "-o", str(golden)]).exit_code == ExitCode.OK
    check = runner.invoke(app, ["regress", str(sweep), "--golden", str(golden), "--junit", str(tmp_path / "j.xml")])
    assert check.exit_code == ExitCode.OK, check.output


# --- a store that cannot be read is an error, never a sweep whose runs were not created -------------------------


def _results(sweep: Path, base: str):
    started = time.monotonic()
    result = runner.invoke(app, ["results", str(sweep), "--format", "json", "--output-base", base])
    return result, time.monotonic() - started


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Refuses(http.server.BaseHTTPRequestHandler):
    """An endpoint that answers every request as Cloud Storage answers a caller without access."""

    def do_GET(self):
        body = json.dumps({"error": {"code": 403, "message": "caller does not have storage.objects.list access"}})
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_a_missing_bucket_or_an_unreachable_store_is_an_error(gcs, tmp_path, monkeypatch):
    from orchestrator import outputs
    from orchestrator.core import status

    gcs.create_bucket("probe-empty")
    for name, value in gcs.env.items():
        monkeypatch.setenv(name, value)
    sweep = write_sweep(tmp_path)

    # A bucket that answers and holds no run: nothing there (from outputs alone, whether they exist is not known).
    found, _ = _results(sweep, "gs://probe-empty/runs")
    assert found.exit_code == ExitCode.OK, found.output
    runs = json.loads(found.stdout)["runs"]
    assert {(r["status"]["phase"], r["status"]["reason"]) for r in runs} == {("Pending", "NotObserved")}

    # No such bucket: exit 2, naming the URL and the bucket.
    missing, _ = _results(sweep, "gs://probe-absent/runs")
    assert missing.exit_code == ExitCode.USAGE and "Traceback" not in missing.output
    assert "cannot read gs://probe-absent/runs: bucket 'probe-absent' does not exist" in missing.stderr
    assert "gcloud storage ls gs://probe-absent" in missing.stderr
    # `status` reads the outputs through the same probe: an error too, not a warning beside NotCreated rows.
    # Launching, following and the sweep service go on from what the cluster says (their pods may reach a store
    # this machine cannot), with the reason as a warning.
    on_gs = expanded(write_sweep(tmp_path, "gs.yaml", output_base="gs://probe-absent/runs"))
    with pytest.raises(outputs.BucketMissing):
        status.read_outputs(on_gs)
    unread, (warning,) = status.read_outputs(on_gs, strict=False)
    assert warning.code == "outputs_unreadable" and "bucket 'probe-absent' does not exist" in warning.message
    assert not any(out.readable for out in unread.values())
    assert status.read_outputs(expanded(write_sweep(tmp_path, "ok.yaml", output_base="gs://probe-empty/runs")))[1] == ()

    # Nothing listening where the store should be: a few quick tries, then exit 2 naming the endpoint.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_closed_port()}")
    refused, took = _results(sweep, "gs://probe-empty/runs")
    assert refused.exit_code == ExitCode.USAGE and took < outputs.PROBE_SECONDS, (took, refused.output)
    assert "cannot read gs://probe-empty/runs: the object store at http://127.0.0.1:" in refused.stderr
    assert "cannot be reached" in refused.stderr and "STORAGE_EMULATOR_HOST" in refused.stderr

    # An endpoint that accepts the connection and never answers: bounded by the probe's time, not gcsfs's retries.
    monkeypatch.setattr(outputs, "PROBE_SECONDS", 2.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{silent.getsockname()[1]}")
        hung, took = _results(sweep, "gs://probe-empty/runs")
    assert hung.exit_code == ExitCode.USAGE and took < 6, (took, hung.output)
    assert "no answer within 2 s" in hung.stderr

    # Credentials refused (403): exit 7, the forbidden code.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        forbidden, _ = _results(sweep, "gs://probe-empty/runs")
    finally:
        server.shutdown()
        server.server_close()
    assert forbidden.exit_code == ExitCode.FORBIDDEN, forbidden.output
    assert "not allowed to list bucket 'probe-empty'" in forbidden.stderr
    assert "storage.objects.list" in forbidden.stderr
