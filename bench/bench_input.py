"""Input-pipeline throughput (tokens/s of one process) vs the trainer's mid-size step throughput (not a test).

    .venv/bin/python bench/bench_input.py
    .venv/bin/python bench/bench_input.py --documents 20000 --seconds 10 --rounds 3

Writes a corpus of English-like documents (seeded word salad from a 2,000-word vocabulary, 50-600 words each) as
8 JSONL files and 8 Parquet files, trains a byte-level BPE tokenizer (the `tokenizers` library, 8,000 tokens) on
it, and times `trainer.data.make_batches` — the loop's own input pipeline: Grain reading this process's files,
tokenizing, packing into rows with segment ids, batching and prefetching — at the mid size's batch shape
(4 rows × 256 tokens), as tokens of packed rows handed out per second. Then times the trainer's compiled step at
the mid size (`bench_trainer.py`'s `mid`: teacher mid-4l, student mid-2l, vocab 32000) on the same machine. The
ratio (input tokens/s over step tokens/s, goal ≥ 10) says whether data can ever be the bottleneck of a host.
Rounds interleave the three (jsonl, parquet, step) so load from other processes hits all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FILES = 8
ROWS, LENGTH = 4, 256  # the mid size's batch (bench_trainer.SIZES["mid"])


def write_corpus(root: Path, documents: int, seed: int = 0) -> int:
    """JSONL and Parquet copies of the same documents, `FILES` files each; returns the corpus size in bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(2000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf-like word frequencies
    weights /= weights.sum()
    texts = [" ".join(rng.choice(vocab, size=rng.integers(50, 600), p=weights)) + "." for _ in range(documents)]
    (root / "jsonl").mkdir()
    (root / "parquet").mkdir()
    for f in range(FILES):
        part = texts[f::FILES]
        (root / "jsonl" / f"part-{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
        pq.write_table(pa.table({"text": part}), root / "parquet" / f"part-{f}.parquet", row_group_size=256)
    return sum(len(t) for t in texts)


def train_tokenizer(root: Path) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    files = [str(p) for p in sorted((root / "jsonl").glob("*.jsonl"))]
    tok.train(files, trainer)
    path = root / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def input_spec(root: Path, source: str, tokenizer: str):
    from distillspec.specfile import validate_data

    path = str(root / source / f"*.{source}")
    spec, problems = validate_data(
        {
            "name": "bench-input",
            "mode": "pretrain",
            "student": {"model": "mid-2l"},
            "data": {"source": source, "path": path, "tokenizer": tokenizer},
            "batch": {"per_device_batch_size": ROWS, "max_target_length": LENGTH},
            "steps": 10,
            "output_dir": str(root / "out"),
        }
    )
    assert spec is not None, [p.message for p in problems]
    return spec


def input_runner(spec):
    """`run(seconds) -> tokens/s` pulling batches from one long-lived pipeline (its threads warm)."""
    from trainer import data
    from trainer.corpus import Shard

    batches = data.make_batches(spec, spec.student.shape().vocab_size, ROWS, Shard())
    batches.next()  # opens the files, starts the prefetch thread

    def run(seconds: float) -> float:
        tokens, begin = 0, time.perf_counter()
        while time.perf_counter() - begin < seconds:
            tokens += batches.next()["mask"].size
        return tokens / (time.perf_counter() - begin)

    return run, batches


def step_runner(steps: int):
    """`run() -> tokens/s` of the trainer's compiled mid-size distillation step (bench_trainer's `ours`)."""
    import bench_trainer

    size = bench_trainer.SIZES["mid"]
    spec = bench_trainer.spec_for(size, 2 + 100 * steps)
    seqs = bench_trainer.batches(spec, 2 + 100 * steps)
    run_steps = bench_trainer.ours_runner(spec, bench_trainer.initial_params(spec), seqs)
    run_steps(0, 2)  # warm-up
    position = {"next": 2}

    def run() -> float:
        seconds = run_steps(position["next"], steps)
        position["next"] += steps
        return steps * size["rows"] * size["length"] / seconds

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=5.0, help="input pipeline timing per round and source")
    parser.add_argument("--steps", type=int, default=4, help="timed mid-size steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("DISTILLCTL_COMPILE_CACHE", "off")
    root = Path(tempfile.mkdtemp(prefix="bench-input-"))
    size = write_corpus(root, args.documents)
    tokenizer = train_tokenizer(root)
    inputs = {source: input_runner(input_spec(root, source, tokenizer)) for source in ("jsonl", "parquet")}
    step = step_runner(args.steps)
    rates: dict[str, list[float]] = {"jsonl": [], "parquet": [], "step": []}
    for _ in range(args.rounds):
        for source, (run, _) in inputs.items():
            rates[source].append(run(args.seconds))
        rates["step"].append(step())
    for _, batches in inputs.values():
        batches.close()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "corpus": {"documents": args.documents, "files": FILES, "megabytes": round(size / 1e6, 1)},
        "batch": f"{ROWS} x {LENGTH} tokens",
        "tokens_per_sec_median": {k: round(v, 1) for k, v in medians.items()},
        "tokens_per_sec_per_round": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio_input_over_step": {s: round(medians[s] / medians["step"], 1) for s in ("jsonl", "parquet")},
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    for source in ("jsonl", "parquet"):
        print(
            f"{source}: {medians[source]:,.0f} tok/s per process; mid step {medians['step']:,.0f} tok/s; "
            f"ratio {result['ratio_input_over_step'][source]}x (goal >= 10x)",
            flush=True,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
