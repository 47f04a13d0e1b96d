"""Document corpora through Grain: JSONL, Parquet, ArrayRecord and saved Hugging Face datasets the tests write
themselves; per-process shards; packing with segment ids against a NumPy reference; no attention across
documents; completion-only masks; clear errors for bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from distillspec.config import DataSpec
from trainer.exit_codes import TrainerExit, UserError

pytest.importorskip("jax")
pytest.importorskip("grain")

from trainer import corpus  # noqa: E402
from trainer import data as D  # noqa: E402
from trainer.corpus import Shard  # noqa: E402

DOCS = [f"document {i}: " + "abcdefghij"[: i % 9 + 1] * (i % 5 + 1) for i in range(30)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """The same 30 documents as JSONL (3 files), Parquet (3 files), ArrayRecord (2 files) and a saved dataset."""
    import array_record.python.array_record_module as ar
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("corpora")
    parts = [DOCS[0:10], DOCS[10:20], DOCS[20:30]]
    for kind in ("jsonl", "parquet", "arrayrecord"):
        (root / kind).mkdir()
    for i, part in enumerate(parts):
        (root / "jsonl" / f"part-{i}.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for d in part))
        pq.write_table(pa.table({"text": part}), root / "parquet" / f"part-{i}.parquet", row_group_size=4)
    for i, part in enumerate([DOCS[:15], DOCS[15:]]):
        writer = ar.ArrayRecordWriter(str(root / "arrayrecord" / f"part-{i}.array_record"), "group_size:1")
        for d in part:
            writer.write(json.dumps({"text": d}).encode())
        writer.close()
    datasets.Dataset.from_dict({"text": DOCS, "other": list(range(30))}).save_to_disk(str(root / "hf"))
    return {
        "jsonl": root / "jsonl",
        "parquet": root / "parquet" / "*.parquet",
        "arrayrecord": root / "arrayrecord",
        "hf_disk": root / "hf",
    }


def texts(data: DataSpec, path, shard: Shard) -> list[str]:
    return [r[data.text_column] for r in corpus.host_records(data, str(path), shard, repeat=False)]


@pytest.mark.parametrize("source", ["jsonl", "parquet", "arrayrecord", "hf_disk"])
def test_every_record_once_per_epoch_across_processes(corpora, source):
    data = DataSpec(source=source, path=str(corpora[source]))
    one = texts(data, corpora[source], Shard(0, 1))
    assert sorted(one) == sorted(DOCS)
    halves = [texts(data, corpora[source], Shard(i, 2)) for i in range(2)]
    assert sorted(halves[0] + halves[1]) == sorted(DOCS)  # every record once, across both processes
    assert not set(halves[0]) & set(halves[1]) and all(halves)  # nobody reads another's shard
    if source in ("jsonl", "parquet"):  # whole files per process: files 0 and 2 to process 0, file 1 to process 1
        assert sorted(halves[1]) == sorted(DOCS[10:20])


def numpy_reference(docs: list[str], length: int) -> dict[str, np.ndarray]:
    """Concatenate every document's (inputs, targets) pairs, cut rows of `length`, number the pieces of each row
    from 1; the last row padded with segment 0."""
    inputs, targets, segments = [], [], []
    for d in docs:
        ids = np.frombuffer(d.encode(), np.uint8).astype(np.int32)
        inputs.append(ids[:-1])
        targets.append(ids[1:])
        segments.append(np.full(len(ids) - 1, len(segments)))  # a document number
    flat_in, flat_tg, flat_doc = (np.concatenate(x) for x in (inputs, targets, segments))
    rows = -(-len(flat_in) // length)
    pad = rows * length - len(flat_in)
    flat_in, flat_tg = np.pad(flat_in, (0, pad)), np.pad(flat_tg, (0, pad))
    flat_doc = np.pad(flat_doc, (0, pad), constant_values=-1).reshape(rows, length)
    seg = np.zeros_like(flat_doc)
    for r in range(rows):
        row = flat_doc[r]
        change = np.concatenate([[True], row[1:] != row[:-1]])
        seg[r] = np.where(row >= 0, np.cumsum(change), 0)
    return {"inputs": flat_in.reshape(rows, length), "targets": flat_tg.reshape(rows, length), "segment_ids": seg}


def test_packing_equals_a_numpy_reference(corpora):
    data = DataSpec(source="jsonl", path=str(corpora["jsonl"]))
    rows = list(D.document_rows(data, data.path, 256, 24, Shard(0, 1), repeat=False))
    got = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    want = numpy_reference(DOCS, 24)
    for key in ("inputs", "targets", "segment_ids"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(got["mask"], (want["segment_ids"] > 0).astype(np.float32))
    assert got["mask"].sum() == sum(len(d) - 1 for d in DOCS)  # every in-document target once, nothing else


def test_completion_only_masks_the_prompt(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"q": "12345", "a": "abc"}) + "\n" + json.dumps({"q": "xy", "a": "Z"}) + "\n")
    both = dict(source="jsonl", path=str(path), prompt_column="q", completion_column="a")
    row = next(iter(D.document_rows(DataSpec(**both, completion_only=True), str(path), 256, 16, Shard(), repeat=False)))
    trained = bytes(row["targets"][row["mask"] > 0].astype(np.uint8))
    assert trained == b"abcZ"  # the targets are the completions' tokens only
    row = next(iter(D.document_rows(DataSpec(**both), str(path), 256, 16, Shard(), repeat=False)))
    assert bytes(row["targets"][row["mask"] > 0].astype(np.uint8)) == b"2345abcyZ"
    # Every completion empty (a wrong column mapping): it trained on 0 tokens for the whole run and "succeeded".
    path.write_text("".join(json.dumps({"q": f"question {i}", "a": ""}) + "\n" for i in range(8)))
    with pytest.raises(UserError, match="holds no record with a completion token to train on") as e:
        D.document_rows(DataSpec(**both, completion_only=True), str(path), 256, 16, Shard(), repeat=True)
    assert "data.completion_column (now 'a')" in e.value.hint
    assert next(iter(D.document_rows(DataSpec(**both), str(path), 256, 16, Shard(), repeat=True)))  # prompts train


def test_prompt_completion_records_are_never_split_over_rows(tmp_path):
    """Records that would straddle a row end start the next row whole (its rest padded, segment 0): no segment is
    trained without the start of its prompt, every record is trained once per epoch, and a stream restored from
    its state goes on with the same rows."""
    rng = np.random.default_rng(0)
    pairs = [(f"<{i}:" + "q" * int(rng.integers(3, 20)), "a" * int(rng.integers(2, 12)) + ">") for i in range(60)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in pairs))
    data = DataSpec(source="jsonl", path=str(path), prompt_column="q", completion_column="a", completion_only=True)
    rows = list(D.document_rows(data, str(path), 256, 32, Shard(), repeat=False))
    seen = []
    for row in rows:
        for segment in set(row["segment_ids"].tolist()) - {0}:
            where = row["segment_ids"] == segment
            text = bytes(np.concatenate([row["inputs"][where][:1], row["targets"][where]]).astype(np.uint8))
            assert text.startswith(b"<") and text.endswith(b">"), text  # whole: the prompt's start to the end
            trained = bytes(row["targets"][where & (row["mask"] > 0)].astype(np.uint8)).decode()
            seen.append(text.decode())
            assert trained == pairs[int(text[1 : text.index(b":")])][1]  # exactly its completion
    assert sorted(seen) == sorted(q + a for q, a in pairs)  # each record once
    assert any((row["segment_ids"] == 0).any() for row in rows[:-1])  # a row's rest padded, not filled by a piece
    stream = iter(D.document_rows(data, str(path), 256, 32, Shard(), repeat=True))
    for _ in range(3):
        next(stream)
    state = stream.get_state()
    after = [next(stream) for _ in range(len(rows))]  # into the second epoch
    restored = iter(D.document_rows(data, str(path), 256, 32, Shard(), repeat=True))
    restored.set_state(state)
    for x, y in zip(after, [next(restored) for _ in range(len(rows))]):
        assert all((x[k] == y[k]).all() for k in x)


def test_a_data_folder_skips_hidden_and_underscore_files(tmp_path):
    # Spark and Hadoop write `_SUCCESS` and `.part-0.jsonl.crc` beside their part files: read as data, they failed
    # the run (`.crc:1 is not a JSON object`, `_SUCCESS ... Parquet file size is 0 bytes`).
    (tmp_path / "part-0.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / ".part-0.jsonl.crc").write_bytes(b"\x00crc")
    (tmp_path / "_metadata").write_bytes(b"PAR1")
    (tmp_path / "_temporary").mkdir()
    (tmp_path / "_temporary" / "part-9.jsonl").write_text("{broken\n")
    assert corpus.list_files(str(tmp_path)) == [str(tmp_path / "part-0.jsonl")]
    (tmp_path / "__init__.py").write_text("")  # a file with an extension is data, whatever its first character
    assert corpus.list_files(str(tmp_path)) == [str(tmp_path / "__init__.py"), str(tmp_path / "part-0.jsonl")]
    assert corpus.list_files(str(tmp_path / "_SUCCESS")) == [str(tmp_path / "_SUCCESS")]  # named: read


def test_shuffle_window_orders_streamed_records_by_data_seed_and_resumes(tmp_path):
    """jsonl/parquet stream in file order: data.seed changed nothing (seeds were identical runs). With
    shuffle_window, each seed reads the files and the records within windows in its own order, every record
    once per epoch; a restored stream goes on with the same records; at its default the recorded data block is
    what checkpoints and caches recorded before the field existed."""
    for f in range(3):
        lines = [json.dumps({"text": f"doc{f}-{i}"}) for i in range(20)]
        (tmp_path / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")

    def read(n, **settings):
        data = DataSpec(source="jsonl", path=str(tmp_path), **settings)
        return [
            r["text"]
            for r in itertools.islice(iter(corpus.host_records(data, str(tmp_path), Shard(), repeat=False)), n)
        ]

    in_order = read(60)
    assert read(60, seed=5) == in_order  # no window: the seed is unused (validate warns)
    shuffled = {seed: read(60, seed=seed, shuffle_window=16) for seed in (0, 1)}
    assert shuffled[0] != in_order and shuffled[1] != shuffled[0]
    assert sorted(shuffled[0]) == sorted(shuffled[1]) == sorted(in_order)  # each record once
    data = DataSpec(source="jsonl", path=str(tmp_path), seed=1, shuffle_window=16)
    stream = iter(corpus.host_records(data, str(tmp_path), Shard(), repeat=True))
    for _ in range(21):  # inside the second window
        next(stream)
    state = json.loads(json.dumps(stream.get_state()))  # as a checkpoint stores it
    after = [next(stream)["text"] for _ in range(70)]  # into the second epoch
    restored = iter(corpus.host_records(data, str(tmp_path), Shard(), repeat=True))
    restored.set_state(state)
    assert [next(restored)["text"] for _ in range(70)] == after
    assert "shuffle_window" not in DataSpec(source="jsonl", path="p").recorded()
    assert DataSpec(source="jsonl", path="p", shuffle_window=8).recorded()["shuffle_window"] == 8


def test_a_prompt_completion_checkpoint_from_split_packing_is_refused_on_resume(tmp_path):
    """Checkpoints record that prompt/completion records are packed whole: one from a version that cut them (no
    such record) indexes other rows, and is refused naming it; text runs record what they did before."""
    from distillspec.config import DistillSpec
    from trainer.exit_codes import RunRefused
    from trainer.train import _check_same_input, input_of

    base = {"mode": "pretrain", "student": {"model": "tiny-2l"}}
    pairs = DistillSpec.model_validate(
        {**base, "data": {"source": "jsonl", "path": "p", "prompt_column": "q", "completion_column": "a"}}
    )
    text = DistillSpec.model_validate({**base, "data": {"source": "jsonl", "path": "p"}})
    assert "packing" not in input_of(text)
    before = {k: v for k, v in input_of(pairs).items() if k != "packing"}
    with pytest.raises(RunRefused, match='packing: null → "whole records"'):
        _check_same_input(before, input_of(pairs), "runs/x/checkpoints/10")
    _check_same_input(input_of(pairs), input_of(pairs), "runs/x/checkpoints/10")


def test_a_resume_after_the_files_behind_data_path_changed_is_refused(tmp_path):
    """The saved position is file i, line j of the listing: a file added (sorting first) or one removed made a
    resumed run read other data from there, exit 0. The checkpoint records the listing; one from before it did
    is not compared on it."""
    from distillspec.config import DistillSpec
    from trainer.exit_codes import RunRefused
    from trainer.train import _check_same_input, input_of

    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for name in ("part-1.jsonl", "part-2.jsonl"):
        (corpus_dir / name).write_text(json.dumps({"text": name}) + "\n")
    spec = DistillSpec.model_validate(
        {"mode": "pretrain", "student": {"model": "tiny-2l"}, "data": {"source": "jsonl", "path": str(corpus_dir)}}
    )
    saved = input_of(spec)
    assert saved["files"]["count"] == 2
    _check_same_input(saved, input_of(spec), "runs/x/checkpoints/10")
    (corpus_dir / "part-0.jsonl").write_text(json.dumps({"text": "new"}) + "\n")
    with pytest.raises(RunRefused, match=r"the files data.path names changed \(2 → 3 files\)"):
        _check_same_input(saved, input_of(spec), "runs/x/checkpoints/10")
    (corpus_dir / "part-2.jsonl").unlink()
    with pytest.raises(RunRefused, match=r"\(2 → 2 files, some renamed or replaced\)"):
        _check_same_input(saved, input_of(spec), "runs/x/checkpoints/10")
    older = {k: v for k, v in saved.items() if k != "files"}  # written before the listing was recorded
    _check_same_input(older, input_of(spec), "runs/x/checkpoints/10")


def test_a_resume_after_a_file_was_rewritten_in_place_says_so(tmp_path):
    """The position is line j of file i: a file regenerated under its name (deduplicated: 48 lines → 20) resumed
    past its new end, wrapping to its start in silence. Local files' sizes are recorded and a change is said (not
    refused: converted to UTF-8 in place after the trainer refused it, a file keeps its lines and the position);
    a checkpoint from before they were is compared without them."""
    from distillspec.config import DistillSpec
    from trainer.exit_codes import RunRefused
    from trainer.train import _check_same_input, input_of

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(48)))
    spec = DistillSpec.model_validate(
        {"mode": "pretrain", "student": {"model": "tiny-2l"}, "data": {"source": "jsonl", "path": str(corpus)}}
    )
    saved = input_of(spec)
    corpus.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(20)))
    note = _check_same_input(saved, input_of(spec), "runs/x/checkpoints/10")
    assert "a file data.path names changed size since the checkpoint at runs/x/checkpoints/10" in note
    older = {**saved, "files": {k: v for k, v in saved["files"].items() if k not in ("sizes", "edges")}}
    assert _check_same_input(older, input_of(spec), "runs/x/checkpoints/10") == ""
    # Shuffled in place: the same size, other lines at the position; its size alone said nothing.
    lines = corpus.read_text().splitlines(keepends=True)
    saved = input_of(spec)
    corpus.write_text("".join(reversed(lines)))
    note = _check_same_input(saved, input_of(spec), "runs/x/checkpoints/10")
    assert "a file data.path names was rewritten (its size kept) since the checkpoint at runs/x/checkpoints/10" in note
    corpus.write_text("".join(lines))  # written back as it was: nothing to say
    assert _check_same_input(saved, input_of(spec), "runs/x/checkpoints/10") == ""
    # Restored at line 40 of a file now 20 lines long: refused where it is read (it wrapped to the start).
    from trainer.corpus import _JsonlIterator

    reader = _JsonlIterator(str(corpus), ("text",))
    with pytest.raises(UserError, match=r"docs.jsonl has 20 lines, but the position being resumed is past line 40"):
        reader.set_state({"line": 40})
    reader.set_state({"line": 20})  # at its end: fine
    with pytest.raises(StopIteration):
        next(reader)
    (tmp_path / "more.jsonl").write_text(json.dumps({"text": "x"}) + "\n")  # a file added is still refused
    spec = DistillSpec.model_validate(
        {
            "mode": "pretrain",
            "student": {"model": "tiny-2l"},
            "data": {"source": "jsonl", "path": str(tmp_path / "*.jsonl")},
        }
    )
    saved = input_of(spec)
    (tmp_path / "extra.jsonl").write_text(json.dumps({"text": "y"}) + "\n")
    with pytest.raises(RunRefused, match=r"the files data.path names changed \(2 → 3 files\)"):
        _check_same_input(saved, input_of(spec), "runs/x/checkpoints/10")


def test_the_same_files_spelled_another_way_resume(tmp_path, monkeypatch):
    """data/x.jsonl and its absolute spelling name the same listing: a run moved into a sweep or a pod (paths
    written absolute) was refused as "trained on other input"."""
    from distillspec.config import DistillSpec
    from trainer.exit_codes import RunRefused
    from trainer.train import _check_same_input, input_of

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text(json.dumps({"text": "a b c"}) + "\n")
    monkeypatch.chdir(tmp_path)

    def spec(path: str, **data):
        return DistillSpec.model_validate(
            {"mode": "pretrain", "student": {"model": "tiny-2l"}, "data": {"source": "jsonl", "path": path, **data}}
        )

    saved = input_of(spec("data/x.jsonl"))
    for spelling in (str(tmp_path / "data" / "x.jsonl"), "./data/x.jsonl", "data"):
        _check_same_input(saved, input_of(spec(spelling)), "runs/x/checkpoints/10")
    with pytest.raises(RunRefused, match=r"data.seed: 0 → 3"):  # another setting still counts
        _check_same_input(saved, input_of(spec(str(tmp_path / "data" / "x.jsonl"), seed=3)), "runs/x/checkpoints/10")
    # A text file, and a logit cache (by its manifest: a copy elsewhere, a faster disk, is the same cache), alike:
    # both were compared as written, so a trailing slash was other input.
    (tmp_path / "c.txt").write_text("a b c\n")
    text = DistillSpec.model_validate(
        {"mode": "pretrain", "student": {"model": "tiny-2l"}, "data": {"source": "text", "path": "c.txt"}}
    )
    moved = text.model_copy(update={"data": text.data.model_copy(update={"path": str(tmp_path / "c.txt")})})
    _check_same_input(input_of(text), input_of(moved), "runs/x/checkpoints/10")
    for folder in ("logits", "copy"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "manifest.json").write_text('{"format": 1}')
    cache = spec("data/x.jsonl").model_copy(update={"offline_data_dir": "logits"})
    saved = input_of(cache)
    for spelling in ("logits/", "./logits", str(tmp_path / "logits"), "copy"):
        _check_same_input(saved, input_of(cache.model_copy(update={"offline_data_dir": spelling})), "r/10")
    (tmp_path / "logits" / "manifest.json").unlink()  # being written again: the cache reader says so, not this
    _check_same_input(saved, input_of(cache), "r/10")
    (tmp_path / "copy" / "manifest.json").write_text('{"format": 1, "top_k": 2}')  # another cache
    with pytest.raises(RunRefused, match="offline_data_dir"):
        _check_same_input(saved, input_of(cache.model_copy(update={"offline_data_dir": "copy"})), "r/10")


@pytest.mark.slow
def test_attention_never_crosses_documents():
    """Two documents in one row: changing document A's tokens leaves document B's logits unchanged with segment
    ids, and changes them without (so the test would fail if attention crossed the boundary)."""
    import jax.numpy as jnp
    from flax import nnx

    from distillspec.config import ModelSpec
    from trainer.models import ModelConfig, abstract_model, forward, host_init

    graphdef, abstract = abstract_model(ModelConfig.from_spec(ModelSpec(model="tiny-2l", remat="none")))
    state = nnx.State(abstract)
    nnx.replace_by_pure_dict(state, host_init(abstract, 0))
    model = nnx.merge(graphdef, state)
    logits = nnx.jit(lambda m, x, s: forward(m, x, s)[0][0])
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, 10), rng.integers(0, 256, 14)
    row = jnp.asarray(np.concatenate([a, b])[None], jnp.int32)
    changed = jnp.asarray(np.concatenate([rng.integers(0, 256, 10), b])[None], jnp.int32)
    segments = jnp.asarray(np.repeat([1, 2], [10, 14])[None], jnp.int32)
    with_ids = [logits(model, x, segments)[10:] for x in (row, changed)]
    np.testing.assert_allclose(with_ids[0], with_ids[1], atol=1e-5)
    alone = logits(model, jnp.asarray(b[None], jnp.int32), None)  # B alone: positions restart at 0 too
    np.testing.assert_allclose(with_ids[0], alone, atol=1e-4)
    without = [logits(model, x, None)[10:] for x in (row, changed)]
    assert np.abs(np.asarray(without[0] - without[1])).max() > 1e-3


def test_stream_resumes_from_its_state(corpora):
    """Batches after a saved state are the batches an uninterrupted stream gives (into the second epoch)."""
    from distillspec.config import DistillSpec

    spec = DistillSpec.model_validate(
        {
            "mode": "pretrain",
            "student": {"model": "tiny-2l"},
            "data": {"source": "parquet", "path": str(corpora["parquet"]), "seed": 3},
            "batch": {"per_device_batch_size": 2, "max_target_length": 16, "gradient_accumulation_steps": 2},
        }
    )
    whole = D.make_batches(spec, 256, 2, Shard())
    first = [whole.next() for _ in range(3)]
    state = whole.state()
    rest = [whole.next() for _ in range(12)]  # past the end of the first epoch (~24 rows)
    resumed = D.make_batches(spec, 256, 2, Shard())
    resumed.restore(state)
    again = [resumed.next() for _ in range(12)]
    for x, y in zip(rest, again):
        assert all((x[k] == y[k]).all() for k in x)
    assert first[0]["inputs"].shape == (2, 2, 16)
    whole.close()
    resumed.close()


def test_eval_set_is_fixed_and_padded(corpora, caplog):
    from distillspec.config import DistillSpec

    spec = DistillSpec.model_validate(
        {
            "mode": "pretrain",
            "student": {"model": "tiny-2l"},
            "data": {"source": "hf_disk", "path": str(corpora["hf_disk"])},
            "eval": {"path": str(corpora["hf_disk"]), "batches": 40},
            "batch": {"per_device_batch_size": 2, "max_target_length": 32},
        }
    )
    batches = D.eval_batches(spec, 256, 2, Shard())
    assert len(batches) == 40 and batches[0]["inputs"].shape == (2, 32)
    mask = np.stack([b["mask"] for b in batches])
    assert mask.sum() == sum(len(d) - 1 for d in DOCS) and mask[-1].sum() == 0  # all of it once, then padding
    filled = int((mask.sum(axis=(1, 2)) > 0).sum())
    (warning,) = [r.getMessage() for r in caplog.records if "eval batches are padding" in r.getMessage()]
    assert f"{40 - filled} of the 40 eval batches are padding" in warning and f"eval.batches to {filled}" in warning
    again = D.eval_batches(spec, 256, 2, Shard())
    assert all((x["inputs"] == y["inputs"]).all() for x, y in zip(batches, again))


# --- bad input ---------------------------------------------------------------------------------------------


def test_bad_input_names_the_file(tmp_path, corpora):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(UserError, match=rf"{bad}:2 is not a JSON object"):
        texts(DataSpec(source="jsonl", path=str(bad)), bad, Shard())
    with pytest.raises(UserError, match=r"part-0.jsonl:1 has no column 'body'"):
        texts(DataSpec(source="jsonl", text_column="body"), corpora["jsonl"], Shard())
    with pytest.raises(UserError, match=r"part-0.parquet has no column 'body'"):
        texts(DataSpec(source="parquet", text_column="body"), corpora["parquet"], Shard())
    with pytest.raises(UserError, match=r"hf has no column 'body' \(it has text, other\)"):
        texts(DataSpec(source="hf_disk", text_column="body"), corpora["hf_disk"], Shard())
    with pytest.raises(UserError, match=r"arrayrecord record \d+ has no column 'body'"):
        texts(DataSpec(source="arrayrecord", text_column="body"), corpora["arrayrecord"], Shard())
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=rf"cannot read {junk} as Parquet"):
        texts(DataSpec(source="parquet"), junk, Shard())
    one = corpora["jsonl"] / "part-0.jsonl"
    for index in (0, 1):  # process 0 too: alone, process 1's error left process 0 to die as a lost peer (exit 42)
        with pytest.raises(UserError, match=r"1 jsonl file\(s\) for 2 processes: process 1 would read nothing"):
            texts(DataSpec(source="jsonl"), one, Shard(index, 2))
    with pytest.raises(UserError, match=r"1 jsonl file\(s\) for 4 processes: processes 1-3 would read nothing"):
        texts(DataSpec(source="jsonl"), one, Shard(0, 4))
    with pytest.raises(UserError, match="no files at data.path"):
        texts(DataSpec(source="jsonl"), tmp_path / "nowhere", Shard())
    with pytest.raises(UserError, match="saved Hugging Face dataset"):
        texts(DataSpec(source="hf_disk"), tmp_path, Shard())


def damaged_parquet(path: Path, docs: list[str]) -> Path:
    """A Parquet file of `docs` (row groups of 4) whose third row group's page header is overwritten; the footer
    is intact, so the schema reads and the damage shows only when that row group is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs}), path, row_group_size=4)
    column = pq.ParquetFile(path).metadata.row_group(2).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start : start + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    return path


