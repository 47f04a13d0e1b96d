"""`distillctl plan`'s per-chip memory estimate (`orchestrator.core.memory.estimate`, the function plan calls)
against XLA's memory analysis of the trainer's own compiled step (`trainer.setup.build`'s `step_fn`) on 8
simulated CPU devices, for several meshes, precisions, remat policies and both losses: within ±25 % of the
compiled step's peak (arguments + outputs + temporaries − donated aliases). The same compiles show the step is
sharding-clean: no all-gather in its HLO is of logits or of a per-token array across the batch axes (weights'
FSDP all-gathers are expected; tiny per-token statistics gathered over `tensor` are allowed).

JAX reads `--xla_force_host_platform_device_count` once, at start-up, so the compiles run in a subprocess: this
file run as a script prints them as JSON lines.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
import tempfile

import pytest
from trainer_support import REPO, python_env

pytest.importorskip("jax")
pytestmark = pytest.mark.slow

TOLERANCE = 0.25
DEEP = {"emb_dim": 128, "mlp_dim": 512}  # wider than the tiny models, and deep enough that the layer scan is rolled
# name -> the run's settings: mesh, student and teacher overrides (student tiny-2l, teacher tiny-4l), rows per
# device, length, vocabulary, and optionally mode, loss and batch settings.
CONFIGS = {
    # all data-parallel, float32, full remat, dense loss
    "dp8_f32_full": {"mesh": {"data": 8, "fsdp": 1}, "batch": 2, "length": 48, "vocab": 4096},
    # the default mesh (FSDP over all 8), bfloat16 compute and teacher weights, dots remat
    "fsdp8_bf16_dots": {
        "student": {"dtype": "bfloat16", "remat": "dots", "emb_dim": 128, "mlp_dim": 512},
        "teacher": {"dtype": "bfloat16", "weight_dtype": "bfloat16", "emb_dim": 128, "mlp_dim": 512},
        "batch": 2,
        "length": 48,
        "vocab": 4096,
    },
    # data × fsdp × tensor, no remat
    "dp2_fsdp2_tp2_none": {
        "mesh": {"data": 2, "fsdp": 2, "tensor": 2},
        "student": {"remat": "none"},
        "batch": 2,
        "length": 48,
        "vocab": 4096,
    },
    # FSDP with logits over the dense budget: the fused loss
    "fsdp8_fused": {"batch": 32, "length": 96, "vocab": 48000},
    # deep stacks (8 and 12 layers: the rolled scan of real models), long rows, FSDP and remat full or dots
    "fsdp8_deep_long": {
        "student": {"num_layers": 8, **DEEP},
        "teacher": {"num_layers": 12, **DEEP},
        "batch": 2,
        "length": 512,
        "vocab": 8192,
    },
    "dp8_deep_dots": {
        "mesh": {"data": 8, "fsdp": 1},
        "student": {"num_layers": 8, "remat": "dots"},
        "teacher": {"num_layers": 8},
        "batch": 4,
        "length": 256,
        "vocab": 4096,
    },
    # gradient accumulation on the default mesh (the estimate was low here), tensor parallelism in bfloat16
    "fsdp8_accum4": {"batch": 2, "length": 48, "vocab": 4096, "settings": {"gradient_accumulation_steps": 4}},
    "fsdp4_tp2_bf16_deep": {
        "mesh": {"data": 1, "fsdp": 4, "tensor": 2},
        "student": {"num_layers": 6, "dtype": "bfloat16", **DEEP},
        "teacher": {"num_layers": 8, "dtype": "bfloat16", "weight_dtype": "bfloat16", **DEEP},
        "batch": 2,
        "length": 256,
        "vocab": 8192,
    },
    # a tensor axis that divides the query heads but not the kv heads (only those weights stay whole)
    "fsdp2_tp4_dots": {
        "mesh": {"data": 1, "fsdp": 2, "tensor": 4},
        "student": {"remat": "dots"},
        "batch": 2,
        "length": 64,
        "vocab": 4096,
    },
    # the feature loss, and pre-training (one model)
    "dp8_features": {
        "mesh": {"data": 8, "fsdp": 1},
        "batch": 4,
        "length": 256,
        "vocab": 4096,
        "loss": {"beta": 0.5, "layer_indices": [0, -1]},
    },
    "dp8_pretrain": {"mode": "pretrain", "mesh": {"data": 8, "fsdp": 1}, "batch": 4, "length": 256, "vocab": 4096},
}


def spec_for(name: str):
    from distillspec.specfile import validate_data

    c = CONFIGS[name]
    data = {
        "name": name.replace("_", "-"),
        "student": {"model": "tiny-2l", "vocab_size": c["vocab"], **c.get("student", {})},
        "teacher": {
            "model": "tiny-4l",
            "vocab_size": c["vocab"],
            "load_parameters_path": "unused",
            **c.get("teacher", {}),
        },
        "loss": {"alpha": 0.5, "temperature": 2.0, **c.get("loss", {})},
        "batch": {"per_device_batch_size": c["batch"], "max_target_length": c["length"], **c.get("settings", {})},
        "steps": 4,
        "mesh": c.get("mesh", {}),
        "output_dir": tempfile.mkdtemp(),
    }
    if c.get("mode") == "pretrain":
        data |= {"mode": "pretrain", "teacher": None, "loss": {}}
    spec, problems = validate_data(data)
    assert spec is not None, [p.message for p in problems]
    return spec


def probe(name: str) -> dict:
    """Inside the 8-device process: compile the trainer's step for one configuration (abstract batch) and report
    XLA's memory analysis, plan's estimate, the step's all-gather shapes and the weights' shapes."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from orchestrator.core import memory
    from trainer import step as step_lib
    from trainer.models import ModelConfig, abstract_model, host_init
    from trainer.setup import build

    spec = spec_for(name)
    teacher = host_init(abstract_model(ModelConfig.from_spec(spec.teacher))[1], 1) if spec.teacher else None
    built = build(spec, teacher_params=teacher)
    shape = (spec.batch.gradient_accumulation_steps, built.rows, spec.batch.max_target_length)
    rows = NamedSharding(built.mesh, P(None, ("data", "fsdp"), None))
    batch = {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
        for k, dtype in (("inputs", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))
    }
    hparams = {k: jnp.float32(v) for k, v in step_lib.hyperparameters(spec, 0).items()}
    with jax.set_mesh(built.mesh):
        compiled = built.step_fn.lower(built.state, built.teacher_params, batch, hparams).compile()
    m = compiled.memory_analysis()
    weights = {tuple(a.shape) for a in jax.tree.leaves((built.state.params, built.teacher_params))}
    gathers = re.findall(r"= \w+\[([\d,]*)\][^ ]* all-gather\(", compiled.as_text())
    return {
        "name": name,
        "devices": len(jax.devices()),
        "mesh": dict(built.mesh.shape),
        "peak": m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes,
        "temp": m.temp_size_in_bytes,
        "estimate": memory.estimate(spec, chips=len(jax.devices()), hbm_bytes_per_chip=None).to_json(),
        "weights": sorted(weights),
        "local_rows": built.rows // (built.mesh.shape["data"] * built.mesh.shape["fsdp"]),
        "length": spec.batch.max_target_length,
        "vocab": spec.student.shape().vocab_size,
        "gathers": [[int(d) for d in dims.split(",") if d] for dims in gathers],
    }


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    env = python_env(XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, __file__, *CONFIGS],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {m["name"]: m for m in out}


