"""The phase people see, derived from backend observations and run outputs."""

from __future__ import annotations

from distillspec.contract import LABEL_QUEUE
from orchestrator.core.run_status import Condition, Observation, derive
from orchestrator.outputs import LogLine, RunOutputs

NOW = 1_000_000.0


def outputs(summary=None, times=()):
    log = tuple(
        LogLine(10 * (i + 1), t, None, None, {"distill/kl_div_T1": (2.0 * (i + 1), 2.0)}) for i, t in enumerate(times)
    )
    return RunOutputs("p", log, summary)


def status(observation, out=None, stall_after=300.0):
    return derive(observation, out or outputs(), now=NOW, stall_after=stall_after, total_steps=100)


def test_not_created():
    s = status(Observation(exists=False))
    assert s.phase == "Pending" and s.shown == "Pending (NotCreated)"


def test_queued_with_kueue_reason():
    s = status(
        Observation(
            exists=True,
            suspended=True,
            queue_reason="Pending",
            queue_message="couldn't assign flavors to pod set slice-job: insufficient unused quota",
        )
    )
    assert s.phase == "Queued" and s.reason == "Pending" and "insufficient" in s.message


def test_running_with_progress():
    s = status(Observation(exists=True, active=True, created_at=NOW - 60), outputs(times=(NOW - 20, NOW - 10)))
    assert (s.phase, s.step, s.total_steps, s.kl_div_t1, s.age_seconds) == ("Running", 20, 100, 2.0, 60)


def test_stalled_when_metrics_stop():
    s = status(Observation(exists=True, active=True, created_at=NOW - 4000), outputs(times=(NOW - 1000,)))
    assert s.phase == "Stalled" and "1000s" in s.message


def test_restarting_between_attempts():
    s = status(Observation(exists=True, restarts=1, active=False, created_at=NOW - 10))
    assert s.phase == "Restarting" and s.shown == "Restarting 1"


def test_failed_keeps_upstream_reason():
    s = status(
        Observation(
            exists=True, conditions=(Condition("Failed", "True", "ReachedMaxRestarts", "jobset failed"),), restarts=3
        )
    )
    assert s.shown == "Failed (ReachedMaxRestarts)" and s.terminal


def test_failed_says_what_the_trainer_said():
    # "Failed (UserError: the trainer exited with 1)": the cause only in summary.json and the log.
    said = "no files at data.path 'nope.txt' (hint: point data.path at text files)"
    failed = Observation(
        exists=True, conditions=(Condition("Failed", "True", "UserError", "the trainer exited with 1"),)
    )
    s = status(failed, outputs({"status": "failed", "exit_code": 1, "message": said}))
    assert s.message == f"the trainer exited with 1: {said}"
    s = status(failed, outputs({"status": "succeeded", "message": said}))  # not this verdict: nothing added
    assert s.message == "the trainer exited with 1"


def test_storage_the_trainer_could_not_write_reads_output_not_writable_whatever_the_cause():
    """A full disk ended the trainer with OutputNotWritable (exit 1): status read `Failed (UserError)`, while a
    folder the local supervisor could not write read `Failed (OutputNotWritable)`: one failure, two labels."""
    failed = Observation(
        exists=True, conditions=(Condition("Failed", "True", "UserError", "the trainer exited with 1"),)
    )
    said = {"status": "failed", "exit_code": 1, "failure_reason": "output_not_writable", "message": "OutputNotWritable"}
    assert status(failed, outputs(said)).shown == "Failed (OutputNotWritable)"
    assert status(failed, outputs({**said, "failure_reason": "user_error"})).shown == "Failed (UserError)"


def test_completed_and_reused_outputs():
    assert status(Observation(exists=True, conditions=(Condition("Completed", "True"),))).phase == "Succeeded"
    # The JobSet was garbage-collected after its TTL: the output storage still says it succeeded.
    assert status(Observation(exists=False), outputs({"status": "succeeded"})).phase == "Succeeded"


def test_diverged_beats_failed():
    failed = Observation(exists=True, conditions=(Condition("Failed", "True", "PodFailurePolicy"),))
    assert status(failed, outputs({"status": "diverged"})).phase == "Diverged"
    # The trainer names the first step that was not finite (the summary's step is where the check saw it).
    said = {"status": "diverged", "step": 50, "message": "the loss became NaN or infinite at step 37"}
    assert status(failed, outputs(said)).message == "the loss became NaN or infinite at step 37"


