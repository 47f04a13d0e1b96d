"""Cross-field rules of a distillation spec: the guide's validation rules and the mistakes it troubleshoots.

`check(spec)` is pure and returns every problem; locations are the spec's own keys (the loader maps them to
the file's keys and positions). Each rule has a stable code.
"""

from __future__ import annotations

import math
import re
import unicodedata

from distillspec import buckets, layer_presets
from distillspec.config import (
    BUNDLED_DATA_SOURCES,
    DOCUMENT_SOURCES,
    DistillSpec,
    ScheduledValue,
    integral,
)
from distillspec.places import place
from distillspec.problems import Problem
from distillspec.registry import CONSTANT_FIELDS, GEMMA_CONSTANTS, MODELS, constant_in_spec_terms


def check(spec: DistillSpec) -> list[Problem]:
    problems: list[Problem] = []
    for rule in (
        _schedules,
        _beta_ramp,
        _magnitudes,
        _mode_and_teacher,
        _feature_loss,
        _pruning,
        _attention_heads,
        _constants,
        _global_layers,
        _data,
        _mesh,
        _paths,
        _event_folder,
        _batch_and_rate,
    ):
        problems.extend(rule(spec))
    return problems


# Object stores the trainer image reads (gcsfs); `memory://` is fsspec's own (tests, notebooks).
READ_SCHEMES = ("gs", "gcs", "memory", "file")


def _path_fields(spec: DistillSpec) -> list[tuple[tuple[str, ...], str]]:
    fields: list[tuple[tuple[str, ...], str | None]] = [
        (("student", "load_parameters_path"), spec.student.load_parameters_path),
        (("teacher", "load_parameters_path"), spec.teacher.load_parameters_path if spec.teacher else None),
        (("data", "path"), spec.data.path),
        (("eval", "path"), spec.eval.path if spec.eval is not None else None),
        (("offline_data_dir",), spec.offline_data_dir),
        (("output_dir",), spec.output_dir),
        (("logging", "tensorboard_dir"), spec.logging.tensorboard_dir),
        (("data", "tokenizer"), spec.data.tokenizer if spec.data.tokenizer != "byte" else None),
    ]
    return [(loc, path) for loc, path in fields if path is not None]


def _paths(spec: DistillSpec) -> list[Problem]:
    """Paths broken before anything reads them: blank, a bucket URL without a valid bucket, or a scheme the
    trainer's image has no filesystem for (each passed `validate` and failed in the pods)."""
    out = []
    for loc, path in _path_fields(spec):
        name = ".".join(loc)
        if not path.strip():
            out.append(Problem(loc, "blank_path", f"{name} is blank", f"write the path, or remove {name}"))
            continue
        if (malformed := malformed_path(path)) is not None:  # ` gs://b/x` passed, or was told to copy files to gs://
            out.append(Problem(loc, "path_malformed", f"{name} {path!r} {malformed[0]}", malformed[1]))
            continue
        if path.startswith("~"):
            out.append(tilde_path(loc, name, path))
        if "://" not in path:
            continue
        scheme, rest = path.split("://", 1)
        if scheme in buckets.SCHEMES:
            problem = buckets.bucket_name_problem(rest.split("/", 1)[0])
            if problem:
                out.append(Problem(loc, "bad_bucket", f"{name} {path!r} {problem}", buckets.HINT))
        elif scheme == "hf":  # `--check-paths` crashed asking the Hub from a machine without network
            out.append(_hub_path(loc, name, path))
        elif loc in WRITTEN and scheme in ("file", "memory"):  # read, never written: orbax took it for a bug (exit 70)
            local = rest if scheme == "file" and rest.startswith("/") else ""
            out.append(
                Problem(
                    loc,
                    "unsupported_scheme",
                    f"{name} {path!r}: the trainer writes its checkpoints to gs:// and local paths, not {scheme}://",
                    f"write it as a path ({local})" if local else f"point {name} at a bucket (gs://...) or a folder",
                )
            )
        elif scheme not in READ_SCHEMES:
            out.append(
                Problem(
                    loc,
                    "unsupported_scheme",
                    f"{name} {path!r}: the trainer's image {'writes' if loc in WRITTEN else 'reads'} gs:// and local "
                    f"paths, not {scheme}://",
                    f"point {name} at a bucket (gs://...) or a volume the pods mount (target.volumes)"
                    if loc in WRITTEN
                    else "copy the files to a bucket (gs://...) or a volume the pods mount (target.volumes)",
                    # the trainer refuses to write there at start (OutputNotWritable); a read may work in an image
                    # with that filesystem
                    severity="error" if loc in WRITTEN else "warning",
                )
            )
    return out


URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # RFC 3986


def malformed_path(path: str) -> tuple[str, str] | None:
    """(what is wrong, the fix) for a path with a typo no storage has: whitespace at an end, a control or
    zero-width character, a URL scheme in capitals or that is no scheme (`g s://`)."""
    if path != path.strip():
        return "begins or ends with whitespace", f"write it without: {path.strip()!r}"
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in path):  # controls, and the invisible format characters
        return "holds a control or zero-width character", "write the path again by hand, or copy it from a listing"
    if path[:5].lower() == "file:" and path[5:7] != "//":  # RFC 8089's short form: fsspec's /abs, a folder for pathlib
        return "is a file: URL in its short form, read as two places", f"write it as a path ({path[5:]})"
    if "://" in path:
        scheme = path.split("://", 1)[0]
        if not URL_SCHEME.fullmatch(scheme):
            return f"has no URL scheme: {scheme!r} is not one", "write the URL as gs://BUCKET/path, without spaces"
        if scheme != scheme.lower():
            return f"spells its scheme {scheme}://", f"write it in lower case: {scheme.lower()}://"
    return None


