"""The local backend's pure parts (the supervisor's scheduling, observe_claim) and its claim files, raced by real
processes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillspec.contract import ENV_GLIBC_TUNABLES, ENV_RUN_ID, ENV_SPEC, HUGE_PAGES_TUNABLE
from orchestrator.backends.local import claims as local_claims
from orchestrator.backends.local import state
from orchestrator.backends.local.backend import observe_claim
from orchestrator.backends.local.claims import Claim
from orchestrator.backends.local.supervisor import Order, after_exit, exit_status, has_checkpoint, schedule, trainer_env

# --- scheduling ----------------------------------------------------------------------------------------------


def test_schedule_starts_ready_runs_in_order_up_to_parallelism():
    ready = [[], ["succeeded"], [], []]
    assert schedule(ready, running=0, parallelism=2) == ["start", "start", "WaitingForSlot", "WaitingForSlot"]
    assert schedule(ready, running=1, parallelism=2) == ["start", "WaitingForSlot", "WaitingForSlot", "WaitingForSlot"]
    assert schedule(ready, running=3, parallelism=2) == ["WaitingForSlot"] * 4


def test_schedule_waits_for_and_blocks_on_prerequisites_without_using_a_slot():
    steps = schedule([["waiting"], ["failed", "waiting"], ["succeeded", "succeeded"], []], running=0, parallelism=1)
    assert steps == ["WaitingForPrerequisite", "blocked", "start", "WaitingForSlot"]


def test_schedule_runs_one_at_a_time_at_least():
    assert schedule([[], []], running=0, parallelism=0) == ["start", "WaitingForSlot"]


@pytest.mark.parametrize(
    ("code", "restarts", "max_restarts", "extra", "want"),
    [
        (0, 0, 3, (), "exit"),
        (1, 0, 3, (), "exit"),  # a user error is never retried
        (42, 0, 3, (), "restart"),
        (42, 3, 3, (), "exit"),  # no restarts left
        (137, 0, 1, (), "restart"),  # killed by a signal
        (42, 0, 0, (), "exit"),
        (3, 0, 2, (3,), "restart"),  # the target's extra retryable code
        (65, 0, 2, (), "exit"),  # diverged
    ],
)
def test_after_exit(code, restarts, max_restarts, extra, want):
    assert after_exit(code, restarts, max_restarts, extra) == want


def test_exit_status_reports_signals_as_a_shell_does():
    assert exit_status(-9) == 137 and exit_status(-15) == 143 and exit_status(42) == 42


def _order(**env: str) -> Order:
    return Order(run_id="r-1", sweep="s", output_path="/tmp/r-1", spec_json="{}", env=tuple(env.items()))


@pytest.mark.parametrize(
    "inherited, target, want",
    [
        ({}, {}, HUGE_PAGES_TUNABLE),
        # Other tunables are kept, the huge pages added after them.
        ({ENV_GLIBC_TUNABLES: "glibc.malloc.arena_max=2"}, {}, f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"),
        # The user's own choice stands, from the shell or from target.env (which wins over the shell).
        ({ENV_GLIBC_TUNABLES: "glibc.malloc.hugetlb=0"}, {}, "glibc.malloc.hugetlb=0"),
        (
            {ENV_GLIBC_TUNABLES: "glibc.malloc.arena_max=2"},
            {ENV_GLIBC_TUNABLES: "glibc.malloc.hugetlb=2"},
            "glibc.malloc.hugetlb=2",
        ),
    ],
)
def test_trainer_env_adds_glibc_huge_pages_unless_the_user_chose(inherited, target, want):
    env = trainer_env(_order(**target), {"HOME": "/home/u", **inherited})
    assert env[ENV_GLIBC_TUNABLES] == want
    assert env["HOME"] == "/home/u" and env[ENV_SPEC] == "{}" and env[ENV_RUN_ID] == "r-1"


def test_has_checkpoint_only_for_a_finished_step(tmp_path):
    assert not has_checkpoint(str(tmp_path))
    (tmp_path / "checkpoints" / "100.orbax-checkpoint-tmp-1").mkdir(parents=True)
    assert not has_checkpoint(str(tmp_path))
    (tmp_path / "checkpoints" / "100").mkdir()
    assert has_checkpoint(str(tmp_path))


# --- observe_claim -------------------------------------------------------------------------------------------


def claim(**changes) -> Claim:
    return Claim(**{"run_id": "r", "sweep": "s", "token": "t1", "supervisor_pid": 1, "created_at": 100.0, **changes})


def test_observe_claim_states():
    assert not observe_claim(None).exists
    queued = observe_claim(claim(reason="WaitingForSlot", restarts=1))
    assert queued.exists and queued.queue_reason == "WaitingForSlot" and queued.restarts == 1
    running = observe_claim(claim(state="running", pid=5, started_at=120.0))
    assert running.active and running.started_at == 120.0
    done = observe_claim(claim(state="exited", exit_code=0))
    assert done.condition("Completed") and not done.condition("Failed")
    failed = observe_claim(claim(state="exited", exit_code=1)).condition("Failed")
    assert failed.reason == "UserError" and failed.message == "the trainer exited with 1"


def test_observe_claim_stale_is_no_run_unless_its_supervisor_left_it_queued():
    assert not observe_claim(claim(), stale=True).exists
    assert not observe_claim(claim(state="running"), stale=True, crashed="ValueError: x").exists  # outputs speak
    crashed = observe_claim(claim(), stale=True, crashed="ValueError: x (its log: l)").condition("Failed")
    assert crashed.reason == "SupervisorCrashed" and "ValueError: x" in crashed.message
    # Killed without a word (SIGKILL, a reboot): a submitted run nothing will start, not "not submitted yet".
    gone = observe_claim(claim(), stale=True)
    assert not gone.exists and "is gone" in gone.lost and "distillctl sweep" in gone.lost
    assert not observe_claim(claim(state="running"), stale=True).lost


def test_observe_claim_failure_record_speaks_unless_a_newer_owner_holds_the_run():
    failure = state.Failure("r", "t1", "OutputNotWritable", "/runs/r/trainer.log: Operation not permitted", at=7.0)
    for c, stale in ((claim(state="running"), False), (claim(), True), (None, False)):
        seen = observe_claim(c, stale=stale, failure=failure).condition("Failed")
        assert (seen.reason, seen.message) == ("OutputNotWritable", failure.message)
    newer = observe_claim(claim(token="t2", state="running"), failure=failure)
    assert newer.active and not newer.condition("Failed")


def test_a_run_cancel_stopped_reads_preempted_while_its_trainer_still_saves(tmp_path):
    """`cancel` removes the claim, then the trainer takes a while to save its checkpoint and write "preempted":
    meanwhile its outputs said running, the run read Pending (Orphaned), and a `sweep --wait` following it handed it
    over again (the cancel was undone; CI saw it once). Cancel's record makes it read stopped on purpose."""
    from distillspec.sweep import load_sweep, override_target
    from orchestrator.backends.local.backend import LocalBackend
    from orchestrator.core import follow
    from orchestrator.core.expansion import expand
    from orchestrator.core.status import look
    from tests.sweep_support import SWEEPS

    expansion = expand(override_target(load_sweep(SWEEPS / "quickstart.yaml"), output_base=str(tmp_path)))
    teacher = expansion.prerequisites[0]
    os.makedirs(teacher.output_path)
    state.write_json(Path(teacher.output_path) / "summary.json", {"status": "running", "step": 10})
    backend = LocalBackend(expansion.sweep.target)

    def teacher_status():
        return look(expansion, backend, now=1e9, strict_outputs=False).statuses[teacher.run_id]

    assert teacher_status().shown == "Pending (Orphaned)"  # no cancel said so: a run lost to a crash
    held = claim(run_id=teacher.run_id, sweep=teacher.sweep, state="running")
    local_claims.mark_cancelled(teacher.output_path, held)
    stopping = teacher_status()
    assert stopping.shown == "Pending (Preempted)" and stopping.message.startswith("cancelled;"), stopping
    assert follow._stopped_on_purpose(stopping)
    # The trainer's own word, once written, speaks, saying it was a cancel (not a preemption)
    state.write_json(Path(teacher.output_path) / "summary.json", {"status": "preempted", "step": 10})
    said = "cancelled: stopped at step 10 with a checkpoint; resumes from it when submitted again"
    assert teacher_status().message == said
    # A point cancelled while it was queued: no outputs, and not "not submitted yet"
    point = expansion.runs[-1]
    os.makedirs(point.output_path)
    local_claims.mark_cancelled(point.output_path, claim(run_id=point.run_id, sweep=point.sweep))
    queued = look(expansion, backend, now=1e9, strict_outputs=False).statuses[point.run_id]
    assert queued.shown == "Pending (NotCreated)" and queued.message.startswith("cancelled before it started")
    from orchestrator.cli.views import _says_why

    assert _says_why(queued)  # in status's why column too, unlike "not submitted yet"
    # Another sweep's record of cancelling its own run with this id says nothing of this sweep's
    state.write_json(Path(teacher.output_path) / "summary.json", {"status": "running", "step": 10})
    local_claims.mark_cancelled(teacher.output_path, dataclasses.replace(held, sweep="other"))
    assert teacher_status().shown == "Pending (Orphaned)"


