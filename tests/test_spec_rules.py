"""One good and one bad case for each validation rule of the distillation guide (issue: the spec)."""

from __future__ import annotations

import pytest

from tests.spec_helpers import DELETE, GOOD, codes, report_for, spec_data


def test_good_spec_has_no_problems():
    report = report_for(GOOD)
    assert report.ok, report.problems
    assert report.problems == ()
    assert report.spec.layer_indices() == [0, 1]


# Rule 1: vocabularies must match.
def test_vocab_mismatch_is_reported_with_both_sizes():
    report = report_for(spec_data(**{"teacher.vocab_size": 512}))
    [problem] = [p for p in report.problems if p.code == "vocab_mismatch"]
    assert problem.message.startswith("Vocab size mismatch! Student: 256, Teacher: 512")
    assert problem.dotted_loc == "teacher.vocab_size"
    assert problem.line == 7 and problem.hint


def test_vocab_mismatch_from_registry_models():
    assert "vocab_mismatch" in codes(spec_data(**{"teacher.model": "llama3.1-8b"}))
    assert "vocab_mismatch" not in codes(spec_data(**{"student.vocab_size": 256}))


# Rule 2: feature loss needs scan_layers and enable_nnx on both models.
@pytest.mark.parametrize("side", ["student", "teacher"])
@pytest.mark.parametrize("flag", ["scan_layers", "enable_nnx"])
def test_feature_loss_needs_scan_and_nnx_on_both(side, flag):
    found = codes(spec_data(**{f"{side}.{flag}": False}))
    assert found == [f"feature_loss_needs_{flag}"]


def test_logit_only_runs_need_neither_flag():
    data = spec_data(**{"loss.beta": 0.0, "student.scan_layers": False, "teacher.enable_nnx": False})
    assert codes(data) == []


# Rule 3: β cannot ramp from zero.
def test_beta_ramp_from_zero_suggests_small_start():
    report = report_for(spec_data(**{"loss.beta": {"start": 0.0, "end": 0.5, "schedule": "linear"}}))
    [problem] = [p for p in report.problems if p.is_error]
    assert problem.code == "beta_ramp_from_zero"
    assert "1e-6" in problem.hint
    # Under a constant schedule too, as MaxText refuses it: the one problem, whose fix names the schedule (it was
    # only end_ignored, whose "set a schedule" led into this error).
    constant = {"loss.beta": {"start": 0.0, "end": 0.5, "schedule": "constant"}}
    [problem] = report_for(spec_data(**constant)).problems
    assert problem.code == "beta_ramp_from_zero" and problem.is_error
    assert "1e-6" in problem.hint and "schedule: linear or cosine" in problem.hint


def test_beta_ramp_from_tiny_start_is_fine():
    # 1e-6 without a dot is a float (YAML 1.2), as the guide writes it.
    text = report_for(GOOD)  # sanity
    assert text.ok
    yaml_text = (
        "student: {model: tiny-2l}\nteacher: {model: tiny-4l, load_parameters_path: x}\n"
        "loss: {beta: {start: 1e-6, end: 0.5, schedule: linear}, layer_indices: [0]}\n"
    )
    report = report_for(yaml_text)
    assert report.ok, report.problems
    assert report.spec.loss.beta.start == 1e-6


# Rule 4: schedules and end values.
@pytest.mark.parametrize("name", ["alpha", "temperature", "beta"])
def test_a_moving_schedule_without_an_end_stays_fixed_with_a_warning(name):
    # The guide: "when *_end is None, the value stays fixed" (a MaxText file it calls valid was refused).
    start = {"alpha": 0.9, "temperature": 2.0, "beta": 1.0}[name]
    data = spec_data(**{f"loss.{name}": {"start": start, "schedule": "cosine"}})
    assert codes(data) == [] and codes(data, errors_only=False) == ["schedule_without_end"]
    (problem,) = report_for(data).problems
    assert problem.loc == ("loss", name, "schedule") and f"it stays at {start}" in problem.message
    assert getattr(report_for(data).spec.loss, name).effective_end == start


def test_end_with_constant_schedule_is_a_warning():
    report = report_for(spec_data(**{"loss.temperature": {"start": 2.0, "end": 1.0}}))
    assert report.ok
    [warning] = report.problems
    assert (warning.code, warning.severity, warning.dotted_loc) == ("end_ignored", "warning", "loss.temperature.end")


# Rule 5: ranges, start and end alike.
@pytest.mark.parametrize(
    ("path", "value", "code"),
    [
        ("loss.alpha.start", 1.5, "alpha_out_of_range"),
        ("loss.alpha.end", -0.1, "alpha_out_of_range"),
        ("loss.temperature", 0.0, "temperature_out_of_range"),
        ("loss.temperature", {"start": 2.0, "end": -1.0, "schedule": "linear"}, "temperature_out_of_range"),
        ("loss.beta.start", -1.0, "beta_out_of_range"),
        ("loss.beta.end", -0.5, "beta_out_of_range"),
    ],
)
def test_ranges(path, value, code):
    assert code in codes(spec_data(**{path: value}))


