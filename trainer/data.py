"""Deterministic, resumable token batches.

Every source is a pure function of `(data.seed, batch index)`: batch `i` is the same on every host, in every
process layout and after any resume, so the data position is one integer (the number of micro-batches consumed),
saved with each checkpoint. Each process builds the global batch and hands JAX only the rows of its own devices.

Sources:
- `synthetic`: a seeded, learnable "language": a sparse Markov chain whose next token follows the previous token
  (bigram table, 3/4 of the time) or the one before it (skip-gram table, 1/4), each row with a few successors of
  Zipf-like probabilities. A model learns it; a bigger one learns it better; it is never uniform noise.
- `text`: UTF-8 text files (a file, a directory, a glob or an fsspec URL such as gs://bucket/corpus/*.txt; a
  compressed file, or text in another encoding, is refused: `trainer.text_bytes`),
  tokenised with the byte-level tokenizer (vocab 256) or a `tokenizer.json` through the `tokenizers` library
  (`resolve_tokenizer`: the spec's data.tokenizer, else the teacher's Hugging Face folder's tokenizer.json); windows of `max_target_length + 1` tokens are drawn at seeded random offsets of the concatenated corpus.
- `tokens`: pre-tokenized ids: a `.npy` array of integers, or a raw file of little-endian uint16 (int32 when the
  name ends in `.i32` or `.int32`), windows drawn the same way.

A batch is `{"inputs": [R, T] int32, "targets": [R, T] int32, "mask": [R, T] float32}` with targets the inputs
shifted by one and mask 1 for every token these sources produce.

Document sources (`jsonl`, `parquet`, `arrayrecord`, `hf_disk`) are different: each process reads only its own
shard of the records (`trainer.corpus`), tokenizes and packs them (`trainer.packing`) and batches its own rows,
with `segment_ids`; the position is the Grain iterator's state, saved with each checkpoint. `make_batches` hides
the difference from the loop: `Batches.next()` is the next step's `[A, R, T]` host arrays (R: every row for the
index sources, this process's rows for documents; `Batches.local` says which). An offline run
(`offline_data_dir`) reads its rows, and the teacher's top-k with them, from a logit cache instead
(`trainer.logit_cache.CacheBatches`, this process's files; the position is the micro-batch count).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

import fsspec
import numpy as np

from distillspec.config import DOCUMENT_SOURCES, DataSpec, DistillSpec
from distillspec.data_files import data_files
from distillspec.hf_config import tokenizer_files, tokenizer_mismatch
from trainer import text_bytes
from trainer.corpus import storage_error
from trainer.exit_codes import UserError
from trainer.packing import load_tokenizer

log = logging.getLogger(__name__)

SYNTHETIC_SUCCESSORS = 4
HELD_OUT_INDEX = 1 << 40  # the synthetic eval set's first batch index: training would need 2^40 micro-batches
_SKIP_SHARE = 0.25


class TokenSource(Protocol):
    def sequences(self, index: int, rows: int, length: int) -> np.ndarray:
        """Batch `index`: `[rows, length]` token ids, the same for the same arguments."""


@dataclasses.dataclass(frozen=True)
class MarkovSource:
    """The synthetic language: successor tables drawn from the seed."""

    seed: int
    bigram_next: np.ndarray  # [V, S] successor ids
    bigram_cdf: np.ndarray  # [V, S] cumulative probabilities
    skip_next: np.ndarray
    skip_cdf: np.ndarray

    @classmethod
    def build(cls, vocab_size: int, seed: int) -> MarkovSource:
        rng = np.random.default_rng([seed, 0x5EED])

        def table() -> tuple[np.ndarray, np.ndarray]:
            nxt = rng.integers(0, vocab_size, size=(vocab_size, SYNTHETIC_SUCCESSORS))
            weights = rng.dirichlet(np.full(SYNTHETIC_SUCCESSORS, 0.7), size=vocab_size)
            weights = -np.sort(-weights, axis=1)  # Zipf-like: a dominant successor, then a tail
            return nxt.astype(np.int32), np.cumsum(weights, axis=1)

        (bn, bc), (sn, sc) = table(), table()
        return cls(seed, bn, bc, sn, sc)

    def sequences(self, index: int, rows: int, length: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        vocab = self.bigram_next.shape[0]
        out = np.empty((rows, length), np.int32)
        out[:, :2] = rng.integers(0, vocab, size=(rows, 2))
        skip = rng.random((rows, length)) < _SKIP_SHARE
        u = rng.random((rows, length))
        r = np.arange(rows)
        for t in range(2, length):
            src = np.where(skip[:, t], out[:, t - 2], out[:, t - 1])
            nxt = np.where(skip[:, t, None], self.skip_next[src], self.bigram_next[src])
            cdf = np.where(skip[:, t, None], self.skip_cdf[src], self.bigram_cdf[src])
            choice = np.minimum((u[:, t, None] > cdf).sum(axis=1), SYNTHETIC_SUCCESSORS - 1)
            out[:, t] = nxt[r, choice]
        return out


@dataclasses.dataclass(frozen=True)
class WindowSource:
    """Windows at seeded random offsets of one token stream (text and pre-tokenized data)."""

    seed: int
    tokens: np.ndarray  # [N]

    def sequences(self, index: int, rows: int, length: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        starts = rng.integers(0, len(self.tokens) - length + 1, size=rows)
        return np.stack([np.asarray(self.tokens[s : s + length], np.int32) for s in starts])


def make_source(spec: DataSpec, vocab_size: int, length: int) -> TokenSource:
    """The source a spec names; raises UserError for data that cannot feed a model with `vocab_size` tokens in
    windows of `length` tokens (`batch.max_target_length + 1`: a row's targets are its inputs shifted by one)."""
    if spec.source == "synthetic":
        return MarkovSource.build(vocab_size, spec.seed)
    if spec.source == "text":
        tokens = tokenize_text(read_texts(spec.path), spec.tokenizer, vocab_size)
    elif spec.source == "tokens":
        tokens = read_token_file(spec.path)
    else:
        raise UserError(
            f"the bundled trainer cannot read data.source {spec.source!r}", "use source: synthetic, text or tokens"
        )
    if len(tokens) < length:
        raise UserError(
            f"data at {spec.path} has {len(tokens)} tokens; a row needs at least {length} "
            f"(batch.max_target_length {length - 1} + 1: the targets are the inputs shifted by one token)",
            "add more data, or lower batch.max_target_length"
            + (f" to {len(tokens) - 1} or less" if len(tokens) > 1 else ""),
        )
    top = int(tokens.max()) if len(tokens) else 0
    if top >= vocab_size:
        raise UserError(
            f"data at {spec.path} has token id {top}, outside the model's vocabulary of {vocab_size}",
            "tokenize the data with the models' tokenizer, or use models whose vocab_size covers its ids"
            if spec.source == "tokens"
            else "use a tokenizer whose vocabulary fits the models' vocab_size",
        )
    return WindowSource(spec.seed, tokens)


class Batches(Protocol):
    local: bool  # batches hold this process's rows only (else every row of the global batch)

    def next(self) -> dict[str, np.ndarray]:
        """The next optimizer step's micro-batches, `{key: [A, R, T]}`."""

    def state(self) -> bytes | None:
        """The position after the batches handed out so far, for a checkpoint (None: the micro-batch count
        saved in the checkpoint's meta is the whole position)."""

    def restore(self, state: bytes) -> None:
        """Continue from a `state` a checkpoint saved."""

    def close(self) -> None:
        """Release readers and threads."""


class IndexBatches:
    """The index sources: micro-batch `i` is `batch_at(source, i)`, the same on every process."""

    local = False

    def __init__(self, source: TokenSource, rows: int, length: int, accumulation: int, position: int = 0):
        self.source, self.rows, self.length, self.accumulation = source, rows, length, accumulation
        self.position = position

    def next(self) -> dict[str, np.ndarray]:
        micro = [batch_at(self.source, self.position + a, self.rows, self.length) for a in range(self.accumulation)]
        self.position += self.accumulation
        return {k: np.stack([m[k] for m in micro]) for k in micro[0]}

    def state(self) -> None:
        return None

    def restore(self, state: bytes) -> None:
        raise ValueError("index sources have no iterator state")

    def close(self) -> None:
        pass


class StreamBatches:
    """Document sources: this process's packed rows from a Grain iterator, `accumulation` batches per step."""

    local = True

    def __init__(self, iterator, accumulation: int):
        self.iterator, self.accumulation = iterator, accumulation

    def next(self) -> dict[str, np.ndarray]:
        micro = [next(self.iterator) for _ in range(self.accumulation)]
        return {k: np.stack([m[k] for m in micro]) for k in micro[0]}

    def state(self) -> bytes:
        import json

        return json.dumps(self.iterator.get_state(), sort_keys=True).encode()

    def restore(self, state: bytes) -> None:
        import json

        self.iterator.set_state(json.loads(state))

    def close(self) -> None:
        """Stop the prefetch thread."""
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


PREFETCH_BATCHES = 4  # packed batches a process prepares ahead: what bounds the input pipeline's memory


def document_rows(
    data: DataSpec, path: str | None, vocab_size: int, length: int, shard, *, repeat: bool, field: str = "data.path"
):  # -> grain.IterDataset
    """This process's packed rows (`trainer.packing`) of the documents at `path` (`field`: the spec key that
    named it, for messages). UserError when this process's share has no document of two tokens or more: repeated,
    such a corpus would be read round and round without ever making a row."""
    from trainer import corpus, packing

    tokenize = load_tokenizer(data.tokenizer, vocab_size)
    once = corpus.host_records(data, path, shard, repeat=False, field=field)
    # A document counts when it has a token to train on: with completion_only, its completion's (a corpus of empty
    # completions trained 0 tokens and "succeeded").
    documents = once.map(lambda r: packing.document_features(r, data, tokenize)).filter(lambda d: d["weights"].any())
    if next(iter(documents), None) is None:
        share = f" (process {shard.index}'s share of {shard.count})" if shard.count > 1 else ""
        if data.prompt_completion and data.completion_only:
            raise UserError(
                f"{field} {path!r} holds no record with a completion token to train on{share} (completion_only: true "
                "trains on completions alone): every completion is empty",
                f"check data.completion_column (now {data.completion_column!r}), or set completion_only: false",
            )
        raise UserError(
            f"{field} {path!r} holds no document with text{share}: every record is empty or a single token",
            f"point {field} at the documents, or check data.text_column (now {data.text_column!r})",
        )
    records = corpus.host_records(data, path, shard, repeat=repeat, field=field)
    if repeat:
        records = records.map(corpus.EpochNotes(path, shard).note)
    split = packing.SplitDocuments()  # warns about this pipeline's long documents
    documents = records.map(lambda r: packing.document_features(r, data, tokenize, length, split))
    rows = packing.packed_rows(documents, length, whole_records=data.prompt_completion)
    return rows.map(lambda row: packing.check_vocab(row, vocab_size, path))


def make_batches(spec: DistillSpec, vocab_size: int, rows: int, shard, position: int = 0) -> Batches:
    """The training batches of `spec`: `rows` global rows per micro-batch (a process with shard `i of n` of a
    document source reads `rows / n`), starting at micro-batch `position` (index sources; a document source's
    iterator is restored from its checkpointed state instead)."""
    import grain

    length, accumulation = spec.batch.max_target_length, spec.batch.gradient_accumulation_steps
    if spec.offline_data_dir and spec.mode == "distill":  # the rows and the teacher's top-k, from a logit cache
        from trainer import logit_cache

        return logit_cache.open_batches(spec, rows, shard, position)
    if spec.data.source not in DOCUMENT_SOURCES:
        source = make_source(spec.data, vocab_size, length + 1)  # `batch_at` draws windows of length + 1
        return IndexBatches(source, rows, length, accumulation, position)
    rows_here = host_rows(rows, shard)
    if spec.data.source in ("jsonl", "parquet"):  # the sources shared out file by file
        from trainer import corpus

        corpus.warn_uneven_shares(spec.data.path, shard)
    ds = document_rows(spec.data, spec.data.path, vocab_size, length, shard, repeat=True)
    ds = ds.batch(rows_here, drop_remainder=True)
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=PREFETCH_BATCHES)
    return StreamBatches(iter(ds), accumulation)


