"""The distillation spec: one frozen pydantic model that the orchestrator validates and the trainer runs.

Importing this module must not import JAX: the CLI validates specs on laptops without it.

Types, ranges and unknown keys are checked here; rules that relate several fields (vocab match, feature-loss
prerequisites, layer indices against depths, ...) live in `distillspec.checks`, because a pydantic model validator
does not run while any field is invalid and cannot report every problem at once.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from distillspec import layer_presets
from distillspec.registry import (
    BLOCK_FIELDS,
    CONSTANT_FIELDS,
    MODELS,
    NONE,
    ModelShape,
    RopeScaling,
    pruned_global_layers,
    with_constants,
)
from distillspec.schedules import ScheduleKind, schedule_value

Dtype = Literal["float32", "bfloat16"]
# Per-layer rematerialisation of the student's backward pass: `full` keeps only each layer's input and recomputes
# the layer, `dots` also keeps the layer's weight matmuls (recomputing norms, activations and attention scores),
# `none` keeps every activation (fastest when it fits: small models, CPU).
Remat = Literal["full", "dots", "none"]
FeatureLossType = Literal["cosine", "l2"]
DataSource = Literal["synthetic", "text", "tokens", "jsonl", "parquet", "arrayrecord", "hf_disk", "hf", "tfds", "grain"]
# Sources of documents (records with a text column, or a prompt and a completion), read through Grain, sharded by
# process and packed into rows with segment ids; `synthetic`, `text` and `tokens` are token streams cut in windows.
DOCUMENT_SOURCES = ("jsonl", "parquet", "arrayrecord", "hf_disk")
BUNDLED_DATA_SOURCES = ("synthetic", "text", "tokens", *DOCUMENT_SOURCES)
BATCH_SHAPE_KEYS = ("per_device_batch_size", "max_target_length", "gradient_accumulation_steps")

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
# What numpy's and JAX's generators take as a seed (a negative one failed only in the trainer, exit 70).
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class _Block(BaseModel):
    # strict: `alpha: true` or `steps: "100"` is a mistake, not something to coerce.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


# --- scheduled loss weights -------------------------------------------------------------------------------


def _in_unit_interval(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise PydanticCustomError("alpha_out_of_range", "α must be in [0, 1], got {value}", {"value": value})
    return value


def _positive_temperature(value: float) -> float:
    if not value > 0.0:
        raise PydanticCustomError("temperature_out_of_range", "temperature must be > 0, got {value}", {"value": value})
    return value


def _non_negative_beta(value: float) -> float:
    if not value >= 0.0:
        raise PydanticCustomError("beta_out_of_range", "β must be >= 0, got {value}", {"value": value})
    return value


class ScheduledValue(_Block):
    """A loss weight that moves from `start` to `end` over training; a bare number means a constant."""

    start: float
    end: float | None = None
    schedule: ScheduleKind = "constant"

    @model_validator(mode="before")
    @classmethod
    def _number_is_constant(cls, data: Any) -> Any:
        if isinstance(data, bool) or isinstance(data, str):
            raise PydanticCustomError(
                "wrong_type",
                "expected a number or a mapping with start, end and schedule, got '{value}'",
                {"value": data},
            )
        if isinstance(data, (int, float)):
            return {"start": data}
        return data

    @property
    def effective_end(self) -> float:
        """Where the schedule ends; a constant (or a schedule with no end) stays at `start`."""
        return self.start if self.schedule == "constant" or self.end is None else self.end

    def at(self, step, max_steps: int):
        """The value at optimizer step `step` (a number, or a JAX array inside a jitted step)."""
        return schedule_value(self.schedule, self.start, self.effective_end, step, max_steps)


class AlphaSchedule(ScheduledValue):
    start: Annotated[float, AfterValidator(_in_unit_interval)] = 0.5
    end: Annotated[float, AfterValidator(_in_unit_interval)] | None = None


class TemperatureSchedule(ScheduledValue):
    start: Annotated[float, AfterValidator(_positive_temperature)] = 1.0
    end: Annotated[float, AfterValidator(_positive_temperature)] | None = None


class BetaSchedule(ScheduledValue):
    start: Annotated[float, AfterValidator(_non_negative_beta)] = 0.0
    end: Annotated[float, AfterValidator(_non_negative_beta)] | None = None


class LossSpec(_Block):
    """`total = α·T²·KL(teacher_T ‖ student_T) + (1 − α)·CE + β·feature_loss`."""

    alpha: AlphaSchedule = AlphaSchedule()
    temperature: TemperatureSchedule = TemperatureSchedule()
    beta: BetaSchedule = BetaSchedule()
    feature_loss_type: FeatureLossType = "cosine"
    # A list of layer indices, a preset (`full_depth:8`, ...), or None: every layer (both stacks equally deep).
    layer_indices: list[int] | str | None = None

    @field_validator("layer_indices")
    @classmethod
    def _preset_parses(cls, value: list[int] | str | None) -> list[int] | str | None:
        if isinstance(value, str):
            try:
                layer_presets.parse_preset(value)
            except layer_presets.PresetError as e:
                raise PydanticCustomError("bad_layer_preset", "{reason}", {"reason": str(e)}) from None
        return value

    @property
    def feature_loss_on(self) -> bool:
        """Whether features are extracted at all: a β that starts at 0 disables the `sow` (the guide's rule)."""
        return self.beta.start > 0.0 or self.beta.effective_end > 0.0


# --- models -----------------------------------------------------------------------------------------------


def _known_model(name: str) -> str:
    if name not in MODELS:
        from difflib import get_close_matches

        close = get_close_matches(name, MODELS, n=3, cutoff=0.5)
        raise PydanticCustomError(
            "unknown_model",
            "unknown model '{name}'{suggestion}",
            {"name": name, "suggestion": f"; did you mean {', '.join(close)}?" if close else ""},
        )
    return name


PositiveFloat = Annotated[float, Field(gt=0)]


class RopeScalingSpec(_Block):
    """RoPE frequency scaling, in config.json's terms: `llama3` (Llama 3.1/3.2) or `linear` (Gemma 3 ≥ 4B)."""

    # `rope_type`, as config.json writes it since transformers 4.45, is read too
    type: Literal["llama3", "linear"] = Field(validation_alias=AliasChoices("type", "rope_type"))
    factor: PositiveFloat
    low_freq_factor: PositiveFloat = 1.0  # llama3 only
    high_freq_factor: PositiveFloat = 4.0  # llama3 only
    original_max_position_embeddings: PositiveInt = 8192  # llama3 only

    @model_validator(mode="after")
    def _llama3_fields_only_for_llama3(self) -> RopeScalingSpec:
        # Stated at their defaults they change nothing: a resolved spec (spec.json) writes every field, and read
        # back it must validate.
        llama3_only = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        defaults = type(self).model_fields
        extra = sorted(f for f in llama3_only if f in self.model_fields_set and getattr(self, f) != defaults[f].default)
        if self.type == "linear" and extra:  # they mean nothing to linear scaling, yet made another run id
            raise PydanticCustomError(
                "llama3_only",
                "{fields} {verb} to llama3 scaling only; linear scaling has a factor",
                {"fields": ", ".join(extra), "verb": "apply" if len(extra) > 1 else "applies"},
            )
        return self

    def scaling(self) -> RopeScaling:
        return RopeScaling(
            self.type,
            self.factor,
            self.low_freq_factor,
            self.high_freq_factor,
            self.original_max_position_embeddings,
        )


class ModelSpec(_Block):
    """One side of the pair: a registry model plus overrides of its shape (and, for a checkpoint whose math differs
    from the registry model's, of its constants)."""

    model: Annotated[str, AfterValidator(_known_model)]
    num_layers: PositiveInt | None = None
    emb_dim: PositiveInt | None = None
    num_query_heads: PositiveInt | None = None
    num_kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    mlp_dim: PositiveInt | None = None
    vocab_size: PositiveInt | None = None
    load_parameters_path: str | None = None
    scan_layers: bool = True
    enable_nnx: bool = True
    weight_dtype: Dtype = "float32"
    dtype: Dtype = "float32"
    remat: Remat = "full"
    # Student only: start from random weights, or from the teacher's with `drop_layers` removed (pruning).
    init: Literal["random", "teacher"] = "random"
    drop_layers: list[NonNegativeInt] = []
    # Gemma 3: the layers (0-based) with global attention when they are not every 6th: a model pruned with
    # `drop_layers` keeps each layer's kind. A student made from the teacher gets them from the teacher's kept
    # layers (`DistillSpec.student_block`); state them for a pruned checkpoint loaded with load_parameters_path.
    global_layers: list[NonNegativeInt] | None = None
    # The model's constants, set only where a checkpoint's differ from the registry model's (`none`: no RoPE
    # scaling, no soft-cap). The last five are Gemma's.
    rope_theta: PositiveFloat | None = None
    rope_scaling: RopeScalingSpec | Literal["none"] | None = None
    tie_embeddings: bool | None = None
    norm_eps: PositiveFloat | None = None
    sliding_window: PositiveInt | None = None
    rope_local_theta: PositiveFloat | None = None
    attn_softcap: PositiveFloat | Literal["none"] | None = None
    final_softcap: PositiveFloat | Literal["none"] | None = None
    query_pre_attn_scalar: PositiveInt | None = None  # an int in transformers' Gemma configs

    def shape(self) -> ModelShape:
        """The registry shape with this block's overrides applied."""
        dims = _shape(
            self.model,
            self.num_layers,
            self.emb_dim,
            self.num_query_heads,
            self.num_kv_heads,
            self.head_dim,
            self.mlp_dim,
            self.vocab_size,
            None if self.global_layers is None else tuple(self.global_layers),
        )
        return with_constants(dims, self.constants())

    def constants(self) -> tuple[tuple[str, Any], ...]:
        """The constants this block sets, as the shape holds them (`none` is None, a scaling a RopeScaling)."""
        out = []
        for field in CONSTANT_FIELDS:
            value = getattr(self, field)
            if value is None:
                continue
            if value == NONE:
                value = None
            elif isinstance(value, RopeScalingSpec):
                value = value.scaling()
            out.append((field, value))
        return tuple(out)


@functools.lru_cache(maxsize=4096)  # checks, plans and identities ask for the same few shapes per point
def _shape(model: str, *dims: int | tuple[int, ...] | None) -> ModelShape:
    return MODELS[model].with_overrides(**dict(zip(BLOCK_FIELDS, dims, strict=True)))


# What each field's resolved form reads besides the field itself (`DistillSpec.resolved_block`).
RESOLUTION_INPUTS: dict[str, tuple[str, ...]] = {"loss": ("mode", "student"), "student": ("teacher",)}


def _dims(shape: ModelShape) -> dict[str, int | list[int] | None]:
    return dict(
        num_layers=shape.num_layers,
        emb_dim=shape.emb_dim,
        num_query_heads=shape.num_query_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        mlp_dim=shape.mlp_dim,
        vocab_size=shape.vocab_size,
        # normalised: None where the layers follow the family's pattern
        global_layers=None if shape.global_layers is None else list(shape.global_layers),
    )


def _same_constants(model: ModelSpec) -> dict[str, None]:
    """The constants the block states at its registry model's own values, cleared: the same model (and the same
    run id) as a block that leaves them out."""
    registry, shape = MODELS[model.model], model.shape()
    return {
        field: None
        for field in CONSTANT_FIELDS
        if getattr(model, field) is not None and getattr(shape, field) == getattr(registry, field)
    }


def _own_constants(model: ModelSpec) -> dict[str, Any]:
    """The block's constants as JSON, those equal to the registry model's None (`_same_constants`)."""
    return {
        field: None if getattr(model, field) is None else model.model_dump(mode="json", include={field})[field]
        for field in CONSTANT_FIELDS
    } | _same_constants(model)


def _explicit(model: ModelSpec | None) -> ModelSpec | None:
    """The block with its registry shape written out."""
    return None if model is None else model.model_copy(update=_dims(model.shape()) | _same_constants(model))


# --- data, batch, optimisation, outputs -------------------------------------------------------------------


class DataSpec(_Block):
    """Where tokens come from: a token stream (`synthetic`, `text`, `tokens`) cut in windows, or documents
    (`jsonl`, `parquet`, `arrayrecord`, `hf_disk`) packed into rows without attention or loss across them."""

    source: DataSource = "synthetic"
    # text/jsonl/parquet: a file, a folder, a glob or an fsspec URL (gs://...); arrayrecord: files as well;
    # hf_disk: a folder written by `datasets.Dataset.save_to_disk`; tokens: a .npy / raw uint16|int32 file.
    path: str | None = None
    text_column: str = "text"  # documents: the column holding the text
    # documents: a prompt/completion pair instead of text_column (the document is the prompt then the completion)
    prompt_column: str | None = None
    completion_column: str | None = None
    completion_only: bool = False  # with prompt/completion columns: loss on the completion's tokens only
    # `byte`, a path to a `tokenizer.json` (MaxText's `tokenizer_path`), or None: the tokenizer.json of the
    # teacher's (else the student's) Hugging Face checkpoint folder when it has one, else `byte`.
    tokenizer: str | None = None
    seed: Seed = 0
    # jsonl/parquet: records stream in file order; N > 0 shuffles the files' order and the records within windows
    # of N (held in memory) by `seed`. arrayrecord/hf_disk are shuffled by `seed` whole; windows are the streams'.
    shuffle_window: NonNegativeInt = 0

    @property
    def prompt_completion(self) -> bool:
        """Records are prompt/completion pairs (both columns named), not text: read as two columns, packed whole."""
        return self.prompt_column is not None and self.completion_column is not None

    def recorded(self) -> dict[str, Any]:
        """The block as checkpoints and logit caches record what they read: its JSON data, minus the fields added
        after them while they hold their default (what earlier versions did), so those still resume and match."""
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if k not in DATA_LATER_DEFAULTS or v != DATA_LATER_DEFAULTS[k]}


