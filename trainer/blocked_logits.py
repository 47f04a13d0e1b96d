"""Every per-token logit quantity of the distillation loss, computed from hidden states and LM heads block by
block, so that no `[tokens, vocab]` array of either model ever exists.

`logit_terms_from_hidden(student_hidden [N, Ds], student_head [Ds, V], teacher_hidden [N, Dt], teacher_head
[Dt, V], targets [N], temperature, blocks)` returns `(kl_at_T, kl_T1, student_ce, teacher_ce, top1_agreement)`,
each `[N]` float32 — the same five values `trainer.loss.logit_terms` computes from dense logits.

Forward: a loop over token blocks `[bt]` (tokens padded to a multiple of `bt`, the padding dropped from the
outputs) and inside it a loop over vocabulary blocks `[bv]` keeping running row statistics (online log-sum-exp):
the row max `m`, `Z_1 = Σ exp(z − m)`, `Z_T = Σ exp((z − m)/T)` for both models, the teacher-weighted differences
`A_T = Σ exp((t − m_t)/T)·(t − s)` and `A_1`, the target logits (gathered) and whether a column seen so far holds
both models' running maxima (top-1 agreement without an argmax, as `trainer.loss.top1_agreement`). Then per row
    KL_T = A_T/(T·Z_tT) − (m_t − m_s)/T − log Z_tT + log Z_sT,      CE = log Z_1 + m − z[target].
Only the row statistics (five `[N]` arrays) are saved for the backward pass. At an integer temperature known
when tracing (`integer_temperature`), `exp(d) = exp(d/T)^T`: two exponentials per logit pair instead of four
forward, two instead of three backward.

Backward (a `jax.custom_vjp`): the same two loops recompute each `[bt, bv]` block of both models' logits and form
the gradient w.r.t. the student's (soft-capped) logits,
    g = (ḡ_KL/T)·(p_sT − p_tT) + ḡ_CE·(p_s1 − onehot(target)),
times the soft-cap's derivative `1 − (capped/cap)²`, then accumulate `g·headᵀ` into the hidden-state gradient and
`hiddenᵀ·g` into the head gradient (float32). As in `trainer.loss.logit_terms`, `kl_T1`, `teacher_ce` and the
agreement carry no gradient, and nothing flows into the teacher or the temperature.

The vocabulary is not padded (that would copy the head): the last vocabulary block starts at `V − bv` and its
columns already seen are masked out. Soft-capping (Gemma): `cap·tanh(logits/cap)` applied to each model's logits
before everything else, when its cap is set.

Sharding: under a mesh whose batch axes (`data`, `fsdp`) split the tokens, both passes run inside
`jax.shard_map` on each device's own tokens (heads replicated into it, as FSDP gathers weights for any matmul);
per-token outputs stay sharded and the head gradient is a `psum` over the batch axes — no per-token or logit array
is ever gathered across devices.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from trainer.sharding import ROWS, per_device

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Static settings: block sizes (tokens, vocabulary), each model's final-logit soft cap (None: none), and the
    mesh axes that split the tokens (None: the `data`/`fsdp` axes of the mesh in context, if any)."""

    tokens: int = 1024
    vocab: int = 8192
    student_softcap: float | None = None
    teacher_softcap: float | None = None
    batch_axes: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.tokens < 1 or self.vocab < 1:
            raise ValueError(f"block sizes must be positive, got tokens={self.tokens}, vocab={self.vocab}")
        for name in ("student_softcap", "teacher_softcap"):
            cap = getattr(self, name)
            if cap is not None and not cap > 0:
                raise ValueError(f"{name} must be positive or None, got {cap}")