def test_a_damaged_parquet_page_names_the_file_and_is_not_retried(tmp_path):
    # Was exit 42 (retryable) without the file's name: pyarrow's errno-less `OSError: Couldn't deserialize
    # thrift`, which a JobSet would have retried until its restarts ran out.
    from distillspec.config import DistillSpec
    from trainer.failures import classify

    bad = damaged_parquet(tmp_path / "damaged.parquet", DOCS)
    said = rf"cannot read {bad} as Parquet \(a damaged file, or one pyarrow cannot decode\): Couldn't deserialize"
    with pytest.raises(UserError, match=said):
        texts(DataSpec(source="parquet"), bad, Shard())
    spec = DistillSpec.model_validate(
        {
            "mode": "pretrain",
            "student": {"model": "tiny-2l"},
            "data": {"source": "parquet", "path": str(bad)},
            "batch": {"per_device_batch_size": 2, "max_target_length": 16},
        }
    )
    batches = D.make_batches(spec, 256, 2, Shard())  # the first row groups read: the damage is further on
    with pytest.raises(UserError, match=said) as e:
        for _ in range(20):
            batches.next()
    batches.close()
    assert classify(e.value).code == TrainerExit.USER_ERROR and "write the file again" in e.value.hint


def test_jsonl_that_is_not_utf8_or_is_compressed_names_the_file(tmp_path):
    # Read with errors="replace", a Latin-1 file's accents were trained on as U+FFFD (exit 0).
    import gzip

    lines = [json.dumps({"text": "plain"}), json.dumps({"text": "déjà vu"}, ensure_ascii=False)]
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    column = lines[1].encode("latin-1").index(b"\xe9") + 1
    with pytest.raises(UserError, match=rf"{latin}:2 is not UTF-8: byte 0xe9 at column {column}") as e:
        texts(DataSpec(source="jsonl"), latin, Shard())
    assert "iconv -f CP1252 -t UTF-8" in e.value.hint
    utf8 = tmp_path / "utf8.jsonl"
    utf8.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert texts(DataSpec(source="jsonl"), utf8, Shard()) == ["plain", "déjà vu"]
    bom = tmp_path / "bom.jsonl"  # as Windows tools write UTF-8: was "not a JSON object"
    bom.write_bytes(b"\xef\xbb\xbf" + utf8.read_bytes())
    assert texts(DataSpec(source="jsonl"), bom, Shard()) == ["plain", "déjà vu"]
    packed = tmp_path / "docs.jsonl.gz"
    packed.write_bytes(gzip.compress(utf8.read_bytes()))
    with pytest.raises(UserError, match=rf"{packed} is gzip-compressed, not UTF-8 text") as e:
        D.document_rows(DataSpec(source="jsonl"), str(packed), 256, 32, Shard(), repeat=False, field="eval.path")
    assert f"gunzip {packed}" in e.value.hint and "leave the file out of eval.path" in e.value.hint
    # A JSON array (json.dump(records, f), on one line or indented) given as JSON Lines: said, with the jq line.
    for name, text in (
        ("array.json", json.dumps([{"text": "a"}])),
        ("indented.json", json.dumps([{"text": "a"}], indent=2)),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=r"(is|starts) a JSON array, not JSON Lines") as e:
            list(D.document_rows(DataSpec(source="jsonl"), str(tmp_path / name), 256, 32, Shard(), repeat=False))
        assert "jq -c '.[]'" in e.value.hint
    wide = tmp_path / "docs16.jsonl"  # UTF-16 without a byte-order mark: "not a JSON object", nothing of why
    wide.write_bytes(utf8.read_text().encode("utf-16-le"))
    with pytest.raises(UserError, match=rf"{wide} is UTF-16LE text \(every other byte is NUL\), not UTF-8"):
        list(D.document_rows(DataSpec(source="jsonl"), str(wide), 256, 32, Shard(), repeat=False))


