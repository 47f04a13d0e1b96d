"""Orbax checkpoints of a run: `<run>/checkpoints/<step>/{params, train_state, meta}`.

- `params`: the student's parameters (a flat `{path: array}` dict; what a teacher or a student's
  `load_parameters_path` restores);
- `train_state`: optimizer state and the metric window accumulators, so a resumed run logs exactly what an
  uninterrupted one logs;
- `meta`: JSON — step, data position (micro-batches consumed), tokens, wall time;
- `data` (document sources): each process's Grain iterator state (`process_<i>-of-<n>.json`).

Arrays restore straight into their target shardings (multi-host: each process reads its own shards). Paths may
be local or `gs://` (orbax and etils handle both).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from trainer.exit_codes import RetryableError, RunRefused, TrainerError, UserError, os_errno, storage_failure

log = logging.getLogger(__name__)


def _quiet_orbax_leftovers(unraisable, default=sys.unraisablehook) -> None:
    """After one read of a restore fails, orbax's other reads of it end in coroutines that Python can only report
    as unraisable ("Event loop is closed", TensorStore's spec dumped): hundreds of lines that buried the one-line
    verdict. They repeat the failure already reported, so they are dropped; any other unraisable is printed."""
    code = getattr(unraisable.object, "cr_code", None)
    leftover = code is not None and "orbax" in code.co_filename
    if leftover or (
        isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
    ):
        return
    default(unraisable)


sys.unraisablehook = _quiet_orbax_leftovers


class _OneLineFromOrbaxThreads(logging.Filter):
    """Orbax's background threads log each failed write with its full traceback (a full disk: five of them, ~440
    lines, before the one-line verdict that names the path and the error). The line each begins with is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.pathname and (record.exc_info or "\n" in str(record.msg)):
            message = record.getMessage()
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = (message.splitlines() or [""])[0][:300], None
        return True


logging.getLogger("absl").addFilter(_OneLineFromOrbaxThreads())


def absolute(path: str) -> str:
    """A local path made absolute (orbax requires it); URLs unchanged. Relative paths are the working directory's."""
    return path if "://" in path else os.path.abspath(path)


