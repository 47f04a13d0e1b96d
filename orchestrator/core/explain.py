"""What a spec means once resolved: defaults, model shapes, layer indices and the schedules over training."""

from __future__ import annotations

from distillspec.config import DistillSpec
from distillspec.registry import CONSTANT_FIELDS, GEMMA_CONSTANTS, constant_in_spec_terms

PROGRESS_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def explain(spec: DistillSpec) -> dict:
    """A JSON-ready description of the resolved spec."""
    resolved = spec.resolved()
    models = {}
    for side in ("student", "teacher"):
        block = spec.student_block() if side == "student" else spec.teacher  # the student as built
        if block is not None:
            shape = block.shape()
            models[side] = {
                "model": block.model,
                "parameters": shape.param_count(),
                "num_layers": shape.num_layers,
                # the constants it computes with, stated or the registry model's (`none`: no scaling, no cap)
                "constants": {
                    k: constant_in_spec_terms(k, getattr(shape, k))
                    for k in CONSTANT_FIELDS
                    if shape.is_gemma or k not in GEMMA_CONSTANTS
                },
            }
    data = resolved.model_dump(mode="json")
    for side in ("student", "teacher"):  # a constant left to the registry model is in `models`, not a null here
        if isinstance(data.get(side), dict):
            data[side] = {k: v for k, v in data[side].items() if k not in CONSTANT_FIELDS or v is not None}
    schedules = {}
    if spec.mode == "distill":
        for name in ("alpha", "temperature", "beta"):
            value = getattr(spec.loss, name)
            schedules[name] = {
                "schedule": value.schedule,
                # At the steps metrics.jsonl, `status` and the plots number (step k: the update with 0-based
                # index k - 1), the value that step's update used: "step 1" read 0.7 here and 0.9 in the run's log,
                # and 100 % showed `end`, which no update uses.
                "values": [
                    {"progress": p, "step": step, "value": float(value.at(step - 1, spec.steps))}
                    for p in PROGRESS_POINTS
                    for step in [max(1, round(p * spec.steps))]
                ],
            }
    return {
        "spec": data,
        "layer_indices": resolved.loss.layer_indices,
        "teacher_layer_indices": spec.teacher_layer_indices(),  # the layers they meet (differ for drop_layers)
        "feature_loss": spec.mode == "distill" and spec.loss.feature_loss_on,
        "models": models,
        "schedules": schedules,
    }
