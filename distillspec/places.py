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