def flatten(tree: Any) -> dict[str, Any]:
    """`{"a.b.0": leaf}` for every leaf of a pytree (nnx states, optax states, dicts)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat[".".join(_key_name(k) for k in path)] = leaf
    return flat


def unflatten(like: Any, flat: Mapping[str, Any]) -> Any:
    """A pytree shaped like `like` with leaves taken from `flat` by path."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [".".join(_key_name(k) for k in path) for path, _ in leaves_with_path]
    missing = [n for n in names if n not in flat]
    if missing:
        raise KeyError(f"missing {len(missing)} arrays, e.g. {missing[:3]}")
    return jax.tree_util.tree_unflatten(treedef, [flat[n] for n in names])


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def abstract(tree: Any) -> Any:
    """Shape, dtype and sharding of every array: what orbax restores into."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


class DataState:
    """An input-pipeline position as Grain's orbax checkpoint handler saves it (`get_state` bytes, one
    `process_<i>-of-<n>.json` per process); the loop hands over the state it captured before reading ahead."""

    def __init__(self, state: bytes = b""):
        self.state = state

    def get_state(self) -> bytes:
        return self.state

    def set_state(self, state: bytes) -> None:
        self.state = state

    def start_prefetch(self) -> None:  # the handler calls it after a restore; the loop's iterator prefetches
        pass


class RunCheckpoints:
    """Save and restore one run's checkpoints (keeps the latest `keep`).

    Saves run in orbax's background threads; a save that fails there is raised by the next `check`, `save` or
    `close` as OutputNotWritable (the storage refuses: exit 1) or RetryableError (transient I/O: exit 42), so the
    run ends at the next step instead of training on without checkpoints."""

    def __init__(self, directory: str, *, keep: int):
        self.directory = directory = absolute(directory)
        try:
            self._manager = ocp.CheckpointManager(
                directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep,
                    create=True,
                    # The step's directory is made in `save` itself, so an unusable path fails there; made in the
                    # background, its failure left the other save threads waiting 300 s for its signal at exit.
                    async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
                ),
                item_names=("params", "train_state", "meta", "data"),
            )
        except OSError as e:
            raise storage_failure(directory, e) from None
        self._saving: int | None = None  # the step of the save in flight, until `check` has seen it end
        self._failures = _SwallowedSaveFailures()
        logging.getLogger("absl").addHandler(self._failures)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def _damaged(self, step: int, error: BaseException) -> TrainerError:
        """`damaged_checkpoint` for step `step`, saying whether a step before it remains to resume from."""
        earlier = [s for s in self._manager.all_steps() if s < step]
        return damaged_checkpoint(f"{self.directory}/{step}", error, only=not earlier)

    def save(self, step: int, params: Any, train_state: Any, meta: dict, data_state: bytes | None = None) -> None:
        """Start saving step `step` (asynchronously; `close` blocks until it is durable). `data_state`: this
        process's input-pipeline position (a Grain iterator's state), saved by Grain's checkpoint handler as one
        file per process. Raises the failure of an earlier save still unreported, or of this one's synchronous
        part (see the class)."""
        self.check()
        items = {
            "params": ocp.args.StandardSave(flatten(params)),
            "train_state": ocp.args.StandardSave(flatten(train_state)),
            "meta": ocp.args.JsonSave(meta),
        }
        if data_state is not None:
            items["data"] = grain.checkpoint.CheckpointSave(DataState(data_state))
        with _storage_errors(self.directory):
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._saving = step

    def check(self) -> None:
        """Raise the failure of a background save that has ended (cheap: no waiting). Orbax's own finalization
        catches a failed write, logs it and skips the step: the run trained on until its next save (a full disk at
        step 300 ended it at 400, the 100 steps lost). So once the save is no longer in progress, its step must be
        on storage; the error orbax logged, when this process saw it, says why."""
        with _storage_errors(self.directory):
            self._manager.check_for_errors()
        if self._saving is None or self._manager.is_saving_in_progress():
            return
        step, self._saving = self._saving, None
        with _storage_errors(self.directory):
            self._manager.wait_until_finished()  # a failure of orbax's finalize thread, raised (it is done)
        swallowed = self._failures.take()
        if swallowed is not None:
            if isinstance(swallowed, OSError) or os_errno(swallowed) is not None:
                raise storage_failure(self.directory, swallowed)
            raise RetryableError(
                f"the checkpoint of step {step} under {self.directory} was not written: "
                f"{type(swallowed).__name__}: {swallowed}"
            )
        self._manager.reload()  # the steps on storage: a step whose write failed on another process is not there
        if step not in self._manager.all_steps():  # this process saw no error
            raise RetryableError(
                f"the checkpoint of step {step} under {self.directory} was not written: a background save failed "
                "(orbax logged why: a full disk, a refused or dropped write)"
            )

    def restore(
        self, step: int, params_like: Any, train_state_like: Any, *, data: bool = False
    ) -> tuple[Any, Any, dict, bytes | None]:
        """`(params, train_state, meta, data_state)` of step `step`, shaped and sharded like the given trees;
        `data_state` (this process's input-pipeline position) only when `data` is asked for, else None."""
        # Arrays of another model, named (orbax says only "Requested shape ... is not compatible").
        params_dir = epath.Path(self.directory) / str(step) / "params"
        _check_shapes(
            params_dir,
            {k: tuple(v.shape) for k, v in flatten(abstract(params_like)).items()},
            _saved_shapes(params_dir),
            "this run's checkpoints are of another model: use a new run name (or output_dir) for this spec, or "
            "delete the old run directory",
            error=RunRefused,
        )
        if data and not (epath.Path(self.directory) / str(step) / "data").exists():
            if _read_documents(self.meta(step)):  # the run read documents too: this step lost its position
                raise self._damaged(step, FileNotFoundError("its data item is missing"))
            # Orbax would say 'Item "data" was not found', read as a damaged checkpoint whose hint moves good ones.
            raise RunRefused(
                f"the checkpoint at {self.directory}/{step} holds no input-pipeline position: the run that wrote it "
                "read another kind of data (a token file, synthetic data or a logit cache), this spec reads documents",
                "give this run another name (or output_dir), or go back to the run's data settings",
            )
        if data:
            _check_process_count(epath.Path(self.directory) / str(step) / "data", f"{self.directory}/{step}")
        items = {
            "params": ocp.args.StandardRestore(flatten(abstract(params_like))),
            "train_state": ocp.args.StandardRestore(flatten(abstract(train_state_like))),
            "meta": ocp.args.JsonRestore(),
        }
        if data:
            items["data"] = grain.checkpoint.CheckpointRestore(DataState())
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            if unreadable(e):
                raise self._damaged(step, e) from None
            raise  # arrays of another model: the caller says so
        return (
            unflatten(params_like, restored["params"]),
            unflatten(train_state_like, restored["train_state"]),
            dict(restored["meta"]),
            restored["data"].state if data else None,
        )

    def meta(self, step: int) -> dict:
        """Step `step`'s `meta` item alone (step, position, tokens, the input it was trained on)."""
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:
            if unreadable(e):
                raise self._damaged(step, e) from None
            raise
        return dict(restored["meta"])

    def close(self) -> None:
        """Wait for the saves in flight and release orbax's threads; raises a save's failure like `check`."""
        try:
            with _storage_errors(self.directory):
                self._manager.wait_until_finished()
            self.check()  # the last save's write, failed and swallowed by orbax, is this run's failure too
            with _storage_errors(self.directory):
                self._manager.close()
        finally:
            logging.getLogger("absl").removeHandler(self._failures)


class _SwallowedSaveFailures(logging.Handler):
    """The error orbax's save finalization catches and logs ("Checkpointer failed: ... Skipping finalization"),
    kept for `RunCheckpoints.check` to raise: orbax reports it nowhere else."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None and "Checkpointer failed" in str(record.msg):
            self.error = record.exc_info[1]

    def take(self) -> BaseException | None:
        error, self.error = self.error, None
        return error


@contextlib.contextmanager
def _storage_errors(directory: str) -> Iterator[None]:
    """The storage's refusals of a write under `directory` as `storage_failure` (OSError, and TensorStore's
    ValueError naming an OS error); any other error as it is."""
    try:
        yield
    except (OSError, ValueError) as e:
        if not isinstance(e, OSError) and os_errno(e) is None:
            raise  # not the storage's
        raise storage_failure(directory, e) from None


def resolve_params_dir(path: str) -> epath.Path:
    """The `params` item a `load_parameters_path` means: a run's `checkpoints` directory (its latest step), one
    step directory, or the `params` directory itself. Raises UserError when there is none."""
    root = epath.Path(absolute(path))
    try:
        if not root.exists():
            raise FileNotFoundError(path)
        if not root.is_dir():  # a file: retrying would not change it (was exit 42 through NotADirectoryError)
            raise UserError(
                f"checkpoint path {path} is a file, not a folder",
                f"point it at the folder that holds the checkpoint ({root.parent})",
            )
        if root.name == "params" and root.is_dir():
            return root
        if (root / "params").is_dir():
            return root / "params"
        numbered = sorted((int(p.name), (p / "params").is_dir()) for p in root.iterdir() if p.name.isdigit())
    except FileNotFoundError:
        raise UserError(f"checkpoint not found at {path}") from None
    except OSError as e:
        raise RetryableError(f"cannot read checkpoint directory {path}: {e}") from None
    steps = [step for step, finished in numbered if finished]
    if not steps:
        raise UserError(f"checkpoint not found at {path}: no finished step directory with parameters in it")
    # A later step without parameters is a save that did not finish (or a hand-made folder): said, so that the
    # step read is not taken for the latest one (`train` refuses to resume from such a step, naming it).
    unfinished = [str(step) for step, finished in numbered if not finished and step > steps[-1]]
    if unfinished:
        log.warning(
            "%s: skipped step folder(s) %s, which hold no parameters (unfinished saves); reading step %d",
            path,
            ", ".join(unfinished),
            steps[-1],
        )
    return root / str(steps[-1]) / "params"


def restore_params(path: str, params_like: Any) -> Any:
    """Parameters written by this trainer at `path`, shaped and sharded like `params_like`.

    Raises UserError when there is no checkpoint or it holds a different model.
    """
    params_dir = resolve_params_dir(path)
    target = flatten(abstract(params_like))
    want = {k: tuple(v.shape) for k, v in target.items()}
    saved = _saved_shapes(params_dir)
    if saved is not None and saved != want and _is_scanned(saved) != _is_scanned(want):
        # The same model saved in the other layer layout (scan_layers): relaid on the host, if that is all it is.
        unstack = lambda shape: [shape[1:]] * shape[0]  # noqa: E731
        relaid = _relay(saved, to_scanned=_is_scanned(want), stack=_stacked_shape, unstack=unstack)
        if relaid == want:
            return unflatten(params_like, _restore_relaid(params_dir, saved, target))
        saved = relaid or saved  # another model as well: its differences, named in this model's layout
    _check_shapes(params_dir, want, saved)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(params_dir, target)
    except Exception as e:
        if unreadable(e):
            raise damaged_checkpoint(str(params_dir), e) from None
        if isinstance(e, (ValueError, KeyError, TypeError)):
            raise UserError(
                f"the checkpoint at {params_dir} does not hold this model's parameters: {_first_line(e)}",
                "check that the model block (shape, layers, vocab) matches the run that wrote it",
            ) from None
        raise
    return unflatten(params_like, restored)


# TensorStore's status codes for a saved file that cannot be read as written, and for a read that may succeed
# when tried again (a storage outage, not a damaged file).
_DAMAGE = ("OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "FAILED_PRECONDITION")
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED")


def _check_process_count(folder: epath.Path, step_path: str) -> None:
    """RunRefused when the step's input positions are of another number of processes (each process saves its own:
    `process_<i>-of-<n>.json`): grain's "File ... does not exist" came with a hint to delete the run."""
    count = jax.process_count()
    if (folder / f"process_{jax.process_index()}-of-{count}.json").exists():
        return
    saved = sorted(
        {name.name.rsplit("-of-", 1)[-1].removesuffix(".json") for name in folder.glob("process_*-of-*.json")}
    )
    if not saved:
        return  # no positions at all: the restore says the step is damaged
    raise RunRefused(
        f"the checkpoint at {step_path} holds the input positions of {' or '.join(saved)} process(es); this run has "
        f"{count}: each process's position is its own share of the data",
        f"resume it with {saved[0]} process(es), or start a new run from its weights (student.load_parameters_path: "
        f"{step_path.rsplit('/', 1)[0]})",
    )


