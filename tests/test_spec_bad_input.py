"""Files that are not specs at all: each gets one clear problem and an exit code, never a traceback."""

from __future__ import annotations

import pytest

from distillspec.specfile import read_spec_file, read_spec_text
from distillspec.yaml_source import MAX_BYTES, YamlSourceError, parse_yaml


def only_problem(report):
    assert report.spec is None
    [problem] = report.problems
    assert problem.message and problem.hint
    return problem


def test_missing_file(tmp_path):
    problem = only_problem(read_spec_file(tmp_path / "nope.yaml"))
    assert problem.code == "file_not_found"


def test_directory(tmp_path):
    assert only_problem(read_spec_file(tmp_path)).code == "not_a_file"


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"])
def test_empty_file(text):
    assert only_problem(read_spec_text(text)).code == "empty_file"


def test_yaml_syntax_error_has_a_position():
    problem = only_problem(read_spec_text("student:\n  model: tiny-2l\n  bad: [1, 2\n"))
    assert problem.code == "yaml_syntax"
    assert problem.line is not None and problem.line >= 3


@pytest.mark.parametrize("text", ["- a\n- b\n", "42\n", "just a string\n"])
def test_non_mapping_top_level(text):
    assert only_problem(read_spec_text(text)).code == "not_a_mapping"


def test_several_documents():
    assert only_problem(read_spec_text("a: 1\n---\nb: 2\n")).code == "multiple_documents"


def test_huge_file_is_refused_before_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.write(b"student: {model: tiny-2l}\n")
        f.write(b"# " + b"x" * (50 * 1024 * 1024) + b"\n")
    problem = only_problem(read_spec_file(big))
    assert problem.code == "file_too_large" and "50 MiB" in problem.message


def test_a_device_that_never_ends_is_refused_after_the_limit():
    # /dev/zero reports size 0: the read itself is bounded.
    problem = only_problem(read_spec_file("/dev/zero"))
    assert problem.code == "file_too_large"


def test_binary_file(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    assert only_problem(read_spec_file(path)).code == "not_utf8"


def test_alias_bomb_is_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for name in "bcdefgh":
        prev = chr(ord(name) - 1)
        bomb += f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
    assert only_problem(read_spec_text(bomb)).code == "yaml_too_complex"


def test_deep_nesting_is_refused():
    text = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    assert only_problem(read_spec_text(text)).code in {"yaml_too_deep", "yaml_syntax"}


def test_duplicate_keys_are_errors():
    report = read_spec_text("student: {model: tiny-2l}\nmode: pretrain\nsteps: 5\nsteps: 6\n")
    [problem] = report.problems
    assert (problem.code, problem.line) == ("duplicate_key", 4)


def test_max_bytes_applies_to_text_too():
    with pytest.raises(YamlSourceError) as e:
        parse_yaml("a: 1\n" + "#" * MAX_BYTES)
    assert e.value.code == "file_too_large"


def test_exponent_floats_without_dot_are_floats():
    assert parse_yaml("a: 1e-6\nb: 2.0e-4\nc: 10_000\nd: '1e-6'\n").data == {
        "a": 1e-6,
        "b": 2e-4,
        "c": 10000,
        "d": "1e-6",
    }


@pytest.mark.parametrize("text", ["2020-13-45: 1\n", "!!float abc: 1\n", "student: {2020-13-45: x}\n"])
def test_unreadable_keys_are_problems(text):
    problem = only_problem(read_spec_text(text))
    assert problem.code == "yaml_bad_value" and problem.line is not None


def test_a_sweep_file_given_as_a_spec_says_which_commands_take_it():
    from pathlib import Path

    report = read_spec_file(Path(__file__).parent.parent / "sweeps" / "quickstart.yaml")
    problem = only_problem(report)
    assert problem.code == "sweep_not_spec" and "distillctl plan" in problem.hint and problem.line == 1
    # a golden file: said so, not five errors about its keys ("unknown key 'points' → did you mean 'checkpoint'?")
    golden = only_problem(read_spec_file(Path(__file__).parent.parent / "sweeps" / "quickstart.golden.yaml"))
    assert golden.code == "golden_not_spec" and "regress SWEEP --golden FILE" in golden.hint, golden


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('student: !!python/object/apply:os.system ["ls"]\n', "unsupported YAML tag !!python/object/apply:os.system"),
        ("student: !custom x\n", "unsupported YAML tag !custom"),
        ("student:\n\tmodel: tiny-2l\n", "a tab in the indentation"),
    ],
)
def test_tags_and_tabs_say_what_they_are(text, said):
    problem = only_problem(read_spec_text(text))
    assert said in problem.message and "<unicode string>" not in problem.message and problem.line


