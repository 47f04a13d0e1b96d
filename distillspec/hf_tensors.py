"""The tensors of a Hugging Face folder (`model.safetensors`, or shards listed by `model.safetensors.index.json`):
which ones a model shape needs, by name and shape, and what is wrong with a folder's, from the safetensors headers
alone (an 8-byte little-endian length, then a JSON header of `{name: {dtype, shape, data_offsets}}`).

Pure and JAX-free: the trainer checks a folder with it before loading, and `validate --check-paths` before launch,
so a folder whose config.json fits but whose weights do not is refused on the laptop, not minutes into a slice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from distillspec.hf_config import INDEX, ConfigError
from distillspec.registry import ModelShape

ALLOWED_DTYPES = ("F32", "BF16", "F16")
HEADER_LIMIT = 100_000_000  # safetensors caps headers at 100 MB

Shape = tuple[int, ...]
Path = tuple[str, ...]


# --- the tensors a shape needs -------------------------------------------------------------------------------


def layer_tensors(shape: ModelShape, layer: int) -> dict[Path, tuple[str, Shape]]:
    """Our in-block parameter path -> (Hugging Face tensor name, its shape) of transformer layer `layer`."""
    s, p = shape, f"model.layers.{layer}."
    d, h, n, k, f = s.emb_dim, s.num_query_heads, s.num_kv_heads, s.head_dim, s.mlp_dim
    out = {
        ("attention", "wq"): (p + "self_attn.q_proj.weight", (h * k, d)),
        ("attention", "wk"): (p + "self_attn.k_proj.weight", (n * k, d)),
        ("attention", "wv"): (p + "self_attn.v_proj.weight", (n * k, d)),
        ("attention", "wo"): (p + "self_attn.o_proj.weight", (d, h * k)),
        ("mlp", "gate"): (p + "mlp.gate_proj.weight", (f, d)),
        ("mlp", "up"): (p + "mlp.up_proj.weight", (f, d)),
        ("mlp", "down"): (p + "mlp.down_proj.weight", (d, f)),
        ("attention_norm", "scale"): (p + "input_layernorm.weight", (d,)),
    }
    if s.is_gemma:
        out[("post_attention_norm", "scale")] = (p + "post_attention_layernorm.weight", (d,))
        out[("mlp_norm", "scale")] = (p + "pre_feedforward_layernorm.weight", (d,))
        out[("post_mlp_norm", "scale")] = (p + "post_feedforward_layernorm.weight", (d,))
    else:  # Llama's "post_attention_layernorm" is the norm before the MLP
        out[("mlp_norm", "scale")] = (p + "post_attention_layernorm.weight", (d,))
    if s.qk_norm:
        out[("attention", "q_norm", "scale")] = (p + "self_attn.q_norm.weight", (k,))
        out[("attention", "k_norm", "scale")] = (p + "self_attn.k_norm.weight", (k,))
    return out


def block_tensors(shape: ModelShape, entry: int) -> dict[Path, tuple[str, Shape]]:
    """Our in-stack-entry parameter path -> (Hugging Face name, shape), for stack entry `entry` (Gemma 2: a pair
    of layers, sliding then full)."""
    if shape.family != "gemma2":
        return layer_tensors(shape, entry)
    out = {}
    for sub, layer in (("sliding", 2 * entry), ("full", 2 * entry + 1)):
        out |= {(sub, *path): tensor for path, tensor in layer_tensors(shape, layer).items()}
    return out


def top_tensors(shape: ModelShape) -> dict[Path, tuple[str, Shape]]:
    s = shape
    out = {
        ("embed",): ("model.embed_tokens.weight", (s.vocab_size, s.emb_dim)),
        ("final_norm", "scale"): ("model.norm.weight", (s.emb_dim,)),
    }
    if not s.tie_embeddings:
        out[("lm_head",)] = ("lm_head.weight", (s.vocab_size, s.emb_dim))
    return out


def tensor_table(shape: ModelShape) -> dict[str, Shape]:
    """Every Hugging Face tensor name the shape needs -> its shape."""
    table = dict(top_tensors(shape).values())
    for i in range(shape.num_layers):  # stack entries: Gemma 2's are pairs of layers
        table |= dict(block_tensors(shape, i).values())
    return table


# --- a folder's files ----------------------------------------------------------------------------------------

# Gemma 3 4B/12B/27B are image-text models: their language model's tensors sit under `language_model.` (the Hub's
# layout, which transformers 5 writes too) or `model.language_model.` (transformers 4.5x), beside a vision tower and
# a projector the trainer does not use.
_LANGUAGE_MODEL_PREFIXES = (
    ("language_model.model.", "model."),
    ("model.language_model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def language_model_names(stored: Iterable[str]) -> dict[str, str]:
    """Tensor name as the trainer knows it (`model.layers.0...`) -> the name stored in the files: the same for a
    language model's folder; an image-text model's language tensors renamed, its vision tensors left out."""
    names = list(stored)
    if not any(n.startswith(("language_model.", "model.language_model.")) for n in names):
        return {n: n for n in names}
    out = {}
    for name in names:
        if name.startswith(_VISION_PREFIXES):
            continue
        ours = next((new + name[len(old) :] for old, new in _LANGUAGE_MODEL_PREFIXES if name.startswith(old)), name)
        out[ours] = name
    return out


def weight_map(text: bytes | str, index: str) -> dict[str, str]:
    """The tensor -> shard file map of a `model.safetensors.index.json`; ConfigError saying what is wrong with it."""
    hint = "re-save the model with save_pretrained, or copy its index file again"
    try:
        found = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {index}: {e}", hint) from None
    mapping = found.get("weight_map") if isinstance(found, dict) else None
    if not isinstance(mapping, dict):
        raise ConfigError(f"{index} has no weight_map object (tensor name -> shard file)", hint)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ConfigError(f"{index}: weight_map must map tensor names to shard file names", hint)
    return mapping


def stored_name(name: str, names: Mapping[str, str]) -> str:
    """How the folder whose tensors are `names` (ours -> stored, `language_model_names`) names, or would name, the
    tensor the trainer knows as `name`: an image-text model's missing tensor under the prefix its others have."""
    if name in names:
        return names[name]
    for ours, stored in names.items():
        for old, new in _LANGUAGE_MODEL_PREFIXES:
            if stored.startswith(old) and ours.startswith(new) and name.startswith(new):
                return old + name[len(new) :]
    return name


