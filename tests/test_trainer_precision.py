"""Mixed precision: the student is kept and optimised in float32 (master weights, AdamW moments) while
`dtype: bfloat16` computes in bfloat16; a frozen teacher stays in its `weight_dtype`."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from tests.trainer_support import spec_of  # noqa: E402
from trainer import step as step_lib  # noqa: E402
from trainer.models import ModelConfig, abstract_model, host_init  # noqa: E402


def test_bfloat16_student_has_float32_master_weights_and_moments():
    from trainer.setup import build

    bf16 = {"weight_dtype": "bfloat16", "dtype": "bfloat16"}
    spec = spec_of(
        {
            "name": "precision",
            "student": {"model": "tiny-2l", **bf16},
            "teacher": {"model": "tiny-4l", "load_parameters_path": "unused", **bf16},
            "batch": {"per_device_batch_size": 2, "max_target_length": 16},
            "steps": 2,
            "optimizer": {"warmup_fraction": 0.0},
            "output_dir": tempfile.mkdtemp(),
        }
    )
    teacher = host_init(abstract_model(ModelConfig.from_spec(spec.teacher))[1], 1)
    built = build(spec, teacher_params=teacher)
    assert {a.dtype for a in jax.tree.leaves(built.state.params)} == {jnp.dtype(jnp.float32)}
    moments = [a for a in jax.tree.leaves(built.state.opt_state) if a.ndim > 0]
    assert moments and {a.dtype for a in moments} == {jnp.dtype(jnp.float32)}
    assert {a.dtype for a in jax.tree.leaves(built.teacher_params)} == {jnp.dtype(jnp.bfloat16)}

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, spec.student.shape().vocab_size, size=(1, built.rows, 17))
    batch = built.to_device(
        {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "mask": np.ones((1, built.rows, 16), np.float32)}
    )
    hp = {k: np.float32(v) for k, v in step_lib.hyperparameters(spec, 0).items()}
    before = jax.tree.map(np.asarray, built.state.params)
    with jax.set_mesh(built.mesh):
        state = built.step_fn(built.state, built.teacher_params, batch, hp)
    assert int(state.bad_step) == -1
    assert {a.dtype for a in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    # float32 masters move by updates far below bfloat16's resolution at 1.0 (2⁻⁸), which bf16 weights would lose
    changes = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before))]
    assert 0 < max(changes) < 2**-8
