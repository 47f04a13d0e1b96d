"""Data sources: deterministic by batch index, learnable synthetic language, text and token files, clear errors."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from distillspec.config import DataSpec
from trainer.exit_codes import UserError

pytest.importorskip("jax")

from trainer import data as D  # noqa: E402

STDLIB_JSON = str(Path(json.__file__).parent)  # text every Python installation ships
STDLIB_JSON_PY = STDLIB_JSON + "/*.py"  # its sources alone: the folder may hold __pycache__/*.pyc, not text


def test_synthetic_batches_are_a_function_of_seed_and_index():
    source = D.make_source(DataSpec(seed=3), 256, 33)
    a, b = D.batch_at(source, 7, 4, 32), D.batch_at(D.make_source(DataSpec(seed=3), 256, 33), 7, 4, 32)
    assert all((a[k] == b[k]).all() for k in a)
    assert not (D.batch_at(source, 8, 4, 32)["inputs"] == a["inputs"]).all()
    assert not (D.batch_at(D.make_source(DataSpec(seed=4), 256, 33), 7, 4, 32)["inputs"] == a["inputs"]).all()
    assert (a["targets"][:, :-1] == a["inputs"][:, 1:]).all()  # targets are the inputs shifted by one
    assert a["inputs"].shape == (4, 32) and a["mask"].sum() == 4 * 32


def test_synthetic_language_is_learnable_not_noise():
    """Given the previous token, the next one is far from uniform: the bigram entropy is much below log V."""
    seqs = D.make_source(DataSpec(seed=0), 256, 129).sequences(0, 64, 129)
    prev, nxt = seqs[:, :-1].ravel(), seqs[:, 1:].ravel()
    counts = np.zeros((256, 256))
    np.add.at(counts, (prev, nxt), 1)
    rows = counts[counts.sum(1) > 20]
    p = rows / rows.sum(1, keepdims=True)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1).mean()
    assert entropy < 0.5 * np.log(256)
    assert len(np.unique(seqs)) > 128  # and it uses the vocabulary


def test_text_source_reads_stdlib_files_with_the_byte_tokenizer(tmp_path):
    spec = DataSpec(source="text", path=STDLIB_JSON_PY, seed=1)
    source = D.make_source(spec, 256, 65)
    expected = "\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(STDLIB_JSON).glob("*.py")))
    assert len(source.tokens) == len(expected.encode("utf-8"))
    batch = D.batch_at(source, 0, 4, 64)
    window = bytes(batch["inputs"][0].astype(np.uint8)).decode("utf-8", errors="ignore")
    assert window[:20] in expected
    assert (D.batch_at(D.make_source(spec, 256, 65), 0, 4, 64)["inputs"] == batch["inputs"]).all()
    (tmp_path / "sub").mkdir()
    for file in Path(STDLIB_JSON).glob("*.py"):
        (tmp_path / "sub" / file.name).write_bytes(file.read_bytes())
    directory = D.make_source(DataSpec(source="text", path=str(tmp_path)), 256, 65)  # a directory: every file under it
    assert len(directory.tokens) == len(source.tokens)


def test_text_source_with_a_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train(
        [str(p) for p in Path(STDLIB_JSON).glob("*.py")], trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"])
    )
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    source = D.make_source(DataSpec(source="text", path=STDLIB_JSON_PY, tokenizer=str(path)), 512, 33)
    assert source.tokens.max() < tok.get_vocab_size() <= 300
    with pytest.raises(UserError, match="vocab_size"):
        D.make_source(DataSpec(source="text", path=STDLIB_JSON_PY, tokenizer=str(path)), 256, 33)


def test_token_files(tmp_path):
    ids = np.arange(1000, dtype=np.int64) % 200
    np.save(tmp_path / "ids.npy", ids)
    ids.astype("<u2").tofile(tmp_path / "ids.bin")
    ids.astype("<i4").tofile(tmp_path / "ids.i32")
    for name in ("ids.npy", "ids.bin", "ids.i32"):
        source = D.make_source(DataSpec(source="tokens", path=str(tmp_path / name)), 256, 17)
        assert (source.tokens == ids).all(), name
        window = D.batch_at(source, 0, 2, 16)["inputs"][0]
        assert ((np.diff(window) % 200) == 1).all()  # a contiguous slice of the file


@pytest.mark.parametrize(
    ("data", "vocab", "match"),
    [
        (dict(source="text", path="/nonexistent/corpus"), 256, "no files"),
        (dict(source="text", path=STDLIB_JSON_PY), 128, "byte tokenizer needs vocab_size >= 256"),
        (
            dict(source="text", path=STDLIB_JSON_PY, tokenizer="/nonexistent/tokenizer.json"),
            256,
            "cannot load tokenizer",
        ),
        (dict(source="tokens", path="/nonexistent/ids.npy"), 256, "no files|exactly one"),
    ],
)
def test_bad_data_is_a_user_error(data, vocab, match):
    with pytest.raises(UserError, match=match):
        D.make_source(DataSpec(**data), vocab, 33)


def test_token_file_errors(tmp_path):
    np.save(tmp_path / "big.npy", np.array([1, 2, 300] * 20))
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "big.npy")), 256, 17)
    np.save(tmp_path / "short.npy", np.arange(5))
    with pytest.raises(UserError, match="has 5 tokens; a row needs at least 17"):
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "short.npy")), 256, 17)
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(UserError, match="whole number"):
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "odd.bin")), 256, 1)
    np.save(tmp_path / "float.npy", np.ones(40))
    with pytest.raises(UserError, match="integer"):
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "float.npy")), 256, 17)
    # Ids past int32 wrapped when read (a uint32 0xFFFFFFFF pad became -1, 2**32 + 7 became 7) and were trained on.
    for dtype, big in ((np.uint32, 0xFFFFFFFF), (np.int64, 2**32 + 7)):
        np.save(tmp_path / "wide.npy", np.array([1, 2, big] * 20, dtype=dtype))
        with pytest.raises(UserError, match=f"has token id {big}, beyond any vocabulary"):
            D.make_source(DataSpec(source="tokens", path=str(tmp_path / "wide.npy")), 256, 17)
    # int32 ids in a raw file named .bin: read as uint16 (the name decides), half the tokens were 0, exit 0.
    np.arange(1, 200, dtype=np.int32).tofile(tmp_path / "wide.bin")
    with pytest.raises(UserError, match="every other token 0: it looks like int32 ids") as e:
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "wide.bin")), 256, 17)
    assert "name it .i32" in e.value.hint
    np.arange(1, 200, dtype=np.int32).tofile(tmp_path / "wide.i32")
    assert len(D.make_source(DataSpec(source="tokens", path=str(tmp_path / "wide.i32")), 256, 17).tokens) == 199
    (tmp_path / "text.npy").write_text("1 2 3 4\n")  # numpy would call it pickled data
    with pytest.raises(UserError, match=r"text.npy is not a .npy file \(no NumPy header\)"):
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "text.npy")), 256, 1)


@pytest.mark.parametrize("source", ["text", "tokens"])
def test_a_corpus_needs_one_token_more_than_max_target_length(tmp_path, source):
    """A row of T inputs needs T + 1 tokens (the targets are the inputs shifted by one): a corpus of exactly
    max_target_length tokens was let through and failed at the first batch (exit 70, `ValueError: high <= 0`)."""
    from distillspec.config import DistillSpec
    from trainer.corpus import Shard

    def batches(tokens: int):
        path = tmp_path / f"{tokens}.{'txt' if source == 'text' else 'npy'}"
        if source == "text":
            path.write_text("a" * tokens)
        else:
            np.save(path, np.arange(tokens) % 256)
        spec = DistillSpec.model_validate(
            {
                "mode": "pretrain",
                "student": {"model": "tiny-2l"},
                "data": {"source": source, "path": str(path)},
                "batch": {"per_device_batch_size": 2, "max_target_length": 32},
            }
        )
        return D.make_batches(spec, 256, 2, Shard())

    with pytest.raises(UserError) as e:
        batches(32)
    assert "has 32 tokens; a row needs at least 33 (batch.max_target_length 32 + 1" in e.value.message
    assert "lower batch.max_target_length to 31 or less" in e.value.hint
    batch = batches(33).next()
    assert batch["inputs"].shape == (1, 2, 32) and (batch["targets"][0, :, :-1] == batch["inputs"][0, :, 1:]).all()


FRENCH = "Le cœur a ses raisons que la raison ne connaît point; on le sait en mille choses. " * 20


def _zip(text: bytes) -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("corpus.txt", text)
    return out.getvalue()


def _arrow(text: bytes, form: str) -> bytes:
    """`text` as one column of a Parquet file or an Arrow IPC stream (a saved Hugging Face dataset's files)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table, out = pa.table({"text": [text.decode()]}), io.BytesIO()
    if form == "parquet":
        pq.write_table(table, out)
    else:
        with pa.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table)
    return out.getvalue()


