"""trainer.loss.fused_distillation_loss (blocked, from hidden states) against distillation_loss on the dense logits
`hidden @ head`: the same metrics and `(sum, count)` pairs, and gradients equal to autodiff of a plain dense formula.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from tests.trainer_support import compiled_exponentials  # noqa: E402
from trainer import blocked_logits  # noqa: E402
from trainer import loss as L  # noqa: E402

DS, DT = 16, 24


def problem(n=37, v=301, seed=0, scale=0.5, related=0.7):
    """Hidden states and heads; the teacher's head is partly the student's (through a projection), so that the
    two models often agree on the argmax, as distillation pairs do."""
    rng = np.random.default_rng(seed)
    sh = rng.normal(size=(n, DS)).astype(np.float32)
    sw = (rng.normal(size=(DS, v)) * scale).astype(np.float32)
    proj = rng.normal(size=(DT, DS)).astype(np.float32) / np.sqrt(DS)
    th = (sh @ proj.T + 0.3 * rng.normal(size=(n, DT))).astype(np.float32)
    tw = (related * proj @ sw + (1 - related) * rng.normal(size=(DT, v)) * scale).astype(np.float32)
    targets = rng.integers(0, v, size=n)
    mask = (rng.random(n) > 0.2).astype(np.float32)
    mask[-1] = 0.0
    return tuple(map(jnp.asarray, (sh, sw, th, tw, targets, mask)))


def capped(z, cap):
    return z if cap is None else cap * jnp.tanh(z / cap)


def dense_loss(sh, sw, th, tw, targets, mask, *, cap_s=None, cap_t=None, **kw):
    return L.distillation_loss(capped(sh @ sw, cap_s), capped(th @ tw, cap_t), targets, mask, **kw)


def plain_autodiff_loss(sh, sw, th, tw, targets, mask, *, alpha, temperature, cap_s=None, cap_t=None):
    """The guide's formula with jax.nn.log_softmax, differentiated by JAX (shares no code with trainer.loss)."""
    s, t = capped(sh @ sw, cap_s), jax.lax.stop_gradient(capped(th @ tw, cap_t))
    ls_t, lt_t = jax.nn.log_softmax(s / temperature), jax.nn.log_softmax(t / temperature)
    kl = jnp.sum(jnp.exp(lt_t) * (lt_t - ls_t), axis=-1)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(s), targets[:, None], axis=-1)[:, 0]
    n = jnp.sum(mask)
    return alpha * temperature**2 * jnp.sum(kl * mask) / n + (1 - alpha) * jnp.sum(ce * mask) / n


def assert_same_metrics(got, want, rtol=1e-5):
    assert set(got) == set(want) == set(L.DISTILL_METRICS)
    for name in want:
        (gs, gc), (ws, wc) = got[name], want[name]
        assert float(gc) == float(wc), name
        np.testing.assert_allclose(float(gs), float(ws), rtol=rtol, atol=1e-6, err_msg=name)


CASES = [  # (n, v, block_tokens, block_vocab, caps)
    (37, 301, 8, 64, (None, None)),  # odd tokens padded, last vocabulary block overlapping
    (37, 301, 8, 64, (30.0, 50.0)),  # Gemma-style soft caps (student 30, teacher 50)
    (37, 301, 8, 64, (2.0, 3.0)),  # caps that bite hard
    (64, 256, 16, 128, (None, None)),  # exact multiples
    (5, 301, 1024, 8192, (None, None)),  # blocks larger than the problem
    (33, 97, 7, 13, (None, 5.0)),  # block sizes dividing nothing
]


@pytest.mark.parametrize("n, v, bt, bv, caps", CASES)
def test_values_equal_the_dense_loss(n, v, bt, bv, caps):
    sh, sw, th, tw, targets, mask = problem(n, v)
    cap_s, cap_t = caps
    blocks = dict(block_tokens=bt, block_vocab=bv, student_softcap=cap_s, teacher_softcap=cap_t)
    fused = jax.jit(
        lambda *a, alpha, temperature: L.fused_distillation_loss(*a, alpha=alpha, temperature=temperature, **blocks)
    )
    for alpha, temperature in [(0.5, 2.0), (0.0, 1.0), (1.0, 0.5), (0.3, 4.0)]:  # traced: one compile
        kw = dict(alpha=jnp.float32(alpha), temperature=jnp.float32(temperature))
        want_total, want = dense_loss(sh, sw, th, tw, targets, mask, cap_s=cap_s, cap_t=cap_t, **kw)
        got_total, got = fused(sh, sw, th, tw, targets, mask, **kw)
        np.testing.assert_allclose(float(got_total), float(want_total), rtol=1e-5)
        assert_same_metrics(got, want)


