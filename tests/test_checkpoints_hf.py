"""Hugging Face checkpoints in: for every family, a tiny random model saved by transformers (PyTorch on CPU, the
test-only reference environment) loads with `trainer.checkpoints.load_model` and gives transformers' logits
within 1e-4 (relative to the logits' scale, float32) on sequences longer than the sliding window; sharded
folders load too; bad folders are a UserError naming the file and tensor; a layer-dropped student distils from
an imported teacher and its KL falls."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from ref_support import make_models, run_ref
from trainer_support import Recorder, merged, read_metrics, spec_of

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from distillspec.registry import MODELS  # noqa: E402
from trainer.checkpoints import hf, load_model, load_params  # noqa: E402
from trainer.exit_codes import TrainerExit, UserError  # noqa: E402

pytestmark = pytest.mark.slow

WINDOW = 6
LENGTH = 24  # > WINDOW: sliding-window layers see only part of it
SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
SMALL |= dict(head_dim=8, rms_norm_eps=1e-6)
CONFIGS = {
    "llama": dict(
        SMALL,
        num_hidden_layers=3,
        rope_theta=500_000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "qwen3": dict(SMALL, num_hidden_layers=3, tie_word_embeddings=True, rope_theta=1_000_000.0),
    "gemma2": dict(SMALL, num_hidden_layers=4, sliding_window=WINDOW, query_pre_attn_scalar=16),
    "gemma3": dict(
        SMALL,
        num_hidden_layers=7,  # layers 0-4 and 6 sliding-window, 5 global
        sliding_window=WINDOW,
        query_pre_attn_scalar=16,
        rope_scaling=dict(rope_type="linear", factor=8.0),
    ),
}
# The shape of the registry's tiny-4l, as a Hugging Face Llama: the distillation test's teacher.
TINY_4L = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    rope_theta=10_000.0,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    tokens = root / "tokens.npy"
    np.save(tokens, (np.arange(2 * LENGTH).reshape(2, LENGTH) * 37 % 96).astype(np.int32))
    jobs = [
        dict(family=f, out=str(root / f), config=c, seed=i, tokens=str(tokens))
        for i, (f, c) in enumerate(CONFIGS.items())
    ]
    jobs.append(dict(family="llama", out=str(root / "sharded"), config=CONFIGS["llama"], seed=7, tokens=str(tokens)))
    jobs[-1]["max_shard_size"] = "20KB"
    jobs.append(dict(family="llama", out=str(root / "teacher"), config=TINY_4L, seed=11, tokens=str(tokens)))
    # Gemma 3 as the Hub publishes 4B/12B/27B: an image-text model whose language model is a Gemma 3 text model.
    text = dict(CONFIGS["gemma3"], vocab_size=100)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    image_text = dict(text_config=text, vision_config=dict(vision, patch_size=14), mm_tokens_per_image=4)
    image_text |= dict(image_token_index=99, boi_token_index=97, eoi_token_index=98)
    jobs.append(dict(family="gemma3_mm", out=str(root / "gemma3_mm"), config=image_text, seed=13, tokens=str(tokens)))
    # tiny-4l's shape with constants no registry model has: another RoPE base, tied embeddings (SmolLM-style).
    smol = dict(TINY_4L, rope_theta=100_000.0, tie_word_embeddings=True)
    jobs.append(dict(family="llama", out=str(root / "smol"), config=smol, seed=12, tokens=str(tokens)))
    make_models(jobs)
    out = {job["out"].rsplit("/", 1)[1]: Path(job["out"]) for job in jobs}
    out["tokens"] = tokens
    return out


def _assert_same_logits(folder: Path, tokens: np.ndarray) -> None:
    ours = np.asarray(load_model(str(folder)).logits(jnp.asarray(tokens)))
    ref = np.load(folder / "logits.npy")
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_logits_equal_transformers(folders, family):
    _assert_same_logits(folders[family], np.load(folders["tokens"]))


def test_sharded_folder_loads(folders):
    sharded = folders["sharded"]
    assert (sharded / hf.INDEX).exists() and len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    _assert_same_logits(sharded, np.load(folders["tokens"]))


def test_export_then_transformers_loads_the_same_model(folders, tmp_path):
    """Our parameters written back as a Hugging Face folder (`hf.save`) load in transformers with the logits
    the original folder gave, for every family."""
    from flax import nnx

    jobs = []
    for family in sorted(CONFIGS):
        model = load_model(str(folders[family]))
        out = tmp_path / family
        hf.save(nnx.to_pure_dict(nnx.state(model, nnx.Param)), model.config.shape, str(out))
        assert hf.shape_from_config(hf.read_config(str(out))) == model.config.shape
        jobs.append([str(out), str(folders["tokens"]), str(out / "back.npy")])
    run_ref("logits-many", json.dumps(jobs))
    for family in sorted(CONFIGS):
        ref = np.load(folders[family] / "logits.npy")
        back = np.load(tmp_path / family / "back.npy")
        np.testing.assert_allclose(back, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=family)


def test_config_is_read_as_the_family_it_is(folders):
    shape = hf.shape_from_config(hf.read_config(str(folders["gemma3"])))
    assert shape.family == "gemma3" and shape.qk_norm and shape.sliding_window == WINDOW
    assert [shape.is_local(i) for i in range(7)] == [True] * 5 + [False, True]
    assert shape.rope_scaling.kind == "linear" and shape.rope_local_theta == 10_000.0
    llama = hf.shape_from_config(hf.read_config(str(folders["llama"])))
    assert llama.rope_scaling.kind == "llama3" and llama.rope_theta == 500_000.0 and not llama.tie_embeddings
    assert hf.shape_from_config(hf.read_config(str(folders["teacher"]))) == MODELS["tiny-4l"]


def _abstract(shape):
    from flax import nnx

    from trainer.models import ModelConfig, abstract_model

    _, state = abstract_model(ModelConfig(shape))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(state))


def test_another_size_or_family_names_every_mismatch(folders):
    teacher = str(folders["teacher"])
    with pytest.raises(UserError) as size:
        load_params(teacher, MODELS["tiny-2l"], _abstract(MODELS["tiny-2l"]), side="teacher")
    assert (
        "teacher.load_parameters_path" in size.value.message and "num_layers: expected 2, found 4" in size.value.message
    )
    with pytest.raises(UserError) as family:
        load_params(str(folders["gemma2"]), MODELS["tiny-4l"], _abstract(MODELS["tiny-4l"]), side="student")
    for field in ("family: expected llama, found gemma2", "emb_dim: expected 64, found 32", "vocab_size"):
        assert field in family.value.message


def test_tensor_of_another_shape_is_named_with_both_shapes(folders, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folders["llama"], bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(UserError) as e:
        load_model(str(bad))
    assert "model.layers.0.mlp.gate_proj.weight in model.safetensors: expected (128, 32), found (64, 32)" in (
        e.value.message
    )


def test_a_tensor_missing_from_a_folder_whose_config_fits_says_the_weights_are_incomplete(folders, tmp_path):
    # The hint said "change the model block to match it" for a block that already matched config.json.
    from safetensors.numpy import load_file, save_file

    for victim, said in [
        ("model.layers.1.mlp.up_proj.weight", "the folder's weights lack tensors the model needs"),
        ("lm_head.weight", "if the model's head is its embedding, set tie_word_embeddings: true"),
    ]:
        cut = tmp_path / victim
        shutil.copytree(folders["llama"], cut)
        tensors = load_file(cut / hf.SINGLE)
        del tensors[victim]
        save_file(tensors, cut / hf.SINGLE, metadata={"format": "pt"})
        with pytest.raises(UserError) as e:
            load_model(str(cut))
        assert f"{victim}: expected" in e.value.message and "missing" in e.value.message
        assert said in e.value.hint and "change the model block" not in e.value.hint, e.value.hint


def test_a_folder_holding_two_saves_reads_the_single_file_as_transformers_does(folders, tmp_path):
    """One save copied over another leaves model.safetensors beside a sharded index: transformers reads the single
    file, the trainer read the index (other weights, logits up to 7.5 nats apart, no word). Now it reads what
    transformers does, locally and through fsspec, and `validate --check-paths` warns of the folder."""
    from spec_helpers import spec_data

    from distillspec.specfile import validate_data
    from orchestrator.core.checkpoint_paths import check_paths
    from orchestrator.outputs import count_files, read_text

    both = tmp_path / "both"
    shutil.copytree(folders["sharded"], both)
    for name in (hf.SINGLE, "logits.npy"):  # the other save's weights, and what transformers computes from them
        shutil.copy(folders["llama"] / name, both / name)
    tokens = np.load(folders["tokens"])
    _assert_same_logits(both, tokens)
    remote = np.asarray(load_model(_to_memory(both, "two-saves")).logits(jnp.asarray(tokens)))
    np.testing.assert_allclose(remote, np.load(both / "logits.npy"), rtol=1e-4, atol=1e-4)
    spec, problems = validate_data(spec_data(**{"teacher.load_parameters_path": str(both)}))
    assert spec is not None, problems
    found = [p for p in check_paths(spec, read_text, None, count_files) if p.code == "checkpoint_two_saves"]
    assert len(found) == 1 and found[0].severity == "warning" and "holds both" in found[0].message


def test_missing_shard_names_the_file(folders, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folders["sharded"], bad)
    victim = sorted(bad.glob("model-*-of-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(UserError) as e:
        load_model(str(bad))
    assert f"missing shard {victim}" in e.value.message


def test_an_index_that_names_the_wrong_shard_names_the_index_and_the_shard(folders, tmp_path):
    # Was exit 70: "internal error: SafetensorError: File does not contain tensor model.embed_tokens.weight".
    bad = tmp_path / "bad"
    shutil.copytree(folders["sharded"], bad)
    index = json.loads((bad / hf.INDEX).read_text())
    name = "model.embed_tokens.weight"
    wrong = next(f for f in sorted(set(index["weight_map"].values())) if f != index["weight_map"][name])
    index["weight_map"][name] = wrong
    (bad / hf.INDEX).write_text(json.dumps(index))
    said = f"has no tensor {name}, though {hf.INDEX} beside it names that shard for it"
    for folder, shard in ((str(bad), str(bad / wrong)), (_to_memory(bad, "remote-misindexed"), wrong)):
        with pytest.raises(UserError) as e:
            load_model(folder)
        assert shard in e.value.message and said in e.value.message, e.value.message


def test_truncated_file_names_the_file(folders, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folders["qwen3"], bad)
    data = (bad / hf.SINGLE).read_bytes()
    (bad / hf.SINGLE).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_model(str(bad))
    assert str(bad / hf.SINGLE) in e.value.message and "not a readable safetensors file" in e.value.message
    (bad / hf.SINGLE).write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
    with pytest.raises(UserError) as e:  # a clone without git-lfs
        load_model(str(bad))
    assert "is a Git LFS pointer" in e.value.message and "git lfs pull" in e.value.hint, e.value.message


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ({"config.json": "[1, 2]"}, "config.json is not a JSON object"),
        ({"config.json": {"drop": "hidden_size"}}, "config.json: hidden_size is missing"),
        ({"config.json": {"vocab_size": "256"}}, "config.json: vocab_size must be a positive integer, got '256'"),
        ({"config.json": {"drop": "model_type"}}, "config.json has no model_type"),
        ({hf.INDEX: "[1]"}, f"{hf.INDEX} has no weight_map object"),
        ({hf.INDEX: {"drop": "weight_map"}}, f"{hf.INDEX} has no weight_map object"),
    ],
)
def test_a_malformed_config_or_index_is_a_user_error_naming_it(folders, tmp_path, damage, said):
    # Each of these was an internal error (exit 70): AttributeError, KeyError, TypeError.
    bad = tmp_path / "bad"
    shutil.copytree(folders["sharded"], bad)
    ((name, change),) = damage.items()
    if isinstance(change, str):
        (bad / name).write_text(change)
    else:
        data = json.loads((bad / name).read_text())
        data.pop(change.pop("drop", None), None)
        (bad / name).write_text(json.dumps({**data, **change}))
    with pytest.raises(UserError) as e:
        load_model(str(bad))
    assert said in e.value.message, e.value.message


def test_a_teacher_folder_with_a_config_and_no_weights_says_so(folders, tmp_path):
    from trainer_support import python_env, run_trainer

    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folders["teacher"] / "config.json", bad / "config.json")
    spec = {
        "name": "half-copied",
        "student": {"model": "tiny-2l"},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(bad)},
        "output_dir": str(tmp_path / "runs"),
        "steps": 2,
    }
    done = run_trainer([], env=python_env(DISTILLCTL_SPEC=json.dumps(spec)))
    assert done.returncode == 1 and "has config.json but no weights" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("where", "said", "todo"),
    [
        ("meta-llama/Llama-3.2-1B", "no such folder", "huggingface-cli download meta-llama/Llama-3.2-1B --local-dir"),
        ("~/models/llama", "a leading ~ is not expanded", "write the full path"),
        ("weights-only", "has model.safetensors but no config.json", "copy the model's config.json into the folder"),
        ("nowhere/models/teacher", "there is no such file or folder", "check the path"),
        ("run/checkpoints", "the teacher run has saved no checkpoint there yet", "sweeps/tiny-teacher.yaml"),
    ],
)
def test_a_teacher_path_with_no_checkpoint_says_why(folders, tmp_path, monkeypatch, where, said, todo):
    """A Hub id, a `~` path, weights without their config.json, a typo, an empty run: each said "neither a Hugging
    Face folder … nor a checkpoint of this trainer; pretrain it first: distillctl train sweeps/tiny-teacher.yaml"."""
    from trainer.train import run

    monkeypatch.chdir(tmp_path)  # relative paths (the Hub id) resolve here, where nothing is
    (tmp_path / "weights-only").mkdir()
    shutil.copy(folders["teacher"] / hf.SINGLE, tmp_path / "weights-only" / hf.SINGLE)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # a teacher run that has saved nothing yet
    (tmp_path / "run" / "spec.json").write_text("{}")
    spec = {
        "name": "student",
        "student": {"model": "tiny-2l"},
        "teacher": {"model": "tiny-4l", "load_parameters_path": where},
        "output_dir": str(tmp_path / "runs"),
        "steps": 2,
    }
    assert run(spec_of(merged(spec))) == TrainerExit.USER_ERROR
    message = json.loads((tmp_path / "runs" / "student" / "summary.json").read_text())["message"]
    assert said in message and todo in message, message
    assert ("tiny-teacher" in message) == (where == "run/checkpoints"), message  # the advice only for a run


