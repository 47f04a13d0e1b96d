"""Points -> JobSet manifests: a view model computed here, rendered by `templates/jobset.yaml.j2`.

Templates are found, in order, in `$DISTILLCTL_TEMPLATES`, in `templates/` beside the `orchestrator` package
(a source checkout or an editable install), and in `<prefix>/share/distillctl/templates` (where a wheel
installs them, see `[tool.setuptools.data-files]` in pyproject.toml).

The manifest has the shape `xpk workload create` gives multi-host TPU work (replicatedJob `slice-job`, one
Job per slice, one pod per VM, the exclusive-topology annotation, TPU node selectors and toleration) and
uses only fields of JobSet v0.10.1, the version XPK installs.

Environment: the container's variables are one mapping merged from layers with fixed precedence, later
layers winning — `target.env`, then `target.secret_env` (references to Secrets, never values), then
distillctl's own (`DISTILLCTL_SPEC`: the resolved spec as JSON, which `python -m trainer` reads;
`DISTILLCTL_RUN_ID`). The sweep checks reject a name set in two layers, so nothing is silently overridden;
the variables are rendered sorted by name, each once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sysconfig
from functools import cache
from pathlib import Path
from typing import Any, Mapping

import jinja2

from distillspec import tpu
from distillspec.contract import (
    ANNOTATION_AXIS_VALUES,
    ANNOTATION_DEPENDS_ON,
    ANNOTATION_OUTPUT_PATH,
    CONTAINER_NAME,
    ENV_GLIBC_TUNABLES,
    ENV_RUN_ID,
    ENV_SPEC,
    LABEL_QUEUE,
    LABEL_ROLE,
    LABEL_RUN_ID,
    LABEL_SPEC_HASH,
    LABEL_SWEEP,
    LABEL_WORKLOAD_PRIORITY,
    LABEL_XPK_WORKLOAD,
    RETRYABLE_EXIT_CODES,
    TRAINER_COMMAND,
    trainer_process_env,
)
from distillspec.sweep import DSHM_PATH, DSHM_VOLUME, Target
from orchestrator.core import identity
from orchestrator.core.expansion import Expansion, Point

TEMPLATE = "jobset.yaml.j2"
TEMPLATES_ENV = "DISTILLCTL_TEMPLATES"
FAILURE_RULE_NAME = "failJobSetOnNonRetryableExit"
PREEMPTION_RULE_NAME = "restartJobSetOnPreemption"
# How the Job controller words a failure by a podFailurePolicy FailJob rule on a pod condition (k8s.io/kubernetes
# pkg/controller/job, pod_failure_policy.go): "Pod <ns>/<name> has condition DisruptionTarget matching FailJob rule
# at index 0". Only that condition restarts for free: the control plane sets it on a real disruption (scheduler
# preemption, eviction for a drain or maintenance, graceful node shutdown of a reclaimed spot VM, taint eviction).
# A worker that merely exits 143 (SIGTERM from anything else) is a retryable failure like any other: it spends
# max_restarts, so a trainer that keeps exiting 143 stops after max_restarts instead of restarting forever.
PREEMPTION_MESSAGE_PATTERNS = ("has condition DisruptionTarget matching",)
EXCLUSIVE_TOPOLOGY = ("alpha.jobset.sigs.k8s.io/exclusive-topology", "cloud.google.com/gke-nodepool")


class RenderError(ValueError):
    """A point cannot be rendered for this target (a local target, no TPU type or image)."""


@dataclasses.dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None = None
    secret: str | None = None
    key: str | None = None

    def view(self) -> dict[str, str | None]:
        return {"name": self.name, "value": self.value, "secret": self.secret, "key": self.key}


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str  # the JobSet name
    filename: str  # `<name>.yaml`
    text: str


def merge_env(*layers: Mapping[str, EnvVar]) -> tuple[EnvVar, ...]:
    """One variable per name, later layers winning; sorted by name."""
    merged: dict[str, EnvVar] = {}
    for layer in layers:
        merged.update(layer)
    return tuple(merged[name] for name in sorted(merged))


def spec_json(point: Point) -> str:
    """The resolved spec as the trainer receives it in DISTILLCTL_SPEC (canonical JSON)."""
    return point.spec_json


def container_env(point: Point, target: Target) -> tuple[EnvVar, ...]:
    return _env({"spec": spec_json(point), "run_id": point.run_id}, target)


def target_env(target: Target) -> dict[str, str]:
    """`target.env` as the trainer's container gets it. A GLIBC_TUNABLES there replaces the trainer image's own
    (`ENV`), so the trainer's huge pages are added to it as the local backend adds them (`trainer_process_env`); a
    `glibc.malloc.hugetlb` entry of the user's stands. Without one, the image's setting applies."""
    env = dict(target.env)
    return trainer_process_env(env) if ENV_GLIBC_TUNABLES in env else env


def _env(point: Mapping[str, str], target: Target) -> tuple[EnvVar, ...]:
    user = {name: EnvVar(name, value=value) for name, value in target_env(target).items()}
    secrets = {name: EnvVar(name, secret=ref.secret, key=ref.key) for name, ref in target.secret_env.items()}
    own = {
        ENV_SPEC: EnvVar(ENV_SPEC, value=point["spec"]),
        ENV_RUN_ID: EnvVar(ENV_RUN_ID, value=point["run_id"]),
    }
    return merge_env(user, secrets, own)


def retryable_exit_codes(target: Target) -> list[int]:
    return list(_retryable(tuple(target.restartable_exit_codes)))


@cache  # asked once per manifest, with the same few inputs
def _retryable(extra: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(set(RETRYABLE_EXIT_CODES) | set(extra)))


def node_selector(target: Target) -> dict[str, str]:
    """The pods' nodeSelector: the TPU slice shape, the machine type where the topology is ambiguous (or asked
    for), the capacity's label as XPK sets it, then target.node_selector (the sweep check keeps its keys apart)."""
    shape = tpu.lookup(str(target.tpu_type))
    selector = {tpu.ACCELERATOR_LABEL: shape.accelerator, tpu.TOPOLOGY_LABEL: shape.topology}
    machine = target.machine_type_selector
    if machine or (machine is None and shape.topology_ambiguous):
        selector[tpu.MACHINE_TYPE_LABEL] = shape.machine_type
    if target.capacity == "spot":
        selector[tpu.SPOT_LABEL] = "true"
    elif target.capacity == "flex-start":
        selector[tpu.FLEX_START_LABEL] = "true"
    elif target.capacity == "reservation":
        selector[tpu.RESERVATION_LABEL] = str(target.reservation)
    return dict(sorted({**selector, **target.node_selector}.items()))


