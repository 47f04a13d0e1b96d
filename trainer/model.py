"""A decoder-only transformer of the Llama family in Flax NNX: RMSNorm, RoPE, SwiGLU, grouped-query attention.

Einsum letters: B batch, T/S query/key positions, D model width, H query heads, N kv heads, G query heads per kv
head, K head dim, F MLP width, V vocabulary, L layers.

With `scan_layers`, the layers' parameters are stacked along a leading `layers` axis (built once with
`nnx.vmap`) and the forward pass scans over them with `jax.lax.scan`, so compile time does not grow with depth.
When `sow_features` is set, every layer's attention output projection `[B, T, D]` is sown into
`nnx.Intermediate` as `out_projection_activations`; the model re-sows them stacked as `[L, B, T, D]`, which
`forward` returns.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distillspec.config import ModelSpec
from distillspec.registry import ModelShape
from trainer.sharding import constrain

FEATURES = "out_projection_activations"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
UNROLL_UP_TO = 4


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What the module needs: the shape, dtypes, and whether to scan layers and sow features."""

    shape: ModelShape
    weight_dtype: Any = jnp.float32  # parameters as stored and optimised
    dtype: Any = jnp.float32  # activations and matmuls
    scan_layers: bool = True
    sow_features: bool = False
    scan_unroll: int = 1  # layers per scan iteration; parameters stay stacked either way

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, sow_features: bool = False) -> ModelConfig:
        """The spec's model. Stacks of at most `UNROLL_UP_TO` layers are scanned fully unrolled: on CPU the loop
        costs more than it saves (a 2-layer backward pass is ~30% faster), and compile time stays small."""
        shape = spec.shape()
        unroll = shape.num_layers if shape.num_layers <= UNROLL_UP_TO else 1
        return cls(shape, _DTYPES[spec.weight_dtype], _DTYPES[spec.dtype], spec.scan_layers, sow_features, unroll)


def _param(rngs: nnx.Rngs, std: float, shape: tuple[int, ...], names: tuple[str | None, ...], dtype) -> nnx.Param:
    """A parameter drawn from N(0, std²); `init_std` metadata lets `host_init` draw the same distribution."""
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), out_sharding=names, eager_sharding=False, init_std=std)


def _fan_in(*dims: int) -> float:
    """Standard deviation 1/sqrt(fan-in): unit-variance outputs for unit-variance inputs."""
    return float(np.prod(dims)) ** -0.5


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype, rngs: nnx.Rngs):
        del rngs
        self.scale = nnx.Param(jnp.ones((dim,), dtype), out_sharding=("norm",), eager_sharding=False, init_std=None)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding on `x [B, T, N, K]` at `positions [B, T]` (halves rotated, as in Llama)."""
    half = x.shape[-1] // 2
    freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [K/2]
    angle = positions[..., None].astype(jnp.float32) * freq  # [B, T, K/2]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    """Causal grouped-query self-attention; sows its output projection when `sow_features` is set."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        s, w = config.shape, config.weight_dtype
        d, h, n, k = s.emb_dim, s.num_query_heads, s.num_kv_heads, s.head_dim
        self.wq = _param(rngs, _fan_in(d), (d, h, k), ("embed", "q_heads", "head_dim"), w)  # [D, H, K]
        self.wk = _param(rngs, _fan_in(d), (d, n, k), ("embed", "kv_heads", "head_dim"), w)  # [D, N, K]
        self.wv = _param(rngs, _fan_in(d), (d, n, k), ("embed", "kv_heads", "head_dim"), w)  # [D, N, K]
        self.wo = _param(rngs, _fan_in(h, k), (h, k, d), ("q_heads", "head_dim", "embed"), w)  # [H, K, D]
        self.config = config

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:  # x [B, T, D], positions [B, T]
        c, dt = self.config, self.config.dtype
        q = jnp.einsum("btd,dhk->bthk", x, self.wq[...].astype(dt))  # [B, T, H, K]
        k = jnp.einsum("btd,dnk->btnk", x, self.wk[...].astype(dt))  # [B, T, N, K]
        v = jnp.einsum("btd,dnk->btnk", x, self.wv[...].astype(dt))  # [B, T, N, K]
        q = constrain(rope(q, positions, c.shape.rope_theta), ("act_batch", "act_length", "act_heads", None))
        k = rope(k, positions, c.shape.rope_theta)
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # [B, T, H, K]; GQA: N divides H
        out = jnp.einsum("bthk,hkd->btd", out, self.wo[...].astype(dt))  # [B, T, D]
        if c.sow_features:
            self.sow(nnx.Intermediate, FEATURES, out)
        return out


class MLP(nnx.Module):
    """SwiGLU: `down(silu(x·gate) ⊙ x·up)`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        s, w = config.shape, config.weight_dtype
        self.gate = _param(rngs, _fan_in(s.emb_dim), (s.emb_dim, s.mlp_dim), ("embed", "mlp"), w)
        self.up = _param(rngs, _fan_in(s.emb_dim), (s.emb_dim, s.mlp_dim), ("embed", "mlp"), w)
        self.down = _param(rngs, _fan_in(s.mlp_dim), (s.mlp_dim, s.emb_dim), ("mlp", "embed"), w)
        self.dtype = config.dtype

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, D]
        dt = self.dtype
        h = jax.nn.silu(x @ self.gate[...].astype(dt)) * (x @ self.up[...].astype(dt))  # [B, T, F]
        return h @ self.down[...].astype(dt)


class Block(nnx.Module):
    """Pre-norm residual block: attention, then MLP."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        s = config.shape
        self.attention_norm = RMSNorm(s.emb_dim, s.norm_eps, dtype=config.weight_dtype, rngs=rngs)
        self.attention = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(s.emb_dim, s.norm_eps, dtype=config.weight_dtype, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, D]
        x = x + self.attention(self.attention_norm(x), positions)
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("act_batch", "act_length", "act_embed"))


