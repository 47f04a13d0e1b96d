"""The distillation loss of the guide, with every metric as a `(sum, count)` pair.

    total = α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE(s, targets) + β·feature_loss

Each term is a mean over valid tokens (`mask == 1`); the feature loss is a mean over valid tokens and selected
layers. Metrics are `(sum, count)` pairs so that logging windows, micro-batches and hosts aggregate as
Σsum / Σcount, token-weighted, as the guide prescribes. Perplexities are the exception in how they are read:
`distill/student_perplexity` and `distill/teacher_perplexity` carry the cross-entropy's `(sum, count)` (the log
perplexity) and a window's perplexity is `exp(Σsum / Σcount)` — the honest next-token perplexity of the window,
which no per-token average of `exp(CE)` gives. `PERPLEXITY_METRICS` names them; `metric_value` applies the rule.

Speed: all logit terms come from shared passes (`logit_terms`), a block of rows at a time: each model's row max,
then the four normalisers (student and teacher at T = 1 and at T), both KLs, both cross-entropies (the target
logit gathered) and the top-1 agreement (max-reductions, no argmax), with no `[B, T, V]` intermediate kept. The
loss's gradient w.r.t. the student's logits is written out and computed in the same pass, from the same
exponentials (at an integer temperature known when tracing, `exp(d) = exp(d / T)^T`: two exponentials per logit
pair instead of four), over the student's logits' own buffer (a custom VJP whose backward only scales it): the KL and
cross-entropy enter as per-token weights (`distillation_objective`), and the terms themselves, metrics included,
carry no gradient. Logits are upcast to float32 here. On CPU that pass is `trainer.cpu_loss_kernel`'s C++ kernel
(the same values to float32 rounding, not bit for bit; XLA:CPU does not fuse it into one loop), chosen per platform by `_row_pass`.

Per-token functions (`token_kl`, `token_cross_entropy`, `token_cosine_distance`, `token_squared_error`) return
unreduced values; `masked_sum` is the one place that reduces.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

# The metric names, defined JAX-free where the orchestrator checks names against them (this module's API).
from distillspec.metrics import DISTILL_METRICS, PERPLEXITY_METRICS, PRETRAIN_METRICS  # noqa: F401
from trainer import blocked_logits, cpu_loss_kernel, sharding
from trainer.blocked_logits import MAX_INTEGER_TEMPERATURE, integer_temperature  # noqa: F401 (this module's API)

FeatureLossType = str  # "cosine" | "l2"
COSINE_EPS = 1e-6

SumCount = tuple[jax.Array, jax.Array]


# --- per-token functions ---------------------------------------------------------------------------------


def log_softmax_at(logits: jax.Array, temperature) -> tuple[jax.Array, jax.Array]:
    """`(log_softmax(z), log_softmax(z / T))` of `logits [..., V]` sharing one row max (T > 0 keeps the argmax)."""
    z = logits.astype(jnp.float32)
    shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))  # [..., V], max 0
    at_1 = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
    scaled = shifted / temperature
    at_t = scaled - jnp.log(jnp.sum(jnp.exp(scaled), axis=-1, keepdims=True))
    return at_1, at_t


def logit_terms(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    targets: jax.Array,
    temperature,
    *,
    kl_weight: jax.Array | None = None,
    ce_weight: jax.Array | None = None,
) -> tuple[tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]:
    """Every per-token logit quantity from one pass, in blocks of rows, over the student's and the teacher's
    logits `[..., V]`, and the one differentiable output: `((kl_at_T, kl_T1, student_ce, teacher_ce,
    top1_agreement), objective)`, terms `[...]`, `objective = Σ kl_weight·kl_at_T + ce_weight·student_ce` (weights
    `[...]` or scalars, 1 when None; a zero weight selects its token away, so a NaN there cannot leak in).

    With `d = z − max(z)` and `Z_T = Σ exp(d / T)` per row:
        KL_T(t ‖ s) = Σ_v p_tT·(d_t − d_s)/T − log Z_tT + log Z_sT,      CE = log Z_1 − d[target].
    The objective's gradient w.r.t. the student's logits is written out,
        kl_weight·(p_sT − p_tT)/T + ce_weight·(p_s1 − onehot(target)),
    and computed in the same pass as the terms, from the same exponentials: the backward pass only scales it.
    The terms themselves carry no gradient (as under stop_gradient), nor does anything flow into the teacher's
    logits, the weights or the temperature.
    """
    s = student_logits.astype(jnp.float32)

    def weight(w):
        return jnp.broadcast_to(jnp.asarray(1.0 if w is None else w, jnp.float32), s.shape[:-1])

    return _logit_terms(
        integer_temperature(temperature),
        s,
        teacher_logits.astype(jnp.float32),
        targets.astype(jnp.int32),
        jnp.asarray(temperature, jnp.float32),
        weight(kl_weight),
        weight(ce_weight),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _logit_terms(power, s, t, targets, temperature, kl_weight, ce_weight):
    return _logit_terms_fwd(power, s, t, targets, temperature, kl_weight, ce_weight)[0]


def _rows(power, temperature, s, t, m_s, m_t, targets, kl_weight, ce_weight):
    """The terms of one block of rows `[..., R, V]` and the objective's gradient w.r.t. the student's logits,
    given each model's row maxima `m_s`, `m_t` `[..., R]`; `power`: the temperature as an int
    (`integer_temperature`) or None."""
    inv_t = 1.0 / temperature
    d_s, d_t = s - m_s[..., None], t - m_t[..., None]
    e_st, e_tt = blocked_logits.barrier_for_powers(power, (jnp.exp(d_s * inv_t), jnp.exp(d_t * inv_t)))
    exp_at_1 = functools.partial(blocked_logits.exp_at_1, power)

    d_ts = d_t - d_s
    z_s1, z_st = jnp.sum(exp_at_1(d_s, e_st), axis=-1), jnp.sum(e_st, axis=-1)
    z_t1, z_tt = jnp.sum(exp_at_1(d_t, e_tt), axis=-1), jnp.sum(e_tt, axis=-1)
    a_t, a_1 = jnp.sum(e_tt * d_ts, axis=-1), jnp.sum(exp_at_1(d_t, e_tt, d_ts), axis=-1)
    log = jnp.log
    kl_t = a_t / z_tt / temperature - log(z_tt) + log(z_st)
    kl_1 = a_1 / z_t1 - log(z_t1) + log(z_s1)
    ce_s = log(z_s1) + m_s - _at(s, targets)
    ce_t = log(z_t1) + m_t - _at(t, targets)
    agree = top1_agreement(s, m_s, t, m_t)
    terms = (kl_t, kl_1, ce_s, ce_t, agree)
    # Per-row coefficients, so the gradient is three multiply-adds per logit (p = e / Z). `+ 0·Σterms` ties the
    # gradient to every read of the block: XLA then writes it over the student's logits only after they are
    # read, instead of copying the block to keep a reader's input alive.
    k = kl_weight * inv_t + 0.0 * sum(terms)
    c_st, c_tt, c_s1 = k / z_st, k / z_tt, ce_weight / z_s1
    hit = jax.lax.broadcasted_iota(jnp.int32, s.shape, s.ndim - 1) == targets[..., None]
    grad = (
        e_st * c_st[..., None]
        - e_tt * c_tt[..., None]
        + exp_at_1(d_s, e_st, c_s1[..., None])
        - jnp.where(hit, ce_weight[..., None], 0.0)
    )
    return terms, grad


def _at(z: jax.Array, index: jax.Array) -> jax.Array:
    """`z[..., index]` per row: a gather, not a pass over the vocabulary."""
    return jnp.take_along_axis(z, index[..., None], axis=-1, mode="clip")[..., 0]


def top1_agreement(s: jax.Array, m_s: jax.Array, t: jax.Array, m_t: jax.Array) -> jax.Array:
    """1.0 where the student's top-1 token is a top-1 token of the teacher's, from logits `[..., V]` and their
    row maxima `[...]`: some position holds both models' maxima. Without ties this is `argmax(s) == argmax(t)`;
    written as an or-reduction of a compare because XLA:CPU does not vectorise argmax (a reduction of (value,
    index) pairs: 6× a max, more than all the row statistics together at vocab 32000), and a boolean reduction
    costs less than a max over selected logits."""
    return jnp.any((s == m_s[..., None]) & (t == m_t[..., None]), axis=-1).astype(jnp.float32)


def _logit_terms_fwd(power, s, t, targets, temperature, kl_weight, ce_weight):
    terms, grad = _row_pass(power, s, t, targets, temperature, kl_weight, ce_weight)
    objective = jnp.sum(jnp.where(kl_weight != 0, kl_weight * terms[0], 0.0)) + jnp.sum(
        jnp.where(ce_weight != 0, ce_weight * terms[2], 0.0)
    )
    return (terms, objective), (grad, temperature, kl_weight, ce_weight)


def _row_pass(power, s, t, targets, temperature, kl_weight, ce_weight):
    """`(terms, grad)` of `_rows` over all rows: on CPU by `trainer.cpu_loss_kernel` when it is usable and each
    device holds whole rows, elsewhere (and as the fallback) by XLA in blocks of rows."""
    xla = functools.partial(_xla_row_pass, power)
    if jax.default_backend() != "cpu" or not cpu_loss_kernel.usable():  # (on TPU: never built)
        return xla(s, t, targets, temperature, kl_weight, ce_weight)
    mesh = jax.sharding.get_abstract_mesh()
    leading = s.shape[0] if s.ndim > 1 else 1  # the axis the mesh's batch axes split
    axes, _ = sharding.token_axes(None, leading)
    if not mesh.empty and any(size > 1 for name, size in mesh.shape.items() if name not in axes):
        # The kernel needs each row's whole vocabulary on one device: with logits split over `tensor`, XLA's
        # path keeps them split.
        return xla(s, t, targets, temperature, kl_weight, ce_weight)
    rows, logits = P(sharding.ROWS), P(sharding.ROWS, *([None] * (s.ndim - 1)))
    kernel = sharding.per_device(
        _kernel_row_pass,
        None,
        leading,
        in_specs=(logits, logits, rows, P(), rows, rows),
        out_specs=((rows,) * 5, logits),
    )
    return jax.lax.platform_dependent(s, t, targets, temperature, kl_weight, ce_weight, cpu=kernel, default=xla)


def _kernel_row_pass(axes, s, t, targets, temperature, kl_weight, ce_weight):
    del axes
    # As rows `[N, V]`: the student's logits come out of the LM head's matmul as `[N, V]`, and handed over in that
    # shape they are its buffer, which the kernel overwrites; as `[B, T, V]` XLA:CPU copied them first (a whole
    # extra pass over the logits).
    lead, v = s.shape[:-1], s.shape[-1]
    terms, grad = cpu_loss_kernel.logit_rows(
        s.reshape(-1, v),
        t.reshape(-1, v),
        targets.reshape(-1),
        kl_weight.reshape(-1),
        ce_weight.reshape(-1),
        jnp.broadcast_to(temperature, lead).reshape(-1),
    )
    return tuple(x.reshape(lead) for x in terms), grad.reshape(s.shape)


def _xla_row_pass(power, s, t, targets, temperature, kl_weight, ce_weight):
    # The gradient is written over the student's float32 logits, block by block: no second `[tokens, vocab]`
    # buffer, and the backward pass reads one array.
    # The row maxima in one pass over each whole array, before the loop: in it, each block would be copied out
    # of the logits just to be read by the max (XLA:CPU's reductions do not read through a dynamic slice).
    maxima = jnp.max(s, axis=-1), jnp.max(t, axis=-1)
    return _over_row_blocks(
        functools.partial(_rows, power, temperature),
        (s, t, *maxima, targets, kl_weight, ce_weight),
        s.shape,
        overwrite=0,
    )


def _logit_terms_bwd(_power, residuals, cotangents):
    grad, temperature, kl_weight, ce_weight = residuals
    _, g = cotangents  # the terms' cotangents are dropped: they carry no gradient
    zero = jnp.zeros_like  # (the teacher's logits have the student's shape; callers stop their gradient)
    return g * grad, zero(grad), None, zero(temperature), zero(kl_weight), zero(ce_weight)


def _on_rows(rows, logit_rank):
    """`rows` evaluated on its arguments' leading axes merged into one (reshapes, bitcasts): logit-shaped arguments
    and outputs (rank `logit_rank`, `[..., V]`) become `[R, V]`, per-row ones `[...]` become `[R]`, and back.

    Why: with one sequence per device (`[1, T, V]` logits) or one position per block (`[B, 1, V]`), XLA:CPU splits
    the loop's passes over a block badly over threads: on a 2-core AVX2 EPYC the loss and its gradient over
    `[1, 1024, 32000]` logits took 2.1–2.3× as long as with each block's rows merged, in blocks of `[4, 1, 32000]`
    2.7× (a whole mid-size step at 1 × 1024 tokens: 1.11–1.18×). The passes over whole arrays outside the loop
    (row maxima, the backward's scaling) run as fast either way. The merged axis keeps the batch axis's sharding
    (it is the major one)."""

    def flat(*args):
        lead = args[0].shape[:-1]
        merged = [a.reshape((-1,) + a.shape[logit_rank - 1 :]) for a in args]
        return jax.tree.map(lambda o: o.reshape(lead + o.shape[1:]), rows(*merged))

    return flat


def _over_row_blocks(rows, args, shape, overwrite=None):
    """`rows(*args)` evaluated block by block over the rows of `[..., N, V]` logits, each output written into its
    place (outputs are `[..., N, V]` or per-row `[..., N]`, like the arguments). With `overwrite = i`, `rows`
    returns `(outputs, full)` and `full [..., R, V]` is written over `args[i]`, whose block it has read: the
    result takes that argument's buffer instead of a new one.

    Why a loop: left to itself, XLA:CPU keeps every intermediate the row statistics share (`z − max`, the
    exponentials) as a whole `[tokens, vocab]` array in memory, and memory, not arithmetic, then sets the pace
    (5× slower at vocab 32000); in blocks of about `BLOCK_ELEMENTS` logits they stay in cache (at vocab 128256,
    blocks of 32 rows, 16 MB per array, took 1.5× as long as blocks of 8). The loop runs over blocks of the
    second-to-last axis (positions of `[B, T, V]` logits) and keeps the leading axes whole: those are the ones the
    mesh's batch axes split, and a loop over them would all-gather the logits of every device (per-token slices
    of a sharded axis). Inside a block the leading axes are merged into rows (`_on_rows`), so that a block with
    one sequence, or one position per sequence, still splits over threads. Rows left over after the whole blocks
    make one smaller block after the loop, so an odd length does not shrink the block."""
    axis = len(shape) - 2
    length = shape[axis] if len(shape) >= 2 else 1
    rows_per_position = max(math.prod(shape[:axis]) // _batch_shards(shape[0] if axis else 1), 1)
    block_rows = min(MAX_BLOCK_ROWS, max(BLOCK_ELEMENTS // shape[-1], 1))
    block = min(length, max(block_rows // rows_per_position, 1))
    flat_rows = _on_rows(rows, len(shape))
    if len(shape) < 2 or block >= length:
        return flat_rows(*args)

    def run(start, size, carry):
        outs, target = carry
        part = [
            jax.lax.dynamic_slice_in_dim(target if j == overwrite else a, start, size, axis) for j, a in enumerate(args)
        ]
        new = flat_rows(*part)
        if overwrite is not None:
            new, full = new
            target = jax.lax.dynamic_update_slice_in_dim(target, full, start, axis)
        outs = jax.tree.map(lambda out, n: jax.lax.dynamic_update_slice_in_dim(out, n, start, axis), outs, new)
        return outs, target

    first = [jax.lax.slice_in_dim(a, 0, block, axis=axis) for a in args]
    out_shapes = jax.eval_shape(rows, *first)
    if overwrite is not None:
        out_shapes = out_shapes[0]
    empty = jax.tree.map(lambda o: jnp.zeros(o.shape[:axis] + (length,) + o.shape[axis + 1 :], o.dtype), out_shapes)
    whole = length // block
    carry = (empty, args[overwrite] if overwrite is not None else None)
    carry = jax.lax.fori_loop(0, whole, lambda i, c: run(i * block, block, c), carry)
    if length % block:
        carry = run(whole * block, length % block, carry)
    outs, target = carry
    return (outs, target) if overwrite is not None else outs


BLOCK_ELEMENTS = 2**20  # logits per device in one iteration of the loop (4 MiB per float32 array): 32 rows at vocab
# 32000, 8 at 128256; larger blocks fall out of this CPU's caches, smaller ones pay the loop's per-iteration cost
MAX_BLOCK_ROWS = 32  # at small vocabularies more rows gain nothing, and the block's temporaries would set the peak


def _batch_shards(leading: int) -> int:
    """Devices the mesh in context splits a leading (batch) axis of size `leading` over: its `data` and `fsdp`
    axes when they divide it, else 1."""
    axes, mesh = sharding.token_axes(None, leading)
    return math.prod(mesh.shape[a] for a in axes) if axes else 1


_logit_terms.defvjp(_logit_terms_fwd, _logit_terms_bwd)


def token_kl(teacher_log_probs: jax.Array, student_log_probs: jax.Array) -> jax.Array:
    """`KL(teacher ‖ student)` per token from log-probabilities `[..., V]` -> `[...]`."""
    return jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)


def token_cross_entropy(log_probs: jax.Array, targets: jax.Array) -> jax.Array:
    """`-log p(target)` per token: `log_probs [B, T, V]`, integer `targets [B, T]` -> `[B, T]`.

    Selected with a compare against the vocabulary index, which XLA fuses into the reduction (and its gradient
    into an elementwise select); `take_along_axis` would differentiate into a scatter, which XLA:CPU runs
    serially — 3 s of a 4 s step at vocab 32000. No one-hot tensor is materialised either way.
    """
    vocab = jax.lax.broadcasted_iota(jnp.int32, log_probs.shape, log_probs.ndim - 1)
    hit = vocab == targets[..., None].astype(jnp.int32)
    return -jnp.sum(jnp.where(hit, log_probs, 0.0), axis=-1)


def token_cosine_distance(a: jax.Array, b: jax.Array, eps: float = COSINE_EPS) -> jax.Array:
    """`1 − a·b / (max(‖a‖, ε)·max(‖b‖, ε))` over the last axis `[..., D] -> [...]` (optax's formula).

    Not `optax.losses.cosine_distance`: its norm has a NaN gradient at a zero vector; `sqrt(max(‖x‖², ε²))` has
    the same value and a zero gradient there.
    """
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    norm_a = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1), eps * eps))
    norm_b = jnp.sqrt(jnp.maximum(jnp.sum(b * b, axis=-1), eps * eps))
    return 1.0 - jnp.sum(a * b, axis=-1) / (norm_a * norm_b)


def token_squared_error(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared error averaged over the last axis `[..., D] -> [...]`."""
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    return jnp.mean(diff * diff, axis=-1)


def masked_sum(values: jax.Array, mask: jax.Array) -> SumCount:
    """`(Σ values where mask, number of such entries)`; `mask` broadcasts against the trailing axes of `values`.

    Masked-out entries are selected away (not multiplied by 0), so a NaN or inf there cannot leak in.
    """
    valid = jnp.broadcast_to(mask.astype(bool), values.shape)
    return jnp.sum(jnp.where(valid, values, 0.0)), jnp.sum(valid, dtype=jnp.float32)


def _mean(sum_count: SumCount) -> jax.Array:
    total, count = sum_count
    return total / jnp.maximum(count, 1.0)


# --- the loss ----------------------------------------------------------------------------------------------


def select_layers(features: jax.Array, layer_indices: Sequence[int] | None) -> jax.Array:
    """`features [L, B, T, D]` at `layer_indices`, negatives counted from this model's last layer (i % L)."""
    if layer_indices is None:
        return features
    depth = features.shape[0]
    return jnp.take(features, jnp.asarray([i % depth for i in layer_indices]), axis=0)


def feature_token_losses(
    student_features: jax.Array,
    teacher_features: jax.Array,
    layer_indices: Sequence[int] | None,
    feature_loss_type: FeatureLossType,
) -> jax.Array:
    """Per layer and token feature loss `[L_selected, B, T]` between the selected layers of both models."""
    s = select_layers(student_features, layer_indices)
    t = jax.lax.stop_gradient(select_layers(teacher_features, layer_indices))
    if s.shape != t.shape:
        raise ValueError(f"selected student features {s.shape} and teacher features {t.shape} differ in shape")
    if feature_loss_type == "cosine":
        return token_cosine_distance(s, t)
    if feature_loss_type == "l2":
        return token_squared_error(s, t)
    raise ValueError(f"unknown feature_loss_type {feature_loss_type!r}; expected 'cosine' or 'l2'")


def distillation_sums(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    temperature,
    student_features: jax.Array | None = None,
    teacher_features: jax.Array | None = None,
    layer_indices: Sequence[int] | None = None,
    feature_loss_type: FeatureLossType = "cosine",
) -> dict[str, SumCount]:
    """Unweighted `(sum, count)` of every per-token quantity, from shared passes over the logits.

    Keys: `kl_at_T`, `ce`, `kl_T1`, `teacher_ce`, `top1_agreement` and `feature` (when features are given; count =
    valid tokens × selected layers). The logit terms carry no gradient (`distillation_objective` is the
    differentiable loss); the feature sum does.
    Shapes: logits `[B, T, V]`, targets/mask `[B, T]`, features `[L, B, T, D]`.
    """
    terms, _ = logit_terms(student_logits, jax.lax.stop_gradient(teacher_logits), targets, temperature)
    return _reduce(terms, mask, student_features, teacher_features, layer_indices, feature_loss_type)


def distillation_objective(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    alpha,
    temperature,
    beta=0.0,
    token_count=None,
    feature_count=None,
    student_features: jax.Array | None = None,
    teacher_features: jax.Array | None = None,
    layer_indices: Sequence[int] | None = None,
    feature_loss_type: FeatureLossType = "cosine",
) -> tuple[jax.Array, dict[str, SumCount]]:
    """`(weighted_total(sums), sums)` of `distillation_sums`, differentiable w.r.t. the student's logits (and
    features): the KL and cross-entropy enter as per-token weights of `logit_terms`' objective, `α·T²/n` and
    `(1 − α)/n` on valid tokens, so the gradient comes out of the same pass over the logits as the terms.
    `token_count` and `feature_count` are `weighted_total`'s denominators (None: this batch's counts)."""
    valid = mask.astype(bool)
    n = jnp.sum(valid, dtype=jnp.float32) if token_count is None else token_count
    kl_weight, ce_weight = term_weights(alpha=alpha, temperature=temperature, token_count=n)
    terms, objective = logit_terms(
        student_logits,
        jax.lax.stop_gradient(teacher_logits),
        targets,
        temperature,
        kl_weight=jnp.where(valid, kl_weight, 0.0),
        ce_weight=jnp.where(valid, ce_weight, 0.0),
    )
    sums = _reduce(terms, mask, student_features, teacher_features, layer_indices, feature_loss_type)
    return objective + feature_term(sums, beta=beta, feature_count=feature_count), sums


def weighted_total(
    sums: Mapping[str, SumCount], *, alpha, temperature, beta, token_count=None, feature_count=None
) -> jax.Array:
    """`α·T²·KL_T + (1 − α)·CE + β·feature`, each a sum divided by its count (or by the given denominators:
    gradient accumulation divides every micro-batch by the whole step's valid tokens)."""
    kl_weight, ce_weight = term_weights(
        alpha=alpha, temperature=temperature, token_count=sums["ce"][1] if token_count is None else token_count
    )
    total = kl_weight * sums["kl_at_T"][0] + ce_weight * sums["ce"][0]
    return total + feature_term(sums, beta=beta, feature_count=feature_count)


def term_weights(*, alpha, temperature, token_count) -> tuple[jax.Array, jax.Array]:
    """The weights of a valid token's KL at T and cross-entropy in the loss: `(α·T²/n, (1 − α)/n)`, n the token
    count (at least 1). One place for the dense objective's per-token weights and `weighted_total`."""
    n = jnp.maximum(token_count, 1.0)
    return alpha * temperature**2 / n, (1.0 - alpha) / n


def feature_term(sums: Mapping[str, SumCount], *, beta, feature_count=None) -> jax.Array:
    """`β·feature` (the feature sum over its count, or over `feature_count`); 0 without features."""
    if "feature" not in sums:
        return jnp.zeros((), jnp.float32)
    nf = jnp.maximum(sums["feature"][1] if feature_count is None else feature_count, 1.0)
    return beta * sums["feature"][0] / nf


def distill_metrics(sums: Mapping[str, SumCount], total, *, alpha, temperature, beta) -> dict[str, SumCount]:
    """The guide's metric names (plus `distill/top1_agreement`) as `(sum, count)` pairs.

    Scalars that hold for the whole step (total, α, β, T) are weighted by the step's valid tokens, like the rest.
    """
    kl_t, ce, n = sums["kl_at_T"][0], sums["ce"][0], sums["ce"][1]
    f32 = jnp.float32
    metrics = {
        "distill/soft_loss": (temperature**2 * kl_t, n),
        "distill/hard_loss": sums["ce"],
        "distill/teacher_loss": sums["teacher_ce"],
        "distill/kl_div_at_T": sums["kl_at_T"],
        "distill/kl_div_T1": sums["kl_T1"],
        "distill/student_perplexity": (ce, n),  # read as exp(Σsum/Σcount): see the module docstring
        "distill/teacher_perplexity": sums["teacher_ce"],
        "distill/out_proj_feature_loss": (beta * sums["feature"][0], sums["feature"][1])
        if "feature" in sums
        else (jnp.zeros((), f32), n),
        "distill/total_loss": (total * n, n),
        "distill/alpha": (alpha * n, n),
        "distill/beta_feature": (beta * n, n),
        "distill/temperature": (temperature * n, n),
        "distill/top1_agreement": sums["top1_agreement"],
    }
    return {k: (jnp.asarray(s, f32), jnp.asarray(c, f32)) for k, (s, c) in metrics.items()}


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    alpha,
    temperature,
    beta=0.0,
    student_features: jax.Array | None = None,
    teacher_features: jax.Array | None = None,
    layer_indices: Sequence[int] | None = None,
    feature_loss_type: FeatureLossType = "cosine",
) -> tuple[jax.Array, dict[str, SumCount]]:
    """The total loss and its metrics.

    Args:
      student_logits, teacher_logits: `[B, T, V]` (any float dtype; computed in float32). The teacher is under
        `stop_gradient`.
      targets: integer token ids `[B, T]`; mask: `[B, T]`, 1 where the token counts, 0 for padding.
      alpha, temperature, beta: numbers or scalar arrays (scheduled values inside a jitted step); T > 0.
      student_features, teacher_features: `[L, B, T, D]` out-projection activations, or None (β term off).
      layer_indices: layers compared in both stacks (negatives count from each model's last layer); None: all.
      feature_loss_type: "cosine" (1 − cosine similarity over D, ε = 1e-6) or "l2" (squared error averaged over D).

    Returns:
      `(total, metrics)`: the scalar loss and `{name: (sum, count)}` (see the module docstring).
    """
    features = student_features is not None and teacher_features is not None and not _is_zero(beta)
    total, sums = distillation_objective(
        student_logits,
        teacher_logits,
        targets,
        mask,
        alpha=alpha,
        temperature=temperature,
        beta=beta,
        student_features=student_features if features else None,
        teacher_features=teacher_features if features else None,
        layer_indices=layer_indices,
        feature_loss_type=feature_loss_type,
    )
    return total, distill_metrics(sums, total, alpha=alpha, temperature=temperature, beta=beta)


