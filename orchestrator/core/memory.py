"""A per-chip memory estimate for one run, to catch the guide's "Teacher OOMs at startup" before launch.

The formula models what the bundled trainer compiles (`trainer/step.py`, `trainer/setup.py`) and is checked
against XLA's own memory analysis of the compiled step on simulated CPU meshes (tests/test_plan_memory.py: eleven
configurations — meshes, precisions, remat policies, both losses, gradient accumulation, the feature loss,
pre-training, 2- to 12-layer stacks — each within ±25 %). All sizes are bytes per JAX device (a chip; half a TPU7x
chip); every term is written down here.

Mesh: the spec's axes over every chip of the run (slices × chips per slice), the -1 axis filling what the others
leave; unset `data`/`fsdp` mean what the trainer builds: data-parallel across slices (the data axis takes the
slice count) and FSDP over each slice's chips, so a second slice does not halve the weights' share. Each weight is
split along its embed dimension over `fsdp` and along its heads, MLP or vocabulary dimension over `tensor`, each
only where the axis divides that dimension (`trainer.sharding`: 8 kv heads on a tensor axis of 16 leave the k and v
projections whole on it, and nothing else), and replicated over `data`; norms are never split. A micro-batch has
`per_device_batch_size × chips` rows split over `data × fsdp`, so each chip sees `R = per_device_batch_size ×
tensor` rows: `n = R·T` tokens (T = max_target_length); the `tensor` axis splits heads, MLP and vocabulary, not
tokens.

Notation: a = bytes of a model's `dtype` (compute), w = bytes of its `weight_dtype`, D, F, H, K (kv heads), h
(head dim), V, L (layers) of the model's shape, `/t` = divided by the tensor axis where it divides.

    total = student + gradients + optimizer + teacher + activations + gathered tables
            + max(loss, one layer's working set)

- student parameters: P_s · 4 (float32 master weights whatever `weight_dtype` says; P_s the chip's share)
- gradients: P_s · 4 (float32; twice with gradient accumulation: the running sum and the micro-batch's)
- optimizer state: P_s · 8 (AdamW's two float32 moments)
- teacher parameters: P_t · w_t (frozen: no gradients or moments)
- activations kept for the backward pass, per student layer (`remat`): full: the layer input n·D·a; dots: the
  input and the weight matmuls' outputs n·(3D + (H + 2K)·h/t + 2F/t)·a (q, k, v, the attention's output
  projection, MLP gate, up and down); none: everything, n·(6D + (4H + 2K)·h/t + 5F/t)·a plus the attention's
  exponentials R·H/t·T²·4; and with the feature loss (β > 0) both models' out-projection activations at the
  chosen layers, n_layers·n·(D_s·a_s + D_t·a_t)
- gathered tables (fsdp > 1): a matmul needs its whole weight, so each model's embedding and LM head (V/t·D
  each, one when tied) are gathered, and XLA keeps them for the step: the teacher's at a_t bytes, the student's as
  its float32 master weights (XLA gathers before the cast to the compute dtype) with a float32 gradient of that
  size before it is reduce-scattered
- one layer's working set, the larger of the two models' (layers are (re)computed one at a time, a model at a
  time): n·(4D + (2H + 2K)·h/t + 3F/t)·a plus `ATTENTION_COPIES` float32 score-sized arrays R·H/t·T²·4 (attention
  without a fused kernel materialises the scores; on TPU/GPU flash kernels would not, so this over-estimates
  there), and the layer's weights as FSDP gathers them (the student's at 4 + 4 bytes, the teacher's at a_t)
- loss, dense (one model's logits n·V·4 ≤ 512 MiB, `distillspec.loss_choice`): `DENSE_LOGIT_COPIES` float32
  logit-sized arrays n·V/t·4 live at once (the teacher's logits and the student's, over which the gradient is
  written block by block; the row statistics are computed in the same blocks of rows); pre-training (one model):
  `PRETRAIN_LOGIT_COPIES`
- loss, fused: `FUSED_BLOCK_COPIES` float32 blocks b_t·b_v·4 (b_t = min(1024, n), b_v = min(8192, V)), and both
  models' final hidden states in float32 with their gradient, n·(2·D_s + D_t)·4
- the loss and a layer's working set are alternatives: in XLA's schedule of the step the loss runs between the
  forward and the backward layers, and each of them is smaller than their sum by what the other holds
- a `teacher_logits` run (the teacher's top-k logits written for offline distillation): the teacher's parameters,
  its gathered weights and one layer's working set, and `TEACHER_LOGIT_COPIES` logit-sized arrays; no student,
  gradients or optimizer state

`ATTENTION_COPIES`, `DENSE_LOGIT_COPIES`, `PRETRAIN_LOGIT_COPIES` and `FUSED_BLOCK_COPIES` count the arrays
XLA:CPU keeps live at the step's peak (read from its memory analysis over the configurations of the test and two
dozen more: bench/README.md); everything else is exact bookkeeping. The run "does not fit" when the total is over
the chip's HBM, and is "tight" above 90% (XLA needs scratch space and fragments memory), so treat a fit as
necessary, not sufficient. On XLA:CPU a student of at most 4 layers without remat is scanned unrolled
(`trainer.models.ModelConfig.from_spec`); under `remat` its scan stays rolled, as unrolled the recomputation kept
nearly everything live.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from distillspec import loss_choice
from distillspec.config import DistillSpec, MeshSpec
from distillspec.registry import ModelShape

TIGHT_FRACTION = 0.9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
F32 = 4
MASTER_BYTES = 4  # the trained student's float32 master weights
ADAM_BYTES_PER_PARAM = 8
# Arrays XLA:CPU keeps live at the step's peak (its buffer assignment of the compiled step, tiny models):
ATTENTION_COPIES = 3  # scores, exponentials and the gradient of the probabilities, `[R, H, T, T]` float32
DENSE_LOGIT_COPIES = 2  # `[n, V]` float32: the teacher's logits, and the student's (its gradient written over them)
PRETRAIN_LOGIT_COPIES = 3  # `[n, V]` float32, one model (no teacher): logits, log-probabilities and the gradient
TEACHER_LOGIT_COPIES = 2  # `[n, V]` float32, a teacher_logits run: the logits and top-k's working copy
FUSED_BLOCK_COPIES = 6  # `[b_t, b_v]` float32: both models' logit blocks, their exponentials, the gradient block

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
    activations: int  # both models' activations (kept and working set), feature-loss activations
    hbm_per_chip: int | None
    gathered_weights: int = 0  # FSDP's all-gathered embeddings and heads (live the whole step)
    loss: int = 0  # the distillation loss's logits (dense) or blocks and hidden states (fused)
    fused_loss: bool = False  # whether the trainer will use the fused loss
    replicated: tuple[str, ...] = ()  # mesh axes that leave a model's weights whole (they do not divide them)
    working_set: int = 0  # the larger model's one layer being (re)computed, with its gathered weights

    @property
    def total(self) -> int:
        return (
            self.student_params
            + self.gradients
            + self.optimizer_state
            + self.teacher_params
            + self.activations
            + self.gathered_weights
            + max(self.loss, self.working_set)  # the loss and a layer's (re)computation are not live together
        )

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
            "gathered_weights": self.gathered_weights,
            "loss": self.loss,
            "working_set": self.working_set,
            "fused_loss": self.fused_loss,
            "total": self.total,
            "hbm_per_chip": self.hbm_per_chip,
            "fraction": self.fraction,
            "fit": self.fit,
            "replicated": list(self.replicated),
        }


def mesh_sizes(mesh: MeshSpec, devices: int, slices: int = 1) -> dict[str, int]:
    """Axis sizes as the trainer decides them for `slices` slices (`MeshSpec.resolved_axes`: unset axes mean data
    across slices, FSDP within each), the -1 axis filled; an axis that cannot be filled evenly is rounded down
    (>= 1)."""
    data, fsdp, tensor = mesh.resolved_axes(slices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    fixed = 1
    for size in sizes.values():
        if size != -1:
            fixed *= size
    return {axis: max(devices // fixed, 1) if size == -1 else size for axis, size in sizes.items()}


def _split(size: int, tensor: int) -> float:
    """A dimension's per-chip share under the tensor axis (kept whole when the axis does not divide it, as the
    trainer's sharding rules do)."""
    return size / tensor if size % tensor == 0 else size


