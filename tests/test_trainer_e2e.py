"""End to end on CPU: pretrain a tiny teacher, distill a pruned student from it, resume, diverge, fail cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_support import (
    REPO,
    TEACHER,
    Recorder,
    event_tags,
    merged,
    metric,
    python_env,
    read_metrics,
    spec_of,
    without_timing,
    write_spec,
)

pytest.importorskip("jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from trainer.exit_codes import TrainerExit  # noqa: E402
from trainer.loss import DISTILL_METRICS, PRETRAIN_METRICS  # noqa: E402
from trainer.train import run  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def teacher(out) -> Path:
    """A tiny-4l teacher pretrained for 60 steps (checkpoints at 30 and 60)."""
    code = run(spec_of(merged(TEACHER, output_dir=str(out))))
    assert code == TrainerExit.OK
    return out / "teacher"


def distill_spec(out: Path, teacher_dir: Path, **changes) -> dict:
    base = {
        "name": "student",
        "mode": "distill",
        "student": {"model": "tiny-2l", "init": "teacher", "drop_layers": [1, 2]},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(teacher_dir / "checkpoints")},
        "loss": {
            "alpha": {"start": 0.9, "end": 0.7, "schedule": "cosine"},
            "temperature": {"start": 2.0, "end": 1.0, "schedule": "cosine"},
            "beta": {"start": 1.0, "end": 0.1, "schedule": "cosine"},
            "layer_indices": [0, -1],
        },
        "data": {"source": "synthetic", "seed": 1},
        "batch": {"per_device_batch_size": 8, "max_target_length": 32},
        "steps": 40,
        "optimizer": {"learning_rate": 1e-3, "warmup_fraction": 0.05},
        "checkpoint": {"every_steps": 20},
        "logging": {"every_steps": 5},
        "output_dir": str(out),
    }
    return merged(base, **changes)


def test_pretrain_writes_every_output(teacher):
    summary = json.loads((teacher / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["exit_code"] == 0
    assert summary["step"] == summary["total_steps"] == 60
    assert summary["tokens"] == 60 * 8 * 32 and summary["tokens_per_sec"] > 0
    assert set(summary["final_metrics"]) == set(PRETRAIN_METRICS)
    for key in ("wall_time_sec", "started_at", "updated_at", "mode", "run_name", "compile_time_sec"):
        assert key in summary
    spec = json.loads((teacher / "spec.json").read_text())
    assert spec["student"]["num_layers"] == 4 and spec["mode"] == "pretrain"  # resolved: registry shape written out
    records = read_metrics(teacher)
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    for r in records:
        assert set(r) == {"step", "time", "tokens", "tokens_per_sec", "step_time_sec", "learning_rate", "metrics"}
        assert set(r["metrics"]) == set(PRETRAIN_METRICS)
        assert r["metrics"]["distill/hard_loss"]["count"] == 10 * 8 * 32  # the window's valid tokens
    first, last = records[0], records[-1]
    assert metric(last, "distill/hard_loss") < metric(first, "distill/hard_loss") - 1.0
    assert metric(last, "distill/student_perplexity") == pytest.approx(
        __import__("math").exp(metric(last, "distill/hard_loss")), rel=1e-6
    )
    assert sorted(p.name for p in (teacher / "checkpoints").iterdir() if p.name.isdigit()) == ["30", "60"]
    assert {"distill/hard_loss", "distill/student_perplexity", "train/learning_rate"} <= event_tags(
        teacher / "tensorboard"
    )


def test_distill_pruned_student_kl_falls(out, teacher):
    code = run(spec_of(distill_spec(out, teacher)))
    assert code == TrainerExit.OK
    records = read_metrics(out / "student")
    assert set(records[0]["metrics"]) == set(DISTILL_METRICS)
    kl = [metric(r, "distill/kl_div_T1") for r in records]
    assert kl[-1] < 0.6 * kl[0], kl  # the pruned student recovers towards its teacher
    # the teacher is frozen: its loss only moves with the batches
    teacher_loss = [metric(r, "distill/teacher_loss") for r in records]
    assert max(teacher_loss) - min(teacher_loss) < 0.5
    # schedules fire: α and T at their start in the first window, near their end in the last
    assert metric(records[0], "distill/alpha") > 0.89 and metric(records[-1], "distill/alpha") < 0.71
    assert metric(records[-1], "distill/temperature") < 1.05
    tags = event_tags(out / "student" / "tensorboard")
    assert set(DISTILL_METRICS) <= tags


@pytest.mark.parametrize("stop_at", [15, 20], ids=["between-checkpoints", "at-a-checkpoint"])
def test_resume_after_sigterm_reproduces_the_uninterrupted_metrics(out, teacher, stop_at):
    data = distill_spec(
        out, teacher, name="whole", steps=30, checkpoint={"every_steps": 10}, logging={"every_steps": 5}
    )
    assert run(spec_of(data)) == TrainerExit.OK

    class SigtermAt:  # a preemption notice arriving in the middle of the run
        def start(self, *a):
            pass

        def note(self, m):
            pass

        def end(self, *a):
            pass

        def log(self, record):
            if record["step"] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)

    cut = merged(data, name=f"cut-{stop_at}")
    assert run(spec_of(cut), reporter=SigtermAt()) == TrainerExit.PREEMPTED
    summary = json.loads((out / f"cut-{stop_at}" / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["exit_code"] == 143 and summary["step"] == stop_at
    assert (out / f"cut-{stop_at}" / "checkpoints" / str(stop_at)).is_dir()
    assert run(spec_of(cut)) == TrainerExit.OK
    resumed = json.loads((out / f"cut-{stop_at}" / "summary.json").read_text())
    assert resumed["resumed_from_step"] == stop_at and resumed["status"] == "succeeded"
    assert without_timing(read_metrics(out / f"cut-{stop_at}")) == without_timing(read_metrics(out / "whole"))


def test_a_stop_before_the_first_step_saves_nothing(out, teacher):
    # A preemption while the step compiles wrote the initial weights as checkpoint 0 (an 8B student's and its
    # optimizer state, inside the pod's grace period) and said "checkpoint saved".
    class SigtermAtStart(Recorder):
        def start(self, *a):
            os.kill(os.getpid(), signal.SIGTERM)

    data = distill_spec(out, teacher, name="early", steps=30, checkpoint={"every_steps": 10})
    reporter = SigtermAtStart()
    assert run(spec_of(data), reporter=reporter) == TrainerExit.PREEMPTED
    summary = json.loads((out / "early" / "summary.json").read_text())
    assert summary["step"] == 0 and "nothing trained yet, nothing saved" in summary["message"], summary
    assert not list((out / "early").glob("checkpoints/*"))
    assert run(spec_of(data)) == TrainerExit.OK


def test_resume_after_a_hard_kill_reproduces_the_uninterrupted_metrics(out, teacher):
    """SIGKILL between checkpoints: the rerun resumes from the last checkpoint and drops the lines after it."""
    data = distill_spec(
        out, teacher, name="killed", steps=30, checkpoint={"every_steps": 10}, logging={"every_steps": 5}
    )
    spec_file = write_spec(out / "killed.json", data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "--spec", str(spec_file)],
        cwd=REPO,
        env=python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics_file = out / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        lines = metrics_file.read_text().splitlines() if metrics_file.exists() else []
        if lines and json.loads(lines[-1])["step"] >= 15:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    steps_seen = [json.loads(line)["step"] for line in metrics_file.read_text().splitlines()]
    if steps_seen[-1] == 30:
        pytest.skip("the run finished before it could be killed")
    assert run(spec_of(data)) == TrainerExit.OK
    reference = distill_spec(
        out, teacher, name="whole", steps=30, checkpoint={"every_steps": 10}, logging={"every_steps": 5}
    )
    if not (out / "whole" / "metrics.jsonl").exists():
        assert run(spec_of(reference)) == TrainerExit.OK
    assert without_timing(read_metrics(out / "killed")) == without_timing(read_metrics(out / "whole"))


def test_divergence_exits_with_its_own_code(out, teacher):
    data = merged(
        TEACHER,
        name="diverge",
        output_dir=str(out),
        steps=20,
        optimizer={"learning_rate": 1e30, "warmup_fraction": 0.0, "grad_clip_norm": None},
    )
    assert run(spec_of(data)) == TrainerExit.DIVERGED
    summary = json.loads((out / "diverge" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["exit_code"] == 65
    # Step 1's loss is of the initial weights (finite); its update of 1e30 makes step 2's not (was "at step 1":
    # the 0-based update index, while the log numbers steps from 1).
    assert "NaN or infinite at step 2" in summary["message"], summary["message"]
    assert summary["step"] == 2  # where it diverged (it said 5, the log step that found it: NaN steps counted)
    assert not (out / "diverge" / "checkpoints" / "20").exists()  # a diverged state is never checkpointed


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads after its loop
def test_a_damaged_latest_checkpoint_says_so_and_the_step_before_it_resumes(out, teacher):
    import shutil

    run_dir = out / "damaged"
    shutil.copytree(teacher, run_dir)
    for p in (run_dir / "checkpoints" / "60" / "params").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            with open(p, "r+b") as f:
                f.truncate(20)
    data = merged(TEACHER, name="damaged", output_dir=str(out), steps=70)
    assert run(spec_of(data)) == TrainerExit.USER_ERROR
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_code"] == 1 and "is damaged or incomplete" in summary["message"]
    assert f"move {run_dir / 'checkpoints' / '60'} aside" in summary["message"]
    # The way out the message gives: the step aside, the one before it resumes.
    (run_dir / "checkpoints" / "60").rename(run_dir / "damaged-60")
    assert run(spec_of(data)) == TrainerExit.OK
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == 30 and summary["step"] == 70


@pytest.mark.parametrize("damage", ["no params", "metadata not json", "empty step"])
def test_a_latest_checkpoint_missing_a_part_is_damaged_not_another_model(out, teacher, damage):
    import shutil

    name = "damaged-" + damage.replace(" ", "-")
    step = out / name / "checkpoints" / "60"
    shutil.copytree(teacher, out / name)
    if damage == "no params":
        shutil.rmtree(step / "params")
    elif damage == "metadata not json":
        (step / "params" / "_METADATA").write_text("{bad")
    else:
        for part in step.iterdir():
            shutil.rmtree(part) if part.is_dir() else part.unlink()
    assert run(spec_of(merged(TEACHER, name=name, output_dir=str(out), steps=70))) == TrainerExit.USER_ERROR
    message = json.loads((out / name / "summary.json").read_text())["message"]
    assert "is damaged or incomplete" in message and f"move {step} aside" in message, message


def refused(data: dict, run_dir: Path) -> str:
    """Run `data` on the copied run `run_dir`: refused with exit 1, its spec.json and summary.json untouched (the
    summary still says how that run ended); the refusal's message."""
    kept = {name: (run_dir / name).read_bytes() for name in ("spec.json", "summary.json", "metrics.jsonl")}
    recorder = Recorder()
    assert run(spec_of(data), reporter=recorder) == TrainerExit.USER_ERROR
    assert recorder.ended is not None and recorder.ended[:2] == ("failed", 1)
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    return recorder.ended[2]


