"""Property: whatever YAML a user writes, `validate` answers with problems, never an exception."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillspec.config import DistillSpec
from distillspec.specfile import read_spec_text
from tests.spec_helpers import GOOD

KEYS = [
    "student",
    "teacher",
    "loss",
    "alpha",
    "beta",
    "temperature",
    "start",
    "end",
    "schedule",
    "model",
    "layer_indices",
    "batch",
    "steps",
    "mode",
    "data",
    "source",
    "num_layers",
    "vocab_size",
    "emb_dim",
    "distill_alpha",
    "student_overrides",
    "teacher_overrides",
    "model_name",
    "per_device_batch_size",
    "scan_layers",
    "enable_nnx",
    "load_parameters_path",
    "offline_data_dir",
    "init",
    "drop_layers",
    "x",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "tiny-2l",
            "tiny-4l",
            "llama3.1-8b",
            "cosine",
            "linear",
            "None",
            "first:3",
            "straddle:[1,2]",
            "full_depth:0",
            "1e-6",
            "pretrain",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.sampled_from(KEYS), children, max_size=6)
    ),
    max_leaves=30,
)


def assert_answers(text: str) -> None:
    report = read_spec_text(text, file="f.yaml")
    for problem in report.problems:
        assert problem.code and problem.message
    if report.spec is not None:
        assert isinstance(report.spec, DistillSpec)
        assert not any(p.is_error for p in report.problems)
        report.spec.resolved()  # a valid spec always resolves
    else:
        assert any(p.is_error for p in report.problems)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    assert_answers(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
def test_arbitrary_structures(data):
    assert_answers(yaml.safe_dump(data))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_of_a_good_spec(data):
    spec = copy.deepcopy(GOOD)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(spec))[1:]))
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = data.draw(values)
    assert_answers(yaml.safe_dump(spec))
