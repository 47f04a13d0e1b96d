"""MaxText's Orbax checkpoints (`<root>/<step>/items`), in and out, in the layout MaxText's own converters write
(names, shapes, layer axes and transforms: `distillspec.maxtext_checkpoint`).

In (`load`): the checkpoint's tensor shapes are read from its storage metadata and checked against the model first
(every mismatch named, nothing read before). Then every device shard of every parameter is filled by reading,
with tensorstore (what Orbax stores through), only the region of the stored tensors that shard covers, transformed
to our layout on the host: a host holds its shards plus one tensor's region, never a whole tree, and scanned or
unscanned checkpoints fill scanned or unscanned models alike. Local paths and gs:// both work.

Out (`save`): an Orbax `CheckpointManager` step 0 with the item `items` = `{"step", "params": {"params": ...},
"opt_state": {}}`, exactly what MaxText's converters save, plus the model's config.json at the checkpoint root
(MaxText ignores it; `load_model` reads the model's constants from it).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from distillspec import maxtext_checkpoint as mt
from distillspec.hf_config import ConfigError, config_of, shape_from_config, shape_mismatches
from distillspec.registry import MODELS, ModelShape
from trainer.exit_codes import UserError


def _user_error(e: mt.CheckpointError) -> UserError:
    return UserError(e.message, e.hint)


def is_maxtext(path: str) -> bool:
    """Whether `path` names a MaxText checkpoint (raises UserError for one that says so but is broken)."""
    try:
        return mt.resolve_items(path) is not None
    except mt.CheckpointError as e:
        raise _user_error(e) from None


def read(path: str) -> tuple[str, dict, dict]:
    try:
        got = mt.read_checkpoint(path)
    except mt.CheckpointError as e:
        raise _user_error(e) from None
    if got is None:
        raise UserError(f"no MaxText checkpoint at {path}", "point at <checkpoint root>/<step>/items")
    return got


def _sidecar_shape(items: str) -> ModelShape | None:
    import fsspec

    file = mt.sidecar_config(items)
    try:
        with fsspec.open(file, "r") as f:
            config = json.load(f)
    except (FileNotFoundError, IsADirectoryError):
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {file}: {e}", "remove or repair it") from None
    try:
        return shape_from_config(config, file)
    except ConfigError as e:
        raise UserError(e.message, e.hint) from None


def checkpoint_shape(path: str) -> ModelShape:
    """The model a MaxText checkpoint holds: its config.json when `distillctl export` wrote one, else the registry
    model whose family and dimensions its tensors have."""
    items, _, found = read(path)
    shape = _sidecar_shape(items)
    if shape is not None:
        return shape
    dims = mt.shape_dims(found)
    if dims is None:
        raise UserError(
            f"{items} holds no Llama 3, Qwen 3, Gemma 2 or Gemma 3 decoder MaxText's converters write",
            "point at a MaxText checkpoint of a supported family",
        )
    matches = [name for name, s in MODELS.items() if all(getattr(s, k) == v for k, v in dims.items())]
    if not matches:
        raise UserError(
            f"{items} holds a {dims['family']} model with {dims['num_layers']} layers of width {dims['emb_dim']} that "
            "is no registry model, and it has no config.json saying its constants (RoPE, norms, windows)",
            "load it with a spec naming the model and its overrides (trainer.checkpoints.load_params)",
        )
    return MODELS[matches[0]]


def check(items: str, found: dict, shape: ModelShape, *, side: str) -> None:
    """Raise UserError naming every tensor of another shape or dtype, missing or extra, and every constant the
    sidecar config.json (when there is one) states differently."""
    problems = mt.mismatches(found, shape)
    sidecar = _sidecar_shape(items)
    if sidecar is not None:
        problems += [f"{mt.sidecar_config(items)}: {p}" for p in shape_mismatches(sidecar, shape)]
    if problems:
        raise UserError(
            f"{side}.load_parameters_path {items} holds a different model than the spec's {side} "
            f"({shape.family}, {shape.depth} layers, width {shape.emb_dim}): " + "; ".join(problems),
            f"choose the registry model (and overrides) of that checkpoint in the {side} block",
        )


class _Arrays:
    """The item's tensors, opened lazily with tensorstore; `read(key, region)` reads one region as numpy."""

    def __init__(self, items: str, metadata: dict, found: dict):
        self.items, self.metadata, self.found = items, metadata, found
        self._open: dict = {}

    def _handle(self, key: mt.Key):
        handle = self._open.get(key)
        if handle is None:
            import tensorstore as ts

            name = mt.storage_name(key)
            if self.metadata.get("use_ocdbt", True):
                kvstore = {"driver": "ocdbt", "base": mt.kvstore_url(self.items), "path": name + "/"}
            else:
                kvstore = mt.kvstore_url(self.items) + name + "/"
            try:
                handle = ts.open({"driver": self.found[key].driver, "kvstore": kvstore}, open=True).result()
            except ValueError as e:
                raise UserError(f"cannot open tensor {'/'.join(key)} in {self.items}: {e}", "copy it again") from None
            self._open[key] = handle
        return handle

    def read(self, key: mt.Key, region: tuple) -> np.ndarray:
        try:
            return np.asarray(self._handle(key)[region].read().result())
        except ValueError as e:
            raise UserError(
                f"cannot read tensor {'/'.join(key)} from {self.items}: {e}", "the checkpoint is damaged: copy it again"
            ) from None