def test_a_second_trainer_on_a_run_folder_in_use_is_refused(out, teacher, tmp_path):
    # Two `distillctl train`s of one spec both ran in one folder and both "succeeded": their metrics.jsonl lines
    # interleaved (steps 5..40, then 75...) and each saved checkpoints over the other's.
    import fcntl
    import os
    import shutil

    shutil.copytree(teacher, out / "busy")
    held = os.open(out / "busy" / ".trainer.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the first trainer holds it
    os.pwrite(held, b"4242\n", 0)
    try:
        message = refused(merged(TEACHER, name="busy", output_dir=str(out), steps=70), out / "busy")
    finally:
        os.close(held)
    assert "another trainer (pid 4242) is writing" in message, message
    # Free again (the first ended): the run goes on, and lets the folder go when it ends.
    assert run(spec_of(merged(TEACHER, name="busy", output_dir=str(out), steps=62))) == TrainerExit.OK
    assert not (out / "busy" / ".trainer.lock").exists()


def test_resuming_with_another_model_names_the_arrays_that_differ(out, teacher):
    import shutil

    shutil.copytree(teacher, out / "remodelled")
    data = merged(TEACHER, name="remodelled", output_dir=str(out), steps=70, student={"model": "tiny-2l"})
    message = refused(data, out / "remodelled")  # spec.json said tiny-2l, and export then failed
    assert "layers.attention.wq is (4, 64, 4, 16), this model needs (2, 64, 4, 16)" in message, message
    assert "strict=False" not in message and "use a new run name" in message


def test_a_run_whose_checkpoint_is_past_its_steps_is_refused_and_its_record_kept(out, teacher):
    # Fewer steps on the same run: it "succeeded" at once, its summary saying step 60 of 30.
    import shutil

    shutil.copytree(teacher, out / "shortened")
    message = refused(merged(TEACHER, name="shortened", output_dir=str(out), steps=30), out / "shortened")
    assert "is at step 60, past this run's steps (30)" in message and "set steps to 60 or more" in message


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"batch": {"max_target_length": 16}}, "max_target_length: 32 → 16"),
        ({"data": {"seed": 7}}, "data.seed: 0 → 7"),
    ],
)
def test_resuming_on_other_input_is_refused_naming_what_changed(out, teacher, change, said):
    # Its position indexed other data: it resumed silently, and spec.json no longer said what steps 1-60 read.
    import shutil

    name = f"reread-{len(said)}"
    shutil.copytree(teacher, out / name)
    message = refused(merged(TEACHER, name=name, output_dir=str(out), steps=70, **change), out / name)
    assert "was trained on other input than this spec reads" in message and said in message, message
    assert f"load_parameters_path is {out / name}/checkpoints" in message


