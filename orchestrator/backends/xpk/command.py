"""The `xpk workload create` command line equivalent to a rendered JobSet (`distillctl render --as xpk`).

Flag names are those of XPK's `workload create` parser. XPK writes `--env` values into its YAML without
escaping them, so the resolved spec (JSON, full of quotes) would break the manifest: it is passed
base64-encoded inside `--command` instead, and decoded in the container:
`DISTILLCTL_SPEC="$(echo <base64> | base64 -d)" DISTILLCTL_RUN_ID=<id> python -m trainer`.

What XPK cannot express is a problem: Secret references (an error), and a LocalQueue, service account,
Kueue WorkloadPriorityClass, host-network or /dev/shm setting other than XPK's own, extra node selectors,
tolerations, resources or volumes (warnings: XPK uses its own). `capacity` becomes XPK's `--spot`, `--flex` or
`--reservation` (XPK's own flags for the same node selectors).
"""

from __future__ import annotations

import base64
import dataclasses
import shlex

from distillspec.contract import CONTAINER_NAME, ENV_RUN_ID, ENV_SPEC, RETRYABLE_EXIT_CODES, TRAINER_COMMAND
from distillspec.problems import Problem
from distillspec.sweep import Resources, Target
from orchestrator.core.expansion import Point
from orchestrator.core.rendering import spec_json, target_env

XPK_LOCAL_QUEUE = "multislice-queue"  # the LocalQueue `xpk cluster create` makes; every XPK workload uses it
XPK_PRIORITIES = ("very-low", "low", "medium", "high", "very-high")
_UNSAFE_ENV = ('"', "\\", "\n", "\r")


@dataclasses.dataclass(frozen=True)
class XpkCommand:
    argv: tuple[str, ...]

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


def sweep_problems(expansion) -> list[Problem]:
    """`located_problems` when the sweep launches through XPK (none otherwise): `plan`, `sweep --dry-run` and the
    launch refuse the same target."""
    return located_problems(expansion) if expansion.sweep.target.kind == "xpk" else []


def located_problems(expansion) -> list[Problem]:
    """`problems` of an expanded sweep's target, at the sweep file's lines (`render --as xpk` of any cluster
    target)."""
    source = expansion.source
    return [source.locate(p) if source is not None else p for p in problems(expansion.sweep.target)]


def problems(target: Target) -> list[Problem]:
    """What of this target `xpk workload create` cannot express."""
    out = []
    if target.cluster is None:
        out.append(
            Problem(
                ("target", "cluster"),
                "target_field_missing",
                "`xpk workload create` needs target.cluster",
                "set target.cluster to the cluster `xpk cluster create` made",
            )
        )
    if target.tpu_type is None or target.image is None:
        out.append(
            Problem(
                ("target",),
                "target_field_missing",
                "`xpk workload create` needs target.tpu_type and target.image",
                "set both",
            )
        )
    if target.secret_env:
        out.append(
            Problem(
                ("target", "secret_env"),
                "xpk_no_secrets",
                "XPK cannot pass Secret references to the container",
                "render the JobSet instead (`distillctl render`), or drop secret_env",
            )
        )
    if target.priority is not None and target.priority not in XPK_PRIORITIES:
        out.append(
            Problem(
                ("target", "priority"),
                "xpk_bad_priority",
                f"XPK's --priority is one of {', '.join(XPK_PRIORITIES)}; got {target.priority!r}",
                "use one of XPK's priorities",
            )
        )
    for name, value in target.env.items():
        if any(ch in value for ch in _UNSAFE_ENV):
            out.append(
                Problem(
                    ("target", "env", name),
                    "xpk_unsafe_env",
                    f"XPK writes --env values into its YAML "
                    f"unescaped; the value of {name} holds a quote, backslash or line break",
                    "render the JobSet instead, or simplify the value",
                )
            )
    warnings = [
        ("queue", target.queue not in (None, XPK_LOCAL_QUEUE), f"XPK always uses the LocalQueue {XPK_LOCAL_QUEUE!r}"),
        ("service_account", target.service_account is not None, "XPK sets the service account itself"),
        (
            "workload_priority_class",
            target.workload_priority_class is not None,
            "XPK sets no kueue.x-k8s.io/priority-class label; its --priority is the pods' PriorityClass",
        ),
        ("host_network", not target.host_network, "XPK always runs TPU pods with hostNetwork: true"),
        ("dev_shm", not target.dev_shm, "XPK always mounts a Memory emptyDir (dshm-2) at /dev/shm"),
        ("dev_shm_size", target.dev_shm_size is not None, "XPK's /dev/shm volume has no size limit"),
        ("node_selector", bool(target.node_selector), "XPK takes no extra node selectors"),
        ("tolerations", bool(target.tolerations), "XPK takes no extra tolerations"),
        ("resources", target.resources != Resources(), "XPK sets only the container's google.com/tpu limit"),
        (
            "volumes",
            bool(target.volumes or target.volume_mounts),
            "XPK mounts only the storages `xpk storage attach` made (its --storage)",
        ),
        (
            "machine_type_selector",
            bool(target.machine_type_selector),
            "XPK selects nodes by accelerator and topology only",
        ),
    ]
    for field, applies, message in warnings:
        if applies:
            out.append(
                Problem(
                    ("target", field),
                    "xpk_ignores",
                    message,
                    "render the JobSet to keep this setting",
                    severity="warning",
                )
            )
    return out


def trainer_command(point: Point) -> str:
    encoded = base64.b64encode(spec_json(point).encode()).decode()
    return f'{ENV_SPEC}="$(echo {encoded} | base64 -d)" {ENV_RUN_ID}={point.run_id} {" ".join(TRAINER_COMMAND)}'


def xpk_command(point: Point, target: Target) -> XpkCommand:
    """The command; call `problems(target)` first, as this does not check what XPK cannot express."""
    argv = ["xpk", "workload", "create", "--cluster", str(target.cluster)]
    if target.project:
        argv += ["--project", target.project]
    if target.zone:
        argv += ["--zone", target.zone]
    argv += [
        "--namespace",
        target.namespace,
        "--workload",
        point.jobset_name,
        "--tpu-type",
        str(target.tpu_type),
        "--num-slices",
        str(target.slices),
        "--docker-image",
        str(target.image),
        "--docker-name",
        CONTAINER_NAME,  # XPK's default is jax-tpu; logs and exit-code rules name this container
        "--command",
        trainer_command(point),
        "--max-restarts",
        str(target.max_restarts),
        "--ttl-seconds-after-finished",
        str(target.ttl_seconds_after_finished),
        "--termination-grace-period-seconds",
        str(target.termination_grace_seconds),
    ]
    if target.priority:
        argv += ["--priority", target.priority]
    # XPK's capacity flags (its node selectors: cloud.google.com/gke-spot, gke-queued, reservation-name).
    if target.capacity == "spot":
        argv += ["--spot"]
    elif target.capacity == "flex-start":
        argv += ["--flex"]
    elif target.capacity == "reservation":
        argv += ["--reservation", str(target.reservation)]
    extra = sorted(set(target.restartable_exit_codes) - set(RETRYABLE_EXIT_CODES))
    if extra:
        argv += ["--restart-on-exit-codes", ",".join(str(code) for code in extra)]
    env = target_env(target)
    for name in sorted(env):
        argv += ["--env", f"{name}={env[name]}"]
    return XpkCommand(tuple(argv))
