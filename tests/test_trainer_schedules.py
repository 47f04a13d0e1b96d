"""Schedules in the training step: formula points, clamping, optimizer-step semantics, learning rate, and
gradient accumulation weighting micro-batches by their valid tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
from trainer_support import TEACHER, merged, spec_of

from distillspec.schedules import schedule_value

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402


@pytest.mark.parametrize(
    ("kind", "step", "expected"),
    [
        ("constant", 50, 0.9),
        ("linear", 0, 0.9),
        ("linear", 25, 0.8),
        ("linear", 50, 0.7),
        ("linear", 100, 0.5),
        ("cosine", 0, 0.9),
        ("cosine", 50, 0.7),
        ("cosine", 100, 0.5),
        ("cosine", 25, 0.5 + 0.4 * 0.5 * (1 + math.cos(math.pi * 0.25))),
        ("linear", 250, 0.5),
        ("cosine", 1000, 0.5),
        ("linear", -5, 0.9),  # clamped past either end
    ],
)
def test_schedule_formula_points(kind, step, expected):
    assert schedule_value(kind, 0.9, 0.5, step, 100) == pytest.approx(expected)
    traced = jax.jit(lambda s: schedule_value(kind, 0.9, 0.5, s, 100))(jnp.int32(step))
    assert float(traced) == pytest.approx(expected, rel=1e-6)


def test_cosine_holds_near_start_longer_than_linear():
    assert schedule_value("cosine", 0.9, 0.5, 20, 100) > schedule_value("linear", 0.9, 0.5, 20, 100)


@pytest.mark.parametrize("accumulation", [1, 4])
def test_schedules_follow_the_guides_progress_over_the_optimizer_updates(accumulation):
    """The guide's `progress = clip(step / max_steps, 0, 1)` with the 0-based update index (MaxText's step): the
    first update sees `start`, the last `(steps - 1) / steps` of the way, whatever the accumulation."""
    from trainer.step import hyperparameters

    spec = spec_of(
        merged(
            TEACHER,
            mode="distill",
            steps=40,
            batch={"gradient_accumulation_steps": accumulation},
            teacher={"model": "tiny-4l", "load_parameters_path": "x"},
            loss={
                "alpha": {"start": 0.9, "end": 0.3, "schedule": "cosine"},
                "temperature": {"start": 2.0, "end": 1.0, "schedule": "linear"},
            },
        )
    )
    first, last = hyperparameters(spec, 0), hyperparameters(spec, spec.steps - 1)
    assert (first["alpha"], first["temperature"]) == pytest.approx((0.9, 2.0))
    cosine = 0.3 + (0.9 - 0.3) * 0.5 * (1 + math.cos(math.pi * 39 / 40))
    assert (last["alpha"], last["temperature"]) == pytest.approx((cosine, 2.0 - 39 / 40), rel=1e-6)
    # The update index is the optimizer step, independent of micro-batches: halfway is halfway.
    assert hyperparameters(spec, 20)["temperature"] == pytest.approx(1.5, rel=1e-6)
    assert hyperparameters(spec, 20)["alpha"] == pytest.approx(0.6, rel=1e-6)


def test_learning_rate_is_optax_warmup_cosine():
    import optax

    from trainer.step import learning_rate_schedule

    spec = spec_of(
        merged(TEACHER, steps=200, optimizer={"learning_rate": 1e-3, "warmup_fraction": 0.1, "final_lr_fraction": 0.05})
    )
    ours = learning_rate_schedule(spec)
    ref = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 20, 200, 5e-5)
    for step in (0, 1, 10, 20, 21, 100, 199, 200, 300):
        assert ours(step) == pytest.approx(float(ref(step)), rel=1e-5, abs=1e-12)


def _one_step(spec, host_batch):
    """Run one compiled training step from the spec's initial state; returns (params, window)."""
    from trainer.setup import build
    from trainer.step import hyperparameters

    built = build(spec)
    hp = {k: np.float32(v) for k, v in hyperparameters(spec, 0).items()}
    with jax.set_mesh(built.mesh):
        state = built.step_fn(built.state, built.teacher_params, built.to_device(host_batch), hp)
    return jax.device_get(state.params), jax.device_get(state.window)


