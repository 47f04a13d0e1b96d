"""The local backend's supervisor: runs a sweep's points as trainer processes on this machine, in the background.

One supervisor per sweep at a time: it holds an exclusive lock on the sweep's supervisor folder
(`backends.local.state`) for its whole life. `distillctl sweep` posts its runs there as orders and starts a
supervisor; if one already holds the lock, that one takes the orders and the new one exits. The supervisor claims
each run (see `backends.local.claims`), answers the order with a receipt (created, restarted, exists, failed),
starts `python -m trainer` for a run once its prerequisites have succeeded, at most `parallelism` at a time,
restarts a run that exits with a retryable code (the contract's, and the target's extras) up to `max_restarts`
times, records each exit in the run's claim, and exits when nothing is left. Cancelling a run removes its claim;
the supervisor then drops it.

A run whose folder cannot be written fails alone (`OutputNotWritable`, recorded in the supervisor folder since its
claim cannot say so); anything else the supervisor dies of is recorded there too, for `status` to show.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from distillspec.contract import ENV_RUN_ID, ENV_SPEC, FailedReason, TrainerExit, is_retryable, trainer_process_env
from orchestrator.backends.local import claims as local_claims
from orchestrator.backends.local import state
from orchestrator.backends.local.claims import Claim
from orchestrator.outputs import read_summary

POLL_SECONDS = 0.3
STOP_GRACE_SECONDS = 60.0  # as `cancel` gives a trainer to save its checkpoint
OUTPUT_NOT_WRITABLE = FailedReason.OUTPUT_NOT_WRITABLE


@dataclasses.dataclass(frozen=True)
class Order:
    run_id: str
    sweep: str
    output_path: str
    spec_json: str
    depends_on: tuple[str, ...] = ()  # output paths of prerequisite runs
    env: tuple[tuple[str, str], ...] = ()
    max_restarts: int = 0
    retryable: tuple[int, ...] = ()

    @classmethod
    def from_json(cls, data: dict) -> Order:
        return cls(
            **{
                **data,
                "depends_on": tuple(data.get("depends_on", ())),
                "env": tuple(tuple(kv) for kv in data.get("env", ())),
                "retryable": tuple(data.get("retryable", ())),
            }
        )


@dataclasses.dataclass
class _Running:
    order: Order
    claim: Claim
    process: subprocess.Popen


@dataclasses.dataclass(frozen=True)
class _Orphan:
    """A trainer a dead supervisor left running (its claim still live): it holds a slot until it exits, and then
    its run is taken over (resumed from its checkpoint) unless it finished."""

    order: Order
    pid: int
    pid_start: float | None


# --- scheduling (pure) -----------------------------------------------------------------------------------------

Step = Literal["start", "WaitingForPrerequisite", "WaitingForSlot", "blocked"]


def schedule(prerequisites: Sequence[Sequence[str]], running: int, parallelism: int) -> list[Step]:
    """What to do now with each pending run, in the order given (the sweep's: prerequisites first), from the states
    of its prerequisites (`succeeded`, `failed`, `waiting`): block it when one failed, keep it waiting while one is
    on its way, else start it while fewer than `parallelism` (at least 1) runs are running."""
    free = max(1, parallelism) - running
    steps: list[Step] = []
    for states in prerequisites:
        if "failed" in states:
            steps.append("blocked")
        elif "waiting" in states:
            steps.append("WaitingForPrerequisite")
        elif free > 0:
            steps.append("start")
            free -= 1
        else:
            steps.append("WaitingForSlot")
    return steps


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it: killed by signal n is 128 + n."""
    return 128 - returncode if returncode < 0 else returncode


def after_exit(
    code: int, restarts: int, max_restarts: int, retryable: Sequence[int] = ()
) -> Literal["restart", "exit"]:
    """Restart a run that exited with a retryable code while it has restarts left; otherwise its exit is final."""
    if code != 0 and is_retryable(code, tuple(retryable)) and restarts < max_restarts:
        return "restart"
    return "exit"


def trainer_env(order: Order, inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment a run's trainer starts with: the supervisor's own, the target's `env`, the contract's two
    variables, and glibc's huge pages for XLA's per-step temporaries (`trainer_process_env`)."""
    return trainer_process_env({**inherited, **dict(order.env), ENV_SPEC: order.spec_json, ENV_RUN_ID: order.run_id})


def has_checkpoint(output_path: str) -> bool:
    """Whether the run has a finished checkpoint to resume from (orbax names them by step)."""
    try:
        return any(p.name.isdigit() for p in (Path(output_path) / "checkpoints").iterdir())
    except OSError:
        return False


def dependency_state(output_path: str, failed: frozenset[str] = frozenset()) -> str:
    """`succeeded`, `failed` or `waiting` for a prerequisite run's output path. The supervisor's own verdict
    (`failed`: output paths of runs it failed, whose claims could not record it) speaks first, then the claim: a
    queued or running claim means it is being (re)run, whatever an earlier attempt's summary says."""
    if output_path in failed:
        return "failed"
    claim = local_claims.read_claim(output_path)
    if claim is not None and not local_claims.is_stale(claim):
        if claim.state != "exited":
            return "waiting"
        return "succeeded" if claim.exit_code == 0 else "failed"
    status = (read_summary(output_path) or {}).get("status")
    if status == "succeeded":
        return "succeeded"
    return "failed" if status in ("failed", "diverged") else "waiting"


def not_writable(path: str, error: OSError) -> str:
    """`<path>: <error>` for a run's storage fault; a file where a folder goes said as such (mkdir's "File exists"
    named no cause)."""
    where = error.filename or path
    if isinstance(error, (FileExistsError, NotADirectoryError)) and os.path.exists(where) and not os.path.isdir(where):
        return f"{where}: a file is where the run's folder goes (move or delete it, then `distillctl sweep --retry-failed`)"
    return f"{where}: {error.strerror or error}"


# --- the supervisor --------------------------------------------------------------------------------------------


class Supervisor:
    def __init__(self, folder: Path, python: str = sys.executable):
        self.folder = folder
        self.python = python
        self.parallelism = os.cpu_count() or 1  # until the first orders say the target's
        self.ordered = False
        self.pending: list[tuple[Order, Claim]] = []
        self.running: list[_Running] = []
        self.orphans: list[_Orphan] = []
        self.stopping = ""  # the signal that asked this supervisor to stop

    def _publish(self) -> None:
        """Say who supervises the sweep and at what parallelism (`sweep` passes a changed one on)."""
        pid = os.getpid()
        with contextlib.suppress(OSError):
            state.write_settings(self.folder, pid, local_claims.process_start_time(pid), self.parallelism)

    def run(self) -> None:
        self._publish()
        while True:
            if self.stopping:
                self._stop()
                return
            self.take_orders()  # last thing before exiting too: orders posted later find the lock free
            if not self.pending and not self.running and not self.orphans:
                return
            self._reap()
            self._adopt()
            self._start_ready()
            time.sleep(POLL_SECONDS)

    def _stop(self) -> None:
        """SIGTERM or SIGINT: stop the trainers as `cancel` does (each saves a checkpoint and exits 143) and give
        their runs back (their outputs say preempted: `sweep` resumes them); queued runs wait for the next `sweep`
        (Pending, SupervisorGone)."""
        count = len(self.running) + len(self.orphans)
        _log(f"stopped by {self.stopping}: stopping {count} trainer(s); `distillctl sweep` resumes them")
        # The trainers a dead supervisor left are stopped too: they ran on with nobody to resume them when they died.
        orphans = [o for o in self.orphans if local_claims.alive(o.pid, o.pid_start)]
        for pid in [item.process.pid for item in self.running] + [o.pid for o in orphans]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)

        def left() -> bool:
            return any(item.process.poll() is None for item in self.running) or any(
                local_claims.alive(o.pid, o.pid_start) for o in orphans
            )

        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and left():
            time.sleep(POLL_SECONDS)
        for item in self.running:
            if item.process.poll() is None:
                _kill(item.process)
            with contextlib.suppress(OSError):
                local_claims.release(item.order.output_path, item.claim.token)
        for orphan in orphans:
            if local_claims.alive(orphan.pid, orphan.pid_start):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(orphan.pid, signal.SIGKILL)
            held = local_claims.read_claim(orphan.order.output_path)
            if held is not None and held.pid == orphan.pid:
                with contextlib.suppress(OSError):
                    local_claims.release(orphan.order.output_path, held.token)
        self.running, self.orphans = [], []

    def _adopt(self) -> None:
        """Orphans that have exited: their runs are taken over, unless they finished."""
        still = []
        for orphan in self.orphans:
            if local_claims.alive(orphan.pid, orphan.pid_start):
                still.append(orphan)
                continue
            held = local_claims.read_claim(orphan.order.output_path)
            if held is None or held.pid != orphan.pid:
                continue  # cancelled (its claim removed), or someone else's now
            summary = read_summary(orphan.order.output_path) or {}
            try:
                claim = local_claims.try_claim(
                    orphan.order.output_path, orphan.order.run_id, orphan.order.sweep, "adopted"
                )
                if claim is None:
                    continue
                # The run keeps its history: its age, and the trainer's death counted as a restart (it read
                # `restarts 0` with a fresh age after the resume).
                kept = dataclasses.replace(claim, created_at=held.created_at, restarts=held.restarts)
                if summary.get("status") in ("succeeded", "failed", "diverged"):  # it ended on its own
                    code = summary.get("exit_code")
                    ended = dataclasses.replace(
                        kept,
                        state="exited",
                        exit_code=code if isinstance(code, int) else None,
                        started_at=held.started_at,
                    )
                    local_claims.write_claim(orphan.order.output_path, ended)  # it stayed "running" for ever
                    _log(
                        f"{orphan.order.run_id}: its trainer (pid {orphan.pid}, left by a dead supervisor) ended: {summary['status']}"
                    )
                    continue
                resumed = dataclasses.replace(kept, restarts=held.restarts + 1)
                local_claims.write_claim(orphan.order.output_path, resumed)
            except OSError as e:
                self._fail(orphan.order, "", e)
                continue
            _log(f"{orphan.order.run_id}: its trainer (pid {orphan.pid}, left by a dead supervisor) exited; resuming")
            self.pending.append((orphan.order, resumed))
        self.orphans = still

    def take_orders(self) -> None:
        for submission, request in state.take_orders(self.folder):
            parallelism = max(1, int(request.get("parallelism") or os.cpu_count() or 1))
            if parallelism != self.parallelism or not self.ordered:
                # a change is said as one; the first orders set it (it read "parallelism 2 → 1" for a file's 1)
                _log(
                    f"parallelism {self.parallelism} → {parallelism}" if self.ordered else f"parallelism {parallelism}"
                )
                self.parallelism, self.ordered = parallelism, True
                self._publish()
            outcomes = {}
            for data in request.get("orders", []):
                order = Order.from_json(data)
                outcomes[order.run_id] = self._claim(order, submission)
            _log(f"took {len(outcomes)} run(s): {outcomes}")
            state.write_receipt(self.folder, submission, outcomes)

    def _claim(self, order: Order, submission: str) -> str:
        # Ours while its claim is: one `cancel` removed (a trainer still saving its checkpoint, a queued run not yet
        # dropped) is claimed again, else the run stayed stopped though `sweep` said it "exists".
        mine = [(o, c) for o, c in self.pending] + [(r.order, r.claim) for r in self.running]
        if any(o.run_id == order.run_id and self._still_ours(o, c) for o, c in mine):
            return "exists"
        self.pending = [(o, c) for o, c in self.pending if o.run_id != order.run_id]
        try:
            claim = local_claims.try_claim(order.output_path, order.run_id, order.sweep, submission)
        except OSError as e:
            self._fail(order, "", e)
            return "failed"
        if claim is None:
            held = local_claims.read_claim(order.output_path)
            if local_claims.orphaned(held):  # a trainer its supervisor left: it counts against parallelism
                self.orphans.append(_Orphan(order, held.pid, held.pid_start))
            return "exists"
        self.pending.append((order, claim))
        return "restarted" if has_checkpoint(order.output_path) else "created"

    def _fail(self, order: Order, token: str, error: OSError) -> None:
        """The run's folder cannot be written: fail this run alone (its claim cannot say so; the supervisor
        folder does)."""
        message = not_writable(order.output_path, error)
        _log(f"{order.run_id} failed: {OUTPUT_NOT_WRITABLE}: {message}")
        failure = state.Failure(
            order.run_id, token, OUTPUT_NOT_WRITABLE, message, int(TrainerExit.USER_ERROR), order.output_path
        )
        try:
            state.record_failure(self.folder, failure)
        except OSError as e:
            _log(f"cannot record the failure of {order.run_id} in {self.folder}: {e}")

    def _still_ours(self, order: Order, claim: Claim) -> bool:
        current = local_claims.read_claim(order.output_path)
        return current is not None and current.token == claim.token

    def _start_ready(self) -> None:
        live = [(order, claim) for order, claim in self.pending if self._still_ours(order, claim)]  # else cancelled
        # A run claimed again while its cancelled trainer still stops starts once that one has exited (two
        # trainers in one folder: the second refuses, and the run would fail)
        stopping = {item.order.run_id for item in self.running}
        held = [(order, claim) for order, claim in live if order.run_id in stopping]
        live = [(order, claim) for order, claim in live if order.run_id not in stopping]
        failed = state.failed_paths(self.folder)
        steps = schedule(
            [[dependency_state(path, failed) for path in order.depends_on] for order, _ in live],
            len(self.running) + len(self.orphans),
            self.parallelism,
        )
        keep = []
        for (order, claim), step in zip(live, steps):
            try:
                if step == "blocked":
                    local_claims.release(order.output_path, claim.token)  # leave it Pending
                elif step == "start":
                    self._start(order, claim)
                elif noted := self._note(order, claim, step):
                    keep.append((order, noted))
            except OSError as e:
                self._fail(order, claim.token, e)
        self.pending = held + keep

    def _note(self, order: Order, claim: Claim, reason: str) -> Claim | None:
        """The claim with its queue reason, or None when the run is no longer ours."""
        if claim.reason == reason:
            return claim
        claim = dataclasses.replace(claim, reason=reason)
        return claim if local_claims.write_claim(order.output_path, claim) else None

    def _start(self, order: Order, claim: Claim) -> None:
        Path(order.output_path).mkdir(parents=True, exist_ok=True)
        env = trainer_env(order, os.environ)
        with open(Path(order.output_path) / local_claims.LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [self.python, "-m", "trainer"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        claim = dataclasses.replace(
            claim,
            state="running",
            reason="",
            pid=process.pid,
            pid_start=local_claims.process_start_time(process.pid),
            started_at=time.time(),
            exit_code=None,
        )
        try:
            ours = local_claims.write_claim(order.output_path, claim)
        except OSError:
            _kill(process)  # nobody could see or stop it
            raise
        if not ours:
            _kill(process)  # cancelled while it started
            return
        self.running.append(_Running(order, claim, process))

    def _reap(self) -> None:
        still, restarts = [], []
        for item in self.running:
            returncode = item.process.poll()
            if returncode is None:
                still.append(item)
                continue
            code = exit_status(returncode)
            order, claim = item.order, item.claim
            try:
                if not self._still_ours(order, claim):
                    continue  # cancelled: the canceller removed the claim
                if after_exit(code, claim.restarts, order.max_restarts, order.retryable) == "restart":
                    restarts.append((order, dataclasses.replace(claim, restarts=claim.restarts + 1)))
                    _tell(
                        order,
                        f"the trainer exited with {_code(code)}: restart {claim.restarts + 1} of {order.max_restarts}",
                    )
                else:
                    if code != 0 and is_retryable(code, tuple(order.retryable)):
                        _tell(
                            order,
                            f"the trainer exited with {_code(code)}: its {order.max_restarts} restart(s) are used up",
                        )
                    local_claims.write_claim(
                        order.output_path, dataclasses.replace(claim, state="exited", exit_code=code)
                    )
            except OSError as e:
                self._fail(order, claim.token, e)
        self.running = still
        for order, claim in restarts:
            try:
                self._start(order, claim)  # resumes from the run's latest checkpoint
            except OSError as e:
                self._fail(order, claim.token, e)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}", flush=True)


def _code(code: int) -> str:
    """An exit code as people read it: 137 (SIGKILL)."""
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"{code} ({signal.Signals(code - 128).name})"
    return str(code)


def _tell(order: Order, message: str) -> None:
    """Say what the supervisor did with a run in its log and in the run's own log (`distillctl logs`): a restart
    showed only as the log starting over."""
    _log(f"run {order.run_id}: {message}")
    with contextlib.suppress(OSError), open(Path(order.output_path) / local_claims.LOG_FILE, "a") as log:
        log.write(f"distillctl local supervisor: {message}\n")


def acquire(folder: Path, submission: str) -> int | None:
    """Become the sweep's supervisor: the lock's descriptor (held until this process exits), or None once
    another supervisor has taken this submission's orders."""
    fd = os.open(folder / state.LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not state.order_path(folder, submission).exists():
                os.close(fd)
                return None
            time.sleep(0.1)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for people: who holds it
        return fd


def main(argv: Sequence[str] | None = None) -> int:
    folder, submission = (sys.argv[1:] if argv is None else argv)[:2]
    folder = Path(folder)
    if acquire(folder, submission) is None:
        _log(f"another supervisor took submission {submission}")
        return 0
    _log(f"supervising sweep folder {folder}")
    supervisor = Supervisor(folder)

    def stop(number: int, _frame) -> None:
        supervisor.stopping = signal.Signals(number).name

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        supervisor.run()
    except Exception as e:
        traceback.print_exc()
        pid = os.getpid()
        try:
            state.record_crash(folder, pid, local_claims.process_start_time(pid), f"{type(e).__name__}: {e}")
        except OSError as e2:
            _log(f"cannot record the crash in {folder}: {e2}")
        return int(TrainerExit.INTERNAL)
    _log(f"stopped by {supervisor.stopping}; exiting" if supervisor.stopping else "nothing left to run; exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
