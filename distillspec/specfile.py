"""Load a spec from a file, text or data and report every problem with the file's keys, line and column.

The pipeline: YAML with positions -> (MaxText layout -> native layout) -> batch-shape rule -> pydantic (types,
ranges, unknown keys) -> cross-field checks -> locations mapped back to the file. When pydantic rejects some
fields, the offending keys are set aside and the rest is validated again so that the cross-field rules still
report what they can: a user sees every problem in one pass.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from distillspec import checks, maxtext_format
from distillspec import config as config_module
from distillspec.config import BATCH_SHAPE_KEYS, BatchSpec, DistillSpec
from distillspec.problems import Loc, Problem, format_loc, has_errors
from distillspec.pydantic_problems import problems_from
from distillspec.yaml_source import (
    YamlDocument,
    YamlSourceError,
    copy_plain,
    parse_yaml,
    read_text_file,
    source_problem,
)

_REPAIR_ROUNDS = 8

HINTS = {
    "alpha_out_of_range": "α weights the teacher's soft loss against the labels' hard loss: 0 is pure SFT, 1 pure "
    "teacher mimicry",
    "temperature_out_of_range": "use a temperature > 0: 1 is the raw softmax, 2 the guide's recommended start",
    "beta_out_of_range": "β scales the feature loss: 0 disables it; 0.1-2.0 is typical for cosine, 0.01-0.1 for l2",
    "unknown_model": "`distillctl models` lists the models distillctl knows",
    "bad_layer_preset": "use a list such as [3, 7, 11] or a preset: first:N, full_depth:N, top_heavy:N, "
    "straddle:[pruned layers]",
    "bad_run_name": "use letters, digits, '.', '_' and '-'",
    "bad_mesh_axis": "use -1 for the axis that takes the remaining devices, or a size >= 1",
    "llama3_only": "remove them, or use type: llama3",
}


@dataclasses.dataclass(frozen=True)
class SpecReport:
    """The outcome of loading one spec: the spec when there is no error, and every problem found."""

    file: str | None
    spec: DistillSpec | None
    problems: tuple[Problem, ...]
    format: str | None = None  # "native" or "maxtext"
    # Places a later check's problem (its loc in spec terms) at its line in this file (`--check-paths`)
    locate: Callable[[Problem], Problem] | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.spec is not None and not has_errors(list(self.problems))


def read_spec_file(path: str | Path) -> SpecReport:
    file = str(path)
    try:
        document = parse_yaml(read_text_file(path))
    except YamlSourceError as e:
        return SpecReport(file, None, (source_problem(e, file),))
    return validate_document(document, file=file)


def read_spec_text(text: str, *, file: str | None = None) -> SpecReport:
    try:
        document = parse_yaml(text)
    except YamlSourceError as e:
        return SpecReport(file, None, (source_problem(e, file),))
    return validate_document(document, file=file)


def looks_like_sweep(data: dict[str, Any]) -> bool:
    """A sweep file's mapping given where a spec is expected (its `spec:` names the spec)."""
    return "spec" in data and "student" not in data and not maxtext_format.looks_like_maxtext(data)


def validate_document(document: YamlDocument, *, file: str | None = None) -> SpecReport:
    data = document.data
    if not isinstance(data, dict):
        kind = {"int": "an integer", "float": "a number", "str": "a string", "list": "a list", "bool": "a boolean"}.get(
            type(data).__name__, "null" if data is None else type(data).__name__
        )
        problem = Problem(
            (),
            "not_a_mapping",
            f"the top level of a spec must be a mapping of keys, not {kind}",
            "start with `student:`, `teacher:` and `loss:` blocks",
            file=file,
            line=1,
            column=1,
        )
        return SpecReport(file, None, (problem,))
    if looks_like_sweep(data):
        problem = Problem(
            (),
            "sweep_not_spec",
            "this is a sweep file, not a spec",
            "`distillctl plan`, `render` and `sweep` take a sweep file; `validate`, `explain`, `convert` and `train` "
            "take the spec it names under `spec:`",
            file=file,
            line=1,
            column=1,
        )
        return SpecReport(file, None, (problem,))
    if isinstance(data.get("points"), list) and "sweep" in data and "student" not in data:
        problem = Problem(
            (),
            "golden_not_spec",
            "this is a golden file (`distillctl golden update` writes them), not a spec",
            "`distillctl regress SWEEP --golden FILE` reads it; `validate` takes a spec",
            file=file,
            line=1,
            column=1,
        )
        return SpecReport(file, None, (problem,))
    problems = document.duplicate_key_problems() + document.other_base_problems()
    translation = None
    if maxtext_format.looks_like_maxtext(data):
        translation = maxtext_format.from_maxtext(data)
        spec, found = validate_data(translation.data, batch_keys_home="the top level of the file")
        in_file = [translation.in_file_terms(p) for p in found]
        # A block the translation refused (student_overrides: 5) is not also missing its keys.
        refused = [t.loc for t in translation.problems if t.is_error]
        problems += translation.problems + [p for p in in_file if not any(_related(p.loc, r) for r in refused)]
        fmt = "maxtext"
    else:
        spec, found = validate_data(data)
        problems += found
        fmt = "native"
    problems += _unexpanded_strings(data)
    # One key of a MaxText file can set both models (a top-level `scan_layers`): its problem is said once.
    near = maxtext_format.NEAR_KEYS if translation else {}
    located = list(dict.fromkeys(_locate(p, document, file, near) for p in problems))
    if translation is not None:
        located = _said_once(located)
    located.sort(key=lambda p: (p.line or 0, p.column or 0, p.code))

    def locate(problem: Problem) -> Problem:
        return _locate(translation.in_file_terms(problem) if translation else problem, document, file, near)

    return SpecReport(file, spec if not has_errors(located) else None, tuple(located), fmt, locate)


