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


# The files whose tests run on the control plane (marked `cluster`): one work unit for pytest-xdist, so one worker
# runs them all on one control plane (each worker that ran one would start its own, a minute and a core each).
CONTROL_PLANE_FILES = frozenset(
    {
        "tests/test_control_plane.py",
        "tests/test_launch_kubernetes.py",
        "tests/test_launch_kubernetes_gke.py",
        "tests/test_launch_xpk.py",
        "tests/test_service_cluster.py",
    }
)


def pytest_collection_modifyitems(config, items):
    strays = sorted({i.nodeid.split("::")[0] for i in items if i.get_closest_marker("cluster")} - CONTROL_PLANE_FILES)
    if strays:
        raise pytest.UsageError(f"add {', '.join(strays)} to CONTROL_PLANE_FILES in tests/conftest.py")


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs `-n auto --dist loadfile`: a file's tests stay on one worker, so module fixtures (reference
    checkpoints, trained runs) are built once, and the control plane's files form one unit. (A scheduler of our own,
    because xdist 3.8's `loadgroup` no longer groups under pytest 9.2, whose node ids it can no longer suffix.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrControlPlane(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "control-plane" if path in CONTROL_PLANE_FILES else path

    return FileOrControlPlane(config, log)
