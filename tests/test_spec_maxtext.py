"""MaxText's distillation.yml loads into the same spec, reports problems with MaxText's keys, and round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distillspec import maxtext_format
from distillspec.specfile import read_spec_file, read_spec_text, validate_data

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"

# MaxText's own starter config (src/maxtext/configs/post_train/distillation.yml), with the teacher path users add.
MAXTEXT_STARTER = """\
base_config: "base.yml"
student_overrides:
  model_name: "llama3.1-8b"
teacher_overrides:
  model_name: "llama3.1-8b"
  load_parameters_path: "gs://bucket/teacher/0/items"
distill_alpha: 0.5
distill_temperature: 1.0
hf_path: "OptimalScale/ClimbMix"
dataset_type: "hf"
tokenizer_path: "meta-llama/Llama-3.1-8B"
tokenizer_type: "huggingface"
max_target_length: 2048
packing: true
steps: 200000
checkpoint_period: 2000
log_period: 10
save_checkpoint_on_completion: true
per_device_batch_size: 2
gradient_accumulation_steps: 1
learning_rate: 2.0e-4
learning_rate_schedule_steps: 200000
warmup_steps_fraction: 0.1
learning_rate_final_fraction: 0.1
"""
# The same with what the bundled trainer runs: a Hugging Face teacher folder and text files.
RUNNABLE = (
    MAXTEXT_STARTER.replace("gs://bucket/teacher/0/items", "gs://bucket/teacher-hf")
    .replace(
        'hf_path: "OptimalScale/ClimbMix"\ndataset_type: "hf"',
        'dataset_path: "gs://bucket/corpus/*.txt"\ndataset_type: "text"',
    )
    .replace('tokenizer_path: "meta-llama/Llama-3.1-8B"', 'tokenizer_path: "gs://bucket/teacher-hf/tokenizer.json"')
    + 'dtype: "float32"\nmax_num_checkpoints_to_keep: 3\n'  # stated: MaxText's are bfloat16 and every one
)


def own(problems):
    """The problems a test is about: the warning of MaxText defaults a short file leaves out aside."""
    return [p for p in problems if p.code != "maxtext_default_differs"]


def test_maxtext_starter_config_is_rejected_where_the_trainer_cannot_run_it():
    """The guide's starter reads into the spec, but its hub dataset is an error: the trainer reads no network at
    run time (its MaxText `…/0/items` checkpoint it does read)."""
    report = read_spec_text(MAXTEXT_STARTER, file="distillation.yml")
    assert report.format == "maxtext" and not report.ok
    assert [p.code for p in report.problems if p.is_error] == ["hub_dataset_not_read"]
    assert all(p.hint for p in report.problems)
    # the one default it leaves to MaxText's base.yml that distillctl's differs from: said, not silently float32
    (warning,) = [p for p in report.problems if not p.is_error]
    assert warning.code == "maxtext_default_differs" and warning.message.endswith(
        "dtype float32 (MaxText: bfloat16), max_num_checkpoints_to_keep 3 (MaxText: every one)"
    )


def test_maxtext_defaults_a_file_leaves_out_are_said_where_distillctls_differ():
    report = read_spec_text("student_overrides: {model_name: tiny-2l}\nmode: pretrain\n", file="d.yml")
    (warning,) = [p for p in report.problems if p.code == "maxtext_default_differs"]
    for said in ("steps 1000 (MaxText: 150001)", "learning_rate 0.0003 (MaxText: 3e-05)", "log_period 10"):
        assert said in warning.message, warning.message
    both = "student_overrides: {model_name: tiny-2l, dtype: float32}\nteacher_overrides: {dtype: float32}\n"
    assert "dtype" not in [p.message for p in read_spec_text(both, file="d.yml").problems if "MaxText:" in p.message][0]


def test_runnable_maxtext_config_validates():
    report = read_spec_text(RUNNABLE, file="distillation.yml")
    assert report.format == "maxtext"
    assert report.ok and report.problems == (), report.problems
    spec = report.spec
    assert spec.student.model == spec.teacher.model == "llama3.1-8b"
    assert spec.loss.alpha.start == 0.5 and spec.loss.temperature.start == 1.0 and not spec.loss.feature_loss_on
    assert spec.batch.per_device_batch_size == 2 and spec.batch.max_target_length == 2048
    assert spec.data.source == "text" and spec.data.path == "gs://bucket/corpus/*.txt"
    assert spec.data.tokenizer == "gs://bucket/teacher-hf/tokenizer.json"  # MaxText's tokenizer_path
    assert spec.checkpoint.every_steps == 2000 and spec.steps == 200000


def test_maxtext_file_without_teacher_path_says_so_in_maxtext_terms():
    report = read_spec_text(RUNNABLE.replace('  load_parameters_path: "gs://bucket/teacher-hf"\n', ""))
    [problem] = [p for p in report.problems if p.is_error]
    assert problem.code == "teacher_path_missing"
    assert problem.dotted_loc == "teacher_overrides.load_parameters_path"
    assert "teacher_overrides.load_parameters_path" in problem.hint


def test_a_maxtext_overrides_block_that_is_not_a_mapping_is_one_error():
    import re

    text = re.sub(r"student_overrides:\n(  .*\n)+", "student_overrides: 5\n", RUNNABLE)
    assert "student_overrides: 5" in text
    [problem] = [p for p in read_spec_text(text).problems if p.is_error]
    assert (problem.code, problem.dotted_loc) == ("wrong_type", "student_overrides")


def test_maxtext_none_strings_mean_null():
    text = RUNNABLE + "distill_alpha_end: None\ndistill_layer_indices: None\n"
    report = read_spec_text(text)
    assert report.ok and report.spec.loss.alpha.end is None


def test_maxtext_typos_are_errors_with_suggestions_and_foreign_keys_are_warnings():
    text = RUNNABLE + "distill_alpa: 0.7\nper_device_batch_sise: 4\nici_sequence_parallelism: 1\n"
    report = read_spec_text(text, file="d.yml")
    by_key = {p.dotted_loc: p for p in report.problems}
    assert by_key["distill_alpa"].code == "unknown_key" and "distill_alpha" in by_key["distill_alpa"].hint
    assert by_key["per_device_batch_sise"].code == "unknown_key"
    assert by_key["ici_sequence_parallelism"].severity == "warning"
    assert by_key["distill_alpa"].line == len(RUNNABLE.splitlines()) + 1


def test_maxtext_keys_the_trainer_matches_are_said_when_their_value_asks_for_something_else():
    # Accepted whatever their value: an SGD run trained with AdamW, a 50k-step schedule decayed over 200k, exit 0.
    keys = ("opt_type", "packing", "learning_rate_schedule_steps", "save_checkpoint_on_completion", "tokenizer_type")
    base = "".join(line + "\n" for line in RUNNABLE.splitlines() if not line.startswith(keys))
    matched = read_spec_text(base + "opt_type: adamw\npacking: true\nlearning_rate_schedule_steps: -1\n").problems
    (unstated,) = matched  # tokenizer_type left out beside a tokenizer.json: MaxText's default reads SentencePiece
    assert (
        unstated.code == "maxtext_default_differs"
        and "tokenizer_type huggingface (MaxText: sentencepiece)" in unstated.message
    )
    text = base + (
        "opt_type: sgd\npacking: false\nlearning_rate_schedule_steps: 50000\nsave_checkpoint_on_completion: false\n"
        "tokenizer_type: sentencepiece\nasync_checkpointing: false\n"
    )
    by_key = {p.dotted_loc: p for p in read_spec_text(text, file="d.yml").problems}
    assert set(by_key) == {
        "opt_type",
        "packing",
        "learning_rate_schedule_steps",
        "save_checkpoint_on_completion",
        "tokenizer_type",
    }
    assert by_key["opt_type"].code == "maxtext_value_unsupported" and by_key["opt_type"].is_error
    assert "trains with AdamW" in by_key["opt_type"].message and "'adamw'" in by_key["opt_type"].hint
    assert all(p.severity == "warning" for k, p in by_key.items() if k != "opt_type")
    assert "schedule spans `steps`" in by_key["learning_rate_schedule_steps"].message
    steps = next(line for line in RUNNABLE.splitlines() if line.startswith("steps:")).split(":")[1].strip()
    assert not own(read_spec_text(base + f"learning_rate_schedule_steps: {steps}\n").problems)  # the run's own


def test_maxtext_beta_asymmetry_cannot_happen():
    # MaxText's CLI overrides reach only the student; here β lives once and feature rules check both models.
    text = RUNNABLE + "distill_beta: 1.0\ndistill_layer_indices: [0, 1]\n"
    text = text.replace("teacher_overrides:\n", "teacher_overrides:\n  scan_layers: false\n")
    report = read_spec_text(text)
    codes = {p.code for p in report.problems if p.is_error}
    assert "feature_loss_needs_scan_layers" in codes
    [problem] = [p for p in report.problems if p.code == "feature_loss_needs_scan_layers"]
    assert problem.dotted_loc == "teacher_overrides.scan_layers"


def test_maxtext_top_level_model_keys_apply_to_both_models():
    text = RUNNABLE + "scan_layers: false\nvocab_size: 1000\n"
    spec = read_spec_text(text).spec
    assert spec.student.vocab_size == spec.teacher.vocab_size == 1000
    assert not spec.student.scan_layers and not spec.teacher.scan_layers


@pytest.mark.parametrize("key", ["per_device_batch_size", "max_target_length", "gradient_accumulation_steps"])
def test_maxtext_batch_shape_in_overrides_is_rejected(key):
    text = RUNNABLE.replace("student_overrides:\n", f"student_overrides:\n  {key}: 8\n")
    report = read_spec_text(text)
    [problem] = [p for p in report.problems if p.is_error]
    assert problem.code == "batch_shape_in_override"
    assert problem.dotted_loc == f"student_overrides.{key}"
    assert "set in the student's block (8) while the teacher gets" in problem.message and "top level" in problem.hint
    # the same value in both blocks: one batch for both, as MaxText takes it (four errors that contradicted
    # themselves: "the student gets 1.0 (from the default)" of a block that set it)
    both = text.replace("teacher_overrides:\n", f"teacher_overrides:\n  {key}: 8\n")
    report = read_spec_text(both)
    assert report.ok and getattr(report.spec.batch, key) == 8, report.problems
    other = text.replace("teacher_overrides:\n", f"teacher_overrides:\n  {key}: 4\n")
    said = [p.message for p in read_spec_text(other).problems if p.code == "batch_shape_in_override"]
    assert len(said) == 2 and "student's block (8) while the teacher gets 4 (from its block)" in said[0], said
    assert "teacher's block (4) while the student gets 8 (from its block)" in said[1], said


def test_maxtext_model_keys_map_to_shapes():
    text = RUNNABLE.replace(
        'student_overrides:\n  model_name: "llama3.1-8b"\n',
        'student_overrides:\n  model_name: "llama3.1-8b"\n  base_num_decoder_layers: 24\n  base_mlp_dim: 8192\n',
    )
    shape = read_spec_text(text).spec.student.shape()
    assert (shape.num_layers, shape.mlp_dim, shape.emb_dim) == (24, 8192, 4096)


def test_example_maxtext_file_matches_native_example():
    maxtext = read_spec_file(SWEEPS / "maxtext-distillation.yml").spec
    native = read_spec_file(SWEEPS / "llama3.1-8b-pruning-recovery.yaml").spec
    assert maxtext.loss == native.loss.model_copy(update={"layer_indices": native.layer_indices()})
    assert maxtext.student.shape() == native.student.shape()


@pytest.mark.parametrize("name", ["llama3.1-8b-pruning-recovery.yaml", "tiny.yaml", "maxtext-distillation.yml"])
def test_round_trip_through_maxtext_layout(name):
    spec = read_spec_file(SWEEPS / name).spec
    native = spec.model_dump(mode="json")
    native["loss"]["layer_indices"] = spec.layer_indices()
    flat = maxtext_format.to_maxtext(native)
    # What we write is YAML MaxText can read, and reads back to the same spec.
    again = read_spec_text(yaml.safe_dump(flat)).spec
    translation = maxtext_format.from_maxtext(flat)
    assert translation.problems == []
    assert again == validate_data(translation.data)[0]
    assert again.resolved() == spec.resolved()


@pytest.mark.parametrize(
    "name, mode", [("tiny-teacher.yaml", "pretrain"), ("tiny-teacher-logits.yaml", "teacher_logits")]
)
def test_specs_that_do_not_distill_have_no_maxtext_form_and_the_error_names_their_mode(name, mode):
    spec = read_spec_file(SWEEPS / name).spec
    with pytest.raises(maxtext_format.NotRepresentable, match=f"`mode: {mode}` spec"):
        maxtext_format.to_maxtext(spec.model_dump(mode="json"))


def test_maxtext_files_hear_their_own_keys_in_problems_and_fixes():
    head = "base_config: base.yml\nrun_name: mx\nsteps: 10\n"
    # A missing model name: `model_name`, not the native `model`.
    text = head + "student_overrides:\n  model_name: tiny-2l\nteacher_overrides:\n  load_parameters_path: /x\n"
    (problem,) = [p for p in read_spec_text(text).problems if p.is_error]
    assert problem.loc == ("teacher_overrides", "model_name") and "add `model_name:`" in problem.hint
    # β offline: distill_beta, not loss.beta; and an offline file can set the cache's k (it was ignored, then
    # required: no MaxText file could pass).
    text = head + "model_name: tiny-2l\noffline_data_dir: /cache\ntop_k: 8\ndistill_beta: 0.5\n"
    (problem,) = own(read_spec_text(text).problems)
    assert problem.code == "offline_feature_loss" and "set distill_beta to 0.0" in problem.hint
    report = read_spec_text(text.replace("distill_beta: 0.5\n", ""))
    assert report.ok and not own(report.problems) and report.spec.top_k == 8
    # Layer indices: distill_layer_indices.
    text = head + "student_overrides:\n  model_name: tiny-2l\nteacher_overrides:\n  model_name: tiny-4l\n"
    text += "  load_parameters_path: /x\ndistill_beta: 0.5\n"
    (problem,) = own(read_spec_text(text).problems)
    assert (
        problem.code == "layer_indices_missing" and "distill_layer_indices: full_depth:2" in problem.hint
    )  # the student has 2
    # never written: MaxText's config refuses a key it does not have (its trainer reads k from the cache)
    assert "top_k" not in maxtext_format.to_maxtext({"mode": "distill", "offline_data_dir": "/cache", "top_k": 8})


def test_the_guides_names_for_a_models_shape_set_it():
    # "varying e.g. `model_name`, `num_decoder_layers` ... per side": it was ignored with a warning, and the
    # student kept the registry model's depth.
    text = "base_config: base.yml\nrun_name: mx\nsteps: 10\nstudent_overrides:\n  model_name: tiny-4l\n"
    text += "  num_decoder_layers: 2\n  num_query_heads: 2\nteacher_overrides:\n  model_name: tiny-4l\n"
    text += "  load_parameters_path: /x\n"
    report = read_spec_text(text)
    assert report.ok and not own(report.problems), report.problems
    assert report.spec.student.shape().num_layers == 2 and report.spec.student.shape().num_query_heads == 2
    assert (
        "num_decoder_layers" not in maxtext_format.to_maxtext(report.spec.model_dump(mode="json"))["student_overrides"]
    )


def test_a_top_level_model_key_wrong_for_both_models_is_said_once():
    text = "base_config: base.yml\nrun_name: mx\nsteps: 10\nmodel_name: tiny-2l\nscan_layers: 'True'\n"
    text += "teacher_overrides:\n  model_name: tiny-4l\n  load_parameters_path: /x\n"
    problems = own(read_spec_text(text).problems)
    assert [(p.code, p.line) for p in problems] == [("wrong_type", 5)], problems


@pytest.mark.parametrize(
    ("policy", "remat", "warned"),
    [("full", "full", False), ("minimal", "dots", False), ("none", "none", False), ("save_qkv_proj", "dots", True)],
)
def test_remat_policy_sets_the_students_remat(policy, remat, warned):
    # remat_policy was "not used by the trainer and ignored": a MaxText user's memory setting was dropped.
    report = read_spec_text(RUNNABLE + f"remat_policy: {policy}\n", file="distillation.yml")
    assert report.ok and report.spec.student.remat == remat
    assert [p.code for p in report.problems] == (["maxtext_value_ignored"] if warned else [])


def test_an_unknown_remat_policy_is_an_error_in_maxtexts_terms():
    report = read_spec_text(RUNNABLE + "remat_policy: sometimes\n", file="distillation.yml")
    (problem,) = report.problems
    assert (problem.code, problem.dotted_loc) == ("bad_value", "remat_policy") and "minimal" in problem.hint


def test_eval_interval_and_eval_steps_set_the_held_out_evaluation():
    text = RUNNABLE + "eval_interval: 500\neval_steps: 8\n"
    report = read_spec_text(text, file="d.yml")  # eval reads documents; this file's data is plain text
    (error,) = [p for p in report.problems if p.is_error]
    assert error.code == "eval_needs_documents" and error.dotted_loc == "eval_interval" and error.line > 1
    data = maxtext_format.from_maxtext(yaml.safe_load(text)).data
    assert data["eval"] == {"every_steps": 500, "batches": 8}
    off = maxtext_format.from_maxtext(yaml.safe_load(RUNNABLE + "eval_interval: -1\neval_steps: -1\n")).data
    assert "eval" not in off  # MaxText's default: no evaluation


def test_eval_steps_without_an_eval_interval_that_evaluates_is_unused_as_in_maxtext():
    # It made an eval block that evaluated every 100 steps (the spec's default), where MaxText never evaluates.
    for tail, said in (("", "is -1 (MaxText's default: never)"), ("eval_interval: -1\n", "-1 turns it off")):
        text = RUNNABLE + "eval_steps: 8\n" + tail
        assert "eval" not in maxtext_format.from_maxtext(yaml.safe_load(text)).data
        (problem,) = [p for p in read_spec_text(text, file="d.yml").problems if p.code == "eval_steps_unused"]
        assert problem.severity == "warning" and problem.dotted_loc == "eval_steps" and said in problem.message


def test_remat_and_eval_convert_back_to_maxtext_keys():
    native = {
        "mode": "distill",
        "student": {"model": "tiny-2l", "remat": "dots"},
        "eval": {"every_steps": 5, "batches": 2},
    }
    flat = maxtext_format.to_maxtext(native)
    assert flat["remat_policy"] == "minimal" and flat["eval_interval"] == 5 and flat["eval_steps"] == 2
    assert "remat_policy" not in maxtext_format.to_maxtext({"mode": "distill", "student": {"remat": "full"}})


def test_a_checkpoints_constants_round_trip_through_maxtexts_own_keys():
    # Written as MaxText names them (rope_max_timescale, logits_via_embedding, normalization_layer_epsilon,
    # sliding_window_size); RoPE scaling has no MaxText key and is said so by convert.
    spec = read_spec_file(SWEEPS / "tiny.yaml").spec
    native = spec.model_dump(mode="json")
    native["teacher"] |= {"rope_theta": 100000.0, "tie_embeddings": True, "norm_eps": 1e-6}
    native["loss"]["layer_indices"] = spec.layer_indices()
    flat = maxtext_format.to_maxtext(native)
    assert flat["teacher_overrides"]["rope_max_timescale"] == 100000.0
    assert flat["teacher_overrides"]["logits_via_embedding"] is True
    assert flat["teacher_overrides"]["normalization_layer_epsilon"] == 1e-6
    again = read_spec_text(yaml.safe_dump(flat)).spec
    assert again.teacher.shape().rope_theta == 100000.0 and again.teacher.shape().tie_embeddings


def test_maxtext_keys_for_constants_the_trainer_computes_say_where_to_state_them():
    # They were "not used by distillctl's trainer", which computes RoPE scaling.
    text = RUNNABLE.replace("teacher_overrides:\n", "teacher_overrides:\n  rope_type: llama3\n")
    (problem,) = [p for p in read_spec_text(text).problems if p.code == "maxtext_key_ignored"]
    assert "not read from this layout" in problem.message and "`rope_scaling`" in problem.hint


def test_gemmas_soft_caps_and_local_rope_base_round_trip_through_maxtexts_keys():
    # They were written nowhere and read as "not read from this layout": a Gemma 2 checkpoint's caps came back as
    # the registry's (none -> 50.0, 20.0 -> 30.0), silently but for a not_in_maxtext warning.
    native = {
        "mode": "distill",
        "student": {"model": "gemma2-2b", "attn_softcap": "none", "final_softcap": 20.0, "rope_local_theta": 2e4},
        "teacher": {"model": "gemma2-2b", "load_parameters_path": "/t"},
    }
    flat = maxtext_format.to_maxtext(native)
    assert {k: flat["student_overrides"][k] for k in ("attn_logits_soft_cap", "final_logits_soft_cap")} == {
        "attn_logits_soft_cap": 0.0,  # MaxText's "no cap"
        "final_logits_soft_cap": 20.0,
    }
    assert flat["student_overrides"]["local_rope_max_timescale"] == 2e4 and flat["override_model_config"] is True
    student = maxtext_format.from_maxtext(flat).data["student"]
    assert (student["attn_softcap"], student["final_softcap"], student["rope_local_theta"]) == ("none", 20.0, 2e4)
    unset = {"student_overrides": {"model_name": "gemma2-2b", "local_rope_max_timescale": -1}}
    assert maxtext_format.from_maxtext(unset).data["student"].get("rope_local_theta") is None  # -1: the registry's


def test_the_guides_tensorboard_dir_is_read_and_warned_about_when_unused():
    """The guide's monitoring section: events go where `tensorboard_dir` says (it was ignored with a warning)."""
    found = read_spec_text(RUNNABLE + "tensorboard_dir: gs://bucket/tb\n")
    assert found.spec.logging.tensorboard_dir == "gs://bucket/tb"
    assert not [p for p in found.problems if "tensorboard" in p.message], found.problems
    off = read_spec_text(RUNNABLE + "tensorboard_dir: gs://bucket/tb\nenable_tensorboard: false\n")
    (unused,) = [p for p in off.problems if p.code == "tensorboard_dir_unused"]
    assert unused.severity == "warning" and unused.line is not None and "tensorboard: true" in unused.hint
    (tilde,) = [p for p in read_spec_text(RUNNABLE + "tensorboard_dir: ~/tb\n").problems if p.code == "tilde_path"]
    assert tilde.line == RUNNABLE.count("\n") + 1, tilde