_ENV_VAR = re.compile(r"\$\{[A-Za-z_]\w*\}|\$[A-Z_][A-Z0-9_]*\b")


def _unexpanded_strings(data: Any, loc: Loc = ()) -> list[Problem]:
    """Strings a spec read on its own (`validate`, `train`) would take literally: a `${prerequisites.<name>.output}`,
    which only a sweep fills in, and an environment variable (`${HOME}`, `$OUT_DIR`), which nothing expands."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _unexpanded_strings(v, (*loc, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _unexpanded_strings(v, (*loc, i))]
    if isinstance(data, str) and "${prerequisites." not in data and _ENV_VAR.search(data):
        return [
            Problem(
                loc,
                "env_var_not_expanded",
                f"{data!r} looks like it uses an environment variable ({_ENV_VAR.search(data).group(0)}): distillctl and "
                "the trainer read paths as written, never expanded",
                "write the value itself (the pods have another environment than this shell)",
                severity="warning",
            )
        ]
    if isinstance(data, str) and "${prerequisites." in data:
        return [
            Problem(
                loc,
                "placeholder_outside_sweep",
                f"{data!r} holds a placeholder, which only a sweep fills in: read on its own (`distillctl train`) "
                "the path is taken literally",
                "launch it through a sweep that names this spec and declares the prerequisite, or write the path",
                severity="warning",
            )
        ]
    return []


_SIDES = (
    ("the student has", "the teacher has", "both models have"),
    ("the student's", "the teacher's", "both models'"),
)


def _said_once(problems: list[Problem]) -> list[Problem]:
    """One key of a MaxText file sets both models (a top-level `scan_layers`): a check that fails for each model
    at that key is said once, of both models (it was said twice on one line, once per model)."""
    out: list[Problem] = []
    at: dict[tuple, int] = {}
    for problem in problems:
        message = problem.message
        for student, teacher, _ in _SIDES:
            message = message.replace(teacher, student)
        key = (problem.code, problem.loc, problem.line, problem.column, problem.hint, message)
        if key not in at:
            at[key] = len(out)
            out.append(problem)
            continue
        both = out[at[key]].message
        for student, teacher, models in _SIDES:
            both = both.replace(student, models).replace(teacher, models)
        out[at[key]] = dataclasses.replace(out[at[key]], message=both)
    return out


def _locate(
    problem: Problem, document: YamlDocument, file: str | None, near: dict[str, tuple[str, ...]] | None = None
) -> Problem:
    """The problem at its key's line; a key the file leaves out at a `near` key that asks for it, else at its
    nearest ancestor."""
    position = document.positions.get(tuple(problem.loc))
    absent = problem.loc and position is None and (problem.loc[0],) not in document.positions
    for key in (near or {}).get(problem.loc[0], ()) if absent else ():
        if (position := document.positions.get((key,))) is not None:
            break
    position = position or document.position_of(problem.loc)
    return dataclasses.replace(
        problem, file=file, line=position.line if position else None, column=position.column if position else None
    )


def validate_data(
    data: dict[str, Any], *, batch_keys_home: str = "`batch:`", owned: bool = False
) -> tuple[DistillSpec | None, list[Problem]]:
    """Validate native-layout data; returns the spec (None on any error) and problems with native locs. Blocks
    may be given as validated models. `owned`: the caller hands `data` over (it is changed while problems are
    set aside) instead of having it copied."""
    if not owned:
        data = copy_plain(data)
    problems = _batch_shape_in_models(data, batch_keys_home)
    spec, type_problems = _validate_with_repairs(data)
    problems += type_problems
    if spec is not None:
        bad_locs = [p.loc for p in type_problems]
        problems += [
            p
            for p in checks.check(spec)
            if not any(_related(loc, bad) for bad in bad_locs for loc in (p.loc, *JUDGES.get(p.code, ())))
        ]
    return (spec if not has_errors(problems) else None), problems


# Checks said at another key than the field they judge (the key that asks for it): with that field's own value
# refused (and repaired to its default for the checks), they judged the default ("top_k is not set" of a
# `top_k: "16"`, beside the type error that names it).
JUDGES: dict[str, tuple[Loc, ...]] = {"top_k_missing": (("top_k",),), "checkpoint_after_end": (("steps",),)}


def _related(a: Loc, b: Loc) -> bool:
    """One loc holds the other, or both are fields of one value (loss.alpha.end and a bad loss.alpha.schedule:
    the check would judge the value with the schedule repaired to its default), or `b` is a field of the block `a`
    is in and the block's other fields are judged by it (a bad data.source repaired to synthetic made a check say
    "data.source is synthetic (the default)")."""
    n = min(len(a), len(b))
    judged_by = len(b) == 2 and b[1] in ("source", "model") and a[:1] == b[:1]
    return a[:n] == b[:n] or (len(a) == len(b) >= 3 and a[:-1] == b[:-1]) or judged_by


def _batch_shape_in_models(data: dict[str, Any], home: str) -> list[Problem]:
    """Rule: the batch shape is shared by both models, so it cannot be set per model."""
    problems = []
    batch = data.get("batch") if isinstance(data.get("batch"), dict) else {}
    blocks = {side: data[side] for side in ("student", "teacher") if isinstance(data.get(side), dict)}
    for key in BATCH_SHAPE_KEYS:
        values = {side: block[key] for side, block in blocks.items() if key in block}
        if len(values) == 2 and values["student"] == values["teacher"]:
            # the same in both blocks: both models see one batch (MaxText refuses only a difference), the run's
            data["batch"] = {**batch, key: values["student"]}
            batch = data["batch"]
            continue
        for side, mine in values.items():
            other = "teacher" if side == "student" else "student"
            theirs = values.get(other, batch.get(key, getattr(BatchSpec(), key)))
            where = "its block" if other in values else (home if key in batch else "the default")
            problems.append(
                Problem(
                    (side, key),
                    "batch_shape_in_override",
                    f"{key} is set in the {side}'s block ({mine}) while the {other} gets {theirs} (from {where}); "
                    "both models must see the same batch",
                    f"set {key} once, at {home}, and remove it from the {side}'s block",
                )
            )
    for block in blocks.values():
        for key in BATCH_SHAPE_KEYS:
            block.pop(key, None)
    return problems


# The spec's model classes: pydantic names a union's member in an error's loc (`rope_scaling.RopeScalingSpec.type`).
_MODELS = frozenset(
    name for name, obj in vars(config_module).items() if isinstance(obj, type) and issubclass(obj, BaseModel)
)


def _validate_with_repairs(data: dict[str, Any]) -> tuple[DistillSpec | None, list[Problem]]:
    problems: list[Problem] = []
    for _ in range(_REPAIR_ROUNDS):
        try:
            return DistillSpec.model_validate(data), problems
        except ValidationError as e:
            found = problems_from(e, data, root="the spec", did_you_mean=_did_you_mean, hints=HINTS, tags=_MODELS)
        # A key set aside in an earlier round may now be "missing": that is the same problem, already reported.
        new = [p for p in found if not any(_related(p.loc, old.loc) for old in problems)]
        if not new:
            break
        problems += new
        if not _set_aside(data, [p.loc for p in new]):
            break
    return None, problems


def _set_aside(data: dict[str, Any], locs: list[Loc]) -> bool:
    """Remove the top-most existing key of each loc from `data` so the rest can be validated."""
    removed = False
    for loc in locs:
        node: Any = data
        for depth, part in enumerate(loc):
            if isinstance(node, dict) and part in node:
                if depth == len(loc) - 1 or not isinstance(node[part], (dict, list)):
                    del node[part]
                    removed = True
                    break
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                parent_loc = loc[:depth]
                removed |= _set_aside(data, [parent_loc]) if parent_loc else False
                break
            else:
                break
    return removed


# Where each MaxText key lives in this layout, to answer `distill_alpha:` or `base_emb_dim:` in a native file.
_NATIVE_HOME = {key: format_loc(loc) for key, loc in maxtext_format.TOP_LEVEL.items()}
_NATIVE_FIELD = dict(maxtext_format.MODEL_KEYS)


def _did_you_mean(loc: Loc) -> str:
    known = _keys_at(loc[:-1])
    key = str(loc[-1])
    if key in _NATIVE_FIELD and _NATIVE_FIELD[key] in known:
        return f"did you mean {_NATIVE_FIELD[key]!r}? (MaxText's {key} is {_NATIVE_FIELD[key]} here)"
    if key in BATCH_SHAPE_KEYS and "batch" in _keys_at(()):
        return f"{key} belongs under `batch:`"
    close = get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    maxtext = get_close_matches(key, list(_NATIVE_HOME), n=1, cutoff=0.8)
    if maxtext:
        home = _NATIVE_HOME[maxtext[0]]
        if home == maxtext[0]:  # the same name, at the top level (`loss.top_k`): say where it goes
            return f"{home} is a top-level key: move it out of `{format_loc(loc[:-1])}:`"
        return f"MaxText's {maxtext[0]} is {home} in this layout"
    return f"valid keys here: {', '.join(known)}" if known else ""


def _keys_at(loc: Loc) -> list[str]:
    model: type[BaseModel] | None = DistillSpec
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        model = model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model else []


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field's annotation holds (directly, or inside Optional, Union, list, ...), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if found := model_in(arg):
            return found
    return None
