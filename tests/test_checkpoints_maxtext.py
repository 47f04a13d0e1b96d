"""MaxText checkpoints in and out. For each family, a tiny random model saved by transformers (the test-only
reference environment) is written as a MaxText Orbax checkpoint by `_maxtext_writer` below, a transcription of
MaxText's own HF -> MaxText conversion (`checkpoint_conversion/to_maxtext.py` with `utils/param_mapping.py`: names,
the scanned layer axis at 1, Gemma 3's 6-layer blocks, and the hooks: kernels `x.T.reshape`, Llama's RoPE halves
interleaved and query scaled by 1/sqrt(K), Gemma 2's query scaled, Gemma's norms + 1 and embeddings * sqrt(D)),
independent of the trainer's code. `load_model` on it gives transformers' logits within 1e-4 (relative, float32);
the trainer's own export (`maxtext.save`) writes the same tensors; bad checkpoints are a UserError naming path and
tensor."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from ref_support import make_models

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from flax import nnx  # noqa: E402

from distillspec.registry import MODELS  # noqa: E402
from trainer.checkpoints import load_model, load_params, maxtext  # noqa: E402
from trainer.exit_codes import UserError  # noqa: E402

pytestmark = pytest.mark.slow

WINDOW = 6
LENGTH = 16  # > WINDOW
SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)
SMALL |= dict(head_dim=8, rms_norm_eps=1e-6)
CONFIGS = {
    "llama": dict(
        SMALL,
        num_hidden_layers=2,
        rope_theta=500_000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8,
        ),
    ),
    "qwen3": dict(SMALL, num_hidden_layers=2, tie_word_embeddings=True, rope_theta=1_000_000.0),
    "gemma2": dict(SMALL, num_hidden_layers=4, sliding_window=WINDOW, query_pre_attn_scalar=16),
    "gemma3": dict(SMALL, num_hidden_layers=7, sliding_window=WINDOW, query_pre_attn_scalar=16),  # 1 block + 1 left
}


# --- MaxText's HF -> MaxText conversion, transcribed -------------------------------------------------------------


def _reshape_kernel(x, target_shape):  # param_mapping's reshape_kernel, HF -> MaxText
    return x.T.reshape(target_shape)


def _adjust_rope(x):  # LLAMA31 hook: HF's concatenated halves -> MaxText's interleaved layout
    half = x.shape[-1] // 2
    return np.stack([x[..., :half], x[..., half:]], axis=-1).reshape(x.shape)


def _maxtext_layer(family: str, hf: dict, i: int, c: dict) -> dict:
    """One HF layer as MaxText's per-layer tensors (names relative to the layer)."""
    d, h, n, k = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    p = f"model.layers.{i}."
    q = _reshape_kernel(hf[p + "self_attn.q_proj.weight"], (d, h, k))
    kk = _reshape_kernel(hf[p + "self_attn.k_proj.weight"], (d, n, k))
    if family == "llama":
        q = (_adjust_rope(q) * np.float32(1 / np.sqrt(k))).astype(np.float32)
        kk = _adjust_rope(kk)
    if family == "gemma2":
        q = (q * np.float32(1 / np.sqrt(k))).astype(np.float32)
    out = {
        "self_attention": {
            "query": {"kernel": q},
            "key": {"kernel": kk},
            "value": {"kernel": _reshape_kernel(hf[p + "self_attn.v_proj.weight"], (d, n, k))},
            "out": {"kernel": _reshape_kernel(hf[p + "self_attn.o_proj.weight"], (h, k, d))},
        },
        "mlp": {
            "wi_0": {"kernel": hf[p + "mlp.gate_proj.weight"].T},
            "wi_1": {"kernel": hf[p + "mlp.up_proj.weight"].T},
            "wo": {"kernel": hf[p + "mlp.down_proj.weight"].T},
        },
    }
    plus = 1.0 if family.startswith("gemma") else 0.0
    if family in ("qwen3", "gemma3"):
        out["self_attention"]["query_norm"] = {"scale": hf[p + "self_attn.q_norm.weight"] + plus}
        out["self_attention"]["key_norm"] = {"scale": hf[p + "self_attn.k_norm.weight"] + plus}
    if family.startswith("gemma"):
        out["pre_self_attention_norm"] = {"scale": hf[p + "input_layernorm.weight"] + plus}
        out["post_self_attention_norm"] = {"scale": hf[p + "post_attention_layernorm.weight"] + plus}
        out["pre_ffw_norm"] = {"scale": hf[p + "pre_feedforward_layernorm.weight"] + plus}
        out["post_ffw_norm"] = {"scale": hf[p + "post_feedforward_layernorm.weight"] + plus}
    else:
        out["pre_self_attention_layer_norm"] = {"scale": hf[p + "input_layernorm.weight"]}
        out["post_self_attention_layer_norm"] = {"scale": hf[p + "post_attention_layernorm.weight"]}
    return out


