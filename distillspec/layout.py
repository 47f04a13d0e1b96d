"""How a run's batch and mesh lay out over its devices: the arithmetic the trainer applies at start-up, here JAX-free
so that `plan` and `sweep` apply it to a cluster target's chip count before anything is launched (a mesh the
slices cannot hold was found only once Kueue had admitted the run and every pod exited 1).

`mesh_shape` fills the mesh's -1 axis, `dcn_split` says how many slices each axis spans, `global_rows` how many
rows one micro-batch has across the devices. Each raises `LayoutError` with what to change.
"""

from __future__ import annotations

import math

from distillspec.config import MeshSpec

MESH_AXES = ("data", "fsdp", "tensor")


class LayoutError(ValueError):
    """A batch or mesh the devices cannot hold: `field` is the spec field to change (`mesh`, `batch...`)."""

    def __init__(self, message: str, hint: str, field: tuple[str, ...]):
        super().__init__(message)
        self.message, self.hint, self.field = message, hint, field


def mesh_shape(spec: MeshSpec, devices: int, slices: int = 1) -> tuple[int, int, int]:
    """Axis sizes (data, fsdp, tensor): unset axes decided for `slices` slices (`MeshSpec.resolved_axes`), the -1
    axis filled with the devices the others leave."""
    sizes = list(spec.resolved_axes(slices))
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if devices % fixed:
            raise LayoutError(
                f"mesh axes {dict(zip(MESH_AXES, sizes))} do not divide the {devices} devices",
                "choose mesh axis sizes whose product divides the device count",
                ("mesh",),
            )
        sizes[sizes.index(-1)] = devices // fixed
    if math.prod(sizes) != devices:
        raise LayoutError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but {devices} are present",
            "set one mesh axis to -1 to take the remaining devices",
            ("mesh",),
        )
    return sizes[0], sizes[1], sizes[2]


def dcn_split(shape: tuple[int, int, int], slices: int) -> tuple[int, int, int]:
    """How many slices each axis spans (their product is `slices`): data first, then fsdp, then tensor, so FSDP's
    all-gathers stay inside a slice where they can."""
    left, out = slices, []
    for size in shape:
        across = math.gcd(size, left)
        out.append(across)
        left //= across
    if left != 1:
        raise LayoutError(
            f"mesh {dict(zip(MESH_AXES, shape))} cannot be split over {slices} slices",
            "make the data axis (or data × fsdp) a multiple of the slice count",
            ("mesh",),
        )
    return out[0], out[1], out[2]


def global_rows(per_device: float, shape: tuple[int, int, int]) -> int:
    """Rows of one micro-batch across the mesh's devices; the batch axes (data × fsdp) must divide them."""
    devices = math.prod(shape)
    exact = per_device * devices
    rows = math.floor(exact + 1e-9)
    split = shape[0] * shape[1]
    field = ("batch", "per_device_batch_size")
    if rows < 1 or abs(exact - rows) > 1e-9:  # 1.5 rows trained 1, silently
        raise LayoutError(
            f"batch.per_device_batch_size {per_device:g} on {devices} devices gives {exact:g} rows: "
            + ("a micro-batch needs at least one" if rows < 1 else "a row cannot be split"),
            f"pick a per_device_batch_size whose product with the device count ({devices}) is a whole number of "
            "rows, e.g. " + ", ".join(f"{n / devices:g}" for n in (split, 2 * split)),
            field,
        )
    if rows % split:
        raise LayoutError(
            f"batch.per_device_batch_size {per_device:g} on {devices} devices gives {rows} rows, which the data × "
            f"fsdp mesh axes ({split}) do not divide",
            "pick a per_device_batch_size whose product with the device count is a multiple of data × fsdp, e.g. "
            + ", ".join(f"{n / devices:g}" for n in (split, 2 * split)),
            field,
        )
    return rows


def check(mesh: MeshSpec, per_device: float, devices: int, slices: int = 1) -> None:
    """Raise LayoutError unless the mesh and the batch fit `devices` devices over `slices` slices."""
    shape = mesh_shape(mesh, devices, slices)
    if slices > 1:
        dcn_split(shape, slices)
    global_rows(per_device, shape)
