"""trainer.loss against an independent NumPy implementation of the guide's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from tests.trainer_support import compiled_exponentials  # noqa: E402
from trainer import cpu_loss_kernel  # noqa: E402
from trainer import loss as L  # noqa: E402

B, T, V, LAYERS, D = 3, 5, 11, 4, 6


@pytest.fixture(autouse=True, params=["cpu-kernel", "xla"])
def row_pass(request, monkeypatch):
    """Every test on both passes over the logits: on CPU the loss takes `trainer.cpu_loss_kernel`'s, on TPU and
    GPU (and here, switched off) XLA's. Tests of the XLA pass's own structure switch it off themselves."""
    monkeypatch.setenv(cpu_loss_kernel.ENV_SWITCH, "1" if request.param == "cpu-kernel" else "0")
    if request.param == "cpu-kernel":
        assert cpu_loss_kernel.usable(), "the CPU loss kernel did not build here (see the warning above)"
    return request.param


def xla_row_pass(monkeypatch):
    monkeypatch.setenv(cpu_loss_kernel.ENV_SWITCH, "0")


# --- the NumPy reference: written from the formula, sharing no code with trainer.loss ---------------------


def np_log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_reference(s, t, targets, mask, alpha, temperature, beta=0.0, sf=None, tf=None, layers=None, kind="cosine"):
    valid = mask.astype(bool)
    n = valid.sum()

    def mean(x):
        return x[valid].sum() / max(n, 1)

    def kl(t_logits, s_logits):
        lt, ls = np_log_softmax(t_logits), np_log_softmax(s_logits)
        return (np.exp(lt) * (lt - ls)).sum(-1)

    def ce(logits):
        lp = np_log_softmax(logits)
        return -np.take_along_axis(lp, targets[..., None], -1)[..., 0]

    kl_t = mean(kl(t / temperature, s / temperature))
    kl_1 = mean(kl(t, s))
    hard, teacher = mean(ce(s)), mean(ce(t))
    feature = 0.0
    if sf is not None and beta:
        idx_s = [i % sf.shape[0] for i in (layers if layers is not None else range(sf.shape[0]))]
        idx_t = [i % tf.shape[0] for i in (layers if layers is not None else range(tf.shape[0]))]
        a, b = sf[idx_s].astype(np.float64), tf[idx_t].astype(np.float64)
        if kind == "cosine":
            na = np.maximum(np.linalg.norm(a, axis=-1), 1e-6)
            nb = np.maximum(np.linalg.norm(b, axis=-1), 1e-6)
            per = 1.0 - (a * b).sum(-1) / (na * nb)
        else:
            per = ((a - b) ** 2).mean(-1)
        vl = np.broadcast_to(valid, per.shape)
        feature = per[vl].sum() / max(vl.sum(), 1)
    total = alpha * temperature**2 * kl_t + (1 - alpha) * hard + beta * feature
    agree = mean((s.argmax(-1) == t.argmax(-1)).astype(np.float64))
    return {
        "total": total,
        "kl_t": kl_t,
        "kl_1": kl_1,
        "hard": hard,
        "teacher": teacher,
        "feature": beta * feature,
        "agree": agree,
        "n": n,
    }


def batch(seed=0, pad_rows=(), pad_tail=2):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(B, T, V)).astype(np.float32) * 3
    t = rng.normal(size=(B, T, V)).astype(np.float32) * 3
    targets = rng.integers(0, V, size=(B, T))
    mask = np.ones((B, T), np.float32)
    mask[0, T - pad_tail :] = 0  # a padded tail
    for r in pad_rows:
        mask[r] = 0
    sf = rng.normal(size=(LAYERS, B, T, D)).astype(np.float32)
    tf = rng.normal(size=(LAYERS, B, T, D)).astype(np.float32)
    return s, t, targets, mask, sf, tf


def value(metrics, name):
    s, c = metrics[name]
    return float(s) / float(c)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_logit_terms_match_numpy(temperature, alpha):
    s, t, targets, mask, _, _ = batch()
    total, m = L.distillation_loss(
        jnp.asarray(s), jnp.asarray(t), jnp.asarray(targets), jnp.asarray(mask), alpha=alpha, temperature=temperature
    )
    ref = np_reference(s, t, targets, mask, alpha, temperature)
    np.testing.assert_allclose(float(total), ref["total"], rtol=1e-5)
    np.testing.assert_allclose(value(m, "distill/kl_div_at_T"), ref["kl_t"], rtol=1e-5)
    np.testing.assert_allclose(value(m, "distill/kl_div_T1"), ref["kl_1"], rtol=1e-5)
    np.testing.assert_allclose(value(m, "distill/soft_loss"), temperature**2 * ref["kl_t"], rtol=1e-5)
    np.testing.assert_allclose(value(m, "distill/hard_loss"), ref["hard"], rtol=1e-5)
    np.testing.assert_allclose(value(m, "distill/teacher_loss"), ref["teacher"], rtol=1e-5)
    np.testing.assert_allclose(value(m, "distill/total_loss"), ref["total"], rtol=1e-5)
    np.testing.assert_allclose(value(m, "distill/top1_agreement"), ref["agree"], rtol=1e-6)
    np.testing.assert_allclose(value(m, "distill/alpha"), alpha, atol=1e-7)
    np.testing.assert_allclose(value(m, "distill/temperature"), temperature, rtol=1e-7)
    assert float(m["distill/hard_loss"][1]) == ref["n"] == mask.sum()


@pytest.mark.parametrize("kind", ["cosine", "l2"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("layers", [None, [0, -1], [2]])
def test_feature_terms_match_numpy(kind, beta, layers):
    s, t, targets, mask, sf, tf = batch(1)
    total, m = L.distillation_loss(
        jnp.asarray(s),
        jnp.asarray(t),
        jnp.asarray(targets),
        jnp.asarray(mask),
        alpha=0.7,
        temperature=2.0,
        beta=beta,
        student_features=jnp.asarray(sf),
        teacher_features=jnp.asarray(tf),
        layer_indices=layers,
        feature_loss_type=kind,
    )
    ref = np_reference(s, t, targets, mask, 0.7, 2.0, beta, sf, tf, layers, kind)
    np.testing.assert_allclose(float(total), ref["total"], rtol=1e-5)
    np.testing.assert_allclose(value(m, "distill/out_proj_feature_loss"), ref["feature"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(value(m, "distill/beta_feature"), beta, atol=1e-7)


def test_negative_layer_indices_count_from_each_models_last_layer():
    s, t, targets, mask, sf, tf = batch(2)
    student = sf[:2]  # a 2-layer student against a 4-layer teacher: -1 is layer 1 of one and 3 of the other
    _, m = L.distillation_loss(
        jnp.asarray(s),
        jnp.asarray(t),
        jnp.asarray(targets),
        jnp.asarray(mask),
        alpha=0.5,
        temperature=1.0,
        beta=1.0,
        student_features=jnp.asarray(student),
        teacher_features=jnp.asarray(tf),
        layer_indices=[0, -1],
    )
    pairs = np.stack([student[0], student[1]]), np.stack([tf[0], tf[3]])
    per = 1 - (pairs[0] * pairs[1]).sum(-1) / (np.linalg.norm(pairs[0], axis=-1) * np.linalg.norm(pairs[1], axis=-1))
    expected = per[np.broadcast_to(mask.astype(bool), per.shape)].mean()
    np.testing.assert_allclose(value(m, "distill/out_proj_feature_loss"), expected, rtol=1e-5)


def test_padding_is_excluded_not_averaged_in():
    """Changing logits, targets or features at padded positions changes nothing."""
    s, t, targets, mask, sf, tf = batch(3)
    args = dict(alpha=0.6, temperature=2.0, beta=1.0, layer_indices=[1, 2])
    base = L.distillation_loss(
        jnp.asarray(s),
        jnp.asarray(t),
        jnp.asarray(targets),
        jnp.asarray(mask),
        student_features=jnp.asarray(sf),
        teacher_features=jnp.asarray(tf),
        **args,
    )
    pad = ~mask.astype(bool)
    s2, t2, targets2, sf2 = s.copy(), t.copy(), targets.copy(), sf.copy()
    s2[pad] = 1e4
    t2[pad] = -1e4
    targets2[pad] = 0
    sf2[:, pad] = 0.0  # zero vectors: cosine's worst case
    other = L.distillation_loss(
        jnp.asarray(s2),
        jnp.asarray(t2),
        jnp.asarray(targets2),
        jnp.asarray(mask),
        student_features=jnp.asarray(sf2),
        teacher_features=jnp.asarray(tf),
        **args,
    )
    np.testing.assert_allclose(float(base[0]), float(other[0]), rtol=1e-6)
    for name in L.DISTILL_METRICS:
        np.testing.assert_allclose(np.asarray(base[1][name]), np.asarray(other[1][name]), rtol=1e-5, err_msg=name)


def test_masked_equals_sliced():
    """A batch with a padded row gives the loss of the batch without that row."""
    s, t, targets, mask, _, _ = batch(4, pad_rows=(1,), pad_tail=0)
    keep = [0, 2]
    masked = L.distillation_loss(
        jnp.asarray(s), jnp.asarray(t), jnp.asarray(targets), jnp.asarray(mask), alpha=0.5, temperature=2.0
    )[0]
    sliced = L.distillation_loss(
        jnp.asarray(s[keep]),
        jnp.asarray(t[keep]),
        jnp.asarray(targets[keep]),
        jnp.ones((2, T)),
        alpha=0.5,
        temperature=2.0,
    )[0]
    np.testing.assert_allclose(float(masked), float(sliced), rtol=1e-6)


def test_self_distillation_has_zero_kl():
    s, _, targets, mask, sf, _ = batch(5)
    total, m = L.distillation_loss(
        jnp.asarray(s),
        jnp.asarray(s),
        jnp.asarray(targets),
        jnp.asarray(mask),
        alpha=1.0,
        temperature=2.0,
        beta=1.0,
        student_features=jnp.asarray(sf),
        teacher_features=jnp.asarray(sf),
    )
    assert abs(value(m, "distill/kl_div_T1")) < 1e-6
    assert abs(value(m, "distill/kl_div_at_T")) < 1e-6
    assert abs(value(m, "distill/out_proj_feature_loss")) < 1e-6
    assert value(m, "distill/top1_agreement") == 1.0
    assert abs(float(total)) < 1e-5


def test_gradients_finite_when_a_row_or_everything_is_padding():
    s, t, targets, _, sf, tf = batch(6)
    sf[:, 1] = 0.0  # zero activations in the padded row
    for mask in (np.array([[1] * T, [0] * T, [1] * T], np.float32), np.zeros((B, T), np.float32)):

        def f(s_logits, s_feats):
            return L.distillation_loss(
                s_logits,
                jnp.asarray(t),
                jnp.asarray(targets),
                jnp.asarray(mask),
                alpha=0.5,
                temperature=2.0,
                beta=1.0,
                student_features=s_feats,
                teacher_features=jnp.asarray(tf),
            )[0]

        total, grads = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(sf))
        assert np.isfinite(float(total))
        assert all(np.isfinite(np.asarray(g)).all() for g in grads)
        assert not np.asarray(grads[0])[1].any()  # nothing flows into the padded row
    assert float(total) == 0.0  # all padding: zero loss, not NaN


def test_gradient_matches_numpy_finite_differences():
    s, t, targets, mask, _, _ = batch(7)

    def f(x):
        return L.distillation_loss(
            x, jnp.asarray(t), jnp.asarray(targets), jnp.asarray(mask), alpha=0.4, temperature=2.0
        )[0]

    grad = np.asarray(jax.grad(f)(jnp.asarray(s, jnp.float32)))
    eps = 1e-3
    for index in [(0, 0, 0), (2, 4, 7), (1, 2, 3)]:
        up, down = s.astype(np.float64).copy(), s.astype(np.float64).copy()
        up[index] += eps
        down[index] -= eps
        numeric = (
            np_reference(up, t, targets, mask, 0.4, 2.0)["total"]
            - np_reference(down, t, targets, mask, 0.4, 2.0)["total"]
        ) / (2 * eps)
        np.testing.assert_allclose(grad[index], numeric, rtol=2e-3, atol=1e-6)


def test_teacher_gets_no_gradient():
    s, t, targets, mask, _, _ = batch(8)
    g = jax.grad(
        lambda tl: L.distillation_loss(
            jnp.asarray(s), tl, jnp.asarray(targets), jnp.asarray(mask), alpha=0.5, temperature=2.0
        )[0]
    )(jnp.asarray(t))
    assert not np.asarray(g).any()


def test_jit_equals_eager_and_traced_schedule_values_work():
    s, t, targets, mask, sf, tf = batch(9)
    args = [jnp.asarray(x) for x in (s, t, targets, mask)]

    def f(alpha, temperature, beta):
        return L.distillation_loss(
            *args,
            alpha=alpha,
            temperature=temperature,
            beta=beta,
            student_features=jnp.asarray(sf),
            teacher_features=jnp.asarray(tf),
        )

    eager = f(0.3, 2.0, 0.5)
    jitted = jax.jit(f)(jnp.float32(0.3), jnp.float32(2.0), jnp.float32(0.5))
    np.testing.assert_allclose(float(eager[0]), float(jitted[0]), rtol=1e-6)


def test_bfloat16_logits_are_upcast():
    s, t, targets, mask, _, _ = batch(10)
    total, _ = L.distillation_loss(
        jnp.asarray(s, jnp.bfloat16),
        jnp.asarray(t, jnp.bfloat16),
        jnp.asarray(targets),
        jnp.asarray(mask),
        alpha=0.5,
        temperature=2.0,
    )
    assert total.dtype == jnp.float32
    ref = np_reference(
        np.asarray(jnp.asarray(s, jnp.bfloat16), np.float32),
        np.asarray(jnp.asarray(t, jnp.bfloat16), np.float32),
        targets,
        mask,
        0.5,
        2.0,
    )
    np.testing.assert_allclose(float(total), ref["total"], rtol=1e-4)


def test_windows_aggregate_token_weighted():
    """Two batches' (sum, count) pairs added give the loss of the two batches as one."""
    a, b = batch(11), batch(12, pad_rows=(2,))
    parts = [L.distillation_loss(*(jnp.asarray(x) for x in d[:4]), alpha=0.5, temperature=2.0)[1] for d in (a, b)]
    joined = [np.concatenate([x, y]) for x, y in zip(a[:4], b[:4])]
    whole = L.distillation_loss(*(jnp.asarray(x) for x in joined), alpha=0.5, temperature=2.0)[1]
    for name in ("distill/kl_div_T1", "distill/hard_loss", "distill/top1_agreement", "distill/total_loss"):
        summed = sum(float(p[name][0]) for p in parts) / sum(float(p[name][1]) for p in parts)
        np.testing.assert_allclose(summed, value(whole, name), rtol=1e-5, err_msg=name)


