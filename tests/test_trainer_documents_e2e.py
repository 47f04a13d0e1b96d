"""End to end on CPU with a JSONL corpus: a packed-document teacher, a distilled student with an eval set, and runs
stopped by SIGTERM (a checkpoint where it stopped) or SIGKILL (nothing saved after the last periodic checkpoint)
that resume (the Grain iterator restored from the checkpoint) to the uninterrupted run's metrics exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_support import REPO, merged, metric, python_env, read_metrics, spec_of, without_timing, write_spec

pytest.importorskip("jax")
pytest.importorskip("grain")

from trainer.exit_codes import TrainerExit  # noqa: E402
from trainer.step import EVAL_METRICS  # noqa: E402
from trainer.train import run  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    for part in range(2):
        lines = [json.dumps({"text": " ".join(words[(i + j) % 6] for j in range(i % 9 + 3))}) for i in range(80)]
        (root / f"train-{part}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "eval.jsonl").write_text("\n".join(json.dumps({"text": " ".join(words[i:] + words[:i])}) for i in range(6)))
    return root


def base(out: Path, **changes) -> dict:
    data = {
        "name": "teacher",
        "mode": "pretrain",
        "student": {"model": "tiny-4l", "remat": "none"},
        "data": {"source": "jsonl", "path": str(out / "train-*.jsonl"), "seed": 1},
        "batch": {"per_device_batch_size": 4, "max_target_length": 32},
        "steps": 8,
        "optimizer": {"learning_rate": 3e-3, "warmup_fraction": 0.0},
        "checkpoint": {"every_steps": 4},
        "logging": {"every_steps": 2, "tensorboard": False},
        "output_dir": str(out),
    }
    return merged(data, **changes)


@pytest.fixture(scope="module")
def teacher(out) -> Path:
    assert run(spec_of(base(out))) == TrainerExit.OK
    return out / "teacher"


def distill(out: Path, teacher: Path, name: str) -> dict:
    return base(
        out,
        name=name,
        mode="distill",
        student={"model": "tiny-2l", "remat": "none"},
        teacher={"model": "tiny-4l", "load_parameters_path": str(teacher / "checkpoints")},
        eval={"path": str(out / "eval.jsonl"), "every_steps": 4, "batches": 2},
    )


def test_packed_teacher_learns_and_counts_only_document_tokens(teacher):
    records = read_metrics(teacher)
    assert metric(records[-1], "distill/hard_loss") < metric(records[0], "distill/hard_loss")
    # packed rows leave no padding while the corpus repeats: every token of 2 steps x 4 rows x 32 is a target
    assert records[0]["metrics"]["distill/hard_loss"]["count"] == 2 * 4 * 32
    assert (teacher / "checkpoints" / "8" / "data").is_dir()  # the iterator state, per process


@pytest.fixture(scope="module")
def whole(out, teacher) -> list[dict]:
    """The uninterrupted distillation run's metrics.jsonl."""
    assert run(spec_of(distill(out, teacher, "whole"))) == TrainerExit.OK
    return read_metrics(out / "whole")


def test_distill_with_eval_and_resume_after_sigterm(out, teacher, whole):
    records = whole
    evaluated = [r["step"] for r in records if "eval/kl_div_T1" in r["metrics"]]
    assert evaluated == [4, 8]
    assert set(EVAL_METRICS) <= set(records[-1]["metrics"])
    assert records[-1]["metrics"]["eval/hard_loss"]["count"] > 0
    summary = json.loads((out / "whole" / "summary.json").read_text())
    assert set(EVAL_METRICS) <= set(summary["final_metrics"])

    class SigtermAt:
        def start(self, *a):
            pass

        def note(self, m):
            pass

        def end(self, *a):
            pass

        def log(self, record):
            if record["step"] == 6:
                os.kill(os.getpid(), signal.SIGTERM)

    cut = distill(out, teacher, "cut")
    assert run(spec_of(cut), reporter=SigtermAt()) == TrainerExit.PREEMPTED
    assert run(spec_of(cut)) == TrainerExit.OK
    assert json.loads((out / "cut" / "summary.json").read_text())["resumed_from_step"] == 6
    assert without_timing(read_metrics(out / "cut")) == without_timing(records)


