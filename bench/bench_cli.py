"""How fast the command line answers, process start included, against issue 11's goals.

- `distillctl validate` of one spec (sweeps/tiny.yaml): goal under 0.3 s.
- `distillctl plan` and `distillctl render` of a 10,000-point sweep (100 α ends × 100 temperatures over the tiny
  spec, a kubernetes target): goal under 5 s each.

Each command runs as its own process (`python -m orchestrator.cli ...`), `--rounds` times; the median wall time is
reported. With `--baseline PATH` (a checkout of an earlier distillctl, e.g. `git worktree add /tmp/old <rev>`)
the same commands run against it in interleaved rounds, and the ratio baseline / this is printed: a ratio holds
across machines better than seconds do. Run it on an idle machine: `python bench/bench_cli.py [--baseline DIR]`.

Both checkouts' packages are byte-compiled first (`compileall`), as `pip install` leaves an installed distillctl:
in a source checkout under `PYTHONDONTWRITEBYTECODE=1` (this project's CI machines set it) every start would
otherwise compile distillctl's own modules again, 0.05-0.08 s that no installed copy spends.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"validate": 0.3, "plan": 5.0, "render": 5.0}


def big_sweep(folder: Path) -> Path:
    for name in ("tiny.yaml", "tiny-teacher.yaml"):
        shutil.copy(ROOT / "sweeps" / name, folder / name)
    sweep = {
        "name": "big",
        "spec": "tiny.yaml",
        "axes": {
            "loss.alpha.end": [round(0.01 * i, 2) for i in range(1, 101)],
            "loss.temperature.start": [round(1.0 + 0.05 * i, 2) for i in range(100)],
        },
        "target": {"kind": "kubernetes", "tpu_type": "v5p-8", "image": "example.com/t:1", "output_base": "gs://b/r"},
    }
    path = folder / "big.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def commands(folder: Path, sweep: Path, tag: str) -> dict[str, list[str]]:
    # Each render writes into a folder of its own: deleting the last round's 10,000 files just before would
    # charge the file system's deferred work for that deletion to the next render (1-3 s of system time here).
    return {
        "validate": ["validate", str(ROOT / "sweeps" / "tiny.yaml")],
        "plan": ["plan", str(sweep), "--yes", "--output", "json"],
        "render": ["render", str(sweep), "--yes", "-o", str(folder / f"manifests-{tag}")],
    }


def byte_compile(checkout: Path) -> None:
    packages = [
        str(checkout / name) for name in ("orchestrator", "distillspec", "trainer") if (checkout / name).is_dir()
    ]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True, stdout=subprocess.DEVNULL)


def timed(checkout: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *argv], env=env, cwd=checkout, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed in {checkout}:\n{done.stderr[-2000:]}")
    return elapsed


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({isa}, {os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="an earlier checkout to compare against (same commands)")
    args = parser.parse_args()
    for checkout in (ROOT, args.baseline) if args.baseline else (ROOT,):
        byte_compile(checkout)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sweep = big_sweep(folder)
        ours: dict[str, list[float]] = {name: [] for name in GOALS}
        base: dict[str, list[float]] = {name: [] for name in GOALS}
        for round_ in range(args.rounds):
            for name in GOALS:
                if args.baseline:
                    base[name].append(timed(args.baseline, commands(folder, sweep, f"base-{round_}")[name]))
                ours[name].append(timed(ROOT, commands(folder, sweep, f"this-{round_}")[name]))
    print(f"{cpu()}, Python {platform.python_version()}, {args.rounds} rounds, median wall seconds")
    print("| command | this | goal | met |" + (" baseline | baseline / this |" if args.baseline else ""))
    for name in GOALS:
        mine = statistics.median(ours[name])
        row = f"| {name} | {mine:.2f} s | < {GOALS[name]} s | {'yes' if mine < GOALS[name] else 'no'} |"
        if args.baseline:
            theirs = statistics.median(base[name])
            row += f" {theirs:.2f} s | {theirs / mine:.2f}× |"
        print(row)


if __name__ == "__main__":
    main()