@pytest.mark.parametrize("lines", [[], [{"text": ""}, {"text": "a"}]], ids=["no records", "no text"])
@pytest.mark.parametrize("field", ["data.path", "eval.path"])
def test_a_corpus_without_text_is_an_error_not_an_endless_read(tmp_path, lines, field):
    # Repeated, such a corpus was read round and round for ever (a spinning trainer that ignored SIGTERM).
    path = tmp_path / "empty.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = DataSpec(source="jsonl", path=str(path), tokenizer="byte")
    with pytest.raises(UserError, match=rf"{field} '{path}' holds no document with text"):
        D.document_rows(data, str(path), 256, 32, Shard(), repeat=True, field=field)
    with pytest.raises(UserError, match=rf"no files at {field}"):
        D.document_rows(data, str(tmp_path / "nowhere"), 256, 32, Shard(), repeat=True, field=field)


@pytest.mark.parametrize(
    ("value", "said"), [(None, "null"), (12345, "a number"), (["a", "b"], "a list"), ({"t": 1}, "an object")]
)
def test_a_text_column_that_holds_no_text_names_the_record(tmp_path, value, said):
    # These were trained on as the words "None", "12345", "['a', 'b']".
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "fine text"}) + "\n" + json.dumps({"text": value}) + "\n")
    data = DataSpec(source="jsonl", path=str(path), tokenizer="byte")
    rows = D.document_rows(data, str(path), 256, 4, Shard(), repeat=False)
    with pytest.raises(UserError, match=rf"{path}:2: column 'text' holds {said}, not text"):
        list(rows)


