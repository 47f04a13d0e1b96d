"""The code has one formatter, ruff format (settings in pyproject.toml), and no formatter escape comments."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (make install brings it with the dev extra)")
    return [found]


def test_code_is_ruff_formatted():
    result = subprocess.run([*_ruff(), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_formatter_escapes():
    escaped = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("orchestrator", "trainer", "tests", "bench", "distillspec")
        if (ROOT / folder).is_dir()
        for path in (ROOT / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "fmt: " + "skip" in line or "fmt: " + "off" in line
    ]
    assert not escaped
