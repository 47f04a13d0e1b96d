"""Errors that end a command: each carries its exit code; the CLI maps them to a message in one place."""

from __future__ import annotations

from pathlib import Path

from orchestrator.exit_codes import ExitCode


class DistillctlError(Exception):
    """A failure the user can act on: `message` says what happened, `hint` what to change."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str = "", *, exit_code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class CannotRunError(DistillctlError):
    """The cluster cannot run the sweep as configured (found before anything is created); `reason` names why in
    one CamelCase word, as the sweep service's `Accepted=False` condition shows it."""

    def __init__(self, message: str, hint: str, *, reason: str, exit_code: ExitCode):
        super().__init__(message, hint, exit_code=exit_code)
        self.reason = reason


class UsageError(DistillctlError):
    exit_code = ExitCode.USAGE


class InvalidSpecError(DistillctlError):
    """A spec or sweep has errors; `problems` holds them, already located."""

    exit_code = ExitCode.INVALID_SPEC

    def __init__(self, message: str, problems=(), hint: str = ""):
        super().__init__(message, hint)
        self.problems = tuple(problems)


# Problem codes that mean "the file could not be read" rather than "the file is wrong": a usage error (exit 2).
USAGE_CODES = frozenset({"file_not_found", "not_a_file", "unreadable"})


def cannot_write(path: Path, error: OSError, *, folder: bool = False) -> UsageError:
    """The error for a path that could not be written (`folder`: a folder to create), naming the file that stands
    where a folder is needed: the OS only says "Not a directory" or "File exists"."""
    for existing in ([path] if folder else []) + list(path.parents):
        if existing.exists():
            if not existing.is_dir():
                return UsageError(
                    f"cannot write {path}: {existing} is a file, not a folder", "choose another path, or move that file"
                )
            break
    return UsageError(f"cannot write {path}: {error.strerror or error}", "check the folder and its permissions")