def test_a_tensorboard_dir_of_a_teacher_logits_run_is_said_unused():
    """A teacher_logits run logs no events: its tensorboard_dir was ignored without a word."""
    text = (SWEEPS / "tiny-teacher-logits.yaml").read_text() + "logging: {tensorboard_dir: tb}\n"
    (unused,) = [p for p in read_spec_text(text).problems if p.code == "tensorboard_dir_unused"]
    assert "a teacher_logits run writes no events" in unused.message and unused.severity == "warning"


def test_maxtexts_own_spellings_of_jsonl_and_parquet_files_are_read_as_those_sources():
    # `hf_path: json` with hf_train_files was "a Hugging Face hub dataset (json)", grain Parquet "not read yet".
    head = RUNNABLE.replace('dataset_path: "gs://bucket/corpus/*.txt"\ndataset_type: "text"\n', "")
    text = (
        head + 'dataset_type: hf\nhf_path: json\nhf_train_files: "gs://bucket/c/*.jsonl"\ntrain_data_columns: [body]\n'
    )
    report = read_spec_text(text, file="d.yml")
    assert report.ok and not own(report.problems), report.problems
    data = report.spec.data
    assert (data.source, data.path, data.text_column) == ("jsonl", "gs://bucket/c/*.jsonl", "body")
    text = head + 'dataset_type: grain\ngrain_file_type: parquet\ngrain_train_files: "gs://bucket/c/*.parquet"\n'
    report = read_spec_text(text, file="d.yml")
    assert report.ok and (report.spec.data.source, report.spec.data.path) == ("parquet", "gs://bucket/c/*.parquet")
    # and written so: convert gives MaxText the hf pipeline's json builder over the files
    flat = maxtext_format.to_maxtext(report.spec.model_dump(mode="json"))
    assert (flat["dataset_type"], flat["hf_path"], flat["hf_train_files"]) == (
        "hf",
        "parquet",
        "gs://bucket/c/*.parquet",
    )


