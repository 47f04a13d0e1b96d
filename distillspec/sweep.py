"""The sweep file: a base spec, the axes to vary, and where the runs go. Loaded with the file's positions.

```yaml
name: alpha-end                 # DNS-1035 label; JobSets are named <name>-<run id>
spec: llama3.1-8b-pruning-recovery.yaml   # a path (relative to this file), or an inline spec mapping
overrides: {steps: 5000}        # dotted paths set on the base spec before the grid
prerequisites:                  # named runs that points depend on (launched first)
  teacher: {spec: tiny-teacher.yaml, overrides: {}}
axes:                           # cartesian product, in file order; MaxText flat names accepted
  loss.alpha.end: [0.3, 0.5, 0.7]
zip:                            # groups of paths that move together (each group is one more factor)
  - {loss.temperature.start: [1.0, 2.0], loss.temperature.end: [1.0, 1.0]}
exclude:                        # drop grid points matching every path of an entry
  - {loss.alpha.end: 0.7, loss.temperature.start: 1.0}
seeds: [0, 1]                   # each point once per seed (sets the spec's `seed`)
baseline:                       # extra points, always included, each a mapping of paths
  - {loss.alpha.start: 0.0, loss.beta.start: 0.0}
target: {kind: kubernetes, tpu_type: v5p-128, slices: 2, image: ..., output_base: gs://bucket/runs}
```

String values anywhere in the spec data may hold `${prerequisites.<name>.output}`: the output path of that
prerequisite run (`<output_base>/<run id>`), filled in before a point is hashed. A prerequisite may use the outputs
of the prerequisites listed before it (a teacher, then the logit cache made with it); it then waits for them.

Types, ranges and unknown keys are pydantic's (strict, frozen, unknown keys rejected, like the spec);
rules that relate fields are `check(sweep)`. Every problem is `distillspec.problems.Problem` with the file's
keys, line and column.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from difflib import get_close_matches
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Collection, Literal, Mapping

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from distillspec import buckets, checks, maxtext_format, metrics, spec_paths, tpu
from distillspec.config import DistillSpec, Seed
from distillspec.contract import (
    ENV_SPEC,
    LABELS_FROM_TARGET,
    RESERVED_ENV,
    RESERVED_LABELS,
    RETRYABLE_DESCRIPTION,
    RETRYABLE_EXIT_CODES,
)
from distillspec.problems import Loc, Problem, format_loc, has_errors
from distillspec.pydantic_problems import problems_from
from distillspec.specfile import looks_like_sweep, model_in
from distillspec.yaml_source import (
    YamlDocument,
    YamlSourceError,
    copy_plain,
    parse_yaml,
    read_text_file,
    source_problem,
)

# A JobSet's replicas (slices), and replicas × parallelism (its pods), are 32-bit integers.
MAX_JOBSET_INT = 2**31 - 1
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# Labels distillctl sets itself (the launcher finds runs by them); a sweep cannot set them.
PLACEHOLDER = re.compile(r"\$\{prerequisites\.([^.}]*)\.output\}")
ANY_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")

# Variables distillctl sets in the container itself; a sweep cannot set them.
JOBSET_VERSIONS = ("v0.10.1", "v0.12.0")
SWEEP_NAME_MAX = 40  # the JobSet name is `<sweep>-<run id>`; identity.py checks the whole budget


def _quantity_text(value: Any) -> Any:
    """YAML reads `cpu: 8` and `memory: 1e9` as numbers; Kubernetes takes them as quantities, and so do we."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# A resource quantity as written: text, or a number (a CRD's int-or-string); checked against QUANTITY by check().
Quantity = Annotated[
    str, BeforeValidator(_quantity_text), WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}]})
]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
ExitCode = Annotated[int, Field(ge=1, le=255)]


class _Block(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


def _dns_label(value: str) -> str:
    if not DNS_1035.match(value) or len(value) > SWEEP_NAME_MAX:
        suggestion = _as_dns_label(value, SWEEP_NAME_MAX)
        raise PydanticCustomError(
            "bad_sweep_name",
            "sweep name {value} must be a DNS-1035 label of at most {limit} characters: lower-case letters, digits "
            "and '-', starting with a letter{suggestion}",
            {
                "value": repr(value),
                "limit": SWEEP_NAME_MAX,
                "suggestion": f" ({suggestion!r} would do)" if suggestion and suggestion != value else "",
            },
        )
    return value


def _known_tpu(value: str) -> str:
    try:
        return tpu.lookup(value).name
    except tpu.UnknownTpuType as e:
        raise PydanticCustomError(
            "unknown_tpu_type",
            "unknown TPU type {name}{suggestion}",
            {"name": repr(value), "suggestion": e.hint},
        ) from None


# The reference grammar of the distribution project (what docker, podman and the kubelet parse):
# [host[:port]/]path[:tag][@algorithm:hex], path components lower-case.
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_HOST = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
)
IMAGE_REFERENCE = re.compile(
    rf"^{_IMAGE_HOST}{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,})?$"
)


IMAGE_REFERENCE_FORM = (  # what target.image and --image/--default-image must look like, in their errors
    "host[:port]/path[:tag] or path@sha256:<digest>, the path in lower case, e.g. us-docker.pkg.dev/project/repo/distill:1"
)


def _image_reference(value: str) -> str:
    if not IMAGE_REFERENCE.match(value):
        raise PydanticCustomError(
            "bad_image", "{image} is not a container image reference: " + IMAGE_REFERENCE_FORM, {"image": repr(value)}
        )
    return value


class SecretRef(_Block):
    """A key of a Kubernetes Secret in the target namespace; the manifest names it, never holds its value."""

    secret: str
    key: str


# A Kubernetes resource quantity (`8`, `500m`, `64Gi`, `1e3`), as `resource.ParseQuantity` reads it.
QUANTITY = re.compile(r"^(\d+(\.\d*)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][-+]?\d+)?$")
Capacity = Literal["on-demand", "spot", "reservation", "flex-start"]


class Toleration(_Block):
    """A pod toleration, written as in a pod spec (Kubernetes' field names)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None


class EmptyDirSource(_Block):
    medium: Literal["", "Memory"] = ""
    sizeLimit: Quantity | None = None


class CsiSource(_Block):
    """E.g. the Cloud Storage FUSE CSI driver: {driver: gcsfuse.csi.storage.gke.io, volumeAttributes: {bucketName: b}}
    (the pods also need the annotation gke-gcsfuse/volumes: "true", see target.pod_annotations)."""

    driver: str
    readOnly: bool | None = None
    volumeAttributes: dict[str, str] = {}


class PersistentVolumeClaimSource(_Block):
    claimName: str
    readOnly: bool | None = None


class SecretVolumeSource(_Block):
    secretName: str
    optional: bool | None = None


class ConfigMapVolumeSource(_Block):
    name: str
    optional: bool | None = None


VOLUME_SOURCES = ("emptyDir", "csi", "persistentVolumeClaim", "secret", "configMap")


class Volume(_Block):
    """A pod volume, written as in a pod spec: a name and exactly one source."""

    name: str
    emptyDir: EmptyDirSource | None = None
    csi: CsiSource | None = None
    persistentVolumeClaim: PersistentVolumeClaimSource | None = None
    secret: SecretVolumeSource | None = None
    configMap: ConfigMapVolumeSource | None = None

    def sources(self) -> list[str]:
        return [field for field in VOLUME_SOURCES if getattr(self, field) is not None]


class VolumeMount(_Block):
    """A mount into the trainer container, written as in a pod spec."""

    name: str
    mountPath: str
    readOnly: bool | None = None
    subPath: str | None = None


class Resources(_Block):
    """The trainer container's requests and limits besides its TPU chips (which distillctl sets)."""

    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}


