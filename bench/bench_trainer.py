"""Training-step throughput of this trainer vs tunix's DistillationTrainer + LogitStrategy (not a test).

    .venv/bin/python bench/bench_trainer.py                  # both sizes
    .venv/bin/python bench/bench_trainer.py --sizes mid --steps 10

Both trainers drive the same models (this repository's NNX Transformer, same initial parameters) on the same
pre-generated batches (synthetic language, float32), with AdamW and gradient clipping, timed after their warm-up
steps (compilation excluded) in one process, in interleaved rounds (tunix, ours, tunix, ours, ...) so that load
from other processes hits both; the medians and every round's ratio are printed with the load average. Ours computes
all 13 metrics of `trainer.loss`; LogitStrategy computes 4. Neither step rematerialises by default (`--remat` sets
our student's policy). Tokens/s counts every token of the batch. Needs the `tunix` extra
(`pip install -e '.[train,tunix]'`).

Sizes:
- tiny: teacher tiny-4l, student tiny-2l (width 64, vocab 256), 8 × 64 tokens: overhead-bound.
- mid: teacher mid-4l, student mid-2l (width 256, vocab 32000), 4 × 256 tokens: the vocabulary-sized output layer and
  the loss dominate the step.
- vocab128k (`--sizes vocab128k`): mid's models with vocabulary 128256 (Llama 3), 4 × 256 tokens.
- overhead (`--sizes overhead`): width 16, 2 × 16 tokens: almost no compute, so the ratio is per-step overhead.

Roofline: the `dot_general`s of our compiled step (read from its jaxpr, backward and rematerialised forward
included) are each run alone, jitted, on operands of the same shapes and dtypes, in the same interleaved rounds;
`roofline` = (time those matmuls take alone, as often as the step runs them) / (step time), i.e. the step's
matmul FLOP/s as a fraction of what XLA reaches on the same matmuls with nothing else to do. The CPU is named
from `lscpu` at the top of the output.

Environment: the script runs itself again under the trainer's process environment
(`distillspec.contract.trainer_process_env`: glibc's malloc on transparent huge pages, as the trainer image and
the local backend start the trainer), so ours, tunix and the matmuls alone are all timed as the trainer runs;
`--glibc-defaults` keeps the environment as it is. The header prints GLIBC_TUNABLES.

Our loss's pass over the logits: on CPU the C++ kernel of `trainer/cpu_loss_kernel.py` when it builds here (each
size's line says which pass ran: `cpu kernel` or `xla`); `--xla-loss` times XLA's pass instead (the one TPU and
GPU steps use).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import typing

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MICRO = {"emb_dim": 16, "num_query_heads": 2, "num_kv_heads": 1, "head_dim": 8, "mlp_dim": 32}
SIZES = {
    "tiny": {"teacher": "tiny-4l", "student": "tiny-2l", "rows": 8, "length": 64},
    "mid": {"teacher": "mid-4l", "student": "mid-2l", "rows": 4, "length": 256},
    # mid's models with Llama 3's vocabulary: the output layer and the loss are ~80 % of the step.
    "vocab128k": {
        "teacher": "mid-4l",
        "student": "mid-2l",
        "rows": 4,
        "length": 256,
        "teacher_overrides": {"vocab_size": 128_256},
        "student_overrides": {"vocab_size": 128_256},
    },
    # Not a target: near-zero compute, so the ratio is the two trainers' per-step overhead.
    "overhead": {
        "teacher": "tiny-2l",
        "student": "tiny-2l",
        "rows": 2,
        "length": 16,
        "teacher_overrides": _MICRO,
        "student_overrides": {**_MICRO, "num_layers": 1},
    },
}
LR, ALPHA, TEMPERATURE = 1e-3, 0.5, 2.0


def spec_for(size: dict, steps: int, remat: str = "none"):
    """The distillation spec of one size. `remat` is the student's rematerialisation policy: "none" by default,
    because tunix's step does not rematerialise either (with "full" ours also recomputes the student's forward
    pass in its backward pass: about 4 % of a mid step on AVX2)."""
    from distillspec.specfile import validate_data

    spec, problems = validate_data(
        {
            "name": "bench",
            "student": {"model": size["student"], "remat": remat, **size.get("student_overrides", {})},
            "teacher": {
                "model": size["teacher"],
                "load_parameters_path": "unused",
                **size.get("teacher_overrides", {}),
            },
            "loss": {"alpha": ALPHA, "temperature": TEMPERATURE},
            "batch": {"per_device_batch_size": size["rows"], "max_target_length": size["length"]},
            "steps": steps,
            "optimizer": {"learning_rate": LR, "warmup_fraction": 0.0, "final_lr_fraction": 1.0, "weight_decay": 0.0},
            "output_dir": tempfile.mkdtemp(),
        }
    )
    assert spec is not None, [p.message for p in problems]
    return spec


def batches(spec, count: int) -> list[np.ndarray]:
    """`count` batches of `[rows, length + 1]` token ids from the synthetic language."""
    from trainer.data import make_source

    source = make_source(spec.data, spec.student.shape().vocab_size, spec.batch.max_target_length + 1)
    return [
        source.sequences(i, int(spec.batch.per_device_batch_size), spec.batch.max_target_length + 1)
        for i in range(count)
    ]


def initial_params(spec):
    from trainer.models import ModelConfig, abstract_model, host_init

    out = {}
    for side in ("student", "teacher"):
        config = ModelConfig.from_spec(getattr(spec, side))
        graphdef, abstract = abstract_model(config)
        out[side] = (config, graphdef, host_init(abstract, 1 if side == "teacher" else 0))
    return out


def ours_runner(spec, params, seqs: list[np.ndarray]):
    """`run(start, count) -> seconds` for this trainer's compiled step and host loop (batch to device, scheduled
    values, dispatch; one metrics read at the end, as a log step does)."""
    import jax

    from trainer import cpu_loss_kernel
    from trainer.setup import build
    from trainer.step import hyperparameters

    built = build(spec, teacher_params=params["teacher"][2])
    holder = {"state": built.state}

    def device_batch(seq):
        host = {
            "inputs": seq[None, :, :-1],
            "targets": seq[None, :, 1:],
            "mask": np.ones((1, seq.shape[0], seq.shape[1] - 1), np.float32),
        }
        return built.to_device(host)

    def hp(i):
        return {k: np.float32(v) for k, v in hyperparameters(spec, i, built.lr_schedule).items()}

    with jax.set_mesh(built.mesh):
        step = built.step_fn.lower(holder["state"], built.teacher_params, device_batch(seqs[0]), hp(0)).compile()
        jaxpr = jax.make_jaxpr(built.step_fn)(holder["state"], built.teacher_params, device_batch(seqs[0]), hp(0))

    def run(first: int, count: int) -> float:
        state = holder["state"]
        jax.block_until_ready(state)
        begin = time.perf_counter()
        for i in range(first, first + count):
            state = step(state, built.teacher_params, device_batch(seqs[i]), hp(i))
        jax.device_get(state.window)
        holder["state"] = state
        return time.perf_counter() - begin

    run.matmuls = step_matmuls(jaxpr.jaxpr)
    run.memory = step.memory_analysis()
    run.loss_pass = "cpu kernel" if cpu_loss_kernel.TARGET in step.as_text() else "xla"
    return run


def step_matmuls(jaxpr, counts=None, times: int = 1):
    """The `dot_general`s a step runs: `{(lhs shape, lhs dtype, rhs shape, rhs dtype, dimension numbers,
    preferred dtype): count}`, recursing into sub-jaxprs (a scan's body counted `length` times; every branch of a
    cond, whose branches here hold no matmuls but one). Rematerialised forward passes are counted: this is the
    arithmetic the step does, not the model's."""
    import collections

    counts = collections.Counter() if counts is None else counts
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            key = (lhs.shape, str(lhs.dtype), rhs.shape, str(rhs.dtype), eqn.params["dimension_numbers"])
            counts[key + (eqn.params.get("preferred_element_type"),)] += times
            continue
        inner = times * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    step_matmuls(sub, counts, inner)
    return counts


