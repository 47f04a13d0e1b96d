"""Data sources: deterministic by batch index, learnable synthetic language, text and token files, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distillspec.config import DataSpec
from trainer.exit_codes import UserError

pytest.importorskip("jax")

from trainer import data as D  # noqa: E402

STDLIB_JSON = str(Path(json.__file__).parent)  # text every Python installation ships


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


def test_text_source_reads_stdlib_files_with_the_byte_tokenizer():
    spec = DataSpec(source="text", path=STDLIB_JSON + "/*.py", seed=1)
    source = D.make_source(spec, 256, 65)
    expected = "\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(STDLIB_JSON).glob("*.py")))
    assert len(source.tokens) == len(expected.encode("utf-8"))
    batch = D.batch_at(source, 0, 4, 64)
    window = bytes(batch["inputs"][0].astype(np.uint8)).decode("utf-8", errors="ignore")
    assert window[:20] in expected
    assert (D.batch_at(D.make_source(spec, 256, 65), 0, 4, 64)["inputs"] == batch["inputs"]).all()
    directory = D.make_source(DataSpec(source="text", path=STDLIB_JSON), 256, 65)  # a directory: every file in it
    assert len(directory.tokens) >= len(source.tokens)


def test_text_source_with_a_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train(
        [str(p) for p in Path(STDLIB_JSON).glob("*.py")], trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"])
    )
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    source = D.make_source(DataSpec(source="text", path=STDLIB_JSON, tokenizer=str(path)), 512, 33)
    assert source.tokens.max() < tok.get_vocab_size() <= 300
    with pytest.raises(UserError, match="vocab_size"):
        D.make_source(DataSpec(source="text", path=STDLIB_JSON, tokenizer=str(path)), 256, 33)


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
        (dict(source="text", path=STDLIB_JSON), 128, "byte tokenizer needs vocab_size >= 256"),
        (dict(source="text", path=STDLIB_JSON, tokenizer="/nonexistent/tokenizer.json"), 256, "cannot load tokenizer"),
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
    with pytest.raises(UserError, match="fewer than one window"):
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "short.npy")), 256, 17)
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(UserError, match="whole number"):
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "odd.bin")), 256, 1)
    np.save(tmp_path / "float.npy", np.ones(40))
    with pytest.raises(UserError, match="integer"):
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "float.npy")), 256, 17)
    (tmp_path / "text.npy").write_text("1 2 3 4\n")  # numpy would call it pickled data
    with pytest.raises(UserError, match=r"text.npy is not a .npy file \(no NumPy header\)"):
        D.make_source(DataSpec(source="tokens", path=str(tmp_path / "text.npy")), 256, 1)


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
