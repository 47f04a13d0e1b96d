"""The errors that carry the trainer's exit codes (the codes themselves are part of `distillspec.contract`).

The JobSet restarts a pod on 42 and on 127–255 (signals), so a code that must not be retried (a bad spec, a
diverged loss, a bug) stays outside that set. Importing this module does not import JAX.
"""

from __future__ import annotations

import errno
import re

from distillspec.contract import DESCRIPTIONS, TrainerExit

__all__ = [
    "DESCRIPTIONS",
    "OutputNotWritable",
    "RetryableError",
    "RunRefused",
    "TrainerError",
    "TrainerExit",
    "UserError",
    "storage_failure",
]


class TrainerError(Exception):
    """A failure that ends the run with `exit_code`; `message` says what happened, `hint` what to do."""

    exit_code: TrainerExit = TrainerExit.INTERNAL

    def __init__(self, message: str, hint: str = "", *, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.reason = reason  # summary.json's failure_reason when not the exit code's name (`peer_failed`)


class UserError(TrainerError):
    exit_code = TrainerExit.USER_ERROR


class RunRefused(UserError):
    """This spec cannot go on from its run directory's checkpoints (another model, other data, a run that trained
    further): the run's files are left as the run that wrote them left them."""


class RetryableError(TrainerError):
    exit_code = TrainerExit.RETRYABLE


# An OSError with one of these says the storage itself refuses the write (a file where a directory belongs, no
# permission, a read-only or full file system, over quota): a person must change something, so a retry repeats it.
UNUSABLE_ERRNOS: frozenset[int] = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.EISDIR,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENAMETOOLONG,
    }
)


class OutputNotWritable(UserError):
    """The run's output or checkpoint storage cannot be written: `OutputNotWritable: <path>: <error>`, exit 1."""

    def __init__(self, path: str, error: BaseException | str, setting: str = "output_dir", hint: str | None = None):
        """`setting`: the spec field that names the path (the hint's other choice)."""
        full = not isinstance(error, str) and os_errno(error) in (errno.ENOSPC, errno.EDQUOT)
        super().__init__(
            f"OutputNotWritable: {path}: {error}",
            # A full disk or quota is writable, so the permissions hint sent people looking at the wrong thing.
            hint
            or (
                "free space there (old runs, old checkpoints: checkpoint.keep) or raise the quota, then run again: "
                "it resumes from the last checkpoint"
                if full
                else f"make the path a writable directory (or choose another {setting}), then run again"
            ),
            reason="output_not_writable",  # status: Failed (OutputNotWritable), as the local supervisor's own
        )
        self.path = path


# TensorStore (Orbax's writer) raises ValueError, its OS error in the text: `... No space left on device
# [os_error_code='28']`.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def os_errno(error: BaseException) -> int | None:
    """The OS error number behind `error`: an OSError's, or the one a TensorStore error names in its text."""
    if isinstance(error, OSError):
        return error.errno
    found = _OS_ERROR_CODE.search(str(error))
    return int(found.group(1)) if found else None


def storage_failure(path: str, error: BaseException, setting: str = "output_dir") -> TrainerError:
    """What a failed write under `path` means for the run: OutputNotWritable (exit 1) when the storage refuses it,
    RetryableError (exit 42) for transient I/O (EIO, a dropped connection, a timeout)."""
    from distillspec.checks import READ_SCHEMES  # the storage the trainer's image has; `validate` warns of others

    scheme = path.split("://", 1)[0] if "://" in path else "file"
    unusable = (
        isinstance(error, (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError, ImportError))
        or os_errno(error) in UNUSABLE_ERRNOS
        # a scheme the trainer's image has no filesystem for (hdfs:// failed loading libjvm): a retry fails alike
        or scheme not in READ_SCHEMES
    )
    if unusable:
        return OutputNotWritable(path, error, setting)
    return RetryableError(f"cannot write {path}: {type(error).__name__}: {error}")
