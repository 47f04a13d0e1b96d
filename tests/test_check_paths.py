"""`distillctl validate --check-paths`: each load_parameters_path's own config against the spec's model, before
launch, for Hugging Face folders and this trainer's run folders, on local disk and through an fsspec URL."""

from __future__ import annotations

import json
import os

import fsspec
import numpy as np
import pytest
import yaml
from safetensors.numpy import save, save_file
from spec_helpers import spec_data
from typer.testing import CliRunner

from distillspec.config import ModelSpec
from distillspec.hf_config import CONFIG, SINGLE, config_of
from distillspec.hf_tensors import tensor_table
from distillspec.specfile import validate_data
from orchestrator.cli import app
from orchestrator.core.checkpoint_paths import check_paths
from orchestrator.exit_codes import ExitCode
from orchestrator.outputs import file_sha256, read_text

runner = CliRunner()


def spec_with(teacher_path: str):
    spec, problems = validate_data(spec_data(**{"teacher.load_parameters_path": teacher_path}))
    assert spec is not None, problems
    return spec


def hf_folder(path, model: str, *, weights: bool = True, **overrides) -> str:
    """A Hugging Face folder of `model` as --check-paths sees it: its config.json and a model.safetensors of the
    model's tensors (zeros: only their names, shapes and dtypes are read)."""
    path.mkdir(parents=True, exist_ok=True)
    shape = ModelSpec(model=model, **overrides).shape()
    (path / CONFIG).write_text(json.dumps(config_of(shape)))
    if weights:
        save_file(zeros_of(shape), path / SINGLE)
    return str(path)


def zeros_of(shape, dtype=np.float32, **changed) -> dict:
    """The tensors of a model shape, as zeros (`changed`: name -> other dims, or None to leave it out)."""
    table = tensor_table(shape) | changed
    return {name: np.zeros(dims, dtype) for name, dims in table.items() if dims is not None}


def test_a_matching_hugging_face_folder_has_no_problem(tmp_path):
    assert check_paths(spec_with(hf_folder(tmp_path / "teacher", "tiny-4l")), read_text) == []


def test_every_difference_is_named_with_the_file(tmp_path):
    folder = hf_folder(tmp_path / "teacher", "tiny-4l", num_layers=6, vocab_size=512)
    problems = check_paths(spec_with(folder), read_text)
    assert {p.code for p in problems} == {"checkpoint_mismatch"}
    text = " ".join(p.message for p in problems)
    assert "num_layers: expected 4, found 6" in text and "vocab_size: expected 256, found 512" in text
    assert all(p.loc == ("teacher", "load_parameters_path") and f"{folder}/{CONFIG}" in p.message for p in problems)


def test_a_run_folder_is_read_through_its_spec_json(tmp_path):
    run = tmp_path / "runs" / "teacher"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"student": {"model": "tiny-2l"}}))
    problems = check_paths(spec_with(str(run / "checkpoints")), read_text)
    assert [p.code for p in problems] == ["checkpoint_mismatch"] * len(problems) and problems
    assert "spec.json holds a different teacher model: num_layers: expected 4, found 2" in problems[0].message


def test_nothing_there_and_a_damaged_config_are_errors(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / CONFIG).write_text("{not json")
    assert [p.code for p in check_paths(spec_with(str(tmp_path / "absent")), read_text)] == ["checkpoint_not_found"]
    assert [p.code for p in check_paths(spec_with(str(tmp_path / "broken")), read_text)] == ["checkpoint_unreadable"]
    (tmp_path / "broken" / CONFIG).write_text(json.dumps({"model_type": "mistral"}))
    (problem,) = check_paths(spec_with(str(tmp_path / "broken")), read_text)
    assert problem.code == "checkpoint_unsupported" and "mistral" in problem.message


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"num_attention_heads": None}, "num_attention_heads is missing"),
        ({"num_hidden_layers": "x"}, "num_hidden_layers must be a positive integer, got 'x'"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
        ({"vocab_size": 1.5}, "vocab_size must be a positive integer"),
        ({"head_dim": -1}, "head_dim must be a positive integer"),
        ({"rms_norm_eps": "small"}, "rms_norm_eps must be a positive number, got 'small'"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "rope_parameters.factor is missing"),
        # a per-layer list over 10**30 layers grew until memory ran out (validate never ended)
        ({"num_hidden_layers": 10**30}, "num_hidden_layers 1,000,000,000,000,000,000,000,000,000,000 is past any"),
        ({"vocab_size": 1 << 40}, "vocab_size 1,099,511,627,776 is past any model's"),
        # NaN gave the hint `rope_theta: nan` (no block takes it); 0 read as the family's default (found 10000.0)
        ({"rope_parameters": {"rope_type": "default", "rope_theta": float("nan")}}, "positive number, got nan"),
        ({"rope_parameters": None, "rope_theta": 0}, "rope_theta must be a positive number, got 0"),
        # each setting of its JSON type: "false" read as tied, "512" as "expected 512, found 512", and Python's
        # words without the field ("float() argument must be ... not 'NoneType'")
        ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, got 'false'"),
        ({"sliding_window": "512"}, "sliding_window must be a positive whole number or null, got '512'"),
        ({"sliding_window": 4096, "attn_logit_softcapping": 50.0}, None),  # of their types: a llama reads neither
        ({"rope_parameters": None, "rope_scaling": "llama3"}, "rope_scaling must be a JSON object or null"),
        ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": "8"}}, "rope_parameters.factor must"),
        ({"model_type": "gemma3", "text_config": None}, "model_type gemma3 (image-text Gemma 3) needs a text_config"),
        ({"model_type": 3}, "model_type must be a string, got 3"),  # "model_type 3 is not supported"
    ],
)
def test_a_config_with_a_field_absent_or_of_the_wrong_type_is_named(tmp_path, change, said):
    folder = tmp_path / "teacher"
    folder.mkdir()
    config = config_of(ModelSpec(model="tiny-4l").shape())
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    (folder / CONFIG).write_text(json.dumps(config))
    if said is None:
        assert check_paths(spec_with(str(folder)), read_text) == []
        return
    (problem,) = check_paths(spec_with(str(folder)), read_text)
    assert problem.code == "checkpoint_unreadable" and said in problem.message, problem.message
    # the file's own text: a null written out is not a key left out
    config = {**config_of(ModelSpec(model="tiny-4l").shape()), "rms_norm_eps": None}
    (folder / CONFIG).write_text(json.dumps(config))
    (problem,) = check_paths(spec_with(str(folder)), read_text)
    assert "rms_norm_eps must be a positive number, got None" in problem.message, problem.message


@pytest.mark.parametrize(
    ("quantization", "said"),
    [({"quant_method": "gptq", "bits": 4}, "quant_method 'gptq'"), ({}, "quantized (quantization_config)")],
)
def test_a_quantized_checkpoint_is_refused_before_its_tensors_are_read(tmp_path, quantization, said):
    """transformers records `quantization_config` in a GPTQ / AWQ / bitsandbytes / FP8 save: its tensors are not
    the float weights the trainer loads (it listed them as missing and foreign, without saying why)."""
    folder = tmp_path / "teacher"
    folder.mkdir()
    config = config_of(ModelSpec(model="tiny-4l").shape())
    (folder / CONFIG).write_text(json.dumps({**config, "quantization_config": quantization}))
    (problem,) = check_paths(spec_with(str(folder)), read_text)
    assert problem.code == "checkpoint_unsupported" and said in problem.message, problem.message
    assert "unquantized checkpoint" in problem.hint


def test_a_rope_the_trainer_does_not_compute_is_unsupported_not_unreadable(tmp_path):
    """The file reads well: the fix is another model, not a new copy of the folder."""
    folder = tmp_path / "teacher"
    folder.mkdir()
    config = config_of(ModelSpec(model="tiny-4l").shape())
    (folder / CONFIG).write_text(json.dumps({**config, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}))
    (problem,) = check_paths(spec_with(str(folder)), read_text)
    assert problem.code == "checkpoint_unsupported" and "RoPE type 'yarn'" in problem.message, problem


