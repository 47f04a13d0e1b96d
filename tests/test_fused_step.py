"""The training step with the fused loss (hidden states + LM heads, `StepModels.forward_hidden`) computes what the
step with the dense loss computes: the same metric window and the same gradients (read as the update of an
identity optimizer at a large learning rate)."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import optax  # noqa: E402

from distillspec import loss_choice  # noqa: E402
from trainer import step as step_lib  # noqa: E402
from trainer.models import forward_hidden  # noqa: E402

pytestmark = pytest.mark.slow
LR = 1e4  # large, so that parameter rounding is far below the gradient's


def distill_spec(feature_loss: bool):
    from distillspec.specfile import validate_data

    data = {
        "name": "fused",
        "student": {"model": "tiny-2l"},
        "teacher": {"model": "tiny-4l", "load_parameters_path": "unused"},
        "loss": {"alpha": 0.5, "temperature": 2.0, **({"beta": 0.5, "layer_indices": [0, -1]} if feature_loss else {})},
        "batch": {"per_device_batch_size": 4, "max_target_length": 16, "gradient_accumulation_steps": 2},
        "steps": 4,
        "optimizer": {"learning_rate": 1e-3, "warmup_fraction": 0.0},
        "output_dir": tempfile.mkdtemp(),
    }
    spec, problems = validate_data(data)
    assert spec is not None, [p.message for p in problems]
    return spec


def test_fused_loss_is_chosen_only_when_dense_logits_are_large():
    assert not loss_choice.fused_loss_wanted(4 * 256, 32000)  # the mid bench size: 131 MB of logits
    assert loss_choice.fused_loss_wanted(16384, 128256)  # 8 GiB
    assert loss_choice.fused_loss_wanted(1024, 1024, budget_bytes=1024 * 1024 * 4 - 1)


@pytest.mark.parametrize("feature_loss", [False, True])
def test_fused_step_equals_dense_step(feature_loss):
    from trainer.models import ModelConfig, abstract_model, host_init
    from trainer.setup import build

    spec = distill_spec(feature_loss)
    teacher = host_init(abstract_model(ModelConfig.from_spec(spec.teacher))[1], 1)
    built = build(spec, teacher_params=teacher)
    features = spec.loss.feature_loss_on
    student_graph = abstract_model(ModelConfig.from_spec(spec.student, sow_features=features))[0]
    teacher_graph = abstract_model(ModelConfig.from_spec(spec.teacher, sow_features=features))[0]
    optimizer = optax.identity()  # each parameter moves by −LR × its gradient
    dense = step_lib.StepModels(student_graph, teacher_graph, features)
    fused = step_lib.StepModels(
        student_graph, teacher_graph, features, forward_hidden, step_lib.HiddenLoss(block_tokens=8, block_vocab=96)
    )

    rng = np.random.default_rng(0)
    vocab = spec.student.shape().vocab_size
    tokens = rng.integers(0, vocab, size=(2, 4, 17))
    mask = np.ones((2, 4, 16), np.float32)
    mask[0, 1, 10:] = 0
    batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "mask": mask}
    hp = {k: np.float32(v) for k, v in step_lib.hyperparameters(spec, 0).items()} | {"learning_rate": np.float32(LR)}

    out = {}
    for name, models in (("dense", dense), ("fused", fused)):
        step = jax.jit(step_lib.make_train_step(spec, models, optimizer))
        out[name] = jax.device_get(step(built.state, built.teacher_params, batch, hp))
    for name, (s, c) in out["dense"].window.items():
        got_s, got_c = out["fused"].window[name]
        assert got_c == c, name
        np.testing.assert_allclose(got_s, s, rtol=1e-5, atol=1e-6, err_msg=name)
    before = jax.device_get(built.state.params)
    grads = {name: jax.tree.map(lambda a, b: (a - b) / LR, before, out[name].params) for name in out}
    for path, g in jax.tree_util.tree_leaves_with_path(grads["fused"]):
        want = _at(grads["dense"], path)
        assert np.max(np.abs(want)) > 0, path
        np.testing.assert_allclose(g, want, rtol=0, atol=1e-5 * np.max(np.abs(want)), err_msg=str(path))


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


@pytest.mark.parametrize("fused_loss", [False, True])
def test_a_pruned_students_layers_are_compared_with_the_teacher_layers_they_began_as(fused_loss):
    # The same index on both sides compared the student's layer 1 (the teacher's layer 3, past two dropped layers)
    # with the teacher's layer 1.
    from distillspec.specfile import validate_data
    from trainer.models import ModelConfig, abstract_model, host_init
    from trainer.setup import build

    data = {
        "name": "pruned",
        "student": {"model": "tiny-2l", "init": "teacher", "drop_layers": [1, 2]},
        "teacher": {"model": "tiny-4l", "load_parameters_path": "unused"},
        "loss": {"alpha": 0.5, "temperature": 2.0, "beta": 0.5, "layer_indices": [1]},
        "batch": {"per_device_batch_size": 4, "max_target_length": 16},
        "steps": 4,
        "output_dir": tempfile.mkdtemp(),
    }
    spec, problems = validate_data(data)
    assert spec is not None, [p.message for p in problems]
    assert spec.layer_indices() == [1] and spec.teacher_layer_indices() == [3]
    teacher = host_init(abstract_model(ModelConfig.from_spec(spec.teacher))[1], 1)
    built = build(spec, teacher_params=teacher)
    student_graph = abstract_model(ModelConfig.from_spec(spec.student, sow_features=True))[0]
    teacher_graph = abstract_model(ModelConfig.from_spec(spec.teacher, sow_features=True))[0]
    extra = (forward_hidden, step_lib.HiddenLoss(block_tokens=8, block_vocab=96)) if fused_loss else ()
    models = step_lib.StepModels(student_graph, teacher_graph, True, *extra)

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, spec.student.shape().vocab_size, size=(1, 4, 17))
    batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "mask": np.ones((1, 4, 16), np.float32)}
    hp = {k: np.float32(v) for k, v in step_lib.hyperparameters(spec, 0).items()}
    step = jax.jit(step_lib.make_train_step(spec, models, optax.identity()))
    window = jax.device_get(step(built.state, built.teacher_params, batch, hp)).window
    feature_sum, count = window["distill/out_proj_feature_loss"]

    from flax import nnx

    from trainer.loss import token_cosine_distance
    from trainer.models import forward

    _, student_features = forward(nnx.merge(student_graph, built.state.params), batch["inputs"][0])
    _, teacher_features = forward(nnx.merge(teacher_graph, built.teacher_params), batch["inputs"][0])
    began_as = float(np.sum(token_cosine_distance(student_features[1:2], teacher_features[3:4])))
    same_index = float(np.sum(token_cosine_distance(student_features[1:2], teacher_features[1:2])))
    assert count == 4 * 16 and abs(began_as - same_index) > 1e-3  # the test tells the two apart
    np.testing.assert_allclose(feature_sum, 0.5 * began_as, rtol=1e-4)  # the guide's metric is β-scaled


def test_the_eval_step_takes_the_fused_loss_with_the_training_step():
    """Eval held both models' dense float32 logits even where the training step took the fused loss (4× its
    temporaries at vocab 48000): it now takes the fused loss too, with the dense step's values, and compiles to
    less temporary memory than one model's logits of the batch."""
    from trainer.models import ModelConfig, abstract_model, host_init
    from trainer.setup import build

    wide = distill_spec(feature_loss=False)  # a vocabulary large enough that the logits dominate
    spec = wide.model_copy(
        update={side: getattr(wide, side).model_copy(update={"vocab_size": 8192}) for side in ("student", "teacher")}
    )
    teacher = host_init(abstract_model(ModelConfig.from_spec(spec.teacher))[1], 1)
    built = build(spec, teacher_params=teacher)
    student_graph = abstract_model(ModelConfig.from_spec(spec.student))[0]
    teacher_graph = abstract_model(ModelConfig.from_spec(spec.teacher))[0]
    dense = step_lib.StepModels(student_graph, teacher_graph, False)
    fused = step_lib.StepModels(
        student_graph, teacher_graph, False, forward_hidden, step_lib.HiddenLoss(block_tokens=128, block_vocab=1024)
    )
    rng = np.random.default_rng(1)
    vocab = spec.student.shape().vocab_size
    rows, length = 64, 16
    tokens = rng.integers(0, vocab, size=(rows, length + 1))
    mask = np.ones((rows, length), np.float32)
    mask[3, 9:] = 0
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}
    out, temporaries = {}, {}
    for name, models in (("dense", dense), ("fused", fused)):
        step = jax.jit(step_lib.make_eval_step(spec, models))
        out[name] = jax.device_get(step(built.state.params, built.teacher_params, batch))
        temporaries[name] = step.lower(built.state.params, built.teacher_params, batch).compile().memory_analysis()
    assert set(out["fused"]) == set(out["dense"]) and "eval/kl_div_T1" in out["fused"]
    for name, pair in out["dense"].items():
        np.testing.assert_allclose(out["fused"][name], pair, rtol=1e-5, err_msg=name)
    logits_bytes = rows * length * vocab * 4
    assert temporaries["fused"].temp_size_in_bytes < logits_bytes <= temporaries["dense"].temp_size_in_bytes, (
        temporaries["fused"].temp_size_in_bytes,
        logits_bytes,
    )
