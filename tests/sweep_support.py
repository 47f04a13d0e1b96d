"""Builders and validators for sweep tests: sweep files from dicts, and the JobSet / Kubernetes schemas."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillspec.sweep import SweepSource, load_sweep
from orchestrator.core.expansion import Expansion, expand
from tests.spec_helpers import GOOD

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "sweeps"
SCHEMAS = ROOT.parent / "shared" / "schemas"  # read in place, never copied into the repository
JOBSET_VERSIONS = ("v0.10.1", "v0.12.0")
EXAMPLE_SWEEPS = ("alpha-end", "layer-indices", "beta-end", "temperature", "schedule-shape", "feature-loss-type")

# The spec tests' known-good spec; a sweep names each run itself (its run id).
SPEC: dict[str, Any] = {key: value for key, value in GOOD.items() if key != "name"}
# The pods of a cluster target read a bucket: a relative path there is a warning (relative_path_on_cluster).
SPEC["teacher"] = {**SPEC["teacher"], "load_parameters_path": "gs://bucket/runs/teacher/checkpoints"}
TARGET: dict[str, Any] = {
    "kind": "kubernetes",
    "tpu_type": "v5p-128",
    "slices": 2,
    "image": "example.com/distill@sha256:" + "0123456789abcdef" * 4,  # by digest: no mutable-tag warning
    "output_base": "gs://bucket/runs",
    "queue": "multislice-queue",
    "priority": "medium",
    "max_restarts": 3,
}


def sweep_data(**fields: Any) -> dict[str, Any]:
    """A valid sweep (inline tiny spec, kubernetes target) with top-level fields replaced."""
    data: dict[str, Any] = {"name": "t", "spec": copy.deepcopy(SPEC), "target": dict(TARGET)}
    data.update(copy.deepcopy(fields))
    return data


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def load(tmp_path: Path, data: dict[str, Any] | str, name: str = "sweep.yaml") -> SweepSource:
    return load_sweep(write(tmp_path, data, name))


def expanded(tmp_path: Path, data: dict[str, Any] | str, name: str = "sweep.yaml", **kw: Any) -> Expansion:
    return expand(load(tmp_path, data, name), **kw)


def error_codes(result: Expansion | SweepSource) -> list[str]:
    return [p.code for p in result.problems if p.is_error]


# --- schemas ----------------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as Draft-7 JSON Schema: `x-kubernetes-*` dropped (int-or-string as anyOf),
    and unknown fields rejected wherever the API server would prune them (objects with `properties` and no
    `x-kubernetes-preserve-unknown-fields`), so a field the CRD version lacks is an error, not silence."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_path(version: str) -> Path | None:
    """The published JobSet CRD: from shared/schemas, else from the JobSet module the test cluster builds."""
    shared = SCHEMAS / f"jobset.x-k8s.io_jobsets.{version}.yaml"
    if shared.is_file():
        return shared
    gomodcache = Path(
        os.environ.get("GOMODCACHE") or Path(os.environ.get("GOPATH") or Path.home() / "go") / "pkg" / "mod"
    )
    cached = gomodcache / f"sigs.k8s.io/jobset@{version}/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml"
    return cached if cached.is_file() else None


@functools.cache
def jobset_validator(version: str):
    jsonschema = pytest.importorskip("jsonschema")
    path = crd_path(version)
    if path is None:
        pytest.skip(
            f"no JobSet {version} CRD: shared/schemas beside the repository, or the Go module cache after "
            "`make cluster-build`, holds it"
        )
    crd = yaml.safe_load(path.read_text())
    schema = _strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def jobset_errors(manifest: dict, version: str) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in jobset_validator(version).iter_errors(manifest)
    ]


def pod_template_errors(manifest: dict) -> list[str]:
    """Each replicatedJob's Job template, as a batch/v1 Job, against Kubernetes' own schemas in strict mode."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    errors = []
    for rjob in manifest["spec"]["replicatedJobs"]:
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": rjob["name"]}, **rjob["template"]}
        try:
            kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{'.'.join(map(str, e.path))}: {e.message}")
    return errors
