"""The errors that carry the trainer's exit codes (the codes themselves are part of `distillspec.contract`).

The JobSet restarts a pod on 42 and on 127–255 (signals), so a code that must not be retried (a bad spec, a
diverged loss, a bug) stays outside that set. Importing this module does not import JAX.
"""

from __future__ import annotations

from distillspec.contract import DESCRIPTIONS, TrainerExit

__all__ = ["DESCRIPTIONS", "RetryableError", "TrainerError", "TrainerExit", "UserError"]


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
