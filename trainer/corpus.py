"""Document records of a corpus, read through Grain, each process reading only its own shard.

`host_records(data, path, shard, repeat=...)` is a Grain `IterDataset` of this process's records, each a dict
holding the columns the spec reads (`text_column`, or `prompt_column` and `completion_column`) and, under `WHERE`,
where it came from (for errors that name the file):

- `jsonl`, `parquet`: files (a file, a folder, a glob or an fsspec URL) are sharded by process, as MaxText shards
  its Parquet files: process `i` of `n` reads files `i, i + n, ...` in sorted order, one after the other, as a
  stream (`JsonlIterDataset`, Grain's `ParquetIterDataset`); a process left without a file is an error. In file
  order, unless `data.shuffle_window` is N > 0: then the files' order is shuffled by `data.seed`, and the records
  within windows of N (Grain's `WindowShuffleIterDataset`, whose state restores the window).
- `arrayrecord` (each record a UTF-8 JSON object, like a JSONL line) and `hf_disk` (a folder written by
  `datasets.Dataset.save_to_disk`, memory-mapped Arrow): random access, so records are sharded: process `i`
  reads records `i, i + n, ...`, in an order shuffled by `data.seed`.

With `repeat`, the records go round again after the last (epochs, in the same order), each record carrying its
pass over the data under `EPOCH` (0 for the first; `EpochNotes` says when a new one begins); without, they end. The
iterators' state (`get_state`) is their position, so a checkpoint restores the stream exactly. Nothing here
holds more than one row group (Parquet) or one line (JSONL) of a file at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import fsspec
import grain
import numpy as np

from distillspec.config import DataSpec
from distillspec.data_files import data_files
from trainer import text_bytes
from trainer.exit_codes import RetryableError, TrainerError, UserError

UTF8_BOM = b"\xef\xbb\xbf"
WHERE = "__where__"  # a record's origin (`file:line`, `file row i`, `folder record i`), for errors about it
EPOCH = "__epoch__"  # a repeated corpus's pass this record belongs to: 0, 1, ...
log = logging.getLogger(__name__)


def worth_a_note(count: int) -> bool:
    """1, 10, 100, ...: how often a repeating condition is said in the log (once, then ever more rarely)."""
    return str(count).rstrip("0") == "1"


class EpochNotes:
    """Says (a warning in the trainer's log) when a repeated corpus starts another pass: a small corpus went round
    and round without a word, and a run that trains on the same documents many times overfits them. At the second
    pass, then at the 10th, 100th, ... The pipeline reads ahead of the step, so the note comes a few batches early."""

    def __init__(self, path: str | None, shard: Shard | None = None) -> None:
        self.path = path
        self.shard = shard or Shard()
        self.epoch: int | None = None

    def note(self, record: dict[str, Any]) -> dict[str, Any]:
        epoch = record.get(EPOCH, 0)
        passes = epoch + 1
        if self.epoch is not None and epoch > self.epoch and (passes == 2 or worth_a_note(passes)):
            # With several processes each goes round its own files: one with a small share repeats it while the
            # others have not read theirs once (it read "the training data has been read", which it had not).
            whose = (
                f"process {self.shard.index}'s share of the training data ({self.path}; files are shared out whole, "
                "so shares of unequal size repeat unequally)"
                if self.shard.count > 1
                else f"the training data ({self.path})"
            )
            log.warning(
                "%s has been read %d time(s) through: starting pass %d over the same documents", whose, epoch, epoch + 1
            )
        self.epoch = epoch
        return record


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's place among the readers: `index` of `count` (JAX's process index and count)."""

    index: int = 0
    count: int = 1


def columns(data: DataSpec) -> tuple[str, ...]:
    """The record columns a spec reads."""
    if data.prompt_completion:
        return (data.prompt_column, data.completion_column)
    return (data.text_column,)


def list_files(path: str | None, field: str = "data.path") -> list[str]:
    """The files `path` names, sorted, as fsspec URLs or local paths: a file, every file under a folder, or a
    glob's matches. Raises UserError when the path cannot be listed."""
    if not path:
        raise UserError(f"{field} is not set", f"set {field} to a file, directory, glob or fsspec URL")
    try:
        fs, names = data_files(path)
    except Exception as e:  # noqa: BLE001 - fsspec backends raise their own types; storage_error sorts them
        raise storage_error(f"cannot list {field} {path!r}", e) from None
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [name if protocol in ("file", "local") else fs.unstrip_protocol(name) for name in names]


def storage_error(what: str, e: BaseException) -> TrainerError:
    """The error for storage that failed `what` (`cannot read gs://b/x.jsonl`): RetryableError when it may work on
    a second try (the network, a timeout, a 429 or 5xx), UserError naming what to change otherwise (credentials,
    permissions, a bucket or file that is not there, a missing fsspec backend)."""
    code = getattr(e, "code", None)  # gcsfs' HttpError and friends carry the HTTP status
    name = type(e).__name__
    text = f"{what}: {e}" if str(e) else f"{what}: {name}"
    if isinstance(e, ImportError):
        return UserError(text, "install the fsspec backend for this URL scheme (gcsfs for gs://, s3fs for s3://)")
    if type(e).__module__.startswith("google.auth") or code in (401, 403):
        return UserError(
            text,
            "give the job's service account read access to the bucket (GKE: Workload Identity; locally: "
            "gcloud auth application-default login)",
        )
    if isinstance(code, int) and (code == 429 or code >= 500):
        return RetryableError(text)
    if isinstance(e, (ConnectionError, TimeoutError)) or name.startswith(("ClientConnector", "ServerTimeout")):
        return RetryableError(f"{text} (storage unreachable; the run is retried)")
    if isinstance(e, FileNotFoundError) or code == 404:
        return UserError(text, "check the bucket and path (`gcloud storage ls <path>`)")
    return UserError(text, "check the path and its credentials")


def _files_of_shard(path: str | None, shard: Shard, kind: str, field: str) -> list[str]:
    files = list_files(path, field)
    if not files:
        raise UserError(f"no files at {field} {path!r}", f"point {field} at {kind} files")
    if len(files) < shard.count:  # every process says so (the one left out alone left the others' collectives
        # to fail as a lost peer: exit 42, retried until max_restarts)
        idle = f"process {len(files)}" if len(files) == shard.count - 1 else f"processes {len(files)}-{shard.count - 1}"
        raise UserError(
            f"{path} has {len(files)} {kind} file(s) for {shard.count} processes: {idle} would read nothing (files "
            "are shared out whole)",
            f"split the corpus into at least {shard.count} files (one or more per process)",
        )
    return files[shard.index :: shard.count]


UNEVEN_SHARES = 2.0  # the largest share this many times the smallest: said at start


def warn_uneven_shares(path: str | None, shard: Shard, field: str = "data.path") -> None:
    """Process 0 says, once at start, when the processes' shares of local files differ much in size: each process
    goes round its own share, so a small one repeated many times while a large one was not read once, half of every
    batch its few documents; it was said only on that process's console, as "the training data has been read"."""
    if shard.index != 0 or shard.count == 1:
        return
    files = list_files(path, field)
    count = shard.count
    if len(files) < count or any("://" in f for f in files):  # too few: refused; object stores: a request a file
        return
    try:
        shares = [sum(os.path.getsize(f) for f in files[i::count]) for i in range(count)]
    except OSError:
        return
    small, large = min(shares), max(shares)
    if not large or (small and large / small < UNEVEN_SHARES):  # all empty: the run is refused for that
        return
    log.warning(
        "%s's %d file(s) are shared out whole over %d processes, and the shares differ in size: process %d reads %s, "
        "process %d %s; each goes round its own, so the smaller is read again and again while the larger is read "
        "once (the smaller share's few documents weigh as much in every batch as the larger's many); split the corpus into files of similar size, a multiple of "
        "%d of them",
        field,
        len(files),
        count,
        shares.index(large),
        _size(large),
        shares.index(small),
        _size(small),
        count,
    )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} bytes"