def test_a_checkpoint_path_that_is_a_file_is_a_user_error_not_a_retry(folders):
    with pytest.raises(UserError, match="is a file, not a folder") as e:
        load_model(str(folders["qwen3"] / hf.SINGLE))
    assert str(folders["qwen3"]) in e.value.hint


def test_disallowed_dtype_names_the_tensor(folders, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(folders["qwen3"], bad)
    tensors = load_file(bad / hf.SINGLE)
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors[name] = tensors[name].astype(np.int8)
    save_file(tensors, bad / hf.SINGLE)
    with pytest.raises(UserError) as e:
        load_model(str(bad))
    assert f"1 tensor(s) of dtype I8 (e.g. {name} in model.safetensors)" in e.value.message
    assert "save the weights in float32, bfloat16 or float16" in e.value.hint


def test_pruned_student_distils_from_an_imported_teacher(folders, tmp_path):
    """The guide's pruning recovery: tiny-4l teacher from a Hugging Face folder, the student is it minus layers
    1 and 2 (`drop_layers`), then distilled; KL(teacher ‖ student) at T=1 falls."""
    from trainer.train import run

    spec = {
        "name": "pruned",
        "mode": "distill",
        "student": {"model": "tiny-2l", "init": "teacher", "drop_layers": [1, 2]},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(folders["teacher"])},
        "loss": {"alpha": 1.0, "temperature": 1.0},
        "data": {"source": "synthetic", "seed": 1},
        "batch": {"per_device_batch_size": 8, "max_target_length": 32},
        "steps": 30,
        "optimizer": {"learning_rate": 3e-3, "warmup_fraction": 0.05},
        "checkpoint": {"enabled": False},
        "logging": {"every_steps": 5},
        "output_dir": str(tmp_path),
    }
    assert run(spec_of(merged(spec))) == TrainerExit.OK
    kl = [r["metrics"]["distill/kl_div_T1"]["value"] for r in read_metrics(tmp_path / "pruned") if "metrics" in r]
    assert len(kl) >= 4 and kl[-1] < 0.8 * kl[0], kl