def fused_distillation_sums(
    student_hidden: jax.Array,
    student_head: jax.Array,
    teacher_hidden: jax.Array,
    teacher_head: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    temperature,
    block_tokens: int = 1024,
    block_vocab: int = 8192,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    student_features: jax.Array | None = None,
    teacher_features: jax.Array | None = None,
    layer_indices: Sequence[int] | None = None,
    feature_loss_type: FeatureLossType = "cosine",
) -> dict[str, SumCount]:
    """`distillation_sums` from hidden states and LM heads instead of logits, block by block (see
    `trainer.blocked_logits`): the same keys and values without ever holding `[tokens, vocab]`.

    Shapes: hidden `[N, Ds]` / `[N, Dt]` (the final, normed hidden states, tokens flattened), heads `[Ds, V]` /
    `[Dt, V]`, targets and mask `[N]`, features `[L, N, D]`. The teacher gets no gradient.
    """
    blocks = blocked_logits.Blocks(block_tokens, block_vocab, student_softcap, teacher_softcap)
    kl_t, kl_1, ce_s, ce_t, agree = blocked_logits.logit_terms_from_hidden(
        student_hidden,
        student_head,
        jax.lax.stop_gradient(teacher_hidden),
        jax.lax.stop_gradient(teacher_head),
        targets,
        temperature,
        blocks,
    )
    return _reduce(
        (kl_t, kl_1, ce_s, ce_t, agree), mask, student_features, teacher_features, layer_indices, feature_loss_type
    )