def test_run_settings_in_student_overrides_are_the_runs_as_maxtext_reads_them():
    # MaxText's trainer runs on the student's config: learning_rate, remat_policy and distill_* set there are the
    # run's. They were dropped as "not used by distillctl's trainer" (distill_alpha: "unknown key").
    text = RUNNABLE.replace(
        'student_overrides:\n  model_name: "llama3.1-8b"\n',
        'student_overrides:\n  model_name: "llama3.1-8b"\n  learning_rate: 1.0e-4\n  remat_policy: minimal\n'
        "  distill_alpha: 0.3\n",
    )
    report = read_spec_text(text, file="d.yml")
    assert report.ok and not own(report.problems), report.problems
    spec = report.spec
    assert (spec.optimizer.learning_rate, spec.student.remat, spec.loss.alpha.start) == (1e-4, "dots", 0.3)
    # the teacher's are not the run's: said, with where they go
    text = RUNNABLE.replace(
        '  load_parameters_path: "gs://bucket/teacher-hf"\n',
        '  load_parameters_path: "gs://bucket/teacher-hf"\n  learning_rate: 1.0e-4\n',
    )
    (problem,) = own(read_spec_text(text, file="d.yml").problems)
    assert problem.code == "maxtext_key_ignored" and problem.loc == ("teacher_overrides", "learning_rate")
    assert "into student_overrides" in problem.hint and problem.line > 1


