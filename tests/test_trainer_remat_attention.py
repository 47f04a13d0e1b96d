"""Per-layer remat changes memory, not math: logits and gradients are equal under every policy, scanned or not.
Attention (`jax.nn.dot_product_attention` on accelerators, the head-major layout on CPU and for soft caps) equals a
plain einsum-softmax reference (GQA, causal, static and traced sliding windows), and packed documents (segment ids)
see only themselves."""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from distillspec.registry import ModelShape  # noqa: E402
from trainer.models import ModelConfig, abstract_model, forward, host_init  # noqa: E402
from trainer.models.layers import attend, attend_fused_call, attend_head_major, segment_positions  # noqa: E402


def _tiny(family: str) -> ModelShape:
    base = dict(num_layers=3, emb_dim=32, num_query_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48, vocab_size=64)
    gemma = dict(sliding_window=4, norm_eps=1e-6, tie_embeddings=True)
    per_family = {
        "llama": {},
        "gemma2": dict(gemma, layers_per_block=2, attn_softcap=50.0, final_softcap=30.0, query_pre_attn_scalar=8),
        "gemma3": dict(gemma, qk_norm=True, global_every=3, rope_local_theta=10_000.0, rope_theta=1e6),
    }
    return ModelShape(family, **{**base, **per_family[family]})


def _reference_attend(q, k, v, *, scale, softcap, window):
    """Plain einsum-softmax attention (scores and softmax in float32, finfo.min mask)."""
    b, t, h, kd = q.shape
    n = k.shape[2]
    qg = q.reshape(b, t, n, h // n, kd)
    scores = jnp.einsum("btngk,bsnk->bngts", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    i = jnp.arange(t)[:, None]
    j = jnp.arange(k.shape[1])[None, :]
    allowed = j <= i
    if isinstance(window, int):
        allowed = allowed & (i - j < window)
    elif window is not None:
        is_local, size = window
        allowed = allowed & ((i - j < size) | ~is_local)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bngts,bsnk->btngk", probs, v).reshape(b, t, h, kd)


IMPLEMENTATIONS = {"head-major": attend_head_major, "fused-call": attend_fused_call}


@pytest.mark.parametrize(
    "window", [None, 3, "traced-local", "traced-global"], ids=["global", "window3", "traced-local", "traced-global"]
)
@pytest.mark.parametrize(
    ("implementation", "softcap"), [("head-major", None), ("head-major", 20.0), ("fused-call", None)]
)
def test_attention_equals_the_explicit_implementation(implementation, window, softcap):
    keys = jax.random.split(jax.random.key(0), 3)
    q = 2.0 * jax.random.normal(keys[0], (2, 11, 6, 8))  # 6 query heads over 2 kv heads (GQA)
    k = 2.0 * jax.random.normal(keys[1], (2, 11, 2, 8))
    v = jax.random.normal(keys[2], (2, 11, 2, 8))
    if isinstance(window, str):
        window = (jnp.asarray(window == "traced-local"), 3)
    options = dict(scale=0.35, window=window) | ({"softcap": softcap} if implementation == "head-major" else {})
    attend_with = functools.partial(IMPLEMENTATIONS[implementation], **options)
    reference = functools.partial(_reference_attend, scale=0.35, softcap=softcap, window=window)
    # Different matmul layouts sum in different orders: ~10 float32 ulps of outputs of order 1.
    np.testing.assert_allclose(attend_with(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-5)
    # The head-major path's backward is written by hand (`layers._head_major_core`): every input's gradient.
    grads = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(attend_with(q, k, v))), argnums=(0, 1, 2))(q, k, v)
    grads_ref = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(reference(q, k, v))), argnums=(0, 1, 2))(q, k, v)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-5)


def test_cpu_attention_copies_no_score_sized_array():
    """On CPU `attend` takes the head-major layout, whose compiled gradient moves only q/k/v/output-sized arrays
    between layouts; `jax.nn.dot_product_attention`'s XLA implementation copies scores into transposed layouts
    (the canary: the test would not see a copy if there were none to see)."""
    q = jnp.ones((2, 64, 4, 8))  # 4 query heads over 2 kv heads
    k = v = jnp.ones((2, 64, 2, 8))
    scores = 2 * 4 * 64 * 64

    def largest_copy(attend_fn) -> int:
        loss = lambda q, k, v: jnp.sum(jnp.sin(attend_fn(q, k, v, scale=0.35, window=None)))  # noqa: E731
        hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()
        shapes = re.findall(r"= f32\[([\d,]*)\]\{[^}]*\} (?:copy|transpose)\(", hlo)
        return max((math.prod(int(d) for d in shape.split(",") if d) for shape in shapes), default=0)

    assert jax.default_backend() == "cpu"
    assert largest_copy(attend_fused_call) >= scores
    assert largest_copy(functools.partial(attend, softcap=None)) <= q.size  # T/K = 8 times smaller than scores