def fused_distillation_loss(
    student_hidden: jax.Array,
    student_head: jax.Array,
    teacher_hidden: jax.Array,
    teacher_head: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    alpha,
    temperature,
    block_tokens: int = 1024,
    block_vocab: int = 8192,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    beta=0.0,
    student_features: jax.Array | None = None,
    teacher_features: jax.Array | None = None,
    layer_indices: Sequence[int] | None = None,
    feature_loss_type: FeatureLossType = "cosine",
) -> tuple[jax.Array, dict[str, SumCount]]:
    """`distillation_loss` of the logits `hidden @ head` (soft-capped as `cap·tanh(logits/cap)` where a cap is
    given), computed block by block: `block_tokens` × `block_vocab` logits of each model at a time, forward and
    backward (a hand-written blocked gradient w.r.t. the student's hidden states and head).

    Args:
      student_hidden `[N, Ds]`, student_head `[Ds, V]`, teacher_hidden `[N, Dt]`, teacher_head `[Dt, V]`: any float
        dtype, matmuls accumulate in float32. targets: integer `[N]`; mask: `[N]`, 1 where the token counts.
      alpha, temperature, beta, features, layer_indices, feature_loss_type: as in `distillation_loss` (features
        `[L, N, D]`).
      block_tokens, block_vocab: block sizes (any N and V work: tokens are padded, the last vocabulary block
        overlaps the one before it).
      student_softcap, teacher_softcap: each model's final-logit soft cap, or None.

    Returns:
      `(total, metrics)` with the same names and `(sum, count)` pairs as `distillation_loss`.
    Raises ValueError on mismatched shapes or non-positive block sizes or caps.
    """
    features = student_features is not None and teacher_features is not None and not _is_zero(beta)
    sums = fused_distillation_sums(
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        targets,
        mask,
        temperature=temperature,
        block_tokens=block_tokens,
        block_vocab=block_vocab,
        student_softcap=student_softcap,
        teacher_softcap=teacher_softcap,
        student_features=student_features if features else None,
        teacher_features=teacher_features if features else None,
        layer_indices=layer_indices,
        feature_loss_type=feature_loss_type,
    )
    total = weighted_total(sums, alpha=alpha, temperature=temperature, beta=beta)
    return total, distill_metrics(sums, total, alpha=alpha, temperature=temperature, beta=beta)


