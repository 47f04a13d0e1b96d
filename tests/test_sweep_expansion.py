"""Expansion: product, zip, exclude, seeds, baselines, prerequisites, and per-point validation errors."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sweep_support import SPEC, error_codes, expanded, load, sweep_data, write

from orchestrator.core.expansion import DEFAULT_MAX_POINTS, GridTooLarge, expand


def values(result, *paths):
    return [tuple(p.axis_values.get(k) for k in paths) for p in result.points]


def test_the_product_is_in_file_order_with_the_last_axis_fastest(tmp_path):
    result = expanded(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.5], "loss.temperature": [1.0, 2.0, 4.0]}))
    assert values(result, "loss.alpha.end", "loss.temperature") == [
        (0.3, 1.0),
        (0.3, 2.0),
        (0.3, 4.0),
        (0.5, 1.0),
        (0.5, 2.0),
        (0.5, 4.0),
    ]
    assert [p.index for p in result.points] == list(range(6))
    assert result.points[4].spec.loss.alpha.end == 0.5 and result.points[4].spec.loss.temperature.start == 2.0


def test_no_axes_is_the_base_spec_alone(tmp_path):
    result = expanded(tmp_path, sweep_data())
    assert len(result.points) == 1 and dict(result.points[0].axis_values) == {}


def test_zip_moves_paths_together(tmp_path):
    data = sweep_data(
        axes={"loss.alpha.end": [0.3, 0.5]},
        zip=[{"loss.feature_loss_type": ["cosine", "l2"], "loss.beta.start": [1.0, 0.05]}],
    )
    result = expanded(tmp_path, data)
    assert values(result, "loss.alpha.end", "loss.feature_loss_type", "loss.beta.start") == [
        (0.3, "cosine", 1.0),
        (0.3, "l2", 0.05),
        (0.5, "cosine", 1.0),
        (0.5, "l2", 0.05),
    ]


def test_exclude_drops_matching_points_and_warns_about_unused_entries(tmp_path):
    data = sweep_data(
        axes={"loss.alpha.end": [0.3, 0.5], "loss.temperature": [1.0, 2.0]},
        exclude=[{"loss.alpha.end": 0.5, "loss.temperature": 1}, {"loss.alpha.end": 0.9}],
    )
    result = expanded(tmp_path, data)
    assert values(result, "loss.alpha.end", "loss.temperature") == [(0.3, 1.0), (0.3, 2.0), (0.5, 2.0)]
    assert result.excluded == 1 and result.grid_size == 4
    assert [(p.code, p.loc) for p in result.problems] == [("exclude_unused", ("exclude", 1))]


def test_an_exclude_that_removes_every_point_is_an_error_unless_a_baseline_runs(tmp_path):
    data = sweep_data(axes={"loss.alpha.end": [0.3, 0.7]}, exclude=[{"loss.alpha.end": 0.3}, {"loss.alpha.end": 0.7}])
    (problem,) = expanded(tmp_path, data).problems
    assert (problem.code, problem.severity, problem.loc) == ("exclude_everything", "error", ("exclude",))
    assert problem.line and "all 2 point(s)" in problem.message
    data["baseline"] = [{"loss.alpha": 0.0}]
    result = expanded(tmp_path, data)
    assert [(p.code, p.severity) for p in result.problems] == [("exclude_everything", "warning")]
    assert len(result.points) == 1 and result.points[0].is_baseline


def test_seeds_repeat_every_point_and_set_the_spec_seed(tmp_path):
    result = expanded(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.5]}, seeds=[0, 7]))
    assert values(result, "loss.alpha.end", "seed") == [(0.3, 0), (0.3, 7), (0.5, 0), (0.5, 7)]
    assert [p.seed for p in result.points] == [0, 7, 0, 7] == [p.spec.seed for p in result.points]


def test_baselines_come_last_once_per_seed_and_are_never_excluded(tmp_path):
    data = sweep_data(
        axes={"loss.alpha.end": [0.3]},
        seeds=[1, 2],
        exclude=[{"seed": 2}],
        baseline=[{"loss.alpha": 0.0, "loss.beta": 0.0}],
    )
    result = expanded(tmp_path, data)
    assert [(p.is_baseline, p.seed) for p in result.points] == [(False, 1), (True, 1), (True, 2)]
    assert result.points[1].spec.loss.alpha.start == 0.0 and not result.points[1].spec.loss.feature_loss_on


def test_a_path_into_a_bare_number_schedule_keeps_its_start(tmp_path):
    result = expanded(
        tmp_path, sweep_data(axes={"loss.temperature.end": [1.0]}, overrides={"loss.temperature.schedule": "cosine"})
    )
    (point,) = result.points
    assert (point.spec.loss.temperature.start, point.spec.loss.temperature.end) == (2.0, 1.0)


def test_points_carry_the_run_identity_and_output_path(tmp_path):
    (point,) = expanded(tmp_path, sweep_data()).points
    assert point.spec.name == point.run_id and point.spec.output_dir == "gs://bucket/runs"
    assert point.output_path == f"gs://bucket/runs/{point.run_id}" and point.jobset_name == f"t-{point.run_id}"
    assert len(point.spec_hash) == 32 and point.sweep == "t"


def test_a_run_folder_is_named_alike_by_the_orchestrator_and_the_trainer_under_any_output_base():
    # Under `/` the orchestrator read `<run id>` (relative to where it ran) while the trainer wrote `/<run id>`;
    # under `file:///` the run was `file:/<run id>`.
    from distillspec.places import inside
    from orchestrator.core.identity import output_path

    for base, path in (("runs", "runs/r"), ("runs//", "runs/r"), ("/", "/r"), ("file:///", "file:///r"), ("", "r")):
        assert output_path(base, "r") == inside(base, "r") == path, base


def test_an_invalid_point_names_the_point_its_axis_values_and_the_value_in_the_file(tmp_path):
    path = write(tmp_path, sweep_data(axes={"loss.alpha.end": [0.5, 1.5], "loss.temperature": [1.0, 2.0]}))
    from distillspec.sweep import load_sweep

    result = expand(load_sweep(path))
    assert result.points == () and not result.ok
    (problem,) = [p for p in result.problems if p.is_error]
    assert problem.code == "alpha_out_of_range" and problem.loc == ("axes", "loss.alpha.end", 1)
    assert problem.message.startswith("point 2 (loss.alpha.end=1.5, loss.temperature=1.0) and 1 more point(s): ")
    assert path.read_text().splitlines()[problem.line - 1].strip() == "- 1.5"


def test_an_error_every_point_shares_is_reported_once_in_the_base_spec(tmp_path):
    spec = dict(SPEC, steps=0)
    result = expanded(tmp_path, sweep_data(spec=spec, axes={"loss.alpha.end": [0.3, 0.5]}))
    (problem,) = [p for p in result.problems if p.is_error]
    assert problem.loc == ("spec", "steps") and problem.message.startswith("every point: ")


def test_two_points_that_resolve_to_the_same_spec_are_an_error(tmp_path):
    # full_depth:2 of the 2-layer student is [0, 1]: the same run written twice
    result = expanded(tmp_path, sweep_data(axes={"loss.layer_indices": [[0, 1], "full_depth:2"]}))
    assert error_codes(result) == ["duplicate_point"]
    (problem,) = result.problems
    assert "point 1 (loss.layer_indices=full_depth:2) and point 0" in problem.message


def test_a_baseline_equal_to_a_grid_point_is_a_duplicate(tmp_path):
    result = expanded(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.5]}, baseline=[{"loss.alpha.end": 0.5}]))
    assert error_codes(result) == ["duplicate_point"]


def test_a_grid_above_the_limit_needs_a_yes(tmp_path):
    data = sweep_data(axes={"loss.alpha.end": [i / 100 for i in range(30)], "loss.temperature": [1.0, 2.0, 3.0]})
    with pytest.raises(GridTooLarge) as e:
        expanded(tmp_path, data)
    assert e.value.count == 90 and e.value.limit == DEFAULT_MAX_POINTS
    assert len(expanded(tmp_path, data, max_points=None).points) == 90


def test_exclusions_count_towards_the_limit(tmp_path):
    data = sweep_data(axes={"loss.alpha.end": [i / 100 for i in range(65)]}, exclude=[{"loss.alpha.end": 0.0}])
    assert len(expanded(tmp_path, data).points) == 64


def test_prerequisites_resolve_placeholders_before_hashing(tmp_path):
    teacher = {"student": {"model": "tiny-4l"}, "mode": "pretrain", "steps": 5}
    data = sweep_data(
        overrides={"teacher.load_parameters_path": "${prerequisites.teacher.output}/checkpoints"},
        prerequisites={"teacher": {"spec": teacher}},
        axes={"loss.alpha.end": [0.3, 0.5]},
    )
    result = expanded(tmp_path, data)
    (pre,) = result.prerequisites
    assert pre.prerequisite == "teacher" and pre.spec.mode == "pretrain" and pre.role == "prerequisite"
    for point in result.points:
        assert point.spec.teacher.load_parameters_path == f"gs://bucket/runs/{pre.run_id}/checkpoints"
        assert dict(point.depends_on) == {"teacher": pre.run_id}
    assert result.runs == (pre, *result.points)
    # a change to the prerequisite's spec reaches every point's id through the path
    changed = expanded(tmp_path, {**data, "prerequisites": {"teacher": {"spec": {**teacher, "steps": 6}}}}, "b.yaml")
    assert {p.run_id for p in changed.points}.isdisjoint({p.run_id for p in result.points})


def test_an_invalid_prerequisite_is_named(tmp_path):
    data = sweep_data(
        prerequisites={"teacher": {"spec": {"student": {"model": "tiny-4l"}, "mode": "pretrain", "steps": -1}}}
    )
    result = expanded(tmp_path, data)
    (problem,) = [p for p in result.problems if p.is_error]
    assert problem.message.startswith("prerequisite 'teacher': ") and problem.loc == (
        "prerequisites",
        "teacher",
        "spec",
        "steps",
    )


def test_a_sweep_file_named_as_a_spec_says_so(tmp_path):
    # It was a wall of errors about the inner file (`student` missing, `spec` unknown), none naming the mistake.
    write(tmp_path, sweep_data(name="inner"), "inner.yaml")
    for at, data in [
        (("spec",), sweep_data(spec="inner.yaml")),
        (("prerequisites", "teacher", "spec"), sweep_data(prerequisites={"teacher": {"spec": "inner.yaml"}})),
    ]:
        result = load(tmp_path, data)
        (problem,) = [p for p in result.problems if p.is_error]
        assert (problem.code, problem.loc) == ("sweep_not_spec", at)
        assert problem.file.endswith("sweep.yaml") and problem.line
        assert "'inner.yaml' is a sweep file" in problem.message and "inline" in problem.hint
    write(tmp_path, sweep_data(name="middle", spec="inner.yaml"), "middle.yaml")
    (problem,) = [p for p in load(tmp_path, sweep_data(spec="middle.yaml")).problems if p.is_error]
    assert "name the spec file it uses ('inner.yaml')" in problem.hint


def test_a_maxtext_base_spec_works_with_flat_axis_names(tmp_path):
    from sweep_support import SWEEPS

    data = sweep_data(
        spec=str(SWEEPS / "maxtext-distillation.yml"),
        axes={"distill_alpha_end": [0.3, 0.7]},
        overrides={"teacher_overrides.weight_dtype": "bfloat16"},
    )
    result = expanded(tmp_path, data)
    assert result.ok and [p.spec.loss.alpha.end for p in result.points] == [0.3, 0.7]
    assert all(p.spec.teacher.weight_dtype == "bfloat16" for p in result.points)


def test_flat_axis_values_mean_what_they_mean_in_a_maxtext_file(tmp_path):
    """The guide's spellings work as axes as they do in its YAML: `None` is "no end" (the value stays fixed), a
    clipping threshold of 0 is clipping off, and `num_decoder_layers` is `base_num_decoder_layers` (each was an error
    in a sweep file and not in a spec file). A native path keeps YAML's own null: `None` there is a word."""
    from sweep_support import SWEEPS

    data = sweep_data(
        spec=str(SWEEPS / "maxtext-distillation.yml"),
        axes={"distill_alpha_end": ["None", 0.5], "gradient_clipping_threshold": [0, 1.0]},
        overrides={"student_overrides.num_decoder_layers": 36},
    )
    result = expanded(tmp_path, data)
    assert result.ok, [str(p) for p in result.problems if p.is_error]
    assert {(p.spec.loss.alpha.end, p.spec.optimizer.grad_clip_norm) for p in result.points} == {
        (None, None),
        (None, 1.0),
        (0.5, None),
        (0.5, 1.0),
    }
    assert all(p.spec.student.num_layers == 36 for p in result.points)
    native = expanded(
        tmp_path, sweep_data(spec=str(SWEEPS / "maxtext-distillation.yml"), axes={"loss.alpha.end": ["None"]})
    )
    (problem,) = [p for p in native.problems if p.is_error]
    assert problem.code == "wrong_type" and "write null" in problem.hint


