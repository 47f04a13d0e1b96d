"""Run identities (stable, content-addressed) and the Kubernetes name budgets."""

from __future__ import annotations

import pytest
from sweep_support import SPEC, SWEEPS, TARGET, error_codes, expanded, sweep_data

from distillspec.config import DistillSpec
from distillspec.sweep import Target, load_sweep
from orchestrator.core import identity

SPEC_MODEL = DistillSpec.model_validate(SPEC)


def test_the_run_id_is_short_lower_case_and_dns_safe():
    rid = identity.run_id(SPEC_MODEL, Target.model_validate(TARGET))
    assert len(rid) == identity.RUN_ID_LENGTH and set(rid) <= set("abcdefghijklmnopqrstuvwxyz234567")


def test_the_run_id_ignores_name_output_dir_and_how_the_spec_is_written():
    target = Target.model_validate(TARGET)
    renamed = SPEC_MODEL.model_copy(update={"name": "other", "output_dir": "elsewhere"})
    # a preset and the list it resolves to, and registry dims written out, mean the same run
    spelled_out = DistillSpec.model_validate(
        {
            **SPEC,
            "loss": {**SPEC["loss"], "layer_indices": "full_depth:2"},
            "student": {"model": "tiny-2l", "num_layers": 2},
        }
    )
    ids = {identity.run_id(s, target) for s in (SPEC_MODEL, renamed, spelled_out)}
    assert len(ids) == 1


def test_editing_one_value_changes_the_run_id():
    target = Target.model_validate(TARGET)
    edited = DistillSpec.model_validate({**SPEC, "steps": 11})
    assert identity.run_id(edited, target) != identity.run_id(SPEC_MODEL, target)


@pytest.mark.parametrize(
    ("field", "value", "changes"),
    [
        ("tpu_type", "v6e-256", True),
        ("slices", 1, True),
        ("image", "example.com/distill:2", True),
        ("env", {"XLA_FLAGS": "--xla_dump_to=/tmp"}, True),
        ("namespace", "research", False),
        ("queue", "other-queue", False),
        ("priority", "high", False),
        ("ttl_seconds_after_finished", 60, False),
        ("max_restarts", 0, False),
        ("output_base", "gs://x/y", False),
        ("kind", "xpk", False),
    ],
)
def test_only_target_fields_that_change_the_run_change_the_id(field, value, changes):
    base = Target.model_validate(TARGET)
    other = Target.model_validate({**TARGET, field: value, "cluster": "c"})
    assert (identity.run_id(SPEC_MODEL, base) != identity.run_id(SPEC_MODEL, other)) is changes


def test_ids_do_not_depend_on_grid_position_or_the_sweep_file(tmp_path):
    one = expanded(tmp_path, sweep_data(name="one", axes={"loss.alpha.end": [0.3, 0.5]}), "one.yaml")
    two = expanded(tmp_path, sweep_data(name="two", axes={"loss.alpha.end": [0.5, 0.7]}, seeds=[0]), "two.yaml")
    assert one.points[1].run_id == two.points[0].run_id
    assert one.points[1].jobset_name == f"one-{one.points[1].run_id}"


def test_the_spec_hash_covers_what_the_trainer_receives():
    a = SPEC_MODEL.model_copy(update={"output_dir": "gs://a"})
    b = SPEC_MODEL.model_copy(update={"output_dir": "gs://b"})
    assert identity.spec_hash(a) != identity.spec_hash(b) and len(identity.spec_hash(a)) <= 63


def test_longest_pod_name_follows_the_jobset_webhook():
    assert identity.longest_pod_name("s-abc", slices=2, vms_per_slice=16) == "s-abc-slice-job-1-15-abcde"


def test_a_name_within_budget_passes():
    budget = identity.name_budget(slices=2, vms_per_slice=16, kind="kubernetes")
    assert identity.name_problems("a" * budget, slices=2, vms_per_slice=16, kind="kubernetes") == []
    codes = [p.code for p in identity.name_problems("a" * (budget + 1), slices=2, vms_per_slice=16, kind="kubernetes")]
    assert codes == ["pod_name_too_long"]


def test_more_slices_and_hosts_shrink_the_budget():
    assert identity.name_budget(slices=2, vms_per_slice=16, kind="kubernetes") == 63 - len("-slice-job-1-15-abcde")
    assert identity.name_budget(slices=12, vms_per_slice=128, kind="kubernetes") == 63 - len("-slice-job-11-127-abcde")


def test_xpk_caps_workload_names_at_40():
    assert identity.name_budget(slices=1, vms_per_slice=1, kind="xpk") == 40
    codes = [p.code for p in identity.name_problems("a" * 41, slices=1, vms_per_slice=1, kind="xpk")]
    assert codes == ["xpk_name_too_long"]


def test_a_non_dns_name_is_rejected():
    assert [p.code for p in identity.name_problems("9abc", slices=1, vms_per_slice=1, kind="kubernetes")] == [
        "name_not_dns_1035"
    ]


def test_a_sweep_name_over_budget_is_an_error_before_rendering(tmp_path):
    name = "x" * 40  # accepted by the sweep model (<= 40), too long for 2 slices of 16 hosts
    result = expanded(tmp_path, sweep_data(name=name))
    assert error_codes(result) == ["pod_name_too_long"]
    (problem,) = result.problems
    assert problem.loc == ("name",) and problem.line == 1 and "at most 31 characters" in problem.hint


def test_an_xpk_target_applies_xpk_limit(tmp_path):
    target = {**TARGET, "kind": "xpk", "cluster": "c", "tpu_type": "v5p-8", "slices": 1}
    result = expanded(tmp_path, sweep_data(name="a" * 30, target=target))
    assert error_codes(result) == ["xpk_name_too_long"]


def test_identify_equals_run_id_and_spec_hash_of_the_final_spec():
    """The sweep's one-pass identity is the same as the two separate functions."""
    from orchestrator.core import identity
    from orchestrator.core.expansion import expand

    result = expand(load_sweep(SWEEPS / "quickstart.yaml"))
    for run in result.runs:
        unnamed = run.spec.model_copy(update={"name": "x", "output_dir": "elsewhere"})
        assert identity.run_id(unnamed, result.sweep.target) == run.run_id
        assert identity.spec_hash(run.spec) == run.spec_hash


def test_a_tensorboard_folder_is_where_a_run_writes_not_what_it_computes():
    """`logging.tensorboard_dir` (the guide's `tensorboard_dir`) moves the events: the same run id, as for the output
    base, while the spec the trainer receives (its hash) says where they go; unset, ids and hashes are as before."""
    from orchestrator.core.expansion import expand

    target = Target.model_validate(TARGET)
    moved = DistillSpec.model_validate({**SPEC, "logging": {"tensorboard_dir": "gs://b/tb"}})
    assert identity.run_id(moved, target) == identity.run_id(SPEC_MODEL, target)
    assert identity.spec_hash(moved) != identity.spec_hash(SPEC_MODEL)
    assert "tensorboard_dir" not in identity.canonical_json(identity.identity_payload(SPEC_MODEL, target))
    result = expand(load_sweep(SWEEPS / "quickstart.yaml"))
    for run in result.runs:  # the sweep's one-pass identity leaves it out too
        unnamed = run.spec.model_copy(update={"name": "x", "logging": moved.logging})
        assert identity.identify(unnamed, result.sweep.target)[0] == run.run_id
