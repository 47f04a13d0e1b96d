"""What a file that should be UTF-8 text is instead, told by its first bytes (JAX-free: `validate --check-paths`
asks it before launch, the trainer at start — one table for both).

Decoded with replacement, a gzip file or text in another encoding became a run that trained on U+FFFD.
"""

from __future__ import annotations

import re

# Leading bytes of what people put beside their text by mistake -> (what the file is, what to do instead).
_NOT_TEXT: tuple[tuple[re.Pattern[bytes], str, str], ...] = tuple(
    (re.compile(magic, re.DOTALL), what, todo)
    for magic, what, todo in (
        (rb"\x1f\x8b", "gzip-compressed", "decompress it (gunzip FILE) and point FIELD at the text"),
        (rb"BZh[1-9]1AY&SY", "bzip2-compressed", "decompress it (bunzip2 FILE) and point FIELD at the text"),
        (rb"\xfd7zXZ\x00", "xz-compressed", "decompress it (unxz FILE) and point FIELD at the text"),
        (rb"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it (unzstd FILE) and point FIELD at the text"),
        (rb"\x04\x22\x4d\x18", "lz4-compressed", "decompress it (unlz4 FILE) and point FIELD at the text"),
        (rb"PK\x03\x04", "a zip archive", "extract it (unzip FILE) and point FIELD at the text"),
        (rb"\x93NUMPY", "a NumPy array", "read token ids with data.source: tokens"),
        (
            rb"\xff\xfe|\xfe\xff",
            "UTF-16 text (it starts with a byte-order mark)",
            "convert it (iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8) and point FIELD at that",
        ),
        # The magic and then binary (a page header; padding): text that merely starts with "PAR1" is text.
        (rb"PAR1[\x00-\x08\x0e-\x1f]", "a Parquet file", "read it with data.source: parquet"),
        (
            rb"ARROW1\x00",
            "an Arrow file",
            "write its rows as Parquet or JSONL, or save it with datasets' save_to_disk",
        ),
        # An Arrow stream (a saved Hugging Face dataset's data-*.arrow): its first message's continuation marker.
        (
            rb"\xff\xff\xff\xff",
            "an Arrow stream (a Hugging Face dataset saved with save_to_disk?)",
            "read its folder with data.source: hf_disk",
        ),
    )
)
HEAD = 1024  # bytes `not_text` looks at (UTF-16 is told by its bytes' pattern over hundreds of them)


def kind_of(head: bytes, file: str, field: str) -> tuple[str, str] | None:
    """`(what the file is, what to do instead)` for a file whose first bytes (`head`, `HEAD` of them or more) are
    those of a compressed or binary format (gzip, bzip2, xz, zstd, lz4, zip, .npy, UTF-16, Parquet, Arrow), the
    advice naming `file` and the spec `field` that names it. None for anything else."""
    found = next(((what, todo) for magic, what, todo in _NOT_TEXT if magic.match(head)), None) or _utf16(head)
    if found is None:
        return None
    what, todo = found
    return what, todo.replace("FILE", file).replace("FIELD", field)


_CONTROL = frozenset(set(range(0x20)) - {0x09, 0x0A, 0x0D})  # bytes UTF-8 text does not hold (tab, newlines apart)


def _utf16(head: bytes) -> tuple[str, str] | None:
    """UTF-16 without a byte-order mark (Windows and .NET tools write it so): the high bytes of its code units (every
    other byte) are NUL or another control byte, for Latin (`h\0`), Greek (`\xb1\x03`), Cyrillic (`\x3f\x04`),
    Hebrew or Arabic text alike, while its low bytes are never NUL. Such a file is often valid UTF-8 (Cyrillic's code
    units are two ASCII bytes) and was trained on as it was; UTF-8 text holds no such bytes."""
    even, odd = head[0::2], head[1::2]
    if len(odd) < 4:
        return None
    for order, high, low in (("LE", odd, even), ("BE", even, odd)):
        if low.count(0) == 0 and sum(b in _CONTROL for b in high) >= 0.6 * len(high):
            return (
                f"UTF-16{order} text (every other byte is NUL)",
                f"convert it (iconv -f UTF-16{order} -t UTF-8 FILE > FILE.utf8) and point FIELD at that",
            )
    return None


# Above this share of bytes that are not UTF-8 a file is refused; below it they are read as U+FFFD, with a warning.
# In text stored as Latin-1 or Windows-1252 every accented letter or curly quote is such a byte: 1-4% of the bytes
# of French, German or Spanish prose. A UTF-8 corpus with a few stray bytes (a cut crawl, a mangled record) stays
# far below one in a thousand and is worth training on; so may English with a few Windows-1252 quotes, warned of.
UNDECODABLE_SHARE = 1e-3


def undecodable(raw: bytes, *, cut: bool = False) -> tuple[int, int]:
    """`(how many bytes of raw are not UTF-8, where the first is)`; (0, -1) for UTF-8. `cut`: raw is the head of a
    longer file, so a character cut at its end is not counted."""
    try:
        raw.decode("utf-8")
        return 0, -1
    except UnicodeDecodeError as e:
        if cut and e.reason == "unexpected end of data":
            return 0, -1  # the only error is the last character, cut
        first = e.start
    if cut:
        raw = raw[: len(raw) - 3]  # a character cut at the end is at most its first 3 bytes
    # surrogateescape turns each byte that is not UTF-8 into one lone surrogate, which encoding drops
    return len(raw) - len(raw.decode("utf-8", "surrogateescape").encode("utf-8", "ignore")), first


def too_undecodable(bad: int, size: int) -> bool:
    return bad > UNDECODABLE_SHARE * size