def test_a_run_folder_whose_spec_json_is_not_a_spec_says_why_in_one_line(tmp_path):
    run = tmp_path / "runs" / "teacher"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"student": 5}))
    (problem,) = check_paths(spec_with(str(run / "checkpoints")), read_text)
    assert problem.code == "checkpoint_unreadable" and "has no valid student block" in problem.message
    assert "errors.pydantic.dev" not in problem.message and "\n" not in problem.message


def test_checkpoint_folders_with_different_tokenizers_are_an_error_before_launch(tmp_path):
    teacher = hf_folder(tmp_path / "teacher", "tiny-4l")
    student = hf_folder(tmp_path / "student", "tiny-2l")
    spec, problems = validate_data(
        spec_data(
            **{
                "teacher.load_parameters_path": teacher,
                "student": {"model": "tiny-2l", "load_parameters_path": student},
            }
        )
    )
    assert spec is not None, problems
    (tmp_path / "teacher" / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    (tmp_path / "student" / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    assert check_paths(spec, read_text) == []
    (tmp_path / "student" / "tokenizer.json").write_text('{"model": {"vocab": {"b": 0}}}')
    (problem,) = check_paths(spec, read_text)
    assert problem.code == "tokenizer_mismatch" and problem.loc == ("student", "load_parameters_path")
    # data.tokenizer overrides the check (they may tokenise alike after all); writing the teacher's down switched it
    # off without a word, and a student of another mapping was distilled. Now a warning names the folder.
    named = spec.model_copy(update={"data": spec.data.model_copy(update={"tokenizer": teacher})})
    (problem,) = check_paths(named, read_text)
    assert (
        problem.code == "tokenizer_mismatch" and problem.severity == "warning" and problem.loc == ("data", "tokenizer")
    )
    assert f"differently from the student's own {tmp_path / 'student' / 'tokenizer.json'}" in problem.message
    (tmp_path / "student" / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    assert check_paths(named, read_text) == []


def test_a_url_is_read_through_fsspec():
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/ckpt/teacher/config.json", json.dumps(config_of(ModelSpec(model="tiny-4l").shape())).encode())
    assert check_paths(spec_with("memory://ckpt/teacher"), read_text) == []
    assert [p.code for p in check_paths(spec_with("memory://ckpt/missing"), read_text)] == ["checkpoint_not_found"]


def test_validate_check_paths_exits_4_naming_the_mismatch(tmp_path):
    folder = hf_folder(tmp_path / "teacher", "tiny-4l", num_layers=6)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_data(**{"teacher.load_parameters_path": folder})))
    assert runner.invoke(app, ["validate", str(spec)]).exit_code == 0  # paths are not read without the flag
    result = runner.invoke(app, ["validate", "--check-paths", str(spec), "--output", "json"])
    assert result.exit_code == ExitCode.INVALID_SPEC
    (problem,) = json.loads(result.stdout)
    assert problem["code"] == "checkpoint_mismatch" and problem["file"] == str(spec)
    assert problem["loc"] == "teacher.load_parameters_path" and "num_layers: expected 4, found 6" in problem["message"]


def test_a_maxtext_path_without_tensorstore_exits_1_naming_it(tmp_path):
    """Where tensorstore is not installed (a CLI-only install), a MaxText path in --check-paths stops with exit 1
    naming the package, not an ImportError traceback. The package's absence is made the way Python documents:
    `sys.modules[name] = None` makes `import name` raise ImportError (in a child process)."""
    import subprocess
    import sys

    items = tmp_path / "maxtext" / "0" / "items"
    items.mkdir(parents=True)
    (items / "_METADATA").write_text(json.dumps({"tree_metadata": {}, "use_ocdbt": True}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_data(**{"teacher.load_parameters_path": str(items)})))
    code = (
        "import sys; sys.modules['tensorstore'] = None; from orchestrator.cli import main; "
        f"sys.argv = ['distillctl', 'validate', '--check-paths', {str(spec)!r}]; main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert "pip install tensorstore" in done.stderr and "Traceback" not in done.stderr


def test_a_pruned_gemma3_checkpoint_needs_its_global_layers_in_the_spec(tmp_path):
    """A Gemma 3 exported after pruning states its layers' kinds (config.json `layer_types`); a spec that builds
    the pattern is told which global layers to set, and one that sets them passes."""
    pruned = ModelSpec(model="gemma3-1b", num_layers=25, global_layers=[4, 10, 16, 22])
    folder = tmp_path / "pruned"
    folder.mkdir()
    (folder / CONFIG).write_text(json.dumps(config_of(pruned.shape())))
    gemma = {"student.model": "gemma3-1b", "loss.layer_indices": [0], "teacher.load_parameters_path": str(folder)}
    teacher = {"model": "gemma3-1b", "num_layers": 25, "load_parameters_path": str(folder)}
    spec, _ = validate_data(spec_data(**gemma, teacher=teacher))
    (problem,) = check_paths(spec, read_text)
    assert problem.code == "checkpoint_mismatch"
    assert "global_layers: expected [5, 11, 17, 23], found [4, 10, 16, 22]" in problem.message
    spec, _ = validate_data(spec_data(**gemma, teacher={**teacher, "global_layers": [4, 10, 16, 22]}))
    assert check_paths(spec, read_text) == []


def test_validate_check_paths_reads_a_url_folders_config(tmp_path):
    """Through the CLI (which first asks whether the path is a MaxText checkpoint): a Hugging Face folder at an
    fsspec URL is read through its config.json."""
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/cli/teacher/config.json", json.dumps(config_of(ModelSpec(model="tiny-4l").shape())).encode())
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_data(**{"teacher.load_parameters_path": "memory://cli/teacher"})))
    result = runner.invoke(app, ["validate", "--check-paths", str(spec)])  # its weights are listed there too
    assert result.exit_code == ExitCode.INVALID_SPEC and "checkpoint_weights_missing" in result.output
    fs.pipe_file("/cli/teacher/model.safetensors", b"\0")  # its header is read too
    result = runner.invoke(app, ["validate", "--check-paths", str(spec)])
    assert result.exit_code == ExitCode.INVALID_SPEC and "not a readable safetensors file" in result.output
    # a clone without git-lfs: a pointer where the weights go (it said "not a readable safetensors file")
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 2471645608\n"
    fs.pipe_file("/cli/teacher/model.safetensors", pointer)
    result = runner.invoke(app, ["validate", "--check-paths", str(spec)])
    said = " ".join(result.output.split())
    assert "is a Git LFS pointer, not the weights" in said and "`git lfs pull` in the clone" in said, said
    fs.pipe_file("/cli/teacher/model.safetensors", save(zeros_of(ModelSpec(model="tiny-4l").shape())))
    assert runner.invoke(app, ["validate", "--check-paths", str(spec)]).exit_code == ExitCode.OK
    spec.write_text(yaml.safe_dump(spec_data(**{"teacher.load_parameters_path": "memory://cli/absent"})))
    assert runner.invoke(app, ["validate", "--check-paths", str(spec)]).exit_code == ExitCode.INVALID_SPEC


