"""`distillctl validate`, `explain`, `convert` and `models` through the CLI, as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.exit_codes import ExitCode

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

BAD = """\
student:
  model: tiny-2l
teacher:
  model: tiny-4l
loss:
  alpha: {start: 0.9, end: 1.2, schedule: cosine}
  beta: {start: 0.0, end: 0.5, schedule: cosine}
  distill_alpa: 3
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _is_sweep_file(path: Path) -> bool:
    """sweeps/ also holds sweep files (a `spec:` to vary), which `distillctl plan` reads, not `validate`, and golden
    files (`*.golden.yaml`), which `distillctl regress` reads."""
    import yaml

    data = yaml.safe_load(path.read_text())
    return path.name.endswith(".golden.yaml") or (isinstance(data, dict) and "spec" in data)


def test_validate_good_examples_exit_0():
    specs = [str(p) for p in sorted((ROOT / "sweeps").glob("*.y*ml")) if not _is_sweep_file(p)]
    result = runner.invoke(app, ["validate", *specs])
    assert result.exit_code == ExitCode.OK, result.output
    assert "valid" in result.stdout


def test_validate_reports_every_problem_with_file_line_column(tmp_path):
    path = write(tmp_path, BAD)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == ExitCode.INVALID_SPEC
    codes = {line.split("error[")[1].split("]")[0] for line in result.stdout.splitlines() if "error[" in line}
    assert codes == {
        "alpha_out_of_range",
        "beta_ramp_from_zero",
        "unknown_key",
        "teacher_path_missing",
        "layer_indices_missing",
    }
    assert f"{path}:6:" in result.stdout and "error[alpha_out_of_range] loss.alpha.end" in result.stdout
    assert "error[unknown_key] loss.distill_alpa" in result.stdout
    assert "Traceback" not in result.output


def test_validate_json_output(tmp_path):
    path = write(tmp_path, BAD)
    result = runner.invoke(app, ["validate", "--output", "json", str(path)])
    assert result.exit_code == ExitCode.INVALID_SPEC
    problems = json.loads(result.stdout)
    assert {tuple(sorted(p)) for p in problems} == {
        ("code", "column", "file", "hint", "line", "loc", "message", "severity")
    }
    by_code = {p["code"]: p for p in problems}
    assert by_code["beta_ramp_from_zero"]["line"] == 7 and by_code["beta_ramp_from_zero"]["loc"] == "loss.beta.start"
    assert by_code["teacher_path_missing"]["file"] == str(path)


def test_validate_missing_file_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml")])
    assert result.exit_code == ExitCode.USAGE
    assert "file_not_found" in result.stdout


