"""Whether a corpus file's bytes are UTF-8 text, for the sources that read text (`text`, `jsonl`).

Decoded with replacement, a gzip file or text in another encoding became a run that trained on U+FFFD. A file
that starts like a compressed or binary format is refused by its first bytes (`not_text`); a text file is decoded
strictly, and only when that fails are its bytes that are not UTF-8 counted (`decode`), so valid UTF-8, the
common case, costs what it did.
"""

from __future__ import annotations

from distillspec.text_magic import HEAD, kind_of  # noqa: F401 - HEAD: the readers ask for that many bytes
from trainer.exit_codes import UserError

# Above this share of bytes that are not UTF-8 a file is refused; below it they are read as U+FFFD, with a warning.
# In text stored as Latin-1 or Windows-1252 every accented letter or curly quote is such a byte: 1-4% of the bytes
# of French, German or Spanish prose. A UTF-8 corpus with a few stray bytes (a cut crawl, a mangled record) stays
# far below one in a thousand and is worth training on; so may English with a few Windows-1252 quotes, warned of.
UNDECODABLE_SHARE = 1e-3


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
    UserError, naming the file, the share and the first such byte, when they are more than `UNDECODABLE_SHARE`."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError as e:
        first = e.start
    # surrogateescape turns each byte that is not UTF-8 into one lone surrogate, which encoding drops
    bad = len(raw) - len(raw.decode("utf-8", "surrogateescape").encode("utf-8", "ignore"))
    if bad > UNDECODABLE_SHARE * len(raw):
        raise UserError(
            f"{name} is not UTF-8 text: {bad} of its {len(raw)} bytes ({bad / len(raw):.1%}) are not UTF-8, the "
            f"first at byte {first} ({raw[first]:#04x})",
            f"convert it to UTF-8 (for Latin-1 or Windows-1252 text: iconv -f CP1252 -t UTF-8 {name} > "
            f"{name}.utf8) and point {field} at that, or leave the file out of {field} (a glob such as "
            "folder/*.txt) when it is not text; as it is, each such byte would be trained on as U+FFFD",
        )
    return raw.decode("utf-8", "replace"), bad