def test_a_sequence_longer_than_the_checkpoints_positions_is_a_warning(tmp_path):
    """batch.max_target_length beyond a checkpoint's max_position_embeddings: RoPE runs past it, quality degrades
    silently. A warning naming both numbers and the model (the student's folder here), not an error: validate
    passes, and fails only with --strict."""
    teacher = hf_folder(tmp_path / "teacher", "tiny-4l")
    student = hf_folder(tmp_path / "student", "tiny-2l")
    for folder, limit in ((tmp_path / "teacher", 16), (tmp_path / "student", 8)):
        config = json.loads((folder / CONFIG).read_text())
        (folder / CONFIG).write_text(json.dumps({**config, "max_position_embeddings": limit}))
    data = spec_data(
        **{"teacher.load_parameters_path": teacher, "student": {"model": "tiny-2l", "load_parameters_path": student}}
    )
    spec, problems = validate_data(data)
    assert spec is not None and spec.batch.max_target_length == 16, problems
    (problem,) = check_paths(spec, read_text)  # the teacher's 16 positions are enough
    assert (problem.code, problem.severity, problem.loc) == (
        "beyond_max_position",
        "warning",
        ("student", "load_parameters_path"),
    )
    assert problem.message == (
        "batch.max_target_length 16 is longer than the student's max_position_embeddings 8 "
        f"({student}/{CONFIG}): RoPE runs past it, but the student was not trained on positions that far and its "
        "quality degrades silently"
    )
    assert problem.hint == (
        "lower batch.max_target_length to 8 or less, or use a student checkpoint trained for longer contexts"
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["validate", "--check-paths", str(spec_file)])
    assert result.exit_code == ExitCode.OK, result.output
    assert "beyond_max_position" in result.output and "1 warning(s)" in result.output
    strict = runner.invoke(app, ["validate", "--check-paths", "--strict", str(spec_file), "--output", "json"])
    assert strict.exit_code == ExitCode.INVALID_SPEC
    assert [p["code"] for p in json.loads(strict.stdout)] == ["beyond_max_position"]
    spec, _ = validate_data({**data, "batch": {**data["batch"], "max_target_length": 8}})
    assert check_paths(spec, read_text) == []


def test_a_store_that_does_not_answer_is_unreachable_within_seconds_not_not_found(tmp_path, monkeypatch):
    """gcsfs retried every file for minutes (151 s, 14 tracebacks), then the silence read as "nothing to load"."""
    import socket
    import time

    with socket.socket() as closed:  # a port nothing listens on: the store's endpoint
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    spec = tmp_path / "spec.yaml"
    paths = {"teacher.load_parameters_path": "gs://bucket/teacher", "student.load_parameters_path": "gs://bucket/s"}
    spec.write_text(yaml.safe_dump(spec_data(**paths)))
    started = time.monotonic()
    result = runner.invoke(app, ["validate", "--check-paths", str(spec), "--output", "json"])
    assert time.monotonic() - started < 30
    assert result.exit_code == ExitCode.INVALID_SPEC, result.output
    teacher, student = sorted(json.loads(result.stdout), key=lambda p: p["loc"][0] != "teacher")
    assert teacher["code"] == "checkpoint_unreachable" and "cannot be reached" in teacher["message"], teacher
    # Each names its own path (the student's named the teacher's: one probe per store), at its line.
    assert teacher["message"].startswith("cannot read gs://bucket/teacher:"), teacher
    assert student["message"].startswith("cannot read gs://bucket/s:"), student
    assert teacher["line"] and student["line"] and teacher["line"] != student["line"]


def test_a_checkpoint_on_the_hub_is_refused_before_anything_asks_the_hub(tmp_path):
    # `hf://org/model` made --check-paths ask the Hub from a machine without network: internal error, exit 70.
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_data(**{"teacher.load_parameters_path": "hf://meta-llama/Llama-3.1-8B"})))
    result = runner.invoke(app, ["validate", "--check-paths", str(spec)])
    assert result.exit_code == ExitCode.INVALID_SPEC, result.output
    said = " ".join(result.stdout.split())
    assert "error[hub_model_not_read] teacher.load_parameters_path" in said
    assert "huggingface-cli download meta-llama/Llama-3.1-8B --local-dir DIR" in said


def test_a_config_json_that_never_ends_is_read_up_to_a_limit(tmp_path):
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / CONFIG).symlink_to("/dev/zero")
    problems = check_paths(spec_with(str(folder)), lambda path: read_text(path, limit=1024))
    assert [p.code for p in problems] == ["checkpoint_not_found"]


def test_a_data_path_that_names_no_file_is_an_error_before_launch(tmp_path):
    # The trainer stopped at start ("no files at data.path") after the pods were scheduled.
    from orchestrator.outputs import count_files

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "empty").mkdir()
    teacher = hf_folder(tmp_path / "teacher", "tiny-4l")

    def problems_for(data_path: str, eval_path: str | None = None):
        edits = {"data": {"source": "jsonl", "path": data_path}, "teacher.load_parameters_path": teacher}
        if eval_path:
            edits["eval"] = {"path": eval_path}
        spec, found = validate_data(spec_data(**edits))
        assert spec is not None, found
        return [(p.code, p.loc) for p in check_paths(spec, read_text, None, count_files)]

    named = str(tmp_path / "corpus")
    for path in (named, f"{named}/a.jsonl", f"{named}/*.jsonl"):
        assert problems_for(path) == [], path
    # a `[` in a folder's name is a glob's character class: the hint says how to write it
    (tmp_path / "[v2]").mkdir()
    (tmp_path / "[v2]" / "a.jsonl").write_text('{"text": "x"}\n')
    assert problems_for(str(tmp_path / "[[]v2]" / "a.jsonl")) == []
    spec, _ = validate_data(
        spec_data(
            **{
                "data": {"source": "jsonl", "path": str(tmp_path / "[v2]" / "a.jsonl")},
                "teacher.load_parameters_path": teacher,
            }
        )
    )
    (problem,) = check_paths(spec, read_text, None, count_files)
    assert problem.code == "data_path_not_found" and "write `[[]` for a `[`" in problem.hint, problem
    for path in (f"{named}/*.md", str(tmp_path / "empty"), str(tmp_path / "absent.jsonl")):
        assert problems_for(path) == [("data_path_not_found", ("data", "path"))], path
    assert problems_for(named, str(tmp_path / "held-out.jsonl")) == [("data_path_not_found", ("eval", "path"))]
    # Through fsspec, and through the command.
    fsspec.filesystem("memory").pipe_file("/docs/a.jsonl", b'{"text": "x"}\n')
    assert problems_for("memory://docs/*.jsonl") == [] and problems_for("memory://docs/*.parquet") != []
    spec = tmp_path / "spec.yaml"
    edits = {"data": {"source": "jsonl", "path": f"{named}/*.md"}, "teacher.load_parameters_path": teacher}
    spec.write_text(yaml.safe_dump(spec_data(**edits)))
    result = runner.invoke(app, ["validate", "--check-paths", str(spec), "--output", "json"])
    assert result.exit_code == ExitCode.INVALID_SPEC, result.output
    (problem,) = json.loads(result.stdout)
    assert problem["code"] == "data_path_not_found" and "names no file" in problem["message"]


