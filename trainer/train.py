"""The training loop: build the models and state, resume, train, log, checkpoint, and end with an exit code.

`run(spec, ...) -> TrainerExit` is the whole run. It never raises: every failure becomes an exit code (see
`trainer.exit_codes`), a `summary.json` status and a message for the reporter. `train(...)` raises
`TrainerError`s: it checks the output and checkpoint storage writable (before anything is compiled), builds,
then `restore_or_init` (the latest checkpoint, else step 0) and `_loop`, a short loop over a typed `TrainState`
with a `MetricWindow` (when to write a metrics line, and its timing) and a `CheckpointPolicy` (when to save).

Multi-host: with `ProcessOptions` (coordinator address, process count, process id) or on TPU (where
`jax.distributed.initialize()` finds its peers itself) every process runs this same loop on its share of the global
batch; process 0 alone writes `spec.json`, `metrics.jsonl`, `summary.json` and TensorBoard events; all processes
write their checkpoint shards; a process other than 0 that fails writes `failures/process-<i>.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from distillspec.config import DOCUMENT_SOURCES, DistillSpec
from distillspec.contract import ENV_RUN_ID
from distillspec.places import inside, place
from trainer.exit_codes import RetryableError, RunRefused, TrainerError, TrainerExit, UserError
from trainer.failures import classify

if TYPE_CHECKING:  # the loop's types; importing them at run time would import JAX with this module
    from trainer.checkpointing import RunCheckpoints
    from trainer.setup import Built
    from trainer.step import TrainState


@dataclasses.dataclass(frozen=True)
class ProcessOptions:
    """How this process joins a multi-process run (all None: single process, or TPU auto-detection)."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


class Reporter(Protocol):
    """Where the run tells a person what it does (the console); the loop itself never prints."""

    def start(self, run_dir: str, start_step: int, total_steps: int) -> None: ...
    def log(self, record: dict[str, Any]) -> None: ...
    def note(self, message: str) -> None: ...
    def end(self, status: str, exit_code: int, message: str) -> None: ...


class SilentReporter:
    def start(self, run_dir: str, start_step: int, total_steps: int) -> None:
        pass

    def log(self, record: dict[str, Any]) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def end(self, status: str, exit_code: int, message: str) -> None:
        pass


class Diverged(TrainerError):
    exit_code = TrainerExit.DIVERGED


class Interrupted(BaseException):
    """SIGTERM/SIGINT while the run starts (see `_Stop`): it ends at once. A BaseException, so that no
    `except Exception` on the way (a checkpoint reader's retries) takes it for a read error."""


class _Stop:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint and exits 143 at the next step boundary. Until `settle()`
    (start-up: joining the other processes, resolving the tokenizer, loading the models, which only read, and a
    store that does not answer is retried for minutes) the signal ends the run at once: there is nothing to save."""

    def __init__(self, *, at_once: bool = False) -> None:
        self.signal_name: str | None = None
        self._at_once = at_once

    def __call__(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        if self._at_once:
            raise Interrupted(self.signal_name)

    def settle(self) -> None:
        """From here on a signal is handled at a step boundary (after a checkpoint). Raises Interrupted when one
        came before and its raise was lost (in a garbage-collection callback Python only reports it)."""
        at_once, self._at_once = self._at_once, False
        if at_once and self.signal_name:
            raise Interrupted(self.signal_name)


def _quiet_lost_interrupt(unraisable, default=sys.unraisablehook) -> None:
    """A signal's Interrupted raised inside a garbage-collection callback (JAX has one) cannot propagate: Python
    would print it as unraisable and go on. `_Stop.settle()` raises it again once start-up is over; unprinted."""
    if not isinstance(unraisable.exc_value, Interrupted):
        default(unraisable)


def with_overrides(spec: DistillSpec, *, output_dir: str | None = None, steps: int | None = None):
    """`(spec, problems)` with command-line overrides applied and everything validated again (spec None on error)."""
    from distillspec.specfile import validate_data

    changes = {k: v for k, v in (("output_dir", output_dir), ("steps", steps)) if v is not None}
    if not changes:
        return spec, []
    return validate_data({**spec.model_dump(mode="json", exclude_unset=True), **changes})


def run_dir_of(spec: DistillSpec) -> str:
    return inside(spec.output_dir, spec.name)  # where the orchestrator reads it (identity.output_path)


def events_dir_of(spec: DistillSpec) -> str | None:
    """Where the run's TensorBoard events go (None: TensorBoard off): `<logging.tensorboard_dir>/<name>`, one folder
    per run of a shared TensorBoard folder, else the run folder's `tensorboard/`."""
    if not spec.logging.tensorboard:
        return None
    if spec.logging.tensorboard_dir is not None:
        return f"{spec.logging.tensorboard_dir.rstrip('/')}/{spec.name}"
    return f"{run_dir_of(spec)}/tensorboard"


STATUS_OF = {
    TrainerExit.OK: "succeeded",
    TrainerExit.PREEMPTED: "preempted",
    TrainerExit.DIVERGED: "diverged",
    TrainerExit.USER_ERROR: "failed",
    TrainerExit.RETRYABLE: "failed",
    TrainerExit.INTERNAL: "failed",
}


def run(
    spec: DistillSpec, *, process: ProcessOptions = ProcessOptions(), reporter: Reporter | None = None
) -> TrainerExit:
    """Train `spec` to its last step (resuming from `<run_dir>/checkpoints` when present); the exit code says how
    it ended. Installs SIGTERM/SIGINT handlers for the duration when called from the main thread."""
    reporter = reporter or SilentReporter()
    stop = _Stop(at_once=True)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, stop)
        if getattr(sys.unraisablehook, "func", None) is not _quiet_lost_interrupt:
            sys.unraisablehook = functools.partial(_quiet_lost_interrupt, default=sys.unraisablehook)
    session = _Session(spec, reporter)
    if process.process_id is not None and process.process_id >= 0:
        # Which record a failure writes before JAX is up (a bad option, a bad --process-id range): another
        # process's start replaced the run's summary.json (a preempted run's, resumable) as if it were process 0.
        session.process_index = process.process_id
    try:
        code, message = TrainerExit.OK, ""
        try:
            try:
                _initialize_distributed(process, session)
                _start_beating()
                _check_processes_agree(spec)
                _enable_compilation_cache()
                train(spec, session, stop)
            finally:
                stop.settle()  # a signal while the verdict is written must not interrupt it
            if stop.signal_name and session.step < spec.steps:
                code, message = (
                    TrainerExit.PREEMPTED,
                    f"stopped by {stop.signal_name} at step {session.step}; "
                    + (
                        "the logit cache is incomplete (no manifest): a rerun writes it again from the start"
                        if spec.mode == "teacher_logits"
                        else "nothing trained yet, nothing saved: a rerun starts from step 0"
                        if session.step == 0
                        else "checkpoint saved"
                        if spec.checkpoint.enabled
                        else "no checkpoint (checkpoint.enabled is false): a rerun starts again from step 0"
                    ),
                )
        except Interrupted as e:
            code, message = TrainerExit.PREEMPTED, f"stopped by {e} while starting, before training; nothing to save"
        except Exception as e:  # noqa: BLE001 - the exit code decides what happens next
            failure = classify(e)  # only transient I/O, device and coordinator failures are retried
            if failure.code == TrainerExit.INTERNAL and os.environ.get("DISTILLCTL_DEBUG"):
                traceback.print_exc()
            code, message, session.failure_reason = failure.code, failure.message, failure.reason
            session.keep_record = isinstance(e, RunRefused)
            _tell_peers(code, message)
            if code in (TrainerExit.RETRYABLE, TrainerExit.INTERNAL) and (peer := _peer_failure()) is not None:
                # A collective that failed because a peer ended with its own error (a bad line in its file): that
                # error is the run's. It read "Gloo AllGather failed", exit 42, and every retry met the same line.
                code, message, session.failure_reason = peer
        session.finish(code, message)
        return code
    finally:
        _release_run_dir(session)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:500] if lines else type(e).__name__