def test_a_checkpoint_without_a_document_position_is_refused_not_called_damaged(out, teacher, tmp_path):
    # From before checkpoints recorded their input: orbax's 'Item "data" was not found' read as a damaged
    # checkpoint, whose hint moved good checkpoints aside one by one.
    import shutil

    shutil.copytree(teacher, out / "redocumented")
    meta = out / "redocumented" / "checkpoints" / "60" / "meta" / "metadata"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "input"}))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"document {i}: the quick brown fox. " * 20}) + "\n" for i in range(50))
    )
    documents = {"source": "jsonl", "path": str(corpus)}
    data = merged(TEACHER, name="redocumented", output_dir=str(out), steps=70, data=documents)
    message = refused(data, out / "redocumented")
    assert "holds no input-pipeline position" in message and "damaged" not in message, message


def test_resuming_with_other_settings_says_which_before_spec_json_changes(out, teacher):
    import shutil

    shutil.copytree(teacher, out / "retuned")
    recorder = Recorder()
    data = merged(TEACHER, name="retuned", output_dir=str(out), steps=62, optimizer={"learning_rate": 5e-4})
    assert run(spec_of(data), reporter=recorder) == TrainerExit.OK
    (note,) = [n for n in recorder.notes if n.startswith("resuming with settings changed")]
    assert "optimizer.learning_rate: 0.003 → 0.0005" in note and "steps" not in note, note
    assert json.loads((out / "retuned" / "spec.json").read_text())["optimizer"]["learning_rate"] == 5e-4
    # More steps: trained further, and every schedule spans the new count: said, with the learning rate it gives
    # where the run goes on (it went on silently on other curves).
    (further,) = [n for n in recorder.notes if n.startswith("steps ")]
    teacher_steps = json.loads((teacher / "spec.json").read_text())["steps"]
    assert f"steps {teacher_steps} → 62: the learning rate's warm-up and decay now span 62 steps" in further, further
    assert f"at step {teacher_steps}, where the {teacher_steps}-step run had" in further
    # ... its own learning rate there (0.003's curve), not the new rate on the old curve
    from trainer.step import learning_rate_schedule

    before = spec_of(json.loads((teacher / "spec.json").read_text()))
    had = float(learning_rate_schedule(before)(teacher_steps))
    assert f"where the {teacher_steps}-step run had {had:.3g}" in further, further