def test_the_hint_names_what_a_model_block_can_set_and_what_it_cannot(tmp_path):
    # "choose the registry model (and overrides)" for tied embeddings: no override exists (unknown_key).
    (problem,) = check_paths(spec_with(hf_folder(tmp_path / "deeper", "tiny-4l", num_layers=6)), read_text)
    assert problem.hint.startswith("set teacher.num_layers: 6 (the checkpoint's"), problem.hint
    # A checkpoint whose constants no registry model has (Meta-Llama-3-8B: Llama 3.1's shape, no RoPE scaling; a
    # SmolLM-style Llama: another RoPE base, tied): refused as "distillctl cannot build this model", though the
    # trainer computes it exactly. The hint now says what to write, and the block that writes it passes.
    tied = tmp_path / "tied"
    hf_folder(tied, "tiny-4l")
    config = json.loads((tied / CONFIG).read_text())
    rope = {**config.get("rope_parameters", {}), "rope_theta": 100000.0}
    (tied / CONFIG).write_text(json.dumps({**config, "tie_word_embeddings": True, "rope_parameters": rope}))
    (problem,) = check_paths(spec_with(str(tied)), read_text)
    assert "tie_embeddings: expected false, found true" in problem.message
    assert problem.hint.startswith(
        "set teacher.tie_embeddings: true, teacher.rope_theta: 100000.0 (the checkpoint's"
    ), problem.hint
    edits = {"teacher.load_parameters_path": str(tied), "teacher.tie_embeddings": True, "teacher.rope_theta": 1e5}
    spec, problems = validate_data(spec_data(**edits))
    assert spec is not None and check_paths(spec, read_text) == [], problems
    hf_folder(tmp_path / "llama30", "llama3.1-8b", weights=False)
    config = json.loads((tmp_path / "llama30" / CONFIG).read_text())
    del config["rope_scaling"]
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    (tmp_path / "llama30" / CONFIG).write_text(json.dumps(config))
    from distillspec.hf_config import mismatch_hint, shape_from_config

    found = shape_from_config(config)
    hint = mismatch_hint("teacher", found, ModelSpec(model="llama3.1-8b").shape())
    assert hint.startswith("set teacher.rope_scaling: none (the checkpoint's"), hint
    assert ModelSpec(model="llama3.1-8b", rope_scaling="none").shape() == found
    # What a block cannot set: another family's math (Qwen 3's qk-norm under a Llama model).
    qwen = tmp_path / "qwen"
    hf_folder(qwen, "tiny-4l")
    config = json.loads((qwen / CONFIG).read_text())
    (qwen / CONFIG).write_text(json.dumps({**config, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}))
    (problem,) = check_paths(spec_with(str(qwen)), read_text)
    assert "cannot be set in a model block" in problem.hint and "family" in problem.hint, problem.hint


def test_a_path_to_a_file_of_the_folder_names_the_folder(tmp_path):
    folder = hf_folder(tmp_path / "t", "tiny-4l")
    for name in (CONFIG, SINGLE):  # it said "no config.json" at config.json
        (problem,) = check_paths(spec_with(f"{folder}/{name}"), read_text)
        assert problem.code == "checkpoint_not_found" and "names a file of a checkpoint folder" in problem.message
        assert problem.hint == f"point load_parameters_path at the folder, {folder}"
        assert check_paths(spec_with(folder), read_text) == []


def test_two_checkpoints_of_different_vocabularies_get_one_fix_that_fits_both(tmp_path):
    """Gemma 3 4B (262208 rows) → 1B (262144): the hint set both blocks to the teacher's vocabulary, and then the
    student's checkpoint disagreed, its hint setting both back: no spec validated."""
    teacher = hf_folder(tmp_path / "t", "tiny-4l", weights=False, vocab_size=320)
    student = hf_folder(tmp_path / "s", "tiny-2l", weights=False)
    spec, problems = validate_data(
        spec_data(**{"teacher.load_parameters_path": teacher, "student.load_parameters_path": student})
    )
    assert spec is not None, problems
    (problem,) = check_paths(spec, read_text)
    assert problem.code == "checkpoint_mismatch" and problem.loc == ("teacher", "load_parameters_path")
    said = problem.hint
    assert "vocabularies differ (teacher 320 rows, student 256)" in said, said
    assert "model.resize_token_embeddings(256)" in said and "keep vocab_size 256 in both blocks" in said, said
    assert "read the student's tokenizer (data.tokenizer: its folder)" in said
    # another field differs too: its fix, without the vocabulary's (it said "set teacher.vocab_size: 320 ...
    # student.vocab_size too" after "keep vocab_size 256")
    deeper = hf_folder(tmp_path / "t6", "tiny-4l", weights=False, vocab_size=320, num_layers=6)
    spec, _ = validate_data(
        spec_data(**{"teacher.load_parameters_path": deeper, "student.load_parameters_path": student})
    )
    (problem,) = check_paths(spec, read_text)
    assert problem.hint.endswith(
        "; for the other fields: set teacher.num_layers: 6 (the checkpoint's; or choose a registry model that has them)"
    ), problem.hint
    assert "vocab_size: 320" not in problem.hint
    # one checkpoint alone: its vocabulary, in both blocks, is still the fix
    spec, _ = validate_data(spec_data(**{"teacher.load_parameters_path": teacher}))
    (problem,) = check_paths(spec, read_text)
    assert problem.hint.startswith("set teacher.vocab_size: 320") and "student.vocab_size too" in problem.hint


def test_layer_types_of_another_length_or_kind_are_said_in_a_line(tmp_path):
    # the two whole lists were printed (~124 entries for a 62-layer model)
    folder = tmp_path / "teacher"
    folder.mkdir()
    config = config_of(ModelSpec(model="tiny-4l").shape())
    for types, code, said in (
        (["full_attention"] * 3, "checkpoint_unreadable", "layer_types has 3 entries, num_hidden_layers is 4"),
        (
            ["full_attention", "sliding_attention"] * 2,
            "checkpoint_unsupported",
            "differ from the llama pattern at 2 layer(s): layer 1 is 'sliding_attention' (the pattern's "
            "'full_attention'), layer 3",
        ),
    ):
        (folder / CONFIG).write_text(json.dumps({**config, "layer_types": types}))
        (problem,) = check_paths(spec_with(str(folder)), read_text)
        assert problem.code == code and said in problem.message, problem.message


def test_gemma3_rope_settings_are_named_where_the_file_has_them():
    from distillspec.hf_config import ConfigError, beyond_max_position, shape_from_config

    base = config_of(ModelSpec(model="gemma3-1b").shape())
    for rope, said in (
        ("x", "rope_parameters must be a JSON object or null, got 'x'"),  # an AttributeError (exit 70)
        (
            {"full_attention": {"rope_type": "default", "rope_theta": 1e6}, "sliding_attention": {"rope_theta": 0}},
            "rope_parameters.sliding_attention.rope_theta must be a positive number, got 0",  # not rope_local_base_freq
        ),
        ({"full_attention": {"rope_type": "linear", "factor": None}}, "rope_parameters.full_attention.factor must"),
    ):
        with pytest.raises(ConfigError) as e:
            shape_from_config({**base, "rope_parameters": rope})
        assert said in e.value.message, e.value.message
    # the trainer's start-up warning reads the same file before the model: an internal error there (exit 70)
    assert beyond_max_position({"model_type": "gemma3"}, CONFIG, 1 << 20, "teacher") is None


def test_a_pruned_gemma2_says_its_depth_in_the_configs_layers_too():
    # "found 12" was attributed to a config.json that says num_hidden_layers 24
    from distillspec.hf_config import shape_mismatches

    pruned = ModelSpec(model="gemma2-2b", num_layers=12).shape()
    said = shape_mismatches(pruned, ModelSpec(model="gemma2-2b").shape())
    assert said == ["num_layers: expected 13, found 12 (blocks of 2 layers: 24 layers)"]


def test_published_image_text_gemma3_configs_are_read_with_transformers_defaults():
    """Gemma 3 4B, 12B and 27B as published: transformers writes their text_config as its difference from
    Gemma3TextConfig's defaults (no vocab_size in any, no heads in the 4B's), and all three were refused as
    unreadable ("num_attention_heads is missing"). Read now, they differ from the registry's models in the
    vocabulary alone (image-text Gemma 3 has 262208 rows)."""
    from distillspec.hf_config import shape_from_config, shape_mismatches

    scaled = {"rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}
    text_configs = {  # the published config.json's text_config, verbatim
        "gemma3-4b": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34, **scaled},
        "gemma3-12b": {
            "hidden_size": 3840,
            "intermediate_size": 15360,
            "num_attention_heads": 16,
            "num_hidden_layers": 48,
            "num_key_value_heads": 8,
            **scaled,
        },
        "gemma3-27b": {
            "head_dim": 128,
            "hidden_size": 5376,
            "intermediate_size": 21504,
            "num_attention_heads": 32,
            "num_hidden_layers": 62,
            "num_key_value_heads": 16,
            "query_pre_attn_scalar": 168,
            **scaled,
        },
    }
    for model, text in text_configs.items():
        config = {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "text_config": {**text, "model_type": "gemma3_text"},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152},
        }
        found = shape_from_config(config)
        assert shape_mismatches(found, ModelSpec(model=model).shape()) == [
            "vocab_size: expected 262144, found 262208"
        ], model
        assert ModelSpec(model=model, vocab_size=262208).shape() == found, model