class Target(_Block):
    """Where and how the runs execute. Fields that change a run's result (tpu_type, slices, image, env,
    secret_env) are part of its identity; the rest (namespace, queue, priority, TTL, ...) are not."""

    kind: Literal["local", "kubernetes", "xpk"] = "local"
    tpu_type: Annotated[str, AfterValidator(_known_tpu)] | None = None
    slices: Annotated[int, Field(gt=0, le=MAX_JOBSET_INT)] = 1  # a JobSet's replicas is a 32-bit integer
    image: Annotated[str, AfterValidator(_image_reference)] | None = None
    namespace: str = "default"
    queue: str | None = None  # Kueue LocalQueue: label kueue.x-k8s.io/queue-name
    priority: str | None = None  # PriorityClass of the pods (XPK's --priority: very-low ... very-high)
    workload_priority_class: str | None = None  # Kueue WorkloadPriorityClass: label kueue.x-k8s.io/priority-class
    # Restarts after a retryable failure (exit 42, a signal: an OOM kill's 137, a SIGTERM's 143). On a cluster a
    # preemption (a pod with the DisruptionTarget condition) does not count: it restarts for free (the JobSet's
    # RestartJobSetAndIgnoreMaxRestarts); a plain exit 143 counts, so a trainer that keeps exiting 143 stops.
    max_restarts: Annotated[int, Field(ge=0, le=MAX_JOBSET_INT)] = 3  # int32 in the JobSet, as the others
    restartable_exit_codes: list[ExitCode] = []  # in addition to the contract's RETRYABLE_EXIT_CODES
    # gs://bucket/prefix, or a local path (relative to the current directory); "" would be the current directory
    output_base: Annotated[str, Field(min_length=1)] = "runs"
    service_account: str | None = None
    env: dict[str, str] = {}
    secret_env: dict[str, SecretRef] = {}
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=MAX_JOBSET_INT)] = 43_200  # 12 h, XPK's default
    # XPK's choice for every TPU pod: the host's network stack for DCN traffic between slices. GKE's Workload
    # Identity and Autopilot do not take host-network pods: set false there (see the README's "Networking").
    host_network: bool = True
    termination_grace_seconds: Annotated[int, Field(ge=0, le=MAX_JOBSET_INT)] = 300  # to checkpoint after SIGTERM
    jobset_version: Literal["v0.10.1", "v0.12.0"] = "v0.10.1"
    cluster: str | None = None  # xpk
    project: str | None = None  # xpk
    zone: str | None = None  # xpk
    parallelism: PositiveInt | None = None  # local: concurrent runs (default: the machine's cores)
    labels: dict[str, str] = {}  # extra JobSet labels (a CI key, a team): bookkeeping, not part of run ids
    pod_annotations: dict[str, str] = {}  # on every pod, e.g. gke-gcsfuse/volumes: "true"; part of run ids
    # Where the pods may run (none of these is part of run ids: they change where, not what, a run computes).
    capacity: Capacity = "on-demand"  # spot / flex-start / reservation: XPK's node selectors (and tolerations)
    reservation: str | None = None  # with capacity: reservation, the label cloud.google.com/reservation-name
    node_selector: dict[str, str] = {}  # added to the TPU selectors distillctl sets
    tolerations: list[Toleration] = []  # added to the google.com/tpu toleration
    machine_type_selector: bool | None = None  # node.kubernetes.io/instance-type; None: where a topology is ambiguous
    resources: Resources = Resources()  # requests/limits besides google.com/tpu (e.g. memory for a sidecar-heavy pod)
    dev_shm: bool = True  # a Memory emptyDir at /dev/shm, as XPK mounts (`dshm-2`); the runtime's default is 64 MiB
    dev_shm_size: Quantity | None = None  # its sizeLimit (a quantity such as 64Gi); none: bounded by the pod's memory
    # local: the installed trainer's code (a hash of its sources) is part of run ids, so `sweep` runs points again
    # after the trainer changed instead of skipping them as Succeeded. Off by default for now: it changes every
    # local run id (and the committed golden files' ids) whenever the trainer's code changes.
    code_in_run_id: bool = False
    # cluster: name the image by the digest its tag points at now, asked of the registry when a command starts
    # (anonymously), so run ids change when other code is pushed under the tag and the pods run exactly that
    # manifest. Off by default: every command then needs the registry, and a tag pushed again gives new run ids.
    resolve_image: bool = False
    # Volumes and mounts into the trainer: part of run ids when set (a mount can change what a path reads).
    volumes: list[Volume] = []
    volume_mounts: list[VolumeMount] = []

    @property
    def on_cluster(self) -> bool:
        return self.kind != "local"

    def shared_mount(self, path: str) -> VolumeMount | None:
        """The writable mount that puts `path` on storage every pod shares (a PersistentVolumeClaim or a CSI
        volume such as gcsfuse or Filestore); None for a path inside the container, an emptyDir (one per pod,
        gone with it), a Secret or a ConfigMap."""
        from distillspec.places import place

        shared = {v.name for v in self.volumes if v.persistentVolumeClaim is not None or v.csi is not None}
        path = place(path)
        roots = {place(m.mountPath): m for m in self.volume_mounts}
        holding = [root for root in roots if path == root or path.startswith(root + "/")]
        if not holding:
            return None
        # the deepest mount is where the path is: an emptyDir mounted inside a PVC's mount is the pod's own
        mount = roots[max(holding, key=len)]
        return mount if mount.name in shared and not mount.readOnly else None


class Prerequisite(_Block):
    """A run that points depend on (e.g. the teacher's pre-training)."""

    spec: str | dict[str, Any]
    overrides: dict[str, Any] = {}


# --- early stopping ----------------------------------------------------------------------------------------
# Lower is better for every rule's metric (a divergence, a loss). Metrics are named as the trainer logs them
# (`distill/kl_div_T1`, `distillspec.metrics`); a name without a `/` matches the logged metric that ends with it.
# A name no run logs is an error (`check`); one the sweep's points do not log (eval/ metrics without an `eval:`
# set, distill/ ones in a pretrain sweep) a warning per point (`unlogged_metric_problems`, asked by the expansion).

NonNegativeFloat = Annotated[float, Field(ge=0.0)]
KL_METRIC = "distill/kl_div_T1"


class NoImprovement(_Block):
    """Stop a point whose best value over its last `patience` log lines is not `min_delta` below its best
    before them."""

    metric: str = KL_METRIC
    patience: PositiveInt
    min_delta: NonNegativeFloat = 0.0


class WorseThanBaseline(_Block):
    """Stop a point whose value at `at_step` is more than `by` above the best baseline's at that step."""

    metric: str = KL_METRIC
    at_step: PositiveInt
    by: NonNegativeFloat = 0.0


class Divergence(_Block):
    """Stop a point whose value is not finite or exceeds `factor` times its lowest so far."""

    metric: str = KL_METRIC
    factor: Annotated[float, Field(gt=1.0)] = 10.0


class MedianStopping(_Block):
    """Katib's median rule: from `at_step` on, stop a point whose value is above the median of the other
    points' values at the same step (once at least `min_points` others, baselines not counted, have reached it)."""

    metric: str = KL_METRIC
    at_step: PositiveInt
    min_points: PositiveInt = 3


class EarlyStopping(_Block):
    no_improvement: NoImprovement | None = None
    worse_than_baseline: WorseThanBaseline | None = None
    divergence: Divergence | None = None
    median: MedianStopping | None = None

    @property
    def any(self) -> bool:
        return any(getattr(self, name) is not None for name in type(self).model_fields)


class Sweep(_Block):
    name: Annotated[str, AfterValidator(_dns_label)]
    description: str = ""
    spec: str | dict[str, Any]
    overrides: dict[str, Any] = {}
    prerequisites: dict[str, Prerequisite] = {}
    axes: dict[str, list[Any]] = {}
    zip: list[dict[str, list[Any]]] = []
    exclude: list[dict[str, Any]] = []
    seeds: list[Seed] = []
    baseline: list[dict[str, Any]] = []
    target: Target = Target()
    early_stopping: EarlyStopping = EarlyStopping()  # rules for points going nowhere; not part of run ids

    def with_target(self, **changes: Any) -> Sweep:
        """A copy with target fields replaced (validated again, so an unknown TPU type is still an error)."""
        target = Target.model_validate({**self.target.model_dump(), **changes})
        return self.model_copy(update={"target": target})


# --- sources: data plus how to point at it ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpecSource:
    """A base spec in native layout, and where its keys are written (a spec file, or inside the sweep file)."""

    data: Mapping[str, Any]
    file: str | None
    document: YamlDocument | None
    prefix: Loc = ()  # the spec's loc inside `document`: ("spec",) when inline in a sweep file
    translation: maxtext_format.Translation | None = None  # set when the file is a MaxText distillation.yml
    format: str = "native"

    def copy_data(self) -> dict[str, Any]:
        return copy_plain(dict(self.data))

    def locate(self, problem: Problem) -> Problem:
        """The problem at its key in the spec's file, in the file's words (a MaxText file's)."""
        if self.translation is not None:
            problem = self.translation.in_file_terms(problem)
        return _at(problem, self.prefix + tuple(problem.loc), self.document, self.file)

    def in_file_words(self, problem: Problem, *, native_loc: bool = True) -> Problem:
        """A problem shown elsewhere (at the sweep's override of a key) in this spec file's words. `native_loc`:
        its loc is still the spec's (the field its sentence is about is named as the file names it too)."""
        if self.translation is None:
            return problem
        return self.translation.in_file_words(problem, None if native_loc else ())


