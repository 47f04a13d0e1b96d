"""The local backend: a sweep's points as trainer processes on this machine (CPU), same output layout as a cluster.

Submitting hands the runs to the sweep's detached supervisor (`orchestrator.backends.local.supervisor`; one per
sweep, by a lock), which keeps going after the command returns; observing reads each run's claim file and what the
supervisor recorded in its folder (`backends.local.state`: runs it failed, its own crash); deleting stops the run's
process group with SIGTERM (the trainer saves a checkpoint and exits 143) and removes its claim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from distillspec.contract import FailedReason, exit_reason
from distillspec.sweep import Target
from orchestrator.backends import DryRun, LogRequest, Orphan, Submitted
from orchestrator.backends.local import claims as local_claims
from orchestrator.backends.local import state
from orchestrator.backends.local import supervisor as supervisor_module
from orchestrator.core import identity
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.rendering import spec_json
from orchestrator.core.run_status import Condition, Observation
from orchestrator.errors import DistillctlError, UsageError
from orchestrator.exit_codes import ExitCode

STOP_GRACE_SECONDS = 60.0
RECEIPT_TIMEOUT_SECONDS = 60.0


class LocalBackend:
    handles_dependencies = True  # the supervisor waits for prerequisites itself

    def __init__(self, target: Target, *, python: str = sys.executable):
        self.target = target
        self.python = python

    def preflight(self, expansion: Expansion) -> None:
        if "://" in self.target.output_base:
            raise UsageError(
                f"the local backend writes to a local folder, not {self.target.output_base}",
                "set target.output_base to a local path (e.g. runs/<sweep>), or use a kubernetes target",
            )
        if importlib.util.find_spec("jax") is None:
            raise DistillctlError(
                "the local backend runs the bundled JAX trainer, but JAX is not installed",
                "install the trainer's dependencies: pip install 'distillctl[train]' (make demo does)",
                exit_code=ExitCode.CLUSTER_NOT_READY,
            )
        if self.target.secret_env:
            raise UsageError(
                "secret_env refers to Kubernetes Secrets, which a local run cannot read",
                "set the variables in target.env or in your shell instead",
            )

    adopted: list[str] = []  # set by `submit`: trainers a dead supervisor left running, handed to the sweep's

    def _folder(self, sweep: str) -> Path:
        return state.state_dir(self.target.output_base, sweep)

    def observe(self, expansion: Expansion) -> dict[str, Observation]:
        return {run.run_id: self._observe(run) for run in expansion.runs}

    def _observe(self, run: Point) -> Observation:
        folder = self._folder(run.sweep)
        claim = local_claims.read_claim(run.output_path)
        stale = claim is not None and local_claims.is_stale(claim)
        crashed = None
        if stale and claim.state == "queued":
            error = state.crash_of(folder, claim.supervisor_pid, claim.supervisor_start)
            crashed = None if error is None else f"{error} (its log: {folder / state.LOG})"
        record = local_claims.read_cancelled(run.output_path) if claim is None else None
        cancelled = record is not None and (record.get("run_id"), record["sweep"]) == (run.run_id, run.sweep)
        failure = state.read_failure(folder, run.run_id)
        observed = observe_claim(claim, stale=stale, failure=failure, crashed=crashed, cancelled=cancelled)
        if observed.exists and claim is not None and claim.sweep != run.sweep:
            # The same point in another sweep, started by it: its to stop (`cancel` leaves it), as on a cluster.
            name = identity.jobset_name(claim.sweep, run.run_id)
            return dataclasses.replace(observed, owner=claim.sweep, name=name)
        return observed

    def submit(
        self, runs: Sequence[Point], expansion: Expansion, *, dry_run: DryRun | None = None
    ) -> dict[str, Submitted]:
        """Hand the runs to the sweep's supervisor (starting one unless one runs) and wait for its receipt: each
        run `created` (starts from step 0), `restarted` (resumes from its checkpoint), `exists` (another
        supervisor owns it) or `failed` (its folder cannot be written)."""
        if dry_run is not None:
            return {run.run_id: "dry-run" for run in runs}
        by_id = {run.run_id: run for run in expansion.runs}
        # Trainers a dead supervisor left running go with them: the supervisor counts them against parallelism
        # and resumes their runs when they die (its receipt says they exist). With nothing new to run too: a
        # sweep that only found such a trainer started no supervisor, and nothing resumed the run when it died.
        handed = {run.run_id for run in runs}
        orphans = [
            run
            for run in expansion.runs
            if run.run_id not in handed and local_claims.orphaned(local_claims.read_claim(run.output_path))
        ]
        if not runs and not orphans:
            self._pass_on_parallelism(expansion.sweep.name)
            return {}
        runs_and_orphans = [*runs, *orphans]
        orders = [
            {
                "run_id": run.run_id,
                "sweep": run.sweep,
                "output_path": run.output_path,
                "spec_json": spec_json(run),
                "depends_on": [by_id[rid].output_path for rid in run.depends_on.values() if rid in by_id],
                "env": sorted(self.target.env.items()),
                "max_restarts": self.target.max_restarts,
                "retryable": list(self.target.restartable_exit_codes),
            }
            for run in runs_and_orphans
        ]
        folder = self._folder(expansion.sweep.name)
        log_path = folder / state.LOG
        submission = secrets.token_hex(8)
        try:
            state.ensure(folder)
            for run in runs:  # a retried run's old verdict must not count as this attempt's
                state.clear_failure(folder, run.run_id)
                claim = local_claims.read_claim(run.output_path)
                if claim is not None and claim.state == "exited":
                    with contextlib.suppress(OSError):  # an unwritable run folder: the supervisor fails the run
                        local_claims.release(run.output_path, claim.token)
            parallelism = self.target.parallelism or os.cpu_count() or 1
            state.post_orders(folder, submission, {"orders": orders, "parallelism": parallelism})
            log = open(log_path, "ab")
        except OSError as e:
            blocker = next((p for p in (folder, *folder.parents) if p.is_file()), None)
            raise UsageError(  # the sweep's output_base, as a bad path on the command line: exit 2
                f"cannot write the local supervisor's folder: {blocker} is a file, not a folder"
                if blocker is not None
                else f"cannot write the local supervisor's folder: {e.filename or folder}: {e.strerror or e}",
                "make target.output_base a folder you can write to",
            ) from None
        try:
            with log:
                supervisor = subprocess.Popen(
                    [self.python, "-m", supervisor_module.__name__, str(folder), submission],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=_importable_env(),
                )
        except BaseException as e:  # Ctrl-C, SIGTERM before a supervisor was started: the orders go, none ran
            try:
                state.order_path(folder, submission).unlink()
            except FileNotFoundError:  # the sweep's running supervisor took them meanwhile
                _note_handed(e, len(runs))
            except OSError:
                pass
            raise
        try:
            receipt = _receipt(folder, submission, supervisor)  # the new supervisor's, or the sweep's running one's
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the supervisor takes the orders all the same
            _note_handed(e, len(runs))
            raise
        # Said by `sweep` (the supervisor's log alone said it): their runs are looked after again.
        self.adopted = [run.jobset_name for run in orphans if receipt.get(run.run_id) == "exists"]
        return {run.run_id: receipt.get(run.run_id, "exists") for run in runs}

    def _pass_on_parallelism(self, sweep: str) -> None:
        """Nothing new to run: a supervisor that runs still takes a changed target.parallelism (else an edit of it
        waited, unsaid, for the sweep's next new run)."""
        folder = self._folder(sweep)
        settings = state.read_settings(folder)
        parallelism = self.target.parallelism or os.cpu_count() or 1
        if settings is None or settings.get("parallelism") == parallelism:
            return
        if not local_claims.alive(settings["pid"], settings.get("start")):
            return  # the next supervisor starts with it
        submission = secrets.token_hex(8)
        try:
            state.post_orders(folder, submission, {"orders": [], "parallelism": parallelism})
        except OSError:
            return  # its folder went read-only: the supervisor cannot answer either; status says the rest
        _receipt(folder, submission, None, running=(settings["pid"], settings.get("start")))

    def delete(self, runs: Sequence[Point]) -> list[str]:
        stopped, held = [], []
        for run in runs:
            folder = self._folder(run.sweep)
            failed = state.read_failure(folder, run.run_id) is not None
            if failed:
                with contextlib.suppress(OSError):
                    state.clear_failure(folder, run.run_id)
            claim = local_claims.read_claim(run.output_path)
            if claim is None or claim.sweep != run.sweep:
                if failed:
                    stopped.append(run.jobset_name)
                continue  # not running, or started by another sweep that shares this point
            held.append((run.output_path, claim))
            stopped.append(run.jobset_name)
        _stop(held, mark=True)
        return stopped

    def orphans(self, expansion: Expansion) -> list[Orphan]:
        """Runs the sweep's supervisor holds, queued or running, for points the sweep file no longer has (an
        edited file): nothing else shows or stops them, and the supervisor starts a queued one when a slot frees."""
        wanted = {run.run_id for run in expansion.runs}
        return [
            orphan
            for orphan, _, claim in self._held()
            if claim.sweep == expansion.sweep.name and claim.run_id not in wanted
        ]

    def earlier_runs(self, expansion: Expansion) -> int:
        """How many runs this sweep ran to an end under output_base for points its file no longer has, when none
        of the file's own points has started: an edit that changed every run id (the base spec's learning rate)
        showed every point "Pending (NotCreated)", the finished runs never named again."""
        wanted = {run.run_id for run in expansion.points}  # a prerequisite the edit kept is no sign
        every = {run.run_id for run in expansion.runs}
        ended = 0
        with contextlib.suppress(OSError):
            for folder in Path(self.target.output_base).iterdir():
                if folder.name in wanted:
                    return 0  # the file's runs are under way: its own rows say where they stand
                claim = local_claims.read_claim(str(folder))
                mine = claim is not None and claim.sweep == expansion.sweep.name and claim.run_id not in every
                if mine and claim.state == "exited":
                    ended += 1
        return ended

    def stopped_runs(self, expansion: Expansion, *, said: bool = True) -> list[tuple[str, int]]:
        """`(run id, step)` of this sweep's runs that `cancel` stopped with a checkpoint, for points the file no
        longer has and not said before: an edit that changed the point's id (more `steps`, another learning rate)
        started it again from step 0, and nothing named the stopped run or its checkpoint. Each is said once
        (`said`: record that it was)."""
        every = {run.run_id for run in expansion.runs}
        found = []
        with contextlib.suppress(OSError):
            for folder in sorted(Path(self.target.output_base).iterdir()):
                record = local_claims.read_cancelled(str(folder))
                if record is None or record["sweep"] != expansion.sweep.name or record.get("said"):
                    continue
                if folder.name in every or local_claims.read_claim(str(folder)) is not None:
                    continue  # still the file's, or run again since
                steps = [int(p.name) for p in (folder / "checkpoints").glob("*") if p.name.isdigit()]
                if steps:
                    found.append((folder.name, max(steps)))
                if said:
                    with contextlib.suppress(OSError):
                        local_claims.note_said(str(folder), record)
        return found

    def leftovers(self, expansion: Expansion) -> tuple[list[Orphan], dict[str, int]]:
        """The orphans; a local run has no image of its own."""
        return self.orphans(expansion), {}

    def delete_orphans(self, names: Sequence[str]) -> list[str]:
        """`cancel --orphans`: stop the runs `orphans` named (a trainer saves its checkpoint; a queued run is never
        started), recorded as `cancel` records them: `sweep` then says once that the edited points start from 0
        (`stopped_runs_superseded`), and putting the file back resumes them."""
        chosen = [(orphan.name, path, claim) for orphan, path, claim in self._held() if orphan.name in names]
        _stop([(path, claim) for _, path, claim in chosen], mark=True)
        return [name for name, _, _ in chosen]

    def _held(self) -> list[tuple[Orphan, str, local_claims.Claim]]:
        """Every live claim in output_base's run folders (queued or running, its owner alive), as an Orphan."""
        found = []
        with contextlib.suppress(OSError):  # no output_base yet: nothing was ever started
            for folder in sorted(Path(self.target.output_base).iterdir()):
                claim = local_claims.read_claim(str(folder))
                if claim is None or claim.state == "exited" or local_claims.is_stale(claim):
                    continue  # finished, or nobody will start it: its outputs say how far it got
                name = identity.jobset_name(claim.sweep, claim.run_id)
                orphan = Orphan(name, claim.run_id, "active" if claim.state == "running" else "queued")
                found.append((orphan, str(folder), claim))
        return found

    def still_there(self, names: Sequence[str]) -> list[str]:
        return []  # `delete` waits for the processes (SIGKILL after the grace period)

    def logs(self, run: Point, request: LogRequest) -> Iterator[str]:
        try:
            yield from self._log_lines(run, request)
        except OSError as e:  # an unreadable run folder or log (permissions, a folder in its place): said, not a bug
            raise UsageError(
                f"cannot read {run.label}'s log: {e.strerror or e} ({e.filename or run.output_path})",
                "move that file away (the run's outputs are a folder of that name)"
                if isinstance(e, NotADirectoryError)
                else "check the permissions of the run's folder and its trainer.log",
            ) from None

    def _log_lines(self, run: Point, request: LogRequest) -> Iterator[str]:
        path = Path(run.output_path) / local_claims.LOG_FILE
        # --follow on a run waiting for its first slot waits for its log, as `kubectl logs -f` waits for a pod (it
        # ended at once, "no log yet").
        while request.follow and not path.exists() and _log_may_grow(local_claims.read_claim(run.output_path)):
            time.sleep(0.2)
        if not path.exists():  # raises PermissionError for a folder that cannot be searched
            if path.parent.exists() and not path.parent.is_dir():  # "has no log yet" of a run that succeeded
                raise NotADirectoryError(20, "a file is where the run's folder goes", str(path.parent))
            raise UsageError(f"{run.label} has no log yet ({path})", "it has not started; `distillctl status` says why")
        with path.open("r", errors="replace") as f:
            lines = f.readlines()
            yield from (lines[-request.tail :] if request.tail else lines)
            seen = None  # the last claim read: `cancel` removes it before its trainer has written its last lines
            while request.follow:
                line = f.readline()
                if line:
                    yield line
                    continue
                claim = local_claims.read_claim(run.output_path)
                seen = claim or seen
                stopping = claim is None and seen is not None and local_claims.alive(seen.pid, seen.pid_start)
                if not stopping and not _log_may_grow(claim):
                    yield from f.readlines()
                    return
                time.sleep(0.2)

    def close(self) -> None:
        pass


def _log_may_grow(claim: local_claims.Claim | None) -> bool:
    """Whether a run's log may still grow: its trainer runs, or its supervisor lives to start it or start it again
    (`logs -f` ended while the run waited for a slot, and between a retryable exit and its restart)."""
    if claim is None or claim.state == "exited":
        return False
    return local_claims.alive(claim.pid, claim.pid_start) or local_claims.alive(
        claim.supervisor_pid, claim.supervisor_start
    )


def _note_handed(e: BaseException, count: int) -> None:
    """Say, on an exception that ends a submit, that the runs it handed over run on (the message said nothing)."""
    e.add_note(
        f"{count} run(s) were handed to the sweep's local supervisor before it stopped, and run on: "
        "`distillctl status` shows them, `distillctl cancel` stops them"
    )


def _receipt(
    folder: Path,
    submission: str,
    supervisor: subprocess.Popen | None,
    running: tuple[int, float | None] | None = None,
) -> dict[str, str]:
    """Wait for the supervisor's answer to `submission`: from the one just started (`supervisor`, which may die
    first), or from the `running` one (pid, start), whose orders are withdrawn if it ends before taking them."""
    log_path = folder / state.LOG
    deadline = time.monotonic() + RECEIPT_TIMEOUT_SECONDS
    while (receipt := state.pop_receipt(folder, submission)) is None:
        if running is not None and not local_claims.alive(*running):
            with contextlib.suppress(OSError):
                state.order_path(folder, submission).unlink()
            return state.pop_receipt(folder, submission) or {}  # it may have answered as it ended
        code = supervisor.poll() if supervisor is not None else None
        if code not in (None, 0):
            error = state.crash_of(folder, supervisor.pid, None) or f"exit code {code}"
            raise DistillctlError(f"the local supervisor failed: {error}", f"its log: {log_path}")
        if time.monotonic() > deadline:
            # The order stays posted: a supervisor that is alive but slow (stopped, swapping) takes it later.
            who = f" (pid {running[0]})" if running is not None else ""
            raise DistillctlError(
                f"the local supervisor{who} did not take the runs within {RECEIPT_TIMEOUT_SECONDS:.0f}s; they stay "
                "posted for it, and start when it takes them",
                f"`distillctl status` says when they do; its log: {log_path}",
            )
        time.sleep(0.05)
    return receipt


def observe_claim(
    claim: local_claims.Claim | None,
    *,
    stale: bool = False,
    failure: state.Failure | None = None,
    crashed: str | None = None,
    cancelled: bool = False,
) -> Observation:
    """A run's claim as an Observation: queued (waiting for a slot or a prerequisite), running, or exited with a
    code. Pure: the caller says whether the claim is `stale` (its owner is gone), the supervisor's `failure` record
    of the run, and the error its supervisor died of (`crashed`) when that one left it queued.

    A failure record speaks unless a newer live owner holds the run; a stale claim is no run at all (the outputs
    then speak), except one its supervisor left queued: that fails with the supervisor's error when it recorded
    one, and otherwise is a submitted run nothing will start (Pending, SupervisorGone: `sweep` submits it again).
    `cancelled`: no claim, and `cancel` left its record of stopping this run."""
    if failure is not None and (claim is None or stale or claim.token == failure.token):
        return Observation(
            exists=True,
            conditions=(Condition("Failed", "True", failure.reason, failure.message),),
            restarts=claim.restarts if claim else 0,
            created_at=claim.created_at if claim else failure.at,
        )
    if claim is None:
        return Observation(exists=False, cancelled=cancelled)
    if stale:
        if claim.state != "queued":
            return Observation(exists=False)  # its trainer is gone: the outputs say how far it got
        if crashed is not None:
            message = f"the local supervisor died: {crashed}"
            condition = Condition("Failed", "True", FailedReason.SUPERVISOR_CRASHED, message)
            return Observation(exists=True, conditions=(condition,), created_at=claim.created_at)
        # Killed (SIGKILL, the OOM killer, a reboot) before it could record why: nothing will start the run.
        lost = (
            f"its local supervisor (pid {claim.supervisor_pid}) is gone before starting it; "
            "`distillctl sweep` submits it again"
        )
        return Observation(exists=False, lost=lost, created_at=claim.created_at)
    if claim.state == "queued":
        return Observation(
            exists=True, queue_reason=claim.reason or "Queued", restarts=claim.restarts, created_at=claim.created_at
        )
    if claim.state == "running":
        return Observation(
            exists=True, active=True, restarts=claim.restarts, created_at=claim.created_at, started_at=claim.started_at
        )
    code = claim.exit_code
    if code == 0:
        condition = Condition("Completed", "True", "AllJobsCompleted")
    else:
        condition = Condition("Failed", "True", exit_reason(code), f"the trainer exited with {code}")
    return Observation(exists=True, conditions=(condition,), restarts=claim.restarts, created_at=claim.created_at)


def _stop(held: Sequence[tuple[str, local_claims.Claim]], mark: bool = False) -> None:
    """Stop the runs whose claims these are (by run folder): each claim is removed first, so the supervisor neither
    restarts nor records the run, nor starts a queued one; then the running trainers are stopped together. `mark`:
    leave the record that the sweep's run was cancelled (`stopped_runs`)."""
    running = []
    for output_path, claim in held:
        try:
            if mark and claim.state in ("running", "queued"):  # first: no look between the two finds it unexplained
                local_claims.mark_cancelled(output_path, claim)
            local_claims.release(output_path)
        except OSError:
            pass  # an unwritable run folder: its claim stays, and goes stale with its processes
        if claim.state == "running" and local_claims.alive(claim.pid, claim.pid_start):
            running.append(claim.pid)
    _stop_groups(running)  # all at once: each saves its checkpoint in parallel


def _stop_groups(pids: list[int]) -> None:
    """SIGTERM each run's process group (the trainer checkpoints and exits 143); SIGKILL what is left after a
    grace period."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline and any(local_claims.alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if local_claims.alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _importable_env() -> dict[str, str]:
    """The environment, with this checkout importable by the supervisor and trainer processes."""
    root = str(Path(__file__).resolve().parents[3])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
