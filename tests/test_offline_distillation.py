"""Offline distillation: the top-k loss against the online loss, and a teacher_logits run whose cache trains a
student with no teacher in memory — with k = vocab, to the online run's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from trainer_support import merged, metric, read_metrics, spec_of

jax = pytest.importorskip("jax")

import jax.numpy as jnp

from distillspec import logit_cache_manifest
from trainer import logit_cache
from trainer import loss as losses
from trainer.exit_codes import TrainerExit
from trainer.train import run

VOCAB = 256  # the tiny models'


def _cached(teacher_logits, targets, k):
    return jax.jit(logit_cache.teacher_topk, static_argnums=2)(teacher_logits, targets, k)


@jax.jit
def _offline(student, cache, targets, mask, temperature):
    return losses.offline_distillation_sums(
        student,
        cache["topk_log_probs"],
        cache["topk_ids"],
        cache["tail_log_prob"],
        cache["target_log_prob"],
        targets,
        mask,
        temperature=temperature,
    )


@jax.jit
def _both(student, teacher, targets, mask, cache, temperature):
    """`((∂KL/∂s, sums) online, (∂KL/∂s, sums) offline)`: one compile serves every temperature."""

    def online(s):  # Σ KL_T over valid tokens: the objective at α = 1 over a count of 1, without its T²
        total, sums = losses.distillation_objective(
            s, teacher, targets, mask, alpha=1.0, temperature=temperature, token_count=1.0
        )
        return total / temperature**2, sums

    def offline(s):
        sums = _offline(s, cache, targets, mask, temperature)
        return sums["kl_at_T"][0], sums

    return jax.grad(online, has_aux=True)(student), jax.grad(offline, has_aux=True)(student)


@pytest.fixture(scope="module")
def logits():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    student = 3.0 * jax.random.normal(keys[0], (2, 6, VOCAB))
    teacher = 3.0 * jax.random.normal(keys[1], (2, 6, VOCAB))
    targets = jax.random.randint(keys[2], (2, 6), 0, VOCAB)
    mask = jnp.ones((2, 6)).at[1, 4:].set(0.0)
    return student, teacher, targets, mask


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_top_k_equal_to_the_vocabulary_is_the_online_loss_and_gradient(logits, temperature):
    student, teacher, targets, mask = logits
    cache = _cached(teacher, targets, VOCAB)
    assert bool(jnp.all(jnp.isneginf(cache["tail_log_prob"])))  # no mass outside a full top-k

    (grad_online, online), (grad_offline, offline) = _both(student, teacher, targets, mask, cache, temperature)
    for key in online:
        np.testing.assert_allclose(offline[key], online[key], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(grad_offline, grad_online, atol=1e-5)


@pytest.mark.slow
def test_small_top_k_keeps_the_tail_mass_exactly_and_matches_a_numpy_reference(logits):
    student, teacher, targets, mask = logits
    k, temperature = 8, 2.0
    cache = jax.device_get(_cached(teacher, targets, k))
    t = np.asarray(teacher, np.float64)
    log_p = t - np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True)) - t.max(-1, keepdims=True)
    order = np.argsort(-log_p, axis=-1)[..., :k]
    np.testing.assert_array_equal(cache["topk_ids"], order)
    top = np.take_along_axis(log_p, order, -1)
    np.testing.assert_allclose(cache["topk_log_probs"], top, rtol=1e-5, atol=1e-5)
    tail = np.log1p(-np.exp(top).sum(-1))
    np.testing.assert_allclose(cache["tail_log_prob"], tail, rtol=1e-4, atol=1e-4)
    # The loss: KL between the (k + 1)-class distributions, the bucket's logit the log-sum-exp of its logits.
    s = np.asarray(student, np.float64)
    outside = np.ones_like(s, bool)
    np.put_along_axis(outside, order, False, -1)
    s_tail = np.log(np.where(outside, np.exp(s), 0.0).sum(-1))
    s_classes = np.concatenate([np.take_along_axis(s, order, -1), s_tail[..., None]], -1) / temperature
    t_classes = np.concatenate([top, tail[..., None]], -1) / temperature

    def log_softmax(x):
        return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)

    p = np.exp(log_softmax(t_classes))
    kl = (p * (log_softmax(t_classes) - log_softmax(s_classes))).sum(-1)
    offline = _offline(student, cache, targets, mask, temperature)
    np.testing.assert_allclose(offline["kl_at_T"][0], (kl * np.asarray(mask)).sum(), rtol=1e-5)
    target_lp = np.take_along_axis(log_p, np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(offline["teacher_ce"][0], -(target_lp * np.asarray(mask)).sum(), rtol=1e-5)
    grad = jax.jit(jax.grad(lambda s: _offline(s, cache, targets, mask, 2.0)["kl_at_T"][0]))(student)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_a_cache_knows_its_tokenizer_by_content_not_by_path(tmp_path):
    # A byte-identical copy of the tokenizer.json elsewhere was refused by its path.
    for folder, text in (("a", '{"model": {"vocab": {"x": 0}}}'), ("b", '{"model": {"vocab": {"x": 0}}}')):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tokenizer.json").write_text(text)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "tokenizer.json").write_text('{"model": {"vocab": {"y": 0}}}')
    made = logit_cache.tokenizer_identity(str(tmp_path / "a" / "tokenizer.json"))
    copy = logit_cache.tokenizer_identity(str(tmp_path / "b" / "tokenizer.json"))
    edited = logit_cache.tokenizer_identity(str(tmp_path / "c" / "tokenizer.json"))
    byte = logit_cache.tokenizer_identity("byte")
    assert logit_cache_manifest.same("tokenizer", made, copy) and not logit_cache_manifest.same(
        "tokenizer", made, edited
    )
    assert logit_cache_manifest.same("tokenizer", byte, byte) and not logit_cache_manifest.same("tokenizer", made, byte)
    assert not logit_cache_manifest.same("tokenizer", byte, made)


def test_a_cache_knows_the_same_place_written_two_ways():
    # A teacher at `runs/t/checkpoints/` and a spec naming `./runs/t/checkpoints` were "another teacher".
    from distillspec.config import DistillSpec

    def spec(teacher: str, data: str) -> DistillSpec:
        return DistillSpec.model_validate(
            {
                "student": {"model": "tiny-2l"},
                "teacher": {"model": "tiny-4l", "load_parameters_path": teacher},
                "data": {"source": "jsonl", "path": data, "tokenizer": "byte"},
            }
        )

    written = logit_cache_manifest.expected(spec("runs/t/checkpoints/", "corpus/"))
    import os

    absolute = os.path.abspath("runs/t/checkpoints")  # the same place written absolute (it was "another teacher")
    for teacher, data in (
        ("./runs/t/checkpoints", "corpus"),
        ("runs//t/checkpoints", "./corpus/"),
        (absolute, "corpus"),
    ):
        assert logit_cache_manifest.differences(written, logit_cache_manifest.expected(spec(teacher, data)))[0] == []
    other = logit_cache_manifest.expected(spec("runs/u/checkpoints", "corpus"))
    assert logit_cache_manifest.differences(written, other)[0] == ["teacher"]
    bucket = logit_cache_manifest.expected(spec("gs://bkt/t/", "gs://bkt/c"))
    assert (
        logit_cache_manifest.differences(bucket, logit_cache_manifest.expected(spec("gs://bkt/t", "gs://bkt/c/")))[0]
        == []
    )


# --- end to end: teacher -> cache -> student (slow: five tiny runs) -------------------------------------------


def _base(out: Path, **changes) -> dict:
    data = {
        "name": "teacher",
        "mode": "pretrain",
        "student": {"model": "tiny-4l", "remat": "none"},
        "data": {"source": "synthetic", "seed": 3},
        "batch": {"per_device_batch_size": 4, "max_target_length": 16, "gradient_accumulation_steps": 2},
        "steps": 2,
        "optimizer": {"learning_rate": 3e-3, "warmup_fraction": 0.0},
        "checkpoint": {"enabled": False},
        "logging": {"every_steps": 1, "tensorboard": False},
        "output_dir": str(out),
    }
    return merged(data, **changes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("offline")
    assert run(spec_of(_base(out, checkpoint={"enabled": True}))) == TrainerExit.OK
    teacher = {"model": "tiny-4l", "remat": "none", "load_parameters_path": str(out / "teacher" / "checkpoints")}
    distill = {
        "mode": "distill",
        "student": {"model": "tiny-2l", "remat": "none"},
        "teacher": teacher,
        "loss": {"alpha": 0.7, "temperature": 2.0, "beta": 0.0},
    }
    cache_run = {**distill, "mode": "teacher_logits"}
    assert run(spec_of(_base(out, **cache_run, name="cache", top_k=VOCAB))) == TrainerExit.OK
    assert run(spec_of(_base(out, **distill, name="online"))) == TrainerExit.OK
    cache = str(out / "cache" / "logits")
    assert run(spec_of(_base(out, **distill, name="offline", offline_data_dir=cache, top_k=VOCAB))) == TrainerExit.OK
    return {"out": out, "cache": Path(cache), "distill": distill}


@pytest.mark.slow
def test_teacher_logits_run_writes_a_versioned_cache_per_process(runs):
    manifest = json.loads((runs["cache"] / "manifest.json").read_text())
    assert manifest["top_k"] == VOCAB and manifest["micro_batches"] == 4 and manifest["processes"] == 1
    assert manifest["teacher"]["block"]["load_parameters_path"].endswith("teacher/checkpoints")
    assert manifest["tokenizer"] == {"name": "byte", "sha256": None}
    files = sorted((runs["cache"] / "process-00000-of-00001").iterdir())
    assert [f.name for f in files] == [f"micro-00000{i}.npz" for i in range(4)]
    with np.load(files[0]) as first:
        assert first["topk_log_probs"].shape == (4, 16, VOCAB) and first["inputs"].shape == (4, 16)
    assert json.loads((runs["out"] / "cache" / "summary.json").read_text())["status"] == "succeeded"
    # It trains no model: export said "no checkpoint" and told people to set checkpoint.enabled.
    from trainer.exit_codes import UserError
    from trainer.export import export_run

    with pytest.raises(UserError, match="is a teacher_logits run") as e:
        export_run(str(runs["out"] / "cache"), str(runs["out"] / "cache-export"))
    # ... the teacher's own run, which export takes (the checkpoints folder it named was "not a run folder")
    assert f"distillctl export {runs['out'] / 'teacher'} -o DIR" in e.value.hint
    assert not (runs["out"] / "cache-export").exists()
    with pytest.raises(UserError, match="is not a run folder") as e:
        export_run(str(runs["out"] / "teacher" / "checkpoints"), str(runs["out"] / "cache-export"))
    assert e.value.hint == f"pass the run folder above it: {runs['out'] / 'teacher'}"


@pytest.mark.slow
def test_offline_student_with_full_top_k_trains_like_the_online_student(runs):
    online, offline = read_metrics(runs["out"] / "online"), read_metrics(runs["out"] / "offline")
    assert [r["step"] for r in offline] == [1, 2]
    names = ("distill/kl_div_at_T", "distill/hard_loss", "distill/teacher_loss", "distill/total_loss")
    for name in names:  # step 1: the same parameters, the same loss
        assert metric(offline[0], name) == pytest.approx(metric(online[0], name), rel=1e-5, abs=1e-5), name
    for name in names:  # step 2: after one update from (numerically) the same gradient
        assert metric(offline[1], name) == pytest.approx(metric(online[1], name), rel=1e-3), name


@pytest.mark.slow
def test_rewriting_a_cache_removes_its_manifest_before_the_first_new_micro_batch(runs, tmp_path):
    """A cache run again with other settings (a teacher trained further behind the same path, another data seed),
    stopped part way: its old manifest would have vouched for new micro-batches mixed with old ones (a student
    with the old settings trained on both, exit 0). Gone, the student is told there is no cache."""
    import shutil

    cache = tmp_path / "logits"
    shutil.copytree(runs["cache"], cache)
    old = (cache / "process-00000-of-00001" / "micro-000000.npz").read_bytes()
    fields = {**runs["distill"], "mode": "teacher_logits", "top_k": VOCAB, "data": {"seed": 4}}
    spec = spec_of(_base(runs["out"], **fields))
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"tokenizer": "byte"})})
    assert logit_cache.write(spec, str(cache), on_step=lambda step: True) == {}  # stopped after its first step
    assert not (cache / "manifest.json").exists()
    assert (cache / "process-00000-of-00001" / "micro-000000.npz").read_bytes() != old  # rewritten
    assert run(_offline_spec(runs, offline_data_dir=str(cache))) == TrainerExit.USER_ERROR
    summary = json.loads((runs["out"] / "bad" / "summary.json").read_text())
    assert "holds no logit cache" in summary["message"], summary["message"]


def _offline_spec(runs, **changes):
    fields = {**runs["distill"], "name": "bad", "offline_data_dir": str(runs["cache"]), "top_k": VOCAB, **changes}
    return spec_of(_base(runs["out"], **fields))


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes, names",
    [
        ({"top_k": 64}, "top_k"),
        ({"teacher": {"model": "tiny-4l", "load_parameters_path": "/elsewhere/checkpoints"}}, "teacher"),
        ({"data": {"source": "synthetic", "seed": 4}}, "data.seed: cache 3, spec 4"),  # the key, not the block
        ({"data": {"source": "synthetic", "seed": 3, "tokenizer": "tok/tokenizer.json"}}, "tokenizer"),
        ({"steps": 3}, "micro-batches"),
    ],
)
def test_a_cache_made_for_another_spec_is_a_clear_error_naming_the_manifest(runs, changes, names):
    if "tokenizer" in json.dumps(changes):
        tokenizer = runs["out"] / "tok" / "tokenizer.json"
        tokenizer.parent.mkdir(exist_ok=True)
        tokenizer.write_text('{"model": {}}')
        changes = {"data": {**changes["data"], "tokenizer": str(tokenizer)}}
    assert run(_offline_spec(runs, **changes)) == TrainerExit.USER_ERROR
    summary = json.loads((runs["out"] / "bad" / "summary.json").read_text())
    assert str(runs["cache"] / "manifest.json") in summary["message"]
    assert names in summary["message"] and "teacher.sha256" not in summary["message"]  # read as the weights' hash


@pytest.mark.slow
def test_offline_data_dir_pointing_at_nothing_is_an_error(runs):
    assert run(_offline_spec(runs, offline_data_dir=str(runs["out"] / "nothing"))) == TrainerExit.USER_ERROR
    summary = json.loads((runs["out"] / "bad" / "summary.json").read_text())
    assert "holds no logit cache" in summary["message"] and "nothing/manifest.json" in summary["message"]
    # The teacher_logits run's own folder, not its `logits` folder: the hint names the folder that holds it.
    assert run(_offline_spec(runs, offline_data_dir=str(runs["cache"].parent))) == TrainerExit.USER_ERROR
    summary = json.loads((runs["out"] / "bad" / "summary.json").read_text())
    assert "it is the run folder of a teacher_logits run" in summary["message"]
    assert f"point offline_data_dir at its cache: {runs['cache']}" in summary["message"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("truncate", "is damaged (truncated?)"),
        ("garbage", "is not a .npz archive"),
        ("narrow", "topk_ids has shape (4, 16, 128), the manifest says (4, 16, 256)"),
        # found at start by one listing, not when training reached it (hours in, on a real cache)
        ("missing", "lacks 1 micro-batch file(s) this run reads: micro-000001.npz"),
    ],
)
def test_a_damaged_cache_file_is_a_user_error_naming_it(runs, tmp_path, damage, said):
    # These were internal errors (exit 70: BadZipFile, a compiled step given other shapes) or a pickle warning.
    import shutil

    cache = tmp_path / "logits"
    shutil.copytree(runs["cache"], cache)
    victim = cache / "process-00000-of-00001" / "micro-000001.npz"
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:200])
    elif damage == "garbage":
        victim.write_bytes(np.random.default_rng(0).bytes(victim.stat().st_size))
    elif damage == "missing":
        victim.unlink()
        victim = victim.parent  # the message names the folder
    else:
        with np.load(victim) as archive:
            arrays = {k: archive[k] for k in archive.files}
        for key in ("topk_ids", "topk_log_probs"):
            arrays[key] = arrays[key][..., : VOCAB // 2]
        np.savez(victim, **arrays)
    assert run(_offline_spec(runs, offline_data_dir=str(cache))) == TrainerExit.USER_ERROR
    summary = json.loads((runs["out"] / "bad" / "summary.json").read_text())
    assert str(victim) in summary["message"] and said in summary["message"], summary["message"]


@pytest.mark.slow
def test_an_offline_run_without_top_k_reads_its_caches(runs):
    # MaxText's distillation config has no top_k key (its trainer reads k from the cache): a MaxText offline file
    # was refused (top_k_missing), and no offline file was valid in both tools.
    spec = _offline_spec(runs, name="cache-k", top_k=None)
    assert spec.top_k is None and run(spec) == TrainerExit.OK
    assert [r["step"] for r in read_metrics(runs["out"] / "cache-k")] == [1, 2]
    first = read_metrics(runs["out"] / "offline")[0]
    assert metric(read_metrics(runs["out"] / "cache-k")[0], "distill/kl_div_at_T") == metric(
        first, "distill/kl_div_at_T"
    )


@pytest.mark.slow
def test_a_finished_offline_run_started_again_stays_succeeded(runs):
    # The cache holds exactly `steps` micro-batches; started again, the finished run read one past the last to
    # compile, failed (exit 1, "write the cache again") and its summary read failed.
    spec = _offline_spec(runs, name="offline-again", checkpoint={"enabled": True})
    assert run(spec) == TrainerExit.OK
    summary = runs["out"] / "offline-again" / "summary.json"
    before = json.loads(summary.read_text())
    assert run(spec) == TrainerExit.OK
    after = json.loads(summary.read_text())
    assert (after["status"], after["step"], after["final_metrics"]) == ("succeeded", 2, before["final_metrics"])


@pytest.mark.slow
def test_a_complete_cache_run_again_is_kept_as_it_is(runs):
    # A finished teacher_logits run started again removed its manifest and recomputed every micro-batch: the
    # costly teacher pass the cache exists to make once, students refused meanwhile.
    from trainer_support import Recorder

    files = sorted(runs["cache"].rglob("*"))
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files if f.is_file()}
    summary = json.loads((runs["out"] / "cache" / "summary.json").read_text())
    recorder = Recorder()
    spec = spec_of(_base(runs["out"], **{**runs["distill"], "mode": "teacher_logits"}, name="cache", top_k=VOCAB))
    assert run(spec, reporter=recorder) == TrainerExit.OK
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files if f.is_file()} == before
    assert any("is complete for this spec and teacher step: kept as it is" in n for n in recorder.notes), recorder.notes
    again = json.loads((runs["out"] / "cache" / "summary.json").read_text())
    assert again["status"] == "succeeded" and again["tokens"] == summary["tokens"]
    assert again["started_at"] == summary["started_at"] and again["tokens_per_sec"] == summary["tokens_per_sec"]
    # The teacher trained on behind the same `checkpoints` path (its latest step is another): written again.
    import shutil

    teacher = runs["out"] / "teacher" / "checkpoints"
    latest = max(teacher.iterdir(), key=lambda p: int(p.name))
    later = latest.with_name(str(int(latest.name) + 1))
    shutil.copytree(latest, later)
    try:
        recorder = Recorder()
        assert run(spec, reporter=recorder) == TrainerExit.OK
        assert any("wrote the teacher's top-" in n for n in recorder.notes), recorder.notes
        # ... and says so: the students of the sweep now read another cache.
        [said] = [n for n in recorder.notes if "was written for another" in n]
        assert f"teacher_step ({latest.name}; now {later.name}): writing it again" in said, said
        manifest = json.loads((runs["cache"] / "manifest.json").read_text())
        assert manifest["teacher_step"] == later.name  # the step: the same one read through another folder is the same
    finally:
        shutil.rmtree(later)


def test_a_cache_reads_the_same_rows_on_another_number_of_processes(tmp_path):
    # Rows are the same, in the same order, whoever wrote them: 6 rows from 2 writers (3 each) read by 3 processes
    # (2 each) and by 1. A cache made on 16 hosts served students on 16 only.
    from trainer.corpus import Shard
    from trainer.logit_cache import TEACHER_KEYS, CacheBatches, _save, micro_file, shard_folder

    rows, length, k = 6, 4, 2
    every = {key: np.arange(rows * length).reshape(rows, length) for key in ("inputs", "targets", "mask")}
    every.update({key: np.arange(rows * length * k).reshape(rows, length, k) for key in ("topk_log_probs", "topk_ids")})
    every.update({key: np.arange(rows * length).reshape(rows, length) for key in TEACHER_KEYS if key not in every})
    for w in range(2):
        (tmp_path / shard_folder(w, 2)).mkdir()
        _save(
            str(tmp_path / shard_folder(w, 2) / micro_file(0)), {k_: v[w * 3 : (w + 1) * 3] for k_, v in every.items()}
        )
    for readers in (3, 1):
        got = [
            CacheBatches(str(tmp_path), Shard(i, readers), 1, written_by=2, rows=rows).next()["inputs"][0]
            for i in range(readers)
        ]
        np.testing.assert_array_equal(np.concatenate(got), every["inputs"])


@pytest.mark.slow
def test_a_student_is_told_when_its_teacher_trained_on_since_the_cache(runs, caplog):
    # The cache is whole and consistent, but of the teacher as it was: a student distilled from it in silence.
    import shutil

    teacher = runs["out"] / "teacher" / "checkpoints"
    latest = max(teacher.iterdir(), key=lambda p: int(p.name))
    later = latest.with_name(str(int(latest.name) + 5))
    shutil.copytree(latest, later)
    try:
        with caplog.at_level("WARNING", logger="trainer.logit_cache"):
            assert run(_offline_spec(runs, name="told")) == TrainerExit.OK
    finally:
        shutil.rmtree(later)
    (said,) = [r.getMessage() for r in caplog.records if "now resolves to" in r.getMessage()]
    assert f"resolves to step {later.name}" in said and "distils from the teacher as it was" in said