def test_convert_writes_what_maxtext_reads_a_batch_as_a_whole_number_and_no_preset_string():
    native = {"mode": "distill", "batch": {"per_device_batch_size": 2.0}, "loss": {"layer_indices": "first:2"}}
    flat = maxtext_format.to_maxtext(native)
    assert flat["per_device_batch_size"] == 2 and isinstance(flat["per_device_batch_size"], int)
    assert "distill_layer_indices" not in flat  # MaxText takes a list; a preset unresolved (β = 0) is unused


def test_a_model_key_set_again_without_override_model_config_is_warned_of_as_maxtext_refuses_it():
    # convert writes override_model_config for a pruned student; validate passed the same file without it.
    text = RUNNABLE.replace(
        'student_overrides:\n  model_name: "llama3.1-8b"\n',
        'student_overrides:\n  model_name: "llama3.1-8b"\n  base_num_decoder_layers: 30\n',
    )
    (problem,) = own(read_spec_text(text, file="d.yml").problems)
    assert problem.code == "maxtext_override_refused" and problem.loc == (
        "student_overrides",
        "base_num_decoder_layers",
    )
    assert not own(read_spec_text(text + "override_model_config: true\n", file="d.yml").problems)


def test_convert_writes_one_data_path_key_whatever_the_column():
    # JSONL with the default column was written as both hf_train_files and dataset_path; text files with another
    # column lost their path.
    jsonl = maxtext_format.to_maxtext(
        {"mode": "distill", "data": {"source": "jsonl", "path": "/d", "text_column": "text"}}
    )
    assert jsonl["hf_train_files"] == "/d" and "dataset_path" not in jsonl and "train_data_columns" not in jsonl
    text = maxtext_format.to_maxtext({"mode": "distill", "data": {"source": "text", "path": "/t", "text_column": "x"}})
    assert text["dataset_path"] == "/t", text