def _shards(side: str, shape: ModelShape, fsdp: int, tensor: int) -> tuple[int, int, list[str]]:
    """(fsdp, tensor) as they split this model's weights, and what they leave whole: the trainer shards a dimension
    only where the axis divides it (`trainer.sharding.logical_to_spec`), so an fsdp that does not divide emb_dim
    replicates every weight (each has an embed dimension), and a tensor axis that does not divide the heads or
    the MLP replicates the layers (counted whole here: the estimate errs high)."""
    notes = []
    if fsdp > 1 and shape.emb_dim % fsdp:
        notes.append(f"fsdp {fsdp} does not divide the {side}'s emb_dim {shape.emb_dim}")
        fsdp = 1
    undivided = [
        f"{name} {size}"
        for name, size in (
            ("num_query_heads", shape.num_query_heads),
            ("num_kv_heads", shape.num_kv_heads),
            ("mlp_dim", shape.mlp_dim),
        )
        if size % tensor
    ]
    if tensor > 1 and undivided:
        notes.append(f"tensor {tensor} does not divide the {side}'s {', '.join(undivided)}")
        tensor = 1
    return fsdp, tensor, notes


def _share(shape: ModelShape, fsdp: int, tensor: int, *, gathered: bool = False) -> tuple[float, float]:
    """(one layer's parameters, one vocabulary table's) on a chip: each weight split along its embed dimension over
    `fsdp` and along its heads, MLP or vocabulary dimension over `tensor`, each only where the axis divides it
    (`trainer.sharding`'s rules: one undivided dimension leaves that weight whole on that axis, not the model);
    `gathered`: as FSDP gathers it for a matmul (the whole embed dimension). Norms are never split."""
    d = shape.emb_dim if gathered or shape.emb_dim % fsdp else shape.emb_dim / fsdp
    h, k, f = _heads(shape, tensor)
    hd = shape.head_dim
    norms = (4 if shape.is_gemma else 2) * shape.emb_dim + (2 * hd if shape.qk_norm else 0)
    layer = 2 * d * h * hd + 2 * d * k * hd + 3 * d * f + norms  # q and out, k and v, the gated MLP
    return layer, _split(shape.vocab_size, tensor) * d


