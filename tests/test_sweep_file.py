"""The sweep file: its model, its cross-field rules, and problems located in the file (one good, one bad each)."""

from __future__ import annotations

import io

import pytest
from sweep_support import error_codes, load, sweep_data, write

from distillspec import spec_paths
from distillspec.sweep import load_sweep


def test_a_valid_sweep_loads_without_problems(tmp_path):
    source = load(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.5]}))
    assert source.ok and source.problems == ()
    assert source.sweep.target.tpu_type == "v5p-128"


def test_the_base_spec_can_be_a_file_next_to_the_sweep(tmp_path):
    write(tmp_path, sweep_data()["spec"], "base.yaml")
    source = load(tmp_path, sweep_data(spec="base.yaml"))
    assert source.ok and source.base.file.endswith("base.yaml")


def test_a_missing_spec_file_is_an_error_at_the_spec_key(tmp_path):
    source = load(tmp_path, sweep_data(spec="nope.yaml"))
    (problem,) = [p for p in source.problems if p.is_error]
    assert problem.code == "file_not_found" and problem.loc == ("spec",) and problem.line == 2


def test_an_empty_file_is_an_error(tmp_path):
    assert error_codes(load(tmp_path, "")) == ["empty_file"]


def test_unknown_top_level_key_suggests_the_right_one(tmp_path):
    source = load(tmp_path, sweep_data(axis={"loss.alpha.end": [0.3]}))
    (problem,) = source.problems
    assert problem.code == "unknown_key" and "'axes'" in problem.hint and problem.line is not None


def test_unknown_axis_path_suggests_close_paths(tmp_path):
    path = write(tmp_path, sweep_data(axes={"loss.alpha.ends": [0.3]}))
    (problem,) = load_sweep(path).problems
    assert problem.code == "unknown_axis_path" and problem.loc == ("axes", "loss.alpha.ends")
    assert "loss.alpha.end" in problem.hint
    assert path.read_text().splitlines()[problem.line - 1].strip().startswith("loss.alpha.ends:")


def test_unknown_axis_path_suggests_from_the_last_parts(tmp_path):
    (problem,) = load(tmp_path, sweep_data(axes={"alpha.end": [0.3]})).problems
    assert "loss.alpha.end" in problem.hint


def test_maxtext_flat_names_are_axis_paths():
    assert spec_paths.resolve("distill_alpha_end") == spec_paths.resolve("loss.alpha.end") == ("loss", "alpha", "end")
    assert spec_paths.resolve("student_overrides.base_num_decoder_layers") == ("student", "num_layers")


def test_an_empty_axis_is_an_error(tmp_path):
    assert error_codes(load(tmp_path, sweep_data(axes={"loss.alpha.end": []}))) == ["empty_axis"]


def test_the_same_field_varied_twice_is_an_error(tmp_path):
    source = load(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3], "distill_alpha_end": [0.5]}))
    assert error_codes(source) == ["axis_overlap"]


def test_a_seeds_list_overlaps_a_seed_axis(tmp_path):
    assert error_codes(load(tmp_path, sweep_data(axes={"seed": [1, 2]}, seeds=[0, 1]))) == ["axis_overlap"]


def test_a_repeated_axis_value_is_an_error(tmp_path):
    assert error_codes(load(tmp_path, sweep_data(axes={"loss.alpha.end": [0.5, 0.5]}))) == ["duplicate_axis_value"]


def test_a_zip_group_may_repeat_a_value_on_one_path_but_not_a_whole_row(tmp_path):
    # Its rows differ (cosine with β 1.0, cosine with β 0.5): it was refused "list each value once", which the
    # group cannot do.
    rows = {"loss.feature_loss_type": ["cosine", "cosine", "l2"], "loss.beta.start": [1.0, 0.5, 0.05]}
    assert error_codes(load(tmp_path, sweep_data(zip=[rows]))) == []
    same = {"loss.feature_loss_type": ["cosine", "l2", "cosine"], "loss.beta.start": [1.0, 0.5, 1.0]}
    source = load(tmp_path, sweep_data(zip=[same]))
    assert error_codes(source) == ["duplicate_axis_value"]
    (problem,) = source.problems
    assert "values 3 and 1 are the same row" in problem.message and problem.hint == "list each row once"


def test_derived_fields_cannot_be_varied(tmp_path):
    assert error_codes(load(tmp_path, sweep_data(axes={"output_dir": ["a", "b"]}))) == ["derived_path"]


