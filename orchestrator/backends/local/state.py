"""A sweep's supervisor folder, `<output_base>/.<sweep>.supervisor/`: what the local supervisor and the `sweep`
command tell each other, and what survives the supervisor.

- `lock`: held (`fcntl.flock`) by the sweep's one supervisor for its whole life.
- `orders/<submission>.json`: runs a `sweep` command hands over; the supervisor holding the lock takes them.
- `receipts/<submission>.json`: what became of each handed-over run (`created`, `restarted`, `exists`, `failed`).
- `failed/<run id>.json`: a run the supervisor failed itself (its folder cannot be written, so its claim cannot
  say so).
- `crashes/<pid>.json`: the error a supervisor died of, for the runs it left behind.
- `supervisor.json`: the running supervisor (pid, start time) and the parallelism it keeps.
- `supervisor.log`: the supervisors' output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

LOCK = "lock"
LOG = "supervisor.log"
SETTINGS = "supervisor.json"


def state_dir(output_base: str, sweep: str) -> Path:
    return Path(output_base) / f".{sweep}.supervisor"


def ensure(folder: Path) -> None:
    """Create the folder and its parts. Raises OSError when it cannot be written."""
    for part in ("orders", "receipts", "failed", "crashes"):
        (folder / part).mkdir(parents=True, exist_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader sees the whole file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- orders and receipts ---------------------------------------------------------------------------------------


def order_path(folder: Path, submission: str) -> Path:
    return folder / "orders" / f"{submission}.json"


def post_orders(folder: Path, submission: str, request: dict) -> None:
    write_json(order_path(folder, submission), request)


def take_orders(folder: Path) -> list[tuple[str, dict]]:
    """The orders waiting, oldest first, removed from the folder (only the lock holder calls this)."""
    taken = []
    found = []
    for path in (folder / "orders").glob("*.json"):
        with contextlib.suppress(OSError):  # gone meanwhile: its sender took it back
            if path.is_file():  # not a folder someone made there: it killed the supervisor (IsADirectoryError)
                found.append((path.stat().st_mtime, path.name, path))
    for _, _, path in sorted(found):
        request = read_json(path)
        with contextlib.suppress(OSError):
            path.unlink()
        if isinstance(request, dict):
            taken.append((path.stem, request))
    return taken


def write_receipt(folder: Path, submission: str, outcomes: dict[str, str]) -> None:
    write_json(folder / "receipts" / f"{submission}.json", outcomes)


def pop_receipt(folder: Path, submission: str) -> dict[str, str] | None:
    path = folder / "receipts" / f"{submission}.json"
    receipt = read_json(path)
    if receipt is not None:
        with contextlib.suppress(OSError):
            path.unlink()
    return receipt


# --- runs the supervisor failed --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Failure:
    """A run the supervisor failed itself; the token is the claim it held then (a later owner's claim wins)."""

    run_id: str
    token: str
    reason: str
    message: str
    exit_code: int = 1
    output_path: str = ""
    at: float = dataclasses.field(default_factory=time.time)


def record_failure(folder: Path, failure: Failure) -> None:
    write_json(folder / "failed" / f"{failure.run_id}.json", dataclasses.asdict(failure))


def read_failure(folder: Path, run_id: str) -> Failure | None:
    data = read_json(folder / "failed" / f"{run_id}.json")
    try:
        return Failure(**data) if isinstance(data, dict) else None
    except TypeError:
        return None


def failed_paths(folder: Path) -> frozenset[str]:
    """The output paths of the runs the supervisor failed (their dependents are blocked)."""
    records = (read_json(path) for path in (folder / "failed").glob("*.json"))
    return frozenset(r["output_path"] for r in records if isinstance(r, dict) and r.get("output_path"))


def clear_failure(folder: Path, run_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / "failed" / f"{run_id}.json").unlink()


# --- supervisors that crashed ----------------------------------------------------------------------------------


def record_crash(folder: Path, pid: int, start: float | None, error: str) -> None:
    write_json(folder / "crashes" / f"{pid}.json", {"pid": pid, "start": start, "error": error, "at": time.time()})


def crash_of(folder: Path, pid: int, start: float | None) -> str | None:
    """The error the supervisor `pid` (started at `start`) died of, if it recorded one."""
    data = read_json(folder / "crashes" / f"{pid}.json")
    if not isinstance(data, dict) or (start is not None and data.get("start") not in (None, start)):
        return None
    return str(data.get("error", "unknown error"))


# --- the running supervisor's settings ------------------------------------------------------------------------


def write_settings(folder: Path, pid: int, start: float | None, parallelism: int) -> None:
    write_json(folder / SETTINGS, {"pid": pid, "start": start, "parallelism": parallelism})


def read_settings(folder: Path) -> dict | None:
    """What the last supervisor wrote: `pid`, `start` and `parallelism` (it may be gone since)."""
    data = read_json(folder / SETTINGS)
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None
