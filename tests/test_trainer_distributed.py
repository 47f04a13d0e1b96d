"""Sharded and multi-process runs compute what a one-device run computes.

- 8 simulated CPU devices (`--xla_force_host_platform_device_count=8`, set before JAX starts, so in a
  subprocess) on a data × fsdp × tensor = 2 × 2 × 2 mesh;
- two `python -m trainer` processes joined through a coordinator on 127.0.0.1 (one CPU device each, gloo
  collectives), process 0 alone writing the outputs.
The global batch is the same in every layout, so the metrics must agree to float32 rounding.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from trainer_support import REPO, TEACHER, merged, python_env, read_metrics, run_trainer, write_spec

pytest.importorskip("jax")
pytestmark = pytest.mark.slow

BASE = merged(TEACHER, steps=10, logging={"every_steps": 5}, checkpoint={"every_steps": 5})


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The reference: one device, 8 rows per step; its run folder."""
    out = tmp_path_factory.mktemp("single")
    spec = write_spec(out / "one.json", merged(BASE, name="one", output_dir=str(out)))
    done = run_trainer(["--spec", str(spec)])
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "one"


@pytest.fixture(scope="module")
def single(single_run):
    return read_metrics(single_run)


def assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a["tokens"] == b["tokens"]
        assert set(a["metrics"]) == set(b["metrics"])
        for name in a["metrics"]:
            assert a["metrics"][name]["count"] == b["metrics"][name]["count"], name
            assert a["metrics"][name]["sum"] == pytest.approx(b["metrics"][name]["sum"], rel=1e-4), name


def test_eight_device_sharded_run_matches_one_device(single, tmp_path):
    data = merged(
        BASE,
        name="eight",
        output_dir=str(tmp_path),
        batch={"per_device_batch_size": 1},
        mesh={"data": 2, "fsdp": 2, "tensor": 2},
    )
    spec = write_spec(tmp_path / "eight.json", data)
    env = python_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = run_trainer(["--spec", str(spec)], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_metrics(read_metrics(tmp_path / "eight"), single)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_completes_and_matches(single, tmp_path):
    data = merged(BASE, name="two", output_dir=str(tmp_path), batch={"per_device_batch_size": 4})
    spec = write_spec(tmp_path / "two.json", data)
    address = f"127.0.0.1:{_free_port()}"
    procs = _launch_pair(spec, address)
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "succeeded" in outputs[0][1]
    assert_same_metrics(read_metrics(tmp_path / "two"), single)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["tokens"] == 10 * 8 * 32
    assert (tmp_path / "two" / "checkpoints" / "10").is_dir()


def test_processes_started_alike_or_not_at_all(tmp_path):
    # Process 1 with another learning rate trained a model no spec describes (spec.json said process 0's value), and
    # another --steps hung both after process 0 said "succeeded".
    data = merged(BASE, name="unlike", output_dir=str(tmp_path), batch={"per_device_batch_size": 4})
    spec = write_spec(tmp_path / "a.json", data)
    other = write_spec(tmp_path / "b.json", merged(data, optimizer={"learning_rate": 0.3}))
    procs = _launch_pair(spec, f"127.0.0.1:{_free_port()}", specs=(spec, other))
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], errors
    for index, err in enumerate(errors):
        assert f"process {index} was started with another spec than process {1 - index}" in err, err[-2000:]
        assert "optimizer.learning_rate" in err
    summary = json.loads((tmp_path / "unlike" / "summary.json").read_text())
    assert summary["status"] == "failed" and "another spec" in summary["message"]


