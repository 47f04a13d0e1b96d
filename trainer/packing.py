"""Documents into packed rows: tokenize each record, then concatenate and cut into rows with segment ids.

A document of tokens `d[0..L)` becomes `inputs = d[:-1]`, `targets = d[1:]` and `weights` (1 where the target is
trained on: every target, or with `completion_only` only the completion's), so every target lies inside its own
document and nothing is ever predicted across a boundary. Grain's `ConcatThenSplitIterDataset` concatenates the
documents and cuts rows of `length` tokens, numbering the documents of a row from 1 (`inputs_segment_ids`); a
text document longer than what is left of a row continues in the next row as a new segment; rows are never padded
while records last, and a finite stream's last row is padded with segment id 0. Prompt/completion records are
never split (a completion trained without the start of its prompt would teach the wrong thing): Grain's
`FirstFitPackIterDataset` fills rows with whole records, and pads what is left of a row with segment id 0.

A batch is `{"inputs", "targets", "segment_ids": [R, T] int32, "mask": [R, T] float32}`: the models attend only
within a segment (and restart positions at each), and the loss covers exactly the tokens whose mask is 1 — in a
segment (id > 0) and with weight 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import fsspec
import grain
import numpy as np

from distillspec.config import DataSpec
from trainer.corpus import WHERE, worth_a_note
from trainer.exit_codes import UserError

Tokenize = Callable[[str], np.ndarray]
log = logging.getLogger(__name__)


class SplitDocuments:
    """Counts one pipeline's text documents longer than a row, each once: warns at the first and then at every
    power of ten. A repeated pipeline meets them again each epoch; the count stops when the first comes back (it
    had counted 10 documents as 100 after ten epochs)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None
        self.seen_all = False

    def note(self, where: str, tokens: int, length: int) -> None:
        if self.first is None:
            self.first = where
        elif where == self.first:
            self.seen_all = True  # the next epoch: every long document has been counted
        if self.seen_all:
            return
        self.count += 1
        if worth_a_note(self.count):
            log.warning(
                "%d document(s) longer than a row of %d tokens were split over rows so far (e.g. %s: %d tokens); "
                "each piece is trained on, attending only within itself",
                self.count,
                length,
                where,
                tokens,
            )


def load_tokenizer(tokenizer: str | None, vocab_size: int) -> Tokenize:
    """`text -> int32 ids`: the byte tokenizer (`byte` or None, vocab 256) or a tokenizer.json through the
    `tokenizers` library. Raises UserError when it cannot be loaded or does not fit `vocab_size`."""
    if tokenizer in ("byte", None):
        if vocab_size < 256:
            raise UserError(f"the byte tokenizer needs vocab_size >= 256, the models have {vocab_size}")
        return lambda text: np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    try:
        from tokenizers import Tokenizer

        with fsspec.open(tokenizer, "r", encoding="utf-8") as f:
            tok = Tokenizer.from_str(f.read())
    except (OSError, ValueError, ImportError) as e:
        raise UserError(
            f"cannot load tokenizer {tokenizer!r}: {e}", "data.tokenizer is `byte` or the path of a tokenizer.json"
        ) from None
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type for malformed files
        raise UserError(
            f"cannot parse tokenizer {tokenizer!r}: {e}", "data.tokenizer must be a tokenizers-library tokenizer.json"
        ) from None
    if tok.get_vocab_size() > vocab_size:
        raise UserError(
            f"tokenizer {tokenizer!r} has {tok.get_vocab_size()} tokens; the models' vocab_size is {vocab_size}",
            "set the models' vocab_size to at least the tokenizer's",
        )
    return lambda text: np.asarray(tok.encode(text).ids, np.int32)


