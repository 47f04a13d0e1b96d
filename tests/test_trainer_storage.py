"""Faults of the storage under a run, with real `python -m trainer` processes: an unusable output or checkpoint path
fails the run with exit 1 and the reason (before step 0, or at the save that meets it), never hangs and is never
called retryable; wall time counts every attempt; outputs keep the user's umask; a failing process other than 0
leaves its verdict in the output storage, where the orchestrator reads it once the processes are gone."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_support import REPO, TEACHER, merged, python_env, read_metrics, run_trainer, spec_of, write_spec

pytest.importorskip("jax")

from distillspec.contract import ENV_RUN_ID, TrainerExit  # noqa: E402

pytestmark = pytest.mark.slow

HANG = 240  # seconds: a run that has decided to end takes seconds; the old hang was orbax's 300 s signal timeout


def test_a_checkpoint_write_that_fails_in_the_background_ends_the_run_before_the_next_save(tmp_path):
    """A full disk under the save of step 40 (a 5 MB tmpfs: one checkpoint of this model fits, two do not): orbax
    fails the write in its background threads, logs it and skips the step; the run trained on to step 60, the next
    save, and those steps were lost. It now ends as soon as that save is over, a few steps later."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True).returncode
        == 0
    )
    if not mounted:
        pytest.skip("a small tmpfs needs root (mount -t tmpfs)")
    try:
        data = merged(
            TEACHER,
            name="t",
            output_dir=str(mount),
            steps=80,
            batch={"per_device_batch_size": 8, "max_target_length": 256},  # steps long enough to outlast a save
            checkpoint={"every_steps": 20},
            logging={"every_steps": 5},
        )
        done = run_trainer(["--spec", str(write_spec(tmp_path / "t.json", data))], timeout=HANG)
        assert done.returncode == TrainerExit.USER_ERROR, done.stderr[-3000:]
        summary = summary_of(mount / "t")
        assert summary["status"] == "failed" and 40 <= summary["step"] < 60, summary
        assert summary["message"].startswith(f"OutputNotWritable: {mount / 't' / 'checkpoints'}: ")
        assert "No space left on device" in summary["message"] and "Traceback" not in done.stderr
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def can_chattr(tmp_path: Path) -> bool:
    probe = tmp_path / "chattr-probe"
    probe.mkdir()
    ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    return ok and os.geteuid() == 0


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotADirectoryError(errno.ENOTDIR, "Not a directory"), TrainerExit.USER_ERROR),
        (PermissionError(errno.EACCES, "Permission denied"), TrainerExit.USER_ERROR),
        (OSError(errno.EROFS, "Read-only file system"), TrainerExit.USER_ERROR),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), TrainerExit.USER_ERROR),
        (OSError(errno.EIO, "Input/output error"), TrainerExit.RETRYABLE),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), TrainerExit.RETRYABLE),
        (TimeoutError("write timed out"), TrainerExit.RETRYABLE),
    ],
)
def test_unusable_storage_is_a_user_error_and_transient_io_is_retried(error, code):
    from trainer.exit_codes import storage_failure

    failure = storage_failure("/runs/x/checkpoints", error)
    assert failure.exit_code == code
    if code == TrainerExit.USER_ERROR:
        assert failure.message == f"OutputNotWritable: /runs/x/checkpoints: {error}"
        # A full disk or quota is writable: the permissions hint sent people looking at the wrong thing.
        full = "free space there" in failure.hint
        assert full == (getattr(error, "errno", None) == errno.EDQUOT), failure.hint


def test_a_full_disk_said_by_tensorstore_gets_the_free_space_hint_and_orbax_threads_one_line_each():
    """A full disk during a save printed five tracebacks of orbax's threads (~440 lines) before the verdict."""
    import logging

    from trainer import checkpointing  # noqa: F401 - installs the filter
    from trainer.exit_codes import storage_failure

    said = "RESOURCE_EXHAUSTED: Failed to write 40902 bytes: No space left on device [os_error_code='28']"
    failure = storage_failure("/runs/x/checkpoints", ValueError(said))
    assert failure.exit_code == TrainerExit.USER_ERROR and "free space there" in failure.hint
    try:
        raise ValueError(said)
    except ValueError:
        record = logging.LogRecord(
            "absl", logging.ERROR, "/x/orbax/checkpoint/_src/futures/future.py", 1, "run() raised: %s", (said,), True
        )
        record.exc_info = sys.exc_info()
    for f in logging.getLogger("absl").filters:
        f.filter(record)
    assert record.exc_info is None and record.getMessage() == f"run() raised: {said}"
    assert "\n" not in logging.Formatter().format(record)


