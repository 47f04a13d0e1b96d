"""Cloud TPU slice types as GKE sees them: node labels, topology, hosts, chips and memory.

The reference is XPK's `xpk.core.system_characteristics` (the same names `xpk workload create --tpu-type`
accepts); `tests/test_tpu_table.py` compares every entry here with XPK's. A slice type is named either by
its TensorCore count (`v5p-128`: 64 chips × 2 cores) or by its topology (`v5p-4x4x4`). v5e slices are named
`v5litepod-N` as in XPK and GKE; `v5e-N` is accepted as an alias.

A multi-host slice has 4 chips per VM (the `google.com/tpu` limit of each pod), so VMs per slice = chips / 4;
a 1-chip slice (`v6e-1`, `tpu7x-2`) is a single VM with one chip. HBM per chip is the published capacity in
GB (10^9 bytes), which is conservative where the hardware has GiB.
"""

from __future__ import annotations

import dataclasses
import math
from difflib import get_close_matches
from types import MappingProxyType
from typing import Mapping

ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
RESOURCE = "google.com/tpu"
MACHINE_TYPE_LABEL = "node.kubernetes.io/instance-type"
SPOT_LABEL = "cloud.google.com/gke-spot"
FLEX_START_LABEL = "cloud.google.com/gke-queued"  # XPK's --flex (queued provisioning)
RESERVATION_LABEL = "cloud.google.com/reservation-name"
# Topologies GKE offers on two machine types: v5e and v6e `2x4` is one 8-chip VM (ct5lp-hightpu-8t,
# ct6e-standard-8t) or two 4-chip VMs (the `-4t` types, the multi-host slice this table describes). The
# topology label alone can place a 2-pod JobSet on a 1-VM pool, where the second pod never schedules.
AMBIGUOUS_TOPOLOGIES = frozenset({("v5e", "2x4"), ("v6e", "2x4")})


@dataclasses.dataclass(frozen=True)
class TpuType:
    """One TPU slice shape. `chips` is per slice; widths are counts, memory in bytes."""

    name: str  # the XPK device type, e.g. "v5p-128"
    family: str  # "v4", "v5e", "v5p", "v6e", "tpu7x"
    accelerator: str  # value of the `cloud.google.com/gke-tpu-accelerator` node label
    topology: str  # value of the `cloud.google.com/gke-tpu-topology` node label
    machine_type: str  # GCE machine type of each VM
    chips_per_vm: int  # the `google.com/tpu` resource limit of each pod
    vms_per_slice: int  # pods per slice: the Job's parallelism and completions
    tensorcores_per_chip: int
    hbm_gb_per_chip: float
    peak_bf16_tflops_per_chip: float  # published peak dense bf16 throughput, for chip-hour estimates

    @property
    def chips(self) -> int:
        return self.chips_per_vm * self.vms_per_slice

    @property
    def hbm_bytes_per_chip(self) -> int:
        return int(self.hbm_gb_per_chip * 1e9)

    @property
    def devices_per_chip(self) -> int:
        """JAX devices per chip: v4 and v5p merge their two TensorCores into one device (megacore); TPU7x shows
        each TensorCore as a device of its own (JAX's mesh utilities lay its trays out as 2 devices per chip)."""
        return self.tensorcores_per_chip if self.family == "tpu7x" else 1

    @property
    def devices(self) -> int:
        """JAX devices per slice: what the trainer's mesh and `per_device_batch_size` count."""
        return self.chips * self.devices_per_chip

    @property
    def hbm_bytes_per_device(self) -> int:
        return self.hbm_bytes_per_chip // self.devices_per_chip

    @property
    def topology_ambiguous(self) -> bool:
        """True when GKE has node pools of this topology on another machine type (see AMBIGUOUS_TOPOLOGIES)."""
        return (self.family, self.topology) in AMBIGUOUS_TOPOLOGIES

    @property
    def topology_name(self) -> str:
        """The alternative name by topology (`v5p-4x4x4`); XPK accepts both."""
        return f"{self.name.rsplit('-', 1)[0]}-{self.topology}"


@dataclasses.dataclass(frozen=True)
class _Family:
    family: str
    prefix: str
    accelerator: str
    machine_type: str
    tensorcores_per_chip: int
    hbm_gb_per_chip: float
    peak_bf16_tflops: float
    topologies: tuple[str, ...]
    single_chip_machine_type: str | None = None  # the 1-chip VM (`ct6e-standard-1t`), where there is one