def tilde_path(loc: tuple[str, ...], name: str, path: str) -> Problem:
    """A path written with `~`: a shell expands it, a spec or sweep file does not (a folder named `~` in the current
    directory, a `rm -rf ~` away from the home folder)."""
    return Problem(
        loc,
        "tilde_path",
        f"{name} {path!r} starts with '~', which is not expanded: it names a folder called '~' here",
        "write the full path (/home/me/...) or one relative to the current directory",
        severity="warning",
    )


WRITTEN = {("output_dir",), ("logging", "tensorboard_dir")}  # places the trainer writes, not reads


def _hub_path(loc: tuple[str, ...], name: str, path: str) -> Problem:
    """An `hf://` path: the trainer reads folders and buckets, never the Hub (the pods would fail on it)."""
    if loc in WRITTEN:
        return Problem(
            loc,
            "hub_path_not_read",
            f"{name} {path!r} names the Hugging Face Hub; the trainer writes to a folder or a bucket and uploads "
            "nothing",
            f"point {name} at a folder or a bucket (gs://...); to publish a model, `distillctl export` writes a "
            "Hugging Face folder to upload",
        )
    if loc[-1] == "load_parameters_path":
        repo = path.removeprefix("hf://").removeprefix("models/").strip("/")
        return Problem(
            loc,
            "hub_model_not_read",
            f"{path!r} names the Hugging Face Hub; the trainer reads checkpoints from a folder or a bucket and "
            "does not download them",
            f"download it first (huggingface-cli download {repo} --local-dir DIR, or copy it to a bucket) and "
            "point load_parameters_path at that folder",
        )
    return Problem(
        loc,
        "hub_path_not_read",
        f"{name} {path!r} names the Hugging Face Hub; the trainer reads files from a folder or a bucket "
        "and downloads nothing",
        "download it first (huggingface-cli download ... --local-dir DIR, or copy it to a bucket) and "
        f"point {name} at that",
    )


def _schedules(spec: DistillSpec) -> list[Problem]:
    out = []
    for name in ("alpha", "temperature", "beta"):
        value: ScheduledValue = getattr(spec.loss, name)
        if value.schedule != "constant" and value.end is None:
            out.append(  # the guide: with no end the value stays fixed, so a warning, not a refusal
                Problem(
                    ("loss", name, "schedule"),
                    "schedule_without_end",
                    f"{name} schedule is {value.schedule!r} but {name} has no end value: it stays at {value.start}",
                    f"set loss.{name}.end to the value to reach at the last step, or set loss.{name}.schedule: constant",
                    severity="warning",
                )
            )
        elif value.schedule == "constant" and value.end is not None and value.end != value.start:
            if name == "beta" and _ramps_from_zero(value):
                continue  # beta_ramp_from_zero says it, with the whole fix
            out.append(
                Problem(
                    ("loss", name, "end"),
                    "end_ignored",
                    f"{name} end {value.end} is ignored: the schedule is constant, so {name} stays at {value.start}",
                    f"set loss.{name}.schedule to linear or cosine to move towards the end value, or remove loss.{name}.end",
                    severity="warning",
                )
            )
    return out


def _ramps_from_zero(beta: ScheduledValue) -> bool:
    return beta.start == 0.0 and beta.end is not None and beta.end > 0.0


def _beta_ramp(spec: DistillSpec) -> list[Problem]:
    """MaxText refuses `distill_beta=0.0` with a `distill_beta_end` whatever the schedule (the guide's
    troubleshooting row): under a constant one it was only `end_ignored`, whose fix (a schedule) led into this."""
    beta = spec.loss.beta
    if not _ramps_from_zero(beta):
        return []
    hint = f"set loss.beta.start to a small positive value such as 1e-6 and keep loss.beta.end: {beta.end}"
    if beta.schedule == "constant":
        hint += (
            ", with loss.beta.schedule: linear or cosine (a constant schedule ignores its end); or remove "
            "loss.beta.end to keep β at 0"
        )
    return [
        Problem(
            ("loss", "beta", "start"),
            "beta_ramp_from_zero",
            f"β starts at 0.0 and ends at {beta.end}: a β of 0.0 disables feature extraction, so there is nothing "
            "to ramp",
            hint,
        )
    ]


# The guide's scales: the cosine feature loss is bounded in [0, 2] per element (β of order 0.1–2.0), L2 is
# unbounded (β of order 0.01–0.1); temperatures from 1 (raw softmax) to 4 ("very flat" beyond).
BETA_SCALE = {"cosine": 2.0, "l2": 0.1}
TEMPERATURE_RANGE = (1.0, 4.0)


def _largest(value: ScheduledValue) -> tuple[float, str]:
    """The schedule's largest value and the key that sets it."""
    if value.end is not None and value.schedule != "constant" and value.end > value.start:
        return value.end, "end"
    return value.start, "start"


