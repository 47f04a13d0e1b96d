"""pydantic's validation errors as Problems, one mapper for every file distillctl reads (specs and sweeps).

Locations are the file's own keys (pydantic's union-member tags dropped); a union's errors at one place become
one problem; each kind of error gets a stable code and a hint: `unknown_key` (with "did you mean"), `missing_key`,
`bad_value` (a literal), `out_of_range`, `wrong_type`, or a validator's own code with its hint from `hints`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from difflib import get_close_matches
from typing import Any

from pydantic import ValidationError

from distillspec.problems import Loc, Problem, format_loc


def problems_from(
    error: ValidationError,
    data: Any,
    *,
    root: str,
    did_you_mean: Callable[[Loc], str],
    hints: Mapping[str, str] = {},
    tags: Collection[str] = (),
) -> list[Problem]:
    """One problem per location of `error` (raised validating `data`). `root` names the file's top level in
    messages ("the spec", "the sweep"); `did_you_mean(loc)` is the hint for an unknown key at `loc`."""
    by_loc: dict[Loc, list[dict]] = {}
    for err in error.errors(include_url=False):
        by_loc.setdefault(_real_loc(data, err["loc"], tags), []).append(err)
    # A union reports one error per member; where one member got deeper (a bad list item), keep that one.
    locs = [loc for loc in by_loc if not any(other != loc and other[: len(loc)] == loc for other in by_loc)]
    return [_problem(loc, by_loc[loc], root, did_you_mean, hints) for loc in locs]


def _real_loc(data: Any, loc: tuple, tags: Collection[str] = ()) -> Loc:
    """Drop pydantic's union-member tags (`'list[int]'`, `'str'`) from a loc, keeping the keys the data has."""
    real: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            real.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            real.append(part)
            node = node[part]
        elif isinstance(part, str) and not _is_tag(part) and part not in tags:
            real.append(part)  # a missing or unknown key
            node = None
    return tuple(real)


def _is_tag(part: str) -> bool:
    return any(ch in part for ch in "[]()-") or part in {"str", "int", "float", "bool", "none", "list", "dict"}


def _problem(
    loc: Loc, errors: list[dict], root: str, did_you_mean: Callable[[Loc], str], hints: Mapping[str, str]
) -> Problem:
    err = errors[0]
    kind, key = err["type"], (loc[-1] if loc else "")
    where = format_loc(loc) or root
    value = err.get("input")
    if kind == "extra_forbidden":
        return Problem(loc, "unknown_key", f"unknown key {key!r} in {format_loc(loc[:-1]) or root}", did_you_mean(loc))
    if kind == "missing":
        return Problem(loc, "missing_key", f"{where} is required", f"add `{key}:`")
    if kind == "union_tag_invalid":  # a discriminator's value: say which it may be, with the nearest
        ctx = err.get("ctx", {})
        expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        close = get_close_matches(str(ctx.get("tag")), expected, n=1, cutoff=0.5)
        return Problem(
            loc,
            "bad_value",
            f"{ctx.get('discriminator', 'the kind').strip(chr(39))} {ctx.get('tag')!r} is not one of "
            f"{', '.join(expected)}",
            f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(expected)}",
        )
    if kind == "union_tag_not_found":
        name = str(err.get("ctx", {}).get("discriminator", "")).strip("'")
        return Problem(loc, "missing_key", f"{where}.{name} is required", hints.get(kind, f"add `{name}:`"))
    if kind in hints or kind == "wrong_type":  # a validator's own: its words, and what to write for the value
        return Problem(loc, kind, err["msg"], hints.get(kind) or _type_hint(err.get("input"), err))
    if kind == "string_too_short" and value == "":
        return Problem(loc, "empty_value", f"{where} is empty", f"give {where} a value, or leave the key out")
    # `name:` with nothing after it (a block's too where a number would do: `alpha:`)
    if value is None and "input" in err and (not _block_error(err) or _takes_a_number(err)):
        return Problem(loc, "empty_value", f"{where} has no value", f"give {where} a value after the colon")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return Problem(loc, "bad_value", f"{key} must be {expected}; got {value!r}", _literal_hint(value, expected))
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"):
        name = f"{key} " if isinstance(key, str) else ""  # a list item: the loc (seeds[0]) names it
        return Problem(loc, "out_of_range", f"{name}{_must(err['msg'])}, got {value!r}", _range_hint(_must(err["msg"])))
    expected = " or ".join(dict.fromkeys(_must(e["msg"]).removeprefix("must be ") for e in errors))
    return Problem(loc, "wrong_type", f"expected {expected}, got {_describe(value)}", _type_hint(value, err))


