"""MaxText's Orbax checkpoints (`<root>/<step>/items`), without JAX: where each of our parameters lives in one, at
what shape, how to read a checkpoint's tensor shapes (never its values), and how to compare them with a model.

The layout is the one MaxText's own converters write (`checkpoint_conversion/to_maxtext.py` with
`utils/param_mapping.py`): an Orbax PyTree item `items` holding `{"step", "params": {"params": {...}}}`, with
`token_embedder/embedding [V, D]`, `decoder/decoder_norm/scale [D]`, `decoder/logits_dense/kernel [D, V]` (untied
models only) and the decoder layers either

- scanned: `decoder/layers/<name>` with the layer axis at position 1 (MaxText's `param_scan_axis`), e.g. a query
  kernel `[D, L, H, K]` and a norm scale `[D, L]`; Gemma 3 scans blocks of its 6-layer pattern instead
  (`decoder/layers/layers_<j>/<name>` holds layers j, j+6, ..., and `decoder/layers_remainder/layers_<r>/<name>` the
  last `L mod 6` layers one by one), and Gemma 2 scans (local, global) pairs with `_local`/`_global` names;
- or unscanned: `decoder/layers_<i>/<name>`.

Per layer the kernels are ours (`[D, H, K]` query, `[H, K, D]` out, `[D, F]` MLP in, `[F, D]` MLP out). What differs
(`Transform`): MaxText stores Llama's query and key heads with RoPE's halves interleaved and the query pre-scaled
by 1/sqrt(K), Gemma 2's query pre-scaled by 1/sqrt(K), Gemma's norm scales as (1 + w) and its embeddings
multiplied by sqrt(D) (Gemma 3: sqrt(D) rounded to bfloat16 first); the logits kernel is our LM head transposed.

`read_tensors(path)` reads the shapes and dtypes of every tensor from the checkpoint's storage metadata with
tensorstore (the library Orbax stores through): a local path or any URL tensorstore opens (gs://).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

from distillspec.registry import ModelShape

ITEMS = "items"
METADATA = "_METADATA"
PREFIX = ("params", "params")  # the item's `params` field and Flax's `params` collection inside it
GEMMA3_PATTERN = 6  # Gemma 3's scan block: 5 sliding-window layers, then a global one
LAYOUTS = ("scanned", "unscanned", "gemma3_blocks")
ALLOWED_DTYPES = ("f4", "f2", "float32", "float16", "bfloat16")

Key = tuple[str, ...]


class CheckpointError(ValueError):
    """A MaxText checkpoint that cannot be used; `hint` says what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


class MissingDependency(CheckpointError):
    """Reading the checkpoint needs a package that is not installed (tensorstore, or gcsfs for gs://): not a
    problem of the checkpoint or the spec, so `validate --check-paths` stops with it instead of listing it."""


def _missing(package: str, path: str, why: str, e: ImportError) -> MissingDependency:
    return MissingDependency(
        f"reading {path} needs {package}, which is not installed ({e})",
        f"install it: pip install {package} ({why})",
    )


# --- names ---------------------------------------------------------------------------------------------------

_ATTENTION = {
    ("attention", "wq"): ("self_attention", "query", "kernel"),
    ("attention", "wk"): ("self_attention", "key", "kernel"),
    ("attention", "wv"): ("self_attention", "value", "kernel"),
    ("attention", "wo"): ("self_attention", "out", "kernel"),
    ("attention", "q_norm", "scale"): ("self_attention", "query_norm", "scale"),
    ("attention", "k_norm", "scale"): ("self_attention", "key_norm", "scale"),
    ("mlp", "gate"): ("mlp", "wi_0", "kernel"),
    ("mlp", "up"): ("mlp", "wi_1", "kernel"),
    ("mlp", "down"): ("mlp", "wo", "kernel"),
}
_LLAMA_NORMS = {
    ("attention_norm", "scale"): ("pre_self_attention_layer_norm", "scale"),
    ("mlp_norm", "scale"): ("post_self_attention_layer_norm", "scale"),  # MaxText's name for the pre-MLP norm
}
_GEMMA_NORMS = {
    ("attention_norm", "scale"): ("pre_self_attention_norm", "scale"),
    ("post_attention_norm", "scale"): ("post_self_attention_norm", "scale"),
    ("mlp_norm", "scale"): ("pre_ffw_norm", "scale"),
    ("post_mlp_norm", "scale"): ("post_ffw_norm", "scale"),
}


