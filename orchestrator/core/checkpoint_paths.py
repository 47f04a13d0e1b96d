"""`distillctl validate --check-paths`: before any TPU time is spent, each `load_parameters_path` is looked at
(its config, never its tensors) and compared with the spec's model.

A Hugging Face folder is read through its `config.json`; this trainer's own checkpoint through the `spec.json` of
the run that wrote it (found above `checkpoints/`, a step folder or `params`); a MaxText checkpoint (`…/<step>/items`,
its step folder or root) through its tensors' shapes (storage metadata, never values), every tensor of another shape
named. Reading is injected (`read_text(path) -> text or None when absent`; `read_maxtext(path) -> (items folder,
Orbax metadata, tensor shapes) or None when no MaxText checkpoint is there`), so the checks are pure and work for
local paths and gs:// alike.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from distillspec import hf_tensors
from distillspec import logit_cache_manifest as cache
from distillspec import maxtext_checkpoint as mt
from distillspec.checks import record_format_suffix
from distillspec.config import DOCUMENT_SOURCES, DistillSpec, ModelSpec
from distillspec.hf_config import (
    CONFIG,
    HUB_ID,
    INDEX,
    SINGLE,
    ConfigError,
    beyond_max_position,
    folder_tokenizers,
    hub_download_hint,
    mismatch_hint,
    shape_from_config,
    shape_mismatches,
    tokenizer_difference,
    tokenizer_files,
    tokenizer_mismatch,
    tokenizer_size,
    unexpanded_home,
    weights_missing,
)
from distillspec.problems import Problem
from distillspec.registry import ModelShape

FILE_SOURCES = ("text", "tokens", *DOCUMENT_SOURCES)
ReadText = Callable[[str], "str | None"]
ReadMaxText = Callable[[str], "tuple[str, dict, dict] | None"]
CountFiles = Callable[[str], "int | None"]  # the files a data path names (a file, folder or glob); None: unknown
# The columns at a document path, for its source (`outputs.read_columns`): None when they cannot be learnt.
ReadColumns = Callable[[str, str], "Any | None"]
# A safetensors file's header (`{name: {dtype, shape, data_offsets}}`, `outputs.safetensors_header`): None when
# absent; `hf_config.ConfigError` when it is not a safetensors file, OSError when it cannot be read.
ReadHeader = Callable[[str], "dict | None"]
# The sha256 of a file's bytes (`outputs.file_sha256`): None when absent; OSError when there but unreadable.
Digest = Callable[[str], "str | None"]


def check_paths(
    spec: DistillSpec,
    read_text: ReadText,
    read_maxtext: ReadMaxText | None = None,
    count_files: CountFiles | None = None,
    read_columns: ReadColumns | None = None,
    digest: Digest | None = None,
    read_header: ReadHeader | None = None,
) -> list[Problem]:
    """Every problem with the spec's checkpoint paths: absent, unreadable, or a different model than the block's;
    a warning when a Hugging Face checkpoint was trained on fewer positions than batch.max_target_length; with
    `count_files`, a data or eval path that names no file; with `digest`, an offline cache's tokenizer compared by
    content; with `read_header`, a Hugging Face folder's tensors (names, shapes, dtypes) against the model. Raises
    `maxtext_checkpoint.MissingDependency` when
    reading a path needs a package that is not installed."""
    # One read per file: the tokenizer checks read the same tokenizer.json files (on an object store, each a request).
    read_text = functools.cache(read_text)
    problems = _data_problems(spec, count_files) if count_files is not None else []
    if read_columns is not None and not problems:
        problems += _column_problems(spec, read_columns)
    shapes: dict[str, tuple[ModelShape, ModelShape]] = {}  # each checkpoint's model and the block's, by side
    for side in ("teacher", "student"):
        # the student as built: a pruned Gemma 3 student's layer kinds come from the teacher
        model: ModelSpec | None = spec.student_block() if side == "student" else spec.teacher
        path = model.load_parameters_path if model is not None else None
        if not path or (side == "teacher" and spec.offline_data_dir and spec.mode == "distill"):
            continue  # an offline student loads no teacher: its block names the cache's (the manifest is checked)
        if side == "teacher" and spec.mode == "pretrain":
            continue  # not read (validate warns teacher_unused): its path was an error that stopped nothing
        loc = (side, "load_parameters_path")
        if read_maxtext is not None:
            try:
                got = read_maxtext(path)
            except mt.MissingDependency:
                raise  # the machine lacks a package: nothing the spec can change
            except mt.CheckpointError as e:
                problems.append(Problem(loc, "checkpoint_unreadable", e.message, e.hint))
                continue
            if got is not None:
                problems += _maxtext_problems(got, model, side, loc, read_text)
                continue
        try:
            found, where, config = _checkpoint_shape(path.rstrip("/"), read_text)
        except ConfigError as e:
            problems.append(Problem(loc, _config_code(e), e.message, e.hint))
            continue
        if found is None:
            problems.append(Problem(loc, "checkpoint_not_found", *_not_found(path)))
            continue
        weights = None  # a Hugging Face folder whose weights are all there: which save is read (single or index)
        if config is not None and count_files is not None:  # a Hugging Face folder: are its weights there?
            # Counted once (on an object store each is a listing): what weights are there, and whether both saves are.
            single, index = count_files(f"{path.rstrip('/')}/{SINGLE}"), count_files(f"{path.rstrip('/')}/{INDEX}")
            missing = _weights_missing(path.rstrip("/"), side, count_files, read_text, single=single, index=index)
            if missing is not None:
                problems.append(Problem(loc, "checkpoint_weights_missing", *missing))
            elif single or index:
                weights = SINGLE if single else INDEX
            if single and index:
                problems.append(
                    Problem(
                        loc,
                        "checkpoint_two_saves",
                        f"the {side} folder {path} holds both {SINGLE} and {INDEX} (one save copied over "
                        f"another?): {SINGLE} is read, as transformers reads it, and the index's shards are not",
                        "remove the files of the save you do not mean",
                        severity="warning",
                    )
                )
        expected = model.shape()
        shapes[side] = (found, expected)
        mismatches = shape_mismatches(found, expected)
        if mismatches:  # one problem, one hint: the hint lists every field to set (it was repeated per field)
            problems.append(
                Problem(
                    loc,
                    "checkpoint_mismatch",
                    f"{where} holds a different {side} model: {'; '.join(mismatches)}",
                    mismatch_hint(side, found, expected),
                )
            )
        elif weights is not None and read_header is not None:  # config.json fits: do the tensors?
            problems += _tensor_problems(path.rstrip("/"), weights, expected, loc, read_text, read_header)
        beyond = beyond_max_position(config or {}, where, spec.batch.max_target_length, side)
        if beyond is not None:
            problems.append(Problem(loc, "beyond_max_position", *beyond, severity="warning"))
    if len({found.vocab_size for found, _ in shapes.values()}) == 2:
        problems = [_two_vocabularies(p, shapes) for p in problems]
    problems += _cache_problems(spec, read_text, digest)
    return problems + _tokenizer_problems(spec, read_text) + _tokenizer_size_problems(spec, read_text)


def _two_vocabularies(problem: Problem, shapes: dict[str, tuple[ModelShape, ModelShape]]) -> Problem:
    """A vocabulary mismatch when the two checkpoints' vocabularies differ: no vocab_size fits both, and the hint
    to set both sides to one checkpoint's (Gemma 3 4B's 262208 rows against 1B's 262144) sent the user back and
    forth between the two errors."""
    if problem.code != "checkpoint_mismatch" or "vocab_size: expected" not in problem.message:
        return problem
    rows = {side: found.vocab_size for side, (found, _) in shapes.items()}
    big, small = sorted(rows, key=rows.get, reverse=True)
    hint = (
        f"the two checkpoints' vocabularies differ ({big} {rows[big]:,} rows, {small} {rows[small]:,}) and the "
        f"models share one: when the {big}'s extra rows are tokens the data never holds (image-text Gemma 3's are its "
        f"image token and padding), save a copy of the {big} with model.resize_token_embeddings({rows[small]}) and "
        f"save_pretrained, point {big}.load_parameters_path at it, keep vocab_size {rows[small]} in both blocks, "
        f"and read the {small}'s tokenizer (data.tokenizer: its folder)"
    )
    found, expected = shapes.get(problem.loc[0], (None, None))
    rest = None if found is None else dataclasses.replace(found, vocab_size=expected.vocab_size)
    # other fields differ too: what the block must say of them
    if rest is not None and shape_mismatches(rest, expected):
        hint += f"; for the other fields: {mismatch_hint(problem.loc[0], rest, expected)}"
    return dataclasses.replace(problem, hint=hint)


def _cache_problems(spec: DistillSpec, read_text: ReadText, digest: Digest | None = None) -> list[Problem]:
    """The trainer's checks of an `offline_data_dir` before it trains: a finished cache (its manifest), made for
    this spec's teacher, data, k and (with `digest`) tokenizer, long enough for its steps (the batch's rows it
    checks at start: they need the devices)."""
    if not spec.offline_data_dir:
        return []
    loc = ("offline_data_dir",)
    path = f"{spec.offline_data_dir.rstrip('/')}/{cache.MANIFEST}"
    text = read_text(path)
    if text is None:
        nested = f"{spec.offline_data_dir.rstrip('/')}/{cache.CACHE_FOLDER}/{cache.MANIFEST}"
        return [
            Problem(loc, "logit_cache_missing", *cache.missing(spec.offline_data_dir, read_text(nested) is not None))
        ]
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != cache.FORMAT:
        return [
            Problem(
                loc,
                "logit_cache_unreadable",
                f"{path} is not a logit cache manifest of format {cache.FORMAT}",
                "write the cache again with this version's `mode: teacher_logits` run",
            )
        ]
    tokenizer = _run_tokenizer(spec, digest) if digest is not None else None
    problem = cache.mismatch(path, manifest, spec, tokenizer) or cache.too_short(path, manifest, spec)
    return [Problem(loc, "logit_cache_mismatch", *problem)] if problem else []


def _run_tokenizer(spec: DistillSpec, digest: Digest) -> dict[str, Any] | None:
    """The tokenizer the trainer resolves for `spec` as its logit cache records it (`{"name", "sha256"}`: the first
    of `tokenizer_files` that is there, else `byte`), or None when that cannot be told from here (a named one
    absent, said by the tokenizer checks; a file that cannot be read: the trainer compares it at start)."""
    if spec.data.tokenizer == "byte":
        return {"name": "byte", "sha256": None}
    try:
        for _, file in tokenizer_files(spec):
            sha256 = digest(file)
            if sha256 is not None:
                return {"name": file, "sha256": sha256}
            if spec.data.tokenizer is not None:
                return None
    except OSError:
        return None
    return {"name": "byte", "sha256": None}


def _weights_missing(
    path: str,
    side: str,
    count_files: CountFiles,
    read_text: ReadText | None = None,
    *,
    single: int | None,
    index: int | None,
) -> tuple[str, str] | None:
    """(message, hint) when the Hugging Face folder `path` has no weights the trainer reads, or an index naming
    shards that are not there (the trainer found them missing after start-up); None when it has them all, or the
    store cannot say. `single`, `index`: how many model.safetensors and index files it holds (None: unknown)."""
    if index and not single and read_text is not None:
        return _shards_missing(path, side, count_files, read_text)
    if single is None or index is None or single or index:
        return None
    return weights_missing(
        f"the {side} folder {path}",
        f"{side}.load_parameters_path",
        torch_weights=bool(count_files(f"{path}/*.bin") or count_files(f"{path}/*.pt*")),
        shards=count_files(f"{path}/*.safetensors") or 0,
    )


def _tensor_problems(
    path: str, weights: str, shape: ModelShape, loc: tuple[str, str], read_text: ReadText, read_header: ReadHeader
) -> list[Problem]:
    """The trainer's check of a Hugging Face folder's tensors before it loads them (exit 1 after start-up, on the
    slice), from the headers of the file it reads (`weights`: model.safetensors, else the index's shards)."""
    file = f"{path}/{weights}"
    try:
        if weights == SINGLE:
            header = read_header(file)
            if header is None:
                return []
            stored, headers = dict.fromkeys(header, file), {file: header}
        else:
            text = read_text(file)
            if text is None:
                return []
            stored = {name: f"{path}/{shard}" for name, shard in hf_tensors.weight_map(text, file).items()}
            headers = {}
            for file in sorted(set(stored.values())):
                found = read_header(file)
                if found is None:
                    return []  # a shard not there: said as checkpoint_weights_missing
                headers[file] = found
        names, where = hf_tensors.locate(stored)

        def header_of(name: str) -> tuple[tuple[int, ...], str]:
            return hf_tensors.tensor_header(headers[where[name]], where[name], names[name])

        found_mismatch = hf_tensors.mismatch(path, where, header_of, shape, names)
    except ConfigError as e:
        return [Problem(loc, _config_code(e), e.message, e.hint)]
    except OSError as e:
        return [Problem(loc, "checkpoint_unreadable", f"cannot read {file}: {e}", "check the path and its permissions")]
    return [Problem(loc, "checkpoint_tensor_mismatch", *found_mismatch)] if found_mismatch else []


def _shards_missing(path: str, side: str, count_files: CountFiles, read_text: ReadText) -> tuple[str, str] | None:
    text = read_text(f"{path}/{INDEX}")
    try:
        mapping = json.loads(text or "").get("weight_map")
        shards = sorted(set(mapping.values()))
    except (ValueError, AttributeError, TypeError):
        return None  # the trainer says what is wrong with the index itself
    absent = [shard for shard in shards if count_files(f"{path}/{shard}") == 0]
    if not absent:
        return None
    listed = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
    return (
        f"the {side} folder {path}: {INDEX} names {len(absent)} of its {len(shards)} shard(s) that are not there: "
        f"{listed}",
        "copy every shard the index lists into the folder (a download or copy cut short?)",
    )


def _not_found(path: str) -> tuple[str, str]:
    """(message, hint) for a checkpoint path with neither a config.json nor a run's spec.json: a `~` and a Hub id
    have fixes of their own."""
    message = f"nothing to load at {path}: no {CONFIG} (a Hugging Face folder) and no spec.json of a run above it"
    home = unexpanded_home(path)
    if home is not None:
        return f"{message}; {home[0]}", home[1]
    folder, _, name = path.rstrip("/").rpartition("/")
    if folder and (name in (CONFIG, INDEX) or name.endswith(".safetensors")):  # "no config.json" at config.json
        return (
            f"{path} names a file of a checkpoint folder, not the folder",
            f"point load_parameters_path at the folder, {folder}",
        )
    hint = "check the path; a prerequisite's checkpoint exists only once it has run"
    if HUB_ID.fullmatch(path):
        hint = f"{hint}; {hub_download_hint(path)}"
    return message, hint


def local_paths(spec: DistillSpec) -> list[str]:
    """The checkpoint, data, cache and tokenizer paths of `spec` that are not URLs (on a cluster, the pods')."""
    named = [spec.teacher.load_parameters_path if spec.teacher else None, spec.student.load_parameters_path]
    named += [path for _, path in data_paths(spec)] + [spec.offline_data_dir, spec.data.tokenizer]
    return [path for path in named if path and "://" not in path and path != "byte"]


def data_paths(spec: DistillSpec) -> list[tuple[tuple[str, str], str]]:
    """(location, path) of each file path the trainer reads documents or text from."""
    out = []
    if spec.data.source in FILE_SOURCES and spec.data.path and not spec.offline_data_dir:
        out.append((("data", "path"), spec.data.path))
    if spec.eval is not None and spec.eval.path:
        out.append((("eval", "path"), spec.eval.path))
    return out


def _data_problems(spec: DistillSpec, count_files: CountFiles) -> list[Problem]:
    """The trainer's "no files at data.path" (exit 1 at start), said before launch."""
    problems = []
    for loc, path in data_paths(spec):
        if count_files(path) == 0:
            problems.append(
                Problem(
                    loc,
                    "data_path_not_found",
                    f"{'.'.join(loc)} {path!r} names no file: the trainer would stop at start",
                    "check the path: a file, a folder (every file under it) or a glob, local or an fsspec URL"
                    + (
                        " (`[` and `]` are a glob's character class: write `[[]` for a `[` in a name)"
                        if "[" in path
                        else ""
                    ),
                )
            )
    return problems


def _records_as_text(spec: DistillSpec, read_columns: ReadColumns) -> list[Problem]:
    """`text_source_of_records` for a folder or glob of JSON Lines under `source: text` (validate warns of a path
    spelled `.jsonl`; a folder's name says nothing): the first file read as JSONL has columns."""
    path = spec.data.path
    if not path or record_format_suffix(path) is not None:
        return []  # none to read, or said by validate already
    columns = read_columns(path, "jsonl")
    if columns is None or columns.error or not columns.names:
        return []
    return [
        Problem(
            ("data", "source"),
            "text_source_of_records",
            f"data.source is text but {columns.file} holds JSON Lines records (columns {', '.join(columns.names[:5])}): "
            "they would be trained on as plain text, their syntax and column names included",
            "set data.source: jsonl (with text_column, or prompt_column and completion_column)",
            severity="warning",
        )
    ]


def _unreadable(loc, found, source: str) -> Problem:
    """`data_unreadable`: the first file at a data path is one the trainer refuses at start."""
    return Problem(
        loc,
        "data_unreadable",
        f"{found.file} {found.error}: the trainer would stop at start",
        f"check data.source ({source}) against the files {'.'.join(loc)} names",
    )


def _blank(loc, found) -> Problem:
    """`data_blank`: the text files at a data path hold whitespace alone (the trainer reads them: no error)."""
    return Problem(
        loc,
        "data_blank",
        f"{found.file} {found.blank}: the trainer would train on spaces and line breaks",
        f"check the files {'.'.join(loc)} names (written empty by a tool that adds a line break?)",
        severity="warning",
    )


def _column_problems(spec: DistillSpec, read_columns: ReadColumns) -> list[Problem]:
    """The trainer's "has no column" and "holds splits" (exit 1 at start), said before launch from the first
    file's columns."""
    if spec.data.source == "text":
        for loc, path in data_paths(spec):
            found = read_columns(path, "text")
            if found is not None and found.error:
                return [_unreadable(loc, found, spec.data.source)]
            if found is not None and found.blank:
                return [_blank(loc, found)]
        return _records_as_text(spec, read_columns)
    if spec.data.source not in DOCUMENT_SOURCES:
        return []
    data = spec.data
    wanted = (
        [("prompt_column", data.prompt_column), ("completion_column", data.completion_column)]
        if data.prompt_completion
        else [("text_column", data.text_column)]
    )
    problems = []
    for loc, path in data_paths(spec):
        found = read_columns(path, data.source)
        if found is None:
            continue
        if found.error:
            problems.append(_unreadable(loc, found, data.source))
            continue
        if found.splits:
            problems.append(
                Problem(
                    loc,
                    "dataset_has_splits",
                    f"{path} holds splits ({', '.join(found.splits)}), not one dataset: the trainer would stop at start",
                    f"point {'.'.join(loc)} at one split's folder, e.g. {path.rstrip('/')}/{found.splits[0]}",
                )
            )
            continue
        for field, column in wanted:
            if column not in found.names:
                problems.append(
                    Problem(
                        ("data", field),
                        "column_missing",
                        f"{found.file} has no column {column!r} (it has {', '.join(found.names) or 'none'}): the "
                        "trainer would stop at start",
                        f"set data.{field} to one of its columns",
                    )
                )
    return problems


def _tokenizer_problems(spec: DistillSpec, read_text: ReadText) -> list[Problem]:
    """The trainer's rule: a distillation whose two checkpoint folders hold different tokenizers is an error. A
    data.tokenizer overrides it (the folders may tokenise alike after all), but one that differs from a model
    folder's own is warned of: that model's checkpoint was trained on other ids."""
    if spec.mode == "pretrain" or spec.data.tokenizer == "byte":
        return []
    if spec.data.tokenizer is not None:
        return _named_tokenizer_problems(spec, read_text)
    files = [file for _, file in tokenizer_files(spec)]
    if len(files) != 2:  # a teacher and a student folder
        return []
    texts = [read_text(f) for f in files]
    if None in texts:
        return []
    mismatch = tokenizer_mismatch((files[0], files[1]), (texts[0], texts[1]))
    if mismatch is None:
        return []
    return [Problem(("student", "load_parameters_path"), "tokenizer_mismatch", *mismatch)]


def _named_tokenizer_problems(spec: DistillSpec, read_text: ReadText) -> list[Problem]:
    """A warning for each model folder whose tokenizer.json tokenises differently from data.tokenizer (writing the
    teacher's down switched the teacher/student check off, and a student of another mapping was distilled)."""
    [(_, named)] = tokenizer_files(spec)
    named_text = read_text(named)
    if named_text is None:
        return []  # said by _tokenizer_size_problems
    problems = []
    for side, own in folder_tokenizers(spec):
        own_text = read_text(own)
        difference = None if own_text is None else tokenizer_difference(named_text, own_text)
        if difference is not None and not difference.startswith("one of them"):  # not JSON: said as unreadable
            problems.append(
                Problem(
                    ("data", "tokenizer"),
                    "tokenizer_mismatch",
                    f"data.tokenizer {named} tokenises differently from the {side}'s own {own} (its {difference} differ): the "
                    f"{side}'s checkpoint was trained on that one's ids",
                    f"if the {side}'s folder holds a stale tokenizer.json and they tokenise alike after all, go on; "
                    "else point data.tokenizer at the tokenizer both models were trained with",
                    severity="warning",
                )
            )
    return problems


def _tokenizer_size_problems(spec: DistillSpec, read_text: ReadText) -> list[Problem]:
    """The trainer's rule at start: the tokenizer that reads text data (data.tokenizer, else the teacher's folder's
    tokenizer.json, else the student's) must not give ids beyond the models' vocabulary."""
    if spec.data.source not in ("text", *DOCUMENT_SOURCES):
        return []
    candidates = tokenizer_files(spec)
    vocab = spec.student.shape().vocab_size
    for loc, file in candidates:
        text = read_text(file)
        if text is None:
            # Named, the trainer reads it or stops at start; a model folder's may be absent.
            if loc == ("data", "tokenizer"):
                return [
                    Problem(
                        loc,
                        "tokenizer_not_found",
                        f"data.tokenizer {spec.data.tokenizer!r}: there is no {file}",
                        "point data.tokenizer at a tokenizer.json (or a folder holding one), or `byte` for bytes",
                    )
                ]
            continue
        try:
            json.loads(text)
        except ValueError as e:
            return [
                Problem(
                    loc,
                    "tokenizer_unreadable",
                    f"{file} is not a tokenizer.json: it is not JSON ({e})",
                    "point it at a Hugging Face tokenizer.json (written by tokenizer.save or save_pretrained)",
                )
            ]
        size = tokenizer_size(text)
        if size is not None and size > vocab:
            return [
                Problem(
                    loc,
                    "tokenizer_over_vocab",
                    f"the tokenizer {file} has {size} token ids; the models' vocab_size is {vocab}, so some of its "
                    "tokens would index past the embedding",
                    "use the tokenizer the models were trained with, or a vocab_size of at least the tokenizer's",
                )
            ]
        return []  # the first one found is the one the trainer reads
    return []


def _maxtext_problems(got: tuple, model: ModelSpec, side: str, loc, read_text: ReadText) -> list[Problem]:
    items, _, found = got
    hint = f"choose the registry model (and overrides) of that checkpoint in the {side} block"
    problems = [
        Problem(loc, "checkpoint_mismatch", f"{items} holds a different {side} model: {m}", hint)
        for m in mt.mismatches(found, model.shape())
    ]
    config_file = mt.sidecar_config(items)
    text = read_text(config_file)
    if text is not None:  # written by `distillctl export --to maxtext`: the model's constants
        try:
            found_shape = shape_from_config(_json(text, config_file), config_file)
        except ConfigError as e:
            return [*problems, Problem(loc, _config_code(e), e.message, e.hint)]
        mismatches = shape_mismatches(found_shape, model.shape())
        if mismatches:  # what the block must say, once; the tensors' mismatches follow from it and share the hint
            block_lines = mismatch_hint(side, found_shape, model.shape())
            return [dataclasses.replace(p, hint=block_lines) for p in problems] + [
                Problem(
                    loc,
                    "checkpoint_mismatch",
                    f"{config_file} holds a different {side} model: {'; '.join(mismatches)}",
                    block_lines,
                )
            ]
    return problems


def _checkpoint_shape(path: str, read_text: ReadText) -> tuple[ModelShape | None, str, dict | None]:
    """The model a checkpoint's own config describes, the file that said so (None: no config found), and that
    config.json when it is a Hugging Face folder's (None for a run's spec.json). Its layer layout does not matter:
    the trainer converts a run's checkpoint saved with the other scan_layers while loading it."""
    config_file = f"{path}/{CONFIG}"
    text = read_text(config_file)
    if text is not None:
        config = _json(text, config_file)
        return shape_from_config(config, config_file), config_file, config
    folder = path
    for _ in range(3):  # params -> step -> checkpoints -> run
        folder = folder.rsplit("/", 1)[0] if "/" in folder else "."
        spec_file = f"{folder}/spec.json"
        text = read_text(spec_file)
        if text is not None:
            data = _json(text, spec_file)
            try:
                student = ModelSpec.model_validate(data["student"])
                return student.shape(), spec_file, None
            except (KeyError, TypeError, ValueError) as e:
                raise ConfigError(
                    f"{spec_file} has no valid student block: {_reason(e)}", "is this a distillctl run?"
                ) from None
    return None, "", None


def _config_code(e: ConfigError) -> str:
    """A model the trainer does not build is not an unreadable file (the fix is another model, not a new copy)."""
    return "checkpoint_unsupported" if e.unsupported else "checkpoint_unreadable"


def _reason(e: Exception) -> str:
    """One line: pydantic's first error with its location (its text would end in a documentation URL)."""
    if isinstance(e, ValidationError):
        first = e.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where + ': ' if where else ''}{first['msg']}"
    return f"missing {e}" if isinstance(e, KeyError) else str(e)


def _json(text: str, file: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file} is not JSON: {e}", "the checkpoint folder is damaged") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} is not a JSON object", "the checkpoint folder is damaged")
    return data
