"""Hugging Face `config.json` and this project's `ModelShape`, both ways, without JAX: the trainer builds its
models from it, `distillctl validate --check-paths` compares a checkpoint's config with the spec before launch.

Read: transformers 5's `rope_parameters` (per layer type for Gemma 3) and 4.x's `rope_theta`/`rope_scaling`/
`rope_local_base_freq`. Written (`config_of`): both (transformers 5 reads `rope_parameters`, 4.x the older keys).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distillspec.config import integral
from distillspec.problems import Loc
from distillspec.registry import (
    BLOCK_FIELDS,
    CONSTANT_FIELDS,
    MODELS,
    ModelShape,
    RopeScaling,
    constant_in_spec_terms,
)

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
MODEL_TYPES = {"llama": "llama", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3_text": "gemma3"}
# Every field of a shape: a checkpoint's config states them all, and they must agree with the spec's model.
COMPARED = [f.name for f in dataclasses.fields(ModelShape)]

if TYPE_CHECKING:
    from distillspec.config import DistillSpec


_KINDS = ("sliding_attention", "full_attention")


def layer_types(shape: ModelShape) -> list[str]:
    """Hugging Face's `layer_types`: each transformer layer's attention kind, in published order."""
    return [_KINDS[0] if shape.is_local(i) else _KINDS[1] for i in range(shape.depth)]


class ConfigError(ValueError):
    """A config.json this project cannot build a model from; `hint` says what to do. `unsupported`: it is read
    well, and describes a model the trainer does not build (a family, a RoPE, quantized weights), not a damaged
    file."""

    def __init__(self, message: str, hint: str = "", *, unsupported: bool = False):
        super().__init__(message)
        self.message, self.hint, self.unsupported = message, hint, unsupported


def _positive_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _positive_integer(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


# The fix for a config.json that is not as transformers writes it (a value absent, of another type, past any model's)
DAMAGED = "use the config.json saved with the checkpoint's weights"


def _rope(
    params: dict | None,
    legacy_theta,
    legacy_scaling: dict | None,
    default_theta: float,
    file: str,
    theta_key: str = "rope_theta",
    params_name: str = "rope_parameters",
):
    """(theta, RopeScaling | None) from one `rope_parameters` entry (`params_name`: where it is in the file) or the
    4.x fields (`theta_key`: the 4.x name of the base, Gemma 3's local layers' `rope_local_base_freq`)."""
    for name, value in ((params_name, params), ("rope_scaling", legacy_scaling)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(
                f"{file}: {name} must be a JSON object or null, got {value!r}",
                DAMAGED,
            )
    p = dict(params or {})
    if legacy_scaling:
        p = {**legacy_scaling, **p}
    field = params_name if params else "rope_scaling"
    theta = next((t for t in (p.get("rope_theta"), legacy_theta) if t is not None), default_theta)
    # A theta of 0 read as the family's default, and NaN led to a hint (`rope_theta: nan`) no block takes.
    if not _positive_number(theta):
        said = f"{params_name}.rope_theta" if params and params.get("rope_theta") is not None else theta_key
        raise ConfigError(f"{file}: {said} must be a positive number, got {theta!r}", DAMAGED)
    kind = p.get("rope_type") or p.get("type") or "default"
    if kind == "default":
        return float(theta), None
    # What the RoPE types the trainer computes read; another type's keys are its own (YaRN's are said below).
    needed = {"llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    for key in needed.get(kind, ("factor",) if kind == "linear" else ()):
        if key not in p:
            raise ConfigError(f"{file}: {field}.{key} is missing (RoPE type {kind!r})", DAMAGED)
        if not _positive_number(p[key]):
            raise ConfigError(f"{file}: {field}.{key} must be a positive number, got {p[key]!r}", DAMAGED)
    if kind == "llama3":
        return float(theta), RopeScaling(
            "llama3",
            float(p["factor"]),
            float(p["low_freq_factor"]),
            float(p["high_freq_factor"]),
            int(p["original_max_position_embeddings"]),
        )
    if kind == "linear":
        return float(theta), RopeScaling("linear", float(p["factor"]))
    raise ConfigError(
        f"{file}: RoPE type {kind!r} (rope_parameters' rope_type, or rope_scaling's type) is not supported: the trainer "
        "computes default, llama3 and linear RoPE",
        "dynamic scaling is the default RoPE up to max_position_embeddings: for sequences no longer than that, a copy "
        "of the folder with rope_type default computes the same"
        if kind == "dynamic"
        else "YaRN is added to a model's config for contexts past its trained length (Qwen 3's model card adds it "
        "past 32,768 tokens; the weights are the same without it): in a copy of config.json, remove rope_scaling (or set "
        "rope_parameters' rope_type: default) and keep batch.max_target_length within original_max_position_embeddings"
        if kind == "yarn"
        else "use a model whose RoPE is default, llama3 or linear",
        unsupported=True,
    )


def language_config(config: dict, file: str = CONFIG) -> dict:
    """The language model's settings of a config.json: the config itself, or an image-text Gemma 3's `text_config`
    (Gemma 3 4B, 12B and 27B are published as Gemma3ForConditionalGeneration; the trainer distils their language
    model and leaves the vision tower out)."""
    text = config.get("text_config")
    if config.get("model_type") == "gemma3" and not isinstance(text, dict):
        raise ConfigError(
            f"{file}: model_type gemma3 (image-text Gemma 3) needs a text_config object, the language model's "
            f"settings; got {text!r}",
            DAMAGED,
        )
    if config.get("model_type") == "gemma3":
        tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
        # transformers writes a nested config as its difference from the class's defaults: the published 4B's
        # text_config has no heads and no vocab_size, the 12B's and 27B's no vocab_size (all three were refused).
        return {**GEMMA3_TEXT_DEFAULTS, "tie_word_embeddings": tie, **text, "model_type": "gemma3_text"}
    return config


# transformers' Gemma3TextConfig defaults for what a config states (the rest of its RoPE: `_shape`'s defaults).
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "max_position_embeddings": 131_072,
}


def shape_from_config(config: dict, file: str = CONFIG) -> ModelShape:
    """The `ModelShape` a Hugging Face config.json describes; raises ConfigError for what the trainer cannot build."""
    _not_quantized(config, file)
    config = language_config(config, file)
    model_type = config.get("model_type")
    family = MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    if model_type is not None and not isinstance(model_type, str):  # not "model_type 3 is not supported"
        raise ConfigError(f"{file}: model_type must be a string, got {model_type!r}", DAMAGED)
    if model_type is None:
        raise ConfigError(
            f"{file} has no model_type", f"a Hugging Face config.json names its family: one of {', '.join(MODEL_TYPES)}"
        )
    if family is None:
        raise ConfigError(
            f"{file}: model_type {model_type!r} is not supported",
            f"supported model types: {', '.join(MODEL_TYPES)}, and Gemma 3's image-text gemma3 (its language model)",
            unsupported=True,
        )
    try:
        return _shape(config, family, file)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # a field of the wrong type or absent
        if isinstance(e, ConfigError):
            raise
        what = f"{e.args[0]!r} is missing" if isinstance(e, KeyError) else f"a field has the wrong type or value ({e})"
        raise ConfigError(f"{file}: {what}", DAMAGED) from None


def _not_quantized(config: dict, file: str) -> None:
    """A quantized checkpoint (GPTQ, AWQ, bitsandbytes, FP8: transformers records `quantization_config`) holds
    integer or 8-bit tensors under other names: the trainer, which loads float weights, failed on its tensors with
    a list of "missing" and "not part of this model" that did not say why."""
    quantization = config.get("quantization_config")
    if quantization is None:
        text = config.get("text_config")
        quantization = text.get("quantization_config") if isinstance(text, dict) else None
    if quantization is None:
        return
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    raise ConfigError(
        f"{file}: the checkpoint is quantized (quantization_config"
        + (f", quant_method {method!r}" if isinstance(method, str) else "")
        + "): the trainer loads float weights (float32, bfloat16 or float16)",
        "point load_parameters_path at the model's unquantized checkpoint, or dequantize it and save_pretrained "
        "it first",
        unsupported=True,
    )


# Sizes every supported family's config states; each a positive integer (a string or a null here used to surface
# as a TypeError deep in the shape's arithmetic).
_REQUIRED_SIZES = ("num_attention_heads", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")
_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim")


_MAX_SIZE = 1 << 24  # a width, head count or vocabulary (the largest published are ~256k)
_MAX_SIZES = {"num_hidden_layers": 10_000}


def _sizes(c: dict, file: str) -> None:
    for key in _REQUIRED_SIZES + _OPTIONAL_SIZES:
        value = c.get(key)
        if value is None and key in _OPTIONAL_SIZES:
            continue
        if value is None:
            raise ConfigError(f"{file}: {key} is missing", DAMAGED)
        if not _positive_integer(value):
            raise ConfigError(f"{file}: {key} must be a positive integer, got {value!r}", DAMAGED)
        most = _MAX_SIZES.get(key, _MAX_SIZE)
        if value > most:  # 10**30 layers: a per-layer list grew until memory ran out
            raise ConfigError(f"{file}: {key} {value:,} is past any model's (at most {most:,})", DAMAGED)


# Settings read beside the sizes, each of one JSON type: `"tie_word_embeddings": "false"` read as tied (bool of a
# non-empty string), `"sliding_window": "512"` as a mismatch "expected 512, found 512" that no block could fix.
_TYPED: dict[str, tuple[Callable[[Any], bool], str]] = {  # key: (whether a value other than null reads, what to write)
    "tie_word_embeddings": (lambda v: isinstance(v, bool), "true or false"),
    "rms_norm_eps": (_positive_number, "a positive number"),
    "sliding_window": (_positive_integer, "a positive whole number or null"),
    "attn_logit_softcapping": (_positive_number, "a positive number or null"),
    "final_logit_softcapping": (_positive_number, "a positive number or null"),
    "query_pre_attn_scalar": (_positive_number, "a positive number"),
}
_NOT_NULL = ("rms_norm_eps", "query_pre_attn_scalar")  # transformers computes with them


def _typed(c: dict, file: str) -> None:
    for key, (reads, what) in _TYPED.items():
        if key not in c or (c[key] is None and key not in _NOT_NULL):
            continue
        value = c[key]
        if value is None or not reads(value):
            raise ConfigError(
                f"{file}: {key} must be {what}, got {value!r}",
                DAMAGED,
            )


def _shape(c: dict, family: str, file: str) -> ModelShape:
    _sizes(c, file)
    _typed(c, file)
    heads = c["num_attention_heads"]
    depth = c["num_hidden_layers"]
    gemma = family.startswith("gemma")
    rope_params = c.get("rope_parameters") or {}
    if not isinstance(rope_params, dict):  # Gemma 3's is read per layer kind below: an AttributeError there
        raise ConfigError(f"{file}: rope_parameters must be a JSON object or null, got {rope_params!r}", DAMAGED)
    if family == "gemma3":
        theta, scaling = _rope(
            rope_params.get("full_attention"),
            c.get("rope_theta"),
            c.get("rope_scaling"),
            1_000_000.0,
            file,
            params_name="rope_parameters.full_attention",
        )
        local_theta, local_scaling = _rope(
            rope_params.get("sliding_attention"),
            c.get("rope_local_base_freq"),
            None,
            10_000.0,
            file,
            "rope_local_base_freq",
            "rope_parameters.sliding_attention",
        )
    else:
        theta, scaling = _rope(rope_params, c.get("rope_theta"), c.get("rope_scaling"), 10_000.0, file)
        local_theta = local_scaling = None
    # A key the config leaves out means transformers' default for the family (a hand-made or converted config):
    # Gemma 2 soft-caps at 50/30 unless told null; Qwen 3 and Gemma have a head_dim of their own.
    defaults = _FAMILY_DEFAULTS.get(family, {})
    shape = ModelShape(
        family=family,
        num_layers=depth // 2 if family == "gemma2" else depth,
        emb_dim=c["hidden_size"],
        num_query_heads=heads,
        num_kv_heads=c.get("num_key_value_heads", defaults.get("num_key_value_heads")) or heads,
        head_dim=c.get("head_dim", defaults.get("head_dim")) or c["hidden_size"] // heads,
        mlp_dim=c["intermediate_size"],
        vocab_size=c["vocab_size"],
        tie_embeddings=bool(c.get("tie_word_embeddings", gemma)),
        layers_per_block=2 if family == "gemma2" else 1,
        qk_norm=family in ("qwen3", "gemma3"),
        rope_theta=theta,
        rope_local_theta=local_theta,
        rope_scaling=scaling,
        norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        sliding_window=c.get("sliding_window", defaults.get("sliding_window")) if gemma else None,
        global_every=6 if family == "gemma3" else 0,
        attn_softcap=c.get("attn_logit_softcapping", defaults.get("attn_logit_softcapping")) if gemma else None,
        final_softcap=c.get("final_logit_softcapping", defaults.get("final_logit_softcapping")) if gemma else None,
        query_pre_attn_scalar=c.get("query_pre_attn_scalar", defaults.get("query_pre_attn_scalar")) if gemma else None,
    )
    # As transformers reads it: `sliding_window_pattern` (its `_sliding_window_pattern` is written, never read).
    pattern = int(c.get("sliding_window_pattern") or 6) if family == "gemma3" else 6
    if pattern != 6:
        # Every published Gemma 3 has a global layer every 6th; another pattern is the same model with other layer
        # kinds, which a block states as global_layers (it cannot set global_every).
        shape = dataclasses.replace(
            shape, global_layers=tuple(i for i in range(depth) if (i + 1) % max(pattern, 1) == 0)
        )
    problems = []
    if family == "gemma2" and depth % 2:
        problems.append(f"Gemma 2 pairs sliding-window and global layers, but num_hidden_layers is {depth}")
    types = c.get("layer_types")
    if family == "gemma3" and isinstance(types, list) and len(types) == depth and set(types) <= set(_KINDS):
        # A pruned Gemma 3 keeps its layers' kinds; the shape normalises a list that is the pattern to None.
        shape = dataclasses.replace(shape, global_layers=tuple(i for i, t in enumerate(types) if t == _KINDS[1]))
    expected = layer_types(shape)
    if isinstance(types, list) and len(types) != depth:  # a 62-layer model's two lists were printed whole
        raise ConfigError(
            f"{file}: layer_types has {len(types)} entries, num_hidden_layers is {depth}",
            DAMAGED,
        )
    if types is not None and list(types) != expected:
        if not isinstance(types, list):
            raise ConfigError(
                f"{file}: layer_types must be a list, got {types!r}",
                DAMAGED,
            )
        differ = [i for i, (got, want) in enumerate(zip(types, expected, strict=True)) if got != want]
        shown = ", ".join(f"layer {i} is {types[i]!r} (the pattern's {expected[i]!r})" for i in differ[:5])
        problems.append(
            f"layer_types differ from the {family} pattern at {len(differ)} layer(s): {shown}"
            + (" ..." if len(differ) > 5 else "")
        )
    if family == "gemma3":
        # What transformers' Gemma 3 does not compute, or computes otherwise than the published models do.
        if c.get("use_bidirectional_attention"):
            problems.append(
                "use_bidirectional_attention is set (an encoder such as EmbeddingGemma); this trainer builds causal "
                "language models"
            )
        if c.get("attn_logit_softcapping") is not None:
            problems.append(
                "attn_logit_softcapping is set, which transformers' Gemma 3 stores but never applies (no published "
                "Gemma 3 sets it): set it to null to load the model as transformers runs it"
            )
        if local_scaling is not None:
            problems.append(
                f"RoPE scaling ({local_scaling.kind}) on the sliding-window layers; Gemma 3 scales the global layers' "
                "RoPE only, and so does this trainer"
            )
    if family == "gemma2" and scaling is not None:
        problems.append(
            f"RoPE scaling ({scaling.kind}) on a Gemma 2: transformers scales every layer's RoPE, this trainer only "
            "the global layers' (no published Gemma 2 scales RoPE)"
        )
    if c.get("use_sliding_window"):
        problems.append("use_sliding_window is set, which this trainer does not build for Qwen 3")
    if c.get("attention_bias") or c.get("mlp_bias"):
        problems.append("attention or MLP biases are set; the trainer's models have none")
    act = c.get("hidden_activation") or c.get("hidden_act")
    want_act = ("gelu_pytorch_tanh",) if gemma else ("silu",)
    if act is not None and act not in want_act:
        problems.append(f"activation {act!r}, this trainer builds {want_act[0]} for {family}")
    if problems:
        raise ConfigError(
            f"{file}: " + "; ".join(problems), "use an unmodified model of a supported family", unsupported=True
        )
    return shape


# transformers' defaults for the keys a config may leave out (Qwen3Config, Gemma2Config, Gemma3TextConfig; a
# LlamaConfig's are the attention heads and hidden_size / heads, as when the key is null).
_FAMILY_DEFAULTS = {
    "qwen3": {"head_dim": 128, "num_key_value_heads": 32},
    "gemma2": {
        "head_dim": 256,
        "num_key_value_heads": 4,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "query_pre_attn_scalar": 256,
    },
    "gemma3": {"head_dim": 256, "num_key_value_heads": 4, "sliding_window": 4096, "query_pre_attn_scalar": 256},
}


def shape_mismatches(found: ModelShape, expected: ModelShape) -> list[str]:
    """`field: expected X, found Y` for every difference between two shapes (Gemma 3's global layers as the
    lists they are, with a hint for a pruned checkpoint)."""
    out = []
    for name in COMPARED:
        if getattr(found, name) == getattr(expected, name):
            continue
        if name == "global_layers":
            want, got = _globals(expected), _globals(found)
            if want != got:  # else another field (depth) differs and says so
                out.append(
                    f"global_layers: expected {want}, found {got} (a pruned Gemma 3 keeps its layers' kinds: set "
                    "global_layers in the model block to the checkpoint's)"
                )
            continue
        if name in CONSTANT_FIELDS:  # in the block's terms (`none`, `{type: llama3, ...}`), not Python's
            want, got = (_yaml_flow(constant_in_spec_terms(name, getattr(x, name))) for x in (expected, found))
            out.append(f"{name}: expected {want}, found {got}")
            continue
        said = f"{name}: expected {getattr(expected, name)}, found {getattr(found, name)}"
        if name == "num_layers" and found.layers_per_block > 1:  # config.json says 24 where this says 12
            said += f" (blocks of {found.layers_per_block} layers: {found.depth} layers)"
        out.append(said)
    return out


# How the Hugging Face Hub names a model (`org/name`); checkpoints are read from folders only, local or at a URL.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def unexpanded_home(path: str) -> tuple[str, str] | None:
    """(why, what to do) for a path that starts with `~`: a spec's paths are read as written, never expanded."""
    if not path.startswith("~"):
        return None
    return (
        "a leading ~ is not expanded (paths in a spec are read as written)",
        f"write the full path ({os.path.expanduser(path)} on this machine, if that is the folder)",
    )


