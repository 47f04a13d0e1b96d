"""Read a MaxText `distillation.yml` (flat `distill_*` keys, `student_overrides`, `teacher_overrides`) into the
native spec layout, remembering which file key each native key came from.

As in MaxText, top-level model keys (`scan_layers`, `vocab_size`, ...) configure both models and
`*_overrides` win per side. MaxText's base config has hundreds of keys the bundled trainer does not use: those
are kept out of the spec with a warning, while likely typos of keys we do use are errors.
"""

from __future__ import annotations

import dataclasses
import re
from difflib import get_close_matches
from typing import Any

from distillspec.config import integral
from distillspec.problems import Loc, Problem, format_loc

# MaxText key -> native location.
TOP_LEVEL: dict[str, Loc] = {
    f"distill_{name}{suffix}": ("loss", name, field)
    for name in ("alpha", "temperature", "beta")
    for suffix, field in (("", "start"), ("_end", "end"), ("_schedule", "schedule"))
}
TOP_LEVEL |= {
    "distill_feature_loss_type": ("loss", "feature_loss_type"),
    "distill_layer_indices": ("loss", "layer_indices"),
    "run_name": ("name",),
    "steps": ("steps",),
    "offline_data_dir": ("offline_data_dir",),
    "top_k": ("top_k",),  # save_top_k_teacher_logits.py's --top_k: the cache's k, which the reader must know
    "base_output_directory": ("output_dir",),
    "init_weights_seed": ("seed",),
    "per_device_batch_size": ("batch", "per_device_batch_size"),
    "max_target_length": ("batch", "max_target_length"),
    "gradient_accumulation_steps": ("batch", "gradient_accumulation_steps"),
    "learning_rate": ("optimizer", "learning_rate"),
    "warmup_steps_fraction": ("optimizer", "warmup_fraction"),
    "learning_rate_final_fraction": ("optimizer", "final_lr_fraction"),
    "adam_b1": ("optimizer", "b1"),
    "adam_b2": ("optimizer", "b2"),
    "adam_eps": ("optimizer", "eps"),
    "adam_weight_decay": ("optimizer", "weight_decay"),
    "gradient_clipping_threshold": ("optimizer", "grad_clip_norm"),
    "enable_checkpointing": ("checkpoint", "enabled"),
    "checkpoint_period": ("checkpoint", "every_steps"),
    "max_num_checkpoints_to_keep": ("checkpoint", "keep"),
    "log_period": ("logging", "every_steps"),
    "enable_tensorboard": ("logging", "tensorboard"),
    "tensorboard_dir": ("logging", "tensorboard_dir"),
    "dataset_type": ("data", "source"),
    "tokenizer_path": ("data", "tokenizer"),
    "data_shuffle_seed": ("data", "seed"),
    "ici_data_parallelism": ("mesh", "data"),
    "ici_fsdp_parallelism": ("mesh", "fsdp"),
    "ici_tensor_parallelism": ("mesh", "tensor"),
}

_MAXTEXT_KEY: dict[Loc, Loc] = {loc: (key,) for key, loc in TOP_LEVEL.items()}  # the first key for each place
_MAXTEXT_KEY |= {loc[:-1]: (key,) for key, loc in TOP_LEVEL.items() if loc[-1] == "start"}  # loss.beta: distill_beta
_MAXTEXT_KEY |= {("data", "path"): ("dataset_path",), ("eval", "path"): ("hf_eval_files",)}  # MaxText's file keys

CLIPPING = "gradient_clipping_threshold"
DATA_PATH_KEYS = ("dataset_path", "hf_path", "grain_train_files")
# MaxText's spellings of files the trainer reads: `dataset_type: hf` with `hf_path: json|parquet` (Hugging Face
# datasets' builders) reads the `hf_train_files`; `dataset_type: grain` with `grain_file_type: parquet` reads the
# `grain_train_files`. (Its grain ArrayRecord files hold tf.Example protos, not the JSON records the trainer reads.)
HF_FILE_BUILDERS = {"json": "jsonl", "parquet": "parquet"}
DATA_FILE_KEYS = ("hf_train_files", "grain_file_type", "train_data_columns")
EVAL_FILE_KEYS = ("hf_eval_files", "grain_eval_files")  # MaxText's held-out files, beside the training files'

# MaxText model key -> native ModelSpec field; valid at the top level (both models) and in *_overrides.
MODEL_KEYS: dict[str, str] = {
    "model_name": "model",
    "base_emb_dim": "emb_dim",
    "base_num_query_heads": "num_query_heads",
    "base_num_kv_heads": "num_kv_heads",
    "base_mlp_dim": "mlp_dim",
    "base_num_decoder_layers": "num_layers",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
    "load_parameters_path": "load_parameters_path",
    "scan_layers": "scan_layers",
    "enable_nnx": "enable_nnx",
    "weight_dtype": "weight_dtype",
    "dtype": "dtype",
    # a checkpoint's constants, where they differ from the model's (MaxText's names for them)
    "rope_max_timescale": "rope_theta",
    "logits_via_embedding": "tie_embeddings",
    "normalization_layer_epsilon": "norm_eps",
    "sliding_window_size": "sliding_window",
    "local_rope_max_timescale": "rope_local_theta",  # -1 (MaxText's "as rope_max_timescale"): unset
    "attn_logits_soft_cap": "attn_softcap",  # 0 (MaxText's "no cap"): `none`
    "final_logits_soft_cap": "final_softcap",
}
SOFT_CAPS = ("attn_logits_soft_cap", "final_logits_soft_cap")
# The keys a MaxText model file (configs/models/<model_name>.yml) sets: set again in an override block, they need
# `override_model_config: true`.
MODEL_CONFIG_KEYS = frozenset(MODEL_KEYS) - {
    "model_name",
    "load_parameters_path",
    "scan_layers",
    "enable_nnx",
    "weight_dtype",
    "dtype",
}
# Names the guide uses for the same settings ("varying e.g. `num_decoder_layers` ... per side"): read, never written.
MODEL_KEY_ALIASES = {
    "num_decoder_layers": "base_num_decoder_layers",
    "num_query_heads": "base_num_query_heads",
    "num_kv_heads": "base_num_kv_heads",
    "emb_dim": "base_emb_dim",
    "mlp_dim": "base_mlp_dim",
}
BATCH_KEYS = ("per_device_batch_size", "max_target_length", "gradient_accumulation_steps")
OVERRIDE_BLOCKS = {"student_overrides": "student", "teacher_overrides": "teacher"}
_BLOCK_OF = {side: block for block, side in OVERRIDE_BLOCKS.items()}
_MODEL_KEY = {field: key for key, field in MODEL_KEYS.items()}  # native model field -> MaxText key