def test_validate_mixed_files_exit_4(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml"), str(write(tmp_path, BAD))])
    assert result.exit_code == ExitCode.INVALID_SPEC


def test_validate_strict_fails_on_warnings(tmp_path):
    path = write(tmp_path, "student: {model: tiny-2l}\nmode: pretrain\nloss: {temperature: {start: 2, end: 1}}\n")
    assert runner.invoke(app, ["validate", str(path)]).exit_code == ExitCode.OK
    strict = runner.invoke(app, ["validate", "--strict", str(path)])
    assert strict.exit_code == ExitCode.INVALID_SPEC
    assert "✓" not in strict.stdout and "(--strict: warnings fail)" in strict.stdout, strict.stdout  # not a green tick


def test_validate_empty_and_garbage_files(tmp_path):
    for text in ("", "[1, 2", "- a\n"):
        result = runner.invoke(app, ["validate", str(write(tmp_path, text))])
        assert result.exit_code == ExitCode.INVALID_SPEC
        assert len([line for line in result.stdout.splitlines() if "error[" in line]) == 1


def test_explain_shows_resolved_layers_and_schedules():
    result = runner.invoke(app, ["explain", str(ROOT / "sweeps" / "llama3.1-8b-pruning-recovery.yaml")])
    assert result.exit_code == ExitCode.OK, result.output
    assert "layer_indices: [3, 7, 11, 15, 19, 23, 27, 31]" in result.stdout
    assert "num_layers: 32" in result.stdout and "vocab_size: 128256" in result.stdout
    assert "│ 8.03 B " in result.stdout  # the teacher's size, in the unit it reads in
    tiny = runner.invoke(app, ["explain", str(ROOT / "sweeps" / "tiny.yaml")])
    assert "│ 156 K " in tiny.stdout and "0.000 B" not in tiny.stdout, tiny.stdout


def test_explain_json_schedule_values():
    result = runner.invoke(
        app, ["explain", "--output", "json", str(ROOT / "sweeps" / "llama3.1-8b-pruning-recovery.yaml")]
    )
    view = json.loads(result.stdout)
    alpha = [round(v["value"], 4) for v in view["schedules"]["alpha"]["values"]]
    assert alpha == [0.9, 0.8414, 0.7, 0.5586, 0.5]
    # the steps metrics.jsonl numbers (step k: update k - 1), each with the value its update used
    assert [v["step"] for v in view["schedules"]["beta"]["values"]] == [1, 5000, 10000, 15000, 20000]
    assert view["models"]["teacher"]["parameters"] == 8_030_261_248
    # The constants each model computes with (a block's own, else its registry model's); none left as nulls.
    constants = view["models"]["teacher"]["constants"]
    assert constants["rope_theta"] == 500000.0 and constants["rope_scaling"]["type"] == "llama3"
    assert "sliding_window" not in constants and "rope_theta" not in view["spec"]["teacher"]  # Llama: no Gemma ones


def test_explain_numbers_schedule_steps_as_the_run_logs_them(tmp_path):
    """Four steps of α linear 0.9 → 0.1: the run logs 0.9, 0.7, 0.5, 0.3 at steps 1-4 (update k - 1 of the guide's
    formula); explain read "step 1: 0.7" and showed 0.1 at 100 %, a value no update uses."""
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "student": {"model": "tiny-2l"},
                "teacher": {"model": "tiny-4l", "load_parameters_path": "t"},
                "steps": 4,
                "loss": {"alpha": {"start": 0.9, "end": 0.1, "schedule": "linear"}},
            }
        )
    )
    view = json.loads(runner.invoke(app, ["explain", "--output", "json", str(spec)]).stdout)
    values = view["schedules"]["alpha"]["values"]
    assert [(v["step"], round(v["value"], 6)) for v in values] == [(1, 0.9), (1, 0.9), (2, 0.7), (3, 0.5), (4, 0.3)]


def test_explain_invalid_spec_exits_4_on_stderr(tmp_path):
    result = runner.invoke(app, ["explain", str(write(tmp_path, BAD))])
    assert result.exit_code == ExitCode.INVALID_SPEC
    assert "alpha_out_of_range" in result.stderr and result.stdout == ""


def left_out(stderr: str) -> list[str]:
    """The locs `convert --to maxtext` warned of as left out (each line: `file:line:col: warning[...] loc: ...`)."""
    marker = "warning[not_in_maxtext] "
    return [line.split(marker, 1)[1].split()[0] for line in stderr.splitlines() if marker in line]


def test_convert_to_maxtext_and_back(tmp_path):
    result = runner.invoke(app, ["convert", "--to", "maxtext", str(ROOT / "sweeps" / "tiny.yaml")])
    assert result.exit_code == ExitCode.OK, result.output
    assert "distill_alpha: 0.9" in result.stdout and "student_overrides:" in result.stdout
    back = runner.invoke(app, ["convert", str(write(tmp_path, result.stdout, "d.yml"))])
    assert back.exit_code == ExitCode.OK and "model: tiny-2l" in back.stdout
    assert yaml.safe_load(back.stdout)["batch"]["per_device_batch_size"] == 8, back.stdout  # as written, not 8.0
    assert "per_device_batch_size: 8\n" in back.stdout
    # everything tiny.yaml says has a MaxText key, but MaxText has no config of its CPU-sized models
    dropped = left_out(result.stderr)
    assert dropped == ["student.model:", "teacher.model:"] and "named 'tiny-2l'" in result.stderr, result.stderr
    # A layer preset is written as the layers it names: nothing is left out (it was warned of as dropped).
    pruning = runner.invoke(
        app, ["convert", "--to", "maxtext", str(ROOT / "sweeps" / "llama3.1-8b-pruning-recovery.yaml")]
    )
    assert pruning.exit_code == ExitCode.OK and "distill_layer_indices:" in pruning.stdout
    # but its text files and its default tokenizer (the teacher folder's tokenizer.json) have no MaxText key
    dropped = left_out(pruning.stderr)
    assert dropped == ["data.source:", "data.tokenizer:"], pruning.stderr
    # a tokenizer.json is written with MaxText's tokenizer_type for it (its default reads SentencePiece models)
    example = ROOT / "sweeps" / "maxtext-distillation.yml"
    converted = runner.invoke(app, ["convert", "--to", "maxtext", str(example)])
    flat = yaml.safe_load(converted.stdout)
    assert flat["tokenizer_type"] == "huggingface" and flat["tokenizer_path"].endswith("tokenizer.json"), flat
    # a MaxText file's settings left out are said at their lines, in its keys (they read `data.source`, no line)
    line = example.read_text().splitlines().index('dataset_type: "text"') + 1
    assert f"{example}:{line}:1: warning[not_in_maxtext] dataset_type:" in converted.stderr, converted.stderr


