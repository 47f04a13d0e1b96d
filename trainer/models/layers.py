"""The blocks every family shares, in Flax NNX: RMSNorm, RoPE, grouped-query attention, the gated MLP and one
pre-norm decoder layer whose family options switch on what Qwen 3 and Gemma add.

Einsum letters: B batch, T/S query/key positions, D model width, H query heads, N kv heads, G query heads per kv
head, K head dim, F MLP width, V vocabulary.

What each option does is written the way Hugging Face's `modeling_{llama,qwen3,gemma2,gemma3}.py` compute it
(float32 norms, halves-rotated RoPE, scores soft-capped before the mask, softmax in float32), so imported
weights give the same logits.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distillspec.registry import ModelShape
from trainer.sharding import constrain

FEATURES = "out_projection_activations"


def param(rngs: nnx.Rngs, std: float, shape: tuple[int, ...], names: tuple[str | None, ...], dtype) -> nnx.Param:
    """A parameter drawn from N(0, std²); `init_std` metadata lets `host_init` draw the same distribution."""
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), out_sharding=names, eager_sharding=False, init_std=std)


def dense(x: jax.Array, w: jax.Array, contracted: int = 1) -> jax.Array:
    """`x [..., *C]` times `w [*C, *O]` -> `[..., *O]` over the `contracted` last axes of `x` (the first of `w`),
    as one 2-D matmul of the flattened tokens.

    Why flattened: the weight gradient then contracts one token axis. Contracting two (batch and positions),
    XLA:CPU's dot canonicalisation first copies the activation gradient into a transposed `[features, tokens]`
    array, in strided order, and that copy can cost as much as the matmul."""
    lead, inner, out = x.shape[: x.ndim - contracted], w.shape[:contracted], w.shape[contracted:]
    flat = x.reshape(math.prod(lead), math.prod(inner)) @ w.reshape(math.prod(inner), math.prod(out))
    return flat.reshape(*lead, *out)


def fan_in(*dims: int) -> float:
    """Standard deviation 1/sqrt(fan-in): unit-variance outputs for unit-variance inputs."""
    return float(np.prod(dims)) ** -0.5


class RMSNorm(nnx.Module):
    """`x / rms(x) · w`, or `· (1 + w)` for Gemma (whose stored `w` starts at 0), computed in float32."""

    def __init__(self, dim: int, eps: float, *, plus_one: bool, dtype):
        init = 0.0 if plus_one else 1.0
        self.scale = nnx.Param(
            jnp.full((dim,), init, dtype), out_sharding=("norm",), eager_sharding=False, init_std=None, init=init
        )
        self.eps = eps
        self.plus_one = plus_one

    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        w = self.scale[...].astype(jnp.float32)
        return (normed * (1.0 + w if self.plus_one else w)).astype(x.dtype)


def inverse_frequencies(shape: ModelShape, *, local: bool) -> np.ndarray:
    """RoPE inverse frequencies `[K/2]` (float32) of a global or sliding-window layer, scaled as the model is."""
    theta = shape.rope_local_theta if (local and shape.rope_local_theta) else shape.rope_theta
    k = shape.head_dim
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, k, 2, dtype=np.float32) / np.float32(k)))).astype(np.float32)
    scaling = None if local else shape.rope_scaling
    if scaling is None:
        return inv
    if scaling.kind == "linear":
        return (inv / np.float32(scaling.factor)).astype(np.float32)
    # llama3: long wavelengths divided by `factor`, short ones kept, the band between interpolated smoothly.
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary position embedding on `x [B, T, N, K]` at `positions [B, T]` (halves rotated, as Hugging Face
    stores Llama-style weights)."""
    angle = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, K/2]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions `[B, T]` (int32) that restart at 0 where `segment_ids [B, T]` changes: each packed document is
    positioned as if it were alone in its row."""
    t = segment_ids.shape[-1]
    index = jnp.arange(t, dtype=jnp.int32)
    change = jnp.concatenate(
        [jnp.ones_like(segment_ids[..., :1], bool), segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1
    )
    starts = jax.lax.cummax(jnp.where(change, index, 0), axis=segment_ids.ndim - 1)
    return index - starts


def _mask(t: int, s: int, window, segment_ids: jax.Array | None, *, causal: bool) -> jax.Array | None:
    """Boolean mask `[B or 1, 1, T, S]` (True: may attend) of what `jax.nn.dot_product_attention`'s static
    arguments cannot say: a traced window (Gemma 3 in a scan) and packed documents; with `causal`, also the causal
    and static-window parts (the head-major path). None when nothing is left to mask."""
    i = jnp.arange(t)[:, None]
    j = jnp.arange(s)[None, :]
    allowed = None
    if causal:
        allowed = j <= i  # [T, S]
        if isinstance(window, int):
            allowed = allowed & (i - j < window)
    if window is not None and not isinstance(window, int):
        is_local, size = window
        local = (i - j < size) | ~is_local
        allowed = local if allowed is None else allowed & local
    mask = None if allowed is None else allowed[None, None]  # [1, 1, T, S]
    if segment_ids is not None:
        same = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [B, 1, T, S]
        mask = same if mask is None else mask & same
    return mask


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    softcap: float | None,
    window,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Causal grouped-query attention: q `[B, T, H, K]`, k and v `[B, S, N, K]` -> `[B, T, H, K]`.

    `window`: None (global), an int (every query sees that many keys, itself included), or a traced pair
    `(is_local, size)` when the layer's kind is only known inside a scan (Gemma 3). `segment_ids [B, T]` (packed
    data): a query sees only keys of its own segment.

    On accelerators, without a soft cap, this is `jax.nn.dot_product_attention` (scores in float32, softmax in
    float32, the platform's fused kernel where one applies). On CPU, which has no fused kernel, and for
    soft-capped families (Gemma 2), whose cap that call cannot apply, `attend_head_major` computes the same thing.
    """
    if softcap is None and jax.default_backend() != "cpu":
        return attend_fused_call(q, k, v, scale=scale, window=window, segment_ids=segment_ids)
    return attend_head_major(q, k, v, scale=scale, softcap=softcap, window=window, segment_ids=segment_ids)