# --- JSONL ---------------------------------------------------------------------------------------------------


MAX_JSONL_LINE = 64 << 20  # bytes of one JSONL record: far beyond a document, well within a host's memory


class _JsonlIterator(grain.DatasetIterator):
    """One JSONL file's records, line by line; state: the number of lines consumed."""

    def __init__(self, path: str, wanted: tuple[str, ...], field: str = "data.path"):
        super().__init__()
        self._path, self._wanted, self._field = path, wanted, field
        self._line = 0
        self._handle = None

    def _open(self, skip: int) -> None:
        if self._handle is not None:
            self._handle.close()
        try:  # bytes, decoded line by line, so that a line that is not UTF-8 is named (`_text`)
            self._handle = fsspec.open(self._path, "rb").open()
            read = 0
            while read < skip and self._handle.readline():
                read += 1
        except Exception as e:  # noqa: BLE001 - see storage_error
            raise storage_error(f"cannot read {self._path}", e) from None
        if read < skip:  # a position past the end: read on from there, it wrapped to the start in silence
            self._handle.close()
            raise UserError(
                f"{self._path} has {read} lines, but the position being resumed is past line {skip}: the file was "
                "rewritten since the checkpoint (cut, deduplicated or regenerated), so the position means nothing "
                "in it",
                "put the file back as it was to resume, or start a new run (another name) from the checkpoint's "
                "weights (student.load_parameters_path)",
            )
        self._line = skip

    def __next__(self) -> dict[str, Any]:
        if self._handle is None:
            self._open(self._line)
        while True:
            try:
                line = self._handle.readline(MAX_JSONL_LINE + 1)
            except Exception as e:  # noqa: BLE001 - see storage_error
                raise storage_error(f"cannot read {self._path}", e) from None
            if not line:
                self._handle.close()
                raise StopIteration
            self._line += 1
            if len(line) > MAX_JSONL_LINE:  # held whole, a file without line breaks filled the host's memory
                raise UserError(
                    f"{self._path}:{self._line} is longer than {MAX_JSONL_LINE >> 20} MiB: JSON Lines holds one "
                    "record per line (is it one JSON array, or a file without line breaks?)",
                    "write one JSON object per line (e.g. jq -c '.[]' file.json > file.jsonl), or shorten the record",
                )
            if self._line == 1:
                refused = text_bytes.not_text(line[: text_bytes.HEAD], self._path, self._field)
                if refused is not None:
                    raise refused
                line = line.removeprefix(UTF8_BOM)  # Windows tools write one; json.loads refuses it
            if line.strip():
                where = f"{self._path}:{self._line}"
                return _record(where, _text(line, where), self._wanted)

    def get_state(self) -> dict[str, Any]:
        return {"line": self._line}

    def set_state(self, state: dict[str, Any]) -> None:
        self._open(int(state["line"]))


