"""Terminal output: results on stdout, diagnostics on stderr, never wrapped mid-line (CI logs stay grep-able).

Diagnostic lines (problems, errors, `validate`'s verdicts) are `Line`s, segments of text with a style, written
by `echo`: with ANSI styles on a terminal, plain elsewhere. Tables go through rich, whose consoles `out` and `err`
are made on first use. Lines need neither rich nor typer, so `validate` (whose fast path in `orchestrator.cli`
bypasses typer) imports neither: together two fifths of its start-up.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import yaml

from distillspec.problems import Problem

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

out: Console
err: Console


def __getattr__(name: str):
    if name in ("out", "err"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _console(name: str) -> Console:
    if name not in globals():
        from rich.console import Console

        class _Output(Console):
            def on_broken_pipe(self) -> None:
                # rich ends the process with exit 1 when the reader of stdout goes away (`sweep --dry-run | head
                # -1`); that reader has what it wanted: 0, as the error boundary says for the other commands
                import os
                import sys

                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise SystemExit(0)

        kind = Console if name == "err" else _Output
        globals()[name] = kind(stderr=name == "err", soft_wrap=True, highlight=False)
    return globals()[name]


Line = tuple[tuple[str, str], ...]  # (text, style) segments; a style is space-separated names from _SGR, or ""
_SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


def echo(line: Line, *, err: bool = False) -> None:
    """One line on stdout (or stderr), styled where the stream is a terminal. As rich decides: `NO_COLOR` turns
    colours off, `FORCE_COLOR` on; a pipe or file gets plain text."""
    stream = sys.stderr if err else sys.stdout
    colour = _colour(stream)  # once per line: environment and isatty, not per segment
    stream.write("".join(_styled(text, style) if colour else text for text, style in line) + "\n")
    stream.flush()


def _styled(text: str, style: str) -> str:
    names = style.split()
    if os.environ.get("NO_COLOR"):  # no colours, but bold and dim are not colours
        names = [name for name in names if name in ("bold", "dim")]
    return f"\x1b[{';'.join(_SGR[name] for name in names)}m{text}\x1b[0m" if names else text


def _colour(stream) -> bool:
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def print_lines(lines: Iterable[str]) -> None:
    """Plain lines on stdout, as they are (a line per manifest for a 10,000-point render: no rich per line)."""
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data) + "\n")
    sys.stdout.flush()


_ONE_LINE = json.JSONEncoder().encode  # the C encoder (json.dumps with indent runs in Python); NaN as before


def json_text(value: Any, depth: int = 0) -> str:
    """JSON for people and for `jq`: mappings indented, and a list of records one record per line (a 10,000-run
    plan is 10,000 lines, written by the C encoder)."""
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and value:
        fields = (f"{inner}{_ONE_LINE(str(k))}: {json_text(v, depth + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(fields) + f"\n{pad}}}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        return "[\n" + ",\n".join(inner + _ONE_LINE(v) for v in value) + f"\n{pad}]"
    return _ONE_LINE(value)


def problem_line(problem: Problem) -> Line:
    """`file:line:col: error[code] loc: message → hint` as one line (for `echo`)."""
    line = []
    if problem.where:
        line.append((printable(problem.where, one_line=True) + ": ", "bold"))
    line.append((f"{problem.severity}[{problem.code}]", "bold red" if problem.is_error else "bold yellow"))
    if problem.loc:
        line.append((f" {printable(problem.dotted_loc, one_line=True)}", "cyan"))
    line.append((f": {printable(problem.message, one_line=True)}", ""))
    if problem.hint:
        line.append((f" → {printable(problem.hint, one_line=True)}", "dim"))
    return tuple(line)


def print_problem(problem: Problem, *, err: bool = True) -> None:
    echo(problem_line(problem), err=err)


def print_error(message: str, hint: str = "") -> None:
    # Terminal escapes in a message (a file name, a value) are written out; its line breaks stay (some list).
    echo((("error: ", "bold red"), (printable(message), "")), err=True)
    if hint:
        echo((("hint: " + printable(hint), "dim"),), err=True)


def print_stopped(message: str, hint: str = "") -> None:
    """What a command that the user stopped (Ctrl-C, SIGTERM) leaves behind: not an error, though it exits 130/143."""
    echo(((message, "bold"),), err=True)
    if hint:
        echo((("hint: " + hint, "dim"),), err=True)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
# The spec reader takes `1e3` for a number (YAML 1.2's floats): a string like it is quoted, so what is written reads
# back as the string it was (convert wrote `name: 1e3` unquoted, and its own output failed validate).
_Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def to_yaml(data: Any) -> str:
    """Block-style YAML with short lists on one line (`layer_indices: [3, 7, 11]`), keys in given order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


def print_wide(table: Table) -> None:
    """Print a table at its natural width (never truncating ids), even past a narrow terminal or a pipe."""
    from rich.console import Console
    from rich.measure import Measurement

    out = _console("out")
    width = Measurement.get(out, out.options.update(width=1_000), table).maximum
    if width <= out.width:
        out.print(table)
    else:  # Console.print caps `width` at the console's own: print through a wider one
        Console(width=width, highlight=False, color_system=out.color_system and "auto").print(table)


def parameter_count(n: int) -> str:
    """8.03 B, 135.3 M, 42.5 K: a model's size in the unit it reads in (tiny test models read 0.000 B)."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale * 0.9995:  # 999.9 M rounds to 1 B, not "1000 M"
            return f"{n / scale:.3g} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return str(n)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if chr(c) not in "\n\t"}
_INVISIBLE = (0x00AD, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0xFEFF)  # format characters that show nothing
_ONE_LINE_CONTROL = {**_CONTROL, ord("\n"): "\\n", ord("\t"): "\\t", **{c: f"\\u{c:04x}" for c in _INVISIBLE}}


def printable(text: str, *, one_line: bool = False) -> str:
    """`text` read from a run's files (a trainer's message) or a user's file with its control characters written
    as `\\x1b`: a terminal escape in it would colour, move or clear what follows on the reader's terminal.
    `one_line`: line breaks, tabs and the invisible zero-width space too (a value `tiny-2l\\u200b` read as the
    known name it is not)."""
    return text.translate(_ONE_LINE_CONTROL if one_line else _CONTROL)


def axis_text(values) -> Text:
    """A run's axis values for a table cell: as written, never read as markup (a path may hold `[/data]`)."""
    from rich.text import Text

    return Text(", ".join(f"{k}={v}" for k, v in dict(values).items()) or "—")


_warned: set[tuple[str, str | None, str]] = set()
json_problems = False  # the command answers in JSON (`--output json`): an invalid file's problems go to stdout too


def new_command() -> None:
    """Forget what an earlier command in this process said: each command says its own warnings and answers in its
    own format (the tests, and anything embedding the CLI, run several commands in one process; a warning the
    previous command gave was left out of the next one's output)."""
    global json_problems
    json_problems = False
    _warned.clear()


def warn_once(problem: Problem) -> None:
    """Print a warning the first time this process meets it (polling loops meet the same one every round); the
    same words about another file (two runs' logs cut alike) are another warning."""
    key = (problem.code, problem.file, problem.message)
    if key not in _warned:
        _warned.add(key)
        print_problem(problem)
