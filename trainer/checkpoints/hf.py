"""Hugging Face model folders: `config.json` plus `model.safetensors`, or shards listed by
`model.safetensors.index.json`, as `save_pretrained` writes them for Llama 3.x, Qwen 3, Gemma 2 and Gemma 3 (text).

`shape_from_config` turns config.json into a `ModelShape` (transformers 5's `rope_parameters`, per layer type for
Gemma 3, and 4.x's `rope_theta`/`rope_scaling`/`rope_local_base_freq` are both read). `distillspec.hf_tensors`
lists the tensors a shape needs by their Hugging Face names, with shapes, and checks a folder's against them;
`layer_entries`, `block_entries` and `top_entries` add how each becomes one of our parameters.
`load` streams them with the `safetensors` library (memory-mapped): every device shard is filled by reading,
one tensor at a time, only the tensors it covers, so a host holds its shards plus one tensor.

A folder at an fsspec URL (`gs://…`, or any fsspec filesystem) is read without copying it to disk: each file's
safetensors header is read once (its first bytes), then each tensor as one ranged read of its bytes, once per
host: the tensor's slices go to every local device's shard before the next tensor is read, so a host holds its
shards of the parameter being filled plus one tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from distillspec import hf_config, hf_tensors
from distillspec.hf_config import CONFIG, INDEX, SINGLE, ConfigError, config_of  # noqa: F401 - re-exported
from distillspec.registry import ModelShape
from trainer.exit_codes import UserError


def is_remote(path: str) -> bool:
    """Whether `path` is an fsspec URL (`gs://…`, `memory://…`) rather than a local path."""
    return "://" in path and not path.startswith("file://")


def _fs(path: str) -> tuple[Any, str]:
    """(fsspec filesystem, path on it) of a URL; UserError when its filesystem is not installed."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(path.rstrip("/"))
    except (ImportError, ValueError) as e:
        raise UserError(f"cannot open {path}: {e}", "install gcsfs for gs:// paths (pip install gcsfs)") from None


def is_hf_folder(path: str) -> bool:
    if is_remote(path):
        fs, root = _fs(path)
        try:
            return fs.isfile(f"{root}/{CONFIG}") and (fs.isfile(f"{root}/{SINGLE}") or fs.isfile(f"{root}/{INDEX}"))
        except OSError:
            return False
    return os.path.isfile(os.path.join(path, CONFIG)) and (
        os.path.isfile(os.path.join(path, SINGLE)) or os.path.isfile(os.path.join(path, INDEX))
    )


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}" if is_remote(path) else os.path.join(path, name)


def _read_bytes(file: str) -> bytes:
    if is_remote(file):
        fs, where = _fs(file)
        return fs.cat_file(where)
    with open(file, "rb") as f:
        return f.read()


def read_config(path: str) -> dict:
    file = _join(path, CONFIG)
    try:
        config = json.loads(_read_bytes(file))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {file}: {e}", "point load_parameters_path at a save_pretrained folder") from None
    if not isinstance(config, dict):
        raise UserError(f"{file} is not a JSON object", hf_config.DAMAGED)
    return config


def weight_map(text: bytes, index: str) -> dict[str, str]:
    """The tensor -> shard file map of a `model.safetensors.index.json`; UserError saying what is wrong with it."""
    try:
        return hf_tensors.weight_map(text, index)
    except ConfigError as e:
        raise UserError(e.message, e.hint) from None


def shape_from_config(config: dict, file: str = CONFIG) -> ModelShape:
    """The `ModelShape` a Hugging Face config.json describes; raises UserError for what the trainer cannot build."""
    try:
        return hf_config.shape_from_config(config, file)
    except ConfigError as e:
        raise UserError(e.message, e.hint) from None


# --- tensors -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One Hugging Face tensor: its name, shape, and how it becomes our layout."""

    name: str
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray]  # Hugging Face layout -> ours
    invert: Callable[[np.ndarray], np.ndarray]  # ours -> Hugging Face layout


