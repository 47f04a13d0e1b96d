"""Options and arguments that several commands share, and the values built from them once per command.

Importing this module is cheap (typer only): every command module imports it at start-up, so whatever a command
needs beyond it is imported inside the command.
"""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

# The core's defaults, repeated here so that building the command line imports no core module (start-up time);
# tests/test_cli_spec.py keeps each equal to its source.
DEFAULT_MAX_POINTS = 64  # orchestrator.core.expansion.DEFAULT_MAX_POINTS
DEFAULT_WINDOW = 5  # orchestrator.core.results.DEFAULT_WINDOW
DEFAULT_RTOL = 0.1  # orchestrator.core.golden.DEFAULT_RTOL
DEFAULT_METRICS = ("distill/kl_div_T1", "distill/hard_loss", "distill/top1_agreement")  # ...golden.DEFAULT_METRICS
DEFAULT_STALL_SECONDS = 900.0  # orchestrator.core.run_status.DEFAULT_STALL_SECONDS


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


SweepArgument = Annotated[Path, typer.Argument(help="a sweep file")]


def _remember_output(value: OutputFormat) -> OutputFormat:
    """A command that answers in JSON answers an invalid file in JSON too (the boundary reads this)."""
    from orchestrator.cli import console

    console.json_problems = value is OutputFormat.json
    return value


OutputOption = Annotated[
    OutputFormat, typer.Option("--output", help="text for people, json for machines", callback=_remember_output)
]
TpuOption = Annotated[Optional[str], typer.Option("--tpu-type", help="override target.tpu_type, e.g. v6e-256")]
SlicesOption = Annotated[Optional[int], typer.Option("--slices", min=1, max=2**31 - 1, help="override target.slices")]
GridYesOption = Annotated[bool, typer.Option("--yes", help=f"allow more than {DEFAULT_MAX_POINTS} points")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation; allow large grids")]
CheckPathsOption = Annotated[
    bool,
    typer.Option(
        "--check-paths",
        help="read each run's checkpoint, data and tokenizer paths first (as `validate --check-paths`); errors stop it",
    ),
]
KubeconfigOption = Annotated[
    Optional[str],
    typer.Option("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"),
]
ContextOption = Annotated[
    Optional[str], typer.Option("--context", help="kubeconfig context (default: the current one)")
]


def kubernetes_name(value: str | None, param: typer.CallbackParam) -> str | None:
    """A namespace or object name given on the command line, checked as target.namespace is, so that a typo is a
    usage error and not a cluster that seems empty ("no runs created")."""
    if not value:  # unset ("" too: as the command treats it)
        return value
    from distillspec.sweep import DNS_1123_LABEL, DNS_1123_SUBDOMAIN

    limit = 253 if param.name == "lease" else 63
    # A namespace is a DNS-1123 label (no dots), as target.namespace is checked; other names are subdomains.
    namespace = param.name == "namespace"
    if not (DNS_1123_LABEL if namespace else DNS_1123_SUBDOMAIN).match(value) or len(value) > limit:
        allowed = "lower-case letters, digits and '-'" + ("" if namespace else " ('.' between parts)")
        raise typer.BadParameter(
            f"{value!r} is not a Kubernetes {'namespace' if namespace else 'name'}: use {allowed} "
            f"(at most {limit} characters), e.g. {_name_like(value)!r}"
        )
    return value


def image_reference(value: str | None) -> str | None:
    """A container image given on the command line, checked as target.image is."""
    if not value:  # unset ("" too: as the command treats it)
        return value
    from distillspec.sweep import IMAGE_REFERENCE, IMAGE_REFERENCE_FORM

    if not IMAGE_REFERENCE.match(value):
        raise typer.BadParameter(f"{value!r} is not a container image reference: {IMAGE_REFERENCE_FORM}")
    return value


def _name_like(value: str) -> str:
    """`value` made into a Kubernetes name, as an example in the message."""
    import re

    name = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:63].strip("-")
    return name or "default"


