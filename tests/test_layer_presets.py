"""Layer-index presets against the guide's tables."""

from __future__ import annotations

import pytest

from distillspec.layer_presets import PresetError, parse_preset, resolve_preset, straddle


def test_full_depth_matches_the_guide():
    assert resolve_preset("full_depth:8", 32) == [3, 7, 11, 15, 19, 23, 27, 31]
    assert resolve_preset("full_depth:8", 80) == [9, 19, 29, 39, 49, 59, 69, 79]


def test_first_matches_the_launcher_default():
    assert resolve_preset("first:8", 32) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert resolve_preset("first:8", 4) == [0, 1, 2, 3]


def test_top_heavy_matches_the_guide_and_is_dense_near_the_top():
    assert resolve_preset("top_heavy:6", 32) == [16, 20, 24, 28, 30, 31]
    assert resolve_preset("top_heavy:6", 80) == [60, 65, 70, 75, 78, 79]
    layers = resolve_preset("top_heavy:6", 28)  # other depths: the formula
    assert len(layers) == 6 and layers[-2:] == [26, 27] and min(layers) >= 13
    gaps = [b - a for a, b in zip(layers, layers[1:])]
    assert gaps == sorted(gaps, reverse=True)
    assert resolve_preset("top_heavy:1", 32) == [31]


def test_straddle_brackets_each_pruned_region():
    assert resolve_preset("straddle:[20, 21, 22, 23]", 32) == [19, 24]
    assert resolve_preset("straddle:20-23", 32) == [19, 24]
    assert straddle([0, 1, 5]) == [2, 4, 6]
    # With the student's own drop_layers, in the student's numbering: teacher layers 4, 6, 8 and 11 are its 4, 5,
    # 7 and 8 (the layers past each gap moved down).
    assert resolve_preset("straddle", 28, pruned=(5, 9, 10)) == [4, 5, 7, 8]


def test_a_pruned_students_layers_pair_with_the_teacher_layers_they_began_as():
    # The guide's "bracket the pruned region" on Llama 3.1 8B with layers 20 and 21 removed: the student's 19 and
    # 20, which began as the teacher's 19 and 22 (same indices on both sides compared the student's 22, the
    # teacher's 24, with the teacher's 22).
    from distillspec.specfile import validate_data

    data = {
        "student": {"model": "llama3.1-8b", "init": "teacher", "drop_layers": [20, 21], "num_layers": 30},
        "teacher": {"model": "llama3.1-8b", "load_parameters_path": "gs://bkt/t"},
        "loss": {"beta": 1.0, "layer_indices": "straddle"},
    }
    spec, problems = validate_data(data)
    assert spec is not None, problems
    assert spec.layer_indices() == [19, 20] and spec.teacher_layer_indices() == [19, 22]
    full = validate_data({**data, "loss": {"beta": 1.0, "layer_indices": [0, 19, 20, -1]}})[0]
    assert full.teacher_layer_indices() == [0, 19, 22, 31]
    same_depth = validate_data(
        {**data, "student": {"model": "llama3.1-8b"}, "loss": {"beta": 1.0, "layer_indices": [3, -1]}}
    )[0]
    assert same_depth.teacher_layer_indices() == [3, -1]  # MaxText's rule: the same index on both sides
    # A student pruned elsewhere (its own checkpoint, 30 layers): the straddle list says which layers it lacks.
    elsewhere = {"model": "llama3.1-8b", "num_layers": 30, "load_parameters_path": "gs://bkt/pruned"}
    loaded = validate_data({**data, "student": elsewhere, "loss": {"beta": 1.0, "layer_indices": "straddle:[20, 21]"}})
    assert loaded[0].layer_indices() == [19, 20] and loaded[0].teacher_layer_indices() == [19, 22], loaded[1]


@pytest.mark.parametrize(
    "text", ["first", "first:x", "first:0", "middle:3", "straddle:[a]", "straddle:5-2", "straddle:[]"]
)
def test_bad_presets(text):
    with pytest.raises(PresetError):
        parse_preset(text)


def test_a_straddle_range_past_any_model_is_refused_before_it_is_expanded():
    with pytest.raises(PresetError, match="no model is that deep"):
        parse_preset("straddle:0-99999999999")  # expanded, this range would fill the memory
    assert parse_preset("straddle:20-23") == ("straddle", (20, 21, 22, 23))