def test_a_misspelt_schedule_is_one_error_not_also_a_warning_about_its_repaired_default():
    data = spec_data(**{"loss.alpha": {"start": 0.9, "end": 0.5, "schedule": "cosin"}})
    assert codes(data, errors_only=False) == ["bad_value"]


def test_steps_fit_the_compiled_steps_int32_counter():
    assert codes(spec_data(steps=2**31)) == ["out_of_range"]
    assert codes(spec_data(steps=2**31 - 1)) == []


@pytest.mark.parametrize(("path", "value"), [("seed", -1), ("data.seed", -3), ("seed", 2**32)])
def test_seeds_are_what_the_generators_take(path, value):
    # A negative seed passed validation and failed in the trainer (numpy: "expected non-negative integer").
    assert codes(spec_data(**{path: value})) == ["out_of_range"]
    assert codes(spec_data(**{path: 2**32 - 1})) == []


@pytest.mark.parametrize(
    ("path", "value"), [("loss.alpha.start", 1.0), ("loss.alpha.end", 0.0), ("loss.beta.end", 0.0)]
)
def test_range_limits_are_allowed(path, value):
    assert codes(spec_data(**{path: value})) == []


def test_nan_is_rejected():
    assert "out_of_range" in codes("student: {model: tiny-2l}\nmode: pretrain\nloss: {temperature: .nan}\n")


# Rule 6: layer indices when β > 0.
@pytest.mark.parametrize(
    ("indices", "code"),
    [
        ([], "layer_indices_empty"),
        ([0, 2], "layer_index_out_of_range"),
        ([0, -3], "layer_index_out_of_range"),
        ([1, -1], "layer_index_duplicate"),
        ("first:0", "bad_layer_preset"),
        ("everything", "bad_layer_preset"),
    ],
)
def test_bad_layer_indices(indices, code):
    assert code in codes(spec_data(**{"loss.layer_indices": indices}))


def test_out_of_range_index_points_at_the_item():
    report = report_for(spec_data(**{"loss.layer_indices": [0, 7]}))
    [problem] = report.problems
    assert problem.dotted_loc == "loss.layer_indices[1]"


@pytest.mark.parametrize("indices", [[0, 1], [-1], [0, -1], "first:2", "full_depth:2", "top_heavy:1"])
def test_good_layer_indices(indices):
    assert codes(spec_data(**{"loss.layer_indices": indices})) == []


def test_layer_indices_are_not_checked_when_beta_is_off():
    assert codes(spec_data(**{"loss.beta": 0.0, "loss.layer_indices": [99]})) == []


def test_missing_layer_indices_with_different_depths():
    assert codes(spec_data(**{"loss.layer_indices": DELETE})) == ["layer_indices_missing"]
    same_depth = spec_data(**{"loss.layer_indices": DELETE, "student.model": "tiny-4l"})
    assert codes(same_depth) == []


def test_preset_resolves_against_student_depth():
    data = spec_data(
        **{"student.model": "llama3.1-8b", "teacher.model": "llama3.1-8b", "loss.layer_indices": "full_depth:8"}
    )
    report = report_for(data)
    assert report.ok, report.problems
    assert report.spec.layer_indices() == [3, 7, 11, 15, 19, 23, 27, 31]
    assert report.spec.resolved().loss.layer_indices == [3, 7, 11, 15, 19, 23, 27, 31]


def test_preset_out_of_range_names_the_resolution():
    data = spec_data(**{"teacher.model": "tiny-2l", "student.model": "tiny-4l", "loss.layer_indices": "full_depth:4"})
    report = report_for(data)
    [problem] = [p for p in report.problems if p.code == "layer_index_out_of_range"][:1]
    assert "resolves to [0, 1, 2, 3]" in problem.message


# Rule 7: feature width.
def test_feature_width_must_match_when_beta_on():
    assert "feature_width_mismatch" in codes(spec_data(**{"student.emb_dim": 32}))
    assert "feature_width_mismatch" not in codes(spec_data(**{"student.emb_dim": 32, "loss.beta": 0.0}))


# Rule 8: teacher path online; no features offline.
def test_online_distillation_needs_teacher_path():
    report = report_for(spec_data(**{"teacher.load_parameters_path": DELETE}))
    [problem] = report.problems
    assert problem.code == "teacher_path_missing"
    assert problem.message.startswith("Teacher model path is missing")
    assert problem.dotted_loc == "teacher.load_parameters_path"