def test_bad_teacher_checkpoint_exits_1_naming_file(folders, tmp_path):
    from trainer_support import python_env, run_trainer

    bad = tmp_path / "bad"
    shutil.copytree(folders["teacher"], bad)
    data = (bad / hf.SINGLE).read_bytes()
    (bad / hf.SINGLE).write_bytes(data[:1000])
    spec = {
        "name": "orphan",
        "student": {"model": "tiny-2l"},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(bad)},
        "output_dir": str(tmp_path / "runs"),
        "steps": 5,
    }
    done = run_trainer([], env=python_env(DISTILLCTL_SPEC=json.dumps(spec)))
    assert done.returncode == 1 and str(bad / hf.SINGLE) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "orphan" / "checkpoints").exists()


def test_pruned_gemma_keeps_each_layers_kind_through_export(folders, tmp_path):
    """A student made from a Gemma teacher by dropping layers keeps each kept layer's attention kind (and RoPE
    base) from its original index: Gemma 3's layer 1 of 7 dropped leaves the global layer at index 4, not at the
    pattern's 5; Gemma 2 drops (sliding-window, global) pairs, so its alternation holds. Exported, transformers
    loads the student and gives our student's logits, and its config.json reads back as the student's shape."""
    from flax import nnx

    from distillspec.registry import pruned_global_layers
    from trainer.models import ModelConfig, abstract_model, drop_layers

    tokens = np.load(folders["tokens"])
    jobs, ours = [], {}
    for family, drop in (("gemma3", [1]), ("gemma2", [0])):
        teacher = load_model(str(folders[family]))
        t = teacher.config.shape
        kept = [i for i in range(t.num_layers) if i not in drop]
        s = dataclasses.replace(t, num_layers=len(kept), global_layers=pruned_global_layers(t, drop))
        per = t.layers_per_block
        assert [s.is_local(i) for i in range(s.depth)] == [t.is_local(k * per + j) for k in kept for j in range(per)]
        params = drop_layers(nnx.to_pure_dict(nnx.state(teacher, nnx.Param)), drop, t.num_layers, scan_layers=True)
        graphdef, _ = abstract_model(ModelConfig(s))
        ours[family] = np.asarray(nnx.merge(graphdef, params).logits(jnp.asarray(tokens)))
        out = tmp_path / family
        hf.save(params, s, str(out))
        assert hf.shape_from_config(hf.read_config(str(out))) == s
        jobs.append([str(out), str(folders["tokens"]), str(out / "back.npy")])
    gemma3 = hf.shape_from_config(hf.read_config(str(tmp_path / "gemma3")))
    assert gemma3.global_layers == (4,) and gemma3.pattern_global_layers() == (5,)
    assert json.loads((tmp_path / "gemma3" / hf.CONFIG).read_text())["layer_types"][4:] == [
        "full_attention",
        "sliding_attention",
    ]
    run_ref("logits-many", json.dumps(jobs))
    for family, ref in ours.items():
        back = np.load(tmp_path / family / "back.npy")
        np.testing.assert_allclose(back, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=family)