def load(path: str, shape: ModelShape, abstract: Any, *, side: str = "model") -> Any:
    """Our parameters (a pure dict of global arrays shaped, typed and sharded like `abstract`, whose leaves are
    ShapeDtypeStructs with shardings) from the MaxText checkpoint `path` names. Raises UserError for a checkpoint of
    another model (every mismatch named, before any tensor is read) or storage that cannot be read."""
    items, metadata, found = read(path)
    check(items, found, shape, side=side)
    layout = mt.detect_layout(found)
    arrays = _Arrays(items, metadata, found)
    out: dict = {}
    for our, key in mt.top_names(shape).items():
        leaf, t = _get(abstract, our), mt.transform(shape, our)

        def fill(index, key=key, t=t, leaf=leaf):
            region = tuple(index[::-1]) if t.transpose else tuple(index)
            return t.to_ours(arrays.read(key, region)).astype(leaf.dtype)

        _put(out, our, jax.make_array_from_callback(leaf.shape, leaf.sharding, fill))
    layers = abstract["layers"]
    scanned = not all(isinstance(k, int) for k in layers)
    for sub, name in mt.entry_names(shape).items():
        t = mt.transform(shape, sub)

        def rows(entries: list[int], per: tuple, name=name, t=t) -> np.ndarray:
            """Stack entries `entries`' tensor `name`, region `per` of each: `[len(entries), ...]` ours."""
            region = (*per[:-1], slice(None)) if t.mixes_last_axis else per
            blocks, i = [], 0
            while i < len(entries):
                src = mt.entry_source(shape, layout, entries[i])
                key = (*src.prefix, *name)
                if src.index is None:
                    blocks.append(arrays.read(key, region)[None])
                    i += 1
                    continue
                j = i + 1  # a run of entries stored next to each other along the scanned axis
                while j < len(entries):
                    nxt = mt.entry_source(shape, layout, entries[j])
                    if nxt.prefix != src.prefix or nxt.index != src.index + (j - i):
                        break
                    j += 1
                block = arrays.read(key, (region[0], slice(src.index, src.index + j - i), *region[1:]))
                blocks.append(np.moveaxis(block, 1, 0))
                i = j
            x = t.to_ours(np.concatenate(blocks))
            return x[..., per[-1]] if t.mixes_last_axis else x

        if scanned:
            leaf = _get(layers, sub)

            def fill(index, leaf=leaf, rows=rows):
                entries = list(range(leaf.shape[0]))[index[0]]
                return rows(entries, tuple(index[1:])).astype(leaf.dtype)

            _put(out, ("layers", *sub), jax.make_array_from_callback(leaf.shape, leaf.sharding, fill))
        else:
            for entry in sorted(layers):
                leaf = _get(layers[entry], sub)

                def fill(index, leaf=leaf, rows=rows, entry=entry):
                    return rows([entry], tuple(index))[0].astype(leaf.dtype)

                _put(out, ("layers", entry, *sub), jax.make_array_from_callback(leaf.shape, leaf.sharding, fill))
    return out


def save(
    params: Any, shape: ModelShape, out_dir: str, *, scanned: bool, dtype: str = "float32", extra: dict | None = None
) -> None:
    """Write parameters (a pure dict of host or device arrays; `scanned`: `layers` stacked, else `{index: entry}`)
    as a MaxText checkpoint at `out_dir` (a new local folder): `out_dir/0/items`, scanned like the model (Gemma 3 in
    MaxText's 6-layer blocks), plus `out_dir/config.json`."""
    import ml_dtypes
    import orbax.checkpoint as ocp

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
    layout = mt.writing_layout(shape, scanned)
    tree: dict = {}
    for our, key in mt.top_names(shape).items():
        _put(tree, key, mt.transform(shape, our).to_maxtext(np.asarray(_get(params, our), np.float32)))
    stacks: dict[mt.Key, dict[int, np.ndarray]] = {}
    for sub, name in mt.entry_names(shape).items():
        t = mt.transform(shape, sub)
        for entry in range(shape.num_layers):
            value = _get(params["layers"], sub)[entry] if scanned else _get(params["layers"][entry], sub)
            value = t.to_maxtext(np.asarray(value, np.float32))
            src = mt.entry_source(shape, layout, entry)
            key = (*src.prefix, *name)
            if src.index is None:
                _put(tree, key, value)
            else:
                stacks.setdefault(key, {})[src.index] = value
    for key, parts in stacks.items():
        _put(tree, key, np.stack([parts[i] for i in sorted(parts)], axis=1))
    tree = jax.tree.map(lambda a: np.ascontiguousarray(a.astype(np_dtype)), tree)
    root = os.path.abspath(out_dir)
    os.makedirs(root, exist_ok=True)
    state = {"step": 0, "params": {"params": tree}, "opt_state": {}}
    with ocp.CheckpointManager(root) as manager:
        manager.save(0, args=ocp.args.Composite(items=ocp.args.PyTreeSave(state)))
        manager.wait_until_finished()
    with open(os.path.join(root, "config.json"), "w") as f:  # `extra`: positions and special tokens carried over
        json.dump({**config_of(shape, dtype), **(extra or {})}, f, indent=2)


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _put(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