# Keys MaxText users set whose behaviour the bundled trainer already has: accepted without a word at the values it
# matches (any value: None); another value is something the trainer would not do, said (`maxtext_value_ignored`).
# {key: (values the trainer matches, what it does instead, error: True when training would be another thing)}
ACCEPTED: dict[str, tuple[tuple[Any, ...], str, bool] | None] = {
    "base_config": None,
    "override_model_config": None,
    "skip_jax_distributed_system": None,
    "async_checkpointing": None,
    "save_checkpoint_on_completion": ((True,), "the trainer saves a checkpoint at the last step", False),
    "packing": ((True,), "the trainer packs documents into rows (with segment ids)", False),
    "tokenizer_type": (("huggingface",), "the trainer reads Hugging Face tokenizer.json files", False),
    "learning_rate_schedule_steps": ((-1, "steps"), "the trainer's schedule spans `steps`", False),
    "opt_type": (
        ("adamw",),
        "the bundled trainer trains with AdamW (adam_weight_decay, adam_b1, adam_b2, adam_eps)",
        True,
    ),
}
# MaxText's remat_policy (a top-level key: the student's per-layer rematerialisation) -> the spec's `remat`.
# `minimal` saves the weight matmuls (jax's checkpoint_dots_with_no_batch_dims): the trainer's `dots`. MaxText's
# named-tensor policies (save_qkv_proj, save_dot_except_mlp, offloading, ...) save a subset of those: the nearest
# the trainer has is `dots`, said as a warning.
REMAT_POLICIES = {"full": "full", "minimal": "dots", "none": "none"}
REMAT_NEAREST_DOTS = (
    "save_dot_except_mlpwi",
    "save_dot_except_mlp",
    "save_dot_with_context_except_mlp",
    "save_qkv_proj",
    "save_out_proj",
    "qkv_proj_offloaded",
    "minimal_offloaded",
    "minimal_flash",
    "minimal_with_context",
    "custom",
)
REMAT_KEY = "remat_policy"
# Evaluation: every eval_interval steps (-1, MaxText's default: never), eval_steps batches.
EVAL_KEYS = {"eval_interval": ("eval", "every_steps"), "eval_steps": ("eval", "batches")}
KNOWN_KEYS = (
    set(TOP_LEVEL)
    | {REMAT_KEY}
    | set(EVAL_KEYS)
    | set(DATA_PATH_KEYS)
    | set(DATA_FILE_KEYS)
    | set(EVAL_FILE_KEYS)
    | set(MODEL_KEYS)
    | set(MODEL_KEY_ALIASES)
    | set(OVERRIDE_BLOCKS)
    | set(ACCEPTED)
)


def looks_like_maxtext(data: dict) -> bool:
    """MaxText's flat layout: a file with its override blocks or base_config (no native file has them; a stray
    native block in it is said as such, where one `loss:` read the whole file as native: 34 errors); else one with
    distill_* keys and none of distillctl's blocks (there stray MaxText keys are typos)."""
    if any(key in data for key in (*OVERRIDE_BLOCKS, "base_config")):
        return True
    if any(key in data for key in ("student", "teacher", "loss")):
        return False
    return any(
        isinstance(key, str) and (key.startswith("distill_") or key in OVERRIDE_BLOCKS or key == "base_config")
        for key in data
    )