def test_the_maxtext_files_remat_and_eval_keys_are_sweep_paths_and_a_both_models_key_says_which(tmp_path):
    # remat_policy, eval_interval and eval_steps work in a MaxText file and were unknown_axis_path in a sweep; a
    # top-level model key (both models there) was unknown too, with suggestions that had nothing to do with it.
    from sweep_support import SWEEPS

    from distillspec import spec_paths

    spec = str(SWEEPS / "maxtext-distillation.yml")
    result = expanded(tmp_path, sweep_data(spec=spec, axes={"remat_policy": ["full", "minimal"]}))
    assert result.ok, [str(p) for p in result.problems if p.is_error]
    assert sorted(p.spec.student.remat for p in result.points) == ["dots", "full"]
    # a named-tensor policy is `dots` as in a MaxText file: the same point as `minimal`, said as a duplicate
    both = expanded(tmp_path, sweep_data(spec=spec, axes={"remat_policy": ["minimal", "minimal_flash"]}))
    assert [p.code for p in both.problems if p.is_error] == ["duplicate_point"]
    # and warned of, as in a MaxText file (a point trained as `dots` without a word)
    named = expanded(tmp_path, sweep_data(spec=spec, axes={"remat_policy": ["save_qkv_proj", "full"]}))
    (warning,) = [p for p in named.problems if p.code == "maxtext_value_ignored"]
    assert warning.loc == ("axes", "remat_policy", 0) and "'save_qkv_proj'" in warning.message, warning
    held = expanded(tmp_path, sweep_data(spec=spec, overrides={"remat_policy": "save_qkv_proj"}))
    assert [p.loc for p in held.problems if p.code == "maxtext_value_ignored"] == [("overrides", "remat_policy")]
    assert spec_paths.resolve("eval_interval") == ("eval", "every_steps")  # this spec's text data has no eval set
    assert spec_paths.resolve("eval_steps") == ("eval", "batches")
    # MaxText's names for the files and the column the hf pipeline reads
    assert spec_paths.resolve("hf_train_files") == ("data", "path")
    assert spec_paths.resolve("hf_eval_files") == spec_paths.resolve("grain_eval_files") == ("eval", "path")
    assert spec_paths.assign({}, "train_data_columns", ["body"]) == ("data", "text_column")
    # eval_interval -1 (or 0) is MaxText's "never": that point has no evaluation (it was refused as every_steps -1)
    result = expanded(
        tmp_path,
        sweep_data(spec=spec, axes={"eval_interval": [-1, 50], "dataset_type": ["synthetic"], "dataset_path": [None]}),
    )
    assert result.ok, [str(p) for p in result.problems if p.is_error]
    assert sorted(str(p.spec.eval and p.spec.eval.every_steps) for p in result.points) == ["50", "None"]
    # eval_steps -1 (MaxText's "all") is the spec's default there too: it was refused as batches -1
    held = {"eval_interval": [50], "dataset_type": ["synthetic"], "dataset_path": [None], "eval_steps": [-1, 2]}
    result = expanded(tmp_path, sweep_data(spec=spec, axes=held))
    assert result.ok and sorted(p.spec.eval.batches for p in result.points) == [2, 4], result.problems
    assert all(
        p.spec.teacher.remat == expanded(tmp_path, sweep_data(spec=spec)).points[0].spec.teacher.remat
        for p in result.points
    )
    for key in ("base_num_decoder_layers", "num_decoder_layers", "model_name"):
        (problem,) = [p for p in expanded(tmp_path, sweep_data(spec=spec, axes={key: [2, 4]})).problems if p.is_error]
        assert problem.code == "unknown_axis_path" and "sets both models" in problem.message, problem
        assert f"student_overrides.{key} or teacher_overrides.{key}" in problem.hint