@dataclasses.dataclass(frozen=True)
class SweepSource:
    """A loaded sweep file: the validated model (None on errors), its base specs, and every problem found."""

    file: str | None
    document: YamlDocument | None
    sweep: Sweep | None
    base: SpecSource | None
    prerequisites: Mapping[str, SpecSource]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return self.sweep is not None and self.base is not None and not has_errors(list(self.problems))

    def locate(self, problem: Problem) -> Problem:
        """Add the sweep file's line and column to a problem whose loc is in sweep-file keys."""
        return _at(problem, problem.loc, self.document, self.file)


def _at(problem: Problem, loc: Loc, document: YamlDocument | None, file: str | None) -> Problem:
    position = document.position_of(loc) if document else None
    return dataclasses.replace(
        problem,
        loc=loc,
        file=file,
        line=position.line if position else None,
        column=position.column if position else None,
    )


def load_sweep(path: str | Path) -> SweepSource:
    """Read a sweep file and the spec files it names (relative to its folder). Never raises for bad input."""
    file = str(path)
    try:
        text = read_text_file(path)
    except YamlSourceError as e:
        return SweepSource(file, None, None, None, MappingProxyType({}), (source_problem(e, file),))
    # Read from a pipe (`-`, /dev/stdin), a relative `spec:` is relative to the current directory, not /dev.
    piped = file == "-" or file.startswith(("/dev/", "/proc/self/fd/"))
    return parse_sweep(text, file=file, base_dir=Path(".") if piped else Path(path).parent)


def _is_spec(data: dict) -> bool:
    """A spec (either layout) rather than a sweep: no `spec:` key, and a spec's own top-level keys."""
    return "spec" not in data and (
        bool({"student", "teacher"} & data.keys()) or maxtext_format.looks_like_maxtext(data)
    )


def parse_sweep(text: str, *, file: str | None = None, base_dir: str | Path = ".") -> SweepSource:
    try:
        document = parse_yaml(
            text, empty_hint="write the sweep: at least `name:` and `spec:` (see sweeps/quickstart.yaml)"
        )
    except YamlSourceError as e:
        return SweepSource(file, None, None, None, MappingProxyType({}), (source_problem(e, file),))
    empty = SweepSource(file, document, None, None, MappingProxyType({}), ())
    data = document.data
    if not isinstance(data, dict):
        problem = Problem(
            (),
            "not_a_mapping",
            "the top level of a sweep file must be a mapping of keys",
            "start with `name:`, `spec:` and `axes:`",
        )
        return dataclasses.replace(empty, problems=(empty.locate(problem),))
    if _is_spec(data):
        problem = Problem(
            (),
            "spec_not_sweep",
            "this is a spec, not a sweep file",
            "`distillctl validate` and `train` take a spec; a sweep file names it with `spec:` and adds `axes:` "
            "and `target:` (see sweeps/quickstart.yaml)",
        )
        return dataclasses.replace(empty, problems=(dataclasses.replace(problem, file=file, line=1, column=1),))
    problems = document.duplicate_key_problems() + document.other_base_problems()
    sweep, found = validate_sweep_data(data)
    problems += found
    base = None
    prerequisites: dict[str, SpecSource] = {}
    if sweep is not None:
        names = list(sweep.prerequisites)
        base, base_problems = _spec_source(sweep.spec, ("spec",), document, file, Path(base_dir))
        problems += base_problems
        if base is not None and isinstance(sweep.spec, str):  # inline: checked with the sweep file's strings
            problems += [base.locate(p) for p in spec_placeholder_problems(base.copy_data(), names)]
        for position, (name, prerequisite) in enumerate(sweep.prerequisites.items()):
            source, found = _spec_source(
                prerequisite.spec, ("prerequisites", name, "spec"), document, file, Path(base_dir)
            )
            problems += found
            if source is not None:
                prerequisites[name] = source
                if isinstance(prerequisite.spec, str):
                    found = spec_placeholder_problems(source.copy_data(), names[:position], of=name, declared=names)
                    problems += [source.locate(p) for p in found]
        problems += check(sweep)
        if not has_errors(problems):  # a misspelt placeholder is the error to fix; "unused" would be its echo
            problems += _unused_prerequisites(sweep, base, prerequisites)
    located = [p if p.file is not None else empty.locate(p) for p in problems]
    return SweepSource(file, document, sweep, base, MappingProxyType(prerequisites), tuple(located))


def override_target(source: SweepSource, **changes: Any) -> SweepSource:
    """The same sweep with target fields replaced (a command line's --tpu-type): target rules run again."""
    assert source.sweep is not None
    others = [p for p in source.problems if p.loc[:1] != ("target",)]
    try:
        sweep = source.sweep.with_target(**changes)
    except ValidationError as e:  # a command line's value the target refuses (--slices 0, --image "A B")
        data = {**source.sweep.target.model_dump(), **changes}
        refused = problems_from(e, data, root="the target", did_you_mean=_did_you_mean, hints=HINTS)
        given = [
            dataclasses.replace(p, loc=("target", *p.loc), message=f"{p.message} (given on the command line)")
            for p in refused
        ]
        return dataclasses.replace(source, problems=tuple(others + given))
    target_problems = [source.locate(p) for p in check(sweep) if p.loc[:1] == ("target",)]
    return dataclasses.replace(source, sweep=sweep, problems=tuple(others + target_problems))


def _spec_source(
    spec: str | dict[str, Any], loc: Loc, document: YamlDocument, file: str | None, base_dir: Path
) -> tuple[SpecSource | None, list[Problem]]:
    """The spec named at `loc` of the sweep file: a path (relative to the sweep file) or inline data."""
    if isinstance(spec, str):
        if not spec.strip():  # `spec: ""` read the sweep's own folder: ". is a directory, not a file"
            problem = Problem(
                loc, "blank_path", "spec is blank", "name the spec file (relative to this file), or write it inline"
            )
            return None, [_at(problem, loc, document, file)]
        spec_file = base_dir / spec
        try:
            spec_document = parse_yaml(read_text_file(spec_file))
        except YamlSourceError as e:
            if e.position is None:  # not there, unreadable: said at the sweep's line that names it
                # Relative to the sweep file's folder, or (a sweep on standard input) to the current directory.
                piped = file is None or file == "-" or file.startswith(("/dev/", "/proc/self/fd/"))
                where = f" (read from {os.path.abspath(base_dir)}" + (
                    ": a sweep on standard input names its specs from the current directory)" if piped else ")"
                )
                hint = e.hint + (where if e.code == "file_not_found" and not Path(spec).is_absolute() else "")
                problem = Problem(loc, e.code, f"spec {spec!r}: {e.message}", hint)
                return None, [_at(problem, loc, document, file)]
            # At its own line in the spec file ("fix the YAML at this position" pointed into the sweep file).
            named = _at(Problem(loc, e.code, "", ""), loc, document, file)
            at = f" ({named.file}:{named.line})" if named.line else ""
            problem = source_problem(e, str(spec_file))
            return None, [dataclasses.replace(problem, message=f"{problem.message}, in the spec the sweep names{at}")]
        data, where = spec_document.data, str(spec_file)
        source_document, prefix = spec_document, ()
        duplicates = spec_document.duplicate_key_problems()
        if duplicates and isinstance(data, dict):  # `validate` refused the file; the sweep took the later value
            return None, [_at(p, p.loc, spec_document, where) for p in duplicates]
        odd = [_at(p, p.loc, spec_document, where) for p in spec_document.other_base_problems()]
    else:  # inline: its numbers are the sweep file's, said with them
        data, where, source_document, prefix, odd = spec, file, document, loc, []
    if not isinstance(data, dict):
        problem = Problem((), "not_a_mapping", "a spec must be a mapping of keys", "start with a `student:` block")
        return None, [_at(problem, prefix, source_document, where)]
    if isinstance(spec, str) and looks_like_sweep(data):
        itself = file is not None and Path(where).resolve() == Path(file).resolve()
        problem = Problem(
            loc,
            "sweep_not_spec",
            f"spec {spec!r} is {'this sweep file itself' if itself else 'a sweep file'}, not a spec",
            "name the spec file the runs start from (a `student:` block; `distillctl validate` checks one)"
            if itself
            else f"name the spec file it uses ({data['spec']!r}) or run that sweep itself"
            if isinstance(data["spec"], str)
            else "move the spec it holds inline under `spec:` into a file of its own and name that",
        )
        return None, [_at(problem, loc, document, file)]
    if maxtext_format.looks_like_maxtext(data):
        translation = maxtext_format.from_maxtext(data)
        source = SpecSource(MappingProxyType(translation.data), where, source_document, prefix, translation, "maxtext")
        return source, odd + [_at(p, prefix + tuple(p.loc), source_document, where) for p in translation.problems]
    return SpecSource(MappingProxyType(copy.deepcopy(data)), where, source_document, prefix), odd