def test_every_run_setting_in_student_overrides_is_the_runs_and_counts_as_stated():
    # opt_type: sgd there passed silently (AdamW trained), eval and data keys were "not used", and keys set there
    # were listed by maxtext_default_differs with values the run did not have.
    base = RUNNABLE.replace(
        'student_overrides:\n  model_name: "llama3.1-8b"\n',
        'student_overrides:\n  model_name: "llama3.1-8b"\n  opt_type: sgd\n',
    )
    (problem,) = [p for p in read_spec_text(base, file="d.yml").problems if p.is_error]
    assert problem.code == "maxtext_value_unsupported" and problem.loc == ("student_overrides", "opt_type")
    moved = (
        RUNNABLE.replace("\nsteps: 200000\n", "\n")
        .replace("schedule_steps: 200000", "schedule_steps: -1")
        .replace(
            'student_overrides:\n  model_name: "llama3.1-8b"\n',
            'student_overrides:\n  model_name: "llama3.1-8b"\n  steps: 20\n  eval_interval: 5\n',
        )
        .replace('dataset_path: "gs://bucket/corpus/*.txt"\ndataset_type: "text"\n', "dataset_type: synthetic\n")
    )
    report = read_spec_text(moved, file="d.yml")
    assert report.ok and not report.problems, report.problems  # steps stated (in the block); period past the end
    assert (report.spec.steps, report.spec.eval.every_steps) == (20, 5)