# --- offline: the teacher's top-k log-probabilities and one tail bucket --------------------------------------


def topk_membership(ids: jax.Array, vocab: int) -> jax.Array:
    """`[..., V]` booleans, True at the `ids [..., k]` of each row (a scatter of k entries per row; no gradient)."""
    flat = ids.reshape(-1, ids.shape[-1]).astype(jnp.int32)
    rows = jnp.arange(flat.shape[0])[:, None]
    member = jnp.zeros((flat.shape[0], vocab), bool).at[rows, flat].set(True)
    return member.reshape(*ids.shape[:-1], vocab)


def masked_logsumexp(x: jax.Array, keep: jax.Array) -> jax.Array:
    """`log Σ_{keep} exp(x)` over the last axis, `-inf` (with a zero gradient, no NaN) where a row keeps nothing."""
    top = jnp.max(jnp.where(keep, x, -jnp.inf), axis=-1, keepdims=True)
    shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    total = jnp.sum(jnp.exp(jnp.where(keep, x - shift, -jnp.inf)), axis=-1)
    some = total > 0
    return jnp.where(some, jnp.log(jnp.where(some, total, 1.0)) + shift[..., 0], -jnp.inf)


def bucket_kl(teacher_log_probs: jax.Array, student_log_probs: jax.Array) -> jax.Array:
    """`Σ p·(log p − log q)` over the last axis, a class of zero teacher mass contributing exactly 0 (its log
    probabilities may be `-inf` on both sides)."""
    p = jnp.exp(teacher_log_probs)
    diff = jnp.where(p > 0, teacher_log_probs - jnp.where(p > 0, student_log_probs, 0.0), 0.0)
    return jnp.sum(p * diff, axis=-1)


