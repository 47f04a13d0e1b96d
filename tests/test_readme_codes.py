"""Every problem code a command can print is named in README.md (73 of them were described in prose only, or not
at all): found in the sources as the code argument of a `Problem(...)` or a warning helper."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `Problem(loc, "code", ...)`, the loc a tuple, a name or `()`; and a code chosen by a conditional expression
PROBLEM = re.compile(
    r'Problem\(\s*(?:\([^()]*\)|[A-Za-z_.\[\]0-9]+)\s*,\s*"([a-z][a-z0-9_]*)"(?:\s+if\s[^,]*?else\s+"([a-z][a-z0-9_]*)")?',
    re.S,
)
WARNING = re.compile(r'warn\w*\(\s*"([a-z][a-z0-9_]*)"')


def codes_in_sources() -> set[str]:
    found: set[str] = set()
    for package in ("orchestrator", "distillspec"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            for match in PROBLEM.finditer(text):
                found.update(code for code in match.groups() if code)
            found.update(WARNING.findall(text))
    return found


def test_every_problem_code_is_named_in_the_readme():
    found = codes_in_sources()
    assert len(found) > 150, len(found)  # the scan still finds them
    readme = (REPO / "README.md").read_text()
    missing = sorted(code for code in found if f"`{code}`" not in readme)
    assert not missing, f"name these codes in README.md (the problem-code tables): {missing}"