def test_convert_to_maxtext_names_each_setting_it_leaves_out_and_keeps_clipping_off(tmp_path):
    # They were dropped silently: the eval set, the text column (the wrong column read back), remat, the export,
    # and clipping off came back as clipping at 1.0.
    spec = """\
student: {model: tiny-2l, remat: none}
teacher: {model: tiny-4l, load_parameters_path: /ckpt}
data: {source: jsonl, path: /d.jsonl, text_column: body}
eval: {path: /h.jsonl, every_steps: 20, batches: 2}
optimizer: {grad_clip_norm: null}
checkpoint: {export: hf}
"""
    result = runner.invoke(app, ["convert", "--to", "maxtext", str(write(tmp_path, spec))])
    assert result.exit_code == ExitCode.OK, result.output
    dropped = [loc.rstrip(":") for loc in left_out(result.stderr)]
    assert dropped == ["checkpoint.export", "student.model", "teacher.model", "data.tokenizer"], result.stderr
    # JSONL files in MaxText's words: the hf pipeline's json builder over the files, the column it reads
    flat = yaml.safe_load(result.stdout)
    assert (flat["dataset_type"], flat["hf_path"], flat["hf_train_files"]) == ("hf", "json", "/d.jsonl"), flat
    assert flat["train_data_columns"] == ["body"] and "dataset_path" not in flat
    # the held-out files beside them: MaxText's hf_eval_files (the eval block was dropped)
    assert (flat["hf_eval_files"], flat["eval_interval"], flat["eval_steps"]) == ("/h.jsonl", 20, 2), flat
    assert "remat_policy: none" in result.stdout  # MaxText's key for it
    back = runner.invoke(app, ["explain", str(write(tmp_path, result.stdout, "d.yml")), "--output", "json"])
    assert json.loads(back.stdout)["spec"]["optimizer"]["grad_clip_norm"] is None, back.output


def test_a_size_just_under_a_unit_reads_in_that_unit():
    from orchestrator.cli.console import parameter_count

    assert parameter_count(999_885_952) == "1 B"  # gemma3-1b read "1000 M"
    assert (parameter_count(8_030_261_248), parameter_count(135_300_000)) == ("8.03 B", "135 M")