def _read_documents(meta: dict) -> bool:
    """Whether the run that saved a step with this `meta` read documents (so saved an input-pipeline position), by
    the input it recorded; False when it recorded none (older steps)."""
    from distillspec.config import DOCUMENT_SOURCES

    recorded = meta.get("input") or {}
    return (recorded.get("data") or {}).get("source") in DOCUMENT_SOURCES and not recorded.get("offline_data_dir")


def unreadable(error: BaseException) -> bool:
    """Whether a restore failed reading the files (missing, truncated, undecodable, storage down) rather than
    finding arrays of another model."""
    cause = error.__cause__ or error  # TensorStore's status is the cause of orbax's wrapper
    text = str(cause)
    return (
        isinstance(error, OSError)
        or isinstance(cause, OSError)
        or isinstance(cause, json.JSONDecodeError)  # a metadata file that is not JSON
        or type(error) is Exception  # orbax's wrapper of a TensorStore read: a bare Exception
        or "was not found in the checkpoint" in text  # an item folder (params, meta) missing from the step
        or any(code in text for code in _DAMAGE + _TRANSIENT)
    )


def damaged_checkpoint(step_path: str, error: BaseException, *, only: bool = False) -> TrainerError:
    """What an unreadable saved step means: RetryableError for transient I/O, else UserError (exit 1) naming the
    damage, with the way out (the step's folder moved aside, the step before it is the latest; `only`: there is no
    step before it, so that restarts the run)."""
    cause = error.__cause__ or error
    reason = _first_line(cause)
    if any(code in reason for code in _TRANSIENT) or (
        isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError)
    ):
        return RetryableError(f"cannot read checkpoint {step_path}: {reason}")
    step_dir = step_path.rstrip("/").removesuffix("/params").rstrip("/")
    if only:
        return UserError(
            f"the checkpoint at {step_path} is damaged or incomplete: {reason}",
            f"it is the run's only checkpoint: copy {step_dir} again from where it was written, or move it aside to "
            "train the run again from step 0",
        )
    return UserError(
        f"the checkpoint at {step_path} is damaged or incomplete: {reason}",
        f"move {step_dir} aside (the step before it becomes the latest), or train again without it",
    )


