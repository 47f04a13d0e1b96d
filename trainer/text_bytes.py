"""Whether a corpus file's bytes are UTF-8 text, for the sources that read text (`text`, `jsonl`).

Decoded with replacement, a gzip file or text in another encoding became a run that trained on U+FFFD. A file
that starts like a compressed or binary format is refused by its first bytes (`not_text`); a text file is decoded
strictly, and only when that fails are its bytes that are not UTF-8 counted (`decode`), so valid UTF-8, the
common case, costs what it did.
"""

from __future__ import annotations

from distillspec.text_magic import HEAD, kind_of, too_undecodable, undecodable  # noqa: F401 - HEAD: for the readers
from trainer.exit_codes import UserError


def not_text(head: bytes, name: str, field: str) -> UserError | None:
    """The error for a file whose first bytes (`head`, `HEAD` of them or more) are those of a compressed or binary
    format (`distillspec.text_magic.kind_of`); None for anything else."""
    found = kind_of(head, name, field)
    if found is None:
        return None
    what, todo = found
    return UserError(
        f"{name} is {what}, not UTF-8 text: the trainer reads text files as they are",
        f"{todo}, or leave the file out of {field}",
    )


def decode(raw: bytes, name: str, field: str) -> tuple[str, int]:
    """The text of a file's bytes `raw` and how many of them are not UTF-8 (each read as U+FFFD). Raises
    UserError, naming the file, the share and the first such byte, when they are more than
    `text_magic.UNDECODABLE_SHARE`."""
    try:
        return raw.decode("utf-8"), 0  # the common case, decoded once
    except UnicodeDecodeError:
        pass
    bad, first = undecodable(raw)
    if too_undecodable(bad, len(raw)):
        raise UserError(
            f"{name} is not UTF-8 text: {bad} of its {len(raw)} bytes ({bad / len(raw):.2%}) are not UTF-8, the "
            f"first at byte {first} ({raw[first]:#04x})",
            f"convert it to UTF-8 (for Latin-1 or Windows-1252 text: iconv -f CP1252 -t UTF-8 {name} > "
            f"{name}.utf8) and point {field} at that, or leave the file out of {field} (a glob such as "
            "folder/*.txt) when it is not text; as it is, each such byte would be trained on as U+FFFD",
        )
    return raw.decode("utf-8", "replace"), bad
