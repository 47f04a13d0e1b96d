"""Which files a data path names — a file, every file under a folder, or a glob's matches, local or at an fsspec
URL — read once here for the trainer (which reads them) and `validate --check-paths` (which counts them)."""

from __future__ import annotations

from typing import Any


def data_files(path: str) -> tuple[Any, list[str]]:
    """`(filesystem, sorted names on it)` of the files `path` names; the store's own errors propagate (each caller
    says what a failure to list means for it). A folder's hidden files and subfolders (`.…`) and the markers jobs
    leave beside their output (`_…` without an extension: Spark's and Hadoop's `_SUCCESS`, `_temporary/`, Parquet's
    `_metadata`) are not data, as Spark skips them; `__init__.py` is a file like any other. A glob or a file path
    names its files itself."""
    import fsspec  # only where data is listed: the spec package imports without it

    fs, root = fsspec.core.url_to_fs(path)
    if any(c in root for c in "*?["):
        return fs, sorted(p for p in fs.glob(root) if not fs.isdir(p))
    if fs.isdir(root):
        base = root.rstrip("/")
        return fs, sorted(p for p in fs.find(root) if not fs.isdir(p) and not _hidden(p[len(base) :]))
    return fs, [root] if fs.exists(root) else []


def _hidden(relative: str) -> bool:
    """Whether a path below a data folder is, or is in, a hidden file or folder or a job's marker."""
    return any(
        part.startswith(".") or (part.startswith("_") and "." not in part) for part in relative.split("/") if part
    )