def test_perplexity_is_exp_of_the_windows_mean_cross_entropy():
    s, t, targets, mask, _, _ = batch(13)
    _, m = L.distillation_loss(
        jnp.asarray(s), jnp.asarray(t), jnp.asarray(targets), jnp.asarray(mask), alpha=0.5, temperature=1.0
    )
    ref = np_reference(s, t, targets, mask, 0.5, 1.0)
    ppl = L.metric_value("distill/student_perplexity", *map(float, m["distill/student_perplexity"]))
    np.testing.assert_allclose(ppl, math.exp(ref["hard"]), rtol=1e-5)
    assert math.isnan(L.metric_value("distill/kl_div_T1", 0.0, 0.0))


def test_pretrain_loss_is_cross_entropy():
    s, _, targets, mask, _, _ = batch(14)
    total, m = L.cross_entropy_loss(jnp.asarray(s), jnp.asarray(targets), jnp.asarray(mask))
    ref = np_reference(s, s, targets, mask, 0.0, 1.0)
    np.testing.assert_allclose(float(total), ref["hard"], rtol=1e-5)
    assert set(m) == set(L.PRETRAIN_METRICS)


def test_metric_names_are_the_guides_plus_top1_agreement():
    s, t, targets, mask, _, _ = batch(15)
    _, m = L.distillation_loss(
        jnp.asarray(s), jnp.asarray(t), jnp.asarray(targets), jnp.asarray(mask), alpha=0.5, temperature=1.0
    )
    assert set(m) == set(L.DISTILL_METRICS)
    assert all(len(v) == 2 for v in m.values())