def _as_dns_label(value: str, limit: int) -> str:
    """`value` made a DNS-1035 label (`Alpha_End` -> `alpha-end`), "" when nothing of it is left."""
    text = re.sub(r"[^a-z0-9]+", "-", value.lower())
    text = re.sub(r"^[^a-z]+", "", text)[:limit]
    return text.rstrip("-")


# --- pydantic errors -> problems --------------------------------------------------------------------------

HINTS = {
    "unknown_tpu_type": "`distillctl tpus` lists the TPU types distillctl knows",
    "bad_sweep_name": "use lower-case letters, digits and '-', e.g. alpha-end",
    "bad_image": "name the image as `docker push` printed it (its path in lower case)",
}


def validate_sweep_data(data: dict[str, Any]) -> tuple[Sweep | None, list[Problem]]:
    try:
        return Sweep.model_validate(data), []
    except ValidationError as e:
        return None, problems_from(e, data, root="the sweep", did_you_mean=_did_you_mean, hints=HINTS)


def _did_you_mean(loc: Loc) -> str:
    known = _fields_at(loc[:-1])
    close = get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else (f"valid keys here: {', '.join(known)}" if known else "")


def _fields_at(loc: Loc) -> list[str]:
    model: type[BaseModel] = Sweep
    if loc[:1] == ("prerequisites",) and len(loc) >= 2:  # prerequisites.<name>.<key>: the name is the user's
        model, loc = Prerequisite, loc[2:]
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            if model is Sweep and loc and loc[0] == "prerequisites":
                return list(Prerequisite.model_fields)
            return []
        inner = model_in(model.model_fields[part].annotation)
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


# --- cross-field rules ------------------------------------------------------------------------------------


def check(sweep: Sweep) -> list[Problem]:
    """Rules that relate fields of a sweep file; each problem's loc is in the file's keys."""
    problems: list[Problem] = []
    for rule in (_paths, _axes, _exclude, _placeholders, _target, _early_stopping):
        problems.extend(rule(sweep))
    return problems


def _path_problem(loc: Loc, text: str) -> Problem | None:
    try:
        native = spec_paths.resolve(text)
    except spec_paths.UnknownPath as e:
        if isinstance(text, str) and text in maxtext_format.OVERRIDE_BLOCKS:
            return Problem(
                loc,
                "unknown_axis_path",
                f"{text!r} is MaxText's block of the {maxtext_format.OVERRIDE_BLOCKS[text]}'s model keys; a sweep "
                "names each key as a path",
                f"write one line per key, e.g. {text}.num_decoder_layers: 3",
            )
        if isinstance(text, str) and maxtext_format.both_models_key(text):
            return Problem(
                loc,
                "unknown_axis_path",
                f"{text!r} sets both models at a MaxText file's top level; a sweep path sets one field",
                f"say which model: student_overrides.{text} or teacher_overrides.{text}",
            )
        if isinstance(text, str) and maxtext_format.ACCEPTED.get(text):
            _, does, _ = maxtext_format.ACCEPTED[text]
            return Problem(  # a MaxText key a file may hold at what the trainer does (it read "did you mean ...")
                loc,
                "unknown_axis_path",
                f"{text!r} is a MaxText key distillctl's trainer has one behaviour for: {does}",
                "vary steps instead" if text == "learning_rate_schedule_steps" else f"remove {text} from the sweep",
            )
        hint = (
            f"did you mean {', '.join(repr(s) for s in e.suggestions)}?"
            if e.suggestions
            else ("use a dotted path into the spec such as loss.alpha.end, or a MaxText name such as distill_alpha_end")
        )
        return Problem(loc, "unknown_axis_path", f"{text!r} is not a field of the spec", hint)
    if native in spec_paths.DERIVED:
        return Problem(
            loc,
            "derived_path",
            f"{text!r} is set for every run from {spec_paths.DERIVED[native]}",
            "remove it; the run id names each run and target.output_base says where it writes",
        )
    return None


def _paths(sweep: Sweep) -> list[Problem]:
    out = []
    for key in sweep.overrides:
        out += [p for p in [_path_problem(("overrides", key), key)] if p]
    for name, prerequisite in sweep.prerequisites.items():
        for key in prerequisite.overrides:
            out += [p for p in [_path_problem(("prerequisites", name, "overrides", key), key)] if p]
    for i, point in enumerate(sweep.baseline):
        for key in point:
            out += [p for p in [_path_problem(("baseline", i, key), key)] if p]
    return out


def axis_entries(sweep: Sweep) -> list[tuple[Loc, str, list[Any]]]:
    """Every varied path with its file loc: `axes` entries, then `zip` members, then `seed` from `seeds`."""
    entries: list[tuple[Loc, str, list[Any]]] = [(("axes", k), k, v) for k, v in sweep.axes.items()]
    for g, group in enumerate(sweep.zip):
        entries += [(("zip", g, k), k, v) for k, v in group.items()]
    if sweep.seeds:
        entries.append((("seeds",), "seed", list(sweep.seeds)))
    return entries


def _axes(sweep: Sweep) -> list[Problem]:
    out = []
    if "seeds" in sweep.model_fields_set and not sweep.seeds:  # written, but no seed: read as no seeds key at all
        out.append(
            Problem(
                ("seeds",),
                "empty_axis",
                "seeds is empty: each point would run once per seed, so none would",
                "list at least one seed (seeds: [0, 1]), or remove seeds to run each point once",
            )
        )
    seen: dict[Loc, tuple[Loc, str]] = {}
    for loc, text, values in axis_entries(sweep):
        if (problem := _path_problem(loc, text)) is not None:
            out.append(problem)
            continue
        if not values:
            out.append(
                Problem(
                    loc,
                    "empty_axis",
                    f"axis {text!r} has no values, so the grid would be empty",
                    "list at least one value, or remove the axis",
                )
            )
        native = spec_paths.resolve(text)
        for other_native, (other_loc, other_text) in seen.items():
            if native[: len(other_native)] == other_native or other_native[: len(native)] == native:
                out.append(
                    Problem(
                        loc,
                        "axis_overlap",
                        f"{text!r} and {other_text!r} ({format_loc(other_loc)}) set the same field"
                        + (" (seeds: sets `seed`)" if "seed" in (text, other_text) else ""),
                        "vary each field in one place only",
                    )
                )
        seen[native] = (loc, text)
        if loc[0] == "zip":  # a zip member repeats values freely (cosine, cosine, l2): its rows must differ
            continue
        duplicates = [v for i, v in enumerate(values) if any(same_value(v, w) for w in values[:i])]
        if duplicates:
            out.append(
                Problem(
                    loc,
                    "duplicate_axis_value",
                    f"axis {text!r} lists {duplicates[0]!r} more than once",
                    "list each value once",
                )
            )
    for g, group in enumerate(sweep.zip):
        if not group:
            out.append(
                Problem(("zip", g), "empty_axis", "a zip group needs at least one path", "remove the empty group")
            )
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            out.append(
                Problem(
                    ("zip", g),
                    "zip_length_mismatch",
                    f"paths in a zip group move together, so they need the same number of values; got {shown}",
                    "give every path in the group as many values",
                )
            )
            continue
        rows = list(zip(*group.values()))
        for i, row in enumerate(rows):
            first = next((j for j in range(i) if all(same_value(a, b) for a, b in zip(row, rows[j]))), None)
            if first is not None:
                shown = ", ".join(f"{k}={v!r}" for k, v in zip(group, row))
                out.append(
                    Problem(
                        ("zip", g),
                        "duplicate_axis_value",
                        f"the zip group's values {i + 1} and {first + 1} are the same row ({shown})",
                        "list each row once",
                    )
                )
                break
    return out