def _to_memory(folder: Path, name: str) -> str:
    """A copy of `folder` in fsspec's in-memory filesystem (a real fsspec implementation, as gcsfs is one)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for file in folder.iterdir():
        fs.pipe_file(f"/{name}/{file.name}", file.read_bytes())
    return f"memory://{name}"


def test_a_folder_at_an_fsspec_url_loads_tensor_by_tensor(folders):
    """`gs://…` Hugging Face folders are read through fsspec: here the single-file and the sharded folder copied
    into `memory://` give transformers' logits; a truncated remote file is a UserError naming it."""
    tokens = jnp.asarray(np.load(folders["tokens"]))
    for name in ("gemma3", "sharded"):
        url = _to_memory(folders[name], f"remote-{name}")
        assert hf.is_remote(url) and hf.is_hf_folder(url)
        ref = np.load(folders[name] / "logits.npy")
        ours = np.asarray(load_model(url).logits(tokens))
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=name)
    import fsspec

    url = _to_memory(folders["qwen3"], "remote-truncated")
    fs = fsspec.filesystem("memory")
    data = fs.cat_file(f"/remote-truncated/{hf.SINGLE}")
    fs.pipe_file(f"/remote-truncated/{hf.SINGLE}", data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_model(url)
    assert f"{url}/{hf.SINGLE} is not a readable safetensors file" in e.value.message


def _poisoned_copy(folder: Path, out: Path, values: dict[str, float]) -> Path:
    """A copy of the Hugging Face folder `folder` whose tensors named in `values` hold that value (NaN, inf) at
    one element: a checkpoint saved after a divergence, as save_pretrained writes it."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(folder, out)
    tensors = load_file(out / hf.SINGLE)
    for name, value in values.items():
        tensors[name] = tensors[name].copy()
        tensors[name].flat[3] = value
    save_file(tensors, out / hf.SINGLE, metadata={"format": "pt"})
    return out


def test_a_teacher_with_nan_weights_exits_1_naming_the_checkpoint_and_parameters(folders, tmp_path):
    """Such a teacher made the loss NaN at step 0: exit 65 "diverged", blaming training. Now the load refuses it:
    exit 1 (user error), naming the folder and the parameters, in the console and in summary.json."""
    from trainer_support import python_env, run_trainer

    bad = _poisoned_copy(
        folders["teacher"],
        tmp_path / "bad",
        {"model.layers.2.mlp.down_proj.weight": float("nan"), "model.embed_tokens.weight": float("inf")},
    )
    spec = {
        "name": "poisoned",
        "student": {"model": "tiny-2l"},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(bad)},
        "batch": {"per_device_batch_size": 8, "max_target_length": 32},
        "output_dir": str(tmp_path / "runs"),
        "steps": 2,
    }
    done = run_trainer([], env=python_env(DISTILLCTL_SPEC=json.dumps(spec)))
    said = f"the teacher checkpoint {bad} holds NaN or infinite values in 2 parameter(s): embed, layers.mlp.down"
    assert done.returncode == TrainerExit.USER_ERROR, done.stderr
    assert said in done.stderr and "re-export it" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "diverged" not in done.stderr
    summary = json.loads((tmp_path / "runs" / "poisoned" / "summary.json").read_text())
    assert (summary["status"], summary["exit_code"], summary["failure_reason"]) == ("failed", 1, "user_error")
    assert said in summary["message"] and summary["step"] == 0
    assert not (tmp_path / "runs" / "poisoned" / "checkpoints").exists()


def test_an_orbax_teacher_with_inf_is_refused_too(folders, tmp_path):
    """The same check for this trainer's own (Orbax) checkpoints: a teacher run saved after its loss overflowed."""
    from flax import nnx

    from trainer.checkpointing import RunCheckpoints, flatten
    from trainer.train import run

    params = nnx.to_pure_dict(nnx.state(load_model(str(folders["teacher"])), nnx.Param))
    wq = params["layers"]["attention"]["wq"]
    params["layers"]["attention"]["wq"] = wq.ravel().at[wq.size // 2].set(jnp.inf).reshape(wq.shape)
    assert "layers.attention.wq" in flatten(params)
    teacher_run = tmp_path / "runs" / "teacher"
    teacher_run.mkdir(parents=True)
    (teacher_run / "spec.json").write_text(json.dumps({"student": {"model": "tiny-4l"}}))
    checkpoints = RunCheckpoints(str(teacher_run / "checkpoints"), keep=1)
    checkpoints.save(60, params, {"step": np.zeros((), np.int32)}, {})
    checkpoints.close()
    spec = {
        "name": "from-inf",
        "student": {"model": "tiny-2l"},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(teacher_run / "checkpoints")},
        "batch": {"per_device_batch_size": 8, "max_target_length": 32},
        "output_dir": str(tmp_path / "runs"),
        "steps": 2,
    }
    assert run(spec_of(spec)) == TrainerExit.USER_ERROR
    summary = json.loads((tmp_path / "runs" / "from-inf" / "summary.json").read_text())
    assert summary["failure_reason"] == "user_error", summary
    assert (
        f"the teacher checkpoint {teacher_run / 'checkpoints'} holds NaN or infinite values in 1 parameter(s): "
        "layers.attention.wq (hint: the checkpoint is damaged or was saved after a divergence" in summary["message"]
    ), summary["message"]
    # A student started from it (fine-tuning the same model) is refused the same way.
    student = {"model": "tiny-4l", "load_parameters_path": str(teacher_run / "checkpoints")}
    tuned = {**spec, "name": "tune-inf", "mode": "pretrain", "student": student}
    del tuned["teacher"]
    assert run(spec_of(tuned)) == TrainerExit.USER_ERROR
    summary = json.loads((tmp_path / "runs" / "tune-inf" / "summary.json").read_text())
    assert f"the student checkpoint {teacher_run / 'checkpoints'} holds NaN" in summary["message"], summary


def test_a_sequence_longer_than_the_teachers_positions_is_warned_about_at_start(folders, tmp_path):
    """A teacher trained on 16 positions (max_position_embeddings) and batch.max_target_length 32: RoPE runs
    past it, so the run goes on, but the start-up log says so, naming both numbers and the model; within the
    limit nothing is said."""
    from trainer.train import run

    short = tmp_path / "short"
    shutil.copytree(folders["teacher"], short)
    config = json.loads((short / hf.CONFIG).read_text())
    assert config["max_position_embeddings"] >= 32  # what transformers wrote: the original teacher is not warned
    (short / hf.CONFIG).write_text(json.dumps({**config, "max_position_embeddings": 16}))
    spec = {
        "name": "long",
        "student": {"model": "tiny-2l", "init": "teacher", "drop_layers": [1, 2]},
        "teacher": {"model": "tiny-4l", "load_parameters_path": str(short)},
        "batch": {"per_device_batch_size": 8, "max_target_length": 32},
        "checkpoint": {"enabled": False},
        "output_dir": str(tmp_path / "runs"),
        "steps": 1,
    }
    reporter = Recorder()
    assert run(spec_of(spec), reporter=reporter) == TrainerExit.OK, reporter.ended
    (warning,) = [n for n in reporter.notes if "beyond_max_position" in n]
    assert warning == (
        "warning[beyond_max_position] teacher.load_parameters_path: batch.max_target_length 32 is longer than the "
        f"teacher's max_position_embeddings 16 ({short}/config.json): RoPE runs past it, but the teacher was not "
        "trained on positions that far and its quality degrades silently → lower batch.max_target_length to 16 or "
        "less, or use a teacher checkpoint trained for longer contexts"
    )
    from trainer.setup import position_warnings

    assert position_warnings(spec_of(merged(spec, batch={"max_target_length": 16}))) == []
    assert position_warnings(spec_of(merged(spec, teacher={"load_parameters_path": str(folders["teacher"])}))) == []


def _student_from(path: Path, tmp_path: Path) -> str:
    """The summary message of a pretrain run whose student loads from `path` (it fails at the load)."""
    from trainer.train import run

    spec = {
        "name": "student",
        "mode": "pretrain",
        "student": {"model": "tiny-4l", "load_parameters_path": str(path)},
        "output_dir": str(tmp_path / "runs"),
        "steps": 2,
    }
    assert run(spec_of(merged(spec))) == TrainerExit.USER_ERROR
    return json.loads((tmp_path / "runs" / "student" / "summary.json").read_text())["message"]


def test_a_folder_of_pytorch_weights_or_of_shards_without_their_index_says_so(folders, tmp_path):
    """Both said "checkpoint not found … no finished step directory with parameters in it", with no hint, and
    `validate --check-paths` passed them (see test_check_paths)."""
    torch_folder = tmp_path / "torch"
    torch_folder.mkdir()
    shutil.copy(folders["teacher"] / "config.json", torch_folder / "config.json")
    (torch_folder / "pytorch_model.bin").write_bytes(b"not read")
    message = _student_from(torch_folder, tmp_path)
    assert f"the student folder {torch_folder} has config.json and PyTorch weights (.bin)" in message, message
    assert "save_pretrained(DIR)" in message and "student.load_parameters_path" in message
    shards = tmp_path / "shards"
    shutil.copytree(folders["sharded"], shards)
    (shards / hf.INDEX).unlink()
    message = _student_from(shards, tmp_path)
    assert "safetensors shard(s) but no model.safetensors.index.json" in message, message


def test_rope_buffers_older_transformers_saved_are_skipped_as_transformers_skips_them(folders, tmp_path):
    from safetensors.numpy import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(folders["llama"], old)
    tensors = load_file(old / hf.SINGLE)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    save_file(tensors, old / hf.SINGLE, metadata={"format": "pt"})
    _assert_same_logits(old, np.load(folders["tokens"]))


def test_keys_a_gemma_config_leaves_out_take_transformers_defaults():
    """A hand-made Gemma 2 config without its soft-capping keys: transformers caps at 50/30, the trainer capped
    nothing (logits 19 % off, loaded silently). Explicit nulls still mean no capping."""
    config = {**SMALL, "model_type": "gemma2", "num_hidden_layers": 4}
    shape = hf.shape_from_config(config)
    assert (shape.attn_softcap, shape.final_softcap) == (50.0, 30.0)
    assert (shape.query_pre_attn_scalar, shape.sliding_window) == (256, 4096)
    nulls = hf.shape_from_config({**config, "attn_logit_softcapping": None, "final_logit_softcapping": None})
    assert (nulls.attn_softcap, nulls.final_softcap) == (None, None)


def test_a_gemma3_config_with_another_global_layer_pattern_is_its_global_layers():
    # `sliding_window_pattern: 3` (layer_types alike or absent) was "distillctl cannot build this model", though
    # the trainer builds it (a block's global_layers) and transformers computes it so.
    from distillspec.hf_config import shape_mismatches

    config = {**SMALL, "model_type": "gemma3_text", "num_hidden_layers": 6, "sliding_window_pattern": 3}
    for written in (
        config,
        {
            **config,
            "layer_types": ["sliding_attention"] * 2
            + ["full_attention"] * 1
            + ["sliding_attention"] * 2
            + ["full_attention"],
        },
    ):
        shape = hf.shape_from_config(written)
        assert (shape.global_every, shape.global_layers) == (6, (2, 5))
    # `_sliding_window_pattern` alone is what transformers writes and never reads (it builds every 6th global).
    private = {**SMALL, "model_type": "gemma3_text", "num_hidden_layers": 6, "_sliding_window_pattern": 3}
    assert hf.shape_from_config(private).global_layers is None
    stated = dataclasses.replace(shape, global_layers=None)
    assert shape_mismatches(shape, dataclasses.replace(stated, global_layers=(2, 5))) == []
    assert any("global_layers" in line for line in shape_mismatches(shape, stated))


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention is set"),
        ({"attn_logit_softcapping": 50.0}, "transformers' Gemma 3 stores but never applies"),
        (
            {"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}}},
            "RoPE scaling (linear) on the sliding-window layers",
        ),
    ],
)
def test_gemma3_configs_the_trainer_would_compute_otherwise_are_refused(settings, said):
    # Each loaded silently, its logits 6-49 % off transformers'.
    config = {**SMALL, "model_type": "gemma3_text", "num_hidden_layers": 2, **settings}
    with pytest.raises(UserError, match=re.escape(said)):
        hf.shape_from_config(config)