def test_models_lists_registry_as_json():
    rows = json.loads(runner.invoke(app, ["models", "--output", "json"]).stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["gemma2-9b"]["vocab_size"] == 256128 and by_name["qwen3-4b"]["num_layers"] == 36
    # The constants a block may restate for a checkpoint, in the block's own terms.
    llama = by_name["llama3.1-8b"]
    assert llama["rope_theta"] == 500000.0 and llama["rope_scaling"]["type"] == "llama3"
    assert by_name["gemma2-9b"]["attn_softcap"] == 50.0 and by_name["qwen3-4b"]["attn_softcap"] == "none"


def test_unknown_option_is_usage_error():
    assert runner.invoke(app, ["validate", "--nope", "x"]).exit_code == ExitCode.USAGE


def test_console_script_runs_without_jax():
    """The CLI (and the spec model) never import JAX: validation runs on laptops without it."""
    code = (
        "import sys; import orchestrator.cli, distillspec.config, distillspec.specfile;"
        "from orchestrator.cli import app; from typer.testing import CliRunner;"
        f"r = CliRunner().invoke(app, ['validate', '{ROOT / 'sweeps' / 'tiny.yaml'}']);"
        "assert r.exit_code == 0, r.output; assert 'jax' not in sys.modules, 'jax was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_command_lines_defaults_are_the_cores():
    """orchestrator.cli.options repeats a few core defaults (so start-up imports no core module): equal."""
    from orchestrator.cli import options
    from orchestrator.core import expansion, golden, results, run_status

    assert options.DEFAULT_MAX_POINTS == expansion.DEFAULT_MAX_POINTS
    assert options.DEFAULT_WINDOW == results.DEFAULT_WINDOW
    assert options.DEFAULT_RTOL == golden.DEFAULT_RTOL
    assert options.DEFAULT_METRICS == golden.DEFAULT_METRICS
    assert options.DEFAULT_STALL_SECONDS == run_status.DEFAULT_STALL_SECONDS


def test_validate_fast_path_reads_only_what_typer_documents():
    from orchestrator.cli.options import OutputFormat
    from orchestrator.cli.spec_validate import OUTPUTS, Arguments, fast_arguments

    assert tuple(f.value for f in OutputFormat) == OUTPUTS  # the fast path repeats them (options imports typer)
    a, b = Path("a.yaml"), Path("b.yaml")
    assert fast_arguments(["a.yaml"]) == Arguments((a,))
    assert fast_arguments(["--output", "json", "a.yaml", "--strict", "b.yaml"]) == Arguments((a, b), "json", True)
    assert fast_arguments(["--output=text", "--strict", "--no-strict", "--check-paths", "a.yaml"]) == Arguments(
        (a,), "text", False, True
    )
    # Typer's to answer: help, unknown options and values, `--`, no file at all.
    for argv in (
        ["--help", "a.yaml"],
        ["-h"],
        ["--nope", "a.yaml"],
        ["--output", "yaml", "a.yaml"],
        ["--output"],
        ["--no-check-paths", "a.yaml"],
        ["--", "a.yaml"],
        [],
        ["--strict"],
    ):
        assert fast_arguments(argv) is None, argv


def test_validate_fast_path_prints_and_exits_as_the_typer_command(tmp_path):
    """`distillctl validate` as a process (the fast path, no Typer) against the Typer command (`app`): the same
    output and exit code for valid, invalid, warned, missing and garbage files, in text and JSON."""
    warned = write(
        tmp_path, "student: {model: tiny-2l}\nmode: pretrain\nloss: {temperature: {start: 2, end: 1}}\n", "w.yaml"
    )
    cases = [
        [str(ROOT / "sweeps" / "tiny.yaml")],
        [str(write(tmp_path, BAD))],
        ["--strict", str(warned)],
        [str(warned), "--output", "json"],
        [str(tmp_path / "missing.yaml"), str(write(tmp_path, "[1, 2", "garbage.yaml"))],
    ]
    for argv in cases:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "validate", *argv], cwd=ROOT, capture_output=True, text=True
        )
        typed = runner.invoke(app, ["validate", *argv])
        assert (done.returncode, done.stdout) == (typed.exit_code, typed.stdout), argv


def test_each_command_built_alone_reads_as_in_the_whole_tree():
    """`main` registers only the command it runs: each one's help (options, arguments, defaults) is the same as
    in the whole application's tree."""
    from orchestrator.cli import COMMANDS, build_app

    for name in COMMANDS:
        alone = runner.invoke(build_app([name]), [name, "--help"])
        whole = runner.invoke(app, [name, "--help"])
        assert alone.exit_code == whole.exit_code == 0, name
        assert alone.stdout == whole.stdout, name


def test_models_prints_every_name_whole_into_a_pipe():
    # Into a pipe (80 columns) the names were cut to `llama3.1…`: the one thing a spec copies from the table.
    from distillspec.registry import MODELS

    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert all(f" {name} " in result.stdout for name in MODELS), result.stdout


def test_standard_input_named_twice_is_a_usage_error():
    result = runner.invoke(app, ["validate", "-", "-"], input="student: {model: tiny-2l}\nmode: pretrain\n")
    assert result.exit_code == ExitCode.USAGE and "standard input (-) is named twice" in result.stderr


def test_help_texts_are_not_broken_mid_sentence():
    # Typer kept the docstrings' source line breaks, and the terminal's wrap then broke lines mid-sentence
    # ("... an interrupted run or two at / once still end ...").
    wide = runner.invoke(app, ["sweep", "--help"], terminal_width=200)
    assert "an interrupted run or two at once still end with one run per point" in " ".join(wide.stdout.split())
    assert not re.search(r"or two at *\n", wide.stdout), wide.stdout


