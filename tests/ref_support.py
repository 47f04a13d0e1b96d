"""The test-only reference environment (torch on CPU + transformers, `make ref` installs it into .venv-ref):
tests make tiny random Hugging Face models with it in a subprocess. Neither package is imported here or by the
trainer; tests that need the environment skip, saying how to install it, where it is absent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REF_PYTHON = Path(os.environ.get("DISTILLCTL_REF_PYTHON", REPO / ".venv-ref" / "bin" / "python"))
SCRIPT = REPO / "tests" / "reference" / "hf_models.py"


def require_ref() -> Path:
    if not REF_PYTHON.exists():
        pytest.skip(f"no reference environment at {REF_PYTHON}: run `make ref` (torch + transformers, test-only)")
    return REF_PYTHON


def run_ref(*args: str, timeout: float = 900) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    done = subprocess.run(
        [str(require_ref()), str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]


def make_models(jobs: list[dict]) -> None:
    """Each job: {"family", "out", "config" (transformers config kwargs), "seed", "tokens" (.npy path)}."""
    run_ref("make-many", json.dumps(jobs))
