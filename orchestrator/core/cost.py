"""Estimated chip-hours of a run, from dense matmul FLOPs at an assumed utilisation.

FLOPs per token: 6·P_s for the student (forward and backward) plus 2·P_t for the teacher's forward pass
(online distillation only; a `teacher_logits` run, which writes the teacher's top-k logits, is 2·P_t alone), P being the parameters a token is multiplied by (`ModelShape.matmul_param_count`:
the layers and the output head, not the input embedding's table lookup); attention's T² term and
rematerialisation's extra forward are not counted, which the utilisation figure absorbs. Tokens per step are `per_device_batch_size × chips ×
max_target_length × gradient_accumulation_steps` (one JAX device per chip, two on TPU7x). chip-hours =
steps × tokens per step × FLOPs per token / (peak bf16 FLOP/s per chip × MFU) / 3600 — independent of how
many chips share the work, so it is the figure to compare and to bill.
"""

from __future__ import annotations

from distillspec.config import DistillSpec
from distillspec.tpu import TpuType

ASSUMED_MFU = 0.4  # model FLOPs utilisation that well-tuned MaxText runs reach on TPU


def flops_per_token(spec: DistillSpec) -> int:
    if spec.mode == "teacher_logits" and spec.teacher is not None:  # the teacher's forward pass alone, no student
        return 2 * spec.teacher.shape().matmul_param_count()
    student = 6 * spec.student_block().shape().matmul_param_count()
    teacher = (
        2 * spec.teacher.shape().matmul_param_count() if spec.teacher is not None and spec.is_online_distillation else 0
    )
    return student + teacher


def chip_hours(spec: DistillSpec, tpu: TpuType, *, slices: int, mfu: float = ASSUMED_MFU) -> float:
    # tokens per step count JAX devices (per_device_batch_size): two per TPU7x chip, one per chip elsewhere
    total_flops = spec.steps * spec.tokens_per_step(tpu.devices * slices) * flops_per_token(spec)
    return total_flops / (tpu.peak_bf16_tflops_per_chip * 1e12 * mfu) / 3600.0
