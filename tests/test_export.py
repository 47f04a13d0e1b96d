"""Checkpoints out: a run's student as a Hugging Face folder (`distillctl export RUN_DIR --to hf -o DIR`, and
`checkpoint.export: hf` at the end of a run) that transformers (the test-only reference environment) loads with
the logits this trainer computes from the run's checkpoint, within 1e-4 relative (float32); the run's tokenizer
(here the teacher folder's tokenizer.json, the default when the spec names none) travels with it. Bad input
exits 2 with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ref_support import make_models, run_ref
from trainer_support import REPO, merged, spec_of
from typer.testing import CliRunner

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from orchestrator.exit_codes import ExitCode  # noqa: E402
from trainer.checkpoints import hf, load_model  # noqa: E402
from trainer.exit_codes import TrainerExit  # noqa: E402

pytestmark = pytest.mark.slow

TINY_4L = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    rope_theta=10_000.0,
)
WORDS = "the quick brown fox jumps over a lazy dog while seven cats sleep under one warm old tree".split()


def _tokenizer_json(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A pruned student distilled from a Hugging Face teacher folder that carries a tokenizer.json, on text data,
    with `checkpoint.export: hf`."""
    from trainer.train import run as train_run

    root = tmp_path_factory.mktemp("export")
    tokens = root / "tokens.npy"
    np.save(tokens, (np.arange(2 * 24).reshape(2, 24) * 37 % 256).astype(np.int32))
    teacher = root / "teacher"
    make_models([dict(family="llama", out=str(teacher), config=TINY_4L, seed=3, tokens=str(tokens))])
    _tokenizer_json(teacher / "tokenizer.json")
    rng = np.random.default_rng(0)
    (root / "corpus.txt").write_text(" ".join(rng.choice(WORDS, 4000)))
    spec = {
        "name": "exported",
        "student": {"model": "tiny-2l", "init": "teacher", "drop_layers": [1, 2]},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(teacher)},
        "data": {"source": "text", "path": str(root / "corpus.txt"), "seed": 1},
        "batch": {"per_device_batch_size": 4, "max_target_length": 32},
        "steps": 4,
        "optimizer": {"learning_rate": 1e-3},
        "checkpoint": {"export": "hf"},
        "logging": {"every_steps": 2},
        "output_dir": str(root / "runs"),
    }
    assert train_run(spec_of(merged(spec))) == TrainerExit.OK
    return {"root": root, "run": root / "runs" / "exported", "teacher": teacher, "tokens": tokens}


def _export(*args: str):
    from orchestrator.cli import app

    return CliRunner().invoke(app, ["export", *args])


def test_the_run_records_the_teacher_folders_tokenizer(run):
    spec = json.loads((run["run"] / "spec.json").read_text())
    assert spec["data"]["tokenizer"] == f"{run['teacher']}/tokenizer.json"
    assert spec["checkpoint"]["export"] == "hf"


def test_export_loads_in_transformers_with_the_runs_logits(run, tmp_path):
    """The CLI's export and the automatic one, loaded by transformers, give the logits of the run's checkpoint."""
    out = tmp_path / "student"
    result = _export(str(run["run"]), "--to", "hf", "-o", str(out))
    assert result.exit_code == 0, result.output
    auto = run["run"] / "export" / "hf"
    for folder in (out, auto):
        # generation_config.json (eos/bos ids) comes from the teacher folder with its tokenizer.json
        names = {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"}
        assert {p.name for p in folder.iterdir()} == names
        assert (folder / "tokenizer.json").read_bytes() == (run["teacher"] / "tokenizer.json").read_bytes()
    assert hf.shape_from_config(hf.read_config(str(out))).num_layers == 2
    # What the shape does not say comes from the teacher folder the student was cut from (transformers took its
    # defaults: 2048 positions, other special-token ids).
    source = json.loads((run["teacher"] / "config.json").read_text())
    exported = json.loads((out / "config.json").read_text())
    for key in ("max_position_embeddings", "bos_token_id", "eos_token_id"):
        assert exported[key] == source[key], key
    run_ref("logits-many", json.dumps([[str(f), str(run["tokens"]), str(f / "ref.npy")] for f in (out, auto)]))
    ours = np.asarray(load_model(str(run["run"] / "checkpoints")).logits(jnp.asarray(np.load(run["tokens"]))))
    for folder in (out, auto):
        ref = np.load(folder / "ref.npy")
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=str(folder))
    # Trained: the export is not the pruned teacher it started from.
    teacher = np.asarray(load_model(str(run["teacher"])).logits(jnp.asarray(np.load(run["tokens"]))))
    assert not np.allclose(teacher, ours)


