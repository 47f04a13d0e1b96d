"""Parse YAML while remembering the line and column of every key and list item.

Scalars resolve as in YAML 1.1 (PyYAML's safe loader, which is what MaxText configs are written for), with one
YAML 1.2 addition: exponent floats without a dot (`1e-6`, the guide's β ramp value) are floats, not strings.
Anything that would make parsing blow up (huge files, alias bombs, deep nesting) is an error, not a crash.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import yaml

from distillspec.problems import Loc, Problem

MAX_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64


@dataclasses.dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


class YamlSourceError(Exception):
    """The text is not a YAML document we can read; `code` is stable, `position` may be None."""

    def __init__(self, code: str, message: str, hint: str = "", position: Position | None = None):
        super().__init__(message)
        self.code, self.message, self.hint, self.position = code, message, hint, position


@dataclasses.dataclass(frozen=True)
class YamlDocument:
    data: Any
    positions: dict[Loc, Position]
    duplicate_keys: tuple[tuple[Loc, Position], ...] = ()
    # Integers YAML 1.1 reads in another base than they look (`010` is 8, `0x10` 16): (loc, as written, as read)
    other_base_numbers: tuple[tuple[Loc, str, int], ...] = ()

    def duplicate_key_problems(self) -> list[Problem]:
        """An error per key a mapping writes twice (YAML keeps the later value without a word)."""
        return [
            Problem(
                loc,
                "duplicate_key",
                f"key {loc[-1]!r} appears twice; the later value would silently win",
                "keep one of them",
            )
            for loc, _ in self.duplicate_keys
        ]

    def other_base_problems(self) -> list[Problem]:
        """A warning per integer read in another base than it looks: `steps: 010` trained 8 steps, silently."""
        return [
            Problem(
                loc,
                "number_in_another_base",
                f"{text} is read as {value}: YAML reads a leading 0 as octal (0x as hexadecimal, 0b as binary)",
                f"write {text.lstrip('0') or '0'} without the leading zero"
                if _OCTAL.match(text)
                else f"write {value} in decimal",
                severity="warning",
            )
            for loc, text, value in self.other_base_numbers
        ]

    def position_of(self, loc: Loc) -> Position | None:
        """The position of `loc`, or of its nearest ancestor that the file has (a missing key points at its
        parent)."""
        for end in range(len(loc), -1, -1):
            if (position := self.positions.get(tuple(loc[:end]))) is not None:
                return position
        return None


_OCTAL = re.compile(r"^[-+]?0[0-7_]+$")
_OTHER_BASE = re.compile(r"^[-+]?(0[0-7_]+|0x[0-9a-fA-F_]+|0b[01_]+|0o[0-7_]+)$")


class _Loader(yaml.SafeLoader):
    pass


# libyaml's parser where PyYAML was built with it (the wheels are) composes a file several times faster, with the
# same node marks. Its error messages say less (no offending character, no alias name), so a file it refuses is
# parsed again by `_Loader` for the message.
class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    pass


for _loader in (_Loader, _FastLoader):
    _loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    _loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file's contents (`-`: standard input); raises YamlSourceError for a missing, unreadable, huge or
    binary file."""
    if str(path) == "-":
        return _decoded(_bounded(_standard_input(), "standard input"))
    p = Path(path)
    try:
        if p.is_dir():
            raise YamlSourceError("not_a_file", f"{path} is a directory, not a file", "pass the path of a YAML file")
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise YamlSourceError(
                "file_too_large",
                f"the file is {size / (1024 * 1024):.0f} MiB, over the {MAX_BYTES // (1024 * 1024)} MiB limit",
                "a spec or sweep file is a few kilobytes; check that this is the file you meant",
            )
        with p.open("rb") as f:
            raw = _bounded(f.read(MAX_BYTES + 1), str(path))  # a device or a pipe reports size 0 (/dev/zero)
    except FileNotFoundError:
        raise YamlSourceError("file_not_found", f"no such file: {path}", "check the path") from None
    except PermissionError:
        raise YamlSourceError(
            "unreadable", f"permission denied reading {path}", "check the file's permissions"
        ) from None
    except OSError as e:
        raise YamlSourceError("unreadable", f"cannot read {path}: {e.strerror or e}", "check the path") from None
    return _decoded(raw)


