"""The place a path names, so that two ways of writing one place compare equal: `runs/t/`, `./runs/t` and
`runs//t` (and, read from the same directory, its absolute form) are one folder. An object store's URL only loses a
trailing `/`: its keys are names (`gs://b/a//c` is another object than `gs://b/a/c`, and `..` is a key part), as the
filesystem libraries that read them keep them."""

from __future__ import annotations

import os
import posixpath


def place(path: str, *, absolute: bool = False) -> str:
    """`path` normalised; `absolute`: a local one made absolute from the current directory."""
    if not path or "://" in path:
        return path.rstrip("/") or path
    return posixpath.normpath(os.path.abspath(path) if absolute else path)


def inside(folder: str, name: str) -> str:
    """`folder/name`, as a run's folder is named under an output base: one `/` between them, whatever `folder`
    ends with. The root (`/`, `file:///`) keeps its own; no folder ("") is `name` alone."""
    head = folder.rstrip("/")
    if head and not head.endswith(":"):
        return f"{head}/{name}"
    return f"{folder}{name}"  # `/` and `file:///` were `name` (relative) and `file:/name`


def file_url(value: str) -> tuple[str, str] | None:
    """A `file:` URL's host and path, as RFC 8089 spells them (its scheme and host are case-insensitive):
    `file:/abs` and `file:///abs` are ("", "/abs"), `file://localhost/abs` ("localhost", "/abs"), `file:rel`
    ("", "rel"); None for what is not a file URL. The path is percent-decoded, as a URL's is (`sp%20ace` is the
    folder `sp ace`)."""
    from urllib.parse import unquote

    if value[:5].lower() != "file:":
        return None
    rest = value[5:]
    if rest[:2] != "//":
        return "", unquote(rest)
    host, slash, path = rest[2:].partition("/")
    return host, unquote(slash + path)