def test_an_empty_output_dir_is_refused_at_its_line():
    # It validated, and the trainer wrote its run folder at the file system's root (then called it retryable).
    problem = only_problem(read_spec_text('student: {model: tiny-2l}\nmode: pretrain\noutput_dir: ""\n'))
    assert (problem.code, problem.line, problem.message) == ("empty_value", 3, "output_dir is empty")


def test_a_list_where_a_block_belongs_names_no_internal_class():
    # "expected a valid dictionary or instance of ModelSpec": a class name the user never wrote.
    from distillspec.specfile import validate_data

    for data in (
        {"mode": "pretrain", "student": ["tiny-2l"]},
        {"mode": "pretrain", "student": {"model": "tiny-2l"}, "loss": {"alpha": [0.5, 0.3]}},
    ):
        _, problems = validate_data(data)
        (problem,) = [p for p in problems if p.is_error]
        assert problem.message == "expected a mapping (`key: value` lines), got a list", problem.message


def test_a_huge_integer_is_described_not_printed():
    from distillspec.specfile import validate_data

    _, problems = validate_data({"mode": "pretrain", "student": {"model": "tiny-2l"}, "loss": {"alpha": 10**400}})
    (problem,) = [p for p in problems if p.is_error]
    assert "an integer of 401 digits" in problem.message and len(problem.message) < 200, problem.message


def test_a_merge_keys_override_is_yaml_not_a_duplicate_but_a_key_written_twice_still_is():
    # `<<: *student` then `model: tiny-4l` (inherit, then override) was refused as a duplicate key.
    text = """\
student: &s
  model: tiny-2l
  dtype: float32
teacher:
  <<: *s
  model: tiny-4l
  load_parameters_path: runs/teacher/checkpoints
loss: {alpha: 0.5}
"""
    report = read_spec_text(text, file="spec.yaml")
    assert report.ok, report.problems
    assert report.spec.teacher.model == "tiny-4l" and report.spec.teacher.dtype == "float32"
    twice = text.replace("  model: tiny-4l\n", "  model: tiny-4l\n  model: tiny-2l\n")
    (problem,) = read_spec_text(twice, file="spec.yaml").problems
    assert (problem.code, problem.loc, problem.line) == ("duplicate_key", ("teacher", "model"), 7)


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("steps: 2k", "write 2000 (numbers are plain: no k, M or B suffix)"),
        ("steps: 200.0", "write 200 (a whole number)"),
        ("steps: 08", "08 is not a number in YAML (a leading 0 means octal): write 8"),
        ("steps: 0o10", "write 8 (the YAML read here takes 0o as text)"),
        ("optimizer: {warmup_fraction: 10%}", "write 0.1 (a fraction, not a percentage)"),
        # hints that were wrong: no quotes to remove, a whole number the range then refused, none at all
        ("optimizer: {learning_rate: nan}", "write a finite number (NaN and infinity are no setting)"),
        ("steps: 1.0e+30", "write a whole number"),
        ("steps: .nan", "write a finite number (NaN and infinity are no setting)"),  # YAML's own, read as a float
        ("loss: {alpha: abc}", "write a number (0.5), or a mapping such as {start: 0.9, end: 0.5, schedule: cosine}"),
        (
            "loss: {layer_indices: 12345}",
            "write it as a list, e.g. [a, b] (or each item on its own line starting with `- `)",
        ),
        ("data: abc", "write its fields under it as indented `key: value` lines"),
    ],
)
def test_a_number_written_as_people_write_it_gets_what_to_write(line, hint):
    text = f"student: {{model: tiny-2l}}\nmode: pretrain\n{line}\n"
    (problem,) = [p for p in read_spec_text(text, file="spec.yaml").problems if p.is_error]
    assert problem.code == "wrong_type" and problem.hint == hint, problem


def test_a_key_with_no_value_is_empty_value_as_the_readme_says():
    # `name:` was "expected a valid string, got null → quote the value", and there was no value to quote.
    text = "name:\nstudent: {model: tiny-2l}\nmode: pretrain\noutput_dir:\nloss: {alpha: }\n"
    found = [(p.code, p.dotted_loc, p.hint) for p in read_spec_text(text, file="spec.yaml").problems]
    assert found == [
        ("empty_value", "name", "give name a value after the colon"),
        ("empty_value", "output_dir", "give output_dir a value after the colon"),
        ("empty_value", "loss.alpha", "give loss.alpha a value after the colon"),  # a number would do
    ], found