def _stack(layers: list[dict]) -> dict:
    return jax.tree.map(lambda *xs: np.stack(xs, axis=1), *layers)  # param_scan_axis: 1


def _maxtext_writer(family: str, folder: Path, out: Path, scanned: bool) -> None:
    from safetensors.numpy import load_file

    hf = load_file(folder / "model.safetensors")
    c = json.loads((folder / "config.json").read_text())
    depth, d = c["num_hidden_layers"], c["hidden_size"]
    layers = [_maxtext_layer(family, hf, i, c) for i in range(depth)]
    embed = hf["model.embed_tokens.weight"]
    if family == "gemma2":
        embed = (embed * np.float32(d**0.5)).astype(np.float32)
        pairs = []
        for j in range(depth // 2):
            pair = {}
            for kind, layer in (("local", layers[2 * j]), ("global", layers[2 * j + 1])):
                pair |= {f"{name}_{kind}": v for name, v in layer.items()}
            pairs.append(pair)
        layers = pairs
    if family == "gemma3":
        embed = embed * np.dtype("bfloat16").type(d**0.5)
    decoder: dict = {"decoder_norm": {"scale": hf["model.norm.weight"] + (1.0 if family.startswith("gemma") else 0)}}
    if "lm_head.weight" in hf:
        decoder["logits_dense"] = {"kernel": hf["lm_head.weight"].T}
    if not scanned:
        decoder |= {f"layers_{i}": layer for i, layer in enumerate(layers)}
    elif family == "gemma3":
        blocks = len(layers) // 6
        decoder["layers"] = {f"layers_{j}": _stack(layers[j : blocks * 6 : 6]) for j in range(6)}
        decoder["layers_remainder"] = {f"layers_{r}": layer for r, layer in enumerate(layers[blocks * 6 :])}
    else:
        decoder["layers"] = _stack(layers)
    params = {"decoder": decoder, "token_embedder": {"embedding": np.asarray(embed, np.float32)}}
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    with ocp.CheckpointManager(str(out.absolute())) as manager:  # as MaxText's save_weights_to_checkpoint
        state = {"step": 0, "params": {"params": params}, "opt_state": {}}
        manager.save(0, args=ocp.args.Composite(items=ocp.args.PyTreeSave(state)))
        manager.wait_until_finished()
    shutil.copy(folder / "config.json", out / "config.json")  # the model's constants (RoPE, windows, caps)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("maxtext")
    tokens = root / "tokens.npy"
    np.save(tokens, (np.arange(2 * LENGTH).reshape(2, LENGTH) * 37 % 64).astype(np.int32))
    jobs = [
        dict(family=f, out=str(root / "hf" / f), config=c, seed=i, tokens=str(tokens))
        for i, (f, c) in enumerate(CONFIGS.items())
    ]
    make_models(jobs)
    out = {"tokens": np.load(tokens), "root": root}
    for family in CONFIGS:
        for scanned in (True, False):
            target = root / f"{family}-{'scanned' if scanned else 'unscanned'}"
            _maxtext_writer(family, root / "hf" / family, target, scanned)
            out[(family, scanned)] = target
        out[family] = root / "hf" / family
    return out


def _close(ours, ref, msg=""):
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=msg)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_maxtext_checkpoint_gives_transformers_logits(models, family):
    """Scanned and unscanned MaxText checkpoints, named by item, step folder or root, give transformers' logits."""
    ref = np.load(models[family] / "logits.npy")
    for scanned, path in ((True, models[(family, True)] / "0" / "items"), (False, models[(family, False)])):
        logits = np.asarray(load_model(str(path)).logits(jnp.asarray(models["tokens"])))
        _close(logits, ref, f"{family} scanned={scanned}")


