"""Every exit code distillctl returns, in one place: the CLI, its help text, the README and the tests use it."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the work ran and failed: `regress` found a metric regression
    USAGE = 2  # bad command line or a file that does not exist; for `regress`: infrastructure failure
    TIMEOUT = 3  # waited longer than --timeout
    INVALID_SPEC = 4  # a spec or sweep file has errors
    INTERNAL = 70  # a bug in distillctl: rerun with DISTILLCTL_DEBUG=1 and report the traceback
    INTERRUPTED = 130  # Ctrl-C


# `regress` reports an infrastructure failure (a point failed or never ran) with the usage-error code, as CI
# systems treat 2 as "not a test failure".
INFRA_FAILURE = ExitCode.USAGE

DESCRIPTIONS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the work ran and failed (regress: a metric regressed)",
    ExitCode.USAGE: "usage error: bad option or missing file (regress: infrastructure failure)",
    ExitCode.TIMEOUT: "timed out",
    ExitCode.INVALID_SPEC: "invalid spec or sweep file",
    ExitCode.INTERNAL: "internal error (a bug): rerun with DISTILLCTL_DEBUG=1",
    ExitCode.INTERRUPTED: "interrupted",
}


def epilog() -> str:
    """The exit-code table for `--help`."""
    return "Exit codes: " + "; ".join(f"{int(code)} {text}" for code, text in DESCRIPTIONS.items())