@pytest.mark.parametrize("name", CONFIGS)
def test_plan_estimate_is_within_a_quarter_of_the_compiled_step(measured, name):
    m = measured[name]
    assert m["devices"] == 8
    estimate = m["estimate"]["total"]
    assert abs(estimate / m["peak"] - 1) <= TOLERANCE, (estimate, m["peak"], m["estimate"])


def test_the_configurations_cover_both_losses_and_every_axis(measured):
    assert {m["estimate"]["fused_loss"] for m in measured.values()} == {True, False}
    for axis in ("data", "fsdp", "tensor"):
        assert any(m["mesh"][axis] > 1 for m in measured.values()), axis


def weight_like(shape: list[int], weights: list[list[int]], tensor: int, fsdp: int = 1) -> bool:
    """Whether an all-gathered shape is a weight's: a parameter's shape, or one layer of a stacked parameter, or
    either flattened to a matrix (`layers.dense` multiplies `[D, H, K]` as `[D, H·K]`), with any one dimension
    split over the tensor axis, the fsdp axis or both (a weight's FSDP shard gathered along its kv heads, which
    the tensor axis does not divide), in any order of its dimensions (a transposed head)."""
    whole = {tuple(w) for w in weights} | {tuple(w[1:]) for w in weights if len(w) > 1}
    whole |= {(math.prod(w[:i]), math.prod(w[i:])) for w in whole for i in range(1, len(w))}
    split = {
        w[:i] + (w[i] // by,) + w[i + 1 :]
        for w in whole
        for by in {tensor, fsdp, tensor * fsdp}
        for i in range(len(w))
        if w[i] % by == 0
    }
    return any(p in whole | split for p in set(itertools.permutations(shape)))


@pytest.mark.parametrize("name", CONFIGS)
def test_the_step_gathers_no_logits_or_tokens_across_the_batch(measured, name):
    m = measured[name]
    batch_devices = m["mesh"]["data"] * m["mesh"]["fsdp"]
    rows, length = m["local_rows"], m["length"]
    gathered_rows = {k * rows for k in range(2, batch_devices + 1)} | {k * rows * length for k in range(2, 9)}
    vocab = {m["vocab"], m["vocab"] // m["mesh"]["tensor"]}
    for shape in m["gathers"]:
        if weight_like(shape, m["weights"], m["mesh"]["tensor"], m["mesh"]["fsdp"]):
            continue  # FSDP's gather of a weight
        assert not set(shape) & vocab, f"{name}: an all-gather of logits {shape}"
        assert not set(shape) & gathered_rows, f"{name}: a per-token all-gather across the batch {shape}"
    if m["mesh"]["fsdp"] > 1:
        assert any(weight_like(g, m["weights"], m["mesh"]["tensor"]) for g in m["gathers"]), "FSDP gathers its weights"


if __name__ == "__main__":
    for config in sys.argv[1:]:
        print(json.dumps(probe(config)), flush=True)
