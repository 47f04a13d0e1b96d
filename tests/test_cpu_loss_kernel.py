"""trainer.cpu_loss_kernel: the dense loss's pass over the logits as a C++ kernel on CPU.

It is built here with the machine's g++ (as on any CPU host with a compiler), compared with XLA's pass (the one
TPU and GPU steps use) on awkward shapes and inputs, checked to be the one a CPU step calls and absent from a step
lowered for TPU, to keep batch-sharded logits local on 8 simulated devices, and to give way to XLA's pass, with a
warning that says why, when no compiler works.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp

from tests.trainer_support import REPO, python_env
from trainer import cpu_loss_kernel as K
from trainer import loss as L


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setenv(K.ENV_SWITCH, "1")
    assert K.usable(), "the kernel did not build (see the warning logged above)"


def both_passes(monkeypatch, fn, *args):
    """`jax.jit(fn)(*args)` traced with the kernel and with XLA's pass; (kernel's, XLA's) results and HLO texts."""
    out = []
    for switch in ("1", "0"):
        monkeypatch.setenv(K.ENV_SWITCH, switch)
        compiled = jax.jit(lambda *a: fn(*a)).lower(*args).compile()  # a new function: traced afresh
        out.append((compiled(*args), compiled.as_text()))
    (kernel, kernel_hlo), (xla, xla_hlo) = out
    assert K.TARGET in kernel_hlo and K.TARGET not in xla_hlo
    return kernel, xla


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def loss_and_grad(t, y, temperature, kl_weight, ce_weight):
    def objective(s, temperature):
        terms, value = L.logit_terms(s, t, y, temperature, kl_weight=kl_weight, ce_weight=ce_weight)
        return value, terms

    return jax.value_and_grad(objective, has_aux=True)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0, 4.0, 1.5, 0.5])
@pytest.mark.parametrize("shape", [(3, 7, 37), (1, 1, 5), (2, 300, 1030)])
def test_kernel_equals_xla_pass(kernel, monkeypatch, shape, temperature):
    """Terms, objective and gradient equal XLA's pass's: odd row counts, a vocabulary that is no multiple of the
    vector width or of the kernel's summing chunk, integer temperatures (the shared exponentials) and others,
    given as a number or traced (a schedule)."""
    rng = np.random.default_rng(0)
    s, t = (jnp.asarray(4.0 * rng.standard_normal(shape), jnp.float32) for _ in range(2))
    y = jnp.asarray(rng.integers(0, shape[-1], shape[:-1]), jnp.int32)
    w = jnp.asarray(rng.random(shape[:-1]), jnp.float32)
    run = loss_and_grad(t, y, temperature, w, 1.0 - w)
    assert_trees_close(*both_passes(monkeypatch, lambda s: run(s, temperature), s))
    assert_trees_close(*both_passes(monkeypatch, run, s, jnp.float32(temperature)))


def test_padding_rows_get_no_gradient_and_leak_no_nan(kernel, monkeypatch):
    """Rows with both weights 0 (padding) get a zero gradient even when their logits are NaN or inf, as XLA's
    pass selects them away; the objective stays finite; targets out of range are clipped as `take_along_axis`
    clips them."""
    rng = np.random.default_rng(1)
    s = np.asarray(3.0 * rng.standard_normal((2, 9, 40)), np.float32)
    t = np.asarray(3.0 * rng.standard_normal((2, 9, 40)), np.float32)
    s[0, 3], t[1, 8, 5] = np.nan, np.inf
    w = np.ones((2, 9), np.float32)
    w[0, 3] = w[1, 8] = 0.0
    y = jnp.asarray(rng.integers(-3, 45, (2, 9)), jnp.int32)
    run = loss_and_grad(jnp.asarray(t), y, 2.0, jnp.asarray(w), jnp.asarray(w))
    monkeypatch.setenv(K.ENV_SWITCH, "1")
    (value, _), grad = jax.jit(lambda s: run(s, 2.0))(jnp.asarray(s))
    assert np.isfinite(float(value))
    assert not np.any(np.asarray(grad)[0, 3]) and not np.any(np.asarray(grad)[1, 8])
    assert np.all(np.isfinite(np.asarray(grad)))
    s[0, 3], t[1, 8, 5] = 0.0, 0.0  # finite everywhere: then both passes agree on every row
    run = loss_and_grad(jnp.asarray(t), y, 2.0, jnp.asarray(w), jnp.asarray(w))
    assert_trees_close(*both_passes(monkeypatch, lambda s: run(s, 2.0), jnp.asarray(s)))


def test_vmapped_loss_equals_the_loop(kernel):
    rng = np.random.default_rng(2)
    s, t = (jnp.asarray(rng.standard_normal((3, 4, 6, 33)), jnp.float32) for _ in range(2))
    y = jnp.asarray(rng.integers(0, 33, (3, 4, 6)), jnp.int32)

    def one(s, t, y):
        return L.logit_terms(s, t, y, 2.0, kl_weight=0.5, ce_weight=0.5)

    batched = jax.jit(jax.vmap(one))(s, t, y)
    assert_trees_close(batched, [jnp.stack(x) for x in zip(*(jax.tree.leaves(one(*a)) for a in zip(s, t, y)))])