# Data fields added after checkpoints and caches began recording the data block, with their defaults.
DATA_LATER_DEFAULTS: dict[str, Any] = {"shuffle_window": 0}


class EvalSpec(_Block):
    """A held-out set read like `data` (same source kind, columns and tokenizer) from `path`: its first `batches`
    batches are evaluated every `every_steps` steps and at the last step (`eval/...` metrics). With
    `data.source: synthetic` there is no path: the set is `batches` batches of the same synthetic language that
    training never draws."""

    path: str | None = None
    every_steps: PositiveInt = 100
    batches: PositiveInt = 4


class BatchSpec(_Block):
    """The one batch shape both models see (MaxText rejects it inside *_overrides for the same reason)."""

    # Each below 2**31: the compiled step counts rows, positions and micro-steps in int32 (2**63 passed).
    per_device_batch_size: Annotated[float, Field(gt=0, lt=2**31)] = 1.0
    max_target_length: Annotated[int, Field(gt=0, lt=2**31)] = 128
    gradient_accumulation_steps: Annotated[int, Field(gt=0, lt=2**31)] = 1


class OptimizerSpec(_Block):
    """AdamW with linear warm-up, then cosine decay to `final_lr_fraction` of the peak; global-norm clipping."""

    learning_rate: Annotated[float, Field(gt=0)] = 3e-4
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    final_lr_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    b1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    b2: Annotated[float, Field(ge=0, lt=1)] = 0.95
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    grad_clip_norm: Annotated[float, Field(gt=0)] | None = 1.0