def test_offline_mode_needs_no_teacher_path_but_rejects_beta_and_reads_top_k_from_its_cache():
    offline = {"teacher.load_parameters_path": DELETE, "offline_data_dir": "gs://bkt/topk"}
    # top_k unset: the cache's (a MaxText file has no key for it; it was top_k_missing)
    assert sorted(codes(spec_data(**offline))) == ["offline_feature_loss"]
    assert codes(spec_data(**offline, **{"loss.beta": 0.0})) == []
    assert codes(spec_data(**offline, **{"loss.beta": 0.0, "top_k": 8})) == []
    assert codes(spec_data(**offline, **{"loss.beta": 0.0, "top_k": 100_000})) == ["top_k_over_vocab"]
    # A top_k of the wrong type or range is that error alone: "top_k is not set" was said of it too.
    for bad in ("16", 0, 16.5):
        assert codes(spec_data(**offline, **{"loss.beta": 0.0, "top_k": bad})) in (["wrong_type"], ["out_of_range"])


def test_teacher_logits_mode_needs_teacher_path_and_top_k():
    logits = {"mode": "teacher_logits", "loss.beta": 0.0}
    assert codes(spec_data(**logits)) == ["top_k_missing"]
    assert codes(spec_data(**logits, top_k=4)) == []
    assert codes(spec_data(**logits, top_k=4, **{"teacher.load_parameters_path": DELETE})) == ["teacher_path_missing"]
    assert codes(spec_data(**logits, top_k=4, offline_data_dir="x")) == ["teacher_logits_offline"]
    assert codes(spec_data(top_k=4), errors_only=False) == ["top_k_unused"]  # online: a warning


# Rule 9: batch shape belongs to both models.
@pytest.mark.parametrize("key", ["per_device_batch_size", "max_target_length", "gradient_accumulation_steps"])
def test_batch_shape_in_a_model_block_is_rejected_naming_both_values(key):
    report = report_for(spec_data(**{f"teacher.{key}": 3}))
    [problem] = report.problems
    assert problem.code == "batch_shape_in_override"
    shared = {"per_device_batch_size": 2, "max_target_length": 16, "gradient_accumulation_steps": 1}[key]
    where = "the default" if key == "gradient_accumulation_steps" else "`batch:`"  # what the student gets, and whence
    assert f"set in the teacher's block (3) while the student gets {shared} (from {where})" in problem.message
    assert problem.dotted_loc == f"teacher.{key}"


# Rule 10: unknown keys, with suggestions.
@pytest.mark.parametrize(
    ("path", "suggestion"),
    [
        ("loss.alpah", "alpha"),
        ("stpes", "steps"),
        ("student.base_emb_dim", "emb_dim"),
        ("loss.feature_loss", "feature_loss_type"),
        ("max_target_length", "batch:"),
    ],
)
def test_unknown_keys_are_rejected_with_a_suggestion(path, suggestion):
    report = report_for(spec_data(**{path: 1}))
    [problem] = [p for p in report.problems if p.code == "unknown_key"]
    assert problem.dotted_loc == path
    assert suggestion in problem.hint


def test_all_problems_are_reported_together():
    data = spec_data(
        **{
            "loss.alpah": 1,
            "loss.alpha.end": 3,
            "teacher.vocab_size": 7,
            "student.scan_layers": False,
            "teacher.load_parameters_path": DELETE,
            "steps": 0,
        }
    )
    found = set(codes(data))
    assert {
        "unknown_key",
        "alpha_out_of_range",
        "vocab_mismatch",
        "feature_loss_needs_scan_layers",
        "teacher_path_missing",
        "out_of_range",
    } <= found


def test_problems_are_sorted_by_line_and_carry_positions():
    report = report_for(spec_data(**{"loss.alpah": 1, "steps": 0}))
    lines = [p.line for p in report.problems]
    assert lines == sorted(lines) and all(lines)


# Further mistakes the guide's troubleshooting implies.
def test_distill_mode_needs_a_teacher():
    assert codes(spec_data(teacher=DELETE)) == ["teacher_missing"]
    assert codes(spec_data(teacher=DELETE, mode="pretrain")) == []


def test_unknown_model_suggests_close_names():
    report = report_for(spec_data(**{"teacher.model": "llama3.1-8"}))
    [problem] = report.problems
    assert problem.code == "unknown_model" and "llama3.1-8b" in problem.message