# Standard input as read the first time, with the stream it came from: a command that reads its sweep file twice
# (status reads it to ask the sweep service what it filled in, then expands it) found `-` empty the second time.
_stdin_read: tuple[object, bytes] | None = None


def _standard_input() -> bytes:
    import sys

    global _stdin_read
    stream = sys.stdin.buffer
    if _stdin_read is None or _stdin_read[0] is not stream:  # another stream (a test runner's) is another input
        _stdin_read = (stream, stream.read(MAX_BYTES + 1))
    return _stdin_read[1]


def _bounded(raw: bytes, what: str) -> bytes:
    if len(raw) > MAX_BYTES:
        raise YamlSourceError(
            "file_too_large",
            f"{what} holds more than {MAX_BYTES // (1024 * 1024)} MiB",
            "a spec or sweep file is a few kilobytes; check that this is the file you meant",
        )
    return raw


def _decoded(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise YamlSourceError(
            "not_utf8", f"the file is not UTF-8 text (bad byte at offset {e.start})", "save the file as UTF-8 YAML"
        ) from None


def _position(mark) -> Position:
    return Position(mark.line + 1, mark.column + 1)


SPEC_START = "write the document: at least a `student:` block"


def parse_yaml(text: str, *, empty_hint: str = SPEC_START) -> YamlDocument:
    """Parse one YAML document; raises YamlSourceError (syntax, size, several documents, too complex)."""
    if len(text.encode("utf-8", errors="replace")) > MAX_BYTES:
        raise YamlSourceError(
            "file_too_large",
            f"the file is larger than {MAX_BYTES // (1024 * 1024)} MiB",
            "a spec or sweep file is a few kilobytes; check that this is the file you meant",
        )
    try:
        loader, root = _compose(text, _FastLoader)
    except YamlSourceError:
        loader, root = _compose(text, _Loader)  # refused either way: the pure-Python parser says why better
    builder = _Builder(loader)
    try:
        data = builder.build(root, ()) if root is not None else None
    except RecursionError:
        raise _too_deep() from None
    finally:
        loader.dispose()
    if data is None:
        raise YamlSourceError("empty_file", "the file is empty", empty_hint)
    return YamlDocument(data, builder.positions, tuple(builder.duplicates), tuple(builder.other_base))


def _compose(text: str, kind: type[yaml.SafeLoader]):
    """The loader and the document's root node; raises YamlSourceError when the text is not one YAML document."""
    loader = None
    try:
        loader = kind(text)
        return loader, loader.get_single_node()
    except (yaml.YAMLError, RecursionError) as e:
        if loader is not None:
            loader.dispose()
        raise _source_error(e) from None


# The tags plain YAML resolves to (and `!!str` etc. written out): anything else names a constructor.
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
)


def _source_error(e: Exception) -> YamlSourceError:
    if isinstance(e, RecursionError):
        return _too_deep()
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        position = _position(mark) if mark else None
        message = " ".join(str(part) for part in (e.context, e.problem) if part)
        if "'\\t'" in message:
            return YamlSourceError(
                "yaml_syntax",
                "a tab in the indentation: YAML indents with spaces",
                "replace the tab with spaces",
                position,
            )
        if "expected a single document" in message:
            return YamlSourceError(
                "multiple_documents",
                "the file holds more than one YAML document",
                "keep one document per file (remove the extra `---`)",
                position,
            )
        return YamlSourceError(
            "yaml_syntax", f"YAML syntax error: {message}", "fix the YAML at this position", position
        )
    if isinstance(e, yaml.reader.ReaderError):
        return YamlSourceError(
            "yaml_syntax",
            f"unacceptable character #x{e.character:04x} at offset {e.position}",
            "YAML files hold printable text only; remove control characters",
        )
    return YamlSourceError("yaml_syntax", f"YAML syntax error: {e}", "fix the YAML syntax")