def _magnitudes(spec: DistillSpec) -> list[Problem]:
    """Warnings for β and temperature outside the guide's typical scales: valid, and sometimes meant, but the
    usual cause is a value carried over from another setting (cosine's β of 1.0 kept when switching to L2)."""
    if spec.mode != "distill":
        return []
    out = []
    loss = spec.loss
    if loss.feature_loss_on:
        beta, key = _largest(loss.beta)
        scale = BETA_SCALE[loss.feature_loss_type]
        if beta > scale:
            if loss.feature_loss_type == "l2":
                message = (
                    f"β reaches {beta} with the L2 feature loss, which is unbounded: the guide's β for L2 is of "
                    "order 0.01–0.1 (at cosine's scale the feature term swamps the logit losses)"
                )
                fix = "scale β down for L2, e.g. loss.beta.start: 0.05, loss.beta.end: 0.005 (the guide's L2 row)"
            else:
                message = (
                    f"β reaches {beta}: the cosine feature loss is bounded in [0, 2] per element, so the guide's β is "
                    "of order 0.1–2.0; above it the feature term outweighs the logit losses"
                )
                fix = "keep β at most 2.0 (the guide's aggressive recovery row: 2.0 → 0.5)"
            out.append(Problem(("loss", "beta", key), "beta_above_guide", message, fix, severity="warning"))
    soft = loss.alpha.start > 0 or (loss.alpha.end or 0) > 0  # α = 0 throughout: the temperature is never used
    low, high = TEMPERATURE_RANGE
    for key in ("start", "end") if soft else ():
        t = getattr(loss.temperature, key)
        if t is None or (key == "end" and loss.temperature.schedule == "constant"):
            continue
        if t > high:
            out.append(
                Problem(
                    ("loss", "temperature", key),
                    "temperature_above_guide",
                    f"temperature {t} is above the guide's 1–4: distributions are very flat and the soft loss's "
                    "gradient shrinks even with the T² scaling",
                    "start at 2.0 (the guide's recommendation) and anneal to 1.0",
                    severity="warning",
                )
            )
        elif t < low:
            out.append(
                Problem(
                    ("loss", "temperature", key),
                    "temperature_below_one",
                    f"temperature {t} is below 1: it sharpens both models' distributions beyond raw softmax, losing "
                    "the non-top tokens' ordering that distillation transfers",
                    "use a temperature of at least 1.0 (2.0 is the guide's recommended start)",
                    severity="warning",
                )
            )
    return out


def _mode_and_teacher(spec: DistillSpec) -> list[Problem]:
    if spec.mode == "pretrain":  # trains on its own: a teacher block (and its path) is never read
        if spec.teacher is None:
            return []
        return [
            Problem(
                ("teacher",),
                "teacher_unused",
                "mode is pretrain: the student trains alone, and the teacher block is not read (nor its path)",
                "set mode: distill to distill from it, or remove the teacher block",
                severity="warning",
            )
        ]
    out = []
    if spec.teacher is None:
        return [
            Problem(
                ("teacher",),
                "teacher_missing",
                "distillation needs a teacher model"
                if spec.mode == "distill"
                else "a teacher_logits run writes the teacher's logits and needs a teacher model",
                "add a `teacher:` block, or set mode: pretrain to train without one",
            )
        ]
    student, teacher = spec.student.shape(), spec.teacher.shape()
    if spec.mode == "distill" and student.vocab_size != teacher.vocab_size:
        out.append(
            Problem(
                ("teacher", "vocab_size") if spec.teacher.vocab_size is not None else ("teacher", "model"),
                "vocab_mismatch",
                f"Vocab size mismatch! Student: {student.vocab_size}, Teacher: {teacher.vocab_size}",
                "use a student and teacher with the same tokenizer (same vocab_size); logits cannot be matched across "
                "vocabularies",
            )
        )
    offline = spec.mode == "distill" and bool(spec.offline_data_dir)
    if spec.mode == "teacher_logits" and spec.offline_data_dir:
        out.append(
            Problem(
                ("offline_data_dir",),
                "teacher_logits_offline",
                "a teacher_logits run writes a logit cache; it cannot also read one (offline_data_dir is set)",
                "remove offline_data_dir: the cache is written to <output_dir>/<name>/logits",
            )
        )
    if offline and spec.loss.feature_loss_on:
        out.append(
            Problem(
                ("loss", "beta", "start"),
                "offline_feature_loss",
                "offline distillation (offline_data_dir is set) has no teacher activations, so β must be 0",
                "set loss.beta to 0.0, or remove offline_data_dir to distill online",
            )
        )
    if spec.mode == "teacher_logits" and spec.top_k is None:  # an offline run reads its cache's k when unset
        out.append(
            Problem(
                ("mode",),  # the key that asks for it (top_k is not written)
                "top_k_missing",
                "a teacher_logits run writes the teacher's top-k log-probabilities; top_k is not set",
                "set top_k (e.g. 64; the vocabulary size keeps every logit)",
            )
        )
    elif spec.top_k is not None and not (offline or spec.mode == "teacher_logits"):
        out.append(
            Problem(
                ("top_k",),
                "top_k_unused",
                "top_k only applies to teacher_logits runs and offline distillation (offline_data_dir)",
                "remove top_k, or set offline_data_dir to distill from a logit cache",
                severity="warning",
            )
        )
    if spec.top_k is not None and spec.top_k > teacher.vocab_size:
        out.append(
            Problem(
                ("top_k",),
                "top_k_over_vocab",
                f"top_k {spec.top_k} exceeds the teacher's vocabulary of {teacher.vocab_size}",
                f"set top_k to at most {teacher.vocab_size}",
            )
        )
    if not offline and not spec.teacher.load_parameters_path:
        out.append(
            Problem(
                ("teacher", "load_parameters_path"),
                "teacher_path_missing",
                "Teacher model path is missing: online distillation loads the teacher from teacher.load_parameters_path"
                if spec.mode == "distill"
                else "Teacher model path is missing: a teacher_logits run loads the teacher from "
                "teacher.load_parameters_path",
                "set teacher.load_parameters_path to the teacher's checkpoint (or set offline_data_dir for offline "
                "distillation)",
            )
        )
    return out


