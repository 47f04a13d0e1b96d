"""Reading what a run wrote: `metrics.jsonl`, `summary.json` and `spec.json` under its output path, a local
path or an fsspec URL (`gs://bucket/prefix/<run id>`, `memory://...` in tests).

The trainer's format (`trainer/metrics_io.py` on the trainer branch): each `metrics.jsonl` line is

    {"step": 20, "time": <unix s>, "tokens": <valid tokens so far>, "tokens_per_sec": ..., "step_time_sec": ...,
     "learning_rate": ..., "metrics": {"distill/kl_div_T1": {"sum": 812.5, "count": 5120.0, "value": 0.1587}, ...}}

where `sum`/`count` accumulate over the steps since the previous line (`value` is that line's own aggregate and
is ignored here: windows are aggregated from the pairs). Perplexity metrics carry the cross-entropy's sum and
count. `summary.json` holds the trainer's verdict (`status`: running, succeeded, failed, diverged, preempted),
`step`, `total_steps`, `wall_time_sec` (over every attempt), `run_id`, ...; a process other than 0 that fails leaves
`failures/process-<i>.json` (summary.json's keys plus `process_index`), the verdict when summary.json is missing or
still says running (process 0 may never get to write it).

A running point's files may be missing or half-written (the last line cut off mid-write): those read as absent
or shorter, never as an error. If a restarted attempt appended steps the log already had, the later attempt's
records win (the trainer itself truncates the log to its checkpoint on resume, so this only guards old files).
The storage itself must answer, though: before a sweep's runs are read, an object store (gs://) is asked once
whether the bucket exists and may be listed (`check_store`), so that a misspelt bucket, an unreachable endpoint or
refused credentials are an error rather than a table of runs that were never created.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from distillspec.contract import FAILURES_DIR, METRICS_PART_PATTERN, METRICS_PARTS_DIR, STOPPED_FILE, SUMMARY_STATUSES
from orchestrator.errors import UsageError
from orchestrator.exit_codes import ExitCode

# fsspec protocols and the extra that installs their implementation.
EXTRAS = {"gs": "gcs", "gcs": "gcs"}


@dataclasses.dataclass(frozen=True)
class LogLine:
    """One `metrics.jsonl` record: `metrics[name] = (sum, count)` accumulated since the previous record."""

    step: int
    time: float | None
    tokens: int | None
    tokens_per_sec: float | None
    metrics: dict[str, tuple[float, float]]
    step_time_sec: float | None = None
    learning_rate: float | None = None


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    path: str
    log: tuple[LogLine, ...] = ()
    summary: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    readable: bool = True  # False: the storage could not be read at all (say gs:// without gcsfs)
    failures: tuple[dict[str, Any], ...] = ()  # `failures/process-<i>.json`: processes other than 0 that failed
    stopped: dict[str, Any] | None = None  # `stopped.json`: the sweep service stopped it by an early-stopping rule
    # `metrics.jsonl` lines that are not records, a cut-off last line (a write in progress) not counted: damage
    # that `results` warns about, since the table is computed without them.
    skipped_lines: int = 0
    cut_off_line: bool = False  # the log's last line has no newline and is no record: a write in progress, or damage
    summary_unreadable: bool = False  # summary.json is there but is no JSON object (the trainer writes it whole)
    # Local files (or the run folder) that are there but cannot be read (permissions, a folder where a file goes),
    # one sentence each: read as absent, a run that succeeded showed "Pending (NotCreated)".
    unreadable: tuple[str, ...] = ()

    @property
    def verdict(self) -> dict[str, Any] | None:
        """The trainer's last word on the run: summary.json, unless that is missing or still says running while a
        process other than 0 left a failure (then the latest such failure, with its `process_index`)."""
        if self.failures and (self.summary is None or self.summary.get("status") == "running"):
            return max(self.failures, key=lambda f: str(f.get("updated_at") or ""))
        return self.summary

    @property
    def last_step(self) -> int | None:
        """The furthest step either file reports: a running trainer rewrites summary.json only at checkpoints, so
        its log is usually ahead."""
        steps = [self.log[-1].step] if self.log else []
        if self.summary and isinstance(self.summary.get("step"), int) and not isinstance(self.summary["step"], bool):
            steps.append(self.summary["step"])
        return max(steps) if steps else None

    @property
    def total_steps(self) -> int | None:
        value = (self.summary or {}).get("total_steps")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def wall_time_sec(self) -> float | None:
        """The run's wall time so far over every attempt, as the trainer reported it."""
        return _float((self.summary or {}).get("wall_time_sec"))

    @property
    def exists(self) -> bool:
        return bool(self.log) or self.summary is not None or bool(self.failures)

    @property
    def damage(self) -> tuple[str, ...]:
        """How the run's files disagree with themselves, one sentence each (none: intact). A table computed from
        such files shows another step's values, and a gate must not judge the point on them."""
        if self.unreadable:  # what the rest would say follows from it (no records, no summary)
            return self.unreadable
        found = []
        if self.skipped_lines:
            found.append(f"{self.skipped_lines} line(s) of metrics.jsonl are not metric records")
        status = (self.summary or {}).get("status")
        if self.cut_off_line and status not in (None, "running"):  # nothing is writing it any more
            found.append(f"the last line of metrics.jsonl is cut off, though the run has ended ({status})")
        step = (self.summary or {}).get("step")
        logs_metrics = (self.spec or {}).get("mode") != "teacher_logits"  # a logits cache writer logs no records
        if status == "succeeded" and logs_metrics and isinstance(step, int) and step > 0:
            # A run that succeeded logged its last step: a log that stops short was cut, replaced or appended to.
            if not self.log:
                found.append(
                    f"metrics.jsonl holds no records, though summary.json says the run succeeded at step {step}"
                )
            elif self.log[-1].step != step:
                found.append(
                    f"metrics.jsonl ends at step {self.log[-1].step}, though summary.json says the run succeeded at "
                    f"step {step}"
                )
        if self.summary_unreadable:
            found.append("summary.json is not a JSON object, so the run's verdict cannot be read from it")
        elif self.summary is not None:
            found += _summary_fields_damage(self.summary)
        elif self.summary is None and self.log and not self.failures:  # the trainer writes it before its first record
            found.append("metrics.jsonl holds records but there is no summary.json (deleted, or a copy cut short?)")
        return tuple(found)