def _text(line: bytes, where: str) -> str:
    """One JSONL line as text; UserError naming the line when it is not UTF-8 (JSON exchanged between programs
    is UTF-8, RFC 8259; replaced, the bytes were trained on as U+FFFD)."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{where} is not UTF-8: byte {line[e.start]:#04x} at column {e.start + 1}",
            "convert the file to UTF-8 under its own name (for Latin-1 or Windows-1252 text: iconv -f CP1252 -t UTF-8 "
            "FILE > FILE.utf8 && mv FILE.utf8 FILE; a run stopped here then resumes from its checkpoint, which a new "
            "name would not), or write it with json.dumps",
        ) from None


def _record(where: str, text: str | bytes, wanted: tuple[str, ...]) -> dict[str, Any]:
    """The wanted columns of one JSON object; UserError naming `where` (file and line, or record) when it is not
    one or lacks a column."""
    array_hint = "write one JSON object per line (e.g. jq -c '.[]' file.json > file.jsonl)"
    try:
        value = json.loads(text)
    except ValueError as e:
        if (text.lstrip()[:1] if isinstance(text, str) else text.lstrip()[:1].decode(errors="replace")) == "[":
            # a JSON array over many lines (json.dump(records, f, indent=2)): its first line is no whole value
            raise UserError(f"{where} starts a JSON array, not JSON Lines: {e}", array_hint) from None
        raise UserError(f"{where} is not a JSON object: {e}", "write one JSON object per line/record") from None
    if isinstance(value, list):
        raise UserError(f"{where} is a JSON array, not JSON Lines (one JSON object per line)", array_hint)
    if not isinstance(value, dict):
        raise UserError(f"{where} is not a JSON object", "write one JSON object per line/record")
    missing = [c for c in wanted if c not in value]
    if missing:
        raise UserError(
            f"{where} has no column {missing[0]!r} (it has {', '.join(sorted(value)) or 'none'})",
            "set data.text_column (or prompt_column/completion_column) to the record's column",
        )
    return {**{c: value[c] for c in wanted}, WHERE: where}


class JsonlIterDataset(grain.IterDataset):
    """The records of one JSONL file (a Grain source: checkpointable by line)."""

    def __init__(self, path: str, wanted: tuple[str, ...], field: str = "data.path"):
        super().__init__()
        self._path, self._wanted, self._field = path, wanted, field

    def __iter__(self) -> grain.DatasetIterator:
        return _JsonlIterator(self._path, self._wanted, self._field)


# --- Parquet -------------------------------------------------------------------------------------------------


def _check_parquet(path: str, wanted: tuple[str, ...]) -> None:
    import pyarrow.parquet as pq

    try:
        with fsspec.open(path, "rb") as f:
            names = pq.read_schema(f).names
    except ValueError as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"cannot read {path} as Parquet: {e}") from None
    except Exception as e:  # noqa: BLE001 - see storage_error
        raise storage_error(f"cannot read {path}", e) from None
    missing = [c for c in wanted if c not in names]
    if missing:
        raise UserError(
            f"{path} has no column {missing[0]!r} (it has {', '.join(names)})",
            "set data.text_column (or prompt_column/completion_column) to the file's column",
        )


ROW = "__row__"  # a Parquet row's number in its file (1-based), for `WHERE`


def _parquet(path: str, wanted: tuple[str, ...]) -> grain.IterDataset:
    def record(r: dict[str, Any]) -> dict[str, Any]:
        where = path if r.get(ROW) is None else f"{path} row {r[ROW]}"
        return {**{c: _scalar(r[c]) for c in wanted}, WHERE: where}

    return ParquetIterDataset(path).map(record)


class _ParquetIterator(grain.DatasetIterator):
    """Grain's reader of one Parquet file, whose read errors name the file and whose rows carry their number
    (`ROW`); its state is Grain's reader's plus that number (a checkpoint written before, without it, restores and
    names no row)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path
        self._row: int | None = 0  # rows read so far; None when restored from a state that did not say
        fs, root = fsspec.core.url_to_fs(path)
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        try:  # Grain's iterator reads the first row group as it starts
            self._rows = iter(grain.experimental.ParquetIterDataset(root, **({} if local else {"filesystem": fs})))
        except Exception as e:  # noqa: BLE001 - sorted by parquet_error
            raise parquet_error(path, e) from None

    def __next__(self) -> dict[str, Any]:
        try:
            row = next(self._rows)
        except StopIteration:
            raise
        except Exception as e:  # noqa: BLE001 - sorted by parquet_error
            raise parquet_error(self._path, e) from None
        self._row = None if self._row is None else self._row + 1
        return {**row, ROW: self._row}

    def get_state(self) -> dict[str, Any]:
        return {**self._rows.get_state(), ROW: self._row}

    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self._row = state.pop(ROW, None)
        try:
            self._rows.set_state(state)
        except Exception as e:  # noqa: BLE001 - sorted by parquet_error
            raise parquet_error(self._path, e) from None


