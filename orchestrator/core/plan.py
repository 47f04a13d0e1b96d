"""What a sweep will cost before it runs: one row per run with its shape, chip-hours and per-chip memory."""

from __future__ import annotations

import dataclasses
import math

from distillspec import tpu
from distillspec.problems import Problem
from distillspec.sweep import Target
from orchestrator.core import cost, memory
from orchestrator.core.expansion import Expansion, Point

GB = 1e9


@dataclasses.dataclass(frozen=True)
class PlanRow:
    point: Point
    slices: int | None  # None for a local run
    vms_per_slice: int | None
    chips_per_vm: int | None
    chip_hours: float | None
    memory: memory.MemoryEstimate

    @property
    def chips(self) -> int | None:
        if self.slices is None or self.vms_per_slice is None or self.chips_per_vm is None:
            return None
        return self.slices * self.vms_per_slice * self.chips_per_vm

    @property
    def shape(self) -> str:
        """`slices × hosts × chips`, e.g. `2 × 16 × 4`; `local` for a local run."""
        return "local" if self.chips is None else f"{self.slices} × {self.vms_per_slice} × {self.chips_per_vm}"

    def to_json(self) -> dict:
        p = self.point
        return {
            "index": None if p.prerequisite is not None else p.index,  # a prerequisite's name says which it is
            "run_id": p.run_id,
            "jobset_name": p.jobset_name,
            "role": p.role,
            "prerequisite": p.prerequisite,
            "axis_values": dict(p.axis_values),
            "seed": p.seed,
            "depends_on": dict(p.depends_on),
            "output_path": p.output_path,
            "spec_hash": p.spec_hash,
            "slices": self.slices,
            "vms_per_slice": self.vms_per_slice,
            "chips_per_vm": self.chips_per_vm,
            "chips": self.chips,
            "chip_hours": self.chip_hours,
            "memory": self.memory.to_json(),
        }


def plan_row(point: Point, target: Target) -> PlanRow:
    if not target.on_cluster or target.tpu_type is None:
        return PlanRow(point, None, None, None, None, memory.estimate(point.spec, chips=1, hbm_bytes_per_chip=None))
    shape = tpu.lookup(target.tpu_type)
    devices = shape.devices * target.slices  # the estimate is per JAX device: a TPU7x chip holds two
    return PlanRow(
        point,
        target.slices,
        shape.vms_per_slice,
        shape.chips_per_vm,
        cost.chip_hours(point.spec, shape, slices=target.slices),
        memory.estimate(point.spec, chips=devices, hbm_bytes_per_chip=shape.hbm_bytes_per_device, slices=target.slices),
    )


def plan(expansion: Expansion) -> tuple[PlanRow, ...]:
    """Rows for every run, prerequisites first."""
    return tuple(plan_row(run, expansion.sweep.target) for run in expansion.runs)


def _where(labels: list[str], rows) -> str:
    if len(labels) == 1:
        return labels[0]
    return "every run" if len(labels) == len(rows) else f"{labels[0]} and {len(labels) - 1} more run(s)"


def memory_problems(rows: tuple[PlanRow, ...], target: Target) -> list[Problem]:
    """A warning for the runs whose estimate does not fit (or barely fits) the TPU's HBM (runs with the same
    estimate share one warning), and one for mesh axes that leave a model's weights whole."""
    replicated: dict[tuple[str, ...], list[str]] = {}
    for row in rows:
        if row.memory.replicated:
            replicated.setdefault(row.memory.replicated, []).append(row.point.label)
    out = [
        Problem(
            ("mesh",),
            "mesh_replicates",
            f"{_where(labels, rows)}: {'; '.join(notes)}: those weights are replicated on that axis, not sharded (the "
            "memory estimate counts them whole)",
            "choose mesh axis sizes that divide the model's dimensions (mesh.fsdp, mesh.tensor), or a TPU type or "
            "slice count whose chips they divide",
            severity="warning",
        )
        for notes, labels in replicated.items()
    ]
    grouped: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        m = row.memory
        if m.fit not in ("does_not_fit", "tight") or m.hbm_per_chip is None:
            continue
        parts = (
            f"student {m.student_params / GB:.1f} + gradients {m.gradients / GB:.1f} + optimizer "
            f"{m.optimizer_state / GB:.1f} + teacher {m.teacher_params / GB:.1f} + activations "
            f"{m.activations / GB:.1f} + gathered weights {m.gathered_weights / GB:.1f} + the larger of the "
            f"{'fused' if m.fused_loss else 'dense'} loss {m.loss / GB:.1f} and one layer's working set "
            f"{m.working_set / GB:.1f}"
        )
        verdict = "will not fit" if m.fit == "does_not_fit" else "barely fits"
        # per JAX device: a TPU7x chip is two (each TensorCore with half the chip's HBM)
        unit = "device (a TensorCore)" if tpu.lookup(str(target.tpu_type)).devices_per_chip > 1 else "chip"
        text = (
            f"needs about {m.total / GB:.1f} GB per {unit} ({parts}), {verdict} in the "
            f"{m.hbm_per_chip / GB:.0f} GB of a {target.tpu_type} {unit}"
        )
        advice = _memory_advice(m, row.point.spec, tpu.lookup(str(target.tpu_type)))
        grouped.setdefault((m.fit, text, advice), []).append(row.point.label)
    for (fit, text, advice), labels in grouped.items():
        where = _where(labels, rows)
        out.append(
            Problem(
                ("target", "tpu_type"),
                "memory_over_hbm" if fit == "does_not_fit" else "memory_tight",
                f"{where}: {text}",
                advice,
                severity="warning",
            )
        )
    return out


