"""A run's trained student out as a Hugging Face folder that transformers loads as is, or as a MaxText checkpoint.

`export_run(run_dir, out_dir)` reads the run's `spec.json` (which model the student is, which tokenizer the run
used) and its latest checkpoint's parameters, and writes `out_dir` with config.json, model.safetensors and, when
the run had a tokenizer, the tokenizer files. `export_params` does the same from parameters in memory (the
trainer's `checkpoint.export: hf`, at the end of a run).

Nothing is half-written: the folder is assembled in a temporary sibling (local) or a local temporary folder
(fsspec URLs such as gs://) and only then renamed (local) or uploaded (remote) into place; an `out_dir` that
exists and is not empty is refused before any work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import fsspec
from safetensors import SafetensorError

from distillspec.config import DistillSpec
from distillspec.hf_config import language_config
from trainer.exit_codes import OutputNotWritable, UserError

FORMATS = ("hf", "maxtext")
# The files of a Hugging Face tokenizer that sit next to its tokenizer.json and are copied with it when present
# (transformers 4.4x and later keep a chat template in its own file: without it `apply_chat_template` fails).
TOKENIZER_COMPANIONS = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
# A model's own file (its eos ids, sampling defaults): copied from the folder config.json's fields come from, not
# from the tokenizer's (which can be another model's).
GENERATION_CONFIG = "generation_config.json"


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export_run` read, and what the user should know about what it wrote."""

    params_dir: str
    notes: tuple[str, ...] = ()


