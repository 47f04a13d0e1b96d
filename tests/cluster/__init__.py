"""A local Kubernetes control plane (etcd, kube-apiserver, controller-manager,
scheduler, JobSet, Kueue, kwok) with fake TPU node pools, for tests.

Build the components with `make cluster-build` (hack/cluster/build.sh); use the
`control_plane` pytest fixture (tests/conftest.py), `ControlPlane` directly, or
`python -m tests.cluster up|down|status` (`make cluster-up` / `make cluster-down`).
"""

# Names are loaded lazily, so that `python -m tests.cluster down` needs only
# the standard library.
_EXPORTS = {
    "ControlPlane": "controlplane",
    "GcsEmulator": "gcs",
    "EXIT_CODE_ANNOTATION": "controlplane",
    "RUN_DURATION_ANNOTATION": "controlplane",
    "tpu_nodes": "controlplane",
    "ComponentError": "processes",
    "reap_stale_sessions": "processes",
    "NotBuilt": "upstream",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