def test_a_home_path_and_a_hub_id_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Hub id is a relative path with nothing here
    (problem,) = check_paths(spec_with("~/models/llama"), read_text)
    assert problem.code == "checkpoint_not_found" and "a leading ~ is not expanded" in problem.message
    assert "write the full path" in problem.hint
    (problem,) = check_paths(spec_with("meta-llama/Llama-3.2-1B"), read_text)
    assert "huggingface-cli download meta-llama/Llama-3.2-1B --local-dir DIR" in problem.hint, problem.hint


def test_a_run_checkpoint_in_the_other_layer_layout_passes(tmp_path):
    # The trainer converts a run's checkpoint saved with the other scan_layers while loading it
    # (test_trainer_e2e: test_a_checkpoint_in_the_other_layer_layout_is_converted_while_loading).
    run = tmp_path / "runs" / "teacher"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"student": {"model": "tiny-4l"}}))  # scan_layers: true by default
    assert check_paths(spec_with(str(run / "checkpoints")), read_text) == []
    edits = {"teacher.load_parameters_path": str(run / "checkpoints"), "teacher.scan_layers": False}
    spec, found = validate_data(spec_data(**edits, **{"loss.beta": 0.0, "loss.layer_indices": None}))
    assert spec is not None, found
    assert check_paths(spec, read_text) == []


@pytest.mark.parametrize(
    ("files", "said"),
    [
        (["model.safetensors"], None),
        (
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"],
            None,
        ),
        (["pytorch_model.bin"], "has config.json and PyTorch weights (.bin), which are not read"),
        (["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"], "2 safetensors shard(s) but no"),
        ([], "has config.json but no weights"),
    ],
)
def test_a_hugging_face_folder_without_weights_the_trainer_reads_is_named(tmp_path, files, said):
    # Each passed; the trainer then stopped on "checkpoint not found … no finished step directory", with no hint.
    from orchestrator.outputs import count_files

    folder = hf_folder(tmp_path / "teacher", "tiny-4l", weights=False)
    for name in files:
        (tmp_path / "teacher" / name).write_bytes(b"\0")
    problems = check_paths(spec_with(folder), read_text, None, count_files)
    if said is None:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.code == "checkpoint_weights_missing" and said in problem.message, problem.message
        assert problem.loc == ("teacher", "load_parameters_path") and problem.hint