class MissingFilesystem(UsageError):
    """An output path's protocol (gs://) needs a package that is not installed."""


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def check_filesystem(path: str) -> None:
    """Raise MissingFilesystem when `path`'s protocol has no implementation installed (gs:// without gcsfs);
    otherwise every read below treats an unreachable file as absent, which would hide the real cause."""
    import fsspec  # imported when outputs are read: the CLI starts without it

    protocol = fsspec.utils.get_protocol(path)
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        extra = EXTRAS.get(protocol)
        install = f"install it with `pip install 'distillctl[{extra}]'`" if extra else "install the fsspec backend"
        raise MissingFilesystem(f"cannot read {path}: {e}", install) from None
    except ValueError as e:
        raise UsageError(
            f"cannot read {path}: {e}", "use a local path or an fsspec URL such as gs://bucket/prefix"
        ) from None


class OutputStoreError(UsageError):
    """The object store that holds a sweep's outputs cannot be read at all: reading on would show every run as
    never created."""


class BucketMissing(OutputStoreError):
    pass


class StoreUnreachable(OutputStoreError):
    pass


class StoreForbidden(OutputStoreError):
    exit_code = ExitCode.FORBIDDEN


# Object stores `check_store` asks before their runs are read (gcsfs). gcsfs itself retries a failed request six
# times over about 30 s, and waits up to 5 minutes for an answer, for every file: the probe makes its own few
# tries instead, all within PROBE_SECONDS.
PROBED_PROTOCOLS = ("gs", "gcs")
PROBE_SECONDS = 10.0
PROBE_TRIES = 3
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"  # gcsfs talks to this endpoint instead of Cloud Storage when set


