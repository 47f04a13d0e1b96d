"""Every exit code the trainer returns, and the errors that carry them.

The JobSet restarts a pod on 42 and on 127–255 (signals), so a code that must not be retried (a bad spec, a
diverged loss, a bug) stays outside that set. Importing this module does not import JAX.
"""

from __future__ import annotations

from enum import IntEnum


class TrainerExit(IntEnum):
    OK = 0  # trained to the last step; final checkpoint and summary written
    USER_ERROR = 1  # invalid spec, missing teacher checkpoint, unreadable data: fix the input, never retry
    RETRYABLE = 42  # transient failure (I/O, device, coordinator): the JobSet restarts and the run resumes
    DIVERGED = 65  # the loss became NaN or infinite; the last good checkpoint is kept; retrying repeats it
    INTERNAL = 70  # a bug in the trainer (an unexpected exception): not retried; report the traceback
    PREEMPTED = 143  # SIGTERM: a checkpoint was saved; starting again on the same output resumes


DESCRIPTIONS: dict[TrainerExit, str] = {
    TrainerExit.OK: "done",
    TrainerExit.USER_ERROR: "invalid spec or user error (never worth a retry)",
    TrainerExit.RETRYABLE: "retryable failure (I/O, device, coordinator); rerun to resume",
    TrainerExit.DIVERGED: "the loss became NaN or infinite (diverged); not retried",
    TrainerExit.INTERNAL: "internal error (a bug); not retried",
    TrainerExit.PREEMPTED: "stopped by SIGTERM after saving a checkpoint; rerun to resume",
}


class TrainerError(Exception):
    """A failure that ends the run with `exit_code`; `message` says what happened, `hint` what to do."""

    exit_code: TrainerExit = TrainerExit.INTERNAL

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UserError(TrainerError):
    exit_code = TrainerExit.USER_ERROR


class RetryableError(TrainerError):
    exit_code = TrainerExit.RETRYABLE