def test_pruned_student_must_match_teacher_minus_dropped_layers():
    prune = {
        "student.model": "tiny-4l",
        "student.init": "teacher",
        "student.drop_layers": [1, 2],
        "loss.layer_indices": [0],
    }
    assert codes(spec_data(**prune)) == ["pruned_depth_mismatch"]
    assert codes(spec_data(**prune, **{"student.num_layers": 2})) == []
    assert "pruned_shape_mismatch" in codes(spec_data(**prune, **{"student.num_layers": 2, "student.mlp_dim": 8}))
    # The registry model's own width, not an override: "remove the student's emb_dim override" could not be done.
    other = {**prune, "student.model": "mid-2l", "student.num_layers": 2, "teacher.vocab_size": 32000}
    shapes = [p for p in report_for(spec_data(**other)).problems if p.code == "pruned_shape_mismatch"]
    (width,) = [p for p in shapes if "emb_dim" in p.message]
    assert width.dotted_loc == "student.model" and "(the registry's mid-2l)" in width.message
    assert "set student.emb_dim: 64" in width.hint and "override" not in width.hint


def test_wrong_types_are_not_coerced():
    found = report_for(spec_data(steps="100", **{"student.scan_layers": "yes please", "loss.alpha": True}))
    by_loc = {p.dotted_loc: p for p in found.problems}
    assert by_loc["steps"].code == "wrong_type" and "quotes" in by_loc["steps"].hint
    assert by_loc["student.scan_layers"].code == "wrong_type"
    assert by_loc["loss.alpha"].code == "wrong_type"


def test_bad_choice_lists_the_options():
    [problem] = report_for(spec_data(**{"loss.feature_loss_type": "l1"})).problems
    assert problem.code == "bad_value" and "'cosine' or 'l2'" in problem.message


def test_maxtext_key_in_a_native_file_points_to_its_home():
    report = report_for(spec_data(distill_beta_end=0.1))
    [problem] = report.problems
    assert problem.code == "unknown_key" and "loss.beta.end" in problem.hint


def test_a_pruned_gemma3_student_keeps_the_teachers_layer_kinds():
    """Gemma 3 (global every 6th layer): dropping teacher layer 3 moves the global layers 5, 11, 17, 23 to 4, 10,
    16, 22 in the student, not the pattern's 5, 11, 17, 23; dropping the last layer keeps the pattern (None)."""
    from distillspec.config import DistillSpec
    from distillspec.hf_config import config_of

    gemma = {
        "student.model": "gemma3-1b",
        "student.num_layers": 25,
        "student.init": "teacher",
        "student.drop_layers": [3],
        "teacher.model": "gemma3-1b",
        "loss.layer_indices": [0],
    }
    assert codes(spec_data(**gemma)) == []
    spec = DistillSpec.model_validate(spec_data(**gemma))
    student = spec.student_block().shape()
    assert student.global_layers == (4, 10, 16, 22)
    assert spec.resolved().student.global_layers == [4, 10, 16, 22]
    assert spec.resolved_data()["student"]["global_layers"] == [4, 10, 16, 22]
    assert [i for i, t in enumerate(config_of(student)["layer_types"]) if t == "full_attention"] == [4, 10, 16, 22]
    kept_pattern = DistillSpec.model_validate(spec_data(**{**gemma, "student.drop_layers": [25]}))
    assert kept_pattern.student_block().shape().global_layers is None
    stated = {**gemma, "student.global_layers": [4, 10, 16, 22]}
    assert codes(spec_data(**stated)) == []
    assert codes(spec_data(**{**stated, "student.global_layers": [5, 11, 17, 23]})) == ["global_layers_mismatch"]
    assert codes(spec_data(**{**stated, "student.global_layers": [25]})) == ["global_layers_invalid"]
    assert codes(spec_data(**{"student.global_layers": [1]})) == ["global_layers_unused"]
    assert "pruned_family_mismatch" in codes(spec_data(**{**gemma, "student.model": "qwen3-0.6b"}))
    # MaxText takes a Gemma 3 layer's kind from its index: such a student exported there was another model, unsaid.
    assert codes(spec_data(**{**gemma, "checkpoint.export": "maxtext"})) == ["export_other_model"]
    assert codes(spec_data(**{**gemma, "checkpoint.export": "hf"})) == []
    assert codes(spec_data(**{**gemma, "student.drop_layers": [25], "checkpoint.export": "maxtext"})) == []


def test_global_layers_leave_old_run_ids_alone_and_change_them_where_the_model_changes():
    from distillspec.config import DistillSpec
    from distillspec.sweep import Target
    from orchestrator.core import identity

    target = Target.model_validate({"kind": "local"})
    base = spec_data(**{"student.model": "gemma3-1b", "teacher.model": "gemma3-1b", "loss.layer_indices": [0]})
    pruned = {**base, "student": {"model": "gemma3-1b", "num_layers": 25, "init": "teacher"}}
    last, third = (
        DistillSpec.model_validate({**pruned, "student": {**pruned["student"], "drop_layers": [d]}}) for d in (25, 3)
    )
    assert "global_layers" not in identity.identity_payload(last, target)["spec"]["student"]
    assert identity.identity_payload(third, target)["spec"]["student"]["global_layers"] == [4, 10, 16, 22]
    assert identity.identify(third, target)[0] == identity.run_id(third, target)
    pretrain = DistillSpec.model_validate({**base, "mode": "pretrain", "teacher": None})
    assert identity.identify(pretrain, target)[0] == identity.run_id(pretrain, target)


