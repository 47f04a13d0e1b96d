"""Gemma 2's scanned entry: a pair of decoder layers, sliding-window then global, as MaxText stacks them.

Everything else that is Gemma's (the (1 + w) norms, post-norms, GeGLU, soft-capping, √d embedding scale, QK-norm
for Gemma 3) is an option of the shared `DecoderLayer` and `Transformer`, switched on by the shape's family.
Gemma 3 needs no block of its own: its stack is one layer per entry, and the scan hands each layer its kind.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from distillspec.registry import ModelShape
from trainer.models.layers import DecoderLayer


class Gemma2Pair(nnx.Module):
    """Layers `2i` (sliding-window) and `2i + 1` (global). Only the global layer sows its out-projection, so a
    feature tap `layer_indices: [i]` reads the pair's global layer: one `[B, T, D]` per stack entry."""

    def __init__(self, shape: ModelShape, *, weight_dtype, dtype, sow: bool, rngs: nnx.Rngs):
        self.sliding = DecoderLayer(shape, weight_dtype=weight_dtype, dtype=dtype, sow=False, rngs=rngs)
        self.full = DecoderLayer(shape, weight_dtype=weight_dtype, dtype=dtype, sow=sow, rngs=rngs)

    def __call__(
        self, x: jax.Array, positions: jax.Array, local: Any = None, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        del local  # the pair's kinds are fixed
        return self.full(self.sliding(x, positions, True, segment_ids), positions, False, segment_ids)
