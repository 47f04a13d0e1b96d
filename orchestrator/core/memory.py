"""A per-chip memory estimate for one run, to catch the guide's "Teacher OOMs at startup" before launch.

Rough by design, and every term is written down here. All sizes are bytes per chip.

Sharding follows the spec's mesh over every chip of the run (slices × chips per slice; one JAX device per
chip): the axis set to -1 takes the chips the others leave. Parameters, gradients and optimizer state are
sharded over `fsdp × tensor` and replicated over `data` (so the default mesh, all `data`, replicates them on
every chip). Activations are per device (`per_device_batch_size` sequences) and split over `tensor`.

- student parameters: P_s · bytes(student.weight_dtype)
- gradients: P_s · bytes(student.weight_dtype)
- optimizer state: P_s · 8 (AdamW's two moments in float32)
- teacher parameters: P_t · bytes(teacher.weight_dtype) (online distillation only; frozen: no gradients)
- activations, with B = per_device_batch_size, T = max_target_length, a = bytes(dtype):
  - student, scanned layers rematerialised per layer (only each layer's input is kept for the backward
    pass): L_s·B·T·D_s·a saved, plus one layer's working set B·T·(8·D_s + 4·F_s)·a
    (q, k, v, attention output, residual and norms; MLP gate, up, activation and its input);
    attention scores are not stored (flash/splash attention on TPU)
  - logits in float32: student logits, their gradient and softmax (3·B·T·V·4); teacher logits and their
    softened probabilities (2·B·T·V·4)
  - teacher forward, one layer at a time: B·T·(8·D_t + 4·F_t)·a_t
  - feature loss (β > 0): the out-projection activations at the chosen layers, kept for both models
    (2·n_layers·B·T·D·a)

The run "does not fit" when the total is over the chip's HBM, and is "tight" above 90% (XLA needs scratch
space and fragments memory), so treat a fit as necessary, not sufficient.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from distillspec.config import DistillSpec, MeshSpec

TIGHT_FRACTION = 0.9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
ADAM_BYTES_PER_PARAM = 8
LOGIT_BYTES = 4

Fit = Literal["fits", "tight", "does_not_fit", "unknown"]


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per chip, by component; `hbm_per_chip` is None when the target has no TPU (a local run)."""

    chips: int
    param_shards: int  # chips a parameter is split across (fsdp × tensor)
    student_params: int
    gradients: int
    optimizer_state: int
    teacher_params: int
    activations: int
    hbm_per_chip: int | None

    @property
    def total(self) -> int:
        return self.student_params + self.gradients + self.optimizer_state + self.teacher_params + self.activations

    @property
    def fraction(self) -> float | None:
        return self.total / self.hbm_per_chip if self.hbm_per_chip else None

    @property
    def fit(self) -> Fit:
        if self.fraction is None:
            return "unknown"
        if self.fraction > 1.0:
            return "does_not_fit"
        return "tight" if self.fraction > TIGHT_FRACTION else "fits"

    def to_json(self) -> dict:
        return {
            "chips": self.chips,
            "param_shards": self.param_shards,
            "student_params": self.student_params,
            "gradients": self.gradients,
            "optimizer_state": self.optimizer_state,
            "teacher_params": self.teacher_params,
            "activations": self.activations,
            "total": self.total,
            "hbm_per_chip": self.hbm_per_chip,
            "fraction": self.fraction,
            "fit": self.fit,
        }


def mesh_sizes(mesh: MeshSpec, devices: int) -> dict[str, int]:
    """Axis sizes with the -1 axis filled; an axis that cannot be filled evenly is rounded down (>= 1)."""
    data, fsdp, tensor = mesh.resolved_axes()  # one slice: unset axes mean FSDP over every chip
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    fixed = 1
    for size in sizes.values():
        if size != -1:
            fixed *= size
    return {axis: max(devices // fixed, 1) if size == -1 else size for axis, size in sizes.items()}


def estimate(spec: DistillSpec, *, chips: int, hbm_bytes_per_chip: int | None) -> MemoryEstimate:
    """The per-chip estimate for `spec` on `chips` chips in all (see the module docstring for the formula)."""
    sizes = mesh_sizes(spec.mesh, chips)
    shards = max(sizes["fsdp"] * sizes["tensor"], 1)
    tensor = max(sizes["tensor"], 1)
    student = spec.student.shape()
    p_s = student.param_count()
    w_s = DTYPE_BYTES[spec.student.weight_dtype]
    batch, length = spec.batch.per_device_batch_size, spec.batch.max_target_length
    tokens = batch * length
    a_s = DTYPE_BYTES[spec.student.dtype]
    layers = student.num_layers * student.layers_per_block
    activations = layers * tokens * student.emb_dim * a_s + tokens * (8 * student.emb_dim + 4 * student.mlp_dim) * a_s
    activations += 3 * tokens * student.vocab_size * LOGIT_BYTES
    teacher_params = 0
    teacher = spec.teacher if spec.is_online_distillation else None
    if teacher is not None:
        t = teacher.shape()
        teacher_params = t.param_count() * DTYPE_BYTES[teacher.weight_dtype]
        a_t = DTYPE_BYTES[teacher.dtype]
        activations += tokens * (8 * t.emb_dim + 4 * t.mlp_dim) * a_t + 2 * tokens * t.vocab_size * LOGIT_BYTES
        feature_layers = spec.layer_indices()
        if feature_layers:
            activations += len(feature_layers) * tokens * (student.emb_dim * a_s + t.emb_dim * a_t)
    return MemoryEstimate(
        chips=chips,
        param_shards=shards,
        student_params=p_s * w_s // shards,
        gradients=p_s * w_s // shards,
        optimizer_state=p_s * ADAM_BYTES_PER_PARAM // shards,
        teacher_params=teacher_params // shards,
        activations=int(activations // tensor),
        hbm_per_chip=hbm_bytes_per_chip,
    )