def layer_shapes(shape: ModelShape) -> dict[Key, tuple[int, ...]]:
    """Our in-layer parameter path -> its per-layer shape (the same in MaxText's layout)."""
    s = shape
    d, h, n, k, f = s.emb_dim, s.num_query_heads, s.num_kv_heads, s.head_dim, s.mlp_dim
    out = {
        ("attention", "wq"): (d, h, k),
        ("attention", "wk"): (d, n, k),
        ("attention", "wv"): (d, n, k),
        ("attention", "wo"): (h, k, d),
        ("mlp", "gate"): (d, f),
        ("mlp", "up"): (d, f),
        ("mlp", "down"): (f, d),
        ("attention_norm", "scale"): (d,),
        ("mlp_norm", "scale"): (d,),
    }
    if s.is_gemma:
        out[("post_attention_norm", "scale")] = (d,)
        out[("post_mlp_norm", "scale")] = (d,)
    if s.qk_norm:
        out[("attention", "q_norm", "scale")] = (k,)
        out[("attention", "k_norm", "scale")] = (k,)
    return out


def entry_names(shape: ModelShape) -> dict[Key, Key]:
    """Our in-stack-entry parameter path -> MaxText's in-layer name (Gemma 2: an entry is a (sliding, full) pair)."""
    norms = _GEMMA_NORMS if shape.is_gemma else _LLAMA_NORMS
    per_layer = {path: (_ATTENTION | norms)[path] for path in layer_shapes(shape)}
    if shape.family != "gemma2":
        return per_layer
    out = {}
    for sub, suffix in (("sliding", "_local"), ("full", "_global")):
        for path, name in per_layer.items():
            out[(sub, *path)] = (name[0] + suffix, *name[1:])
    return out


def entry_shapes(shape: ModelShape) -> dict[Key, tuple[int, ...]]:
    per_layer = layer_shapes(shape)
    if shape.family != "gemma2":
        return per_layer
    return {(sub, *path): s for sub in ("sliding", "full") for path, s in per_layer.items()}


@dataclasses.dataclass(frozen=True)
class Source:
    """Where stack entry `entry`'s parameters are: under `prefix` (+ the in-layer name), at `index` along axis 1 of
    a scanned tensor, or the whole tensor (`index` None)."""

    prefix: Key
    index: int | None


