"""The metrics log on an object store: numbered part files, each rewritten only while it fills (never the whole
log per line), read back in order; local files keep appending. Many runs' files are read with bounded concurrency.
All on fsspec's real in-memory filesystem (`memory://`)."""

from __future__ import annotations

import json
import uuid

import fsspec
import pytest

from orchestrator import outputs
from trainer import metrics_io


def record(step: int) -> dict:
    return metrics_io.metrics_record(
        step,
        time=1.0 * step,
        tokens=10 * step,
        tokens_per_sec=1.0,
        step_time_sec=0.1,
        learning_rate=0.01,
        sums={"distill/hard_loss": (2.0 * step, 1.0)},
    )


@pytest.fixture
def run_dir(monkeypatch):
    monkeypatch.setattr(metrics_io, "METRICS_PART_LINES", 3)
    path = f"memory://bucket-{uuid.uuid4().hex[:8]}/runs/r1"
    yield path
    fs, root = fsspec.core.url_to_fs(path)
    fs.rm(root.split("/runs")[0], recursive=True)


def writes_per_log(fs, files: metrics_io.RunFiles, step: int) -> list[str]:
    """The objects one log line writes (fsspec's memory store keeps each object's creation time)."""
    before = {p: fs.info(p)["created"] for p in fs.find(files._root)}
    files.log(record(step))
    after = {p: fs.info(p)["created"] for p in fs.find(files._root)}
    return sorted(p.rsplit("/", 1)[-1] for p in after if before.get(p) != after[p])


def test_a_remote_log_is_written_as_parts_and_read_back_in_order(run_dir):
    fs, root = fsspec.core.url_to_fs(run_dir)
    files = metrics_io.RunFiles(run_dir, events_dir=None)
    files.start_metrics(keep_through_step=None)
    written = [writes_per_log(fs, files, step) for step in range(1, 8)]
    # each line rewrites only the part it lands in: the bytes per line stay bounded
    assert written == [["part-00000.jsonl"]] * 3 + [["part-00001.jsonl"]] * 3 + [["part-00002.jsonl"]]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{root}/metrics")) == [
        "part-00000.jsonl",
        "part-00001.jsonl",
        "part-00002.jsonl",
    ]
    assert not fs.exists(f"{root}/metrics.jsonl")  # written whole once, at exit
    assert [r.step for r in outputs.read_run_outputs(run_dir).log] == list(range(1, 8))
    files.close()
    whole = [json.loads(line)["step"] for line in fs.cat_file(f"{root}/metrics.jsonl").decode().splitlines()]
    assert whole == list(range(1, 8))

    # a resumed attempt keeps the lines up to its checkpoint, from the parts, and continues the numbering
    again = metrics_io.RunFiles(run_dir, events_dir=None)
    again.start_metrics(keep_through_step=4)
    assert not fs.exists(f"{root}/metrics.jsonl") and not fs.exists(f"{root}/metrics/part-00002.jsonl")
    again.log(record(5))
    assert [r.step for r in outputs.read_run_outputs(run_dir).log] == [1, 2, 3, 4, 5]


def test_a_local_log_keeps_appending_one_file(tmp_path):
    files = metrics_io.RunFiles(str(tmp_path / "r"), events_dir=None)
    files.start_metrics(keep_through_step=None)
    for step in range(1, 5):
        files.log(record(step))
    assert not (tmp_path / "r" / "metrics").exists()
    assert [r.step for r in outputs.read_run_outputs(str(tmp_path / "r")).log] == [1, 2, 3, 4]


def test_many_runs_are_read_concurrently_in_the_order_asked(run_dir, monkeypatch):
    base = run_dir.rsplit("/", 1)[0]
    fs, _ = fsspec.core.url_to_fs(base)
    paths = {f"run{i}": f"{base}/run{i}" for i in range(20)}
    for i, path in enumerate(paths.values()):
        fs.pipe_file(f"{path}/metrics.jsonl", (json.dumps(record(i + 1)) + "\n").encode())
    threads = set()
    real = outputs.read_run_outputs

    def noting(path):
        import threading

        threads.add(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(outputs, "read_run_outputs", noting)
    read = outputs.read_many_run_outputs(paths, workers=4)
    assert list(read) == list(paths)
    assert [read[key].log[0].step for key in paths] == list(range(1, 21))
    assert 1 < len(threads) <= 4 and all(name.startswith("outputs") for name in threads)


def test_a_resumed_runs_tensorboard_events_purge_the_replayed_steps(tmp_path):
    """After a resume at step 40 the steps an earlier attempt logged after 40 were in the event files twice
    (metrics.jsonl dropped its lines; TensorBoard's own readers showed both): the resumed writer marks them purged."""
    import struct

    from tensorboardX.proto import event_pb2

    files = metrics_io.RunFiles(str(tmp_path / "r"), events_dir=str(tmp_path / "r" / "tensorboard"), resumed_at=40)
    files.log(record(50))
    files.close()
    marks = []
    for path in (tmp_path / "r" / "tensorboard").rglob("events.out.tfevents.*"):
        data, offset = path.read_bytes(), 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            if event.HasField("session_log"):
                marks.append((event.session_log.status, event.step))
    assert (event_pb2.SessionLog.START, 41) in marks, marks


def test_events_go_to_the_folder_the_spec_names_local_or_remote(tmp_path, run_dir):
    """`logging.tensorboard_dir`: the events land in `<dir>/<name>` (here given whole), not in the run folder; a
    remote one (memory://, as gs://) is copied up at each flush, as the run folder's own events are."""
    from trainer_support import event_tags, spec_of

    from trainer.train import events_dir_of

    spec = spec_of({"name": "r1", "mode": "pretrain", "student": {"model": "tiny-2l"}, "output_dir": str(tmp_path)})
    assert events_dir_of(spec) == f"{tmp_path}/r1/tensorboard"
    moved = spec.model_copy(update={"logging": spec.logging.model_copy(update={"tensorboard_dir": "gs://b/tb/"})})
    assert events_dir_of(moved) == "gs://b/tb/r1"
    off = spec.model_copy(update={"logging": spec.logging.model_copy(update={"tensorboard": False})})
    assert events_dir_of(off) is None

    files = metrics_io.RunFiles(str(tmp_path / "r1"), events_dir=str(tmp_path / "shared" / "r1"))
    files.log(record(10))
    files.close()
    assert "distill/hard_loss" in event_tags(tmp_path / "shared" / "r1")
    assert not (tmp_path / "r1" / "tensorboard").exists()

    remote = run_dir.replace("/runs/r1", "/tb/r1")
    files = metrics_io.RunFiles(str(tmp_path / "r2"), events_dir=remote)
    files.log(record(10))
    files.flush()
    fs, root = fsspec.core.url_to_fs(remote)
    copied = [p for p in fs.find(root) if "events.out.tfevents" in p]
    assert copied, fs.find(root.rsplit("/", 2)[0])
    files.close()


def test_an_event_folder_that_cannot_be_written_is_said_by_its_name(tmp_path):
    from trainer.exit_codes import OutputNotWritable

    (tmp_path / "file").write_text("")
    with pytest.raises(OutputNotWritable, match="file/r1"):
        metrics_io.RunFiles(str(tmp_path / "r1"), events_dir=str(tmp_path / "file" / "r1"))