def _tables(shape: ModelShape) -> int:
    return 1 if shape.tie_embeddings else 2


def _params(shape: ModelShape, fsdp: int, tensor: int) -> float:
    """A model's parameters on a chip."""
    layer, table = _share(shape, fsdp, tensor)
    return shape.depth * layer + _tables(shape) * table + shape.emb_dim


def _heads(shape: ModelShape, tensor: int) -> tuple[float, float, float]:
    """(query heads, kv heads, MLP width) per chip."""
    h, k = shape.num_query_heads, shape.num_kv_heads
    return _split(h, tensor), _split(k, tensor), _split(shape.mlp_dim, tensor)


def _working_set(shape: ModelShape, rows: int, length: int, a: int, tensor: int) -> float:
    """One layer being (re)computed: its matmul inputs and outputs, and the attention's score-sized arrays."""
    h, k, f = _heads(shape, tensor)
    n, d, hd = rows * length, shape.emb_dim, shape.head_dim
    return n * (4 * d + (2 * h + 2 * k) * hd + 3 * f) * a + ATTENTION_COPIES * rows * h * length * length * F32


def _kept(shape: ModelShape, remat: str, rows: int, length: int, a: int, tensor: int) -> float:
    """What the backward pass keeps of one layer's forward pass under the remat policy."""
    h, k, f = _heads(shape, tensor)
    n, d, hd = rows * length, shape.emb_dim, shape.head_dim
    if remat == "full":
        return n * d * a
    if remat == "dots":  # the input and the weight matmuls' outputs: q, k, v, out, gate, up, down
        return n * (3 * d + (h + 2 * k) * hd + 2 * f) * a
    return n * (6 * d + (4 * h + 2 * k) * hd + 5 * f) * a + rows * h * length * length * F32


def _gathered(shape: ModelShape, fsdp: int, tensor: int) -> tuple[float, float]:
    """(its vocabulary tables, one layer) of a model's weights as FSDP gathers them for its matmuls, in elements
    (none without an fsdp axis that divides emb_dim): a chip gathers its tensor share of each."""
    if fsdp <= 1 or shape.emb_dim % fsdp:
        return 0, 0
    layer, table = _share(shape, fsdp, tensor, gathered=True)
    return _tables(shape) * table, layer