def _abstract(shape, scan: bool = True):
    from trainer.models import ModelConfig, abstract_model

    _, state = abstract_model(ModelConfig(shape, scan_layers=scan))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(state))


def test_scanned_checkpoint_fills_an_unscanned_model(models):
    from trainer.models import ModelConfig, abstract_model

    shape = maxtext.checkpoint_shape(str(models[("gemma3", True)]))
    graphdef, _ = abstract_model(ModelConfig(shape, scan_layers=False))
    params = load_params(str(models[("gemma3", True)] / "0"), shape, _abstract(shape, scan=False), side="teacher")
    model = nnx.merge(graphdef, params)
    _close(np.asarray(model.logits(jnp.asarray(models["tokens"]))), np.load(models["gemma3"] / "logits.npy"))


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_export_writes_what_maxtext_writes(models, family, tmp_path):
    """The trainer's MaxText export of the model loaded from Hugging Face holds MaxText's converter's tensors, in
    both layouts, and loads back to transformers' logits."""
    model = load_model(str(models[family]))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for scanned in (True, False):
        ours = tmp_path / f"ours-{scanned}"
        if scanned:
            maxtext.save(params, model.config.shape, str(ours), scanned=True)
        else:
            layers = params["layers"]
            unscanned = dict(
                params,
                layers={i: jax.tree.map(lambda a, i=i: a[i], layers) for i in range(len(jax.tree.leaves(layers)[0]))},
            )
            maxtext.save(unscanned, model.config.shape, str(ours), scanned=False)
        want = ocp.PyTreeCheckpointer().restore(str(models[(family, scanned)] / "0" / "items"))["params"]["params"]
        got = ocp.PyTreeCheckpointer().restore(str(ours / "0" / "items"))["params"]["params"]
        assert jax.tree.structure(got) == jax.tree.structure(want)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)
        back = np.asarray(load_model(str(ours)).logits(jnp.asarray(models["tokens"])))
        _close(back, np.load(models[family] / "logits.npy"), f"{family} scanned={scanned}")


def test_another_size_names_every_tensor(models):
    shape = maxtext.checkpoint_shape(str(models[("llama", True)]))
    wider = shape.with_overrides(mlp_dim=96, num_layers=3)
    with pytest.raises(UserError) as e:
        load_params(str(models[("llama", True)]), wider, _abstract(wider), side="student")
    message = e.value.message
    assert "student.load_parameters_path" in message and str(models[("llama", True)] / "0" / "items") in message
    assert "decoder/layers/mlp/wi_0/kernel: expected (32, 3, 96), found (32, 2, 48)" in message
    assert "num_layers: expected 3, found 2" in message  # from the checkpoint's config.json


def test_another_family_is_named(models):
    tiny = MODELS["tiny-2l"]
    with pytest.raises(UserError) as e:
        load_params(str(models[("gemma2", False)]), tiny, _abstract(tiny), side="teacher")
    assert "family: expected llama, found gemma2" in e.value.message