def test_maxtext_override_refused_only_where_the_model_file_sets_another_value():
    def refused(block: str, top: str = "") -> list:
        text = (
            RUNNABLE.replace(
                'student_overrides:\n  model_name: "llama3.1-8b"\n',
                'student_overrides:\n  model_name: "llama3.1-8b"\n' + block,
            )
            + top
        )
        return [p.loc for p in read_spec_text(text, file="d.yml").problems if p.code == "maxtext_override_refused"]

    assert refused("  base_num_decoder_layers: 30\n") == [("student_overrides", "base_num_decoder_layers")]
    assert refused("  base_num_decoder_layers: 32\n") == []  # llama3.1-8b.yml's own value
    assert refused("  sliding_window_size: 0\n  attn_logits_soft_cap: 0.0\n") == []  # base.yml's "none": llama's own
    assert refused("  base_num_decoder_layers: 30\n  override_model_config: true\n") == []  # the block's own say
    # qwen3-1.7b has a MaxText config (it was said to have none, and its overrides went unchecked)
    assert "qwen3-1.7b" not in maxtext_format.NO_MAXTEXT_CONFIG


def test_a_converted_file_passes_validate_strict_and_names_maxtexts_own_keys_in_its_problems(tmp_path):
    from distillspec.specfile import read_spec_text as read

    # data_shuffle_seed was written without the shuffle_window that gives it a meaning, and the file failed --strict
    native = {"mode": "distill", "data": {"source": "jsonl", "path": "/d", "seed": 7, "shuffle_window": 100}}
    assert "data_shuffle_seed" not in maxtext_format.to_maxtext(native)
    # an eval set without files beside JSONL: the hint names hf_eval_files, not eval.path at `eval_interval.path`
    text = RUNNABLE.replace(
        'dataset_path: "gs://bucket/corpus/*.txt"\ndataset_type: "text"\n',
        "dataset_type: hf\nhf_path: json\nhf_train_files: /d\n",
    )
    (problem,) = [p for p in read(text + "eval_interval: 50\n", file="d.yml").problems if p.is_error]
    assert problem.code == "eval_path_missing" and problem.dotted_loc == "hf_eval_files", problem
    assert "set hf_eval_files" in problem.hint and "eval.path" not in problem.hint, problem


