"""The local backend's supervisor: runs a sweep's points as trainer processes on this machine, in the background.

`distillctl sweep` starts it detached (its own session) and writes the orders to its stdin as JSON; it claims each
run (see `backends.local_claims`), starts `python -m trainer` for it once its prerequisites have succeeded, at most
`parallelism` at a time, restarts a run that exits with a retryable code (the contract's, and the target's extras) up to
`max_restarts` times, records each exit in the run's claim, and exits when nothing is left. Cancelling a run
removes its claim; the supervisor then drops it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from distillspec.contract import ENV_RUN_ID, ENV_SPEC, is_retryable
from orchestrator.backends.local import claims as local_claims
from orchestrator.backends.local.claims import Claim
from orchestrator.outputs import read_summary

POLL_SECONDS = 0.3


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


def dependency_state(output_path: str) -> str:
    """`succeeded`, `failed` or `waiting` for a prerequisite run's output path. The prerequisite's claim speaks
    first: a queued or running claim means it is being (re)run, whatever an earlier attempt's summary says."""
    claim = local_claims.read_claim(output_path)
    if claim is not None and not local_claims.is_stale(claim):
        if claim.state != "exited":
            return "waiting"
        return "succeeded" if claim.exit_code == 0 else "failed"
    status = (read_summary(output_path) or {}).get("status")
    if status == "succeeded":
        return "succeeded"
    return "failed" if status in ("failed", "diverged") else "waiting"


class Supervisor:
    def __init__(self, orders: list[Order], parallelism: int, python: str = sys.executable):
        self.python = python
        self.parallelism = max(1, parallelism)
        self.pending: list[tuple[Order, Claim]] = []
        self.running: list[_Running] = []
        for order in orders:
            claim = local_claims.try_claim(order.output_path, order.run_id, order.sweep)
            if claim is not None:
                self.pending.append((order, claim))

    def run(self) -> None:
        while self.pending or self.running:
            self._reap()
            self._start_ready()
            time.sleep(POLL_SECONDS)

    def _still_ours(self, order: Order, claim: Claim) -> bool:
        current = local_claims.read_claim(order.output_path)
        return current is not None and current.token == claim.token

    def _start_ready(self) -> None:
        keep = []
        for order, claim in self.pending:
            if not self._still_ours(order, claim):
                continue  # cancelled
            states = [dependency_state(path) for path in order.depends_on]
            if "failed" in states:
                local_claims.release(order.output_path, claim.token)  # blocked: leave it Pending
                continue
            if "waiting" in states:
                keep.append((order, self._note(order, claim, "WaitingForPrerequisite")))
            elif len(self.running) < self.parallelism:
                self._start(order, claim)
            else:
                keep.append((order, self._note(order, claim, "WaitingForSlot")))
        self.pending = keep

    def _note(self, order: Order, claim: Claim, reason: str) -> Claim:
        if claim.reason == reason:
            return claim
        claim = dataclasses.replace(claim, reason=reason)
        local_claims.write_claim(order.output_path, claim)
        return claim

    def _start(self, order: Order, claim: Claim) -> None:
        Path(order.output_path).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **dict(order.env), ENV_SPEC: order.spec_json, ENV_RUN_ID: order.run_id}
        log = open(Path(order.output_path) / local_claims.LOG_FILE, "ab")
        try:
            process = subprocess.Popen(
                [self.python, "-m", "trainer"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        claim = dataclasses.replace(
            claim,
            state="running",
            reason="",
            pid=process.pid,
            pid_start=local_claims.process_start_time(process.pid),
            started_at=time.time(),
            exit_code=None,
        )
        local_claims.write_claim(order.output_path, claim)
        self.running.append(_Running(order, claim, process))

    def _reap(self) -> None:
        still, restarts = [], []
        for item in self.running:
            code = item.process.poll()
            if code is None:
                still.append(item)
                continue
            code = 128 - code if code < 0 else code  # killed by signal n: report 128 + n, as a shell does
            if not self._still_ours(item.order, item.claim):
                continue  # cancelled: the canceller removed the claim
            retryable = is_retryable(code, tuple(item.order.retryable))
            if code != 0 and retryable and item.claim.restarts < item.order.max_restarts:
                restarts.append((item.order, dataclasses.replace(item.claim, restarts=item.claim.restarts + 1)))
                continue
            local_claims.write_claim(
                item.order.output_path, dataclasses.replace(item.claim, state="exited", exit_code=code)
            )
        self.running = still
        for order, claim in restarts:
            self._start(order, claim)  # resumes from the run's latest checkpoint


def main() -> int:
    request = json.load(sys.stdin)
    orders = [Order.from_json(o) for o in request["orders"]]
    Supervisor(orders, int(request.get("parallelism") or os.cpu_count() or 1)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