def _feature_loss(spec: DistillSpec) -> list[Problem]:
    if spec.mode != "distill" or spec.teacher is None or not spec.loss.feature_loss_on:
        return []
    out = []
    for side in ("student", "teacher"):
        model = getattr(spec, side)
        for flag in ("scan_layers", "enable_nnx"):
            if not getattr(model, flag):
                out.append(
                    Problem(
                        (side, flag),
                        f"feature_loss_needs_{flag}",
                        f"a β > 0 (feature loss) requires {flag}: true on both models; the {side} has {flag}: false",
                        f"set {side}.{flag}: true (features are stacked along the scanned layer axis and sown with NNX), "
                        "or set loss.beta: 0.0 for logit-only distillation",
                    )
                )
    student, teacher = spec.student.shape(), spec.teacher.shape()
    if student.emb_dim != teacher.emb_dim:
        out.append(
            Problem(
                ("student", "emb_dim") if spec.student.emb_dim is not None else ("student", "model"),
                "feature_width_mismatch",
                f"feature loss compares attention outputs, but the student's width is {student.emb_dim} and the "
                f"teacher's is {teacher.emb_dim}",
                "distill features only between models of the same width, or set loss.beta: 0.0",
            )
        )
    out.extend(_layer_indices(spec, student.num_layers, teacher.num_layers))
    return out


def _layer_indices(spec: DistillSpec, student_depth: int, teacher_depth: int) -> list[Problem]:
    indices = spec.loss.layer_indices
    loc = ("loss", "layer_indices")
    if indices is None:
        if student_depth != teacher_depth:
            return [
                Problem(
                    loc,
                    "layer_indices_missing",
                    f"no layer_indices: every layer would be matched, but the student has {student_depth} layers and "
                    f"the teacher {teacher_depth}",
                    f"choose layers explicitly, e.g. loss.layer_indices: full_depth:{min(8, student_depth)}",
                )
            ]
        return []
    if isinstance(indices, str):
        resolved = layer_presets.resolve_preset(indices, student_depth, spec.pruned_layers())
        if not resolved:
            return [
                Problem(
                    loc,
                    "layer_indices_empty",
                    f"preset {indices!r} selects no layers",
                    "pass straddle the pruned layers, e.g. straddle:[20, 21]",
                )
            ]
        what = f"preset {indices!r} resolves to {resolved}, but "
        items = [(loc, i) for i in resolved]
        kind, count = layer_presets.parse_preset(indices)
        if kind != "straddle" and isinstance(count, int) and count > student_depth:
            capped = Problem(
                loc,
                "layer_preset_capped",
                f"preset {indices!r} asks for {count} layers of the student's {student_depth}: it uses {resolved}",
                f"write {kind}:{student_depth} (or fewer) to say what is used",
                severity="warning",
            )
            return [capped, *_index_problems(items, what, student_depth, teacher_depth)]
    else:
        if not indices:
            return [
                Problem(
                    loc,
                    "layer_indices_empty",
                    "layer_indices is empty but β > 0",
                    "list the layers to align, e.g. full_depth:8, or set loss.beta: 0.0",
                )
            ]
        what = ""
        items = [(loc + (k,), i) for k, i in enumerate(indices)]
    return _index_problems(items, what, student_depth, teacher_depth)


def _index_problems(items: list, what: str, student_depth: int, teacher_depth: int) -> list[Problem]:
    out = []
    seen: dict[int, int] = {}
    limit = min(student_depth, teacher_depth)
    for item_loc, index in items:
        if not -limit <= index < limit:
            out.append(
                Problem(
                    item_loc,
                    "layer_index_out_of_range",
                    f"{what}layer index {index} is outside the student ({student_depth} layers) or teacher "
                    f"({teacher_depth} layers)",
                    f"use indices in [{-limit}, {limit - 1}] (negative indices count from the end)",
                )
            )
            continue
        normalized = index % student_depth
        if normalized in seen:
            out.append(
                Problem(
                    item_loc,
                    "layer_index_duplicate",
                    f"layer index {index} selects layer {normalized} twice",
                    "list each layer once",
                )
            )
        seen[normalized] = index
    return out