def dot_flops(key) -> int:
    lhs, _, rhs, _, ((_, rc), (_, rb)), _ = key
    kept = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
    return 2 * int(np.prod(lhs)) * int(np.prod(kept))


# A matmul that takes longer than ~20 ms alone (the LM head's) was timed by one call a round, and on transparent
# huge pages that one call's time depends on whether the kernel has a free huge page for its output at hand: single
# rounds read rooflines from 0.61 to 1.18 (bench/README.md, 2026-12-04 12:00 UTC). Such a matmul is now timed over
# `ALONE_CALLS` calls, each on its own as a step runs it (its output released before the next call, not several
# dispatched at once and alive together: that slowed them by a fifth on huge pages).
ALONE_CALLS = 3


def matmul_runner(matmuls):
    """`run() -> seconds`: every distinct matmul of the step run alone (jitted, on random operands of its shapes
    and dtypes), its mean time over enough calls for ~20 ms (dispatched back to back) or, for one that takes
    longer, over `ALONE_CALLS` calls one at a time, times how often the step runs it."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    jobs = []
    for key, count in matmuls.items():
        lhs, lt, rhs, rt, dims, preferred = key
        f = jax.jit(lambda a, b, dims=dims, preferred=preferred: jax.lax.dot_general(a, b, dims, None, preferred))
        a = jnp.asarray(rng.normal(size=lhs), lt)
        b = jnp.asarray(rng.normal(size=rhs), rt)
        jax.block_until_ready(f(a, b))
        begin = time.perf_counter()
        jax.block_until_ready(f(a, b))
        reps = int(0.02 / max(time.perf_counter() - begin, 1e-6))
        jobs.append((f, a, b, count, reps))

    def back_to_back(f, a, b, reps: int) -> float:
        begin = time.perf_counter()
        for _ in range(reps):
            out = f(a, b)
        jax.block_until_ready(out)
        return (time.perf_counter() - begin) / reps

    def one_at_a_time(f, a, b) -> float:
        total = 0.0
        for _ in range(ALONE_CALLS):
            begin = time.perf_counter()
            jax.block_until_ready(f(a, b))  # the output is released here, before the next call
            total += time.perf_counter() - begin
        return total / ALONE_CALLS

    def run() -> float:
        return sum(
            count * (back_to_back(f, a, b, reps) if reps >= 1 else one_at_a_time(f, a, b))
            for f, a, b, count, reps in jobs
        )

    return run


def tunix_runner(spec, params, seqs: list[np.ndarray]):
    """`run(start, count) -> seconds` for tunix's DistillationTrainer + LogitStrategy."""
    import jax
    import optax
    from flax import nnx
    from tunix.distillation import distillation_trainer
    from tunix.distillation.strategies import LogitStrategy
    from tunix.sft import peft_trainer

    vocab = spec.student.shape().vocab_size
    (_, s_graph, s_params), (_, t_graph, t_params) = params["student"], params["teacher"]
    student = nnx.merge(s_graph, jax.tree.map(jax.numpy.asarray, s_params))
    teacher = nnx.merge(t_graph, jax.tree.map(jax.numpy.asarray, t_params))

    def forward(model, input_tokens, input_mask):
        return model(input_tokens[:, :-1])

    def labels(input_tokens, input_mask):
        return jax.nn.one_hot(input_tokens[:, 1:], vocab) * input_mask[:, 1:, None]

    strategy = LogitStrategy(forward, forward, labels, temperature=TEMPERATURE, alpha=ALPHA)
    optimizer = optax.chain(
        optax.clip_by_global_norm(spec.optimizer.grad_clip_norm),
        optax.adamw(LR, b1=spec.optimizer.b1, b2=spec.optimizer.b2, weight_decay=0.0),
    )
    config = distillation_trainer.TrainingConfig(eval_every_n_steps=10**9, max_steps=len(seqs), pbar_description=None)
    trainer = distillation_trainer.DistillationTrainer(student, teacher, strategy, optimizer, config)
    # Driven segment by segment: no close() after each train() call, and no skipping of already-seen items.
    trainer.is_managed_externally = True
    inputs = [
        peft_trainer.TrainingInput(input_tokens=jax.numpy.asarray(s), input_mask=jax.numpy.ones(s.shape)) for s in seqs
    ]

    def run(first: int, count: int) -> float:
        assert trainer.train_steps == first, (trainer.train_steps, first)
        jax.block_until_ready(nnx.state(trainer.model))
        begin = time.perf_counter()
        trainer.train(inputs[first : first + count])
        jax.block_until_ready(nnx.state(trainer.model))
        elapsed = time.perf_counter() - begin
        if trainer.train_steps != first + count:
            raise RuntimeError(f"tunix trained to step {trainer.train_steps}, expected {first + count}")
        return elapsed

    return run


