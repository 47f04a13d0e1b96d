"""Run identities and Kubernetes names.

A run id is a short hash of what determines a run's result: the canonical resolved spec (without `name` and
`output_dir`, which are derived from the id) and the target fields that change the run (TPU type, slices,
image, the environment the trainer sees). It is not derived from grid indices, so the same point in two sweep
files gets the same id, and editing any value that matters gives a new one. Namespace, queue, priority, TTL,
restart policy, the output base and `logging.tensorboard_dir` are not part of it: they change where and when a
run happens, not what it computes.

Names are checked against every limit that applies before anything is rendered:
- the JobSet name is a DNS-1035 label (lower-case alphanumerics and '-', starting with a letter, <= 63);
- the JobSet webhook derives `<jobset>-<replicatedJob>-<jobIndex>` (Job names) and, for Indexed Jobs,
  `<jobset>-<replicatedJob>-<jobIndex>-<podIndex>-<5 random chars>` (pod names): both must be DNS-1035 labels;
- the JobSet name is also a label value (`jobset.sigs.k8s.io/jobset-name`), <= 63;
- XPK's `--workload` names are at most 40 characters (`xpk.parser.validators.name_type`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from typing import Any, Callable

from pydantic._internal._model_construction import ModelMetaclass

from distillspec import places
from distillspec.config import RESOLUTION_INPUTS, DistillSpec
from distillspec.problems import Loc, Problem
from distillspec.registry import CONSTANT_FIELDS
from distillspec.sources import trainer_code_hash  # noqa: F401 - part of run ids; tests reach it here
from distillspec.sweep import Target

IDENTITY_SCHEME = "distillctl.run/v2"  # bump when the payload changes, so old and new ids never collide
RUN_ID_LENGTH = 10  # base32 characters: 50 bits
SPEC_HASH_LENGTH = 32  # hex characters: fits a label value (<= 63)

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_MAX = 63
LABEL_VALUE_MAX = 63
XPK_WORKLOAD_NAME_MAX = 40
POD_SUFFIX = "-abcde"  # the 5 random characters Kubernetes appends to a Job's pod names, with their dash
REPLICATED_JOB = "slice-job"


# One encoder for every call: json.dumps with options builds a new one each time, which a sweep feels.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, no NaN."""
    return _CANONICAL.encode(value)


def target_identity(target: Target) -> dict[str, Any]:
    """The target fields that change what a run computes. A local run has no TPU, slices or image. Where the pods
    run (namespace, queue, priority, capacity, node selectors, tolerations, resources, /dev/shm, host network)
    is not part of it."""
    on_cluster = target.on_cluster
    return {
        "tpu_type": target.tpu_type if on_cluster else None,
        "slices": target.slices if on_cluster else None,
        "image": target.image if on_cluster else None,
        "env": dict(sorted(target.env.items())),
        "secret_env": {name: {"secret": ref.secret, "key": ref.key} for name, ref in sorted(target.secret_env.items())},
        **({"pod_annotations": dict(sorted(target.pod_annotations.items()))} if target.pod_annotations else {}),
        # A cluster run's code is its image (by digest, where the sweep says so); a local run's is the installed trainer.
        **({"trainer_code": trainer_code_hash()} if target.code_in_run_id and not on_cluster else {}),
        # What is mounted where can change what a spec's path reads; left out while empty (older ids stay).
        **({"volumes": [v.model_dump(exclude_none=True) for v in target.volumes]} if target.volumes else {}),
        **(
            {"volume_mounts": [m.model_dump(exclude_none=True) for m in target.volume_mounts]}
            if target.volume_mounts
            else {}
        ),
    }


def identity_payload(spec: DistillSpec, target: Target) -> dict[str, Any]:
    return _payload(spec.resolved_data(), target)


# Spec fields added after IDENTITY_SCHEME v2, left out of the identity while they hold their default, so the runs
# of specs written before them keep their ids: {block or "" for the top level: {field: default}}.
LATER_DEFAULTS: dict[str, dict[str, Any]] = {
    "": {"eval": None, "top_k": None},
    "data": {
        "text_column": "text",
        "prompt_column": None,
        "completion_column": None,
        "completion_only": False,
        "shuffle_window": 0,
    },
    "student": {"global_layers": None, **dict.fromkeys(CONSTANT_FIELDS)},
    "teacher": {"global_layers": None, **dict.fromkeys(CONSTANT_FIELDS)},
    "logging": {"tensorboard_dir": None},
}


