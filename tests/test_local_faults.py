"""The local backend under faults of its storage and of its supervisor, with real trainer processes through the
CLI: a run whose folder cannot be written fails alone; a supervisor's death is shown, not hidden; a re-run after a
crash says what it restarted and starts no second supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.backends.local import claims as local_claims
from orchestrator.backends.local import state
from orchestrator.backends.local.supervisor import has_checkpoint
from tests.test_launch_local import STUDENT, distillctl, status, wait_until

pytestmark = pytest.mark.slow

TEACHER = """\
name: teacher
mode: pretrain
student: {model: tiny-4l}
batch: {per_device_batch_size: 4, max_target_length: 32}
steps: 20
optimizer: {learning_rate: 3.0e-3}
logging: {every_steps: 5}
checkpoint: {every_steps: 10}
"""
SWEEP = """\
name: {name}
spec: student.yaml
overrides:
  teacher.load_parameters_path: ${{prerequisites.teacher.output}}/checkpoints
  steps: {steps}
prerequisites:
  teacher: {{spec: teacher.yaml, overrides: {{steps: {teacher_steps}}}}}
axes:
  loss.alpha.end: [0.3, 0.7]
baseline:
  - {{loss.alpha: 0.0}}
target: {{kind: local, output_base: {base}, parallelism: {parallelism}}}
"""


def write_sweep(folder: Path, name: str, *, steps: int = 20, teacher_steps: int = 20, parallelism: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "teacher.yaml").write_text(TEACHER)
    (folder / "student.yaml").write_text(STUDENT)
    path = folder / f"{name}.yaml"
    text = SWEEP.format(
        name=name, steps=steps, teacher_steps=teacher_steps, base=folder / "runs", parallelism=parallelism
    )
    path.write_text(text)
    return path


def by_role(rows: dict[str, dict]) -> tuple[dict, list[dict]]:
    """The teacher's row, and the points' rows in sweep order."""
    teacher = next(r for r in rows.values() if r["role"] == "prerequisite")
    return teacher, [r for r in rows.values() if r["role"] != "prerequisite"]


def all_terminal(rows: dict[str, dict]) -> dict[str, dict] | None:
    return rows if all(r["phase"] in ("Succeeded", "Failed", "Diverged") for r in rows.values()) else None


@contextlib.contextmanager
def immutable(path: Path):
    """The folder and everything in it cannot be changed, even by root (chattr +i), until the block ends."""
    subprocess.run(["chattr", "-R", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], check=True)


def supervisors(folder: Path) -> list[int]:
    """Live supervisor processes of the sweep whose supervisor folder is `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if SUPERVISOR.encode() in argv and str(folder).encode() in argv:
            if local_claims.alive(int(entry.name)):
                found.append(int(entry.name))
    return found


REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator.cli"]
SUPERVISOR = "orchestrator.backends.local.supervisor"
QUIET = {"cwd": REPO, "text": True, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")


@needs_root
def test_runs_whose_folders_cannot_be_written_fail_alone(tmp_path):
    """One point's folder is a file; another's becomes immutable while it is queued. Both fail as
    OutputNotWritable, the teacher and the third point train, and `sweep --wait` exits 1 naming both."""
    sweep = write_sweep(tmp_path, "faults", parallelism=1)
    teacher, points = by_role(status(sweep))
    as_file, frozen, healthy = (Path(p["output_path"]) for p in points)
    as_file.parent.mkdir(parents=True)
    as_file.write_text("a file where the run's folder belongs")
    first = distillctl("sweep", str(sweep), check=True)
    assert f"failed {points[0]['jobset']}" in " ".join(first.stdout.split()), first.stdout
    assert "1 failed at once" in first.stdout
    assert local_claims.read_claim(str(frozen)).state == "queued"  # waits for the teacher
    with immutable(frozen):
        done = distillctl("sweep", str(sweep), "--wait", "--timeout", "500")
        assert done.returncode == 1, done.stdout + done.stderr
        for run, path in ((points[0], as_file), (points[1], frozen)):
            assert run["jobset"] in done.stderr and "OutputNotWritable" in done.stderr
            row = status(sweep)[run["run_id"]]
            assert (row["phase"], row["reason"]) == ("Failed", "OutputNotWritable"), row
            assert row["message"].startswith(str(path)), row["message"]
        # the file is named as the cause (it read "File exists"), and the hint says to fix the folders first
        assert "a file is where the run's folder goes" in status(sweep)[points[0]["run_id"]]["message"]
        assert "make the named output folders writable first" in " ".join(done.stderr.split())
        rows = status(sweep)
        assert rows[teacher["run_id"]]["phase"] == rows[points[2]["run_id"]]["phase"] == "Succeeded"
        assert json.loads((healthy / "summary.json").read_text())["status"] == "succeeded"
        log = (state.state_dir(str(tmp_path / "runs"), "faults") / state.LOG).read_text()
        assert "Traceback" not in log and log.count("supervising sweep folder") == 1, log
        # Retrying while the folder is still immutable fails the run again, alone and at once.
        again = distillctl("sweep", str(sweep), "--retry-failed")
        assert again.returncode == 0 and "2 failed at once" in again.stdout, again.stdout + again.stderr
    # Once it can be written, a retry trains it.
    as_file.unlink()
    retried = distillctl("sweep", str(sweep), "--retry-failed", "--wait", "--timeout", "500")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert {r["phase"] for r in status(sweep).values()} == {"Succeeded"}


@needs_root
def test_a_prerequisite_whose_folder_goes_read_only_mid_run_fails_and_blocks_its_points(tmp_path):
    """The teacher's folder becomes immutable while it trains and its trainer dies: the supervisor cannot record
    the exit, fails the teacher as OutputNotWritable, blocks the points and exits; `sweep --wait` exits 1."""
    sweep = write_sweep(tmp_path, "midrun", teacher_steps=100000)
    teacher, _ = by_role(status(sweep))
    folder = Path(teacher["output_path"])
    distillctl("sweep", str(sweep), check=True)
    wait_until(lambda: (status(sweep)[teacher["run_id"]]["step"] or 0) > 0, what="the teacher to train")
    claim = local_claims.read_claim(str(folder))
    with immutable(folder):
        os.killpg(claim.pid, signal.SIGKILL)
        done = distillctl("sweep", str(sweep), "--wait", "--timeout", "300")
        assert done.returncode == 1, done.stdout + done.stderr
        row = status(sweep)[teacher["run_id"]]
        assert (row["phase"], row["reason"]) == ("Failed", "OutputNotWritable"), row
        assert row["message"].startswith(str(folder)) and "Operation not permitted" in row["message"]
        assert "blocked" in done.stdout or "Pending" in done.stdout
        # The points are counted as blocked, not listed as "Pending (NotCreated: not submitted yet)".
        assert "blocked by a failed prerequisite" in done.stderr and "not submitted yet" not in done.stderr
        wait_until(lambda: not supervisors(state.state_dir(str(tmp_path / "runs"), "midrun")), 30, "the exit")


def test_a_supervisor_crash_reaches_the_terminal_and_status(tmp_path):
    """A malformed order in the supervisor folder (only a bug writes one) kills the supervisor. Taken before this
    sweep's orders, `sweep` prints the supervisor's error; taken after, the runs it had claimed show
    Failed (SupervisorCrashed) with that error, not Pending forever."""
    bad = {"orders": [{"run_id": "x", "not_an_order_field": 1}], "parallelism": 1}
    early = write_sweep(tmp_path / "early", "early")
    folder = state.state_dir(str(tmp_path / "early" / "runs"), "early")
    state.ensure(folder)
    state.post_orders(folder, "bad", bad)
    done = distillctl("sweep", str(early))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the local supervisor failed: TypeError" in done.stderr and str(folder / state.LOG) in done.stderr
    late = write_sweep(tmp_path / "late", "late")
    folder = state.state_dir(str(tmp_path / "late" / "runs"), "late")
    state.ensure(folder)
    state.post_orders(folder, "bad", bad)
    os.utime(state.order_path(folder, "bad"), (time.time() + 3600,) * 2)  # taken after this sweep's
    distillctl("sweep", str(late), check=True)
    rows = wait_until(lambda: all_terminal(status(late)), 60, "the crash to show")
    assert {(r["phase"], r["reason"]) for r in rows.values()} == {("Failed", "SupervisorCrashed")}, rows
    assert all("TypeError" in r["message"] and state.LOG in r["message"] for r in rows.values())


def test_a_trainer_the_supervisor_restarts_is_said_in_both_logs(tmp_path):
    # kill -9 of a trainer: the supervisor restarted it and said nothing anywhere; `logs` only started over.
    sweep = write_sweep(tmp_path, "restarts", teacher_steps=100000)
    teacher, _ = by_role(status(sweep))
    distillctl("sweep", str(sweep), check=True)
    try:
        wait_until(lambda: (status(sweep)[teacher["run_id"]]["step"] or 0) > 0, what="the teacher to train")
        claim = local_claims.read_claim(teacher["output_path"])
        os.killpg(claim.pid, signal.SIGKILL)
        said = "the trainer exited with 137 (SIGKILL): restart 1 of"
        log = Path(teacher["output_path"]) / local_claims.LOG_FILE
        wait_until(lambda: said in log.read_text(errors="replace"), 60, "the restart in the run's log")
        supervisor_log = state.state_dir(str(tmp_path / "runs"), "restarts") / state.LOG
        assert f"run {teacher['run_id']}: {said}" in supervisor_log.read_text()
        assert said in distillctl("logs", str(sweep), "teacher", check=True).stdout
    finally:
        distillctl("cancel", str(sweep), "--yes")


def test_a_rerun_after_a_crash_says_it_restarted_and_keeps_one_supervisor(tmp_path):
    """kill -9 of the supervisor and the teacher's trainer after its first checkpoint: `sweep` again restarts the
    teacher from its checkpoint and says so; more `sweep`s at once start no second supervisor."""
    sweep = write_sweep(tmp_path, "crash", teacher_steps=100000, parallelism=2)
    teacher, points = by_role(status(sweep))
    folder = state.state_dir(str(tmp_path / "runs"), "crash")
    distillctl("sweep", str(sweep), check=True)
    try:
        wait_until(lambda: has_checkpoint(teacher["output_path"]), what="the teacher's first checkpoint")
        claim = local_claims.read_claim(teacher["output_path"])
        [first] = supervisors(folder)
        os.kill(first, signal.SIGKILL)
        os.killpg(claim.pid, signal.SIGKILL)
        wait_until(lambda: not local_claims.alive(claim.pid) and not supervisors(folder), 30, "the deaths")
        # Until then `status` says what happened: the teacher's outputs say running, nothing runs it; the points
        # were submitted, and their supervisor is gone (not "NotCreated: not submitted yet").
        rows = status(sweep)
        assert (rows[teacher["run_id"]]["phase"], rows[teacher["run_id"]]["reason"]) == ("Pending", "Orphaned")
        assert {(rows[p["run_id"]]["phase"], rows[p["run_id"]]["reason"]) for p in points} == {
            ("Pending", "SupervisorGone")
        }, rows
        assert all(f"(pid {first})" in rows[p["run_id"]]["message"] for p in points), rows
        again = distillctl("sweep", str(sweep), check=True)
        lines = {line.split()[1]: line.split()[0] for line in again.stdout.splitlines() if len(line.split()) > 1}
        assert lines[teacher["jobset"]] == "restarted", again.stdout
        assert {lines[p["jobset"]] for p in points} == {"queued"}, again.stdout
        assert "restarted 1 run(s) from their checkpoints" in again.stdout and "exists" not in again.stdout
        # Two `sweep --wait` at once while it runs, polling: they find everything there and start nothing.
        racing = [subprocess.Popen([*CLI, "sweep", str(sweep), "--wait", "--timeout", "10"], **QUIET) for _ in "ab"]
        for proc in racing:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 3 and "0 created" in out, out + err  # 3: timed out, the teacher trains on
        # Two supervisors started by hand with orders for runs the sweep's supervisor owns: they wait for the lock
        # until it takes their orders (its receipts say the runs exist), then exit.
        point = points[0]
        orders = [{"run_id": point["run_id"], "sweep": "crash", "output_path": point["output_path"], "spec_json": ""}]
        for submission in ("hand1", "hand2"):
            state.post_orders(folder, submission, {"orders": orders, "parallelism": 2})
        extra = [
            subprocess.Popen([sys.executable, "-m", SUPERVISOR, str(folder), s], **QUIET) for s in ("hand1", "hand2")
        ]
        assert [proc.wait(timeout=60) for proc in extra] == [0, 0]
        assert (
            state.pop_receipt(folder, "hand1") == state.pop_receipt(folder, "hand2") == {points[0]["run_id"]: "exists"}
        )
        [holder] = wait_until(lambda: supervisors(folder) if len(supervisors(folder)) == 1 else None, 30, "one")
        assert int((folder / state.LOCK).read_text()) == holder
        owners = {local_claims.read_claim(r["output_path"]).supervisor_pid for r in [teacher, *points]}
        assert owners == {holder}
        assert status(sweep)[teacher["run_id"]]["phase"] == "Running"
    finally:
        distillctl("cancel", str(sweep), "--yes")


def trainers_of(output_path: str) -> list[int]:
    """Live trainer processes (`python -m trainer`) writing to the run folder `output_path` (their log is open)."""
    found = []
    log = str(Path(output_path) / local_claims.LOG_FILE)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        if b"trainer" in argv and log in open_files(fds) and local_claims.alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def open_files(fds: list[Path]) -> set[str]:
    """What the descriptors `fds` (links under /proc/<pid>/fd) name. A descriptor closed since it was listed is
    skipped, not the process: a trainer saving a checkpoint opens and closes files all the time, and one such
    race made a live trainer look gone."""
    named = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            named.add(os.readlink(fd))
    return named


def test_a_supervisor_stopped_by_sigterm_stops_its_trainers_and_leaves_its_runs_resumable(tmp_path):
    """SIGTERM (a shutdown, `kill`) killed the supervisor at once: its trainer trained on unsupervised. It now
    stops its trainers as `cancel` does (each saves a checkpoint), gives their runs back and says so."""
    sweep = write_sweep(tmp_path, "term", teacher_steps=100000)
    teacher, points = by_role(status(sweep))
    folder = state.state_dir(str(tmp_path / "runs"), "term")
    distillctl("sweep", str(sweep), check=True)
    try:
        wait_until(lambda: has_checkpoint(teacher["output_path"]), what="the teacher's first checkpoint")
        [supervisor] = supervisors(folder)
        os.kill(supervisor, signal.SIGTERM)
        wait_until(lambda: not supervisors(folder) and not trainers_of(teacher["output_path"]), 90, "the stop")
        rows = status(sweep)
        assert (rows[teacher["run_id"]]["phase"], rows[teacher["run_id"]]["reason"]) == ("Pending", "Preempted")
        assert {rows[p["run_id"]]["reason"] for p in points} == {"SupervisorGone"}, rows
        # The table says why each waits and what starts it (the reason alone did not; the JSON had it).
        table = distillctl("status", str(sweep), check=True).stdout
        assert "why" in table and "`distillctl sweep` submits it again" in table, table
        assert "with a checkpoint; resumes from it when submitted again" in table, table
        log = (folder / state.LOG).read_text()
        assert "stopped by SIGTERM: stopping 1 trainer(s)" in log and "Traceback" not in log, log
        summary = json.loads((Path(teacher["output_path"]) / "summary.json").read_text())
        assert summary["status"] == "preempted"  # it saved a checkpoint and exited 143
        again = distillctl("sweep", str(sweep), check=True)
        assert "restarted 1 run(s) from their checkpoints" in again.stdout, again.stdout
    finally:
        distillctl("cancel", str(sweep), "--yes")


def _orphan_trainer(folder: Path, output_path: str) -> int:
    """kill -9 of the sweep's supervisor once the run at `output_path` has a checkpoint: the pid of the trainer
    it leaves running."""
    wait_until(lambda: has_checkpoint(output_path), what="the run's first checkpoint")
    [first] = supervisors(folder)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not supervisors(folder), 30, "the supervisor's death")
    [orphan] = trainers_of(output_path)
    return orphan


def _resumed_after(orphan: int, output_path: str, folder: Path) -> None:
    """kill -9 of the orphaned trainer: its run is resumed by a new trainer, as the supervisor's log says."""
    os.kill(orphan, signal.SIGKILL)
    claim = wait_until(
        lambda: (c := local_claims.read_claim(output_path)) and c.state == "running" and c.pid != orphan and c,
        60,
        "the run resumed",
    )
    assert local_claims.alive(claim.pid) and "exited; resuming" in (folder / state.LOG).read_text()


def test_a_trainer_a_dead_supervisor_left_running_holds_its_slot_and_is_resumed_when_it_dies(tmp_path):
    """kill -9 of the supervisor alone: its trainer runs on. `sweep` again started a second trainer beside it
    (parallelism 1 exceeded). The new supervisor counts it, starts nothing while it runs, and resumes its run
    from the checkpoint once it dies."""
    sweep = write_sweep(tmp_path, "orphan", teacher_steps=100000, parallelism=1)
    teacher, points = by_role(status(sweep))
    folder = state.state_dir(str(tmp_path / "runs"), "orphan")
    distillctl("sweep", str(sweep), check=True)
    try:
        orphan = _orphan_trainer(folder, teacher["output_path"])
        again = distillctl("sweep", str(sweep), check=True)
        assert "3 created" in again.stdout and "exists: Running" in again.stdout, again.stdout
        time.sleep(5)  # the new supervisor's turns: nothing else starts
        assert trainers_of(teacher["output_path"]) == [orphan]
        assert all(not trainers_of(p["output_path"]) for p in points)
        _resumed_after(orphan, teacher["output_path"], folder)
    finally:
        distillctl("cancel", str(sweep), "--yes")


def _one_run_sweep(tmp_path: Path, name: str, overrides: str) -> tuple[Path, dict, Path]:
    """A sweep of the tiny teacher alone with `overrides` (flow YAML), parallelism 1: its file, its one run's status
    row and its supervisor's folder."""
    (tmp_path / "teacher.yaml").write_text(TEACHER)
    sweep = tmp_path / f"{name}.yaml"
    sweep.write_text(
        f"name: {name}\nspec: teacher.yaml\noverrides: {overrides}\n"
        f"target: {{kind: local, output_base: {tmp_path / 'runs'}, parallelism: 1}}\n"
    )
    [run] = status(sweep).values()
    return sweep, run, state.state_dir(str(tmp_path / "runs"), name)


def test_a_sweep_with_nothing_new_to_run_still_hands_an_orphan_to_a_supervisor(tmp_path):
    """kill -9 of the supervisor of a one-run sweep: its trainer runs on, and `sweep` again, with nothing to create,
    started no supervisor ("0 created"), so nothing resumed the run when that trainer died (Pending (Orphaned)
    until a third `sweep`)."""
    sweep, run, folder = _one_run_sweep(tmp_path, "alone", "{steps: 100000}")
    distillctl("sweep", str(sweep), check=True)
    try:
        orphan = _orphan_trainer(folder, run["output_path"])
        first = local_claims.read_claim(run["output_path"])
        again = distillctl("sweep", str(sweep), check=True)
        assert "exists: Running" in again.stdout, again.stdout
        # said by `sweep` (only the supervisor's log said it)
        assert "handed to the sweep's supervisor" in again.stderr and f"alone-{run['run_id']}" in again.stderr
        wait_until(lambda: supervisors(folder), 30, "a supervisor that adopts the trainer")
        _resumed_after(orphan, run["output_path"], folder)
        # the run keeps its age, and the trainer's death counts as a restart (it read restarts 0 and a fresh age)
        resumed = local_claims.read_claim(run["output_path"])
        assert (resumed.created_at, resumed.restarts) == (first.created_at, first.restarts + 1), (first, resumed)
        assert status(sweep)[run["run_id"]]["restarts"] == 1
    finally:
        distillctl("cancel", str(sweep), "--yes")


def test_a_supervisor_stopped_by_sigterm_stops_the_trainers_it_adopted_too(tmp_path):
    """SIGTERM to a supervisor stopped its own trainers alone: one it had adopted from a dead supervisor trained on
    with nobody to resume it (Pending (Orphaned) after it died)."""
    sweep, run, folder = _one_run_sweep(tmp_path, "adopted", "{steps: 100000}")
    distillctl("sweep", str(sweep), check=True)
    try:
        orphan = _orphan_trainer(folder, run["output_path"])
        distillctl("sweep", str(sweep), check=True)
        [supervisor] = wait_until(lambda: supervisors(folder), 30, "a supervisor that adopts the trainer")
        os.kill(supervisor, signal.SIGTERM)
        wait_until(lambda: not supervisors(folder) and not local_claims.alive(orphan), 90, "the stop")
        assert "stopped by SIGTERM: stopping 1 trainer(s)" in (folder / state.LOG).read_text()
        row = status(sweep)[run["run_id"]]
        assert (row["phase"], row["reason"]) == ("Pending", "Preempted"), row  # its checkpoint saved; resumable
        assert json.loads((Path(run["output_path"]) / "summary.json").read_text())["status"] == "preempted"
    finally:
        distillctl("cancel", str(sweep), "--yes")


def test_logs_follow_through_a_cancel_shows_the_trainers_last_lines(tmp_path):
    """`logs --follow` ended as `cancel` removed the claim, before the trainer wrote its last line: whether its
    checkpoint was saved, the line a user following it wants, was never shown."""
    sweep, run, folder = _one_run_sweep(tmp_path, "followed", "{steps: 100000}")
    distillctl("sweep", str(sweep), check=True)
    try:
        wait_until(lambda: has_checkpoint(run["output_path"]), what="the run's first checkpoint")
        follower = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "logs", str(sweep), "0", "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)
        distillctl("cancel", str(sweep), "--yes", check=True)
        out, err = follower.communicate(timeout=120)
        assert follower.returncode == 0 and "checkpoint saved" in out.splitlines()[-1], (out[-2000:], err)
    finally:
        distillctl("cancel", str(sweep), "--yes")


def test_an_adopted_trainer_that_ends_on_its_own_leaves_its_claim_exited(tmp_path):
    """A trainer a dead supervisor left running, handed to a new one, that then finished by itself: its claim read
    `running` (under the dead supervisor) for ever."""
    sweep, run, folder = _one_run_sweep(tmp_path, "ends", "{steps: 300, checkpoint.every_steps: 10}")
    distillctl("sweep", str(sweep), check=True)
    try:
        orphan = _orphan_trainer(folder, run["output_path"])
        distillctl("sweep", str(sweep), check=True)
        claim = wait_until(
            lambda: (c := local_claims.read_claim(run["output_path"])) and c.state == "exited" and c, 240, "its end"
        )
        assert claim.exit_code == 0 and not local_claims.alive(orphan), claim
        assert status(sweep)[run["run_id"]]["phase"] == "Succeeded"
        assert "ended: succeeded" in (folder / state.LOG).read_text()
    finally:
        distillctl("cancel", str(sweep), "--yes")


def test_a_cancel_sticks_while_a_sweep_wait_follows(tmp_path):
    """`cancel` from another terminal while `sweep --wait` follows: the follower created the runs again within
    ~2 s. Now they stay stopped and the follower ends (exit 1) instead of undoing the cancel."""
    sweep = write_sweep(tmp_path, "sticky", teacher_steps=100000)
    teacher, _ = by_role(status(sweep))
    waiter = subprocess.Popen([*CLI, "sweep", str(sweep), "--wait", "--timeout", "300"], **QUIET)
    try:
        wait_until(lambda: has_checkpoint(teacher["output_path"]), what="the teacher's first checkpoint")
        distillctl("cancel", str(sweep), "--yes", check=True)
        out, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 1, out + err
        time.sleep(3)
        assert not trainers_of(teacher["output_path"]), "the cancelled teacher was started again"
        assert status(sweep)[teacher["run_id"]]["phase"] == "Pending"
    finally:
        if waiter.poll() is None:
            waiter.kill()
        distillctl("cancel", str(sweep), "--yes")


def test_runs_of_points_an_edit_removed_are_listed_and_stopped_by_cancel_orphans(tmp_path):
    """An edited sweep file: the runs of the points it no longer has ran on, shown nowhere, and `cancel --orphans`
    was for clusters only. `sweep` and `status` now warn of them, and `cancel --orphans` stops the trainer (it
    saves its checkpoint) and the queued runs, leaving the file's own runs alone."""
    sweep = write_sweep(tmp_path, "edited", teacher_steps=100000)
    old_teacher, old_points = by_role(status(sweep))
    distillctl("sweep", str(sweep), check=True)
    try:
        wait_until(lambda: has_checkpoint(old_teacher["output_path"]), what="the teacher's first checkpoint")
        sweep.write_text(sweep.read_text().replace("steps: 100000", "steps: 99999"))  # every run id changes
        new_teacher, _ = by_role(status(sweep))
        edited = distillctl("sweep", str(sweep), check=True)
        assert "4 run(s) of sweep edited are for runs no longer in the sweep file" in edited.stderr, edited.stderr
        assert f"edited-{old_teacher['run_id']} (active)" in edited.stderr and "(queued)" in edited.stderr
        assert f"`distillctl cancel {sweep} --orphans` stops them" in edited.stderr
        listed = distillctl("status", str(sweep), check=True)
        assert "4 run(s)" in listed.stderr and status(sweep)[new_teacher["run_id"]]["phase"] == "Queued"
        # A plain cancel stops the file's runs only, and says what it leaves (it said nothing of them)
        plain = distillctl("cancel", str(sweep))  # no terminal to ask on
        assert plain.returncode == 2 and "warning[orphaned_runs]" in plain.stderr, plain.stderr
        assert f"`distillctl cancel {sweep} --orphans` stops them" in plain.stderr
        refused = distillctl("cancel", str(sweep), "--orphans")  # no terminal to ask on
        assert refused.returncode == 2 and "cancel would stop 4 run(s)" in refused.stderr, refused.stderr
        done = distillctl("cancel", str(sweep), "--orphans", "--yes", "--output", "json", check=True)
        stopped = {record["deleted"] for record in json.loads(done.stdout)}
        assert stopped == {f"edited-{r['run_id']}" for r in [old_teacher, *old_points]}
        assert not trainers_of(old_teacher["output_path"])
        assert all(local_claims.read_claim(r["output_path"]) is None for r in [old_teacher, *old_points])
        assert "step" in (Path(old_teacher["output_path"]) / "summary.json").read_text()  # it saved and said so
        # recorded as a cancel (the next sweep says once that the edited teacher starts from step 0)
        assert local_claims.read_cancelled(old_teacher["output_path"]) is not None
        # The slot it held goes to the file's own teacher; the orphans are never started.
        wait_until(lambda: trainers_of(new_teacher["output_path"]), 60, "the new teacher to start")
        again = distillctl("cancel", str(sweep), "--orphans", "--yes", check=True)
        assert again.stdout == "no orphaned runs\n"
        assert all(not trainers_of(r["output_path"]) for r in old_points)
    finally:
        distillctl("cancel", str(sweep), "--yes")


def test_a_run_another_local_sweep_started_says_whose_it_is_and_cancel_leaves_it(tmp_path):
    """Two sweeps with the same teacher share its run (one run id, one folder). The second sweep's status said
    plain `Running`, and `cancel` of it printed nothing and stopped nothing."""
    first = write_sweep(tmp_path, "first", teacher_steps=100000)
    second = write_sweep(tmp_path, "second", teacher_steps=100000)
    teacher, _ = by_role(status(first))
    distillctl("sweep", str(first), check=True)
    try:
        wait_until(lambda: trainers_of(teacher["output_path"]), what="the teacher to start")
        row = status(second)[teacher["run_id"]]
        assert row["owner_sweep"] == "first" and row["phase"] == "Running"
        shown = distillctl("status", str(second), check=True).stdout
        assert "(owned by sweep first)" in shown, shown
        launched = distillctl("sweep", str(second), check=True).stdout
        assert f"first-{teacher['run_id']}" in launched, launched
        left = distillctl("cancel", str(second), teacher["run_id"], "--yes")
        assert left.returncode == 0 and f"left first-{teacher['run_id']}: owned by sweep first" in left.stderr
        # not also "nothing to cancel: ... is Running (owned by sweep first) and nothing runs it"
        assert left.stdout.strip() == "nothing of sweep second's to cancel", left.stdout
        assert trainers_of(teacher["output_path"]) and status(first)[teacher["run_id"]]["phase"] == "Running"
    finally:
        distillctl("cancel", str(second), "--yes")
        distillctl("cancel", str(first), "--yes")


def test_a_changed_parallelism_reaches_the_running_supervisor(tmp_path):
    """Two long runs at parallelism 1: one runs, one waits for a slot. Raising target.parallelism and running
    `sweep` again (nothing new to submit) changed nothing and said nothing; now the waiting run starts."""
    (tmp_path / "teacher.yaml").write_text(TEACHER)
    sweep = tmp_path / "wider.yaml"
    text = "name: wider\nspec: teacher.yaml\noverrides: {steps: 100000}\nseeds: [0, 1]\n"
    sweep.write_text(text + f"target: {{kind: local, output_base: {tmp_path / 'runs'}, parallelism: 1}}\n")
    distillctl("sweep", str(sweep), check=True)
    try:
        rows = wait_until(
            lambda: (r := status(sweep)) and sorted(row["phase"] for row in r.values()) == ["Queued", "Running"] and r,
            what="one run and one waiting for a slot",
        )
        waiting = next(row for row in rows.values() if row["phase"] == "Queued")
        assert waiting["reason"] == "WaitingForSlot", waiting
        sweep.write_text(sweep.read_text().replace("parallelism: 1", "parallelism: 2"))
        again = distillctl("sweep", str(sweep), check=True)
        assert "0 created, 2 unchanged" in again.stdout, again.stdout
        wait_until(lambda: trainers_of(waiting["output_path"]), 30, "the waiting run to start")
        log = (state.state_dir(str(tmp_path / "runs"), "wider") / state.LOG).read_text()
        assert "parallelism 1 → 2" in log
        assert "parallelism 2 → 1" not in log  # the first orders set it: not said as a change from the cores'
    finally:
        distillctl("cancel", str(sweep), "--yes")


def test_a_run_cancel_is_stopping_is_claimed_again_by_a_sweep_and_starts_once_its_trainer_exited(tmp_path):
    # `sweep` while `cancel` stopped a run answered "exists" (the supervisor still listed it), and nothing ran it
    # afterwards: Pending (Preempted) until someone ran `sweep` again.
    from orchestrator.backends.local.supervisor import Order, Supervisor, _Running

    supervisor = Supervisor(tmp_path / "supervisor")
    queued = Order("q1", "s", str(tmp_path / "q1"), "{}")
    assert supervisor._claim(queued, "a") == "created"
    local_claims.release(queued.output_path)  # cancel, before the supervisor looked again
    assert supervisor._claim(queued, "b") == "created" and len(supervisor.pending) == 1
    assert supervisor._claim(queued, "c") == "exists"  # claimed: taken care of
    # a running one: its trainer is still saving its checkpoint when the order comes
    running = Order("r1", "s", str(tmp_path / "r1"), "{}")
    claim = local_claims.try_claim(running.output_path, "r1", "s")
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        supervisor.pending = []
        supervisor.running = [_Running(running, claim, trainer)]
        local_claims.release(running.output_path)
        assert supervisor._claim(running, "d") == "created"
        supervisor.parallelism = 4
        supervisor._start_ready()  # not while the cancelled trainer runs: two trainers in one folder
        assert [o.run_id for o, _ in supervisor.pending] == ["r1"] and len(supervisor.running) == 1
    finally:
        trainer.kill()
        trainer.wait()
    supervisor._reap()
    assert supervisor.running == [] and [o.run_id for o, _ in supervisor.pending] == ["r1"]