def cpu_name() -> str:
    """`lscpu`'s model name and widest vector extension."""
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{fields.get('Model name', 'unknown CPU').strip()} ({vector})"


def main() -> None:
    from distillspec.config import Remat

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,mid")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (default: 30 tiny, 4 mid)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--remat",
        choices=typing.get_args(Remat),
        default="none",
        help="the student's remat policy in our step (default none: tunix's step does not rematerialise)",
    )
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="run in this environment as it is, not the trainer's (glibc's malloc on huge pages)",
    )
    parser.add_argument(
        "--xla-loss",
        action="store_true",
        help="our loss's pass over the logits by XLA, not the CPU kernel (trainer/cpu_loss_kernel.py)",
    )
    args = parser.parse_args()
    if args.xla_loss:
        os.environ["DISTILLCTL_CPU_KERNEL"] = "0"
    if not args.glibc_defaults:
        from distillspec.contract import trainer_process_env

        env = trainer_process_env(os.environ)
        if env != dict(os.environ):  # glibc reads its tunables at start-up only
            os.execve(sys.executable, [sys.executable, *sys.argv], env)
    os.environ.setdefault("DISTILLCTL_COMPILE_CACHE", "off")
    tunables = os.environ.get("GLIBC_TUNABLES", "(unset)")
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; GLIBC_TUNABLES {tunables}",
        flush=True,
    )
    results = []
    for name in args.sizes.split(","):
        size = SIZES[name]
        steps = args.steps or {"tiny": 30, "mid": 4, "vocab128k": 2, "overhead": 100}[name]
        total = args.warmup + args.rounds * steps
        spec = spec_for(size, total, args.remat)
        seqs = batches(spec, total)
        params = initial_params(spec)
        runners = {"tunix": tunix_runner(spec, params, seqs), "ours": ours_runner(spec, params, seqs)}
        for runner in runners.values():
            runner(0, args.warmup)
        matmuls = runners["ours"].matmuls
        alone = matmul_runner(matmuls)
        times: dict[str, list[float]] = {"tunix": [], "ours": [], "matmuls": []}
        for r in range(args.rounds):  # interleaved, so load changes on a shared machine hit both sides
            first = args.warmup + r * steps
            for side in ("tunix", "ours"):
                times[side].append(runners[side](first, steps))
            times["matmuls"].append(alone() * steps)
        tokens = steps * size["rows"] * size["length"]
        ratios = sorted(t / o for t, o in zip(times["tunix"], times["ours"]))
        ours, tunix = tokens / statistics.median(times["ours"]), tokens / statistics.median(times["tunix"])
        flops = steps * sum(dot_flops(k) * c for k, c in matmuls.items())  # per round
        roofline = sorted(m / o for m, o in zip(times["matmuls"], times["ours"]))
        row = {
            "size": name,
            "tokens_per_step": size["rows"] * size["length"],
            "steps_per_round": steps,
            "rounds": args.rounds,
            "ours_tokens_per_sec": round(ours, 1),
            "tunix_tokens_per_sec": round(tunix, 1),
            "ratio_median": round(statistics.median(ratios), 2),
            "ratio_per_round": [round(x, 2) for x in ratios],
            "step_matmul_gflop": round(flops / steps / 1e9, 2),
            "step_gflops": round(flops / statistics.median(times["ours"]) / 1e9, 1),
            "matmuls_alone_gflops": round(flops / statistics.median(times["matmuls"]) / 1e9, 1),
            "roofline_median": round(statistics.median(roofline), 2),
            "roofline_per_round": [round(x, 2) for x in roofline],
            "load_average_1min": round(os.getloadavg()[0], 2),
            "glibc_tunables": tunables,
            "loss_pass": runners["ours"].loss_pass,
        }
        results.append(row)
        print(
            f"{name}: ours {ours:,.0f} tok/s, tunix {tunix:,.0f} tok/s (medians), ratio {row['ratio_median']}x "
            f"(per round {row['ratio_per_round']}); step {row['step_gflops']} GFLOP/s of matmuls vs "
            f"{row['matmuls_alone_gflops']} alone: roofline {row['roofline_median']} (per round "
            f"{row['roofline_per_round']}), load {row['load_average_1min']}; our loss's pass: {row['loss_pass']}",
            flush=True,
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