def read_run_spec(run_dir: str) -> DistillSpec:
    """The resolved spec a run wrote (`<run_dir>/spec.json`); UserError when `run_dir` is not a run folder."""
    file = f"{run_dir.rstrip('/')}/spec.json"
    try:
        with fsspec.open(file, "r") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        fs, path = fsspec.core.url_to_fs(run_dir)
        why = "it has no spec.json" if fs.isdir(path) else ("it is a file" if fs.exists(path) else "no such folder")
        run = run_folder_above(run_dir)
        raise UserError(
            f"{run_dir} is not a run folder: {why}",
            f"pass the run folder above it: {run}"
            if run is not None
            else "pass the folder a run wrote (<output_dir>/<name>, with spec.json and checkpoints/ in it)",
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {file}: {e}", "pass the folder a run wrote") from None
    from pydantic import ValidationError

    try:
        return DistillSpec.model_validate(data)
    except ValidationError as e:
        raise UserError(
            f"{file} is not a spec this version reads: {e.errors()[0]['msg']} at "
            + ".".join(str(x) for x in e.errors()[0]["loc"]),
            "pass a run folder written by this version of distillctl",
        ) from None


def run_folder_above(path: str) -> str | None:
    """The run folder a path inside it names (`runs/x/checkpoints`, `.../checkpoints/300`, `.../300/params`), when
    that folder holds a spec.json; None otherwise."""
    parts = path.rstrip("/").split("/")
    for depth in (1, 2, 3):
        if len(parts) > depth and "checkpoints" == parts[-depth]:
            above = "/".join(parts[:-depth])
            try:
                fs, local = fsspec.core.url_to_fs(f"{above}/spec.json")
                return above if fs.exists(local) else None
            except (OSError, ValueError):
                return None
    return None


def export_run(run_dir: str, out_dir: str, *, to: str = "hf", dtype: str | None = None) -> Exported:
    """Write the student of the run at `run_dir` (its latest checkpoint) to `out_dir` in format `to`; returns the
    checkpoint directory that was read, with notes (a run not finished, metadata that could not be carried).
    `dtype` (float32 or bfloat16) defaults to the student's weight_dtype.

    Raises UserError for a folder that is not a run, a run without a finished checkpoint, or an `out_dir` that
    exists and is not empty; OutputNotWritable when `out_dir` cannot be written. Nothing is left at `out_dir` then.
    """
    if to not in FORMATS:
        raise UserError(f"export format {to!r} is not supported", f"use one of: {', '.join(FORMATS)}")
    spec = read_run_spec(run_dir)
    if spec.mode == "teacher_logits":  # "no checkpoint ... checkpoint.enabled: true" sent people to a setting
        teacher = spec.teacher.load_parameters_path if spec.teacher is not None else None
        teacher_run = run_folder_above(teacher) if teacher else None
        raise UserError(
            f"the run at {run_dir} is a teacher_logits run: it wrote the teacher's top-k to {run_dir.rstrip('/')}/logits "
            "and trains no model, so there is nothing to export",
            f"export the teacher's own run: distillctl export {teacher_run} -o DIR"
            if teacher_run
            else (
                f"the teacher it read is {teacher} (a checkpoint already: load it from there)"
                if teacher
                else "export a run that trains a student (mode distill or pretrain)"
            ),
        )
    _check_destination(out_dir)
    checkpoints_dir = f"{run_dir.rstrip('/')}/checkpoints"
    if (
        "://" not in out_dir
        and "://" not in run_dir
        and os.path.realpath(out_dir).startswith(os.path.realpath(checkpoints_dir) + os.sep)
    ):  # a model folder among the run's checkpoint steps, which orbax and resume read
        raise UserError(
            f"{out_dir} is inside the run's checkpoints folder ({checkpoints_dir})",
            f"export somewhere else, e.g. {run_dir.rstrip('/')}/export/{to}",
        )
    import jax
    from flax import nnx

    from trainer.checkpointing import resolve_params_dir, restore_params
    from trainer.models import ModelConfig, abstract_model

    refused = maxtext_refusal(spec) if to == "maxtext" else None
    if refused is not None:  # before the checkpoint is read
        raise UserError(*refused)
    checkpoints = f"{run_dir.rstrip('/')}/checkpoints"
    # The checkpoint holds the student's float32 master weights: restored as weight_dtype (bfloat16) they were
    # rounded before `dtype` applied, and a `--dtype float32` export held bfloat16 values labelled float32.
    config = ModelConfig.from_spec(spec.student_block(), trained=True)
    _, abstract_state = abstract_model(config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(abstract_state)
    )
    for attempt in range(ROTATION_ATTEMPTS):
        try:
            params_dir = str(resolve_params_dir(checkpoints))
        except UserError as e:
            raise UserError(
                f"the run at {run_dir} has no checkpoint to export ({e.message})",
                "export a run that saved a checkpoint (checkpoint.enabled: true; one is written at the end of the run)",
            ) from None
        try:
            params = restore_params(params_dir, abstract)
            break
        except (UserError, OSError):
            # A run still training deletes its older steps (checkpoint.keep): the step read may have gone while it
            # was read, healthy, and a newer one is the latest now. It was called damaged ("move it aside").
            if attempt + 1 == ROTATION_ATTEMPTS or _exists(params_dir):
                raise
    notes = [note] if (note := _unfinished(run_dir, params_dir, spec)) else []
    if to == "maxtext":
        write_maxtext(params, spec, out_dir, dtype=dtype)
    else:
        notes += write_hf(params, spec, out_dir, dtype=dtype)
    return Exported(params_dir, tuple(notes))


ROTATION_ATTEMPTS = 3  # reads of the latest step while a training run replaces it


def _unfinished(run_dir: str, params_dir: str, spec: DistillSpec) -> str | None:
    """A note when the run has not finished: the export is of the step its latest checkpoint holds."""
    try:
        with fsspec.open(f"{run_dir.rstrip('/')}/summary.json", "r") as f:
            status = json.load(f).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status == "succeeded":
        return None
    step = params_dir.rstrip("/").rsplit("/", 2)[-2]  # <run>/checkpoints/<step>/params
    return (
        f"the run has not finished ({status or 'still training, or stopped before its first summary'}): this is its "
        f"checkpoint of step {step} of {spec.steps}"
    )


def export_params(params: Any, spec: DistillSpec, out_dir: str, *, dtype: str | None = None) -> list[str]:
    """Write in-memory student parameters (a pure dict of arrays, host-readable) like `export_run` does."""
    _check_destination(out_dir)
    return write_hf(params, spec, out_dir, dtype=dtype)


def write_hf(
    params: Any, spec: DistillSpec, out_dir: str, *, dtype: str | None = None, replace: bool = False
) -> list[str]:
    """Assemble the Hugging Face folder in a temporary place, then move (local) or upload (URL) it to `out_dir`;
    with `replace`, a folder already at `out_dir` is replaced once the new one is complete. Returns notes on what
    the folder could not say (config.json fields no source gave, a layer layout older transformers misread)."""
    from trainer.checkpoints import hf

    dtype = dtype or spec.student.weight_dtype
    if dtype not in ("float32", "bfloat16"):
        raise UserError(f"export dtype {dtype!r} is not one of float32, bfloat16", "use float32 or bfloat16")
    remote = "://" in out_dir
    staging_root, made = _staging_root(out_dir)
    staging = os.path.join(staging_root, "hf")
    shape = spec.student_block().shape()
    carried, source, notes = carried_config(spec, shape.family)
    files = tokenizer_files(spec)
    if source is not None and _is_file(f"{source.rstrip('/')}/{GENERATION_CONFIG}"):
        files[GENERATION_CONFIG] = f"{source.rstrip('/')}/{GENERATION_CONFIG}"
    if shape.family == "gemma3" and shape.global_layers is not None:
        notes.append(
            f"the student's global layers {list(shape.global_layers)} are not every {shape.global_every}th: "
            "config.json gives them as layer_types, which transformers reads from 4.53 on (earlier versions "
            "compute another model from sliding_window_pattern)"
        )
    try:
        try:
            hf.save(params, shape, staging, scanned=spec.student.scan_layers, dtype=dtype, extra=carried)
        except (OSError, SafetensorError) as e:  # safetensors' own for a write the file system refuses (full)
            raise OutputNotWritable(out_dir, e) from None
        for name, source_file in files.items():
            _copy_input(source_file, os.path.join(staging, name), out_dir)
        if remote:
            _upload(staging, out_dir)
        else:
            _move_into_place(staging, staging_root, out_dir, replace)
    finally:
        _cleaned(staging_root, made)
    return notes


def _copy_input(source: str, target: str, out_dir: str) -> None:
    """Copy one of the run's files into the export: a source that cannot be read is the run's problem (its spec
    names a path that is not there from here), not the output folder's."""
    try:
        src = fsspec.open(source, "rb").open()
    except OSError as e:
        raise UserError(
            f"cannot read {source}, a file the run's spec.json names: {getattr(e, 'strerror', None) or e}",
            "a relative path is relative to where the run trained: export from that directory, or move the file "
            "back to where the run read it",
        ) from None
    try:
        with src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except OSError as e:
        raise OutputNotWritable(out_dir, e) from None


def _is_file(path: str) -> bool:
    try:
        fs, root = fsspec.core.url_to_fs(path)
        return fs.isfile(root)
    except (OSError, ValueError, ImportError):
        return False


def maxtext_refusal(spec: DistillSpec) -> tuple[str, str] | None:
    """(message, hint) when MaxText would compute another model from this student's MaxText checkpoint: a pruned
    Gemma 3 whose global layers are not every 6th (MaxText takes a layer's attention kind from its index, with no
    setting for others: the checkpoint ran layers 3 and 8 with a sliding window and layer 5 as global, unsaid)."""
    shape = spec.student_block().shape()
    if shape.family != "gemma3" or shape.global_layers is None:
        return None
    return (
        f"the student's global layers {list(shape.global_layers)} are not every {shape.global_every}th: MaxText "
        "decides a Gemma 3 layer's attention kind by its index alone, so its MaxText checkpoint would compute "
        "another model",
        "export it to Hugging Face instead (--to hf, or checkpoint.export: hf; transformers reads its layer_types "
        f"from 4.53 on), or keep teacher layers whose global ones fall on every {shape.global_every}th",
    )


def write_maxtext(
    params: Any, spec: DistillSpec, out_dir: str, *, dtype: str | None = None, replace: bool = False
) -> None:
    """The student as a MaxText checkpoint (`out_dir/0/items`, scanned as the student is, and `out_dir/config.json`),
    assembled in a temporary place and then moved (local) or uploaded (URL) to `out_dir`; with `replace`, a
    checkpoint already at `out_dir` is replaced once the new one is complete. Orbax writes it from this one
    process: a multi-process run cannot call it from process 0 alone (`checkpoint.export: maxtext` is refused
    there before training)."""
    from trainer.checkpoints import maxtext

    dtype = dtype or spec.student.weight_dtype
    if dtype not in ("float32", "bfloat16"):
        raise UserError(f"export dtype {dtype!r} is not one of float32, bfloat16", "use float32 or bfloat16")
    refused = maxtext_refusal(spec)
    if refused is not None:
        raise UserError(*refused)
    remote = "://" in out_dir
    staging_root, made = _staging_root(out_dir)
    staging = os.path.join(staging_root, "maxtext")
    try:
        try:
            carried, _, _ = carried_config(spec, spec.student_block().shape().family)
            maxtext.save(
                params,
                spec.student_block().shape(),
                staging,
                scanned=spec.student.scan_layers,
                dtype=dtype,
                extra=carried,
            )
        except OSError as e:
            raise OutputNotWritable(out_dir, e) from None
        try:
            if remote:
                fs, root = fsspec.core.url_to_fs(out_dir)
                if replace and fs.exists(root):
                    fs.rm(root, recursive=True)
                fs.put(staging.rstrip("/") + "/", root.rstrip("/") + "/", recursive=True)
            else:
                _move_into_place(staging, staging_root, out_dir, replace)
        except OSError as e:
            raise OutputNotWritable(out_dir, e) from None
    finally:
        _cleaned(staging_root, made)


# config.json fields that the model's shape does not give, carried over from the checkpoint the student came
# from: without them transformers takes its defaults (a Llama's 2048 positions, other special-token ids).
CARRIED_CONFIG = ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")


def _carried_through(path: str, family: str, depth: int) -> tuple[dict[str, Any], str | None, list[str]] | None:
    """What a checkpoint that is not a Hugging Face folder carries of `CARRIED_CONFIG`: a MaxText checkpoint this
    tool exported keeps them in its config.json; a run's own checkpoints, what that run's spec carried (its
    positions and special tokens were dropped through either, and the round trip HF → MaxText → HF lost them)."""
    from distillspec import maxtext_checkpoint as mt

    if depth > 3:
        return None
    try:
        found = mt.read_checkpoint(path)
    except (mt.CheckpointError, OSError, ValueError):
        found = None
    if found is not None:
        try:
            with fsspec.open(mt.sidecar_config(found[0]), "r") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
        fields = {key: config[key] for key in CARRIED_CONFIG if key in config} if isinstance(config, dict) else {}
        return (fields, None, []) if fields else None
    run = run_folder_above(path)
    if run is None:
        return None
    try:
        earlier = read_run_spec(run)
    except UserError:
        return None
    fields, source, notes = carried_config(earlier, family, depth + 1)
    # What a Hugging Face folder or a MaxText export behind that run gave; not its own fallback (its training
    # length, said as "the length it trained on" of the run exported now).
    return (fields, source, notes) if source is not None or (fields and not notes) else None


def carried_config(spec: DistillSpec, family: str, depth: int = 0) -> tuple[dict[str, Any], str | None, list[str]]:
    """`(fields, folder, notes)`: `CARRIED_CONFIG` fields from the config.json of the Hugging Face folder the student
    was loaded from, else of the teacher's when it is of the student's family (a pruned or distilled student shares
    its tokenizer and positions), and that folder; empty when neither is a Hugging Face folder. A note when such a
    folder cannot be found from here (a relative path, the folder moved): transformers then takes its defaults."""
    from trainer.checkpoints import hf

    notes = []
    for model in (spec.student, spec.teacher):
        path = model.load_parameters_path if model is not None else None
        if not path or model.shape().family != family:
            continue
        carried = _carried_through(path, family, depth)
        if carried is not None:  # a MaxText export's or a run's own checkpoint: what its source carried
            return carried
        try:
            if not hf.is_hf_folder(path):
                if not _exists(path):
                    notes.append(
                        f"{path} (the {'student' if model is spec.student else 'teacher'}'s checkpoint) is not there "
                        f"from here: config.json leaves out {', '.join(CARRIED_CONFIG)} (transformers takes its "
                        "defaults, e.g. 2048 positions); export from the directory the run trained in"
                    )
                continue
            config = language_config(hf.read_config(path))  # an image-text Gemma 3 keeps them in text_config
        except (UserError, OSError, ValueError):
            continue
        return {key: config[key] for key in CARRIED_CONFIG if key in config}, path, []
    if notes:
        return {}, None, notes
    # No folder of the student's family behind it (a random student of another family than its teacher): the
    # positions it trained on are what it knows; transformers' default (a Llama's 2048) may be fewer or more.
    length = spec.batch.max_target_length
    note = (
        f"no Hugging Face folder of the student's family ({family}) to take {', '.join(CARRIED_CONFIG)} from: "
        f"config.json sets max_position_embeddings to {length}, the length it trained on, and no special-token ids "
        "(set bos/eos/pad_token_id in config.json and generation_config.json if generation needs them)"
    )
    return {"max_position_embeddings": length}, None, [note]


def _exists(path: str) -> bool:
    try:
        fs, root = fsspec.core.url_to_fs(path)
        return fs.exists(root)
    except (OSError, ValueError, ImportError):
        return True  # cannot tell: say nothing


def tokenizer_files(spec: DistillSpec) -> dict[str, str]:
    """`{name in the export: source path}` of the run's tokenizer: its tokenizer.json and the companion files next
    to it. Empty for the byte tokenizer (nothing transformers could load)."""
    tokenizer = spec.data.tokenizer
    if tokenizer == "byte":
        return {}
    out = {"tokenizer.json": tokenizer}
    folder = tokenizer.rsplit("/", 1)[0] if "/" in tokenizer else "."
    for name in TOKENIZER_COMPANIONS:
        candidate = f"{folder}/{name}"
        try:
            fs, path = fsspec.core.url_to_fs(candidate)
            if fs.isfile(path):
                out[name] = candidate
        except (OSError, ValueError, ImportError):
            continue
    return out


def _check_destination(out_dir: str) -> None:
    if not out_dir.strip():
        raise UserError("the output folder (-o) is empty", "name a new folder, e.g. -o exported/student")
    try:
        fs, path = fsspec.core.url_to_fs(out_dir)
        exists = fs.exists(path)
        if exists and not fs.isdir(path):
            raise UserError(f"{out_dir} exists and is not a directory", "choose another output folder (-o)")
        if exists and fs.ls(path):
            raise UserError(
                f"{out_dir} already exists and is not empty", "choose a new output folder (-o), or remove that one"
            )
    except (OSError, ValueError, ImportError) as e:
        raise OutputNotWritable(out_dir, e) from None


def _staging_root(out_dir: str) -> tuple[str, str | None]:
    """A temporary folder to assemble an export in: beside `out_dir` when it is local (so the final move is a
    rename), in the system's temporary folder for a URL; and the outermost parent folder it had to create (removed
    again by `_cleaned` unless the export landed in it)."""
    try:
        if "://" in out_dir:
            return tempfile.mkdtemp(prefix="distillctl-export-"), None
        parent = os.path.dirname(os.path.abspath(out_dir))
        made = parent
        while not os.path.exists(os.path.dirname(made)) and os.path.dirname(made) != made:
            made = os.path.dirname(made)
        made = None if os.path.exists(parent) else made
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir.rstrip('/'))}.partial-", dir=parent), made
    except OSError as e:
        raise OutputNotWritable(out_dir, e) from None