@pytest.mark.parametrize("name", ["llama3.1-8b", "qwen3-0.6b", "gemma2-2b", "gemma3-4b"])
def test_an_exported_config_carries_rope_in_both_transformers_layouts(name):
    """transformers 4.x reads rope_theta/rope_scaling (and Gemma 3's rope_local_base_freq): from an export with
    only transformers 5's rope_parameters it took θ 10000 and no scaling, silently."""
    shape = MODELS[name]
    config = hf.config_of(shape)
    assert config["rope_theta"] == shape.rope_theta
    scaling = config["rope_scaling"]
    assert (scaling is None) == (shape.rope_scaling is None)
    if scaling is not None:
        assert scaling["rope_type"] == shape.rope_scaling.kind and scaling["factor"] == shape.rope_scaling.factor
    if shape.family == "gemma3":
        assert config["rope_local_base_freq"] == shape.rope_local_theta
    legacy_only = {k: v for k, v in config.items() if k != "rope_parameters"}
    assert hf.shape_from_config(legacy_only) == hf.shape_from_config(config) == shape


def test_a_tied_models_extra_head_is_the_same_model_only_when_it_is_a_copy_of_the_embedding(folders, tmp_path):
    # transformers unties a tied config whose folder holds a different lm_head.weight (and uses it); the trainer
    # tied them silently, so one folder gave two models (logits 100 % apart).
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folders["qwen3"] / hf.SINGLE)  # qwen3: tie_word_embeddings true
    embedding = tensors["model.embed_tokens.weight"]
    copied, other = tmp_path / "copied", tmp_path / "other"
    for folder, head in ((copied, embedding.copy()), (other, embedding[::-1].copy())):
        shutil.copytree(folders["qwen3"], folder)
        save_file({**tensors, "lm_head.weight": head}, folder / hf.SINGLE, metadata={"format": "pt"})
    _assert_same_logits(copied, np.load(folders["tokens"]))  # a converter's copy: the same model
    with pytest.raises(UserError) as refused:
        load_model(str(other))
    assert "ties the output head to the embedding (tie_word_embeddings)" in refused.value.message
    assert "transformers uses that head (untied)" in refused.value.message
    assert "tie_word_embeddings: false" in refused.value.hint