def attend_fused_call(q, k, v, *, scale, window, segment_ids=None) -> jax.Array:
    """`attend` through `jax.nn.dot_product_attention` (no soft cap)."""
    static_window = (window - 1, 0) if isinstance(window, int) else None
    mask = _mask(q.shape[1], k.shape[1], window, segment_ids, causal=False)
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, is_causal=True, local_window_size=static_window
    ).astype(v.dtype)


def attend_head_major(q, k, v, *, scale, softcap, window, segment_ids=None) -> jax.Array:
    """`attend` with the scores `[B, N, G·T, S]` laid out head-major: each kv head's queries (its group of G query
    heads × T positions, flattened) are the rows of one matmul, and the softmax runs along the last axis.

    Why not `jax.nn.dot_product_attention`'s XLA implementation on CPU: it vmaps over the group axis, and XLA:CPU
    then copies score-sized arrays into transposed layouts, six per layer forward and backward (`[4, 8, 2, 256,
    256]` each at the bench's mid size). Why G·T flattened: the key and value gradients contract the queries, and
    a contraction over two axes (G and T) makes XLA:CPU copy the scores' gradient first (see `dense`). Here only
    q, k, v and the output (`[B, T, ·, K]`, T/K times smaller than the scores) are transposed. The soft cap
    (Gemma 2) is applied before the mask, as in its reference implementation."""
    b, t, h, kd = q.shape
    n, s = k.shape[2], k.shape[1]
    g = h // n
    qh = q.reshape(b, t, n, g, kd).transpose(0, 2, 3, 1, 4).reshape(b, n, g * t, kd)  # [B, N, G·T, K]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, N, S, K]
    allowed = _mask(t, s, window, segment_ids, causal=True)  # [B or 1, 1, T, S]
    allowed = jnp.broadcast_to(allowed[:, :, None], (allowed.shape[0], 1, g, t, s)).reshape(-1, 1, g * t, s)
    out = _head_major_core(qh, kh, vh, allowed, scale, softcap)  # [B, N, G·T, K]
    return out.reshape(b, n, g, t, kd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, kd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _head_major_core(qh, kh, vh, allowed, scale, softcap):
    """`softmax(mask(cap(scale·qh·khᵀ)))·vh` over head-major `[B, N, Q, ·]` arrays, with a hand-written backward.

    Why not autodiff: through `jax.nn.softmax` it kept the exponentials, a score-sized broadcast of each row's
    1/Σ and the probabilities for the backward pass, and ran score-sized passes to divide and to reduce `dP ⊙ P`.
    Here the forward pass normalises the `[Q, K]` output instead of the `[Q, S]` probabilities, the backward pass
    keeps only the exponentials and the row normalisers, and takes each row's `Σ_s dP·P` as `Σ_k dO·O` (an
    output-sized product, as flash attention does). The key and value gradients contract the queries with the
    small operand first (`bnqk,bnqs->bnks`, then a k/v-sized transpose): XLA:CPU ran the other order at a quarter
    of the speed. On the bench's mid size, attention forward and backward alone took 1.5× less time, the whole
    step 1.03–1.07× less (three A/Bs on AVX-512, old and new alternating in one process)."""
    return _head_major_core_fwd(qh, kh, vh, allowed, scale, softcap)[0]


def _head_major_core_fwd(qh, kh, vh, allowed, scale, softcap):
    scores = jnp.einsum("bnqk,bnsk->bnqs", qh, kh, preferred_element_type=jnp.float32) * scale  # [B, N, Q, S]
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    masked = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    e = jnp.exp(masked - jnp.max(masked, axis=-1, keepdims=True))
    inv_sum = 1.0 / jnp.sum(e, axis=-1)  # [B, N, Q]
    weighted = jnp.einsum("bnqs,bnsk->bnqk", e.astype(vh.dtype), vh, preferred_element_type=jnp.float32)
    out = (weighted * inv_sum[..., None]).astype(vh.dtype)
    capped = scores if softcap is not None else None  # the cap's derivative needs it
    return out, (qh, kh, vh, allowed, e, inv_sum, out, capped)


def _head_major_core_bwd(scale, softcap, residuals, d_out):
    qh, kh, vh, allowed, e, inv_sum, out, capped = residuals
    d_out32 = d_out.astype(jnp.float32)
    row = jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1)  # Σ_s dP·P per row
    d_p = jnp.einsum("bnqk,bnsk->bnqs", d_out, vh, preferred_element_type=jnp.float32)
    d_scores = e * ((d_p - row[..., None]) * (inv_sum * scale)[..., None])  # softmax's backward, with the scale
    if capped is not None:
        d_scores = d_scores * (1.0 - jnp.square(capped / softcap))
    d_scores = jnp.where(allowed, d_scores, 0.0).astype(qh.dtype)  # masked scores get none (a fully masked row too)
    d_q = jnp.einsum("bnqs,bnsk->bnqk", d_scores, kh, preferred_element_type=jnp.float32).astype(qh.dtype)
    d_k = jnp.einsum("bnqk,bnqs->bnks", qh, d_scores, preferred_element_type=jnp.float32)
    scaled_d_out = (d_out32 * inv_sum[..., None]).astype(vh.dtype)  # Pᵀ·dO = eᵀ·(dO / Σ)
    d_v = jnp.einsum("bnqk,bnqs->bnks", scaled_d_out, e.astype(vh.dtype), preferred_element_type=jnp.float32)
    return d_q, d_k.swapaxes(-1, -2).astype(kh.dtype), d_v.swapaxes(-1, -2).astype(vh.dtype), None