def _teacher_logits_estimate(
    spec: DistillSpec, chips: int, hbm_bytes_per_chip: int | None, fsdp: int, tensor: int
) -> MemoryEstimate:
    """A `teacher_logits` run: the teacher's forward pass and its top-k logits, no student, gradient or optimizer
    (it was costed as a student's pre-training: 3× the chip-hours, student weights, gradients and AdamW)."""
    teacher = spec.teacher
    assert teacher is not None
    t = teacher.shape()
    t_fsdp, t_tensor, replicated = _shards("teacher", t, fsdp, tensor)
    rows = max(int(spec.batch.per_device_batch_size * tensor), 1)
    tokens = rows * spec.batch.max_target_length
    a_t = DTYPE_BYTES[teacher.dtype]
    tables, layer = _gathered(t, fsdp, tensor)
    return MemoryEstimate(
        chips=chips,
        param_shards=t_fsdp * t_tensor,
        student_params=0,
        gradients=0,
        optimizer_state=0,
        teacher_params=int(_params(t, fsdp, tensor) * DTYPE_BYTES[teacher.weight_dtype]),
        activations=0,
        hbm_per_chip=hbm_bytes_per_chip,
        gathered_weights=int(tables * a_t),
        working_set=int(_working_set(t, rows, spec.batch.max_target_length, a_t, tensor) + layer * a_t),
        loss=int(TEACHER_LOGIT_COPIES * tokens * _split(t.vocab_size, tensor) * F32),
        fused_loss=False,
        replicated=tuple(replicated),
    )


def estimate(spec: DistillSpec, *, chips: int, hbm_bytes_per_chip: int | None, slices: int = 1) -> MemoryEstimate:
    """The per-chip estimate for `spec` on `chips` chips in all, `slices` slices (see the module docstring for the
    formula)."""
    sizes = mesh_sizes(spec.mesh, chips, slices)
    fsdp, tensor = max(sizes["fsdp"], 1), max(sizes["tensor"], 1)
    if spec.mode == "teacher_logits" and spec.teacher is not None:
        return _teacher_logits_estimate(spec, chips, hbm_bytes_per_chip, fsdp, tensor)
    student = spec.student_block().shape()
    s_fsdp, s_tensor, replicated = _shards("student", student, fsdp, tensor)
    p_s = _params(student, fsdp, tensor)
    rows = max(int(spec.batch.per_device_batch_size * tensor), 1)  # rows per chip (tensor peers share theirs)
    length = spec.batch.max_target_length
    tokens = rows * length
    a_s = DTYPE_BYTES[spec.student.dtype]
    accumulation = spec.batch.gradient_accumulation_steps

    activations = student.depth * _kept(student, spec.student.remat, rows, length, a_s, tensor)
    # The student's weights are gathered as their float32 master copy (cast to the compute dtype after the
    # gather) and get a float32 gradient of the same size before it is reduce-scattered.
    tables, layer = _gathered(student, fsdp, tensor)
    gathered = tables * (MASTER_BYTES + F32)
    working_set = _working_set(student, rows, length, a_s, tensor) + layer * (MASTER_BYTES + F32)
    vocab = _split(student.vocab_size, tensor)
    teacher_params, fused = 0, False
    teacher = spec.teacher if spec.is_online_distillation else None
    if teacher is None:
        loss = PRETRAIN_LOGIT_COPIES * tokens * vocab * F32  # one model's logits
    else:
        t = teacher.shape()
        replicated += _shards("teacher", t, fsdp, tensor)[2]
        teacher_params = _params(t, fsdp, tensor) * DTYPE_BYTES[teacher.weight_dtype]
        a_t = DTYPE_BYTES[teacher.dtype]
        t_tables, t_layer = _gathered(t, fsdp, tensor)
        gathered += t_tables * a_t
        working_set = max(working_set, _working_set(t, rows, length, a_t, tensor) + t_layer * a_t)
        fused = loss_choice.fused_loss_wanted(tokens, student.vocab_size)
        if fused:
            block = min(loss_choice.BLOCK_TOKENS, tokens) * min(loss_choice.BLOCK_VOCAB, student.vocab_size)
            loss = FUSED_BLOCK_COPIES * block * F32 + tokens * (2 * student.emb_dim + t.emb_dim) * F32
        else:
            loss = DENSE_LOGIT_COPIES * tokens * vocab * F32
        feature_layers = spec.layer_indices()
        if feature_layers:
            activations += len(feature_layers) * tokens * (student.emb_dim * a_s + t.emb_dim * a_t)
    return MemoryEstimate(
        chips=chips,
        param_shards=s_fsdp * s_tensor,
        student_params=int(p_s * MASTER_BYTES),
        gradients=int(p_s * F32 * (2 if accumulation > 1 else 1)),
        optimizer_state=int(p_s * ADAM_BYTES_PER_PARAM),
        teacher_params=int(teacher_params),
        activations=int(activations),
        hbm_per_chip=hbm_bytes_per_chip,
        gathered_weights=int(gathered),
        loss=int(loss),
        fused_loss=fused,
        replicated=tuple(replicated),
        working_set=int(working_set),
    )
