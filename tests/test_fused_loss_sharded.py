"""The fused loss under batch (data/FSDP) sharding on 8 simulated CPU devices: the compiled loss + gradient holds
no all-gather of logits or of per-token arrays across the batch axes, its temporaries do not grow with the global
token count, and it computes what one device computes.

JAX reads `--xla_force_host_platform_device_count` once, at start-up, so the measurements run in a subprocess: this
file run as a script (`python tests/test_fused_loss_sharded.py`) prints them as JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from trainer_support import REPO, python_env

pytest.importorskip("jax")
pytestmark = pytest.mark.slow

DS, DT, V = 48, 64, 1000
LOCAL = 37  # tokens per device on the 8-way batch meshes: no head dimension is a multiple of it
# Mixed axes, and FSDP alone (its weights are gathered for each matmul); pure data parallelism is the mixed mesh's
# data axis already (a third mesh would cost a third more compiles).
MESHES = {"dp2_fsdp2_tp2": (2, 2, 2), "fsdp8": (1, 8, 1)}
BLOCKS = {"block_tokens": 16, "block_vocab": 256}


def probe() -> dict:
    """Run inside the 8-device process: per mesh, the all-gathers of the compiled fused loss + gradient (and of a
    canary that must gather), the fused version's temporaries at two global token counts, and its values against
    one unsharded device."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from distillspec.config import MeshSpec
    from trainer import loss as L
    from trainer.sharding import make_mesh

    def problem(n, seed=0):
        rng = np.random.default_rng(seed)

        def f(*shape, s=1.0):
            return jnp.asarray(rng.normal(size=shape) * s, jnp.float32)

        targets, mask = jnp.asarray(rng.integers(0, V, n)), jnp.asarray((rng.random(n) > 0.1).astype(np.float32))
        return f(n, DS), f(DS, V, s=0.3), f(n, DT), f(DT, V, s=0.3), targets, mask

    def fused(sh, sw, th, tw, targets, mask):
        return L.fused_distillation_loss(sh, sw, th, tw, targets, mask, alpha=0.5, temperature=2.0, **BLOCKS)[0]

    def gathered(sh, sw, th, tw, targets, mask):  # the check's canary: logits constrained to be replicated
        s, t = (jax.lax.with_sharding_constraint(h @ w, P()) for h, w in ((sh, sw), (th, tw)))
        return L.distillation_loss(s, t, targets, mask, alpha=0.5, temperature=2.0)[0]

    def place(mesh, args):
        rows = ("data", "fsdp")
        specs = (P(rows, None), P("fsdp", "tensor"), P(rows, None), P("fsdp", "tensor"), P(rows), P(rows))
        return [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]

    def compiled(f, args):
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile()

    def gathers(c):
        return [
            [int(d) for d in dims.split(",") if d]
            for dims in re.findall(r"\[([\d,]*)\][^ ]* all-gather\(", c.as_text())
        ]

    out = {"devices": len(jax.devices()), "meshes": {}}
    n = 8 * LOCAL
    reference_args = problem(n)
    want_loss, want_grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(*reference_args)
    out["unsharded_temp_local"] = compiled(fused, problem(LOCAL)).memory_analysis().temp_size_in_bytes
    for name, (data, fsdp, tensor) in MESHES.items():
        mesh = make_mesh(MeshSpec(data=data, fsdp=fsdp, tensor=tensor))
        with jax.set_mesh(mesh):
            args = place(mesh, reference_args)
            c_fused, c_canary = compiled(fused, args), compiled(gathered, args)
            loss, grads = c_fused(*args)
            temps = [c_fused.memory_analysis().temp_size_in_bytes]
            temps.append(compiled(fused, place(mesh, problem(4 * n))).memory_analysis().temp_size_in_bytes)
        out["meshes"][name] = {
            "batch_devices": data * fsdp,
            "fused_gathers": gathers(c_fused),
            "canary_gathers": gathers(c_canary),
            "fused_temp_bytes": temps,  # at n and 4n global tokens
            "loss": float(loss),
            "want_loss": float(want_loss),
            "grad_max_abs_diff": [float(jnp.max(jnp.abs(g - w))) for g, w in zip(grads, want_grads)],
            "grad_max_abs": [float(jnp.max(jnp.abs(w))) for w in want_grads],
        }
    return out


@pytest.fixture(scope="module")
def measured():
    env = python_env(XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def token_dims(batch_devices: int) -> set[int]:
    """Sizes a token dimension has once gathered over 2 or more of the batch devices (global n = 8·LOCAL)."""
    local = 8 * LOCAL // batch_devices
    return {local * k for k in range(2, batch_devices + 1)} | {4 * local * k for k in range(2, batch_devices + 1)}


def test_eight_devices_are_simulated(measured):
    assert measured["devices"] == 8


@pytest.mark.parametrize("mesh", MESHES)
def test_no_per_token_or_logit_array_is_gathered_across_the_batch(measured, mesh):
    m = measured["meshes"][mesh]
    gathered = token_dims(m["batch_devices"])
    # the check would see a gathered token axis: replicated logits are all-gathered
    assert any(set(shape) & gathered for shape in m["canary_gathers"]), m["canary_gathers"]
    for shape in m["fused_gathers"]:
        assert not set(shape) & gathered, f"fused loss all-gathers {shape} over the batch in {mesh}"
        assert V in shape or V // 2 in shape, f"an all-gather {shape} that is not of a head"


@pytest.mark.parametrize("mesh", MESHES)
def test_temporaries_do_not_grow_with_the_global_token_count(measured, mesh):
    at_n, at_4n = measured["meshes"][mesh]["fused_temp_bytes"]
    local = 8 * LOCAL // measured["meshes"][mesh]["batch_devices"]  # tokens per device at n; 4·local at 4n
    per_token = 4 * (DS + DT + 16)  # a float32 row of each model's (padded) hidden states and a few [tokens] values
    assert at_4n - at_n <= 2 * (4 * local - local) * per_token, (at_n, at_4n)
    # and the sharded run holds no more than one device running its shard alone, plus the gathered heads and the
    # head gradient (f32) that FSDP holds for any matmul
    heads = 4 * (DS + DT) * V + 4 * DS * V
    assert at_n <= measured["unsharded_temp_local"] + 2 * heads, (at_n, measured["unsharded_temp_local"])


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_values_and_gradients_equal_one_device(measured, mesh):
    m = measured["meshes"][mesh]
    assert m["loss"] == pytest.approx(m["want_loss"], rel=1e-6)
    for diff, scale in zip(m["grad_max_abs_diff"], m["grad_max_abs"]):
        assert diff <= 1e-5 * scale


if __name__ == "__main__":
    print(json.dumps(probe()))