def test_a_resume_by_other_trainer_code_is_said_and_the_code_recorded(out, teacher):
    """summary.json records which trainer code trained the run (run ids hash the spec, not the code); a resume by
    other code (a new image under the same run id) is said: the steps on either side came from different code."""
    import shutil

    from distillspec.sources import trainer_code_hash

    assert json.loads((teacher / "summary.json").read_text())["trainer_code"] == trainer_code_hash()
    shutil.copytree(teacher, out / "recoded")
    record = json.loads((out / "recoded" / "summary.json").read_text())
    (out / "recoded" / "summary.json").write_text(json.dumps({**record, "trainer_code": "0" * 32}))
    recorder = Recorder()
    steps = json.loads((teacher / "spec.json").read_text())["steps"]
    data = merged(TEACHER, name="recoded", output_dir=str(out), steps=steps + 2)
    assert run(spec_of(data), reporter=recorder) == TrainerExit.OK
    (note,) = [n for n in recorder.notes if n.startswith("resuming with other trainer code")]
    assert f"000000000000 until step {steps}, {trainer_code_hash()[:12]} from here" in note, note
    assert json.loads((out / "recoded" / "summary.json").read_text())["trainer_code"] == trainer_code_hash()


def test_missing_teacher_is_a_user_error_with_a_clear_message(out, tmp_path):
    data = distill_spec(out, tmp_path / "nowhere", name="orphan")
    messages = []

    class Capture:
        def start(self, *a):
            pass

        def log(self, r):
            pass

        def note(self, m):
            pass

        def end(self, status, code, message):
            messages.append((status, code, message))

    assert run(spec_of(data), reporter=Capture()) == TrainerExit.USER_ERROR
    status, code, message = messages[0]
    assert status == "failed" and code == 1
    assert "teacher checkpoint not found at" in message and "distillctl train sweeps/tiny-teacher.yaml" in message
    assert json.loads((out / "orphan" / "summary.json").read_text())["exit_code"] == 1


def test_teacher_checkpoint_of_another_model_is_a_user_error(out, teacher):
    data = distill_spec(
        out,
        teacher,
        name="mismatch",
        teacher={"model": "tiny-4l", "emb_dim": 32, "load_parameters_path": str(teacher / "checkpoints")},
        student={"model": "tiny-2l", "emb_dim": 32, "init": "random", "drop_layers": []},
        loss={"beta": 0.0},
    )
    assert run(spec_of(data)) == TrainerExit.USER_ERROR
    assert (
        "does not hold this model's parameters"
        in json.loads((out / "mismatch" / "summary.json").read_text())["message"]
    )