def test_a_data_path_without_a_source_is_not_silently_synthetic():
    # `data: {path: corpus.txt}` trained on synthetic tokens and exited 0, spec.json saying source synthetic.
    from distillspec.specfile import read_spec_text

    report = report_for(spec_data(data={"path": "corpus.txt"}))
    (problem,) = [p for p in report.problems if p.is_error]
    assert problem.code == "data_path_with_synthetic" and problem.loc == ("data", "path")
    assert "set data.source to the path's format" in problem.hint
    # In a MaxText file, in its own words: grain_train_files, and the dataset_type it did not write.
    text = "base_config: base.yml\nrun_name: x\nmodel_name: tiny-2l\nsteps: 10\ngrain_train_files: docs.jsonl\n"
    (problem,) = [p for p in read_spec_text(text).problems if p.code == "data_path_with_synthetic"]
    assert problem.loc == ("grain_train_files",) and problem.line == 5
    assert "dataset_type is synthetic" in problem.message and "set dataset_type" in problem.hint


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("corpus.jsonl", "jsonl"),
        ("gs://bkt/docs/*.jsonl.gz", "jsonl"),
        ("part-0.parquet", "parquet"),
        ("x.arrow", "hf_disk"),
    ],
)
def test_a_text_source_over_record_files_is_warned_of(path, source):
    # `source: text` over a .jsonl trained on `{"text": "..."}` syntax, keys and braces included, exit 0.
    report = report_for(spec_data(data={"source": "text", "path": path}))
    (problem,) = [p for p in report.problems if p.code == "text_source_of_records"]
    assert not problem.is_error and problem.loc == ("data", "source") and f"data.source: {source}" in problem.hint
    assert not [
        p
        for p in report_for(spec_data(data={"source": "text", "path": "corpus.txt"})).problems
        if p.code == "text_source_of_records"
    ]


def test_settings_that_would_be_ignored_are_warned_of():
    # Each trained and exited 0 without a word.
    assert codes(spec_data(mode="pretrain"), errors_only=False) == ["teacher_unused"]
    disabled = {"checkpoint": {"enabled": False, "every_steps": 1}}
    assert codes(spec_data(**disabled), errors_only=False) == ["checkpoint_disabled"]


@pytest.mark.parametrize(
    ("data", "found"),
    [
        ({"source": "jsonl", "path": "d.jsonl", "seed": 3}, ["data_seed_changes_nothing"]),  # identical runs
        ({"source": "parquet", "path": "d", "seed": 3}, ["data_seed_changes_nothing"]),
        ({"source": "jsonl", "path": "d.jsonl", "seed": 3, "shuffle_window": 1000}, []),
        ({"source": "jsonl", "path": "d.jsonl"}, []),  # seed 0 asks for nothing
        ({"source": "arrayrecord", "path": "d", "seed": 3}, []),  # shuffled whole
        ({"source": "arrayrecord", "path": "d", "shuffle_window": 10}, ["shuffle_window_unused"]),
        ({"source": "synthetic", "shuffle_window": 10}, ["shuffle_window_unused"]),
        ({"source": "jsonl", "path": "d", "text_column": "body"}, []),
        ({"source": "text", "path": "d.txt", "text_column": "body"}, ["text_column_unused"]),
        (
            {"source": "jsonl", "path": "d", "text_column": "body", "prompt_column": "q", "completion_column": "a"},
            ["text_column_unused"],
        ),
    ],
)
def test_data_settings_that_change_nothing_are_warned_of(data, found):
    spec = spec_data(data=data)
    assert codes(spec) == []
    assert codes(spec, errors_only=False) == found
    if found == ["data_seed_changes_nothing"]:
        (problem,) = report_for(spec).problems
        assert problem.dotted_loc == "data.seed" and "data.shuffle_window" in problem.hint


def test_a_preset_asking_for_more_layers_than_the_student_has_says_what_it_uses():
    # full_depth:33 on 32 layers was quietly full_depth:32.
    data = spec_data(**{"loss.layer_indices": "full_depth:9"})  # the tiny students have fewer
    report = report_for(data)
    (problem,) = [p for p in report.problems if p.code == "layer_preset_capped"]
    assert problem.severity == "warning" and "asks for 9 layers of the student's" in problem.message
    assert codes(data) == []