def test_the_same_point_in_two_example_sweeps_has_one_id():
    from sweep_support import SWEEPS

    from distillspec.sweep import load_sweep

    alpha = expand(load_sweep(SWEEPS / "alpha-end.yaml"))
    beta = expand(load_sweep(SWEEPS / "beta-end.yaml"))
    # alpha end 0.5 with data seed 0 and beta end 0.1 are both the base spec unchanged
    (a,) = [p for p in alpha.points if p.axis_values == {"distill_alpha_end": 0.5, "data.seed": 0}]
    (b,) = [p for p in beta.points if p.axis_values == {"loss.beta.end": 0.1}]
    assert a.run_id == b.run_id and a.output_path == b.output_path and a.jobset_name != b.jobset_name


@settings(max_examples=25, deadline=None)
@given(
    axes=st.dictionaries(
        st.sampled_from(["loss.alpha.end", "loss.temperature", "steps", "optimizer.learning_rate"]),
        st.lists(st.integers(1, 9), min_size=1, max_size=3, unique=True),
        max_size=3,
    ),
    seeds=st.lists(st.integers(0, 5), max_size=3, unique=True),
)
def test_expansion_is_deterministic_and_sized_as_the_product(tmp_path_factory, axes, seeds):
    scaled = {
        k: [v / 10 if k == "loss.alpha.end" else (v * 1e-4 if "rate" in k else v) for v in vs] for k, vs in axes.items()
    }
    data = sweep_data(axes=scaled, **({"seeds": seeds} if seeds else {}))  # `seeds: []` is an empty axis
    tmp = tmp_path_factory.mktemp("prop")
    first, second = expanded(tmp, data, max_points=None), expanded(tmp, data, "again.yaml", max_points=None)
    expected = 1
    for vs in scaled.values():
        expected *= len(vs)
    assert len(first.points) == expected * max(len(seeds), 1)
    assert [p.run_id for p in first.points] == [p.run_id for p in second.points]
    assert len({p.run_id for p in first.points}) == len(first.points)