def _pruning(spec: DistillSpec) -> list[Problem]:
    student = spec.student
    if student.init != "teacher":
        if student.drop_layers:
            return [
                Problem(
                    ("student", "drop_layers"),
                    "drop_layers_unused",
                    "drop_layers only applies when the student starts from the teacher",
                    "set student.init: teacher, or remove drop_layers",
                    severity="warning",
                )
            ]
        return []
    if spec.teacher is None:
        return []  # reported as teacher_missing
    s, t = student.shape(), spec.teacher.shape()
    out = []
    if student.load_parameters_path:
        out.append(
            Problem(
                ("student", "init"),
                "student_init_conflict",
                "the student starts from the teacher (init: teacher) and also loads student.load_parameters_path; "
                "the trainer would load the path and ignore init and drop_layers",
                "keep one: remove student.load_parameters_path to prune the teacher, or init: teacher (and "
                "drop_layers) to load a student checkpoint",
            )
        )
    bad = [layer for layer in student.drop_layers if layer >= t.num_layers]
    if bad or len(set(student.drop_layers)) != len(student.drop_layers):
        out.append(
            Problem(
                ("student", "drop_layers"),
                "drop_layers_invalid",
                f"drop_layers must be distinct layers of the teacher's {t.num_layers}; got {student.drop_layers}",
                f"use distinct layer numbers in [0, {t.num_layers - 1}]",
            )
        )
    expected = t.num_layers - len(set(student.drop_layers))
    if s.num_layers != expected:
        out.append(
            Problem(
                ("student", "num_layers"),
                "pruned_depth_mismatch",
                f"a student made from the {t.num_layers}-layer teacher minus {len(set(student.drop_layers))} dropped "
                f"layers has {expected} layers, but student.num_layers is {s.num_layers}",
                f"set student.num_layers: {expected} (or change drop_layers)",
            )
        )
    if s.family != t.family:
        out.append(
            Problem(
                ("student", "model"),
                "pruned_family_mismatch",
                f"a student initialised from the teacher is of the teacher's family ({t.family}), but the student's "
                f"model {student.model} is {s.family}",
                "choose a student model of the teacher's family, or use init: random",
            )
        )
    for field in ("emb_dim", "num_query_heads", "num_kv_heads", "head_dim", "mlp_dim", "vocab_size"):
        if getattr(s, field) != getattr(t, field):
            overridden = getattr(student, field) is not None  # else the registry model's own value
            out.append(
                Problem(
                    ("student", field) if overridden else ("student", "model"),
                    "pruned_shape_mismatch",
                    f"a student initialised from the teacher keeps the teacher's {field} ({getattr(t, field)}), "
                    f"but the student has {getattr(s, field)}"
                    + ("" if overridden else f" (the registry's {student.model})"),
                    f"remove the student's {field} override, or use init: random"
                    if overridden
                    else f"use the teacher's model ({spec.teacher.model}) for the student, or set student.{field}: "
                    f"{getattr(t, field)}, or use init: random",
                )
            )
    return out


def _attention_heads(spec: DistillSpec) -> list[Problem]:
    """Grouped-query attention shares each kv head among num_query_heads / num_kv_heads query heads: a count that
    does not divide passed, and the trainer failed at start with a reshape error."""
    out = []
    for side in ("student", "teacher"):
        model = getattr(spec, side)
        if model is None:
            continue
        shape = model.shape()
        queries, kv = shape.num_query_heads, shape.num_kv_heads
        if queries % kv == 0:
            continue
        field = next((f for f in ("num_kv_heads", "num_query_heads") if getattr(model, f) is not None), "model")
        divisors = [d for d in range(1, queries + 1) if queries % d == 0]
        out.append(
            Problem(
                (side, field),
                "kv_heads_indivisible",
                f"the {side}'s {queries} query heads cannot be shared out among its {kv} kv heads: grouped-query "
                "attention needs the query heads to be a multiple of the kv heads",
                f"set {side}.num_kv_heads to a divisor of {queries} ({', '.join(map(str, divisors[-6:]))})",
            )
        )
    return out


def _constants(spec: DistillSpec) -> list[Problem]:
    """Gemma's constants (sliding window, soft-caps, ...) only on a Gemma block: a Llama or Qwen 3 block would
    ignore them; and a student made from the teacher computes with the teacher's constants (it inherits those it
    leaves out)."""
    out = []
    for side in ("student", "teacher"):
        model = getattr(spec, side)
        if model is None:
            continue
        family = MODELS[model.model].family
        for field in GEMMA_CONSTANTS:
            if getattr(model, field) is not None and not family.startswith("gemma"):
                out.append(
                    Problem(
                        (side, field),
                        "constant_not_in_family",
                        f"{field} is one of Gemma's constants; the {side} is {family}, whose layers do not use it",
                        f"remove {side}.{field}",
                    )
                )
            elif field == "rope_local_theta" and getattr(model, field) is not None and family != "gemma3":
                out.append(
                    Problem(
                        (side, field),
                        "constant_not_in_family",
                        f"rope_local_theta is Gemma 3's (its sliding-window layers' RoPE base); the {side} is {family}",
                        f"remove {side}.{field}",
                    )
                )
        # What the trainer would compute otherwise than transformers does (the Hugging Face loader refuses the
        # same in a config.json): a model trained here that transformers cannot run as trained.
        shape = model.shape()
        if family == "gemma3" and shape.attn_softcap is not None:
            out.append(
                Problem(
                    (side, "attn_softcap"),
                    "constant_not_in_family",
                    "attn_softcap on a Gemma 3: transformers' Gemma 3 stores attn_logit_softcapping but never applies "
                    "it, so an export would compute another model than the one trained",
                    f"remove {side}.attn_softcap (no published Gemma 3 caps attention)",
                )
            )
        if family == "gemma2" and shape.rope_scaling is not None:
            out.append(
                Problem(
                    (side, "rope_scaling"),
                    "constant_not_in_family",
                    "rope_scaling on a Gemma 2: transformers scales every layer's RoPE, this trainer only the global "
                    "layers' (no published Gemma 2 scales RoPE)",
                    f"remove {side}.rope_scaling",
                )
            )
    student, teacher = spec.student, spec.teacher
    if (
        student.init == "teacher"
        and teacher is not None
        and MODELS[student.model].family == MODELS[teacher.model].family
    ):
        s, t = spec.student_block().shape(), teacher.shape()
        for field in CONSTANT_FIELDS:
            if getattr(s, field) != getattr(t, field):
                mine, theirs = (constant_in_spec_terms(field, getattr(x, field)) for x in (s, t))
                out.append(
                    Problem(
                        ("student", field) if getattr(student, field) is not None else ("student", "model"),
                        "pruned_constant_mismatch",
                        f"a student initialised from the teacher computes with the teacher's {field} ({theirs}), but "
                        f"the student has {mine}",
                        f"remove student.{field} (the student inherits the teacher's), or use init: random",
                    )
                )
    return out