def test_zip_groups_need_equal_lengths(tmp_path):
    source = load(tmp_path, sweep_data(zip=[{"loss.beta.start": [1.0, 0.05], "loss.beta.end": [0.1]}]))
    assert error_codes(source) == ["zip_length_mismatch"]


def test_exclude_must_name_an_axis(tmp_path):
    source = load(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.5]}, exclude=[{"loss.alpha.ends": 0.3}]))
    (problem,) = source.problems
    assert problem.code == "exclude_not_an_axis" and "'loss.alpha.end'" in problem.hint
    # the same field under its other spelling: that axis is named (it suggested loss.beta.end)
    axes = {"distill_alpha_end": [0.3, 0.5], "loss.beta.end": [0.1, 0.2]}
    (problem,) = load(tmp_path, sweep_data(axes=axes, exclude=[{"loss.alpha.end": 0.3}])).problems
    assert problem.code == "exclude_not_an_axis" and "'distill_alpha_end'" in problem.hint, problem


def test_a_maxtext_override_block_is_told_to_name_each_key(tmp_path):
    # It was "not a field of the spec", suggesting student_overrides.dtype, .mlp_dim, .emb_dim.
    source = load(tmp_path, sweep_data(overrides={"student_overrides": {"num_decoder_layers": 3}}))
    (problem,) = [p for p in source.problems if p.is_error]
    assert "MaxText's block of the student's model keys" in problem.message, problem
    assert "student_overrides.num_decoder_layers: 3" in problem.hint


def test_placeholders_must_name_a_prerequisite(tmp_path):
    data = sweep_data(
        overrides={"teacher.load_parameters_path": "${prerequisites.teachr.output}/checkpoints"},
        prerequisites={"teacher": {"spec": sweep_data()["spec"]}},
    )
    (problem,) = load(tmp_path, data).problems
    assert problem.code == "unknown_prerequisite" and "'teacher'" in problem.hint


def test_an_unknown_placeholder_is_an_error(tmp_path):
    data = sweep_data(overrides={"teacher.load_parameters_path": "${env.HOME}/ckpt"})
    assert error_codes(load(tmp_path, data)) == ["bad_placeholder"]


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("overrides", "${prerequisites.teacher.output/checkpoints"),  # never closed
        ("overrides", "$prerequisites.teacher.output/checkpoints"),  # no braces
        ("prerequisite", "${prerequisites.teacher.output"),
    ],
)
def test_a_placeholder_not_closed_or_without_braces_is_an_error(tmp_path, where, text):
    # Taken literally, such a path made the points start without waiting for the prerequisite.
    prerequisites = {"teacher": {"spec": sweep_data()["spec"]}}
    if where == "prerequisite":
        prerequisites["student"] = {"spec": sweep_data()["spec"], "overrides": {"teacher.load_parameters_path": text}}
        data = sweep_data(prerequisites=prerequisites)
    else:
        data = sweep_data(overrides={"teacher.load_parameters_path": text}, prerequisites=prerequisites)
    problems = [p for p in load(tmp_path, data).problems if p.code == "bad_placeholder"]
    assert problems and problems[0].line and "braces" in problems[0].hint
    assert problems[0].loc[-1] == "teacher.load_parameters_path"


def test_an_output_base_placeholder_is_not_expanded_so_it_is_an_error(tmp_path):
    data = sweep_data(target={"kind": "local", "output_base": "${HOME}/runs"})
    assert error_codes(load(tmp_path, data)) == ["bad_placeholder"]


def test_unknown_tpu_type_suggests_nearby_sizes(tmp_path):
    source = load(tmp_path, sweep_data(target={**sweep_data()["target"], "tpu_type": "v5p-100"}))
    (problem,) = source.problems
    assert problem.code == "unknown_tpu_type" and problem.loc == ("target", "tpu_type")
    assert "v5p-128" in problem.message and problem.hint


@pytest.mark.parametrize("name", ["v5e-4", "v5litepod-1", "v5e-2x2"])
def test_a_single_host_v5e_slice_is_said_to_be_outside_the_table(tmp_path, name):
    # It read as a typo with the nearest sizes (v5litepod-8, ...), while v6e's single-host shapes are accepted.
    source = load(tmp_path, sweep_data(target={**sweep_data()["target"], "tpu_type": name}))
    (problem,) = source.problems
    assert problem.code == "unknown_tpu_type" and "single-host v5e slices" in problem.message
    assert "did you mean" not in problem.message and "v6e-1 / v6e-4" in problem.message