def document_features(
    record: dict[str, Any],
    data: DataSpec,
    tokenize: Tokenize,
    length: int | None = None,
    split: SplitDocuments | None = None,
) -> dict[str, np.ndarray]:
    """One record as `{"inputs", "targets": int32 [L-1], "weights": int32 [L-1]}` (L the document's tokens; empty
    arrays for a document of fewer than 2 tokens).

    A text document longer than a row (`length`) is split over rows (pre-training text: each piece is trained
    on; a warning says how many were). A prompt/completion record longer than a row is a UserError naming the
    file and record: split, its completion would be trained without its prompt. `split` counts the long text
    documents of one pipeline (and warns)."""
    if data.prompt_completion:
        prompt = tokenize(_text(record, data.prompt_column))
        completion = tokenize(_text(record, data.completion_column))
        tokens = np.concatenate([prompt, completion])
        trained = np.concatenate([np.full(len(prompt), not data.completion_only), np.ones(len(completion), bool)])
        if length is not None and len(tokens) - 1 > length:
            raise UserError(
                f"{record.get(WHERE, 'a record')}: a prompt/completion record of {len(tokens)} tokens is longer than "
                f"a row of {length} (+1) tokens; split over rows, its completion would lose its prompt",
                "raise batch.max_target_length, or drop or shorten the long records",
            )
    else:
        tokens = tokenize(_text(record, data.text_column))
        trained = np.ones(len(tokens), bool)
        if split is not None and length is not None and len(tokens) - 1 > length:
            split.note(record.get(WHERE, "a record"), len(tokens), length)
    if len(tokens) < 2:
        empty = np.zeros((0,), np.int32)
        return {"inputs": empty, "targets": empty, "weights": empty}
    return {"inputs": tokens[:-1], "targets": tokens[1:], "weights": trained[1:].astype(np.int32)}


def _text(record: dict[str, Any], column: str) -> str:
    """A record's text column; UserError naming the record when it holds no text (null, a number, a list were
    trained on as the words "None", "12345", "['a', 'b']")."""
    value = record[column]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    elif isinstance(value, str):
        return value
    kinds = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    kind = "null" if value is None else kinds.get(type(value), f"a {type(value).__name__}")
    raise UserError(
        f"{record.get(WHERE, 'a record')}: column {column!r} holds {kind}, not text",
        "give every record a string there, or drop the records without one",
    )


PACKING_BINS = 8  # rows whole records are packed into at once: more bins, less padding, more rows held


def packed_rows(documents: grain.IterDataset, length: int, *, whole_records: bool = False) -> grain.IterDataset:
    """Rows of `length` tokens from a stream of `document_features` (see the module docstring); with
    `whole_records`, no record is split over rows (each is at most a row long: `document_features` checks)."""
    nonempty = documents.filter(lambda d: len(d["inputs"]) > 0)
    lengths = {"inputs": length, "targets": length, "weights": length}
    if whole_records:
        packed = grain.experimental.FirstFitPackIterDataset(
            nonempty, length_struct=lengths, num_packing_bins=PACKING_BINS, shuffle_bins=False
        )
    else:
        packed = grain.experimental.ConcatThenSplitIterDataset(nonempty, length_struct=lengths)
    return packed.map(_row)


def _row(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    segments = np.asarray(packed["inputs_segment_ids"], np.int32)
    return {
        "inputs": np.asarray(packed["inputs"], np.int32),
        "targets": np.asarray(packed["targets"], np.int32),
        "segment_ids": segments,
        "mask": ((segments > 0) & (np.asarray(packed["weights"]) > 0)).astype(np.float32),
    }


def check_vocab(row: dict[str, np.ndarray], vocab_size: int, where: str) -> dict[str, np.ndarray]:
    """`row` unchanged; UserError when a token id is outside the models' vocabulary."""
    top = int(max(row["inputs"].max(initial=0), row["targets"].max(initial=0)))
    if top >= vocab_size:
        raise UserError(
            f"data at {where} has token id {top}, outside the model's vocabulary of {vocab_size}",
            "use a tokenizer whose vocabulary fits the models' vocab_size",
        )
    return row
