"""The tunix strategy computes this trainer's loss: same values on the same batch, through tunix's own API."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")
tunix = pytest.importorskip("tunix", reason="needs the `tunix` extra (make install installs it)")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from distillspec.registry import MODELS  # noqa: E402
from trainer import loss as L  # noqa: E402
from trainer.models import ModelConfig, abstract_model, forward, host_init  # noqa: E402
from trainer.tunix_strategy import DistillCtlStrategy, labels_to_targets  # noqa: E402

pytestmark = pytest.mark.slow


def _model(name: str, sow: bool, seed: int):
    graphdef, abstract = abstract_model(ModelConfig(MODELS[name], sow_features=sow))
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, host_init(abstract, seed)))


def _models(sow: bool):
    return _model("tiny-2l", sow, 0), _model("tiny-4l", sow, 1)


def _batch():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 256, size=(3, 17)), jnp.int32)
    mask = np.ones((3, 17), np.float32)
    mask[1, 9:] = 0.0  # padding
    return tokens, jnp.asarray(mask)


def _fns(vocab: int, with_features: bool):
    def model_forward(model, input_tokens, input_mask):
        logits, features = forward(model, input_tokens[:, :-1])
        return (logits, features) if with_features else logits

    def one_hot_labels(input_tokens, input_mask):  # tunix's convention: one-hot rows, zero rows for padding
        return jax.nn.one_hot(input_tokens[:, 1:], vocab) * input_mask[:, 1:, None]

    return model_forward, one_hot_labels


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_strategy_matches_distillation_loss_on_the_same_batch(beta):
    student, teacher = _models(sow=beta > 0)
    tokens, mask = _batch()
    model_forward, labels_fn = _fns(256, with_features=beta > 0)
    strategy = DistillCtlStrategy(
        model_forward, model_forward, labels_fn, alpha=0.7, temperature=2.0, beta=beta, layer_indices=[0, -1]
    )
    inputs = {"input_tokens": tokens, "input_mask": mask}
    teacher_output = strategy.get_teacher_outputs(teacher, inputs)  # tunix's path: jitted, stop_gradient
    total, metrics = strategy.get_train_loss(student, teacher_output, inputs)

    t_logits, t_feats = nnx.jit(forward)(teacher, tokens[:, :-1])

    def reference(model):
        s_logits, s_feats = forward(model, tokens[:, :-1])
        return L.distillation_loss(
            s_logits,
            t_logits,
            tokens[:, 1:],
            mask[:, 1:],
            alpha=0.7,
            temperature=2.0,
            beta=beta,
            student_features=s_feats,
            teacher_features=t_feats,
            layer_indices=[0, -1],
        )

    ref_total, ref_metrics = nnx.jit(reference)(student)
    np.testing.assert_allclose(float(total), float(ref_total), rtol=1e-5)
    assert set(metrics) == set(L.DISTILL_METRICS)
    for name, (s, c) in ref_metrics.items():
        expected = L.metric_value(name, float(s), float(c))
        np.testing.assert_allclose(float(metrics[name]), expected, rtol=1e-5, atol=1e-7, err_msg=name)

    if beta == 0.0:
        return  # the gradient check below covers the logit terms too
    # gradients through tunix's student forward equal ours
    grads = nnx.jit(nnx.grad(lambda m: strategy.get_train_loss(m, teacher_output, inputs)[0]))(student)
    ours = nnx.jit(nnx.grad(lambda m: reference(m)[0]))(student)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ours)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_strategy_with_tunix_logit_strategy_agrees_where_they_overlap():
    """tunix's own LogitStrategy (no padding) gives the same soft, hard and teacher losses."""
    from tunix.distillation.strategies import LogitStrategy

    student, teacher = _models(sow=False)
    tokens, _ = _batch()
    mask = jnp.ones(tokens.shape)
    model_forward, labels_fn = _fns(256, with_features=False)
    inputs = {"input_tokens": tokens, "input_mask": mask}
    ours = DistillCtlStrategy(model_forward, model_forward, labels_fn, alpha=0.4, temperature=2.0)
    theirs = LogitStrategy(model_forward, model_forward, labels_fn, alpha=0.4, temperature=2.0)
    teacher_output = theirs.get_teacher_outputs(teacher, inputs)
    total_a, m_a = ours.get_train_loss(student, teacher_output, inputs)
    total_b, m_b = theirs.get_train_loss(student, teacher_output, inputs)
    np.testing.assert_allclose(float(total_a), float(total_b), rtol=1e-5)
    for name in ("distill/soft_loss", "distill/hard_loss", "distill/teacher_loss"):
        np.testing.assert_allclose(float(m_a[name]), float(m_b[name]), rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(float(m_a["distill/kl_div_at_T"]), float(m_b["distill/kl_div"]), rtol=1e-5)


def test_labels_as_targets_and_mask_need_no_one_hot():
    targets = jnp.asarray([[1, 2, 3]])
    mask = jnp.asarray([[1.0, 1.0, 0.0]])
    t, m = labels_to_targets({"targets": targets, "mask": mask})
    assert (t == targets).all() and (m == mask).all()
    one_hot = jax.nn.one_hot(targets, 5) * mask[..., None]
    t2, m2 = labels_to_targets(one_hot)
    assert (t2[:, :2] == targets[:, :2]).all() and (m2 == mask).all()


def test_strategy_rejects_bad_weights():
    model_forward, labels_fn = _fns(256, with_features=False)
    with pytest.raises(ValueError, match="temperature"):
        DistillCtlStrategy(model_forward, model_forward, labels_fn, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        DistillCtlStrategy(model_forward, model_forward, labels_fn, alpha=1.5)
