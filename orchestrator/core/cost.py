"""Estimated chip-hours of a run, from its matmul FLOPs at an assumed utilisation.

FLOPs per token: 6·P_s + 3·A_s for the student (forward and backward) plus 2·P_t + A_t for the teacher's forward
pass (online distillation only; a `teacher_logits` run, which writes the teacher's top-k logits, is 2·P_t + A_t
alone). P is the parameters a token is multiplied by (`ModelShape.matmul_param_count`: the layers and the output
head, not the input embedding's table lookup); A is attention's forward FLOPs per token against its keys
(`ModelShape.attention_flops_per_token`), which grow with the sequence length: at 32k tokens they are most of a
step, and counting parameters alone put long-context points at half their cost. Rematerialisation's extra forward
is not counted (MFU's convention: model FLOPs, not hardware FLOPs). Tokens per step are `per_device_batch_size × chips ×
max_target_length × gradient_accumulation_steps` (one JAX device per chip, two on TPU7x). chip-hours =
steps × tokens per step × FLOPs per token / (peak bf16 FLOP/s per chip × MFU) / 3600 — independent of how
many chips share the work, so it is the figure to compare and to bill.
"""

from __future__ import annotations

from distillspec.config import DistillSpec
from distillspec.registry import ModelShape
from distillspec.tpu import TpuType

ASSUMED_MFU = 0.4  # model FLOPs utilisation that well-tuned MaxText runs reach on TPU


def forward_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    return 2 * shape.matmul_param_count() + shape.attention_flops_per_token(seq_len)


def flops_per_token(spec: DistillSpec) -> float:
    seq_len = spec.batch.max_target_length
    if spec.mode == "teacher_logits" and spec.teacher is not None:  # the teacher's forward pass alone, no student
        return forward_flops_per_token(spec.teacher.shape(), seq_len)
    student = 3 * forward_flops_per_token(spec.student_block().shape(), seq_len)  # forward, and backward twice it
    online = spec.teacher is not None and spec.is_online_distillation
    return student + (forward_flops_per_token(spec.teacher.shape(), seq_len) if online else 0)


def chip_hours(spec: DistillSpec, tpu: TpuType, *, slices: int, mfu: float = ASSUMED_MFU) -> float:
    # tokens per step count JAX devices (per_device_batch_size): two per TPU7x chip, one per chip elsewhere
    total_flops = spec.steps * spec.tokens_per_step(tpu.devices * slices) * flops_per_token(spec)
    return total_flops / (tpu.peak_bf16_tflops_per_chip * 1e12 * mfu) / 3600.0
