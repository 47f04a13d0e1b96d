"""Which exit code an exception ends the run with, and the reason `summary.json` records.

Only transient failures are retried (exit 42, the JobSet restarts the pod and the run resumes): I/O that may
succeed on a second try, a lost coordinator or peer, preemption. Failures that would repeat identically exit 1
(`USER_ERROR`): out of memory on the host or a device, XLA compile errors, shape errors, a data file its reader
cannot decode. Retrying those only spends `max_restarts`. Anything unrecognised is a bug (`INTERNAL`, 70, not
retried).

XLA runtime errors carry a status code in front of their message (`RESOURCE_EXHAUSTED: ...`); that code, plus a
few phrases XLA uses for memory and compilation, decides. Importing this module does not import JAX: JAX's error
types are recognised by name.
"""

from __future__ import annotations

import dataclasses
import errno
import re

from distillspec.contract import TrainerExit
from trainer.exit_codes import UNUSABLE_ERRNOS, TrainerError, os_errno

_XLA_ERRORS = ("JaxRuntimeError", "XlaRuntimeError")
_OOM = re.compile(
    r"RESOURCE_EXHAUSTED|out of memory|ran out of memory|attempting to allocate|error allocating device buffer|\bOOM\b",
    re.IGNORECASE,
)
_COMPILE = re.compile(r"compil|INVALID_ARGUMENT|UNIMPLEMENTED|FAILED_PRECONDITION|mosaic", re.IGNORECASE)
_TRANSIENT = re.compile(r"^(UNAVAILABLE|DEADLINE_EXCEEDED|ABORTED|CANCELLED)\b")
_COORDINATOR = re.compile(r"coordinat|heartbeat|barrier|distributed runtime|gloo|connection (reset|refused)", re.I)
_SHAPE = re.compile(
    r"shape|broadcast|dimension|rank|reshape|got incompatible|contracting", re.IGNORECASE
)  # jax's TypeError/ValueError wording for mismatched array shapes
_PERMANENT_OS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC, errno.EROFS}
# An OSError without an errno was raised by a library, not the OS; with these words it is pyarrow's (or a like
# reader's) verdict on bytes it cannot decode, "Couldn't deserialize thrift" for a damaged Parquet page: the file
# reads the same on every try. Other errno-less OSErrors stay retried (HTTP clients raise them for dropped links).
_DAMAGED_DATA = re.compile(r"deserializ|magic bytes|corrupt", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Failure:
    """How a run ends after an exception: `code` (the exit code), `reason` (a short category for summary.json:
    out_of_memory, compile_error, shape_error, transient_io, transient_device, coordinator, user_error, internal;
    for a TrainerError the lower-cased name of its exit code), and `message` (one line for the reporter and the JobSet's failure message)."""

    code: TrainerExit
    reason: str
    message: str


def classify(e: BaseException) -> Failure:
    """The exit code, reason and message for exception `e` (see the module docstring)."""
    first = _first_line(e)
    name = type(e).__name__
    if isinstance(e, TrainerError):
        hint = f" (hint: {e.hint})" if e.hint else ""
        return Failure(e.exit_code, e.reason or TrainerExit(e.exit_code).name.lower(), e.message + hint)
    if isinstance(e, MemoryError):
        return Failure(
            TrainerExit.USER_ERROR,
            "out_of_memory",
            f"out of host memory ({name}: {first}); retrying would fail again (hint: {OOM_HINT})",
        )
    if name in _XLA_ERRORS:
        return _classify_xla(str(e), first)
    if isinstance(e, (ConnectionError, TimeoutError)):
        return Failure(TrainerExit.RETRYABLE, "transient_io", f"{name}: {first}")
    if isinstance(e, OSError):
        if e.errno in _PERMANENT_OS:
            return Failure(TrainerExit.USER_ERROR, "user_error", f"{name}: {first} (retrying would fail again)")
        if e.errno is None and _DAMAGED_DATA.search(str(e)):
            return Failure(
                TrainerExit.USER_ERROR, "user_error", f"{name}: {first} (a damaged file; retrying would fail again)"
            )
        return Failure(TrainerExit.RETRYABLE, "transient_io", f"{name}: {first}")
    if os_errno(e) in UNUSABLE_ERRNOS:  # a storage library's error naming the OS's refusal (a full disk)
        return Failure(
            TrainerExit.USER_ERROR,
            "user_error",
            f"{name}: {first} (the storage refuses the write; retrying would fail again)",
        )
    if isinstance(e, ValueError) and _COORDINATOR.search(str(e)):  # a collective whose peer went (JAX's ValueError)
        return Failure(TrainerExit.RETRYABLE, "coordinator", f"{name}: {first}")
    if isinstance(e, (TypeError, ValueError)) and _SHAPE.search(first):
        return Failure(
            TrainerExit.USER_ERROR,
            "shape_error",
            f"shape error ({name}: {first}); check the models' shapes in the spec against the checkpoint and data",
        )
    return Failure(
        TrainerExit.INTERNAL,
        "internal",
        f"internal error: {name}: {first} (a bug; rerun with DISTILLCTL_DEBUG=1 for the traceback)",
    )


# What the message alone cannot tell apart: a batch too wide, a sequence too long (attention grows with its square),
# too little sharding, or remat turned off; `distillctl plan` says which term is large for the spec.
OOM_HINT = (
    "`distillctl plan` on a sweep of this spec estimates each term per chip; lower batch.per_device_batch_size or "
    "batch.max_target_length "
    "(attention grows with its square), shard more with mesh.fsdp, or set remat: full where a model turns it off"
)


def _classify_xla(text: str, first: str) -> Failure:
    status = text.lstrip()
    if _OOM.search(text):
        return Failure(
            TrainerExit.USER_ERROR,
            "out_of_memory",
            f"out of device memory: {first} (hint: {OOM_HINT})",
        )
    if _TRANSIENT.match(status):
        return Failure(TrainerExit.RETRYABLE, "transient_device", first)
    if _COORDINATOR.search(text):
        return Failure(TrainerExit.RETRYABLE, "coordinator", first)
    if _COMPILE.search(text):
        return Failure(TrainerExit.USER_ERROR, "compile_error", f"XLA could not compile or run the step: {first}")
    return Failure(
        TrainerExit.INTERNAL,
        "internal",
        f"XLA runtime error: {first} (not retried; rerun with DISTILLCTL_DEBUG=1 for the traceback)",
    )


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:500] if lines else type(e).__name__
