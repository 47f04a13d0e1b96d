"""The dense loss's pass over the logits as one C++ kernel on CPU (`logit_rows.cc`, an XLA FFI custom call).

`trainer.loss.logit_terms` computes every per-token term and the objective's gradient in one pass over both
models' logits. On TPU and GPU XLA fuses that pass well; XLA:CPU does not (no multi-output fusion: each block of
logits is read ~20 times, and a loop's fusions run one thread each), so on CPU the same pass runs as this kernel:
a row read once from memory for its maxima, then from cache for the sums and the gradient, rows shared out over
XLA's thread pool. The loss and its gradient alone run ~2.3× as fast as XLA's pass on this project's AVX-512 VM
(`bench/bench_loss_pass.py`, bench/README.md). `trainer.loss` picks it with `jax.lax.platform_dependent`, so a step lowered for TPU never
contains it.

The library is compiled on first use with the C++ compiler at hand (`$CXX`, else `g++`, else `c++`) against
the FFI headers jaxlib ships, into a cache keyed by the source, the flags, the jaxlib version and the machine type
(`$DISTILLCTL_KERNEL_CACHE`, else `$XDG_CACHE_HOME/distillctl/kernels`, else `~/.cache/distillctl/kernels`),
and written there atomically (processes starting together may each compile it; none reads a partial file).
Without a compiler, or if the build fails, the loss says why once (a warning on this module's logger) and uses
XLA's path: the same values to float32 rounding (~1e-7 relative, not bit for bit), slower. `DISTILLCTL_CPU_KERNEL=0` selects XLA's path on purpose (read when a step
is traced).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("logit_rows.cc")
SYMBOL = "DistillLogitRows"  # the handler the source defines
TARGET = "distillctl_logit_rows"  # the custom call's name in XLA
ENV_SWITCH = "DISTILLCTL_CPU_KERNEL"  # "0": XLA's path on CPU too
ENV_CACHE = "DISTILLCTL_KERNEL_CACHE"
FLAGS = (
    "-O3",
    "-shared",
    "-fPIC",
    "-std=c++17",
    "-fopenmp-simd",  # the `#pragma omp simd` reductions, without linking OpenMP
    "-fno-math-errno",
    "-fno-trapping-math",
    "-Wno-attributes",  # jaxlib's FFI headers
    "-Wno-return-type",
) + (("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ())
BUILD_TIMEOUT_S = 300


class KernelUnavailable(RuntimeError):
    """The library could not be built or loaded; the message says why and what to change."""


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "distillctl" / "kernels"


def library_path() -> Path:
    """Where the library for this source, these flags, this jaxlib and this machine type lives (built or not)."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update("\0".join(FLAGS).encode())
    key.update(importlib.metadata.version("jaxlib").encode())  # the FFI headers compiled in
    key.update(platform.machine().encode())  # a home directory shared by x86-64 and Arm hosts
    return cache_dir() / f"logit_rows-{key.hexdigest()[:16]}.so"


def build() -> Path:
    """The library's path, compiling it first when it is not in the cache. Raises KernelUnavailable."""
    path = library_path()
    if path.exists():
        return path
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise KernelUnavailable("no C++ compiler found: install g++ or set CXX")
    compiler = shutil.which(compiler) or compiler  # a path: then subprocess spawns it without forking (below)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=path.stem + "-", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise KernelUnavailable(f"cannot write the kernel cache {path.parent}: {exc}; set {ENV_CACHE}") from None
    command = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", partial]
    try:
        # close_fds=False and an absolute path let subprocess use posix_spawn: a fork of this (multithreaded) JAX
        # process would make JAX warn that it may deadlock.
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False, close_fds=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        Path(partial).unlink(missing_ok=True)
        raise KernelUnavailable(f"{compiler} did not run: {exc}") from None
    if done.returncode != 0:
        Path(partial).unlink(missing_ok=True)
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise KernelUnavailable(f"{compiler} failed on {SOURCE.name} (exit {done.returncode}): {tail}")
    os.replace(partial, path)  # atomic: a concurrent build's reader sees the whole file or none
    return path


_LIBRARY: list[ctypes.CDLL] = []  # keeps the loaded library alive: XLA holds a pointer into it


@functools.cache
def _registered() -> str | None:
    """Build, load and register the kernel once per process; None when done, else why not."""
    try:
        library = ctypes.CDLL(str(build()))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(library, SYMBOL)), platform="cpu")
    except (KernelUnavailable, OSError, AttributeError) as exc:
        reason = str(exc)
        log.warning("the loss runs on XLA's path on CPU (slower; the same values to float32 rounding): %s", reason)
        return reason
    _LIBRARY.append(library)
    return None


def usable() -> bool:
    """Whether steps traced now may call the kernel on CPU (not switched off, and built and registered)."""
    return os.environ.get(ENV_SWITCH, "1") != "0" and _registered() is None


def logit_rows(s, t, targets, kl_weight, ce_weight, temperature):
    """`((kl_at_T, kl_T1, student_ce, teacher_ce, top1_agreement), grad)` over float32 logits `s`, `t` `[..., V]`
    with int32 `targets`, float32 weights and `temperature` `[...]` (one per row): the terms `[...]` and the
    objective's gradient w.r.t. `s` `[..., V]`, written over `s`'s buffer. As `trainer.loss._rows` per row."""
    rows = jax.ShapeDtypeStruct(s.shape[:-1], jnp.float32)
    call = jax.ffi.ffi_call(
        TARGET,
        (rows,) * 5 + (jax.ShapeDtypeStruct(s.shape, jnp.float32),),
        input_output_aliases={0: 5},
        vmap_method="broadcast_all",  # the kernel treats every leading axis as rows
    )
    *terms, grad = call(s, t, targets, kl_weight, ce_weight, temperature)
    return tuple(terms), grad
