"""What a logit cache's `manifest.json` records, and what a spec that reads the cache needs of it, without JAX.

A `mode: teacher_logits` run writes the manifest (`trainer.logit_cache`); an `offline_data_dir` run checks it before
training, `validate --check-paths` checks the spec's cache before launch, and a sweep checks each offline point
against the cache prerequisite that will write it. All three compare through `differences` here, so they agree.

The entries a spec is compared on: the teacher (its resolved block minus layout-only fields), the tokenizer (by the
sha256 of its file: a copy elsewhere is the same tokenizer), k, the vocabulary, the data block (as checkpoints
record it, without the tokenizer) and the sequence length; then the micro-batches it holds against the ones the
spec reads (`steps × gradient_accumulation_steps`). Rows per micro-batch and processes are the trainer's to check:
they depend on the devices a run gets.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from distillspec.config import DistillSpec
from distillspec.places import place

FORMAT = "distillctl.teacher_logits/v1"
MANIFEST = "manifest.json"
CACHE_FOLDER = "logits"  # under a teacher_logits run's directory
# Teacher fields that do not change its outputs (how it is laid out and recomputed, how a student starts from it).
_NOT_IDENTITY = ("scan_layers", "enable_nnx", "remat", "init", "drop_layers")
HINT = (
    "write a cache for this spec (a `mode: teacher_logits` run with the same teacher, data, tokenizer and top_k), "
    "or point offline_data_dir at the cache that matches"
)


def missing(directory: str, run_folder: bool) -> tuple[str, str]:
    """(message, hint) for an `offline_data_dir` without a manifest; `run_folder`: the directory is the
    teacher_logits run's own folder, whose `logits` folder holds one."""
    path = f"{directory.rstrip('/')}/{MANIFEST}"
    if run_folder:
        return (
            f"offline_data_dir {directory} holds no logit cache: it is the run folder of a teacher_logits run",
            f"point offline_data_dir at its cache: {directory.rstrip('/')}/{CACHE_FOLDER}",
        )
    return (
        f"offline_data_dir {directory} holds no logit cache: {path} does not exist",
        "point offline_data_dir at the `logits` folder of a finished `mode: teacher_logits` run (its manifest is "
        "written last, so a cache still being written or stopped early has none; a sweep prerequisite's exists "
        "only once it has run)",
    )


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def teacher_identity(spec: DistillSpec) -> dict[str, Any]:
    """The teacher as the cache depends on it: its resolved block minus layout-only fields, and its sha256."""
    block = {k: v for k, v in spec.resolved_block("teacher").items() if k not in _NOT_IDENTITY}
    return {"block": block, "sha256": _sha256(block)}


def data_identity(spec: DistillSpec) -> dict[str, Any]:
    """The data block as checkpoints record it, without its tokenizer (compared separately, by content)."""
    return {k: v for k, v in spec.data.recorded().items() if k != "tokenizer"}


def expected(spec: DistillSpec, tokenizer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest entries a cache needs to fit `spec` (a writer's or a reader's: they share teacher, data and k);
    `tokenizer` (`{"name", "sha256"}`) when the caller read it, else the tokenizer is not compared."""
    entries = {
        "teacher": teacher_identity(spec),
        "top_k": spec.top_k,  # an offline run without one reads the cache's (MaxText's files have no top_k key)
        "vocab_size": spec.teacher.shape().vocab_size if spec.teacher is not None else None,
        "data": data_identity(spec),
        "max_target_length": spec.batch.max_target_length,
    }
    if spec.top_k is None:
        del entries["top_k"]
    return entries if tokenizer is None else {**entries, "tokenizer": tokenizer}


def micro_batches_needed(spec: DistillSpec) -> int:
    return spec.steps * spec.batch.gradient_accumulation_steps


def differences(manifest: dict[str, Any], wanted: dict[str, Any]) -> tuple[list[str], list[str]]:
    """`(entries that differ, "key.path: cache X, spec Y" lines)` between a manifest and `expected(...)`."""
    differ = [name for name, value in wanted.items() if not same(name, manifest.get(name), value)]
    found = [line for name in differ for line in _lines(name, manifest.get(name), wanted[name])]
    # The block's hash read as a hash of the weights: the block's own differences say it all.
    found = [line for line in found if not line.startswith("teacher.sha256:")] or found
    return differ, found


def mismatch(where: str, manifest: dict[str, Any], spec: DistillSpec, tokenizer: dict | None = None):
    """(message, hint) when the cache `where` names (its manifest's path, or the prerequisite that writes it) was
    made for other settings than `spec`'s, else None."""
    differ, found = differences(manifest, expected(spec, tokenizer))
    if not differ:
        return None
    shown = "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "")
    return f"the logit cache {where} was made with another {', '.join(differ)} than this spec's ({shown})", HINT


def too_short(where: str, manifest: dict[str, Any], spec: DistillSpec) -> tuple[str, str] | None:
    """(message, hint) when the cache holds fewer micro-batches than `spec` reads, else None."""
    needed = micro_batches_needed(spec)
    held = manifest.get("micro_batches")
    if not isinstance(held, int) or isinstance(held, bool):  # a damaged or hand-edited manifest: exit 70 (a bug)
        return (
            f"the logit cache {where} says it holds {held!r} micro-batches, not a number: its manifest is damaged",
            "write the cache again (a `mode: teacher_logits` run)",
        )
    if held >= needed:
        return None
    return (
        f"the logit cache {where} holds {manifest.get('micro_batches')} micro-batches; this run needs {needed} "
        "(steps × gradient_accumulation_steps)",
        "lower steps, or write the cache with at least as many steps",
    )


def same(name: str, cache: Any, spec: Any) -> bool:
    """Whether the manifest's `name` entry fits the spec's. A tokenizer by its content: a copy of the same
    tokenizer.json at another path is the same tokenizer (`byte` by name). Paths as the same place written two
    ways (`runs/t/`, `./runs/t`) are the same path: the teacher's block is compared with its paths normalised, not
    by its hash."""
    if name == "tokenizer" and isinstance(cache, dict):
        if spec["sha256"] is None:
            return cache.get("sha256") is None and cache.get("name") == spec["name"]
        return cache.get("sha256") == spec["sha256"]
    if isinstance(cache, dict) and isinstance(spec, dict):
        # As written, or (a relative path beside its absolute form, read from the same directory) as placed here.
        return any(_paths_normalised(cache, placed) == _paths_normalised(spec, placed) for placed in (False, True))
    return cache == spec


def _paths_normalised(value: Any, placed: bool = False) -> Any:
    """`value` with every `...path` string normalised (`placed`: local ones made absolute from the current
    directory) and the teacher's `sha256` (of the paths as written) left out."""
    if not isinstance(value, dict):
        return value
    return {
        key: place(item, absolute=placed)
        if key.endswith("path") and isinstance(item, str)
        else _paths_normalised(item, placed)
        for key, item in value.items()
        if key != "sha256"
    }


def _lines(where: str, cache: Any, spec: Any) -> list[str]:
    """`key.path: cache X, spec Y` for each leaf that differs (a whole block printed hid the one key that did)."""
    if isinstance(cache, dict) and isinstance(spec, dict):
        return [
            line
            for key in sorted(set(cache) | set(spec), key=str)
            if cache.get(key) != spec.get(key)
            for line in _lines(f"{where}.{key}", cache.get(key), spec.get(key))
        ]
    return [f"{where}: cache {_short(cache)}, spec {_short(spec)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
