"""The compiled training step: teacher forward under `stop_gradient`, student forward and backward over the
micro-batches, one optax update, and the metric window — one `jax.jit` with the training state donated.

Gradient accumulation divides every micro-batch's loss sums by the whole step's valid-token count, so the
accumulated gradient is the gradient of the step's token-weighted mean loss (micro-batches weighted by their
valid tokens), exactly as if the step's rows were one batch.

Schedules: the update with 0-based index `s` uses `value.at(s, steps)`, the guide's `progress = clip(step /
max_steps, 0, 1)` with MaxText's step counter (the steps done before the update): the first update sees `start`,
the last one `(steps - 1) / steps` of the way to `end`, whatever the accumulation; a resumed run continues from its
restored `s`. The scheduled
values (α, T, β, learning rate) are computed on the host by `hyperparameters(spec, s)` and passed in as scalars,
so one compiled step serves every point of a sweep that differs only in them (the persistent compilation cache
then skips the compile). The exception is a constant temperature of 1, 2, 3 or 4, compiled in because the loss
then computes half its exponentials (`losses.integer_temperature`).

Offline distillation (`offline_data_dir`) has no teacher: each micro-batch carries the teacher's top-k
log-probabilities from a logit cache (`trainer.logit_cache`) and the loss is `losses.offline_distillation_sums`
on the student's dense logits.

A step whose loss or gradient is not finite leaves parameters and optimizer state unchanged and records its index
in `bad_step`; the loop reads it at the next log or checkpoint and stops the run as diverged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from distillspec.config import DistillSpec
from distillspec.loss_choice import BLOCK_TOKENS, BLOCK_VOCAB
from distillspec.metrics import EVAL_METRICS, PRETRAIN_EVAL_METRICS  # noqa: F401 (this module's API)
from trainer import loss as losses
from trainer.models import forward


@struct.dataclass
class TrainState:
    """What one step reads and returns (a pytree, donated to the step): the loop's whole device state."""

    params: Any  # the student's parameters (a pure dict of arrays)
    opt_state: Any  # the optimizer's state (Adam moments, counts)
    step: jax.Array  # int32 scalar: updates applied so far
    window: dict[str, jax.Array]  # {metric: [sum, count]} accumulated since the last metrics line
    # int32 scalar: the first step (as logged, from 1) whose loss or gradient was not finite, else -1
    bad_step: jax.Array

    def checkpointed(self) -> dict[str, Any]:
        """Everything but the parameters, as checkpoints store it (`train_state`, beside `params`)."""
        return {"opt_state": self.opt_state, "step": self.step, "window": self.window, "bad_step": self.bad_step}

    @classmethod
    def from_checkpoint(cls, params: Any, rest: dict[str, Any]) -> TrainState:
        return cls(params=params, **rest)


def learning_rate_schedule(spec: DistillSpec) -> Callable[[int], float]:
    """Linear warm-up from 0 over `round(warmup_fraction · steps)` steps, then cosine decay to `final_lr_fraction`
    of the peak at the last step (optax's `warmup_cosine_decay_schedule`, in plain Python: the host calls it every
    step and must not dispatch device work)."""
    o = spec.optimizer
    peak, final = o.learning_rate, o.learning_rate * o.final_lr_fraction
    warmup = int(round(o.warmup_fraction * spec.steps))
    decay = max(spec.steps, warmup + 1) - warmup

    def schedule(step: int) -> float:
        if step < warmup:
            return peak * step / warmup
        progress = min(max(step - warmup, 0) / decay, 1.0)
        return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return schedule


