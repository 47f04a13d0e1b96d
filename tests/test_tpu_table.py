"""The TPU table against XPK's `xpk.core.system_characteristics` (`make xpk` installs XPK with --no-deps)."""

from __future__ import annotations

import pytest

from distillspec import tpu

xpk_sc = pytest.importorskip("xpk.core.system_characteristics", reason="XPK is a test reference: run `make xpk`")
XPK = xpk_sc.UserFacingNameToSystemCharacteristics


@pytest.mark.parametrize("name", sorted(tpu.TPU_TYPES))
def test_each_tpu_type_matches_xpk(name):
    ours = tpu.TPU_TYPES[name]
    for key in (ours.name, ours.topology_name):  # XPK accepts both names for the same system
        theirs = XPK[key]
        assert theirs.accelerator_type == xpk_sc.AcceleratorType.TPU
        assert (ours.accelerator, ours.topology, ours.machine_type, ours.chips_per_vm, ours.vms_per_slice) == (
            theirs.gke_accelerator,
            theirs.topology,
            theirs.gce_machine_type,
            theirs.chips_per_vm,
            theirs.vms_per_slice,
        )
    assert XPK[name].device_type == name


def test_node_labels_and_resource_match_xpk():
    characteristics = xpk_sc.AcceleratorTypeToAcceleratorCharacteristics[xpk_sc.AcceleratorType.TPU]
    assert (tpu.ACCELERATOR_LABEL, tpu.TOPOLOGY_LABEL, tpu.RESOURCE) == (
        characteristics.accelerator_label,
        characteristics.machine_label,
        characteristics.resource_type,
    )


def test_every_family_and_the_done_when_shapes_are_covered():
    assert {t.family for t in tpu.TPU_TYPES.values()} == {"v4", "v5e", "v5p", "v6e", "tpu7x"}
    v5p, v6e = tpu.lookup("v5p-128"), tpu.lookup("v6e-256")
    assert (v5p.topology, v5p.vms_per_slice, v5p.chips, v5p.hbm_gb_per_chip) == ("4x4x4", 16, 64, 95.0)
    assert (v6e.topology, v6e.vms_per_slice, v6e.chips, v6e.hbm_gb_per_chip) == ("16x16", 64, 256, 32.0)


def test_lookup_accepts_topology_names_and_the_v5e_alias():
    assert tpu.lookup("v5p-4x4x4").name == "v5p-128"
    assert tpu.lookup("v5e-16").name == "v5litepod-16"


def test_unknown_types_get_nearby_sizes():
    with pytest.raises(tpu.UnknownTpuType) as e:
        tpu.lookup("v6e-200")
    assert e.value.suggestions[0] == "v6e-256"
    with pytest.raises(tpu.UnknownTpuType) as e:
        tpu.lookup("v5x-128")
    assert "v5p-128" in e.value.suggestions
