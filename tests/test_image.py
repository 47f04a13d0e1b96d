"""The trainer image (trainer/Dockerfile), built with podman by hack/image/build.sh (`make image`) and run here;
and the controller image (orchestrator/Dockerfile, `make image-controller`), checked at the end.

What is checked inside it: it runs as an unprivileged user; its Python packages are exactly the pinned lock
(trainer/requirements.lock) plus the venv's own pip/setuptools, and none of the orchestrator's (Kubernetes client,
typer, Jinja2, matplotlib) nor the orchestrator itself; the trainer's modules import; the entrypoint is
`python -m trainer`, which rejects a bad spec with exit 1 and trains a tiny spec to metrics.jsonl and summary.json
in a mounted folder. The first build here makes a Debian base with mmdebstrap and downloads the wheels; later
builds reuse the per-user caches (~/.cache/distillctl: base tarball, podman storage with its layers, pip cache).
Skipped, with the reason, only where podman is not installed or cannot run containers.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
import yaml
from sweep_support import TARGET, sweep_data, write
from trainer_support import REPO, TEACHER, merged

from distillspec.contract import ENV_GLIBC_TUNABLES, trainer_process_env
from orchestrator.core.sweeps import expand_sweep
from orchestrator.registry import resolve_digest

pytestmark = pytest.mark.slow

PODMAN = str(REPO / "hack" / "image" / "podman.sh")
TAG = "distillctl-trainer:test"
UID = 10001
ORCHESTRATOR_ONLY = ("kubernetes", "typer", "jinja2", "matplotlib", "orchestrator", "distillctl")


def podman(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def locked(part: str = "trainer") -> dict[str, str]:
    """{normalised name: version} of every requirement in `<part>/requirements.lock`."""
    lock = (REPO / part / "requirements.lock").read_text()
    return {_norm(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\\]+)", lock, re.M)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_image(tag: str, part: str = "trainer") -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (`make image-tools` installs Debian's podman, runc and mmdebstrap)")
    probe = podman("info", "--format", "{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}", timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {probe.stderr.strip()[-500:]}")
    build = subprocess.run(
        [str(REPO / "hack" / "image" / "build.sh"), tag, part], capture_output=True, text=True, timeout=3000
    )
    assert build.returncode == 0, (build.stdout[-4000:], build.stderr[-4000:])
    return tag


@pytest.fixture(scope="module")
def image() -> str:
    return build_image(TAG)


@pytest.fixture(scope="module")
def controller_image() -> str:
    """The chart's image (orchestrator/Dockerfile); tests/test_service_cluster.py runs `serve` in it."""
    return build_image("distillctl:test", "orchestrator")