def _without_later_defaults(resolved: dict[str, Any]) -> dict[str, Any]:
    """A resolved spec's JSON data minus the `LATER_DEFAULTS` fields that hold their default (not modified)."""
    out = {k: v for k, v in resolved.items() if k not in LATER_DEFAULTS[""] or v != LATER_DEFAULTS[""][k]}
    for block, defaults in LATER_DEFAULTS.items():
        if block and isinstance(out.get(block), dict):  # `teacher` may be None
            out[block] = {k: v for k, v in out[block].items() if k not in defaults or v != defaults[k]}
    return out


def _payload(resolved: dict[str, Any], target: Target) -> dict[str, Any]:
    """The identity of a run from its resolved spec as JSON data (not modified)."""
    spec = {k: v for k, v in _without_later_defaults(resolved).items() if k not in ("name", "output_dir")}
    for block in NOT_IN_IDENTITY:
        spec[block] = _identity_part(block, spec[block])
    return {"scheme": IDENTITY_SCHEME, "spec": spec, "run": target_identity(target)}


class Encodings:
    """Canonical JSON of resolved spec blocks, remembered by the objects they were made from. A sweep's points
    share the block objects they do not change (see expansion), so each shared block is encoded once per sweep
    instead of once per point. The objects are kept alive with their text: an id is never reused meanwhile."""

    def __init__(self) -> None:
        self._texts: dict[tuple, tuple[tuple, str]] = {}

    def text(self, tag: str, objects: tuple, make: Callable[[], Any]) -> str:
        """`canonical_json(make())`, encoded again only when one of `objects` (what `make` reads) is another."""
        key = (tag, *map(id, objects))
        known = self._texts.get(key)
        if known is None:
            known = self._texts[key] = (objects, canonical_json(make()))
        return known[1]


# Each field of the identity and what its resolved form reads besides itself.
_FIELDS = tuple(
    (name, RESOLUTION_INPUTS.get(name, ())) for name in DistillSpec.model_fields if name not in ("name", "output_dir")
)


def identify(spec: DistillSpec, target: Target, encodings: Encodings | None = None) -> tuple[str, str, str]:
    """`(run_id(spec, target), spec_hash(final), canonical JSON of final)`, where final is the resolved spec
    named by its run id with `output_dir` the target's output base: the same texts those functions hash, built
    from each block's encoding once (a sweep does this per point, sharing `encodings`)."""
    known = encodings or Encodings()
    later = LATER_DEFAULTS[""]
    blocks = {}
    for name, inputs in _FIELDS:
        value = getattr(spec, name)
        if name in later and spec.resolved_block(name) == later[name]:
            continue
        if is_model(value):
            objects = (value, *(getattr(spec, field) for field in inputs))
            blocks[name] = known.text(name, objects, functools.partial(_block_data, spec, name))
        else:
            blocks[name] = canonical_json(value)  # a plain field resolves to itself
    checkpoint = known.text(
        "checkpoint/identity",
        (spec.checkpoint,),
        lambda: _identity_part("checkpoint", spec.resolved_block("checkpoint")),
    )
    logging = known.text(
        "logging/identity", (spec.logging,), lambda: _identity_part("logging", _block_data(spec, "logging"))
    )
    payload = _object(
        {
            "run": known.text("target", (target,), lambda: target_identity(target)),
            "scheme": canonical_json(IDENTITY_SCHEME),
            "spec": _object({**blocks, "checkpoint": checkpoint, "logging": logging}),
        }
    )
    run = _id_of(payload)
    final = _object({**blocks, "name": _string(run), "output_dir": _string(target.output_base)})
    return run, _hash_of(final), final


def is_model(value: Any) -> bool:
    """isinstance(value, BaseModel), without the ABC machinery of pydantic's metaclass (asked per block per point)."""
    return isinstance(type(value), ModelMetaclass)


def _block_data(spec: DistillSpec, name: str) -> Any:
    """One block of `_without_later_defaults(spec.resolved_data())`."""
    data = spec.resolved_block(name)
    defaults = LATER_DEFAULTS.get(name)
    if not defaults or not isinstance(data, dict):
        return data
    return {k: v for k, v in data.items() if k not in defaults or v != defaults[k]}


# A field of a block that is not part of run ids: an extra copy of the result in another format (`export`), where
# its TensorBoard events go (`tensorboard_dir`): not what the run computes.
NOT_IN_IDENTITY = {"checkpoint": "export", "logging": "tensorboard_dir"}


def _identity_part(block: str, data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != NOT_IN_IDENTITY[block]}


