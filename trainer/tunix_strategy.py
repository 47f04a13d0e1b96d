"""This trainer's loss as a tunix distillation strategy, for teams on tunix's `DistillationTrainer`.

    from trainer.tunix_strategy import DistillCtlStrategy   # imports tunix (the `tunix` extra)
    strategy = DistillCtlStrategy(student_forward_fn, teacher_forward_fn, labels_fn,
                                  alpha=0.9, temperature=2.0, beta=1.0, layer_indices=[0, -1])
    trainer = tunix.DistillationTrainer(student, teacher, strategy, optimizer, config)

`compute_loss` is `trainer.loss.distillation_loss`: the same total and the same metric names. Inputs:
- model outputs: logits `[B, T, V]`, or `(logits, out_projection_features [L, B, T, D])` when β > 0 (for our
  `trainer.models.Transformer`, `trainer.models.forward` returns exactly that pair);
- labels: tunix's one-hot `[B, T, V]` (an all-zero row is padding, as the guide says), or a mapping with integer
  `targets [B, T]` and `mask [B, T]` (no one-hot tensor needed).
Metrics are returned as floats per step (tunix averages them over steps): `sum / count`, with perplexities as
`exp(sum / count)`. α, T and β are constants here (tunix does not pass the step to a strategy); schedule them
with this repository's trainer, or by rebuilding the strategy.

Only this module imports tunix, and only when `DistillCtlStrategy` is first used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from trainer import loss as losses


def labels_to_targets(labels: Any) -> tuple[jax.Array, jax.Array]:
    """`(targets [B, T] int32, mask [B, T] float32)` from one-hot labels `[B, T, V]` or a targets/mask mapping."""
    if isinstance(labels, dict):
        return jnp.asarray(labels["targets"], jnp.int32), jnp.asarray(labels["mask"], jnp.float32)
    labels = jnp.asarray(labels)
    return jnp.argmax(labels, axis=-1).astype(jnp.int32), (jnp.sum(labels, axis=-1) > 0).astype(jnp.float32)


def _split(output: Any) -> tuple[jax.Array, jax.Array | None]:
    if isinstance(output, (tuple, list)):
        return output[0], output[1]
    return output, None


def _means(metrics: dict[str, tuple[jax.Array, jax.Array]]) -> dict[str, jax.Array]:
    out = {}
    for name, (total, count) in metrics.items():
        mean = total / jnp.maximum(count, 1.0)
        out[name] = jnp.exp(mean) if name in losses.PERPLEXITY_METRICS else mean
    return out


@functools.cache
def _strategy_class() -> type:
    from tunix.distillation.strategies import base_strategy

    class DistillCtlStrategy(base_strategy.BaseStrategy):
        """`α·T²·KL + (1 − α)·CE + β·feature_loss` with the guide's metrics (see `trainer.loss`)."""

        def __init__(
            self,
            student_forward_fn,
            teacher_forward_fn,
            labels_fn,
            *,
            alpha: float = 0.5,
            temperature: float = 1.0,
            beta: float = 0.0,
            layer_indices: Sequence[int] | None = None,
            feature_loss_type: str = "cosine",
        ):
            super().__init__(student_forward_fn, teacher_forward_fn, labels_fn)
            if temperature <= 0:
                raise ValueError(f"temperature must be > 0, got {temperature}")
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {alpha}")
            if beta < 0:
                raise ValueError(f"beta must be >= 0, got {beta}")
            if feature_loss_type not in ("cosine", "l2"):
                raise ValueError(f"feature_loss_type must be 'cosine' or 'l2', got {feature_loss_type!r}")
            self.alpha, self.temperature, self.beta = float(alpha), float(temperature), float(beta)
            self.layer_indices = None if layer_indices is None else list(layer_indices)
            self.feature_loss_type = feature_loss_type

        def compute_loss(self, student_output, teacher_output, labels):
            s_logits, s_features = _split(student_output)
            t_logits, t_features = _split(teacher_output)
            targets, mask = labels_to_targets(labels)
            total, metrics = losses.distillation_loss(
                s_logits,
                t_logits,
                targets,
                mask,
                alpha=self.alpha,
                temperature=self.temperature,
                beta=self.beta,
                student_features=s_features,
                teacher_features=t_features,
                layer_indices=self.layer_indices,
                feature_loss_type=self.feature_loss_type,
            )
            return total, _means(metrics)

        def compute_eval_loss(self, student_output, labels):
            s_logits, _ = _split(student_output)
            targets, mask = labels_to_targets(labels)
            total, metrics = losses.cross_entropy_loss(s_logits, targets, mask)
            return total, _means(metrics)

    return DistillCtlStrategy


def __getattr__(name: str):
    if name == "DistillCtlStrategy":
        return _strategy_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