def _enable_compilation_cache() -> None:
    """Reuse compiled steps across runs of the same shapes (sweeps, tests): XLA:CPU takes seconds per compile.
    `DISTILLCTL_COMPILE_CACHE=off` disables it; JAX_COMPILATION_CACHE_DIR, when set, wins."""
    import jax

    where = os.environ.get(
        "DISTILLCTL_COMPILE_CACHE",
        os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "distillctl", "xla"),
    )
    if where == "off" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _check_process_options(process: ProcessOptions) -> None:
    """UserError (exit 1) for options no retry can fix: an address that is not HOST:PORT (one crashed JAX's
    coordinator with a segmentation fault), a process count below 1, a process id outside [0, count) (exit 42
    before: the JobSet restarted it until max_restarts ran out)."""
    address, count, index = process.coordinator_address, process.num_processes, process.process_id
    if not (address and count is not None and index is not None):
        raise UserError("multi-process runs need --coordinator-address, --num-processes and --process-id together")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(
            f"--coordinator-address must be HOST:PORT with a port in 1..65535, got {address!r}",
            "e.g. --coordinator-address 10.0.0.2:1234 (process 0's host)",
        )
    if count < 1:
        raise UserError(f"--num-processes must be at least 1, got {count}")
    if not 0 <= index < count:
        raise UserError(f"--process-id {index} is not in [0, {count}) for --num-processes {count}")


def _check_port_free(address: str) -> None:
    """UserError when process 0 cannot listen on the coordinator's port (JAX's server binds every address on it):
    JAX then crashed (a segfault) or said only "Failed to start RPC server"."""
    import errno
    import socket

    port = int(address.rsplit(":", 1)[1])
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is no holder
                probe.bind((host, port))
            return
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                # Not the run's record to write: the holder may be this run's own process 0 (two processes given
                # --process-id 0), whose summary this start replaced with "port in use".
                raise RunRefused(
                    f"--coordinator-address {address}: port {port} is already in use on this host, where process 0 "
                    "serves the coordinator: by another program, or by this run's own process 0 when two processes "
                    "were given --process-id 0",
                    "give each process its own --process-id (0 to --num-processes - 1); else choose a free port for "
                    "--coordinator-address (the same on every process), or stop the program that holds it",
                ) from None
            continue  # this address family is not available here: try the other


JOIN_TIMEOUT_ENV = "DISTILLCTL_JOIN_TIMEOUT_S"  # how long a process waits for every other to join (seconds)
JOIN_TIMEOUT_S = 300  # JAX's own default initialization_timeout


def _join_timeout() -> int:
    value = os.environ.get(JOIN_TIMEOUT_ENV, "")
    if not value:
        return JOIN_TIMEOUT_S
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"${JOIN_TIMEOUT_ENV} must be a whole number of seconds (at least 1), got {value!r}")
    return int(value)


def _initialize_distributed(process: ProcessOptions, session: _Session | None = None) -> None:
    import jax

    if process.coordinator_address or process.num_processes is not None:
        _check_process_options(process)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        seconds = _join_timeout()
        print(
            f"process {process.process_id} of {process.num_processes}: joining the coordinator at "
            f"{process.coordinator_address} (waiting up to {seconds} s for every process)",
            file=sys.stderr,
            flush=True,
        )
        if process.process_id == 0:
            _check_port_free(str(process.coordinator_address))
        watchdog = _join_watchdog(process, session, seconds) if session is not None else None
        try:
            # JAX's own deadline comes later: its expiry aborts the process (SIGABRT, 134) with nothing written.
            jax.distributed.initialize(
                process.coordinator_address,
                process.num_processes,
                process.process_id,
                initialization_timeout=seconds + 60,
            )
        except (RuntimeError, ValueError) as e:
            raise RetryableError(
                f"cannot join the coordinator at {process.coordinator_address}: {_first_line(e)}"
            ) from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
    elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        try:
            jax.distributed.initialize()  # TPU pods: the peers are found from the environment
        except (RuntimeError, ValueError) as e:  # it was "internal error (a bug)", exit 70
            found = (
                "TPU_WORKER_HOSTNAMES" if os.environ.get("TPU_WORKER_HOSTNAMES") else "MEGASCALE_COORDINATOR_ADDRESS"
            )
            if _transient(e):  # a host that started late or a coordinator not up yet: the next attempt may join
                raise RetryableError(f"cannot join the other TPU hosts ({found}): {_first_line(e)}") from None
            raise UserError(
                f"${found} is set, so this is a multi-host TPU run, but JAX could not find its peers from the "
                f"environment: {_first_line(e)}",
                f"on a TPU pod this environment is set by the JobSet; elsewhere unset {found} (and the other TPU_* "
                "and MEGASCALE_* variables), or use --coordinator-address, --num-processes and --process-id",
            ) from None
        from trainer.sharding import check_process_count

        check_process_count(dict(os.environ), jax.process_count())


# gRPC status codes of the coordination service that say "not now" rather than "never": JAX's client reports a
# coordinator it could not reach, or peers that did not all connect, within its deadline with these.
_TRANSIENT_STATUS = ("DEADLINE_EXCEEDED", "UNAVAILABLE", "ABORTED", "CANCELLED")


def _transient(error: BaseException) -> bool:
    """Whether JAX's distributed initialize failed for a reason another attempt may not meet (exit 42, the JobSet
    restarts the pods; it was exit 1, never retried, for one pod that started late)."""
    text = str(error)
    return any(code in text for code in _TRANSIENT_STATUS) or "timed out" in text.lower()


def _join_watchdog(process: ProcessOptions, session: _Session, seconds: int) -> threading.Timer:
    """A timer that ends the run when not every process has joined within `seconds`: JAX would wait a minute
    longer and then abort the process from a native thread (exit 134, no summary.json, nothing on stderr but its
    stack). It writes this process's record (process 0: summary.json; another: its failures file) with reason
    `processes_not_joined` and exits 42 (retried: a pod that started late joins the next attempt). It runs while
    the main thread is inside JAX's initialize, so it takes the process index from the options (asking JAX would
    start its backends there)."""

    def expire() -> None:
        session.failure_reason = "processes_not_joined"
        session.process_index = process.process_id
        session.finish(
            TrainerExit.RETRYABLE,
            f"not every one of the {process.num_processes} processes joined the coordinator at "
            f"{process.coordinator_address} within {seconds} s: a process that never started or cannot reach it, "
            "another --coordinator-address or --num-processes on some process, or two given one --process-id",
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(TrainerExit.RETRYABLE))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


AGREE_TIMEOUT_MS = 300_000  # as long as a process waits for every other to join
BEAT_SECONDS = 5.0  # how often a process says it is alive while the processes start (`_start_beating`)
# A peer whose beat has not moved for this long is gone: well under JAX's 100 s heartbeat timeout, whose expiry
# aborts every process (134, nothing written); long enough for a peer busy in code that holds the GIL.
STALE_SECONDS = 45.0
WAIT_SLICE_MS = 5_000
_BEATING = threading.Event()  # set: the processes are ready, the beat stops


def _start_beating() -> None:
    """A daemon thread that bumps `distillctl/alive/<index>` every BEAT_SECONDS until the processes are ready
    (`_processes_ready`), so a process waiting for a peer in `_exchange` can tell a slow peer from a dead one:
    a peer killed before it posted left the others waiting until JAX's heartbeat timeout aborted them (exit 134
    after ~100 s, summary.json absent or "running")."""
    import jax

    store = _coordination_store()
    if store is None:
        return
    _BEATING.clear()
    key = f"distillctl/alive/{jax.process_index()}"

    def beat() -> None:
        count = 0
        while not _BEATING.is_set():
            count += 1
            try:
                store.key_value_set(key, str(count), allow_overwrite=True)
            except Exception:  # noqa: BLE001 - the coordinator is gone: the waits say so
                return
            _BEATING.wait(BEAT_SECONDS)

    threading.Thread(target=beat, name="distillctl-beat", daemon=True).start()


def _check_processes_agree(spec: DistillSpec) -> None:
    """UserError (exit 1) when this multi-process run's processes were not started alike: another spec (a learning
    rate on one host trained a model no spec describes, its spec.json claiming process 0's value; another --steps
    hung both after process 0 "succeeded") or another number of devices (blamed on the teacher checkpoint's
    shapes). Each process posts its spec and device count to JAX's coordination service; process 0 compares
    every other's with its own, the others theirs with process 0's, so both ends of a difference name it."""
    import json

    import jax

    store = _coordination_store()
    if store is None:
        return
    from jax._src import distributed

    index = jax.process_index()
    # --num-processes as this process was given it: JAX takes process 0's, and one started with another count
    # trained on as if it agreed.
    mine = {
        "spec": spec.model_dump(mode="json"),
        "local_devices": jax.local_device_count(),
        "processes": distributed.global_state.num_processes,
    }
    others = range(jax.process_count()) if index == 0 else (0,)
    posted = _exchange(
        store, "start", json.dumps(mine, sort_keys=True), others, AGREE_TIMEOUT_MS, "report how it was started"
    )
    for other, said in posted:
        theirs = json.loads(said)
        if theirs.get("processes") != mine["processes"]:
            raise UserError(
                f"process {index} was started with --num-processes {mine['processes']}, process {other} with "
                f"{theirs.get('processes')}",
                "start every process with the same --num-processes (the number of processes of the run)",
            )
        if theirs["local_devices"] != mine["local_devices"]:
            raise UserError(
                f"process {index} has {mine['local_devices']} devices, process {other} has {theirs['local_devices']}: "
                "every process of a run needs the same number",
                "run every process on the same kind of host (and the same XLA_FLAGS)",
            )
        differ = changed_settings(theirs["spec"], mine["spec"])
        if differ:
            raise UserError(
                f"process {index} was started with another spec than process {other}: {_listed(differ, 4)} "
                f"(process {other}'s → process {index}'s)",
                "start every process with the same spec and options (--steps, --output-dir)",
            )