@dataclasses.dataclass
class Translation:
    data: dict[str, Any]
    file_locs: dict[Loc, Loc]  # native loc -> the file's loc
    problems: list[Problem]  # with file locs
    blocks: frozenset[str] = frozenset()  # the override blocks the file has

    def to_file_loc(self, loc: Loc) -> Loc:
        """The file's name for a native location: the key the file used, else MaxText's own key for it (a hint
        that says `set data.source` to a MaxText user means `dataset_type`), else the native location."""
        if (found := self.file_locs.get(tuple(loc))) is not None:
            return found
        if len(loc) >= 2 and loc[0] in _BLOCK_OF and loc[1] in _MODEL_KEY:  # a model field the block does not set
            return (_BLOCK_OF[loc[0]], _MODEL_KEY[loc[1]], *loc[2:])
        if (found := _MAXTEXT_KEY.get(tuple(loc))) is not None:  # MaxText's key, before a made-up `eval_interval.path`
            return found
        for end in range(len(loc) - 1, 0, -1):
            if (found := self.file_locs.get(tuple(loc[:end]))) is not None:
                return found + tuple(loc[end:])
        return loc

    def in_file_terms(self, problem: Problem) -> Problem:
        """The problem at the file's location, said in the file's words: `teacher_overrides.load_parameters_path`,
        not `teacher.load_parameters_path`, to a MaxText user."""
        loc = self.to_file_loc(problem.loc)
        if problem.code == "missing_key" and loc[:1] != problem.loc[:1] and loc[0] not in self.blocks:
            # the whole block is missing: "add `model_name:`" alone would be written at the top level
            block = loc[0]
            hint = f"add a `{block}:` block with `model_name:`" + (
                " and `load_parameters_path:`" if block == "teacher_overrides" else ""
            )
            problem = dataclasses.replace(problem, hint=hint)
        return dataclasses.replace(self.in_file_words(problem, loc), loc=loc)

    def in_file_words(self, problem: Problem, loc: Loc | None = None) -> Problem:
        """The problem's message and hint in the file's words, its location kept (a sweep file's): every native
        path they name (`checkpoint.every_steps`), and the native field a sentence is about (`every_steps must be
        greater than 0`, `point output_dir at ...`), as the file's key. Quoted values are the user's, kept as
        written (a path holding `eval.jsonl` read `eval_interval.jsonl`)."""
        from distillspec.spec_paths import native_paths

        paths = native_paths()
        loc = self.to_file_loc(problem.loc) if loc is None else loc
        leaf, file_leaf = (problem.loc[-1], loc[-1]) if problem.loc and loc else (None, None)

        def rename(match: re.Match) -> str:  # a field's path; a user's relative path (`teacher.hf`) is kept
            text = match.group(0)
            return format_loc(self.to_file_loc(tuple(text.split(".")))) if text in paths else text

        named = format_loc(loc) if isinstance(leaf, str) and leaf != file_leaf and loc != problem.loc else None

        def words(text: str, first: bool) -> str:
            parts = _QUOTED.split(text)
            for i in range(0, len(parts), 2):  # outside quotes
                part = _NATIVE_PATH.sub(rename, parts[i])
                if named is not None:
                    part = part.replace(f"`{leaf}:`", f"`{file_leaf}:`")  # "add `model:`": the file's `model_name:`
                    if "_" in leaf:  # a field name no sentence uses as a word (`output_dir`, `every_steps`)
                        part = re.sub(rf"(?<![\w.]){re.escape(leaf)}(?![\w.])", named, part)
                    elif first and i == 0 and part.startswith(f"{leaf} "):  # "keep must be greater than 0"
                        part = named + part[len(leaf) :]
                parts[i] = part
            return "".join(parts)

        hint = MAXTEXT_HINTS.get(problem.code) or words(problem.hint, False)
        block = self.data.get(problem.loc[0]) if problem.loc else None
        model = block.get("model") if isinstance(block, dict) else None
        if (
            problem.code == "checkpoint_mismatch"
            and isinstance(model, str)
            and model not in NO_MAXTEXT_CONFIG
            and any(f"_overrides.{key}:" in hint for key in MODEL_CONFIG_KEYS)
        ):  # else the fix leads to maxtext_override_refused
            hint += "; with override_model_config: true, as MaxText refuses a key its model file sets otherwise"
        message = words(problem.message, True)
        if problem.code == "checkpoint_mismatch":  # `num_layers: expected 32, found 30`: the override's key
            message = _MISMATCHED_FIELD.sub(lambda m: f"{_MODEL_KEY[m.group(1)]}: expected", message)
        return dataclasses.replace(problem, message=message, hint=hint)


# Fixes whose native words have no MaxText spelling (a `data.source: jsonl`, a shuffle window): what to write in a
# MaxText file instead.
_FILES = "dataset_type: hf with hf_path: json or parquet and hf_train_files: the files"
MAXTEXT_HINTS = {
    "text_source_of_records": f"read them as records: {_FILES} (train_data_columns: [the column of text])",
    "data_seed_changes_nothing": "this layout has no key for the trainer's shuffle window: remove data_shuffle_seed, "
    "or keep the spec in distillctl's layout (`distillctl convert FILE --to native`) and set data.shuffle_window",
    "eval_needs_documents": f"evaluate on records: {_FILES}, and hf_eval_files; or set eval_interval: -1 (no "
    "evaluation)",
    "hub_dataset_not_read": "save it to disk or a bucket first (datasets.load_dataset(...)['train'].save_to_disk("
    "'gs://bucket/corpus')) and read it with dataset_type: hf_disk and dataset_path: that folder, or export it as "
    "JSONL or Parquet files (hf_path: json or parquet, hf_train_files)",
    "data_source_not_bundled": f"read files: {_FILES}, or dataset_type: grain with grain_file_type: parquet and "
    "grain_train_files; or distillctl's dataset_type text (tokenized by tokenizer_path), tokens, arrayrecord or "
    "hf_disk with dataset_path",
}
# Where a problem with a key the file leaves out is shown: at the key that asks for it, not the file's first line.
NEAR_KEYS: dict[str, tuple[str, ...]] = {
    "hf_train_files": ("hf_path", "dataset_type"),
    "dataset_path": ("dataset_type",),
    "hf_eval_files": ("eval_interval", "eval_steps"),
    "teacher_overrides": ("student_overrides",),
    "student_overrides": ("teacher_overrides",),
}


# distillctl's own paths as messages and hints name them; not inside a path or URL (`corpus/eval.jsonl`)
_NATIVE_PATH = re.compile(
    r"(?<![\w./:-])(?:student|teacher|loss|batch|optimizer|checkpoint|logging|mesh|data|eval)(?:\.[a-z_]+)+(?![\w/-])"
)
# A model field a checkpoint's config differs in (`hf_config.shape_mismatches`), where MaxText names it otherwise
_MISMATCHED_FIELD = re.compile(
    rf"(?<![\w./])({'|'.join(field for field, key in _MODEL_KEY.items() if field != key)}): expected"
)
# A quoted value ('gs://b/eval.jsonl', or "it's" as repr writes one holding a quote): not an apostrophe (MaxText's)
_QUOTED = re.compile(r"""((?<!\w)'[^'\n]*'(?!\w)|(?<!\w)"[^"\n]*"(?!\w))""")