# The guide's scales: β of order 0.1–2.0 for cosine, 0.01–0.1 for L2; temperatures 1–4.
@pytest.mark.parametrize(
    ("settings", "found"),
    [
        # cosine's β carried over to L2 (the guide's feature-loss ablation scales β with the type)
        ({"loss.feature_loss_type": "l2"}, ["beta_above_guide"]),
        ({"loss.feature_loss_type": "l2", "loss.beta": {"start": 0.05, "end": 0.005, "schedule": "cosine"}}, []),
        ({"loss.beta": {"start": 5.0, "end": 0.5, "schedule": "cosine"}}, ["beta_above_guide"]),
        ({"loss.beta": {"start": 1e-6, "end": 3.0, "schedule": "linear"}}, ["beta_above_guide"]),
        ({"loss.beta": {"start": 2.0, "end": 0.5, "schedule": "cosine"}}, []),  # the aggressive row
        ({"loss.temperature": 8.0}, ["temperature_above_guide"]),
        ({"loss.temperature": {"start": 4.0, "end": 1.0, "schedule": "cosine"}}, []),  # the ablation's {1, 2, 4}
        ({"loss.temperature": {"start": 2.0, "end": 0.5, "schedule": "linear"}}, ["temperature_below_one"]),
        ({"loss.temperature": {"start": 2.0, "end": 0.5, "schedule": "constant"}}, ["end_ignored"]),
        ({"loss.temperature": 8.0, "loss.alpha": 0.0}, []),  # labels only: the temperature is never used
        ({"loss.beta": 5.0, "mode": "pretrain"}, ["teacher_unused"]),
    ],
)
def test_beta_and_temperature_outside_the_guides_scales_are_warned_of(settings, found):
    data = spec_data(**settings)
    assert codes(data) == []  # valid: a warning, never a refusal
    assert codes(data, errors_only=False) == found


@pytest.mark.parametrize(
    ("settings", "errors", "warnings"),
    [
        # each passed: 2**63 positions, 1e30 rows, a learning rate of 1e30
        ({"batch.max_target_length": 2**63}, ["out_of_range"], []),
        ({"batch.per_device_batch_size": 1e30}, ["out_of_range"], []),
        ({"batch.gradient_accumulation_steps": 2**31}, ["out_of_range"], []),
        ({"batch.per_device_batch_size": 2**16, "batch.max_target_length": 2**15}, ["batch_too_large"], []),
        ({"batch.per_device_batch_size": 2**15, "batch.max_target_length": 2**15}, [], []),
        ({"optimizer.learning_rate": 1e30}, [], ["learning_rate_high"]),
        ({"optimizer.learning_rate": 0.1}, [], ["learning_rate_high"]),
        ({"optimizer.learning_rate": 0.01}, [], []),
    ],
)
def test_a_batch_past_int32_is_an_error_and_a_learning_rate_no_run_trains_at_a_warning(settings, errors, warnings):
    data = spec_data(**settings)
    assert codes(data) == errors
    assert [c for c in codes(data, errors_only=False) if c not in errors] == warnings


def test_a_batch_past_int32_says_the_batch_size_as_written():
    (problem,) = report_for(
        spec_data(**{"batch.per_device_batch_size": 2**20, "batch.max_target_length": 2**12})
    ).problems
    assert "per_device_batch_size 1,048,576 ×" in problem.message, problem.message  # it read 1.04858e+06


def test_the_scale_warnings_point_at_the_value_that_leaves_the_range_and_say_what_to_use():
    report = report_for(spec_data(**{"loss.feature_loss_type": "l2"}))
    (problem,) = report.problems
    assert problem.dotted_loc == "loss.beta.start" and "0.01–0.1" in problem.message and "0.05" in problem.hint
    report = report_for(spec_data(**{"loss.beta": {"start": 1e-6, "end": 3.0, "schedule": "linear"}}))
    (problem,) = report.problems
    assert problem.dotted_loc == "loss.beta.end" and "β reaches 3.0" in problem.message


def test_a_top_level_key_nested_in_a_block_says_to_move_it():
    # "MaxText's top_k is top_k in this layout" sent the reader looking for a difference that was not there.
    (problem,) = report_for(spec_data(**{"loss.top_k": 8})).problems
    assert problem.code == "unknown_key" and problem.hint == "top_k is a top-level key: move it out of `loss:`"


