"""What a spec means once resolved: defaults, model shapes, layer indices and the schedules over training."""

from __future__ import annotations

from distillspec.config import DistillSpec

PROGRESS_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def explain(spec: DistillSpec) -> dict:
    """A JSON-ready description of the resolved spec."""
    resolved = spec.resolved()
    models = {}
    for side in ("student", "teacher"):
        block = getattr(spec, side)
        if block is not None:
            shape = block.shape()
            models[side] = {"model": block.model, "parameters": shape.param_count(), "num_layers": shape.num_layers}
    schedules = {}
    if spec.mode == "distill":
        for name in ("alpha", "temperature", "beta"):
            value = getattr(spec.loss, name)
            schedules[name] = {
                "schedule": value.schedule,
                "values": [
                    {
                        "progress": p,
                        "step": round(p * spec.steps),
                        "value": float(value.at(round(p * spec.steps), spec.steps)),
                    }
                    for p in PROGRESS_POINTS
                ],
            }
    return {
        "spec": resolved.model_dump(mode="json"),
        "layer_indices": resolved.loss.layer_indices,
        "teacher_layer_indices": spec.teacher_layer_indices(),  # the layers they meet (differ for drop_layers)
        "feature_loss": spec.mode == "distill" and spec.loss.feature_loss_on,
        "models": models,
        "schedules": schedules,
    }
