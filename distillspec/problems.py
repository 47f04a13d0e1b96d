"""A problem found in a spec: where it is, a stable code, what is wrong and what to change."""

from __future__ import annotations

import dataclasses
from typing import Literal

Loc = tuple[str | int, ...]
Severity = Literal["error", "warning"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding. `loc` uses the keys as written in the file; positions are 1-based, added by the loader."""

    loc: Loc
    code: str
    message: str
    hint: str = ""
    severity: Severity = "error"
    file: str | None = None
    line: int | None = None
    column: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def dotted_loc(self) -> str:
        return format_loc(self.loc)

    @property
    def where(self) -> str:
        """`file:line:column`, as far as known ("" when nothing is)."""
        return ":".join(str(part) for part in (self.file, self.line, self.column) if part is not None)

    def __str__(self) -> str:
        """`file:line:col: error[code] loc: message → hint`, one line (the CLI prints a coloured one like it)."""
        text = f"{self.where + ': ' if self.where else ''}{self.severity}[{self.code}]"
        text += f" {self.dotted_loc}" if self.loc else ""
        return text + f": {self.message}" + (f" → {self.hint}" if self.hint else "")

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "loc": self.dotted_loc,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }


def format_loc(loc: Loc) -> str:
    """`("loss", "layer_indices", 2)` -> `loss.layer_indices[2]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def has_errors(problems: list[Problem]) -> bool:
    return any(p.is_error for p in problems)