def test_bfloat16_export(run, tmp_path):
    out = tmp_path / "bf16"
    assert _export(str(run["run"]), "-o", str(out), "--dtype", "bfloat16").exit_code == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(out / hf.SINGLE), framework="numpy") as f:
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"


def test_a_bfloat16_students_float32_export_holds_its_master_weights(tmp_path):
    # The float32 masters were restored as bfloat16 first: `--dtype float32` wrote bf16-rounded values labelled
    # float32 (logits 1.7 % off the run's model).
    from safetensors.numpy import load_file

    from trainer.train import run as train_run

    spec = {
        "name": "bf16",
        "mode": "pretrain",
        "student": {"model": "tiny-2l", "weight_dtype": "bfloat16"},
        "teacher": None,
        "batch": {"per_device_batch_size": 2, "max_target_length": 16},
        "steps": 3,
        "optimizer": {"learning_rate": 1e-2},
        "output_dir": str(tmp_path),
    }
    assert train_run(spec_of(merged(spec))) == TrainerExit.OK
    out = tmp_path / "f32"
    result = _export(str(tmp_path / "bf16"), "-o", str(out), "--dtype", "float32")
    assert result.exit_code == 0, result.output
    weights = load_file(str(out / hf.SINGLE))["model.layers.0.mlp.down_proj.weight"]
    assert weights.dtype == np.float32
    rounded = np.asarray(jnp.asarray(weights).astype(jnp.bfloat16).astype(jnp.float32))
    assert not np.array_equal(weights, rounded)  # trained float32 values, not bfloat16 ones widened