def test_a_model_blocks_constants_are_checked_inherited_and_do_not_change_a_run_that_states_the_registrys():
    from distillspec.config import DistillSpec
    from distillspec.sweep import Target
    from orchestrator.core.identity import identify
    from tests.sweep_support import TARGET

    # Gemma's constants on a Llama block would be ignored by its layers.
    assert "constant_not_in_family" in codes(spec_data(**{"teacher.sliding_window": 64}))
    assert "constant_not_in_family" in codes(spec_data(**{"teacher.attn_softcap": "none"}))
    # A pruned student computes with its teacher's constants: inherited, and a contradiction is named.
    pruned = {"student.init": "teacher", "student.model": "tiny-4l", "teacher.rope_theta": 5e5}
    spec = DistillSpec.model_validate(spec_data(**pruned))
    assert spec.student_block().shape().rope_theta == 5e5
    assert "pruned_constant_mismatch" in codes(spec_data(**pruned, **{"student.rope_theta": 1e4}))
    # Stated at the registry model's own value: the same model, the same run id.
    target = Target.model_validate(TARGET)
    plain = DistillSpec.model_validate(spec_data())
    stated = DistillSpec.model_validate(spec_data(**{"teacher.rope_theta": 10_000.0, "teacher.norm_eps": 1e-5}))
    assert stated.teacher.shape() == plain.teacher.shape()
    assert identify(stated, target)[0] == identify(plain, target)[0]
    other = DistillSpec.model_validate(spec_data(**{"teacher.rope_scaling": {"type": "linear", "factor": 2.0}}))
    assert identify(other, target)[0] != identify(plain, target)[0]
    assert other.teacher.shape().rope_scaling.kind == "linear"


def test_a_bad_data_source_is_said_once_not_also_judged_as_the_default_it_was_repaired_to():
    # `source: csv` also got "data.path is ... but data.source is synthetic (the default)": false, and the wrong fix.
    found = codes(spec_data(**{"data": {"source": "csv", "path": "gs://bucket/corpus/*.txt"}}))
    assert found == ["bad_value"], found


def test_a_student_pruned_from_the_teacher_and_loaded_from_a_path_is_one_too_many():
    # It validated, and the trainer silently loaded the path, ignoring init and drop_layers.
    found = codes(
        spec_data(**{"student.init": "teacher", "student.model": "tiny-4l", "student.load_parameters_path": "s"})
    )
    assert "student_init_conflict" in found, found


@pytest.mark.parametrize(
    ("path", "code"),
    [
        (" ", "blank_path"),
        ("gs://", "bad_bucket"),
        ("gs:///x", "bad_bucket"),
        ("gs://my bucket/x", "bad_bucket"),
        ("gs://ab/x", "bad_bucket"),  # too short for Cloud Storage: it passed and failed in the pods
        ("gs://runs-/x", "bad_bucket"),
        # typos no storage has: the first two were told to copy the files to gs://, the others passed
        (" gs://my-bucket/x", "path_malformed"),
        ("GS://my-bucket/x", "path_malformed"),
        ("g s://my-bucket/x", "path_malformed"),
        ("gs://my-bucket/x\n", "path_malformed"),
        ("runs/x\u200b", "path_malformed"),
        ("runs/x\u200d.txt", "path_malformed"),  # a zero-width joiner, and a C1 control: they passed
        ("runs/e\x85.txt", "path_malformed"),
        ("file:/tmp/runs", "path_malformed"),  # the trainer's metrics went to /tmp/runs, its checkpoints to ./file:
    ],
)
def test_a_path_broken_before_anything_reads_it_is_an_error(path, code):
    # Each was "valid spec"; the pods then failed on it.
    assert code in codes(spec_data(**{"teacher.load_parameters_path": path}))


def test_a_path_in_a_store_the_trainer_image_cannot_read_is_a_warning():
    found = codes(spec_data(**{"teacher.load_parameters_path": "s3://bucket/ckpt"}), errors_only=False)
    assert found == ["unsupported_scheme"], found


def test_constants_the_trainer_would_compute_otherwise_than_transformers_are_refused_and_scalars_stay_whole():
    from distillspec.config import DistillSpec, ModelSpec
    from distillspec.hf_config import config_of

    # Gemma 3's attention soft-cap (transformers stores it, never applies it); Gemma 2's RoPE scaling (transformers
    # scales every layer, the trainer the global ones): both trained a model its export could not reproduce.
    gemma3 = {"student.model": "gemma3-1b", "teacher.model": "gemma3-1b", "teacher.attn_softcap": 20.0}
    assert "constant_not_in_family" in codes(spec_data(**gemma3))
    gemma2 = {"student.model": "gemma2-2b", "teacher.model": "gemma2-2b"}
    scaled = {**gemma2, "teacher.rope_scaling": {"type": "linear", "factor": 4.0}}
    assert "constant_not_in_family" in codes(spec_data(**scaled))
    # query_pre_attn_scalar is an int in transformers' strict Gemma configs (16.0 made the export unloadable).
    shape = ModelSpec(model="gemma2-2b", query_pre_attn_scalar=16).shape()
    written = config_of(shape)["query_pre_attn_scalar"]
    assert written == 16 and isinstance(written, int)
    assert "wrong_type" in codes(spec_data(**gemma2, **{"teacher.query_pre_attn_scalar": 16.5}))
    # config.json's own key for the scaling's kind is read; a union member's class never shows in a loc.
    spec = DistillSpec.model_validate(spec_data(**{"teacher.rope_scaling": {"rope_type": "linear", "factor": 2.0}}))
    assert spec.teacher.shape().rope_scaling.kind == "linear"
    report = report_for(spec_data(**{"teacher.rope_scaling": {"factor": 2.0}}))
    assert [p.dotted_loc for p in report.problems] == ["teacher.rope_scaling.type"], report.problems