_head_major_core.defvjp(_head_major_core_fwd, _head_major_core_bwd)


class Attention(nnx.Module):
    """Self-attention with optional per-head QK RMSNorm; sows its output projection when `sow` is set."""

    def __init__(self, shape: ModelShape, *, weight_dtype, dtype, sow: bool, rngs: nnx.Rngs):
        s, w = shape, weight_dtype
        d, h, n, k = s.emb_dim, s.num_query_heads, s.num_kv_heads, s.head_dim
        self.wq = param(rngs, fan_in(d), (d, h, k), ("embed", "q_heads", "head_dim"), w)  # [D, H, K]
        self.wk = param(rngs, fan_in(d), (d, n, k), ("embed", "kv_heads", "head_dim"), w)  # [D, N, K]
        self.wv = param(rngs, fan_in(d), (d, n, k), ("embed", "kv_heads", "head_dim"), w)  # [D, N, K]
        self.wo = param(rngs, fan_in(h, k), (h, k, d), ("q_heads", "head_dim", "embed"), w)  # [H, K, D]
        if s.qk_norm:
            self.q_norm = RMSNorm(k, s.norm_eps, plus_one=s.is_gemma, dtype=w)
            self.k_norm = RMSNorm(k, s.norm_eps, plus_one=s.is_gemma, dtype=w)
        self.shape, self.dtype, self.sow_features = shape, dtype, sow

    def __call__(
        self, x: jax.Array, positions: jax.Array, local: Any, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """x `[B, T, D]`, positions `[B, T]`; `local` True/False, or a traced bool (Gemma 3 in a scan);
        `segment_ids [B, T]` keeps packed documents from attending to each other."""
        s, dt = self.shape, self.dtype
        q = dense(x, self.wq[...].astype(dt))  # [B, T, H, K]
        k = dense(x, self.wk[...].astype(dt))  # [B, T, N, K]
        v = dense(x, self.wv[...].astype(dt))  # [B, T, N, K]
        if s.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if isinstance(local, bool):
            inv_freq = jnp.asarray(inverse_frequencies(s, local=local))
            window = s.sliding_window if local else None
        else:  # both frequency sets are constants; the traced flag picks one
            inv_freq = jnp.where(
                local, inverse_frequencies(s, local=True), inverse_frequencies(s, local=False)
            )  # [K/2]
            window = (local, s.sliding_window)
        q = constrain(rope(q, positions, inv_freq), ("act_batch", "act_length", "act_heads", None))
        k = rope(k, positions, inv_freq)
        scale = (s.query_pre_attn_scalar or s.head_dim) ** -0.5
        out = attend(
            q, k, v, scale=scale, softcap=s.attn_softcap, window=window, segment_ids=segment_ids
        )  # [B, T, H, K]
        out = dense(out, self.wo[...].astype(dt), contracted=2)  # [B, T, D]
        if self.sow_features:
            self.sow(nnx.Intermediate, FEATURES, out)
        return out


class MLP(nnx.Module):
    """Gated MLP `down(act(x·gate) ⊙ x·up)`: SiLU (SwiGLU) or tanh-approximate GELU (Gemma's GeGLU)."""

    def __init__(self, shape: ModelShape, *, weight_dtype, dtype, rngs: nnx.Rngs):
        s, w = shape, weight_dtype
        self.gate = param(rngs, fan_in(s.emb_dim), (s.emb_dim, s.mlp_dim), ("embed", "mlp"), w)  # [D, F]
        self.up = param(rngs, fan_in(s.emb_dim), (s.emb_dim, s.mlp_dim), ("embed", "mlp"), w)  # [D, F]
        self.down = param(rngs, fan_in(s.mlp_dim), (s.mlp_dim, s.emb_dim), ("mlp", "embed"), w)  # [F, D]
        self.dtype, self.gelu = dtype, s.is_gemma

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, D]
        dt = self.dtype
        g = dense(x, self.gate[...].astype(dt))  # [B, T, F]
        act = jax.nn.gelu(g, approximate=True) if self.gelu else jax.nn.silu(g)
        return dense(act * dense(x, self.up[...].astype(dt)), self.down[...].astype(dt))