def test_missing_item_and_ambiguous_root(models, tmp_path):
    with pytest.raises(UserError) as missing:
        load_model(str(tmp_path / "nowhere" / "0" / "items"))
    assert f"{tmp_path / 'nowhere' / '0' / 'items'} does not exist" in missing.value.message
    two = tmp_path / "two"
    shutil.copytree(models[("qwen3", True)], two)
    shutil.copytree(two / "0", two / "5")
    with pytest.raises(UserError) as ambiguous:
        load_model(str(two))
    assert "steps 0, 5" in ambiguous.value.message and f"{two}/5/items" in ambiguous.value.hint


def test_corrupted_checkpoint_names_path_and_tensor(models, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(models[("qwen3", True)], bad)
    for chunk in (bad / "0" / "items").rglob("d/*"):
        if chunk.is_file():
            chunk.write_bytes(b"\0" * 16)
    with pytest.raises(UserError) as e:
        load_model(str(bad))
    assert str(bad / "0" / "items") in e.value.message
    meta = bad / "0" / "items" / "_METADATA"
    meta.write_text("{not json")
    with pytest.raises(UserError) as damaged:
        load_model(str(bad))
    assert str(meta) in damaged.value.message


def test_bad_teacher_checkpoint_exits_1_with_nothing_written(models, tmp_path):
    from trainer_support import python_env, run_trainer

    spec = {
        "name": "orphan",
        "student": {"model": "tiny-2l"},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(models[("llama", True)] / "0" / "items")},
        "output_dir": str(tmp_path / "runs"),
        "steps": 5,
    }
    done = run_trainer([], env=python_env(DISTILLCTL_SPEC=json.dumps(spec)))
    assert done.returncode == 1 and "decoder/layers/self_attention/query/kernel" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "orphan" / "checkpoints").exists()
    assert not os.path.exists(tmp_path / "runs" / "orphan" / "metrics.jsonl")


def test_validate_check_paths_reads_maxtext_shapes(models, tmp_path):
    """`validate --check-paths` reads a MaxText checkpoint's tensor shapes (metadata only) and names each mismatch;
    a checkpoint of the spec's model has none."""
    from spec_helpers import spec_data

    from distillspec.maxtext_checkpoint import read_checkpoint
    from distillspec.specfile import validate_data
    from orchestrator.core.checkpoint_paths import check_paths
    from orchestrator.outputs import read_text
    from trainer.models import ModelConfig, abstract_model, host_init

    def spec_with(path: str):
        spec, problems = validate_data(spec_data(**{"teacher.load_parameters_path": path}))
        assert spec is not None, problems
        return spec

    _, state = abstract_model(ModelConfig(MODELS["tiny-4l"]))
    maxtext.save(host_init(state, 0), MODELS["tiny-4l"], str(tmp_path / "tiny4"), scanned=True)
    assert check_paths(spec_with(str(tmp_path / "tiny4" / "0" / "items")), read_text, read_checkpoint) == []
    problems = check_paths(spec_with(str(models[("llama", True)])), read_text, read_checkpoint)
    messages = [p.message for p in problems]
    assert {p.code for p in problems} == {"checkpoint_mismatch"} and all(p.loc[0] == "teacher" for p in problems)
    assert any(
        "decoder/layers/self_attention/query/kernel: expected (64, 4, 4, 16), found (32, 2, 4, 8)" in m
        for m in messages
    )
    assert any("config.json holds a different teacher model: num_layers: expected 4, found 2" in m for m in messages)
    # The config's mismatches are one problem, and every problem carries the block lines that match the checkpoint.
    assert len([m for m in messages if "config.json holds" in m]) == 1
    assert all(p.hint.startswith("set teacher.") and "(the checkpoint's" in p.hint for p in problems), problems
    (missing,) = check_paths(spec_with(str(tmp_path / "gone" / "0" / "items")), read_text, read_checkpoint)
    assert missing.code == "checkpoint_unreadable" and "does not exist" in missing.message