KILL_AT_STEP_6 = """
import os, signal, sys, time
from pathlib import Path
from distillspec.specfile import read_spec_file
from trainer.train import SilentReporter, run

class KillAt6(SilentReporter):
    def log(self, record):
        if record["step"] == 6:  # once step 4's checkpoint is committed (orbax renames its folder when done)
            done = Path(sys.argv[2]) / "checkpoints" / "4"
            while not done.is_dir():
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)

spec = read_spec_file(sys.argv[1]).spec
run(spec, reporter=KillAt6())
"""


def test_resume_after_a_hard_kill_reproduces_the_run(out, teacher, whole):
    """SIGKILL (no handler runs, nothing more is saved) once step 6 is logged: the rerun restores step 4's
    checkpoint, iterator included, drops the lines after it and trains steps 5-8 again to the same metrics."""
    killed = distill(out, teacher, "killed")
    spec = write_spec(out / "killed.json", killed)
    done = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP_6, str(spec), str(out / "killed")],
        cwd=REPO,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert json.loads((out / "killed" / "summary.json").read_text())["status"] == "running"
    assert [r["step"] for r in read_metrics(out / "killed")] == [2, 4, 6]
    assert run(spec_of(killed)) == TrainerExit.OK
    assert json.loads((out / "killed" / "summary.json").read_text())["resumed_from_step"] == 4
    assert without_timing(read_metrics(out / "killed")) == without_timing(whole)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads after its loop
@pytest.mark.parametrize(
    ("damage", "said"),
    [("overwritten", "its input-pipeline position is unreadable"), ("lost", "its data item is missing")],
)
def test_a_damaged_input_position_is_a_damaged_checkpoint_with_the_way_out(out, teacher, damage, said):
    """The latest step's input-pipeline position overwritten: "internal error (a bug)", exit 70, no way out; lost:
    blamed on "another kind of data", with a hint to give up the run. Now each is what any other damaged part of a
    step is: exit 1, naming the step to move aside (then the one before it resumes)."""
    import shutil

    run_dir = out / f"bad-position-{damage}"
    shutil.copytree(teacher, run_dir)
    if damage == "overwritten":
        [position] = (run_dir / "checkpoints" / "8" / "data").glob("process_0-of-1*")
        position.write_text("garbage\n")
    else:
        shutil.rmtree(run_dir / "checkpoints" / "8" / "data")
    spec = base(out, name=f"bad-position-{damage}", steps=12)
    assert run(spec_of(spec)) == TrainerExit.USER_ERROR
    message = json.loads((run_dir / "summary.json").read_text())["message"]
    assert f"is damaged or incomplete: {said}" in message, message
    assert f"move {run_dir / 'checkpoints' / '8'} aside" in message
    (run_dir / "checkpoints" / "8").rename(run_dir / "damaged-8")
    assert run(spec_of(spec)) == TrainerExit.OK
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from_step"] == 4


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads after its loop
def test_a_resume_on_another_number_of_processes_says_so(out, teacher):
    """A 2-process run resumed on 1: "File .../process_0-of-1.json does not exist", with a hint to delete the run."""
    import shutil

    from trainer_support import Recorder

    run_dir = out / "two-processes"
    shutil.copytree(teacher, run_dir)
    data = run_dir / "checkpoints" / "8" / "data"
    [mine] = data.glob("process_0-of-1*")
    mine.rename(data / "process_0-of-2.json")
    shutil.copy(data / "process_0-of-2.json", data / "process_1-of-2.json")
    recorder = Recorder()
    assert run(spec_of(base(out, name="two-processes", steps=12)), reporter=recorder) == TrainerExit.USER_ERROR
    message = recorder.ended[2]
    assert "holds the input positions of 2 process(es); this run has 1" in message, message
    assert "resume it with 2 process(es)" in message and "delete" not in message


def test_a_finished_run_given_its_data_path_spelled_another_way_is_not_refused(out, teacher, monkeypatch):
    """The same files, relative instead of absolute: a finished run re-run so was refused as "changes data.path"."""
    import shutil

    shutil.copytree(teacher, out / "respelled")
    monkeypatch.chdir(out)
    spec = base(out, name="respelled", data={"source": "jsonl", "path": "train-*.jsonl", "seed": 1})
    from trainer_support import Recorder

    recorder = Recorder()
    assert run(spec_of(spec), reporter=recorder) == TrainerExit.OK, recorder.ended
