"""Everything a run needs before its first step: mesh, models, sharded parameters, optimizer and the jitted step.

The student starts at random, from the teacher with `drop_layers` removed (`init: teacher`, the guide's pruning
recovery), or from its own `load_parameters_path`. The teacher is always loaded from `load_parameters_path`
(this trainer's checkpoint or a Hugging Face folder; `trainer.checkpoints` detects which). A pruned student is
made inside `jax.jit` with its target shardings; a random one is drawn on each host one parameter at a time
(`host_draws`: every host draws the same values) and each is placed as its shards before the next is drawn, so a
host holds the model's largest parameter at most, not the model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from distillspec import layout
from distillspec.config import DistillSpec, ModelSpec
from distillspec.hf_config import HUB_ID, beyond_max_position, hub_download_hint, unexpanded_home, weights_missing
from distillspec.loss_choice import fused_loss_wanted
from distillspec.problems import Problem
from trainer import sharding as shard_lib
from trainer.checkpointing import flatten
from trainer.checkpoints import hf, load_params
from trainer.exit_codes import UserError
from trainer.models import ModelConfig, abstract_model, drop_layers, forward_hidden, host_draws, set_path
from trainer.step import (
    HiddenLoss,
    StepModels,
    TrainState,
    empty_window,
    learning_rate_schedule,
    make_eval_step,
    make_optimizer,
    make_train_step,
)


@dataclasses.dataclass
class Built:
    mesh: Mesh
    rows: int  # global rows per micro-batch
    vocab_size: int
    state: TrainState  # at step 0
    teacher_params: Any
    step_fn: Any  # jitted step(state, teacher_params, batch, hparams) -> state; lower it under `jax.set_mesh(mesh)`
    lr_schedule: Callable[[int], Any]
    to_device: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]]
    zero_window: Callable[[], dict[str, jax.Array]]
    # `[A, R/n, T]` host arrays of this process's rows -> the global `[A, R, T]` batch (document sources)
    local_to_device: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]] | None = None
    # jitted eval_step(params, teacher_params, batch [R, T]) -> {metric: [sum, count]} (see `make_eval_step`)
    eval_fn: Any = None


def global_rows(spec: DistillSpec, mesh: Mesh) -> int:
    """Rows of one micro-batch across all devices; raises UserError unless the batch axes divide them."""
    shape = (mesh.shape["data"], mesh.shape["fsdp"], mesh.shape["tensor"])
    try:
        return layout.global_rows(spec.batch.per_device_batch_size, shape)
    except layout.LayoutError as e:
        raise UserError(e.message, e.hint) from None


def param_shardings(abstract_state: nnx.State, mesh: Mesh) -> Any:
    """NamedShardings (as a pure dict) from the parameters' logical axis names."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
    shapes = nnx.to_pure_dict(abstract_state)
    return jax.tree.map(
        lambda spec, shape: NamedSharding(mesh, shard_lib.logical_to_spec(tuple(spec), shape.shape, mesh)),
        specs,
        shapes,
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )


def optimizer_shardings(optimizer, params: Any, fallback: NamedSharding) -> Any:
    """Shardings for the optimizer state: a leaf that mirrors a parameter (Adam's moments) is sharded like it,
    anything else (step counts) is replicated."""
    by_path = {
        tuple(str(k) for k in path): (leaf.shape, leaf.sharding)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    abstract_state = jax.eval_shape(optimizer.init, params)

    def pick(path, leaf):
        keys = tuple(str(k) for k in path)
        for start in range(len(keys)):
            found = by_path.get(keys[start:])
            if found and found[0] == leaf.shape:
                return found[1]
        return fallback

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


@dataclasses.dataclass(frozen=True)
class _Model:
    config: ModelConfig
    graphdef: nnx.GraphDef
    abstract_state: nnx.State  # with metadata (logical axes, init_std)
    abstract: Any  # pure dict of ShapeDtypeStructs with shardings
    shardings: Any


def _model(model_spec: ModelSpec, sow: bool, mesh: Mesh, *, trained: bool = False) -> _Model:
    config = ModelConfig.from_spec(model_spec, sow_features=sow, trained=trained)
    graphdef, abstract_state = abstract_model(config)
    shardings = param_shardings(abstract_state, mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nnx.to_pure_dict(abstract_state), shardings
    )
    return _Model(config, graphdef, abstract_state, abstract, shardings)


def step_models(spec: DistillSpec, student: _Model, teacher: _Model | None, features: bool, mesh: Mesh) -> StepModels:
    """The step's view of the models: with the fused loss (hidden states and heads, never `[tokens, vocab]`
    logits) when one model's dense float32 logits for a device's micro-batch would not fit comfortably."""
    models = StepModels(student.graphdef, teacher.graphdef if teacher else None, features)
    if teacher is None:
        return models
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    rows_per_device = max(global_rows(spec, mesh) // max(batch_devices, 1), 1)
    tokens = rows_per_device * spec.batch.max_target_length
    if not fused_loss_wanted(tokens, spec.student_block().shape().vocab_size):
        return models
    hidden_loss = HiddenLoss(
        student_softcap=spec.student_block().shape().final_softcap, teacher_softcap=spec.teacher.shape().final_softcap
    )
    return dataclasses.replace(models, forward_hidden=forward_hidden, hidden_loss=hidden_loss)


def build(spec: DistillSpec, *, devices: list | None = None, teacher_params: Any = None) -> Built:
    """Everything the loop needs. `teacher_params` (a pure dict shaped like the teacher) replaces loading the
    teacher from its checkpoint (benchmarks, tests)."""
    mesh = shard_lib.make_mesh(spec.mesh, devices)
    rows = global_rows(spec, mesh)
    distill = spec.mode == "distill"
    features = distill and spec.loss.feature_loss_on
    student = _model(spec.student_block(), features, mesh, trained=True)  # float32 master weights

    teacher = None
    if distill and not spec.offline_data_dir:  # offline: the teacher's top-k come with the batches
        teacher = _model(spec.teacher, features, mesh)
        if teacher_params is None:
            teacher_params = _load_teacher(spec, teacher)
        else:
            teacher_params = jax.tree.map(lambda v, s: _put(np.asarray(v), s), teacher_params, teacher.shardings)

    params = _student_params(spec, student, teacher, teacher_params)
    optimizer, lr_schedule = make_optimizer(spec), learning_rate_schedule(spec)
    replicated = shard_lib.replicated(mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=optimizer_shardings(optimizer, params, replicated))(params)
    state = TrainState(
        params=params,
        opt_state=opt_state,
        step=_put(np.zeros((), np.int32), replicated),
        window=jax.jit(lambda: empty_window(spec), out_shardings=replicated)(),
        bad_step=_put(np.full((), -1, np.int32), replicated),
    )
    state_shardings = jax.tree.map(lambda a: a.sharding, state)
    models = step_models(spec, student, teacher, features, mesh)
    step = make_train_step(spec, models, optimizer)
    batch_sharding = NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"), None))

    step_fn = jax.jit(step, out_shardings=state_shardings, donate_argnums=(0,))

    def to_device(host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_callback(v.shape, batch_sharding, lambda index, v=v: v[index])
            for k, v in host.items()
        }

    def local_to_device(local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        # training `[A, R/n, T, ...]` (rows: axis 1) or eval `[R/n, T]` (axis 0); a logit cache adds a k axis
        axis = 1 if local["inputs"].ndim == 3 else 0
        sharding = batch_sharding if axis else eval_sharding
        return {
            k: jax.make_array_from_process_local_data(sharding, v, (*v.shape[:axis], rows, *v.shape[axis + 1 :]))
            for k, v in local.items()
        }

    eval_sharding = NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None))
    eval_fn = None
    if spec.eval is not None:
        eval_fn = jax.jit(make_eval_step(spec, models), out_shardings=replicated)
    zero_window = jax.jit(lambda: empty_window(spec), out_shardings=replicated)
    vocab = spec.student_block().shape().vocab_size
    return Built(
        mesh, rows, vocab, state, teacher_params, step_fn, lr_schedule, to_device, zero_window, local_to_device, eval_fn
    )


def _load_teacher(spec: DistillSpec, teacher: _Model) -> Any:
    path = spec.teacher.load_parameters_path
    if not path:
        raise UserError(
            "teacher.load_parameters_path is not set", "point it at the teacher run's checkpoints directory"
        )
    params = _load_from(path, teacher, "teacher")
    _check_finite(params, path, teacher, "teacher")
    return params


# Parameters named in the error about a teacher with NaN or inf in it (the count of the others follows).
NAMED_NONFINITE = 4


def _check_finite(params: Any, path: str, model: _Model, side: str) -> None:
    """UserError (exit 1) naming the first parameters that hold NaN or inf: such a checkpoint makes the loss NaN
    at step 0, which would otherwise read as a diverged run (exit 65). One `isfinite().all()` per array, once, each
    device reducing its own shards; the verdicts come back replicated, so every process reads the same ones."""
    flat = flatten(params)
    mesh = jax.tree.leaves(model.shardings)[0].mesh
    verdicts = jax.jit(
        lambda arrays: jnp.stack([jnp.isfinite(a).all() for a in arrays]), out_shardings=shard_lib.replicated(mesh)
    )(list(flat.values()))
    bad = [name for name, finite in zip(flat, np.asarray(jax.device_get(verdicts))) if not finite]
    if bad:
        named = ", ".join(bad[:NAMED_NONFINITE])
        more = f" (and {len(bad) - NAMED_NONFINITE} more)" if len(bad) > NAMED_NONFINITE else ""
        raise UserError(
            f"the {side} checkpoint {path} holds NaN or infinite values in {len(bad)} parameter(s): {named}{more}",
            "the checkpoint is damaged or was saved after a divergence: re-export it from a good step, or point "
            f"{side}.load_parameters_path at an earlier checkpoint",
        )


def position_warnings(spec: DistillSpec) -> list[Problem]:
    """A `beyond_max_position` warning for each Hugging Face checkpoint the run loads whose config.json says its
    model was trained on fewer positions (`max_position_embeddings`) than batch.max_target_length (the problem
    `distillctl validate --check-paths` reports, worded alike). A config.json that cannot be read is left to the
    load, which fails on it."""
    loads_teacher = spec.mode == "teacher_logits" or spec.is_online_distillation
    sides = [("teacher", spec.teacher if loads_teacher else None)]
    sides.append(("student", spec.student if spec.mode != "teacher_logits" else None))
    out = []
    for side, model in sides:
        path = model.load_parameters_path if model is not None else None
        if not path:
            continue
        try:
            if not hf.is_hf_folder(path):
                continue
            config = hf.read_config(path)
        except UserError:
            continue
        beyond = beyond_max_position(config, f"{path.rstrip('/')}/{hf.CONFIG}", spec.batch.max_target_length, side)
        if beyond is not None:
            loc = (side, "load_parameters_path")
            out.append(Problem(loc, "beyond_max_position", *beyond, severity="warning"))
    return out


_RUN_SPEC = "spec.json"  # what a run of this trainer writes in its run directory, beside `checkpoints/`


def _load_from(path: str, model: _Model, side: str) -> Any:
    """`side`'s parameters from `path`; where the loaders recognise nothing there, why (`missing_checkpoint`)."""
    try:
        return load_params(path, model.config.shape, model.abstract, side=side)
    except UserError as e:
        if "not found" in e.message:
            raise _not_found(path, side) from None
        raise


def _not_found(path: str, side: str) -> UserError:
    """Why `side`.load_parameters_path `path` holds nothing the loaders recognise, and what to do, from what is
    there (a store that cannot be listed gets the general advice)."""
    try:
        names, in_run = _folder_names(path), _in_run(path)
    except (OSError, ValueError, ImportError):
        names, in_run = [], False
    return UserError(*missing_checkpoint(path, names, in_run, side))


def missing_checkpoint(path: str, names: list[str] | None, in_run: bool, side: str = "teacher") -> tuple[str, str]:
    """(message, hint) for a `side` (teacher or student) path where no checkpoint was found, given the names in
    that folder (None: nothing is there) and whether it is a place of a run of this trainer (`_in_run`). Each way
    of getting it wrong has its own fix: a `~` the shell would have expanded, a Hub id, a folder missing its
    config.json or its weights (or holding PyTorch .bin weights, or shards without their index), a run that has
    not saved a checkpoint yet."""
    key = f"{side}.load_parameters_path"
    where = f"{side} checkpoint not found at {path}"
    home = unexpanded_home(path)
    if home is not None:
        return f"{where}: {home[0]}", home[1]
    local = "" if hf.is_remote(path) or os.path.isabs(path) else f" ({os.path.abspath(path)})"
    if names is None and local and HUB_ID.fullmatch(path):
        return (
            f"{where}: there is no such folder{local}",
            f"{hub_download_hint(path).replace('load_parameters_path', key)}; otherwise give the folder's full path",
        )
    if names is None and in_run:
        return (
            f"{where}: there is no such folder{local}; a {side} run writes it when it saves its first checkpoint",
            f"train the {side} first, with a spec whose run directory holds this path (e.g. distillctl train "
            f"sweeps/tiny-teacher.yaml), or point {key} at a Hugging Face folder",
        )
    if names is None:
        return (
            f"{where}: there is no such file or folder{local}",
            f"check the path: {key} names a Hugging Face folder (config.json and model.safetensors) or a run's "
            "checkpoints folder",
        )
    folder = f"the {side} folder {path}"
    weights = sorted(n for n in names if n.endswith(".safetensors") or n == hf.INDEX)
    if hf.CONFIG in names and hf.SINGLE not in names and hf.INDEX not in names:
        # with weights the loader reads beside it, it would have loaded as a Hugging Face folder
        torch_weights = any(n.endswith((".bin", ".pt", ".pth")) for n in names)
        return weights_missing(folder, key, torch_weights=torch_weights, shards=len(weights))
    if weights:
        return (
            f"{folder} has {', '.join(weights[:3])}{' …' if len(weights) > 3 else ''} but no "
            f"{hf.CONFIG}, which says what model the weights are",
            f"copy the model's {hf.CONFIG} into the folder (save_pretrained writes it beside the weights)",
        )
    if in_run:
        return (
            f"{where}: the {side} run has saved no checkpoint there yet",
            f"let the {side} run train until it saves one (checkpoint.every_steps; e.g. distillctl train "
            "sweeps/tiny-teacher.yaml), then start this run again",
        )
    return (
        f"{where}: the folder holds neither a Hugging Face model (config.json and model.safetensors) nor a "
        "checkpoint of this trainer",
        f"point {key} at a save_pretrained folder or at a run's checkpoints folder",
    )


def _folder_names(path: str) -> list[str] | None:
    """The names in the folder `path` (local or an fsspec URL); [] for a file, None when nothing is there."""
    fs, root = fsspec.core.url_to_fs(path.rstrip("/"))
    if not fs.exists(root):
        return None
    if not fs.isdir(root):
        return []
    return [name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(root, detail=False)]


def _in_run(path: str) -> bool:
    """Whether `path` is (or would be) a place of a run of this trainer: a `checkpoints` folder, or a folder whose
    own or parent folder holds the run's spec.json."""
    fs, root = fsspec.core.url_to_fs(path.rstrip("/"))
    parent = root.rsplit("/", 1)[0] if "/" in root else "."
    return root.rsplit("/", 1)[-1] == "checkpoints" or any(fs.isfile(f"{d}/{_RUN_SPEC}") for d in (root, parent))


def _student_params(spec: DistillSpec, student: _Model, teacher: _Model | None, teacher_params: Any) -> Any:
    s = spec.student
    if s.load_parameters_path:
        params = _load_from(s.load_parameters_path, student, "student")
        _check_finite(params, s.load_parameters_path, student, "student")
        return params
    if s.init == "teacher":
        if teacher is None or teacher_params is None:
            raise UserError("student.init: teacher needs a teacher with load_parameters_path", "add a teacher block")
        depth = teacher.config.shape.num_layers
        cast = jax.tree.map(lambda a: a.dtype, student.abstract)

        def pruned(params):
            out = drop_layers(params, list(s.drop_layers), depth, teacher.config.scan_layers)
            if teacher.config.scan_layers != student.config.scan_layers:
                out["layers"] = _restack(out["layers"], student.config.scan_layers)
            return jax.tree.map(lambda a, dt: a.astype(dt), out, cast)

        return jax.jit(pruned, out_shardings=student.shardings)(teacher_params)
    # One parameter on the host at a time, placed as its shards before the next is drawn (the whole model was
    # drawn first: 280 GB of host memory per host for a 70B student).
    params: dict = {}
    for path, value in host_draws(student.abstract_state, spec.seed, stream=f"{spec.mode}/{spec.student.model}"):
        sharding = student.shardings
        for key in path:
            sharding = sharding[key]
        set_path(params, path, _put(value, sharding))
        del value
    return params


def _put(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds in full (each process fills its own shards)."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _restack(layers: Any, scan: bool) -> Any:
    """Between a stacked `layers` tree and a `{index: layer}` dict, when teacher and student scan differently."""
    if scan:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in sorted(layers)])
    depth = jax.tree.leaves(layers)[0].shape[0]
    return {i: jax.tree.map(lambda a, i=i: a[i], layers) for i in range(depth)}