def test_segment_positions_restart_per_document():
    ids = jnp.asarray([[0, 0, 0, 1, 1, 2, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5]])
    np.testing.assert_array_equal(segment_positions(ids), [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 7]])


def _model(family: str, **options):
    config = ModelConfig(_tiny(family), **options)
    graphdef, abstract = abstract_model(config)
    params = jax.tree.map(jnp.asarray, host_init(abstract, 0))
    params = jax.tree.map(lambda a: a + 0.1 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), params)  # norms too
    return config, graphdef, params


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3"])
def test_packed_documents_equal_documents_run_alone(family):
    """Two documents packed in one row with segment ids give each document the logits it gets alone."""
    _, graphdef, params = _model(family)
    run = jax.jit(lambda p, x, s: forward(nnx.merge(graphdef, p), x, s)[0])
    first = (jnp.arange(7)[None] * 5 + 3) % 64
    second = (jnp.arange(6)[None] * 11 + 1) % 64
    packed = jnp.concatenate([first, second], axis=1)
    segments = jnp.asarray([[1] * 7 + [2] * 6])
    both = run(params, packed, segments)
    alone_first = run(params, first, None)
    alone_second = run(params, second, None)
    np.testing.assert_allclose(both[:, :7], alone_first, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(both[:, 7:], alone_second, rtol=2e-5, atol=2e-5)
    unsegmented = run(params, packed, None)
    assert not np.allclose(unsegmented[:, 7:], alone_second, atol=1e-3)  # without ids the second sees the first


# Each family once, scanned or not in turn: every case compiles three policies (time on a 2-core CI machine).
@pytest.mark.parametrize(
    ("family", "scan"), [("llama", True), ("gemma2", False), ("gemma3", True)], ids=["llama", "gemma2", "gemma3"]
)
def test_remat_policies_give_equal_values_and_gradients(family, scan):
    tokens = (jnp.arange(2 * 10).reshape(2, 10) * 7) % 64
    results = {}
    for policy in ("none", "full", "dots"):
        config, graphdef, params = _model(family, sow_features=True, remat=policy)
        if not scan:
            config = dataclasses.replace(config, scan_layers=False)
            graphdef, _ = abstract_model(config)
            depth = len(jax.tree.leaves(params["layers"])[0])
            params = {
                **params,
                "layers": {i: jax.tree.map(lambda a, i=i: a[i], params["layers"]) for i in range(depth)},
            }

        def loss(p, graphdef=graphdef):
            logits, features = forward(nnx.merge(graphdef, p), tokens)
            return jnp.mean(jax.nn.logsumexp(logits, axis=-1)) + jnp.mean(features**2)

        results[policy] = jax.jit(jax.value_and_grad(loss))(params)
    value, grads = results["none"]
    for policy in ("full", "dots"):
        other_value, other_grads = results[policy]
        np.testing.assert_allclose(other_value, value, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), other_grads, grads)


def test_remat_removes_saved_activations():
    """Under `full`, the backward pass keeps fewer bytes of residuals than with no remat (XLA's own count)."""
    sizes = {}
    for policy in ("none", "full"):
        config, graphdef, params = _model("llama", remat=policy)
        tokens = jnp.zeros((4, 64), jnp.int32)

        def loss(p, graphdef=graphdef):
            return jnp.mean(forward(nnx.merge(graphdef, p), tokens)[0])

        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        sizes[policy] = compiled.memory_analysis().temp_size_in_bytes
    assert sizes["full"] < sizes["none"], sizes


@pytest.mark.parametrize("layers", [2, 4, 8])
def test_a_students_remat_saves_memory_at_any_depth(layers):
    """Stacks of at most 4 layers were scanned unrolled, and unrolled XLA kept the recomputation live: `full`
    saved 8 % of a 4-layer student's temporaries (where a rolled scan saves 75 %) and `dots` none. The student's
    model as the trainer builds it (`from_spec`, trained) now keeps the policy's saving at every depth."""
    from distillspec.config import ModelSpec
    from trainer.models import ModelConfig, abstract_model, host_init

    temps = {}
    for remat in ("none", "dots", "full"):
        spec = ModelSpec(model="tiny-2l", num_layers=layers, emb_dim=128, mlp_dim=512, vocab_size=256, remat=remat)
        config = ModelConfig.from_spec(spec, trained=True)
        graphdef, abstract = abstract_model(config)
        params = jax.tree.map(jnp.asarray, host_init(abstract, 0))
        tokens = jnp.zeros((4, 256), jnp.int32)

        def loss(p, graphdef=graphdef):
            return jnp.mean(forward(nnx.merge(graphdef, p), tokens)[0])

        temps[remat] = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes
    assert temps["full"] < temps["dots"] < 0.8 * temps["none"] and temps["full"] < 0.65 * temps["none"], temps
