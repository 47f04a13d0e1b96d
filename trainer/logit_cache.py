"""The logit cache of offline distillation: a `mode: teacher_logits` run writes it, an `offline_data_dir` run reads it.

A `teacher_logits` run streams its corpus (`spec.data`, the rows a distillation run of the same batch shape would
train on) through the teacher once and keeps, per token:
- `topk_log_probs [R, T, k]` float32: the teacher's k largest log-probabilities at temperature 1 (log-softmax of
  its final logits, soft cap included), sorted from the largest; log-probabilities rather than raw logits because
  they need no normaliser to read and differ from the logits by one shift per row, which no softmax at any
  temperature sees;
- `topk_ids [R, T, k]` int32: their token ids;
- `tail_log_prob [R, T]` float32: the log of the probability mass outside the top-k (log-sum-exp of the other
  log-probabilities, not `log(1 − Σ top-k)`, so it stays exact when the tail is tiny; `-inf` when k = V);
- `target_log_prob [R, T]` float32: the teacher's log-probability of the next token (for `distill/teacher_loss`,
  whether or not it is in the top-k);
beside the packed rows themselves (`inputs`, `targets`, `mask` and, for documents, `segment_ids`), so the student
reads exactly the rows the teacher saw. `trainer.loss.offline_distillation_sums` is the loss that reads them.

Layout (`<run dir>/logits`): `manifest.json` (written last, by process 0, once every process has written its files:
a cache without it is incomplete) and one folder per process, `process-<i>-of-<n>/micro-<m>.npz`, one uncompressed
NumPy archive per micro-batch holding that process's rows. The manifest records what the cache is valid for: the
teacher's identity (its resolved model block: shape, dtypes, checkpoint path), the tokenizer (its name and the
sha256 of its file), k, the vocabulary, the data block, the batch shape and the process count. A reading run
whose spec differs in any of them gets a UserError naming the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np

from distillspec import logit_cache_manifest as contract
from distillspec.config import DistillSpec
from distillspec.logit_cache_manifest import FORMAT, MANIFEST, data_identity, teacher_identity
from trainer.exit_codes import UserError

ROW_KEYS = ("inputs", "targets", "mask", "segment_ids")
TEACHER_KEYS = ("topk_log_probs", "topk_ids", "tail_log_prob", "target_log_prob")


def shard_folder(index: int, count: int) -> str:
    return f"process-{index:05d}-of-{count:05d}"


def micro_file(index: int) -> str:
    return f"micro-{index:06d}.npz"


def tokenizer_identity(tokenizer: str) -> dict[str, Any]:
    """`{"name", "sha256"}`: the resolved tokenizer (`byte` or a tokenizer.json path) and its file's content hash
    (None for `byte`), so a copy of the same tokenizer elsewhere matches and an edited one does not."""
    if tokenizer == "byte":
        return {"name": "byte", "sha256": None}
    try:
        with fsspec.open(tokenizer, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        raise UserError(f"cannot read the tokenizer {tokenizer}: {e}") from None
    return {"name": tokenizer, "sha256": digest}


def manifest_for(
    spec: DistillSpec, *, rows: int, processes: int, micro_batches: int, teacher_step: str | None = None
) -> dict[str, Any]:
    """What a cache written by `spec` (mode teacher_logits; tokenizer resolved) holds and is valid for;
    `teacher_step`: the step folder a run's own teacher checkpoint resolved to (its latest when written)."""
    return {
        **({"teacher_step": teacher_step} if teacher_step is not None else {}),
        "format": FORMAT,
        "values": "log_softmax at temperature 1 (top-k), log of the remaining mass (tail)",
        "top_k": spec.top_k,
        "vocab_size": spec.teacher.shape().vocab_size,
        "teacher": teacher_identity(spec),
        "tokenizer": tokenizer_identity(spec.data.tokenizer or "byte"),
        "data": data_identity(spec),
        "max_target_length": spec.batch.max_target_length,
        "rows": rows,
        "processes": processes,
        "micro_batches": micro_batches,
        "files": "process-<i>-of-<n>/micro-<m>.npz",
    }