# --- claims ----------------------------------------------------------------------------------------------------


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def stale_claim(path: str, pid: int) -> None:
    os.makedirs(path, exist_ok=True)
    state.write_json(local_claims.claim_path(path), claim(supervisor_pid=pid, token="stale").to_json())


def test_try_claim_takes_over_only_a_stale_claim(tmp_path):
    path = str(tmp_path / "run")
    stale_claim(path, dead_pid())
    state.write_json(local_claims.claim_path(path), claim(supervisor_pid=dead_pid(), token="s", restarts=2).to_json())
    mine = local_claims.try_claim(path, "r", "s", "sub1")
    assert mine is not None and local_claims.read_claim(path) == mine and mine.submission == "sub1"
    assert (mine.restarts, mine.created_at) == (2, 100.0)  # the run's history, kept from the dead supervisor's claim
    assert local_claims.try_claim(path, "r", "s") is None  # this process is alive: not stale
    assert not local_claims.write_claim(path, claim(token="other"))  # not the owner
    assert local_claims.write_claim(path, mine.__class__(**{**mine.to_json(), "reason": "WaitingForSlot"}))
    assert not local_claims.release(path, "other") and local_claims.release(path, mine.token)
    assert local_claims.read_claim(path) is None


def test_try_claim_raises_when_the_run_folder_cannot_be_made(tmp_path):
    (tmp_path / "run").write_text("a file where the run's folder belongs")
    with pytest.raises(OSError):
        local_claims.try_claim(str(tmp_path / "run"), "r", "s")