def _logits_in_layout(path: str, scan_layers: bool) -> np.ndarray:
    """The logits of the checkpoint at `path`, loaded into a model whose layers are stacked or one by one."""
    from flax import nnx

    from trainer.checkpoints import checkpoint_shape, load_params
    from trainer.models import ModelConfig, abstract_model

    shape = checkpoint_shape(path)
    graphdef, state = abstract_model(ModelConfig(shape, scan_layers=scan_layers))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(state))
    model = nnx.merge(graphdef, load_params(path, shape, like, side="teacher"))
    tokens = (np.arange(2 * 16).reshape(2, 16) * 7 % shape.vocab_size).astype(np.int32)
    return np.asarray(model.logits(jnp.asarray(tokens)))


def test_a_checkpoint_in_the_other_layer_layout_is_converted_while_loading(out, teacher, caplog):
    """A run saved with scan_layers: true loads into a model with its layers one by one, and back: the same
    logits either way (it was refused, naming scan_layers)."""
    stacked = _logits_in_layout(str(teacher / "checkpoints"), scan_layers=True)
    with caplog.at_level("WARNING", logger="trainer.checkpointing"):
        one_by_one = _logits_in_layout(str(teacher / "checkpoints"), scan_layers=False)
    np.testing.assert_allclose(one_by_one, stacked, rtol=1e-5, atol=1e-5)
    assert any("scan_layers differs" in r.getMessage() for r in caplog.records)
    # A run of the other layout: a distillation from the stacked teacher with scan_layers: false everywhere...
    data = distill_spec(
        out,
        teacher,
        name="unscanned",
        steps=4,
        teacher={"model": "tiny-4l", "scan_layers": False, "load_parameters_path": str(teacher / "checkpoints")},
        student={"model": "tiny-2l", "init": "random", "drop_layers": [], "scan_layers": False},
        loss={"beta": 0.0},
    )
    assert run(spec_of(data)) == TrainerExit.OK
    # ...whose one-by-one student checkpoint loads stacked, with the same logits.
    saved = str(out / "unscanned" / "checkpoints")
    np.testing.assert_allclose(
        _logits_in_layout(saved, scan_layers=True), _logits_in_layout(saved, scan_layers=False), rtol=1e-5, atol=1e-5
    )


def test_another_model_in_the_other_layer_layout_names_its_differences(out, teacher):
    data = distill_spec(
        out,
        teacher,
        name="unscanned-other",
        teacher={
            "model": "tiny-4l",
            "mlp_dim": 128,
            "scan_layers": False,
            "load_parameters_path": str(teacher / "checkpoints"),
        },
        student={"model": "tiny-2l", "init": "random", "drop_layers": []},
        loss={"beta": 0.0},
    )
    assert run(spec_of(data)) == TrainerExit.USER_ERROR
    message = json.loads((out / "unscanned-other" / "summary.json").read_text())["message"]
    assert "does not hold this model's parameters" in message and "layers.0.mlp" in message, message
    assert "256" in message and "128" in message


def test_student_from_its_own_checkpoint_and_exact_step_directory(out, teacher):
    data = distill_spec(
        out,
        teacher,
        name="warm",
        steps=10,
        teacher={"model": "tiny-4l", "load_parameters_path": str(teacher / "checkpoints" / "30")},
        student={
            "model": "tiny-4l",
            "init": "random",
            "drop_layers": [],
            "load_parameters_path": str(teacher / "checkpoints"),
        },
    )
    assert run(spec_of(data)) == TrainerExit.OK
    first = read_metrics(out / "warm")[0]
    # a student starting as the final teacher agrees with the step-30 teacher far more than a random one would
    assert metric(first, "distill/top1_agreement") > 0.5


def test_an_evaluations_time_is_left_out_of_the_training_throughput():
    # 2000 held-out batches read as a training step of 48 tokens/s in metrics.jsonl and the results table.
    from trainer.train import MetricWindow

    window = MetricWindow(every=2, last=10, now=100.0)
    window.add(512)
    window.add(512)
    window.exclude(30.0)  # the evaluation between the second step and the log line
    record, seconds, tokens = window.close(2, 134.0, tokens=1024, learning_rate=0.0, sums={})
    assert seconds == 4.0 and tokens == 1024
    assert record["tokens_per_sec"] == 256.0 and record["step_time_sec"] == 2.0