def _none(value: Any) -> Any:
    return None if value == "None" else value  # MaxText's YAML writes None for null


def native_value(key: str, value: Any) -> Any:
    """A value written under MaxText's flat `key` (a file's, or a sweep axis's) as the native field holds it:
    MaxText's `None` is null, and a clipping threshold of 0 or less is clipping off."""
    value = _none(value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == CLIPPING and number and value <= 0:
        return None  # MaxText clips only above 0: 0 is clipping off
    if key in SOFT_CAPS and number and value <= 0:
        return "none"  # MaxText caps only above 0 (its model files write 0.0 for none)
    if key == "local_rope_max_timescale" and number and value <= 0:
        return None  # -1: the sliding-window layers use rope_max_timescale too
    if key == "sliding_window_size" and number and value <= 0:
        return None  # 0, base.yml's: no sliding window (the model's own)
    return value


def both_models_key(key: str) -> bool:
    """A MaxText model key that, at a file's top level, sets both models (`base_num_decoder_layers`)."""
    return key in MODEL_KEYS or key in MODEL_KEY_ALIASES


def _set(data: dict, loc: Loc, value: Any) -> None:
    for key in loc[:-1]:
        data = data.setdefault(key, {})
    data[loc[-1]] = value


def eval_off(key: str, value: Any) -> bool:
    """MaxText's `eval_interval` at -1 (its default) or 0: no evaluation; -1 or 0 `eval_steps` is its "all"."""
    return key in EVAL_KEYS and (value is None or (_whole(value) and value <= 0))


def _data_files(flat: dict[str, Any], out: Translation) -> None:
    """MaxText's spellings of files: `hf` + `hf_path: json|parquet` + `hf_train_files`, `grain` +
    `grain_file_type: parquet` + `grain_train_files`, as the sources that read them (they were a hub dataset named
    `json`, and grain "not read yet")."""
    kind, builder = _none(flat.get("dataset_type")), _none(flat.get("hf_path"))
    files = _none(flat.get("hf_train_files"))
    columns = _none(flat.get("train_data_columns"))
    if isinstance(columns, str):
        columns = [columns]
    if isinstance(columns, list) and len(columns) == 1 and isinstance(columns[0], str):
        _set(out.data, ("data", "text_column"), columns[0])  # the column of text each record is read by
        out.file_locs[("data", "text_column")] = ("train_data_columns",)
    elif columns is not None:
        out.problems.append(
            Problem(
                ("train_data_columns",),
                "maxtext_value_unsupported",
                f"train_data_columns {columns!r}: the trainer reads one text column (or a prompt and a completion "
                "column, in distillctl's layout)",
                "name one column, e.g. [text]",
            )
        )
    if kind == "hf" and builder in HF_FILE_BUILDERS:
        _set(out.data, ("data", "source"), HF_FILE_BUILDERS[builder])
        out.file_locs[("data", "path")] = ("hf_train_files",)
        if files not in (None, ""):
            _set(out.data, ("data", "path"), files)
            if _none(flat.get("dataset_path")) not in (None, ""):  # it was read over, without a word
                out.problems.append(
                    Problem(
                        ("dataset_path",),
                        "maxtext_key_ignored",
                        f"dataset_path is not read: with hf_path {builder!r} the files are hf_train_files's",
                        "remove dataset_path (or put its files in hf_train_files)",
                        severity="warning",
                    )
                )
        else:  # it read as a hub dataset named `json`, whose fix was to save it to disk
            suffix = HF_FILE_BUILDERS[builder]
            out.problems.append(
                Problem(
                    ("hf_train_files",),
                    "data_path_missing",
                    f"hf_path {builder!r} reads the files hf_train_files names, and the file names none",
                    f"set hf_train_files to the {suffix} file(s), e.g. gs://my-bucket/corpus/*.{suffix}",
                )
            )
    elif kind == "grain" and _none(flat.get("grain_file_type")) == "parquet":
        _set(out.data, ("data", "source"), "parquet")
    elif files is not None or "grain_file_type" in flat:
        key = "hf_train_files" if files is not None else "grain_file_type"
        out.problems.append(
            Problem(
                (key,),
                "maxtext_key_ignored",
                f"MaxText key {key!r} is read with dataset_type hf and hf_path json or parquet (hf_train_files), or "
                "dataset_type grain (grain_file_type: parquet); here it is ignored",
                "set dataset_type and hf_path (or grain_file_type) to name the files' format",
                severity="warning",
            )
        )


def _evaluation(flat: dict[str, Any], out: Translation) -> None:
    """The eval block of eval_interval and eval_steps, as MaxText evaluates: only every eval_interval > 0 steps.
    eval_steps without one evaluated every 100 steps (the spec's default), where MaxText never evaluates."""
    interval, batches = (_none(flat.get(key)) for key in EVAL_KEYS)
    if eval_off("eval_interval", interval):
        said = "is -1 (MaxText's default: never)" if "eval_interval" not in flat else f"{interval!r} turns it off"
        files = [(key, value) for key in EVAL_FILE_KEYS if (value := _none(flat.get(key))) not in (None, "")]
        unread = ([] if eval_off("eval_steps", batches) else [("eval_steps", batches)]) + files
        for key, value in unread:  # held-out files too: they read as an evaluation that never ran
            out.problems.append(
                Problem(
                    (key,),
                    "eval_steps_unused",
                    f"{key} {value!r} is not read: there is no evaluation, as eval_interval {said}",
                    f"set eval_interval to the steps between evaluations, or remove {key}",
                    severity="warning",
                )
            )
        return
    for key, value in zip(EVAL_KEYS, (interval, batches)):
        if not eval_off(key, value):  # eval_steps -1 or 0 (MaxText's "all") leaves the spec's default
            _set(out.data, EVAL_KEYS[key], value)
            out.file_locs[EVAL_KEYS[key]] = (key,)
    out.file_locs.setdefault(("eval",), ("eval_interval",))  # the eval block's own problems: at this key
    for key in EVAL_FILE_KEYS:  # the held-out files, read like the training files
        if _none(flat.get(key)) not in (None, ""):
            _set(out.data, ("eval", "path"), flat[key])
            out.file_locs[("eval", "path")] = (key,)


# MaxText base.yml's defaults where distillctl's differ: a key a MaxText file leaves out is read with distillctl's
# (the file is read alone, not merged over base.yml), which MaxText given the same file would not train with.
# {key: (distillctl's default, MaxText's)}
MAXTEXT_DEFAULTS = {
    "dtype": ("float32", "bfloat16"),
    "per_device_batch_size": (1, 12),
    "max_target_length": (128, 2048),
    "steps": (1000, 150_001),
    "learning_rate": (3e-4, 3e-5),
    "checkpoint_period": ("the end only", 10_000),
    "max_num_checkpoints_to_keep": (3, "every one"),
    "log_period": (10, 100),
    "dataset_type": ("synthetic", "tfds"),
}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unstated_defaults(flat: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, distillctl's default, MaxText's) for each MAXTEXT_DEFAULTS key the file does not set; `dtype` counts
    as set when the top level or both override blocks set it."""
    out = []
    saves = flat.get("enable_checkpointing", True) not in (False, "false", "False")
    steps = _none(flat.get("steps", MAXTEXT_DEFAULTS["steps"][0]))
    for key, (ours, theirs) in MAXTEXT_DEFAULTS.items():
        if not saves and key in ("checkpoint_period", "max_num_checkpoints_to_keep"):
            continue  # no checkpoint either way
        if key == "checkpoint_period" and _whole(steps) and steps <= theirs:
            continue  # MaxText's period past the last step: it saves at the end only too
        blocks = [_none(flat.get(block)) or {} for block in OVERRIDE_BLOCKS] if key == "dtype" else []
        stated = key in flat or (blocks and all(isinstance(b, dict) and key in b for b in blocks))
        if not stated:
            out.append((key, ours, theirs))
    if _none(flat.get("tokenizer_path")) not in (None, "", "byte") and "tokenizer_type" not in flat:
        out.append(("tokenizer_type", "huggingface", "sentencepiece"))  # MaxText would not read the tokenizer.json
    return out


def _registry_shape(name: Any):
    """The registry's model of this name (a file's model_name may be anything), or None."""
    from distillspec.registry import MODELS

    return MODELS.get(name) if isinstance(name, str) else None


def _capped(name: Any) -> bool:
    """Whether the registry model soft-caps anything (Gemma 2): only there is MaxText's 0.0 a change."""
    shape = _registry_shape(name)
    return shape is not None and (shape.attn_softcap is not None or shape.final_softcap is not None)


