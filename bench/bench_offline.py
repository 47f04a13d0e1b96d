"""Offline top-k training step vs the online step: time and memory (not a test).

    .venv/bin/python bench/bench_offline.py                     # mid size, k = 64
    .venv/bin/python bench/bench_offline.py --top-k 64,1024 --rounds 5 --steps 5

Both drive this trainer's compiled step (`trainer.setup.build`) for the same student (mid-2l: width 256, vocab
32000) on the same synthetic batches, 4 × 256 tokens, from the same initial parameters. Online: the teacher
(mid-4l) runs forward inside every step, dense logits (the size is under the fused loss's threshold). Offline: no
teacher; the step reads the teacher's top-k log-probabilities, ids, tail log-mass and target log-probability from
the batch (computed once beforehand by `trainer.logit_cache.teacher_topk`, as a teacher_logits run writes them).
Timing: compiled steps after a warm-up, in interleaved rounds (online, offline, online, ...), so load from other
processes hits both; the median ratio and every round's are printed with the load average. Memory: XLA's
`memory_analysis()` of each compiled step (arguments, temporaries), and the parameters each holds (the teacher's
are an argument of the online step only); the cache's bytes per token on disk.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROWS, LENGTH = 4, 256


def spec_for(offline_k: int | None, steps: int):
    from distillspec.specfile import validate_data

    data = {
        "name": "bench",
        "student": {"model": "mid-2l", "remat": "none"},
        "teacher": {"model": "mid-4l", "load_parameters_path": "unused", "remat": "none"},
        "loss": {"alpha": 0.5, "temperature": 2.0, "beta": 0.0},
        "batch": {"per_device_batch_size": ROWS, "max_target_length": LENGTH},
        "steps": steps,
        "optimizer": {"learning_rate": 1e-3, "warmup_fraction": 0.0},
        "output_dir": tempfile.mkdtemp(),
    }
    if offline_k is not None:
        data.update(offline_data_dir="unused", top_k=offline_k)
    spec, problems = validate_data(data)
    assert spec is not None, [p.message for p in problems]
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-k", default="64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    args = parser.parse_args()

    import jax
    from flax import nnx

    from trainer.data import make_source
    from trainer.logit_cache import teacher_topk
    from trainer.models import ModelConfig, abstract_model, forward, host_init
    from trainer.setup import build
    from trainer.step import hyperparameters

    ks = [int(k) for k in args.top_k.split(",")]
    online_spec = spec_for(None, 1000)
    count = args.steps * (args.rounds + 1)
    source = make_source(online_spec.data, 32000, LENGTH + 1)
    seqs = [source.sequences(i, ROWS, LENGTH + 1) for i in range(count)]
    config = ModelConfig.from_spec(online_spec.teacher)
    graphdef, abstract = abstract_model(config)
    teacher_params = host_init(abstract, 1)

    def rows(seq):
        return {
            "inputs": seq[None, :, :-1],
            "targets": seq[None, :, 1:],
            "mask": np.ones((1, ROWS, LENGTH), np.float32),
        }

    @functools.partial(jax.jit, static_argnums=3)
    def cache_of(params, inputs, targets, k):
        return teacher_topk(forward(nnx.merge(graphdef, params), inputs)[0], targets, k)

    runners, memory = {}, {}

    def runner(name, spec, batches, teacher):
        built = build(spec, teacher_params=teacher)
        hp = [{k: np.float32(v) for k, v in hyperparameters(spec, i, built.lr_schedule).items()} for i in range(count)]
        device = [built.to_device(b) for b in batches]
        with jax.set_mesh(built.mesh):
            compiled = built.step_fn.lower(built.state, built.teacher_params, device[0], hp[0]).compile()
        analysis = compiled.memory_analysis()
        teacher_bytes = sum(a.nbytes for a in jax.tree.leaves(built.teacher_params)) if teacher is not None else 0
        memory[name] = {
            "argument_MiB": analysis.argument_size_in_bytes / 2**20,
            "temp_MiB": analysis.temp_size_in_bytes / 2**20,
            "teacher_params_MiB": teacher_bytes / 2**20,
            "batch_MiB": sum(a.nbytes for a in jax.tree.leaves(batches[0])) / 2**20,
        }
        holder = {"state": built.state}

        def run(first: int, n: int) -> float:
            state = holder["state"]
            jax.block_until_ready(state)
            begin = time.perf_counter()
            for i in range(first, first + n):
                state = compiled(state, built.teacher_params, device[i], hp[i])
            jax.device_get(state.window)
            holder["state"] = state
            return (time.perf_counter() - begin) / n

        run(0, 1)  # warm-up
        runners[name] = run

    online_batches = [rows(s) for s in seqs]
    runner("online", online_spec, online_batches, teacher_params)
    device_teacher = jax.device_put(teacher_params)
    for k in ks:
        offline_batches = []
        for b in online_batches:
            cache = jax.device_get(cache_of(device_teacher, b["inputs"][0], b["targets"][0], k))
            offline_batches.append({**b, **{key: value[None] for key, value in cache.items()}})
        runner(f"offline k={k}", spec_for(k, 1000), offline_batches, None)

    times = {name: [] for name in runners}
    for r in range(args.rounds):
        for name, run in runners.items():
            times[name].append(run(args.steps * (r + 1) - args.steps + 1, args.steps))
    online = times["online"]
    report = {"cpu": _cpu(), "load_average": os.getloadavg(), "tokens_per_step": ROWS * LENGTH, "sizes": {}}
    for name, seconds in times.items():
        ratios = [o / s for o, s in zip(online, seconds)]
        report["sizes"][name] = {
            "step_ms_median": 1000 * statistics.median(seconds),
            "online_over_this_per_round": [round(x, 2) for x in ratios],
            "speedup_median": round(statistics.median(ratios), 2),
            **{key: round(value, 2) for key, value in memory[name].items()},
        }
        if name.startswith("offline"):
            k = int(name.split("=")[1])
            report["sizes"][name]["cache_bytes_per_token"] = k * 8 + 4 + 4 + 4 + 4 + 4  # + rows: inputs,targets,mask
    print(json.dumps(report, indent=2))


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