def test_a_run_being_deleted_is_pending_and_waited_for():

    s = status(Observation(exists=True, deleting=True, conditions=(Condition("Completed", "True"),)))
    assert s.shown == "Pending (Deleting)"


def test_kueue_saying_the_request_exceeds_the_queue_means_never():
    busy = status(
        Observation(
            exists=True,
            suspended=True,
            queue_reason="Pending",
            queue_message="insufficient unused quota for google.com/tpu in flavor f, 128 more needed",
        )
    )
    never = status(
        Observation(
            exists=True,
            suspended=True,
            queue_reason="Pending",
            queue_message=(
                "insufficient quota for google.com/tpu in flavor f, previously considered podsets requests (0) + current "
                "podset request (192) > maximum capacity (128)"
            ),
        )
    )
    assert not busy.never_admitted and never.never_admitted


def test_time_spent_queued_is_not_stalling():
    queued_long = Observation(exists=True, active=True, created_at=NOW - 4000, started_at=NOW - 60)
    assert status(queued_long).phase == "Running"
    assert (
        status(Observation(exists=True, active=True, created_at=NOW - 4000, started_at=NOW - 1000)).phase == "Stalled"
    )


def test_unreadable_outputs_never_claim_a_stall():
    unreadable = RunOutputs("gs://bkt/r", readable=False)
    assert status(Observation(exists=True, active=True, created_at=NOW - 4000), unreadable).phase == "Running"