def test_an_xpk_target_says_where_xpks_jobset_lands_elsewhere(tmp_path):
    # Compared with XPK's own manifest: spot/flex/reservation selectors only with node auto-provisioning, and no
    # machine-type selector for the 2x4 topologies GKE also offers as one 8-chip VM. Neither was said.
    target = {**sweep_data()["target"], "kind": "xpk", "cluster": "c", "capacity": "spot", "tpu_type": "v6e-8"}
    source = load(tmp_path, sweep_data(target=target))
    said = {"xpk_capacity_needs_nap", "xpk_topology_ambiguous", "xpk_preemption_spends_restarts"}
    assert {p.code for p in source.problems if not p.is_error} >= said
    spends = next(p for p in source.problems if p.code == "xpk_preemption_spends_restarts")
    assert "target.max_restarts (3)" in spends.message and spends.line is not None
    plain = load(tmp_path, sweep_data(target={**target, "capacity": "on-demand", "tpu_type": "v5p-128"}))
    assert not {p.code for p in plain.problems} & said


def test_a_cluster_target_needs_an_image(tmp_path):
    target = {k: v for k, v in sweep_data()["target"].items() if k != "image"}
    assert error_codes(load(tmp_path, sweep_data(target=target))) == ["target_field_missing"]


@pytest.mark.parametrize(
    ("output_base", "said"),
    [
        ("gs:///runs", "names no bucket"),
        ("gs://ab/runs", "3 to 63 characters"),  # Cloud Storage refuses it; the pods failed on it after scheduling
        ("gs://-runs/x", "begins and ends with a letter or digit"),
        ("gs://My-Bucket/x", "only lower-case letters"),
        ("gs://goog-runs/x", "reserves names beginning with 'goog'"),
    ],
)
def test_an_output_base_in_a_bucket_cloud_storage_would_refuse_is_an_error(tmp_path, output_base, said):
    source = load(tmp_path, sweep_data(target={**sweep_data()["target"], "output_base": output_base}))
    (problem,) = [p for p in source.problems if p.is_error]
    assert problem.code == "bad_bucket" and problem.loc == ("target", "output_base") and said in problem.message


def test_a_bucket_name_with_dots_may_be_longer():
    from distillspec.buckets import bucket_name_problem

    assert bucket_name_problem("runs." + "a" * 60 + ".example.com") is None
    assert "3 to 63" in bucket_name_problem("a" * 64)


def test_a_local_output_base_on_a_cluster_is_a_warning(tmp_path):
    source = load(tmp_path, sweep_data(target={**sweep_data()["target"], "output_base": "runs"}))
    assert source.ok and [p.code for p in source.problems] == ["output_base_not_shared"]


@pytest.mark.parametrize(
    ("output_base", "fix"),
    [
        ("file:///abs/runs", "(/abs/runs)"),
        ("file://localhost/abs/runs", "(/abs/runs)"),
        ("file://runs", "local path"),
        # RFC 8089's short form passed, and split each run between /abs and ./file:/abs; capitals were
        # path_malformed, whose fix (file://) was this error's
        ("file:/abs/runs", "(/abs/runs)"),
        ("FILE:///abs/runs", "(/abs/runs)"),
        ("File://LocalHost/abs/runs", "(/abs/runs)"),
    ],
)
def test_a_file_url_as_a_local_targets_output_base_is_an_error_for_every_command(tmp_path, output_base, fix):
    # `sweep` refused it while status read file://localhost/abs as a folder `localhost` (every run NotCreated, and
    # cancel said nothing to cancel) and file:///abs as /abs.
    source = load(tmp_path, sweep_data(target={"kind": "local", "output_base": output_base}))
    (problem,) = [p for p in source.problems if p.is_error]
    assert problem.code == "local_output_base_url" and fix in problem.hint and problem.line > 1, problem


