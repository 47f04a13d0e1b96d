"""The pure core of launching and following: reconcile, launch and the follow events, with a fake clock.

The backend here is an in-memory stand-in for the Backend protocol (what the core asks of any backend); the real
backends are tested against real trainer processes and the real control plane elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from distillspec.sweep import load_sweep, override_target
from orchestrator.core.expansion import Expansion, Point, expand
from orchestrator.core.follow import Finished, Outcome, Polled, follow
from orchestrator.core.launch import DRY_RUN_RECREATE, launch, to_submit
from orchestrator.core.reconcile import ActionKind, Waiting, reconcile
from orchestrator.core.run_status import Condition, Observation, Phase, RunStatus
from orchestrator.errors import DistillctlError
from orchestrator.exit_codes import ExitCode
from orchestrator.outputs import RunOutputs
from tests.sweep_support import SWEEPS


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Expansion:
    # Outputs in an empty folder: the quickstart's own runs/quickstart/ may hold a real run's verdicts.
    source = override_target(load_sweep(SWEEPS / "quickstart.yaml"), output_base=str(tmp_path_factory.mktemp("out")))
    result = expand(source)
    assert result.ok and len(result.prerequisites) == 1
    return result


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclasses.dataclass
class MemoryBackend:
    """Runs as a dict of observations; `script(run_id, polls_seen)` decides how a created run ends."""

    handles_dependencies: bool = False
    finish_after: int = 2  # polls a created run stays running
    fail: frozenset[str] = frozenset()
    never_admit: frozenset[str] = frozenset()
    runs: dict = dataclasses.field(default_factory=dict)
    submitted: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)
    polls: int = 0

    def preflight(self, expansion):
        pass

    def observe(self, expansion):
        self.polls += 1
        for run_id, (created_at_poll, _) in list(self.runs.items()):
            age = self.polls - created_at_poll
            if run_id in self.never_admit:
                seen = Observation(
                    exists=True, suspended=True, queue_reason="Pending", queue_message="8 > maximum capacity (4)"
                )
            elif age >= self.finish_after:
                kind = "Failed" if run_id in self.fail else "Completed"
                seen = Observation(exists=True, conditions=(Condition(kind, "True", "Scripted"),))
            else:
                seen = Observation(exists=True, active=True)
            self.runs[run_id] = (created_at_poll, seen)
        return {run_id: seen for run_id, (_, seen) in self.runs.items()}

    def submit(self, runs: Sequence[Point], expansion, *, dry_run=None):
        if dry_run:
            return {run.run_id: "dry-run" for run in runs}
        done = {}
        for run in runs:
            if run.run_id in self.runs:
                done[run.run_id] = "exists"
                continue
            self.runs[run.run_id] = (self.polls, Observation(exists=True, active=True))
            self.submitted.append(run.run_id)
            done[run.run_id] = "created"
        return done

    def delete(self, runs):
        for run in runs:
            self.runs.pop(run.run_id, None)
            self.deleted.append(run.run_id)
        return [run.jobset_name for run in runs]

    def logs(self, run, request):
        return iter(())

    def close(self):
        pass


def statuses_of(expansion: Expansion, phase: Phase, reason: str = "") -> dict[str, RunStatus]:
    return {run.run_id: RunStatus(phase, reason) for run in expansion.runs}


# --- reconcile ----------------------------------------------------------------------------------------------


def test_reconcile_creates_prerequisites_first_and_waits_with_them(quickstart):
    actions = reconcile(quickstart.runs, statuses_of(quickstart, Phase.PENDING, "NotCreated"))
    assert actions[0].kind == ActionKind.CREATE and actions[0].run.prerequisite == "teacher"
    assert {a.kind for a in actions[1:]} == {ActionKind.WAIT}
    assert all(a.waiting_for == Waiting.PREREQUISITE for a in actions[1:])


def test_reconcile_blocks_on_a_failed_prerequisite_unless_retrying(quickstart):
    statuses = statuses_of(quickstart, Phase.PENDING, "NotCreated")
    statuses[quickstart.prerequisites[0].run_id] = RunStatus(Phase.FAILED, "TrainerExit")
    assert {a.kind for a in reconcile(quickstart.runs, statuses)[1:]} == {ActionKind.BLOCKED}
    retried = reconcile(quickstart.runs, statuses, retry_failed=True)
    assert retried[0].kind == ActionKind.RECREATE and {a.kind for a in retried[1:]} == {ActionKind.WAIT}


def test_a_run_being_deleted_is_waited_for_and_never_handed_over(quickstart):
    statuses = statuses_of(quickstart, Phase.SUCCEEDED)
    point = quickstart.points[0]
    statuses[point.run_id] = RunStatus(Phase.PENDING, "Deleting", "the previous run is still being deleted")
    actions = reconcile(quickstart.runs, statuses)
    waiting = [a for a in actions if a.kind == ActionKind.WAIT]
    assert [a.run for a in waiting] == [point] and waiting[0].waiting_for == Waiting.DELETION
    assert to_submit(MemoryBackend(handles_dependencies=True), actions) == []


def test_to_submit_hands_waiting_points_only_to_a_backend_that_orders_them(quickstart):
    actions = reconcile(quickstart.runs, statuses_of(quickstart, Phase.PENDING, "NotCreated"))
    assert to_submit(MemoryBackend(handles_dependencies=False), actions) == [quickstart.prerequisites[0]]
    assert to_submit(MemoryBackend(handles_dependencies=True), actions) == list(quickstart.runs)


# --- launch -------------------------------------------------------------------------------------------------


def test_launch_submits_what_is_missing_and_nothing_twice(quickstart):
    backend, clock = MemoryBackend(), FakeClock()
    report = launch(quickstart, backend, wall=clock, clock=clock, sleep=clock.sleep)
    assert report.submitted == {quickstart.prerequisites[0].run_id: "created"}
    again = launch(quickstart, backend, wall=clock, clock=clock, sleep=clock.sleep)
    assert again.submitted == {} and backend.submitted == [quickstart.prerequisites[0].run_id]


def test_a_dry_run_creates_and_deletes_nothing(quickstart):
    backend = MemoryBackend(finish_after=0, fail=frozenset({quickstart.prerequisites[0].run_id}))
    backend.submit([quickstart.prerequisites[0]], quickstart)
    backend.submitted.clear()
    report = launch(quickstart, backend, retry_failed=True, dry_run="server")
    assert report.submitted == {quickstart.prerequisites[0].run_id: DRY_RUN_RECREATE}
    assert backend.deleted == [] and backend.submitted == []


def test_retry_failed_deletes_then_creates_again(quickstart):
    teacher = quickstart.prerequisites[0].run_id
    backend, clock = MemoryBackend(finish_after=0, fail=frozenset({teacher})), FakeClock()
    backend.submit([quickstart.prerequisites[0]], quickstart)
    report = launch(quickstart, backend, retry_failed=True, wall=clock, clock=clock, sleep=clock.sleep)
    assert backend.deleted == [teacher] and report.submitted == {teacher: "created"}


def test_a_deletion_that_never_finishes_gives_up_on_the_fake_clock(quickstart):
    teacher = quickstart.prerequisites[0]

    class Stuck(MemoryBackend):
        def delete(self, runs):
            self.deleted.extend(run.run_id for run in runs)
            return []

    backend, clock = Stuck(finish_after=0, fail=frozenset({teacher.run_id})), FakeClock()
    backend.submit([teacher], quickstart)
    with pytest.raises(DistillctlError, match="not deleted in time"):
        launch(quickstart, backend, retry_failed=True, wall=clock, clock=clock, sleep=clock.sleep)
    assert clock.now > 120 and set(clock.slept) == {1.0}


# --- follow -------------------------------------------------------------------------------------------------


def run_follow(expansion, backend, **kw) -> tuple[list, FakeClock]:
    clock = FakeClock()
    launch(expansion, backend, wall=clock, clock=clock, sleep=clock.sleep)
    events = list(follow(expansion, backend, wall=clock, clock=clock, sleep=clock.sleep, poll=2.0, **kw))
    return events, clock


def test_follow_submits_points_once_their_prerequisite_succeeded_and_ends_succeeded(quickstart):
    backend = MemoryBackend(finish_after=2)
    events, clock = run_follow(quickstart, backend)
    assert isinstance(events[-1], Finished) and events[-1].outcome is Outcome.SUCCEEDED
    polled = [e for e in events if isinstance(e, Polled)]
    handed = [run.run_id for e in polled for run in e.submitted]
    assert handed == [p.run_id for p in quickstart.points]  # after the teacher, each once
    assert backend.submitted[0] == quickstart.prerequisites[0].run_id and len(backend.submitted) == 6
    assert clock.slept == [2.0] * (len(polled) - 1)  # slept between looks only, never after the end


def test_follow_ends_failed_when_a_prerequisite_fails_and_blocks_the_points(quickstart):
    backend = MemoryBackend(finish_after=1, fail=frozenset({quickstart.prerequisites[0].run_id}))
    events, _ = run_follow(quickstart, backend)
    end = events[-1]
    assert end.outcome is Outcome.FAILED and len(end.runs) == len(quickstart.runs)
    assert backend.submitted == [quickstart.prerequisites[0].run_id]


def test_follow_stops_at_once_when_kueue_will_never_admit(quickstart):
    backend = MemoryBackend(never_admit=frozenset({quickstart.prerequisites[0].run_id}))
    events, clock = run_follow(quickstart, backend)
    assert events[-1].outcome is Outcome.NEVER_ADMITTED and clock.slept == []


def test_follow_times_out_on_the_fake_clock(quickstart):
    backend = MemoryBackend(finish_after=10_000)
    events, clock = run_follow(quickstart, backend, timeout=30.0)
    assert events[-1].outcome is Outcome.TIMED_OUT and 30.0 < clock.now <= 34.0


def test_follow_reads_outputs_into_each_event(quickstart):
    backend = MemoryBackend(finish_after=1)
    events, _ = run_follow(quickstart, backend)
    first = events[0]
    assert set(first.state.outputs) == {run.run_id for run in quickstart.runs}
    assert all(isinstance(o, RunOutputs) for o in first.state.outputs.values())


def test_follow_does_not_undo_a_cancel(quickstart):
    """`cancel` while a `sweep --wait` follows: the follower saw the teacher exist, then gone (deleted), and
    created it again within a poll. A run stopped on purpose stays stopped; the follow ends with it and the
    points that waited on it; a run lost to a crash (SupervisorGone) is still handed over again."""
    backend = MemoryBackend(finish_after=10_000)
    clock = FakeClock()
    teacher = quickstart.prerequisites[0]
    launch(quickstart, backend, wall=clock, clock=clock, sleep=clock.sleep)

    def cancel_after_a_look(seconds: float) -> None:
        clock.sleep(seconds)
        backend.delete([teacher])  # what `distillctl cancel` does, from another terminal

    events = list(follow(quickstart, backend, wall=clock, clock=clock, sleep=cancel_after_a_look, timeout=60.0))
    assert backend.submitted.count(teacher.run_id) == 1, backend.submitted  # never created again
    end = events[-1]
    assert isinstance(end, Finished) and end.outcome is Outcome.FAILED
    assert {run.run_id for run in end.runs} == {run.run_id for run in quickstart.runs}
    assert clock.now < 60.0  # it ended, not timed out


def test_follow_hands_over_again_a_run_lost_to_a_crash(quickstart):
    from orchestrator.core import follow as follow_module

    lost = RunStatus(Phase.PENDING, "SupervisorGone")
    assert not follow_module._stopped_on_purpose(lost)
    assert follow_module._stopped_on_purpose(RunStatus(Phase.PENDING, "Preempted"))
    assert follow_module._stopped_on_purpose(RunStatus(Phase.PENDING, "NotCreated"))


@dataclasses.dataclass
class QueueBackend(MemoryBackend):
    """Created runs in `queued` wait for Kueue for ever; the others run for ever."""

    queued: frozenset[str] = frozenset()

    def observe(self, expansion):
        seen = {}
        for run_id in self.runs:
            if run_id in self.queued:
                seen[run_id] = Observation(exists=True, suspended=True, queue_reason="Pending", queue_message="quota")
            else:
                seen[run_id] = Observation(exists=True, active=True)
        return seen


def test_a_timeout_with_runs_queued_behind_the_sweeps_own_is_a_timeout_not_a_quota_problem(tmp_path):
    # One point ran, the other waited for the quota it held: exit 9 and "check the ClusterQueue's quota".
    from tests.sweep_support import expanded, sweep_data

    expansion = expanded(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.7]}))
    first, second = expansion.runs
    behind = QueueBackend(queued=frozenset({second.run_id}))
    events, _ = run_follow(expansion, behind, timeout=10.0)
    assert events[-1].outcome is Outcome.TIMED_OUT
    nowhere = QueueBackend(queued=frozenset({first.run_id, second.run_id}))
    events, _ = run_follow(expansion, nowhere, timeout=10.0)
    assert events[-1].outcome is Outcome.TIMED_OUT_QUEUED and len(events[-1].runs) == 2


@dataclasses.dataclass
class OutageBackend(MemoryBackend):
    """The API server does not answer for `down` polls after the first look."""

    down: range = range(0)
    looks: int = 0

    def observe(self, expansion):
        self.looks += 1
        if self.looks in self.down:
            raise DistillctlError("cannot reach the Kubernetes API server", exit_code=ExitCode.CLUSTER_UNREACHABLE)
        return super().observe(expansion)


def test_a_follower_rides_out_an_api_server_outage_and_gives_up_after_a_while(quickstart):
    # A control-plane upgrade (minutes) ended `sweep --wait` with exit 5 after ~7 s while the runs went on.
    from orchestrator.core.follow import OUTAGE_SECONDS

    said = []
    backend = OutageBackend(finish_after=2, down=range(3, 40))  # 37 polls of 2 s: 74 s without an answer
    events, _ = run_follow(quickstart, backend, on_outage=said.append)
    assert events[-1].outcome is Outcome.SUCCEEDED
    assert len(said) == 2 and "retrying for up to" in said[0] and "answers again, after 74 s" in said[1], said
    gone = OutageBackend(finish_after=2, down=range(3, 10**6))
    with pytest.raises(DistillctlError) as e:
        run_follow(quickstart, gone)
    assert e.value.exit_code == ExitCode.CLUSTER_UNREACHABLE and gone.looks * 2.0 > OUTAGE_SECONDS
