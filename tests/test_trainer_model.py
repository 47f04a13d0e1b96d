"""The NNX transformer: causal, scanned = unscanned, features sown as [L, B, T, D], layers dropped exactly."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from distillspec.registry import MODELS  # noqa: E402
from trainer.models import FEATURES, ModelConfig, abstract_model, drop_layers, forward, host_init  # noqa: E402
from trainer.setup import _restack  # noqa: E402

SHAPE = MODELS["tiny-4l"]


def _params(config: ModelConfig, seed: int = 0):
    graphdef, abstract = abstract_model(config)
    return graphdef, jax.tree.map(jnp.asarray, host_init(abstract, seed))


@pytest.fixture(scope="module")
def scanned():
    config = ModelConfig(SHAPE, sow_features=True)
    graphdef, params = _params(config)
    run = jax.jit(lambda p, x: forward(nnx.merge(graphdef, p), x))
    return config, graphdef, params, run


def test_logits_and_features_shapes(scanned):
    _, _, params, run = scanned
    tokens = jnp.arange(2 * 9).reshape(2, 9) % 256
    logits, features = run(params, tokens)
    assert logits.shape == (2, 9, SHAPE.vocab_size) and logits.dtype == jnp.float32
    assert features.shape == (SHAPE.num_layers, 2, 9, SHAPE.emb_dim)


def test_attention_is_causal(scanned):
    _, _, params, run = scanned
    tokens = jnp.arange(12).reshape(1, 12) * 7 % 256
    changed = tokens.at[0, 8].set(3)
    a, fa = run(params, tokens)
    b, fb = run(params, changed)
    np.testing.assert_allclose(a[:, :8], b[:, :8], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fa[:, :, :8], fb[:, :, :8], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a[:, 8:], b[:, 8:])


def test_scanned_and_unscanned_layers_compute_the_same(scanned):
    _, _, params, run = scanned
    config = ModelConfig(SHAPE, scan_layers=False, sow_features=True)
    graphdef, _ = abstract_model(config)
    unscanned = {**params, "layers": _restack(params["layers"], scan=False)}
    tokens = jnp.arange(2 * 10).reshape(2, 10) * 5 % 256
    a, fa = run(params, tokens)
    b, fb = jax.jit(lambda p, x: forward(nnx.merge(graphdef, p), x))(unscanned, tokens)
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(fa, fb, rtol=2e-5, atol=2e-5)
    assert jax.tree.map(jnp.shape, _restack(unscanned["layers"], scan=True)) == jax.tree.map(
        jnp.shape, params["layers"]
    )


def test_features_are_not_sown_when_off():
    config = ModelConfig(SHAPE, sow_features=False)
    graphdef, params = _params(config)
    model = nnx.merge(graphdef, params)
    _, features = forward(model, jnp.zeros((1, 4), jnp.int32))
    assert features is None
    _, captured = nnx.capture(model, nnx.Intermediate)(jnp.zeros((1, 4), jnp.int32))
    assert FEATURES not in str(captured)


def test_drop_layers_keeps_the_other_layers_in_order(scanned):
    _, _, params, _ = scanned
    pruned = drop_layers(params, [1, 2], SHAPE.num_layers, scan_layers=True)
    for kept, new in zip(jax.tree.leaves(params["layers"]), jax.tree.leaves(pruned["layers"])):
        assert new.shape[0] == 2
        np.testing.assert_array_equal(new[0], kept[0])
        np.testing.assert_array_equal(new[1], kept[3])
    np.testing.assert_array_equal(pruned["embed"], params["embed"])
    unscanned = drop_layers({**params, "layers": _restack(params["layers"], scan=False)}, [0], 4, scan_layers=False)
    assert sorted(unscanned["layers"]) == [0, 1, 2]


def test_host_init_is_deterministic_and_seeded():
    config = ModelConfig(SHAPE)
    _, abstract = abstract_model(config)
    a, b, c = host_init(abstract, 0), host_init(abstract, 0), host_init(abstract, 1)
    assert all((x == y).all() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not (a["embed"] == c["embed"]).all()
    assert (a["final_norm"]["scale"] == 1).all()
    wq = a["layers"]["attention"]["wq"]  # [L, D, H, K] ~ N(0, 1/D)
    assert abs(wq.std() - SHAPE.emb_dim**-0.5) < 0.01


def test_bfloat16_activations_and_weights():
    config = ModelConfig(SHAPE, weight_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    graphdef, params = _params(config)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    logits, _ = jax.jit(lambda p, x: forward(nnx.merge(graphdef, p), x))(params, jnp.ones((1, 5), jnp.int32))
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_a_random_student_is_placed_one_parameter_at_a_time_with_the_same_values(tmp_path):
    """The whole model was drawn on each host before any of it was placed (280 GB per host for a 70B student);
    `host_draws` yields one parameter at a time, and the student `build` places is `host_init`'s, value for value."""
    import types

    from trainer_support import spec_of

    from trainer.models import host_draws, host_init
    from trainer.setup import _model, build

    spec = spec_of({"name": "x", "mode": "pretrain", "student": {"model": "tiny-2l"}, "output_dir": str(tmp_path)})
    built = build(spec)
    abstract = _model(spec.student_block(), False, built.mesh, trained=True).abstract_state
    stream = f"{spec.mode}/{spec.student.model}"
    draws = host_draws(abstract, spec.seed, stream)
    assert isinstance(draws, types.GeneratorType)
    path, first = next(draws)
    assert isinstance(path, tuple) and first.ndim >= 1
    expected = host_init(abstract, spec.seed, stream)
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), jax.device_get(built.state.params), expected)
    assert all(jax.tree.leaves(same))
