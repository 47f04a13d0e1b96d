"""Every registry model builds with the parameter count the registry states, and each family's math options
behave as documented (sliding window, soft-capping, Gemma's layer kinds). Logit equality with Hugging Face's
implementations is in tests/test_checkpoints_hf.py."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from distillspec.registry import MODELS, ModelShape  # noqa: E402
from trainer.models import ModelConfig, abstract_model, forward, host_init  # noqa: E402
from trainer.models.layers import attend, inverse_frequencies  # noqa: E402


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_parameter_count_equals_the_built_model(name):
    shape = MODELS[name]
    _, abstract = abstract_model(ModelConfig(shape))
    built = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.to_pure_dict(abstract)))
    assert built == shape.param_count()


def test_published_sizes():
    """Rough published sizes (billions), so a wrong dimension in the table cannot hide behind the test above."""
    published = {"llama3.1-8b": 8.03, "llama3.2-1b": 1.24, "gemma2-2b": 2.61, "gemma2-9b": 9.24, "gemma2-27b": 27.2}
    published |= {"qwen3-0.6b": 0.60, "qwen3-8b": 8.19, "gemma3-1b": 1.00, "gemma3-27b": 27.0}
    for name, billions in published.items():
        assert MODELS[name].param_count() / 1e9 == pytest.approx(billions, rel=0.02), name


def _tiny(family: str, **extra) -> ModelShape:
    base = dict(num_layers=3, emb_dim=32, num_query_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, vocab_size=64)
    gemma = dict(sliding_window=4, norm_eps=1e-6, tie_embeddings=True)
    per_family = {
        "llama": {},
        "qwen3": dict(qk_norm=True),
        "gemma2": dict(gemma, layers_per_block=2, attn_softcap=50.0, final_softcap=30.0, query_pre_attn_scalar=8),
        "gemma3": dict(gemma, qk_norm=True, global_every=3, rope_local_theta=10_000.0, rope_theta=1e6),
    }
    return ModelShape(family, **base, **per_family[family], **extra)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "gemma3"])
def test_each_family_is_causal_and_scanned_equals_unscanned(family):
    shape = _tiny(family)
    scanned = ModelConfig(shape, sow_features=True)
    graphdef, abstract = abstract_model(scanned)
    params = jax.tree.map(jnp.asarray, host_init(abstract, 0))
    params = jax.tree.map(lambda a: a + 0.1 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), params)  # norms too
    tokens = (jnp.arange(2 * 12).reshape(2, 12) * 7) % shape.vocab_size
    logits, features = jax.jit(lambda p, x: forward(nnx.merge(graphdef, p), x))(params, tokens)
    assert logits.shape == (2, 12, 64) and features.shape == (3, 2, 12, 32)
    changed = tokens.at[:, 9].set(1)
    later, _ = jax.jit(lambda p, x: forward(nnx.merge(graphdef, p), x))(params, changed)
    np.testing.assert_allclose(logits[:, :9], later[:, :9], rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[:, 9:], later[:, 9:])

    unscanned = dataclasses.replace(scanned, scan_layers=False)
    graphdef2, _ = abstract_model(unscanned)
    depth = shape.num_layers
    listed = {**params, "layers": {i: jax.tree.map(lambda a, i=i: a[i], params["layers"]) for i in range(depth)}}
    logits2, features2 = jax.jit(lambda p, x: forward(nnx.merge(graphdef2, p), x))(listed, tokens)
    np.testing.assert_allclose(logits, logits2, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(features, features2, rtol=2e-5, atol=2e-5)


def test_gemma_norms_start_at_zero_and_llama_norms_at_one():
    for family, start in (("gemma2", 0.0), ("gemma3", 0.0), ("llama", 1.0), ("qwen3", 1.0)):
        _, abstract = abstract_model(ModelConfig(_tiny(family)))
        params = host_init(abstract, 0)
        assert (params["final_norm"]["scale"] == start).all(), family


def test_layer_kinds():
    gemma3 = MODELS["gemma3-1b"]
    assert [i for i in range(gemma3.num_layers) if not gemma3.is_local(i)] == [5, 11, 17, 23]
    assert [MODELS["gemma2-2b"].is_local(i) for i in range(4)] == [True, False, True, False]
    assert not any(MODELS["llama3.1-8b"].is_local(i) for i in range(32))


def test_sliding_window_sees_exactly_window_keys():
    """With a window of 3, position 5 attends to positions 3, 4, 5 only: values elsewhere do not matter."""
    q = jnp.ones((1, 8, 1, 4))
    k = jnp.ones((1, 8, 1, 4))
    v = jnp.arange(8.0)[None, :, None, None] * jnp.ones((1, 8, 1, 4))
    out = attend(q, k, v, scale=1.0, softcap=None, window=3)
    np.testing.assert_allclose(out[0, 5, 0, 0], 4.0, rtol=1e-6)  # mean of 3, 4, 5
    np.testing.assert_allclose(out[0, 1, 0, 0], 0.5, rtol=1e-6)  # mean of 0, 1
    traced = attend(q, k, v, scale=1.0, softcap=None, window=(jnp.asarray(False), 3))
    np.testing.assert_allclose(traced[0, 5, 0, 0], 2.5, rtol=1e-6)  # global: mean of 0..5


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies():
    shape = MODELS["llama3.1-8b"]
    plain = inverse_frequencies(dataclasses.replace(shape, rope_scaling=None), local=False)
    scaled = inverse_frequencies(shape, local=False)
    assert scaled[0] == plain[0]  # wavelength 2π < 8192/4: unchanged
    np.testing.assert_allclose(scaled[-1], plain[-1] / 8, rtol=1e-6)  # wavelength > 8192: divided by factor
    gemma3 = MODELS["gemma3-4b"]
    np.testing.assert_allclose(inverse_frequencies(gemma3, local=False)[1], 1e6 ** (-2 / 256) / 8, rtol=1e-5)
    np.testing.assert_allclose(inverse_frequencies(gemma3, local=True)[1], 1e4 ** (-2 / 256), rtol=1e-5)