# --- the teacher's side --------------------------------------------------------------------------------------


def teacher_topk(logits, targets, k: int) -> dict[str, Any]:
    """The cached quantities of `logits [..., V]` (see the module docstring); pure JAX, run under jit."""
    import jax
    import jax.numpy as jnp

    from trainer.loss import masked_logsumexp, token_cross_entropy, topk_membership

    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    values, ids = jax.lax.top_k(log_probs, k)
    tail = masked_logsumexp(log_probs, ~topk_membership(ids, log_probs.shape[-1]))
    return {
        "topk_log_probs": values,
        "topk_ids": ids.astype(jnp.int32),
        "tail_log_prob": tail,
        "target_log_prob": -token_cross_entropy(log_probs, targets),
    }


def write(
    spec: DistillSpec,
    directory: str,
    *,
    on_step: Callable[[int], bool] | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the cache of `spec` (mode teacher_logits, tokenizer resolved) to `directory`: `spec.steps ×
    gradient_accumulation_steps` micro-batches, this process's rows in its own folder; process 0 writes the
    manifest once all processes are done. `on_step(step)` is called after each step's micro-batches and may
    return True to stop early (a signal): no manifest is written then; `note(text)` (process 0) hears that a
    complete cache of other settings is replaced. Returns the manifest (or {} if stopped). Raises UserError
    (teacher, data or storage problems)."""
    import jax
    from flax import nnx
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    from trainer import data as data_lib
    from trainer import setup
    from trainer.checkpointing import teacher_step_folder
    from trainer.corpus import Shard
    from trainer.models import forward
    from trainer.sharding import make_mesh

    mesh = make_mesh(spec.mesh)
    rows = setup.global_rows(spec, mesh)
    teacher_step = _step_of(teacher_step_folder(spec))  # (`step` counts the loop below)
    complete, replaced = complete_cache(spec, directory, rows=rows, teacher_step=teacher_step)
    if replaced and note is not None and jax.process_index() == 0:
        note(f"the logit cache in {directory} was written for another {replaced}: writing it again")
    if jax.process_count() > 1:  # process 0's reading decides for all: a host's own disk may hold no manifest
        complete = bool(multihost_utils.broadcast_one_to_all(np.int32(complete is not None)))
        complete = read_manifest(directory)[1] if complete else None
    if complete is not None:
        return {**complete, KEPT: True}
    teacher = setup._model(spec.teacher, False, mesh)
    params = setup._load_teacher(spec, teacher)
    k = int(spec.top_k)
    sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))

    @jax.jit
    def compute(params, inputs, targets, segment_ids):
        logits, _ = forward(nnx.merge(teacher.graphdef, params), inputs, segment_ids)
        return teacher_topk(logits, targets, k)

    shard = Shard(jax.process_index(), jax.process_count())
    accumulation = spec.batch.gradient_accumulation_steps
    batches = data_lib.make_batches(spec, teacher.config.shape.vocab_size, rows, shard)
    folder = f"{directory.rstrip('/')}/{shard_folder(shard.index, shard.count)}"
    _make_dirs(folder)
    # Rewriting a cache: its old manifest goes first, so no reader takes the new micro-batches and the old ones
    # left behind for the old cache (a student started meanwhile, or one after this attempt is stopped).
    if shard.index == 0:
        _remove_manifest(directory)
    if shard.count > 1:
        multihost_utils.sync_global_devices("old logit cache manifest removed")
    micro = 0
    try:
        for step in range(spec.steps):
            host = batches.next()  # [A, R or R/n, T]
            for a in range(accumulation):
                mb = {key: value[a] for key, value in host.items()}
                put = (
                    (lambda v: jax.make_array_from_process_local_data(sharding, v, (rows, v.shape[-1])))
                    if batches.local
                    else (lambda v: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index]))
                )
                device = {key: put(value) for key, value in mb.items()}
                with jax.set_mesh(mesh):
                    out = compute(params, device["inputs"], device["targets"], device.get("segment_ids"))
                arrays = {key: _local_rows(value) for key, value in {**device, **out}.items()}
                _save(f"{folder}/{micro_file(micro)}", arrays)
                micro += 1
            if on_step is not None and on_step(step + 1):
                return {}
    finally:
        batches.close()
    manifest = manifest_for(spec, rows=rows, processes=shard.count, micro_batches=micro, teacher_step=teacher_step)
    if shard.count > 1:
        multihost_utils.sync_global_devices("logit cache written")
    if shard.index == 0:
        with fsspec.open(f"{directory.rstrip('/')}/{MANIFEST}", "w") as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


KEPT = "kept"  # in `write`'s answer only: the cache was complete, and left as it was


def complete_cache(
    spec: DistillSpec, directory: str, *, rows: int, teacher_step: str | None = None
) -> tuple[dict | None, str | None]:
    """`(manifest, None)` when the cache already in `directory` is the one `spec` would write (the same teacher,
    tokenizer, data, k, rows, micro-batches and teacher step; any process count reads it, `CacheBatches`): a
    finished teacher_logits run started again recomputed the whole cache (the costly pass offline distillation
    exists to make once), refusing students meanwhile. `(None, what differs)` when another complete cache is
    there (it is written again: said, as its students now read another); `(None, None)` when there is none."""
    try:
        _, manifest = read_manifest(directory)
    except UserError:
        return None, None
    tokenizer = tokenizer_identity(spec.data.tokenizer or "byte")
    differ, _ = contract.differences(manifest, contract.expected(spec, tokenizer))
    wanted = {
        "rows": rows,
        "micro_batches": contract.micro_batches_needed(spec),
        "vocab_size": spec.teacher.shape().vocab_size,
        # A teacher that trained on behind the same `checkpoints` path needs the cache written again.
        "teacher_step": teacher_step,
    }
    differ += [
        f"{key} ({manifest.get(key)}; now {value})" for key, value in wanted.items() if manifest.get(key) != value
    ]
    return (None, ", ".join(differ)) if differ else (manifest, None)


def _remove_manifest(directory: str) -> None:
    path = f"{directory.rstrip('/')}/{MANIFEST}"
    try:
        fs, local = fsspec.core.url_to_fs(path)
        if fs.exists(local):
            fs.rm(local)
    except OSError as e:
        raise UserError(f"cannot remove the old logit cache manifest {path}: {e}") from None


def _local_rows(array) -> np.ndarray:
    """This process's rows of a row-sharded global array, in row order (replicas along other axes once)."""
    pieces = {}
    for shard in array.addressable_shards:
        start = shard.index[0].start or 0
        pieces.setdefault(start, shard.data)
    return np.concatenate([np.asarray(pieces[start]) for start in sorted(pieces)])


def _make_dirs(path: str) -> None:
    try:
        fs, root = fsspec.core.url_to_fs(path)
        fs.makedirs(root, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the logit cache folder {path}: {e}") from None


def _save(path: str, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        with fsspec.open(path, "wb") as f:
            f.write(buffer.getvalue())
    except OSError as e:
        raise UserError(f"cannot write the logit cache file {path}: {e}") from None


# --- the student's side --------------------------------------------------------------------------------------


def read_manifest(directory: str) -> tuple[str, dict[str, Any]]:
    """`(path, manifest)` of the cache in `directory`; UserError when there is none or it is unreadable."""
    path = f"{directory.rstrip('/')}/{MANIFEST}"
    try:
        with fsspec.open(path, "r") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        nested = f"{directory.rstrip('/')}/{contract.CACHE_FOLDER}/{MANIFEST}"
        try:
            fs, local = fsspec.core.url_to_fs(nested)
            run_folder = fs.exists(local)
        except OSError:
            run_folder = False
        raise UserError(*contract.missing(directory, run_folder)) from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the logit cache manifest {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a logit cache manifest of format {FORMAT} (format: "
            f"{manifest.get('format') if isinstance(manifest, dict) else None!r})",
            "write the cache again with this version's `mode: teacher_logits` run",
        )
    return path, manifest


def check(spec: DistillSpec, manifest_path: str, manifest: dict[str, Any], *, rows: int, processes: int) -> None:
    """UserError naming `manifest_path` unless the cache fits `spec` (offline; tokenizer resolved) run with
    `rows` global rows per micro-batch on `processes` processes: same teacher, tokenizer, k, vocabulary, data and
    batch shape, and enough micro-batches for `steps × gradient_accumulation_steps`."""
    problem = contract.mismatch(manifest_path, manifest, spec, tokenizer_identity(spec.data.tokenizer or "byte"))
    if problem is not None:
        raise UserError(*problem)
    written = manifest.get("processes")
    if manifest.get("rows") != rows or not isinstance(written, int) or written < 1 or rows % written:
        raise UserError(
            f"the logit cache {manifest_path} holds micro-batches of {manifest.get('rows')} rows from "
            f"{written} process(es); this run reads {rows} rows on {processes}",
            "run the student with the cache's per_device_batch_size × devices, or write the cache with the student's",
        )
    problem = contract.too_short(manifest_path, manifest, spec)
    if problem is not None:
        raise UserError(*problem)


class CacheBatches:
    """This process's rows of a logit cache, `accumulation` micro-batches per step, from micro-batch `position`
    (the position is the whole state: micro-batch `m` is one file)."""

    local = True

    def __init__(
        self,
        directory: str,
        shard,
        accumulation: int,
        position: int = 0,
        *,
        shape: tuple[int, int, int] | None = None,
        written_by: int | None = None,
        rows: int | None = None,
    ):
        self.accumulation, self.position = accumulation, position
        self.shape = shape  # (rows of this process, tokens per row, top k) every file must hold; None: unchecked
        # Written by another number of processes (a cache made on 16 hosts, read on 4, or on a laptop): the rows
        # are the same, in the same order, split otherwise; this process's are cut from the writers' files.
        writers = written_by or shard.count
        if writers == shard.count or rows is None:
            self.parts = [(f"{directory.rstrip('/')}/{shard_folder(shard.index, shard.count)}", None)]
        else:
            mine = range(shard.index * rows // shard.count, (shard.index + 1) * rows // shard.count)
            each = rows // writers
            self.parts = [
                (
                    f"{directory.rstrip('/')}/{shard_folder(w, writers)}",
                    slice(max(mine.start, w * each) - w * each, min(mine.stop, (w + 1) * each) - w * each),
                )
                for w in range(writers)
                if w * each < mine.stop and (w + 1) * each > mine.start
            ]
        self.folder = self.parts[0][0]

    def next(self) -> dict[str, np.ndarray]:
        micro = [self._assembled(self.position + a) for a in range(self.accumulation)]
        self.position += self.accumulation
        return {key: np.stack([m[key] for m in micro]) for key in micro[0]}

    def _assembled(self, index: int) -> dict[str, np.ndarray]:
        if len(self.parts) == 1 and self.parts[0][1] is None:
            return self._checked(self._read(self.parts[0][0], index), f"{self.folder}/{micro_file(index)}")
        pieces = [self._read(folder, index) for folder, _ in self.parts]
        joined = {
            key: np.concatenate([piece[key][rows] for piece, (_, rows) in zip(pieces, self.parts)]) for key in pieces[0]
        }
        return self._checked(joined, " + ".join(f"{folder}/{micro_file(index)}" for folder, _ in self.parts))

    def _checked(self, arrays: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
        again = "write the cache again (a `mode: teacher_logits` run)"
        if self.shape is not None:
            rows, length, k = self.shape
            for key, value in arrays.items():
                want = (rows, length, k) if key in ("topk_log_probs", "topk_ids") else (rows, length)
                if value.shape != want:
                    raise UserError(
                        f"the logit cache file {path}: {key} has shape {value.shape}, the manifest says {want}", again
                    )
        return arrays

    def _read(self, folder: str, index: int) -> dict[str, np.ndarray]:
        path = f"{folder}/{micro_file(index)}"
        again = "write the cache again (a `mode: teacher_logits` run)"
        try:
            with fsspec.open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise UserError(f"cannot read the logit cache file {path}: {e}", again) from None
        if not raw.startswith(b"PK"):  # else numpy takes it for a pickle and says so
            raise UserError(f"the logit cache file {path} is not a .npz archive (damaged or overwritten)", again)
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise UserError(f"the logit cache file {path} is damaged (truncated?): {e}", again) from None
        missing = [key for key in ("inputs", "targets", "mask", *TEACHER_KEYS) if key not in arrays]
        if missing:
            raise UserError(f"the logit cache file {path} lacks {', '.join(missing)}", again)
        return arrays

    def state(self) -> None:
        return None

    def restore(self, state: bytes) -> None:
        raise ValueError("a logit cache has no iterator state: its position is the micro-batch count")

    def close(self) -> None:
        pass


def _step_of(folder: str | None) -> str | None:
    """A teacher checkpoint's step (its step folder's name): the same step read through another folder (a copied
    outputs tree, another mount) is the same teacher; the block's path says which run it is."""
    return folder.rstrip("/").rsplit("/", 1)[-1] if folder else None


def _warn_teacher_moved_on(spec: DistillSpec, path: str, manifest: dict[str, Any], shard) -> None:
    """Process 0 warns when the teacher's own `checkpoints` path now resolves to a later step than the cache was
    written from: the cache is whole and consistent, but of the teacher as it was (the student distils from that)."""
    import logging

    from trainer.checkpointing import teacher_step_folder

    written = manifest.get("teacher_step")
    if shard.index != 0 or not isinstance(written, str) or spec.teacher is None:
        return
    now = _step_of(teacher_step_folder(spec.model_copy(update={"offline_data_dir": None})))
    if now is not None and now != written:
        logging.getLogger(__name__).warning(
            "the logit cache %s was written from the teacher at step %s; teacher.load_parameters_path now resolves to "
            "step %s (it trained on): this run distils from the teacher as it was (write the cache again for the "
            "later one)",
            path,
            written,
            now,
        )


def open_batches(spec: DistillSpec, rows: int, shard, position: int = 0) -> CacheBatches:
    """The training batches of an offline run, after checking its cache fits the spec (UserError otherwise)."""
    path, manifest = read_manifest(spec.offline_data_dir)
    check(spec, path, manifest, rows=rows, processes=shard.count)
    _warn_teacher_moved_on(spec, path, manifest, shard)
    k = spec.top_k or manifest.get("top_k")  # unset in the spec (a MaxText file has no key): the cache's
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UserError(
            f"the logit cache {path} says its top_k is {k!r}, not a number: its manifest is damaged",
            "write the cache again (a `mode: teacher_logits` run)",
        )
    shape = (rows // shard.count, spec.batch.max_target_length, k)
    batches = CacheBatches(
        spec.offline_data_dir,
        shard,
        spec.batch.gradient_accumulation_steps,
        position,
        shape=shape,
        written_by=manifest["processes"],
        rows=rows,
    )
    for folder, _ in batches.parts:
        _check_files(folder, position, spec.steps * spec.batch.gradient_accumulation_steps)
    return batches


def _check_files(folder: str, first: int, end: int) -> None:
    """UserError when one of this process's micro-batch files `first`..`end - 1` is not in `folder` (a copy cut
    short): found by one listing at start, not when training reaches it, hours in."""
    try:
        fs, root = fsspec.core.url_to_fs(folder)
        present = {name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(root, detail=False)}
    except (OSError, ValueError):
        return  # reading the files says what is wrong
    missing = [micro_file(i) for i in range(first, end) if micro_file(i) not in present]
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(
            f"the logit cache folder {folder} lacks {len(missing)} micro-batch file(s) this run reads: {listed}",
            "copy the cache folder again whole (or write the cache again: a `mode: teacher_logits` run)",
        )