def test_a_tokenizer_larger_than_the_models_vocabulary_is_named_before_launch(tmp_path):
    # --check-paths passed a 408-token tokenizer for models of vocab 320; the trainer stopped on it at start.
    folder = hf_folder(tmp_path / "teacher", "tiny-4l")
    vocab = {f"t{i}": i for i in range(250)}
    added = [{"id": 250 + i, "content": f"<x{i}>"} for i in range(50)]  # 300 ids > 256
    (tmp_path / "teacher" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": added}))
    (tmp_path / "corpus.txt").write_text("some text")
    data = {"teacher.load_parameters_path": folder, "data": {"source": "text", "path": str(tmp_path / "corpus.txt")}}
    spec, problems = validate_data(spec_data(**data))
    assert spec is not None, problems
    (problem,) = check_paths(spec, read_text)
    assert problem.code == "tokenizer_over_vocab" and problem.loc == ("teacher", "load_parameters_path")
    assert "has 300 token ids; the models' vocab_size is 256" in problem.message
    (tmp_path / "teacher" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": []}))
    assert check_paths(spec, read_text) == []


def test_a_named_tokenizer_that_is_not_there_or_not_json_is_named_before_launch(tmp_path):
    # Both printed "valid spec"; the trainer then stopped at start ("cannot load tokenizer", "cannot parse").
    (tmp_path / "corpus.txt").write_text("some text")
    corpus = {"source": "text", "path": str(tmp_path / "corpus.txt")}
    folder = hf_folder(tmp_path / "teacher", "tiny-4l")
    teacher = {"teacher.load_parameters_path": folder}
    spec, problems = validate_data(spec_data(**teacher, data={**corpus, "tokenizer": str(tmp_path / "nope.json")}))
    assert spec is not None, problems
    (problem,) = check_paths(spec, read_text)
    assert problem.code == "tokenizer_not_found" and problem.loc == ("data", "tokenizer")
    assert f"there is no {tmp_path / 'nope.json'}" in problem.message and "`byte`" in problem.hint
    (tmp_path / "cut.json").write_text('{"model": {"vo')
    spec, _ = validate_data(spec_data(**teacher, data={**corpus, "tokenizer": str(tmp_path / "cut.json")}))
    (problem,) = check_paths(spec, read_text)
    assert problem.code == "tokenizer_unreadable" and "is not a tokenizer.json: it is not JSON" in problem.message
    # A model folder without one is no problem (the next candidate, or bytes); one that is not JSON is.
    spec, _ = validate_data(spec_data(**teacher, data=corpus))
    assert check_paths(spec, read_text) == []
    (tmp_path / "teacher" / "tokenizer.json").write_text("<html>")
    (problem,) = check_paths(spec, read_text)
    assert problem.code == "tokenizer_unreadable" and problem.loc == ("teacher", "load_parameters_path")
    # A named one that is not JSON beside a folder's own: unreadable, not also "tokenises differently (its one of
    # them is not JSON differ)"
    (tmp_path / "teacher" / "tokenizer.json").write_text('{"model": {"type": "WordLevel", "vocab": {"a": 0}}}')
    spec, _ = validate_data(spec_data(**teacher, data={**corpus, "tokenizer": str(tmp_path / "cut.json")}))
    assert [p.code for p in check_paths(spec, read_text)] == ["tokenizer_unreadable"]


def test_an_offline_spec_is_checked_against_its_logit_cache_before_launch(tmp_path):
    # Each printed "valid spec" and failed only in `train`: no cache there, one made for another k, data seed or
    # length, or too short for the steps.
    from trainer.logit_cache import manifest_for

    teacher = hf_folder(tmp_path / "teacher", "tiny-4l")
    base = {"teacher.load_parameters_path": teacher, "top_k": 8, "loss.beta": 0.0, "loss.layer_indices": None}
    writer, _ = validate_data(spec_data(mode="teacher_logits", **base))
    cache = tmp_path / "logits"
    cache.mkdir()
    manifest = manifest_for(writer, rows=2, processes=1, micro_batches=10)
    (cache / "manifest.json").write_text(json.dumps(manifest))

    def problems(**changes):
        spec, found = validate_data(spec_data(**{**base, "offline_data_dir": str(cache), **changes}))
        assert spec is not None, found
        return [(p.code, p.dotted_loc, p.message) for p in check_paths(spec, read_text)]

    assert problems() == []
    for changes, said in [
        ({"top_k": 4}, "another top_k than this spec's (top_k: cache 8, spec 4)"),
        ({"data.seed": 3}, "data.seed: cache 0, spec 3"),
        ({"batch.max_target_length": 32}, "max_target_length: cache 16, spec 32"),
        ({"teacher.load_parameters_path": hf_folder(tmp_path / "other", "tiny-4l")}, "teacher.block.load_param"),
        ({"steps": 11}, "holds 10 micro-batches; this run needs 11"),
    ]:
        [(code, loc, message)] = problems(**changes)
        assert (code, loc) == ("logit_cache_mismatch", "offline_data_dir") and said in message, message
        assert str(cache / "manifest.json") in message
    [(code, _, message)] = problems(offline_data_dir=str(tmp_path / "nothing"))
    assert code == "logit_cache_missing" and "holds no logit cache" in message
    [(code, _, message)] = problems(offline_data_dir=str(tmp_path))  # the run folder above `logits`
    assert code == "logit_cache_missing" and "it is the run folder of a teacher_logits run" in message
    # A damaged manifest whose micro-batch count is no number: said, not an internal error (exit 70).
    (cache / "manifest.json").write_text(json.dumps({**manifest, "micro_batches": "lots"}))
    [(code, _, message)] = problems()
    assert "says it holds 'lots' micro-batches, not a number" in message, message
    (cache / "manifest.json").write_text(json.dumps(manifest))
    # The teacher's checkpoint gone (the cache is what offline distillation keeps): the student loads no teacher,
    # and this failed checkpoint_not_found for a run that trains.
    import shutil

    shutil.rmtree(teacher)
    assert problems() == []
    (cache / "manifest.json").write_text("{}")
    [(code, _, _)] = problems()
    assert code == "logit_cache_unreadable"


def test_an_offline_specs_tokenizer_is_compared_with_its_caches_by_content_before_launch(tmp_path):
    # --check-paths passed a student that tokenises with another tokenizer than its cache's teacher did; the
    # trainer stopped on it at start (it compares the tokenizer file's bytes).
    from trainer.logit_cache import manifest_for

    teacher = hf_folder(tmp_path / "teacher", "tiny-4l")
    tokenizer = {"model": {"vocab": {f"t{i}": i for i in range(200)}}, "added_tokens": []}
    (tmp_path / "teacher" / "tokenizer.json").write_text(json.dumps(tokenizer))
    (tmp_path / "corpus.txt").write_text("some text")
    corpus = {"source": "text", "path": str(tmp_path / "corpus.txt")}
    base = {"teacher.load_parameters_path": teacher, "top_k": 8, "loss.beta": 0.0, "loss.layer_indices": None}
    # The writer as the trainer resolves it: data.tokenizer the teacher folder's tokenizer.json.
    resolved = {**corpus, "tokenizer": str(tmp_path / "teacher" / "tokenizer.json")}
    writer, _ = validate_data(spec_data(mode="teacher_logits", **base, data=resolved))
    (tmp_path / "logits").mkdir()
    manifest = manifest_for(writer, rows=2, processes=1, micro_batches=10)
    (tmp_path / "logits" / "manifest.json").write_text(json.dumps(manifest))

    def problems(data):
        spec, found = validate_data(spec_data(**base, offline_data_dir=str(tmp_path / "logits"), data=data))
        assert spec is not None, found
        return [(p.code, p.message) for p in check_paths(spec, read_text, digest=file_sha256)]

    assert problems(corpus) == []  # left to the folders: the teacher's, as when the cache was written
    (tmp_path / "copy.json").write_text(json.dumps(tokenizer))
    assert problems({**corpus, "tokenizer": str(tmp_path / "copy.json")}) == []  # a copy is the same tokenizer
    (tmp_path / "edited.json").write_text(json.dumps({**tokenizer, "added_tokens": [{"id": 200, "content": "<x>"}]}))
    for data in ({**corpus, "tokenizer": str(tmp_path / "edited.json")}, {**corpus, "tokenizer": "byte"}):
        found = problems(data)
        [message] = [message for code, message in found if code == "logit_cache_mismatch"]
        assert "was made with another tokenizer than this spec's" in message
    # A named tokenizer that is not there is said once, by the tokenizer check, not read as another tokenizer.
    [(code, _)] = problems({**corpus, "tokenizer": str(tmp_path / "nope.json")})
    assert code == "tokenizer_not_found"


def test_a_column_the_data_files_do_not_have_is_an_error_before_launch(tmp_path):
    # The trainer stopped at start ("has no column 'text'") after the pods were scheduled; --check-paths only
    # counted the files.
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from array_record.python.array_record_module import ArrayRecordWriter

    from orchestrator.outputs import count_files, read_columns

    teacher = hf_folder(tmp_path / "teacher", "tiny-4l")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text('\ufeff{"body": "x", "id": 1}\n')
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"prompt": ["q"], "answer": ["a"]}), tmp_path / "p" / "a.parquet")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})})
    splits.save_to_disk(str(tmp_path / "hf"))
    splits["train"].save_to_disk(str(tmp_path / "one"))

    def problems_for(source: str, path: str, **columns):
        edits = {"data": {"source": source, "path": path, **columns}, "teacher.load_parameters_path": teacher}
        spec, found = validate_data(spec_data(**edits))
        assert spec is not None, found
        return [(p.code, p.loc, p.message) for p in check_paths(spec, read_text, None, count_files, read_columns)]

    ((code, loc, message),) = problems_for("jsonl", str(tmp_path / "j"))
    assert (code, loc) == ("column_missing", ("data", "text_column")) and "(it has body, id)" in message
    assert problems_for("jsonl", str(tmp_path / "j"), text_column="body") == []
    pair = {"prompt_column": "prompt", "completion_column": "completion"}
    ((code, loc, message),) = problems_for("parquet", str(tmp_path / "p"), **pair)
    assert (code, loc) == ("column_missing", ("data", "completion_column")) and "prompt, answer" in message
    assert problems_for("parquet", str(tmp_path / "p"), **{**pair, "completion_column": "answer"}) == []
    (tmp_path / "ar").mkdir()
    writer = ArrayRecordWriter(str(tmp_path / "ar" / "a.array_record"), "group_size:1")
    writer.write(json.dumps({"content": "x", "id": 1}).encode())
    writer.close()
    ((code, loc, message),) = problems_for("arrayrecord", str(tmp_path / "ar" / "*.array_record"))
    assert (code, loc) == ("column_missing", ("data", "text_column")) and "(it has content, id)" in message
    assert problems_for("arrayrecord", str(tmp_path / "ar" / "*.array_record"), text_column="content") == []
    ((code, loc, message),) = problems_for("hf_disk", str(tmp_path / "hf"))
    assert (code, loc) == ("dataset_has_splits", ("data", "path")) and "holds splits (train)" in message
    assert problems_for("hf_disk", str(tmp_path / "one")) == []
    assert problems_for("hf_disk", str(tmp_path / "one"), text_column="body")[0][0] == "column_missing"
    # Files the trainer cannot read in that format (it stopped at start; --check-paths passed), and a FIFO, which
    # hung the check.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.parquet").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "bin" / "b.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')  # Latin-1
    (tmp_path / "bin" / "i.jsonl").write_bytes(b"\xff\xfe{not utf-8}\n")
    (tmp_path / "bin" / "c.jsonl").write_text("not json at all\n")
    os.mkfifo(tmp_path / "bin" / "d.jsonl")
    (tmp_path / "bin" / "e.jsonl").write_text('[{"text": "a b"}, {"text": "c"}]\n')  # a .json export named .jsonl
    (tmp_path / "bin" / "f.jsonl").write_text('[\n  {"text": "a b"}\n]\n')
    (tmp_path / "bin" / "g.jsonl").write_text('"just a string"\n')
    import gzip

    (tmp_path / "bin" / "h.jsonl").write_bytes(gzip.compress(b'{"text": "a"}\n'))
    (tmp_path / "notsaved").mkdir()
    (tmp_path / "notsaved" / "x.txt").write_text("x")
    (tmp_path / "bin" / "latin1.txt").write_bytes("Un café très léger, à peine sucré.\n".encode("latin-1") * 50)
    (tmp_path / "bin" / "saved.arrow").write_bytes(b"not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.jsonl").write_bytes(b"")
    (tmp_path / "empty" / "e.txt").write_bytes(b"")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "b.jsonl").write_text("\n\n  \n")
    (tmp_path / "empties").mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / "empties" / name).write_bytes(b"")
    # the neighbours of those: blank files beside an empty one, and Latin-1 text in a later file than the first
    (tmp_path / "blanks").mkdir()
    (tmp_path / "blanks" / "a.jsonl").write_bytes(b"")
    (tmp_path / "blanks" / "b.jsonl").write_text("\r\n\n")
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a.txt").write_text("good text\n")
    (tmp_path / "latin" / "b.txt").write_bytes((tmp_path / "bin" / "latin1.txt").read_bytes())
    for source, path, said in (
        ("parquet", "bin/a.parquet", "cannot be read as Parquet"),
        ("jsonl", "bin/b.jsonl", "cannot be read as JSON Lines (UnicodeDecodeError"),
        ("jsonl", "bin/c.jsonl", "cannot be read as JSON Lines (JSONDecodeError"),
        ("jsonl", "bin/d.jsonl", "is not a regular file"),
        ("jsonl", "bin/e.jsonl", "is a JSON array, not JSON Lines"),
        ("jsonl", "bin/f.jsonl", "starts a JSON array, not JSON Lines"),
        ("jsonl", "bin/g.jsonl", "a line that is not a JSON object"),
        ("jsonl", "bin/h.jsonl", "is gzip-compressed, not UTF-8 text (decompress it (gunzip"),
        ("jsonl", "bin/i.jsonl", "is UTF-16 text (it starts with a byte-order mark)"),
        ("text", "bin/h.jsonl", "is gzip-compressed, not UTF-8 text"),  # source text: the trainer's same refusal
        ("hf_disk", "notsaved", "is not a dataset saved by save_to_disk"),
        ("hf_disk", "bin/saved.arrow", "is a file, not a folder that datasets' save_to_disk wrote"),
        ("jsonl", "empty/e.jsonl", "is empty: the only data file holds no document"),
        ("text", "empty/e.txt", "is empty: the only data file holds no document"),
        ("jsonl", "empties", "is empty, as are the other 1 data file(s)"),
        ("jsonl", "blank/b.jsonl", "holds only blank lines"),
        ("text", "bin/latin1.txt", "is not UTF-8 text: 250 of its 1750 bytes (14.29%, more than 0.1%)"),
        ("jsonl", "blanks", "holds only blank lines, as do the other 1 data file(s): no document to train on"),
        ("text", "latin", "latin/b.txt is not UTF-8 text: 250 of its 1750 bytes"),
    ):
        ((code, loc, message),) = problems_for(source, str(tmp_path / path))
        assert (code, loc) == ("data_unreadable", ("data", "path")) and said in message, message