def test_a_console_that_goes_away_does_not_end_the_run(tmp_path):
    # `distillctl train spec 2>&1 | head -2`: the run trained to its last step, then died of BrokenPipe before its
    # final checkpoint (exit 42, "failed"). The console falls silent; the run finishes.
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: piped\nmode: pretrain\nstudent: {model: tiny-2l}\n"
        "batch: {per_device_batch_size: 2, max_target_length: 16}\nsteps: 30\n"
        f"checkpoint: {{every_steps: 10}}\nlogging: {{every_steps: 5}}\noutput_dir: {tmp_path / 'out'}\n"
    )
    command = f"{sys.executable} -m orchestrator.cli train {spec} 2>&1 | head -2"
    shown = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert shown.stdout.startswith("training → "), shown.stdout + shown.stderr
    summary = tmp_path / "out" / "piped" / "summary.json"
    for _ in range(600):  # the trainer goes on after `head` has gone
        if summary.exists() and json.loads(summary.read_text())["status"] != "running":
            break
        time.sleep(0.1)
    record = json.loads(summary.read_text())
    assert (record["status"], record["exit_code"], record["step"]) == ("succeeded", 0, 30), record
    assert (tmp_path / "out" / "piped" / "checkpoints" / "30").is_dir()


def test_changed_settings_show_whole_numbers_as_written():
    # spec.json holds per_device_batch_size as 8.0 (the field takes fractions): the note read "8.0 → 4.0".
    from trainer.train import changed_settings

    before = {"batch": {"per_device_batch_size": 8.0}, "optimizer": {"learning_rate": 0.003}}
    after = {"batch": {"per_device_batch_size": 4.0}, "optimizer": {"learning_rate": 0.0005}}
    assert changed_settings(before, after) == [
        "batch.per_device_batch_size: 8 → 4",
        "optimizer.learning_rate: 0.003 → 0.0005",
    ]


def test_a_runs_record_is_never_replaced_by_settings_no_step_was_trained_under(out):
    """A finished run given other settings trained 0 steps yet rewrote its spec.json (its metrics and weights were
    then attributed to settings they never saw); without checkpoints another spec replaced a succeeded run's results
    silently. Both are refused, the folder as it was; the same spec starts over, and a failed start, fixed, runs."""
    tiny = {"steps": 10, "checkpoint": {"every_steps": 5}, "logging": {"every_steps": 5}, "output_dir": str(out)}
    finished = merged(TEACHER, name="record", **tiny)
    assert run(spec_of(finished)) == TrainerExit.OK
    folder = out / "record"
    before = {name: (folder / name).read_text() for name in ("spec.json", "summary.json", "metrics.jsonl")}
    other = merged(finished, optimizer={"learning_rate": 1e-4})
    assert run(spec_of(other)) == TrainerExit.USER_ERROR
    assert {name: (folder / name).read_text() for name in before} == before
    # Bookkeeping (how often it logged or saved) shaped no weight: re-running with it changed is no refusal.
    assert run(spec_of(merged(finished, logging={"every_steps": 2}, checkpoint={"keep": 3}))) == TrainerExit.OK
    assert run(spec_of(merged(other, steps=15))) == TrainerExit.OK  # the way out it names: train further under them
    assert json.loads((folder / "spec.json").read_text())["optimizer"]["learning_rate"] == 1e-4

    plain = merged(TEACHER, name="plain", **{**tiny, "checkpoint": {"enabled": False}})
    assert run(spec_of(plain)) == TrainerExit.OK
    folder = out / "plain"
    before = {name: (folder / name).read_text() for name in ("spec.json", "summary.json", "metrics.jsonl")}
    assert run(spec_of(merged(plain, optimizer={"learning_rate": 1e-4}))) == TrainerExit.USER_ERROR
    assert {name: (folder / name).read_text() for name in before} == before
    # ... nor by other steps (fewer or more): with nothing to resume from they are another run, and replaced it
    for steps in (6, 14):
        assert run(spec_of(merged(plain, steps=steps))) == TrainerExit.USER_ERROR
        assert {name: (folder / name).read_text() for name in before} == before
    assert run(spec_of(plain)) == TrainerExit.OK  # the same spec again: trained again from step 0
    # An attempt killed before any checkpoint (its summary says running at step 4): replaced, and said.
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "status": "running", "step": 4}))
    recorder = Recorder()
    assert run(spec_of(plain), reporter=recorder) == TrainerExit.OK
    assert any("results of its earlier run (running at step 4) are replaced" in n for n in recorder.notes), (
        recorder.notes
    )

    broken = merged(plain, name="fixed", data={"source": "text", "path": str(out / "nowhere")})
    assert run(spec_of(broken)) == TrainerExit.USER_ERROR
    assert run(spec_of(merged(plain, name="fixed"))) == TrainerExit.OK


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads after its loop
def test_resuming_in_another_mode_names_the_settings_not_orbaxs_words(out, teacher):
    """A pretraining run resumed as a distillation: "does not match this spec: User-provided restore item and on-disk
    value metadata tree structures do not match:" (a dangling colon), with a hint about "a different model"."""
    import shutil

    shutil.copytree(teacher, out / "moded")
    spec = merged(
        TEACHER,
        name="moded",
        output_dir=str(out),
        steps=70,
        mode="distill",
        teacher={"model": "tiny-4l", "load_parameters_path": str(teacher / "checkpoints")},
    )
    message = refused(spec, out / "moded")
    assert "does not match this spec: it was saved by a run with other settings (mode: " in message, message
    assert '"pretrain" → "distill"' in message and "another mode or model" in message