def offline_distillation_sums(
    student_logits: jax.Array,
    topk_log_probs: jax.Array,
    topk_ids: jax.Array,
    tail_log_prob: jax.Array,
    teacher_target_log_prob: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    temperature,
) -> dict[str, SumCount]:
    """`distillation_sums` against a logit cache instead of the teacher's logits (the same keys and counts).

    The teacher is `k + 1` classes: its top-k tokens, with their log-probabilities at T = 1 (`topk_log_probs
    [B, T, k]`, ids `topk_ids [B, T, k]`), and one bucket holding the rest of the vocabulary, with log-mass
    `tail_log_prob [B, T]` (`-inf` when k = V). The student is coarse-grained the same way: its logits at the
    top-k ids, and its bucket's logit the log-sum-exp of its logits outside them (exact, not 1 − Σ top-k). At
    temperature T each class's logit is divided by T — a bucket's logit is the log-sum-exp of the logits it holds,
    so with k = V this is exactly the online KL at any T, and at T = 1 it is the exact KL between the two
    (k + 1)-class distributions. (A stored log-probability is the logit minus the row's log-normaliser, a shift
    that no softmax sees, so the cache needs no temperature.)

    `ce` is the student's full-vocabulary cross-entropy; `teacher_ce` is `-teacher_target_log_prob` (the cache
    keeps the target's log-probability, in the top-k or not); `top1_agreement` compares the student's argmax with
    the teacher's first id (top-k ids are sorted by probability). Only `kl_at_T` and `ce` carry gradient.
    """
    s = student_logits.astype(jnp.float32)
    t = jnp.asarray(temperature, jnp.float32)
    ids = topk_ids.astype(jnp.int32)
    outside = ~topk_membership(ids, s.shape[-1])
    teacher = jnp.concatenate([topk_log_probs, tail_log_prob[..., None]], axis=-1).astype(jnp.float32)

    def kl_at(temp, s):
        student = jnp.concatenate(
            [jnp.take_along_axis(s, ids, axis=-1), masked_logsumexp(s, outside)[..., None]], axis=-1
        )
        return bucket_kl(jax.nn.log_softmax(teacher / temp, axis=-1), jax.nn.log_softmax(student / temp, axis=-1))

    kl_t = kl_at(t, s)
    kl_1 = kl_at(1.0, jax.lax.stop_gradient(s))
    ce_s = token_cross_entropy(jax.nn.log_softmax(s, axis=-1), targets)
    ce_t = -teacher_target_log_prob.astype(jnp.float32)
    agree = (jnp.argmax(s, axis=-1) == ids[..., 0]).astype(jnp.float32)
    return _reduce((kl_t, kl_1, ce_s, ce_t, agree), mask, None, None, None, "cosine")