def _cleaned(staging_root: str, made: str | None) -> None:
    """Remove the staging folder, and the parent folders made for the export when nothing landed in them (a
    failed export wrote nothing, not even the folders above -o)."""
    shutil.rmtree(staging_root, ignore_errors=True)
    if made is not None and not any(files for _, _, files in os.walk(made)):
        shutil.rmtree(made, ignore_errors=True)


def _move_into_place(staging: str, staging_root: str, out_dir: str, replace: bool) -> None:
    """Rename the finished folder to local `out_dir` (atomic; replaces an empty directory); with `replace`, what was
    there is moved into the staging folder first, to be removed with it."""
    try:
        target = os.path.abspath(out_dir)
        if replace and os.path.isdir(target):
            os.rename(target, os.path.join(staging_root, "old"))
        os.rename(staging, target)
    except OSError as e:
        raise OutputNotWritable(out_dir, e) from None


def _upload(staging: str, out_dir: str) -> None:
    """Copy the finished folder to a URL, config.json last, so a reader that sees config.json sees a whole model."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    names = sorted(os.listdir(staging), key=lambda n: n == "config.json")
    try:
        fs.makedirs(root, exist_ok=True)
        for name in names:
            fs.put_file(os.path.join(staging, name), f"{root.rstrip('/')}/{name}")
    except OSError as e:
        for name in names:  # leave nothing half-written behind
            try:
                fs.rm_file(f"{root.rstrip('/')}/{name}")
            except OSError:
                pass
        raise OutputNotWritable(out_dir, e) from None