def test_a_choice_in_another_case_or_misspelt_gets_did_you_mean():
    text = "student: {model: tiny-2l}\nmode: pretrain\nloss: {temperature: {start: 2, end: 1, schedule: Cosine}}\n"
    (problem,) = [p for p in read_spec_text(text, file="spec.yaml").problems if p.is_error]
    assert problem.code == "bad_value" and problem.hint == "did you mean 'cosine'?", problem
    (problem,) = [p for p in read_spec_text(text.replace("Cosine", "cosin"), file="s.yaml").problems if p.is_error]
    assert problem.hint == "did you mean 'cosine'?", problem


@pytest.mark.parametrize(("written", "read", "hint"), [("010", 8, "write 10 without"), ("0x10", 16, "write 16 in")])
def test_a_number_yaml_reads_in_another_base_is_a_warning(written, read, hint):
    # `steps: 010` trained 8 steps; only an unrelated warning (checkpoint after the end) gave it away.
    report = read_spec_text(f"student: {{model: tiny-2l}}\nmode: pretrain\nsteps: {written}\n", file="spec.yaml")
    assert report.ok and report.spec.steps == read
    (problem,) = [p for p in report.problems if p.code == "number_in_another_base"]
    assert problem.severity == "warning" and problem.line == 3 and problem.hint.startswith(hint), problem
    quoted = read_spec_text("student: {model: tiny-2l}\nmode: pretrain\nsteps: 10\nname: '010'\n", file="s.yaml")
    assert not [p for p in quoted.problems if p.code == "number_in_another_base"]


def test_llama3_scaling_fields_on_a_linear_scaling_are_refused():
    # They meant nothing to linear scaling, yet made another run id and a mismatch whose two sides read alike.
    text = (
        "student: {model: tiny-2l, rope_scaling: {type: linear, factor: 2.0, low_freq_factor: 2.0}}\nmode: pretrain\n"
    )
    (problem,) = [p for p in read_spec_text(text, file="spec.yaml").problems if p.is_error]
    assert problem.code == "llama3_only" and "low_freq_factor applies to llama3 scaling only" in problem.message


def test_a_scheduled_loss_weight_written_as_people_write_it_gets_what_to_write():
    text = 'student: {model: tiny-2l}\nteacher: {model: tiny-4l, load_parameters_path: x}\nloss: {alpha: 50%, temperature: "2.0"}\n'
    hints = {p.dotted_loc: p.hint for p in read_spec_text(text, file="spec.yaml").problems if p.is_error}
    assert hints == {
        "loss.alpha": "write 0.5 (a fraction, not a percentage)",
        "loss.temperature": "remove the quotes around the number",
    }


def test_type_and_range_errors_say_what_to_write():
    # A list where a mapping goes (and the reverse), a word for a number and an out-of-range value had no fix.
    from distillspec.specfile import validate_data
    from distillspec.sweep import validate_sweep_data

    _, problems = validate_sweep_data({"name": "s", "spec": {}, "baseline": {"loss.alpha": 0.0}})
    assert "write it as a list" in next(p.hint for p in problems if p.dotted_loc == "baseline")
    _, problems = validate_sweep_data({"name": "s", "spec": {}, "axes": [1, 2]})
    assert "`key: value` lines" in next(p.hint for p in problems if p.dotted_loc == "axes")
    _, problems = validate_data({"student": {"model": "tiny-2l"}, "steps": "many"})
    assert next(p.hint for p in problems if p.dotted_loc == "steps") == "write a whole number, e.g. 2"
    _, problems = validate_data({"student": {"model": "tiny-2l"}, "steps": 0})
    assert next(p.hint for p in problems if p.dotted_loc == "steps") == "use a value greater than 0"
    _, problems = validate_sweep_data({"name": "s", "spec": {}, "target": {"host_network": "maybe"}})
    assert next(p.hint for p in problems if p.dotted_loc == "target.host_network") == "write true or false"


def test_a_percentage_for_a_count_is_not_told_to_become_a_fraction():
    # `steps: 10%` was told "write 0.1 (a fraction, not a percentage)" for an integer field.
    from distillspec.specfile import validate_data

    _, problems = validate_data({"student": {"model": "tiny-2l"}, "steps": "10%"})
    assert (
        next(p.hint for p in problems if p.dotted_loc == "steps") == "write a whole number (a count, not a percentage)"
    )