def test_a_file_where_the_checkpoints_belong_fails_before_step_0(tmp_path):
    run_dir = tmp_path / "t"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("not a directory")
    spec = write_spec(tmp_path / "t.json", merged(TEACHER, name="t", output_dir=str(tmp_path)))
    done = run_trainer(["--spec", str(spec)], env=python_env(**{ENV_RUN_ID: "abc123xyz0"}), timeout=HANG)
    assert done.returncode == TrainerExit.USER_ERROR, done.stderr[-2000:]
    summary = summary_of(run_dir)
    assert summary["status"] == "failed" and summary["exit_code"] == 1 and summary["step"] == 0
    assert summary["message"].startswith(f"OutputNotWritable: {run_dir / 'checkpoints'}: ")
    assert summary["run_id"] == "abc123xyz0"  # the orchestrator's DISTILLCTL_RUN_ID, recorded
    assert "OutputNotWritable" in done.stderr and "Traceback" not in done.stderr
    assert not (run_dir / "metrics.jsonl").exists()  # nothing was trained


@pytest.mark.parametrize("fault", ["file-in-place", "immutable"])
def test_a_checkpoint_save_that_fails_mid_run_ends_the_run_at_that_save(tmp_path, fault):
    """The checkpoints directory becomes unusable after step 0 (replaced by a file; or `chattr +i`, as root): the
    save at step 150 fails, the run stops there with exit 1 and the reason, and the process ends at once."""
    if fault == "immutable" and not can_chattr(tmp_path):
        pytest.skip("chattr +i needs root on a file system that supports it")
    data = merged(TEACHER, name="t", output_dir=str(tmp_path), steps=300, checkpoint={"every_steps": 150})
    spec = write_spec(tmp_path / "t.json", merged(data, logging={"every_steps": 5}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "--spec", str(spec)],
        cwd=REPO,
        env=python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir, checkpoints = tmp_path / "t", tmp_path / "t" / "checkpoints"
    try:
        deadline = time.time() + HANG
        while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.05)
        if fault == "file-in-place":
            checkpoints.rmdir()  # empty: the first save is at step 150
            checkpoints.write_text("")
        else:
            subprocess.run(["chattr", "+i", str(checkpoints)], check=True)
        err = proc.communicate(timeout=HANG)[1]
    finally:
        subprocess.run(["chattr", "-i", str(checkpoints)], capture_output=True)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == TrainerExit.USER_ERROR, err[-2000:]
    summary = summary_of(run_dir)
    assert summary["status"] == "failed" and summary["step"] == 150  # not one step trained without a checkpoint
    assert summary["message"].startswith(f"OutputNotWritable: {checkpoints}: ")
    assert read_metrics(run_dir)[-1]["step"] == 150
    assert "OutputNotWritable" in err and "Timeout waiting for key" not in err


def test_wall_time_counts_every_attempt_and_outputs_keep_the_umask(tmp_path):
    from trainer.train import run

    data = merged(TEACHER, name="w", output_dir=str(tmp_path), steps=20, checkpoint={"every_steps": 10})

    class SigtermAt10:
        def start(self, *a):
            pass

        def note(self, m):
            pass

        def end(self, *a):
            pass

        def log(self, record):
            if record["step"] == 10:
                os.kill(os.getpid(), signal.SIGTERM)

    previous = os.umask(0o027)
    try:
        assert run(spec_of(data), reporter=SigtermAt10()) == TrainerExit.PREEMPTED
        first = summary_of(tmp_path / "w")["wall_time_sec"]
        began = time.time()
        assert run(spec_of(data)) == TrainerExit.OK
        second_attempt = time.time() - began
    finally:
        os.umask(previous)
    summary = summary_of(tmp_path / "w")
    assert summary["resumed_from_step"] == 10
    assert first + 0.9 * second_attempt <= summary["wall_time_sec"] <= first + second_attempt + 1.0
    for name in ("spec.json", "summary.json", "metrics.jsonl"):
        assert (tmp_path / "w" / name).stat().st_mode & 0o777 == 0o640, name  # 0666 & ~umask, not mkstemp's 0600


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failing_worker_leaves_its_verdict_for_the_orchestrator(tmp_path):
    """Two processes; process 1 alone cannot start (its share of the data holds no text, as if its files were
    truncated). It exits 1 and writes failures/process-1.json; process 0 is then killed, as Kubernetes tears the
    JobSet down. With no processes left, the orchestrator reads the run as Failed with process 1's reason. (The
    processes are started with one spec: another on one of them is refused before anything is read.)"""
    from orchestrator.core.run_status import Observation, derive
    from orchestrator.outputs import read_run_outputs

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text("".join(json.dumps({"text": f"document {j} " * 20}) + "\n" for j in range(20)))
    (docs / "b.jsonl").write_text(json.dumps({"text": ""}) + "\n")  # process 1's share
    data = merged(
        TEACHER,
        name="pair",
        output_dir=str(tmp_path),
        steps=10,
        batch={"per_device_batch_size": 4},
        data={"source": "jsonl", "path": str(docs)},
    )
    specs = [write_spec(tmp_path / "p.json", data)] * 2
    (tmp_path / "pair" / "failures").mkdir(parents=True)
    (tmp_path / "pair" / "failures" / "process-1.json").write_text('{"status": "failed", "message": "stale"}')
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trainer", "--spec", str(specs[i]), "--coordinator-address", address]
            + ["--num-processes", "2", "--process-id", str(i)],
            cwd=REPO,
            env=python_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        err1 = procs[1].communicate(timeout=HANG)[1]
    finally:
        procs[0].kill()
        procs[0].communicate()
    assert procs[1].returncode == TrainerExit.USER_ERROR, err1[-2000:]
    failure = json.loads((tmp_path / "pair" / "failures" / "process-1.json").read_text())
    assert failure["process_index"] == 1 and failure["exit_code"] == 1 and failure["status"] == "failed"
    assert "holds no document with text (process 1's share of 2)" in failure["message"]

    outputs = read_run_outputs(str(tmp_path / "pair"))
    status = derive(Observation(exists=False), outputs, now=time.time(), stall_after=900.0)
    assert status.phase == "Failed" and status.terminal
    # process 1's reason, from its failure file or from process 0's summary (which, killed or not, names it)
    assert "process 1" in status.message and "holds no document" in status.message, status.message