def test_a_claim_that_cannot_be_written_names_the_claim_file_not_its_temporary(tmp_path):
    # A folder where local-run.json belongs: os.replace failed on a `.local-run.json.<pid>.<hex>` beside it, and
    # that name reached `distillctl status`.
    (tmp_path / "run" / local_claims.CLAIM_FILE).mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as raised:
        local_claims.try_claim(str(tmp_path / "run"), "r", "s")
    assert raised.value.filename == str(tmp_path / "run" / local_claims.CLAIM_FILE)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(f".{local_claims.CLAIM_FILE}.")]


def _racer(path, start, done, wins, trials):
    for _ in range(trials):
        start.wait()
        won = local_claims.try_claim(path, "r", "s") is not None
        wins.put((os.getpid(), won))
        done.wait()


@pytest.mark.parametrize(("processes", "trials"), [(2, 200), (4, 200)])
def test_stale_claim_race_has_exactly_one_winner_every_time(tmp_path, processes, trials):
    """Real processes take over one stale claim at the same moment, `trials` times: exactly one wins each time, and
    the claim on disk is the winner's."""
    ctx = multiprocessing.get_context(
        "spawn"
    )  # fork copies JAX's threads when an earlier test loaded it (deadlock risk)
    path = str(tmp_path / "run")
    start, done = ctx.Barrier(processes + 1), ctx.Barrier(processes + 1)
    wins = ctx.Queue()
    racers = [ctx.Process(target=_racer, args=(path, start, done, wins, trials)) for _ in range(processes)]
    for p in racers:
        p.start()
    gone = dead_pid()
    counts = []
    try:
        for _ in range(trials):
            stale_claim(path, gone)
            start.wait(timeout=60)
            results = [wins.get(timeout=60) for _ in racers]
            winners = [pid for pid, won in results if won]
            counts.append(len(winners))
            if len(winners) == 1:
                assert local_claims.read_claim(path).supervisor_pid == winners[0]
            done.wait(timeout=60)
    finally:
        for p in racers:
            p.join(timeout=60)
    assert counts == [1] * trials, f"trials with other than one winner: {[c for c in counts if c != 1]}"


def _following(run):
    """`logs --follow` of `run` in a thread, a second after it started: (the thread, the lines it has read)."""
    import threading
    import time

    from distillspec.sweep import Target
    from orchestrator.backends import LogRequest
    from orchestrator.backends.local.backend import LocalBackend

    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(LocalBackend(Target()).logs(run, LogRequest(follow=True))), daemon=True
    )
    reader.start()
    time.sleep(1.0)
    return reader, lines