def _saved_shapes(params_dir: epath.Path) -> dict[str, tuple[int, ...]] | None:
    """The shape of every array saved at `params_dir`, from its metadata; None when that cannot be read (the
    restore itself then says what is wrong)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns about a metadata file that StandardSave does not write
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(params_dir).item_metadata
        return {k: tuple(v.shape) for k, v in tree.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    finally:
        absl.setLevel(level)


def _relay(items: dict[str, Any], *, to_scanned: bool, stack, unstack) -> dict[str, Any] | None:
    """`items` (flattened parameters, or their shapes) with the layers moved to the other layout: one
    `layers.<name>` stacked along a leading layer axis, or one `layers.<i>.<name>` per layer. `stack` joins a
    list of per-layer items (None when they cannot be), `unstack` splits a stacked one. None when the items do not
    stack."""
    out = {k: v for k, v in items.items() if not k.startswith("layers.")}
    if to_scanned:
        groups: dict[str, dict[int, Any]] = {}
        for key, value in items.items():
            if key.startswith("layers."):
                _, index, name = key.split(".", 2)
                groups.setdefault(name, {})[int(index)] = value
        for name, by_index in groups.items():
            if sorted(by_index) != list(range(len(by_index))):
                return None
            joined = stack([by_index[i] for i in range(len(by_index))])
            if joined is None:
                return None
            out[f"layers.{name}"] = joined
    else:
        for key, value in items.items():
            if key.startswith("layers."):
                name = key.split(".", 1)[1]
                for index, part in enumerate(unstack(value)):
                    out[f"layers.{index}.{name}"] = part
    return out


def _stacked_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    return (len(shapes), *shapes[0]) if len(set(shapes)) == 1 else None


def _restore_relaid(params_dir: epath.Path, saved: dict[str, tuple[int, ...]], target: dict[str, Any]) -> dict:
    """Restore the arrays at `params_dir` (saved in the other layer layout) into `target`'s layout, dtypes and
    shardings. The whole checkpoint passes through each process's host memory once."""
    log.warning(
        "%s holds its layers %s; this model has them %s (scan_layers differs): converting while loading",
        params_dir,
        "stacked" if _is_scanned(saved) else "one by one",
        "stacked" if _is_scanned(target) else "one by one",
    )
    restore_args = {k: ocp.RestoreArgs(restore_type=np.ndarray) for k in saved}
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            host = checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as e:
        if unreadable(e):
            raise damaged_checkpoint(str(params_dir), e) from None
        raise
    arrays = _relay(dict(host), to_scanned=_is_scanned(target), stack=np.stack, unstack=list)
    return {
        key: jax.make_array_from_callback(
            like.shape, like.sharding, lambda index, value=arrays[key], dtype=like.dtype: value[index].astype(dtype)
        )
        for key, like in target.items()
    }