def test_the_image_is_non_root_pinned_and_holds_only_the_trainer(image):
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["/opt/venv/bin/python", "-m", "trainer"]
    probe = (
        "import importlib, importlib.metadata as md, importlib.util, json, os\n"
        "mods = ['jax', 'flax.nnx', 'optax', 'orbax.checkpoint', 'grain', 'safetensors', 'tokenizers', 'pydantic',\n"
        "        'yaml', 'fsspec', 'gcsfs', 'tensorstore', 'tensorboardX', 'pyarrow.parquet', 'datasets',\n"
        "        'distillspec.config', 'trainer.train', 'trainer.__main__', 'trainer.export', 'trainer.corpus',\n"
        "        'trainer.checkpoints.maxtext']\n"
        "for m in mods: importlib.import_module(m)\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'home': os.environ['HOME'],\n"
        "  'dists': {d.metadata['Name']: d.version for d in md.distributions()},\n"
        "  'found': {m: importlib.util.find_spec(m) is not None for m in json.loads(os.environ['ABSENT'])},\n"
        "  'writable': os.access('/opt/venv', os.W_OK) or os.access('/opt/distillctl/trainer', os.W_OK),\n"
        "  'tunables': os.environ.get('GLIBC_TUNABLES')}))\n"
    )
    out = podman(
        "run",
        "--rm",
        "--network=none",
        "-e",
        "JAX_PLATFORMS=cpu",
        "-e",
        f"ABSENT={json.dumps(ORCHESTRATOR_ONLY)}",
        "--entrypoint",
        "/opt/venv/bin/python",
        image,
        "-c",
        probe,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert (facts["uid"], facts["gid"], facts["home"]) == (UID, UID, "/home/trainer")
    assert not facts["writable"], "the installed code must not be writable by the user that runs it"
    assert facts["found"] == dict.fromkeys(ORCHESTRATOR_ONLY, False)
    # The trainer's process environment, as the local backend gives it (distillspec.contract.trainer_process_env).
    assert facts["tunables"] == trainer_process_env({})[ENV_GLIBC_TUNABLES]
    installed = {_norm(n): v for n, v in facts["dists"].items() if _norm(n) not in ("pip", "setuptools")}
    assert installed == locked()


def test_python_m_trainer_trains_a_tiny_spec_inside_the_image(image, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the container's user (uid 10001) writes the run folder here
    spec = merged(TEACHER, name="image", steps=4, logging={"every_steps": 2}, checkpoint={"every_steps": 4})
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    run = podman(
        "run",
        "--rm",
        "--network=none",
        "-e",
        "JAX_PLATFORMS=cpu",
        "--volume",
        f"{work}:/work",
        image,
        "--spec",
        "/work/spec.yaml",
        "--output-dir",
        "/work/out",
    )
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    run_dir = work / "out" / "image"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["metrics"]["distill/hard_loss"]["value"] > 0 for r in records)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["step"] == 4
    assert (run_dir / "metrics.jsonl").stat().st_uid == UID

    bad = podman(
        "run", "--rm", "--network=none", "-e", "DISTILLCTL_SPEC=" + json.dumps(merged(TEACHER, steps=0)), image
    )
    assert bad.returncode == 1 and "steps" in bad.stderr, bad.stderr[-2000:]


def test_the_image_is_pushed_to_a_loopback_registry_and_pulled_back_by_digest(image, tmp_path):
    registry = shutil.which("docker-registry")
    if registry is None:
        pytest.skip("docker-registry is not installed (`make image-tools` installs Debian's docker-registry)")
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "error"},
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    remote = f"127.0.0.1:{port}/distillctl-trainer"
    server = subprocess.Popen([registry, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as answer:
                    assert answer.status == 200
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.2)
        digestfile = tmp_path / "digest"
        push = podman(
            "push",
            "--tls-verify=false",
            "--compression-format=zstd",
            "--digestfile",
            str(digestfile),
            image,
            f"{remote}:test",
        )  # zstd: gzip spends most of the push compressing the layers
        assert push.returncode == 0, push.stderr[-2000:]
        digest = digestfile.read_text().strip()
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)

        # What the registry serves under that digest is the manifest pushed (its sha256 is the digest) ...
        inspect = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{remote}@{digest}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert inspect.returncode == 0 and json.loads(inspect.stdout)["Digest"] == digest, inspect.stderr
        # target.resolve_image: the tag resolves (a HEAD of the manifest) to the digest pushed, and the run ids
        # hash it: not those of the tag-named sweep, and a sweep naming the digest itself has the same ids.
        assert resolve_digest(f"{remote}:test") == digest
        ids = {}
        for name, image_ref, resolve in (
            ("tag", f"{remote}:test", False),
            ("resolved", f"{remote}:test", True),
            ("digest", f"{remote}@{digest}", False),
        ):
            data = sweep_data(target={**TARGET, "image": image_ref, "resolve_image": resolve})
            expansion = expand_sweep(write(tmp_path, data, f"{name}.yaml"))
            assert not [p for p in expansion.problems if p.code == "image_not_resolved"], expansion.problems
            ids[name] = [point.run_id for point in expansion.points]
            if resolve:
                assert expansion.sweep.target.image == f"{remote}@{digest}"
                assert not [p for p in expansion.problems if p.code == "mutable_image_tag"]
        assert ids["resolved"] == ids["digest"] != ids["tag"]
        # ... and pulled by digest it is the image built: the same config (image id), unprivileged user.
        pull = podman("pull", "--tls-verify=false", f"{remote}@{digest}")
        assert pull.returncode == 0, pull.stderr[-2000:]
        local, pulled = (json.loads(podman("image", "inspect", ref).stdout)[0] for ref in (image, f"{remote}@{digest}"))
        assert pulled["Id"] == local["Id"] and f"{remote}@{digest}" in pulled["RepoDigests"]
        assert pulled["Config"]["User"] == local["Config"]["User"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        podman("untag", image, f"{remote}:test")  # the same image: untagged, never removed


def test_the_controller_image_is_non_root_pinned_and_holds_the_orchestrator_without_jax(controller_image, tmp_path):
    """What `helm install` runs (`distillctl serve`): the orchestrator and the spec package on the locked
    orchestrator/requirements.lock, none of the trainer's packages, and the JobSet template found (`render`)."""
    config = json.loads(podman("image", "inspect", controller_image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}" and config["Entrypoint"] == ["distillctl"]
    probe = (
        "import importlib, importlib.metadata as md, importlib.util, json, os\n"
        "for m in ['orchestrator.service.run', 'orchestrator.cli.app', 'prometheus_client', 'gcsfs']:\n"
        "    importlib.import_module(m)\n"
        "absent = ['jax', 'flax', 'optax', 'numpy', 'matplotlib', 'trainer']\n"
        "print(json.dumps({'uid': os.getuid(),\n"
        "  'dists': {d.metadata['Name']: d.version for d in md.distributions()},\n"
        "  'found': [m for m in absent if importlib.util.find_spec(m) is not None],\n"
        "  'writable': os.access('/opt/venv', os.W_OK) or os.access('/opt/distillctl/orchestrator', os.W_OK)}))\n"
    )
    out = podman("run", "--rm", "--network=none", "--entrypoint", "/opt/venv/bin/python", controller_image, "-c", probe)
    assert out.returncode == 0, out.stderr[-4000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["uid"] == UID and facts["found"] == [] and not facts["writable"], facts
    installed = {_norm(n): v for n, v in facts["dists"].items() if _norm(n) not in ("pip", "setuptools")}
    assert installed == locked("orchestrator")
    # The console script the chart's Deployment runs, and the template it renders with.
    sweep = write(tmp_path, sweep_data())
    (tmp_path / "out").mkdir()
    for where, mode in ((tmp_path, 0o755), (sweep, 0o644), (tmp_path / "out", 0o777)):  # the image's user: uid 10001
        where.chmod(mode)
    rendered = podman(
        "run",
        "--rm",
        "--network=none",
        "--volume",
        f"{tmp_path}:/work",
        "--workdir",
        "/work",
        controller_image,
        "render",
        f"/work/{sweep.name}",
        "-o",
        "/work/out",
    )
    assert rendered.returncode == 0, rendered.stderr[-4000:]
    manifests = list((tmp_path / "out").iterdir())
    assert manifests and all(yaml.safe_load(p.read_text())["kind"] == "JobSet" for p in manifests), manifests