NamespaceOption = Annotated[
    Optional[str],
    typer.Option("--namespace", "-n", callback=kubernetes_name, help="namespace (default: target.namespace)"),
]
ImageOption = Annotated[
    Optional[str],
    typer.Option(
        "--image", help="override target.image (part of every run id: status, logs and cancel need the same value)"
    ),
]


def finite_number(what: str, *, zero: bool = False):
    """An option callback that refuses NaN, infinities and numbers below zero (or zero itself unless `zero`):
    `nan` waited for ever and `inf` broke arithmetic further on. `what` ends "`{value} is not ...`"."""

    def check(value: float | None) -> float | None:
        if value is None or (math.isfinite(value) and (value > 0 or (zero and value == 0))):
            return value
        raise typer.BadParameter(f"{value} is not {what}")

    return check


StallOption = Annotated[
    float,
    typer.Option(
        "--stall-after",
        callback=finite_number("a positive number of seconds; e.g. 900 (15 minutes)"),
        help="seconds without new metrics before a running point shows as Stalled",
    ),
]
WaitTimeoutOption = Annotated[
    Optional[float],
    typer.Option(
        "--timeout",
        callback=finite_number("a number of seconds to wait; e.g. 3600, or leave --timeout out"),
        help="with --wait: give up after this many seconds (exit 3)",
    ),
]
WindowOption = Annotated[
    int,
    typer.Option(
        "--window",
        min=0,
        help="aggregate each metric over the last N log records "
        "(token-weighted, from the (sum, count) pairs); 0: every record",
    ),
]


def _local_file_url(value: str | None) -> str | None:
    """`file://localhost/abs` (RFC 8089's spelling of /abs) as /abs, for every reader of the runs (the check alone
    took it so, and the runs were read under a folder named `localhost`); a file URL on another host is refused."""
    from distillspec.places import file_url

    parts = None if value is None else file_url(value)
    if parts is None:
        return value
    from orchestrator.errors import UsageError

    host, path = parts
    if value[5:7] != "//":  # file:/abs, RFC 8089's short form; a file URL's path is absolute
        if path.startswith("/"):
            return path
        # `file:rel` read as a folder named `file:rel` ("no such folder" beside an existing ./rel)
        raise UsageError(
            f"--output-base {value!r} "
            + (f"is a file URL with a relative path ({path})" if path else "names no folder"),
            f"write the path itself ({path})" if path else "write file:///abs/path, or the path itself",
        )
    if host == "":
        return "file://" + path  # file:///abs (the scheme in lower case), or file:// (no folder: the check says)
    if host.lower() == "localhost" and path:
        return path
    raise UsageError(
        f"--output-base {value!r} names {'no folder' if host == 'localhost' else f'the host {host!r}'}",
        "give a folder on this machine (/abs/path or file:///abs/path)",
    )


OutputBaseOption = Annotated[
    Optional[str],
    typer.Option(
        "--output-base",
        help="read the runs' outputs under this path or URL (gs://bucket/prefix) instead of the "
        "sweep's target.output_base; run ids do not change",
        callback=_local_file_url,
    ),
]


