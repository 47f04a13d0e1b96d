"""This trainer's own checkpoints (Orbax, written by `trainer.checkpointing`): a run's `checkpoints` directory,
one step directory, or its `params` item. The run's resolved spec (`spec.json`, next to `checkpoints/`) says
which model wrote it."""

from __future__ import annotations

import json
import os
from typing import Any

from distillspec.config import ModelSpec
from distillspec.registry import ModelShape
from trainer.checkpointing import resolve_params_dir, restore_params
from trainer.exit_codes import TrainerError, UserError


def is_own(path: str) -> bool:
    try:
        resolve_params_dir(path)
    except TrainerError:
        return False
    return True


def load(path: str, abstract: Any) -> Any:
    return restore_params(path, abstract)


def model_spec(path: str) -> ModelSpec:
    """The student block of the run that wrote the checkpoint at `path` (from the run's spec.json)."""
    params_dir = str(resolve_params_dir(path))
    folder = params_dir
    for _ in range(4):  # params -> step -> checkpoints -> run
        folder = os.path.dirname(folder)
        candidate = os.path.join(folder, "spec.json")
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return ModelSpec.model_validate(json.load(f)["student"])
    raise UserError(
        f"no spec.json found above {params_dir}: the checkpoint's model is unknown",
        "load a checkpoint inside the run directory that wrote it",
    )


def shape(path: str) -> ModelShape:
    return model_spec(path).shape()
