"""Claim files: how local runs are owned, observed and stopped without a state store.

Each local run keeps `local-run.json` beside its outputs (`<output_base>/<run id>/`). Every change to it is a
compare-and-swap: it happens under an exclusive lock on `.local-run.lock` in the same folder (`fcntl.flock`, held
only for the read-decide-replace), and the file is replaced atomically, so a reader without the lock sees the old
or the new claim, never half of one. Taking over a stale claim (its owner is gone: the supervisor died, the machine
rebooted) re-reads it under the lock, so of several supervisors that all saw it stale exactly one wins; an owner
updating its claim (queued, running, exited) checks under the lock that it is still the owner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from orchestrator.backends.local import state

CLAIM_FILE = "local-run.json"
# Left by `cancel` in a run it stopped (the claim goes: nothing restarts the run), so a later edit that gives the
# run's point a new id can say that the stopped run, and its checkpoint, are no longer the file's. Removed when the
# run is claimed again.
CANCELLED_FILE = "local-cancelled.json"
LOCK_FILE = ".local-run.lock"
LOG_FILE = "trainer.log"
State = Literal["queued", "running", "exited"]


@dataclasses.dataclass(frozen=True)
class Claim:
    run_id: str
    sweep: str
    token: str  # identifies the owner's claim: a replaced claim has another token
    supervisor_pid: int
    supervisor_start: float | None = None  # the supervisor's start time, to tell a reused pid apart
    state: State = "queued"
    reason: str = ""  # while queued: WaitingForPrerequisite, WaitingForSlot
    pid: int | None = None  # the trainer process (and its process group)
    pid_start: float | None = None  # the process's start time, to tell a reused pid apart
    created_at: float = dataclasses.field(default_factory=time.time)
    started_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0
    submission: str = ""  # the `sweep` command's hand-over this claim answers (see supervisor.Order)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def claim_path(output_path: str) -> Path:
    return Path(output_path) / CLAIM_FILE


def read_claim(output_path: str) -> Claim | None:
    try:
        data = json.loads(claim_path(output_path).read_text())
        return Claim(**data)
    except (OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def _locked(output_path: str) -> Iterator[None]:
    """Hold the run's claim lock. Raises OSError when the run's folder cannot be written."""
    fd = os.open(Path(output_path) / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _replace(output_path: str, claim: Claim) -> None:
    path = claim_path(output_path)
    tmp = path.with_name(f".{CLAIM_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        tmp.write_text(json.dumps(claim.to_json()))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # Name the claim file, not the temporary one beside it (a folder in its place, a read-only folder).
        raise type(e)(e.errno, e.strerror, str(path)) from None


def write_claim(output_path: str, claim: Claim) -> bool:
    """Replace the claim with `claim` if the file still holds the same owner's claim (same token); False when
    someone else owns the run now (it was cancelled, or taken over). Raises OSError when the folder cannot be
    written."""
    with _locked(output_path):
        current = read_claim(output_path)
        if current is None or current.token != claim.token:
            return False
        _replace(output_path, claim)
        return True


def try_claim(output_path: str, run_id: str, sweep: str, submission: str = "") -> Claim | None:
    """Own the run, or None when a live owner (or a finished run's record) already has it. A stale claim is taken
    over. Raises OSError when the run's folder cannot be created or written."""
    Path(output_path).mkdir(parents=True, exist_ok=True)
    with _locked(output_path):
        existing = read_claim(output_path)
        if existing is not None and not is_stale(existing):
            return None
        # Absent, stale, or unreadable (not a claim this code wrote): ours now. Re-read under the lock, so a
        # fresh claim another supervisor wrote after we first looked is seen here and not replaced.
        pid = os.getpid()
        claim = Claim(run_id, sweep, secrets.token_hex(8), pid, process_start_time(pid), submission=submission)
        if existing is not None and (existing.run_id, existing.sweep) == (run_id, sweep):
            # taken over from a dead supervisor: the run keeps its age and the restarts it used (they reset, and a
            # run that kept crashing got its max_restarts again with each supervisor)
            claim = dataclasses.replace(claim, created_at=existing.created_at, restarts=existing.restarts)
        _replace(output_path, claim)
        with contextlib.suppress(OSError):
            (Path(output_path) / CANCELLED_FILE).unlink()
        return claim


def mark_cancelled(output_path: str, claim: Claim) -> None:
    """Record that `cancel` stopped the run `claim` held (its sweep and id). Raises OSError."""
    record = {"run_id": claim.run_id, "sweep": claim.sweep, "at": time.time(), "said": False}
    state.write_json(Path(output_path) / CANCELLED_FILE, record)


def read_cancelled(output_path: str) -> dict[str, Any] | None:
    found = state.read_json(Path(output_path) / CANCELLED_FILE)
    return found if isinstance(found, dict) and isinstance(found.get("sweep"), str) else None


def note_said(output_path: str, record: dict[str, Any]) -> None:
    """Mark the cancelled record as said (the warning about it is given once). Raises OSError."""
    state.write_json(Path(output_path) / CANCELLED_FILE, {**record, "said": True})


def release(output_path: str, token: str | None = None) -> bool:
    """Remove the claim (only if it is still `token`'s, when given); whether one was removed. Raises OSError when
    the folder cannot be written."""
    if not claim_path(output_path).exists():
        return False
    with _locked(output_path):
        if token is not None:
            current = read_claim(output_path)
            if current is None or current.token != token:
                return False
        try:
            claim_path(output_path).unlink()
        except FileNotFoundError:
            return False
        return True


def process_start_time(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return float(fields[19])
    except (OSError, IndexError, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return -1.0
        return -1.0  # alive, start time unknown (not Linux)


def alive(pid: int | None, start: float | None = None) -> bool:
    if pid is None:
        return False
    now = process_start_time(pid)
    if now is None:
        return False
    if _zombie(pid):
        return False
    return start is None or now < 0 or start < 0 or now == start


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def orphaned(claim: Claim | None) -> bool:
    """Whether the claim's trainer runs on after the supervisor that started it died."""
    return (
        claim is not None
        and claim.state == "running"
        and alive(claim.pid, claim.pid_start)
        and not alive(claim.supervisor_pid, claim.supervisor_start)
    )


def is_stale(claim: Claim) -> bool:
    """Nobody is looking after this claim any more."""
    if claim.state == "exited":
        return False  # a finished run's record, not a live claim; retries replace it explicitly
    if claim.state == "running":
        return not alive(claim.pid, claim.pid_start)
    return not alive(claim.supervisor_pid, claim.supervisor_start)
