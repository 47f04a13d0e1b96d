"""The per-chip memory estimate and chip-hours: each term of the documented formula, and the sharding rule."""

from __future__ import annotations

import dataclasses

import pytest

from distillspec import tpu
from distillspec.config import DistillSpec
from distillspec.registry import MODELS
from orchestrator.core import cost, memory

LLAMA = {
    "student": {"model": "llama3.1-8b"},
    "teacher": {"model": "llama3.1-8b", "load_parameters_path": "gs://bkt/t", "weight_dtype": "bfloat16"},
    "loss": {"alpha": 0.5},
    "batch": {"per_device_batch_size": 1, "max_target_length": 1024},
}
P = 8_030_261_248  # Llama 3.1 8B parameters (untied embeddings)
NORMS = 65 * 4096  # two per layer and the final one: never split


def share(chips: int) -> int:
    """Llama 3.1 8B's parameters on one of `chips` FSDP chips: everything but the norms is split."""
    return int((P - NORMS) / chips + NORMS)


def spec(**changes) -> DistillSpec:
    return DistillSpec.model_validate({**LLAMA, **changes})


def test_parameter_count_is_llama_8b():
    assert spec().student.shape().param_count() == P


def test_all_data_parallel_mesh_replicates_parameters_on_every_chip():
    m = memory.estimate(spec(mesh={"data": -1, "fsdp": 1}), chips=128, hbm_bytes_per_chip=95 * 10**9)
    assert m.param_shards == 1
    assert (m.student_params, m.gradients, m.optimizer_state, m.teacher_params) == (4 * P, 4 * P, 8 * P, 2 * P)
    assert m.fit == "does_not_fit" and m.fraction > 1


@pytest.mark.parametrize("mesh", [{"data": 1, "fsdp": -1}, {}], ids=["explicit", "default"])
def test_fsdp_shards_parameters_over_all_chips(mesh):
    m = memory.estimate(spec(mesh=mesh), chips=128, hbm_bytes_per_chip=95 * 10**9)
    assert m.param_shards == 128 and m.student_params == 4 * share(128) and m.fit == "fits"


def test_several_slices_with_the_default_mesh_shard_within_a_slice_as_the_trainer_does():
    # The estimate split the weights over every chip of both slices; the trainer builds data = slices and FSDP
    # within each slice, so each chip holds twice that (70B <- 405B on v5p-128 x 2 read "ok" where it is tight).
    two = memory.estimate(spec(), chips=256, hbm_bytes_per_chip=95 * 10**9, slices=2)
    explicit = memory.estimate(spec(mesh={"data": 2, "fsdp": -1}), chips=256, hbm_bytes_per_chip=95 * 10**9)
    assert two.param_shards == 128 and two.student_params == 4 * share(128) and two == explicit
    assert memory.mesh_sizes(spec().mesh, 256, slices=2) == {"data": 2, "fsdp": 128, "tensor": 1}


def working_set(n, rows, length):  # one Llama 8B layer (re)computed, float32: matmul tensors and 3 score arrays
    return n * (4 * 4096 + (2 * 32 + 2 * 8) * 128 + 3 * 14_336) * 4 + 3 * rows * 32 * length * length * 4


def test_activations_follow_the_formula():
    s = spec(mesh={"data": 1, "fsdp": -1})
    n = 1024
    m = memory.estimate(s, chips=8, hbm_bytes_per_chip=None)
    # full remat keeps each layer's input; one layer of one model is being computed at a time, with its weights
    # gathered (the student's as float32 master weights with a float32 gradient; the teacher's float32 compute)
    assert m.activations == 32 * n * 4096 * 4
    layer = (P - 2 * 128_256 * 4096 - NORMS) // 32 + 2 * 4096
    assert m.working_set == working_set(n, 1, 1024) + layer * 4 * 2
    assert not m.fused_loss and m.loss == 2 * n * 128_256 * 4  # dense: 2 float32 logit-sized arrays
    # FSDP gathers each model's embedding and head for the step (the student's with their float32 gradient)
    assert m.gathered_weights == 2 * 128_256 * 4096 * (4 * 2 + 4)
    assert m.total == (
        m.student_params + m.gradients + m.optimizer_state + m.teacher_params + m.activations + m.gathered_weights
    ) + max(m.loss, m.working_set)
    # The tensor axis splits the vocabulary (128256 = 8 × 16032): a chip gathers its share of the tables
    split = memory.estimate(spec(mesh={"data": 1, "fsdp": -1, "tensor": 8}), chips=64, hbm_bytes_per_chip=None)
    assert split.gathered_weights == 2 * 128_256 // 8 * 4096 * (4 * 2 + 4)