def test_load_problems_stop_expansion(tmp_path):
    source = load(tmp_path, sweep_data(axes={"nope": [1]}))
    assert expand(source).points == () and error_codes(expand(source)) == ["unknown_axis_path"]


def test_a_logit_cache_prerequisite_uses_the_teacher_and_is_shared_by_every_point():
    from sweep_support import SWEEPS

    from distillspec.sweep import load_sweep
    from orchestrator.core.expansion import expand

    result = expand(load_sweep(SWEEPS / "offline.yaml"))
    assert not [p for p in result.problems if p.is_error], result.problems
    teacher, logits = result.prerequisites
    assert logits.spec.mode == "teacher_logits" and dict(logits.depends_on) == {"teacher": teacher.run_id}
    assert logits.spec.teacher.load_parameters_path == f"{teacher.output_path}/checkpoints"
    assert len(result.points) == 3
    for point in result.points:
        assert point.spec.offline_data_dir == f"{logits.output_path}/logits"
        assert point.spec.teacher == logits.spec.teacher  # the cache's teacher identity is the points'
        assert dict(point.depends_on) == {"logits": logits.run_id, "teacher": teacher.run_id}


def test_a_prerequisite_cannot_use_a_later_one(tmp_path):
    teacher = {"student": {"model": "tiny-4l"}, "mode": "pretrain", "steps": 5}
    data = sweep_data(
        prerequisites={
            "logits": {"spec": teacher, "overrides": {"output_dir": "${prerequisites.teacher.output}"}},
            "teacher": {"spec": teacher},
        }
    )
    result = expanded(tmp_path, data)
    assert "nested_prerequisite" in [p.code for p in result.problems if p.is_error]
    assert any("list 'teacher' before 'logits'" in (p.hint or "") for p in result.problems)