def test_text_files_of_whitespace_alone_are_warned_of(tmp_path):
    # They passed, and the trainer trained on spaces and line breaks (a tool that writes "\n" for nothing).
    from orchestrator.outputs import count_files, read_columns

    teacher = hf_folder(tmp_path / "teacher", "tiny-4l")
    (tmp_path / "one.txt").write_text("  \n\n\t \n")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.txt").write_text("\n")
    (tmp_path / "two" / "b.txt").write_bytes(b"")

    def problems_for(path: str):
        edits = {"data": {"source": "text", "path": path}, "teacher.load_parameters_path": teacher}
        spec, found = validate_data(spec_data(**edits))
        assert spec is not None, found
        return [(p.code, p.severity, p.message) for p in check_paths(spec, read_text, None, count_files, read_columns)]

    ((code, severity, message),) = problems_for(str(tmp_path / "one.txt"))
    assert (code, severity) == ("data_blank", "warning") and "one.txt holds whitespace alone" in message, message
    ((code, severity, message),) = problems_for(str(tmp_path / "two"))
    assert code == "data_blank" and "and the other 1 data file(s) hold whitespace alone" in message, message
    (tmp_path / "two" / "b.txt").write_text("\none word\n")  # one file with text: nothing to say
    assert problems_for(str(tmp_path / "two")) == []


def test_text_the_trainer_reads_as_utf8_passes_the_encoding_check(tmp_path):
    # What the trainer accepts passes: a stray byte in a large file (read as U+FFFD, warned of), and a file longer
    # than the MiB read whose character is cut at that MiB's end.
    from orchestrator.outputs import TEXT_CHECK_BYTES, read_columns

    stray = tmp_path / "stray.txt"
    stray.write_bytes(b"plain words " * 10_000 + b"\xe9 and more\n")
    long = tmp_path / "long.txt"
    long.write_bytes(b"x" * (TEXT_CHECK_BYTES - 1) + "é and the rest\n".encode())  # é's 2 bytes straddle the MiB
    for path in (stray, long):
        assert read_columns(str(path), "text") is None, path


def test_an_index_naming_a_shard_that_is_not_there_is_named_before_launch(tmp_path):
    # It passed; the trainer found the shard missing after start-up (a download cut short).
    from orchestrator.outputs import count_files

    folder = hf_folder(tmp_path / "teacher", "tiny-4l", weights=False)
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = {"weight_map": {f"t{i}": shard for i, shard in enumerate(shards)}}
    (tmp_path / "teacher" / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "teacher" / shards[0]).write_bytes(b"\0")
    (problem,) = check_paths(spec_with(folder), read_text, None, count_files)
    assert problem.code == "checkpoint_weights_missing", problem
    assert "names 2 of its 3 shard(s) that are not there: model-00002-of-00003.safetensors" in problem.message
    for shard in shards[1:]:
        (tmp_path / "teacher" / shard).write_bytes(b"\0")
    assert check_paths(spec_with(folder), read_text, None, count_files) == []


def test_a_folder_of_json_lines_under_the_text_source_is_warned_of(tmp_path):
    # validate warned of a path spelled .jsonl; a folder (or glob) of them passed, and trained on their syntax.
    from orchestrator.outputs import count_files, read_columns

    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "some words", "id": 1}) + "\n")
    teacher = hf_folder(tmp_path / "teacher", "tiny-4l")
    spec, problems = validate_data(
        spec_data(**{"teacher.load_parameters_path": teacher, "data": {"source": "text", "path": str(folder)}})
    )
    assert spec is not None, problems
    (problem,) = [
        p for p in check_paths(spec, read_text, None, count_files, read_columns) if p.code == "text_source_of_records"
    ]
    assert problem.severity == "warning" and "holds JSON Lines records (columns text, id)" in problem.message
    (folder / "a.jsonl").write_text("plain prose, not a record\n")
    assert not [
        p for p in check_paths(spec, read_text, None, count_files, read_columns) if p.code == "text_source_of_records"
    ]


def _validate_teacher(tmp_path, folder) -> tuple[int, str]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_data(**{"teacher.load_parameters_path": str(folder)})))
    result = runner.invoke(app, ["validate", "--check-paths", str(spec)])
    return result.exit_code, result.output


def test_check_paths_reads_the_weights_headers_where_config_json_fits(tmp_path):
    """A folder whose config.json is the spec's model but whose weights are not (a tensor of another shape, one
    absent, one the model lacks) stopped the trainer minutes into a slice: --check-paths says it from the
    safetensors headers, the tensors' values unread."""
    shape = ModelSpec(model="tiny-4l").shape()
    folder = tmp_path / "teacher"
    hf_folder(folder, "tiny-4l", weights=False)
    save_file(
        zeros_of(
            shape, **{"model.layers.1.mlp.up_proj.weight": (7, 7), "lm_head.weight": None, "model.extra.weight": (2,)}
        ),
        folder / SINGLE,
    )
    code, output = _validate_teacher(tmp_path, folder)
    assert code == ExitCode.INVALID_SPEC and "checkpoint_tensor_mismatch" in output, output
    flat = " ".join(output.split())
    assert "model.layers.1.mlp.up_proj.weight in model.safetensors: expected" in flat and "found (7, 7)" in flat
    assert "lm_head.weight: expected" in flat and "missing" in flat
    assert "model.extra.weight: not part of this model" in flat


