"""The device mesh and the logical-to-mesh axis rules for parameters and activations.

Parameters carry logical axis names (`sharding_names` metadata: `("embed", "mlp")`); these rules map each name
to mesh axes, MaxText-style. A dimension that the mesh axes do not divide is replicated instead (tiny models on
many devices), so every spec that validates also runs.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters and optimizer state sharded
along `embed`), `tensor` (heads, MLP and vocabulary split across devices).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distillspec.config import MeshSpec
from trainer.exit_codes import UserError

MESH_AXES = ("data", "fsdp", "tensor")

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
    "act_batch": ("data", "fsdp"),
    "act_length": None,
    "act_embed": None,
    "act_heads": ("tensor",),
    "act_vocab": ("tensor",),
    "act_layers": None,
}


def mesh_shape(spec: MeshSpec, num_devices: int) -> tuple[int, int, int]:
    """Axis sizes (data, fsdp, tensor) with the -1 axis filled; raises UserError when they do not fit."""
    sizes = [spec.data, spec.fsdp, spec.tensor]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise UserError(
                f"mesh axes {dict(zip(MESH_AXES, sizes))} do not divide the {num_devices} devices",
                "choose mesh axis sizes whose product divides the device count",
            )
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but {num_devices} are present",
            "set one mesh axis to -1 to take the remaining devices",
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(spec: MeshSpec, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(spec, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


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
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
