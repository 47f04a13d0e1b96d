"""The two entry points: `distillctl train SPEC` (in-process, JAX imported lazily) and `python -m trainer`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from trainer_support import REPO, TEACHER, merged, python_env, run_trainer
from typer.testing import CliRunner

pytest.importorskip("jax")
pytestmark = pytest.mark.slow

STDLIB_JSON = str(Path(json.__file__).parent)


def test_the_base_cli_does_not_import_jax():
    code = "import sys, orchestrator.cli; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_distillctl_train_runs_a_spec_on_text_data(tmp_path):
    from orchestrator.cli import app

    data = merged(
        TEACHER, name="cli", data={"source": "text", "path": STDLIB_JSON + "/*.py"}, checkpoint={"every_steps": 4}
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["train", str(spec), "--output-dir", str(tmp_path / "out"), "--steps", "8"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "out" / "cli"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["step"] == 8 and summary["total_steps"] == 8
    assert json.loads((run_dir / "spec.json").read_text())["data"]["source"] == "text"
    assert "succeeded" in result.output


def test_distillctl_train_rejects_an_invalid_spec_before_importing_jax(tmp_path):
    from orchestrator.cli import app

    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(merged(TEACHER, loss={"alpha": 1.5})))
    result = CliRunner().invoke(app, ["train", str(spec)])
    assert result.exit_code == 4  # the CLI's invalid-spec code
    assert "alpha" in result.output
    missing = CliRunner().invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TEACHER))
    override = CliRunner().invoke(app, ["train", str(good), "--steps", "0"])
    assert override.exit_code == 4 and "steps" in override.output


def test_python_m_trainer_validates_the_spec_from_the_environment():
    bad = run_trainer([], env=python_env(DISTILLCTL_SPEC=json.dumps(merged(TEACHER, steps=0, loss={"alpha": 2.0}))))
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.startswith("error[")]
    assert len(lines) >= 2 and any("steps" in line for line in lines) and any("alpha" in line for line in lines)
    garbled = run_trainer([], env=python_env(DISTILLCTL_SPEC="{not json"))
    assert garbled.returncode == 1 and "not valid JSON" in garbled.stderr
    nothing = run_trainer([])
    assert nothing.returncode == 1 and "no spec" in nothing.stderr
    assert "Traceback" not in bad.stderr + garbled.stderr + nothing.stderr


def test_python_m_trainer_missing_teacher_exits_1_without_a_traceback(tmp_path):
    data = {
        "name": "orphan",
        "student": {"model": "tiny-2l"},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(tmp_path / "no-teacher" / "checkpoints")},
        "output_dir": str(tmp_path),
        "steps": 5,
    }
    done = run_trainer([], env=python_env(DISTILLCTL_SPEC=json.dumps(data)))
    assert done.returncode == 1
    assert "teacher checkpoint not found at" in done.stderr and "Traceback" not in done.stderr
    assert json.loads((tmp_path / "orphan" / "summary.json").read_text())["status"] == "failed"


def test_python_m_trainer_bad_process_flags_are_a_user_error(tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(merged(TEACHER, output_dir=str(tmp_path))))
    done = run_trainer(["--spec", str(spec), "--num-processes", "2"])
    assert done.returncode == 1 and "--coordinator-address" in done.stderr


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["127.0.0.1:notaport", "2", "0"], "must be HOST:PORT"),  # crashed JAX's coordinator (signal 11)
        (["127.0.0.1:99999", "2", "0"], "must be HOST:PORT"),  # hung past SIGTERM
        (["127.0.0.1:1", "2", "5"], "--process-id 5 is not in [0, 2)"),  # was exit 42: restarted to no end
        (["127.0.0.1:1", "0", "0"], "--num-processes must be at least 1"),
    ],
)
def test_python_m_trainer_process_flags_no_retry_can_fix_exit_1(tmp_path, flags, said):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(merged(TEACHER, output_dir=str(tmp_path))))
    address, count, index = flags
    done = run_trainer(
        ["--spec", str(spec), "--coordinator-address", address, "--num-processes", count, "--process-id", index],
        timeout=120,
    )
    assert done.returncode == 1 and said in done.stderr, done.stderr


def test_a_start_that_fails_before_the_run_opens_keeps_what_earlier_attempts_recorded(tmp_path):
    # A bad option (or a mesh for other devices) on a finished run replaced its summary with "failed at
    # step 0", its final metrics and wall time gone.
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(merged(TEACHER, output_dir=str(tmp_path))))
    summary = tmp_path / "teacher" / "summary.json"
    summary.parent.mkdir()
    finished = {
        "status": "succeeded",
        "exit_code": 0,
        "step": 60,
        "total_steps": 60,
        "tokens": 15360,
        "final_metrics": {"x": 1.0},
    }
    summary.write_text(json.dumps(finished))
    # Process 0 with a bad option (another process's failure writes its own failures file, never the summary).
    flags = ["--coordinator-address", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"]
    env = python_env(DISTILLCTL_JOIN_TIMEOUT_S="abc")
    done = run_trainer(["--spec", str(spec), *flags], env=env, timeout=120)
    assert done.returncode == 1 and "summary.json still says the run succeeded" in done.stderr, done.stderr
    assert json.loads(summary.read_text()) == finished
    # The run finished more steps than this spec asks: its start would be refused (fewer steps than the
    # checkpoint), the record kept; this failed start wrote "failed, step 120 of 60" over it.
    further = {**finished, "step": 120, "total_steps": 120}
    summary.write_text(json.dumps(further))
    done = run_trainer(["--spec", str(spec), *flags], env=env, timeout=120)
    assert done.returncode == 1 and json.loads(summary.read_text()) == further, done.stderr
    # An attempt that was killed (summary "running" at step 30): the failure is recorded where that attempt got to.
    summary.write_text(json.dumps({**finished, "status": "running", "exit_code": None, "step": 30, "wall_time_sec": 9}))
    done = run_trainer(["--spec", str(spec), *flags], env=env, timeout=120)
    recorded = json.loads(summary.read_text())
    assert (
        done.returncode == 1 and recorded["status"] == "failed" and "DISTILLCTL_JOIN_TIMEOUT_S" in recorded["message"]
    )
    assert (recorded["step"], recorded["final_metrics"]) == (30, {"x": 1.0}) and recorded["wall_time_sec"] >= 9


def test_a_signal_lost_in_a_garbage_collection_callback_still_stops_the_start():
    """SIGINT/SIGTERM while the trainer starts ends the run at once (Interrupted); raised inside JAX's gc callback,
    Python only prints it and goes on. `settle()`, where start-up ends, raises it then, and nothing is printed."""
    code = """