def test_check_paths_refuses_weights_of_a_dtype_the_trainer_does_not_load(tmp_path):
    folder = tmp_path / "teacher"
    hf_folder(folder, "tiny-4l", weights=False)
    save_file(zeros_of(ModelSpec(model="tiny-4l").shape(), np.int8), folder / SINGLE)
    code, output = _validate_teacher(tmp_path, folder)
    flat = " ".join(output.split())
    # once, not per tensor (a 1 KB list of the same clause was the run's failure reason)
    assert code == ExitCode.INVALID_SPEC and "tensor(s) of dtype I8 (e.g. " in flat, output
    assert "the trainer loads float32, bfloat16 or float16 weights" in flat and flat.count("I8") == 1
    assert "save the weights in float32, bfloat16 or float16" in flat


def test_check_paths_reads_each_shard_an_index_names(tmp_path):
    """A sharded save: each shard's header is read, and a tensor the index assigns to a shard that lacks it is
    named (the trainer's "has no tensor" at start-up)."""
    shape = ModelSpec(model="tiny-4l").shape()
    folder = tmp_path / "teacher"
    hf_folder(folder, "tiny-4l", weights=False)
    tensors = zeros_of(shape)
    names = sorted(tensors)
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for shard, part in halves.items():
        save_file({n: tensors[n] for n in part}, folder / shard)
    weight_map = {n: shard for shard, part in halves.items() for n in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert _validate_teacher(tmp_path, folder)[0] == ExitCode.OK
    moved = halves["a.safetensors"][0]
    weight_map[moved] = "b.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    code, output = _validate_teacher(tmp_path, folder)
    flat = " ".join(output.split())
    assert code == ExitCode.INVALID_SPEC and f"b.safetensors has no tensor {moved}" in flat, output


# --- a sweep's paths: plan and sweep --check-paths ------------------------------------------------------------


def _sweep_over_teachers(tmp_path, teachers: list[str]) -> str:
    """A local sweep whose axis is the teacher folder, with a prerequisite whose output one override reads."""
    spec = spec_data(**{"teacher.load_parameters_path": teachers[0]})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump({**spec_data(), "mode": "pretrain"}))
    sweep = {
        "name": "paths",
        "spec": "base.yaml",
        "prerequisites": {"warm": {"spec": "pre.yaml"}},
        "overrides": {"student.load_parameters_path": "${prerequisites.warm.output}/checkpoints"},
        "axes": {"teacher.load_parameters_path": teachers},
        "target": {"kind": "local", "output_base": str(tmp_path / "runs")},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return str(path)


def test_plan_check_paths_reads_every_points_paths_but_those_a_prerequisite_writes(tmp_path):
    """A sweep file cannot go to `validate`: `plan --check-paths` reads each run's paths as it reads a spec's, names
    the points a problem concerns and the line that sets the path, and leaves out a path a prerequisite writes (it
    is there only once that one has run)."""
    good = hf_folder(tmp_path / "good", "tiny-4l")
    wrong = hf_folder(tmp_path / "wrong", "tiny-4l", num_layers=6)
    path = _sweep_over_teachers(tmp_path, [good, wrong, str(tmp_path / "absent")])
    assert runner.invoke(app, ["plan", path]).exit_code == ExitCode.OK  # not read without the option
    result = runner.invoke(app, ["plan", path, "--check-paths"])
    assert result.exit_code == ExitCode.INVALID_SPEC, result.output
    flat = " ".join(result.output.split())
    assert (
        "error[checkpoint_mismatch] axes.teacher.load_parameters_path: point 1 (teacher.load_parameters_path=" in flat
    )
    assert "num_layers: expected 4, found 6" in flat
    assert "error[checkpoint_not_found]" in flat and "point 2" in flat
    assert "student.load_parameters_path" not in flat and "point 0" not in flat  # the prerequisite's, and the good one
    assert "nothing was launched" in flat


def test_sweep_check_paths_refuses_before_anything_is_created(tmp_path):
    good = hf_folder(tmp_path / "good", "tiny-4l")
    path = _sweep_over_teachers(tmp_path, [good, str(tmp_path / "absent")])
    result = runner.invoke(app, ["sweep", path, "--check-paths"])
    assert result.exit_code == ExitCode.INVALID_SPEC and "checkpoint_not_found" in result.output, result.output
    assert not (tmp_path / "runs").exists()  # no supervisor, no run folder
    result = runner.invoke(app, ["sweep", path, "--check-paths", "--dry-run=client"])
    assert result.exit_code == ExitCode.INVALID_SPEC and "checkpoint_not_found" in result.output
    ok = _sweep_over_teachers(tmp_path, [good])
    result = runner.invoke(app, ["sweep", ok, "--check-paths", "--dry-run=client"])
    assert result.exit_code == ExitCode.OK and "would create" in result.output, result.output


def test_a_pretrain_specs_unused_teacher_path_is_not_checked(tmp_path):
    """mode: pretrain reads no teacher (validate warns teacher_unused, "nor its path"); --check-paths called its
    missing folder an error."""
    spec, _ = validate_data(spec_data(**{"mode": "pretrain", "teacher.load_parameters_path": str(tmp_path / "no")}))
    assert check_paths(spec, read_text) == []


def test_a_cluster_sweeps_local_paths_are_the_pods_and_not_read_here(tmp_path):
    """On a cluster target a local path is read in the pods (a volume): this machine's disk says nothing of it."""
    path = _sweep_over_teachers(tmp_path, [str(tmp_path / "absent")])
    on_cluster = ["--tpu-type", "v6e-8", "--image", "registry.example/trainer@sha256:" + "0" * 64]
    assert runner.invoke(app, ["plan", path, "--check-paths"]).exit_code == ExitCode.INVALID_SPEC
    result = runner.invoke(app, ["plan", path, "--check-paths", *on_cluster])
    assert result.exit_code == ExitCode.OK and "checkpoint_not_found" not in result.output, result.output
    said = " ".join(result.stderr.split())  # not in silence: the option reads as if every path were checked
    assert "local path(s) of this cluster target are read in the pods" in said and str(tmp_path / "absent") in said


def test_a_maxtext_files_layer_fix_says_override_model_config_where_maxtexts_model_file_sets_the_key(tmp_path):
    # Applied, `student_overrides.base_num_decoder_layers: 30` led to maxtext_override_refused: a second round.
    from distillspec.specfile import read_spec_text

    student = hf_folder(tmp_path / "s", "llama3.1-8b", weights=False, num_layers=30)
    teacher = hf_folder(tmp_path / "t", "llama3.1-8b", weights=False)
    text = (
        f"base_config: base.yml\nstudent_overrides:\n  model_name: llama3.1-8b\n  load_parameters_path: {student}\n"
        f"teacher_overrides:\n  model_name: llama3.1-8b\n  load_parameters_path: {teacher}\n"
    )
    report = read_spec_text(text, file="d.yml")
    (problem,) = [report.locate(p) for p in check_paths(report.spec, read_text) if p.code == "checkpoint_mismatch"]
    assert problem.hint.startswith("set student_overrides.base_num_decoder_layers: 30"), problem.hint
    # and the message names the key too (it said `num_layers: expected 32, found 30`, a field this file has not)
    assert "base_num_decoder_layers: expected 32, found 30" in problem.message, problem.message
    assert "override_model_config: true" in problem.hint
    tiny = text.replace("llama3.1-8b", "tiny-4l")  # no MaxText model file: nothing to override
    hf_folder(tmp_path / "s", "tiny-4l", weights=False, num_layers=6)
    hf_folder(tmp_path / "t", "tiny-4l", weights=False)
    report = read_spec_text(tiny, file="d.yml")
    (problem,) = [report.locate(p) for p in check_paths(report.spec, read_text) if p.code == "checkpoint_mismatch"]
    assert "override_model_config" not in problem.hint, problem.hint