def _takes_a_number(err: dict) -> bool:
    """A block that a number also sets (α, β, T: `ScheduledValue` and its subclasses, named `...Schedule`)."""
    return str(err.get("ctx", {}).get("class_name", "")).endswith(("Schedule", "ScheduledValue"))


def _block_error(err: dict) -> bool:
    """A mapping was expected (a block such as `student:`)."""
    return "dictionary" in err["msg"] or "mapping" in err["msg"] or err["type"] in ("dict_type", "model_type")


def _range_hint(must: str) -> str:
    """`use a value greater than 0` from `must be greater than 0` (`use a finite number` from `must be a ...`)."""
    bound = must.removeprefix("must be ")
    return f"use {bound}" if bound.startswith(("a ", "an ")) else f"use a value {bound}"


def _must(msg: str) -> str:
    msg = re.sub(r"a valid dictionary or instance of \w+", "a mapping (`key: value` lines)", msg)  # no class names
    return msg.replace("Input should be", "must be").replace("Input should", "must")


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits, too large for a number here"  # 400 digits were printed
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def _suffixed_number(value: str) -> str | None:
    """What to write for `2k`, `1.5M` or `10%`: numbers are plain in a spec (a percentage is a fraction)."""
    text = value.strip().replace("_", "")
    if text.endswith("%"):
        try:
            return f"write {float(text[:-1]) / 100:g} (a fraction, not a percentage)"
        except ValueError:
            return None
    if len(text) > 1 and text[-1].lower() in _SUFFIXES:
        try:
            number = float(text[:-1]) * _SUFFIXES[text[-1].lower()]
        except ValueError:
            return None
        return f"write {number:.0f} (numbers are plain: no k, M or B suffix)" if number.is_integer() else None
    return None


def _literal_hint(value: Any, expected: str) -> str:
    """`did you mean 'cosine'?` for `Cosine` or `cosin`, else the choices."""
    choices = re.findall(r"'([^']*)'", expected)
    if isinstance(value, str) and choices:
        same = [c for c in choices if c.lower() == value.strip().lower()]
        close = same or get_close_matches(value.lower(), choices, n=1, cutoff=0.75)
        if close:
            return f"did you mean {close[0]!r}?"
    return f"use one of {expected}"


def _type_hint(value: Any, err: dict) -> str:
    if value == "None":
        return "write null (YAML's empty value), not None"
    if isinstance(value, str) and re.fullmatch(r"[-+]?0\d+", value.strip()):  # 08, 09: not octal, so a string
        return f"{value} is not a number in YAML (a leading 0 means octal): write {int(value)}"
    if isinstance(value, str) and re.fullmatch(r"0o[0-7]+", value.strip()):  # YAML 1.2's octal; 1.1 reads text
        return f"write {int(value.strip(), 8)} (the YAML read here takes 0o as text)"
    if isinstance(value, str):
        try:
            if not math.isfinite(float(value)):  # `nan`, `inf`, `1e309`: YAML reads them as text, unquoted
                return "write a finite number (NaN and infinity are no setting)"
            return "remove the quotes around the number"
        except ValueError:
            pass
        if value.strip().endswith("%") and "integer" in err["msg"]:  # `steps: 10%`: a count, not a fraction
            return "write a whole number (a count, not a percentage)"
        written = _suffixed_number(value)
        if written is not None:
            return written
    if isinstance(value, float) and not math.isfinite(value):  # YAML's .inf and .nan, read as floats
        return "write a finite number (NaN and infinity are no setting)"
    if isinstance(value, float) and value.is_integer() and "integer" in err["msg"]:
        # 1e30 was "write 1000000000000000019884624838656", which the field's range then refused
        return f"write {int(value)} (a whole number)" if abs(value) < 1e15 else "write a whole number"
    if "valid string" in err["msg"]:
        return "quote the value to make it a string"
    if "valid list" in err["msg"] and isinstance(value, dict):
        return "write it as a list: each item on its own line starting with `- ` (or [a, b] on one line)"
    if ("valid dictionary" in err["msg"] or "mapping" in err["msg"]) and isinstance(value, list):
        return "write it as `key: value` lines (a mapping), not `- ` items"
    if "start, end and schedule" in err["msg"]:  # a ScheduledValue
        return "write a number (0.5), or a mapping such as {start: 0.9, end: 0.5, schedule: cosine}"
    if _block_error(err):
        return "write its fields under it as indented `key: value` lines"
    if "valid list" in err["msg"]:
        return "write it as a list, e.g. [a, b] (or each item on its own line starting with `- `)"
    if "valid integer" in err["msg"]:
        return "write a whole number, e.g. 2"
    if "valid number" in err["msg"]:
        return "write a number, e.g. 0.5"
    if "valid boolean" in err["msg"]:  # `maybe`, `1.5`: YAML's true/false are the words to use
        return "write true or false"
    return ""