@pytest.mark.parametrize("n, v, bt, bv, caps", CASES)
def test_gradients_equal_autodiff_of_the_dense_formula(n, v, bt, bv, caps):
    sh, sw, th, tw, targets, mask = problem(n, v, seed=1)
    cap_s, cap_t = caps
    kw = dict(alpha=0.4, temperature=2.0)

    blocks = dict(block_tokens=bt, block_vocab=bv, student_softcap=cap_s, teacher_softcap=cap_t)

    def fused(sh, sw):
        return L.fused_distillation_loss(sh, sw, th, tw, targets, mask, **blocks, **kw)[0]

    got = jax.jit(jax.grad(fused, argnums=(0, 1)))(sh, sw)
    want = jax.grad(
        lambda a, b: plain_autodiff_loss(a, b, th, tw, targets, mask, cap_s=cap_s, cap_t=cap_t, **kw), (0, 1)
    )(sh, sw)
    for g, w, name in zip(got, want, ("student_hidden", "student_head")):
        assert g.shape == w.shape and g.dtype == w.dtype
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0, 4.0])
@pytest.mark.parametrize("caps", [(None, None), (30.0, 5.0)])
def test_integer_temperature_shares_the_exponentials(temperature, caps):
    """At T = 1 … 4 given as a number, `exp(d)` is `exp(d / T)^T`: the compiled loss and gradient compute fewer
    exponentials than at a traced T, and the values, metrics and gradients are the same."""
    sh, sw, th, tw, targets, mask = problem(37, 301, seed=2)
    blocks = dict(block_tokens=8, block_vocab=64, student_softcap=caps[0], teacher_softcap=caps[1])

    def run(sh, sw, temperature):
        return L.fused_distillation_loss(sh, sw, th, tw, targets, mask, alpha=0.4, temperature=temperature, **blocks)

    general = jax.value_and_grad(run, argnums=(0, 1), has_aux=True)
    shared = jax.value_and_grad(lambda a, b: run(a, b, temperature), argnums=(0, 1), has_aux=True)

    assert compiled_exponentials(shared, sh, sw) < compiled_exponentials(general, sh, sw, jnp.float32(temperature))
    (want_total, want), want_grads = jax.jit(general)(sh, sw, jnp.float32(temperature))
    (got_total, got), got_grads = jax.jit(shared)(sh, sw)
    np.testing.assert_allclose(float(got_total), float(want_total), rtol=1e-5)
    assert_same_metrics(got, want)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_teacher_gets_no_gradient():
    sh, sw, th, tw, targets, mask = problem()

    def fused(sh, sw, th, tw):
        return L.fused_distillation_loss(
            sh, sw, th, tw, targets, mask, alpha=0.5, temperature=2.0, block_tokens=8, block_vocab=64
        )[0]

    grads = jax.grad(fused, argnums=(0, 1, 2, 3))(sh, sw, th, tw)
    assert float(jnp.max(jnp.abs(grads[0]))) > 0 and float(jnp.max(jnp.abs(grads[1]))) > 0
    for g in grads[2:]:
        assert float(jnp.max(jnp.abs(g))) == 0.0


def test_features_and_beta_as_in_the_dense_loss():
    sh, sw, th, tw, targets, mask = problem()
    rng = np.random.default_rng(3)
    sf, tf = (jnp.asarray(rng.normal(size=(3, sh.shape[0], 8)), jnp.float32) for _ in range(2))
    kw = dict(alpha=0.7, temperature=2.0, beta=0.5, student_features=sf, teacher_features=tf, layer_indices=[0, -1])
    want_total, want = dense_loss(sh, sw, th, tw, targets, mask, **kw)
    got_total, got = L.fused_distillation_loss(sh, sw, th, tw, targets, mask, block_tokens=8, block_vocab=64, **kw)
    np.testing.assert_allclose(float(got_total), float(want_total), rtol=1e-5)
    assert_same_metrics(got, want)