def test_the_step_lowered_for_tpu_does_not_contain_it(kernel):
    """`jax.lax.platform_dependent`: lowered for CPU the loss calls the kernel, lowered for TPU (from this CPU
    machine) it is XLA's pass, so the trainer's TPU steps never depend on it."""
    rng = np.random.default_rng(3)
    s, t = (jnp.asarray(rng.standard_normal((2, 8, 64)), jnp.float32) for _ in range(2))
    y = jnp.zeros((2, 8), jnp.int32)
    step = jax.jit(jax.grad(lambda s: L.logit_terms(s, t, y, 2.0)[1]))
    assert K.TARGET in step.trace(s).lower(lowering_platforms=("cpu",)).as_text()
    assert K.TARGET not in step.trace(s).lower(lowering_platforms=("tpu",)).as_text()


# --- when it cannot be built -------------------------------------------------------------------------------


def test_build_says_why_it_cannot(tmp_path, monkeypatch):
    monkeypatch.setenv(K.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(K.KernelUnavailable, match="no-such-compiler did not run"):
        K.build()
    monkeypatch.setenv("CXX", "false")  # runs, fails
    with pytest.raises(K.KernelUnavailable, match=r"false failed on logit_rows\.cc \(exit 1\)"):
        K.build()
    assert not list((tmp_path / "cache").iterdir()), "a failed build left a file in the cache"
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(K.ENV_CACHE, str(tmp_path / "file" / "cache"))
    with pytest.raises(K.KernelUnavailable, match=f"cannot write the kernel cache.*set {K.ENV_CACHE}"):
        K.build()


FALLBACK = """
import json, logging, numpy as np, jax, jax.numpy as jnp
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
from trainer import cpu_loss_kernel as K, loss as L
s, t = (jnp.asarray(np.random.default_rng(i).standard_normal((2, 5, 30)), jnp.float32) for i in range(2))
y = jnp.zeros((2, 5), jnp.int32)
f = jax.jit(jax.value_and_grad(lambda s: L.logit_terms(s, t, y, 2.0)[1]))
value, grad = f(s)
print(json.dumps({"usable": K.usable(), "custom_call": K.TARGET in f.lower(s).compile().as_text(),
                  "value": float(value), "grad": float(jnp.sum(jnp.abs(grad)))}))
"""


def test_without_a_compiler_the_loss_takes_xlas_pass_and_says_why(tmp_path):
    runs = {}
    for name, extra in {
        "no compiler": {"CXX": str(tmp_path / "missing-g++"), K.ENV_CACHE: str(tmp_path / "empty")},
        "switched off": {K.ENV_SWITCH: "0"},
        "kernel": {},
    }.items():
        env = python_env(PYTHONPATH=str(REPO), **extra)
        done = subprocess.run(
            [sys.executable, "-c", FALLBACK],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = (json.loads(done.stdout.strip().splitlines()[-1]), done.stderr)
    (broken, warned), (off, _), (built, _) = runs["no compiler"], runs["switched off"], runs["kernel"]
    assert (broken["usable"], broken["custom_call"]) == (False, False)
    assert "trainer.cpu_loss_kernel: the loss runs on XLA's path on CPU" in warned and "missing-g++" in warned
    assert off["custom_call"] is False and built["custom_call"] is True
    for other in (off, built):
        np.testing.assert_allclose(broken["value"], other["value"], rtol=1e-6)
        np.testing.assert_allclose(broken["grad"], other["grad"], rtol=1e-5)


# --- sharded ---------------------------------------------------------------------------------------------

SHARDED = """
import json, re, numpy as np, jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from trainer import cpu_loss_kernel as K, loss as L
B, T, V = 16, 32, 512
rng = np.random.default_rng(0)
s, t = (rng.standard_normal((B, T, V)).astype(np.float32) for _ in range(2))
y = rng.integers(0, V, (B, T)).astype(np.int32)
def f(s, t, y):
    return jax.value_and_grad(lambda s: L.logit_terms(s, t, y, 2.0, kl_weight=0.5, ce_weight=0.5)[1])(s)
want = jax.jit(f)(s, t, y)
out = {}
for name, shape in {"data": (8, 1, 1), "data+fsdp": (2, 4, 1), "tensor": (4, 1, 2)}.items():
    mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    args = [jax.device_put(s, rows), jax.device_put(t, rows), jax.device_put(y, rows)]
    with jax.set_mesh(mesh):
        compiled = jax.jit(f).lower(*args).compile()
    value, grad = compiled(*args)
    text = compiled.as_text()
    out[name] = {
        "custom_call": K.TARGET in text,
        "gathers": re.findall(r"\\[([\\d,]*)\\][^ ]* all-gather\\(", text),
        "value_rel_diff": abs(float(value) - float(want[0])) / abs(float(want[0])),
        "grad_diff": float(jnp.max(jnp.abs(grad - want[1]))),
        "grad_spec": str(grad.sharding.spec),
    }
print(json.dumps(out))
"""


def test_batch_sharded_logits_stay_on_their_devices():
    """On 8 simulated devices with logits split over `data` (and `fsdp`), each device's kernel takes its own rows:
    no all-gather, the gradient keeps the batch sharding, values equal one device's. With `tensor` > 1 (logits
    may be split over the vocabulary) the loss keeps XLA's pass."""
    env = python_env(XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", SHARDED], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("data", "data+fsdp"):
        assert out[name]["custom_call"] and not out[name]["gathers"], out[name]
        assert "data" in out[name]["grad_spec"], out[name]
    assert not out["tensor"]["custom_call"]
    for name, seen in out.items():
        assert seen["value_rel_diff"] < 1e-6 and seen["grad_diff"] < 1e-6, (name, seen)
