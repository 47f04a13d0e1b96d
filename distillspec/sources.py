"""Which trainer code a run is trained with: a digest of the installed trainer's Python sources and of this spec
package's, which the trainer imports (its defaults, the loss choice, the checkpoint readers). The orchestrator
puts it in a local run's id when the sweep asks (`target.code_in_run_id`); the trainer records it in summary.json
(`trainer_code`), so results under one run id (which hashes the spec, not the code) say which code made them."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

CODE_HASH_LENGTH = 32  # hex characters: fits a label value (<= 63), as the spec hash


TRAINER_PACKAGES = ("trainer", "distillspec")  # the trainer runs code from both: a change to either is other code
SOURCE_SUFFIXES = (".py", ".cc")  # .cc: the CPU loss kernel the trainer compiles and runs (trainer/logit_rows.cc)


@functools.cache
def trainer_code_hash(packages: tuple[str, ...] = TRAINER_PACKAGES) -> str | None:
    """Hex sha256 (`CODE_HASH_LENGTH` characters) of the packages' sources (`SOURCE_SUFFIXES`): each file's package,
    path in it and bytes, in that order. Found without importing the packages (no JAX); None when the trainer (the first) is
    not installed. Computed once per process: the sources do not change under a running sweep."""
    digest = hashlib.sha256()
    for index, package in enumerate(packages):
        root = _package_root(package)
        if root is None:
            if index == 0:
                return None
            continue
        for path in sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()):
            relative = path.relative_to(root).as_posix()
            digest.update(f"{package}/{relative}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:CODE_HASH_LENGTH]


def _package_root(package: str) -> Path | None:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))