def test_bad_feature_inputs_raise_clear_errors():
    s, t, targets, mask, sf, tf = batch(16)
    args = [jnp.asarray(x) for x in (s, t, targets, mask)]
    with pytest.raises(ValueError, match="feature_loss_type"):
        L.distillation_loss(
            *args,
            alpha=0.5,
            temperature=1.0,
            beta=1.0,
            student_features=jnp.asarray(sf),
            teacher_features=jnp.asarray(tf),
            feature_loss_type="l1",
        )
    with pytest.raises(ValueError, match="differ in shape"):
        L.distillation_loss(
            *args,
            alpha=0.5,
            temperature=1.0,
            beta=1.0,
            student_features=jnp.asarray(sf[..., :3]),
            teacher_features=jnp.asarray(tf),
        )


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_fused_terms_and_their_custom_gradient_equal_autodiff_of_the_plain_formula(temperature):
    """logit_terms (one fused pass, its objective's gradient written out) against log-softmaxes differentiated by JAX."""
    s, t, targets, mask, _, _ = batch(17)
    s, t, y, m = (jnp.asarray(x) for x in (s, t, targets, mask))

    def plain(s_logits):
        s1, st = L.log_softmax_at(s_logits, temperature)
        t1, tt = L.log_softmax_at(t, temperature)
        kl_t, ce = L.token_kl(tt, st), L.token_cross_entropy(s1, y)
        return jnp.sum(m * (0.7 * kl_t + 0.3 * ce)), (kl_t, L.token_kl(t1, s1), ce, L.token_cross_entropy(t1, y))

    def fused(s_logits):
        (kl_t, kl_1, ce, ce_t, _), objective = L.logit_terms(
            s_logits, t, y, temperature, kl_weight=0.7 * m, ce_weight=0.3 * m
        )
        return objective, (kl_t, kl_1, ce, ce_t)

    (value_a, terms_a), grad_a = jax.value_and_grad(plain, has_aux=True)(s)
    (value_b, terms_b), grad_b = jax.value_and_grad(fused, has_aux=True)(s)
    np.testing.assert_allclose(float(value_a), float(value_b), rtol=1e-5)
    for a, b in zip(terms_a, terms_b):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_a), np.asarray(grad_b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch, positions", [(2, 32), (2, 45), (1, 45), (8, 45)])
def test_objective_gradient_is_computed_in_the_forward_loop(batch, positions, monkeypatch):
    """Blocks of rows (a loop, and a smaller block for the rows left over; one sequence, and blocks of one
    position per sequence, whose leading axes the loop merges into rows): the terms, the objective and its
    gradient equal the unblocked pass's; the logit terms carry no gradient of their own."""
    xla_row_pass(monkeypatch)
    rng = np.random.default_rng(3)
    s, t = (jnp.asarray(3.0 * rng.standard_normal((batch, positions, 40)), jnp.float32) for _ in range(2))
    y = jnp.asarray(rng.integers(0, 40, (batch, positions)))
    w = jnp.asarray(rng.random((batch, positions)), jnp.float32)

    def run(s):
        terms, objective = L.logit_terms(s, t, y, 1.5, kl_weight=w, ce_weight=1.0 - w)
        return objective, terms

    monkeypatch.setattr(L, "MAX_BLOCK_ROWS", batch * positions)
    monkeypatch.setattr(L, "BLOCK_ELEMENTS", batch * positions * 40)
    whole = jax.value_and_grad(run, has_aux=True)(s)
    monkeypatch.setattr(L, "MAX_BLOCK_ROWS", 8)
    monkeypatch.setattr(L, "BLOCK_ELEMENTS", 8 * 40)
    blocked = jax.value_and_grad(run, has_aux=True)(s)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(blocked)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    terms_grad = jax.grad(lambda s: sum(jnp.sum(x) for x in L.logit_terms(s, t, y, 1.5)[0]))(s)
    assert not np.any(np.asarray(terms_grad))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0, 4.0])