def _set_again(name: Any, overrides: dict[str, Any]) -> list[str]:
    """The keys of an override block that MaxText refuses without override_model_config: those its model file
    (configs/models/<name>.yml, whose values the registry has) sets to another value."""
    shape = _registry_shape(name)
    if shape is not None and name in NO_MAXTEXT_CONFIG:  # a shape is a string's: hashable
        shape = None
    out = []
    for key, value in overrides.items():
        canonical = MODEL_KEY_ALIASES.get(key, key)
        if shape is None or canonical not in MODEL_CONFIG_KEYS:
            continue
        theirs = getattr(shape, MODEL_KEYS[canonical], None)
        ours = native_value(canonical, value)
        if theirs is not None and (None if ours == "none" else ours) != theirs:
            out.append(key)
    return out


def _run_key(key: str) -> bool:
    """A key of the run's settings (loss, optimizer, data, eval, checkpoints, remat): not a model's or the batch's."""
    return (
        key in KNOWN_KEYS
        and _model_field(key) is None
        and key not in BATCH_KEYS
        and key not in OVERRIDE_BLOCKS
        and key != "base_config"
    )


def from_maxtext(flat: dict[str, Any]) -> Translation:
    """The native spec data of a MaxText file. MaxText trains on the student's config, so run settings in
    `student_overrides` (learning_rate, eval_interval, dataset_type, opt_type, ...) are the run's, over the top
    level's: read as if written there, and located in the block (they were "not used by distillctl's trainer")."""
    block = _none(flat.get("student_overrides"))
    promoted = {key: value for key, value in block.items() if _run_key(key)} if isinstance(block, dict) else {}
    if not promoted:
        return _from_flat(flat)
    merged = {**flat, **promoted, "student_overrides": {k: v for k, v in block.items() if k not in promoted}}
    out = _from_flat(merged)

    def moved(loc: Loc) -> Loc:
        return ("student_overrides", *loc) if loc and loc[0] in promoted else loc

    out.problems = [dataclasses.replace(p, loc=moved(p.loc)) for p in out.problems]
    out.file_locs = {native: moved(loc) for native, loc in out.file_locs.items()}
    return out