READY_TIMEOUT_MS = 1_800_000  # a peer slower to load its data and state than this is in trouble


def _coordination_store():
    """JAX's coordination service key-value store in a multi-process run, else None (asked without starting JAX's
    backends: a failure before them must not start them)."""
    from jax._src import distributed

    state = distributed.global_state
    return state.client if state.client is not None and (state.num_processes or 1) > 1 else None


def _processes_ready() -> None:
    """Wait until every process has its data and state; raise the failure of one that had an error instead. A
    process that failed at start-up (its data missing on one host) exited at once, and the others waited in the
    first step's collectives until JAX's heartbeat timeout aborted them (134, their summary left "running")."""
    import jax

    store = _coordination_store()
    if store is None:
        return
    try:
        ready = list(
            _exchange(store, "ready", "ok", range(jax.process_count()), READY_TIMEOUT_MS, "get ready to train")
        )
    finally:
        _BEATING.set()
    for other, said in ready:
        if said != "ok":
            code, _, why = said.partition(" ")
            error = UserError if code == str(int(TrainerExit.USER_ERROR)) else RetryableError
            # the same reason as a peer's failure met mid-run (`_peer_failure`): one cause, one name
            raise error(f"process {other} failed before training (exit {code}): {why}", reason="peer_failed")


def _exchange(store, topic: str, mine: str, others, timeout_ms: int, what: str):
    """Post this process's `mine` under `distillctl/<topic>/<index>` and yield (process, what it posted) for each of
    `others` (this process skipped) as it arrives; RetryableError naming `what` a peer did not do in time (gone
    without a word, or late: the coordinator's trouble)."""
    import jax

    index = jax.process_index()
    store.key_value_set(f"distillctl/{topic}/{index}", mine)  # now, not when the caller starts reading

    def theirs():
        for other in others:
            if other != index:
                yield other, _wait_for(store, f"distillctl/{topic}/{other}", other, timeout_ms, what)

    return theirs()


def _wait_for(store, key: str, other: int, timeout_ms: int, what: str) -> str:
    """What process `other` posted under `key`, waited for in slices; RetryableError when its beat stops (gone:
    killed, out of memory) or `timeout_ms` passes (late: hung, or the coordinator's trouble)."""
    deadline = time.monotonic() + timeout_ms / 1000
    beat, moved = None, time.monotonic()
    while True:
        try:
            return store.blocking_key_value_get(key, min(WAIT_SLICE_MS, timeout_ms))
        except Exception as e:  # noqa: BLE001 - the client raises its own status errors
            if "DEADLINE_EXCEEDED" not in str(e) or time.monotonic() >= deadline:
                raise RetryableError(f"process {other} did not {what}: {_first_line(e)}") from None
        try:
            now_beat = store.key_value_try_get(f"distillctl/alive/{other}")
        except Exception:  # noqa: BLE001 - not posted yet
            now_beat = None
        if now_beat != beat:
            beat, moved = now_beat, time.monotonic()
        elif time.monotonic() - moved > STALE_SECONDS:
            raise RetryableError(
                f"process {other} stopped answering before it could {what} (killed, out of memory or crashed: its "
                f"beat has not moved for {STALE_SECONDS:.0f} s)",
                reason="peer_lost",
            )


def _tell_peers(code: TrainerExit, message: str) -> None:
    """Leave this process's failure where the others wait for it (`_processes_ready`); nothing once it is past
    that point (its key is set then) or when it never joined."""
    try:
        import jax

        store = _coordination_store()
        if store is None:
            return
        said = f"{int(code)} {message[:2000]}"
        store.key_value_set(f"distillctl/failed/{jax.process_index()}", said)
        store.key_value_set(f"distillctl/ready/{jax.process_index()}", said)  # refused past the start: it is "ok"
    except Exception:  # noqa: BLE001 - the exit code still says it
        pass


def _peer_failure(wait_seconds: float = 3.0) -> tuple[TrainerExit, str, str] | None:
    """Another process's own failure (code, message, reason), posted by `_tell_peers` as it ended: what broke this
    process's collective. Waits briefly: the peer posts before it exits, but this process may see its sockets
    close first."""
    import jax

    store = _coordination_store()
    if store is None:
        return None
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            posted = store.key_value_dir_get("distillctl/failed/")
        except Exception:  # noqa: BLE001 - the coordinator itself is gone: nothing to learn
            return None
        own = f"distillctl/failed/{jax.process_index()}"
        for key, value in sorted(posted):
            if key == own:
                continue
            code, _, why = value.partition(" ")
            if code.isdigit() and int(code) != TrainerExit.RETRYABLE:
                other = key.rsplit("/", 1)[-1]
                return TrainerExit(int(code)), f"process {other} failed (exit {code}): {why}", "peer_failed"
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


