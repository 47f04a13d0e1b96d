"""What a run writes besides checkpoints, under `<output_dir>/<name>/` (a local path or an fsspec URL).

`spec.json`: the resolved spec (`DistillSpec.resolved()`), written at start.

`metrics.jsonl` (on object stores: `metrics/part-NNNNN.jsonl` while running, see METRICS_PARTS_DIR): one JSON
object per log step (every `logging.every_steps` optimizer steps, and the last step):

    {"step": 20, "time": 1767000000.0, "tokens": 10240, "tokens_per_sec": 51234.5, "step_time_sec": 0.0099,
     "learning_rate": 0.0029,
     "metrics": {"distill/kl_div_T1": {"sum": 812.5, "count": 5120.0, "value": 0.1587}, ...}}

`tokens` counts valid tokens processed so far; `tokens_per_sec` and `step_time_sec` are over the steps since the
previous line (wall clock, including data loading; compilation happens before the first step and is reported
in summary.json). Each metric's `sum`/`count` accumulate over the steps since the previous line, so any window
aggregates token-weighted as Σsum/Σcount; `value` is that line's own aggregate. Perplexity metrics
(`trainer.loss.PERPLEXITY_METRICS`) carry the cross-entropy's sum and count: their value is exp(Σsum/Σcount).
On resume, lines after the restored checkpoint's step are dropped, so the file equals an uninterrupted run's.

`summary.json` (replaced atomically): `{"status": "running"|"succeeded"|"failed"|"diverged"|"preempted",
"exit_code": int|null, "step", "total_steps", "tokens", "tokens_per_sec" (this attempt, excluding compilation),
"wall_time_sec" (every attempt so far: a resumed run adds its time to its checkpoint's and its last summary's),
"compile_time_sec", "final_metrics": {name: value over the last log window}, "started_at", "updated_at" (ISO 8601
UTC), "mode", "run_name", "run_id" (the orchestrator's $DISTILLCTL_RUN_ID, null when unset), "message" (why it
stopped, when not succeeded; `OutputNotWritable: <path>: <error>` when the storage refused a write),
"resumed_from_step" (int|null), "topology": {"processes", "devices", "mesh": {"data", "fsdp", "tensor"}} (this
attempt's; null before the models are built), "trainer_code" (`distillspec.sources.trainer_code_hash`: which code
trained it)}` — at start, at each checkpoint and at exit.

`tensorboard/`: event files with the guide's tags (`distill/...`) plus `train/learning_rate` and
`train/tokens_per_sec` (in `<logging.tensorboard_dir>/<name>/` instead, where the spec sets one); for a remote
folder they are written locally and copied up at each checkpoint and at exit.

Only process 0 writes any of these. A process other than 0 that fails writes `failures/process-<i>.json`
(summary.json's keys plus `process_index`) instead, and removes its own at start: process 0 may never get to say
why the run ended, and the orchestrator reads these when summary.json is missing or still says running.

Local files get mode 0666 minus the umask (0644 by default), like any file the user creates.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
from typing import Any

import fsspec

from distillspec.checks import READ_SCHEMES
from distillspec.contract import FAILURES_DIR, METRICS_PART_PATTERN, METRICS_PARTS_DIR
from trainer.loss import metric_value

STATUSES = ("running", "succeeded", "failed", "diverged", "preempted")
# On an object store (gs://), metrics.jsonl cannot be appended to: the log is written as numbered parts of
# METRICS_PART_LINES lines, `metrics/part-00000.jsonl`, ..., each rewritten while it fills (readers concatenate
# them in name order, see orchestrator/outputs.py), and metrics.jsonl is written whole once, at exit.
METRICS_PART_LINES = 100


def part_name(number: int) -> str:
    return f"{METRICS_PARTS_DIR}/part-{number:05d}.jsonl"


def _current_umask() -> int:
    """The process's umask now. Linux reports it in /proc (a read: safe with other threads writing files);
    elsewhere it is set and restored, which is safe only before threads start."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def metrics_record(
    step: int,
    *,
    time: float,
    tokens: int,
    tokens_per_sec: float,
    step_time_sec: float,
    learning_rate: float,
    sums: dict[str, tuple[float, float]],
) -> dict[str, Any]:
    """One metrics.jsonl line."""
    return {
        "step": step,
        "time": round(time, 3),
        "tokens": tokens,
        "tokens_per_sec": tokens_per_sec,
        "step_time_sec": step_time_sec,
        "learning_rate": learning_rate,
        "metrics": {
            name: {"sum": s, "count": c, "value": _json_float(metric_value(name, s, c))}
            for name, (s, c) in sorted(sums.items())
        },
    }


def _json_float(x: float) -> float | None:
    """JSON has no NaN or inf: an undefined value (no valid token) is null."""
    return x if x == x and abs(x) != float("inf") else None