def _global_layers(spec: DistillSpec) -> list[Problem]:
    """`global_layers` only where Gemma 3 is built, within its depth, and (for a student made from the teacher)
    equal to the kinds the teacher's kept layers had."""
    out = []
    for side in ("student", "teacher"):
        model = getattr(spec, side)
        if model is None or model.global_layers is None:
            continue
        shape, loc = model.shape(), (side, "global_layers")
        if shape.family != "gemma3":
            out.append(
                Problem(
                    loc,
                    "global_layers_unused",
                    f"global_layers applies to Gemma 3 only; the {side} is {shape.family}",
                    f"remove {side}.global_layers",
                )
            )
            continue
        bad = [i for i in model.global_layers if i >= shape.num_layers]
        if bad or len(set(model.global_layers)) != len(model.global_layers):
            out.append(
                Problem(
                    loc,
                    "global_layers_invalid",
                    f"global_layers must be distinct layers of the {side}'s {shape.num_layers}; got "
                    f"{model.global_layers}",
                    f"use distinct layer numbers in [0, {shape.num_layers - 1}]",
                )
            )
    s, t = spec.student, spec.teacher
    if s.global_layers is not None and s.init == "teacher" and t is not None and not out:
        derived = spec.model_copy(update={"student": s.model_copy(update={"global_layers": None})}).student_block()
        want = derived.shape().global_layers
        if s.shape().global_layers != want:
            kept = list(want) if want is not None else list(derived.shape().pattern_global_layers())
            out.append(
                Problem(
                    ("student", "global_layers"),
                    "global_layers_mismatch",
                    f"a student made from the teacher keeps each layer's attention kind: its global layers are "
                    f"{kept}, but student.global_layers is {s.global_layers}",
                    "remove student.global_layers (it is derived from the teacher and drop_layers)",
                )
            )
    if spec.checkpoint.export == "maxtext" and not out:
        shape = spec.student_block().shape()
        if shape.family == "gemma3" and shape.global_layers is not None:
            out.append(
                Problem(
                    ("checkpoint", "export"),
                    "export_other_model",
                    f"the student's global layers {list(shape.global_layers)} are not every {shape.global_every}th: "
                    "MaxText decides a Gemma 3 layer's attention kind by its index alone, so its MaxText checkpoint "
                    "would compute another model",
                    "use checkpoint.export: hf (transformers reads its layer_types from 4.53 on), or keep teacher "
                    f"layers whose global ones fall on every {shape.global_every}th",
                )
            )
    return out


def _data(spec: DistillSpec) -> list[Problem]:
    data = spec.data
    out = []
    if data.source in ("text", "tokens", *DOCUMENT_SOURCES) and not data.path:
        out.append(
            Problem(
                ("data", "path"),
                "data_path_missing",
                f"data.source {data.source!r} needs data.path",
                "set data.path to a file, directory, glob or fsspec URL",
            )
        )
    if (data.tokenizer or "").rstrip("/").endswith(".model"):  # MaxText's default kind; the trainer stopped at start
        out.append(
            Problem(
                ("data", "tokenizer"),
                "tokenizer_sentencepiece",
                f"data.tokenizer {data.tokenizer!r} is a SentencePiece model: the trainer reads Hugging Face "
                "tokenizer.json files",
                "point it at the tokenizer.json beside it (a Hugging Face checkpoint folder has one)",
            )
        )
    if data.source == "synthetic" and data.path:  # a forgotten `source:` trained on synthetic tokens, exit 0
        out.append(
            Problem(
                ("data", "path"),
                "data_path_with_synthetic",
                f"data.path is {data.path!r} but data.source is synthetic (the default): the path would not be read",
                "set data.source to the path's format (text, tokens, jsonl, parquet, arrayrecord or hf_disk), or "
                "remove data.path to train on synthetic data",
            )
        )
    suffix = record_format_suffix(data.path) if data.source == "text" else None
    if suffix is not None:  # read as plain text, a .jsonl trained on its keys, quotes and braces, exit 0
        source = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrow": "hf_disk"}[suffix]
        out.append(
            Problem(
                ("data", "source"),
                "text_source_of_records",
                f"data.source is text but data.path {data.path!r} names {suffix} files: they would be trained on as "
                "plain text, their syntax and column names included",
                f"set data.source: {source} (with data.text_column, or data.prompt_column and data.completion_column)",
                severity="warning",
            )
        )
    if data.source == "hf":
        out.append(
            Problem(
                ("data", "source"),
                "hub_dataset_not_read",
                f"data.source 'hf' names a Hugging Face hub dataset ({data.path or 'no path'}); the trainer does not "
                "download data at run time",
                "save it to disk or a bucket first (datasets.load_dataset(...)['train'].save_to_disk('gs://bucket/"
                "corpus')) and use data.source: hf_disk with data.path: that folder (or export it as jsonl/parquet files)",
            )
        )
    elif data.source not in BUNDLED_DATA_SOURCES:
        out.append(
            Problem(
                ("data", "source"),
                "data_source_not_bundled",
                f"the bundled trainer reads {', '.join(BUNDLED_DATA_SOURCES)} data; {data.source!r} is not read yet",
                "use data.source: jsonl, parquet, arrayrecord or hf_disk (documents, packed), text (files tokenized by "
                "data.tokenizer) or tokens (a pre-tokenized .npy or raw uint16/int32 file) instead",
            )
        )
    if (data.prompt_column is None) != (data.completion_column is None):
        missing = "completion_column" if data.completion_column is None else "prompt_column"
        out.append(
            Problem(
                ("data", missing),
                "prompt_completion_pair",
                "data.prompt_column and data.completion_column go together",
                f"set data.{missing} too, or remove the other to read data.text_column",
            )
        )
    elif data.completion_only and data.prompt_column is None:
        out.append(
            Problem(
                ("data", "completion_only"),
                "completion_only_without_prompt",
                "data.completion_only masks the prompt, but no prompt_column/completion_column is set",
                "set data.prompt_column and data.completion_column, or remove completion_only",
            )
        )
    out += _shuffling(data) + _text_column(data)
    if spec.eval is not None:
        out += _eval_problems(spec.eval.path, data.source, data.path)
    if not spec.checkpoint.enabled and spec.checkpoint.every_steps:
        out.append(
            Problem(
                ("checkpoint", "every_steps"),
                "checkpoint_disabled",
                "checkpoint.enabled is false: checkpoint.every_steps does nothing (no checkpoint is written)",
                "set checkpoint.enabled: true to save checkpoints, or remove checkpoint.every_steps",
                severity="warning",
            )
        )
    if spec.checkpoint.every_steps and spec.checkpoint.every_steps > spec.steps:
        out.append(
            Problem(
                ("checkpoint", "every_steps"),
                "checkpoint_after_end",
                f"checkpoint.every_steps ({spec.checkpoint.every_steps}) exceeds steps ({spec.steps}): only the final "
                "checkpoint is written",
                "lower checkpoint.every_steps to save progress during training",
                severity="warning",
            )
        )
    return out