def _from_flat(flat: dict[str, Any]) -> Translation:
    out = Translation({"mode": "distill"}, {}, [], frozenset(b for b in OVERRIDE_BLOCKS if b in flat))
    steps, schedule = flat.get("steps"), _none(flat.get("learning_rate_schedule_steps"))
    if steps == -1 and _whole(steps) and _whole(schedule) and schedule > 0:
        flat = {**flat, "steps": schedule}  # MaxText's -1: "inherit the value from learning_rate_schedule_steps"
    shared_model: dict[str, tuple[Any, Loc]] = {}
    remat = None  # the student's alone: the frozen teacher has no backward pass to rematerialise
    for key, value in flat.items():
        value = native_value(key, value)
        if key in TOP_LEVEL:
            _set(out.data, TOP_LEVEL[key], value)
            out.file_locs[TOP_LEVEL[key]] = (key,)
        elif key in DATA_PATH_KEYS:
            if value not in (None, ""):
                _set(out.data, ("data", "path"), value)
                out.file_locs[("data", "path")] = (key,)
        elif key == REMAT_KEY:
            remat = remat_of(value, out.problems)
        elif key in EVAL_KEYS:
            continue  # below: eval_steps means something only beside an eval_interval that evaluates
        elif key in DATA_FILE_KEYS or key in EVAL_FILE_KEYS:
            continue  # below, with dataset_type and eval_interval
        elif (field := _model_field(key)) is not None:
            shared_model[field] = (value, (key,))
        elif key in OVERRIDE_BLOCKS:
            continue
        elif key in NATIVE_BLOCKS:
            out.problems.append(_native_block(key))
        elif key not in ACCEPTED:
            out.problems.append(_unknown((key,), key, KNOWN_KEYS))
        elif (problem := _accepted_value(key, value, flat)) is not None:
            out.problems.append(problem)
    _evaluation(flat, out)
    _data_files(flat, out)
    period, steps = _none(flat.get("checkpoint_period")), _none(flat.get("steps", 1000))
    if _whole(period) and _whole(steps) and period >= steps:  # MaxText's spelling of "at the end only"
        out.data.setdefault("checkpoint", {})["every_steps"] = None
    unstated = _unstated_defaults(flat)
    if unstated:
        out.problems.append(
            Problem(
                ("base_config",) if "base_config" in flat else (),
                "maxtext_default_differs",
                "keys this file leaves out take distillctl's defaults where MaxText's base.yml has others: "
                + ", ".join(f"{key} {ours} (MaxText: {theirs})" for key, ours, theirs in unstated),
                "set each in the file to say what the run does (convert --to maxtext writes distillctl's values)",
                severity="warning",
            )
        )
    for block, side in OVERRIDE_BLOCKS.items():
        overrides = _none(flat.get(block)) or {}
        out.file_locs[(side,)] = (block,)
        if not isinstance(overrides, dict):
            out.problems.append(
                Problem(
                    (block,),
                    "wrong_type",
                    f"{block} must be a mapping of MaxText model keys",
                    "write it as `key: value` lines under the block",
                )
            )
            overrides = {}
        model: dict[str, Any] = {}
        for field, (value, loc) in shared_model.items():
            model[field] = value
            out.file_locs[(side, field)] = loc
        for key, value in overrides.items():
            value = native_value(key, value)
            if (field := _model_field(key)) is not None:
                model[field] = value
                out.file_locs[(side, field)] = (block, key)
            elif key in BATCH_KEYS:
                model[key] = value  # reported by the batch-shape rule, with both values
                out.file_locs[(side, key)] = (block, key)
            elif _run_key(key):  # the teacher's (the student's were read as the run's: from_maxtext)
                out.problems.append(
                    Problem(
                        (block, key),
                        "maxtext_key_ignored",
                        f"{key} in {block} is not read: the run's settings are the student's (MaxText trains on the "
                        "student's config)",
                        f"move {key} to the top level or into student_overrides",
                        severity="warning",
                    )
                )
            elif key not in ACCEPTED:
                out.problems.append(
                    _unknown((block, key), key, set(MODEL_KEYS) | set(MODEL_KEY_ALIASES) | set(BATCH_KEYS))
                )
        for field in ("attn_softcap", "final_softcap"):  # base.yml's 0.0 (no cap) on a model without one: its own
            if model.get(field) == "none" and not _capped(model.get("model")):
                del model[field]
        out.data[side] = model
        set_again = _set_again(model.get("model"), overrides)
        allowed = any(
            str(_none(where.get("override_model_config"))).lower() == "true" for where in (flat, overrides)
        )  # the top level's, or the block's own (MaxText reads it from the model's kwargs too)
        if set_again and not allowed:
            out.problems.append(
                Problem(
                    (block, set_again[0]),
                    "maxtext_override_refused",
                    f"MaxText refuses {', '.join(set_again)} in {block} where its model file "
                    f"(configs/models/{model.get('model')}.yml) sets another value, unless override_model_config is "
                    "true (distillctl reads it either way)",
                    "add `override_model_config: true` at the top level",
                    severity="warning",
                )
            )
    if remat is not None:
        out.data["student"]["remat"] = remat
        out.file_locs[("student", "remat")] = (REMAT_KEY,)
    return out