def test_an_output_base_on_a_shared_volume_is_not_a_warning_and_one_on_the_pods_own_is(tmp_path):
    # It warned "each would write their own copy" for a PVC every pod mounts; an emptyDir or a read-only mount is
    # still no place to write results.
    def codes(volume: dict, **mount) -> list[str]:
        target = sweep_data()["target"] | {
            "output_base": "/mnt/shared/runs",
            "volumes": [{"name": "v", **volume}],
            "volume_mounts": [{"name": "v", "mountPath": "/mnt/shared", **mount}],
        }
        return [p.code for p in load(tmp_path, sweep_data(target=target)).problems]

    assert codes({"persistentVolumeClaim": {"claimName": "runs"}}) == []
    assert codes({"csi": {"driver": "gcsfuse.csi.storage.gke.io"}}) == []
    assert codes({"emptyDir": {}}) == ["output_base_not_shared"]
    assert codes({"persistentVolumeClaim": {"claimName": "runs"}}, readOnly=True) == ["output_base_not_shared"]
    # an emptyDir mounted inside the PVC's mount is where the runs would go: the pod's own
    target = sweep_data()["target"] | {
        "output_base": "/mnt/out/runs",
        "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}, {"name": "e", "emptyDir": {}}],
        "volume_mounts": [{"name": "v", "mountPath": "/mnt/out"}, {"name": "e", "mountPath": "/mnt/out/runs"}],
    }
    assert [p.code for p in load(tmp_path, sweep_data(target=target)).problems] == ["output_base_not_shared"]
    target["output_base"] = "/mnt/out/runs/../kept"  # `..` out of the emptyDir, into the PVC
    assert [p.code for p in load(tmp_path, sweep_data(target=target)).problems] == []


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ({"env": {"DISTILLCTL_SPEC": "x"}}, "reserved_env"),
        ({"env": {"TOKEN": "x"}, "secret_env": {"TOKEN": {"secret": "s", "key": "k"}}}, "duplicate_env"),
        ({"env": {"1BAD": "x"}}, "bad_env_name"),
        ({"secret_env": {"TOKEN": {"secret": "Not_A_Name", "key": "k"}}}, "bad_secret_name"),
        ({"queue": "Multi Slice"}, "bad_k8s_name"),
        ({"namespace": "team.a"}, "bad_k8s_name"),  # a namespace has no dots (a queue name may)
        ({"kind": "xpk"}, "target_field_missing"),
    ],
)
def test_target_rules(tmp_path, target, code):
    assert error_codes(load(tmp_path, sweep_data(target={**sweep_data()["target"], **target}))) == [code]


def test_a_dotted_queue_name_is_a_name_and_a_dotted_namespace_is_not(tmp_path):
    assert error_codes(load(tmp_path, sweep_data(target={**sweep_data()["target"], "queue": "team.a"}))) == []
    (problem,) = load(tmp_path, sweep_data(target={**sweep_data()["target"], "namespace": "team.a"})).problems
    assert "is not a Kubernetes namespace" in problem.message and "('.'" not in problem.hint


def test_env_values_must_be_strings(tmp_path):
    source = load(tmp_path, sweep_data(target={**sweep_data()["target"], "env": {"XLA_FLAGS": 3}}))
    (problem,) = source.problems
    assert problem.loc == ("target", "env", "XLA_FLAGS") and "quote" in problem.hint


def test_a_bad_sweep_name_is_an_error(tmp_path):
    assert error_codes(load(tmp_path, sweep_data(name="Alpha_End"))) == ["bad_sweep_name"]
    (problem,) = load(tmp_path, sweep_data(name="Alpha_End")).problems
    assert "('alpha-end' would do)" in problem.message  # the user's own name, made valid


def test_a_base_spec_file_is_held_to_what_validate_holds_it_to(tmp_path):
    # plan and sweep took `steps: 200` then `steps: 5` as 5 (validate refused the file), put a YAML error at the
    # sweep's `spec:` line, and left a misspelt placeholder in the spec to go literally into the JobSet.
    import yaml
    from sweep_support import SPEC

    good = yaml.safe_dump(SPEC, sort_keys=False)
    write(tmp_path, good + "steps: 5\n", "twice.yaml")
    (dup,) = load(tmp_path, sweep_data(spec="twice.yaml")).problems
    assert (dup.code, dup.loc, dup.file.endswith("twice.yaml")) == ("duplicate_key", ("steps",), True), dup
    assert dup.line == good.count("\n") + 1

    write(tmp_path, "student: {model: tiny-2l\nteacher: {}\n", "broken.yaml")
    (syntax,) = load(tmp_path, sweep_data(spec="broken.yaml")).problems
    assert syntax.code == "yaml_syntax" and syntax.file.endswith("broken.yaml") and syntax.line == 2, syntax
    assert "in the spec the sweep names (" in syntax.message and "sweep.yaml:2)" in syntax.message

    typo = {**SPEC, "teacher": {**SPEC["teacher"], "load_parameters_path": "${prerequisites.teachr.output}/ckpt"}}
    write(tmp_path, typo, "typo.yaml")
    write(tmp_path, {**SPEC, "mode": "pretrain", "teacher": None}, "t.yaml")
    source = load(tmp_path, sweep_data(spec="typo.yaml", prerequisites={"teacher": {"spec": "t.yaml"}}))
    (named,) = [p for p in source.problems if p.is_error]
    assert named.code == "unknown_prerequisite" and named.file.endswith("typo.yaml") and named.line is not None
    assert named.loc == ("teacher", "load_parameters_path") and "did you mean 'teacher'?" in named.hint
    # A prerequisite's spec file may use only those listed before it.
    uses_later = {**SPEC, "mode": "pretrain", "teacher": None, "name": "${prerequisites.b.output}"}
    write(tmp_path, uses_later, "a.yaml")
    prerequisites = {"a": {"spec": "a.yaml"}, "b": {"spec": "t.yaml"}}
    (later,) = [p for p in load(tmp_path, sweep_data(prerequisites=prerequisites)).problems if p.is_error]
    assert later.code == "unknown_prerequisite" and "listed before 'a'" in later.message, later
    assert later.file.endswith("a.yaml")