def logit_terms_from_hidden(
    student_hidden: jax.Array,
    student_head: jax.Array,
    teacher_hidden: jax.Array,
    teacher_head: jax.Array,
    targets: jax.Array,
    temperature,
    blocks: Blocks = Blocks(),
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """`(kl_at_T, kl_T1, student_ce, teacher_ce, top1_agreement)`, each `[N]` float32 (see the module docstring).

    Shapes: hidden `[N, D]` (each model its own D), heads `[D, V]` (same V), integer targets `[N]`; any float
    dtypes (matmuls accumulate in float32). Raises ValueError on mismatched shapes.
    """
    n, v = student_hidden.shape[0], student_head.shape[1]
    if (
        student_hidden.ndim != 2
        or teacher_hidden.shape[0] != n
        or student_head.shape[0] != student_hidden.shape[1]
        or teacher_head.shape != (teacher_hidden.shape[1], v)
        or targets.shape != (n,)
    ):
        raise ValueError(
            "expected student_hidden [N, Ds], student_head [Ds, V], teacher_hidden [N, Dt], teacher_head [Dt, V], "
            f"targets [N]; got {student_hidden.shape}, {student_head.shape}, {teacher_hidden.shape}, "
            f"{teacher_head.shape}, {targets.shape}"
        )
    power = integer_temperature(temperature)
    t = jnp.asarray(temperature, F32)
    return _terms(
        blocks, power, student_hidden, student_head, teacher_hidden, teacher_head, targets.astype(jnp.int32), t
    )


MAX_INTEGER_TEMPERATURE = 4  # the guide's starting values are 1, 2 and 4


def integer_temperature(temperature) -> int | None:
    """`temperature` as an int when it is a number known at trace time (not a scheduled, traced value) equal to
    one of 1 … `MAX_INTEGER_TEMPERATURE`, else None. At such a T, `exp(d) = exp(d / T)^T`: both losses (the dense
    `trainer.loss.logit_terms` and this module's) then compute two exponentials per logit pair instead of four, and
    the powers fuse into the passes that read them (at the mid bench size the dense loss's loop took a quarter less
    thread time)."""
    if isinstance(temperature, jax.core.Tracer):
        return None
    try:
        value = float(temperature)
    except TypeError:  # an array of more than one element: left to jnp.asarray to refuse
        return None
    return int(value) if value.is_integer() and 1 <= value <= MAX_INTEGER_TEMPERATURE else None


# --- the blocked passes ------------------------------------------------------------------------------------


def _cap(z: jax.Array, cap: float | None) -> jax.Array:
    return z if cap is None else cap * jnp.tanh(z / cap)


def _geometry(n: int, v: int, blocks: Blocks) -> tuple[int, int, int, int]:
    bt, bv = min(blocks.tokens, n), min(blocks.vocab, v)
    return bt, -(-n // bt), bv, -(-v // bv)


def _rows(x: jax.Array, bt: int, nb: int) -> jax.Array:
    """`[n, ...]` zero-padded to `nb·bt` rows and split into `[nb, bt, ...]` blocks."""
    pad = nb * bt - x.shape[0]
    if pad:
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(nb, bt, *x.shape[1:])


def _vocab_block(j, v: int, bv: int):
    """Start column of vocabulary block `j` (the last one clamped to end at `v`) and the mask of its columns not
    seen in an earlier block."""
    start = jnp.minimum(j * bv, v - bv)
    col = start + jax.lax.iota(jnp.int32, bv)
    return start, col, col >= j * bv


def _logits(hidden, head, start, bv, cap):
    w = jax.lax.dynamic_slice_in_dim(head, start, bv, axis=1)
    return _cap(jnp.dot(hidden, w, preferred_element_type=F32), cap), w


def _forward_local(axes, blocks: Blocks, power, s_h, s_w, t_h, t_w, targets, temperature):
    """Per-token terms and saved row statistics for this device's tokens."""
    del axes
    n, v = s_h.shape[0], s_w.shape[1]
    bt, nb, bv, nv = _geometry(n, v, blocks)
    inv_t = 1.0 / temperature

    def token_block(_, xs):
        h_s, h_t, tg = xs
        neg = jnp.full((bt,), -jnp.inf, F32)
        zero = jnp.zeros((bt,), F32)
        # (m_s, z_s1, z_sT, x_s, m_t, z_t1, z_tT, x_t, a_1, a_T, agree); agree: some column seen so far holds both
        # models' running maxima.
        init = (neg, zero, zero, zero, neg, zero, zero, zero, zero, zero, jnp.zeros((bt,), bool))

        def vocab_block(j, c):
            m_s, z_s1, z_st, x_s, m_t, z_t1, z_tt, x_t, a_1, a_t, agree = c
            start, _, fresh = _vocab_block(j, v, bv)
            s = jnp.where(fresh, _logits(h_s, s_w, start, bv, blocks.student_softcap)[0], -jnp.inf)
            t = jnp.where(fresh, _logits(h_t, t_w, start, bv, blocks.teacher_softcap)[0], -jnp.inf)
            # The target's column in this block, if it is one of the block's fresh columns: a gather per row,
            # not a pass over the block.
            at = tg - start
            here = (at >= 0) & (at < bv) & (tg >= j * bv)
            at = jnp.clip(at, 0, bv - 1)

            def running(z, m, z1, zt, x):
                m_new = jnp.maximum(m, jnp.max(z, axis=-1))
                rt = jnp.exp((m - m_new) * inv_t)  # rescales the sums kept so far (0 at the first block)
                et = barrier_for_powers(power, jnp.exp((z - m_new[:, None]) * inv_t))
                r1, e1 = exp_at_1(power, m - m_new, rt), exp_at_1(power, z - m_new[:, None], et)
                z1 = z1 * r1 + jnp.sum(e1, axis=-1)
                zt = zt * rt + jnp.sum(et, axis=-1)
                x = x + jnp.where(here, jnp.take_along_axis(z, at[:, None], axis=-1)[:, 0], 0.0)
                return m_new, z1, zt, x, r1, rt, e1, et

            m_s_new, z_s1, z_st, x_s, *_ = running(s, m_s, z_s1, z_st, x_s)
            m_t_new, z_t1, z_tt, x_t, r1, rt, e1, et = running(t, m_t, z_t1, z_tt, x_t)
            # Top-1 agreement as in `trainer.loss.top1_agreement` (an or-reduction, no argmax), kept across blocks
            # while neither running maximum grows (a column that held a maximum no longer does once it grows).
            both = jnp.any((s == m_s_new[:, None]) & (t == m_t_new[:, None]), axis=-1)
            agree = both | (agree & (m_s_new == m_s) & (m_t_new == m_t))
            diff = jnp.where(fresh, t - s, 0.0)
            a_1 = a_1 * r1 + jnp.sum(e1 * diff, axis=-1)
            a_t = a_t * rt + jnp.sum(et * diff, axis=-1)
            return m_s_new, z_s1, z_st, x_s, m_t_new, z_t1, z_tt, x_t, a_1, a_t, agree

        m_s, z_s1, z_st, x_s, m_t, z_t1, z_tt, x_t, a_1, a_t, agree = jax.lax.fori_loop(0, nv, vocab_block, init)
        log = jnp.log
        gap = m_t - m_s
        kl_t = a_t / (z_tt * temperature) - gap * inv_t - log(z_tt) + log(z_st)
        kl_1 = a_1 / z_t1 - gap - log(z_t1) + log(z_s1)
        ce_s = log(z_s1) + m_s - x_s
        ce_t = log(z_t1) + m_t - x_t
        saved = (m_s, log(z_s1), log(z_st), m_t, log(z_tt))
        return None, ((kl_t, kl_1, ce_s, ce_t, agree.astype(F32)), saved)

    _, (terms, saved) = jax.lax.scan(
        token_block, None, (_rows(s_h, bt, nb), _rows(t_h, bt, nb), _rows(targets, bt, nb))
    )
    unblock = lambda a: a.reshape(-1)[:n]  # noqa: E731
    return tuple(map(unblock, terms)), tuple(map(unblock, saved))


def exp_at_1(power: int | None, d: jax.Array, e_at_t: jax.Array, factor=1.0) -> jax.Array:
    """`exp(d)·factor` given `e_at_t = exp(d / T)`; `power`: T as an int (`integer_temperature`) or None. At an
    integer T it is `e_at_t^T·factor`, multiplies written anew at each use: XLA fuses them into that use, where an
    exponential (or a shared product) would be one more block-sized array written and read again. Both losses (the
    dense `trainer.loss.logit_terms` and this module's) compute `exp(d)` here."""
    if power is None:
        return jnp.exp(d) * factor
    return e_at_t * (factor * jax.lax.integer_pow(e_at_t, power - 1))


def barrier_for_powers(power: int | None, exponentials):
    """`exponentials` (an array or a tuple of them) behind one optimization barrier when `exp_at_1` will raise them
    to an integer power > 1: keeps XLA from folding `exp(x)·exp(x)` back into `exp(x + x)`."""
    return jax.lax.optimization_barrier(exponentials) if power is not None and power > 1 else exponentials


def _backward_local(axes, blocks: Blocks, power, s_h, s_w, t_h, t_w, targets, temperature, saved, g_kl_t, g_ce):
    """Gradients w.r.t. this device's student hidden states and (summed over the token axes) the student head."""
    n, v = s_h.shape[0], s_w.shape[1]
    bt, nb, bv, nv = _geometry(n, v, blocks)
    inv_t = 1.0 / temperature
    cap = blocks.student_softcap

    def token_block(grad_w, xs):
        h_s, h_t, tg, (m_s, lz_s1, lz_st, m_t, lz_tt), gk, gc = xs
        gk = gk * inv_t
        inv_z_st, inv_z_s1 = jnp.exp(-lz_st), jnp.exp(-lz_s1)

        def vocab_block(j, c):
            grad_h, grad_w = c
            start, col, fresh = _vocab_block(j, v, bv)
            s, w = _logits(h_s, s_w, start, bv, cap)
            t, _ = _logits(h_t, t_w, start, bv, blocks.teacher_softcap)
            d_s = s - m_s[:, None]
            e_st = barrier_for_powers(power, jnp.exp(d_s * inv_t))
            p_st = e_st * inv_z_st[:, None]
            p_tt = jnp.exp((t - m_t[:, None]) * inv_t - lz_tt[:, None])
            p_s1 = exp_at_1(power, d_s, e_st, inv_z_s1[:, None])
            hit = (col == tg[:, None]).astype(F32)
            g = gk[:, None] * (p_st - p_tt) + gc[:, None] * (p_s1 - hit)
            if cap is not None:
                g = g * (1.0 - jnp.square(s / cap))  # d/dz cap·tanh(z/cap), written with the capped value
            g = jnp.where(fresh, g, 0.0)  # columns of the clamped last block already counted
            grad_h = grad_h + jnp.dot(g.astype(w.dtype), w.T, preferred_element_type=F32)
            block = jax.lax.dynamic_slice_in_dim(grad_w, start, bv, axis=1)
            block = block + jnp.dot(h_s.T, g.astype(h_s.dtype), preferred_element_type=F32)
            return grad_h, jax.lax.dynamic_update_slice_in_dim(grad_w, block, start, axis=1)

        grad_h = jnp.zeros((bt, s_h.shape[1]), F32)
        grad_h, grad_w = jax.lax.fori_loop(0, nv, vocab_block, (grad_h, grad_w))
        return grad_w, grad_h

    xs = (
        _rows(s_h, bt, nb),
        _rows(t_h, bt, nb),
        _rows(targets, bt, nb),
        tuple(_rows(a, bt, nb) for a in saved),
        _rows(g_kl_t, bt, nb),  # padded rows get zero cotangents: they add nothing
        _rows(g_ce, bt, nb),
    )
    grad_w, grad_h = jax.lax.scan(token_block, jnp.zeros(s_w.shape, F32), xs)
    if axes:
        grad_w = jax.lax.psum(grad_w, axes)
    return grad_h.reshape(-1, s_h.shape[1])[:n].astype(s_h.dtype), grad_w.astype(s_w.dtype)


# --- the custom VJP ----------------------------------------------------------------------------------------

_ROWS2, _ROWS1, _REP = P(ROWS, None), P(ROWS), P()


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _terms(blocks, power, s_h, s_w, t_h, t_w, targets, temperature):
    return _terms_fwd(blocks, power, s_h, s_w, t_h, t_w, targets, temperature)[0]


def _terms_fwd(blocks, power, s_h, s_w, t_h, t_w, targets, temperature):
    fwd = per_device(
        _bind(_forward_local, blocks, power),
        blocks.batch_axes,
        s_h.shape[0],
        in_specs=(_ROWS2, _REP, _ROWS2, _REP, _ROWS1, _REP),
        out_specs=((_ROWS1,) * 5, (_ROWS1,) * 5),
    )
    terms, saved = fwd(s_h, s_w, t_h, t_w, targets, temperature)
    return terms, (s_h, s_w, t_h, t_w, targets, temperature, saved)


def _terms_bwd(blocks, power, residuals, cotangents):
    s_h, s_w, t_h, t_w, targets, temperature, saved = residuals
    g_kl_t, _, g_ce, _, _ = cotangents
    bwd = per_device(
        _bind(_backward_local, blocks, power),
        blocks.batch_axes,
        s_h.shape[0],
        in_specs=(_ROWS2, _REP, _ROWS2, _REP, _ROWS1, _REP, (_ROWS1,) * 5, _ROWS1, _ROWS1),
        out_specs=(_ROWS2, _REP),
    )
    grad_h, grad_w = bwd(s_h, s_w, t_h, t_w, targets, temperature, saved, g_kl_t, g_ce)
    grad_h, grad_w = _typed_like(grad_h, s_h), _typed_like(grad_w, s_w)
    return grad_h, grad_w, jnp.zeros_like(t_h), jnp.zeros_like(t_w), None, jnp.zeros_like(temperature)


def _typed_like(x: jax.Array, primal: jax.Array) -> jax.Array:
    """`x` with the primal's sharding where sharding is part of the type (explicit mesh axes); else `x`."""
    sharding = jax.typeof(primal).sharding
    if getattr(sharding, "mesh", None) is None or sharding.mesh.empty:
        return x
    if not any(t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types):
        return x
    return jax.reshard(x, sharding.spec)


def _bind(fn, blocks, power):
    return lambda axes, *args: fn(axes, blocks, power, *args)


_terms.defvjp(_terms_fwd, _terms_bwd)
