"""Layer-index presets for the feature loss, resolved against a model's depth.

A preset is a string: `first:N`, `full_depth:N`, `top_heavy:N`, or `straddle:[i, j, ...]` / `straddle:i-j` /
`straddle` (the layers immediately before and after each contiguous run of pruned layers; without a list, the
student's own `drop_layers`). Pruned-layer numbers are the teacher's (pre-pruning) numbering, as the guide
writes them; the resolved indices are the student's (for a student made by `drop_layers`, the layers past a gap
are numbered lower than the teacher's they began as).
"""

from __future__ import annotations

import re

PRESET_KINDS = ("first", "full_depth", "top_heavy", "straddle")
_COUNTED = re.compile(r"^(first|full_depth|top_heavy):\s*(\d+)$")
_STRADDLE = re.compile(r"^straddle(?::\s*(.*))?$")
# Deeper than any model this tool knows (the largest has 126 layers): a range past it is a typo, refused before
# it is expanded (a range of 10^11 layers would otherwise fill the memory).
MAX_LAYERS = 4096
# The guide's "Top-heavy" rows (Llama 8B, 32 layers; 70B, 80 layers); other depths and counts use the formula.
GUIDE_TOP_HEAVY = {(32, 6): (16, 20, 24, 28, 30, 31), (80, 6): (60, 65, 70, 75, 78, 79)}


class PresetError(ValueError):
    """A preset string that does not parse."""


def parse_preset(text: str) -> tuple[str, int | tuple[int, ...] | None]:
    """Split a preset into (kind, argument); raises PresetError saying what is wrong (the spec's hint lists the forms)."""
    text = text.strip()
    if m := _COUNTED.match(text):
        count = int(m.group(2))
        if count < 1:
            raise PresetError(f"{m.group(1)}:N needs N >= 1, got {count}")
        return m.group(1), count
    if m := _STRADDLE.match(text):
        return "straddle", _parse_layer_list(m.group(1)) if m.group(1) else None
    if m := re.fullmatch(r"(first|full_depth|top_heavy):\s*(-\d+)", text):  # as `first:0` says
        raise PresetError(f"{m.group(1)}:N needs N >= 1, got {m.group(2)}")
    if re.fullmatch(r"\d+(\s*,\s*\d+)+", text):  # "0,1": a list written as a string
        raise PresetError(f"{text!r} is a string; write the layers as a YAML list: [{text}]")
    raise PresetError(f"unknown layer-index preset {text!r}")  # the hint lists the presets


def _parse_layer_list(text: str) -> tuple[int, ...]:
    text = text.strip()
    if m := re.match(r"^(\d+)\s*-\s*(\d+)$", text):
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise PresetError(f"straddle range {text!r} runs backwards")
        if hi >= MAX_LAYERS:
            raise PresetError(f"straddle range {text!r} goes past layer {MAX_LAYERS - 1}; no model is that deep")
        return tuple(range(lo, hi + 1))
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        layers = tuple(int(part) for part in inner.split(",") if part.strip())
    except ValueError:
        raise PresetError(f"straddle needs pruned layer numbers such as straddle:[20, 21], got {text!r}") from None
    if not layers:
        raise PresetError("straddle:[...] needs at least one pruned layer")
    return layers


def resolve_preset(text: str, num_layers: int, pruned: tuple[int, ...] = ()) -> list[int]:
    """The layer indices a preset stands for in a stack of `num_layers` layers."""
    kind, arg = parse_preset(text)
    if kind == "first":
        return list(range(min(arg, num_layers)))
    if kind == "full_depth":
        n = min(arg, num_layers)
        # Evenly spaced, ending at the last layer: 8 of 32 -> 3, 7, ..., 31.
        return [round((k + 1) * num_layers / n) - 1 for k in range(n)]
    if kind == "top_heavy":
        n = min(arg, num_layers)
        if (num_layers, n) in GUIDE_TOP_HEAVY:  # the guide's own rows, as a reader of it expects them
            return list(GUIDE_TOP_HEAVY[num_layers, n])
        if n == 1:
            return [num_layers - 1]
        # Quadratic spacing from the top down across the upper half: dense near the output, sparse mid-stack.
        half = num_layers // 2
        return sorted({num_layers - 1 - round(half * (k / (n - 1)) ** 2) for k in range(n)})
    around = straddle(arg if arg is not None else pruned)
    # The student made without `pruned` numbers its layers past each gap lower: name them as the student does
    # (its layer indices pick the teacher's layer it began as, `DistillSpec.teacher_layer_indices`).
    return [layer - sum(d < layer for d in set(pruned)) for layer in around]


def straddle(pruned: tuple[int, ...] | list[int]) -> list[int]:
    """Layers just before and just after each contiguous run of pruned layers (never a pruned one)."""
    dropped = sorted(set(pruned))
    around: set[int] = set()
    for i, layer in enumerate(dropped):
        if i == 0 or dropped[i - 1] != layer - 1:
            around.add(layer - 1)
        if i == len(dropped) - 1 or dropped[i + 1] != layer + 1:
            around.add(layer + 1)
    return sorted(layer for layer in around if layer >= 0 and layer not in dropped)
