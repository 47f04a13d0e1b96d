"""Which trainer code a run is trained with: a digest of the installed trainer's Python sources. The orchestrator
puts it in a local run's id when the sweep asks (`target.code_in_run_id`); the trainer records it in summary.json
(`trainer_code`), so results under one run id (which hashes the spec, not the code) say which code made them."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

CODE_HASH_LENGTH = 32  # hex characters: fits a label value (<= 63), as the spec hash


@functools.cache
def trainer_code_hash(package: str = "trainer") -> str | None:
    """Hex sha256 (`CODE_HASH_LENGTH` characters) of the installed trainer's Python sources: their paths relative to
    the package and their bytes, in path order. Found without importing the package (no JAX); None when it is not
    installed. Computed once per process: the sources do not change under a running sweep."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    root = Path(next(iter(found.submodule_search_locations)))
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        digest.update(f"{relative}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:CODE_HASH_LENGTH]