def test_gradient_accumulation_weights_micro_batches_by_valid_tokens():
    """Two micro-batches with different amounts of padding give the same update as one batch of both."""
    rng = np.random.default_rng(0)
    rows, length = 4, 16
    tokens = rng.integers(0, 256, size=(2 * rows, length + 1)).astype(np.int32)
    mask = np.ones((2 * rows, length), np.float32)
    mask[:rows, 5:] = 0.0  # the first micro-batch is mostly padding: equal weighting per micro-batch would be wrong
    whole = {"inputs": tokens[None, :, :-1], "targets": tokens[None, :, 1:], "mask": mask[None]}
    split = {k: v.reshape(2, rows, length) for k, v in whole.items()}
    base = merged(
        TEACHER,
        batch={"max_target_length": length},
        steps=10,
        optimizer={"warmup_fraction": 0.0, "weight_decay": 0.0, "grad_clip_norm": None},
    )
    one = spec_of(merged(base, batch={"per_device_batch_size": 2 * rows, "gradient_accumulation_steps": 1}))
    two = spec_of(merged(base, batch={"per_device_batch_size": rows, "gradient_accumulation_steps": 2}))
    params_one, window_one = _one_step(one, whole)
    params_two, window_two = _one_step(two, split)
    # Adam's first update is about ±lr (3e-3) per element whatever the gradient's scale, so a wrongly weighted
    # gradient moves elements by ~lr; float32 summation order moves a few near-zero gradients by far less.
    for a, b in zip(jax.tree.leaves(params_one), jax.tree.leaves(params_two)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        assert np.mean(np.abs(a - b) > 1e-6) < 1e-3
    for name in window_one:
        np.testing.assert_allclose(window_one[name], window_two[name], rtol=1e-5, err_msg=name)
    assert window_one["distill/hard_loss"][1] == mask.sum()


def test_a_fixed_temperature_is_compiled_in_and_shares_the_loss_exponentials(monkeypatch):
    """A constant temperature reaches the loss as a number: at T = 2 the compiled step computes two exponentials
    per logit pair where a scheduled temperature needs four (`losses.integer_temperature`), and its first step
    equals the step of a schedule that starts at the same T. (XLA's pass over the logits, the TPU's, whose
    exponentials the HLO shows; on CPU the loss otherwise runs `trainer.cpu_loss_kernel`'s.)"""
    from trainer import cpu_loss_kernel
    from trainer.models import ModelConfig, abstract_model, host_init
    from trainer.setup import build
    from trainer.step import hyperparameters

    monkeypatch.setenv(cpu_loss_kernel.ENV_SWITCH, "0")

    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 256, size=(4, 17)).astype(np.int32)
    batch = {"inputs": tokens[None, :, :-1], "targets": tokens[None, :, 1:], "mask": np.ones((1, 4, 16), np.float32)}
    base = merged(
        TEACHER,
        mode="distill",
        steps=10,
        batch={"per_device_batch_size": 4, "max_target_length": 16},
        teacher={"model": "tiny-4l", "load_parameters_path": "unused"},
    )
    fixed = spec_of(merged(base, loss={"alpha": 0.5, "temperature": 2.0}))
    moving = spec_of(merged(base, loss={"alpha": 0.5, "temperature": {"start": 2.0, "end": 1.0, "schedule": "linear"}}))
    teacher = host_init(abstract_model(ModelConfig.from_spec(fixed.teacher))[1], 1)

    def compile_and_step(spec):
        built = build(spec, teacher_params=teacher)
        hp = {k: np.float32(v) for k, v in hyperparameters(spec, 0).items()}
        with jax.set_mesh(built.mesh):
            args = (built.state, built.teacher_params, built.to_device(batch), hp)
            exponentials = built.step_fn.lower(*args).compile().as_text().count(" exponential(")
            state = jax.device_get(built.step_fn(*args))
        return exponentials, state

    (exp_fixed, state_fixed), (exp_moving, state_moving) = compile_and_step(fixed), compile_and_step(moving)
    assert exp_fixed < exp_moving
    # A constant T that is not an integer gains nothing compiled in: it stays an input, shared by sweep points.
    assert compile_and_step(spec_of(merged(base, loss={"alpha": 0.5, "temperature": 1.5})))[0] == exp_moving
    for name in state_fixed.window:
        np.testing.assert_allclose(state_fixed.window[name], state_moving.window[name], rtol=1e-5, err_msg=name)
    # Adam's first update is about ±lr per element whatever the gradient's scale: a near-zero gradient whose
    # rounding differs (exp(d / 2)² is not exp(d) to the last bit) may move its element by up to ~2·lr.
    for a, b in zip(jax.tree.leaves(state_fixed.params), jax.tree.leaves(state_moving.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-2)
        assert np.mean(np.abs(a - b) > 1e-6) < 1e-3


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_gradient_clipping_is_optax_clip_by_global_norm(max_norm):
    """The step's clipping (one scalar factor) gives optax.clip_by_global_norm's updates and state, clipped or not."""
    import optax

    from trainer.step import clip_by_global_norm

    rng = np.random.default_rng(2)
    grads = {"a": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32), "b": jnp.asarray(rng.standard_normal(7))}
    ours, theirs = clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
    got, state = jax.jit(ours.update)(grads, ours.init(grads))
    want, want_state = theirs.update(grads, theirs.init(grads))
    assert state == want_state
    for name in grads:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6)
    assert float(optax.tree.norm(got)) == pytest.approx(min(max_norm, float(optax.tree.norm(grads))), rel=1e-6)