@pytest.mark.parametrize("field", ["data.tokenizer", "output_dir", "eval.path"])
def test_a_hub_path_anywhere_is_refused_before_anything_asks_the_hub(field):
    # `--check-paths` crashed asking the Hub for an hf:// tokenizer (exit 70); the pods could not read one either.
    edits = {"data": {"source": "jsonl", "path": "gs://bucket/c.jsonl"}, field: "hf://org/name/file"}
    if field == "eval.path":
        edits["eval"] = {"path": "hf://org/name/file"}
        del edits[field]
    assert "hub_path_not_read" in codes(spec_data(**edits))


def test_a_hub_path_where_the_trainer_writes_says_where_to_write_instead():
    # It advised "download it first" for output_dir and tensorboard_dir, places the trainer writes to.
    from distillspec.specfile import validate_data

    for field in ("output_dir", "logging.tensorboard_dir"):
        _, problems = validate_data(spec_data(**{field: "hf://org/name"}))
        (problem,) = [p for p in problems if p.code == "hub_path_not_read"]
        assert "the trainer writes to a folder or a bucket" in problem.message, problem
        assert "download" not in problem.hint and "gs://" in problem.hint and "export" in problem.hint, problem
    _, problems = validate_data(spec_data(output_dir="s3://bucket/runs"))
    (problem,) = [p for p in problems if p.code == "unsupported_scheme"]
    assert "writes gs://" in problem.message and "copy the files" not in problem.hint, problem
    assert problem.is_error  # the trainer refuses to write there at start (exit 1)
    # file:// and memory:// are read, but orbax cannot write checkpoints there: the run died as a bug (exit 70)
    for output, fix in (("file:///tmp/runs", "write it as a path (/tmp/runs)"), ("memory://runs", "a bucket")):
        _, problems = validate_data(spec_data(output_dir=output))
        (problem,) = [p for p in problems if p.code == "unsupported_scheme"]
        assert problem.is_error and fix in problem.hint, problem


def test_a_tensor_axis_that_does_not_divide_the_kv_heads_is_a_warning_for_either_model():
    # An error for the student's kv heads alone (the trainer runs it: those weights stay whole on the axis), none for
    # the teacher's, and none for `tensor: -1` filling to the same size.
    found = [
        (p.code, p.severity, "student's" in p.message)
        for p in report_for(spec_data(**{"mesh.tensor": 4})).problems
        if p.code == "tensor_axis_indivisible"
    ]
    assert found == [("tensor_axis_indivisible", "warning", True), ("tensor_axis_indivisible", "warning", False)]


def test_a_tensorboard_dir_inside_the_runs_checkpoints_is_a_warning():
    # Accepted without a word: an events folder among the checkpoint steps (as `export -o` there is refused).
    from distillspec.specfile import validate_data

    def codes_for(folder: str) -> list[str]:
        data = spec_data(output_dir="runs/x/..", name="t", **{"logging.tensorboard_dir": folder})
        return [p.code for p in validate_data(data)[1]]

    assert "tensorboard_dir_in_checkpoints" in codes_for("runs/t/checkpoints")  # runs/x/.. is runs
    assert "tensorboard_dir_in_checkpoints" in codes_for("./runs//t/checkpoints/events/")
    assert "tensorboard_dir_in_checkpoints" not in codes_for("runs")  # the run folder itself: harmless
    assert "tensorboard_dir_in_checkpoints" not in codes_for("runs/tensorboard")


def test_a_sentencepiece_tokenizer_is_an_error_before_launch():
    # MaxText's default kind; the trainer reads tokenizer.json files and stopped at start.
    assert "tokenizer_sentencepiece" in codes(spec_data(**{"data.tokenizer": "gs://bkt/llama/tokenizer.model"}))
    assert "tokenizer_sentencepiece" not in codes(spec_data(**{"data.tokenizer": "gs://bkt/llama/tokenizer.json"}))


def test_kv_heads_that_do_not_divide_the_query_heads_are_refused_before_launch():
    # tiny-2l has 4 query heads: 3 kv heads passed, and the trainer failed at start ("cannot reshape array")
    (problem,) = report_for(spec_data(**{"student.num_kv_heads": 3})).problems
    assert (problem.code, problem.dotted_loc) == ("kv_heads_indivisible", "student.num_kv_heads")
    assert problem.hint == "set student.num_kv_heads to a divisor of 4 (1, 2, 4)"
    assert report_for(spec_data(**{"student.num_kv_heads": 2})).problems == ()
