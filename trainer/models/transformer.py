"""The decoder-only transformer of every family: embeddings, a stack of blocks, final norm and logits head.

The stack's entry is the family's block: one `DecoderLayer` (Llama 3, Qwen 3, Gemma 3) or a `Gemma2Pair`.
With `scan_layers`, the blocks' parameters are stacked along a leading `layers` axis (built once with `nnx.vmap`)
and the forward pass scans over them with `jax.lax.scan`, so compile time does not grow with depth; Gemma 3's
layer kinds (sliding-window or global) ride along the scan as a boolean per entry. When `sow_features` is set,
every entry's attention output projection `[B, T, D]` is sown into `nnx.Intermediate` as
`out_projection_activations`; the model re-sows them stacked as `[L, B, T, D]` (L = stack entries), which
`forward` returns.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distillspec.config import ModelSpec
from distillspec.registry import FAMILIES, ModelShape
from trainer.models.gemma import Gemma2Pair
from trainer.models.layers import FEATURES, DecoderLayer, RMSNorm, fan_in, param, segment_positions
from trainer.sharding import constrain

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
UNROLL_UP_TO = 4
# What the backward pass keeps of each stack entry's forward (`jax.checkpoint` policies): "full" keeps nothing but
# the entry's input, "dots" keeps matmul results without batch dimensions (the weight projections; attention
# scores and elementwise work are recomputed). "none" is no checkpoint at all.
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}

__all__ = [
    "FEATURES",
    "ModelConfig",
    "Transformer",
    "abstract_model",
    "drop_layers",
    "forward",
    "host_draws",
    "host_init",
    "init_model",
]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What the module needs: the shape, dtypes, and whether to scan layers and sow features."""

    shape: ModelShape
    weight_dtype: Any = jnp.float32  # parameters as stored and optimised
    dtype: Any = jnp.float32  # activations and matmuls
    scan_layers: bool = True
    sow_features: bool = False
    scan_unroll: int = 1  # layers per scan iteration; parameters stay stacked either way
    remat: str = "none"  # per-layer rematerialisation: "full", "dots" or "none" (see `REMAT_POLICIES`)

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, sow_features: bool = False, trained: bool = False) -> ModelConfig:
        """The spec's model. Stacks of at most `UNROLL_UP_TO` layers are scanned fully unrolled: on CPU the loop
        costs more than it saves (a 2-layer backward pass is ~30% faster), and compile time stays small. Not a
        trained model under a remat policy: unrolled, XLA schedules the recomputation as straight-line code with
        nothing bounding what it keeps live, and `full` saved 8 % of a 4-layer student's temporaries where the
        rolled scan saves 75 % (a frozen teacher has no backward pass to rematerialise).

        `trained` (the student): parameters are float32 master weights whatever `weight_dtype` says, so the
        optimizer's moments and updates stay float32; `dtype: bfloat16` still computes in bfloat16 (each weight
        is cast where it is used). A frozen teacher is stored in its `weight_dtype`."""
        shape = spec.shape()
        small = shape.num_layers <= UNROLL_UP_TO and not (trained and spec.remat != "none")
        unroll = shape.num_layers if small else 1
        weights = jnp.float32 if trained else _DTYPES[spec.weight_dtype]
        return cls(shape, weights, _DTYPES[spec.dtype], spec.scan_layers, sow_features, unroll, spec.remat)