class Transformer(nnx.Module):
    """Token ids `[B, T]` -> next-token logits `[B, T, V]` (float32)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        s, w = config.shape, config.weight_dtype
        self.config = config
        self.embed = _param(rngs, 1.0, (s.vocab_size, s.emb_dim), ("vocab", "embed"), w)
        if config.scan_layers:

            @nnx.split_rngs(splits=s.num_layers)
            @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked(rngs: nnx.Rngs) -> Block:
                return Block(config, rngs=rngs)

            self.layers = stacked(rngs)
        else:
            self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(s.num_layers)])
        self.final_norm = RMSNorm(s.emb_dim, s.norm_eps, dtype=w, rngs=rngs)
        # [V, D] like the embedding: the weight gradient gᵀ·x then needs no transpose of the [B·T, V] gradient,
        # which XLA:CPU copies in strided order (seconds at vocab 32000).
        self.lm_head = (
            None
            if s.tie_embeddings
            else _param(rngs, _fan_in(s.emb_dim), (s.vocab_size, s.emb_dim), ("vocab", "embed"), w)
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:  # [B, T] int -> [B, T, V] float32
        c = self.config
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)  # [B, T]
        x = jnp.take(self.embed[...], tokens, axis=0).astype(c.dtype)  # [B, T, D]
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        if c.scan_layers:
            x, features = self._scan(x, positions)
        else:
            per_layer = []
            for block in self.layers:
                x, captured = nnx.capture(block, nnx.Intermediate)(x, positions)
                per_layer.append(_sown(captured))
            features = jnp.stack(per_layer) if c.sow_features else None
        if c.sow_features:
            self.sow(nnx.Intermediate, FEATURES, features)  # [L, B, T, D]
        x = self.final_norm(x)
        head = self.embed[...] if self.lm_head is None else self.lm_head[...]  # [V, D]
        logits = jnp.einsum("btd,vd->btv", x, head.astype(c.dtype), preferred_element_type=jnp.float32)
        return constrain(logits, ("act_batch", "act_length", "act_vocab"))

    def _scan(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        graphdef, layer_state = nnx.split(self.layers)
        sow = self.config.sow_features

        def body(carry: jax.Array, state) -> tuple[jax.Array, jax.Array | None]:
            y, captured = nnx.capture(nnx.merge(graphdef, state), nnx.Intermediate)(carry, positions)
            return y, (_sown(captured) if sow else None)

        return jax.lax.scan(body, x, layer_state, unroll=self.config.scan_unroll)  # features: [L, B, T, D]


def _sown(captured: nnx.State) -> jax.Array | None:
    """The one array a block sows (its attention output projection), or None."""
    leaves = jax.tree.leaves(captured)
    return leaves[0] if leaves else None


def forward(model: Transformer, tokens: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Logits `[B, T, V]` and, when the model sows them, out-projection features `[L, B, T, D]`."""
    logits, captured = nnx.capture(model, nnx.Intermediate)(tokens)
    return logits, (_sown(captured) if model.config.sow_features else None)


def init_model(config: ModelConfig, seed: int) -> Transformer:
    """A model with parameters drawn by JAX (eager or inside jit)."""
    return Transformer(config, rngs=nnx.Rngs(params=seed))


def abstract_model(config: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph definition and abstract parameters (shapes, dtypes, metadata) without computing anything."""
    return nnx.split(nnx.eval_shape(lambda: init_model(config, 0)))


def host_init(abstract_state: nnx.State, seed: int, stream: str = "") -> dict:
    """Parameters drawn on the host with NumPy from each parameter's `init_std` metadata (ones where None), as
    a pure dict of arrays.

    Why not `init_model` under jit: XLA:CPU spends 10-15 s compiling threefry for a 4-layer model's ~30 random
    draws. Each parameter gets its own stream from `(seed, crc32(stream/path))`, so values do not depend on the
    device layout; every process of a multi-host run draws the same values and keeps its own shards. `stream`
    keeps runs that share a seed apart: a distilled student must not start from the very draws its teacher
    started from when it was pre-trained (they would share structure no real student has).
    """
    out = {}
    for path, variable in nnx.to_flat_state(abstract_state):
        std = variable.get_metadata().get("init_std")
        shape, dtype = variable.shape, variable.dtype
        name = "/".join(str(p) for p in path)
        if std is None:
            value = np.ones(shape, np.float32)
        else:
            rng = np.random.default_rng([seed, zlib.crc32(f"{stream}/{name}".encode() if stream else name.encode())])
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        _set(out, path, value.astype(jnp.dtype(dtype)))
    return out


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def drop_layers(params: dict, drop: list[int], num_layers: int, scan_layers: bool) -> dict:
    """Copy of a model's parameters (a pure dict) with layers `drop` removed (the guide's pruning-recovery student).

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