def test_failure_files_and_the_storage_probe_work_on_object_store_urls():
    """The gs:// code path (fsspec, no local file calls), on fsspec's in-memory file system."""
    from orchestrator.outputs import read_failures
    from trainer.metrics_io import check_writable, clear_process_failure, write_process_failure

    check_writable("memory://bucket/probe-run/checkpoints")
    record = {"status": "failed", "exit_code": 42, "process_index": 3, "message": "EIO"}
    write_process_failure("memory://bucket/probe-run", 3, record)
    assert read_failures("memory://bucket/probe-run") == (record,)
    clear_process_failure("memory://bucket/probe-run", 3)
    assert read_failures("memory://bucket/probe-run") == ()


def test_sigterm_while_a_teacher_store_does_not_answer_ends_the_run_at_once(tmp_path):
    """A gs:// teacher whose endpoint refuses every connection: gcsfs retries each request for about a minute
    (the whole start took 3 minutes), and SIGTERM used to wait for the first step boundary. Nothing is trained
    yet, so the signal ends the run there: exit 143, preempted, no traceback from gcsfs's own log."""
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    spec = {
        "name": "unanswered",
        "student": {"model": "tiny-2l"},
        "teacher": {"model": "tiny-4l", "load_parameters_path": "gs://bucket/runs/teacher/checkpoints"},
        "batch": {"per_device_batch_size": 2, "max_target_length": 16},
        "steps": 5,
        "output_dir": str(tmp_path / "runs"),
    }
    trainer = subprocess.Popen(
        [sys.executable, "-m", "trainer", "--spec", str(write_spec(tmp_path / "spec.json", spec))],
        cwd=REPO,
        env=python_env(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # JAX imported (its signal handlers in place), the first request refused and being retried: 8 s on an idle
    # machine; gcsfs retries for about a minute, so a loaded one gets more before the signal
    time.sleep(15)
    assert trainer.poll() is None, trainer.communicate()
    signalled = time.monotonic()
    trainer.send_signal(signal.SIGTERM)
    out, err = trainer.communicate(timeout=HANG)
    assert trainer.returncode == TrainerExit.PREEMPTED, out + err
    assert time.monotonic() - signalled < 30, "the signal waited for gcsfs's retries"
    summary = summary_of(tmp_path / "runs" / "unanswered")
    assert summary["status"] == "preempted" and "before training; nothing to save" in summary["message"], summary
    assert "Traceback" not in out + err, err


def test_a_folder_that_cannot_hold_files_is_not_retryable():
    # An output_dir under /proc: the probe's FileNotFoundError read as transient (exit 42), retried until
    # max_restarts although no retry changes it.
    from trainer.exit_codes import OutputNotWritable
    from trainer.metrics_io import check_writable

    with pytest.raises(OutputNotWritable) as e:
        check_writable("/proc/runs/x")
    assert e.value.exit_code == TrainerExit.USER_ERROR and "/proc/runs/x" in e.value.message