def test_a_process_that_fails_at_start_up_ends_the_others_with_its_reason(tmp_path):
    # Process 1 exited 1 at once (its share of the data held no text), and process 0 waited in the first step's
    # collectives until JAX's heartbeat timeout aborted it (134 after ~100 s, its summary left "running").
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text("".join(json.dumps({"text": f"document {j} " * 20}) + "\n" for j in range(20)))
    (docs / "b.jsonl").write_text(json.dumps({"text": ""}) + "\n")  # process 1's share: nothing to train on
    data = merged(BASE, name="lonely", output_dir=str(tmp_path), batch={"per_device_batch_size": 4})
    spec = write_spec(tmp_path / "a.json", merged(data, data={"source": "jsonl", "path": str(docs)}))
    procs = _launch_pair(spec, f"127.0.0.1:{_free_port()}")
    started = time.monotonic()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], errors
    assert time.monotonic() - started < 90  # not JAX's heartbeat timeout
    assert "process 1 failed before training (exit 1)" in errors[0] and "holds no document" in errors[0], errors[0][
        -2000:
    ]
    summary = json.loads((tmp_path / "lonely" / "summary.json").read_text())
    assert summary["status"] == "failed" and "process 1 failed before training" in summary["message"]
    assert summary["failure_reason"] == "peer_failed"  # as when a peer's failure is met mid-run


def test_a_process_that_fails_mid_run_gives_the_run_its_reason(tmp_path):
    # A bad line deep in process 1's file: process 1 exited 1 naming it, and process 0 exited 42 with "Gloo ...
    # failed" in summary.json, so the JobSet restarted the run into the same line again and again.
    docs = tmp_path / "docs"
    docs.mkdir()
    lines = [json.dumps({"text": f"document {j} " * 20}) for j in range(40)]
    (docs / "a.jsonl").write_text("\n".join(lines) + "\n")
    (docs / "b.jsonl").write_text("\n".join(lines[:12] + ['{"text": "cut off'] + lines[12:]) + "\n")
    data = merged(BASE, name="midway", output_dir=str(tmp_path), steps=30, batch={"per_device_batch_size": 4})
    spec = write_spec(tmp_path / "a.json", merged(data, data={"source": "jsonl", "path": str(docs)}))
    procs = _launch_pair(spec, f"127.0.0.1:{_free_port()}")
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], [e[-2000:] for e in errors]
    summary = json.loads((tmp_path / "midway" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["exit_code"] == 1 and summary["step"] > 0, summary
    assert summary["message"].startswith("process 1 failed (exit 1):") and "b.jsonl" in summary["message"], summary


def _launch_pair(
    spec, address: str, specs=None, counts=(2, 2), *, addresses=None, commands=None, **env: str
) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a run: `python -m trainer` (or `commands[i]`, the arguments after the interpreter),
    each with its spec, coordinator address, process count and `env` added to the environment."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                *(commands[i] if commands else ["-m", "trainer"]),
                "--spec",
                str((specs or (spec, spec))[i]),
                "--coordinator-address",
                (addresses or (address, address))[i],
                "--num-processes",
                str(counts[i]),
                "--process-id",
                str(i),
            ],
            cwd=REPO,
            env=python_env(**env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def test_two_processes_stop_together_on_sigterm_and_resume(tmp_path):
    """SIGTERM to every process (as Kubernetes sends it): they agree on one step through the coordination
    service's preemption sync point, save one checkpoint there and exit 143; a rerun resumes and finishes."""
    import signal
    import time

    data = merged(
        BASE,
        name="pre",
        output_dir=str(tmp_path),
        steps=40,  # the SIGTERM lands at step 10 or a little later; the rest is what the resumed run trains
        batch={"per_device_batch_size": 4},
        checkpoint={"every_steps": 1000},
    )
    spec = write_spec(tmp_path / "pre.json", data)
    procs = _launch_pair(spec, f"127.0.0.1:{_free_port()}")
    metrics = tmp_path / "pre" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs]
        time.sleep(0.1)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [143, 143], [e[-2000:] for e in errors]
    summary = json.loads((tmp_path / "pre" / "summary.json").read_text())
    stopped = summary["step"]
    assert summary["status"] == "preempted" and 10 <= stopped < 40
    assert (tmp_path / "pre" / "checkpoints" / str(stopped)).is_dir()

    procs = _launch_pair(spec, f"127.0.0.1:{_free_port()}")
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
    summary = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["resumed_from_step"] == stopped
    # what it trained on, recorded (tokens/s and wall time compare only at one topology)
    assert summary["topology"] == {"processes": 2, "devices": 2, "mesh": {"data": 1, "fsdp": 2, "tensor": 1}}
    steps = [r["step"] for r in read_metrics(tmp_path / "pre")]
    assert steps == list(range(5, 41, 5))


def test_a_coordinator_port_held_by_another_program_says_so(tmp_path):
    # "cannot join the coordinator at ...: UNKNOWN: Failed to start RPC server", nothing more.
    spec = write_spec(tmp_path / "held.json", merged(BASE, name="held", output_dir=str(tmp_path)))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "trainer", "--spec", str(spec), "--coordinator-address", address]
            + ["--num-processes", "2", "--process-id", "0"],
            cwd=REPO,
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    # JAX crashed (SIGSEGV) or exited 42 saying only "Failed to start RPC server".
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"port {address.rsplit(':', 1)[1]} is already in use on this host" in done.stderr, done.stderr[-2000:]
    # The holder may be this run's own process 0 (two processes given --process-id 0): its record is not this
    # start's to replace (it read "port in use" while process 0 trained on).
    assert "two processes were given --process-id 0" in done.stderr
    assert not (tmp_path / "held" / "summary.json").exists()