def locate(stored: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """`(names, where)` of a folder's tensors `stored` (name as stored -> its file): each tensor's name as the
    trainer knows it -> the name stored (`language_model_names`), and -> the file holding it."""
    names = language_model_names(stored)
    return names, {ours: stored[name] for ours, name in names.items()}


def tensor_header(header: Mapping[str, Any], file: str, name: str) -> tuple[Shape, str]:
    """(shape, safetensors dtype) of the tensor stored as `name` in `file`, whose parsed header is `header`;
    ConfigError when the file lacks it (an index that names the wrong shard)."""
    info = header.get(name)
    if info is None:
        raise not_in_shard(file, name)
    return tuple(info["shape"]), info["dtype"]


def not_in_shard(file: str, name: str) -> ConfigError:
    """The error for a shard that lacks a tensor the folder's index assigns to it (only an index can misplace one:
    a single model.safetensors is listed from its own header)."""
    return ConfigError(
        f"{file} has no tensor {name}, though {INDEX} beside it names that shard for it",
        f"re-save the model with save_pretrained, or copy {INDEX} again from where the shards came from",
    )


def unreadable(file: str, why: str = "") -> ConfigError:
    return ConfigError(
        f"{file} is not a readable safetensors file{': ' + why if why else ''}", "download or copy the file again"
    )


# What a clone of a model repository without git-lfs holds in place of each weights file (~130 bytes of text)
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def lfs_pointer(file: str) -> ConfigError:
    return ConfigError(
        f"{file} is a Git LFS pointer, not the weights (the repository was cloned without git-lfs)",
        "fetch the weights: `git lfs pull` in the clone, or download the files themselves",
    )


def parse_header(file: str, size: int, read: Callable[[int, int], bytes]) -> tuple[dict, int]:
    """(header without `__metadata__`, where the data starts) of the safetensors file `file` of `size` bytes,
    read through `read(start, end)`; ConfigError when it is not a safetensors file or is cut short."""
    if size < 1024 and read(0, min(size, len(LFS_POINTER))) == LFS_POINTER:
        raise lfs_pointer(file)
    if size < 8:
        raise unreadable(file)
    length = int.from_bytes(read(0, 8), "little")
    if length > min(size - 8, HEADER_LIMIT):
        raise unreadable(file)
    try:
        header = json.loads(read(8, 8 + length))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise unreadable(file) from None
    if not isinstance(header, dict):
        raise unreadable(file)
    header.pop("__metadata__", None)
    start = 8 + length
    for name, info in header.items():
        try:
            end = start + int(info["data_offsets"][1])
            [int(n) for n in info["shape"]]
        except (KeyError, TypeError, ValueError, IndexError):
            raise unreadable(file) from None
        if end > size:
            raise unreadable(file, f"tensor {name} ends at byte {end} of {size} (truncated?)")
    return header, start


# --- what is wrong with them ---------------------------------------------------------------------------------

# Buffers older transformers saved beside the weights (RoPE's inverse frequencies, recomputed from the config):
# transformers skips them on load, and so does the trainer.
_BUFFERS = (".rotary_emb.inv_freq",)


def mismatch(
    path: str,
    where: Mapping[str, str],
    header: Callable[[str], tuple[Shape, str]],
    shape: ModelShape,
    names: Mapping[str, str] | None = None,
) -> tuple[str, str] | None:
    """(message, hint) naming every tensor of the folder at `path` that is missing, extra, of another shape or of
    a dtype the trainer does not load; None when they fit. `where`: tensor name (as `language_model_names` gives)
    -> its file; `header(name)`: its (shape, safetensors dtype); `names`: ours -> as stored, so that the message
    names the tensors as the folder does (an image-text Gemma 3's under `language_model.`)."""
    want = tensor_table(shape)

    def shown(name: str) -> str:
        return stored_name(name, names) if names else name

    problems = [f"{shown(name)}: expected {want[name]}, missing" for name in want if name not in where]
    bad_dtypes: list[str] = []  # the dtype of each tensor refused for its dtype alone
    for name in want:
        if name in where:
            found, dtype = header(name)
            base = where[name].rsplit("/", 1)[-1]
            if found != want[name]:
                problems.append(f"{shown(name)} in {base}: expected {want[name]}, found {found}")
            elif dtype not in ALLOWED_DTYPES:
                bad_dtypes.append(dtype)
                problems.append(f"{shown(name)} in {base}: dtype {dtype} not one of F32/BF16/F16")
    extra = sorted(
        n
        for n in where
        if n not in want and not (shape.tie_embeddings and n == "lm_head.weight") and not n.endswith(_BUFFERS)
    )
    problems += [f"{shown(name)}: not part of this model" for name in extra]
    if not problems:
        return None
    missing = [name for name in want if name not in where]
    if len(bad_dtypes) == len(problems):  # the model fits, its weights' type does not: said once, not per tensor
        return (
            f"the Hugging Face checkpoint at {path} holds {len(bad_dtypes)} tensor(s) of dtype "
            f"{', '.join(sorted(set(bad_dtypes)))} (e.g. "
            f"{problems[0].split(':')[0]}): the trainer loads float32, bfloat16 or float16 weights",
            "save the weights in float32, bfloat16 or float16 (e.g. model.to(torch.bfloat16).save_pretrained(DIR))",
        )
    if len(missing) == len(problems):
        hint = _missing_hint(missing, shape)
    else:
        hint = "point load_parameters_path at a checkpoint of the spec's model, or change the model block to match it"
    message = (
        f"the Hugging Face checkpoint at {path} does not hold this model ({shape.family}, {shape.depth} layers, width "
        f"{shape.emb_dim}): "
        + "; ".join(problems[:8])
        + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else "")
    )
    return message, hint


def _missing_hint(missing: list[str], shape: ModelShape) -> str:
    """Tensors absent while every other one fits: the model block matched config.json (it is checked first), so
    the weights are incomplete, not another model."""
    if missing == ["lm_head.weight"] and not shape.tie_embeddings:
        return (
            "the folder has no output head of its own: if the model's head is its embedding, set "
            "tie_word_embeddings: true in its config.json (and the model block's tie_embeddings: true); else copy the "
            "checkpoint again, every weights file"
        )
    return (
        "the folder's weights lack tensors the model needs (a shard not copied, a partial save?): copy or save the "
        "checkpoint again, every weights file"
    )