def host_rows(rows: int, shard) -> int:
    """Rows per process; UserError when the processes cannot share `rows` evenly."""
    if rows % shard.count:
        raise UserError(
            f"a micro-batch of {rows} rows cannot be shared evenly by {shard.count} processes",
            "pick a per_device_batch_size that gives every process the same number of rows",
        )
    return rows // shard.count


def eval_batches(spec: DistillSpec, vocab_size: int, rows: int, shard) -> list[dict[str, np.ndarray]]:
    """The held-out set: the first `eval.batches` batches of `rows` global rows of `eval.path`, read whole by every
    process (each keeps its `rows / n` of every batch), once; a set that runs out is padded with rows of mask 0. The
    same rows whatever the process count: each process read its own files, so two hosts evaluated other documents
    than one, and their eval numbers (what results and golden files prefer) did not compare. The synthetic source's
    set is its batches `HELD_OUT_INDEX + b` (this process's rows)."""
    import itertools

    from trainer.corpus import Shard

    assert spec.eval is not None
    length, rows_here = spec.batch.max_target_length, host_rows(rows, shard)
    mine = slice(shard.index * rows_here, (shard.index + 1) * rows_here)
    if spec.data.source == "synthetic":  # batches of the same language at indices training never reaches
        source = MarkovSource.build(vocab_size, spec.data.seed)
        held_out = [batch_at(source, HELD_OUT_INDEX + b, rows, length) for b in range(spec.eval.batches)]
        return [{k: v[mine] for k, v in batch.items()} for batch in held_out]
    ds = document_rows(spec.data, spec.eval.path, vocab_size, length, Shard(), repeat=False, field="eval.path")
    flat = list(itertools.islice(iter(ds), spec.eval.batches * rows))
    pad = {
        "inputs": np.zeros((length,), np.int32),
        "targets": np.zeros((length,), np.int32),
        "segment_ids": np.zeros((length,), np.int32),
        "mask": np.zeros((length,), np.float32),
    }
    wanted = spec.eval.batches * rows
    if len(flat) < wanted:  # padded so that every process runs the same batches; the padding costs compute only
        filled = -(-len(flat) // rows)
        log.warning(
            "eval.path holds %d row(s): %d of the %d eval batches are padding, computed at every evaluation and not "
            "counted; set eval.batches to %d to skip them",
            len(flat),
            spec.eval.batches - filled,
            spec.eval.batches,
            max(filled, 1),
        )
    flat += [pad] * (wanted - len(flat))
    batches = [flat[b * rows : (b + 1) * rows] for b in range(spec.eval.batches)]
    return [{k: np.stack([r[k] for r in batch[mine]]) for k in pad} for batch in batches]


def batch_at(source: TokenSource, index: int, rows: int, seq_len: int) -> dict[str, np.ndarray]:
    """Batch `index` as inputs/targets/mask `[rows, seq_len]`."""
    seqs = source.sequences(index, rows, seq_len + 1)
    return {"inputs": seqs[:, :-1], "targets": seqs[:, 1:], "mask": np.ones((rows, seq_len), np.float32)}


# --- text and token files ----------------------------------------------------------------------------------


def _expand(path: str | None) -> list[fsspec.core.OpenFile]:
    """The files `path` names: a file, every file under a directory, or a glob's matches (sorted)."""
    if not path:
        raise UserError("data.path is not set", "set data.path to a file, directory, glob or fsspec URL")
    try:
        fs, names = data_files(path)
    except Exception as e:  # noqa: BLE001 - fsspec backends raise their own types; storage_error sorts them
        # unreachable storage, 429 and 5xx: retried (exit 42), as for documents; credentials and paths: exit 1
        raise storage_error(f"cannot list data.path {path!r}", e) from None
    return [fsspec.core.OpenFile(fs, name, "rb") for name in names]


def read_texts(path: str | None) -> list[str]:
    """The UTF-8 texts at `path`, in sorted file order. Raises UserError for a compressed or binary file, or one
    with more than `text_magic.UNDECODABLE_SHARE` of bytes that are not UTF-8; fewer are read as U+FFFD, and a
    warning says how many."""
    files = _expand(path)
    if not files:
        raise UserError(f"no files at data.path {path!r}", "point data.path at text files")
    texts, replaced, records = [], [], []
    for f in files:
        try:
            with f as handle:
                raw = handle.read()
        except Exception as e:  # noqa: BLE001 - see _expand
            raise storage_error(f"cannot read {f.path}", e) from None
        refused = text_bytes.not_text(raw[: text_bytes.HEAD], f.path, "data.path")
        if refused is not None:
            raise refused
        text, bad = text_bytes.decode(raw, f.path, "data.path")
        texts.append(text)
        if bad:
            replaced.append((f.path, bad, len(raw)))
        if _records(f.path, text):
            records.append(f.path)
    if replaced:
        name, bad, size = replaced[0]
        log.warning(
            "%d byte(s) that are not UTF-8 were read as U+FFFD in %d file(s) of data.path (e.g. %s: %d of %d bytes); "
            "convert the files to UTF-8 to train on what those bytes meant",
            sum(r[1] for r in replaced),
            len(replaced),
            name,
            bad,
            size,
        )
    if records:  # a folder or glob of JSONL under `source: text` trained on its syntax (validate sees only the path)
        log.warning(
            "%d file(s) of data.path hold records, not plain text (e.g. %s): they are trained on as text, their "
            "syntax and column names included; set data.source: jsonl (or parquet) to read their text column",
            len(records),
            records[0],
        )
    return texts


def _records(path: str, text: str) -> bool:
    """Whether a file read as plain text is records: named .jsonl/.json/.parquet/.arrow, or its first line a JSON
    object."""
    import json

    from distillspec.checks import record_format_suffix

    if record_format_suffix(path) is not None:
        return True
    first = text.lstrip()[:4096].split("\n", 1)[0]
    if not first.startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def resolve_tokenizer(spec: DistillSpec) -> str:
    """What the run tokenises with: `byte` or the path of a tokenizer.json.

    data.tokenizer when the spec names one (a tokenizer.json, or a folder holding one, as MaxText's
    `tokenizer_path` may be); otherwise the tokenizer.json of the teacher's checkpoint folder, then the
    student's, when it has one (a Hugging Face model folder usually does); otherwise `byte`."""
    named = spec.data.tokenizer
    files = [file for _, file in tokenizer_files(spec)]
    if named is not None:
        if named == "byte" or named.endswith(".json"):
            return named
        if _is_file(files[0]):
            return files[0]
        raise UserError(
            f"data.tokenizer {named!r} is neither `byte`, a tokenizer.json, nor a folder holding one",
            "point data.tokenizer (MaxText: tokenizer_path) at a Hugging Face tokenizer.json; SentencePiece "
            ".model files are not read by the bundled trainer",
        )
    found = [file for file in files if _is_file(file)]
    if len(found) == 2 and spec.mode != "pretrain":
        mismatch = tokenizer_mismatch((found[0], found[1]), (_read(found[0]), _read(found[1])))
        if mismatch is not None:
            raise UserError(*mismatch)
    return found[0] if found else "byte"


def _read(path: str) -> str:
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the tokenizer {path}: {e}", "copy the checkpoint folder again") from None


def _is_file(path: str) -> bool:
    try:
        fs, root = fsspec.core.url_to_fs(path)
        return bool(fs.isfile(root))
    except (OSError, ValueError, ImportError):
        return False


def tokenize_text(texts: list[str], tokenizer: str | None, vocab_size: int) -> np.ndarray:
    """Concatenated token ids of `texts` (documents joined by a newline byte / the tokenizer's own tokens);
    `tokenizer` is `byte` (or None) or the path of a tokenizer.json (see `resolve_tokenizer`)."""
    tokenize = load_tokenizer(tokenizer, vocab_size)
    if tokenizer in ("byte", None):
        return tokenize("\n".join(texts))
    ids = [tokenize(text) for text in texts]
    return np.concatenate(ids) if ids else np.zeros((0,), np.int32)


def read_token_file(path: str | None) -> np.ndarray:
    """Token ids from a `.npy` file or a raw little-endian uint16 (int32 for `.i32`/`.int32`) file."""
    files = _expand(path)
    if not files:
        raise UserError(f"no files at data.path {path!r}", "point data.path at a .npy or raw token file")
    if len(files) != 1:
        raise UserError(f"data.path {path!r} must name exactly one token file, found {len(files)}")
    name = files[0].path
    try:
        with files[0] as f:
            raw = f.read()
    except Exception as e:  # noqa: BLE001 - see _expand
        raise storage_error(f"cannot read {name}", e) from None
    if name.endswith(".npy"):
        import io

        if not raw.startswith(b"\x93NUMPY"):  # else numpy takes it for a pickle and says so
            raise UserError(
                f"{name} is not a .npy file (no NumPy header)",
                "write it with numpy.save, or name raw uint16 tokens .bin",
            )
        try:
            tokens = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, EOFError) as e:
            raise UserError(f"{name} is not a readable .npy file: {e}") from None
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise UserError(f"{name} must hold a 1-D integer array, got {tokens.dtype} {tokens.shape}")
        if len(tokens) and tokens.min() < 0:
            raise UserError(f"{name} has negative token ids")
        if len(tokens) and int(tokens.max()) > np.iinfo(np.int32).max:
            # int32 would wrap it (a uint32 0xFFFFFFFF pad reads -1, 2**32 + 7 reads 7) and train on the wrong id.
            raise UserError(
                f"{name} has token id {int(tokens.max())}, beyond any vocabulary (a pad or end marker stored unsigned?)",
                "write the file with the tokenizer's ids only (numpy.save of an int32 or uint16 array)",
            )
        return tokens.astype(np.int32)
    dtype = np.dtype("<i4") if name.endswith((".i32", ".int32")) else np.dtype("<u2")
    if len(raw) % dtype.itemsize:
        raise UserError(f"{name} has {len(raw)} bytes, not a whole number of {dtype.itemsize}-byte tokens")
    tokens = np.frombuffer(raw, dtype).astype(np.int32)
    if len(tokens) and tokens.min() < 0:
        raise UserError(f"{name} has negative token ids")
    sample = tokens[: 1 << 20]
    if dtype.itemsize == 2 and len(sample) >= 16 and not sample[1::2].any() and sample[0::2].any():
        # Read as uint16 (the name says nothing else), int32 ids are `id, 0, id, 0, ...`: half the tokens 0.
        raise UserError(
            f"{name} read as raw uint16 tokens has every other token 0: it looks like int32 ids",
            "name it .i32 (or .int32) to read int32, or save it with numpy.save as .npy (its dtype is then read)",
        )
    return tokens