def _text_column(data) -> list[Problem]:
    """A warning for a text_column nothing reads: prompt/completion pairs read their two columns, and only
    document sources have columns."""
    if data.text_column == "text":  # the default
        return []
    if data.prompt_completion:
        why = "records are read as prompt_column + completion_column"
        fix = "remove data.text_column, or remove prompt_column and completion_column to train on it"
    elif data.source not in DOCUMENT_SOURCES:
        why = f"{data.source} data has no columns"
        fix = "remove data.text_column"
    else:
        return []
    return [
        Problem(
            ("data", "text_column"),
            "text_column_unused",
            f"data.text_column {data.text_column!r} is not read: {why}",
            fix,
            severity="warning",
        )
    ]


STREAMED_SOURCES = ("jsonl", "parquet")  # read as streams in file order: shuffled only within a window


def _shuffling(data) -> list[Problem]:
    """Warnings for a data.seed that changes nothing (streamed files read in order: seeds would be identical runs)
    and a shuffle_window the source does not use."""
    if data.source in STREAMED_SOURCES and data.seed and not data.shuffle_window:
        return [
            Problem(
                ("data", "seed"),
                "data_seed_changes_nothing",
                f"data.seed is {data.seed}, but {data.source} records are read in file order (data.shuffle_window is "
                "0): every data.seed reads the same data",
                "set data.shuffle_window (e.g. 1000 records) to shuffle the files and records by data.seed",
                severity="warning",
            )
        ]
    if data.shuffle_window and data.source not in STREAMED_SOURCES:
        how = "shuffled whole by data.seed" if data.source in DOCUMENT_SOURCES else "drawn at seeded random offsets"
        return [
            Problem(
                ("data", "shuffle_window"),
                "shuffle_window_unused",
                f"data.shuffle_window applies to jsonl and parquet files; {data.source} data is {how}",
                "remove data.shuffle_window",
                severity="warning",
            )
        ]
    return []


def _event_folder(spec: DistillSpec) -> list[Problem]:
    """A TensorBoard folder where no events are written: TensorBoard off, or a teacher_logits run (it logs none);
    one inside the run's own checkpoints folder (an events folder among the checkpoint steps resume reads, as
    `export -o` there is refused)."""
    if spec.logging.tensorboard_dir is None:
        return []
    if spec.logging.tensorboard and spec.mode != "teacher_logits":
        events = place(f"{spec.logging.tensorboard_dir}/{spec.name}")
        checkpoints = place(f"{spec.output_dir}/{spec.name}/checkpoints")
        if events == checkpoints or events.startswith(checkpoints + "/"):
            return [
                Problem(
                    ("logging", "tensorboard_dir"),
                    "tensorboard_dir_in_checkpoints",
                    f"logging.tensorboard_dir {spec.logging.tensorboard_dir!r} puts the events ({events}) inside the "
                    "run's checkpoints folder, among the steps a resume reads",
                    f"point it elsewhere, e.g. {spec.output_dir.rstrip('/')}/tensorboard (or leave it unset: events "
                    "then go to the run's tensorboard/ folder)",
                    severity="warning",
                )
            ]
        return []
    why, hint = (
        ("a teacher_logits run writes no events", "remove logging.tensorboard_dir")
        if spec.mode == "teacher_logits"
        else ("logging.tensorboard is false", "remove logging.tensorboard_dir, or set logging.tensorboard: true")
    )
    return [
        Problem(
            ("logging", "tensorboard_dir"),
            "tensorboard_dir_unused",
            f"logging.tensorboard_dir {spec.logging.tensorboard_dir!r} is set, but {why}: nothing is written there",
            hint,
            severity="warning",
        )
    ]