class RunFiles:
    """Writer of one run directory's files (create on process 0 only)."""

    def __init__(self, run_dir: str, *, events_dir: str | None, resumed_at: int | None = None):
        """`events_dir`: where TensorBoard events go (`events_dir_of`), None for none."""
        self.run_dir = run_dir.rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.run_dir)
        self.local = _is_local(self.fs)
        self.fs.makedirs(self._root, exist_ok=True)
        self._lines: list[str] = []
        self._tb = None
        self._tb_local_dir = None
        self._events_dir = events_dir.rstrip("/") if events_dir else None
        if self._events_dir is not None:
            from tensorboardX import SummaryWriter

            events_fs, self._events_root = fsspec.core.url_to_fs(self._events_dir)
            self._events_fs = None if _is_local(events_fs) else events_fs
            with self._writing(self._events_dir):
                if self._events_fs is None:
                    os.makedirs(self._events_root, exist_ok=True)
            self._tb_local_dir = self._events_root if self._events_fs is None else tempfile.mkdtemp()
            # Started at step S (0 for a fresh start): the events an earlier attempt logged after S (replayed now)
            # are purged from the view (TensorBoard's SessionLog.START), as metrics.jsonl drops its lines after S;
            # they showed twice.
            purge = resumed_at + 1 if resumed_at is not None else None
            self._tb = SummaryWriter(logdir=self._tb_local_dir, flush_secs=30, purge_step=purge)

    def path(self, name: str) -> str:
        return f"{self._root}/{name}"

    def write_json(self, name: str, data: Any) -> None:
        """Write `name` atomically: a temporary file renamed over it (one PUT for object stores)."""
        with self._writing():
            self._replace(name, json.dumps(data, indent=2, allow_nan=False) + "\n")

    @contextlib.contextmanager
    def _writing(self, where: str | None = None):
        """An OSError while writing the run directory (or `where`, the events folder) as OutputNotWritable (exit
        1) or RetryableError (exit 42)."""
        from trainer.exit_codes import storage_failure

        try:
            yield
        except OSError as e:
            setting = "logging.tensorboard_dir" if where is not None and where != self.run_dir else "output_dir"
            raise storage_failure(where or self.run_dir, e, setting) from None

    def _replace(self, name: str, payload: str) -> None:
        target = self.path(name)
        if self.local:
            fd, tmp = tempfile.mkstemp(dir=self._root, prefix=f".{name}.")
            try:
                os.fchmod(
                    fd, 0o666 & ~_current_umask()
                )  # mkstemp makes 0600; the outputs are for the team (0644 by default)
                with os.fdopen(fd, "w") as f:
                    f.write(payload)
                os.replace(tmp, target)
            except BaseException:
                _remove(tmp)
                raise
        else:
            self.fs.pipe_file(target, payload.encode())

    def read_json(self, name: str) -> Any | None:
        try:
            with self.fs.open(self.path(name), "r") as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def read_record(self, name: str) -> dict[str, Any] | None:
        """The JSON object in `name` (an earlier attempt's summary.json); None when there is none: no file, not
        JSON, not UTF-8, or JSON that is not an object (a resume read `[1, 2]` and ended as a bug, exit 70)."""
        try:
            found = self.read_json(name)
        except UnicodeDecodeError:
            return None
        return found if isinstance(found, dict) else None

    def start_metrics(self, *, keep_through_step: int | None) -> None:
        """Open the metrics log: a fresh run starts it empty; a resumed one keeps lines up to its checkpoint."""
        kept: list[str] = []
        if keep_through_step is not None:
            for line in self._existing_metric_lines():
                try:
                    if json.loads(line)["step"] <= keep_through_step:
                        kept.append(line.rstrip("\n"))
                except (json.JSONDecodeError, KeyError, TypeError):
                    break  # a line cut by the kill: nothing after it counts
        self._lines = kept
        with self._writing():
            if self.local:
                self._replace("metrics.jsonl", "".join(line + "\n" for line in self._lines))
            else:
                for stale in self._part_paths():
                    self.fs.rm_file(stale)
                if self.fs.exists(self.path("metrics.jsonl")):
                    self.fs.rm_file(self.path("metrics.jsonl"))  # written again, whole, at close
                for first in range(0, len(self._lines), METRICS_PART_LINES):
                    self._write_part(first)

    def _existing_metric_lines(self) -> list[str]:
        """The log as an earlier attempt left it: its part files in order (object stores), else metrics.jsonl."""
        parts = self._part_paths()
        names = parts or ([self.path("metrics.jsonl")] if self.fs.exists(self.path("metrics.jsonl")) else [])
        lines: list[str] = []
        for name in names:
            with self.fs.open(name, "r") as f:
                lines += list(f)
        return lines

    def _part_paths(self) -> list[str]:
        if self.local:
            return []
        return sorted(self.fs.glob(self.path(f"{METRICS_PARTS_DIR}/{METRICS_PART_PATTERN}")))

    def _write_part(self, first: int) -> None:
        """Write the part file holding line `first` (a multiple of METRICS_PART_LINES) and the lines after it."""
        number = first // METRICS_PART_LINES
        chunk = self._lines[first : first + METRICS_PART_LINES]
        self._replace(part_name(number), "".join(line + "\n" for line in chunk))

    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False)
        self._lines.append(line)
        with self._writing():
            if self.local:
                with open(self.path("metrics.jsonl"), "a") as f:
                    f.write(line + "\n")
            else:
                # An object cannot be appended to: rewrite only the current part (at most METRICS_PART_LINES lines),
                # so the bytes uploaded per line stay bounded instead of growing with the run.
                last = len(self._lines) - 1
                self._write_part(last - last % METRICS_PART_LINES)
        if self._tb is not None:
            step = record["step"]
            for name, entry in record["metrics"].items():
                if entry["value"] is not None:
                    self._tb.add_scalar(name, entry["value"], step)
            self._tb.add_scalar("train/learning_rate", record["learning_rate"], step)
            self._tb.add_scalar("train/tokens_per_sec", record["tokens_per_sec"], step)

    def flush(self) -> None:
        """Make TensorBoard events durable (and copy them up for a remote run directory)."""
        if self._tb is None:
            return
        with self._writing(self._events_dir):
            self._tb.flush()
            if self._events_fs is not None:
                self._events_fs.put(self._tb_local_dir + "/", self._events_root, recursive=True)

    def close(self) -> None:
        if not self.local and self._lines:
            with self._writing():  # one whole copy for readers that know only metrics.jsonl; the parts stay
                self._replace("metrics.jsonl", "".join(line + "\n" for line in self._lines))
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def check_writable(directory: str, setting: str = "output_dir") -> None:
    """Check that `directory` (a local path or fsspec URL) can be written, creating nothing: a probe file is
    written and deleted in it, or, while it does not exist yet, in its nearest existing ancestor (a run that
    fails before training leaves no folders behind).

    Raises OutputNotWritable (exit 1) when the storage refuses (a file where a directory belongs, no permission, a
    read-only or full file system), RetryableError (exit 42) for transient I/O."""
    import errno
    import uuid

    from trainer.exit_codes import OutputNotWritable, storage_failure

    scheme = directory.split("://", 1)[0] if "://" in directory else "file"
    if scheme not in READ_SCHEMES:  # `validate` warns alike; fsspec's own words were 89 lines of libjvm for hdfs://
        raise OutputNotWritable(
            directory,
            f"the trainer's image writes gs:// and local paths, not {scheme}://",
            setting,
            hint=f"point {setting} at a bucket (gs://...) or a volume the pods mount (target.volumes)",
        )
    try:
        # inside: a scheme with no filesystem here (s3:// without s3fs) is the setting's fault, not transient (it
        # was exit 42, retried to the same end)
        fs, root = fsspec.core.url_to_fs(directory.rstrip("/"))
    except (ImportError, ValueError, OSError) as e:
        raise OutputNotWritable(directory, e, setting) from None
    try:
        where = root
        while not fs.exists(where) and "/" in where.strip("/"):
            where = where.rstrip("/").rsplit("/", 1)[0] or "/"
        if fs.exists(where) and not fs.isdir(where):
            raise NotADirectoryError(errno.ENOTDIR, "a file is where a directory belongs", where)
        probe = f"{where.rstrip('/')}/.write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except FileNotFoundError as e:
        # A folder that exists yet cannot hold a new file (/proc, /sys): no retry changes that (it was exit 42).
        raise OutputNotWritable(directory, e, setting) from None
    except OSError as e:
        raise storage_failure(directory, e, setting) from None


def failure_name(process_index: int) -> str:
    """Where process `process_index` (> 0) leaves its verdict when it fails: `failures/process-<i>.json`."""
    return f"{FAILURES_DIR}/process-{process_index}.json"


def write_process_failure(run_dir: str, process_index: int, record: dict[str, Any]) -> None:
    """Leave the failure of a process other than 0 (which writes summary.json) in the run directory, so the verdict
    outlives the process and its pod. `record` has summary.json's keys plus `process_index`."""
    fs, root = fsspec.core.url_to_fs(run_dir.rstrip("/"))
    fs.makedirs(f"{root}/{FAILURES_DIR}", exist_ok=True)
    fs.pipe_file(
        f"{root}/{failure_name(process_index)}", (json.dumps(record, indent=2, allow_nan=False) + "\n").encode()
    )


def clear_process_failure(run_dir: str, process_index: int) -> None:
    """Forget an earlier attempt's failure of this process (a new attempt speaks for it now)."""
    fs, root = fsspec.core.url_to_fs(run_dir.rstrip("/"))
    try:
        fs.rm_file(f"{root}/{failure_name(process_index)}")
    except OSError:  # FileNotFoundError included: nothing to forget
        pass