def test_keys_a_config_leaves_out_take_each_familys_transformers_defaults():
    """head_dim and num_key_value_heads left out: transformers gives Qwen 3 128 and 32, Gemma 256 and 4 (checked
    against transformers' config classes); the trainer took hidden / heads and the heads, and then blamed the
    folder's tensors for a config transformers loads."""
    base = {**SMALL, "num_hidden_layers": 4}
    del base["head_dim"], base["num_key_value_heads"]
    want = {"llama": (8, 4), "qwen3": (128, 32), "gemma2": (256, 4), "gemma3_text": (256, 4)}
    for model_type, (head_dim, kv_heads) in want.items():
        shape = hf.shape_from_config({**base, "model_type": model_type})
        assert (shape.head_dim, shape.num_kv_heads) == (head_dim, kv_heads), model_type
    nulls = hf.shape_from_config({**base, "model_type": "qwen3", "head_dim": None, "num_key_value_heads": None})
    assert (nulls.head_dim, nulls.num_kv_heads) == (8, 4)  # an explicit null: hidden / heads and the heads


def test_a_checkpoint_with_constants_no_registry_model_has_distils_when_the_block_states_them(folders, tmp_path):
    """A Llama with another RoPE base and tied embeddings (SmolLM-style; Meta-Llama-3-8B is Llama 3.1 without RoPE
    scaling) was "a model distillctl cannot build", though the trainer computes it exactly: the block now states
    the constants, the hint says which, and a student pruned from it inherits them."""
    from distillspec.config import ModelSpec
    from trainer.checkpoints import checkpoint_shape
    from trainer.train import run

    folder = str(folders["smol"])
    stated = ModelSpec(model="tiny-4l", rope_theta=100_000.0, tie_embeddings=True)
    assert stated.shape() == checkpoint_shape(folder)  # the model transformers computes (test_logits_equal...)
    _assert_same_logits(folders["smol"], np.load(folders["tokens"]))
    spec = {
        "name": "smol",
        "mode": "distill",
        "student": {"model": "tiny-2l", "init": "teacher", "drop_layers": [1, 2]},
        "teacher": {"model": "tiny-4l", "load_parameters_path": folder},
        "loss": {"alpha": 1.0, "temperature": 1.0},
        "data": {"source": "synthetic", "seed": 1},
        "batch": {"per_device_batch_size": 8, "max_target_length": 32},
        "steps": 4,
        "checkpoint": {"enabled": False},
        "logging": {"every_steps": 2},
        "output_dir": str(tmp_path),
    }
    from distillspec.specfile import validate_data

    # Under the registry's constants: a different model, refused at start with what the block must say.
    assert run(spec_of(merged(spec))) == TrainerExit.USER_ERROR
    said = json.loads((tmp_path / "smol" / "summary.json").read_text())["message"]
    assert "rope_theta: expected 10000.0, found 100000.0" in said, said
    spec["teacher"] |= {"rope_theta": 100_000.0, "tie_embeddings": True}
    spec["name"] = "smol-stated"
    checked, problems = validate_data(merged(spec))
    assert checked is not None and checked.student_block().shape().rope_theta == 100_000.0, problems
    assert checked.student_block().shape().tie_embeddings
    assert run(spec_of(merged(spec))) == TrainerExit.OK