class ParquetIterDataset(grain.IterDataset):
    """The rows of one Parquet file (Grain's reader: checkpointable by row group and row)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def __iter__(self) -> grain.DatasetIterator:
        return _ParquetIterator(self._path)


def parquet_error(path: str, e: BaseException) -> BaseException:
    """What a failed read of the Parquet file `path` raises: a UserError naming the file when the file itself is
    damaged (it fails the same way on every read, so a retry would only spend the JobSet's restarts); anything
    else unchanged, for `trainer.failures` to sort (a dropped connection or a timeout is retried)."""
    import pyarrow as pa

    # pyarrow raises ArrowInvalid (a ValueError) and friends for data it cannot decode, and a bare OSError without
    # an errno for a page it cannot deserialise ("Couldn't deserialize thrift"): errors of the storage keep their
    # own type (pyarrow re-raises an fsspec backend's exception as is) or carry the OS's errno.
    undecodable = isinstance(e, pa.ArrowException) and not isinstance(e, (MemoryError, pa.ArrowCancelled))
    if not (undecodable or (type(e) is OSError and e.errno is None)):
        return e
    lines = str(e).strip().splitlines()
    return UserError(
        f"cannot read {path} as Parquet (a damaged file, or one pyarrow cannot decode): "
        f"{lines[0] if lines else type(e).__name__}",
        "write the file again, or copy it again from its source, or leave it out of data.path; a retry would "
        "fail the same way",
    )


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# --- random access: ArrayRecord and saved Hugging Face datasets ---------------------------------------------


def _arrayrecord(path: str | None, wanted: tuple[str, ...], field: str) -> grain.MapDataset:
    files = list_files(path, field)
    if not files:
        raise UserError(f"no files at {field} {path!r}", f"point {field} at .array_record files")
    try:
        source = grain.sources.ArrayRecordDataSource(files)
    except Exception as e:  # noqa: BLE001 - array_record raises plain RuntimeErrors/ValueErrors for bad files
        raise UserError(f"cannot read {path} as ArrayRecord: {e}") from None

    def read(index: int) -> dict[str, Any]:  # by index, so an error names the record
        return _record(f"{path} record {index}", source[index], wanted)

    return grain.MapDataset.range(len(source)).map(read)


def _hf_disk(path: str | None, wanted: tuple[str, ...], field: str) -> grain.MapDataset:
    try:
        import datasets

        loaded = datasets.load_from_disk(path)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise UserError(
            f"cannot read {path} as a saved Hugging Face dataset: {e}",
            f"point {field} at a folder written by datasets' save_to_disk",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        raise UserError(
            f"{path} holds splits ({', '.join(loaded)}), not one dataset",
            f"point {field} at one split's folder, e.g. {path.rstrip('/')}/{next(iter(loaded), 'train')}",
        )
    missing = [c for c in wanted if c not in loaded.column_names]
    if missing:
        raise UserError(
            f"{path} has no column {missing[0]!r} (it has {', '.join(loaded.column_names)})",
            "set data.text_column (or prompt_column/completion_column) to the dataset's column",
        )
    return grain.MapDataset.source(loaded.select_columns(list(wanted))).map_with_index(
        lambda i, r: {**r, WHERE: f"{path} record {i}"}
    )


def host_records(
    data: DataSpec, path: str | None, shard: Shard, *, repeat: bool, field: str = "data.path"
) -> grain.IterDataset:
    """This process's records of the corpus at `path` (see the module docstring). Raises UserError for a path
    that names nothing, a shard left empty, or (at once for Parquet and saved datasets, when reached for JSONL and
    ArrayRecord) a file that cannot be read or lacks a column."""
    wanted = columns(data)
    if data.source in ("jsonl", "parquet"):
        files = _files_of_shard(path, shard, data.source, field)
        if data.source == "parquet":
            for f in files:
                _check_parquet(f, wanted)
        make = (
            (lambda f: JsonlIterDataset(f, wanted, field))
            if data.source == "jsonl"
            else (lambda f: _parquet(f, wanted))
        )
        ds = grain.MapDataset.source(files)
        window = data.shuffle_window
        if window:
            ds = ds.shuffle(seed=data.seed)  # the files' order (the same every epoch)
        if repeat:
            ds = ds.repeat(None)
        count = len(files)
        tagged = ds.map_with_index(lambda i, f: make(f).map(lambda r, e=i // count: {**r, EPOCH: e}))
        records = grain.experimental.InterleaveIterDataset(tagged, cycle_length=1)
        if window:  # each window in its own order (seed + the window's index): epochs differ too
            records = grain.experimental.WindowShuffleIterDataset(records, window_size=window, seed=data.seed)
        return records
    if data.source == "arrayrecord":
        records = _arrayrecord(path, wanted, field)
    elif data.source == "hf_disk":
        records = _hf_disk(path, wanted, field)
    else:
        raise UserError(f"data.source {data.source!r} has no document records")
    if len(records) < shard.count:
        raise UserError(
            f"{path} has {len(records)} record(s) for {shard.count} processes: process {shard.index} would read "
            "nothing",
            "add records, or run on fewer processes",
        )
    mine = records[shard.index :: shard.count].shuffle(seed=data.seed)
    count = len(mine)
    if repeat:
        mine = mine.repeat(None)
    return mine.map_with_index(lambda i, r: {**r, EPOCH: i // count}).to_iter_dataset()