def hub_download_hint(path: str) -> str:
    """What to do when `path`, a relative `org/name` with nothing there, may name a model on the Hub."""
    return (
        f"if it names a model on the Hugging Face Hub, checkpoints are not downloaded: download it first "
        f"(huggingface-cli download {path} --local-dir DIR) and point load_parameters_path at DIR"
    )


def mismatch_hint(side: str, found: ModelShape, expected: ModelShape) -> str:
    """What to change in the `side` block for a checkpoint of shape `found`: the block's own fields, or the
    registry models whose fixed fields (tied embeddings, RoPE, norms...) are the checkpoint's, or that none is."""
    settable = (*BLOCK_FIELDS, *CONSTANT_FIELDS)
    differing = [n for n in COMPARED if getattr(found, n) != getattr(expected, n)]
    fixed = [n for n in differing if n not in settable]
    if not fixed:
        # What to write, as a block writes it: `rope_scaling: none` (Meta-Llama-3-8B under llama3.1-8b).
        lines = ", ".join(
            f"{side}.{n}: "
            f"{_yaml_flow(constant_in_spec_terms(n, getattr(found, n)) if n in CONSTANT_FIELDS else getattr(found, n))}"
            for n in differing
        )
        other = "student" if side == "teacher" else "teacher"
        shared = (
            f"; {other}.vocab_size too (the two models share a vocabulary: Hugging Face's Gemma 2 has "
            "256000 rows where MaxText pads to 256128, image-text Gemma 3 has 262208)"
            if "vocab_size" in differing
            else ""
        )
        return f"set {lines} (the checkpoint's; or choose a registry model that has them){shared}"
    fixed_fields = [n for n in COMPARED if n not in settable]
    like = [name for name, s in MODELS.items() if all(getattr(s, n) == getattr(found, n) for n in fixed_fields)]
    cannot = f"{', '.join(fixed)} cannot be set in a model block"
    if like:
        return (
            f"{cannot}: choose a registry model with the checkpoint's ({', '.join(like[:4])}), and set the block's "
            "fields (num_layers, emb_dim, rope_theta, ...) for the rest"
        )
    return f"{cannot}, and no registry model has the checkpoint's (`distillctl models` lists them): distillctl cannot build this model"