def iso(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_retried_run_is_not_read_as_its_predecessors_verdict():
    old = outputs({"status": "diverged", "updated_at": iso(NOW - 600)})
    retried = Observation(exists=True, queue_reason="WaitingForSlot", created_at=NOW - 5)
    assert status(retried, old).phase == "Queued"
    running = Observation(exists=True, active=True, created_at=NOW - 30, started_at=NOW - 20)
    assert status(running, old).phase == "Running"
    fresh = outputs({"status": "diverged", "updated_at": iso(NOW - 1)})
    assert status(running, fresh).phase == "Diverged"


def test_a_resumed_run_is_not_stalled_by_the_previous_attempts_records():
    resumed = Observation(exists=True, active=True, created_at=NOW - 90_000, started_at=NOW - 30)
    assert status(resumed, outputs(times=(NOW - 86_400,))).phase == "Running"


def worker_failure(process_index: int, message: str, exit_code: int = 1, status: str = "failed") -> dict:
    """What `trainer.metrics_io.write_process_failure` leaves: summary.json's keys plus `process_index`."""
    return {
        "status": status,
        "exit_code": exit_code,
        "message": message,
        "process_index": process_index,
        "updated_at": iso(NOW - 5),
    }


def test_a_failed_worker_keeps_the_run_failed_after_the_jobset_is_gone():
    """Process 1 failed; process 0's summary.json still says running (or was never written) and the JobSet has been
    deleted: the worker's failure file in the output storage is the verdict, reason included."""
    why = "OutputNotWritable: gs://bkt/r/checkpoints: [Errno 13] Permission denied"
    for summary in ({"status": "running", "updated_at": iso(NOW - 60)}, None):
        out = RunOutputs("p", (), summary, failures=(worker_failure(1, why),))
        s = status(Observation(exists=False), out)
        assert s.shown == "Failed (TrainerExit)" and s.terminal
        assert s.message == f"exit code 1 on process 1: {why}"


def test_a_final_summary_beats_a_workers_failure_file():
    out = RunOutputs("p", (), {"status": "succeeded", "exit_code": 0}, failures=(worker_failure(3, "old attempt"),))
    assert status(Observation(exists=False), out).phase == "Succeeded"
    assert outputs({"status": "failed", "exit_code": 42}).verdict == {"status": "failed", "exit_code": 42}
    running = Observation(exists=True, active=True, created_at=NOW - 30, started_at=NOW - 20)
    # while the JobSet exists the backend speaks: a worker's failure file alone does not end the run
    assert status(running, RunOutputs("p", (), None, failures=(worker_failure(2, "x"),))).phase == "Running"


def test_failure_files_are_read_from_the_output_storage(tmp_path):
    from orchestrator.outputs import read_run_outputs

    run = tmp_path / "run"
    (run / "failures").mkdir(parents=True)
    (run / "summary.json").write_text('{"status": "running", "step": 20, "total_steps": 100}')
    (run / "failures" / "process-2.json").write_text(__import__("json").dumps(worker_failure(2, "disk gone", 42)))
    (run / "failures" / "process-1.json").write_text("{cut off")
    out = read_run_outputs(str(run))
    assert [f["process_index"] for f in out.failures] == [2]
    s = status(Observation(exists=False), out)
    assert s.shown == "Failed (TrainerExit)" and s.message == "exit code 42 on process 2: disk gone"


# --- pods that cannot start: Stuck, with the kubelet's or the scheduler's reason -----------------------------


def test_pending_pods_with_a_reason_read_stuck_not_running():
    from orchestrator.core.run_status import PodProblem

    pull = PodProblem(
        "ImagePullBackOff", 'Back-off pulling image "x": rpc error: code = NotFound desc = not found', "p-0"
    )
    secret = PodProblem("CreateContainerConfigError", 'secret "hf" not found', "p-1")
    unschedulable = PodProblem("Unschedulable", "0/36 nodes are available: 36 node(s) didn't match selector", "p-2")
    for problem, heals in ((pull, False), (secret, False), (unschedulable, True)):
        s = status(Observation(exists=True, active=True, created_at=NOW - 10, pod_problems=(problem,)))
        assert s.phase == "Stuck" and s.reason == problem.reason and problem.message in s.message
        assert s.will_not_start is (not heals) and s.shown == f"Stuck ({problem.reason})"
    # One that will not heal speaks for the run, whatever the order the pods came in.
    s = status(Observation(exists=True, active=True, pod_problems=(unschedulable, secret)))
    assert s.reason == "CreateContainerConfigError" and s.will_not_start


def test_a_registry_hiccup_is_shown_but_may_heal():
    from orchestrator.core.run_status import PodProblem

    for message in ("rpc error: code = Unavailable desc = i/o timeout", "context deadline exceeded"):
        assert PodProblem("ErrImagePull", message).heals
    for message in ("manifest unknown", "failed to authorize: 403 Forbidden", "pull access denied"):
        assert not PodProblem("ErrImagePull", message).heals
    assert not PodProblem("InvalidImageName", "").heals and PodProblem("FailedMount", "timed out").heals


def test_a_stopped_run_says_where_it_resumes_from():
    # "stopped with a checkpoint" was said also of a run stopped before its first step, which saved nothing.
    def stopped(**summary):
        s = status(Observation(exists=False), outputs({"status": "preempted", "exit_code": 143, **summary}))
        assert s.shown == "Pending (Preempted)"
        return s.message

    assert stopped(step=640, message="stopped by SIGTERM at step 640; checkpoint saved") == (
        "stopped at step 640 with a checkpoint; resumes from it when submitted again"
    )
    assert "before its first step, nothing saved; starts from step 0" in stopped(step=0)
    said = (
        "stopped by SIGTERM at step 30; no checkpoint (checkpoint.enabled is false): a rerun starts again from step 0"
    )
    assert stopped(step=30, message=said) == f"{said}; starts again when submitted"


def test_runs_left_in_another_queue_than_the_target_names_are_said(tmp_path):
    # target.queue edited to move a stuck grid: `sweep` said "2 unchanged" and nothing moved, without a word.
    from sweep_support import expanded, sweep_data

    from orchestrator.core.status import derive_all, queue_changes

    expansion = expanded(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.7]}))
    first, second = expansion.runs
    observed = {
        first.run_id: Observation(
            exists=True, suspended=True, queue_reason="Pending", labels=((LABEL_QUEUE, "old-queue"),)
        ),
        second.run_id: Observation(exists=True, active=True, labels=((LABEL_QUEUE, "multislice-queue"),)),
    }
    out = {run.run_id: outputs() for run in expansion.runs}
    statuses = derive_all(expansion, observed, out, now=NOW)
    (warning,) = queue_changes(expansion, observed, statuses)
    assert (
        warning.code == "queue_changed"
        and "1 unfinished run(s)" in warning.message
        and "'old-queue'" in warning.message
    )
    assert "cancel" in warning.hint and warning.severity == "warning"
    completed = (Condition("Completed", "True"),)
    finished = {
        **observed,
        first.run_id: Observation(exists=True, labels=((LABEL_QUEUE, "old-queue"),), conditions=completed),
    }
    assert queue_changes(expansion, finished, derive_all(expansion, finished, out, now=NOW)) == ()


