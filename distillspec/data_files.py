"""Which files a data path names — a file, every file under a folder, or a glob's matches, local or at an fsspec
URL — read once here for the trainer (which reads them) and `validate --check-paths` (which counts them)."""

from __future__ import annotations

from typing import Any


def data_files(path: str) -> tuple[Any, list[str]]:
    """`(filesystem, sorted names on it)` of the files `path` names; the store's own errors propagate (each caller
    says what a failure to list means for it)."""
    import fsspec  # only where data is listed: the spec package imports without it

    fs, root = fsspec.core.url_to_fs(path)
    if any(c in root for c in "*?["):
        return fs, sorted(p for p in fs.glob(root) if not fs.isdir(p))
    if fs.isdir(root):
        return fs, sorted(p for p in fs.find(root) if not fs.isdir(p))
    return fs, [root] if fs.exists(root) else []
