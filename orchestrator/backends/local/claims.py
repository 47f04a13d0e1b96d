"""Claim files: how local runs are owned, observed and stopped without a state store.

Each local run keeps `local-run.json` beside its outputs (`<output_base>/<run id>/`). The file is created
exclusively (O_EXCL), so two supervisors can never both own a run, and it is replaced atomically as the run moves
from `queued` to `running` to `exited`. A claim whose owner is gone (the supervisor died, the machine rebooted) is
stale and may be taken over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Literal

CLAIM_FILE = "local-run.json"
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


def write_claim(output_path: str, claim: Claim) -> None:
    """Replace the claim atomically (a reader sees the old or the new file, never half of one)."""
    path = claim_path(output_path)
    tmp = path.with_name(f".{CLAIM_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(claim.to_json()))
    os.replace(tmp, path)


def try_claim(output_path: str, run_id: str, sweep: str) -> Claim | None:
    """Own the run, or None when a live owner already has it. A stale claim is taken over."""
    path = claim_path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        claim = Claim(run_id, sweep, secrets.token_hex(8), os.getpid(), process_start_time(os.getpid()))
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            existing = read_claim(output_path)
            if existing is not None and not is_stale(existing):
                return None
            _retire(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(claim.to_json(), f)
        return claim
    return None


def _retire(path: Path) -> None:
    """Move a stale claim aside; whoever wins the O_EXCL create afterwards owns the run."""
    try:
        os.replace(path, path.with_name(f".{CLAIM_FILE}.stale.{secrets.token_hex(4)}"))
    except FileNotFoundError:
        pass


def release(output_path: str, token: str | None = None) -> None:
    """Remove the claim (only if it is still `token`'s, when given)."""
    path = claim_path(output_path)
    if token is not None:
        current = read_claim(output_path)
        if current is None or current.token != token:
            return
    try:
        path.unlink()
    except FileNotFoundError:
        pass


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


def is_stale(claim: Claim) -> bool:
    """Nobody is looking after this claim any more."""
    if claim.state == "exited":
        return False  # a finished run's record, not a live claim; retries replace it explicitly
    if claim.state == "running":
        return not alive(claim.pid, claim.pid_start)
    return not alive(claim.supervisor_pid, claim.supervisor_start)