def test_seeds_of_a_student_without_random_init_are_warned_of(tmp_path):
    # Seeds 0 and 1 of a pruned student were bit-identical runs (the seed seeds only the random init), and a golden
    # band over them had width zero; the guide's alpha-end example promised "noise" from them.
    pruned = sweep_data(seeds=[0, 1])
    pruned["spec"]["student"] = {"model": "tiny-2l", "init": "teacher", "drop_layers": [1, 2]}
    source = load(tmp_path, pruned)
    result = expand(source)
    (problem,) = [p for p in result.problems if p.code == "seed_changes_nothing"]
    assert problem.severity == "warning" and problem.loc == ("seeds",) and "data.seed" in problem.hint
    random_init = load(tmp_path, sweep_data(seeds=[0, 1]), name="random.yaml")
    assert not [p for p in expand(random_init).problems if p.code == "seed_changes_nothing"]
    from pathlib import Path

    from distillspec.sweep import load_sweep

    example = expand(load_sweep(Path(__file__).parent.parent / "sweeps" / "alpha-end.yaml"), max_points=None)
    assert not [p for p in example.problems if p.code == "seed_changes_nothing"]


def test_an_offline_point_is_checked_against_the_cache_its_prerequisite_writes(tmp_path):
    # An axis over top_k sharing the one k=64 cache: planned and launched, then point 0 failed at run time ("made
    # with another top_k"), after the teacher and the cache had run.
    from pathlib import Path

    import yaml

    from distillspec.sweep import load_sweep

    sweeps = Path(__file__).parent.parent / "sweeps"
    data = yaml.safe_load((sweeps / "offline.yaml").read_text())
    for name in ("tiny.yaml", "tiny-teacher.yaml", "tiny-teacher-logits.yaml"):
        (tmp_path / name).write_text((sweeps / name).read_text())
    assert not expand(load_sweep(sweeps / "offline.yaml")).problems  # the example is clean
    for axes, said in [
        (
            {"top_k": [32, 64]},
            "point 0 (top_k=32): the logit cache of prerequisite 'logits' was made with another top_k",
        ),
        ({"steps": [10, 100000]}, "point 1 (steps=100000): the logit cache of prerequisite 'logits' holds"),
        ({"data.seed": [0, 1]}, "data.seed: cache 0, spec 1"),
        # the rows of a micro-batch and the tokenizer: said by the trainer at start, after both prerequisites ran
        ({"batch.per_device_batch_size": [8, 4]}, "this point reads 4 × the devices"),
    ]:
        path = tmp_path / "offline.yaml"
        path.write_text(yaml.safe_dump({**data, "axes": axes}, sort_keys=False))
        result = expand(load_sweep(path))
        (problem,) = [p for p in result.problems if p.code == "logit_cache_mismatch"]
        assert problem.is_error and said in problem.message and problem.loc == ("prerequisites", "logits")
        assert "one cache prerequisite per value" in problem.hint and not result.points
    # The cache's place written another way (`/./`): compared as the place it names (it passed, as no cache's).
    written = yaml.safe_dump({**data, "axes": {"top_k": [32]}}, sort_keys=False).replace("}/logits", "}/./logits")
    assert "/./logits" in written
    path.write_text(written)
    assert [p.code for p in expand(load_sweep(path)).problems if p.is_error] == ["logit_cache_mismatch"]
    logits = {**data["prerequisites"]["logits"]}
    logits["overrides"] = {**logits["overrides"], "data.tokenizer": "tok/tokenizer.json"}
    path.write_text(
        yaml.safe_dump(
            {
                **data,
                "prerequisites": {**data["prerequisites"], "logits": logits},
                "axes": {"data.tokenizer": ["byte"]},
            },
            sort_keys=False,
        )
    )
    (problem,) = [p for p in expand(load_sweep(path)).problems if p.code == "logit_cache_mismatch"]
    assert "written with data.tokenizer 'tok/tokenizer.json', this point reads 'byte'" in problem.message


