"""End to end on CPU with a JSONL corpus: a packed-document teacher, a distilled student with an eval set, and a
run stopped by SIGTERM that resumes (the Grain iterator restored from the checkpoint) to the uninterrupted
run's metrics exactly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from trainer_support import merged, metric, read_metrics, spec_of, without_timing

pytest.importorskip("jax")
pytest.importorskip("grain")

from trainer.exit_codes import TrainerExit  # noqa: E402
from trainer.step import EVAL_METRICS  # noqa: E402
from trainer.train import run  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    for part in range(2):
        lines = [json.dumps({"text": " ".join(words[(i + j) % 6] for j in range(i % 9 + 3))}) for i in range(80)]
        (root / f"train-{part}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "eval.jsonl").write_text("\n".join(json.dumps({"text": " ".join(words[i:] + words[:i])}) for i in range(6)))
    return root


def base(out: Path, **changes) -> dict:
    data = {
        "name": "teacher",
        "mode": "pretrain",
        "student": {"model": "tiny-4l", "remat": "none"},
        "data": {"source": "jsonl", "path": str(out / "train-*.jsonl"), "seed": 1},
        "batch": {"per_device_batch_size": 4, "max_target_length": 32},
        "steps": 8,
        "optimizer": {"learning_rate": 3e-3, "warmup_fraction": 0.0},
        "checkpoint": {"every_steps": 4},
        "logging": {"every_steps": 2, "tensorboard": False},
        "output_dir": str(out),
    }
    return merged(data, **changes)


@pytest.fixture(scope="module")
def teacher(out) -> Path:
    assert run(spec_of(base(out))) == TrainerExit.OK
    return out / "teacher"


def distill(out: Path, teacher: Path, name: str) -> dict:
    return base(
        out,
        name=name,
        mode="distill",
        student={"model": "tiny-2l", "remat": "none"},
        teacher={"model": "tiny-4l", "load_parameters_path": str(teacher / "checkpoints")},
        eval={"path": str(out / "eval.jsonl"), "every_steps": 4, "batches": 2},
    )


def test_packed_teacher_learns_and_counts_only_document_tokens(teacher):
    records = read_metrics(teacher)
    assert metric(records[-1], "distill/hard_loss") < metric(records[0], "distill/hard_loss")
    # packed rows leave no padding while the corpus repeats: every token of 2 steps x 4 rows x 32 is a target
    assert records[0]["metrics"]["distill/hard_loss"]["count"] == 2 * 4 * 32
    assert (teacher / "checkpoints" / "8" / "data").is_dir()  # the iterator state, per process


def test_distill_with_eval_and_resume_after_sigterm(out, teacher):
    assert run(spec_of(distill(out, teacher, "whole"))) == TrainerExit.OK
    records = read_metrics(out / "whole")
    evaluated = [r["step"] for r in records if "eval/kl_div_T1" in r["metrics"]]
    assert evaluated == [4, 8]
    assert set(EVAL_METRICS) <= set(records[-1]["metrics"])
    assert records[-1]["metrics"]["eval/hard_loss"]["count"] > 0
    summary = json.loads((out / "whole" / "summary.json").read_text())
    assert set(EVAL_METRICS) <= set(summary["final_metrics"])

    class SigtermAt:
        def start(self, *a):
            pass

        def note(self, m):
            pass

        def end(self, *a):
            pass

        def log(self, record):
            if record["step"] == 6:
                os.kill(os.getpid(), signal.SIGTERM)

    cut = distill(out, teacher, "cut")
    assert run(spec_of(cut), reporter=SigtermAt()) == TrainerExit.PREEMPTED
    assert run(spec_of(cut)) == TrainerExit.OK
    assert json.loads((out / "cut" / "summary.json").read_text())["resumed_from_step"] == 6
    assert without_timing(read_metrics(out / "cut")) == without_timing(records)