def _too_deep() -> YamlSourceError:
    return YamlSourceError("yaml_too_deep", "the YAML is nested too deeply", f"keep nesting under {MAX_DEPTH} levels")


class _Builder:
    """Turns a composed node tree into Python values and a loc -> position map."""

    def __init__(self, loader: yaml.SafeLoader):
        self.loader = loader
        self.positions: dict[Loc, Position] = {}
        self.duplicates: list[tuple[Loc, Position]] = []
        self.other_base: list[tuple[Loc, str, int]] = []
        self.nodes = 0

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlSourceError(
                "yaml_too_complex",
                f"the YAML expands to more than {MAX_NODES} values (aliases repeated too often?)",
                "write the values out instead of nesting aliases",
            )
        if len(loc) > MAX_DEPTH:
            raise _too_deep()
        if node.tag not in _PLAIN_TAGS:  # !custom, !!python/object...: a spec holds plain values only
            raise YamlSourceError(
                "yaml_bad_value",
                f"unsupported YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')}",
                "remove the tag: spec, sweep and golden files hold plain values (quote a value that starts with !)",
                _position(node.start_mark),
            )
        self.positions.setdefault(loc, _position(node.start_mark))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, loc + (i,)) for i, item in enumerate(node.value)]
        try:
            value = self.loader.construct_object(node, deep=True)
            if (
                node.tag == "tag:yaml.org,2002:int" and not node.style and _OTHER_BASE.match(node.value)
            ):  # plain: None or ""
                self.other_base.append((loc, node.value, value))
            return value
        except (yaml.YAMLError, ValueError, OverflowError) as e:
            why = getattr(e, "problem", None) or str(e)  # without PyYAML's `in "<unicode string>", line 1`
            raise YamlSourceError(
                "yaml_bad_value",
                f"unreadable value {node.value!r}: {why}",
                "quote the value or fix it",
                _position(node.start_mark),
            ) from None

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict:
        own = {id(key) for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"}
        try:
            self.loader.flatten_mapping(node)  # `<<` merge keys: the merged pairs come first, the mapping's own win
        except yaml.YAMLError as e:
            raise YamlSourceError(
                "yaml_syntax", f"YAML merge error: {e}", "fix the `<<` merge", _position(node.start_mark)
            ) from None
        result: dict = {}
        seen_own: dict = {}  # key -> whether the mapping itself wrote it (merged keys may be overridden)
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlSourceError(
                    "bad_key",
                    "a mapping key must be a plain word, not a list or mapping",
                    "",
                    _position(key_node.start_mark),
                )
            try:
                key = self.loader.construct_object(key_node)
            except (yaml.YAMLError, ValueError, OverflowError) as e:
                raise YamlSourceError(
                    "yaml_bad_value",
                    f"unreadable key {key_node.value!r}: {e}",
                    "quote the key or fix it",
                    _position(key_node.start_mark),
                ) from None
            if not isinstance(key, str):
                key = key_node.value  # `on:`, `1:`: keep the key as written, not as YAML 1.1 reads it
            position = _position(key_node.start_mark)
            if key in result and id(key_node) in own and seen_own.get(key):
                self.duplicates.append((loc + (key,), position))  # the mapping's own key twice, not an override
            seen_own[key] = seen_own.get(key, False) or id(key_node) in own
            if id(key_node) in own or loc + (key,) not in self.positions:
                self.positions[loc + (key,)] = position
            result[key] = self.build(value_node, loc + (key,))
        return result


def copy_plain(data: Any) -> Any:
    """A deep copy of plain YAML data (mappings, lists, scalars), through pickle: several times faster than
    copy.deepcopy, which matters when a sweep copies a spec per point at 10,000 points."""
    if data is None or isinstance(data, (str, int, float)):
        return data  # immutable
    return pickle.loads(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))


def source_problem(e: YamlSourceError, file: str | None) -> Problem:
    """The problem a file that cannot be read or parsed is: at the file's top, with the position YAML gave."""
    p = e.position
    return Problem((), e.code, e.message, e.hint, file=file, line=p.line if p else None, column=p.column if p else None)
