"""Memory of the fused, blocked distillation loss against the dense one, and their values (not a test).

    .venv/bin/python bench/bench_loss.py                       # the default table
    .venv/bin/python bench/bench_loss.py --tokens 16384 --vocabs 128256 --check-tokens 1024 --check-vocab 8192

Memory: loss + gradient w.r.t. the student's hidden states and LM head, compiled with `jax.jit(...).lower(...)
.compile()` on this machine's CPU backend from abstract shapes (nothing is allocated or run), read from XLA's
`memory_analysis()`: temporaries (`temp`), and peak = arguments + outputs + temporaries − aliased bytes. All three
versions take the same arguments (hidden states `[N, D]`, heads `[D, V]`, float32) and return the loss, its metrics
(a few scalars) and the same two gradients:
- plain: the guide's formula on `hidden @ head` logits written with `jax.nn.log_softmax` and differentiated by
  JAX, with the same per-token terms (KL at T and at 1, both cross-entropies, top-1 agreement): a dense loss as
  one would write it, and what this project's dense loss was when the ≤ 1/8 target was set;
- dense: `trainer.loss.distillation_loss` on `hidden @ head` logits of both models (the trainer's path when the
  logits fit: row statistics in blocks of rows, the gradient written over the student's logits; on CPU that pass
  is `trainer.cpu_loss_kernel`'s kernel, `DISTILLCTL_CPU_KERNEL=0` for XLA's);
- fused: `trainer.loss.fused_distillation_loss` with the given block sizes.
Each returns its metrics beside the loss, so none of them can drop a term the others compute.

Values: at the smaller `--check-*` size both are run and every metric's sum, the loss and both gradients are
compared (largest relative difference).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from trainer import loss as L  # noqa: E402

KW = {"alpha": 0.5, "temperature": 2.0}


def cpu_name() -> str:
    """The CPU model and its widest vector extension, from /proc/cpuinfo."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.+)$", text, re.M).group(1).split()) if "flags" in text else set()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model.group(1).strip() if model else 'unknown CPU'} ({vector}, {os.cpu_count()} cores)"


def plain(sh, sw, th, tw, targets, mask):
    """`(total, terms)`: the guide's loss and the five per-token terms' masked sums, by plain autodiff."""
    alpha, temperature = KW["alpha"], KW["temperature"]
    s, t = sh @ sw, jax.lax.stop_gradient(th @ tw)
    ls1, lt1 = jax.nn.log_softmax(s), jax.nn.log_softmax(t)
    lst, ltt = jax.nn.log_softmax(s / temperature), jax.nn.log_softmax(t / temperature)
    kl_t = jnp.sum(jnp.exp(ltt) * (ltt - lst), axis=-1)
    kl_1 = jax.lax.stop_gradient(jnp.sum(jnp.exp(lt1) * (lt1 - ls1), axis=-1))
    ce = -jnp.take_along_axis(ls1, targets[:, None], axis=-1)[:, 0]
    teacher_ce = -jnp.take_along_axis(lt1, targets[:, None], axis=-1)[:, 0]
    agree = (jnp.argmax(s, -1) == jnp.argmax(t, -1)).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(mask), 1.0)
    total = alpha * temperature**2 * jnp.sum(kl_t * mask) / n + (1 - alpha) * jnp.sum(ce * mask) / n
    return total, [jnp.sum(x * mask) for x in (kl_t, kl_1, ce, teacher_ce, agree)]


def losses(block_tokens: int, block_vocab: int):
    def dense(sh, sw, th, tw, targets, mask):
        return L.distillation_loss(sh @ sw, th @ tw, targets, mask, **KW)

    def fused(sh, sw, th, tw, targets, mask):
        return L.fused_distillation_loss(
            sh, sw, th, tw, targets, mask, block_tokens=block_tokens, block_vocab=block_vocab, **KW
        )

    return {"plain": plain, "dense": dense, "fused": fused}


def with_grad(f):
    """`((loss, metrics), (d hidden, d head))`, jitted."""
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


def abstract(n: int, ds: int, dt: int, v: int):
    f32 = jnp.float32
    shapes = ((n, ds), (ds, v), (n, dt), (dt, v))
    return [jax.ShapeDtypeStruct(s, f32) for s in shapes] + [
        jax.ShapeDtypeStruct((n,), jnp.int32),
        jax.ShapeDtypeStruct((n,), f32),
    ]