def remat_of(value: Any, problems: list[Problem]) -> Any:
    """The spec's `remat` for MaxText's remat_policy; a problem for a value it cannot be."""
    if isinstance(value, str) and value in REMAT_POLICIES:
        return REMAT_POLICIES[value]
    if isinstance(value, str) and value in REMAT_NEAREST_DOTS:
        problems.append(
            Problem(
                (REMAT_KEY,),
                "maxtext_value_ignored",
                f"remat_policy {value!r} saves named tensors the trainer does not name: it keeps every weight matmul "
                "instead (remat: dots, MaxText's `minimal`)",
                "set remat_policy to full, minimal or none to say what the run will do",
                severity="warning",
            )
        )
        return "dots"
    problems.append(
        Problem(
            (REMAT_KEY,),
            "bad_value",
            f"remat_policy {value!r} is not one of MaxText's policies",
            "use full (recompute each layer), minimal (keep its weight matmuls) or none (keep every activation)",
        )
    )
    return "full"  # said above; the spec's default, so the rest of the file is still checked


def _accepted_value(key: str, value: Any, flat: dict[str, Any]) -> Problem | None:
    """The problem with an accepted key's value the trainer does not match (None: it matches, or any does)."""
    if key == "base_config" and str(value).strip().rsplit("/", 1)[-1].lower() not in ("base.yml", "base.yaml"):
        # MaxText's distillation-sft.yml names distillation.yml: every key of that one is inherited there
        return Problem(
            (key,),
            "maxtext_base_config_not_read",
            f"base_config {value!r} is not read: distillctl reads this file alone, so the keys MaxText inherits from "
            "that file are not set (their defaults are distillctl's)",
            f"copy the keys this run needs from {value} into this file",
            severity="warning",
        )
    rule = ACCEPTED[key]
    if rule is None:
        return None
    values, instead, error = rule
    matched = [flat.get("steps") if v == "steps" else v for v in values]
    if value in matched or (isinstance(value, str) and value.lower() in [str(v).lower() for v in matched]):
        return None
    shown = ", ".join(_as_written(v) for v in values if v != "steps")
    return Problem(
        (key,),
        "maxtext_value_unsupported" if error else "maxtext_value_ignored",
        f"{_as_written(value)} is not what distillctl's trainer does: {instead}",
        f"remove {key} (or set it to {shown})" + ("" if error else " to say what the run will do"),
        severity="error" if error else "warning",
    )