def test_problems_in_a_maxtext_file_say_maxtexts_keys_and_their_fixes_work_when_written_into_it():
    """Hints named distillctl's spellings (`remove enabled: false`, `set tensorboard: true`, `use schedule:
    constant`, `keep end: 0.1`, `point output_dir at`): written into the MaxText file, each left the problem and
    added an ignored-key warning. Sentences about a field named its native leaf (`every_steps must be ...`)."""

    def problems(text: str) -> list:
        return own(read_spec_text(text, file="d.yml").problems)

    def said(text: str, code: str) -> str:
        (problem,) = [p for p in problems(text) if p.code == code]
        return f"{problem.message} → {problem.hint}"

    base = RUNNABLE
    fixes = [  # (the file's mistake, its code, the MaxText words said, the fix as the hint says it)
        ("enable_checkpointing: false\n", "checkpoint_disabled", "set enable_checkpointing: true", None),
        (
            "enable_tensorboard: false\ntensorboard_dir: gs://b/tb\n",
            "tensorboard_dir_unused",
            "or set enable_tensorboard: true",
            "enable_tensorboard: true\ntensorboard_dir: gs://b/tb\n",
        ),
        (
            "distill_alpha_schedule: cosine\n",
            "schedule_without_end",
            "or set distill_alpha_schedule: constant",
            "distill_alpha_schedule: constant\n",
        ),
        (
            "distill_beta: 0.0\ndistill_beta_end: 0.1\ndistill_layer_indices: [1]\n",
            "beta_ramp_from_zero",
            "set distill_beta to a small positive value such as 1e-6 and keep distill_beta_end: 0.1",
            "distill_beta: 1.0e-6\ndistill_beta_end: 0.1\ndistill_layer_indices: [1]\n",
        ),
    ]
    for mistake, code, words, fix in fixes:
        text = said(base + mistake, code)
        assert words in text, text
        if fix is not None:
            fixed = problems(base + fix)
            assert not [p for p in fixed if p.code in (code, "maxtext_key_ignored")], fixed
    assert "checkpoint_period must be greater than 0, got -5" in said(
        base.replace("checkpoint_period: 2000", "checkpoint_period: -5"), "out_of_range"
    )
    assert said(base + "max_num_checkpoints_to_keep: 0\n", "out_of_range").startswith(
        "max_num_checkpoints_to_keep must be"
    )
    assert said(base + "distill_alpha_schedule: exponential\n", "bad_value").startswith("distill_alpha_schedule must")
    output = said(base + "base_output_directory: s3://b/out\n", "unsupported_scheme")
    assert "output_dir" not in output.replace("base_output_directory", ""), output
    assert "(adam_weight_decay, adam_b1, adam_b2, adam_eps)" in said(
        base + "opt_type: sgd\n", "maxtext_value_unsupported"
    )


def test_values_quoted_from_a_maxtext_file_are_printed_as_written():
    # The rewrite of native paths ran over quoted values too: `corpus/eval.jsonl` read `corpus/eval_interval.jsonl`,
    # in the message and in the fix, which then validated clean and named a file that does not exist.
    text = RUNNABLE.replace('"gs://bucket/corpus/*.txt"', '"gs://b/loss.alpha/eval.jsonl/*.txt "')
    (problem,) = [p for p in read_spec_text(text, file="d.yml").problems if p.code == "path_malformed"]
    assert "'gs://b/loss.alpha/eval.jsonl/*.txt '" in problem.message
    assert problem.hint.endswith("'gs://b/loss.alpha/eval.jsonl/*.txt'"), problem.hint
    # and unquoted: a relative path that begins with a block's name is no field's path
    same = RUNNABLE.replace(
        'dataset_path: "gs://bucket/corpus/*.txt"\ndataset_type: "text"',
        "dataset_type: hf\nhf_path: json\nhf_train_files: eval.jsonl\nhf_eval_files: eval.jsonl\neval_interval: 10",
    )
    (problem,) = [p for p in read_spec_text(same, file="d.yml").problems if p.code == "eval_is_training_data"]
    assert "hf_eval_files is hf_train_files (eval.jsonl)" in problem.message, problem.message


