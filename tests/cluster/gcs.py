"""fake-gcs-server: a Cloud Storage JSON API emulator (built by hack/cluster/build.sh), so that tests write and
read `gs://` outputs through the same clients as on GKE.

`env` points them at it: gcsfs (and etils/orbax metadata through it) reads `STORAGE_EMULATOR_HOST`; tensorstore
(orbax's array storage) reads `TENSORSTORE_GCS_HTTP_URL` and `GOOGLE_AUTH_TOKEN_FOR_TESTING`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from .controlplane import free_ports, http_ok
from .processes import ComponentError, Supervisor
from .upstream import load_build

START_TIMEOUT = 30.0


class GcsEmulator:
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="distillctl-gcs-"))
        self.supervisor = Supervisor(self.workdir / "state.json", self.workdir / "logs")
        self.url = ""

    @property
    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: skip looking for Google credentials
            "GOOGLE_CLOUD_PROJECT": "distillctl-test",
            # gcsfs's experimental zonal/HNS support asks a gRPC Storage Control API the emulator lacks (a 60 s
            # timeout per bucket before it falls back to the JSON API every bucket also speaks).
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def start(self) -> None:
        binary = load_build(("fake-gcs-server",))["fake-gcs-server"]["binary"]
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        component = self.supervisor.start(
            "fake-gcs-server",
            [
                binary,
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                port,
                "-backend",
                "memory",
                "-external-url",
                self.url,
                "-public-host",
                f"127.0.0.1:{port}",
                "-log-level",
                "warn",
            ],
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not http_ok(f"{self.url}/storage/v1/b"):
            component.check()
            if time.monotonic() > deadline:
                raise ComponentError("fake-gcs-server", f"did not answer within {START_TIMEOUT:.0f}s", component.log)
            time.sleep(0.1)

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=distillctl-test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        self.supervisor.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