def _as_written(value: Any) -> str:
    """A YAML scalar as the file writes it: `false`, not Python's `False`."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _model_field(key: str) -> str | None:
    """The model block field a MaxText key (or the guide's alias for one) sets; None for other keys."""
    return MODEL_KEYS.get(MODEL_KEY_ALIASES.get(key, key))


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance with adjacent transpositions (a typo's distance)."""
    previous2, previous = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if previous2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


# distillctl's own blocks (and keys no MaxText file has), and the MaxText keys that say the same in this layout
NATIVE_BLOCKS = {
    "student": "student_overrides (model_name, load_parameters_path, base_* keys)",
    "teacher": "teacher_overrides (model_name, load_parameters_path)",
    "loss": "distill_alpha, distill_temperature, distill_beta, distill_layer_indices and the other distill_* keys",
    "data": "dataset_type with dataset_path (or hf_path and hf_train_files), tokenizer_path, data_shuffle_seed",
    "eval": "eval_interval, eval_steps and hf_eval_files",
    "batch": "per_device_batch_size, max_target_length and gradient_accumulation_steps",
    "optimizer": "learning_rate, warmup_steps_fraction, learning_rate_final_fraction, adam_b1, adam_b2, "
    "adam_weight_decay and gradient_clipping_threshold",
    "checkpoint": "enable_checkpointing, checkpoint_period and max_num_checkpoints_to_keep",
    "logging": "log_period, enable_tensorboard and tensorboard_dir",
    "mesh": "ici_data_parallelism, ici_fsdp_parallelism and ici_tensor_parallelism",
    "mode": "offline_data_dir for distillation from a logit cache (a MaxText file is a distillation run)",
    "name": "run_name",
    "output_dir": "base_output_directory",
}


def _native_block(key: str) -> Problem:
    """A block of distillctl's layout in a MaxText file: read by nothing (a `checkpoint: {enabled: false}` was a
    warning, and the run saved checkpoints)."""
    return Problem(
        (key,),
        "unknown_key",
        f"`{key}:` is distillctl's own layout, not read in a file in MaxText's layout (as this one is)",
        f"write MaxText's keys instead: {NATIVE_BLOCKS[key]}",
    )


def _unknown(loc: Loc, key: str, known: set[str]) -> Problem:
    # MaxText has hundreds of keys we do not use; only a near-miss of one we do use is treated as a typo.
    typo_budget = 1 if len(key) < 8 else 2
    close = [k for k in get_close_matches(key, sorted(known), n=3, cutoff=0.6) if _edit_distance(key, k) <= typo_budget]
    if close or key.startswith("distill_"):
        return Problem(
            loc,
            "unknown_key",
            f"unknown key {key!r}",
            f"did you mean {close[0]!r}?"
            if close
            else "this distill_* key is not one distillctl knows; see the guide's configuration surface",
        )
    if key in STATED_IN_NATIVE:  # the trainer computes it; this layout has no key distillctl reads for it
        return Problem(
            loc,
            "maxtext_key_ignored",
            f"MaxText key {key!r} is not read from this layout: the model's constant comes from its registry model",
            f"to change it, keep the spec in distillctl's layout and state `{STATED_IN_NATIVE[key]}` in the model block",
            severity="warning",
        )
    return Problem(
        loc,
        "maxtext_key_ignored",
        f"key {key!r} is not one distillctl's trainer uses (MaxText has many it does not): ignored",
        "remove it if it was meant for something else",
        severity="warning",
    )


# Registry models MaxText has no model config for (its src/MaxText/configs/models/): a file naming one is distillctl's
# alone; MaxText given it would build another model.
NO_MAXTEXT_CONFIG = frozenset({"tiny-2l", "tiny-4l", "mid-2l", "mid-4l", "llama3.2-1b", "llama3.2-3b", "gemma3-1b"})


# MaxText keys for constants a native model block states (MaxText writes 0 for "none", which the block spells `none`).
STATED_IN_NATIVE = {
    "rope_type": "rope_scaling",
    "query_pre_attn_scalar": "query_pre_attn_scalar",
}


DATA_PATH_KEY_BY_SOURCE = {"hf": "hf_path", "grain": "grain_train_files"}


# distillctl's keys a MaxText-layout file may hold, never written into one: MaxText's config refuses unknown keys
# (`top_k` is save_top_k_teacher_logits.py's flag; its trainer reads k from the cache).
READ_NOT_WRITTEN = ("top_k",)


class NotRepresentable(ValueError):
    """A spec feature MaxText's distillation config has no key for."""


def dropped_settings(native: dict[str, Any], back: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted settings of a (JSON-dumped) native spec that its MaxText form does not carry: where `back`
    (that form read again and validated, dumped alike) differs. Blocks that differ whole are named once."""
    out = []
    for key in dict.fromkeys([*native, *back]):
        mine, theirs = native.get(key), back.get(key)
        if mine == theirs:
            continue
        if isinstance(mine, dict) and isinstance(theirs, dict):
            out += dropped_settings(mine, theirs, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def to_maxtext(native: dict[str, Any]) -> dict[str, Any]:
    """A MaxText `distillation.yml` mapping for a (JSON-dumped) native spec; inverse of `from_maxtext` for what
    MaxText has keys for (`dropped_settings` names the rest)."""
    mode = native.get("mode", "distill")
    if mode != "distill":
        raise NotRepresentable(
            f"MaxText's distillation config describes distillation; a `mode: {mode}` spec has no equivalent"
        )
    for side in ("student", "teacher"):
        block = native.get(side) or {}
        if block.get("init", "random") != "random" or block.get("drop_layers"):
            raise NotRepresentable(
                f"MaxText has no key for initialising the {side} from the teacher (init/drop_layers)"
            )
    flat: dict[str, Any] = {"base_config": "base.yml"}
    for side, block_name in (("student", "student_overrides"), ("teacher", "teacher_overrides")):
        block = native.get(side) or {}
        flat[block_name] = {
            key: 0.0 if key in SOFT_CAPS and block[field] == "none" else block[field]
            for key, field in MODEL_KEYS.items()
            if block.get(field) is not None
        }
    if any(key in MODEL_CONFIG_KEYS for block in OVERRIDE_BLOCKS for key in flat[block]):
        # MaxText refuses a key its model file sets that an override sets again ("overridden by both model config
        # and CLI/kwargs") unless told: a pruned student's base_num_decoder_layers is one
        flat["override_model_config"] = True
    for key, loc in TOP_LEVEL.items():
        if key in READ_NOT_WRITTEN:
            continue
        value: Any = native
        for part in loc:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            flat[key] = value
    from distillspec.checks import STREAMED_SOURCES

    if (native.get("data") or {}).get("source") in STREAMED_SOURCES:
        # read in file order but in a shuffle_window, which has no MaxText key: read back, the seed changes nothing
        flat.pop("data_shuffle_seed", None)
    if isinstance(flat.get("distill_layer_indices"), str):
        del flat["distill_layer_indices"]  # an unresolved preset (β = 0: unused); MaxText takes a list of layers
    if "per_device_batch_size" in flat:  # 2, as MaxText's files write it (2.0 read the same)
        flat["per_device_batch_size"] = integral(flat["per_device_batch_size"])
    checkpoint = native.get("checkpoint") or {}
    if checkpoint.get("enabled", True) and checkpoint.get("every_steps") is None and native.get("steps"):
        flat["checkpoint_period"] = native["steps"]  # the end only: MaxText's period is a number (10000 unset)
    if (native.get("optimizer") or {}).get("grad_clip_norm", 1.0) is None:
        flat[CLIPPING] = 0.0  # clipping off, as MaxText says it
    remat = (native.get("student") or {}).get("remat")
    if remat not in (None, "full"):  # full is MaxText's default too
        flat[REMAT_KEY] = {v: k for k, v in REMAT_POLICIES.items()}[remat]
    evaluation = native.get("eval") or {}
    data = native.get("data") or {}
    builder = {source: name for name, source in HF_FILE_BUILDERS.items()}.get(data.get("source"))
    # a held-out path has a key beside MaxText's files (hf_eval_files); beside others the eval block is dropped
    if evaluation and (evaluation.get("path") is None or builder is not None):
        for key, (_, field) in EVAL_KEYS.items():
            if evaluation.get(field) is not None:
                flat[key] = evaluation[field]
        if evaluation.get("path") is not None:
            flat["hf_eval_files"] = evaluation["path"]
    if builder is not None and data.get("path") is not None:  # MaxText's own spelling of JSONL and Parquet files
        flat.update({"dataset_type": "hf", "hf_path": builder, "hf_train_files": data["path"]})
    elif data.get("path") is not None:
        flat[DATA_PATH_KEY_BY_SOURCE.get(data.get("source"), "dataset_path")] = data["path"]
    if data.get("text_column") not in (None, "text") and not data.get("prompt_column"):
        flat["train_data_columns"] = [data["text_column"]]  # MaxText's default is [text]
    if flat.get("tokenizer_path") not in (None, "byte") and not str(flat["tokenizer_path"]).endswith(".model"):
        flat["tokenizer_type"] = "huggingface"  # a tokenizer.json; MaxText's default reads SentencePiece models
    return flat