@dataclasses.dataclass(frozen=True)
class SweepContext:
    """What a sweep command was told about where the sweep runs, built once from its options: the sweep file,
    target overrides, and the cluster access."""

    path: Path
    overrides: object  # orchestrator.core.sweeps.TargetOverrides (imported lazily: start-up time)
    access: object  # orchestrator.backends.ClusterAccess
    yes: bool = False

    @classmethod
    def build(
        cls,
        path: Path,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
        yes: bool = False,
        labels: dict[str, str] | None = None,
        **overrides,
    ) -> SweepContext:
        from orchestrator.backends import ClusterAccess
        from orchestrator.core.sweeps import TargetOverrides

        return cls(
            path,
            TargetOverrides(**overrides, labels=tuple((labels or {}).items())),
            ClusterAccess(kubeconfig=kubeconfig, context=context, namespace=namespace),
            yes,
        )

    def expand(self):
        """The sweep, loaded and expanded with the overrides (an Expansion), or the error that says why not."""
        from orchestrator.core.sweeps import expand_sweep

        return expand_sweep(self.path, self.overrides, yes=self.yes)

    def warn_if_nothing_written(self, expansion) -> None:
        """A warning when a local sweep's output base does not exist: read from another directory than the one
        `sweep` ran in (a relative output_base is relative to it), every run would read Pending (NotCreated)."""
        import os

        from distillspec.problems import Problem
        from orchestrator.cli import console

        target = expansion.sweep.target
        if target.kind != "local" or "://" in target.output_base or os.path.isdir(target.output_base):
            return
        if os.path.exists(target.output_base):  # `sweep` refuses it; the readers said every run NotCreated
            console.print_problem(
                Problem(
                    ("target", "output_base"),
                    "output_base_missing",
                    f"target.output_base {target.output_base} is a file, not a folder: no run of this sweep can write "
                    "here",
                    "point target.output_base at a folder (or move the file away)",
                    severity="warning",
                )
            )
            return
        relative = not os.path.isabs(target.output_base)
        console.print_problem(
            Problem(
                ("target", "output_base"),
                "output_base_missing",
                f"target.output_base {target.output_base} does not exist"
                + (f" (relative to the current directory, {os.getcwd()})" if relative else "")
                + ": no run of this sweep has written here",
                "run distillctl from the directory `sweep` ran in, or give target.output_base as an absolute path"
                if relative
                else "check target.output_base",
                severity="warning",
            )
        )

    def expanded(self, about: tuple[str, ...] | None = None, *, served: bool = False):
        """The expansion, its warnings printed: the sweep's own (only those whose location starts with one of
        `about`, when given: a command that reads finished runs has no use for launch advice), and the options a
        local sweep ignores. `served`: a command that reads the runs takes the target fields the file leaves to the
        sweep service as the service filled them (`with_service_defaults`)."""
        from distillspec.problems import Problem
        from orchestrator.cli import console

        expansion = (self.with_service_defaults() if served else self).expand()
        if about is None:  # launch advice wanted: the memory warnings too
            from orchestrator.core.sweeps import with_memory_warnings

            expansion = with_memory_warnings(expansion)
        for problem in expansion.problems:
            if about is None or problem.code == "option_ignored" or (problem.loc and problem.loc[0] in about):
                console.print_problem(problem)
        access = self.access
        given = [
            flag
            for flag, value in (
                ("--kubeconfig", access.kubeconfig),
                ("--context", access.context),
                ("--namespace", access.namespace),
            )
            if value
        ]
        if given and expansion.sweep.target.kind == "local":
            console.print_problem(
                Problem(
                    (),
                    "option_ignored",
                    f"{', '.join(given)} ignored: sweep {expansion.sweep.name} runs locally (target.kind: local)",
                    "drop the option, or pass --tpu-type (and --image) to look at the sweep on a cluster",
                    severity="warning",
                )
            )
        return expansion

    def with_service_defaults(self) -> SweepContext:
        """This context with the target fields its file leaves unset (the image, the output base) as the sweep
        service filled them for this sweep (its DistillationSweep's `status.pinned`), said on stderr. The image is
        part of every run id: without it the file named none of the resource's runs (and a kubernetes target
        without an image is refused: `status` wanted `--image`); the outputs are under the service's output base,
        not `runs`. Options given win; a sweep no service runs is left as it is."""
        from distillspec.sweep import Target
        from orchestrator.cli import console
        from orchestrator.core.sweeps import load_overridden
        from orchestrator.errors import DistillctlError, UsageError
        from orchestrator.service.client import pinned_defaults

        source = load_overridden(self.path, self.overrides, image_required=False)
        if source.sweep is None or source.sweep.target.kind != "kubernetes":
            return self
        target = source.sweep.target
        unset = {key for key in ("image", "output_base") if getattr(target, key) in (None, "", Target().output_base)}
        if not unset:
            return self
        name = source.sweep.name
        try:
            pinned = pinned_defaults(self.access, target, name)
        except DistillctlError:
            if "image" in unset:
                load_overridden(self.path, self.overrides)  # a local file made a cluster one by --tpu-type: said
                raise  # without the service's image the file names none of its runs: the cluster's answer is why
            return self  # the command that reads the runs says it
        if pinned is None and "image" in unset:
            load_overridden(self.path, self.overrides)
            # It read "not a valid sweep: target.image missing" (exit 4) after a `cancel --service`, with -n wrong.
            namespace = self.access.namespace or target.namespace or "the context's namespace"
            raise UsageError(
                f"{self.path} sets no target.image, and there is no DistillationSweep {name} in namespace "
                f"{namespace} whose service could have filled it in (deleted, or applied in another namespace or "
                "cluster?)",
                "give --image IMAGE (the image its runs use) or set target.image, or -n/--context where the sweep "
                "was applied",
            )
        filled = {k: v for k, v in (pinned or {}).items() if k in unset}
        if not filled:
            return self
        console.err.print(
            f"sweep {source.sweep.name} is run by the distillctl service, which filled in what the file leaves "
            "unset: " + ", ".join(f"target.{k} {v}" for k, v in sorted(filled.items())),
            markup=False,
            soft_wrap=True,
        )
        return dataclasses.replace(self, overrides=dataclasses.replace(self.overrides, **filled))

    def path_problems(self, expansion) -> tuple:
        """`--check-paths` for a sweep: every run's paths read as `validate --check-paths` reads a spec's (a path a
        prerequisite writes is not there yet, and left out), each problem once with the points it concerns, warnings
        returned; an error raises InvalidSpecError (every problem) before anything is launched."""
        from orchestrator.cli.spec_validate import path_checker
        from orchestrator.core.expansion import path_problems
        from orchestrator.errors import InvalidSpecError

        problems = path_problems(expansion, path_checker())
        self._note_pod_paths(expansion)
        if any(p.is_error for p in problems):
            raise InvalidSpecError(
                f"{self.path}: a path its runs read is not what they need",
                problems,
                "fix the paths above (or the model blocks they are checked against); nothing was launched",
            )
        return problems

    def _note_pod_paths(self, expansion) -> None:
        """A cluster target's local paths are the pods' (on a volume), not read from here: said, since the option
        reads as if every path were checked."""
        from orchestrator.cli import console
        from orchestrator.core.checkpoint_paths import local_paths

        if not expansion.sweep.target.on_cluster:
            return
        found = sorted({path for run in expansion.runs for path in local_paths(run.spec)})
        if found:
            console.err.print(
                f"--check-paths: {len(found)} local path(s) of this cluster target are read in the pods (on a volume "
                f"target.volumes mounts), not checked from here: {', '.join(found[:3])}"
                + (" ..." if len(found) > 3 else ""),
                markup=False,
                soft_wrap=True,
            )

    def open(self, check=None, about: tuple[str, ...] | None = None, *, served: bool = False, launching: bool = False):
        """`(expansion, backend)`: the expanded sweep and its target's backend (close it when done). Warnings of
        the expansion are printed (as `expanded` filters them by `about`, and fills it as `served` says);
        `check(expansion)` runs before the backend connects (a command's options that the sweep can refuse);
        `launching`: `sweep`'s backend (see `backend_for`)."""
        from orchestrator.backends import backend_for

        expansion = self.expanded(about, served=served)
        if check is not None:
            check(expansion)
        return expansion, backend_for(expansion.sweep.target, self.access, launching=launching)