def test_integer_temperature_shares_the_exponentials(temperature, monkeypatch):
    """At T = 1 … 4 given as a number, `exp(d)` is `exp(d / T)^T`: the compiled loss and gradient compute two
    exponentials per logit pair instead of four and equal the general pass's (a traced T), blocked or not."""
    xla_row_pass(monkeypatch)
    rng = np.random.default_rng(5)
    s, t = (jnp.asarray(4.0 * rng.standard_normal((2, 45, 40)), jnp.float32) for _ in range(2))
    y = jnp.asarray(rng.integers(0, 40, (2, 45)))
    w = jnp.asarray(rng.random((2, 45)), jnp.float32)

    def run(s, temperature):
        terms, objective = L.logit_terms(s, t, y, temperature, kl_weight=w, ce_weight=1.0 - w)
        return objective, terms

    monkeypatch.setattr(L, "MAX_BLOCK_ROWS", 8)
    monkeypatch.setattr(L, "BLOCK_ELEMENTS", 8 * 40)
    general = jax.value_and_grad(run, has_aux=True)
    shared = jax.value_and_grad(lambda s: run(s, temperature), has_aux=True)
    assert compiled_exponentials(shared, s) < compiled_exponentials(general, s, temperature)
    for a, b in zip(jax.tree.leaves(jax.jit(general)(s, temperature)), jax.tree.leaves(jax.jit(shared)(s))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)