def check_store(url: str, *, timeout: float | None = None) -> None:
    """Raise OutputStoreError when the bucket holding `url` (gs://bucket/prefix) cannot be listed: BucketMissing
    (no such bucket), StoreUnreachable (no answer from its endpoint within `timeout` seconds, a few tries
    included; default PROBE_SECONDS) or StoreForbidden (credentials refused). A reachable bucket with nothing
    under the prefix passes: its runs were not created yet. Other protocols (local paths, memory://) are not asked."""
    import fsspec
    import fsspec.asyn

    timeout = PROBE_SECONDS if timeout is None else timeout  # read when called: tests lower it
    if fsspec.utils.get_protocol(url) not in PROBED_PROTOCOLS:
        return
    fs, root = fsspec.core.url_to_fs(url)
    bucket, _, prefix = root.strip("/").partition("/")
    endpoint = str(getattr(fs, "_location", "") or "Cloud Storage")
    # One request per try, without gcsfs's own retries (`_request` undecorated, where gcsfs exposes it).
    request = getattr(type(fs)._request, "__wrapped__", None)
    call = functools.partial(request, fs) if request is not None else fs._call
    params = {"prefix": f"{prefix}/" if prefix else None, "maxResults": 1}
    deadline = time.monotonic() + timeout
    error: BaseException | None = None
    for attempt in range(PROBE_TRIES):
        left = deadline - time.monotonic()
        if attempt and left <= 0:
            break
        try:
            fsspec.asyn.sync(fs.loop, call, "GET", "b/{}/o", bucket, timeout=max(left, 0.1), **params)
            return
        except Exception as e:  # sorted below: a missing bucket and refused credentials are final
            error = e
            if isinstance(e, FileNotFoundError) or _forbidden(e):
                break
            if isinstance(e, ValueError):  # gcsfs: a 400 (an invalid bucket name)
                raise UsageError(
                    f"cannot read {url}: {e}", "use a URL such as gs://bucket/prefix with a valid bucket name"
                ) from None
        pause = 0.5 * 2**attempt
        if attempt + 1 == PROBE_TRIES or time.monotonic() + pause >= deadline:
            break
        time.sleep(pause)
    assert error is not None
    emulator = os.environ.get(EMULATOR_ENV)
    where = f" at {endpoint}" if emulator else ""
    if isinstance(error, FileNotFoundError):
        raise BucketMissing(
            f"cannot read {url}: bucket {bucket!r} does not exist{where}",
            "check the bucket in target.output_base (or --output-base): "
            f"`gcloud storage ls gs://{bucket}` shows whether it exists and you can see it",
        )
    if _forbidden(error):
        raise StoreForbidden(
            f"cannot read {url}: not allowed to list bucket {bucket!r}{where}: {_one_line(error)}",
            "the account needs storage.objects.list on the bucket (e.g. roles/storage.objectViewer); "
            "expired credentials: `gcloud auth application-default login`",
        )
    detail = f"no answer within {timeout:g} s" if _timed_out(error) else _one_line(error)
    raise StoreUnreachable(
        f"cannot read {url}: the object store at {endpoint} cannot be reached ({detail})",
        "check the network"
        + (
            f" and {EMULATOR_ENV}={emulator}, which points gcsfs at that endpoint instead of Cloud Storage"
            if emulator
            else ""
        )
        + "; the runs' outputs are not read as absent while their store does not answer",
    )


def _timed_out(error: BaseException) -> bool:
    import asyncio

    from fsspec.exceptions import FSTimeoutError

    return isinstance(error, (FSTimeoutError, asyncio.TimeoutError, TimeoutError))


def _forbidden(error: BaseException) -> bool:
    """401/403 from the store, or credentials that could not be refreshed (not a network failure)."""
    if isinstance(error, PermissionError) or str(error).startswith("Forbidden"):  # gcsfs: OSError("Forbidden: ...")
        return True
    if getattr(error, "code", None) in (401, 403):  # gcsfs.retry.HttpError
        return True
    try:
        from google.auth import exceptions as auth
    except ImportError:
        return False
    return isinstance(error, auth.GoogleAuthError) and not isinstance(error, auth.TransportError)