def _npy(text: bytes) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, np.frombuffer(text, np.uint8))
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "write", "said", "todo"),
    [
        ("corpus.txt.gz", gzip.compress, "gzip-compressed", "decompress it (gunzip"),
        ("corpus.txt.bz2", bz2.compress, "bzip2-compressed", "decompress it (bunzip2"),
        ("corpus.txt.xz", lzma.compress, "xz-compressed", "decompress it (unxz"),
        ("corpus.zip", _zip, "a zip archive", "extract it (unzip"),
        ("corpus.npy", _npy, "a NumPy array", "data.source: tokens"),
        (
            "corpus-16.txt",
            lambda b: b.decode().encode("utf-16"),
            "UTF-16 text (it starts with a byte-order mark)",
            "iconv -f UTF-16",
        ),
        # Without a byte-order mark, every other byte NUL (valid UTF-8): it was trained on as `h\0o\0m\0e\0`.
        (
            "corpus-le.txt",
            lambda b: b.decode().encode("utf-16-le"),
            "UTF-16LE text (every other byte is NUL)",
            "iconv -f UTF-16LE",
        ),
        (
            "corpus-be.txt",
            lambda b: b.decode().encode("utf-16-be"),
            "UTF-16BE text (every other byte is NUL)",
            "iconv -f UTF-16BE",
        ),
        # Read as text, these were "not UTF-8" with a Windows-1252 iconv hint that made garbage.
        ("corpus.parquet", lambda b: _arrow(b, "parquet"), "a Parquet file", "data.source: parquet"),
        (
            "data-00000-of-00001.arrow",
            lambda b: _arrow(b, "stream"),
            "an Arrow stream (a Hugging Face dataset saved with save_to_disk?)",
            "data.source: hf_disk",
        ),
    ],
)
def test_a_compressed_or_binary_file_under_the_text_source_is_refused_naming_it(tmp_path, name, write, said, todo):
    # A gzipped corpus was decoded with errors="replace" and trained on as U+FFFD and byte noise, exit 0.
    (tmp_path / "plain.txt").write_text(FRENCH)
    (tmp_path / name).write_bytes(write(FRENCH.encode()))
    with pytest.raises(UserError) as e:
        D.make_source(DataSpec(source="text", path=str(tmp_path)), 256, 33)
    assert f"{tmp_path / name} is {said}, not UTF-8 text" in e.value.message
    assert todo in e.value.hint and "leave the file out of data.path" in e.value.hint