def same_value(a: Any, b: Any) -> bool:
    """Equal as YAML values: 1 and 1.0 are the same number, but true is not 1."""
    return (
        type(a) is type(b)
        and a == b
        or (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and not isinstance(a, bool)
            and not isinstance(b, bool)
            and a == b
        )
    )


def _exclude(sweep: Sweep) -> list[Problem]:
    varied = {text for _, text, _ in axis_entries(sweep)}
    out = []
    for i, entry in enumerate(sweep.exclude):
        if not entry:
            out.append(
                Problem(
                    ("exclude", i),
                    "empty_exclude",
                    "an empty exclude entry would drop every point",
                    "name the axis values to drop, e.g. {loss.alpha.end: 0.7}",
                )
            )
        for key in entry:
            if key not in varied:
                # the same field under its other spelling (loss.alpha.end for the axis distill_alpha_end) first
                close = [v for v in sorted(varied) if _same_field(v, key)] or get_close_matches(
                    key, sorted(varied), n=1, cutoff=0.5
                )
                out.append(
                    Problem(
                        ("exclude", i, key),
                        "exclude_not_an_axis",
                        f"exclude names {key!r}, which is not an axis of this sweep",
                        f"did you mean {close[0]!r}?"
                        if close
                        else f"use the axis names as written under axes/zip: {', '.join(sorted(varied))}",
                    )
                )
    return out


def _same_field(a: str, b: str) -> bool:
    try:
        return spec_paths.resolve(a) == spec_paths.resolve(b)
    except spec_paths.UnknownPath:
        return False


def placeholders_in(value: Any) -> list[str]:
    """Every `${...}` expression in the strings of `value` (the text between the braces)."""
    return [p for _, text in _strings_at((), value) for p in ANY_PLACEHOLDER.findall(text)]


# `${` never closed, or `$prerequisites.` without its braces: taken literally, such a path made the points start
# without waiting for the prerequisite.
MALFORMED_PLACEHOLDER = re.compile(r"\$\{[^}]*$|\$(?!\{)prerequisites\.")


def _strings_at(loc: Loc, value: Any) -> list[tuple[Loc, str]]:
    """Every string in `value`, with the loc of the key or item holding it."""
    if isinstance(value, str):
        return [(loc, value)]
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in _strings_at((*loc, k), v)]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _strings_at((*loc, i), v)]
    return []


def spec_placeholder_problems(
    data: Any, names: list[str] | None, *, of: str = "", at: Loc = (), declared: Collection[str] = ()
) -> list[Problem]:
    """Placeholders in `data` (a spec file a sweep names, or a part of the sweep file at `at`), each at its own key:
    malformed, unknown, or naming no prerequisite in `names` (those it may use; None: not checked here). Taken
    literally, a typo went into the JobSet, and the point no longer waited for its prerequisite."""
    out = []
    whose = f"prerequisite {of!r}: " if of else ""
    for loc, text in _strings_at(at, data):
        if MALFORMED_PLACEHOLDER.search(text):
            out.append(
                Problem(
                    loc,
                    "bad_placeholder",
                    f"{whose}{text!r} holds a placeholder that is not closed or has no braces",
                    "write ${prerequisites.<name>.output}, braces and all",
                )
            )
        for expression in ANY_PLACEHOLDER.findall(text) if names is not None else ():
            m = PLACEHOLDER.fullmatch("${" + expression + "}")
            if m is None:
                out.append(
                    Problem(
                        loc,
                        "bad_placeholder",
                        f"{whose}unknown placeholder ${{{expression}}}",
                        "the only placeholder is ${prerequisites.<name>.output}",
                    )
                )
            elif m.group(1) not in names:
                close = get_close_matches(m.group(1), names, n=1, cutoff=0.5)
                out.append(
                    Problem(
                        loc,
                        "unknown_prerequisite",
                        f"{whose}${{{expression}}} names no prerequisite "
                        + (f"listed before {of!r}" if of else "of this sweep"),
                        (
                            f"{of!r} uses its own output: give it a fixed path"
                            if m.group(1) == of
                            else f"list {m.group(1)!r} before {of!r} under `prerequisites:`"
                        )
                        if of and m.group(1) in declared
                        else f"did you mean {close[0]!r}?"
                        if close
                        else (f"prerequisites: {', '.join(names)}" if names else "declare it under `prerequisites:`"),
                    )
                )
    return out


def _prerequisites_named(expressions: list[str]) -> set[str]:
    return {m.group(1) for e in expressions if (m := PLACEHOLDER.fullmatch("${" + e + "}"))}


def _unused_prerequisites(sweep: Sweep, base: SpecSource | None, specs: Mapping[str, SpecSource]) -> list[Problem]:
    """A prerequisite whose output nothing uses: it runs (a whole teacher pre-training) for nobody, and the points
    that were meant to wait for it start at once."""
    places: list[Any] = [sweep.overrides, sweep.axes, sweep.zip, sweep.baseline]
    places += [base.copy_data()] if base is not None else []
    for name, prerequisite in sweep.prerequisites.items():
        places.append(prerequisite.overrides)
        if name in specs:
            places.append(specs[name].copy_data())
    used = _prerequisites_named([e for place in places for e in placeholders_in(place)])
    return [
        Problem(
            ("prerequisites", name),
            "prerequisite_unused",
            f"prerequisite {name!r} is not used: no point (or other prerequisite) names "
            f"${{prerequisites.{name}.output}}, so it runs for nobody and nothing waits for it",
            f"use ${{prerequisites.{name}.output}} where its output is read (e.g. teacher.load_parameters_path), or "
            "remove it",
            severity="warning",
        )
        for name in sweep.prerequisites
        if name not in used
    ]


def _placeholders(sweep: Sweep) -> list[Problem]:
    out = []
    names = list(sweep.prerequisites)
    places: list[tuple[Loc, Any]] = [
        (("overrides",), sweep.overrides),
        (("axes",), sweep.axes),
        (("zip",), sweep.zip),
        (("baseline",), sweep.baseline),
        (("target", "output_base"), sweep.target.output_base),  # not expanded: ${HOME} would be a folder name
    ]
    if isinstance(sweep.spec, dict):
        places.append((("spec",), sweep.spec))
    for place, value in places:
        out += spec_placeholder_problems(value, names, at=place)
    for name, prerequisite in sweep.prerequisites.items():  # which names it may use: `nested_prerequisite` below
        out += spec_placeholder_problems(prerequisite.overrides, None, at=("prerequisites", name))
    uses = {
        name: _prerequisites_named(
            placeholders_in(p.overrides) + placeholders_in(p.spec if isinstance(p.spec, dict) else {})
        )
        for name, p in sweep.prerequisites.items()
    }
    for position, (name, prerequisite) in enumerate(sweep.prerequisites.items()):
        if not DNS_1035.match(name):
            out.append(
                Problem(
                    ("prerequisites", name),
                    "bad_prerequisite_name",
                    f"prerequisite name {name!r} must be lower-case letters, digits and '-'",
                    "rename it, e.g. teacher",
                )
            )
        inline = prerequisite.spec if isinstance(prerequisite.spec, dict) else {}
        earlier = names[:position]
        for expression in placeholders_in(prerequisite.overrides) + placeholders_in(inline):
            m = PLACEHOLDER.fullmatch("${" + expression + "}")
            if m is not None and m.group(1) not in earlier:
                out.append(
                    Problem(
                        ("prerequisites", name),
                        "nested_prerequisite",
                        f"prerequisite {name!r} uses ${{{expression}}}: a prerequisite can only use the outputs of "
                        "the prerequisites listed before it",
                        _order_hint(name, m.group(1), names, uses),
                    )
                )
    return out


def _order_hint(name: str, used: str, names: list[str], uses: Mapping[str, set[str]]) -> str:
    """What to do about prerequisite `name` using `used`'s output, which is not listed before it: move it up, unless
    no order can run them (itself; a cycle, named in full)."""
    if used == name:
        return f"{name!r} uses its own output: give it a fixed path"
    if used not in names:
        return "give it a fixed path, or name a prerequisite listed before it"
    path = _path(used, name, uses)
    if path is not None:
        cycle = " → ".join([name, *path])
        return f"a cycle no order can run ({cycle}): give one of them a fixed path"
    return f"list {used!r} before {name!r} under `prerequisites:`"