def _linear_in(d: int, heads: int, k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda w: w.T.reshape(d, heads, k)  # [H·K, D] -> [D, H, K]


def _linear_out(heads: int, k: int, d: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda w: w.T.reshape(heads, k, d)  # [D, H·K] -> [H, K, D]


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _flat_in(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], -1).T  # [D, H, K] -> [H·K, D]


def _flat_out(w: np.ndarray) -> np.ndarray:
    return w.reshape(-1, w.shape[-1]).T  # [H, K, D] -> [D, H·K]


def _transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def _entries(shape: ModelShape, tensors: dict[tuple[str, ...], tuple[str, tuple[int, ...]]]) -> dict:
    """`hf_tensors`' (name, shape) of each of our parameter paths, with how it converts: attention projections
    split or join their heads, the MLP's matrices are transposed, the rest keep their layout."""
    d, h, n, k = shape.emb_dim, shape.num_query_heads, shape.num_kv_heads, shape.head_dim
    convert = {
        ("attention", "wq"): (_linear_in(d, h, k), _flat_in),
        ("attention", "wk"): (_linear_in(d, n, k), _flat_in),
        ("attention", "wv"): (_linear_in(d, n, k), _flat_in),
        ("attention", "wo"): (_linear_out(h, k, d), _flat_out),
        ("mlp", "gate"): (_transpose, _transpose),
        ("mlp", "up"): (_transpose, _transpose),
        ("mlp", "down"): (_transpose, _transpose),
    }
    return {
        path: Entry(name, hf_shape, *convert.get(path[-2:], (_same, _same)))
        for path, (name, hf_shape) in tensors.items()
    }


def layer_entries(shape: ModelShape, layer: int) -> dict[tuple[str, ...], Entry]:
    """Our in-block parameter path -> the Hugging Face tensor of transformer layer `layer`."""
    return _entries(shape, hf_tensors.layer_tensors(shape, layer))


def block_entries(shape: ModelShape, entry: int) -> dict[tuple[str, ...], Entry]:
    """Our in-stack-entry parameter path -> Hugging Face tensor, for stack entry `entry` (Gemma 2: a pair)."""
    return _entries(shape, hf_tensors.block_tensors(shape, entry))


def top_entries(shape: ModelShape) -> dict[tuple[str, ...], Entry]:
    return _entries(shape, hf_tensors.top_tensors(shape))


# --- files ---------------------------------------------------------------------------------------------------


class Files:
    """The folder's safetensors files, opened lazily; `where[name]` is the file holding tensor `name`."""

    def __init__(self, path: str):
        from safetensors import SafetensorError, safe_open  # the `train` extra; imported here, not at module load

        self._open, self._errors = safe_open, (SafetensorError, OSError, ValueError)
        self.path = path
        self._handles: dict[str, Any] = {}
        index = os.path.join(path, INDEX)
        # model.safetensors first, as transformers reads it: a folder holding both (one save copied over another)
        # loaded the index's weights, other than those transformers loads.
        if os.path.isfile(index) and not os.path.isfile(os.path.join(path, SINGLE)):
            try:
                with open(index, "rb") as f:
                    text = f.read()
            except OSError as e:
                raise UserError(f"cannot read {index}: {e}", "re-save the model with save_pretrained") from None
            stored = {name: os.path.join(path, file) for name, file in weight_map(text, index).items()}
        else:
            single = os.path.join(path, SINGLE)
            stored = dict.fromkeys(self._handle(single).keys(), single)  # a safe_open handle, not a dict
        self.stored, self.where = hf_tensors.locate(stored)

    def _handle(self, file: str):
        handle = self._handles.get(file)
        if handle is not None:
            return handle
        if not os.path.isfile(file):
            raise UserError(
                f"missing shard {file} (named by {INDEX})", "copy every shard the index lists into the folder"
            )
        try:
            handle = self._open(file, framework="numpy")
        except self._errors as e:  # SafetensorError for truncated or corrupted files
            if _starts_with(file, hf_tensors.LFS_POINTER):
                pointer = hf_tensors.lfs_pointer(file)
                raise UserError(pointer.message, pointer.hint) from None
            raise UserError(
                f"{file} is not a readable safetensors file: {e}", "download or copy the file again"
            ) from None
        self._handles[file] = handle
        return handle

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, safetensors dtype) of tensor `name`, read from the file header only."""
        file, stored = self.where[name], self.stored[name]
        handle = self._handle(file)
        try:
            s = handle.get_slice(stored)
        except self._errors as e:
            if stored not in handle.keys():  # an index that names the wrong shard (SafetensorError: "does not contain")
                raise not_in_shard(file, stored) from None
            raise UserError(f"cannot read tensor {name} from {file}: {e}", "download or copy the file again") from None
        return tuple(s.get_shape()), s.get_dtype()

    def read(self, name: str) -> np.ndarray:
        file = self.where[name]
        try:
            return self._handle(file).get_tensor(self.stored[name])
        except self._errors as e:
            raise UserError(f"cannot read tensor {name} from {file}: {e}", "download or copy the file again") from None


def not_in_shard(file: str, name: str) -> UserError:
    return _user_error(hf_tensors.not_in_shard(file, name))


def _user_error(e: ConfigError) -> UserError:
    return UserError(e.message, e.hint)


# safetensors dtype names -> NumPy (bfloat16 from ml_dtypes, which JAX depends on); others fail `check` by name.
_NUMPY_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class RemoteFiles:
    """`Files` for a folder at an fsspec URL: headers parsed from each file's first bytes (the safetensors
    layout: an 8-byte little-endian header length, a JSON header of `{name: {dtype, shape, data_offsets}}`, then
    the data), tensors read as one ranged read each. Nothing is cached but the headers."""

    def __init__(self, path: str):
        self.path = path.rstrip("/")
        self._fs, root = _fs(self.path)
        self._root = root
        self._headers: dict[str, tuple[dict, int]] = {}  # file -> (header, data start)
        index = f"{self.path}/{INDEX}"
        if self._fs.isfile(f"{root}/{INDEX}") and not self._fs.isfile(f"{root}/{SINGLE}"):  # as `Files`
            try:
                text = self._fs.cat_file(f"{root}/{INDEX}")
            except OSError as e:
                raise UserError(f"cannot read {index}: {e}", "re-save the model with save_pretrained") from None
            stored = {name: f"{self.path}/{file}" for name, file in weight_map(text, index).items()}
        else:
            single = f"{self.path}/{SINGLE}"
            stored = dict.fromkeys(self._header(single)[0], single)
        self.stored, self.where = hf_tensors.locate(stored)

    def _local(self, file: str) -> str:
        return self._root + file[len(self.path) :]

    def _header(self, file: str) -> tuple[dict, int]:
        known = self._headers.get(file)
        if known is not None:
            return known
        where = self._local(file)
        if not self._fs.isfile(where):
            raise UserError(
                f"missing shard {file} (named by {INDEX})", "copy every shard the index lists into the folder"
            )
        try:
            size = self._fs.size(where)
            header, start = hf_tensors.parse_header(file, size, lambda a, b: self._fs.cat_file(where, a, b))
        except OSError:
            raise _user_error(hf_tensors.unreadable(file)) from None
        except ConfigError as e:
            raise _user_error(e) from None
        self._headers[file] = (header, start)
        return header, start

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        file = self.where[name]
        try:
            return hf_tensors.tensor_header(self._header(file)[0], file, self.stored[name])
        except ConfigError as e:
            raise _user_error(e) from None

    def read(self, name: str) -> np.ndarray:
        import ml_dtypes

        file = self.where[name]
        header, start = self._header(file)
        info = header[self.stored[name]]
        begin, end = (int(x) for x in info["data_offsets"])
        dtype = _NUMPY_DTYPES[info["dtype"]]  # `check` has refused every other dtype
        np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype).newbyteorder("<")
        try:
            data = self._fs.cat_file(self._local(file), start + begin, start + end)
        except OSError as e:
            raise UserError(f"cannot read tensor {name} from {file}: {e}", "download or copy the file again") from None
        return np.frombuffer(data, np_dtype).reshape(info["shape"])


def check(files: Files | RemoteFiles, shape: ModelShape) -> None:
    """Raise UserError naming every tensor that is missing, extra, of another shape or of a disallowed dtype."""
    found = hf_tensors.mismatch(files.path, files.where, files.header, shape, files.stored)
    if found is not None:
        raise UserError(*found)
    if shape.tie_embeddings and "lm_head.weight" in files.where:
        _check_tied_head(files)


def _check_tied_head(files: Files | RemoteFiles) -> None:
    """A tied model's folder that also holds an `lm_head.weight`: a copy of the embedding (what some converters
    write) is the same model; a different head is one transformers uses (it unties them, with a warning) while
    this trainer tied it silently: two models from one folder, logits 100 % apart."""
    head, embedding = files.read("lm_head.weight"), files.read("model.embed_tokens.weight")
    if head.shape == embedding.shape and np.array_equal(head, embedding):
        return
    raise UserError(
        f"the Hugging Face checkpoint at {files.path}: config.json ties the output head to the embedding "
        f"(tie_word_embeddings), but the weights hold an {hf_tensors.stored_name('lm_head.weight', files.stored)} that "
        f"differs from {hf_tensors.stored_name('model.embed_tokens.weight', files.stored)}; "
        "transformers uses that head (untied), this trainer would tie it: two different models",
        "if the head is meant to be tied, save the model again without it (model.tie_weights(); "
        "model.save_pretrained(DIR)); if not, set tie_word_embeddings: false in config.json and use a model "
        "whose output head is its own",
    )


def load(path: str, shape: ModelShape, abstract: Any) -> Any:
    """Our parameters (a pure dict of global arrays shaped, typed and sharded like `abstract`, whose leaves are
    ShapeDtypeStructs with shardings) from the Hugging Face folder `path`. Scanned (`layers` stacked) and
    unscanned (`layers` a dict of entries) targets both work. Raises UserError for any mismatch or bad file."""
    remote = is_remote(path)
    files = RemoteFiles(path) if remote else Files(path)
    check(files, shape)

    def placed(leaf, read_one: Callable[[int | None], np.ndarray], stacked: bool):
        if remote:  # each tensor read once per host, not once per device
            return _placed_once(leaf, read_one, stacked)

        def fill(index):
            if not stacked:
                return np.asarray(read_one(None)[index], dtype=leaf.dtype)
            rows = range(leaf.shape[0])[index[0]]
            return np.stack([np.asarray(read_one(i)[index[1:]], dtype=leaf.dtype) for i in rows])

        return jax.make_array_from_callback(leaf.shape, leaf.sharding, fill)

    def reader(entry_of: Callable[[int], Entry]):
        return lambda i: entry_of(i).convert(files.read(entry_of(i).name))

    out: dict = {}
    for path_, entry in top_entries(shape).items():
        _put(out, path_, placed(_get(abstract, path_), reader(lambda _i, e=entry: e), stacked=False))
    if shape.tie_embeddings and "lm_head" in abstract:
        raise UserError("internal: tied model with an lm_head")  # pragma: no cover
    layers = abstract["layers"]
    scanned = not all(isinstance(k, int) for k in layers)
    per_entry = list(block_entries(shape, 0))
    if scanned:
        for sub in per_entry:

            def entry_of(i: int, sub: tuple = sub) -> Entry:
                return block_entries(shape, i)[sub]

            _put(out, ("layers", *sub), placed(_get(layers, sub), reader(entry_of), stacked=True))
    else:
        for i in sorted(layers):
            table = block_entries(shape, i)
            for sub in per_entry:
                _put(out, ("layers", i, *sub), placed(_get(layers[i], sub), reader(lambda _j, e=table[sub]: e), False))
    return out


def _placed_once(leaf, read_one: Callable[[int | None], np.ndarray], stacked: bool) -> jax.Array:
    """`leaf` (a ShapeDtypeStruct with a sharding) as a global array, reading each source tensor once: every
    local device's shard is a host buffer filled tensor by tensor (`read_one(row)`: row `row` of a stacked leaf,
    or the whole leaf for `None`), then put on its devices. Devices holding the same part share a buffer."""
    parts: dict[tuple, tuple[tuple, list]] = {}
    for device, index in leaf.sharding.addressable_devices_indices_map(leaf.shape).items():
        key = tuple(sl.indices(n) for sl, n in zip(index, leaf.shape))
        parts.setdefault(key, (index, []))[1].append(device)
    buffers = {
        key: np.empty([len(range(*k)) for k in key], leaf.dtype) for key in parts
    }  # the host's shards of this leaf
    if stacked:
        for row in range(leaf.shape[0]):
            tensor = read_one(row)
            for key, (index, _) in parts.items():
                rows = range(*key[0])
                if row in rows:
                    buffers[key][rows.index(row)] = tensor[index[1:]]
    else:
        tensor = read_one(None)
        for key, (index, _) in parts.items():
            buffers[key][...] = tensor[index]
    arrays = [jax.device_put(buffers[key], device) for key, (_, devices) in parts.items() for device in devices]
    return jax.make_array_from_single_device_arrays(leaf.shape, leaf.sharding, arrays)


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _put(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# --- out -----------------------------------------------------------------------------------------------------


def save(
    params: Any,
    shape: ModelShape,
    out_dir: str,
    *,
    scanned: bool = True,
    dtype: str = "float32",
    extra: dict[str, Any] | None = None,
) -> None:
    """Write parameters (a pure dict, host or device arrays) as a Hugging Face folder: config.json (the shape's,
    plus `extra` fields) and one model.safetensors (`dtype`: float32 or bfloat16), loadable by transformers as is."""
    import ml_dtypes
    from safetensors.numpy import save_file

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
    tensors = {}
    for path_, entry in top_entries(shape).items():
        tensors[entry.name] = entry.invert(np.asarray(_get(params, path_), np.float32))
    for i in range(shape.num_layers):
        for sub, entry in block_entries(shape, i).items():
            leaf = _get(params["layers"], sub)[i] if scanned else _get(params["layers"][i], sub)
            tensors[entry.name] = entry.invert(np.asarray(leaf, np.float32))
    os.makedirs(out_dir, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in tensors.items()},
        os.path.join(out_dir, SINGLE),
        metadata={"format": "pt"},
    )
    with open(os.path.join(out_dir, CONFIG), "w") as f:
        json.dump(config_of(shape, dtype) | (extra or {}), f, indent=2)


def _starts_with(file: str, prefix: bytes) -> bool:
    """Whether the local `file` begins with `prefix` (False when it cannot be read: the caller's error stands)."""
    try:
        with open(file, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False