def _memory_advice(m: memory.MemoryEstimate, spec, tpu_type: tpu.TpuType) -> str:
    """What would shrink the largest part of the estimate. The sharded state (parameters, gradients, optimizer
    state, the teacher) shrinks with more chips; the gathered vocabulary tables, the activations and the loss or a
    layer's working set are per chip whatever the chip count, so "more chips" is advised only when the rest fits.
    (It was advised to runs whose per-chip part alone was over the chip's HBM, on the largest slice there is.) When
    both are too large (a 405B student on 8 chips), both are said: fixing the per-chip part alone still did not fit."""
    sharded = m.student_params + m.gradients + m.optimizer_state + m.teacher_params
    per_chip = m.total - sharded
    activations = m.activations + (m.working_set if m.working_set > m.loss else 0)
    loss = m.loss if m.loss >= m.working_set else 0
    hbm = m.hbm_per_chip or 0
    if per_chip >= hbm or max(activations, loss, m.gathered_weights) >= sharded:
        advice = _per_chip_advice(m, spec, per_chip, activations, loss)
        if sharded >= hbm / 2:  # more than the per-chip fix leaves room for
            advice += "; and " + _sharded_advice(m, spec, tpu_type, sharded)
        return advice
    return _sharded_advice(m, spec, tpu_type, sharded)


def _per_chip_advice(m: memory.MemoryEstimate, spec, per_chip: float, activations: float, loss: float) -> str:
    batch = spec.batch
    # the loss and a layer's working set are alternatives (`MemoryEstimate.total`): only the larger counts
    if m.gathered_weights >= max(activations, loss):
        return (
            f"{per_chip / GB:.1f} GB of it is per chip whatever the chip count, {m.gathered_weights / GB:.1f} GB "
            "of that the embedding and LM-head tables FSDP gathers for their matmuls: mesh.tensor (2, 4, ...) "
            "splits them along the vocabulary, or a TPU type with more HBM per chip"
        )
    if activations >= loss:
        fixes = []
        if batch.per_device_batch_size > 1:
            fixes.append(
                "a smaller batch.per_device_batch_size (batch.gradient_accumulation_steps keeps the global batch)"
            )
        fixes.append(f"a shorter batch.max_target_length (attention holds {batch.max_target_length}² scores per head)")
        if spec.student.remat != "full":  # the teacher has no backward pass: nothing kept to remat
            fixes.append("student.remat: full (it keeps one array per layer)")
        return (
            f"activations{'' if activations == m.activations else ' and a layer' + chr(39) + 's working set'} are "
            f"{activations / GB:.1f} GB of it, per chip whatever the chip count (more chips or "
            "sharding do not shrink them): " + ", or ".join(fixes)
        )
    return (
        f"the loss's logits are {loss / GB:.1f} GB of it: a smaller batch.per_device_batch_size "
        "(batch.gradient_accumulation_steps keeps the global batch)"
    )


def _sharded_advice(m: memory.MemoryEstimate, spec, tpu_type: tpu.TpuType, sharded: float) -> str:
    fixes = []
    if m.replicated:  # an fsdp that does not divide emb_dim shards nothing: name one that does
        widths = [spec.student_block().shape().emb_dim] + (
            [spec.teacher.shape().emb_dim] if spec.teacher is not None and spec.is_online_distillation else []
        )
        fsdp = math.gcd(tpu_type.devices, *widths)
        fixes.append(
            f"mesh.fsdp: {fsdp} (it divides emb_dim {' and '.join(map(str, sorted(set(widths))))} and the "
            f"slice's {tpu_type.devices} devices; the mesh_replicates warning says what is left whole)"
        )
    elif m.param_shards < tpu_type.devices:
        fixes.append("shard the weights over every device of a slice (mesh.fsdp: -1 with mesh.data: 1)")
    if any(t.family == tpu_type.family and t.devices > tpu_type.devices for t in tpu.TPU_TYPES.values()):
        fixes.append("a TPU type with more chips per slice")
    if m.teacher_params > sharded / 3:
        fixes.append("distill offline from top-k logits (no teacher in the step)")
    fixes = fixes or ["a TPU type with more HBM per chip"]
    return f"weights, gradients and optimizer state are {sharded / GB:.1f} GB of it: " + ", or ".join(fixes)
