"""The device mesh and the logical-to-mesh axis rules for parameters and activations.

Parameters carry logical axis names (`sharding_names` metadata: `("embed", "mlp")`); these rules map each name
to mesh axes, MaxText-style. A dimension that the mesh axes do not divide is replicated instead (tiny models on
many devices), so every spec that validates also runs.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters and optimizer state sharded
along `embed`), `tensor` (heads, MLP and vocabulary split across devices).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from distillspec import layout
from distillspec.config import MeshSpec
from trainer.exit_codes import UserError

MESH_AXES = layout.MESH_AXES
BATCH_AXES = ("data", "fsdp")  # the mesh axes that split a batch's rows (tokens)

# logical name -> mesh axes (a tuple shards one dimension over several axes; None replicates)
LOGICAL_RULES: dict[str, tuple[str, ...] | None] = {
    # parameters
    "layers": None,
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "mlp": ("tensor",),
    "norm": None,
    # activations
    "act_batch": BATCH_AXES,
    "act_length": None,
    "act_embed": None,
    "act_heads": ("tensor",),
    "act_vocab": ("tensor",),
    "act_layers": None,
}


def mesh_shape(spec: MeshSpec, num_devices: int, slices: int = 1) -> tuple[int, int, int]:
    """Axis sizes (data, fsdp, tensor) with unset axes decided for `slices` slices (`MeshSpec.resolved_axes`) and
    the -1 axis filled; raises UserError when they do not fit (`distillspec.layout`, which `plan` applies too)."""
    try:
        return layout.mesh_shape(spec, num_devices, slices)
    except layout.LayoutError as e:
        raise UserError(e.message, e.hint) from None


def slice_count(devices: Sequence[jax.Device]) -> int:
    """Distinct `slice_index` values of the devices (multi-slice TPU), else 1."""
    return len({getattr(d, "slice_index", 0) for d in devices}) or 1


def make_mesh(spec: MeshSpec, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh over `devices` (default: all). Within a slice devices are laid out for the chip interconnect
    (`mesh_utils.create_device_mesh`); with several slices (`slice_index`), each axis is split into a part
    inside slices (ICI) and a part across them (DCN, `create_hybrid_device_mesh`), the cross-slice part taken
    from `data` first, so FSDP's all-gathers stay inside a slice."""
    devices = list(devices if devices is not None else jax.devices())
    slices = slice_count(devices)
    shape = mesh_shape(spec, len(devices), slices)
    if slices > 1:
        dcn = _dcn_split(shape, slices)
        ici = tuple(size // across for size, across in zip(shape, dcn))
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
    else:
        try:
            grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):  # a layout the topology helper cannot place
            grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _dcn_split(shape: tuple[int, int, int], slices: int) -> tuple[int, int, int]:
    try:
        return layout.dcn_split(shape, slices)
    except layout.LayoutError as e:
        raise UserError(e.message, e.hint) from None


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The PartitionSpec for an array of `shape` whose dimensions have logical `names`.

    A mesh axis is used at most once per array, and only where it divides the dimension.
    """
    used: set[str] = set()
    out: list[tuple[str, ...] | None] = []
    for name, size in zip(names, shape):
        axes = LOGICAL_RULES.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        keep = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if not keep or size % math.prod(mesh.shape[a] for a in keep):
            out.append(None)
            continue
        used.update(keep)
        out.append(keep if len(keep) > 1 else keep[0])
    return PartitionSpec(*out)


def named(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding inside a jitted function run under `jax.set_mesh(mesh)`; no-op without
    a mesh (eager tests, single device)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch arrays `[B, ...]`: rows split over data and fsdp."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


ROWS = "rows"  # placeholder in `per_device`'s PartitionSpecs for the token-splitting mesh axes


def token_axes(batch_axes: Sequence[str] | None, n_tokens: int) -> tuple[tuple[str, ...], AbstractMesh | None]:
    """The mesh axes (of the mesh in context; `batch_axes`, or `BATCH_AXES` when None) over which a leading axis
    of `n_tokens` is split, when that split divides it; `((), None)` otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return (), None
    wanted = batch_axes if batch_axes is not None else BATCH_AXES
    axes = tuple(a for a in wanted if a in mesh.shape and mesh.shape[a] > 1)
    if not axes or n_tokens % math.prod(mesh.shape[a] for a in axes):
        return (), None
    return axes, mesh


def per_device(fn, batch_axes: Sequence[str] | None, n_tokens: int, in_specs, out_specs):
    """`fn(axes, ...)` run by `jax.shard_map` on each device's tokens (`ROWS` in a spec stands for the
    token-splitting axes of `token_axes`), or `fn((), ...)` on all tokens without such a mesh."""
    axes, mesh = token_axes(batch_axes, n_tokens)
    if not axes:
        return functools.partial(fn, ())

    def place(specs):
        def one(s: PartitionSpec) -> PartitionSpec:
            return PartitionSpec(*(axes if a == ROWS else a for a in s))

        return jax.tree.map(one, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))

    in_specs = place(in_specs)
    mapped = jax.shard_map(
        functools.partial(fn, axes), mesh=mesh, in_specs=in_specs, out_specs=place(out_specs), check_vma=False
    )
    if not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return mapped
    # Under explicit sharding shard_map takes its inputs only as `in_specs` says: replicate what is replicated in
    # them (the weight all-gather FSDP does for any matmul) and keep the tokens where they are.
    return lambda *args: mapped(
        *jax.tree.map(jax.reshard, args, in_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    )


def expected_processes(env: dict[str, str]) -> tuple[int | None, str]:
    """The JAX process count a multi-host TPU environment promises (slices × hosts per slice) and the variables
    it was read from; (None, "") when the environment says nothing. Hosts per slice: the entries of
    `TPU_WORKER_HOSTNAMES`; slices: `MEGASCALE_NUM_SLICES` (1 when unset)."""
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    slices_text = env.get("MEGASCALE_NUM_SLICES", "")
    if not hosts and not slices_text:
        return None, ""
    try:
        slices = int(slices_text) if slices_text else 1
    except ValueError:
        raise UserError(
            f"MEGASCALE_NUM_SLICES={slices_text!r} is not a whole number", "check the JobSet's environment"
        ) from None
    seen = f"MEGASCALE_NUM_SLICES={slices_text or '(unset)'}, TPU_WORKER_HOSTNAMES lists {len(hosts) or 1} host(s)"
    return slices * max(len(hosts), 1), seen


def check_process_count(env: dict[str, str], process_count: int) -> None:
    """Raise UserError (exit 1) when the JAX processes that joined are not the slices × hosts the environment
    describes: otherwise every pod would train alone and write the same output directory."""
    expected, seen = expected_processes(env)
    if expected is not None and process_count != expected:
        raise UserError(
            f"{process_count} JAX process(es) joined, but the environment describes {expected} ({seen})",
            "check that jax.distributed found every host (TPU_WORKER_HOSTNAMES, MEGASCALE_* variables) and that "
            "the JobSet runs one pod per host of every slice",
        )
