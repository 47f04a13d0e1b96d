"""Helpers for the trainer tests: tiny specs, reading run outputs, TensorBoard event files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

TEACHER = {
    "name": "teacher",
    "mode": "pretrain",
    "student": {"model": "tiny-4l"},
    "data": {"source": "synthetic", "seed": 0},
    "batch": {"per_device_batch_size": 8, "max_target_length": 32},
    "steps": 60,
    "optimizer": {"learning_rate": 3e-3, "warmup_fraction": 0.05},
    "checkpoint": {"every_steps": 30},
    "logging": {"every_steps": 10},
}


def spec_of(data: dict[str, Any]):
    from distillspec.specfile import validate_data

    spec, problems = validate_data(data)
    assert spec is not None, [p.message for p in problems]
    return spec


def merged(base: dict, **changes) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def metric(record: dict, name: str) -> float:
    return record["metrics"][name]["value"]


def without_timing(records: list[dict]) -> list[dict]:
    """metrics.jsonl lines minus wall-clock fields (the rest must be reproducible)."""
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_sec", "step_time_sec")} for r in records]


def event_tags(directory: Path) -> set[str]:
    """Scalar tags in the TensorBoard event files under `directory` (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in directory.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(record)
            tags.update(v.tag for v in event.summary.value)
    return tags


def python_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DISTILLCTL_SPEC")}
    env.update(extra)
    return env


def run_trainer(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=REPO,
        env=env or python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_spec(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def compiled_exponentials(f, *args) -> int:
    """How many exponentials `jax.jit(f)` compiles to for `args` (XLA's optimised HLO, fusions inlined as text)."""
    import jax

    return jax.jit(f).lower(*args).compile().as_text().count(" exponential(")


class Recorder:
    """A reporter that keeps the run's notes and its verdict (the console prints them; a refused start writes no
    summary.json)."""

    def __init__(self):
        self.notes: list[str] = []
        self.ended: tuple[str, int, str] | None = None

    def start(self, run_dir, start_step, total_steps):
        pass

    def log(self, record):
        pass

    def note(self, message):
        self.notes.append(message)

    def end(self, status, exit_code, message):
        self.ended = (status, exit_code, message)
