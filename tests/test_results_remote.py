"""Outputs on remote storage: read through fsspec (here its in-memory filesystem, as gs:// would be through gcsfs),
partial files tolerated, and gs:// without gcsfs a clear error instead of a sweep that silently never ran."""

from __future__ import annotations

import json

import fsspec
import pytest
from results_support import expanded, records, summary, write_outputs, write_sweep
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.exit_codes import ExitCode
from orchestrator.outputs import MissingFilesystem, read_run_outputs

runner = CliRunner()


@pytest.fixture
def bucket(tmp_path):
    """A fresh prefix on fsspec's process-wide memory filesystem."""
    fs = fsspec.filesystem("memory")
    root = f"memory://bucket-{tmp_path.name}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def put(fs, url: str, text: str) -> None:
    fs.pipe_file(url, text.encode())


def test_results_read_a_remote_output_base(tmp_path, bucket):
    fs, root = bucket
    path = write_sweep(tmp_path, output_base=f"{root}/runs")
    result = expanded(path)
    for run in result.runs:
        assert run.output_path.startswith(f"{root}/runs/")
        put(fs, f"{run.output_path}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records(run)))
        put(fs, f"{run.output_path}/summary.json", json.dumps(summary(run)))
    out = runner.invoke(app, ["results", str(path), "--format", "json"])
    assert out.exit_code == ExitCode.OK, out.output
    data = json.loads(out.stdout)
    assert [r["status"]["phase"] for r in data["runs"]] == ["Succeeded"] * 6
    assert data["best"] is not None and data["runs"][1]["output_path"] == result.points[0].output_path


def test_remote_partial_files_read_as_shorter_not_as_errors(bucket):
    fs, root = bucket
    lines = [
        {"step": s, "time": float(s), "tokens": 10 * s, "metrics": {"distill/kl_div_T1": {"sum": 2.0, "count": 1.0}}}
        for s in (10, 20)
    ]
    put(fs, f"{root}/run/metrics.jsonl", "".join(json.dumps(x) + "\n" for x in lines) + '{"step": 30, "ti')
    put(fs, f"{root}/run/summary.json", '{"status": "running", "st')
    outputs = read_run_outputs(f"{root}/run")
    assert [r.step for r in outputs.log] == [10, 20] and outputs.summary is None and outputs.exists
    missing = read_run_outputs(f"{root}/never-ran")
    assert not missing.exists and missing.log == () and missing.summary is None


def test_output_base_override_reads_a_copy_elsewhere(tmp_path):
    path = write_sweep(tmp_path, output_base="gs://never-read/runs")
    result = expanded(path)
    for run in result.runs:
        write_outputs(run, base=tmp_path / "copy")
    out = runner.invoke(app, ["results", str(path), "--format", "csv", "--output-base", str(tmp_path / "copy")])
    assert out.exit_code == ExitCode.OK, out.output
    assert out.stdout.count(",Succeeded,") == 6 and str(tmp_path / "copy") in out.stdout


def test_each_command_in_one_process_says_its_own_warnings(tmp_path):
    """The CLI run twice in one process (the tests, anything embedding it) warned only the first time: the second
    `results` of a wrong --output-base said nothing (a service test's `status` lost the orphan warning its
    `sweep --service` had given)."""
    path = write_sweep(tmp_path, output_base="gs://never-read/runs")
    (tmp_path / "empty").mkdir()
    for _ in range(2):
        out = runner.invoke(app, ["results", str(path), "--output-base", str(tmp_path / "empty")])
        assert "warning[no_outputs]" in out.stderr, out.output


def test_gs_without_gcsfs_says_which_extra_to_install(tmp_path, monkeypatch):
    real = fsspec.get_filesystem_class

    def without_gcsfs(protocol):
        if protocol in ("gs", "gcs"):
            raise ImportError("Please install gcsfs to access Google Storage")
        return real(protocol)

    monkeypatch.setattr(fsspec, "get_filesystem_class", without_gcsfs)  # outputs imports fsspec when reading
    with pytest.raises(MissingFilesystem) as caught:
        read_run_outputs("gs://bucket/runs/abc")
    assert "distillctl[gcs]" in caught.value.hint
    path = write_sweep(tmp_path, output_base="gs://bucket/runs")
    out = runner.invoke(app, ["results", str(path)])
    assert out.exit_code == ExitCode.USAGE and "Traceback" not in out.output
    assert "gcsfs" in out.stderr and "distillctl[gcs]" in out.stderr


def test_an_unknown_protocol_is_a_usage_error():
    with pytest.raises(Exception) as caught:
        read_run_outputs("nosuchproto://x/y")
    assert getattr(caught.value, "exit_code", None) == ExitCode.USAGE


def test_image_override_finds_runs_launched_with_another_image(tmp_path):
    """The image is part of each run id: a sweep launched with `--image` is read back with the same override."""
    from distillspec.sweep import load_sweep, override_target
    from orchestrator.core.expansion import expand

    target = {
        "kind": "kubernetes",
        "tpu_type": "v5p-8",
        "image": "registry/trainer:base",
        "output_base": str(tmp_path / "runs"),
    }
    path = write_sweep(tmp_path, target=target)
    launched = expand(override_target(load_sweep(path), image="registry/trainer:sha-123"))
    for run in launched.runs:
        write_outputs(run)
    found = runner.invoke(app, ["results", str(path), "--format", "json", "--image", "registry/trainer:sha-123"])
    assert found.exit_code == ExitCode.OK, found.output
    runs = json.loads(found.stdout)["runs"]
    assert [r["run_id"] for r in runs] == [r.run_id for r in launched.runs]
    assert {r["status"]["phase"] for r in runs} == {"Succeeded"} and runs[1]["chip_hours"] == pytest.approx(0.1)
    other = json.loads(runner.invoke(app, ["results", str(path), "--format", "json"]).stdout)["runs"]
    assert {r["status"]["phase"] for r in other} == {"Pending"}  # the base image's run ids never ran