def test_a_problem_is_one_line_whatever_its_value_holds(tmp_path):
    # A name holding a line break split `file:line:col: error[...]` in two; a zero-width space and a terminal
    # escape were written out raw (invisible, or acted on by the terminal).
    path = write(tmp_path, 'name: "tiny\\ndistill\\u200b\\x1b[31m"\nstudent: {model: tiny-2l}\nmode: pretrain\n')
    result = runner.invoke(app, ["validate", str(path)])
    lines = [line for line in result.output.splitlines() if "bad_run_name" in line]
    assert len(lines) == 1, result.output
    line = lines[0]
    assert "'tiny\\ndistill\\u200b\\x1b[31m'" in line and "\x1b" not in line, result.stderr
    # and the verdict line of a file whose name holds a line break
    odd = tmp_path / "bad\nname.yaml"
    odd.write_text(path.read_text())
    verdict = runner.invoke(app, ["validate", str(odd)]).output.splitlines()[-1]
    assert verdict.startswith("✗ ") and verdict.endswith("bad\\nname.yaml: 1 error(s), 0 warning(s)"), verdict


def test_convert_to_maxtext_of_a_pruned_student_says_the_teacher_layers_it_cannot_keep(tmp_path):
    # A straddle preset matched teacher layers [19, 22]; the file's distill_layer_indices [19, 20] is taken of both
    # models by MaxText, silently. The pruned student's base_num_decoder_layers needs override_model_config, or
    # MaxText refuses a key its model file sets twice.
    spec = """\
student: {model: llama3.1-8b, num_layers: 30, load_parameters_path: gs://my-bucket/pruned30-hf}
teacher: {model: llama3.1-8b, load_parameters_path: gs://my-bucket/base-hf}
loss: {alpha: 0.5, beta: 1.0, layer_indices: "straddle:[20, 21]"}
"""
    result = runner.invoke(app, ["convert", "--to", "maxtext", str(write(tmp_path, spec))])
    assert result.exit_code == ExitCode.OK, result.output
    said = " ".join(result.stderr.split())
    assert "warning[not_in_maxtext] loss.layer_indices: the teacher's layers [19, 22] cannot be written" in said
    flat = yaml.safe_load(result.stdout)
    assert flat["override_model_config"] is True and flat["student_overrides"]["base_num_decoder_layers"] == 30
    plain = runner.invoke(app, ["convert", "--to", "maxtext", str(ROOT / "sweeps" / "tiny.yaml")])
    assert "override_model_config" not in plain.stdout  # registry shapes: nothing is set twice


def test_a_spec_converted_to_maxtext_states_every_default_maxtext_would_read_otherwise(tmp_path):
    # It failed `validate --strict` (maxtext_default_differs: checkpoint_period "the end only", which MaxText
    # spells as a period of `steps`; its own default is every 10000 steps).
    spec = "student: {model: tiny-2l}\nteacher: {model: tiny-4l, load_parameters_path: /x}\n"
    result = runner.invoke(app, ["convert", "--to", "maxtext", str(write(tmp_path, spec))])
    flat = yaml.safe_load(result.stdout)
    assert flat["checkpoint_period"] == flat["steps"] == 1000, flat
    strict = runner.invoke(app, ["validate", "--strict", str(write(tmp_path, result.stdout, "d.yml"))])
    assert strict.exit_code == ExitCode.OK, strict.output
    back = runner.invoke(app, ["explain", str(tmp_path / "d.yml"), "--output", "json"])
    assert json.loads(back.stdout)["spec"]["checkpoint"]["every_steps"] is None  # the end only, as it was


def test_convert_quotes_a_string_the_reader_would_take_for_a_number(tmp_path):
    # `name: 1e3` was written unquoted and read back as the float 1000.0: convert's own output failed validate.
    spec = (
        "name: '1e3'\nstudent: {model: tiny-2l}\nmode: pretrain\ndata: {source: jsonl, path: /d, text_column: '2E5'}\n"
    )
    native = runner.invoke(app, ["convert", "--to", "native", str(write(tmp_path, spec))])
    again = runner.invoke(app, ["validate", str(write(tmp_path, native.stdout, "again.yaml"))])
    assert "name: '1e3'" in native.stdout and again.exit_code == ExitCode.OK, (native.stdout, again.output)


def test_convert_to_maxtext_says_json_arrayrecord_data_is_distillctls_alone(tmp_path):
    # It was written as dataset_type: arrayrecord without a word (MaxText's grain ArrayRecord holds tf.Example).
    spec = "student: {model: llama3.1-8b}\nteacher: {model: llama3.1-8b, load_parameters_path: /t}\n"
    spec += "data: {source: arrayrecord, path: /d, tokenizer: /t/tokenizer.json}\n"
    result = runner.invoke(app, ["convert", "--to", "maxtext", str(write(tmp_path, spec))])
    assert "warning[not_in_maxtext] data.source: MaxText has no dataset_type for JSON ArrayRecord data" in result.stderr