class DecoderLayer(nnx.Module):
    """One transformer layer: pre-norm attention and MLP residuals; Gemma adds a norm after each (pre + post)."""

    def __init__(self, shape: ModelShape, *, weight_dtype, dtype, sow: bool, rngs: nnx.Rngs):
        s, w, g = shape, weight_dtype, shape.is_gemma
        self.attention_norm = RMSNorm(s.emb_dim, s.norm_eps, plus_one=g, dtype=w)
        self.attention = Attention(s, weight_dtype=w, dtype=dtype, sow=sow, rngs=rngs)
        self.mlp_norm = RMSNorm(s.emb_dim, s.norm_eps, plus_one=g, dtype=w)
        self.mlp = MLP(s, weight_dtype=w, dtype=dtype, rngs=rngs)
        if g:
            self.post_attention_norm = RMSNorm(s.emb_dim, s.norm_eps, plus_one=True, dtype=w)
            self.post_mlp_norm = RMSNorm(s.emb_dim, s.norm_eps, plus_one=True, dtype=w)
        self.post_norms = g

    def __call__(
        self, x: jax.Array, positions: jax.Array, local: Any, segment_ids: jax.Array | None = None
    ) -> jax.Array:  # [B, T, D] -> [B, T, D]
        h = self.attention(self.attention_norm(x), positions, local, segment_ids)
        x = x + (self.post_attention_norm(h) if self.post_norms else h)
        h = self.mlp(self.mlp_norm(x))
        x = x + (self.post_mlp_norm(h) if self.post_norms else h)
        return constrain(x, ("act_batch", "act_length", "act_embed"))
