"""The training loop: build the models and state, resume, train, log, checkpoint, and end with an exit code.

`run(spec, ...) -> TrainerExit` is the whole run. It never raises: every failure becomes an exit code (see
`trainer.exit_codes`), a `summary.json` status and a message for the reporter. `train(...)` is the loop itself,
raising `TrainerError`s.

Multi-host: with `ProcessOptions` (coordinator address, process count, process id) or on TPU (where
`jax.distributed.initialize()` finds its peers itself) every process runs this same loop on its share of the global
batch; process 0 alone writes `spec.json`, `metrics.jsonl`, `summary.json` and TensorBoard events; all processes
write their checkpoint shards.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from distillspec.config import DistillSpec
from trainer.exit_codes import RetryableError, TrainerError, TrainerExit, UserError


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


class _Stop:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint and exits 143 at the next step boundary."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name


def with_overrides(spec: DistillSpec, *, output_dir: str | None = None, steps: int | None = None):
    """`(spec, problems)` with command-line overrides applied and everything validated again (spec None on error)."""
    from distillspec.specfile import validate_data

    changes = {k: v for k, v in (("output_dir", output_dir), ("steps", steps)) if v is not None}
    if not changes:
        return spec, []
    return validate_data({**spec.model_dump(mode="json", exclude_unset=True), **changes})


def run_dir_of(spec: DistillSpec) -> str:
    return f"{spec.output_dir.rstrip('/')}/{spec.name}"


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
    stop = _Stop()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, stop)
    session = _Session(spec, reporter)
    try:
        code, message = TrainerExit.OK, ""
        try:
            _initialize_distributed(process)
            _enable_compilation_cache()
            train(spec, session, stop)
            if stop.signal_name and session.step < spec.steps:
                code, message = (
                    TrainerExit.PREEMPTED,
                    f"stopped by {stop.signal_name} at step {session.step}; checkpoint saved",
                )
        except TrainerError as e:
            code, message = e.exit_code, e.message + (f" (hint: {e.hint})" if e.hint else "")
        except (OSError, ConnectionError, TimeoutError) as e:
            code, message = TrainerExit.RETRYABLE, f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - the exit code decides what happens next
            if _is_runtime_error(e):
                code, message = TrainerExit.RETRYABLE, f"{type(e).__name__}: {_first_line(e)}"
            else:
                if os.environ.get("DISTILLCTL_DEBUG"):
                    traceback.print_exc()
                code, message = (
                    TrainerExit.INTERNAL,
                    (
                        f"internal error: {type(e).__name__}: {_first_line(e)} (a bug; rerun with DISTILLCTL_DEBUG=1 "
                        "for the traceback)"
                    ),
                )
        session.finish(code, message)
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _is_runtime_error(e: Exception) -> bool:
    import jax

    return isinstance(e, jax.errors.JaxRuntimeError)


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


def _initialize_distributed(process: ProcessOptions) -> None:
    import jax

    if process.coordinator_address or process.num_processes:
        if not (process.coordinator_address and process.num_processes and process.process_id is not None):
            raise UserError("multi-process runs need --coordinator-address, --num-processes and --process-id together")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(process.coordinator_address, process.num_processes, process.process_id)
        except (RuntimeError, ValueError) as e:
            raise RetryableError(
                f"cannot join the coordinator at {process.coordinator_address}: {_first_line(e)}"
            ) from None
    elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # TPU pods: the peers are found from the environment


class _Session:
    """What the run has written and must write at exit: the summary and the outputs of process 0."""

    def __init__(self, spec: DistillSpec, reporter: Reporter):
        self.spec = spec
        self.reporter = reporter
        self.files = None  # RunFiles on process 0 once the run directory is open
        self.step = 0
        self.tokens = 0
        self.started = time.time()
        self.started_at = None
        self.train_seconds = 0.0
        self.train_tokens = 0
        self.compile_seconds = 0.0
        self.final_metrics: dict[str, float | None] = {}
        self.resumed_from: int | None = None

    def summary(self, status: str, exit_code: int | None, message: str = "") -> dict[str, Any]:
        from trainer.metrics_io import now_iso

        return {
            "status": status,
            "exit_code": exit_code,
            "step": self.step,
            "total_steps": self.spec.steps,
            "tokens": self.tokens,
            "tokens_per_sec": self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0,
            "wall_time_sec": round(time.time() - self.started, 3),
            "compile_time_sec": round(self.compile_seconds, 3),
            "final_metrics": self.final_metrics,
            "started_at": self.started_at or now_iso(),
            "updated_at": now_iso(),
            "mode": self.spec.mode,
            "run_name": self.spec.name,
            "message": message,
            "resumed_from_step": self.resumed_from,
        }

    def write_summary(self, status: str, exit_code: int | None, message: str = "") -> None:
        if self.files is not None:
            self.files.write_json("summary.json", self.summary(status, exit_code, message))

    def finish(self, code: TrainerExit, message: str) -> None:
        status = STATUS_OF[code]
        if self.files is None and _is_process_zero():
            try:  # a failure before the directory opened (bad teacher path...): still leave a summary behind
                from trainer.metrics_io import RunFiles

                self.files = RunFiles(run_dir_of(self.spec), tensorboard=False)
            except Exception:  # noqa: BLE001 - nothing more can be written
                self.files = None
        try:
            if self.files is not None:
                self.write_summary(status, int(code), message)
                self.files.close()
        except Exception as e:  # noqa: BLE001
            message = f"{message}; could not write summary.json: {e}"
        self.reporter.end(status, int(code), message)


def _is_process_zero() -> bool:
    try:
        import jax

        return jax.process_index() == 0
    except Exception:  # noqa: BLE001
        return True


# --- the loop ------------------------------------------------------------------------------------------------


def train(spec: DistillSpec, session: _Session, stop: Callable[[], Any] | _Stop) -> None:
    import jax

    from trainer import data as data_lib
    from trainer.checkpointing import RunCheckpoints
    from trainer.metrics_io import RunFiles, metrics_record, now_iso
    from trainer.setup import build
    from trainer.step import hyperparameters

    run_dir = run_dir_of(spec)
    process_zero = jax.process_index() == 0
    built = build(spec)
    session.started_at = now_iso()
    if process_zero:
        session.files = RunFiles(run_dir, tensorboard=spec.logging.tensorboard)
        session.files.write_json("spec.json", spec.resolved().model_dump(mode="json"))

    checkpoints = (
        RunCheckpoints(f"{run_dir}/checkpoints", keep=spec.checkpoint.keep) if spec.checkpoint.enabled else None
    )
    state = built.state
    position = 0  # micro-batches consumed
    start_step = 0
    latest = checkpoints.latest_step() if checkpoints else None
    if latest is not None:
        try:
            params, train_state, meta = checkpoints.restore(latest, state["params"], _train_state(state))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"the checkpoint at {run_dir}/checkpoints/{latest} does not match this spec: {_first_line(e)}",
                "use a new run name (or output_dir) for a different model, or delete the old run directory",
            ) from None
        state = {"params": params, **train_state}
        position, start_step = int(meta["data_position"]), int(meta["step"])
        session.tokens = int(meta["tokens"])
        session.resumed_from = start_step
        session.reporter.note(f"resuming from step {start_step} (checkpoint in {run_dir}/checkpoints)")
    session.step = start_step
    if process_zero:
        session.files.start_metrics(keep_through_step=start_step if latest is not None else None)
        previous = session.files.read_json("summary.json") if latest is not None else None
        if previous:
            session.started_at = previous.get("started_at", session.started_at)
            session.final_metrics = previous.get("final_metrics", {})
        session.write_summary("running", None)

    source = data_lib.make_source(spec.data, built.vocab_size, spec.batch.max_target_length)
    accumulation = spec.batch.gradient_accumulation_steps

    def batch(step_position: int):
        micro = [
            data_lib.batch_at(source, step_position + a, built.rows, spec.batch.max_target_length)
            for a in range(accumulation)
        ]
        host = {k: np.stack([m[k] for m in micro]) for k in micro[0]}  # [A, R, T]
        return host, built.to_device(host)

    def hparams_at(step: int) -> dict[str, Any]:
        values = hyperparameters(spec, step, built.lr_schedule)
        return {k: np.float32(v) for k, v in values.items()}

    reporter = session.reporter
    reporter.start(run_dir, start_step, spec.steps)
    compile_start = time.time()
    host, device_batch = batch(position)
    with jax.set_mesh(built.mesh):  # activation sharding constraints name the mesh's axes
        step_fn = built.step_fn.lower(state, built.teacher_params, device_batch, hparams_at(start_step)).compile()
    session.compile_seconds = time.time() - compile_start

    def save(step: int) -> None:
        _check_finite(state, step)
        meta = {
            "step": step,
            "data_position": position,
            "tokens": session.tokens,
            "wall_time_sec": round(time.time() - session.started, 3),
        }
        checkpoints.save(step, state["params"], _train_state(state), meta)
        if process_zero:
            session.files.flush()
            session.write_summary("running", None)

    window_start, window_tokens, window_steps = time.time(), 0, 0
    every_log = spec.logging.every_steps
    every_save = spec.checkpoint.every_steps
    step = start_step
    try:
        while step < spec.steps:
            if _should_stop(stop, step):
                break
            state = step_fn(state, built.teacher_params, device_batch, hparams_at(step))
            step += 1
            position += accumulation
            tokens = int(host["mask"].sum())
            session.tokens += tokens
            window_tokens += tokens
            window_steps += 1
            session.step = step
            if step < spec.steps:
                host, device_batch = batch(position)  # prepared while the device computes this step
            if step % every_log == 0 or step == spec.steps:
                sums, bad_step = jax.device_get((state["window"], state["bad_step"]))
                if int(bad_step) >= 0:
                    raise Diverged(
                        f"the loss became NaN or infinite at step {int(bad_step)}",
                        "lower the learning rate, or check the data and the teacher checkpoint",
                    )
                elapsed = time.time() - window_start
                session.train_seconds += elapsed
                session.train_tokens += window_tokens
                record = metrics_record(
                    step,
                    time=time.time(),
                    tokens=session.tokens,
                    tokens_per_sec=window_tokens / max(elapsed, 1e-9),
                    step_time_sec=elapsed / window_steps,
                    learning_rate=float(built.lr_schedule(step - 1)),
                    sums={k: (float(v[0]), float(v[1])) for k, v in sums.items()},
                )
                session.final_metrics = {k: v["value"] for k, v in record["metrics"].items()}
                if process_zero:
                    session.files.log(record)
                reporter.log(record)
                state = {**state, "window": built.zero_window()}
                window_start, window_tokens, window_steps = time.time(), 0, 0
            if checkpoints and every_save and step % every_save == 0 and step < spec.steps:
                save(step)
        # The last step, or where a signal stopped the run, unless a periodic save just wrote that very step
        # (saving a step twice is an error to orbax).
        if checkpoints and (step == spec.steps or _stopped(stop)) and checkpoints.latest_step() != step:
            save(step)
    finally:
        if checkpoints:
            checkpoints.close()  # waits for saves in flight
    if not _stopped(stop):
        _check_finite(state, step)


def _train_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "params"}


def _check_finite(state: dict[str, Any], step: int) -> None:
    import jax

    bad = int(jax.device_get(state["bad_step"]))
    if bad >= 0:
        raise Diverged(
            f"the loss became NaN or infinite at step {bad}",
            "lower the learning rate, or check the data and the teacher checkpoint",
        )


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