def memory(f, args) -> tuple[int, int]:
    m = with_grad(f).lower(*args).compile().memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return m.temp_size_in_bytes, peak


def concrete(n: int, ds: int, dt: int, v: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sh = rng.normal(size=(n, ds)).astype(np.float32)
    proj = rng.normal(size=(dt, ds)).astype(np.float32) / np.sqrt(ds)
    sw = (rng.normal(size=(ds, v)) / np.sqrt(ds) * 3).astype(np.float32)
    th = (sh @ proj.T + 0.3 * rng.normal(size=(n, dt))).astype(np.float32)
    tw = (0.7 * proj @ sw + 0.3 * rng.normal(size=(dt, v)) / np.sqrt(dt) * 3).astype(np.float32)
    targets = rng.integers(0, v, size=n).astype(np.int32)
    mask = (rng.random(n) > 0.05).astype(np.float32)
    return [jnp.asarray(a) for a in (sh, sw, th, tw, targets, mask)]


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def gib(b: int) -> str:
    return f"{b / 2**30:.2f}"


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of positive integers (argparse type: a bad one is a usage error, not a traceback)."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--vocabs", type=positive_ints, default="128256,151936,256000", help="Llama 3, Qwen 3, Gemma")
    p.add_argument("--student-dim", type=int, default=2048)
    p.add_argument("--teacher-dim", type=int, default=4096)
    p.add_argument("--block-tokens", type=int, default=1024)
    p.add_argument("--block-vocab", type=int, default=8192)
    p.add_argument("--check-tokens", type=int, default=2048)
    p.add_argument("--check-vocab", type=int, default=32000)
    p.add_argument("--check-dims", type=positive_ints, default="256,512", help="student,teacher width of the run check")
    a = p.parse_args()
    if len(a.check_dims) != 2:
        p.error(f"--check-dims takes two widths (student,teacher), got {len(a.check_dims)}")
    f = losses(a.block_tokens, a.block_vocab)

    print(f"CPU: {cpu_name()}; jax {jax.__version__} ({jax.default_backend()})")
    print(
        f"\nloss + gradient, {a.tokens} tokens, student width {a.student_dim}, teacher width {a.teacher_dim}, float32, "
        f"blocks {a.block_tokens} × {a.block_vocab}; XLA memory analysis (compile only), GiB\n"
    )
    print(
        "| vocab | plain temp | dense temp | fused temp | plain peak | dense peak | fused peak "
        "| fused/plain peak | fused/dense peak |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for v in a.vocabs:
        args = abstract(a.tokens, a.student_dim, a.teacher_dim, v)
        (pt, pp), (dt, dp), (ft, fp) = (memory(f[k], args) for k in ("plain", "dense", "fused"))
        print(
            f"| {v} | {gib(pt)} | {gib(dt)} | {gib(ft)} | {gib(pp)} | {gib(dp)} | {gib(fp)} "
            f"| 1/{pp / fp:.1f} | 1/{dp / fp:.1f} |"
        )

    ds, dt_ = a.check_dims
    args = concrete(a.check_tokens, ds, dt_, a.check_vocab)
    print(f"\nvalues, run at {a.check_tokens} tokens × vocab {a.check_vocab} (widths {ds}/{dt_}):")
    (d_loss, d_metrics), (f_loss, f_metrics) = (jax.jit(f[k])(*args) for k in ("dense", "fused"))
    worst = max((rel(f_metrics[k][0], d_metrics[k][0]), k) for k in d_metrics if float(jnp.abs(d_metrics[k][0])) > 0)
    counts_equal = all(float(f_metrics[k][1]) == float(d_metrics[k][1]) for k in d_metrics)
    d_grads, f_grads = (with_grad(f[k])(*args)[1] for k in ("dense", "fused"))
    print(
        f"  loss: dense {float(d_loss):.7f}, fused {float(f_loss):.7f}, relative difference {rel(f_loss, d_loss):.1e}"
    )
    print(f"  metric sums: largest relative difference {worst[0]:.1e} ({worst[1]}); counts equal: {counts_equal}")
    for name, g, w in zip(("student hidden", "student head"), f_grads, d_grads):
        print(f"  gradient w.r.t. {name}: largest difference / largest value {rel(g, w):.1e}")


if __name__ == "__main__":
    main()