def entry_source(shape: ModelShape, layout: str, entry: int) -> Source:
    if layout == "unscanned":
        return Source(("decoder", f"layers_{entry}"), None)
    if layout == "scanned":
        return Source(("decoder", "layers"), entry)
    blocks = shape.num_layers // GEMMA3_PATTERN
    if entry < blocks * GEMMA3_PATTERN:
        return Source(("decoder", "layers", f"layers_{entry % GEMMA3_PATTERN}"), entry // GEMMA3_PATTERN)
    return Source(("decoder", "layers_remainder", f"layers_{entry - blocks * GEMMA3_PATTERN}"), None)


def top_names(shape: ModelShape) -> dict[Key, Key]:
    """Our top-level parameter path -> MaxText's key."""
    out = {("embed",): ("token_embedder", "embedding"), ("final_norm", "scale"): ("decoder", "decoder_norm", "scale")}
    if not shape.tie_embeddings:
        out[("lm_head",)] = ("decoder", "logits_dense", "kernel")
    return out


def writing_layout(shape: ModelShape, scanned: bool) -> str:
    """The layout MaxText itself uses for a model with or without `scan_layers`."""
    if not scanned:
        return "unscanned"
    return "gemma3_blocks" if shape.family == "gemma3" else "scanned"


def tensor_table(shape: ModelShape, layout: str) -> dict[Key, tuple[int, ...]]:
    """Every MaxText tensor (key under params/params) a model of `shape` has in `layout` -> its shape."""
    s = shape
    table: dict[Key, tuple[int, ...]] = {
        ("token_embedder", "embedding"): (s.vocab_size, s.emb_dim),
        ("decoder", "decoder_norm", "scale"): (s.emb_dim,),
    }
    if not s.tie_embeddings:
        table[("decoder", "logits_dense", "kernel")] = (s.emb_dim, s.vocab_size)
    stacked: dict[Key, int] = {}
    names, shapes = entry_names(s), entry_shapes(s)
    for entry in range(s.num_layers):
        src = entry_source(s, layout, entry)
        for path, name in names.items():
            key = (*src.prefix, *name)
            if src.index is None:
                table[key] = shapes[path]
            else:
                stacked[key] = max(stacked.get(key, 0), src.index + 1)
                per = shapes[path]
                table[key] = (per[0], stacked[key], *per[1:])
    return table


# --- transforms ----------------------------------------------------------------------------------------------


def _normalizer(shape: ModelShape) -> float:
    """What MaxText's Gemma converters multiply embeddings by: sqrt(D) in float32 (Gemma 2) or rounded to bfloat16
    first (Gemma 3)."""
    root = math.sqrt(shape.emb_dim)
    if shape.family == "gemma3":
        import ml_dtypes
        import numpy as np

        return float(np.float32(np.array(root, dtype=ml_dtypes.bfloat16)))
    return root


@dataclasses.dataclass(frozen=True)
class Transform:
    """How one parameter differs between MaxText and us, on its trailing (per-layer) axes:
    `to_ours(x) = (deinterleave(x) if deinterleave) * scale + offset` (float32 in and out); `transpose` (the LM head) swaps the two
    axes. `mixes_last_axis`: the RoPE permutation needs the whole last axis of a slice."""

    scale: float = 1.0
    offset: float = 0.0
    deinterleave: bool = False
    transpose: bool = False

    @property
    def mixes_last_axis(self) -> bool:
        return self.deinterleave

    def to_ours(self, x):
        import numpy as np

        y = np.asarray(x, np.float32)
        if self.transpose:
            y = y.T
        if self.deinterleave:  # [.., K] with pairs (2i, 2i+1) -> halves: evens then odds
            y = np.concatenate([y[..., ::2], y[..., 1::2]], axis=-1)
        if self.scale != 1.0:
            y = y * np.float32(self.scale)
        if self.offset:
            y = y + np.float32(self.offset)
        return y

    def to_maxtext(self, x):
        import numpy as np

        y = np.asarray(x, np.float32)
        if self.offset:
            y = y - np.float32(self.offset)
        if self.scale != 1.0:
            y = y * np.float32(1.0 / self.scale)
        if self.deinterleave:  # halves -> pairs: [a0, b0, a1, b1, ...]
            half = y.shape[-1] // 2
            y = np.stack([y[..., :half], y[..., half:]], axis=-1).reshape(y.shape)
        if self.transpose:
            y = y.T
        return y


def transform(shape: ModelShape, path: Key) -> Transform:
    """The transform of our parameter `path` (top-level, or in-stack-entry for layers)."""
    s = shape
    leaf = path[1:] if s.family == "gemma2" and path[0] in ("sliding", "full") else path
    if path == ("lm_head",):
        return Transform(transpose=True)
    if path == ("embed",):
        return Transform(scale=1.0 / _normalizer(s)) if s.is_gemma else Transform()
    if leaf[-1] == "scale":  # every norm
        return Transform(offset=-1.0) if s.is_gemma else Transform()
    if s.family == "llama" and leaf == ("attention", "wq"):
        return Transform(scale=math.sqrt(s.head_dim), deinterleave=True)
    if s.family == "llama" and leaf == ("attention", "wk"):
        return Transform(deinterleave=True)
    if s.family == "gemma2" and leaf == ("attention", "wq"):
        return Transform(scale=math.sqrt(s.head_dim))
    return Transform()


# --- reading what a checkpoint holds ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # as the storage says: zarr's "<f4", "bfloat16", ... or zarr3's "float32", ...
    driver: str  # the tensorstore driver that opens it: "zarr" or "zarr3"

    @property
    def is_float(self) -> bool:
        return self.dtype.lstrip("<>|") in ALLOWED_DTYPES


def detect_layout(found: dict[Key, TensorInfo]) -> str:
    """`scanned`, `unscanned` or `gemma3_blocks`, from the keys under decoder/."""
    layers = [k for k in found if len(k) > 1 and k[0] == "decoder"]
    if any(k[1] == "layers" and len(k) > 2 and re.fullmatch(r"layers_\d+", k[2]) for k in layers):
        return "gemma3_blocks"
    if any(k[1] == "layers_remainder" for k in layers):
        return "gemma3_blocks"
    if any(k[1] == "layers" for k in layers):
        return "scanned"
    return "unscanned"


def detect_family(found: dict[Key, TensorInfo]) -> str | None:
    """The family MaxText's parameter names say (None when they match none)."""
    names = {part for key in found for part in key}
    if "self_attention_local" in names or "self_attention_global" in names:
        return "gemma2"
    if "pre_ffw_norm" in names:
        return "gemma3"
    if "pre_self_attention_layer_norm" in names:
        return "qwen3" if "query_norm" in names else "llama"
    return None


def mismatches(found: dict[Key, TensorInfo], shape: ModelShape) -> list[str]:
    """`tensor: expected X, found Y` for every tensor that is missing, extra or of another shape, plus a first line
    naming the family when the checkpoint holds another one; empty when the checkpoint holds this model."""
    layout = detect_layout(found)
    if layout == "gemma3_blocks" and shape.family != "gemma3":
        layout = "scanned"
    problems = []
    family = detect_family(found)
    if family is not None and family != shape.family:
        problems.append(f"family: expected {shape.family}, found {family} (by MaxText's parameter names)")
    want = tensor_table(shape, layout)
    for key, expected in want.items():
        name = "/".join(key)
        if key not in found:
            problems.append(f"{name}: expected {expected}, missing")
        elif found[key].shape != expected:
            problems.append(f"{name}: expected {expected}, found {found[key].shape}")
        elif not found[key].is_float:
            problems.append(f"{name}: dtype {found[key].dtype} not one of float32/bfloat16/float16")
    problems += [
        f"{'/'.join(key)}: found {found[key].shape}, not part of this model" for key in found if key not in want
    ]
    return problems


def shape_dims(found: dict[Key, TensorInfo]) -> dict[str, int | bool | str] | None:
    """The family and dimensions the tensors themselves say (None when the names are not MaxText's), for finding
    the registry model of a checkpoint without a config."""
    family = detect_family(found)
    embed = found.get(("token_embedder", "embedding"))
    if family is None or embed is None:
        return None
    layout = detect_layout(found)
    suffix = "_local" if family == "gemma2" else ""
    query = [k for k in found if k[-3:] == (f"self_attention{suffix}", "query", "kernel")]
    key = [k for k in found if k[-3:] == (f"self_attention{suffix}", "key", "kernel")]
    mlp = [k for k in found if k[-3:] == (f"mlp{suffix}", "wi_0", "kernel")]
    if not (query and key and mlp):
        return None
    q, kv, m = found[query[0]].shape, found[key[0]].shape, found[mlp[0]].shape
    if layout == "unscanned":
        layers = len(query)
    elif layout == "scanned":
        layers = q[1]
    else:
        layers = sum(found[k].shape[1] if k[1] == "layers" else 1 for k in query)
    return dict(
        family=family,
        num_layers=layers,
        emb_dim=embed.shape[1],
        vocab_size=embed.shape[0],
        num_query_heads=q[-2],
        num_kv_heads=kv[-2],
        head_dim=q[-1],
        mlp_dim=m[-1],
        tie_embeddings=("decoder", "logits_dense", "kernel") not in found,
    )


def storage_name(key: Key) -> str:
    """The name Orbax stores a tensor under: the item's tree path joined with dots."""
    return ".".join((*PREFIX, *key))


def kvstore_url(path: str) -> str:
    """A tensorstore kvstore URL for a local path or URL, with a trailing slash."""
    url = path if "://" in path else "file://" + os.path.abspath(path)
    return url.rstrip("/") + "/"


def _kvstore_spec(items: str, use_ocdbt: bool) -> dict | str:
    base = kvstore_url(items)
    return {"driver": "ocdbt", "base": base} if use_ocdbt else base


def open_kvstore(items: str, metadata: dict):
    try:
        import tensorstore as ts
    except ImportError as e:
        raise _missing(
            "tensorstore",
            items,
            "MaxText checkpoints are Orbax's, stored through tensorstore; distillctl[train] has it",
            e,
        ) from None

    return ts.KvStore.open(_kvstore_spec(items, bool(metadata.get("use_ocdbt", True)))).result()


def parse_metadata(text: str, file: str) -> dict:
    try:
        data = json.loads(text)
        data["tree_metadata"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{file} is not Orbax PyTree metadata ({e})", "the checkpoint is damaged: copy it again")
    return data


def array_keys(metadata: dict) -> list[Key]:
    """The parameter keys (under params/params) the item's metadata lists."""
    out = []
    for entry in metadata["tree_metadata"].values():
        parts = tuple(str(k["key"]) for k in entry.get("key_metadata", []))
        if parts[:2] == PREFIX and len(parts) > 2:
            out.append(parts[2:])
    return out


def read_tensors(items: str, metadata: dict) -> dict[Key, TensorInfo]:
    """Shape and dtype of every parameter in the item at `items` (its storage's array metadata; no tensor values).
    Raises CheckpointError naming the item for storage that cannot be read."""

    try:
        kv = open_kvstore(items, metadata)
        out = {}
        for key in array_keys(metadata):
            name = storage_name(key)
            zarray = kv.read(f"{name}/.zarray").result()
            if zarray.state == "value":
                meta = json.loads(bytes(zarray.value))
                out[key] = TensorInfo(tuple(meta["shape"]), str(meta["dtype"]), "zarr")
                continue
            zarr3 = kv.read(f"{name}/zarr.json").result()
            if zarr3.state != "value":
                raise CheckpointError(
                    f"{items}: tensor {'/'.join(key)} is listed in {METADATA} but not stored",
                    "the checkpoint is incomplete: copy it again",
                )
            meta = json.loads(bytes(zarr3.value))
            out[key] = TensorInfo(tuple(meta["shape"]), str(meta["data_type"]), "zarr3")
        return out
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as e:  # tensorstore raises ValueError for storage it cannot read
        raise CheckpointError(
            f"{items}: cannot read the tensors' metadata ({e})",
            "the checkpoint is damaged or incomplete: copy it again",
        ) from None


def _exists(fs, path: str) -> bool:
    try:
        return fs.exists(path)
    except OSError:
        return False


def resolve_items(path: str) -> str | None:
    """The item folder (`…/<step>/items`) `path` names: the item itself, a step folder holding one, or a checkpoint
    root with exactly one step. None when `path` is no MaxText checkpoint at all. Raises CheckpointError for a
    path that says it is one (`…/items`) but holds no Orbax metadata, or a root with several steps."""
    import fsspec

    path = path.rstrip("/")
    try:
        fs, local = fsspec.core.url_to_fs(path)
    except ImportError as e:
        raise _missing(
            "gcsfs" if path.startswith("gs://") else "the fsspec filesystem", path, "fsspec's URL support", e
        ) from None
    except ValueError as e:
        raise CheckpointError(f"cannot open {path}: {e}", "install gcsfs for gs:// paths (pip install gcsfs)") from None
    if path.rsplit("/", 1)[-1] == ITEMS:
        if not _exists(fs, f"{local}/{METADATA}"):
            what = "does not exist" if not _exists(fs, local) else f"has no Orbax metadata ({METADATA})"
            raise CheckpointError(
                f"the MaxText checkpoint {path} {what}",
                "point load_parameters_path at <checkpoint root>/<step>/items of a finished MaxText checkpoint",
            )
        return path
    if _exists(fs, f"{local}/{ITEMS}/{METADATA}"):
        return f"{path}/{ITEMS}"
    try:
        children = fs.ls(local, detail=False) if fs.isdir(local) else []
    except OSError:
        children = []
    steps = sorted(
        (c.rstrip("/").rsplit("/", 1)[-1] for c in children if c.rstrip("/").rsplit("/", 1)[-1].isdigit()), key=int
    )
    steps = [s for s in steps if _exists(fs, f"{local}/{s}/{ITEMS}/{METADATA}")]
    if len(steps) == 1:
        return f"{path}/{steps[0]}/{ITEMS}"
    if len(steps) > 1:
        raise CheckpointError(
            f"{path} holds MaxText checkpoints of steps {', '.join(steps)}: which one to load is ambiguous",
            f"point load_parameters_path at one of them, e.g. {path}/{steps[-1]}/{ITEMS}",
        )
    return None


def read_metadata(items: str) -> dict:
    import fsspec

    file = f"{items}/{METADATA}"
    try:
        with fsspec.open(file, "r") as f:
            return parse_metadata(f.read(), file)
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {e}", "the checkpoint is damaged: copy it again") from None


def read_checkpoint(path: str) -> tuple[str, dict, dict[Key, TensorInfo]] | None:
    """(item folder, its Orbax metadata, every parameter's shape and dtype) of the MaxText checkpoint `path` names,
    or None when it names none. Reads metadata only."""
    items = resolve_items(path)
    if items is None:
        return None
    metadata = read_metadata(items)
    return items, metadata, read_tensors(items, metadata)


def sidecar_config(items: str) -> str:
    """Where `distillctl export --to maxtext` puts the model's Hugging Face-style config.json: the checkpoint root
    (`<root>/<step>/items` -> `<root>/config.json`), which MaxText ignores."""
    return items.rstrip("/").rsplit("/", 2)[0] + "/config.json"