def _one_line(error: BaseException) -> str:
    """The error's text on one line (gcsfs puts the server's message on a second one)."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def _summary_fields_damage(summary: Mapping[str, Any]) -> list[str]:
    """A summary.json that is a JSON object but not the trainer's: a status that is no verdict, a step or a rate
    that is no number (a hand edit; another program's file). Its run read Pending ("no outputs") or Succeeded, its
    numbers shown as they were."""
    found = []
    status = summary.get("status")
    if "status" not in summary:
        found.append("summary.json has no status, so the run's verdict cannot be read from it")
    elif status not in SUMMARY_STATUSES:
        found.append(
            f"summary.json's status {status!r} is none of the trainer's ({', '.join(SUMMARY_STATUSES)}), so the run's "
            "verdict cannot be read from it"
        )
    for field in ("step", "total_steps", "tokens"):
        value = summary.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            found.append(f"summary.json's {field} {value!r} is not a count (an integer, 0 or more)")
    for field in ("wall_time_sec", "tokens_per_sec", "compile_time_sec"):
        value = summary.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            found.append(f"summary.json's {field} {value!r} is not a number")
    return found


def read_text(path: str, errors: str = "strict", limit: int | None = None) -> str | None:
    """A text file at a local path or fsspec URL; None when it is absent or cannot be read (`errors="replace"`:
    a byte that is not UTF-8 spoils its line, not the file), or longer than `limit` characters (a device such as
    /dev/zero never ends)."""
    try:
        import fsspec

        with fsspec.open(path, "r", encoding="utf-8", errors=errors) as f:
            text = f.read(-1 if limit is None else limit + 1)
            return None if limit is not None and len(text) > limit else text
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, UnicodeDecodeError):
        return None
    except OSError:
        return None


def file_sha256(path: str) -> str | None:
    """The sha256 of the bytes of the file at a local path or fsspec URL (as a logit cache records its tokenizer);
    None when no file is there. Raises OSError when one is there but cannot be read."""
    import hashlib

    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def safetensors_header(path: str) -> dict | None:
    """The header of the safetensors file at a local path or fsspec URL (`{name: {dtype, shape, data_offsets}}`,
    two ranged reads, never the tensors); None when absent. Raises `hf_config.ConfigError` when it is not a
    safetensors file (or is cut short), OSError when it cannot be read."""
    import fsspec

    from distillspec.hf_tensors import parse_header

    try:
        fs, where = fsspec.core.url_to_fs(path)
        size = fs.size(where)
        return parse_header(path, size, lambda start, end: fs.cat_file(where, start, end))[0]
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def count_files(path: str) -> int | None:
    """How many files a data path names, read as the trainer reads it (a file, every file under a folder, or a
    glob's matches); None when the store cannot say (then nothing is claimed about the path)."""
    from distillspec.data_files import data_files

    try:
        return len(data_files(path)[1])
    except Exception:  # noqa: BLE001 - fsspec backends raise their own types: unknown, not absent
        return None


@dataclasses.dataclass(frozen=True)
class Columns:
    """The columns of the first file a document path names (`validate --check-paths`), or the splits of a saved
    Hugging Face DatasetDict, which the trainer refuses."""

    file: str
    names: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    error: str = ""  # the first file is there but the trainer cannot read it in that format: why
    blank: str = ""  # the trainer reads the files, but they hold nothing but whitespace: what was read


FIRST_LINE_LIMIT = 1 << 20  # characters of a JSONL file's first record read to learn its columns


def read_columns(path: str, source: str) -> Columns | None:
    """The columns the trainer would find at a document path: a JSONL file's first record's keys, a Parquet file's
    schema, a local ArrayRecord file's first record's keys, a saved Hugging Face dataset's features; None when they
    cannot be learnt cheaply (pyarrow or array_record not installed, ArrayRecord files in a bucket, an unreadable
    first record: the trainer says why at start)."""
    from distillspec.data_files import data_files

    first = path
    try:
        if source == "hf_disk":
            return _dataset_columns(path.rstrip("/"))
        fs, files = data_files(path)
        if not files:
            return None
        first = files[0] if "://" not in path else fs.unstrip_protocol(files[0])
        if not _regular(fs, files[0]):  # a FIFO hung the check
            return Columns(first, error="is not a regular file (a pipe or a device)")
        if len(files) <= EMPTY_CHECK_FILES and all(fs.size(f) == 0 for f in files):  # the trainer: no document
            return Columns(
                first,
                error="is empty: the only data file holds no document to train on"
                if len(files) == 1
                else f"is empty, as are the other {len(files) - 1} data file(s): no document to train on",
            )
        if source == "text":  # no columns: whether the trainer would refuse a file's bytes, or train on blanks
            return _text_files_kind(fs, files, path) or (
                Columns(first, blank=_blank_words(len(files))) if _whitespace_alone(fs, files) else None
            )
        if source == "jsonl":
            if len(files) > 1 and _whitespace_alone(fs, files):  # the trainer: "holds no document with text"
                return Columns(
                    first,
                    error=f"holds only blank lines, as do the other {len(files) - 1} data file(s): "
                    "no document to train on",
                )
            return _jsonl_columns(first, only=len(files) == 1)
        if source == "parquet":
            import fsspec
            import pyarrow.parquet as pq

            with fsspec.open(first, "rb") as f:
                return Columns(first, tuple(pq.read_schema(f).names))
        if source == "arrayrecord" and "://" not in path:  # the trainer's reader takes local files only, too
            return _arrayrecord_columns(first)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:  # the trainer stops on the same bytes at start
        return Columns(first, error=f"cannot be read as JSON Lines ({type(e).__name__}: {e})")
    except Exception as e:  # noqa: BLE001 - unknown, not wrong: the trainer reads the files and says what is wrong
        if type(e).__name__ == "ArrowInvalid":  # pyarrow's word for a file that is not Parquet
            return Columns(first, error=f"cannot be read as Parquet ({e})")
        return None
    return None


EMPTY_CHECK_FILES = 100  # a data path of at most this many files is checked for all of them being empty
TEXT_CHECK_BYTES = 1 << 20  # of a plain text file, read for its share of bytes that are not UTF-8


def _text_kind(file: str, *, encoding: bool = False) -> Columns | None:
    """An `error` for a text file that is compressed or binary (the trainer refuses it at start), or with
    `encoding`, one whose first MiB holds more bytes that are not UTF-8 than the trainer accepts in a file (Latin-1
    or Windows-1252 text: the trainer refuses it at start); None otherwise."""
    import fsspec

    from distillspec.text_magic import HEAD, UNDECODABLE_SHARE, kind_of, too_undecodable, undecodable

    with fsspec.open(file, "rb") as f:
        head = f.read(TEXT_CHECK_BYTES if encoding else HEAD)
        cut = len(head) == TEXT_CHECK_BYTES and bool(f.read(1))
    found = kind_of(head[:HEAD], file, "data.path")
    if found is not None:
        what, todo = found
        return Columns(file, error=f"is {what}, not UTF-8 text ({todo})")
    if encoding:
        bad, first = undecodable(head, cut=cut)
        if too_undecodable(bad, len(head)):
            return Columns(
                file,
                error=f"is not UTF-8 text: {bad} of its {'first ' if cut else ''}{len(head)} bytes "
                f"({bad / len(head):.2%}, more than {UNDECODABLE_SHARE:.1%}) are not UTF-8, the first at byte {first} "
                f"(convert it: iconv -f CP1252 -t UTF-8 {file} > {file}.utf8, for Latin-1 or Windows-1252 text)",
            )
    return None


def _whitespace_alone(fs, files: list[str]) -> bool:
    """Whether the files (up to 100, each at most 1 MiB: else not read) hold whitespace alone."""
    if len(files) > EMPTY_CHECK_FILES or any(not _regular(fs, f) or fs.size(f) > TEXT_CHECK_BYTES for f in files):
        return False
    return not any(fs.cat_file(f).strip() for f in files)


def _regular(fs, name: str) -> bool:
    """Not a local pipe or device, which a read would wait on for ever."""
    import os
    import stat

    return "file" not in fs.protocol or stat.S_ISREG(os.stat(name).st_mode)


def _blank_words(count: int) -> str:
    return "holds whitespace alone" if count == 1 else f"and the other {count - 1} data file(s) hold whitespace alone"


TEXT_CHECK_TOTAL = 32 << 20  # bytes read of a text path's files for their encoding: the first MiB of each, in order


def _text_files_kind(fs, files: list[str], path: str) -> Columns | None:
    """`_text_kind` (compressed, binary, not UTF-8) of each of the first 100 files, up to 32 MiB read in all: the
    trainer refuses each such file when it reaches it, a later one after hours of training."""
    read = 0
    for name in files[:EMPTY_CHECK_FILES]:
        if read >= TEXT_CHECK_TOTAL:
            break
        file = name if "://" not in path else fs.unstrip_protocol(name)
        if not _regular(fs, name):
            continue
        if (found := _text_kind(file, encoding=True)) is not None:
            return found
        read += min(fs.size(name) or 0, TEXT_CHECK_BYTES)
    return None


def _jsonl_columns(file: str, *, only: bool = False) -> Columns | None:
    """The first record's keys; an `error` where the trainer would stop on the file (`trainer.corpus`'s words): a
    compressed or binary file, a JSON array or another JSON value than an object."""
    import fsspec

    if (binary := _text_kind(file)) is not None:
        return binary
    with fsspec.open(file, "r", encoding="utf-8-sig", errors="strict") as f:
        for line in iter(lambda: f.readline(FIRST_LINE_LIMIT), ""):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if line.lstrip().startswith("["):  # json.dump(records, f, indent=2): its first line is no value
                    return Columns(file, error="starts a JSON array, not JSON Lines (one JSON object per line)")
                raise
            if isinstance(record, list):
                return Columns(file, error="is a JSON array, not JSON Lines (one JSON object per line)")
            if not isinstance(record, dict):
                return Columns(file, error="holds a line that is not a JSON object (JSON Lines: one object per line)")
            return Columns(file, tuple(record))
    if only:  # the trainer: "holds no document with text"
        return Columns(file, error="holds only blank lines: the only data file has no document to train on")
    return None


def _arrayrecord_columns(file: str) -> Columns | None:
    """Each record is a UTF-8 JSON object, like a JSONL line: the first one's keys."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(file)
    try:
        if reader.num_records() == 0:
            return None
        record = json.loads(reader.read([0])[0])
    finally:
        reader.close()
    return Columns(file, tuple(record)) if isinstance(record, dict) else None


def _dataset_columns(folder: str) -> Columns | None:
    import os

    splits = _read_json(f"{folder}/dataset_dict.json")
    if splits is not None:
        return Columns(folder, splits=tuple(splits.get("splits") or ()))
    info = _read_json(f"{folder}/dataset_info.json")
    features = (info or {}).get("features")
    if isinstance(features, dict):
        return Columns(folder, tuple(features))
    if "://" not in folder and os.path.isfile(folder):
        return Columns(folder, error="is a file, not a folder that datasets' save_to_disk wrote")
    if "://" not in folder and os.path.isdir(folder) and info is None:  # the trainer: "neither a Dataset ... nor"
        return Columns(
            folder, error="is not a dataset saved by save_to_disk (no dataset_info.json or dataset_dict.json)"
        )
    return None


def _read_json(path: str) -> dict | None:
    return _read_json_or_damage(path)[0]


def _read_json_or_damage(path: str) -> tuple[dict | None, bool]:
    """The file's JSON object (None when absent or not one), and whether it is there but is not one."""
    text = read_text(path)
    if text is None:
        return None, False
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None, True
    return (value, False) if isinstance(value, dict) else (None, True)


def parse_log_line(line: str) -> LogLine | None:
    """A record, or None for a blank, cut-off or foreign line. Pairs with a non-finite sum are kept (a
    diverged step); pairs that are not numbers are dropped."""
    try:
        raw = json.loads(line)
        metrics = {}
        for name, pair in (raw.get("metrics") or {}).items():
            if not isinstance(pair, dict):
                continue
            total, count = _float(pair.get("sum")), _float(pair.get("count"))
            # A pair over no tokens says nothing (it would read as nan or inf); a negative count is no count.
            if total is not None and count is not None and 0 < count < math.inf:
                metrics[str(name)] = (total, count)
        step = raw["step"]
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            return None
        return LogLine(
            step=int(step),
            time=_float(raw.get("time")),
            tokens=int(raw["tokens"]) if _float(raw.get("tokens")) is not None else None,
            tokens_per_sec=_float(raw.get("tokens_per_sec")),
            metrics=metrics,
            step_time_sec=_float(raw.get("step_time_sec")),
            learning_rate=_float(raw.get("learning_rate")),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def latest_attempt(records: list[LogLine]) -> tuple[LogLine, ...]:
    """Records in step order, where a record whose step does not advance replaces the earlier records from
    that step on (a restarted attempt that re-logged steps after its checkpoint)."""
    out: list[LogLine] = []
    for record in records:
        while out and out[-1].step >= record.step:
            out.pop()
        out.append(record)
    return tuple(out)


def parse_log(text: str) -> tuple[LogLine, ...]:
    return parse_log_counting(text)[0]


def parse_log_counting(text: str) -> tuple[tuple[LogLine, ...], int, bool]:
    """The records, how many non-blank lines were not records, and whether the last line is a cut-off one (no
    newline, no record: a write in progress while the run runs, not counted among the others)."""
    lines = text.splitlines()
    records = [parse_log_line(line) for line in lines]
    skipped = sum(1 for line, r in zip(lines, records) if r is None and line.strip())
    cut_off = bool(lines) and records[-1] is None and bool(lines[-1].strip()) and not text.endswith("\n")
    return latest_attempt([r for r in records if r is not None]), skipped - cut_off, cut_off


def read_summary(path: str) -> dict | None:
    """Just `summary.json` under a run's output path (None when absent or half-written)."""
    return _read_json(join(path, "summary.json"))


def read_failures(path: str) -> tuple[dict[str, Any], ...]:
    """The failure files that processes other than 0 left under `path`/failures (the trainer's
    `metrics_io.write_process_failure`), in process order; unreadable ones are skipped."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(join(path, FAILURES_DIR))
        names = sorted(fs.glob(f"{root}/process-*.json"))
    except (OSError, ValueError):
        return ()
    found = []
    for name in names:
        record = _read_json(join(path, FAILURES_DIR, name.rstrip("/").rsplit("/", 1)[-1]))
        if record is not None and record.get("status") in ("failed", "diverged"):
            found.append(record)
    return tuple(sorted(found, key=lambda r: r.get("process_index") if isinstance(r.get("process_index"), int) else 0))


def read_metrics_text(path: str) -> str:
    """A run's metrics log: its part files (`metrics/part-*.jsonl`, written on object stores while it runs)
    concatenated in name order, else `metrics.jsonl`; empty when there is neither."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(join(path, METRICS_PARTS_DIR))
        parts = sorted(fs.glob(f"{root.rstrip('/')}/{METRICS_PART_PATTERN}"))
    except (OSError, ValueError):
        parts = []
    if parts:
        texts = [fs.cat_file(part).decode("utf-8", errors="replace") for part in parts]
        return "".join(t if t.endswith("\n") or not t else t + "\n" for t in texts)
    return read_text(join(path, "metrics.jsonl"), errors="replace") or ""


def read_run_outputs(path: str) -> RunOutputs:
    """Everything readable under `path` (a run's output directory). Raises MissingFilesystem when the path's
    protocol cannot be read at all (gs:// without gcsfs)."""
    check_filesystem(path)
    unreadable = local_unreadable(path)
    log, skipped, cut_off = parse_log_counting(read_metrics_text(path))
    (summary, unreadable_summary), spec = (
        _read_json_or_damage(join(path, "summary.json")),
        _read_json(join(path, "spec.json")),
    )
    stopped = _read_json(join(path, STOPPED_FILE))
    return RunOutputs(
        path,
        log,
        summary,
        spec,
        failures=read_failures(path),
        stopped=stopped,
        skipped_lines=skipped,
        cut_off_line=cut_off,
        summary_unreadable=unreadable_summary,
        unreadable=unreadable,
    )


RUN_FILES = ("summary.json", "metrics.jsonl", "spec.json")


def local_unreadable(path: str) -> tuple[str, ...]:
    """For a local run folder: `cannot read ...` for the folder or one of its files that is there but cannot be read
    (permissions, a folder where a file goes); () for an object store."""
    import os

    if "://" in path and not path.startswith("file://"):
        return ()
    folder = path.removeprefix("file://")
    try:
        os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        # absent, or a file where the folder goes (or where output_base goes): no run wrote there, so none can have
        # succeeded; `sweep` submits it and it fails at once naming the path (OutputNotWritable)
        return ()
    except OSError as e:
        return (f"cannot read {folder}: {e.strerror or e}",)
    found = []
    for name in RUN_FILES:
        try:
            with open(os.path.join(folder, name), "rb") as f:
                f.read(1)
        except FileNotFoundError:
            continue
        except OSError as e:
            found.append(f"cannot read {os.path.join(folder, name)}: {e.strerror or e}")
    return tuple(found)


def check_output_base(path: str) -> None:
    """Raise UsageError when a local `--output-base` is not a folder (a typo read as runs that wrote nothing), or a
    bucket URL names no valid bucket (`gs://` read as runs that wrote nothing, under `gs:/<run id>`)."""
    from distillspec import buckets

    given = path
    if path.startswith("file://"):
        path = path.removeprefix("file://")  # the same folder: `file:///nowhere` passed where `/nowhere` did not
        if not path:
            raise UsageError(f"--output-base {given!r} names no folder", "write file:///abs/path, or the path itself")
    elif "://" in path:
        bucket = buckets.bucket_of(path)
        if bucket is not None and (problem := buckets.bucket_name_problem(bucket)):
            raise UsageError(f"--output-base {path!r} {problem}", buckets.HINT)
        if not path.split("://", 1)[1].split("/", 1)[0]:  # s3://, az:///x: read as runs that wrote nothing
            raise UsageError(f"--output-base {path!r} names no bucket", "write SCHEME://BUCKET/path")
        return  # an object store has no folders: its bucket is asked when the runs are read (`check_store`)
    import os

    if not os.path.exists(path):
        raise UsageError(f"--output-base {path}: no such folder", "pass the folder the runs wrote under")
    if not os.path.isdir(path):
        raise UsageError(f"--output-base {path} is a file, not a folder", "pass the folder the runs wrote under")


def write_stopped(path: str, record: Mapping[str, Any]) -> None:
    """Write `stopped.json` (an early-stopping verdict: `rule`, `step`, `message`) under a run's output path."""
    import fsspec

    with fsspec.open(join(path, STOPPED_FILE), "w") as f:
        json.dump(dict(record), f, indent=2, sort_keys=True)


READ_CONCURRENCY = 16  # files of this many runs read at once: object-store reads are latency-bound


def read_many_run_outputs(paths: Mapping[str, str], *, workers: int = READ_CONCURRENCY) -> dict[str, RunOutputs]:
    """`read_run_outputs` of each path (by key, in the mapping's order), `workers` runs at a time. Raises
    MissingFilesystem as `read_run_outputs` does, checked once per protocol before anything is read, and
    OutputStoreError when the object store under the runs cannot be read at all (`check_store`, once per folder
    the runs are in)."""
    for protocol_path in {_protocol(p): p for p in paths.values()}.values():
        check_filesystem(protocol_path)
    for base in dict.fromkeys(p.rstrip("/").rsplit("/", 1)[0] for p in paths.values() if "://" in p):
        check_store(base)
    if len(paths) <= 1:
        return {key: read_run_outputs(path) for key, path in paths.items()}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers, len(paths)), thread_name_prefix="outputs") as pool:
        results = list(pool.map(read_run_outputs, paths.values()))
    return dict(zip(paths, results))


def _protocol(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else "file"