def tolerations(target: Target) -> list[dict[str, Any]]:
    """The TPU taint, the capacity's taint (spot and flex-start node pools may be tainted with their label;
    tolerating a taint a pool lacks changes nothing), then target.tolerations."""
    out: list[dict[str, Any]] = [{"key": tpu.RESOURCE, "operator": "Exists"}]
    capacity_label = {"spot": tpu.SPOT_LABEL, "flex-start": tpu.FLEX_START_LABEL}.get(target.capacity)
    if capacity_label:
        out.append({"key": capacity_label, "operator": "Equal", "value": "true", "effect": "NoSchedule"})
    out += [t.model_dump(exclude_none=True) for t in target.tolerations]
    return out


def volumes(target: Target) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the pod's volumes, the trainer's volumeMounts): XPK's /dev/shm Memory emptyDir first, then the target's."""
    pod: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if target.dev_shm:
        empty_dir = {"medium": "Memory", **({"sizeLimit": target.dev_shm_size} if target.dev_shm_size else {})}
        pod.append({"name": DSHM_VOLUME, "emptyDir": empty_dir})
        mounts.append({"name": DSHM_VOLUME, "mountPath": DSHM_PATH})
    pod += [v.model_dump(exclude_none=True, exclude_defaults=False) for v in target.volumes]
    mounts += [m.model_dump(exclude_none=True) for m in target.volume_mounts]
    return pod, mounts


def resources(target: Target) -> dict[str, dict[str, Any]]:
    """The trainer's requests and limits: its TPU chips, plus the target's (the sweep check rejects a TPU key)."""
    shape = tpu.lookup(str(target.tpu_type))
    limits = {tpu.RESOURCE: shape.chips_per_vm, **target.resources.limits}
    out: dict[str, dict[str, Any]] = {"limits": dict(sorted(limits.items()))}
    if target.resources.requests:
        out["requests"] = dict(sorted(target.resources.requests.items()))
    return out


def jobset_view(point: Point, target: Target) -> dict[str, Any]:
    """Everything the template prints, precomputed; raises RenderError for a target without a cluster."""
    return _view(point_values(point), target)


def point_values(point: Point) -> dict[str, str]:
    """The strings of a manifest that differ from point to point (everything else depends on the target)."""
    values = {
        "name": point.jobset_name,
        "sweep": point.sweep,
        "run_id": point.run_id,
        "spec_hash": point.spec_hash,
        "role": point.role,
        "axis_values": json.dumps(dict(point.axis_values), sort_keys=False, separators=(",", ":")),
        "output_path": point.output_path,
        "spec": spec_json(point),
    }
    if point.depends_on:
        values["depends_on"] = identity.canonical_json(dict(point.depends_on))
    return values


def _view(point: Mapping[str, str], target: Target) -> dict[str, Any]:
    if not target.on_cluster:
        raise RenderError("a local target runs on this machine; there is no JobSet to render")
    if target.tpu_type is None or target.image is None:
        raise RenderError("rendering needs target.tpu_type and target.image")
    shape = tpu.lookup(target.tpu_type)
    labels = {
        **target.labels,  # the sweep check rejects any of distillctl's own keys here
        LABEL_SWEEP: point["sweep"],
        LABEL_RUN_ID: point["run_id"],
        LABEL_SPEC_HASH: point["spec_hash"],
        LABEL_ROLE: point["role"],
    }
    if target.queue is not None:
        labels[LABEL_QUEUE] = target.queue
    if target.workload_priority_class is not None:
        labels[LABEL_WORKLOAD_PRIORITY] = target.workload_priority_class
    if target.kind == "xpk":
        labels[LABEL_XPK_WORKLOAD] = point["name"]  # so `xpk workload list` shows it
    annotations = {
        EXCLUSIVE_TOPOLOGY[0]: EXCLUSIVE_TOPOLOGY[1],
        ANNOTATION_AXIS_VALUES: point["axis_values"],
        ANNOTATION_OUTPUT_PATH: point["output_path"],
    }
    if "depends_on" in point:
        annotations[ANNOTATION_DEPENDS_ON] = point["depends_on"]
    pod_volumes, mounts = volumes(target)
    return {
        "name": point["name"],
        "namespace": target.namespace,
        "labels": sorted(labels.items()),
        "annotations": sorted(annotations.items()),
        "ttl_seconds_after_finished": target.ttl_seconds_after_finished,
        "max_restarts": target.max_restarts,
        "failure_rule_name": FAILURE_RULE_NAME,
        "preemption_rule_name": PREEMPTION_RULE_NAME,
        "preemption_message_patterns": list(PREEMPTION_MESSAGE_PATTERNS),
        "replicated_job": identity.REPLICATED_JOB,
        "slices": target.slices,
        "vms_per_slice": shape.vms_per_slice,
        "container_name": CONTAINER_NAME,
        "retryable_exit_codes": retryable_exit_codes(target),
        "pod_labels": sorted({LABEL_SWEEP: point["sweep"], LABEL_RUN_ID: point["run_id"]}.items()),
        "pod_annotations": sorted(target.pod_annotations.items()),
        "node_selector": sorted(node_selector(target).items()),
        "tolerations": tolerations(target),
        "volumes": pod_volumes,
        "volume_mounts": mounts,
        "resources": resources(target),
        "priority_class_name": target.priority,
        "service_account": target.service_account,
        "host_network": target.host_network,
        "termination_grace_seconds": target.termination_grace_seconds,
        "image": target.image,
        "command": list(TRAINER_COMMAND),
        "env": [var.view() for var in _env(point, target)],
    }


def template_dirs() -> list[Path]:
    """Where templates are looked for, in order (only existing folders)."""
    candidates = []
    if os.environ.get(TEMPLATES_ENV):
        candidates.append(Path(os.environ[TEMPLATES_ENV]))
    candidates.append(Path(__file__).resolve().parents[2] / "templates")
    candidates.append(Path(sysconfig.get_path("data")) / "share" / "distillctl" / "templates")
    return [c for c in candidates if (c / TEMPLATE).is_file()]


@cache
def environment() -> jinja2.Environment:
    dirs = template_dirs()
    if not dirs:
        raise FileNotFoundError(f"cannot find {TEMPLATE}: set {TEMPLATES_ENV} to the folder that holds it")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # one process renders thousands of manifests from one template: no stat per render
    )
    env.filters["tojson"] = yaml_scalar
    return env


# YAML 1.1's printable set, minus its line breaks (NEL, LS, PS), which a double-quoted scalar would fold, and the
# BOM: everything else is written as a \u escape. One regex over the text, not a test per character.
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")


_encode_string = json.encoder.encode_basestring  # json.dumps(text, ensure_ascii=False), without its set-up


def _escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def yaml_scalar(value: Any) -> str:
    """JSON text of `value` that YAML (1.1 and 1.2) reads back as the same value: a `tojson` scalar can never
    break the document. Not HTML-escaped (Jinja's own `tojson` is, for HTML). Characters YAML would not keep
    as they are (line separators, C1 controls, BOM) are written as \\u escapes, and exponent floats get a
    decimal point (`1.0e-06`: YAML 1.1 reads `1e-06` as a string)."""
    if value is None or value is True or value is False or type(value) is int:
        return json.dumps(value) if type(value) is not int else str(value)  # the hot cases: exit codes, ports
    if type(value) is str:
        return _NOT_PRINTABLE.sub(_escape, _encode_string(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_scalar(str(k))}: {yaml_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        if all(type(v) is int for v in value):  # exit codes: ~130 per manifest
            return "[" + ", ".join(map(str, value)) + "]"
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    if isinstance(value, float) and "e" in text and "." not in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa}.0e{exponent}"
    return _NOT_PRINTABLE.sub(_escape, text)


def render_jobset(point: Point, target: Target) -> str:
    return environment().get_template(TEMPLATE).render(v=jobset_view(point, target))


def render(expansion: Expansion) -> tuple[Manifest, ...]:
    """One manifest per run (prerequisites first, then points), each named `<jobset name>.yaml`. Byte for byte
    `render_jobset` of each run, through one `_Stencil` per shape of manifest."""
    target = expansion.sweep.target
    stencils: dict[tuple, _Stencil | None] = {}
    out = []
    for run in expansion.runs:
        values = point_values(run)
        key = (run.role, tuple(values))
        if key not in stencils:
            stencils[key] = _Stencil.made(run, values, target)
        stencil = stencils[key]
        text = stencil.fill(values) if stencil is not None else render_jobset(run, target)
        out.append(Manifest(run.jobset_name, f"{run.jobset_name}.yaml", text))
    return tuple(out)


_MARK = "\ue000"  # a private-use character: printable, so `tojson` writes it as it is, and in no real value
_MARKED = re.compile(f'"{_MARK}(\\w+){_MARK}"')


@dataclasses.dataclass(frozen=True)
class _Stencil:
    """The template rendered once with a marker for each per-point value: a manifest is then its literal parts
    joined with the point's values as `tojson` writes them. Rendering thousands of points costs one template
    render per shape (role and which values a point has) instead of one per point."""

    parts: tuple[str, ...]  # literal, field, literal, field, ..., literal

    @staticmethod
    def made(run: Point, values: Mapping[str, str], target: Target) -> _Stencil | None:
        """The stencil for runs shaped like `run`, or None when the template uses a per-point value other than
        as a whole `tojson` scalar (the caller renders those runs one by one). Checked on `run` itself."""
        marked = (
            environment()
            .get_template(TEMPLATE)
            .render(v=_view({field: f"{_MARK}{field}{_MARK}" for field in values}, target))
        )
        parts = tuple(_MARKED.split(marked))
        stencil = _Stencil(parts)
        if any(_MARK in literal for literal in parts[::2]) or stencil.fill(values) != render_jobset(run, target):
            return None
        return stencil

    def fill(self, values: Mapping[str, str]) -> str:
        parts = list(self.parts)
        parts[1::2] = [yaml_scalar(values[field]) for field in parts[1::2]]
        return "".join(parts)