def test_what_an_export_cannot_carry_is_said_and_a_missing_input_is_not_an_output_error(run, tmp_path):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(run["teacher"], teacher)
    (teacher / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    copy = tmp_path / "run"
    shutil.copytree(run["run"], copy)
    spec = json.loads((copy / "spec.json").read_text())
    spec["teacher"]["load_parameters_path"] = str(teacher)
    spec["data"]["tokenizer"] = str(teacher / "tokenizer.json")
    (copy / "spec.json").write_text(json.dumps(spec))
    (copy / "summary.json").unlink()  # as while it trains
    out = tmp_path / "out"
    result = _export(str(copy), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "note: the run has not finished" in result.stderr and "of 4" in result.stderr
    # the chat template travels with the tokenizer (apply_chat_template failed on the export without it)
    assert (out / "chat_template.jinja").read_text() == (teacher / "chat_template.jinja").read_text()
    # A teacher no longer where spec.json says: config.json has no positions or special-token ids, said so.
    spec["teacher"]["load_parameters_path"] = "moved/teacher"
    (copy / "spec.json").write_text(json.dumps(spec))
    result = _export(str(copy), "-o", str(tmp_path / "out2"))
    assert result.exit_code == 0 and "moved/teacher (the teacher's checkpoint) is not there from here" in result.stderr
    # No Hugging Face folder of the student's family behind it (a teacher that is a run's own checkpoint): the
    # positions it trained on, and a note (config.json left them out silently: transformers took 2048).
    spec["teacher"]["load_parameters_path"] = str(copy / "checkpoints")
    (copy / "spec.json").write_text(json.dumps(spec))
    result = _export(str(copy), "-o", str(tmp_path / "out4"))
    assert result.exit_code == 0 and "no Hugging Face folder of the student's family" in result.stderr, result.output
    config = json.loads((tmp_path / "out4" / "config.json").read_text())
    assert config["max_position_embeddings"] == spec["batch"]["max_target_length"]
    # A tokenizer no longer there is the run's file missing, not an output folder that cannot be written.
    spec["data"]["tokenizer"] = "moved/tokenizer.json"
    (copy / "spec.json").write_text(json.dumps(spec))
    result = _export(str(copy), "-o", str(tmp_path / "out3"))
    assert result.exit_code == ExitCode.USAGE and "cannot read moved/tokenizer.json" in result.output
    assert "OutputNotWritable" not in result.output and not (tmp_path / "out3").exists()
    # ... nor the folders above -o it had to make (they were left behind, empty)
    result = _export(str(copy), "-o", str(tmp_path / "new" / "deeper" / "out"))
    assert result.exit_code == ExitCode.USAGE and not (tmp_path / "new").exists(), result.output


def _nothing_new(parent: Path, before: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == before  # no output, no partial folder


def test_not_a_run_folder(tmp_path):
    result = _export(str(tmp_path), "-o", str(tmp_path / "out"))
    assert result.exit_code == ExitCode.USAGE and "not a run folder: it has no spec.json" in result.output
    result = _export(str(tmp_path / "absent"), "-o", str(tmp_path / "out"))
    assert result.exit_code == ExitCode.USAGE and "not a run folder: no such folder" in result.output
    assert "Traceback" not in result.output
    _nothing_new(tmp_path, set())


def test_a_run_without_checkpoint(run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "spec.json").write_bytes((run["run"] / "spec.json").read_bytes())
    result = _export(str(bare), "-o", str(tmp_path / "out"))
    assert result.exit_code == ExitCode.USAGE and "has no checkpoint to export" in result.output
    _nothing_new(tmp_path, {"bare"})


def test_an_unfinished_later_step_is_skipped_and_named(run, tmp_path, caplog):
    """A step folder without parameters (a save cut short, or made by hand) is not read as the latest step, and
    the export says it skipped it (`train` refuses to resume from it, naming it: see test_trainer_e2e)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run["run"], copy)
    (step,) = [p.name for p in (copy / "checkpoints").iterdir() if p.name.isdigit()]
    (copy / "checkpoints" / "999").mkdir()
    with caplog.at_level("WARNING", logger="trainer.checkpointing"):
        result = _export(str(copy), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert f"checkpoints/{step}/params" in result.output
    (warning,) = [r.getMessage() for r in caplog.records if "skipped step folder" in r.getMessage()]
    assert "999" in warning and f"reading step {step}" in warning


# orbax's other reads of the same restore end after its event loop has closed; Python reports them as unraisable
# (the command's own output stays two lines: the error and its hint).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_checkpoint_is_bad_input_with_the_way_out(run, tmp_path, damage):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run["run"], copy)
    (step,) = [p for p in (copy / "checkpoints").iterdir() if p.name.isdigit()]
    params = step / "params"
    if damage == "truncated":
        data = [p for p in params.rglob("*") if p.is_file() and p.parent.name == "d"]
        assert data
        for p in data:
            with open(p, "r+b") as f:
                f.truncate(20)
    else:
        for p in params.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    result = _export(str(copy), "-o", str(tmp_path / "out"))
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "is damaged or incomplete" in result.output and f"move {step} aside" in result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    _nothing_new(tmp_path, {"copy"})


def test_an_output_folder_in_use_or_unwritable(run, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    result = _export(str(run["run"]), "-o", str(used))
    assert result.exit_code == ExitCode.USAGE and "already exists and is not empty" in result.output
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _export(str(run["run"]), "-o", str(blocker / "out"))
    assert result.exit_code == ExitCode.USAGE and "OutputNotWritable" in result.output
    if os.getuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        result = _export(str(run["run"]), "-o", str(locked / "out"))
        assert result.exit_code == ExitCode.USAGE and "OutputNotWritable" in result.output
        assert list(locked.iterdir()) == []
    _nothing_new(tmp_path, {"used", "file", *(["locked"] if os.getuid() != 0 else [])})


def test_export_to_maxtext_loads_with_the_runs_logits(run, tmp_path):
    """`--to maxtext` writes DIR/0/items (MaxText's layout, scanned as the student is) and DIR/config.json; loaded
    back, it gives the logits of the run's checkpoint."""
    out = tmp_path / "mt"
    result = _export(str(run["run"]), "--to", "maxtext", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "0" / "items" / "_METADATA").is_file() and (out / "config.json").is_file()
    tokens = jnp.asarray(np.load(run["tokens"]))
    ours = np.asarray(load_model(str(run["run"] / "checkpoints")).logits(tokens))
    back = np.asarray(load_model(str(out / "0" / "items")).logits(tokens))
    np.testing.assert_allclose(back, ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep").write_text("")
    refused = _export(str(run["run"]), "--to", "maxtext", "-o", str(used))
    assert refused.exit_code == ExitCode.USAGE and "already exists and is not empty" in refused.output


def test_checkpoint_export_maxtext_writes_the_final_student(tmp_path):
    """`checkpoint.export: maxtext` (single process): the finished run's student in <run>/export/maxtext, loading
    with the run checkpoint's logits; a multi-process run is refused before training, saying what to use."""
    from trainer.exit_codes import UserError
    from trainer.train import _check_export
    from trainer.train import run as train_run

    spec = {
        "name": "mt",
        "mode": "pretrain",
        "student": {"model": "tiny-2l"},
        "teacher": None,
        "batch": {"per_device_batch_size": 2, "max_target_length": 16},
        "steps": 2,
        "checkpoint": {"export": "maxtext"},
        "output_dir": str(tmp_path),
    }
    assert train_run(spec_of(merged(spec))) == TrainerExit.OK
    out = tmp_path / "mt" / "export" / "maxtext"
    assert (out / "0" / "items" / "_METADATA").is_file() and (out / "config.json").is_file()
    tokens = jnp.asarray((np.arange(2 * 16).reshape(2, 16) * 37 % 256).astype(np.int32))
    ours = np.asarray(load_model(str(tmp_path / "mt" / "checkpoints")).logits(tokens))
    back = np.asarray(load_model(str(out)).logits(tokens))
    np.testing.assert_allclose(back, ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())
    with pytest.raises(UserError) as refused:
        _check_export(spec_of(merged(spec)), 2)
    assert "checkpoint.export: hf" in refused.value.hint


def test_ctrl_c_inside_a_garbage_collection_callback_still_interrupts_the_command():
    """Ctrl-C during `export` often lands in JAX's gc callback, where Python can only print it: the export carried
    on and exited 0. The CLI's unraisable hook interrupts the main thread again once the callback is over."""
    code = """
import gc, sys, time
from orchestrator.cli import _interrupt_again
sys.unraisablehook = _interrupt_again
def callback(phase, info):
    if phase == "start":
        gc.callbacks.remove(callback)
        raise KeyboardInterrupt  # where the signal's exception lands
gc.callbacks.append(callback)
try:
    gc.collect()
    time.sleep(10)
    print("carried on")
except KeyboardInterrupt:
    print("interrupted")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "interrupted" and "Traceback" not in done.stderr, done.stdout + done.stderr


def test_a_pruned_gemma3_whose_global_layers_moved_is_not_exported_to_maxtext(tmp_path):
    # MaxText takes a Gemma 3 layer's attention kind from its index: the checkpoint computed another model there,
    # with no word. Refused before the checkpoint is read; Hugging Face (layer_types) still takes it.
    from distillspec.config import DistillSpec
    from trainer.exit_codes import UserError
    from trainer.export import export_run

    data = {
        "student": {"model": "gemma3-1b", "num_layers": 25, "init": "teacher", "drop_layers": [3]},
        "teacher": {"model": "gemma3-1b", "load_parameters_path": "gs://b/t"},
        "loss": {"layer_indices": [0]},
    }
    run_dir = tmp_path / "pruned"
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps(DistillSpec.model_validate(data).resolved_data()))
    with pytest.raises(UserError, match=r"global layers \[4, 10, 16, 22\] are not every 6th") as e:
        export_run(str(run_dir), str(tmp_path / "out"), to="maxtext")
    assert "--to hf" in e.value.hint and not (tmp_path / "out").exists()


def test_an_export_of_a_training_run_follows_the_step_that_replaced_the_one_it_read(run, tmp_path, monkeypatch):
    # A run still training deletes its older steps (checkpoint.keep): the step being read vanished, and the export
    # failed calling the healthy checkpoint damaged ("move it aside"). It reads the new latest step instead.
    import shutil

    from trainer import checkpointing
    from trainer.export import export_run

    copy = tmp_path / "training"
    shutil.copytree(run["run"], copy, ignore=shutil.ignore_patterns("export"))
    (latest,) = sorted((copy / "checkpoints").iterdir(), key=lambda p: int(p.name))[-1:]
    real, reads = checkpointing.restore_params, []

    def rotating(path, like):
        reads.append(path)
        if len(reads) == 1:  # the trainer saves the next step and deletes this one while it is read
            latest.rename(latest.with_name(str(int(latest.name) + 1)))
        return real(path, like)

    monkeypatch.setattr(checkpointing, "restore_params", rotating)
    done = export_run(str(copy), str(tmp_path / "out"))
    assert len(reads) == 2 and done.params_dir.endswith(f"{int(latest.name) + 1}/params"), (reads, done)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_run_named_by_file_url_exports_and_an_unreachable_store_is_said_at_once(run, tmp_path, monkeypatch):
    # file://RUN was an internal error (exit 70); an object store that does not answer took ~50 s, printed a
    # traceback and was called "not writable".
    import socket
    import time

    done = _export(f"file://{run['run']}", "-o", str(tmp_path / "out"))
    assert done.exit_code == ExitCode.OK and (tmp_path / "out" / "config.json").is_file(), done.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    refused = _export(str(run["run"]), "-o", "gs://nowhere/out")
    assert refused.exit_code == ExitCode.USAGE and time.monotonic() - started < 15, refused.output
    assert "cannot be reached" in refused.stderr and "Traceback" not in refused.output
    assert "cannot write gs://nowhere/out" in refused.stderr and "outputs are not read as absent" not in refused.stderr


def test_positions_and_special_tokens_survive_a_maxtext_export_and_a_runs_own_checkpoints(run, tmp_path):
    # HF -> MaxText -> HF lost max_position_embeddings (the teacher's, back to the training length) and the
    # special-token ids; so did a student loaded from a run's own checkpoints.
    from trainer.export import CARRIED_CONFIG, carried_config, read_run_spec

    teacher = json.loads((run["teacher"] / "config.json").read_text())
    wanted = {key: teacher[key] for key in CARRIED_CONFIG if key in teacher}
    assert "max_position_embeddings" in wanted
    done = _export(str(run["run"]), "--to", "maxtext", "-o", str(tmp_path / "mt"))
    assert done.exit_code == ExitCode.OK, done.output
    sidecar = json.loads((tmp_path / "mt" / "config.json").read_text())
    assert {key: sidecar.get(key) for key in wanted} == wanted
    spec = read_run_spec(str(run["run"]))
    for path in (str(tmp_path / "mt" / "0" / "items"), str(run["run"] / "checkpoints")):
        student = spec.student.model_copy(update={"load_parameters_path": path, "init": "random", "drop_layers": None})
        reloaded = spec.model_copy(update={"student": student, "teacher": None})
        fields, _, notes = carried_config(reloaded, "llama")
        assert fields == wanted and notes == [], (path, fields, notes)


def test_a_write_the_file_system_refuses_inside_safetensors_is_not_writable_not_a_bug(run, tmp_path):
    # A file size limit (or a full disk) met inside safetensors' writer was "internal error" (exit 70).
    import shlex

    command = shlex.join(
        [str(REPO / ".venv" / "bin" / "distillctl"), "export", str(run["run"]), "-o", str(tmp_path / "out")]
    )
    # SIGXFSZ ignored: the write fails (EFBIG) instead of killing the process; the limit is in KiB.
    done = subprocess.run(
        ["bash", "-c", f"trap '' XFSZ; ulimit -f 64; exec {command}"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == ExitCode.USAGE and "OutputNotWritable" in done.stderr, done.stderr[-2000:]
    assert "internal error" not in done.stderr and not (tmp_path / "out").exists()


def test_an_export_into_the_runs_checkpoints_folder_is_refused(run, tmp_path):
    """`export -o <run>/checkpoints/hf` put a model folder among the run's checkpoint steps, where resume and orbax
    look (other commands refuse outputs inside run folders)."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run["run"], copy)
    before = sorted(p.name for p in (copy / "checkpoints").iterdir())
    result = _export(str(copy), "-o", str(copy / "checkpoints" / "hf"))
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "is inside the run's checkpoints folder" in result.stderr and "export/hf" in result.stderr
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == before
