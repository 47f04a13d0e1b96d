"""A per-chip memory estimate for one run, to catch the guide's "Teacher OOMs at startup" before launch.

The formula models what the bundled trainer compiles (`trainer/step.py`, `trainer/setup.py`) and is checked
against XLA's own memory analysis of the compiled step on simulated CPU meshes (tests/test_plan_memory.py: within
±25 %). All sizes are bytes per JAX device (a chip; half a TPU7x chip); every term is written down here.

Mesh: the spec's axes over every chip of the run (slices × chips per slice), the -1 axis filling what the others
leave; unset `data`/`fsdp` mean what the trainer builds: data-parallel across slices (the data axis takes the
slice count) and FSDP over each slice's chips, so a second slice does not halve the weights' share. Parameters, gradients and optimizer state are split over
`fsdp × tensor` and replicated over `data`. A micro-batch has `per_device_batch_size × chips` rows split over
`data × fsdp`, so each chip sees `R = per_device_batch_size × tensor` rows: `n = R·T` tokens (T =
max_target_length); the `tensor` axis splits heads, MLP and vocabulary, not tokens.

Notation: a = bytes of a model's `dtype` (compute), w = bytes of its `weight_dtype`, D, F, H, K (kv heads), h
(head dim), V, L (layers) of the model's shape, `/t` = divided by the tensor axis.

- student parameters: P_s · 4 (float32 master weights whatever `weight_dtype` says)
- gradients: P_s · 4 (float32; twice with gradient accumulation: the running sum and the micro-batch's)
- optimizer state: P_s · 8 (AdamW's two float32 moments)
- teacher parameters: P_t · w_t (frozen: no gradients or moments)
- gathered weights (fsdp > 1): a matmul needs its whole weight, so each model's embedding and LM head (V/t·D
  each, one when tied; the lookup reads the whole table of its tensor share) and one layer's weights (/t) are
  gathered: the
  teacher's at a_t bytes, the student's as its float32 master weights (XLA gathers before the cast to the
  compute dtype) with a float32 gradient of that size before it is reduce-scattered
- student activations kept for the backward pass, per layer (`remat`):
  full: the layer input n·D·a; dots: also the weight matmuls' outputs n·(D + (2H + 2K)·h/t + 3F/t)·a (q, k, v,
  attention output and projection, MLP gate, up, down); none: everything, n·(6D + (4H + 2K)·h/t + 5F/t)·a plus
  the attention's exponentials R·H/t·T²·4 (its softmax's backward needs no more)
- one layer's working set (the layer being (re)computed, either model): n·(4D + (2H + 2K)·h/t + 3F/t)·a plus
  `ATTENTION_COPIES` float32 score-sized arrays R·H/t·T²·4 (attention without a fused kernel materialises the
  scores; on TPU/GPU flash kernels would not, so this over-estimates there)
- loss, dense (one model's logits n·V·4 ≤ 512 MiB, `distillspec.loss_choice`): `DENSE_LOGIT_COPIES` float32
  logit-sized arrays n·V/t·4 live at once (both models' logits and the gradient w.r.t. the student's, which
  is written over the student's float32 logits block by block; the row statistics are computed in the same
  blocks of rows). The dense loss's arrays and the gathered weights are counted as
  alternatives, the larger of the two: in XLA:CPU's schedule of the step they do not peak together (the test's
  FSDP and tensor-parallel meshes peak below their sum)
- a `teacher_logits` run (the teacher's top-k logits written for offline distillation): the teacher's parameters,
  its gathered weights and one layer's working set, and `TEACHER_LOGIT_COPIES` logit-sized arrays; no student,
  gradients or optimizer state
- loss, fused: `FUSED_BLOCK_COPIES` float32 blocks b_t·b_v·4 (b_t = min(1024, n), b_v = min(8192, V)), and both
  models' final hidden states in float32 with their gradient, n·(2·D_s + D_t)·4
- feature loss (β > 0): the out-projection activations at the chosen layers, kept for both models
  (n_layers·n·(D_s·a_s + D_t·a_t))

`ATTENTION_COPIES`, `DENSE_LOGIT_COPIES` and `FUSED_BLOCK_COPIES` count the arrays XLA:CPU keeps live at the
step's peak (read from its buffer assignment); everything else is exact bookkeeping. The run "does not fit" when
the total is over the chip's HBM, and is "tight" above 90% (XLA needs scratch space and fragments memory), so
treat a fit as necessary, not sufficient.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from distillspec import loss_choice
from distillspec.config import DistillSpec, MeshSpec, ModelSpec
from distillspec.registry import ModelShape

TIGHT_FRACTION = 0.9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
F32 = 4
MASTER_BYTES = 4  # the trained student's float32 master weights
ADAM_BYTES_PER_PARAM = 8
# Arrays XLA:CPU keeps live at the step's peak (its buffer assignment of the compiled step, tiny models):
ATTENTION_COPIES = 3  # scores, exponentials and the gradient of the probabilities, `[R, H, T, T]` float32
DENSE_LOGIT_COPIES = 3  # `[n, V]` float32: both models' logits and the student's logit gradient
PRETRAIN_LOGIT_COPIES = 4  # `[n, V]` float32, one model (no teacher): logits, log-probabilities and the gradient
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
    gathered_weights: int = 0  # FSDP's all-gathered embeddings, heads and layer weights
    loss: int = 0  # the distillation loss's logits (dense) or blocks and hidden states (fused)
    fused_loss: bool = False  # whether the trainer will use the fused loss
    replicated: tuple[str, ...] = ()  # mesh axes that leave a model's weights whole (they do not divide them)

    @property
    def total(self) -> int:
        return (
            self.student_params
            + self.gradients
            + self.optimizer_state
            + self.teacher_params
            + self.activations
            + (self.gathered_weights + self.loss if self.fused_loss else max(self.gathered_weights, self.loss))
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


def _layer_params(shape: ModelShape) -> int:
    embed = shape.vocab_size * shape.emb_dim * (1 if shape.tie_embeddings else 2)
    return (shape.param_count() - embed - shape.emb_dim) // max(shape.depth, 1)


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
    if remat == "dots":
        return n * (2 * d + (2 * h + 2 * k) * hd + 3 * f) * a
    return n * (6 * d + (4 * h + 2 * k) * hd + 5 * f) * a + rows * h * length * length * F32


def _gathered(model: ModelSpec, shape: ModelShape, fsdp: int, tensor: int) -> float:
    """One model's weights gathered whole for its matmuls under FSDP (none without an fsdp axis)."""
    if fsdp <= 1:
        return 0
    a = DTYPE_BYTES[model.dtype]
    # the embedding and LM head, each split over the tensor axis along the vocabulary where it divides it (the
    # trainer's rule for `vocab`), so an FSDP gather brings a chip its tensor share, not the whole table
    tables = (1 if shape.tie_embeddings else 2) * _split(shape.vocab_size, tensor) * shape.emb_dim
    return (tables + _layer_params(shape) / tensor) * a


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
    return MemoryEstimate(
        chips=chips,
        param_shards=t_fsdp * t_tensor,
        student_params=0,
        gradients=0,
        optimizer_state=0,
        teacher_params=t.param_count() * DTYPE_BYTES[teacher.weight_dtype] // (t_fsdp * t_tensor),
        activations=int(_working_set(t, rows, spec.batch.max_target_length, a_t, tensor)),
        hbm_per_chip=hbm_bytes_per_chip,
        gathered_weights=int(_gathered(teacher, t, t_fsdp, t_tensor)),
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
    shards = s_fsdp * s_tensor
    p_s = student.param_count()
    rows = max(int(spec.batch.per_device_batch_size * tensor), 1)  # rows per chip (tensor peers share theirs)
    length = spec.batch.max_target_length
    tokens = rows * length
    a_s = DTYPE_BYTES[spec.student.dtype]
    accumulation = spec.batch.gradient_accumulation_steps

    activations = student.depth * _kept(student, spec.student.remat, rows, length, a_s, tensor)
    activations += _working_set(student, rows, length, a_s, tensor)
    # The student's weights are gathered as their float32 master copy (cast to the compute dtype after the
    # gather) and get a float32 gradient of the same size before it is reduce-scattered.
    gathered = _gathered(spec.student, student, s_fsdp, s_tensor) * (MASTER_BYTES + F32) / a_s
    vocab = _split(student.vocab_size, tensor)
    teacher_params, teacher_shards, fused = 0, 1, False
    teacher = spec.teacher if spec.is_online_distillation else None
    if teacher is None:
        loss = PRETRAIN_LOGIT_COPIES * tokens * vocab * F32  # one model's logits
    else:
        t = teacher.shape()
        t_fsdp, t_tensor, notes = _shards("teacher", t, fsdp, tensor)
        replicated += notes
        teacher_shards = t_fsdp * t_tensor
        teacher_params = t.param_count() * DTYPE_BYTES[teacher.weight_dtype]
        a_t = DTYPE_BYTES[teacher.dtype]
        activations += _working_set(t, rows, length, a_t, tensor)
        gathered += _gathered(teacher, t, t_fsdp, t_tensor)
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
        param_shards=shards,
        student_params=p_s * MASTER_BYTES // shards,
        gradients=p_s * F32 * (2 if accumulation > 1 else 1) // shards,
        optimizer_state=p_s * ADAM_BYTES_PER_PARAM // shards,
        teacher_params=teacher_params // teacher_shards,
        activations=int(activations),
        hbm_per_chip=hbm_bytes_per_chip,
        gathered_weights=int(gathered),
        loss=int(loss),
        fused_loss=fused,
        replicated=tuple(replicated),
    )