class _Session:
    """What the run has written and must write at exit: the summary and the outputs of process 0, or (any other
    process) its failure file."""

    def __init__(self, spec: DistillSpec, reporter: Reporter):
        self.spec = spec
        self.reporter = reporter
        self.failure_reason: str | None = None
        self.files = None  # RunFiles on process 0 once the run directory is open
        self.run_id = os.environ.get(ENV_RUN_ID) or None
        self.step = 0
        self.tokens = 0
        self.started = time.time()
        self.earlier_wall_seconds = 0.0  # wall time of the attempts before this one (read back on resume)
        self.started_at = None
        self.train_seconds = 0.0
        self.train_tokens = 0
        self.compile_seconds = 0.0
        self.final_metrics: dict[str, float | None] = {}
        self.resumed_from: int | None = None
        self.keep_record = False  # a start refused on another run's directory: its files stay as they are
        self.process_index: int | None = None  # when JAX cannot be asked (`_join_watchdog`)
        self.topology: dict[str, Any] | None = None  # processes, devices and the mesh this attempt trains on
        # A finished run started again trains nothing: its record keeps how its steps ran (throughput, compile
        # time, time, where it resumed), not this attempt's zeros.
        self.ran_before: dict[str, Any] = {}
        self.teacher_source: str | None = None  # the step folder a run's own teacher checkpoint resolved to
        self.run_dir_lock: tuple[int, str, bool] | None = None  # (fd, lock file, folder made for it): `_hold_run_dir`

    def wall_time(self) -> float:
        """Seconds of wall time over every attempt so far (what chip-hours are counted from)."""
        return round(self.earlier_wall_seconds + time.time() - self.started, 3)

    def summary(self, status: str, exit_code: int | None, message: str = "") -> dict[str, Any]:
        from distillspec.sources import trainer_code_hash
        from trainer.metrics_io import now_iso

        return {
            "status": status,
            "exit_code": exit_code,
            "step": self.step,
            "total_steps": self.spec.steps,
            "tokens": self.tokens,
            "tokens_per_sec": self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0,
            "wall_time_sec": self.wall_time(),
            "compile_time_sec": round(self.compile_seconds, 3),
            "final_metrics": self.final_metrics,
            "started_at": self.started_at or now_iso(),
            "updated_at": now_iso(),
            "mode": self.spec.mode,
            "run_name": self.spec.name,
            "run_id": self.run_id,
            "message": message,
            "failure_reason": self.failure_reason,  # trainer.failures' category when an exception ended the run
            "resumed_from_step": self.resumed_from,
            "topology": self.topology,
            "trainer_code": trainer_code_hash(),  # which code trained it: run ids hash the spec, not the code
            **self.ran_before,
        }

    def write_summary(self, status: str, exit_code: int | None, message: str = "") -> None:
        if self.files is not None:
            self.files.write_json("summary.json", self.summary(status, exit_code, message))

    def finish(self, code: TrainerExit, message: str) -> None:
        status = STATUS_OF[code]
        if self.keep_record:  # its summary says how that run ended; this start never began
            self.reporter.end(status, int(code), message)
            return
        index = _process_index() if self.process_index is None else self.process_index
        if index != 0:
            message = self._leave_failure(index, code, status, message)
            self.reporter.end(status, int(code), message)
            return
        if self.files is None:
            try:  # a failure before the directory opened (bad teacher path...): still leave a summary behind
                from trainer.metrics_io import RunFiles

                self.files = RunFiles(run_dir_of(self.spec), events_dir=None)
            except Exception:  # noqa: BLE001 - nothing more can be written
                self.files = None
            if self.files is not None and not self._carry_earlier_attempt(code):
                self.files.close()
                self.reporter.end(
                    status, int(code), f"{message} (summary.json still says the run succeeded: its outputs are intact)"
                )
                return
        try:
            if self.files is not None:
                self.write_summary(status, int(code), message)
                self.files.close()
        except Exception as e:  # noqa: BLE001
            message = f"{message}; could not write summary.json: {e}"
        self.reporter.end(status, int(code), message)

    def _carry_earlier_attempt(self, code: TrainerExit) -> bool:
        """Before its directory opened, this attempt knows nothing of the run: carry an earlier attempt's step,
        tokens, metrics and time into the summary it is about to write; False when that attempt's summary says
        the run succeeded at these steps, which a start that failed (a mistyped --process-id, a mesh for other
        devices) must not replace: it read "failed at step 0", its final metrics gone."""
        try:
            earlier = self.files.read_record("summary.json")
        except Exception:  # noqa: BLE001 - unreadable: there is nothing to keep
            earlier = None
        if earlier is None:
            return True
        trained = earlier.get("total_steps")
        further = isinstance(trained, int) and trained < self.spec.steps
        if earlier.get("status") == "succeeded" and code != TrainerExit.OK and not further:
            # The finished run started again (with fewer steps its start is refused, the record kept); one asked
            # to train further records how that went.
            return False
        for field in ("step", "tokens"):
            if isinstance(earlier.get(field), int) and not isinstance(earlier.get(field), bool):
                setattr(self, field, earlier[field])
        self.carry_record(earlier)
        return True

    def carry_record(self, earlier: dict[str, Any]) -> None:
        """An earlier attempt's summary's start, final metrics and wall time (its time after the checkpoint too: a
        SIGTERM, a failure), carried into this attempt's."""
        if isinstance(earlier.get("final_metrics"), dict):
            self.final_metrics = earlier["final_metrics"]
        self.started_at = earlier.get("started_at", self.started_at)
        before = earlier.get("wall_time_sec")
        if isinstance(before, (int, float)) and not isinstance(before, bool):
            self.earlier_wall_seconds = max(self.earlier_wall_seconds, float(before))

    def _leave_failure(self, index: int, code: TrainerExit, status: str, message: str) -> str:
        """Process `index` > 0 failed: write its verdict where the orchestrator finds it after the pod is gone
        (process 0's summary.json may still say running, or process 0 may never get to write it)."""
        if code in (TrainerExit.OK, TrainerExit.PREEMPTED):
            return message
        from trainer.metrics_io import write_process_failure

        try:
            write_process_failure(
                run_dir_of(self.spec), index, {**self.summary(status, int(code), message), "process_index": index}
            )
        except Exception as e:  # noqa: BLE001 - the exit code still says it
            message = f"{message}; could not write its failure file: {e}"
        return message


def _process_index() -> int:
    try:
        import jax

        return jax.process_index()
    except Exception:  # noqa: BLE001
        return 0


# --- the loop ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Start:
    """Where the loop starts: step 0 of a fresh run, or what the latest checkpoint restored."""

    state: TrainState
    step: int
    position: int  # micro-batches consumed
    tokens: int  # valid tokens trained on
    wall_time_sec: float  # wall time of the earlier attempts
    resumed: bool
    data_state: bytes | None = None  # this process's input-pipeline state (document sources)
    teacher: str | None = None  # the teacher step folder the checkpointed run distilled from, when it recorded one
    notes: tuple[str, ...] = ()  # what a resume goes on despite (a data file that changed size)


def restore_or_init(
    checkpoints: RunCheckpoints | None,
    initial: TrainState,
    *,
    data: bool = False,
    trained_on: dict | None = None,
    spec: DistillSpec | None = None,
) -> Start:
    """The latest checkpoint's state and position (with `data`, also this process's input-pipeline state), else
    `initial` at step 0. Raises RunRefused when the checkpoint holds another model, or was trained on other input
    than `trained_on` (`input_of`; checked where the checkpoint recorded it)."""
    from trainer.step import TrainState

    latest = checkpoints.latest_step() if checkpoints else None
    if latest is None:
        return Start(initial, 0, 0, 0, 0.0, False)
    note = ""
    if trained_on is not None:
        note = _check_same_input(checkpoints.meta(latest).get("input"), trained_on, f"{checkpoints.directory}/{latest}")
    try:
        params, rest, meta, data_state = checkpoints.restore(latest, initial.params, initial.checkpointed(), data=data)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        # Orbax's words ("... tree structures do not match:") name no setting: the run's spec.json does.
        changed = _changed_since_record(checkpoints.directory, spec) if spec is not None else ""
        why = f"it was saved by a run with other settings ({changed})" if changed else _first_line(e).rstrip(": ")
        raise RunRefused(
            f"the checkpoint at {checkpoints.directory}/{latest} does not match this spec: {why}",
            "use a new run name (or output_dir) for another mode or model, or delete the old run directory",
        ) from None
    return Start(
        TrainState.from_checkpoint(params, rest),
        step=int(meta["step"]),
        position=int(meta["data_position"]),
        tokens=int(meta["tokens"]),
        wall_time_sec=float(meta.get("wall_time_sec", 0.0)),
        resumed=True,
        data_state=data_state,
        teacher=meta.get("teacher"),
        notes=(note,) if note else (),
    )


def _changed_since_record(checkpoint_dir: str, spec: DistillSpec) -> str:
    """The settings (at most four) in which `spec` differs from the spec.json of the run whose checkpoints are at
    `checkpoint_dir`; '' when that cannot be read or nothing but steps and output_dir differs."""
    import fsspec

    try:
        with fsspec.open(f"{checkpoint_dir.rstrip('/').rsplit('/', 1)[0]}/spec.json", "r") as f:
            before = json.load(f)
    except Exception:  # noqa: BLE001 - a better message, not a reason to stop
        return ""
    return _listed(settings_changed(before, spec.resolved().model_dump(mode="json")), 4)


def input_of(spec: DistillSpec) -> dict[str, Any]:
    """What a run's data position means: its data settings, sequence length and logit cache. A checkpoint records
    it, and a run goes on from a checkpoint only with the same (its position would index other data)."""
    trained_on = {
        "data": spec.data.recorded(),
        "max_target_length": spec.batch.max_target_length,
        "offline_data_dir": spec.offline_data_dir,
    }
    if spec.offline_data_dir:  # the cache by its content: a copy elsewhere (a faster disk) is the same input
        digest = _manifest_digest(spec.offline_data_dir)
        if digest is not None:
            trained_on["logit_cache"] = digest
    # Prompt/completion records are packed whole; earlier versions cut them at row ends: their positions mean other rows.
    if spec.data.prompt_completion:
        trained_on["packing"] = "whole records"
    if spec.data.source in DOCUMENT_SOURCES and not spec.offline_data_dir:
        # The position indexes this listing (file i, line j): files added, removed or renamed mean other data.
        trained_on["files"] = _listing(spec.data.path)
    return trained_on


def _manifest_digest(directory: str) -> str | None:
    """A short hash of the logit cache's manifest in `directory` (None when it cannot be read: the run says why)."""
    import hashlib

    import fsspec

    from distillspec.logit_cache_manifest import MANIFEST

    try:
        with fsspec.open(f"{directory.rstrip('/')}/{MANIFEST}", "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except (OSError, ValueError):
        return None


def _listing(path: str | None) -> dict[str, Any]:
    import hashlib

    from trainer.corpus import list_files

    files = list_files(path)
    listing = {"count": len(files), "sha256": hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]}
    if all("://" not in f for f in files):
        # Local files' sizes too: one rewritten in place (deduplicated, regenerated) kept its name, and a resume read
        # on from a position past its new end, in silence. And their first and last bytes: one shuffled or
        # re-tokenized in place keeps its size. (An object store's would cost requests per file.)
        try:
            sizes = "\n".join(str(os.path.getsize(f)) for f in files)
            edges = hashlib.sha256()
            for f in files:
                edges.update(_edges(f))
        except OSError:
            return listing
        listing["sizes"] = hashlib.sha256(sizes.encode()).hexdigest()[:16]
        listing["edges"] = edges.hexdigest()[:16]
    return listing