def _object(encoded: dict[str, str]) -> str:
    """`canonical_json` of a mapping whose values are already encoded: the same text, byte for byte."""
    return "{" + ",".join(f"{_string(key)}:{encoded[key]}" for key in sorted(encoded)) + "}"


_string = json.encoder.encode_basestring  # how canonical_json writes a string (ensure_ascii=False)


def _digest_id(payload: dict[str, Any]) -> str:
    return _id_of(canonical_json(payload))


def _id_of(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    # base32 turns each 5 bytes into 8 characters: the first 10 bytes give the first 16 characters.
    return base64.b32encode(digest[:10]).decode().lower()[:RUN_ID_LENGTH]


def _digest_hash(resolved: dict[str, Any]) -> str:
    return _hash_of(canonical_json(_without_later_defaults(resolved)))


def _hash_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:SPEC_HASH_LENGTH]


def run_id(spec: DistillSpec, target: Target) -> str:
    """`RUN_ID_LENGTH` lower-case base32 characters (a-z, 2-7) of the payload's sha256: DNS-safe."""
    return _digest_id(identity_payload(spec, target))


def spec_hash(spec: DistillSpec) -> str:
    """Hex sha256 prefix of the exact resolved spec handed to the trainer (name and output_dir included)."""
    return _digest_hash(spec.resolved_data())


def jobset_name(sweep: str, run: str) -> str:
    return f"{sweep}-{run}"


def output_path(output_base: str, run: str) -> str:
    """Where a run writes: `<output_base>/<run id>` (the trainer's `<output_dir>/<name>`)."""
    return places.inside(output_base, run)


def longest_job_name(name: str, slices: int) -> str:
    return f"{name}-{REPLICATED_JOB}-{slices - 1}"


def longest_pod_name(name: str, slices: int, vms_per_slice: int) -> str:
    return f"{longest_job_name(name, slices)}-{vms_per_slice - 1}{POD_SUFFIX}"


def name_budget(*, slices: int, vms_per_slice: int, kind: str) -> int:
    """The longest JobSet name that passes every check for this shape of run."""
    overhead = len(longest_pod_name("", slices, vms_per_slice))
    budget = min(DNS_LABEL_MAX - overhead, LABEL_VALUE_MAX)
    return min(budget, XPK_WORKLOAD_NAME_MAX) if kind == "xpk" else budget


def name_problems(name: str, *, slices: int, vms_per_slice: int, kind: str, loc: Loc = ("name",)) -> list[Problem]:
    """Every naming rule `name` breaks as a JobSet for this target (empty when it is fine)."""
    out = []
    budget = name_budget(slices=slices, vms_per_slice=vms_per_slice, kind=kind)
    hint = (
        f"shorten the sweep name to at most {budget - 1 - RUN_ID_LENGTH} characters (JobSet names "
        f"`<sweep>-<run id>` here may have at most {budget})"
    )
    if not DNS_1035_LABEL.match(name):
        out.append(
            Problem(
                loc,
                "name_not_dns_1035",
                f"JobSet name {name!r} is not a DNS-1035 label",
                "use lower-case letters, digits and '-', starting with a letter",
            )
        )
    if len(name) > LABEL_VALUE_MAX:
        out.append(
            Problem(
                loc,
                "name_too_long",
                f"JobSet name {name!r} has {len(name)} characters; names and label "
                f"values are limited to {LABEL_VALUE_MAX}",
                hint,
            )
        )
    job = longest_job_name(name, slices)
    if len(job) > DNS_LABEL_MAX:
        out.append(
            Problem(
                loc,
                "job_name_too_long",
                f"the JobSet controller would name a Job {job!r} ({len(job)} characters, over {DNS_LABEL_MAX})",
                hint,
            )
        )
    pod = longest_pod_name(name, slices, vms_per_slice)
    if len(pod) > DNS_LABEL_MAX:
        out.append(
            Problem(
                loc,
                "pod_name_too_long",
                f"pods of {name!r} would be named like {pod!r} ({len(pod)} "
                f"characters, over {DNS_LABEL_MAX}); the JobSet webhook rejects it",
                hint,
            )
        )
    if kind == "xpk" and len(name) > XPK_WORKLOAD_NAME_MAX:
        out.append(
            Problem(
                loc,
                "xpk_name_too_long",
                f"XPK workload name {name!r} has {len(name)} characters; "
                f"`xpk workload create` accepts at most {XPK_WORKLOAD_NAME_MAX}",
                hint,
            )
        )
    return out