def test_logs_follow_waits_while_the_supervisor_lives_to_start_the_run_again(tmp_path):
    """`logs -f` ended while a run waited for a slot (no trainer yet) and between a retryable exit and its restart
    (its trainer gone, the supervisor about to start it again); it ends once the run has exited, or nobody is left
    to write its log."""
    import types

    from distillspec.sweep import Target
    from orchestrator.backends import LogRequest
    from orchestrator.backends.local.backend import LocalBackend

    path = str(tmp_path / "run")
    os.makedirs(path)
    (tmp_path / "run" / local_claims.LOG_FILE).write_text("attempt 1\n")
    me, gone = os.getpid(), dead_pid()
    state.write_json(local_claims.claim_path(path), claim(state="running", pid=gone, supervisor_pid=me).to_json())
    run = types.SimpleNamespace(output_path=path, label="point 0")
    reader, lines = _following(run)
    assert reader.is_alive() and lines == ["attempt 1\n"]  # still following
    with open(tmp_path / "run" / local_claims.LOG_FILE, "a") as log:
        log.write("attempt 2\n")
    state.write_json(local_claims.claim_path(path), claim(state="exited", exit_code=0, supervisor_pid=me).to_json())
    reader.join(5)
    assert not reader.is_alive() and lines == ["attempt 1\n", "attempt 2\n"]
    # A claim whose trainer and supervisor are both gone: nothing more comes.
    state.write_json(local_claims.claim_path(path), claim(state="running", pid=gone, supervisor_pid=gone).to_json())
    assert list(LocalBackend(Target()).logs(run, LogRequest(follow=True))) == ["attempt 1\n", "attempt 2\n"]


def test_logs_follow_of_a_run_waiting_for_its_first_slot_waits_for_its_log(tmp_path):
    """A queued run has a claim but no trainer.log yet: `logs --follow` ended at once ("no log yet"); it waits for
    the log while the supervisor that holds the claim lives, then follows it."""
    import types

    from distillspec.sweep import Target
    from orchestrator.backends import LogRequest
    from orchestrator.backends.local.backend import LocalBackend
    from orchestrator.errors import UsageError

    path = str(tmp_path / "run")
    os.makedirs(path)
    state.write_json(
        local_claims.claim_path(path), claim(reason="WaitingForSlot", supervisor_pid=os.getpid()).to_json()
    )
    run = types.SimpleNamespace(output_path=path, label="point 1")
    reader, lines = _following(run)
    assert reader.is_alive() and lines == []  # waiting, not "no log yet"
    (tmp_path / "run" / local_claims.LOG_FILE).write_text("training\n")
    state.write_json(
        local_claims.claim_path(path), claim(state="exited", exit_code=0, supervisor_pid=os.getpid()).to_json()
    )
    reader.join(5)
    assert not reader.is_alive() and lines == ["training\n"]
    # Without --follow, or with nobody left to start it: said at once.
    gone = tmp_path / "gone"
    os.makedirs(gone)
    state.write_json(local_claims.claim_path(str(gone)), claim(supervisor_pid=dead_pid()).to_json())
    with pytest.raises(UsageError, match="has no log yet"):
        list(
            LocalBackend(Target()).logs(
                types.SimpleNamespace(output_path=str(gone), label="p"), LogRequest(follow=True)
            )
        )


def test_a_log_that_cannot_be_read_is_said_not_an_internal_error(tmp_path):
    """An unreadable run folder or log (permissions; here a folder where trainer.log goes) ended `logs` with
    "internal error ... this is a bug", exit 70."""
    import types

    from distillspec.sweep import Target
    from orchestrator.backends import LogRequest
    from orchestrator.backends.local.backend import LocalBackend
    from orchestrator.errors import UsageError

    (tmp_path / "run" / local_claims.LOG_FILE).mkdir(parents=True)
    run = types.SimpleNamespace(output_path=str(tmp_path / "run"), label="point 0")
    with pytest.raises(UsageError, match="cannot read point 0's log: Is a directory") as said:
        list(LocalBackend(Target()).logs(run, LogRequest()))
    assert "trainer.log" in said.value.message and "permissions" in said.value.hint


def test_orders_skip_what_is_not_an_order_file(tmp_path):
    """A folder named like an order in `orders/` killed the supervisor (IsADirectoryError from unlink); garbage files
    were already dropped."""
    folder = tmp_path / ".s.supervisor"
    state.ensure(folder)
    (folder / "orders" / "x.json").mkdir()
    (folder / "orders" / "junk.json").write_text("not json")
    state.post_orders(folder, "abc", {"orders": [], "parallelism": 2})
    assert state.take_orders(folder) == [("abc", {"orders": [], "parallelism": 2})]
    assert (folder / "orders" / "x.json").is_dir() and not (folder / "orders" / "junk.json").exists()
    assert state.take_orders(folder) == []