def test_maxtext_data_settings_get_fixes_a_maxtext_file_can_hold():
    def one(text: str, code: str):
        (problem,) = [p for p in read_spec_text(text, file="d.yml").problems if p.code == code]
        return problem

    # hf + hf_path json without files read as a hub dataset named `json` ("save it to disk first")
    no_files = RUNNABLE.replace(
        'dataset_path: "gs://bucket/corpus/*.txt"\ndataset_type: "text"', 'dataset_type: "hf"\nhf_path: "json"'
    )
    missing = one(no_files, "data_path_missing")
    assert missing.loc == ("hf_train_files",) and "set hf_train_files to the jsonl file(s)" in missing.hint
    assert missing.line == no_files.splitlines().index('hf_path: "json"') + 1  # at the key that asks for them
    assert not [p for p in read_spec_text(no_files, file="d.yml").problems if p.code == "hub_dataset_not_read"]
    # .jsonl files read as text: the fix is MaxText's record reader, not distillctl's `text_column`
    records = RUNNABLE.replace("corpus/*.txt", "corpus/*.jsonl")
    assert "dataset_type: hf with hf_path: json" in one(records, "text_source_of_records").hint
    seeded = no_files.replace('hf_path: "json"', 'hf_path: "json"\nhf_train_files: "gs://b/c/*.jsonl"')
    seed = one(seeded + "data_shuffle_seed: 7\n", "data_seed_changes_nothing")
    assert "this layout has no key for the trainer's shuffle window" in seed.hint
    assert "set hf_eval_files" in one(seeded + "eval_interval: 100\n", "eval_path_missing").hint
    # a dataset_path beside the files hf_path reads was read over without a word
    unread = one(seeded + 'dataset_path: "gs://b/other/*.jsonl"\n', "maxtext_key_ignored")
    assert unread.loc == ("dataset_path",) and "the files are hf_train_files's" in unread.message


def test_a_native_block_in_a_maxtext_file_is_an_error_naming_maxtexts_keys_not_a_reason_to_read_it_as_native():
    # One `loss:` read the whole file as distillctl's layout (34 errors: "add `student:`"); a `checkpoint: {enabled:
    # false}` was an ignored "MaxText key" and the run saved checkpoints.
    for block, keys in (("loss:\n  alpha: 0.5\n", "distill_alpha"), ("checkpoint:\n  enabled: false\n", "enable_")):
        report = read_spec_text(RUNNABLE + block, file="d.yml")
        (problem,) = [p for p in report.problems if p.is_error]
        assert problem.code == "unknown_key" and "distillctl's own layout" in problem.message
        assert keys in problem.hint and report.format == "maxtext", problem


def test_maxtexts_steps_minus_one_takes_the_schedules_steps_and_a_refused_steps_is_not_judged_as_the_default():
    report = read_spec_text(RUNNABLE.replace("steps: 200000\ncheckpoint", "steps: -1\ncheckpoint"), file="d.yml")
    assert report.spec is not None and report.spec.steps == 200000, report.problems
    # steps refused: checkpoint_after_end judged the default 1000 ("lower checkpoint_period")
    refused = read_spec_text(RUNNABLE.replace("steps: 200000\ncheckpoint", "steps: 2.5\ncheckpoint"), file="d.yml")
    assert "checkpoint_after_end" not in [p.code for p in refused.problems], refused.problems


def test_held_out_files_without_an_evaluation_are_said_unread():
    text = RUNNABLE.replace(
        'dataset_path: "gs://bucket/corpus/*.txt"\ndataset_type: "text"',
        'dataset_type: "hf"\nhf_path: "json"\nhf_train_files: "gs://b/train/*.jsonl"\nhf_eval_files: "gs://b/e/*.jsonl"',
    )
    (problem,) = [p for p in read_spec_text(text, file="d.yml").problems if p.code == "eval_steps_unused"]
    assert problem.loc == ("hf_eval_files",) and "remove hf_eval_files" in problem.hint
    assert not [p for p in read_spec_text(text + "eval_interval: 50\n").problems if p.code == "eval_steps_unused"]


def test_a_missing_override_block_says_to_add_the_block_at_the_other_ones_line():
    # "add `model_name:`" at the file's first line: written there, it was the top level's (both models')
    text = RUNNABLE.replace(
        'teacher_overrides:\n  model_name: "llama3.1-8b"\n  load_parameters_path: "gs://bucket/teacher-hf"\n', ""
    )
    assert "teacher_overrides" not in text
    (problem,) = [p for p in read_spec_text(text, file="d.yml").problems if p.is_error]
    assert problem.hint == "add a `teacher_overrides:` block with `model_name:` and `load_parameters_path:`"
    assert problem.line == text.splitlines().index("student_overrides:") + 1


def test_a_check_failing_for_both_models_at_one_top_level_key_is_said_once_of_both():
    # Two errors on one line, "the student has scan_layers: false" and "the teacher has ...", for one key.
    text = RUNNABLE + "distill_beta: 1.0\ndistill_layer_indices: [1]\nscan_layers: false\n"
    problems = [p for p in own(read_spec_text(text, file="d.yml").problems) if p.code.startswith("feature_loss")]
    assert [p.code for p in problems] == ["feature_loss_needs_scan_layers"], problems
    assert "both models have scan_layers: false" in problems[0].message