def test_a_relative_path_a_clusters_pods_would_read_is_a_warning_at_its_line(tmp_path):
    # The quickstart's teacher path (runs/tiny-teacher/checkpoints) launched on a cluster: each pod looked for it
    # in the container's working directory and failed at start, after scheduling.
    spec = {**SPEC, "teacher": {**SPEC["teacher"], "load_parameters_path": "runs/teacher/checkpoints"}}
    write(tmp_path, spec, "spec.yaml")
    result = expanded(tmp_path, sweep_data(spec="spec.yaml"))
    found = {p.loc: p for p in result.problems if p.code == "relative_path_on_cluster"}
    assert set(found) == {("teacher", "load_parameters_path")}, result.problems
    teacher = found[("teacher", "load_parameters_path")]
    assert teacher.severity == "warning" and teacher.file.endswith("spec.yaml") and teacher.line is not None
    assert "'runs/teacher/checkpoints' is a relative path" in teacher.message and "gs://" in teacher.hint
    documents = sweep_data(spec="spec.yaml", overrides={"data.source": "jsonl", "data.path": "corpus/*.jsonl"})
    (data,) = [p for p in expanded(tmp_path, documents).problems if p.loc == ("overrides", "data.path")]
    assert data.code == "relative_path_on_cluster" and data.file.endswith("sweep.yaml") and data.line is not None
    absolute = sweep_data(spec="spec.yaml", overrides={"teacher.load_parameters_path": "/mnt/ckpt/teacher"})
    assert not [p for p in expanded(tmp_path, absolute).problems if p.code == "relative_path_on_cluster"]
    # A prerequisite's own spec (its data read by every pod of the teacher's pre-training), located in it.
    write(
        tmp_path, {**SPEC, "mode": "pretrain", "teacher": None, "data": {"source": "text", "path": "c.txt"}}, "t.yaml"
    )
    with_teacher = sweep_data(
        spec="spec.yaml",
        overrides={"teacher.load_parameters_path": "${prerequisites.teacher.output}/checkpoints"},
        prerequisites={"teacher": {"spec": "t.yaml"}},
    )
    (before,) = [p for p in expanded(tmp_path, with_teacher).problems if p.code == "relative_path_on_cluster"]
    assert before.loc == ("data", "path") and before.file.endswith("t.yaml") and before.line is not None, before
    assert before.message.startswith("prerequisite 'teacher': 'c.txt' is a relative path")
    local = sweep_data(spec="spec.yaml", target={"kind": "local", "output_base": str(tmp_path / "runs")})
    assert not [p for p in expanded(tmp_path, local).problems if p.code == "relative_path_on_cluster"]


def test_a_mesh_or_batch_the_targets_chips_cannot_hold_is_an_error_before_launch(tmp_path):
    # The trainer checks these at start-up: `plan` said fit ok and `sweep` launched a mesh needing 256 devices on
    # 128 chips (or 0.5 rows per device on 128), found only once Kueue had admitted it and every pod exited 1.
    write(tmp_path, {**SPEC, "mesh": {"data": 2, "fsdp": 128}}, "spec.yaml")
    result = expanded(tmp_path, sweep_data(spec="spec.yaml"))
    (mesh,) = [p for p in result.problems if p.code == "layout_does_not_fit"]
    assert mesh.is_error and mesh.loc == ("mesh",) and mesh.file.endswith("spec.yaml") and mesh.line is not None
    assert "on 2 × v5p-128 (128 devices): mesh {'data': 2, 'fsdp': 128, 'tensor': 1} needs 256 devices" in mesh.message
    assert not result.runs
    # A batch size from an axis: named at the axis, with the point's values and the sizes that do fit.
    axis = sweep_data(axes={"batch.per_device_batch_size": [1, 0.5]})
    (batch,) = [p for p in expanded(tmp_path, axis).problems if p.code == "layout_does_not_fit"]
    assert batch.loc[0] == "axes" and batch.file.endswith("sweep.yaml") and batch.line is not None, batch
    assert "point 1 (batch.per_device_batch_size=0.5)" in batch.message, batch.message
    assert "gives 64 rows, which the data × fsdp mesh axes (128) do not divide" in batch.message
    assert batch.hint.endswith("e.g. 1, 2")
    # A mesh set in the sweep's overrides: named there.
    fixed = sweep_data(overrides={"mesh.data": 3, "mesh.fsdp": -1})
    (split,) = [p for p in expanded(tmp_path, fixed).problems if p.code == "layout_does_not_fit"]
    assert "do not divide the 128 devices" in split.message and split.loc[0] == "overrides", split
    # The same file fits the default mesh (data across slices, FSDP within) and every local run (this machine's).
    assert not [p for p in expanded(tmp_path, sweep_data()).problems if p.code == "layout_does_not_fit"]
    local = sweep_data(spec="spec.yaml", target={"kind": "local", "output_base": str(tmp_path / "runs")})
    assert not [p for p in expanded(tmp_path, local).problems if p.code == "layout_does_not_fit"]