def _path(start: str, goal: str, uses: Mapping[str, set[str]]) -> list[str] | None:
    """The prerequisites from `start` to `goal` through what each uses (`start` and `goal` included), or None."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        if path[-1] == goal:
            return path
        for nxt in sorted(uses.get(path[-1], set()) - seen):
            seen.add(nxt)
            paths.append([*path, nxt])
    return None


def early_stopping_rules(rules: EarlyStopping) -> list[tuple[str, Any]]:
    """The rules that are set, by field name, in file order."""
    return [(name, getattr(rules, name)) for name in type(rules).model_fields if getattr(rules, name) is not None]


def _early_stopping(sweep: Sweep) -> list[Problem]:
    """A rule's metric must be one the trainer logs: a misspelt one would never fire, silently."""
    out = []
    for name, rule in early_stopping_rules(sweep.early_stopping):
        full = metrics.resolve(rule.metric)
        if full is None:
            out.append(
                Problem(
                    ("early_stopping", name, "metric"),
                    "unknown_metric",
                    f"{rule.metric!r} is not a metric the trainer logs, so this rule would never fire",
                    metrics.did_you_mean(rule.metric),
                )
            )
        elif full in metrics.HIGHER_IS_BETTER or full in metrics.SCHEDULE_METRICS:
            # The rules read lower as better: on an agreement rising as it should, `no_improvement` stopped every
            # point at its first lines.
            what = "rises as the student improves" if full in metrics.HIGHER_IS_BETTER else "is a schedule's value"
            out.append(
                Problem(
                    ("early_stopping", name, "metric"),
                    "metric_not_lower_is_better",
                    f"{rule.metric!r} {what}; the rules stop a point whose metric does not go down",
                    "use a loss the student lowers: kl_div_T1 (the default), hard_loss or a perplexity",
                )
            )
    return out


# Rules that read the baselines' curves besides the points' own (baselines are never stopped themselves).
BASELINE_RULES = ("worse_than_baseline",)


def unlogged_metric_problems(rules: EarlyStopping, spec: DistillSpec, *, is_baseline: bool = False) -> list[Problem]:
    """A warning for each rule whose metric (one the trainer logs: `check` reports the others) a run of `spec`
    (a point of the sweep) does not log: the rule never fires for that point. For a baseline, only the rules that
    compare with baselines."""
    out = []
    logged = metrics.logged_metrics(spec)
    for name, rule in early_stopping_rules(rules):
        if is_baseline and name not in BASELINE_RULES:
            continue
        if metrics.resolve(rule.metric) is None or metrics.resolve(rule.metric, logged) is not None:
            continue
        twin = metrics.resolve(rule.metric.rsplit("/", 1)[-1], logged)
        hint = (
            f"use {twin!r}, which it logs"
            if twin is not None
            else f"name a metric it logs ({', '.join(logged)})"
            if logged
            else "remove the rule, or run the points in another mode"
        )
        if spec.eval is None and metrics.resolve(rule.metric) in metrics.held_out_metrics(spec):
            hint = "give the spec an `eval:` set (a held-out set), or " + hint
        out.append(
            Problem(
                ("early_stopping", name, "metric"),
                "metric_not_logged",
                f"{rule.metric!r} is not logged ({metrics.not_logged_reason(rule.metric, spec)}), so the "
                f"{name} rule never fires",
                hint,
                severity="warning",
            )
        )
    return out


def late_rule_problems(rules: EarlyStopping, spec: DistillSpec) -> list[Problem]:
    """A warning for each rule whose `at_step` is past a point's last step: it never fires for that point."""
    out = []
    for name, rule in early_stopping_rules(rules):
        at_step = getattr(rule, "at_step", None)
        if at_step is not None and at_step > spec.steps:
            out.append(
                Problem(
                    ("early_stopping", name, "at_step"),
                    "rule_after_the_end",
                    f"the {name} rule acts from step {at_step}, after the last step ({spec.steps}), so it never fires",
                    f"set at_step to {spec.steps} or less",
                    severity="warning",
                )
            )
    return out


def _target(sweep: Sweep) -> list[Problem]:
    t = sweep.target
    out = (
        [checks.tilde_path(("target", "output_base"), "output_base", t.output_base)] if t.output_base[:1] == "~" else []
    )
    local_url = not t.on_cluster and t.output_base[:5].lower() == "file:"
    if not local_url and (malformed := checks.malformed_path(t.output_base)) is not None:
        out.append(
            Problem(
                ("target", "output_base"),
                "path_malformed",
                f"output_base {t.output_base!r} {malformed[0]}",
                malformed[1],
            )
        )
    scheme = t.output_base.split("://", 1)[0].lower() if "://" in t.output_base else ""
    if t.on_cluster and scheme and scheme not in buckets.SCHEMES:  # the pods' trainer would stop at start (exit 1;
        # file:// and memory:// an orbax crash, exit 70)
        out.append(
            Problem(
                ("target", "output_base"),
                "unsupported_scheme",
                f"target.output_base {t.output_base!r}: the trainer writes its checkpoints to gs:// and local paths, "
                f"not {scheme}://",
                "use a bucket (gs://...), or a path on a volume the pods mount (target.volumes)",
            )
        )
    if local_url:
        # `sweep` refused file://; status and cancel read it another way (`file://localhost/abs` as a folder
        # `localhost`), and `file:/abs` split each run between /abs and ./file:/abs: said once, for every command.
        # Other URLs are read by results (runs copied to a bucket).
        from distillspec.places import file_url

        host, path = file_url(t.output_base)
        if host.lower() not in ("", "localhost"):
            path = ""
        out.append(
            Problem(
                ("target", "output_base"),
                "local_output_base_url",
                f"target.output_base {t.output_base!r} is a URL, but a local target's runs write to a local folder",
                f"write it as a path ({path})" if path.startswith("/") else "write it as a local path",
            )
        )
    bucket = buckets.bucket_of(t.output_base)
    if bucket is not None and (problem := buckets.bucket_name_problem(bucket)):
        out.append(
            Problem(("target", "output_base"), "bad_bucket", f"output_base {t.output_base!r} {problem}", buckets.HINT)
        )
    if t.on_cluster:
        hosts = tpu.lookup(t.tpu_type).vms_per_slice if t.tpu_type is not None else 0
        if t.slices * hosts > MAX_JOBSET_INT:  # the JobSet webhook's cap on replicas × parallelism
            out.append(
                Problem(
                    ("target", "slices"),
                    "too_many_pods",
                    f"{t.slices} slices × {hosts} hosts of a {t.tpu_type} is {t.slices * hosts} pods, past a "
                    f"JobSet's {MAX_JOBSET_INT}",
                    f"at most {MAX_JOBSET_INT // hosts} slices of this TPU type",
                )
            )
        for field in ("tpu_type", "image"):
            if getattr(t, field) is None:
                out.append(
                    Problem(
                        ("target", field),
                        "target_field_missing",
                        f"a {t.kind} target needs target.{field}",
                        "e.g. tpu_type: v5p-128, or --tpu-type where the command takes it"
                        if field == "tpu_type"
                        else "the container image with distillctl's trainer, e.g. us-docker.pkg.dev/p/r/distill:1, "
                        "or --image where the command takes it (for a sweep the service runs, its chart's "
                        "defaults.image)",
                    )
                )
        if not is_remote(t.output_base) and t.shared_mount(t.output_base) is None:
            out.append(
                Problem(
                    ("target", "output_base"),
                    "output_base_not_shared",
                    f"output_base {t.output_base!r} is a "
                    "local path: pods on different hosts would each write their own copy",
                    "use a bucket such as gs://my-bucket/distill, or a path on a shared volume (a PersistentVolumeClaim "
                    "or CSI volume in target.volumes) that target.volume_mounts mounts",
                    severity="warning",
                )
            )
    if t.kind == "xpk" and t.cluster is None:
        out.append(
            Problem(
                ("target", "cluster"),
                "target_field_missing",
                "an xpk target needs target.cluster",
                "the name of the cluster `xpk cluster create` made",
            )
        )
    if t.kind == "xpk":
        out += _xpk_placement(t)
    if t.kind == "local" and t.tpu_type is not None:
        out.append(
            Problem(
                ("target", "tpu_type"),
                "tpu_type_ignored",
                "a local target runs on this machine; tpu_type is ignored",
                "set kind: kubernetes or xpk to run on TPUs",
                severity="warning",
            )
        )
    for name in list(t.env) + list(t.secret_env):
        section = "env" if name in t.env else "secret_env"
        if not ENV_NAME.match(name):
            out.append(
                Problem(
                    ("target", section, name),
                    "bad_env_name",
                    f"{name!r} is not an environment variable name",
                    "use letters, digits and '_', not starting with a digit",
                )
            )
        if name in RESERVED_ENV:
            out.append(
                Problem(
                    ("target", section, name),
                    "reserved_env",
                    f"{name} is set by distillctl for every run",
                    f"remove it; the resolved spec reaches the trainer in {ENV_SPEC}",
                )
            )
    for name in sorted(set(t.env) & set(t.secret_env)):
        out.append(
            Problem(
                ("target", "secret_env", name),
                "duplicate_env",
                f"{name} is set in both target.env and target.secret_env",
                "set each variable once",
            )
        )
    for name, ref in t.secret_env.items():
        if not DNS_1123_SUBDOMAIN.match(ref.secret) or len(ref.secret) > 253:
            out.append(
                Problem(
                    ("target", "secret_env", name, "secret"),
                    "bad_secret_name",
                    f"{ref.secret!r} is not a Kubernetes Secret name",
                    "lower-case letters, digits, '-' and '.'",
                )
            )
        if not SECRET_KEY.match(ref.key):
            out.append(
                Problem(
                    ("target", "secret_env", name, "key"),
                    "bad_secret_key",
                    f"{ref.key!r} is not a Secret key",
                    "letters, digits, '-', '_' and '.'",
                )
            )
    for field in ("namespace", "queue", "priority", "workload_priority_class", "service_account"):
        value = getattr(t, field)
        # A namespace is a DNS-1123 label (no dots); the others are subdomains, at most 63 characters here since
        # the queue and priority names are label values too.
        label = field == "namespace"
        if value is not None and (
            not (DNS_1123_LABEL if label else DNS_1123_SUBDOMAIN).match(value) or len(value) > 63
        ):
            out.append(
                Problem(
                    ("target", field),
                    "bad_k8s_name",
                    f"target.{field} {value!r} is not a Kubernetes {'namespace' if label else 'name'}",
                    "lower-case letters, digits and '-'"
                    + ("" if label else " ('.' between them)")
                    + ", starting and ending with a letter or digit, at most 63 characters",
                )
            )
    for key, value in t.labels.items():
        if not _label_key_ok(key) or key in RESERVED_LABELS:
            reserved = key in RESERVED_LABELS
            out.append(
                Problem(
                    ("target", "labels", key),
                    "bad_label",
                    f"label {key!r} {'is set by distillctl' if reserved else 'is not a Kubernetes label key'}",
                    "choose another key: distillctl's own labels find the runs"
                    if reserved
                    else "use [prefix/]name: a DNS prefix and a name of letters, digits, '-', '_', '.'",
                )
            )
        if key in LABELS_FROM_TARGET:
            out.append(
                Problem(
                    ("target", "labels", key),
                    "label_from_target",
                    f"label {key!r} is set by distillctl from {LABELS_FROM_TARGET[key]}: this value would be replaced",
                    f"set {LABELS_FROM_TARGET[key]} instead, and drop the label",
                )
            )
        if not LABEL_VALUE.match(value):
            out.append(
                Problem(
                    ("target", "labels", key),
                    "bad_label",
                    f"label value {value!r} is not a Kubernetes label value",
                    "at most 63 letters, digits, '-', '_', '.', starting and ending alphanumeric",
                )
            )
    for key in t.pod_annotations:
        if not _label_key_ok(key):
            out.append(
                Problem(
                    ("target", "pod_annotations", key),
                    "bad_annotation",
                    f"{key!r} is not a Kubernetes annotation key",
                    "use [prefix/]name: a DNS prefix and a name of letters, digits, '-', '_', '.'",
                )
            )
    out += _placement(t) + _volumes(t) + _resources(t) + _identity_inputs(t)
    if len(set(t.restartable_exit_codes)) != len(t.restartable_exit_codes):
        out.append(
            Problem(
                ("target", "restartable_exit_codes"),
                "duplicate_axis_value",
                "restartable_exit_codes lists a code more than once",
                "list each code once",
            )
        )
    for i, code in enumerate(t.restartable_exit_codes):
        if code in RETRYABLE_EXIT_CODES:
            out.append(
                Problem(
                    ("target", "restartable_exit_codes", i),
                    "exit_code_default",
                    f"exit code {code} already restarts the JobSet ({RETRYABLE_DESCRIPTION} always do)",
                    "remove it",
                    severity="warning",
                )
            )
        elif code in (1, 65):
            out.append(
                Problem(
                    ("target", "restartable_exit_codes", i),
                    "exit_code_not_retryable",
                    f"the trainer exits {code} for "
                    + ("a user error" if code == 1 else "a diverged run")
                    + ", which a restart does not fix",
                    "remove it",
                    severity="warning",
                )
            )
    return out


