"""The accelerator bench (bench/bench_accelerator.py, run on a lent GPU by bench/device.sh) still runs: a session
that is lent a GPU has minutes of it, none to spend on a script that broke since it was written. Here on CPU, tiny."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trainer_support import REPO, python_env

pytest.importorskip("jax")


def test_the_accelerator_bench_times_the_trainers_step_with_each_loss(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--size", "tiny", "--loss", "auto,fused", "--steps", "2", "--rounds", "2", "--warmup", "1"]
    done = subprocess.run(
        [sys.executable, "bench/bench_accelerator.py", *args, "--json", str(out)],
        cwd=REPO,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    auto, fused = json.loads(out.read_text())
    assert (auto["loss"], auto["loss_compiled"]) == ("auto", "dense")  # tiny logits: the trainer keeps dense
    assert (fused["loss"], fused["loss_compiled"]) == ("fused", "fused")
    for row in (auto, fused):
        assert row["step_ms_median"] > 0 and row["tokens_per_step"] == 8 * 64
        # model FLOPs: 6·P_s + 2·P_t per token plus attention, below what the compiled step runs (remat, loss)
        assert 0 < row["model_gflop_per_step"] <= row["step_gflop_per_step"], row
        assert row["mfu"] is None  # no published peak for a CPU: not made up
