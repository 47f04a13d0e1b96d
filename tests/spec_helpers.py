"""Small builders for spec tests: a known-good spec as YAML text, edited per test."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from distillspec.specfile import SpecReport, read_spec_text

GOOD: dict[str, Any] = {
    "name": "t",
    "student": {"model": "tiny-2l"},
    "teacher": {"model": "tiny-4l", "load_parameters_path": "runs/teacher/checkpoints"},
    "loss": {
        "alpha": {"start": 0.9, "end": 0.5, "schedule": "cosine"},
        "temperature": 2.0,
        "beta": {"start": 1.0, "end": 0.1, "schedule": "cosine"},
        "layer_indices": [0, 1],
    },
    "batch": {"per_device_batch_size": 2, "max_target_length": 16},
    "steps": 10,
}


def spec_data(**edits: Any) -> dict[str, Any]:
    """GOOD with dotted-path edits: spec_data(**{"loss.alpha.end": 2}); a value of DELETE removes the key."""
    data = copy.deepcopy(GOOD)
    for path, value in edits.items():
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


DELETE = object()


def report_for(data: dict[str, Any] | str) -> SpecReport:
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    return read_spec_text(text, file="spec.yaml")


def codes(data: dict[str, Any] | str, *, errors_only: bool = True) -> list[str]:
    return [p.code for p in report_for(data).problems if p.is_error or not errors_only]