def test_an_image_text_gemma3_folder_gives_its_language_model(folders):
    """Gemma 3 4B/12B/27B exist on the Hub only as Gemma3ForConditionalGeneration (`model_type: gemma3`, the text
    settings under text_config, tensors under `language_model.`): every public checkpoint of the registry's
    gemma3-4b/12b/27b was refused. Its language model now loads, and computes what transformers computes for text."""
    folder = folders["gemma3_mm"]
    config = json.loads((folder / hf.CONFIG).read_text())
    assert config["model_type"] == "gemma3" and "vision_config" in config  # as transformers wrote it
    _assert_same_logits(folder, np.load(folders["tokens"]))
    shape = hf.shape_from_config(config)
    assert shape.family == "gemma3" and shape.vocab_size == 100 and shape.tie_embeddings


def test_an_image_text_gemma3_folders_wrong_tensors_are_named_as_the_folder_stores_them(folders, tmp_path):
    # They were named as the trainer knows them (`model.layers.0...`), names that are nowhere in the folder.
    from safetensors.numpy import load_file, save_file

    from orchestrator.core.checkpoint_paths import _tensor_problems
    from orchestrator.outputs import read_text, safetensors_header

    bad = tmp_path / "gemma3_mm"
    shutil.copytree(folders["gemma3_mm"], bad)
    tensors = load_file(bad / hf.SINGLE)
    prefix = next(n for n in tensors if n.endswith("layers.0.mlp.up_proj.weight")).removesuffix(
        "layers.0.mlp.up_proj.weight"
    )
    assert prefix in ("language_model.model.", "model.language_model."), prefix  # as transformers wrote it
    del tensors[f"{prefix}layers.1.mlp.up_proj.weight"]
    gate = f"{prefix}layers.0.mlp.gate_proj.weight"
    tensors[gate] = tensors[gate][:, :-1].copy()
    save_file(tensors, bad / hf.SINGLE, metadata={"format": "pt"})
    with pytest.raises(UserError) as e:
        load_model(str(bad))
    said = e.value.message
    assert f"{prefix}layers.1.mlp.up_proj.weight: expected" in said and f"{gate} in model.safetensors: expected" in said
    assert " model.layers." not in said, said
    # the launch-time check says the same
    shape = hf.shape_from_config(json.loads((bad / hf.CONFIG).read_text()))
    problems = _tensor_problems(str(bad), hf.SINGLE, shape, ("teacher",), read_text, safetensors_header)
    assert problems and f"{gate} in model.safetensors" in problems[0].message, problems


