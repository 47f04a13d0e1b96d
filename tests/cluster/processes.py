"""Starting, watching and stopping the control plane's processes.

Every component runs in its own process group (session), with its output in a
log file. A JSON state file records each process's pid and kernel start time,
so that `python -m tests.cluster down` (and the next test session) can stop
what a crashed session left behind, without ever signalling a process that
merely reused a recorded pid.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .paths import SESSIONS_DIR

LOG_TAIL_LINES = 40


class ComponentError(RuntimeError):
    """A component failed to start, or died: names it and shows its log tail."""

    def __init__(self, component: str, problem: str, log: Path | None = None) -> None:
        self.component = component
        self.log = log
        tail = log_tail(log) if log else ""
        msg = f"control plane component {component!r} {problem}"
        if log:
            msg += f"\n--- last lines of {log} ---\n{tail}"
        super().__init__(msg)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(data.splitlines()[-lines:])


def proc_start_time(pid: int) -> int | None:
    """The kernel start time (clock ticks since boot) of `pid`, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces; it is wrapped in parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # zombie: exited, not yet reaped
        return None
    return int(fields[19])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    start_time: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if self.proc is None:
            raise ComponentError(self.name, "was never started")
        code = self.proc.poll()
        if code is not None:
            raise ComponentError(self.name, f"exited with status {code}", self.log)


@dataclass
class Supervisor:
    """Owns the processes of one control plane and its state file."""

    state_file: Path
    log_dir: Path
    die_with_parent: bool = True
    info: dict = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Component:
        """Start a component; `env` is its whole environment (default: ours)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        comp = Component(name, [str(a) for a in argv], log)
        full_env = dict(os.environ) if env is None else dict(env)
        with open(log, "ab") as out:
            out.write(f"+ {' '.join(comp.argv)}\n".encode())
            out.flush()
            try:
                comp.proc = subprocess.Popen(
                    comp.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if self.die_with_parent else None,
                )
            except OSError as e:
                raise ComponentError(name, f"could not be executed: {e}", log) from e
        comp.start_time = proc_start_time(comp.proc.pid)
        self.components[name] = comp
        self.save()
        return comp

    def check(self, names: list[str] | None = None) -> None:
        for name, comp in self.components.items():
            if names is None or name in names:
                comp.check()

    def save(self) -> None:
        state = dict(self.info)
        state["owner_pid"] = os.getpid()
        state["owner_start_time"] = proc_start_time(os.getpid())
        state["die_with_parent"] = self.die_with_parent
        state["components"] = [
            {"name": c.name, "pid": c.pid, "start_time": c.start_time, "log": str(c.log)}
            for c in self.components.values()
            if c.proc is not None
        ]
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop components in reverse start order (clients before the apiserver,
        the apiserver before etcd): SIGTERM to the process group, then SIGKILL
        after `timeout` seconds."""
        for c in reversed(list(self.components.values())):
            if c.proc is None:
                continue
            if c.proc.returncode is None:
                _signal_group(c.pid, c.start_time, signal.SIGTERM, group_only=True)
                deadline = time.monotonic() + timeout
                while not _exited_unreaped(c.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                # The leader is not reaped yet, so its pid (the group id) cannot have
                # been reused: SIGKILL whatever is left of the group, then reap.
                _signal_group(c.pid, c.start_time, signal.SIGKILL, group_only=True)
            c.proc.wait()
        self.components.clear()
        try:
            self.state_file.unlink()
        except FileNotFoundError:
            pass


def _exited_unreaped(pid: int) -> bool:
    """Whether our child `pid` has exited, without reaping it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _signal_group(pid: int | None, start_time: int | None, sig: int, group_only: bool = False) -> None:
    """Signal the process group led by `pid` while `pid` is still the recorded process.

    `group_only`: `pid` is our own child, not yet reaped (its pid cannot have
    been reused), so its group may be signalled even after it exited.
    """
    if pid is None:
        return
    if not group_only:
        current = proc_start_time(pid)
        if current is None or (start_time is not None and current != start_time):
            return  # gone, or the pid now belongs to an unrelated process
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_recorded(state_file: Path, timeout: float = 5.0) -> list[str]:
    """Stop the processes recorded in a state file (from this or a dead session).

    Components are stopped in reverse start order; returns the names of those
    that were still running. Only processes whose pid *and* kernel start time
    match the record are signalled.
    """
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return []
    running = []
    for c in reversed(state.get("components", [])):
        pid, st = c.get("pid"), c.get("start_time")
        if not pid or st is None or proc_start_time(pid) != st:
            continue
        running.append(c["name"])
        _signal_group(pid, st, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc_start_time(pid) == st:
            time.sleep(0.05)
        _signal_group(pid, st, signal.SIGKILL)  # no-op unless it is still the same process
    try:
        state_file.unlink()
    except FileNotFoundError:
        pass
    return running


def owner_alive(state_file: Path) -> bool:
    """Whether the process that wrote a state file is still running."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return False
    pid, st = state.get("owner_pid"), state.get("owner_start_time")
    return bool(pid) and proc_start_time(pid) is not None and proc_start_time(pid) == st


def reap_stale_sessions(sessions_dir: Path = SESSIONS_DIR) -> list[str]:
    """Stop control planes left running by test sessions that died without cleaning up.

    Each test cluster links its state file into `sessions_dir`; a link whose
    owner process is gone marks a leftover. Returns the components stopped.
    """
    reaped: list[str] = []
    if not sessions_dir.is_dir():
        return reaped
    for link in sessions_dir.glob("*.json"):
        target = link.resolve() if link.is_symlink() else link
        if target.exists() and owner_alive(target):
            continue
        if target.exists():
            try:
                state = json.loads(target.read_text())
            except ValueError:
                state = {}
            reaped += stop_recorded(target)
            workdir = state.get("workdir")
            if workdir and Path(workdir).name.startswith("distillctl-cluster-"):
                shutil.rmtree(workdir, ignore_errors=True)
        try:
            link.unlink()
        except FileNotFoundError:
            pass
    return reaped
