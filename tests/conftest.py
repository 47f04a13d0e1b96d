import pytest


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