def test_text_in_another_encoding_is_refused_and_a_few_stray_bytes_are_warned_of(tmp_path, caplog):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(FRENCH.encode("latin-1", errors="replace"))
    with pytest.raises(UserError) as e:
        D.make_source(DataSpec(source="text", path=str(latin)), 256, 33)
    # 20 times "î" (0xee); "œ" is not Latin-1, written as "?"
    said = f"{latin} is not UTF-8 text: 20 of its 1640 bytes (1.22%) are not UTF-8, the first at byte 44 (0xee)"
    assert said in e.value.message
    assert "iconv -f CP1252 -t UTF-8" in e.value.hint
    # One stray byte in 3,000: kept (read as U+FFFD), and said.
    stray = tmp_path / "stray.txt"
    stray.write_bytes(FRENCH.encode() * 2 + b"\xff")
    with caplog.at_level("WARNING", logger="trainer.data"):
        source = D.make_source(DataSpec(source="text", path=str(stray)), 256, 33)
    assert len(source.tokens) == len((FRENCH * 2 + "\ufffd").encode())
    assert f"1 byte(s) that are not UTF-8 were read as U+FFFD in 1 file(s) of data.path (e.g. {stray}: 1 of" in (
        caplog.text
    )
    caplog.clear()
    valid = tmp_path / "valid.txt"
    valid.write_text(FRENCH + "\ufffd")  # a real U+FFFD is text like any other
    with caplog.at_level("WARNING", logger="trainer.data"):
        source = D.make_source(DataSpec(source="text", path=str(valid)), 256, 33)
    assert len(source.tokens) == len(valid.read_bytes()) and not caplog.text


