"""The default mesh is FSDP inside a slice and data parallel across slices; explicit axes still win; multi-host
start-up refuses a process count the TPU environment does not describe."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import subprocess
import sys

import pytest
from trainer_support import REPO, python_env

pytest.importorskip("jax")

from distillspec.config import MeshSpec  # noqa: E402
from trainer.exit_codes import UserError  # noqa: E402
from trainer.sharding import _dcn_split, check_process_count, expected_processes, make_mesh, mesh_shape  # noqa: E402


def test_unset_axes_mean_fsdp_inside_slices_and_data_across():
    assert mesh_shape(MeshSpec(), 8) == (1, 8, 1)
    assert mesh_shape(MeshSpec(), 128, slices=2) == (2, 64, 1)
    assert mesh_shape(MeshSpec(tensor=4), 128, slices=2) == (2, 16, 4)
    assert mesh_shape(MeshSpec(data=-1, fsdp=1), 8) == (8, 1, 1)  # today's all-data-parallel, when asked for
    assert mesh_shape(MeshSpec(fsdp=4), 8) == (2, 4, 1)  # an unset axis takes what is left
    assert mesh_shape(MeshSpec(fsdp=-1), 16, slices=2) == (2, 8, 1)
    assert mesh_shape(MeshSpec(data=2), 8) == (2, 4, 1)


def test_slices_are_taken_from_data_first():
    assert _dcn_split((2, 64, 1), 2) == (2, 1, 1)
    assert _dcn_split((1, 16, 1), 4) == (1, 4, 1)  # data 1: FSDP spans slices (the user asked for it)
    with pytest.raises(UserError, match="cannot be split over 3 slices"):
        _dcn_split((2, 4, 1), 3)


@dataclasses.dataclass(frozen=True)
class Chip:
    """What `mesh_utils` reads of a TPU device (no TPU here): its id, slice, position in the slice's 3-D torus."""

    id: int
    slice_index: int
    coords: tuple[int, int, int]
    process_index: int
    core_on_chip: int = 0
    platform: str = "tpu"
    device_kind: str = "TPU v5"


def v5p_slices(count: int, cube: tuple[int, int, int] = (4, 4, 4)) -> list[Chip]:
    """`count` v5p-128 slices: 64 chips each in a 4 × 4 × 4 torus, 4 chips per host."""
    chips = []
    for s in range(count):
        for i, (z, y, x) in enumerate(itertools.product(*(range(k) for k in reversed(cube)))):
            chips.append(Chip(id=len(chips), slice_index=s, coords=(x, y, z), process_index=s * 16 + i // 4))
    return chips


@pytest.mark.parametrize(
    "spec, shape",
    [(MeshSpec(), (2, 64, 1)), (MeshSpec(tensor=4), (2, 16, 4)), (MeshSpec(data=4), (4, 32, 1))],
)
def test_two_v5p_slices_keep_fsdp_and_tensor_inside_a_slice(spec, shape):
    """`make_mesh` on two slices' worth of TPU devices (jax's own topology code lays out each slice's torus): every
    FSDP × tensor group is one slice's chips, so only the data axis crosses the data-centre network."""
    mesh = make_mesh(spec, v5p_slices(2))
    grid = mesh.devices
    assert grid.shape == shape
    for row in grid.reshape(shape[0], -1):
        assert len({chip.slice_index for chip in row}) == 1, "an FSDP or tensor group spans two slices"
    per_slice = collections.Counter(chip.slice_index for chip in grid[:, 0, 0])
    assert per_slice == {0: shape[0] // 2, 1: shape[0] // 2}
    assert sorted(chip.id for chip in grid.ravel()) == list(range(128))


def test_data_one_makes_fsdp_span_the_slices_when_asked():
    grid = make_mesh(MeshSpec(data=1, fsdp=-1), v5p_slices(2)).devices
    assert grid.shape == (1, 128, 1)
    assert {chip.slice_index for chip in grid.ravel()} == {0, 1}


def test_process_count_must_match_the_tpu_environment():
    env = {"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3", "MEGASCALE_NUM_SLICES": "2"}
    assert expected_processes(env) == (8, "MEGASCALE_NUM_SLICES=2, TPU_WORKER_HOSTNAMES lists 4 host(s)")
    check_process_count(env, 8)
    with pytest.raises(UserError, match=r"1 JAX process\(es\) joined, but the environment describes 8") as e:
        check_process_count(env, 1)
    assert "MEGASCALE_NUM_SLICES=2" in e.value.message
    assert expected_processes({}) == (None, "")
    check_process_count({}, 1)
    assert expected_processes({"TPU_WORKER_HOSTNAMES": "h0,h1"})[0] == 2


SCRIPT = """
import jax
from flax import nnx
from distillspec.config import MeshSpec
from trainer.models import ModelConfig, abstract_model
from distillspec.registry import MODELS
from trainer.setup import param_shardings
from trainer.sharding import make_mesh

mesh = make_mesh(MeshSpec())
print("shape", dict(mesh.shape))
_, abstract = abstract_model(ModelConfig(MODELS["tiny-4l"]))
shardings = param_shardings(abstract, mesh)
shapes = nnx.to_pure_dict(abstract)
sharded = replicated = 0
for s, a in zip(jax.tree.leaves(shardings), jax.tree.leaves(shapes)):
    shard = s.shard_shape(a.shape)
    if shard != a.shape:
        sharded += 1
    else:
        replicated += 1
    if a.size >= 4096:  # every matrix; norm scales [L, D] stay replicated by design
        assert shard != a.shape, (a.shape, s.spec)
print("sharded", sharded, "replicated", replicated)
"""


def test_default_mesh_shards_parameters_on_eight_devices():
    env = python_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shape {'data': 1, 'fsdp': 8, 'tensor': 1}" in done.stdout
    assert "sharded 0" not in done.stdout, done.stdout


def test_a_per_device_batch_size_that_makes_no_whole_row_count_is_refused():
    # 1.5 rows on one device trained 1 row a step, silently; 0.5 said "gives 0 rows, which ... (1) do not divide".
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from distillspec.config import DistillSpec
    from trainer.exit_codes import UserError
    from trainer.setup import global_rows

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))

    def rows(per_device: float) -> int:
        spec = DistillSpec.model_validate(
            {"mode": "pretrain", "student": {"model": "tiny-2l"}, "batch": {"per_device_batch_size": per_device}}
        )
        return global_rows(spec, mesh)

    assert rows(2) == 2
    with pytest.raises(UserError, match="gives 1.5 rows: a row cannot be split"):
        rows(1.5)
    with pytest.raises(UserError, match="gives 0.5 rows: a micro-batch needs at least one"):
        rows(0.5)
