"""Every exit code distillctl returns, in one place: the CLI, its help text, the README and the tests use it."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the work ran and failed: `regress` found a metric regression
    USAGE = 2  # bad command line or a file that does not exist; for `regress`: infrastructure failure
    TIMEOUT = 3  # waited longer than --timeout
    INVALID_SPEC = 4  # a spec or sweep file has errors
    CLUSTER_UNREACHABLE = 5  # no kubeconfig, unknown context, API server down
    CLUSTER_NOT_READY = 6  # JobSet or Kueue not installed, or a JobSet CRD older than the fields used
    FORBIDDEN = 7  # RBAC: not allowed to list/create/delete JobSets (or credentials expired)
    REJECTED = 8  # the API server or a webhook rejected a manifest (dry-run=server shows it first)
    NOT_ADMITTED = 9  # Kueue will never admit a point as configured (no such queue, request above quota)
    INTERNAL = 70  # a bug in distillctl: rerun with DISTILLCTL_DEBUG=1 and report the traceback
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM (a CI job's timeout, `kill`): ended as Ctrl-C ends a command


# `regress` reports an infrastructure failure (a point failed or never ran) with the usage-error code, as CI
# systems treat 2 as "not a test failure".
INFRA_FAILURE = ExitCode.USAGE

DESCRIPTIONS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the work ran and failed (regress: a metric regressed)",
    ExitCode.USAGE: "usage error: bad option or missing file (regress: infrastructure failure)",
    ExitCode.TIMEOUT: "timed out",
    ExitCode.INVALID_SPEC: "invalid spec or sweep file",
    ExitCode.CLUSTER_UNREACHABLE: "cluster unreachable (kubeconfig, context, API server)",
    ExitCode.CLUSTER_NOT_READY: "JobSet/Kueue missing or too old on the cluster; xpk not on PATH",
    ExitCode.FORBIDDEN: "forbidden by RBAC or credentials",
    ExitCode.REJECTED: "manifest rejected by the API server or a webhook",
    ExitCode.NOT_ADMITTED: "Kueue will not admit a point",
    ExitCode.INTERNAL: "internal error (a bug): rerun with DISTILLCTL_DEBUG=1",
    ExitCode.INTERRUPTED: "interrupted",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}


def epilog() -> str:
    """The exit-code table for `--help`."""
    return "Exit codes: " + "; ".join(f"{int(code)} {text}" for code, text in DESCRIPTIONS.items())
