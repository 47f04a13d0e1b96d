"""The dense loss's pass over the logits on CPU: the C++ kernel against XLA's pass (not a test).

    .venv/bin/python bench/bench_loss_pass.py                  # 4 × 256 tokens at vocab 32000 and 128256
    .venv/bin/python bench/bench_loss_pass.py --shapes 1x1024x32000 --rounds 9

`trainer.loss.logit_terms` with its objective and gradient w.r.t. the student's logits (what a step's loss costs
once the logits exist), compiled twice in one process — with `trainer/cpu_loss_kernel.py`'s kernel and with
`DISTILLCTL_CPU_KERNEL=0` (XLA's pass, the one TPU and GPU steps use) — and timed in interleaved rounds (3 calls
each) on the same random float32 logits; prints each side's median, the ratio (XLA / kernel) per round and the
largest relative differences of the terms and the gradient. The kernel's side also copies the student's logits
each call (it writes the gradient over its input, and here that is the caller's array), so the ratio understates
its gain in a step, where the logits are the LM head's fresh output and no copy is made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np
from bench_trainer import cpu_name

from trainer import cpu_loss_kernel, loss

TEMPERATURE, ALPHA = 2.0, 0.5


def compiled(s, t, targets, use_kernel: bool):
    os.environ[cpu_loss_kernel.ENV_SWITCH] = "1" if use_kernel else "0"
    n = targets.size

    def fn(s, t):
        def objective(s):
            terms, value = loss.logit_terms(
                s,
                t,
                targets,
                TEMPERATURE,
                kl_weight=ALPHA * TEMPERATURE**2 / n,
                ce_weight=(1 - ALPHA) / n,
            )
            return value, terms

        return jax.value_and_grad(objective, has_aux=True)(s)

    exe = jax.jit(fn).lower(s, t).compile()
    if (cpu_loss_kernel.TARGET in exe.as_text()) != use_kernel:
        raise SystemExit(f"the {'kernel' if use_kernel else 'XLA'} pass was not compiled in (see the warning above)")
    return exe


def seconds(fn, args, calls: int = 3) -> float:
    jax.block_until_ready(fn(*args))
    begin = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - begin) / calls


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4x256x32000,4x256x128256", help="BxTxV, comma-separated")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; GLIBC_TUNABLES {os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    for text in args.shapes.split(","):
        b, t_len, v = (int(x) for x in text.split("x"))
        rng = np.random.default_rng(0)
        s, t = (jnp.asarray(3.0 * rng.standard_normal((b, t_len, v)), jnp.float32) for _ in range(2))
        targets = jnp.asarray(rng.integers(0, v, (b, t_len)), jnp.int32)
        kernel, xla = compiled(s, t, targets, True), compiled(s, t, targets, False)
        (value_k, terms_k), grad_k = kernel(s, t)
        (value_x, terms_x), grad_x = xla(s, t)
        diffs = [max_rel(a, b) for a, b in zip((value_k, *terms_k, grad_k), (value_x, *terms_x, grad_x))]
        times = {"kernel": [], "xla": []}
        for _ in range(args.rounds):
            times["xla"].append(seconds(xla, (s, t)))
            times["kernel"].append(seconds(kernel, (s, t)))
        ratios = sorted(x / k for x, k in zip(times["xla"], times["kernel"]))
        kernel_ms, xla_ms = (1e3 * statistics.median(times[k]) for k in ("kernel", "xla"))
        print(
            f"{text}: kernel {kernel_ms:.1f} ms, XLA {xla_ms:.1f} ms (medians); XLA / kernel"
            f" {statistics.median(ratios):.2f}x (per round {[round(r, 2) for r in ratios]});"
            f" largest relative difference: objective {diffs[0]:.1e}, terms {max(diffs[1:6]):.1e}, gradient"
            f" {diffs[6]:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