def test_argmax_ties_across_vocabulary_blocks_as_in_the_dense_loss():
    """Identical columns in different vocabulary blocks: agreement is decided as the dense loss decides it."""
    sh, sw, th, tw, targets, mask = problem(16, 128)
    sw = sw.at[:, 100].set(sw[:, 3] + 5.0).at[:, 5].set(sw[:, 3] + 5.0)  # column 5 (block 0) ties column 100
    tw = tw.at[:, 70].set(tw[:, 3] + 50.0)
    th = jnp.abs(th)  # teacher argmax 70; student argmax 5 or 100 depending on sign
    want = dense_loss(sh, sw, th, tw, targets, mask, alpha=0.5, temperature=1.0)[1]["distill/top1_agreement"]
    got = L.fused_distillation_loss(
        sh, sw, th, tw, targets, mask, alpha=0.5, temperature=1.0, block_tokens=4, block_vocab=32
    )[1]["distill/top1_agreement"]
    assert float(got[0]) == float(want[0]) and float(got[1]) == float(want[1])


def test_agreement_per_token_with_many_ties_across_blocks():
    """Logits drawn from a few integers (ties everywhere, running maxima that grow in later blocks or hold): per
    token, the blocked or-reduction equals `trainer.loss.top1_agreement` on the whole row."""
    rng = np.random.default_rng(3)
    n, v = 64, 50
    s = jnp.asarray(rng.integers(0, 4, (n, v)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 4, (n, v)), jnp.float32)
    eye = jnp.eye(n, dtype=jnp.float32)  # hidden states that pick one row of the "head": logits = s, t exactly
    terms = blocked_logits.logit_terms_from_hidden(
        eye, s, eye, t, jnp.zeros(n, jnp.int32), 1.0, blocked_logits.Blocks(tokens=16, vocab=7)
    )
    want = L.top1_agreement(s, jnp.max(s, -1), t, jnp.max(t, -1))
    assert 0 < float(jnp.sum(want)) < n  # both outcomes occur
    np.testing.assert_array_equal(np.asarray(terms[4]), np.asarray(want))


def test_bfloat16_inputs_match_the_dense_loss_on_the_same_bfloat16_values():
    sh, sw, th, tw, targets, mask = (a.astype(jnp.bfloat16) if a.dtype == jnp.float32 else a for a in problem())
    mask = mask.astype(jnp.float32)

    def logits(h, w):
        return jnp.dot(h, w, preferred_element_type=jnp.float32)

    want_total, _ = L.distillation_loss(logits(sh, sw), logits(th, tw), targets, mask, alpha=0.5, temperature=2.0)
    got_total, _ = L.fused_distillation_loss(
        sh, sw, th, tw, targets, mask, alpha=0.5, temperature=2.0, block_tokens=8, block_vocab=64
    )
    np.testing.assert_allclose(float(got_total), float(want_total), rtol=1e-5)
    grads = jax.grad(
        lambda a, b: L.fused_distillation_loss(
            a, b, th, tw, targets, mask, alpha=0.5, temperature=2.0, block_tokens=8, block_vocab=64
        )[0],
        argnums=(0, 1),
    )(sh, sw)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]


def test_no_tokens_by_vocab_array_is_ever_held():
    """Compiled loss + gradient: temporaries stay below one float32 `[N, V]` logits array (the dense version holds
    several)."""
    n, v = 512, 8192
    args = problem(n, v)
    kw = dict(alpha=0.5, temperature=2.0)

    def fused(sh, sw, th, tw, targets, mask):
        return L.fused_distillation_loss(sh, sw, th, tw, targets, mask, block_tokens=64, block_vocab=1024, **kw)[0]

    def dense(sh, sw, th, tw, targets, mask):
        return dense_loss(sh, sw, th, tw, targets, mask, **kw)[0]

    def temp_bytes(f):
        compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    logits_bytes = n * v * 4
    assert temp_bytes(fused) < logits_bytes / 2
    assert temp_bytes(dense) > 2 * logits_bytes


def test_bad_shapes_and_blocks_raise_clear_errors():
    sh, sw, th, tw, targets, mask = problem()
    with pytest.raises(ValueError, match="student_head"):
        L.fused_distillation_loss(sh, sw.T, th, tw, targets, mask, alpha=0.5, temperature=2.0)
    with pytest.raises(ValueError, match="block sizes"):
        L.fused_distillation_loss(sh, sw, th, tw, targets, mask, alpha=0.5, temperature=2.0, block_tokens=0)
    with pytest.raises(ValueError, match="softcap"):
        blocked_logits.Blocks(student_softcap=0.0)