def test_integer_temperature_is_a_number_known_when_tracing():
    assert [L.integer_temperature(v) for v in (1, 2.0, np.float32(3.0), jnp.asarray(4.0))] == [1, 2, 3, 4]
    assert [L.integer_temperature(v) for v in (0.5, 1.5, 5.0, np.ones(2))] == [None] * 4
    seen = []
    jax.jit(lambda t: seen.append(L.integer_temperature(t)) or t)(2.0)
    assert seen == [None]  # a traced (scheduled) temperature takes the general path


def test_objective_gradient_overwrites_the_logits_in_place(row_pass):
    """The loss's gradient takes the student's float32 logits' buffer: compiled from two heads' logits, the loss
    and its gradient hold the two models' logits and a block's temporaries, not a third logit-sized array for the
    gradient (the previous backward pass held 3.0 logit-sized arrays here). With the CPU kernel: no copy of the
    logits before the call (handed the LM head's `[N, V]` output, it writes over that buffer)."""
    shape = (2, 256, 4096)
    logit_bytes = 4 * math.prod(shape)
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((*shape[:2], 64)), jnp.float32)
    heads = [jnp.asarray(rng.standard_normal((64, shape[-1])), jnp.float32) for _ in range(2)]
    y = jnp.asarray(rng.integers(0, shape[-1], shape[:2]))
    mask = jnp.ones(shape[:2])

    def head_grad(student_head, teacher_head):
        def loss(w):
            return L.distillation_objective(hidden @ w, hidden @ teacher_head, y, mask, alpha=0.5, temperature=2.0)[0]

        return jax.grad(loss)(student_head)

    compiled = jax.jit(head_grad).lower(*heads).compile()
    assert (cpu_loss_kernel.TARGET in compiled.as_text()) == (row_pass == "cpu-kernel")
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 2.5 * logit_bytes, temp / logit_bytes