def test_points_that_differ_only_in_an_ignored_end_are_said_to_be_the_same_training(tmp_path):
    # `loss.alpha.end` × `schedule: [constant, linear]`: two constant points trained alike under two run ids,
    # each only warned `end_ignored`.
    axes = {"loss.alpha.end": [0.5, 0.3], "loss.alpha.schedule": ["constant", "linear"]}
    result = expanded(tmp_path, sweep_data(axes=axes))
    (same,) = [p for p in result.problems if p.code == "same_training"]
    assert same.severity == "warning" and same.file.endswith("sweep.yaml") and same.line is not None
    assert "point 2" in same.message and "point 0" in same.message and len(result.points) == 4
    shaped = expanded(tmp_path, sweep_data(axes={"loss.alpha.end": [0.5, 0.3], "loss.alpha.schedule": ["linear"]}))
    assert not [p for p in shaped.problems if p.code == "same_training"]


def test_a_mapping_that_replaces_a_block_of_the_base_spec_is_said(tmp_path):
    # `optimizer: {learning_rate: 1e-3}` dropped the base's warmup_fraction (it replaces the block) while
    # `optimizer.learning_rate: 1e-3` keeps it: the two read alike, and nothing was said.
    from distillspec.sweep import load_sweep
    from orchestrator.core.expansion import expand

    base = tmp_path / "base.yaml"
    base.write_text(
        "mode: pretrain\nstudent: {model: tiny-2l}\noptimizer: {learning_rate: 3.0e-4, warmup_fraction: 0.05}\n"
    )

    def warnings(**fields):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({"name": "blocks", "spec": str(base), **fields}, sort_keys=False))
        return [p for p in expand(load_sweep(path)).problems if p.code == "override_replaces_block"]

    (said,) = warnings(overrides={"optimizer": {"learning_rate": 1e-3}})
    assert said.severity == "warning" and said.line == 4 and "dropping warmup_fraction: 0.05" in said.message, said
    assert "optimizer.learning_rate: ..." in said.hint
    assert warnings(overrides={"optimizer.learning_rate": 1e-3}) == []
    assert warnings(overrides={"optimizer": {"learning_rate": 1e-3, "warmup_fraction": 0.05}}) == []
    # Overrides apply in order: a dotted key after the block sets its field again; one before it is dropped.
    assert warnings(overrides={"optimizer": {"learning_rate": 1e-3}, "optimizer.warmup_fraction": 0.2}) == []
    (said,) = warnings(overrides={"optimizer.warmup_fraction": 0.2, "optimizer": {"learning_rate": 1e-3}})
    assert "dropping warmup_fraction: 0.2" in said.message
    teacher = {"spec": str(base), "overrides": {"optimizer": {"learning_rate": 1e-3}}}  # a prerequisite's too
    (said,) = warnings(prerequisites={"teacher": teacher}, overrides={"optimizer.learning_rate": 1e-3})
    assert said.dotted_loc == "prerequisites.teacher.overrides.optimizer"
    (said,) = warnings(axes={"optimizer": [{"learning_rate": 1e-3}, {"learning_rate": 1e-4}]})  # once per axis
    assert said.dotted_loc.startswith("axes.optimizer")
    # a key that is no field of the block is never the hint's example (it advised `optimizer.lr: ...`, refused)
    said = warnings(overrides={"optimizer": {"lr": 1e-3}})
    assert said and "optimizer.lr:" not in said[0].hint and "optimizer.learning_rate: ..." in said[0].hint, said


def test_a_tensorboard_folder_inside_a_clusters_pods_is_a_warning_at_its_line(tmp_path):
    """Events written to a local folder of a pod are lost with it (as output_base_not_shared); a bucket or a mounted
    volume keeps them, and a local target writes where it is told."""
    write(tmp_path, SPEC, "spec.yaml")
    inside = expanded(tmp_path, sweep_data(spec="spec.yaml", overrides={"logging.tensorboard_dir": "/tmp/tb"}))
    (problem,) = [p for p in inside.problems if p.code == "tensorboard_dir_not_shared"]
    assert problem.severity == "warning" and problem.file.endswith("sweep.yaml") and problem.line is not None
    assert "'/tmp/tb'" in problem.message and "gs://" in problem.hint
    for where, target in (
        ("gs://bucket/tb", {}),
        (
            "/mnt/shared/tb",
            {
                "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "runs"}}],
                "volume_mounts": [{"name": "v", "mountPath": "/mnt/shared"}],
            },
        ),
    ):
        data = sweep_data(spec="spec.yaml", overrides={"logging.tensorboard_dir": where})
        data["target"].update(target)
        assert not [p for p in expanded(tmp_path, data).problems if p.code == "tensorboard_dir_not_shared"]
    # an emptyDir is the pod's own, gone with it: still said
    data = sweep_data(spec="spec.yaml", overrides={"logging.tensorboard_dir": "/mnt/scratch/tb"})
    data["target"] |= {
        "volumes": [{"name": "v", "emptyDir": {}}],
        "volume_mounts": [{"name": "v", "mountPath": "/mnt/scratch"}],
    }
    assert [p for p in expanded(tmp_path, data).problems if p.code == "tensorboard_dir_not_shared"]
    local = sweep_data(
        spec="spec.yaml",
        overrides={"logging.tensorboard_dir": "/tmp/tb"},
        target={"kind": "local", "output_base": str(tmp_path / "runs")},
    )
    assert not [p for p in expanded(tmp_path, local).problems if p.code == "tensorboard_dir_not_shared"]