def test_a_run_created_meanwhile_by_another_sweep_is_not_named_by_this_sweeps_jobset(tmp_path):
    # The loser of a race printed "exists (already there: ...) race-b-<id>", a JobSet that did not exist.
    from sweep_support import expanded, sweep_data

    from orchestrator.cli.views import launch_lines
    from orchestrator.core.launch import LaunchReport
    from orchestrator.core.reconcile import Action, ActionKind
    from orchestrator.core.status import SweepState

    expansion = expanded(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.7]}))
    first, second = expansion.runs
    statuses = {run.run_id: status(Observation(exists=False)) for run in expansion.runs}
    actions = tuple(Action(ActionKind.CREATE, run, "not created") for run in expansion.runs)
    report = LaunchReport(SweepState(statuses, {}), actions, {first.run_id: "created", second.run_id: "exists"})
    lines = [line.plain for line in launch_lines(report, None)]
    assert lines[0].startswith("  created ") and first.jobset_name in lines[0]
    assert lines[1].startswith("   exists run " + second.run_id) and second.jobset_name not in lines[1], lines
    assert "created at the same moment by another sweep or an earlier attempt: `distillctl status` shows it" in lines[1]
    assert lines[2] == "1 created, 1 unchanged"


def test_the_first_failed_worker_and_how_it_ended_are_read_from_failed_pods():
    # A run killed without a verdict (OOM) read only "applying FailJobSet failure policy action (first failed job...)".
    from orchestrator.backends.kubernetes.backend import failed_workers

    def pod(jobset: str, slice_: int, worker: int, code: int, reason: str = "Error") -> dict:
        labels = {
            "jobset.sigs.k8s.io/jobset-name": jobset,
            "jobset.sigs.k8s.io/job-index": str(slice_),
            "batch.kubernetes.io/job-completion-index": str(worker),
        }
        ended = {"terminated": {"exitCode": code, "reason": reason}}
        return {"metadata": {"labels": labels}, "status": {"containerStatuses": [{"state": ended}]}}

    pods = [pod("a", 1, 0, 1), pod("a", 0, 3, 137, "OOMKilled"), pod("b", 0, 0, 0), pod("b", 0, 1, 42)]
    assert failed_workers(pods) == {
        "a": "slice 0, worker 3 exited 137 (Killed, OOMKilled)",
        "b": "slice 0, worker 1 exited 42 (Retryable)",
    }
    failed = Condition("Failed", "True", "FailJobSetFailurePolicyAction", "first failed job: a-slice-job-0")
    s = status(Observation(exists=True, conditions=(failed,), failed_worker=failed_workers(pods)["a"]))
    assert s.message == "first failed job: a-slice-job-0: slice 0, worker 3 exited 137 (Killed, OOMKilled)"