EDGE_BYTES = 65536


def _edges(path: str) -> bytes:
    """A file's first and last EDGE_BYTES: what a rewrite of the same size almost always changes."""
    with open(path, "rb") as f:
        head = f.read(EDGE_BYTES)
        size = os.fstat(f.fileno()).st_size
        if size <= EDGE_BYTES:
            return head
        f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
        return head + f.read(EDGE_BYTES)


LATER_INPUT = ("files", "logit_cache")  # recorded by later versions: a checkpoint without it is not compared on it


def _check_same_input(saved: dict | None, trained_on: dict, where: str) -> str:
    """Raise RunRefused when the checkpoint at `where` was trained on other input than `trained_on` (`input_of`);
    return a note ('' for none) when a local file changed size only: rewritten in place (converted to UTF-8 after
    the trainer refused it, keeping its lines: the position holds; deduplicated: it does not, so it is said)."""
    if saved is None:  # a checkpoint from before the input was recorded
        return ""
    trained_on = {k: v for k, v in trained_on.items() if k in saved or k not in LATER_INPUT}
    if "logit_cache" in saved and "logit_cache" not in trained_on:
        # The cache's manifest cannot be read now (being written again, not copied yet): not "other input" — the
        # cache reader says what is missing, and the run keeps its progress.
        saved = {k: v for k, v in saved.items() if k != "logit_cache"}
    note = ""
    if isinstance(saved.get("files"), dict) and isinstance(trained_on.get("files"), dict):
        changed = [
            what
            for key, what in (("sizes", "changed size"), ("edges", "was rewritten (its size kept)"))
            if saved["files"].get(key)
            and trained_on["files"].get(key)
            and saved["files"][key] != trained_on["files"][key]
        ]
        if changed:  # sizes first: a file that changed size changed its bytes too
            note = (
                f"a file data.path names {changed[0]} since the checkpoint at {where} (rewritten in place?): the run "
                "goes on from its saved position (file and line) in the files as they are now; if lines were removed "
                "or reordered, it reads other data from here"
            )
        # compared on what the checkpoint recorded, sizes and edges apart
        saved = {**saved, "files": {k: v for k, v in saved["files"].items() if k not in ("sizes", "edges")}}
        trained_on = {**trained_on, "files": {k: v for k, v in trained_on["files"].items() if k in saved["files"]}}
    if saved.get("files") is not None and saved.get("files") == trained_on.get("files"):
        # The same files (the listing is of absolute paths) spelled another way (relative, absolute, ./): the position
        # indexes the listing, not the spelling. A run moved into a sweep or a pod was refused as "other input".
        saved, trained_on = (
            {**side, "data": {k: v for k, v in (side.get("data") or {}).items() if k != "path"}}
            for side in (saved, trained_on)
        )
    if saved.get("logit_cache") is not None and saved.get("logit_cache") == trained_on.get("logit_cache"):
        # The same cache (its manifest) wherever it is now: the position indexes its micro-batches, not its path.
        saved, trained_on = ({k: v for k, v in side.items() if k != "offline_data_dir"} for side in (saved, trained_on))
    # The same place spelled another way (a trailing slash, `./`, relative or absolute) is the same input.
    saved, trained_on = (_placed(side) for side in (saved, trained_on))
    if saved == trained_on:
        return note
    settings = [{k: v for k, v in side.items() if k != "files"} for side in (saved, trained_on)]
    changes = changed_settings(*settings)
    before, after = saved.get("files") or {}, trained_on.get("files") or {}
    if before != after:  # a count and a hash: said in words
        count, now = before.get("count"), after.get("count")
        changes.append(
            f"the files data.path names changed ({count} → {now} files"
            + (", some renamed or replaced" if count == now else "")
            + "): the saved position indexes the old listing"
        )
    raise RunRefused(
        f"the checkpoint at {where} was trained on other input than this spec reads: {_listed(changes, 4)}",
        "give this run another name (or output_dir); to train these weights on other data, start a new run whose "
        f"student.load_parameters_path is {where.rsplit('/', 1)[0]}",
    )


def _place(path: Any) -> Any:
    """A path as the place it names (`runs/x/`, `./runs/x` and its absolute form alike); anything else as it is."""
    return place(path, absolute=True) if isinstance(path, str) else path


def _placed(side: dict) -> dict:
    """A recorded input with its paths (`offline_data_dir`, `data.path`) as the places they name."""
    placed = dict(side)
    if "offline_data_dir" in placed:
        placed["offline_data_dir"] = _place(placed["offline_data_dir"])
    if isinstance(placed.get("data"), dict) and "path" in placed["data"]:
        placed["data"] = {**placed["data"], "path": _place(placed["data"]["path"])}
    return placed


def settings_changed(before: Any, after: Any) -> list[str]:
    """`changed_settings` less steps (how a run trains further, said on its own) and name and output_dir (where the
    folder is now, a copy, not how it trained)."""
    return [c for c in changed_settings(before, after) if not c.startswith(("steps:", "output_dir:", "name:"))]


def _listed(changes: list[str], at_most: int) -> str:
    """The first `at_most` changes, and how many more."""
    more = f" (and {len(changes) - at_most} more)" if len(changes) > at_most else ""
    return "; ".join(changes[:at_most]) + more


def changed_settings(before: Any, after: Any, prefix: str = "") -> list[str]:
    """`key: old → new` for each leaf that differs between two JSON trees (dotted keys)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after), key=lambda k: (k not in before, str(k))):
            out += changed_settings(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    if before == after:
        return []
    return [f"{prefix.rstrip('.')}: {_setting(before)} → {_setting(after)}"]


def _setting(value: Any) -> str:
    """A setting as the user wrote it: spec.json holds `per_device_batch_size: 8` as 8.0 (the field takes fractions)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value)


