"""What a run id sees of the trainer's code: the image string (a digest, when the sweep names one or
`resolve_image` asks the registry for it; a tag gets a warning in tests/test_target_knobs.py), and for local
targets that ask for it, a hash of the installed trainer's sources."""

from __future__ import annotations

import importlib
import socket
import sys

from sweep_support import TARGET, expanded, sweep_data, write

from orchestrator import registry
from orchestrator.core import identity
from orchestrator.core.sweeps import expand_sweep

DIGEST = "example.com/distill@sha256:" + "ab" * 32


def test_the_image_digest_is_part_of_the_run_id(tmp_path):
    one = expanded(tmp_path, sweep_data(target={**TARGET, "image": DIGEST}), "a.yaml")
    other = expanded(tmp_path, sweep_data(target={**TARGET, "image": DIGEST.replace("ab", "cd")}), "b.yaml")
    assert one.points[0].run_id != other.points[0].run_id


def test_resolving_a_tag_parses_names_as_docker_does_and_falls_back_to_the_tag_with_a_warning(tmp_path):
    """The registry round trip itself is in tests/test_image.py (a loopback registry with the pushed image)."""
    hub = registry.parse_image("python:3.12")
    assert (hub.registry, hub.repository, hub.tag) == ("docker.io", "library/python", "3.12")
    assert registry.manifest_url(hub) == "https://registry-1.docker.io/v2/library/python/manifests/3.12"
    local = registry.parse_image("127.0.0.1:5000/team/trainer")  # a port is not a tag; no tag is `latest`
    assert (local.registry, local.repository, local.tag) == ("127.0.0.1:5000", "team/trainer", "latest")
    assert registry.manifest_url(local) == "http://127.0.0.1:5000/v2/team/trainer/manifests/latest"
    assert local.with_digest("sha256:" + "ab" * 32) == "127.0.0.1:5000/team/trainer@sha256:" + "ab" * 32
    assert registry.manifest_url(registry.parse_image("us-docker.pkg.dev/p/r/t:v1")).startswith("https://")

    with socket.socket() as s:  # a loopback port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tag = f"127.0.0.1:{port}/distill:dev"
    path = write(tmp_path, sweep_data(target={**TARGET, "image": tag, "resolve_image": True}), "r.yaml")
    resolved = expand_sweep(path)
    (warning,) = [p for p in resolved.problems if p.code == "image_not_resolved"]
    assert warning.severity == "warning" and "cannot reach the registry" in warning.message and warning.line
    assert resolved.sweep.target.image == tag
    plain = expand_sweep(write(tmp_path, sweep_data(target={**TARGET, "image": tag}), "p.yaml"))
    assert [p.run_id for p in resolved.points] == [p.run_id for p in plain.points]  # the option is not in the id


def test_local_run_ids_include_the_trainer_code_only_when_asked(tmp_path):
    local = {"kind": "local", "output_base": str(tmp_path / "runs")}
    plain = expanded(tmp_path, sweep_data(target=local), "a.yaml")
    coded = expanded(tmp_path, sweep_data(target={**local, "code_in_run_id": True}), "b.yaml")
    assert plain.points[0].run_id != coded.points[0].run_id
    # the option itself, off, is not part of the id: ids from before it stay
    off = expanded(tmp_path, sweep_data(target={**local, "code_in_run_id": False}), "c.yaml")
    assert off.points[0].run_id == plain.points[0].run_id
    # on a cluster the image is the code: the option changes nothing there
    cluster = expanded(tmp_path, sweep_data(target=TARGET), "d.yaml")
    cluster_coded = expanded(tmp_path, sweep_data(target={**TARGET, "code_in_run_id": True}), "e.yaml")
    assert cluster.points[0].run_id == cluster_coded.points[0].run_id


def test_the_trainer_code_hash_follows_the_sources_without_importing_them(tmp_path, monkeypatch):
    package = tmp_path / "fake_trainer"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (package / "models" / "layers.py").write_text("X = 1\n")
    spec = tmp_path / "fake_spec"
    spec.mkdir()
    (spec / "__init__.py").write_text("raise ImportError('never imported')\n")
    (spec / "defaults.py").write_text("STEPS = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    both = ("fake_trainer", "fake_spec")
    first = identity.trainer_code_hash.__wrapped__(both)
    assert first == identity.trainer_code_hash.__wrapped__(both) and len(first) == identity.SPEC_HASH_LENGTH
    (package / "models" / "layers.py").write_text("X = 2\n")
    second = identity.trainer_code_hash.__wrapped__(both)
    assert second != first
    (package / "models" / "layers.py").rename(package / "layers.py")  # same bytes, another module
    third = identity.trainer_code_hash.__wrapped__(both)
    assert third not in (first, second, None)
    # so is a C++ kernel it compiles, and not its other files
    (package / "kernel.cc").write_text("int f() { return 1; }\n")
    with_kernel = identity.trainer_code_hash.__wrapped__(both)
    assert with_kernel != third
    (package / "kernel.cc").write_text("int f() { return 2; }\n")
    assert identity.trainer_code_hash.__wrapped__(both) != with_kernel
    (package / "notes.txt").write_text("not code\n")
    third = identity.trainer_code_hash.__wrapped__(both)
    (package / "notes.txt").write_text("still not code\n")
    assert identity.trainer_code_hash.__wrapped__(both) == third
    # the spec package the trainer imports is its code too
    (spec / "defaults.py").write_text("STEPS = 2\n")
    assert identity.trainer_code_hash.__wrapped__(both) not in (first, second, third, None)
    assert "fake_trainer" not in sys.modules and "fake_spec" not in sys.modules
    assert identity.trainer_code_hash.__wrapped__(("no_such_package_here", "fake_spec")) is None
    # the real hash covers the trainer and distillspec
    assert identity.trainer_code_hash.__wrapped__() != identity.trainer_code_hash.__wrapped__(("trainer",))