def test_validate_warns_that_a_placeholder_is_filled_only_by_a_sweep(tmp_path):
    from sweep_support import SPEC

    from distillspec.specfile import read_spec_file

    path = write(tmp_path, {**SPEC, "name": "x", "data": {"source": "text", "path": "${prerequisites.t.output}/c.txt"}})
    (warning,) = read_spec_file(path).problems
    assert warning.code == "placeholder_outside_sweep" and warning.severity == "warning"
    assert warning.loc == ("data", "path") and warning.line is not None
    # An environment variable is read as written too (a sweep's overrides refuse ${HOME}; a spec said nothing).
    path = write(tmp_path, {**SPEC, "name": "x", "output_dir": "${HOME}/runs"}, "env.yaml")
    (warning,) = read_spec_file(path).problems
    assert warning.code == "env_var_not_expanded" and "(${HOME})" in warning.message


def test_a_prerequisite_nothing_uses_is_a_warning_and_two_that_use_each_other_a_cycle(tmp_path):
    from sweep_support import SPEC

    write(tmp_path, {**SPEC, "mode": "pretrain", "teacher": None}, "t.yaml")
    source = load(tmp_path, sweep_data(prerequisites={"teacher": {"spec": "t.yaml"}}))
    (unused,) = source.problems
    assert (unused.code, unused.severity, unused.loc) == (
        "prerequisite_unused",
        "warning",
        ("prerequisites", "teacher"),
    )
    used = sweep_data(
        prerequisites={"teacher": {"spec": "t.yaml"}},
        overrides={"teacher.load_parameters_path": "${prerequisites.teacher.output}/checkpoints"},
    )
    assert load(tmp_path, used).problems == ()
    cycle = {
        "a": {"spec": "t.yaml", "overrides": {"student.load_parameters_path": "${prerequisites.b.output}"}},
        "b": {"spec": "t.yaml", "overrides": {"student.load_parameters_path": "${prerequisites.a.output}"}},
    }
    (nested,) = [p for p in load(tmp_path, sweep_data(prerequisites=cycle)).problems if p.is_error]
    assert nested.code == "nested_prerequisite" and "a cycle no order can run (a → b → a)" in nested.hint, nested
    # Longer cycles are named in full (each was told to move one up: no order satisfied both), and using itself.
    three = {
        "a": {"spec": "t.yaml", "overrides": {"student.load_parameters_path": "${prerequisites.b.output}"}},
        "b": {"spec": "t.yaml", "overrides": {"student.load_parameters_path": "${prerequisites.c.output}"}},
        "c": {"spec": "t.yaml", "overrides": {"student.load_parameters_path": "${prerequisites.a.output}"}},
    }
    hints = [p.hint for p in load(tmp_path, sweep_data(prerequisites=three)).problems if p.is_error]
    assert hints[0].startswith("a cycle no order can run (a → b → c → a)"), hints
    own = {"a": {"spec": "t.yaml", "overrides": {"student.load_parameters_path": "${prerequisites.a.output}"}}}
    (itself,) = [p for p in load(tmp_path, sweep_data(prerequisites=own)).problems if p.is_error]
    assert itself.hint == "'a' uses its own output: give it a fixed path"