def test_an_image_text_gemma3_teachers_positions_and_token_ids_travel_to_the_export(folders):
    # They live in text_config: the export read the top level and left them out, silently.
    from trainer.export import carried_config

    text = json.loads((folders["gemma3_mm"] / hf.CONFIG).read_text())["text_config"]
    spec = {
        "name": "g3",
        "mode": "distill",
        "student": {"model": "gemma3-1b", "init": "random"},
        "teacher": {"model": "gemma3-1b", "load_parameters_path": str(folders["gemma3_mm"])},
        "loss": {"alpha": 1.0},
    }
    carried, source, notes = carried_config(spec_of(merged(spec)), "gemma3")
    assert source == str(folders["gemma3_mm"]) and notes == []
    assert carried["max_position_embeddings"] == text["max_position_embeddings"]
    assert all(carried.get(k) == text[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in text)


def test_a_gemma2_config_with_rope_scaling_is_refused():
    # transformers scales every Gemma 2 layer's RoPE, the trainer only the global ones: logits 24 % apart.
    config = {**SMALL, "model_type": "gemma2", "num_hidden_layers": 4}
    config["rope_parameters"] = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    with pytest.raises(UserError, match="RoPE scaling \\(linear\\) on a Gemma 2"):
        hf.shape_from_config(config)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("dynamic", "rope_type default computes the same"),
        ("yarn", "remove rope_scaling (or set rope_parameters' rope_type: default)"),
    ],
)
def test_an_unsupported_rope_type_names_the_key_and_what_to_do(kind, said):
    # "RoPE type 'dynamic' is not supported / use a llama3, linear or default RoPE model": which key, and for a
    # dynamic one (the default RoPE up to max_position_embeddings), nothing on what would do.
    config = {
        **SMALL,
        "model_type": "llama",
        "num_hidden_layers": 2,
        "rope_parameters": {"rope_type": kind, "factor": 2.0},
    }
    with pytest.raises(UserError) as e:
        hf.shape_from_config(config)
    assert f"RoPE type {kind!r} (rope_parameters' rope_type, or rope_scaling's type)" in e.value.message
    assert said in e.value.hint
