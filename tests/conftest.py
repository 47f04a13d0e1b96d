import os

import pytest

# gcsfs reads this once, when first imported (by whichever test touches gs:// first): its experimental
# zonal/HNS support asks a gRPC API that the Cloud Storage emulator (the `gcs` fixture) does not serve.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@pytest.fixture(scope="session")
def control_plane():
    """A local Kubernetes control plane with fake TPU node pools (see tests/cluster)."""
    from tests.cluster import ControlPlane

    cp = ControlPlane()
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def gcs():
    """A Cloud Storage emulator (fake-gcs-server; see tests/cluster/gcs.py) for gs:// outputs."""
    from tests.cluster import GcsEmulator

    emulator = GcsEmulator()
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist (`make test` runs `-n auto --dist loadgroup`): the tests of one file stay on one
    worker, so module fixtures (reference checkpoints, trained runs) are built once, and every test on the control
    plane shares one worker, so one control plane serves them all."""
    for item in items:
        group = "control-plane" if item.get_closest_marker("cluster") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
