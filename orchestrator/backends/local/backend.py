"""The local backend: a sweep's points as trainer processes on this machine (CPU), same output layout as a cluster.

Submitting hands the runs to a detached supervisor (`orchestrator.backends.local.supervisor`), which keeps going after the
command returns; observing reads each run's claim file and outputs; deleting stops the run's process group with
SIGTERM (the trainer saves a checkpoint and exits 143) and removes its claim.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from distillspec.contract import exit_reason
from distillspec.sweep import Target
from orchestrator.backends import DryRun, LogRequest, Submitted
from orchestrator.backends.local import claims as local_claims
from orchestrator.backends.local import supervisor as supervisor_module
from orchestrator.core.expansion import Expansion, Point
from orchestrator.core.rendering import spec_json
from orchestrator.core.run_status import Condition, Observation
from orchestrator.errors import DistillctlError, UsageError
from orchestrator.exit_codes import ExitCode

STOP_GRACE_SECONDS = 60.0


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

    def observe(self, expansion: Expansion) -> dict[str, Observation]:
        return {run.run_id: observe_claim(local_claims.read_claim(run.output_path)) for run in expansion.runs}

    def submit(
        self, runs: Sequence[Point], expansion: Expansion, *, dry_run: DryRun | None = None
    ) -> dict[str, Submitted]:
        if dry_run is not None or not runs:
            return {run.run_id: "dry-run" for run in runs}
        by_id = {run.run_id: run for run in expansion.runs}
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
            for run in runs
        ]
        for run in runs:  # a retried run's old verdict must not count as this attempt's
            claim = local_claims.read_claim(run.output_path)
            if claim is not None and claim.state == "exited":
                local_claims.release(run.output_path, claim.token)
        base = Path(self.target.output_base)
        base.mkdir(parents=True, exist_ok=True)
        log = open(base / f".{runs[0].sweep}.supervisor.log", "ab")
        try:
            supervisor = subprocess.Popen(
                [self.python, "-m", supervisor_module.__name__],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_importable_env(),
            )
        finally:
            log.close()
        parallelism = self.target.parallelism or os.cpu_count() or 1
        try:
            supervisor.stdin.write(json.dumps({"orders": orders, "parallelism": parallelism}).encode())
            supervisor.stdin.close()
        except BrokenPipeError:
            raise DistillctlError(
                "the local supervisor exited before it read the runs",
                f"see {base / f'.{runs[0].sweep}.supervisor.log'}",
            ) from None
        # The supervisor claims runs as it starts; wait until each is claimed (by it or an earlier one).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(local_claims.read_claim(run.output_path) is not None for run in runs):
                break
            if supervisor.poll() is not None and supervisor.returncode != 0:
                raise DistillctlError(
                    f"the local supervisor failed to start (exit {supervisor.returncode})",
                    f"see {base / f'.{runs[0].sweep}.supervisor.log'}",
                )
            time.sleep(0.05)
        claims = {run.run_id: local_claims.read_claim(run.output_path) for run in runs}
        # A run another sweep's supervisor already owns exists; this supervisor skipped it.
        return {
            run_id: "created" if claim is not None and claim.supervisor_pid == supervisor.pid else "exists"
            for run_id, claim in claims.items()
        }

    def delete(self, runs: Sequence[Point]) -> list[str]:
        stopped, running = [], []
        for run in runs:
            claim = local_claims.read_claim(run.output_path)
            if claim is None or claim.sweep != run.sweep:
                continue  # not running, or started by another sweep that shares this point
            local_claims.release(run.output_path)  # first: the supervisor must not restart or record it
            if claim.state == "running" and local_claims.alive(claim.pid, claim.pid_start):
                running.append(claim.pid)
            stopped.append(run.jobset_name)
        _stop_groups(running)  # all at once: each saves its checkpoint in parallel
        return stopped

    def logs(self, run: Point, request: LogRequest) -> Iterator[str]:
        path = Path(run.output_path) / local_claims.LOG_FILE
        if not path.exists():
            raise UsageError(f"{run.label} has no log yet ({path})", "it has not started; `distillctl status` says why")
        with path.open("r", errors="replace") as f:
            lines = f.readlines()
            yield from (lines[-request.tail :] if request.tail else lines)
            while request.follow:
                line = f.readline()
                if line:
                    yield line
                    continue
                claim = local_claims.read_claim(run.output_path)
                if claim is None or claim.state == "exited" or not local_claims.alive(claim.pid, claim.pid_start):
                    yield from f.readlines()
                    return
                time.sleep(0.2)

    def close(self) -> None:
        pass


def observe_claim(claim: local_claims.Claim | None) -> Observation:
    """A claim as an Observation: queued (waiting for a slot or a prerequisite), running, or exited with a code."""
    if claim is None or local_claims.is_stale(claim):
        return Observation(exists=False)
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