def test_a_parquet_row_without_text_is_named_by_its_row_also_after_a_restore(tmp_path):
    # The error named the file alone: in a million-row file the user could not find the record.
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["one", "two", "three", None]}), path, row_group_size=2)
    data = DataSpec(source="parquet", path=str(path), tokenizer="byte")
    with pytest.raises(UserError, match=rf"{path} row 4: column 'text' holds null, not text"):
        list(D.document_rows(data, str(path), 256, 4, Shard(), repeat=False))
    rows = iter(corpus.ParquetIterDataset(str(path)))
    next(rows), next(rows)
    state = rows.get_state()
    again = iter(corpus.ParquetIterDataset(str(path)))
    again.set_state(state)
    assert next(again)[corpus.ROW] == 3
    old = iter(corpus.ParquetIterDataset(str(path)))  # a checkpoint's state from before rows were counted
    old.set_state({k: v for k, v in state.items() if k != corpus.ROW})
    assert next(old)[corpus.ROW] is None and next(old)["text"] is None


def test_hub_names_and_half_pairs_are_spec_errors():
    from distillspec.specfile import validate_data

    base = {"mode": "pretrain", "student": {"model": "tiny-2l"}}
    spec, problems = validate_data({**base, "data": {"source": "hf", "path": "OptimalScale/ClimbMix"}})
    assert spec is None and [p.code for p in problems] == ["hub_dataset_not_read"]
    assert "save_to_disk" in problems[0].hint and "hf_disk" in problems[0].hint
    spec, problems = validate_data({**base, "data": {"source": "jsonl", "path": "x", "prompt_column": "q"}})
    assert [p.code for p in problems] == ["prompt_completion_pair"]
    spec, problems = validate_data({**base, "data": {"source": "jsonl"}})
    assert [p.code for p in problems] == ["data_path_missing"]
    spec, problems = validate_data({**base, "eval": {"path": "held-out.jsonl"}})
    assert [p.code for p in problems] == ["eval_path_with_synthetic"]
    spec, problems = validate_data({**base, "eval": {"batches": 2}})
    assert spec is not None and not problems  # the synthetic language's held-out batches
    spec, problems = validate_data({**base, "data": {"source": "text", "path": "x"}, "eval": {"path": "y"}})
    assert [p.code for p in problems] == ["eval_needs_documents"]
    spec, problems = validate_data({**base, "data": {"source": "jsonl", "path": "x"}, "eval": {"batches": 2}})
    assert [p.code for p in problems] == ["eval_path_missing"]
    spec, problems = validate_data({**base, "data": {"source": "jsonl", "path": "x"}, "eval": {"path": "y"}})
    assert spec is not None and not problems
    # The training file as the "held-out" set: eval metrics that read as generalisation measured memorisation.
    for train, held in [("x.jsonl", "x.jsonl"), ("gs://bkt/c/", "gs://bkt/c"), ("./d/*.parquet", "d/*.parquet")]:
        data = {**base, "data": {"source": "jsonl", "path": train}, "eval": {"path": held}}
        spec, problems = validate_data(data)
        assert spec is not None and [(p.code, p.severity) for p in problems] == [("eval_is_training_data", "warning")]
    # An object store's keys are names: `gs://bkt/c//d` is another prefix than `gs://bkt/c/d` (gcsfs keeps `//`).
    data = {**base, "data": {"source": "jsonl", "path": "gs://bkt/c//d"}, "eval": {"path": "gs://bkt/c/d"}}
    spec, problems = validate_data(data)
    assert spec is not None and not problems