def test_a_tensor_axis_leaves_whole_only_the_weights_it_does_not_divide():
    """8 kv heads on tensor 16: the k and v projections stay whole on that axis, the rest is split (the estimate
    counted the whole model whole)."""
    m = memory.estimate(spec(mesh={"data": 1, "fsdp": 1, "tensor": 16}), chips=16, hbm_bytes_per_chip=None)
    kv = 32 * 2 * 4096 * 8 * 128
    assert m.student_params == 4 * int((P - NORMS - kv) / 16 + NORMS + kv)
    assert m.replicated and "num_kv_heads 8" in m.replicated[0]


def test_long_sequences_select_the_fused_loss_and_its_blocks():
    s = spec(batch={"per_device_batch_size": 1, "max_target_length": 8192})
    m = memory.estimate(s, chips=8, hbm_bytes_per_chip=None)
    assert m.fused_loss and m.loss == 6 * 1024 * 8192 * 4 + 8192 * 3 * 4096 * 4


def test_remat_policies_keep_more_as_they_recompute_less():
    kept = {
        remat: memory.estimate(
            spec(student={"model": "llama3.1-8b", "remat": remat}), chips=8, hbm_bytes_per_chip=None
        ).activations
        for remat in ("full", "dots", "none")
    }
    assert kept["full"] < kept["dots"] < kept["none"]


def test_tensor_axis_splits_heads_but_each_chip_sees_its_peers_rows():
    batch = {"per_device_batch_size": 1, "max_target_length": 512}
    one = memory.estimate(spec(mesh={"fsdp": -1}, batch=batch), chips=8, hbm_bytes_per_chip=None)
    two = memory.estimate(spec(mesh={"fsdp": -1, "tensor": 2}, batch=batch), chips=8, hbm_bytes_per_chip=None)
    assert not two.fused_loss and two.loss == one.loss  # twice the rows, half the vocabulary
    assert two.param_shards == one.param_shards == 8


def test_the_guides_pruning_recovery_fits_v5p_by_default():
    m = memory.estimate(spec(), chips=128, hbm_bytes_per_chip=95 * 10**9)
    assert m.fit == "fits", m.to_json()


def test_feature_loss_keeps_the_chosen_layers_of_both_models():
    off = memory.estimate(spec(), chips=8, hbm_bytes_per_chip=None).activations
    on = memory.estimate(
        spec(loss={"alpha": 0.5, "beta": 1.0, "layer_indices": [3, 7]}), chips=8, hbm_bytes_per_chip=None
    )
    assert on.activations - off == 2 * 1024 * (4096 * 4 + 4096 * 4)


def test_pretraining_has_no_teacher_term():
    m = memory.estimate(spec(mode="pretrain", teacher=None), chips=8, hbm_bytes_per_chip=None)
    assert m.teacher_params == 0 and m.fit == "unknown"


@pytest.mark.parametrize(("fraction", "fit"), [(0.5, "fits"), (0.95, "tight"), (1.05, "does_not_fit")])
def test_fit_thresholds(fraction, fit):
    m = memory.MemoryEstimate(8, 1, 0, 0, 0, 0, int(fraction * 1000), 1000)
    assert m.fit == fit


def test_mesh_sizes_fill_the_minus_one_axis():
    assert memory.mesh_sizes(spec(mesh={"data": 2, "fsdp": -1}).mesh, 128) == {"data": 2, "fsdp": 64, "tensor": 1}


def test_chip_hours_count_student_training_and_teacher_forward():
    s = spec(steps=100)
    v5p = tpu.lookup("v5p-128")
    tokens = 1 * 64 * 1024  # per_device_batch_size × chips (v5p-128: 128 TensorCores, 64 chips) × length
    # The input embedding (128256 × 4096, untied) is a lookup, not matmul work: chip-hours counted it.
    matmul = P - 128_256 * 4096 - (2 * 32 + 1) * 4096  # without the input table and the norms
    assert s.student.shape().matmul_param_count() == matmul
    # Attention against its keys: 4·heads·head_dim FLOPs per key, (T + 1) / 2 keys per causal query, 32 layers;
    # the student's forward and backward (3×), the teacher's forward.
    attention = 32 * 4 * 32 * 128 * (1024 + 1) / 2
    assert s.student.shape().attention_flops_per_token(1024) == attention
    expected = 100 * tokens * (6 * matmul + 3 * attention + 2 * matmul + attention) / (459e12 * cost.ASSUMED_MFU) / 3600
    assert cost.chip_hours(s, v5p, slices=1) == pytest.approx(expected)


