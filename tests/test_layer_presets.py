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


def test_top_heavy_is_dense_near_the_top():
    layers = resolve_preset("top_heavy:6", 32)
    assert len(layers) == 6 and layers[-2:] == [30, 31] and min(layers) >= 15
    gaps = [b - a for a, b in zip(layers, layers[1:])]
    assert gaps == sorted(gaps, reverse=True)
    assert resolve_preset("top_heavy:1", 32) == [31]


def test_straddle_brackets_each_pruned_region():
    assert resolve_preset("straddle:[20, 21, 22, 23]", 32) == [19, 24]
    assert resolve_preset("straddle:20-23", 32) == [19, 24]
    assert straddle([0, 1, 5]) == [2, 4, 6]
    assert resolve_preset("straddle", 28, pruned=(5, 9, 10)) == [4, 6, 8, 11]


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