ExportFormat = Literal["hf", "maxtext"]


class CheckpointSpec(_Block):
    enabled: bool = True
    every_steps: PositiveInt | None = None  # None: only at the end (and on SIGTERM)
    keep: PositiveInt = 3
    # At the end of a finished run, also write the student to <run_dir>/export/<format>: `hf`, a Hugging Face
    # folder; `maxtext`, a MaxText checkpoint (<dir>/0/items and <dir>/config.json; single-process runs only).
    export: ExportFormat | None = None


class LoggingSpec(_Block):
    every_steps: PositiveInt = 10
    tensorboard: bool = True
    # The guide's `tensorboard_dir`: the run's events go to `<tensorboard_dir>/<name>` (one folder per run, so one
    # `tensorboard --logdir` shows a sweep's runs side by side); unset, to `<output_dir>/<name>/tensorboard`. Where
    # a run writes, not what it computes: not part of the run id (see orchestrator/core/identity.py).
    tensorboard_dir: str | None = None


class MeshSpec(_Block):
    """Device mesh axis sizes; -1 takes the devices the other axes leave.

    Unset `data` and `fsdp` (the default) mean: data parallelism across slices (over DCN) and FSDP inside each
    slice (over ICI), so parameters and optimizer state are sharded within a slice and only gradients cross the
    data-centre network. An unset axis beside explicit ones takes the remaining devices (-1) when no other axis
    does, else the slice count (data) or 1 (fsdp)."""

    data: int | None = None
    fsdp: int | None = None
    tensor: int = 1

    @field_validator("data", "fsdp", "tensor")
    @classmethod
    def _axis_size(cls, value: int | None) -> int | None:
        if value is not None and (value == 0 or value < -1):
            raise PydanticCustomError(
                "bad_mesh_axis", "a mesh axis is -1 (fill) or >= 1, got {value}", {"value": value}
            )
        return value

    def resolved_axes(self, slices: int = 1) -> tuple[int, int, int]:
        """(data, fsdp, tensor) with unset axes decided for `slices` slices (-1 still means "fill")."""
        data, fsdp, tensor = self.data, self.fsdp, self.tensor
        if data is None and fsdp is None:
            return (slices, 1, -1) if tensor == -1 else (slices, -1, tensor)
        fill_taken = -1 in (data, fsdp, tensor)
        if data is None:
            data = slices if fill_taken else -1
        if fsdp is None:
            fsdp = 1 if fill_taken else -1
        return data, fsdp, tensor


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def integral(value: Any) -> Any:
    """An integral float as the int it equals, as a file writes it (`per_device_batch_size` takes fractions, so it
    holds 8 as 8.0); any other value as it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _run_name(value: str) -> str:
    if not _RUN_NAME.match(value) or len(value) > 128:
        raise PydanticCustomError(
            "bad_run_name",
            "run name '{value}' must start with a letter or digit and use only letters, digits, '.', '_', '-'",
            {"value": value},
        )
    return value


class DistillSpec(_Block):
    """A whole distillation (or teacher pre-training) run."""

    name: Annotated[str, AfterValidator(_run_name)] = "distill"
    # `teacher_logits`: stream the corpus through the teacher once and write its top-k log-probabilities (a logit
    # cache, `trainer.logit_cache`) for `offline_data_dir` runs; the student block is not used then.
    mode: Literal["distill", "pretrain", "teacher_logits"] = "distill"
    student: ModelSpec
    teacher: ModelSpec | None = None
    loss: LossSpec = LossSpec()
    data: DataSpec = DataSpec()
    eval: EvalSpec | None = None
    batch: BatchSpec = BatchSpec()
    steps: Annotated[int, Field(gt=0, lt=2**31)] = 1000  # the compiled step counts in int32
    optimizer: OptimizerSpec = OptimizerSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    logging: LoggingSpec = LoggingSpec()
    mesh: MeshSpec = MeshSpec()
    # A logit cache (the `<run dir>/logits` folder of a `mode: teacher_logits` run): distill from it, no teacher
    # in memory. `top_k`: the teacher log-probabilities kept per token (teacher_logits runs write that many;
    # offline runs check the cache has that many).
    offline_data_dir: str | None = None
    top_k: PositiveInt | None = None
    output_dir: Annotated[str, Field(min_length=1)] = "runs"  # "" would write the run folder at the root
    seed: Seed = 0

    @property
    def is_online_distillation(self) -> bool:
        return self.mode == "distill" and not self.offline_data_dir

    def layer_indices(self) -> list[int] | None:
        """Resolved feature-loss layer indices (presets against the student's depth); None when β is off."""
        if not (self.mode == "distill" and self.loss.feature_loss_on):
            return None
        depth = self.student.shape().num_layers
        indices = self.loss.layer_indices
        if indices is None:
            return list(range(depth))
        if isinstance(indices, str):
            return layer_presets.resolve_preset(indices, depth, self.pruned_layers())
        return list(indices)

    def pruned_layers(self) -> tuple[int, ...]:
        """The teacher's layers the student lacks, where that is known: its `drop_layers` (a student made from the
        teacher), or a `straddle:[...]` preset's list when the teacher is deeper by exactly that many layers (a
        student pruned elsewhere, loaded from its checkpoint)."""
        if self.student.drop_layers and self.student.init == "teacher":
            return tuple(sorted(set(self.student.drop_layers)))
        indices = self.loss.layer_indices
        if self.teacher is None or not isinstance(indices, str):
            return ()
        kind, listed = layer_presets.parse_preset(indices)
        if kind != "straddle" or not isinstance(listed, tuple):
            return ()
        gap = self.teacher.shape().num_layers - self.student.shape().num_layers
        return tuple(sorted(set(listed))) if gap == len(set(listed)) else ()

    def teacher_layer_indices(self) -> list[int] | None:
        """The teacher's layer for each of `layer_indices` (the student's): past pruned layers (`pruned_layers`),
        the one the student's layer stands for (its layer 20 is the teacher's 22 past two pruned layers), else the
        same index (MaxText's rule, for models of the same depth)."""
        indices = self.layer_indices()
        pruned = set(self.pruned_layers())
        if indices is None or self.teacher is None or not pruned:
            return indices
        kept = [layer for layer in range(self.teacher.shape().num_layers) if layer not in pruned]
        return [kept[i % len(kept)] for i in indices]

    def resolved(self) -> DistillSpec:
        """The canonical form: registry shapes written out, presets resolved. Two specs that mean the same run
        resolve to equal values (run identities hash this)."""
        loss = self.loss.model_copy(update={"layer_indices": self.layer_indices()})
        return self.model_copy(
            update={"student": _explicit(self.student_block()), "teacher": _explicit(self.teacher), "loss": loss}
        )

    def student_block(self) -> ModelSpec:
        """The student as the trainer builds it: one made from the teacher (`init: teacher`) keeps each kept
        layer's attention kind, so a Gemma 3 student's `global_layers` come from the teacher's kept layers unless
        the block states them (checks reject a statement that disagrees)."""
        s, t = self.student, self.teacher
        if s.init != "teacher" or t is None or MODELS[s.model].family != MODELS[t.model].family:
            return s
        # Its layers are the teacher's: so are the constants they compute with, unless the block states them.
        inherited = {f: getattr(t, f) for f in CONSTANT_FIELDS if getattr(s, f) is None and getattr(t, f) is not None}
        if inherited:
            s = s.model_copy(update=inherited)
        if s.global_layers is not None:
            return s
        derived = pruned_global_layers(t.shape(), tuple(s.drop_layers))
        return s if derived is None else s.model_copy(update={"global_layers": list(derived)})

    def resolved_data(self) -> dict[str, Any]:
        """`resolved().model_dump(mode="json")`, without building the resolved models (a sweep asks per point)."""
        return {name: self.resolved_block(name) for name in type(self).model_fields}

    def resolved_block(self, name: str) -> Any:
        """One top-level field of `resolved_data()`. It depends on the field itself and on the fields
        `RESOLUTION_INPUTS` names for it, nothing else."""
        value = self.student_block() if name == "student" else getattr(self, name)
        if name in ("student", "teacher") and value is not None:
            return {**value.model_dump(mode="json"), **_dims(value.shape()), **_own_constants(value)}
        if name == "loss":
            return {**value.model_dump(mode="json"), "layer_indices": self.layer_indices()}
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    def tokens_per_step(self, num_devices: int) -> int:
        """Tokens in one optimizer step across all devices (padding included)."""
        b = self.batch
        return math.floor(b.per_device_batch_size * num_devices) * b.max_target_length * b.gradient_accumulation_steps


def field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)