def _yaml_flow(value) -> str:
    """A value as it reads in a YAML flow mapping (`{type: llama3, factor: 8.0}`, `[3, 9]`, `none`)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _globals(shape: ModelShape) -> list[int]:
    return list(shape.global_layers if shape.global_layers is not None else shape.pattern_global_layers())


_CLASSES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
}


def _rope_parameters(theta: float, scaling: RopeScaling | None) -> dict:
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    if scaling.kind == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": scaling.factor}
    return {
        "rope_type": "llama3",
        "rope_theta": theta,
        "factor": scaling.factor,
        "low_freq_factor": scaling.low_freq_factor,
        "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_max_position,
    }


def config_of(shape: ModelShape, dtype: str = "float32") -> dict:
    """The config.json (transformers 5 layout) that `shape_from_config` reads back as `shape`."""
    s = shape
    model_type, architecture = _CLASSES[s.family]
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": s.vocab_size,
        "hidden_size": s.emb_dim,
        "intermediate_size": s.mlp_dim,
        "num_hidden_layers": s.depth,
        "num_attention_heads": s.num_query_heads,
        "num_key_value_heads": s.num_kv_heads,
        "head_dim": s.head_dim,
        "rms_norm_eps": s.norm_eps,
        "tie_word_embeddings": s.tie_embeddings,
        "attention_bias": False,
        "dtype": dtype,
    }
    if s.is_gemma:
        config |= {
            "hidden_activation": "gelu_pytorch_tanh",
            "sliding_window": s.sliding_window,
            # an int in transformers' Gemma configs (its strict config classes refuse 16.0)
            "query_pre_attn_scalar": integral(float(s.query_pre_attn_scalar or s.head_dim)),
            "attn_logit_softcapping": s.attn_softcap,
            "final_logit_softcapping": s.final_softcap,
            "layer_types": layer_types(s),
        }
    else:
        config |= {"hidden_act": "silu", "mlp_bias": False}
    # RoPE in both layouts: transformers 5 reads `rope_parameters`; 4.x reads `rope_theta`, `rope_scaling` (and
    # Gemma 3's `rope_local_base_freq`) and would take its defaults (θ 10000, no scaling) without them.
    scaling = _rope_parameters(s.rope_theta, s.rope_scaling) if s.rope_scaling is not None else None
    legacy = {
        "rope_theta": s.rope_theta,
        "rope_scaling": scaling and {k: v for k, v in scaling.items() if k != "rope_theta"},
    }
    if s.family == "gemma3":
        config["sliding_window_pattern"] = s.global_every
        config["rope_parameters"] = {
            "full_attention": _rope_parameters(s.rope_theta, s.rope_scaling),
            "sliding_attention": _rope_parameters(s.rope_local_theta or s.rope_theta, None),
        }
        legacy["rope_local_base_freq"] = s.rope_local_theta or s.rope_theta
    else:
        config["rope_parameters"] = _rope_parameters(s.rope_theta, s.rope_scaling)
    config |= legacy
    if s.family == "qwen3":
        config["use_sliding_window"] = False
    return config


TOKENIZER = "tokenizer.json"


def tokenizer_files(spec: DistillSpec) -> list[tuple[Loc, str]]:
    """Where a run's tokenizer.json is looked for, in order, each with the spec key that leads there: data.tokenizer
    when set (a tokenizer.json, or a folder holding one), else the teacher's checkpoint folder, then the student's;
    none for `byte`. The trainer (`trainer.data.resolve_tokenizer`) reads the first that exists, and `validate
    --check-paths` checks that one."""
    named = spec.data.tokenizer
    if named == "byte":
        return []
    if named is not None:
        return [(("data", "tokenizer"), named if named.endswith(".json") else f"{named.rstrip('/')}/{TOKENIZER}")]
    return [((side, "load_parameters_path"), file) for side, file in folder_tokenizers(spec)]


def folder_tokenizers(spec: DistillSpec) -> list[tuple[str, str]]:
    """(side, the tokenizer.json its checkpoint folder would hold) for the teacher, then the student, with a path."""
    return [
        (side, f"{model.load_parameters_path.rstrip('/')}/{TOKENIZER}")
        for side, model in (("teacher", spec.teacher), ("student", spec.student))
        if model is not None and model.load_parameters_path
    ]


def tokenizer_difference(teacher_text: str, student_text: str) -> str | None:
    """What differs between two Hugging Face tokenizer.json files in what they map text to (the model's vocabulary
    and merges, and the added tokens), or None when they tokenise alike. Distillation compares the two models'
    logits token by token, which means nothing across tokenizers."""
    import json

    try:
        teacher, student = json.loads(teacher_text), json.loads(student_text)
    except ValueError:
        return None if teacher_text == student_text else "one of them is not JSON"
    if not isinstance(teacher, dict) or not isinstance(student, dict):
        return None if teacher == student else "one of them is not a tokenizer"
    for key, what in (("model", "vocabulary or merges"), ("added_tokens", "added tokens")):
        if teacher.get(key) != student.get(key):
            return what
    return None


def tokenizer_size(text: str) -> int | None:
    """How many token ids a tokenizer.json uses (its vocabulary's and added tokens' highest id + 1), read as
    JSON without the tokenizers library; None when the file does not say."""
    import json

    try:
        data = json.loads(text)
        vocab = (data.get("model") or {}).get("vocab")
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab))) if vocab else []
        ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t, dict) and "id" in t]
        ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
    except (ValueError, AttributeError, TypeError):
        return None
    return max(ids) + 1 if ids else None


def tokenizer_mismatch(files: tuple[str, str], texts: tuple[str, str]) -> tuple[str, str] | None:
    """(message, hint) when the teacher's and the student's tokenizer.json (`files`, read as `texts`) tokenise
    differently, else None: the trainer's error and `validate --check-paths`' problem, worded once."""
    difference = tokenizer_difference(*texts)
    if difference is None:
        return None
    return (
        f"the teacher's and the student's checkpoint folders hold tokenizers with different {difference} "
        f"({files[0]}, {files[1]}): distillation compares their logits token by token",
        "distil between models that share a tokenizer; if they tokenise alike after all, name one with data.tokenizer",
    )


def weights_missing(folder: str, key: str, *, torch_weights: bool, shards: int) -> tuple[str, str]:
    """(message, hint) for a folder with a config.json but no weights the trainer reads (model.safetensors, or
    model.safetensors.index.json and its shards): PyTorch .bin weights, shards without their index, or nothing.
    `folder` names it ("the teacher folder PATH"), `key` is the spec key that points at it. The trainer's error
    and `validate --check-paths`' problem, worded once."""
    if torch_weights and not shards:
        return (
            f"{folder} has {CONFIG} and PyTorch weights (.bin), which are not read: the trainer reads safetensors only",
            "save the model as safetensors (transformers: model.save_pretrained(DIR), whose default is safetensors) "
            f"and point {key} at DIR",
        )
    if shards:
        return (
            f"{folder} has {CONFIG} and {shards} safetensors shard(s) but no {INDEX}, which says which shard holds "
            "each tensor",
            f"copy the model's {INDEX} into the folder (save_pretrained writes it beside sharded weights)",
        )
    return (
        f"{folder} has {CONFIG} but no weights ({SINGLE}, or {INDEX} and its shards)",
        "copy the model's safetensors files into the folder (save_pretrained writes them beside config.json)",
    )


def beyond_max_position(config: dict, file: str, max_target_length: int, side: str) -> tuple[str, str] | None:
    """(message, hint) when `batch.max_target_length` is longer than the positions a checkpoint's config.json
    (`file`, read as `config`) says the `side` model was trained on (`max_position_embeddings`), else None (also
    when the config does not say). A warning, not an error: RoPE runs past that length, but the model's quality
    falls there without anything failing. `validate --check-paths`' problem and the trainer's start-up warning,
    worded once."""
    try:
        limit = language_config(config).get("max_position_embeddings")
    except ConfigError:  # said where the model is read (the trainer raised it here, before, as an internal error)
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 or max_target_length <= limit:
        return None
    return (
        f"batch.max_target_length {max_target_length} is longer than the {side}'s max_position_embeddings {limit} "
        f"({file}): RoPE runs past it, but the {side} was not trained on positions that far and its quality "
        "degrades silently",
        f"lower batch.max_target_length to {limit} or less, or use a {side} checkpoint trained for longer contexts",
    )
