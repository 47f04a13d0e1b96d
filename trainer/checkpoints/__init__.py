"""Checkpoints in every format the trainer reads, behind one API; one module per format (`own`: this trainer's
Orbax checkpoints, `hf`: Hugging Face folders, `maxtext`: MaxText's Orbax checkpoints, `…/<step>/items`).

`load_params` fills a model's parameters from a spec's `load_parameters_path`, after checking the checkpoint's
own config against the spec's model; `load_model` builds the model a checkpoint describes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from distillspec.hf_config import mismatch_hint, shape_mismatches
from distillspec.registry import ModelShape
from trainer.checkpoints import hf, maxtext, own
from trainer.exit_codes import UserError

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def detect(path: str) -> str:
    """`hf`, `maxtext` or `own`; raises UserError for a path that names a MaxText checkpoint but is broken."""
    if hf.is_remote(path):
        if hf.is_hf_folder(path):  # read through fsspec
            return "hf"
        if maxtext.is_maxtext(path):
            return "maxtext"
        return "own"  # Orbax reads gs:// itself
    if hf.is_hf_folder(path):
        return "hf"
    if maxtext.is_maxtext(path):
        return "maxtext"
    return "own"


def checkpoint_shape(path: str) -> ModelShape:
    """The model a checkpoint's own config describes."""
    kind = detect(path)
    if kind == "hf":
        return hf.shape_from_config(hf.read_config(path), f"{path}/{hf.CONFIG}")
    if kind == "maxtext":
        return maxtext.checkpoint_shape(path)
    return own.shape(path)


def load_params(path: str, shape: ModelShape, abstract: Any, *, side: str) -> Any:
    """Parameters for a model of `shape` from `path` (any format), placed like `abstract` (a pure dict of
    ShapeDtypeStructs with shardings). `side` ("teacher"/"student") names the spec block in errors."""
    kind = detect(path)
    if kind == "maxtext":
        return maxtext.load(path, shape, abstract, side=side)
    if kind == "hf":
        found = checkpoint_shape(path)
        problems = shape_mismatches(found, shape)
        if problems:
            raise UserError(
                f"{side}.load_parameters_path {path} holds a different model than the spec's {side}: "
                + "; ".join(problems),
                mismatch_hint(side, found, shape),
            )
        return hf.load(path, shape, abstract)
    return own.load(path, abstract)


def load_model(path: str, *, dtype: str = "float32") -> Any:
    """The model stored at `path` (family and shape read from the checkpoint), on the default device, with
    weights and activations in `dtype`. Its `logits(tokens)` maps int32 `[batch, length]` to float32
    `[batch, length, vocab]`. Raises UserError for a checkpoint it cannot read."""
    from trainer.models import ModelConfig, abstract_model

    if dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}", "use float32 or bfloat16")
    shape = checkpoint_shape(path)
    config = ModelConfig(shape, weight_dtype=_DTYPES[dtype], dtype=_DTYPES[dtype])
    graphdef, abstract_state = abstract_model(config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(abstract_state)
    )
    params = load_params(path, shape, abstract, side="model")
    return nnx.merge(graphdef, params)
