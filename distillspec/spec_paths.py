"""Dotted paths into a distillation spec, as sweep files write them: `loss.alpha.end`, or MaxText's flat names
(`distill_alpha_end`, `student_overrides.base_num_decoder_layers`), which mean the same field.

A path names a field of `distillspec.config.DistillSpec` (any depth, a whole block included); list items are not
addressable. Setting a path on spec data creates the mappings on the way, and turns a bare-number schedule
(`alpha: 0.9`) into its mapping form (`alpha: {start: 0.9}`) when a path goes inside it.
"""

from __future__ import annotations

import typing
from difflib import get_close_matches
from functools import cache
from typing import Any

from pydantic import BaseModel

from distillspec import maxtext_format
from distillspec.config import DistillSpec, ScheduledValue
from distillspec.problems import Loc, Problem
from distillspec.specfile import model_in

# Fields a sweep derives for every run: the run id names the run, the target's output base holds it.
DERIVED = {("name",): "the run id", ("output_dir",): "target.output_base"}


class UnknownPath(ValueError):
    def __init__(self, text: str, suggestions: list[str]):
        self.text, self.suggestions = text, list(dict.fromkeys(suggestions))  # a name and its alias: once
        super().__init__(f"unknown spec path {text!r}")


@cache
def native_paths() -> dict[str, Loc]:
    """Every dotted path of the spec model -> its loc."""
    out: dict[str, Loc] = {}

    def walk(model: type[BaseModel], prefix: Loc) -> None:
        for field, info in model.model_fields.items():
            loc = prefix + (field,)
            out[".".join(loc)] = loc
            if inner := model_in(info.annotation):
                walk(inner, loc)

    walk(DistillSpec, ())
    return out


@cache
def maxtext_paths() -> dict[str, Loc]:
    """MaxText flat names accepted as paths -> native loc."""
    out: dict[str, Loc] = dict(maxtext_format.TOP_LEVEL)
    for key in (*maxtext_format.DATA_PATH_KEYS, "hf_train_files"):
        out[key] = ("data", "path")
    out["train_data_columns"] = ("data", "text_column")  # a one-column list: assign's value
    for key in maxtext_format.EVAL_FILE_KEYS:
        out[key] = ("eval", "path")
    out |= maxtext_format.EVAL_KEYS
    out[maxtext_format.REMAT_KEY] = ("student", "remat")  # the student's alone, as in a MaxText file
    # the run's settings in the student's block, as a MaxText file reads them (MaxText trains on its config)
    for key, loc in maxtext_format.TOP_LEVEL.items():
        out[f"student_overrides.{key}"] = loc
    out[f"student_overrides.{maxtext_format.REMAT_KEY}"] = ("student", "remat")
    for block, side in maxtext_format.OVERRIDE_BLOCKS.items():
        for key, field in maxtext_format.MODEL_KEYS.items():
            out[f"{block}.{key}"] = (side, field)
        for alias, key in maxtext_format.MODEL_KEY_ALIASES.items():  # the guide's `num_decoder_layers`
            out[f"{block}.{alias}"] = (side, maxtext_format.MODEL_KEYS[key])
    return out


def resolve(text: str) -> Loc:
    """The native loc of a dotted or MaxText path; raises UnknownPath with close matches."""
    if not isinstance(text, str):
        raise UnknownPath(str(text), [])
    if text in native_paths():
        return native_paths()[text]
    if text in maxtext_paths():
        return maxtext_paths()[text]
    return _unknown(text)


def _unknown(text: str) -> typing.NoReturn:
    known = list(native_paths()) + list(maxtext_paths())
    close = get_close_matches(text, known, n=3, cutoff=0.6)
    if not close:  # `alpha.end` for `loss.alpha.end`: match on the last parts
        tail = text.split(".")[-2:]
        close = [p for p in native_paths() if p.split(".")[-len(tail) :] == tail][:3]
    raise UnknownPath(text, close)


def dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def _model_at(loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = DistillSpec
    for part in loc:
        if model is None or part not in model.model_fields:
            return None
        model = model_in(model.model_fields[part].annotation)
    return model


def assign(data: dict[str, Any], text: str, value: Any) -> Loc:
    """Set the field `text` names (`resolve`) in native spec data, as `set_value`; a value under a MaxText name
    means what it means in a MaxText file (`None` is null: `distill_alpha_end: [None, 0.5]`). Its native loc."""
    native = resolve(text)
    if text == "eval_interval" and maxtext_format.eval_off(text, value):
        set_value(data, ("eval",), None)  # -1 or 0: no evaluation, as in a MaxText file
        return native
    if text == "eval_steps" and maxtext_format.eval_off(text, value):
        return native  # -1 or 0 (MaxText's "all"): the spec's default, as in a MaxText file (it was refused)
    if text == "train_data_columns" and isinstance(value, list) and len(value) == 1:
        value = value[0]  # MaxText's list of the one column read
    if text not in native_paths():
        value = maxtext_format.native_value(text.rsplit(".", 1)[-1], value)
        if text.rsplit(".", 1)[-1] == maxtext_format.REMAT_KEY and isinstance(value, str):
            # `minimal` is `dots`, and so is a named-tensor policy, as in a MaxText file (value_warnings says so)
            value = (
                "dots"
                if value in maxtext_format.REMAT_NEAREST_DOTS
                else maxtext_format.REMAT_POLICIES.get(value, value)
            )
    set_value(data, native, value)
    return native


def value_warnings(text: str, value: Any) -> list[Problem]:
    """What a MaxText file warns of the same value under the same key, for a value `assign` takes: a named-tensor
    remat_policy trains as `dots` (a sweep's point said nothing of it)."""
    if text.rsplit(".", 1)[-1] != maxtext_format.REMAT_KEY or value not in maxtext_format.REMAT_NEAREST_DOTS:
        return []
    found: list[Problem] = []
    maxtext_format.remat_of(value, found)
    return found


def set_value(data: dict[str, Any], loc: Loc, value: Any) -> None:
    """Set `loc` in native spec data. Changes `data` (callers pass their own copy) but no mapping nested in it:
    those on the way are copied, so a sweep's points can share the blocks they do not change."""
    node = data
    for depth, key in enumerate(loc[:-1]):
        child = node.get(key)
        if isinstance(child, dict):
            child = dict(child)
        else:
            model = _model_at(loc[: depth + 1])
            if model is not None and issubclass(model, ScheduledValue) and isinstance(child, (int, float)):
                child = {"start": child}  # `alpha: 0.9` is `alpha: {start: 0.9}`
            else:
                child = {}
        node[key] = child
        node = child
    node[loc[-1]] = value