def test_a_metric_that_is_not_finite_beside_a_finite_loss_is_said_not_a_crash():
    """A teacher whose logits overflow float32: teacher_loss inf beside a finite (even negative) total loss; the
    divergence check read only the total, and writing the line ended the run "internal error (a bug)", exit 70."""
    from trainer.exit_codes import UserError
    from trainer.train import Diverged, _check_finite_metrics, _Session

    session = _Session.__new__(_Session)
    fine = {"distill/total_loss": (-91.0, 64.0), "distill/teacher_loss": (140.0, 64.0)}
    _check_finite_metrics(fine, 5, session)
    overflow = {**fine, "distill/teacher_loss": (float("inf"), 64.0), "distill/kl_div_T1": (float("nan"), 64.0)}
    with pytest.raises(UserError, match=r"the teacher's outputs are not finite \(teacher_loss is inf"):
        _check_finite_metrics(overflow, 5, session)  # the teacher's value, though kl_div_T1 sorts first
    with pytest.raises(Diverged, match=r"distill/kl_div_T1 became NaN or infinite by step 5"):
        _check_finite_metrics({**fine, "distill/kl_div_T1": (float("nan"), 64.0)}, 5, session)
    assert session.step == 5


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads after its loop
def test_an_empty_step_folder_past_the_steps_is_damage_and_an_only_checkpoint_says_so(out, teacher):
    """An empty folder `checkpoints/999` read as "at step 999, past this run's steps: set steps to 999"; the
    damaged-checkpoint hint promised "the step before it becomes the latest" where there was none."""
    import shutil

    shutil.copytree(teacher, out / "stray-step")
    (out / "stray-step" / "checkpoints" / "999").mkdir()
    message = refused_or_failed(merged(TEACHER, name="stray-step", output_dir=str(out), steps=70))
    assert "checkpoints/999 is damaged or incomplete" in message and "past this run's steps" not in message, message
    assert "move" in message and "the step before it becomes the latest" in message

    shutil.copytree(teacher, out / "only-step")
    shutil.rmtree(out / "only-step" / "checkpoints" / "30")
    for part in (out / "only-step" / "checkpoints" / "60" / "params").rglob("*"):
        if part.is_file() and part.parent.name == "d":
            part.write_bytes(b"\0" * 20)
    message = refused_or_failed(merged(TEACHER, name="only-step", output_dir=str(out), steps=70))
    assert "is damaged or incomplete" in message and "it is the run's only checkpoint" in message, message


def refused_or_failed(data: dict) -> str:
    recorder = Recorder()
    assert run(spec_of(data), reporter=recorder) == TrainerExit.USER_ERROR
    return recorder.ended[2]


def test_resuming_without_a_readable_spec_json_says_the_changes_cannot_be_told(out, teacher):
    import shutil

    shutil.copytree(teacher, out / "unrecorded")
    (out / "unrecorded" / "spec.json").write_text("garbage{")
    recorder = Recorder()
    data = merged(TEACHER, name="unrecorded", output_dir=str(out), steps=62)
    assert run(spec_of(data), reporter=recorder) == TrainerExit.OK
    assert any("spec.json is missing or unreadable" in n for n in recorder.notes), recorder.notes


def test_a_teacher_that_trained_on_behind_the_same_path_is_said_on_resume(out, teacher):
    """The teacher's run went on (its `checkpoints` now resolve to a later step): the student resumed against
    another teacher than the one it distilled from, without a word."""
    import shutil

    moving = out / "moving-teacher"
    shutil.copytree(teacher, moving)
    shutil.move(moving / "checkpoints" / "60", out / "teacher-60-later")
    data = distill_spec(out, moving, name="follower", steps=20, checkpoint={"every_steps": 10})
    assert run(spec_of(data)) == TrainerExit.OK
    shutil.move(out / "teacher-60-later", moving / "checkpoints" / "60")  # the teacher trained on
    recorder = Recorder()
    assert run(spec_of(merged(data, steps=30)), reporter=recorder) == TrainerExit.OK
    said = [n for n in recorder.notes if n.startswith("teacher.load_parameters_path now resolves to")]
    assert said and str(moving / "checkpoints" / "60") in said[0] and str(moving / "checkpoints" / "30") in said[0]
    assert "until step 20" in said[0], said