class MetricWindow:
    """The host's side of one metrics line: time, tokens and steps since the previous line (the metric sums
    themselves accumulate on the device, in `TrainState.window`)."""

    def __init__(self, every: int, last: int, now: float):
        self.every, self.last = every, last
        self.started, self.tokens, self.steps = now, 0, 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens
        self.steps += 1

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation) out of this window's time: tokens/s and step time are training's."""
        self.started += seconds

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def close(self, step: int, now: float, **fields: Any) -> tuple[dict[str, Any], float, int]:
        """`(metrics.jsonl record, seconds, tokens)` of the window ending at `step`; the next one starts at `now`."""
        from trainer.metrics_io import metrics_record

        elapsed = now - self.started
        record = metrics_record(
            step,
            time=now,
            tokens_per_sec=self.tokens / max(elapsed, 1e-9),
            step_time_sec=elapsed / self.steps,
            **fields,
        )
        tokens = self.tokens
        self.started, self.tokens, self.steps = now, 0, 0
        return record, elapsed, tokens


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """When to save: every `every` steps before the last (0: never periodically), and at the end — the last step,
    or where a signal stopped the run — unless a periodic save just wrote that very step (orbax refuses a step
    twice)."""

    enabled: bool
    every: int
    last: int

    def periodic(self, step: int) -> bool:
        return self.enabled and bool(self.every) and step % self.every == 0 and step < self.last

    def final(self, step: int, stopped: bool, latest: int | None) -> bool:
        # A stop before the first step saves nothing: the initial weights are made again on the rerun, and writing
        # them (an 8B student and its optimizer state) could spend the grace period the pod has.
        return self.enabled and step > 0 and (step == self.last or stopped) and latest != step


def train(spec: DistillSpec, session: _Session, stop: Callable[[], Any] | _Stop) -> None:
    """Check the storage, build, restore or initialise, then run the loop; raises TrainerErrors."""
    import jax

    from trainer import data as data_lib
    from trainer.checkpointing import RunCheckpoints, teacher_step_folder
    from trainer.metrics_io import RunFiles, check_writable, clear_process_failure, now_iso
    from trainer.setup import build, position_warnings

    # The tokenizer the spec leaves to the checkpoint folders is fixed now, and recorded in spec.json.
    spec = spec.model_copy(
        update={"data": spec.data.model_copy(update={"tokenizer": data_lib.resolve_tokenizer(spec)})}
    )
    run_dir = run_dir_of(spec)
    index = jax.process_index()
    if index == 0:  # what `validate --check-paths` warns about, for a spec launched without it
        for problem in position_warnings(spec):
            session.reporter.note(str(problem))
    _check_export(spec, jax.process_count())
    # Before any compile: an unusable output or checkpoint path fails now, as OutputNotWritable (exit 1).
    events = events_dir_of(spec) if index == 0 and spec.mode != "teacher_logits" else None
    for directory in (
        ([run_dir] if index == 0 else [])
        + ([events] if events else [])
        + ([f"{run_dir}/checkpoints"] if spec.checkpoint.enabled else [])
    ):
        moved = directory == events and spec.logging.tensorboard_dir is not None
        check_writable(directory, "logging.tensorboard_dir" if moved else "output_dir")
    if index == 0:
        _hold_run_dir(session, run_dir)
    if index != 0:
        clear_process_failure(run_dir, index)
    if spec.mode == "teacher_logits":
        if isinstance(stop, _Stop):
            stop.settle()  # the cache's writer stops between micro-batches
        _write_logit_cache(spec, session, stop, run_dir, index)
        return
    built = build(spec)
    session.topology = {
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "mesh": {axis: int(size) for axis, size in built.mesh.shape.items()},
    }
    if isinstance(stop, _Stop):
        stop.settle()
    session.started_at = now_iso()
    checkpoints = (
        RunCheckpoints(f"{run_dir}/checkpoints", keep=spec.checkpoint.keep) if spec.checkpoint.enabled else None
    )
    _check_not_past(spec, checkpoints)
    try:
        # documents: the Grain iterator's state; a logit cache's position is the micro-batch count
        documents = spec.data.source in DOCUMENT_SOURCES and not spec.offline_data_dir
        trained_on = input_of(spec)  # once: it lists the data files (a request on an object store)
        start = restore_or_init(checkpoints, built.state, data=documents, trained_on=trained_on, spec=spec)
        if index == 0:  # only now: a start refused above leaves the run's record as it was
            # Also a fresh start (step 0): an earlier attempt killed before its first checkpoint left events.
            session.files = RunFiles(run_dir, events_dir=events_dir_of(spec), resumed_at=start.step)
            resolved = spec.resolved().model_dump(mode="json")
            before = _recorded_spec(session)  # read once: both say what it held
            _check_record(session, before, resolved, start, spec, checkpoints)
            if start.resumed:
                _note_changes(session, before, resolved, start.step)
            session.files.write_json("spec.json", resolved)
        session.teacher_source = teacher_step_folder(spec)
        if index == 0:
            for note in start.notes:
                session.reporter.note(note)
            if start.resumed and start.teacher and session.teacher_source not in (None, start.teacher):
                # The teacher trained on behind the same path: the run distils from another teacher from here on.
                session.reporter.note(
                    f"teacher.load_parameters_path now resolves to {session.teacher_source}; this run distilled from "
                    f"{start.teacher} until step {start.step}"
                )
        _resume_session(session, start, checkpoints)
        state = _loop(spec, built, session, stop, checkpoints, start, trained_on)
    except BaseException:
        if checkpoints:
            _close_quietly(checkpoints)
        raise
    if checkpoints:
        checkpoints.close()  # waits for the saves in flight; raises a failed one's error
    if not _stopped(stop):
        _check_finite(state, session.step)
        if spec.checkpoint.export:
            _export_final(spec, state, run_dir, index)


RUN_DIR_LOCK = ".trainer.lock"


def _hold_run_dir(session: _Session, run_dir: str) -> None:
    """Process 0 holds an exclusive lock on a local run folder for the whole run: a second trainer of the same name
    and output_dir (two `distillctl train`s) interleaved its metrics and checkpoints with the first's, and both
    "succeeded". Raises RunRefused (the other run's files stay as they are). An object store has no locks: there
    the launchers keep runs apart (one JobSet, or one claim, per run id)."""
    import fcntl

    if "://" in run_dir:
        return
    made = not os.path.isdir(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, RUN_DIR_LOCK)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        return  # check_writable has said what is wrong with the folder; the run fails writing it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunRefused(
            f"another trainer (pid {holder}) is writing {run_dir}: two runs in one folder interleave their metrics "
            "and checkpoints",
            "wait for it to finish (or stop it: it saves a checkpoint, and this run then resumes from it), or give "
            "this run another name or output_dir",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    session.run_dir_lock = (fd, path, made)


def _release_run_dir(session: _Session) -> None:
    """Let the run folder go; a folder made only to hold the lock (a run refused before training) goes too."""
    if session.run_dir_lock is None:
        return
    fd, path, made = session.run_dir_lock
    session.run_dir_lock = None
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)  # closing releases the lock
    if made:
        try:
            os.rmdir(os.path.dirname(path))  # only if empty
        except OSError:
            pass


def _recorded_spec(session: _Session) -> dict | None:
    """The run folder's spec.json as a mapping; None when it is missing or unreadable."""
    try:
        before = session.files.read_json("spec.json")
    except Exception:  # noqa: BLE001 - what it held cannot be said, not a reason to stop
        return None
    return before if isinstance(before, dict) else None


def _check_record(
    session: _Session,
    before: dict | None,
    resolved: dict[str, Any],
    start: Start,
    spec: DistillSpec,
    checkpoints: RunCheckpoints | None,
) -> None:
    """Refuse (RunRefused: the folder stays as it is) a start that would replace a run's record with settings no
    step was trained under: a finished run given other settings (0 steps to train, yet its spec.json was rewritten),
    or a succeeded run's results in a folder with nothing to resume from (checkpoint.enabled: false replaced them
    silently). Starting over in a folder whose earlier run logged steps (the same spec, a failed run's fixed one,
    an attempt killed before its first checkpoint) is said. `before`: the folder's spec.json, if readable."""
    if before is None:
        return
    try:
        previous = session.files.read_json("summary.json")
    except Exception:  # noqa: BLE001 - nothing readable to protect
        return
    changes = settings_changed(before, resolved)
    folder = session.files.run_dir
    if start.resumed:
        # data.path spelled another way passed the input check (the same files); how often it logged or saved shaped
        # no weight: neither makes the record wrong.
        changes = [c for c in changes if not c.startswith(("data.path:", "logging.", "checkpoint."))]
        if start.step >= spec.steps and changes:
            raise RunRefused(
                f"{folder} finished at step {start.step} under the settings in its spec.json; this spec changes "
                f"{_listed(changes, 6)}, and would train no step under them while its spec.json said it had",
                "give this run another name (or output_dir) to train these settings, or raise steps to train this run "
                "further under them",
            )
        return
    if not isinstance(previous, dict):
        return
    # Nothing to resume from: another `steps` is another run too (it replaced a succeeded run's results, said as a
    # note, while every other change was refused; with a checkpoint, steps only says how far to train).
    changes = [c for c in changed_settings(before, resolved) if not c.startswith(("output_dir:", "name:"))]
    if changes and previous.get("status") == "succeeded":  # a failed start is fixed and run again: not refused
        raise RunRefused(
            f"{folder} holds the results of another run (it {previous.get('status')} at step {previous.get('step')}; "
            f"this spec changes {_listed(changes, 6)}), and there is no checkpoint to resume it from",
            "give this run another name (or output_dir), or move the folder aside to replace it",
        )
    latest = checkpoints.latest_step() if checkpoints else None
    ignored = " (checkpoint.enabled: false: no checkpoint is read)" if checkpoints is None else ""
    if latest is None and previous.get("step"):  # a start that failed at step 0 left no results to speak of
        # An attempt killed before its first checkpoint ("running" at step 12) is replaced too: said.
        session.reporter.note(
            f"training {folder} again from step 0{ignored}: the results of its earlier run "
            f"({previous.get('status')} at step {previous.get('step')}) are replaced"
        )


def _note_changes(session: _Session, before: dict | None, resolved: dict[str, Any], step: int) -> None:
    """Say which settings differ from `before` (the spec.json of the run being resumed at `step`, if readable),
    before spec.json is replaced: nothing else records them. A change of steps is how a run is trained further, but
    every schedule is a function of it: said too, with the learning rate it gives at `step` against the one the run
    would have had."""
    if before is None:  # resumed in silence, then replaced: the one record of the earlier settings
        session.reporter.note(
            f"{session.files.run_dir}/spec.json is missing or unreadable: which settings changed since step {step} "
            "cannot be said"
        )
        return
    changes = settings_changed(before, resolved)
    if changes:
        session.reporter.note(f"resuming with settings changed since spec.json was written: {_listed(changes, 6)}")
    old, new = before.get("steps"), resolved.get("steps")
    if isinstance(old, int) and isinstance(new, int) and old != new:
        from trainer.step import learning_rate_schedule

        spec = DistillSpec.model_validate(resolved)
        now = learning_rate_schedule(spec)(step)
        try:  # the earlier run's own optimizer: a learning rate changed with the steps was quoted on the old curve
            earlier = DistillSpec.model_validate(before)
        except ValueError:
            earlier = spec.model_copy(update={"steps": old})
        then = learning_rate_schedule(earlier)(min(step, old))
        what = "the learning rate's warm-up and decay" + (
            " and the α, β and T schedules" if spec.mode == "distill" else ""
        )
        session.reporter.note(
            f"steps {old} → {new}: {what} now span {new} steps, so from step {step} they follow the {new}-step "
            f"curves, not the {old}-step ones (learning rate {now:.3g} at step {step}, where the {old}-step run had "
            f"{then:.3g})"
        )


def _check_not_past(spec: DistillSpec, checkpoints: RunCheckpoints | None) -> None:
    """UserError when the run's checkpoint is past `steps` (the same name and output_dir, fewer steps): it would
    "succeed" at once, its summary saying step 600 of 100. Before spec.json is written: the run's record stays."""
    latest = checkpoints.latest_step() if checkpoints else None
    if latest is not None and latest > spec.steps:
        try:  # an empty or unfinished step folder is no run that trained further: said as damaged
            checkpoints.meta(latest)
        except TrainerError:
            _close_quietly(checkpoints)
            raise
        checkpoints.close()
        raise RunRefused(
            f"the checkpoint in {checkpoints.directory} is at step {latest}, past this run's steps ({spec.steps}): "
            "that run trained further already",
            f"set steps to {latest} or more to go on from it, or give this run another name or output_dir",
        )


def _write_logit_cache(spec: DistillSpec, session: _Session, stop, run_dir: str, index: int) -> None:
    """`mode: teacher_logits`: the teacher's top-k over the corpus into `<run_dir>/logits` (`trainer.logit_cache`),
    from the first micro-batch again on every attempt (the manifest, written last, marks it complete); a complete
    cache of this spec is kept as it is."""
    from distillspec.logit_cache_manifest import CACHE_FOLDER
    from trainer import logit_cache
    from trainer.metrics_io import RunFiles, now_iso

    session.started_at = now_iso()
    earlier = None
    if index == 0:
        session.files = RunFiles(run_dir, events_dir=None)
        earlier = session.files.read_record("summary.json")  # kept with the cache, if that is kept
        session.files.write_json("spec.json", spec.resolved().model_dump(mode="json"))
        session.write_summary("running", None)
    directory = f"{run_dir}/{CACHE_FOLDER}"
    session.reporter.start(run_dir, 0, spec.steps)
    started = time.time()

    def on_step(step: int) -> bool:
        session.step = step
        return _should_stop(stop, step)

    manifest = logit_cache.write(spec, directory, on_step=on_step, note=session.reporter.note)
    if manifest.get(logit_cache.KEPT):
        session.step = spec.steps
        session.tokens = manifest["micro_batches"] * manifest["rows"] * manifest["max_target_length"]
        if earlier is not None and earlier.get("status") == "succeeded":
            session.carry_record(earlier)
            session.ran_before = {k: earlier[k] for k in ("tokens_per_sec", "wall_time_sec") if k in earlier}
        session.reporter.note(
            f"the logit cache in {directory} is complete for this spec and teacher step: kept as it is (remove its "
            "manifest.json to write it again)"
        )
    elif manifest:
        session.tokens = manifest["micro_batches"] * manifest["rows"] * manifest["max_target_length"]
        session.train_tokens, session.train_seconds = session.tokens, time.time() - started
        session.reporter.note(f"wrote the teacher's top-{spec.top_k} log-probabilities to {directory}")


def _export_final(spec: DistillSpec, state: TrainState, run_dir: str, index: int) -> None:
    """`checkpoint.export: hf|maxtext`: the final student in `<run_dir>/export/<format>` (replacing the one an
    earlier attempt wrote). Every process takes part in gathering the parameters; process 0 writes (`maxtext`:
    single-process runs only, checked before training by `_check_export`)."""
    import jax
    from jax.experimental import multihost_utils

    from trainer.export import write_hf, write_maxtext

    params = state.params
    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    if index == 0:
        write = write_maxtext if spec.checkpoint.export == "maxtext" else write_hf
        for note in write(params, spec, f"{run_dir}/export/{spec.checkpoint.export}", replace=True) or ():
            logging.getLogger(__name__).warning("export: %s", note)


def _check_export(spec: DistillSpec, process_count: int) -> None:
    """Before any compile: a MaxText export is an Orbax save, which every process of a multi-process run would
    have to join; the final export writes from process 0 alone, so it is refused there (exit 1)."""
    if spec.checkpoint.export == "maxtext" and process_count > 1:
        raise UserError(
            f"checkpoint.export: maxtext is written by one process; this run has {process_count}",
            "use checkpoint.export: hf, or export after the run: distillctl export RUN_DIR --to maxtext -o DIR",
        )
    if spec.checkpoint.export == "maxtext":
        from trainer.export import maxtext_refusal

        refused = maxtext_refusal(spec)
        if refused is not None:  # said before training, not after it
            raise UserError(f"checkpoint.export: maxtext: {refused[0]}", refused[1])


def _resume_session(session: _Session, start: Start, checkpoints: RunCheckpoints | None) -> None:
    """Carry the restored position into the session, and (process 0) start metrics.jsonl and summary.json."""
    steps = session.spec.steps
    session.step, session.tokens = start.step, start.tokens
    session.earlier_wall_seconds = start.wall_time_sec
    if start.resumed:
        session.resumed_from = start.step
        session.reporter.note(f"resuming from step {start.step} (checkpoint in {checkpoints.directory})")
    if session.files is None:
        return
    session.files.start_metrics(keep_through_step=start.step if start.resumed else None)
    previous = session.files.read_record("summary.json") if start.resumed else None
    if previous:
        before = previous.get("topology")
        if start.step >= steps:  # nothing left to train here: the record keeps what the steps ran on
            kept = ("tokens_per_sec", "compile_time_sec", "wall_time_sec", "resumed_from_step", "topology")
            session.ran_before = {key: previous[key] for key in kept if key in previous}
            if not isinstance(session.ran_before.get("topology"), dict):
                session.ran_before.pop("topology", None)
        elif isinstance(before, dict) and session.topology and before != session.topology:
            # tokens_per_sec and wall time of the attempts do not compare: said (a mesh edit was, this was not)
            session.reporter.note(
                f"resuming on another topology: {_topology(before)} until step {start.step}, "
                f"{_topology(session.topology)} from here"
            )
        _note_other_code(session, previous.get("trainer_code"), start.step)
        session.carry_record(previous)
    session.write_summary("running", None)


def _note_other_code(session: _Session, before: Any, step: int) -> None:
    """A resume by other trainer code (a new image under the same run id, which hashes the spec): the steps on
    either side were trained by different code, said where nothing else would show it."""
    from distillspec.sources import trainer_code_hash

    now = trainer_code_hash()
    if isinstance(before, str) and now is not None and before != now and step < session.spec.steps:
        session.reporter.note(
            f"resuming with other trainer code: {before[:12]} until step {step}, {now[:12]} from here (the run id "
            "hashes the spec, not the code); to compare versions, train them as separate runs (a new image, or "
            "target.code_in_run_id for a local sweep)"
        )


def _topology(topology: dict[str, Any]) -> str:
    mesh = " × ".join(f"{axis} {size}" for axis, size in (topology.get("mesh") or {}).items())
    return f"{topology.get('devices')} devices in {topology.get('processes')} process(es), mesh {mesh}"


def _loop(
    spec: DistillSpec,
    built: Built,
    session: _Session,
    stop: Callable[[], Any] | _Stop,
    checkpoints: RunCheckpoints | None,
    start: Start,
    trained_on: dict[str, Any],
) -> TrainState:
    """Train from `start` to the last step (or a stop signal), logging and checkpointing (each checkpoint records
    `trained_on`, `input_of(spec)`); the final state."""
    import jax

    from trainer import data as data_lib
    from trainer.corpus import Shard
    from trainer.step import hyperparameters

    shard = Shard(jax.process_index(), jax.process_count())
    accumulation = spec.batch.gradient_accumulation_steps
    batches = data_lib.make_batches(spec, built.vocab_size, built.rows, shard, start.position)
    if start.data_state is not None:
        try:
            batches.restore(start.data_state)
        except (ValueError, KeyError, TypeError) as e:  # a position file that is not the pipeline's JSON state
            from trainer.checkpointing import damaged_checkpoint

            where = f"{checkpoints.directory}/{start.step}" if checkpoints else "the checkpoint"
            raise damaged_checkpoint(where, ValueError(f"its input-pipeline position is unreadable: {e}")) from None
    to_device = built.local_to_device if batches.local else built.to_device
    evaluation = _Evaluation(spec, built, shard) if spec.eval is not None else None

    def batch(position: int):
        host = batches.next()  # [A, R, T]: every row (index sources) or this process's rows (documents)
        return host, to_device(host)

    def hparams_at(step: int) -> dict[str, Any]:
        return {k: np.float32(v) for k, v in hyperparameters(spec, step, built.lr_schedule).items()}

    state, step, position = start.state, start.step, start.position
    session.reporter.start(run_dir_of(spec), step, spec.steps)
    if step >= spec.steps:  # a finished run started again: no batch to read (a logit cache holds none past the
        batches.close()  # last step: the read ahead failed the run) and nothing to compile; every process agrees
        return state
    compile_start = time.time()
    data_state = batches.state()  # the position the next checkpoint saves: before the batch read ahead
    host, device_batch = batch(position)
    _processes_ready()  # every process has its data and state: the first step's collectives can begin
    with jax.set_mesh(built.mesh):  # activation sharding constraints name the mesh's axes
        step_fn = built.step_fn.lower(state, built.teacher_params, device_batch, hparams_at(step)).compile()
    session.compile_seconds = time.time() - compile_start

    def save(state: TrainState, step: int) -> None:
        _check_finite(state, step)
        meta = {
            "step": step,
            "data_position": position,
            "tokens": session.tokens,
            "wall_time_sec": session.wall_time(),
            "input": trained_on,
        }
        if session.teacher_source is not None:
            meta["teacher"] = session.teacher_source
        checkpoints.save(step, state.params, state.checkpointed(), meta, data_state)
        if session.files is not None:
            session.files.flush()
            session.write_summary("running", None)

    policy = CheckpointPolicy(checkpoints is not None, spec.checkpoint.every_steps or 0, spec.steps)
    window = MetricWindow(spec.logging.every_steps, spec.steps, time.time())
    while step < spec.steps and not _should_stop(stop, step):
        if checkpoints:
            checkpoints.check()  # a background save that failed ends the run now, not at the next save
        state = step_fn(state, built.teacher_params, device_batch, hparams_at(step))
        step += 1
        position += accumulation
        tokens = _global_tokens(host["mask"], batches.local)
        session.step, session.tokens = step, session.tokens + tokens
        window.add(tokens)
        if step < spec.steps:
            data_state = batches.state()
            host, device_batch = batch(position)  # prepared while the device computes this step
        eval_due = evaluation is not None and evaluation.due(step)
        if window.due(step) or eval_due:
            eval_sums = {}
            if eval_due:  # timed apart: 2000 held-out batches read as a training step of 48 tokens/s
                jax.block_until_ready(state.window)  # the step's own time stays the step's
                started = time.time()
                eval_sums = evaluation.run(state)
                window.exclude(time.time() - started)
            state = _log(state, step, window, built, session, eval_sums)
        if policy.periodic(step):
            save(state, step)
    if policy.final(step, _stopped(stop), checkpoints.latest_step() if checkpoints else None):
        save(state, step)
    batches.close()
    return state


def _global_tokens(mask: np.ndarray, local: bool) -> int:
    """Valid tokens of a step across every process (a process that holds only its rows asks the others)."""
    tokens = int(mask.sum())
    import jax

    if local and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tokens = int(np.sum(multihost_utils.process_allgather(np.asarray(tokens, np.int64))))
    return tokens


class _Evaluation:
    """The held-out set (`spec.eval`), read once, and when to evaluate it: every `eval.every_steps` steps and at
    the last step."""

    def __init__(self, spec: DistillSpec, built: Built, shard):
        from trainer import data as data_lib

        self.spec, self.built = spec, built
        host = data_lib.eval_batches(spec, built.vocab_size, built.rows, shard)
        self.batches = [built.local_to_device(b) for b in host]

    def due(self, step: int) -> bool:
        return step % self.spec.eval.every_steps == 0 or step == self.spec.steps

    def run(self, state: TrainState) -> dict[str, tuple[float, float]]:
        """`{eval/metric: (Σsum, Σcount)}` over the held-out batches."""
        import jax

        total = None
        with jax.set_mesh(self.built.mesh):
            for b in self.batches:
                sums = self.built.eval_fn(state.params, self.built.teacher_params, b)
                total = sums if total is None else jax.tree.map(lambda x, y: x + y, total, sums)
        return {k: (float(v[0]), float(v[1])) for k, v in jax.device_get(total).items()}


def _log(
    state: TrainState,
    step: int,
    window: MetricWindow,
    built: Built,
    session: _Session,
    eval_sums: dict[str, tuple[float, float]] | None = None,
) -> TrainState:
    """Close the metric window at `step`: raise Diverged, or write the line (with the eval metrics, when this
    step evaluated) and return the state with a zero window."""
    import jax

    sums, bad_step = jax.device_get((state.window, state.bad_step))
    if int(bad_step) >= 0:
        session.step = int(bad_step)  # the summary's step: where it diverged, not the log step that found it
        raise _diverged(int(bad_step))
    _check_finite_metrics(sums, step, session)
    record, seconds, tokens = window.close(
        step,
        time.time(),
        tokens=session.tokens,
        learning_rate=float(built.lr_schedule(step - 1)),
        sums={**{k: (float(v[0]), float(v[1])) for k, v in sums.items()}, **(eval_sums or {})},
    )
    session.train_seconds += seconds
    session.train_tokens += tokens
    # merged: a line without eval metrics keeps the last eval's values
    session.final_metrics = {**session.final_metrics, **{k: v["value"] for k, v in record["metrics"].items()}}
    if session.files is not None:
        session.files.log(record)
    session.reporter.log(record)
    return state.replace(window=built.zero_window())


def _close_quietly(checkpoints: RunCheckpoints) -> None:
    """Let good saves in flight finish while another error ends the run; that error is the one reported."""
    try:
        checkpoints.close()
    except Exception:  # noqa: BLE001, S110 - the error that ended the run is the one to report
        pass


def _diverged(bad_step: int) -> Diverged:
    return Diverged(
        f"the loss became NaN or infinite at step {bad_step}",
        "lower the learning rate, or check the data and the teacher checkpoint",
    )


def _check_finite_metrics(sums: dict, step: int, session: _Session) -> None:
    """A metric that is not finite while the total loss is (the divergence check reads only that): a teacher whose
    logits overflow float32 gave an infinite teacher_loss beside a finite, even negative, training loss, and the run
    ended "internal error (a bug)" writing the line. A teacher's is the teacher's fault (exit 1); another's is
    divergence (65)."""
    bad = sorted(name for name, (total, count) in sums.items() if not (np.isfinite(total) and np.isfinite(count)))
    if not bad:
        return
    teacher = next((name for name in bad if name.endswith("teacher_loss")), None)
    if teacher is not None:
        raise UserError(
            f"the teacher's outputs are not finite (teacher_loss is {float(sums[teacher][0])} over steps up to {step}): "
            "its logits overflow float32, so every distillation term computed from them is meaningless",
            "check the teacher checkpoint (its weights load and are finite, but its logits are not: a scale or dtype "
            "problem in its head or final norm)",
        )
    session.step = step
    raise Diverged(
        f"{', '.join(bad)} became NaN or infinite by step {step} (the total loss stayed finite)",
        "lower the learning rate, or check the data and the teacher checkpoint",
    )


def _check_finite(state: TrainState, step: int) -> None:
    import jax

    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
        raise _diverged(bad)


def _stopped(stop) -> bool:
    return bool(getattr(stop, "signal_name", None))


def _should_stop(stop, step: int) -> bool:
    """Whether to stop before `step`: a local signal, or (multi-process) the coordination service's preemption
    sync point, which every process reaches at the same step."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        try:
            if multihost_utils.reached_preemption_sync_point(step):
                stop.signal_name = stop.signal_name or "SIGTERM"
                return True
        except RuntimeError:
            pass  # no preemption service (not initialised by jax.distributed): fall back to the local flag
    return _stopped(stop)