def test_a_mesh_that_puts_fsdp_or_tensor_across_slices_is_a_warning_at_its_line(tmp_path):
    """`mesh.data: 1` on two slices split FSDP over both (its weight gathers over DCN) and `plan` said "fit ok";
    the default mesh, and a data axis that is a multiple of the slice count, keep FSDP inside each slice."""
    write(tmp_path, SPEC, "spec.yaml")
    crossing = expanded(tmp_path, sweep_data(spec="spec.yaml", overrides={"mesh.data": 1}))
    (problem,) = [p for p in crossing.problems if p.code == "mesh_axis_across_slices"]
    assert problem.severity == "warning" and problem.file.endswith("sweep.yaml") and problem.line is not None
    assert "fsdp across 2 slices" in problem.message and "multiple of the slice count (2)" in problem.hint
    tensor = sweep_data(spec="spec.yaml", overrides={"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": -1})
    (problem,) = [p for p in expanded(tmp_path, tensor).problems if p.code == "mesh_axis_across_slices"]
    assert "tensor across 2 slices" in problem.message and "tensor-parallel reduction" in problem.message
    for overrides in ({}, {"mesh.data": 2, "mesh.fsdp": -1}):
        fine = expanded(tmp_path, sweep_data(spec="spec.yaml", overrides=overrides))
        assert not [p for p in fine.problems if p.code == "mesh_axis_across_slices"], overrides


def test_a_sweep_over_a_maxtext_spec_says_its_problems_in_the_spec_files_words_at_the_key_that_set_them(tmp_path):
    """`plan` spoke distillctl's paths to a MaxText user (`checkpoint.enabled is false`, `set loss.beta to 0.0`,
    `vary data.seed`), where `validate` of the same file spoke MaxText's; an override of `eval_interval` was blamed
    on the spec file's first line (`base_config`) at a made-up `eval`."""
    from sweep_support import SWEEPS

    spec = str(SWEEPS / "maxtext-distillation.yml")

    def problem(code: str, **fields):
        (found,) = [p for p in expanded(tmp_path, sweep_data(spec=spec, **fields)).problems if p.code == code]
        return found

    tensorboard = problem(
        "tensorboard_dir_unused", overrides={"enable_tensorboard": False, "tensorboard_dir": "gs://b/tb"}
    )
    assert "enable_tensorboard is false" in tensorboard.message and "set enable_tensorboard: true" in tensorboard.hint
    checkpoints = problem("checkpoint_disabled", overrides={"enable_checkpointing": False})
    assert checkpoints.loc == ("checkpoint_period",) and checkpoints.file == spec
    assert "enable_checkpointing is false: checkpoint_period does nothing" in checkpoints.message
    evaluation = problem("eval_needs_documents", overrides={"eval_interval": 100})
    assert evaluation.loc == ("overrides", "eval_interval") and evaluation.file.endswith("sweep.yaml")
    assert "dataset_type 'text'" in evaluation.message and "eval_interval: -1" in evaluation.hint
    seeds = problem("seed_changes_nothing", seeds=[0, 1])
    assert "axes: {data_shuffle_seed: [0, 1, 2]}" in seeds.hint, seeds.hint
    offline = problem("offline_feature_loss", overrides={"offline_data_dir": "gs://b/logits"})
    assert "set distill_beta to 0.0" in offline.hint, offline.hint


def test_a_maxtext_key_the_trainer_has_one_behaviour_for_is_no_axis_and_says_why(tmp_path):
    # It read "did you mean 'learning_rate', 'learning_rate_final_fraction'?"
    from sweep_support import SWEEPS

    data = sweep_data(spec=str(SWEEPS / "maxtext-distillation.yml"), axes={"learning_rate_schedule_steps": [1, 2]})
    (problem,) = [p for p in load(tmp_path, data).problems if p.is_error]
    assert problem.code == "unknown_axis_path" and "schedule spans `steps`" in problem.message
    assert problem.hint == "vary steps instead"