def test_a_process_whose_peers_never_join_ends_with_its_record_not_jaxs_abort(tmp_path):
    # Process 0 alone (its peer never started) and process 1 alone (no coordinator at its address) each waited
    # JAX's 5 minutes and were aborted by it: exit 134, summary.json absent, nothing on stderr but a native stack.
    spec = write_spec(tmp_path / "alone.json", merged(BASE, name="alone", output_dir=str(tmp_path)))
    alone = (f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}")
    procs = _launch_pair(spec, "", addresses=alone, DISTILLCTL_JOIN_TIMEOUT_S="8")
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [42, 42], [e[-2000:] for e in errors]
    for err in errors:
        assert "not every one of the 2 processes joined the coordinator" in err and "within 8 s" in err, err[-2000:]
    summary = json.loads((tmp_path / "alone" / "summary.json").read_text())
    assert (summary["status"], summary["exit_code"], summary["failure_reason"]) == (
        "failed",
        42,
        "processes_not_joined",
    )
    failure = json.loads((tmp_path / "alone" / "failures" / "process-1.json").read_text())
    assert failure["failure_reason"] == "processes_not_joined" and failure["process_index"] == 1


def test_a_peer_killed_before_it_reports_ends_the_others_with_a_record_not_jaxs_abort(tmp_path):
    # Process 1 killed (SIGKILL, out of memory) after joining, before posting how it was started: process 0 waited
    # until JAX's heartbeat timeout aborted it, 134 after ~100 s, summary.json absent.
    spec = write_spec(tmp_path / "lost.json", merged(BASE, name="lost", output_dir=str(tmp_path)))
    address = f"127.0.0.1:{_free_port()}"
    dies = (
        "import os, signal, sys; import trainer.train as t; "
        "t._check_processes_agree = lambda spec: os.kill(os.getpid(), signal.SIGKILL); "
        "from trainer.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    procs = _launch_pair(spec, address, commands=(["-m", "trainer"], ["-c", dies]))
    started = time.monotonic()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [42, -9], [e[-2000:] for e in errors]
    assert time.monotonic() - started < 95  # before JAX's own 100 s heartbeat timeout
    assert "process 1 stopped answering before it could report how it was started" in errors[0], errors[0][-2000:]
    summary = json.loads((tmp_path / "lost" / "summary.json").read_text())
    assert (summary["status"], summary["exit_code"], summary["failure_reason"]) == ("failed", 42, "peer_lost")


def test_another_process_that_fails_to_start_leaves_the_runs_summary_alone(tmp_path):
    # Process 1 with a bad option failed before JAX started and wrote summary.json as if it were process 0: a
    # preempted run's record (resumable, never retried once "failed") was replaced by its user error.
    spec = write_spec(tmp_path / "kept.json", merged(BASE, name="kept", output_dir=str(tmp_path)))
    (tmp_path / "kept").mkdir()
    record = {"status": "preempted", "exit_code": 143, "step": 5, "total_steps": 10, "message": "checkpoint saved"}
    (tmp_path / "kept" / "summary.json").write_text(json.dumps(record))
    flags = ["--coordinator-address", f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--process-id", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "--spec", str(spec), *flags],
        cwd=REPO,
        env=python_env(DISTILLCTL_JOIN_TIMEOUT_S="abc"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "DISTILLCTL_JOIN_TIMEOUT_S must be a whole number" in done.stderr, done.stderr
    assert json.loads((tmp_path / "kept" / "summary.json").read_text()) == record
    failure = json.loads((tmp_path / "kept" / "failures" / "process-1.json").read_text())
    assert failure["process_index"] == 1 and "DISTILLCTL_JOIN_TIMEOUT_S" in failure["message"]


def test_processes_given_another_process_count_are_refused(tmp_path):
    # Process 1 said --num-processes 3, process 0 2: JAX took process 0's and both trained, the mistake unsaid.
    spec = write_spec(tmp_path / "count.json", merged(BASE, name="count", output_dir=str(tmp_path)))
    procs = _launch_pair(spec, f"127.0.0.1:{_free_port()}", counts=(2, 3))
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], [e[-2000:] for e in errors]
    assert "process 0 was started with --num-processes 2, process 1 with 3" in errors[0], errors[0][-2000:]
    assert "process 1 was started with --num-processes 3, process 0 with 2" in errors[1], errors[1][-2000:]


def test_two_processes_write_a_logit_cache_and_keep_it_when_started_again(single_run, tmp_path):
    # Started again, a finished cache run recomputed every micro-batch; process 0's reading of the manifest decides
    # for every process (a host's own disk may not hold it).
    data = merged(
        BASE,
        name="cache",
        mode="teacher_logits",
        output_dir=str(tmp_path),
        steps=3,
        top_k=8,
        batch={"per_device_batch_size": 4},
        student={"model": "tiny-2l"},
        teacher={"model": "tiny-4l", "load_parameters_path": str(single_run / "checkpoints")},
    )
    spec = write_spec(tmp_path / "cache.json", data)
    for attempt in ("writes", "keeps"):
        procs = _launch_pair(spec, f"127.0.0.1:{_free_port()}")
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        manifest = tmp_path / "cache" / "logits" / "manifest.json"
        if attempt == "writes":
            written = {f: f.stat().st_mtime_ns for f in (tmp_path / "cache" / "logits").rglob("*") if f.is_file()}
            assert json.loads(manifest.read_text())["processes"] == 2 and len(written) == 2 * 3 + 1
        else:
            assert "kept as it is" in errors[0], errors[0][-2000:]
            assert {f: f.stat().st_mtime_ns for f in written} == written
    # Students on another number of processes than the writer read the same rows (a cache made on 16 hosts served
    # only 16): one process and two train alike.
    student = merged(
        {k: v for k, v in data.items() if k not in ("mode", "name")},
        offline_data_dir=str(tmp_path / "cache" / "logits"),
        loss={"beta": 0.0, "layer_indices": None},
    )
    one = write_spec(tmp_path / "one.json", merged(student, name="from-one", batch={"per_device_batch_size": 8}))
    done = run_trainer(["--spec", str(one)])
    assert done.returncode == 0, done.stderr[-3000:]
    two = write_spec(tmp_path / "two.json", merged(student, name="from-two"))
    procs = _launch_pair(two, f"127.0.0.1:{_free_port()}")
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert_same_metrics(read_metrics(tmp_path / "from-one"), read_metrics(tmp_path / "from-two"))
