"""This trainer's distillation step on one accelerator: step time, tokens/s and utilisation (not a test).

    bench/device.sh                                      # on a lent GPU machine (installs what it lacks, then this)
    .venv/bin/python bench/bench_accelerator.py --size tiny   # here, on CPU: checks that the script runs

Sizes:
- 1b: teacher qwen3-1.7b (1.72 B parameters) → student qwen3-0.6b (596 M), one vocabulary (151936), 8 × 2048
  tokens a step; bf16 compute, the student's float32 master weights and AdamW state, the teacher's weights in
  bf16; per-layer remat (`full`) as a real run has it. Random weights (drawn on the host, as the trainer draws a
  fresh student): speed does not depend on what the weights hold.
- tiny: tiny-4l → tiny-2l, 8 × 64 tokens, float32: a quick check of the script on CPU.

The step is the trainer's own (`trainer.setup.build`: the same model, loss, optimizer and compiled step a run
uses), driven by the bench's loop (batch to device, scheduled values, dispatch) with one wait at the end of each
round. `--loss` forces the dense loss (both models' `[tokens, vocab]` float32 logits) or the fused one (from hidden
states, block by block); `auto` takes what the trainer would.

Figures, per step (medians over rounds):
- model TFLOP = tokens × (3·(2·P_s + A_s) + 2·P_t + A_t), the plan's count (`orchestrator/core/cost.py`): P = the
  parameters a token is multiplied by (`ModelShape.matmul_param_count`), A = attention's forward FLOPs per token
  against its keys, causal (`ModelShape.attention_flops_per_token`; MaxText halves them for the causal mask too);
- step TFLOP = the matmuls the compiled step runs (from its jaxpr; remat's recomputed forward included);
- MFU = model TFLOP/s ÷ the device's published dense bf16 peak; HFU the same with the step's TFLOP;
  `matmul_peak` = an 8192³ bf16 matmul alone, so MFU can also be read against what this device reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIZES = {
    "1b": {
        "teacher": "qwen3-1.7b",
        "student": "qwen3-0.6b",
        "rows": 8,
        "length": 2048,
        "dtype": "bfloat16",
    },
    "tiny": {"teacher": "tiny-4l", "student": "tiny-2l", "rows": 8, "length": 64, "dtype": "float32"},
}
LR, ALPHA, TEMPERATURE = 1e-4, 0.5, 2.0
TRAINERS_CHOICE = None  # trainer.setup.fused_loss_wanted as the trainer has it (`--loss` replaces it per loss)

# Published dense bf16 peaks (no sparsity), TFLOP/s, by the start of `jax.Device.device_kind`.
PEAK_BF16_TFLOPS = {
    "NVIDIA H100": 989.4,  # SXM; the PCIe card's is 756
    "NVIDIA H200": 989.4,
    "NVIDIA A100": 312.0,
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v6 lite": 918.0,
}


def spec_for(size: dict, steps: int, remat: str):
    from distillspec.specfile import validate_data

    compute = {"dtype": size["dtype"]}
    spec, problems = validate_data(
        {
            "name": "bench-accelerator",
            "student": {"model": size["student"], "remat": remat, "weight_dtype": "float32", **compute},
            "teacher": {
                "model": size["teacher"],
                "load_parameters_path": "unused",
                "weight_dtype": size["dtype"],
                **compute,
            },
            "loss": {"alpha": ALPHA, "temperature": TEMPERATURE},
            "batch": {"per_device_batch_size": size["rows"], "max_target_length": size["length"]},
            "steps": steps,
            "optimizer": {"learning_rate": LR, "warmup_fraction": 0.0, "final_lr_fraction": 1.0},
            "output_dir": tempfile.mkdtemp(),
        }
    )
    if spec is None:
        raise SystemExit("bench spec refused: " + "; ".join(p.message for p in problems))
    return spec


def model_flops_per_token(spec) -> float:
    from orchestrator.core.cost import flops_per_token

    return float(flops_per_token(spec))


def device_peak(kind: str) -> float | None:
    for prefix, tflops in PEAK_BF16_TFLOPS.items():
        if kind.startswith(prefix):
            return tflops * 1e12
    return None


def matmul_peak(dtype: str) -> float:
    """FLOP/s of a jitted 8192³ matmul in `dtype` alone (1024³ on CPU), the best of 5 timings of 10 calls."""
    import jax
    import jax.numpy as jnp

    n = 8192 if jax.default_backend() != "cpu" else 1024
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, a))
    best = float("inf")
    for _ in range(5):
        begin = time.perf_counter()
        for _ in range(10):
            out = f(a, a)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - begin) / 10)
    return 2 * n**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument(
        "--loss", default="auto", help="comma-separated, each timed in turn: auto (the trainer's choice), dense, fused"
    )
    parser.add_argument("--remat", choices=("full", "dots", "none"), default="full")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the figures (a list, one per loss) to this file")
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="build and compile the step, print XLA's memory analysis and stop (a size's check on CPU)",
    )
    args = parser.parse_args()
    losses = args.loss.split(",")
    if unknown := set(losses) - {"auto", "dense", "fused"}:
        parser.error(f"--loss takes auto, dense and fused, not {', '.join(sorted(unknown))}")

    import jax
    from bench_trainer import batches, initial_params

    from trainer import setup

    global TRAINERS_CHOICE
    TRAINERS_CHOICE = setup.fused_loss_wanted

    device = jax.devices()[0]
    versions = {m: __import__(m).__version__ for m in ("jax", "jaxlib", "flax", "optax", "numpy")}
    print(
        f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)); Python "
        f"{platform.python_version()}; {versions}",
        flush=True,
    )
    size = SIZES[args.size]
    total = args.warmup + args.rounds * args.steps
    spec = spec_for(size, total, args.remat)
    seqs = batches(spec, total)
    started = time.perf_counter()
    params = initial_params(spec)
    print(f"weights drawn on the host in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for loss in losses:
        try:
            rows.append(measure(args, spec, params, seqs, loss, device, versions))
        except Exception as e:  # noqa: BLE001 - one loss that does not fit must not lose the others' figures
            print(f"{args.size} ({loss} loss): failed: {type(e).__name__}: {str(e)[:2000]}", flush=True)
            rows.append({"size": args.size, "loss": loss, "error": f"{type(e).__name__}: {str(e)[:2000]}"})
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=2)
    print(json.dumps(rows, indent=2))


def measure(args, spec, params, seqs, loss: str, device, versions: dict) -> dict:
    """Build and compile the trainer's step with `loss`, then time it (or, with --compile-only, report XLA's memory
    analysis of it)."""
    import gc

    import jax
    from bench_trainer import dot_flops, ours_runner

    from trainer import setup

    setup.fused_loss_wanted = TRAINERS_CHOICE if loss == "auto" else (lambda *a, **k: loss == "fused")
    gc.collect()
    size = SIZES[args.size]
    # one device: its micro-batch is the whole batch
    loss_name = (
        "fused" if setup.fused_loss_wanted(size["rows"] * size["length"], spec.student.shape().vocab_size) else "dense"
    )
    started = time.perf_counter()
    run = ours_runner(spec, params, seqs)
    compile_seconds = time.perf_counter() - started
    memory = run.memory
    analysis = {
        "argument_gib": round(memory.argument_size_in_bytes / 2**30, 2),
        "temp_gib": round(memory.temp_size_in_bytes / 2**30, 2),
        "output_gib": round(memory.output_size_in_bytes / 2**30, 2),
    }
    print(
        f"{args.size} ({loss} loss → {loss_name}, pass {run.loss_pass}): built and compiled in "
        f"{compile_seconds:.0f} s; XLA's memory analysis: {analysis}",
        flush=True,
    )
    base = {"size": args.size, "device": device.device_kind, "loss": loss, "loss_compiled": loss_name}
    if args.compile_only:
        return {**base, **analysis, "build_and_compile_seconds": round(compile_seconds, 1)}
    run(0, args.warmup)
    seconds = [run(args.warmup + r * args.steps, args.steps) / args.steps for r in range(args.rounds)]
    step = statistics.median(seconds)
    tokens = size["rows"] * size["length"]
    model_flops = tokens * model_flops_per_token(spec)
    step_flops = float(sum(dot_flops(k) * c for k, c in run.matmuls.items()))
    peak = device_peak(device.device_kind)
    reached = matmul_peak(size["dtype"])
    stats = device.memory_stats() or {}
    row = {
        **base,
        "remat": args.remat,
        "tokens_per_step": tokens,
        "step_ms_median": round(step * 1e3, 2),
        "step_ms_per_round": [round(s * 1e3, 2) for s in sorted(seconds)],
        "tokens_per_sec": round(tokens / step, 1),
        "model_gflop_per_step": round(model_flops / 1e9, 2),
        "step_gflop_per_step": round(step_flops / 1e9, 2),
        "model_tflops": round(model_flops / step / 1e12, 2),
        "mfu": round(model_flops / step / peak, 3) if peak else None,
        "hfu": round(step_flops / step / peak, 3) if peak else None,
        "peak_tflops": round(peak / 1e12, 1) if peak else None,
        "matmul_peak_tflops": round(reached / 1e12, 1),
        "mfu_of_matmul_peak": round(model_flops / step / reached, 3),
        "peak_memory_gib": round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None,
        **analysis,
        "build_and_compile_seconds": round(compile_seconds, 1),
        "versions": versions,
    }
    print(
        f"{args.size} ({loss} loss, remat {args.remat}): {row['step_ms_median']} ms a step "
        f"(rounds {row['step_ms_per_round']}), {row['tokens_per_sec']:,} tokens/s; "
        f"{row['model_tflops']} model TFLOP/s: MFU {row['mfu']} (HFU {row['hfu']}) of {row['peak_tflops']} "
        f"published, {row['mfu_of_matmul_peak']} of the {row['matmul_peak_tflops']} a matmul alone reaches; "
        f"peak memory {row['peak_memory_gib']} GiB",
        flush=True,
    )
    del run
    jax.clear_caches()
    return row


if __name__ == "__main__":
    main()