def test_a_run_another_sweep_claimed_but_has_not_created_reads_claimed_and_is_waited_for(tmp_path):
    # A sweep killed between claiming a point and creating its JobSet held it for 2 minutes while `status` said
    # "NotCreated" with no reason and `sweep` said it "exists".
    import datetime

    from sweep_support import expanded, sweep_data

    from orchestrator.backends.kubernetes.backend import CLAIM_GRACE_SECONDS, claim_name, observations, pending_claims
    from orchestrator.core.reconcile import ActionKind, Waiting, reconcile

    expansion = expanded(tmp_path, sweep_data(axes={"loss.alpha.end": [0.3, 0.7, 0.9]}))
    ghosted, owned, ours = expansion.runs

    def lease(run, holder, age, owner_refs=()):
        born = datetime.datetime.fromtimestamp(NOW - age, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        metadata = {"name": claim_name(run.run_id), "creationTimestamp": born, "ownerReferences": list(owner_refs)}
        return {"metadata": metadata, "spec": {"holderIdentity": holder}}

    leases = [
        lease(ghosted, "ghost", 20),
        lease(owned, "other", 5, [{"kind": "JobSet", "name": "gone"}]),  # its JobSet is gone: stale, taken over
        lease(ours, ghosted.sweep, 5),  # this sweep's own (killed before its create): it creates the run
        {"metadata": {"name": "kube-scheduler", "creationTimestamp": "2026-12-01T00:00:00Z"}, "spec": {}},
    ]
    claims = pending_claims(leases, {}, now=NOW)
    assert set(claims) == {ghosted.run_id, ours.run_id}
    assert claims[ghosted.run_id].expires_at == NOW - 20 + CLAIM_GRACE_SECONDS
    assert pending_claims([lease(ghosted, "ghost", CLAIM_GRACE_SECONDS + 1)], {}, now=NOW) == {}  # stale: taken over
    assert pending_claims(leases, {ghosted.run_id: {}}, now=NOW).keys() == {ours.run_id}  # its JobSet exists

    observed = observations({}, expansion, {}, {}, None, claims)
    assert set(observed) == {ghosted.run_id}
    statuses = {run.run_id: status(observed.get(run.run_id, Observation(exists=False))) for run in expansion.runs}
    s = statuses[ghosted.run_id]
    assert s.shown == "Pending (Claimed) (owned by sweep ghost)"
    assert s.message == (
        f"claimed 20 s ago by sweep ghost, which has not created its run yet; if it never does (killed in between), "
        f"a sweep takes the point over in {CLAIM_GRACE_SECONDS - 20} s"
    )
    actions = {a.run.run_id: a for a in reconcile(expansion.runs, statuses)}
    assert (actions[ghosted.run_id].kind, actions[ghosted.run_id].waiting_for) == (ActionKind.WAIT, Waiting.CLAIM)
    assert actions[owned.run_id].kind == actions[ours.run_id].kind == ActionKind.CREATE


def test_runs_created_with_other_labels_than_the_target_gives_are_said(tmp_path):
    # `sweep --label team=b` (or an edited target.labels) on a running grid said "2 unchanged": the runs kept
    # team=a for cost attribution, without a word.
    from sweep_support import expanded, sweep_data

    from orchestrator.core.status import derive_all, label_changes

    data = sweep_data(axes={"loss.alpha.end": [0.3, 0.7, 0.9]})
    data["target"]["labels"] = {"team": "b", "cost-center": "42"}
    expansion = expanded(tmp_path, data)
    first, second, third = expansion.runs
    done = (Condition("Completed", "True"),)
    observed = {
        first.run_id: Observation(exists=True, active=True, labels=(("cost-center", "42"), ("team", "a"))),
        second.run_id: Observation(exists=True, active=True, labels=(("cost-center", "42"),)),
        third.run_id: Observation(exists=True, conditions=done, labels=(("team", "old"),)),  # finished: left alone
    }
    out = {run.run_id: outputs() for run in expansion.runs}
    (warning,) = label_changes(expansion, observed, derive_all(expansion, observed, out, now=NOW))
    assert warning.code == "labels_changed" and warning.severity == "warning"
    assert warning.message.startswith("2 unfinished run(s) of this sweep were created with other labels than")
    assert "team: 'a', (none) instead of 'b'" in warning.message and "cost-center" not in warning.message
    assert f"kubectl label jobsets -l distillctl.dev/sweep={expansion.sweep.name}" in warning.hint
    same = {first.run_id: Observation(exists=True, labels=(("cost-center", "42"), ("team", "b"), ("x", "y")))}
    assert label_changes(expansion, same, derive_all(expansion, same, out, now=NOW)) == ()


def test_a_follow_that_ends_on_stopped_runs_does_not_send_them_to_retry_failed():
    # A cancelled run (Pending, Preempted) was told "--retry-failed runs them again": `sweep` alone resumes it.
    from orchestrator.cli.launch import _unsucceeded_hint
    from orchestrator.core.run_status import RunStatus

    stopped, failed = RunStatus("Pending", "Preempted"), RunStatus("Failed", "UserError")
    assert _unsucceeded_hint([stopped], blocked=False).endswith("`distillctl sweep` again resumes the stopped ones")
    assert "--retry-failed" not in _unsucceeded_hint([stopped], blocked=False)
    assert _unsucceeded_hint([failed], blocked=False).endswith("--retry-failed runs the failed ones again")
    both = _unsucceeded_hint([failed, stopped], blocked=False)
    assert "--retry-failed runs the failed ones again; `distillctl sweep` again resumes the stopped ones" in both


def test_a_run_queued_again_by_a_supervisor_now_gone_says_so_not_its_earlier_attempt():
    # Cancelled (preempted), submitted again, its supervisor then SIGKILLed: it read "Pending (Preempted)" with the
    # earlier attempt's words, not that nothing will start it.
    lost = "its local supervisor (pid 7) is gone before starting it; `distillctl sweep` submits it again"
    for verdict in ({"status": "preempted", "exit_code": 143, "step": 0}, {"status": "failed", "exit_code": 1}):
        s = status(Observation(exists=False, lost=lost), outputs(verdict))
        assert s.shown == "Pending (SupervisorGone)" and s.message == lost, s