def test_tokenizer_defaults_to_the_teacher_folders_then_byte(tmp_path):
    """resolve_tokenizer: the spec's data.tokenizer (a tokenizer.json, or a folder holding one, as MaxText's
    tokenizer_path may be); else the teacher's, then the student's checkpoint folder's tokenizer.json; else byte."""
    from distillspec.config import DistillSpec
    from trainer.exit_codes import UserError

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    teacher.mkdir()
    student.mkdir()

    def spec(**data):
        return DistillSpec.model_validate(
            {
                "student": {"model": "tiny-2l", "load_parameters_path": str(student)},
                "teacher": {"model": "tiny-4l", "load_parameters_path": str(teacher)},
                "data": data,
            }
        )

    assert D.resolve_tokenizer(spec()) == "byte"
    (student / "tokenizer.json").write_text("{}")
    assert D.resolve_tokenizer(spec()) == f"{student}/tokenizer.json"
    (teacher / "tokenizer.json").write_text("{}")
    assert D.resolve_tokenizer(spec()) == f"{teacher}/tokenizer.json"
    assert D.resolve_tokenizer(spec(tokenizer="byte")) == "byte"
    assert D.resolve_tokenizer(spec(tokenizer=str(student))) == f"{student}/tokenizer.json"
    with pytest.raises(UserError, match="neither `byte`, a tokenizer.json"):
        D.resolve_tokenizer(spec(tokenizer=str(tmp_path / "tokenizer.model")))
    # Two folders whose tokenizers map text differently: their logits cannot be compared token by token.
    (teacher / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}, "normalizer": null}')
    (student / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}, "normalizer": {}}')
    assert D.resolve_tokenizer(spec()) == f"{teacher}/tokenizer.json"  # alike where it matters
    (student / "tokenizer.json").write_text('{"model": {"vocab": {"b": 0}}}')
    with pytest.raises(UserError, match="tokenizers with different vocabulary or merges"):
        D.resolve_tokenizer(spec())
    assert D.resolve_tokenizer(spec(tokenizer=str(teacher))) == f"{teacher}/tokenizer.json"  # named: the user's call


def test_utf16_starting_outside_ascii_is_refused_and_text_starting_with_a_magic_is_read(tmp_path):
    # UTF-16LE whose first letter is "é" passed (the check wanted four ASCII letters first); text that merely
    # starts with "PAR1" or "ARROW1" was refused as Parquet or Arrow.
    # ... nor Cyrillic (its code units are two ASCII bytes: valid UTF-8, no NUL) or Greek, nor curly quotes first.
    starts = (
        "édition " + FRENCH,
        "привет мир как дела сегодня\n" * 50,
        "γειά σου κόσμε\n" * 50,
        "“Hello,” she said. " + FRENCH,
    )
    for order in ("le", "be"):
        for i, text in enumerate(starts):
            wide = tmp_path / f"wide-{order}-{i}.txt"
            wide.write_bytes(text.encode(f"utf-16-{order}"))
            with pytest.raises(UserError, match=f"is UTF-16{order.upper()} text"):
                D.make_source(DataSpec(source="text", path=str(wide)), 256, 33)
            wide.unlink()
    for start in ("PAR1 is the first paragraph. ", "ARROW1 points the way. "):
        plain = tmp_path / "plain.txt"
        plain.write_text(start + FRENCH)
        assert len(D.make_source(DataSpec(source="text", path=str(plain)), 256, 33).tokens) > 1000


def test_records_read_as_plain_text_are_warned_of(tmp_path, caplog):
    # A folder of .jsonl under `source: text` trained on `{"text": ...}` syntax, exit 0, without a word (validate
    # sees only the folder's name).
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.jsonl", "b.txt"):
        (folder / name).write_text("".join(json.dumps({"text": FRENCH[:80]}) + "\n" for _ in range(20)))
    with caplog.at_level("WARNING", logger="trainer.data"):
        D.make_source(DataSpec(source="text", path=str(folder)), 256, 33)
    assert "2 file(s) of data.path hold records, not plain text" in caplog.text and "data.source: jsonl" in caplog.text
    caplog.clear()
    (folder / "a.jsonl").unlink()
    (folder / "b.txt").write_text("{ a brace that starts prose } " + FRENCH)
    with caplog.at_level("WARNING", logger="trainer.data"):
        D.make_source(DataSpec(source="text", path=str(folder)), 256, 33)
    assert "hold records" not in caplog.text