def test_a_document_eval_set_is_the_same_rows_whatever_the_process_count(tmp_path):
    """Each process read its own files of eval.path: two hosts evaluated other documents than one, so the eval
    numbers of the same spec (what results and golden files prefer) did not compare across topologies."""
    from distillspec.specfile import validate_data

    held = tmp_path / "held"
    held.mkdir()
    for i in range(3):  # fewer files than... any split: the same rows must come out
        lines = [json.dumps({"text": f"document {i}-{j} " + "word " * (5 + j)}) for j in range(6)]
        (held / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    spec, problems = validate_data(
        {
            "mode": "pretrain",
            "student": {"model": "tiny-2l"},
            "data": {"source": "jsonl", "path": str(held)},
            "eval": {"path": str(held), "batches": 3},
            "batch": {"max_target_length": 16},
        }
    )
    assert spec is not None, problems
    whole = D.eval_batches(spec, 256, 4, Shard())
    for count in (2, 4):
        parts = [D.eval_batches(spec, 256, 4, Shard(i, count)) for i in range(count)]
        for b in range(3):
            for key in ("inputs", "mask"):
                assert np.array_equal(np.concatenate([p[b][key] for p in parts]), whole[b][key]), (count, b, key)


def test_synthetic_eval_set_is_held_out_and_shared_out_by_process():
    from distillspec.specfile import validate_data

    spec, _ = validate_data({"mode": "pretrain", "student": {"model": "tiny-2l"}, "eval": {"batches": 2}})
    whole = D.eval_batches(spec, 256, 4, Shard())
    halves = [D.eval_batches(spec, 256, 4, Shard(i, 2)) for i in range(2)]
    assert len(whole) == 2 and whole[0]["inputs"].shape == (4, spec.batch.max_target_length)
    for b in range(2):
        assert np.array_equal(np.concatenate([h[b]["inputs"] for h in halves]), whole[b]["inputs"])
    trained = D.make_batches(spec, 256, 4, Shard()).next()
    assert not np.array_equal(trained["inputs"][0], whole[0]["inputs"])  # never a batch training draws
    assert np.array_equal(D.eval_batches(spec, 256, 4, Shard())[1]["targets"], whole[1]["targets"])


def test_a_record_longer_than_the_row(tmp_path, caplog):
    """A prompt/completion pair longer than a row is an error naming its file and line (split, the completion would
    lose its prompt); a text document longer than a row is split over rows, with a warning."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"q": "short", "a": "ok"}) + "\n" + json.dumps({"q": "x" * 40, "a": "y" * 40}) + "\n")
    data = DataSpec(source="jsonl", path=str(pairs), prompt_column="q", completion_column="a", completion_only=True)
    with pytest.raises(UserError, match=rf"{pairs}:2: a prompt/completion record of 80 tokens is longer than a row"):
        list(D.document_rows(data, data.path, 256, 32, Shard(), repeat=False))
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "z" * 70}) + "\n")
    with caplog.at_level("WARNING", logger="trainer.packing"):
        rows = list(
            D.document_rows(DataSpec(source="jsonl", path=str(text)), str(text), 256, 32, Shard(), repeat=False)
        )
    assert [int(r["mask"].sum()) for r in rows] == [32, 32, 5]  # 69 targets over three rows
    assert f"{text}:1: 70 tokens" in caplog.text


def test_a_jsonl_line_past_the_limit_is_refused_not_held_whole(tmp_path, monkeypatch):
    # A 5 GB file without line breaks (a JSON array named .jsonl) was read into memory as one line.
    monkeypatch.setattr(corpus, "MAX_JSONL_LINE", 1 << 20)
    path = tmp_path / "array.jsonl"
    path.write_text(json.dumps([{"text": "x" * 1000}] * 1500))
    data = DataSpec(source="jsonl", path=str(path), tokenizer="byte")
    with pytest.raises(UserError, match=rf"{path}:1 is longer than 1 MiB: JSON Lines holds one record per line"):
        list(D.document_rows(data, str(path), 256, 32, Shard(), repeat=False))


def test_long_documents_are_counted_once_however_many_epochs():
    # Counted at every pass, 10 long documents read as 100 after ten epochs.
    from trainer import packing

    split = packing.SplitDocuments()
    for _ in range(10):
        for i in range(10):
            split.note(f"docs.jsonl:{i + 1}", 70, 32)
    assert split.count == 10


def test_storage_failures_say_what_to_change_or_are_retried():
    """fsspec backends' own exception types (gcsfs, google-auth, aiohttp) sorted into exit 1 with a hint, or a
    retry; a gs:// URL without its backend names the package to install."""
    import aiohttp
    import gcsfs.retry
    import google.auth.exceptions

    from trainer.exit_codes import RetryableError

    where = "cannot read gs://bucket/corpus/part-0.jsonl"
    denied = corpus.storage_error(where, gcsfs.retry.HttpError({"code": 403, "message": "caller lacks access"}))
    assert isinstance(denied, UserError) and "gs://bucket/corpus/part-0.jsonl" in denied.message
    assert "service account" in denied.hint
    creds = corpus.storage_error(where, google.auth.exceptions.DefaultCredentialsError("no credentials found"))
    assert isinstance(creds, UserError) and "application-default" in creds.hint
    missing = corpus.storage_error(where, FileNotFoundError("gs://bucket/corpus/part-0.jsonl"))
    assert isinstance(missing, UserError) and "gcloud storage ls" in missing.hint
    busy = corpus.storage_error(where, gcsfs.retry.HttpError({"code": 503, "message": "backend error"}))
    assert isinstance(busy, RetryableError)
    offline = aiohttp.ServerTimeoutError("Connection timeout to host https://storage.googleapis.com")
    assert isinstance(corpus.storage_error(where, offline), RetryableError)
    assert isinstance(corpus.storage_error(where, ConnectionRefusedError(111, "refused")), RetryableError)
    assert "gcsfs" in corpus.storage_error(where, ImportError("Install gcsfs to access Google Storage")).hint


@pytest.mark.parametrize("source", ["jsonl", "arrayrecord"])
def test_each_pass_over_the_corpus_is_tagged_and_the_second_is_said(corpora, source, caplog):
    # A small corpus went round and round while training, without a word.
    data = DataSpec(source=source, path=str(corpora[source]))
    records = iter(corpus.host_records(data, str(corpora[source]), Shard(), repeat=True))
    epochs = [next(records)[corpus.EPOCH] for _ in range(3 * len(DOCS))]
    assert epochs == [0] * len(DOCS) + [1] * len(DOCS) + [2] * len(DOCS)
    with caplog.at_level("WARNING", logger="trainer.corpus"):
        rows = iter(D.document_rows(data, str(corpora[source]), 256, 32, Shard(), repeat=True))
        for _ in range(4 * sum(len(d) for d in DOCS) // 32):  # past the 3rd pass, before the 10th
            next(rows)
    said = [r.getMessage() for r in caplog.records if "read" in r.getMessage()]
    assert len(said) == 1 and "has been read 1 time(s) through: starting pass 2" in said[0], said


def test_a_pass_note_of_one_process_says_it_is_that_process_share(caplog):
    # Files are shared out whole: a process with a small share repeats it while the others have not read theirs
    # once, and the note said "the training data has been read" of the whole corpus.
    notes = corpus.EpochNotes("data/uneven", Shard(1, 2))
    with caplog.at_level("WARNING", logger="trainer.corpus"):
        for epoch in (0, 1):
            notes.note({corpus.EPOCH: epoch})
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith("process 1's share of the training data (data/uneven;") and "starting pass 2" in said


def test_shares_of_very_different_sizes_are_said_at_start(tmp_path, caplog):
    # Files are shared out whole: process 1's one small file was read nine times in ten steps while process 0 had
    # not finished its share once, and only process 1's console said anything.
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": "word " * 50}) + "\n" for _ in range(50)))
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "word " * 50}) + "\n")
    from distillspec.config import DistillSpec

    spec = DistillSpec.model_validate(
        {"mode": "pretrain", "student": {"model": "tiny-2l"}, "data": {"source": "jsonl", "path": str(tmp_path)}}
    )
    with caplog.at_level("WARNING", logger="trainer.corpus"):
        D.make_batches(spec, 256, 4, Shard(0, 2)).close()  # said once, by process 0
        D.make_batches(spec, 256, 4, Shard(1, 2)).close()
        D.make_batches(spec, 256, 4, Shard(0, 1)).close()  # one process: nothing to share
    (said,) = [r.getMessage() for r in caplog.records if "shared out whole" in r.getMessage()]
    assert "shared out whole over 2 processes" in said and "process 0 reads" in said and "process 1 " in said


def test_empty_shares_are_not_said_to_differ(tmp_path, caplog):
    # Every share 0 bytes read "process 0 reads 0 bytes, process 0 0 bytes" before the real error (no documents).
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("")
    with caplog.at_level("WARNING", logger="trainer.corpus"):
        corpus.warn_uneven_shares(str(tmp_path), Shard(0, 2))
    assert not [r for r in caplog.records if "shared out whole" in r.getMessage()]