def test_an_empty_seeds_list_is_an_empty_axis(tmp_path):
    # Accepted silently (one run, seed 0) while an empty axis is an error.
    assert error_codes(load(tmp_path, sweep_data(seeds=[]))) == ["empty_axis"]
    assert error_codes(load(tmp_path, sweep_data(seeds=[0]))) == []


def test_a_tilde_path_is_said_to_be_taken_literally(tmp_path):
    # `output_base: ~/runs` wrote a folder named `~` in the current directory, with no word.
    source = load(tmp_path, sweep_data(target={"kind": "local", "output_base": "~/runs/b"}))
    assert [p.code for p in source.problems if p.code == "tilde_path"] == ["tilde_path"]
    from distillspec.specfile import validate_data

    _, problems = validate_data({"mode": "pretrain", "student": {"model": "tiny-2l"}, "output_dir": "~/runs"})
    assert [p.code for p in problems] == ["tilde_path"] and problems[0].severity == "warning"


def test_a_misspelt_key_of_a_prerequisite_gets_a_suggestion(tmp_path):
    # `spek:` in a prerequisite said "unknown key" and nothing more (the same typo at the top level got one).
    teacher = {"spec": {"student": {"model": "tiny-4l"}, "mode": "pretrain"}, "spek": "x.yaml"}
    source = load(tmp_path, sweep_data(prerequisites={"teacher": teacher}))
    (problem,) = [p for p in source.problems if p.code == "unknown_key"]
    assert problem.hint == "did you mean 'spec'?"


def test_a_spec_missing_beside_a_sweep_on_standard_input_names_the_folder_it_was_looked_for_in(tmp_path, monkeypatch):
    # `cat sweeps/qs.yaml | distillctl plan -` from elsewhere: "no such file: tiny.yaml", without where it looked.
    from distillspec.sweep import load_sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"name: s\nspec: tiny.yaml\n")))
    source = load_sweep("-")
    (problem,) = [p for p in source.problems if p.code == "file_not_found"]
    assert f"read from {tmp_path}: a sweep on standard input names its specs from the current directory" in problem.hint


def test_a_sweep_naming_itself_or_a_blank_spec_is_said_as_such(tmp_path):
    """`spec: s.yaml` in s.yaml was told to "name the spec file it uses ('s.yaml')" (itself); `spec: ""` read the
    sweep's own folder, ". is a directory, not a file"."""
    from sweep_support import load

    itself = load(tmp_path, {"name": "s", "spec": "sweep.yaml", "target": {"kind": "local"}})
    (problem,) = [p for p in itself.problems if p.is_error]
    assert problem.code == "sweep_not_spec" and "this sweep file itself" in problem.message, problem
    assert "sweep.yaml" not in problem.hint and "student:" in problem.hint
    blank = load(tmp_path, {"name": "s", "spec": " ", "target": {"kind": "local"}})
    (problem,) = [p for p in blank.problems if p.is_error]
    assert problem.code == "blank_path" and problem.message == "spec is blank" and problem.line == 2, problem


@pytest.mark.parametrize("field", ["termination_grace_seconds", "ttl_seconds_after_finished", "max_restarts"])
def test_a_target_count_past_what_the_manifest_holds_is_an_error(tmp_path, field):
    # 2**63 passed plan and render, and the API server would have refused the JobSet at launch.
    source = load(tmp_path, sweep_data(target={**sweep_data()["target"], field: 2**63}))
    (problem,) = [p for p in source.problems if p.is_error]
    assert problem.code == "out_of_range" and problem.loc == ("target", field) and problem.line > 1, problem


def test_an_output_base_with_a_typo_no_storage_has_is_an_error(tmp_path):
    source = load(tmp_path, sweep_data(target={**sweep_data()["target"], "output_base": "GS://bucket/runs"}))
    (problem,) = [p for p in source.problems if p.is_error]
    assert problem.code == "path_malformed" and "lower case: gs://" in problem.hint, problem


@pytest.mark.parametrize("output_base", ["file:///mnt/shared/out", "memory://out", "s3://bucket/out"])
def test_a_cluster_output_base_the_trainer_cannot_write_checkpoints_to_is_an_error(tmp_path, output_base):
    # file:///mnt/shared passed plan without even output_base_not_shared; the pods' trainer died as a bug (exit 70),
    # and refused s3:// at start (exit 1) after the launch.
    source = load(tmp_path, sweep_data(target={**sweep_data()["target"], "output_base": output_base}))
    (problem,) = [p for p in source.problems if p.is_error]
    assert problem.code == "unsupported_scheme" and problem.loc == ("target", "output_base"), problem