def _check_shapes(
    params_dir: epath.Path,
    want: dict[str, tuple[int, ...]],
    saved: dict[str, tuple[int, ...]] | None,
    hint: str = "check that the model block (shape, layers, vocab) matches the run that wrote it",
    *,
    error: type[UserError] = UserError,
) -> None:
    """Raise `error` naming the differences when the arrays saved at `params_dir` (`saved`, their shapes as
    `_saved_shapes` read them) are not the ones `want` describes."""
    if saved is None:
        return  # unreadable metadata: the restore itself reports what is wrong
    scanned = {_is_scanned(keys) for keys in (want, saved)}
    if scanned == {True, False}:  # resuming in the other layer layout (loading converts: `restore_params`)
        saved_scanned = _is_scanned(saved)
        raise error(
            f"the checkpoint at {params_dir} holds its layers {'stacked' if saved_scanned else 'one by one'} "
            f"(saved with scan_layers: {str(saved_scanned).lower()}), this model has them "
            f"{'stacked' if not saved_scanned else 'one by one'}",
            f"a run resumes in the layout it saved: set scan_layers: {str(saved_scanned).lower()} again, or give this "
            "run another name (as a load_parameters_path, the checkpoint loads in either layout)",
        )
    differences = [f"{k} missing" for k in sorted(set(want) - set(saved))]
    differences += [f"{k} not in this model" for k in sorted(set(saved) - set(want))]
    differences += [
        f"{k} is {saved[k]}, this model needs {want[k]}" for k in sorted(set(saved) & set(want)) if saved[k] != want[k]
    ]
    if differences:
        raise error(
            f"the checkpoint at {params_dir} does not hold this model's parameters: "
            + "; ".join(differences[:4])
            + (f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""),
            hint,
        )


def _is_scanned(keys) -> bool:
    """Whether flattened parameter names hold the layers stacked (`layers.attention.wq`) rather than one by one
    (`layers.0.attention.wq`)."""
    layer_keys = [k for k in keys if k.startswith("layers.")]
    return bool(layer_keys) and not any(k.split(".")[1].isdigit() for k in layer_keys)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def teacher_step_folder(spec) -> str | None:
    """The step folder a run's own (distillctl) teacher checkpoint resolves to, recorded with each checkpoint and
    in a logit cache's manifest: a `checkpoints` path follows its run's latest step. None without one, or for a
    Hugging Face folder (fixed)."""
    teacher = spec.teacher if spec.mode != "pretrain" else None
    path = teacher.load_parameters_path if teacher is not None else None
    if not path or spec.offline_data_dir:
        return None
    try:
        return str(resolve_params_dir(path).parent)
    except TrainerError:
        return None  # a Hugging Face folder, or one the teacher's own load names the problem with