def _mesh(spec: DistillSpec) -> list[Problem]:
    mesh = spec.mesh
    fills = [axis for axis in ("data", "fsdp", "tensor") if getattr(mesh, axis) == -1]
    if len(fills) > 1:
        return [
            Problem(
                ("mesh", fills[1]),
                "mesh_two_fills",
                f"{' and '.join(f'mesh.{axis}' for axis in fills)} are both -1",
                "let one axis take the remaining devices (-1) and size the others",
            )
        ]
    out = []
    # The trainer keeps a dimension the axis does not divide whole on it (trainer.sharding): it runs, and the same
    # numbers come out, but those weights are not split. A warning for both models, as `plan`'s `mesh_replicates`:
    # it was an error for the student's kv heads alone, and not one for `tensor: -1` filling to the same size.
    models = [("student", spec.student)] + ([("teacher", spec.teacher)] if spec.teacher is not None else [])
    for side, model in models:
        heads = model.shape().num_kv_heads
        if mesh.tensor > 1 and heads % mesh.tensor:
            out.append(
                Problem(
                    ("mesh", "tensor"),
                    "tensor_axis_indivisible",
                    f"mesh.tensor = {mesh.tensor} does not divide the {side}'s {heads} kv heads: its attention "
                    "weights stay whole on that axis (no memory saved there, each of its devices computes them)",
                    "pick a tensor axis size that divides num_kv_heads",
                    severity="warning",
                )
            )
    return out


def _eval_problems(path: str | None, source: str, data_path: str | None = None) -> list[Problem]:
    """An eval set is held-out documents (a path, read like data) or the synthetic language's held-out batches;
    the training data's own path is not held out."""
    if source == "synthetic":
        if path is None:
            return []
        return [
            Problem(
                ("eval", "path"),
                "eval_path_with_synthetic",
                "the synthetic source's eval set is its own held-out batches; eval.path is not read",
                "remove eval.path, or train on documents (data.source jsonl, parquet, ...) to evaluate a file",
            )
        ]
    if source not in DOCUMENT_SOURCES:
        return [
            Problem(
                ("eval",),
                "eval_needs_documents",
                f"eval reads a held-out set like data, but data.source {source!r} is not a document source",
                f"use data.source {' | '.join(DOCUMENT_SOURCES)} (or synthetic) for an eval set, or remove the "
                "eval block",
            )
        ]
    if path is None:
        return [
            Problem(
                ("eval", "path"),
                "eval_path_missing",
                "eval has no path: a document source's held-out set is read from files",
                "set eval.path to the held-out file(s), read like data.path",
            )
        ]
    if data_path is not None and place(path) == place(data_path):
        return [
            Problem(
                ("eval", "path"),
                "eval_is_training_data",
                f"eval.path is data.path ({path}): the eval metrics would be measured on documents the run trains "
                "on, and read as held-out",
                "point eval.path at held-out files the training data does not contain (a validation split)",
                severity="warning",
            )
        ]
    return []


def record_format_suffix(path: str | None) -> str | None:
    """The record format a data path's name says (`.jsonl`, `.json`, `.parquet`, `.arrow`, compressed or not), if any."""
    if not path:
        return None
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for compressed in (".gz", ".zst", ".bz2", ".xz"):
        name = name.removesuffix(compressed)
    return next((s for s in (".jsonl", ".json", ".parquet", ".arrow") if name.endswith(s)), None)


LEARNING_RATE_HIGH = 0.1  # AdamW's peak for language models is of order 1e-5 to 1e-2; from here up it diverges


def _number(value: float) -> str:
    """A number as the file wrote it: 1048576, not 1.04858e+06; 0.25 as 0.25."""
    whole = integral(float(value))
    return f"{whole:,}" if isinstance(whole, int) else f"{value:g}"


def _batch_and_rate(spec: DistillSpec) -> list[Problem]:
    """A device's rows of tokens past int32 (each field alone is below it), and a learning rate no AdamW run of a
    language model trains at (1e30 passed without a word)."""
    out = []
    batch = spec.batch
    tokens = math.ceil(batch.per_device_batch_size) * batch.max_target_length
    if tokens >= 2**31:
        out.append(
            Problem(
                ("batch", "per_device_batch_size"),
                "batch_too_large",
                f"a device's batch is {tokens:,} tokens (per_device_batch_size {_number(batch.per_device_batch_size)} × "
                f"max_target_length {batch.max_target_length:,}): past 2**31, which the compiled step counts in int32",
                "lower per_device_batch_size or max_target_length (gradient_accumulation_steps keeps the global batch)",
            )
        )
    rate = spec.optimizer.learning_rate
    if rate >= LEARNING_RATE_HIGH:
        out.append(
            Problem(
                ("optimizer", "learning_rate"),
                "learning_rate_high",
                f"learning_rate {rate:g} is far above AdamW's peaks for language models (of order 1e-5 to 1e-2): "
                "the run would diverge in its first steps",
                "use a peak of order 1e-4 (3e-4 is the spec's default)",
                severity="warning",
            )
        )
    return out