def test_long_sequences_cost_their_attention():
    # Chip-hours were linear in tokens at any length: 32k-token points at about half their cost.
    v5p = tpu.lookup("v5p-128")
    hours = {t: cost.chip_hours(spec(steps=100, batch={"max_target_length": t}), v5p, slices=1) for t in (2048, 32768)}
    assert hours[32768] / hours[2048] > 16 * 1.5  # 16 × the tokens, each attending to 16 × the keys
    # A sliding-window layer sees at most its window: Gemma 2's every other layer.
    gemma = MODELS["gemma2-2b"]
    assert gemma.sliding_window == 4096
    full = dataclasses.replace(gemma, sliding_window=None)
    assert gemma.attention_flops_per_token(2048) == full.attention_flops_per_token(2048)  # within the window
    # half the layers at a window of 4096 instead of (32768 + 1) / 2 keys on average
    assert 0.6 < gemma.attention_flops_per_token(32768) / full.attention_flops_per_token(32768) < 0.62


def test_axes_that_do_not_divide_a_models_dimensions_leave_its_weights_whole():
    # The trainer replicates a dimension its mesh axis does not divide; the plan counted it sharded (gemma3-27b,
    # emb_dim 5376, on 512 chips: "30.8/95 GB, ok" for about 540 GB).
    fsdp = memory.estimate(spec(mesh={"data": 1, "fsdp": -1}), chips=96, hbm_bytes_per_chip=95 * 10**9)  # 4096 % 96
    assert fsdp.param_shards == 1 and fsdp.student_params == 4 * P and fsdp.gathered_weights == 0
    assert fsdp.replicated == (
        "fsdp 96 does not divide the student's emb_dim 4096",
        "fsdp 96 does not divide the teacher's emb_dim 4096",
    )
    tensor = memory.estimate(spec(mesh={"data": 1, "fsdp": 8, "tensor": 16}), chips=128, hbm_bytes_per_chip=None)
    assert tensor.param_shards == 8 and "tensor 16 does not divide the student's num_kv_heads 8" in tensor.replicated
    assert memory.estimate(spec(), chips=128, hbm_bytes_per_chip=None).replicated == ()


def test_a_teacher_logits_run_is_costed_as_the_teachers_forward_pass_alone():
    # It was costed as a student's pre-training: 714 chip-h instead of ~238 for the guide's 8B teacher, with
    # student weights, gradients and AdamW and no teacher at all.
    online = spec()
    logits = spec(mode="teacher_logits", top_k=64, offline_data_dir=None)
    v5p = tpu.lookup("v5p-128")
    teacher = logits.teacher.shape()
    forward = 2 * teacher.matmul_param_count() + teacher.attention_flops_per_token(1024)
    assert cost.flops_per_token(logits) == forward
    ratio = cost.chip_hours(logits, v5p, slices=2) / cost.chip_hours(online, v5p, slices=2)
    assert ratio == pytest.approx(1 / 4)  # the teacher's forward of the online step's 3 student + 1 teacher forwards
    m = memory.estimate(logits, chips=128, hbm_bytes_per_chip=v5p.hbm_bytes_per_chip, slices=2)
    assert m.student_params == m.gradients == m.optimizer_state == 0
    assert m.teacher_params == 2 * share(64)  # bf16, FSDP over a slice's 64
    assert m.total < memory.estimate(online, chips=128, hbm_bytes_per_chip=v5p.hbm_bytes_per_chip, slices=2).total


def test_a_tpu7x_chip_is_two_jax_devices_in_the_plan():
    # JAX shows each TPU7x TensorCore as a device (its mesh utilities lay a tray of 4 chips out as 8 devices):
    # per_device_batch_size, the mesh and the memory estimate count devices, not chips.
    t7, v5p = tpu.lookup("tpu7x-128"), tpu.lookup("v5p-128")
    assert (t7.devices_per_chip, t7.devices, t7.hbm_bytes_per_device) == (2, 2 * t7.chips, t7.hbm_bytes_per_chip // 2)
    assert (v5p.devices_per_chip, v5p.devices) == (1, v5p.chips)  # megacore: one device per chip
    llama = spec()
    # The same chips do twice the tokens a step on TPU7x: chip-hours follow the tokens, not the chip count.
    assert cost.chip_hours(llama, t7, slices=1) == pytest.approx(
        2
        * llama.steps
        * llama.tokens_per_step(t7.chips)
        * cost.flops_per_token(llama)
        / (t7.peak_bf16_tflops_per_chip * 1e12 * cost.ASSUMED_MFU)
        / 3600
    )