def _block(config: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    s = config.shape
    if s.family not in FAMILIES:
        raise ValueError(f"unknown model family {s.family!r}; known: {', '.join(FAMILIES)}")
    kind = Gemma2Pair if s.family == "gemma2" else DecoderLayer
    return kind(s, weight_dtype=config.weight_dtype, dtype=config.dtype, sow=config.sow_features, rngs=rngs)


class Transformer(nnx.Module):
    """Token ids `[B, T]` -> next-token logits `[B, T, V]` (float32)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        s, w = config.shape, config.weight_dtype
        self.config = config
        self.embed = param(rngs, 1.0, (s.vocab_size, s.emb_dim), ("vocab", "embed"), w)  # [V, D]
        if config.scan_layers:

            @nnx.split_rngs(splits=s.num_layers)
            @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked(rngs: nnx.Rngs) -> nnx.Module:
                return _block(config, rngs)

            self.layers = stacked(rngs)
        else:
            self.layers = nnx.List([_block(config, rngs) for _ in range(s.num_layers)])
        self.final_norm = RMSNorm(s.emb_dim, s.norm_eps, plus_one=s.is_gemma, dtype=w)
        # [V, D] like the embedding: the weight gradient gᵀ·x then needs no transpose of the [B·T, V] gradient,
        # which XLA:CPU copies in strided order (seconds at vocab 32000).
        self.lm_head = (
            None
            if s.tie_embeddings
            else param(rngs, fan_in(s.emb_dim), (s.vocab_size, s.emb_dim), ("vocab", "embed"), w)
        )

    def logits(self, tokens: jax.Array) -> jax.Array:
        """Float32 logits `[B, T, V]` for int32 `tokens [B, T]` (the checkpoint API's promise)."""
        return self(tokens)

    def hidden(self, tokens: jax.Array, segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """Hidden states after the final norm `[B, T, D]` (compute dtype) for int `tokens [B, T]`, and the
        out-projection features `[L, B, T, D]` when the model sows them (else None).

        `segment_ids [B, T]` (packed data, optional): tokens attend only within their segment, and positions
        restart at 0 where the segment id changes."""
        c, s = self.config, self.config.shape
        if segment_ids is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)  # [B, T]
        else:
            positions = segment_positions(segment_ids)
        # The lookup reads the whole table: gathered like any FSDP weight (a no-op without a mesh). Left sharded
        # (vocabulary over `tensor`, embed over `fsdp`), XLA:CPU's partitioner instead all-gathers the token ids and
        # the looked-up rows across the batch axes.
        table = constrain(self.embed[...], (None, None))
        x = jnp.take(table, tokens, axis=0)  # [B, T, D]
        if s.is_gemma:  # √d, rounded to the weights' dtype first, as Gemma does
            x = x * jnp.asarray(math.sqrt(s.emb_dim), self.embed[...].dtype)
        x = constrain(x.astype(c.dtype), ("act_batch", "act_length", "act_embed"))
        kinds = [s.is_local(i) for i in range(s.num_layers)] if s.family == "gemma3" else [False] * s.num_layers
        if c.scan_layers:
            x, features = self._scan(x, positions, jnp.asarray(kinds), segment_ids)
        else:
            per_layer = []
            for block, local in zip(self.layers, kinds):
                graphdef, state = nnx.split(block)
                x, sown = _entry(graphdef, local, c.remat, scanned=False)(state, x, positions, segment_ids)
                per_layer.append(sown)
            features = jnp.stack(per_layer) if c.sow_features else None
        return self.final_norm(x), (features if c.sow_features else None)

    def head(self) -> jax.Array:
        """The LM head `[V, D]` in the compute dtype (the embedding when tied)."""
        head = self.embed[...] if self.lm_head is None else self.lm_head[...]
        return head.astype(self.config.dtype)

    def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
        """[B, T] int (and optional segment ids [B, T]) -> [B, T, V] float32."""
        s = self.config.shape
        x, features = self.hidden(tokens, segment_ids)
        if self.config.sow_features:
            self.sow(nnx.Intermediate, FEATURES, features)  # [L, B, T, D]
        logits = project_to_vocab(x, self.head())
        if s.final_softcap is not None:
            logits = s.final_softcap * jnp.tanh(logits / s.final_softcap)
        return constrain(logits, ("act_batch", "act_length", "act_vocab"))

    def _scan(
        self, x: jax.Array, positions: jax.Array, kinds: jax.Array, segment_ids: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None]:
        graphdef, layer_state = nnx.split(self.layers)
        c = self.config
        dynamic = c.shape.family == "gemma3"

        def body(carry: jax.Array, xs) -> tuple[jax.Array, jax.Array | None]:
            state, local = xs
            entry = _entry(graphdef, local if dynamic else False, c.remat, scanned=True)
            y, sown = entry(state, carry, positions, segment_ids)
            return y, (sown if c.sow_features else None)

        # features: [L, B, T, D]
        return jax.lax.scan(body, x, (layer_state, kinds), unroll=c.scan_unroll)


def _entry(graphdef: nnx.GraphDef, local: Any, remat: str, *, scanned: bool) -> Any:
    """One stack entry as a pure function `(state, x, positions, segment_ids) -> (y, sown or None)`, under
    `jax.checkpoint` with the remat policy unless it is "none". In a scan, CSE cannot merge the recomputation
    with the forward pass across iterations, so `prevent_cse` is off there (JAX's advice for scanned remat)."""

    def run(state, x, positions, segment_ids):
        block = nnx.merge(graphdef, state)
        y, captured = nnx.capture(block, nnx.Intermediate)(x, positions, local, segment_ids)
        return y, _sown(captured)

    if remat == "none":
        return run
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; known: none, {', '.join(REMAT_POLICIES)}")
    return jax.checkpoint(run, policy=REMAT_POLICIES[remat], prevent_cse=not scanned)


def _sown(captured: nnx.State) -> jax.Array | None:
    """The one array a block sows (its attention output projection), or None."""
    leaves = jax.tree.leaves(captured)
    return leaves[0] if leaves else None


def project_to_vocab(hidden: jax.Array, head: jax.Array) -> jax.Array:
    """Float32 logits `[..., V]` of hidden states `[..., D]` and an LM head `[V, D]`: one 2-D matmul of the
    flattened tokens (see `layers.dense`: the head's weight gradient then reads the logits' gradient in place
    instead of a transposed `[V, tokens]` copy of it)."""
    lead = hidden.shape[:-1]
    flat = jnp.einsum("nd,vd->nv", hidden.reshape(-1, hidden.shape[-1]), head, preferred_element_type=jnp.float32)
    return flat.reshape(*lead, head.shape[0])


def forward(
    model: Transformer, tokens: jax.Array, segment_ids: jax.Array | None = None
) -> tuple[jax.Array, jax.Array | None]:
    """Logits `[B, T, V]` and, when the model sows them, out-projection features `[L, B, T, D]`."""
    logits, captured = nnx.capture(model, nnx.Intermediate)(tokens, segment_ids)
    return logits, (_sown(captured) if model.config.sow_features else None)


def forward_hidden(
    model: Transformer, tokens: jax.Array, segment_ids: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """What the fused loss takes instead of logits: hidden states after the final norm `[B, T, D]`, the LM head
    `[V, D]` and, when the model sows them, features `[L, B, T, D]` (the model's final soft cap goes to the loss
    separately: `StepModels.hidden_loss`)."""
    hidden, features = model.hidden(tokens, segment_ids)
    return hidden, model.head(), features


def init_model(config: ModelConfig, seed: int) -> Transformer:
    """A model with parameters drawn by JAX (eager or inside jit)."""
    return Transformer(config, rngs=nnx.Rngs(params=seed))


def abstract_model(config: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph definition and abstract parameters (shapes, dtypes, metadata) without computing anything."""
    return nnx.split(nnx.eval_shape(lambda: init_model(config, 0)))


def host_init(abstract_state: nnx.State, seed: int, stream: str = "") -> dict:
    """Parameters drawn on the host with NumPy from each parameter's `init_std` metadata (norm scales: their
    `init` value, 1, or 0 for Gemma's (1 + w) norms), as a pure dict of arrays (`host_draws`, all at once).

    Why not `init_model` under jit: XLA:CPU spends 10-15 s compiling threefry for a 4-layer model's ~30 random
    draws. Each parameter gets its own stream from `(seed, crc32(stream/path))`, so values do not depend on the
    device layout; every process of a multi-host run draws the same values and keeps its own shards. `stream`
    keeps runs that share a seed apart: a distilled student must not start from the very draws its teacher
    started from when it was pre-trained (they would share structure no real student has).
    """
    out: dict = {}
    for path, value in host_draws(abstract_state, seed, stream):
        set_path(out, path, value)
    return out


def host_draws(abstract_state: nnx.State, seed: int, stream: str = "") -> Iterator[tuple[tuple, np.ndarray]]:
    """`host_init`'s parameters one at a time, `(path, array)`: a caller that places each on its devices before
    the next is drawn holds one parameter on the host, not the model (a 70B student is 280 GB in float32)."""
    for path, variable in nnx.to_flat_state(abstract_state):
        metadata = variable.get_metadata()
        std = metadata.get("init_std")
        shape, dtype = variable.shape, variable.dtype
        name = "/".join(str(p) for p in path)
        if std is None:
            value = np.full(shape, metadata.get("init", 1.0), np.float32)
        else:
            rng = np.random.default_rng([seed, zlib.crc32(f"{stream}/{name}".encode() if stream else name.encode())])
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        yield path, value.astype(jnp.dtype(dtype))


def set_path(tree: dict, path: tuple, value) -> None:
    """Set `value` at `path` in a nested dict, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def drop_layers(params: dict, drop: list[int], num_layers: int, scan_layers: bool) -> dict:
    """Copy of a model's parameters (a pure dict) with stack entries `drop` removed (the guide's pruning-recovery
    student; for Gemma 2 an entry is a (local, global) pair, so pairs are dropped and the pattern holds).

    Scanned parameters lose those rows of the stacked `layers` axis; unscanned ones lose those list entries
    (renumbered from 0).
    """
    keep = [i for i in range(num_layers) if i not in set(drop)]
    pure = dict(params)  # a pure dict (nnx.to_pure_dict); the input is not modified
    layers = pure["layers"]
    if scan_layers:
        index = jnp.asarray(keep)
        pure["layers"] = jax.tree.map(lambda a: jnp.take(a, index, axis=0), layers)
    else:
        pure["layers"] = {new: layers[old] for new, old in enumerate(keep)}
    return pure