@pytest.mark.parametrize("summary", ["[1, 2]", '"hello"', "42", "\udcff"])
def test_a_resume_over_a_summary_that_is_not_a_json_object_goes_on(out, teacher, summary):
    # A summary.json holding a list, a string, a number (or not UTF-8) ended the resume as a bug, exit 70.
    import shutil

    name = "odd-summary-" + summary.encode("utf-8", "surrogateescape").hex()[:8]
    shutil.copytree(teacher, out / name)
    (out / name / "summary.json").write_bytes(summary.encode("utf-8", "surrogateescape"))
    data = merged(TEACHER, name=name, output_dir=str(out), steps=62)
    assert run(spec_of(data)) == TrainerExit.OK
    recorded = json.loads((out / name / "summary.json").read_text())
    assert (recorded["status"], recorded["step"]) == ("succeeded", 62)


def test_a_finished_run_started_again_keeps_how_its_steps_ran(out, teacher):
    # It trained nothing, and its summary read tokens_per_sec 0.0, this attempt's compile time and wall time, and
    # "resumed from step 60".
    import shutil

    shutil.copytree(teacher, out / "again")
    before = json.loads((out / "again" / "summary.json").read_text())
    assert before["tokens_per_sec"] > 0
    data = merged(TEACHER, name="again", output_dir=str(out))
    assert run(spec_of(data)) == TrainerExit.OK
    after = json.loads((out / "again" / "summary.json").read_text())
    for key in ("status", "step", "tokens_per_sec", "compile_time_sec", "wall_time_sec", "resumed_from_step"):
        assert after[key] == before[key], key


def test_an_export_of_a_student_of_a_runs_own_teacher_says_the_students_own_length(out, teacher):
    # Followed to the teacher run's spec, the teacher's fallback (its own training length, 32) was written as the
    # student's max_position_embeddings, and said as "the length it trained on".
    from trainer.export import carried_config

    spec = spec_of(merged(distill_spec(out, teacher), batch={"per_device_batch_size": 8, "max_target_length": 64}))
    fields, source, notes = carried_config(spec, spec.student_block().shape().family)
    assert (
        fields == {"max_position_embeddings": 64} and source is None and "to 64, the length it trained on" in notes[0]
    )


def test_a_run_with_linear_rope_scaling_reads_its_own_spec_back(tmp_path):
    # spec.json wrote the llama3-only fields of a linear scaling at their defaults, and reading it back refused
    # them: export exit 2, resume exit 70 (internal error), its checkpoints unreadable as a teacher.
    from distillspec.config import DistillSpec
    from trainer.checkpoints import load_model

    linear = {"model": "tiny-2l", "rope_scaling": {"type": "linear", "factor": 4.0}}
    data = merged(TEACHER, student=linear, steps=2, checkpoint={"every_steps": 2}, output_dir=str(tmp_path))
    assert run(spec_of(data)) == TrainerExit.OK
    written = json.loads((tmp_path / "teacher" / "spec.json").read_text())
    assert DistillSpec.model_validate(written).student.rope_scaling.factor == 4.0
    assert run(spec_of({**data, "steps": 3})) == TrainerExit.OK  # resumed from step 2
    assert json.loads((tmp_path / "teacher" / "summary.json").read_text())["step"] == 3
    load_model(str(tmp_path / "teacher" / "checkpoints"))


def test_events_go_to_the_tensorboard_dir_the_spec_names(tmp_path):
    """The guide's `tensorboard_dir`: `<dir>/<name>`, one folder per run (a sweep's runs side by side), and none in
    the run folder; a resume of the run purges into the same folder."""
    data = merged(
        TEACHER,
        name="tb",
        steps=4,
        student={"model": "tiny-2l"},
        checkpoint={"every_steps": 2},
        logging={"every_steps": 2, "tensorboard_dir": str(tmp_path / "tb")},
        output_dir=str(tmp_path / "runs"),
    )
    assert run(spec_of(data)) == TrainerExit.OK
    assert {"distill/hard_loss", "train/learning_rate"} <= event_tags(tmp_path / "tb" / "tb")
    assert not (tmp_path / "runs" / "tb" / "tensorboard").exists()
    assert json.loads((tmp_path / "runs" / "tb" / "spec.json").read_text())["logging"]["tensorboard_dir"] == str(
        tmp_path / "tb"
    )
    (tmp_path / "blocked").write_text("")  # a file where the folder goes: refused before any compile, named
    recorder = Recorder()
    blocked = merged(data, name="tb2", logging={"tensorboard_dir": str(tmp_path / "blocked")})
    assert run(spec_of(blocked), reporter=recorder) == TrainerExit.USER_ERROR
    status, _, message = recorder.ended
    assert status == "failed" and "OutputNotWritable" in message and "blocked/tb2" in message, message
    assert "choose another logging.tensorboard_dir" in message, message