def make_optimizer(spec: DistillSpec) -> optax.GradientTransformation:
    """AdamW without its learning rate (global-norm clipping, Adam moments, decoupled weight decay on everything
    but norm scales): the step multiplies the result by `-learning_rate`, a runtime scalar."""
    o = spec.optimizer

    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) != "scale", params)

    chain = [clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm else []
    # float32 first moment whatever the parameters' dtype (the second follows the parameters, which the trainer
    # keeps as float32 master weights: `ModelConfig.from_spec(trained=True)`).
    adam = optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps, mu_dtype=jnp.float32)
    chain += [adam, optax.add_decayed_weights(o.weight_decay, decay_mask)]
    return optax.chain(*chain)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm`'s rule, updates scaled by `max_norm / ‖updates‖` when their global norm exceeds
    `max_norm`, applied as one scalar factor: a multiply that XLA fuses into the Adam moments' loops, where optax's
    per-element divide makes a pass of its own over every gradient. The state is optax's (empty), so checkpoints
    are unchanged."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def hyperparameters(spec: DistillSpec, step: int, schedule: Callable[[int], float] | None = None) -> dict[str, float]:
    """The scheduled values the update with 0-based index `step` uses: α, T and β by the guide's formula over
    `spec.steps` (they reached `end` at the last update, one step early, and `explain` and the plots, which follow
    the guide, showed values the trainer never used)."""
    lr = float((schedule or learning_rate_schedule(spec))(step))
    return {
        "alpha": float(spec.loss.alpha.at(step, spec.steps)),
        "temperature": float(spec.loss.temperature.at(step, spec.steps)),
        "beta": float(spec.loss.beta.at(step, spec.steps)),
        "learning_rate": lr,
    }


def metric_names(spec: DistillSpec) -> tuple[str, ...]:
    return losses.DISTILL_METRICS if spec.mode == "distill" else losses.PRETRAIN_METRICS


def empty_window(spec: DistillSpec) -> dict[str, jax.Array]:
    """Metric accumulators `{name: [sum, count]}`."""
    return {name: jnp.zeros((2,), jnp.float32) for name in metric_names(spec)}


@dataclasses.dataclass(frozen=True)
class HiddenLoss:
    """The fused loss's static settings: block sizes and each model's final-logit soft cap (None: none)."""

    block_tokens: int = BLOCK_TOKENS
    block_vocab: int = BLOCK_VOCAB
    student_softcap: float | None = None
    teacher_softcap: float | None = None


def hidden_distillation_sums(
    student_hidden: jax.Array,
    student_head: jax.Array,
    teacher_hidden: jax.Array,
    teacher_head: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    temperature,
    settings: HiddenLoss = HiddenLoss(),
    student_features: jax.Array | None = None,
    teacher_features: jax.Array | None = None,
    layer_indices=None,
    feature_loss_type: str = "cosine",
) -> dict[str, losses.SumCount]:
    """`losses.distillation_sums` of one micro-batch from the models' final (normed) hidden states `[B, T, D]` and
    LM heads `[V, D]` (the layout of the models' embedding and `lm_head`), without `[B, T, V]` logits; targets
    and mask `[B, T]`, features `[L, B, T, D]`. The teacher's inputs are under `stop_gradient`."""

    def flat(x):
        return None if x is None else x.reshape(*x.shape[:-3], -1, x.shape[-1])

    return losses.fused_distillation_sums(
        flat(student_hidden),
        student_head.T,
        flat(jax.lax.stop_gradient(teacher_hidden)),
        jax.lax.stop_gradient(teacher_head).T,
        targets.reshape(-1),
        mask.reshape(-1),
        temperature=temperature,
        block_tokens=settings.block_tokens,
        block_vocab=settings.block_vocab,
        student_softcap=settings.student_softcap,
        teacher_softcap=settings.teacher_softcap,
        student_features=flat(student_features),
        teacher_features=flat(teacher_features),
        layer_indices=layer_indices,
        feature_loss_type=feature_loss_type,
    )


@dataclasses.dataclass(frozen=True)
class StepModels:
    """The static halves of the models (graph definitions) the step merges its parameters into.

    `forward_hidden`, when set (distill mode), selects the fused loss: `forward_hidden(model, tokens) ->
    (hidden [B, T, D] after the final norm, head [V, D], features [L, B, T, D] or None)` for both models, and
    `hidden_loss` its settings.
    """

    student: nnx.GraphDef
    teacher: nnx.GraphDef | None
    features: bool  # both models sow out-projection activations
    forward_hidden: Callable | None = None
    hidden_loss: HiddenLoss = HiddenLoss()


def make_train_step(spec: DistillSpec, models: StepModels, optimizer: optax.GradientTransformation) -> Callable:
    """`step(state, teacher_params, batch, hparams) -> state`; batch arrays are `[A, R, T]` (A micro-batches of R
    rows): inputs, targets, mask and, for packed documents, segment_ids (attention stays within a segment and
    positions restart at each); `hparams` maps alpha, temperature, beta and learning_rate to float32 scalars (a
    constant integer temperature is compiled in, and `hparams["temperature"]` is then not read)."""
    distill = spec.mode == "distill"
    offline = distill and bool(spec.offline_data_dir)  # the teacher's top-k come in the batch (`trainer.logit_cache`)
    layer_indices = spec.layer_indices() if models.features else None
    teacher_layers = spec.teacher_layer_indices() if models.features else None
    n_layers = len(layer_indices) if layer_indices is not None else None

    def features(student, teacher):
        """Each model's features at its own layers: the student's `layer_indices` and the teacher's layers they
        began as (a student made by `drop_layers` numbers the layers past a gap lower)."""
        if not models.features:
            return None, None
        return losses.select_layers(student, layer_indices), losses.select_layers(teacher, teacher_layers)

    fused = distill and models.forward_hidden is not None

    def apply(graphdef, params, tokens, segment_ids=None):
        if fused:  # (hidden, head, features): the loss never forms [B, T, V] logits
            return models.forward_hidden(nnx.merge(graphdef, params), tokens, segment_ids)
        return forward(nnx.merge(graphdef, params), tokens, segment_ids)

    def micro_loss(params, teacher_out, mb, weights, n_tokens, n_features):
        if fused:
            hidden, head, feats = apply(models.student, params, mb["inputs"], mb.get("segment_ids"))
            t_hidden, t_head, t_feats = teacher_out
            feats, t_feats = features(feats, t_feats)
            sums = hidden_distillation_sums(
                hidden,
                head,
                t_hidden,
                t_head,
                mb["targets"],
                mb["mask"],
                temperature=weights["temperature"],
                settings=models.hidden_loss,
                student_features=feats,
                teacher_features=t_feats,
                feature_loss_type=spec.loss.feature_loss_type,
            )
        else:
            logits, feats = apply(models.student, params, mb["inputs"], mb.get("segment_ids"))
            if offline:
                sums = losses.offline_distillation_sums(
                    logits,
                    mb["topk_log_probs"],
                    mb["topk_ids"],
                    mb["tail_log_prob"],
                    mb["target_log_prob"],
                    mb["targets"],
                    mb["mask"],
                    temperature=weights["temperature"],
                )
            elif not distill:
                sums = losses.pretrain_sums(logits, mb["targets"], mb["mask"])
                return sums["ce"][0] / jnp.maximum(n_tokens, 1.0), sums
            else:  # the gradient comes out of the loss's forward pass over the logits (`losses.logit_terms`)
                t_logits, t_feats = teacher_out
                feats, t_feats = features(feats, t_feats)
                return losses.distillation_objective(
                    logits,
                    t_logits,
                    mb["targets"],
                    mb["mask"],
                    **weights,
                    token_count=n_tokens,
                    feature_count=n_features,
                    student_features=feats,
                    teacher_features=t_feats,
                    feature_loss_type=spec.loss.feature_loss_type,
                )
        total = losses.weighted_total(
            sums,
            alpha=weights["alpha"],
            temperature=weights["temperature"],
            beta=weights["beta"],
            token_count=n_tokens,
            feature_count=n_features,
        )
        return total, sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    sum_keys = ("kl_at_T", "ce", "kl_T1", "teacher_ce", "top1_agreement") if distill else ("ce",)
    if distill and models.features:
        sum_keys += ("feature",)

    # A constant temperature of 1, 2, 3 or 4 is compiled in as a number: the loss then shares its exponentials
    # between T and 1 (`losses.integer_temperature`). The price: sweep points that differ in it compile apart.
    schedule = spec.loss.temperature
    constant = schedule.effective_end == schedule.start
    fixed_temperature = schedule.start if constant and losses.integer_temperature(schedule.start) else None

    def step(
        state: TrainState, teacher_params, batch: dict[str, jax.Array], hparams: dict[str, jax.Array]
    ) -> TrainState:
        index = state.step
        weights = {k: hparams[k] for k in ("alpha", "temperature", "beta")}
        if fixed_temperature is not None:
            weights["temperature"] = fixed_temperature
        n_tokens = jnp.sum(batch["mask"])
        n_features = n_tokens * n_layers if n_layers is not None else None
        params = state.params

        def one(carry, mb):
            grads, sums, total = carry
            teacher_out = None
            if distill and not offline:
                teacher_out = jax.lax.stop_gradient(
                    apply(models.teacher, teacher_params, mb["inputs"], mb.get("segment_ids"))
                )
            (loss, mb_sums), g = grad_fn(params, teacher_out, mb, weights, n_tokens, n_features)
            add = lambda a, b: a + b
            return (jax.tree.map(add, grads, g), jax.tree.map(add, sums, mb_sums), total + loss), None

        zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        zero = jnp.zeros((), jnp.float32)
        carry = (zero_grads, {k: (zero, zero) for k in sum_keys}, zero)
        if batch["inputs"].shape[0] == 1:
            (grads, sums, total), _ = one(carry, jax.tree.map(lambda a: a[0], batch))
        else:
            (grads, sums, total), _ = jax.lax.scan(one, carry, batch)

        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))

        def update(operands):
            params, opt_state, grads = operands
            updates, new_opt = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, jax.tree.map(lambda u: -hparams["learning_rate"] * u, updates)), new_opt

        # A non-finite step changes nothing (a branch, not a select over every parameter).
        new_params, new_opt = jax.lax.cond(
            finite, update, lambda operands: operands[:2], (params, state.opt_state, grads)
        )
        metrics = losses.distill_metrics(sums, total, **weights) if distill else losses.pretrain_metrics(sums, total)
        window = {k: v + jnp.stack(metrics[k]) for k, v in state.window.items()}
        return TrainState(
            params=new_params,
            opt_state=new_opt,
            step=index + 1,
            window=window,
            # numbered as the log numbers steps (this update makes the step count index + 1)
            bad_step=jnp.where((state.bad_step < 0) & ~finite, index + 1, state.bad_step),
        )

    return step


def make_eval_step(spec: DistillSpec, models: StepModels) -> Callable:
    """`eval_step(params, teacher_params, batch) -> {metric: [sum, count]}` of one held-out batch `[R, T]` (at
    T = 1; pretrain and offline runs, which hold no teacher: the student's loss only). Sums add over batches; a
    value is Σsum / Σcount (perplexity: exp of it). Where the training step takes the fused loss
    (`models.forward_hidden`), so does this one: an eval batch has a training micro-batch's rows, and its dense
    logits of both models were the largest arrays of the run (4× the training step's temporaries)."""
    distill = spec.mode == "distill" and not spec.offline_data_dir
    fused = distill and models.forward_hidden is not None

    def logits_of(graphdef, params, batch):
        return forward(nnx.merge(graphdef, params), batch["inputs"], batch.get("segment_ids"))[0]

    def hidden_of(graphdef, params, batch):
        hidden, head, _ = models.forward_hidden(nnx.merge(graphdef, params), batch["inputs"], batch.get("segment_ids"))
        return hidden, head

    def distillation_sums(params, teacher_params, batch):
        if fused:
            return hidden_distillation_sums(
                *hidden_of(models.student, params, batch),
                *hidden_of(models.teacher, teacher_params, batch),
                batch["targets"],
                batch["mask"],
                temperature=1.0,
                settings=models.hidden_loss,
            )
        return losses.distillation_sums(
            logits_of(models.student, params, batch),
            logits_of(models.teacher, teacher_params, batch),
            batch["targets"],
            batch["mask"],
            temperature=1.0,
        )

    def eval_step(params, teacher_params, batch):
        if not distill:
            logits = logits_of(models.student, params, batch)
            ce = losses.pretrain_sums(logits, batch["targets"], batch["mask"])["ce"]
            return {"eval/hard_loss": jnp.stack(ce), "eval/student_perplexity": jnp.stack(ce)}
        sums = distillation_sums(params, teacher_params, batch)
        pairs = {
            "eval/kl_div_T1": sums["kl_T1"],
            "eval/hard_loss": sums["ce"],
            "eval/student_perplexity": sums["ce"],
            "eval/top1_agreement": sums["top1_agreement"],
            "eval/teacher_loss": sums["teacher_ce"],
        }
        return {k: jnp.stack([jnp.asarray(a, jnp.float32) for a in v]) for k, v in pairs.items()}

    return eval_step
