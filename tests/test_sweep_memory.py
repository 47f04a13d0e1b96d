"""The per-chip memory estimate and chip-hours: each term of the documented formula, and the sharding rule."""

from __future__ import annotations

import pytest

from distillspec import tpu
from distillspec.config import DistillSpec
from orchestrator.core import cost, memory

LLAMA = {
    "student": {"model": "llama3.1-8b"},
    "teacher": {"model": "llama3.1-8b", "load_parameters_path": "gs://t", "weight_dtype": "bfloat16"},
    "loss": {"alpha": 0.5},
    "batch": {"per_device_batch_size": 1, "max_target_length": 1024},
}
P = 8_030_261_248  # Llama 3.1 8B parameters (untied embeddings)


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
    assert m.param_shards == 128 and m.student_params == 4 * P // 128 and m.fit == "fits"


def test_activations_follow_the_formula():
    s = spec(mesh={"data": 1, "fsdp": -1})
    shape = s.student.shape()
    tokens = 1024
    expected = (
        32 * tokens * 4096 * 4
        + tokens * (8 * 4096 + 4 * 14_336) * 4
        + 3 * tokens * shape.vocab_size * 4  # student
        + tokens * (8 * 4096 + 4 * 14_336) * 4
        + 2 * tokens * shape.vocab_size * 4
    )  # teacher
    assert memory.estimate(s, chips=8, hbm_bytes_per_chip=None).activations == expected


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
    expected = 100 * tokens * (6 * P + 2 * P) / (459e12 * cost.ASSUMED_MFU) / 3600
    assert cost.chip_hours(s, v5p, slices=1) == pytest.approx(expected)