def _xpk_placement(t: Target) -> list[Problem]:
    """Where XPK's own JobSet lands elsewhere than the one distillctl renders (checked against XPK's manifest): it
    was said nowhere, and `sweep --dry-run` shows distillctl's."""
    out = []
    if t.capacity != "on-demand":
        out.append(
            Problem(
                ("target", "capacity"),
                "xpk_capacity_needs_nap",
                f"XPK adds the {t.capacity} node selector and toleration only on clusters with node auto-provisioning: "
                "elsewhere its JobSet lands on any node pool of the accelerator and topology",
                "check that the cluster auto-provisions nodes, or set target.kind: kubernetes (distillctl's JobSet "
                "always carries them)",
                severity="warning",
            )
        )
    if t.capacity in ("spot", "flex-start"):
        out.append(
            Problem(
                ("target", "capacity"),
                "xpk_preemption_spends_restarts",
                f"XPK's JobSet has no rule that restarts a preempted run for free: on {t.capacity} capacity each "
                f"reclaim spends one of target.max_restarts ({t.max_restarts}), and the run fails after that many",
                "raise target.max_restarts to the reclaims you expect, or set target.kind: kubernetes (distillctl's "
                "JobSet restarts a preemption without counting it)",
                severity="warning",
            )
        )
    if t.tpu_type is not None and tpu.lookup(t.tpu_type).topology_ambiguous:
        out.append(
            Problem(
                ("target", "tpu_type"),
                "xpk_topology_ambiguous",
                f"XPK selects a {t.tpu_type} by accelerator and topology only: on a cluster with a one-VM 8-chip pool "
                "of that topology (the -8t machine type), its second pod never schedules",
                "set target.kind: kubernetes (distillctl's JobSet pins the 4-chip machine type), or make sure the "
                "cluster has no such pool",
                severity="warning",
            )
        )
    return out


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return bool(LABEL_NAME.match(name)) and (
        not prefix or (len(prefix) <= 253 and bool(DNS_1123_SUBDOMAIN.match(prefix)))
    )