# Sizes people use; XPK knows many more 3-D shapes (every multiple of 4 up to its cube limit). A shape
# missing here is an "unknown TPU type" with suggestions, not a guess.
_FAMILIES = (
    _Family(
        "v4",
        "v4",
        "tpu-v4-podslice",
        "ct4p-hightpu-4t",
        2,
        32.0,
        275.0,
        ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x12", "8x8x16", "8x16x16"),
    ),
    _Family(
        "v5e",
        "v5litepod",
        "tpu-v5-lite-podslice",
        "ct5lp-hightpu-4t",
        1,
        16.0,
        197.0,
        ("2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
    ),
    _Family(
        "v5p",
        "v5p",
        "tpu-v5p-slice",
        "ct5p-hightpu-4t",
        2,
        95.0,
        459.0,
        (
            "2x2x1",
            "2x2x2",
            "2x2x4",
            "2x4x4",
            "4x4x4",
            "4x4x8",
            "4x8x8",
            "8x8x8",
            "8x8x16",
            "8x16x16",
            "12x12x12",
            "16x16x16",
            "16x16x24",
        ),
    ),
    _Family(
        "v6e",
        "v6e",
        "tpu-v6e-slice",
        "ct6e-standard-4t",
        1,
        32.0,
        918.0,
        ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
        single_chip_machine_type="ct6e-standard-1t",
    ),
    _Family(
        "tpu7x",
        "tpu7x",
        "tpu7x",
        "tpu7x-standard-4t",
        2,
        192.0,
        2307.0,
        (
            "1x1x1",
            "2x2x1",
            "2x2x2",
            "2x2x4",
            "2x4x4",
            "4x4x4",
            "4x4x8",
            "4x8x8",
            "8x8x8",
            "8x8x16",
            "8x16x16",
            "16x16x16",
        ),
        single_chip_machine_type="tpu7x-standard-1t",
    ),
)

ALIASES = {"v5e": "v5litepod"}


def _build() -> dict[str, TpuType]:
    table: dict[str, TpuType] = {}
    for f in _FAMILIES:
        for topology in f.topologies:
            chips = math.prod(int(d) for d in topology.split("x"))
            chips_per_vm = 1 if chips == 1 else 4
            machine = f.single_chip_machine_type if chips == 1 else f.machine_type
            assert machine is not None and chips % chips_per_vm == 0
            name = f"{f.prefix}-{chips * f.tensorcores_per_chip}"
            table[name] = TpuType(
                name,
                f.family,
                f.accelerator,
                topology,
                machine,
                chips_per_vm,
                chips // chips_per_vm,
                f.tensorcores_per_chip,
                f.hbm_gb_per_chip,
                f.peak_bf16_tflops,
            )
    return table


TPU_TYPES: Mapping[str, TpuType] = MappingProxyType(_build())
_BY_TOPOLOGY_NAME = {t.topology_name: t for t in TPU_TYPES.values()}


# Shapes GKE offers that this table (XPK's) does not: said as such, not as a typo with the nearest sizes.
NOT_IN_TABLE = {
    name: "single-host v5e slices (ct5lp-hightpu-1t, -4t and the one-VM -8t pools) are not in XPK's table, which "
    "distillctl follows: use v5litepod-8 or larger (VMs of 4 chips), or v6e-1 / v6e-4 for one host"
    for name in ("v5litepod-1", "v5litepod-4", "v5litepod-1x1", "v5litepod-2x2")
}


class UnknownTpuType(ValueError):
    """`name` is not in the table; `suggestions` holds close names; `why` (words for `hint`) what is known of a shape
    the table lacks."""

    def __init__(self, name: str, suggestions: list[str], why: str = ""):
        self.name, self.suggestions = name, suggestions
        # what follows "unknown TPU type NAME" (`distillspec.sweep` words its own error with it too)
        self.hint = f": {why}" if why else f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown TPU type {name!r}{self.hint}")


def canonical_name(name: str) -> str:
    """`v5e-16` -> `v5litepod-16`; other names unchanged."""
    prefix, _, rest = name.partition("-")
    return f"{ALIASES[prefix]}-{rest}" if prefix in ALIASES and rest else name


def lookup(name: str) -> TpuType:
    """The slice type called `name` (device-type or topology form); raises UnknownTpuType."""
    key = canonical_name(name.strip().lower())
    if key in TPU_TYPES:
        return TPU_TYPES[key]
    if key in _BY_TOPOLOGY_NAME:
        return _BY_TOPOLOGY_NAME[key]
    raise UnknownTpuType(name, suggest(name), NOT_IN_TABLE.get(key, ""))


def suggest(name: str) -> list[str]:
    """Close names: same family first, then spelling."""
    key = canonical_name(name.strip().lower())
    names = list(TPU_TYPES)
    prefix = key.split("-", 1)[0]
    same_family = [n for n in names if n.startswith(prefix + "-")]
    if same_family:
        try:
            wanted = int(key.split("-", 1)[1])
        except (IndexError, ValueError):
            wanted = None
        if wanted is not None:  # the nearest sizes, smaller and larger
            by_distance = sorted(same_family, key=lambda n: abs(math.log(int(n.split("-")[1]) / max(wanted, 1))))
            return by_distance[:3]
        return same_family[:3]
    return get_close_matches(key, names + list(_BY_TOPOLOGY_NAME), n=3, cutoff=0.5)