def pretrain_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, SumCount]:
    """`{"ce": (sum, count)}` of the next-token cross-entropy (pretrain mode: no teacher)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return {"ce": masked_sum(token_cross_entropy(log_probs, targets), mask)}


def pretrain_metrics(sums: Mapping[str, SumCount], total) -> dict[str, SumCount]:
    ce, n = sums["ce"]
    f32 = jnp.float32
    metrics = {
        "distill/hard_loss": (ce, n),
        "distill/student_perplexity": (ce, n),
        "distill/total_loss": (total * n, n),
    }
    return {k: (jnp.asarray(s, f32), jnp.asarray(c, f32)) for k, (s, c) in metrics.items()}


def cross_entropy_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict[str, SumCount]]:
    """Pretrain mode: mean next-token cross-entropy over valid tokens, and its metrics."""
    sums = pretrain_sums(logits, targets, mask)
    total = _mean(sums["ce"])
    return total, pretrain_metrics(sums, total)


def metric_value(name: str, total: float, count: float) -> float:
    """A window's value of metric `name` from its Σsum and Σcount: exp of the mean for perplexities; NaN when
    the window has no valid token."""
    if count <= 0:
        return math.nan
    mean = total / count
    if name in PERPLEXITY_METRICS:
        return math.exp(mean) if mean < 700 else math.inf
    return mean


def _is_zero(value) -> bool:
    return isinstance(value, (int, float)) and value == 0.0


def _reduce(terms, mask, student_features, teacher_features, layer_indices, feature_loss_type) -> dict[str, SumCount]:
    """The per-token terms (KL at T, cross-entropy, KL at 1, the teacher's cross-entropy, top-1 agreement) and the
    feature loss as `(sum, count)` pairs over the valid tokens: one place for the dense and the fused losses."""
    kl_t, kl_1, ce_s, ce_t, agree = terms
    sums = {
        "kl_at_T": masked_sum(kl_t, mask),
        "ce": masked_sum(ce_s, mask),
        "kl_T1": masked_sum(kl_1, mask),
        "teacher_ce": masked_sum(ce_t, mask),
        "top1_agreement": masked_sum(agree, mask),
    }
    if student_features is not None:
        if teacher_features is None:
            raise ValueError("student_features were given without teacher_features")
        per_token = feature_token_losses(student_features, teacher_features, layer_indices, feature_loss_type)
        sums["feature"] = masked_sum(per_token, mask[None])
    return sums