def is_remote(path: str) -> bool:
    """A URL (gs://bucket/...), not a path on this machine or in a pod."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", path))


DSHM_VOLUME = "dshm-2"  # XPK's name for the /dev/shm volume
DSHM_PATH = "/dev/shm"
# Node labels distillctl sets from other fields: the field to use instead.
_SELECTOR_OWNERS = {
    tpu.ACCELERATOR_LABEL: "tpu_type",
    tpu.TOPOLOGY_LABEL: "tpu_type",
    tpu.MACHINE_TYPE_LABEL: "machine_type_selector",
    tpu.SPOT_LABEL: "capacity: spot",
    tpu.FLEX_START_LABEL: "capacity: flex-start",
    tpu.RESERVATION_LABEL: "capacity: reservation with reservation: <name>",
}
IMAGE_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _placement(t: Target) -> list[Problem]:
    """Queue, capacity, node selectors, tolerations and the network: where the pods may run."""
    out = []
    if t.kind == "kubernetes" and t.queue is None:
        out.append(
            Problem(
                ("target", "queue"),
                "no_queue",
                "target.queue is unset: the JobSets bypass Kueue (no quota, no all-slices-at-once admission, "
                "no preemption by priority)",
                "set target.queue to the cluster's Kueue LocalQueue (XPK's is multislice-queue)",
                severity="warning",
            )
        )
    if t.capacity == "reservation" and t.reservation is None:
        out.append(
            Problem(
                ("target", "reservation"),
                "target_field_missing",
                "capacity: reservation needs target.reservation",
                "the name of the Compute Engine reservation the TPU node pools use",
            )
        )
    if t.reservation is not None and t.capacity != "reservation":
        out.append(
            Problem(
                ("target", "reservation"),
                "reservation_without_capacity",
                f"target.reservation is set but capacity is {t.capacity!r}, so it would be ignored",
                "set capacity: reservation, or remove reservation",
            )
        )
    if t.reservation is not None and (not LABEL_VALUE.match(t.reservation) or not t.reservation):
        out.append(
            Problem(
                ("target", "reservation"),
                "bad_label",
                f"reservation {t.reservation!r} is not a node label value",
                "the reservation's name (not its path): at most 63 letters, digits, '-', '_', '.'",
            )
        )
    for key, value in t.node_selector.items():
        if key in _SELECTOR_OWNERS:
            out.append(
                Problem(
                    ("target", "node_selector", key),
                    "reserved_node_selector",
                    f"node label {key!r} is set by distillctl",
                    f"use target.{_SELECTOR_OWNERS[key]}",
                )
            )
        elif not _label_key_ok(key):
            out.append(
                Problem(
                    ("target", "node_selector", key),
                    "bad_label",
                    f"node_selector key {key!r} is not a Kubernetes label key",
                    "a label key is [prefix/]name: an optional DNS-subdomain prefix and one '/', then at most 63 "
                    "letters, digits, '-', '_', '.'",
                )
            )
        elif not LABEL_VALUE.match(value):
            out.append(
                Problem(
                    ("target", "node_selector", key),
                    "bad_label",
                    f"node_selector {key}: {value!r} is not a Kubernetes label value",
                    "a value of at most 63 letters, digits, '-', '_', '.', beginning and ending with a letter or digit",
                )
            )
    for i, toleration in enumerate(t.tolerations):
        loc = ("target", "tolerations", i)
        if toleration.operator == "Exists" and toleration.value:
            out.append(
                Problem(loc, "bad_toleration", "a toleration with operator Exists takes no value", "remove value")
            )
        if toleration.operator == "Equal" and not toleration.key:
            out.append(Problem(loc, "bad_toleration", "a toleration without a key must use operator Exists", "set key"))
        if toleration.tolerationSeconds is not None and toleration.effect != "NoExecute":
            out.append(
                Problem(
                    loc,
                    "bad_toleration",
                    "tolerationSeconds applies only to effect NoExecute",
                    "set effect: NoExecute, or remove tolerationSeconds",
                )
            )
        if toleration.key is not None and not _label_key_ok(toleration.key):
            out.append(Problem(loc, "bad_toleration", f"{toleration.key!r} is not a taint key", "e.g. example.com/x"))
    if t.machine_type_selector is False and t.tpu_type and tpu.lookup(t.tpu_type).topology_ambiguous:
        shape = tpu.lookup(t.tpu_type)
        out.append(
            Problem(
                ("target", "machine_type_selector"),
                "ambiguous_topology",
                f"{shape.name} has topology {shape.topology}, which GKE also offers as one VM; without the "
                f"machine-type selector its {shape.vms_per_slice} pods may land on a one-VM pool and never all start",
                f"remove machine_type_selector (the default selects {shape.machine_type} VMs)",
                severity="warning",
            )
        )
    if t.on_cluster and t.host_network and t.service_account is not None:
        out.append(
            Problem(
                ("target", "host_network"),
                "host_network_workload_identity",
                "pods on the host network cannot use GKE Workload Identity: the service account "
                f"{t.service_account!r} would not reach Google Cloud APIs (gs:// outputs) through it",
                "set host_network: false to use Workload Identity (and on Autopilot, which rejects host-network "
                "pods), or keep it and give the node pool's service account access",
                severity="warning",
            )
        )
    return out


def _volumes(t: Target) -> list[Problem]:
    out = []
    names = [v.name for v in t.volumes]
    if t.dev_shm_size is not None and not QUANTITY.match(t.dev_shm_size):
        out.append(_bad_quantity(("target", "dev_shm_size"), t.dev_shm_size))
    if t.dev_shm_size is not None and not t.dev_shm:
        out.append(
            Problem(
                ("target", "dev_shm_size"),
                "dev_shm_size_ignored",
                "dev_shm_size is set but dev_shm is false",
                "set dev_shm: true, or remove dev_shm_size",
            )
        )
    for i, volume in enumerate(t.volumes):
        loc = ("target", "volumes", i)
        if not DNS_1123_LABEL.match(volume.name):
            out.append(
                Problem(
                    (*loc, "name"),
                    "bad_k8s_name",
                    f"volume name {volume.name!r} is not a DNS-1123 label",
                    "lower-case letters, digits and '-', at most 63 characters",
                )
            )
        if names.index(volume.name) != i or (t.dev_shm and volume.name == DSHM_VOLUME):
            why = "is distillctl's /dev/shm volume (dev_shm)" if volume.name == DSHM_VOLUME else "is used twice"
            out.append(Problem((*loc, "name"), "duplicate_volume", f"volume name {volume.name!r} {why}", "rename it"))
        if len(volume.sources()) != 1:
            out.append(
                Problem(
                    loc,
                    "volume_source",
                    f"volume {volume.name!r} needs exactly one source; "
                    + (f"it has {', '.join(volume.sources())}" if volume.sources() else "it has none"),
                    f"give one of {', '.join(VOLUME_SOURCES)}",
                )
            )
        if volume.emptyDir and volume.emptyDir.sizeLimit and not QUANTITY.match(volume.emptyDir.sizeLimit):
            out.append(_bad_quantity((*loc, "emptyDir", "sizeLimit"), volume.emptyDir.sizeLimit))
    paths: list[str] = [DSHM_PATH] if t.dev_shm else []
    for i, mount in enumerate(t.volume_mounts):
        loc = ("target", "volume_mounts", i)
        if mount.name not in names:
            close = get_close_matches(mount.name, names, n=1, cutoff=0.5)
            out.append(
                Problem(
                    (*loc, "name"),
                    "unknown_volume",
                    f"volume mount names {mount.name!r}, which is not in target.volumes",
                    f"did you mean {close[0]!r}?" if close else "declare the volume under target.volumes",
                )
            )
        if not mount.mountPath.startswith("/"):
            out.append(
                Problem((*loc, "mountPath"), "bad_mount_path", f"{mount.mountPath!r} is not absolute", "start with /")
            )
        elif mount.mountPath.rstrip("/") in paths:
            why = "dev_shm mounts /dev/shm" if mount.mountPath.rstrip("/") == DSHM_PATH else "it is mounted twice"
            out.append(
                Problem(
                    (*loc, "mountPath"),
                    "duplicate_mount_path",
                    f"{mount.mountPath} cannot be mounted here: {why}",
                    "set dev_shm: false to mount your own /dev/shm" if "dev_shm" in why else "mount each path once",
                )
            )
        paths.append(mount.mountPath.rstrip("/"))
        if mount.subPath is not None and (mount.subPath.startswith("/") or ".." in mount.subPath.split("/")):
            out.append(
                Problem(
                    (*loc, "subPath"),
                    "bad_sub_path",
                    f"subPath {mount.subPath!r} must be relative, without '..'",
                    "a path inside the volume",
                )
            )
    return out


def _resources(t: Target) -> list[Problem]:
    out = []
    for section in ("requests", "limits"):
        for name, value in getattr(t.resources, section).items():
            loc = ("target", "resources", section, name)
            if name == tpu.RESOURCE:
                out.append(
                    Problem(
                        loc,
                        "reserved_resource",
                        f"{tpu.RESOURCE} is set by distillctl from target.tpu_type (chips per VM)",
                        "remove it",
                    )
                )
            elif not _label_key_ok(name):
                out.append(Problem(loc, "bad_resource", f"{name!r} is not a resource name", "e.g. cpu, memory"))
            if not QUANTITY.match(value):
                out.append(_bad_quantity(loc, value))
    return out


def _identity_inputs(t: Target) -> list[Problem]:
    """What a run id cannot see: an image tag can be pushed again with other code under the same id."""
    if not t.on_cluster or t.image is None or IMAGE_DIGEST.search(t.image):
        return []
    return [
        Problem(
            ("target", "image"),
            "mutable_image_tag",
            f"image {t.image!r} is named by tag: run ids hash the name, so pushing other code under the same tag "
            "keeps every run id (and `sweep` skips runs that succeeded with the old code)",
            "name the image by digest (repository@sha256:...), as `docker push` or `crane digest` prints it; or use "
            "a tag per build (the commit) and never push it twice; or set target.resolve_image: true to use the "
            "digest the tag names when the command runs",
            severity="warning",
        )
    ]


def _bad_quantity(loc: Loc, value: str) -> Problem:
    return Problem(loc, "bad_quantity", f"{value!r} is not a Kubernetes quantity", "e.g. 8, 500m, 64Gi")
