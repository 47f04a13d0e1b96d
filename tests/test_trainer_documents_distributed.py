"""A JSONL corpus on two JAX processes (two `python -m trainer` joined through a coordinator on 127.0.0.1, one CPU
device each): each process reads its own files and packs its own rows, the global batch is assembled from the
processes' rows, token counts and eval sums cover both processes, each process checkpoints its own iterator state,
and a run resumed from a checkpoint (the later one lost, as after a hard kill) reproduces the uninterrupted run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from test_trainer_distributed import _free_port
from trainer_support import REPO, python_env, read_metrics, without_timing, write_spec

pytest.importorskip("jax")
pytest.importorskip("grain")

pytestmark = pytest.mark.slow

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
EVAL_DOCS = [[" ".join(WORDS[i:] + WORDS[:i]) for i in range(part, 6, 2)] for part in range(2)]


def _launch(spec, timeout: float = 300) -> list[str]:
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trainer", "--spec", str(spec), "--coordinator-address", address]
            + ["--num-processes", "2", "--process-id", str(i)],
            cwd=REPO,
            env=python_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=timeout)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for e in errors]
    return errors


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs2")
    for part in range(2):  # one training file and one eval file per process
        lines = [json.dumps({"text": " ".join(WORDS[(i + j + part) % 6] for j in range(i % 7 + 3))}) for i in range(60)]
        (root / f"train-{part}.jsonl").write_text("\n".join(lines) + "\n")
        (root / f"eval-{part}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in EVAL_DOCS[part]))
    data = {
        "name": "two",
        "mode": "pretrain",
        "student": {"model": "tiny-2l", "remat": "none"},
        "data": {"source": "jsonl", "path": str(root / "train-*.jsonl"), "seed": 1},
        "eval": {"path": str(root / "eval-*.jsonl"), "every_steps": 4, "batches": 1},
        "batch": {"per_device_batch_size": 4, "max_target_length": 32},
        "steps": 8,
        "optimizer": {"learning_rate": 3e-3, "warmup_fraction": 0.0},
        "checkpoint": {"every_steps": 4},
        "logging": {"every_steps": 2, "tensorboard": False},
        "output_dir": str(root),
    }
    spec = write_spec(root / "two.json", data)
    _launch(spec)
    return root, spec


def test_two_processes_train_on_their_own_shards_and_count_every_token(two):
    root, _ = two
    records = read_metrics(root / "two")
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    # packed rows leave no padding while the corpus repeats: 2 steps x (2 processes x 4 rows) x 32 targets
    assert records[0]["metrics"]["distill/hard_loss"]["count"] == 2 * 8 * 32
    assert records[-1]["metrics"]["distill/hard_loss"]["value"] < records[0]["metrics"]["distill/hard_loss"]["value"]
    summary = json.loads((root / "two" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["tokens"] == 8 * 8 * 32
    # the eval set is both processes' files: every target of every eval document (they fit one batch each)
    targets = sum(len(d.encode()) - 1 for part in EVAL_DOCS for d in part)
    assert records[-1]["metrics"]["eval/hard_loss"]["count"] == targets
    states = sorted(p.name for p in (root / "two" / "checkpoints" / "8" / "data").glob("process_*"))
    assert states == ["process_0-of-2.json", "process_1-of-2.json"], states


def test_two_processes_resume_from_their_own_iterator_states(two):
    """Checkpoint 8 lost (a hard kill before it was written): the rerun restores each process's iterator at step 4
    and reproduces steps 6 and 8 exactly."""
    root, spec = two
    whole = read_metrics(root / "two")
    shutil.rmtree(root / "two" / "checkpoints" / "8")
    _launch(spec)
    summary = json.loads((root / "two" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["resumed_from_step"] == 4
    assert summary["tokens"] == 8 * 8 * 32
    assert without_timing(read_metrics(root / "two")) == without_timing(whole)