import gc, signal, sys
from trainer.train import Interrupted, _Stop, _quiet_lost_interrupt
sys.unraisablehook = _quiet_lost_interrupt
stop = _Stop(at_once=True)
def callback(phase, info):
    if phase == "start":
        gc.callbacks.remove(callback)
        stop(signal.SIGTERM, None)  # the handler, where the signal lands
gc.callbacks.append(callback)
gc.collect()
print("lost", stop.signal_name)
try:
    stop.settle()
except Interrupted as e:
    print("raised", e)
stop.settle()  # once only
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["lost", "SIGTERM", "raised", "SIGTERM"], done.stdout + done.stderr
    assert done.stderr == "", done.stderr


def test_the_trainers_warnings_read_as_warnings_on_the_console_and_logging_is_left_as_found(tmp_path):
    # They printed as `WARNING:trainer.packing:...` (a library's logging.basicConfig format).
    import logging

    from orchestrator.cli import app

    corpus = tmp_path / "long.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} " + "word " * 60}) + "\n" for i in range(4)))
    data = {
        "name": "warned",
        "mode": "pretrain",
        "student": {"model": "tiny-2l"},
        "data": {"source": "jsonl", "path": str(corpus)},
        "batch": {"per_device_batch_size": 2, "max_target_length": 32},
        "steps": 40,  # 2,560 tokens from a corpus of ~1,300: a second pass
        "output_dir": str(tmp_path / "out"),
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["train", str(spec)])
    assert result.exit_code == 0, result.output
    assert "warning: 1 document(s) longer than a row of 32 tokens" in result.output, result.output
    assert "warning: the training data" in result.output and "starting pass 2" in result.output
    assert "WARNING:trainer" not in result.output
    assert logging.getLogger("trainer").propagate and not logging.getLogger("trainer").handlers


def test_tpu_pod_environment_without_a_tpu_pod_is_a_user_error(tmp_path):
    # jax.distributed.initialize() found no coordinator: "internal error (a bug)", exit 70.
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(merged(TEACHER, output_dir=str(tmp_path), steps=2)))
    done = run_trainer(["--spec", str(spec)], env=python_env(TPU_WORKER_HOSTNAMES="a,b"), timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "$TPU_WORKER_HOSTNAMES is set, so this is a multi-host TPU run" in done.stderr and "a bug" not in done.stderr


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("DEADLINE_EXCEEDED: Barrier timed out. Id: PjRT_Client_Connect", True),
        ("UNAVAILABLE: failed to connect to all addresses; last error: Connection refused", True),
        ("Number of processes must be defined.", False),
        ("coordinator_address should be defined.", False),
    ],
)
def test_a_tpu_join_that_timed_out_is_retried_and_a_missing_setting_is_not(message, transient):
    """On a TPU pod one host that started late (an image pull on a fresh node) made JAX's initialize fail: exit 1,
    never retried, where the --coordinator-address path exits 42 for the same failure."""
    from trainer.train import _transient

    assert _transient(RuntimeError(message)) is transient
