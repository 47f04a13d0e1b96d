"""Model shapes users distill, named as MaxText names them, with every number the model's math depends on.

Dimensions are MaxText's own (`src/maxtext/configs/models/<name>.yml`) and agree with the published Hugging Face
configs: vocab sizes are the sizes MaxText uses (Gemma 2: 256128, Gemma 3: 262144). `num_layers` is the length of
the scanned layer stack, which is what `layer_indices` index: one transformer layer per entry, except Gemma 2,
whose stack (as in MaxText) holds pairs of (sliding-window, global) layers, so its stack is half the published
depth and `layers_per_block` is 2. Gemma 3 is stacked one layer per entry (MaxText scans it in blocks of six);
its layer `i` is global when `(i + 1) % global_every == 0`, else sliding-window, unless `global_layers` lists
the global layers: a student pruned from a Gemma 3 teacher (`drop_layers`) keeps each kept layer's kind and RoPE
base from its original index, so its pattern is the teacher's minus the dropped layers (`pruned_global_layers`).
"""

from __future__ import annotations

import dataclasses
import functools

FAMILIES = ("llama", "qwen3", "gemma2", "gemma3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling of the global layers: `llama3` (Llama 3.1/3.2) or `linear` (Gemma 3 ≥ 4B)."""

    kind: str  # "llama3" | "linear"
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position: int = 8192  # llama3 only


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's dimensions (widths in elements, not bytes) and the constants of its math."""

    family: str  # one of FAMILIES: which block the trainer builds
    num_layers: int  # entries in the scanned layer stack
    emb_dim: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    vocab_size: int
    tie_embeddings: bool = False  # MaxText `logits_via_embedding`
    layers_per_block: int = 1  # transformer layers per scanned entry (Gemma 2: 2)
    qk_norm: bool = False  # RMSNorm over each head's queries and keys before RoPE (Qwen 3, Gemma 3)
    rope_theta: float = 10_000.0  # global layers
    rope_local_theta: float | None = None  # sliding-window layers, when their base differs (Gemma 3)
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-5
    sliding_window: int | None = None  # keys a sliding-window layer's query sees, itself included
    global_every: int = 0  # Gemma 3: every n-th layer is global, the others sliding-window
    attn_softcap: float | None = None  # scores -> cap·tanh(scores / cap) (Gemma 2)
    final_softcap: float | None = None  # logits -> cap·tanh(logits / cap) (Gemma 2)
    query_pre_attn_scalar: float | None = None  # scores scaled by its -1/2 power; None: head_dim
    # Gemma 3: the global layers (0-based, sorted) when they are not every `global_every`-th (a pruned model);
    # None: the pattern. Normalised on construction: a list equal to the pattern becomes None.
    global_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.global_layers is not None:
            layers = tuple(sorted(set(self.global_layers)))
            pattern = self.family == "gemma3" and layers == self.pattern_global_layers()
            # frozen: the one place a field is normalised
            object.__setattr__(self, "global_layers", None if pattern else layers)

    @property
    def is_gemma(self) -> bool:
        """Gemma's math: (1 + w) norms, pre- and post-norms, GeGLU (tanh GELU), embeddings scaled by √d."""
        return self.family in ("gemma2", "gemma3")

    @property
    def depth(self) -> int:
        """Transformer layers (not stack entries)."""
        return self.num_layers * self.layers_per_block

    def is_local(self, layer: int) -> bool:
        """Whether transformer layer `layer` (0-based, in published order) uses sliding-window attention."""
        if self.family == "gemma2":
            return layer % 2 == 0
        if self.family == "gemma3":
            if self.global_layers is not None:
                return layer not in self.global_layers
            return (layer + 1) % self.global_every != 0
        return False

    def pattern_global_layers(self) -> tuple[int, ...]:
        """Gemma 3's global layers by the `global_every` pattern alone (empty for the other families)."""
        if self.family != "gemma3" or self.global_every <= 0:
            return ()
        return tuple(i for i in range(self.depth) if (i + 1) % self.global_every == 0)

    def param_count(self) -> int:
        """Parameters, counting embeddings once when tied."""
        d, h, kv, hd, f = self.emb_dim, self.num_query_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
        attention = d * h * hd + 2 * d * kv * hd + h * hd * d
        mlp = 3 * d * f  # SwiGLU / GeGLU: gate, up, down
        norms = (4 if self.is_gemma else 2) * d + (2 * hd if self.qk_norm else 0)
        per_layer = attention + mlp + norms
        embed = self.vocab_size * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.depth * per_layer + embed + head + d

    def matmul_param_count(self) -> int:
        """Parameters each token is multiplied by: the layers' projections and the output head (tied or not). The
        input embedding is a table lookup, and norms are elementwise: neither is matmul work (Llama 3 8B's
        untied input table is 0.5 B of its 8.0 B parameters)."""
        d, h, kv, hd, f = self.emb_dim, self.num_query_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
        attention = d * h * hd + 2 * d * kv * hd + h * hd * d
        return self.depth * (attention + 3 * d * f) + self.vocab_size * d

    def attention_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of attention's two matmuls with its keys (scores, then the weighted values),
        summed over layers: 2·2·heads·head_dim per key seen, a causal query seeing (T + 1) / 2 keys on average,
        a sliding-window layer at most its window (MaxText's `calculate_tflops_training_per_device` counts the
        same). Linear in the sequence length per token: at 32k tokens it outweighs a 4B model's projections."""
        per_key = 4 * self.num_query_heads * self.head_dim
        causal = (seq_len + 1) / 2
        window = self.sliding_window
        if window is not None and window < seq_len:  # the first `window` queries as causal, the rest see `window`
            local = (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len
        else:
            local = causal
        return sum(per_key * (local if self.is_local(layer) else causal) for layer in range(self.depth))

    def with_overrides(self, **overrides: int | tuple[int, ...] | None) -> ModelShape:
        changes = tuple(sorted((k, v) for k, v in overrides.items() if v is not None))
        return _replaced(self, changes) if changes else self


# The shape fields a spec's model block may set (`ModelSpec`); the others come with the registry model it names.
BLOCK_FIELDS = (
    "num_layers",
    "emb_dim",
    "num_query_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "vocab_size",
    "global_layers",
)


# The constants of a model's math a block may also set, when a checkpoint's differ from the registry model's
# (Meta-Llama-3-8B: Llama 3.1's shape without its RoPE scaling; a SmolLM-style Llama: another RoPE base, tied).
CONSTANT_FIELDS = (
    "rope_theta",
    "rope_scaling",
    "tie_embeddings",
    "norm_eps",
    "sliding_window",
    "rope_local_theta",
    "attn_softcap",
    "final_softcap",
    "query_pre_attn_scalar",
)
# Constants only Gemma's blocks compute with (a Llama or Qwen 3 block has no sliding window or soft-cap).
GEMMA_CONSTANTS = ("sliding_window", "rope_local_theta", "attn_softcap", "final_softcap", "query_pre_attn_scalar")


NONE = "none"  # a constant set to nothing in a model block: no RoPE scaling, no soft-cap


def constant_in_spec_terms(field: str, value: object) -> object:
    """A shape constant as a model block writes it (`none`, a rope_scaling mapping)."""
    if value is None:
        return NONE
    if isinstance(value, RopeScaling):
        out: dict[str, object] = {"type": value.kind, "factor": value.factor}
        if value.kind == "llama3":
            out |= {
                "low_freq_factor": value.low_freq_factor,
                "high_freq_factor": value.high_freq_factor,
                "original_max_position_embeddings": value.original_max_position,
            }
        return out
    return value


def with_constants(shape: ModelShape, changes: tuple[tuple[str, object], ...]) -> ModelShape:
    """`shape` with constants replaced (None included: no RoPE scaling, no soft-cap)."""
    return _replaced(shape, changes) if changes else shape


@functools.lru_cache(maxsize=4096)  # a sweep asks for the same few shapes thousands of times
def _replaced(shape: ModelShape, changes: tuple[tuple[str, int], ...]) -> ModelShape:
    return dataclasses.replace(shape, **dict(changes))


def pruned_global_layers(teacher: ModelShape, drop: list[int] | tuple[int, ...]) -> tuple[int, ...] | None:
    """The `global_layers` of a student made from `teacher` by removing stack entries `drop` (`init: teacher`):
    each kept layer keeps the attention kind it had in the teacher. None for families whose kinds are fixed by
    their stack (Gemma 2's entries are (sliding-window, global) pairs, so dropping entries keeps the alternation)
    and when the kept kinds follow the `global_every` pattern anyway."""
    if teacher.family != "gemma3":
        return None
    dropped = set(drop)
    kept = [i for i in range(teacher.num_layers) if i not in dropped]
    layers = tuple(new for new, old in enumerate(kept) if not teacher.is_local(old))
    return dataclasses.replace(teacher, num_layers=len(kept), global_layers=layers).global_layers


_LLAMA31 = RopeScaling("llama3", 8.0)
_LLAMA32 = RopeScaling("llama3", 32.0)


def _llama3(layers: int, d: int, heads: int, mlp: int, *, kv: int = 8, hd: int = 128, tie: bool = False, rope):
    return ModelShape(
        "llama", layers, d, heads, kv, hd, mlp, 128_256, tie_embeddings=tie, rope_theta=500_000.0, rope_scaling=rope
    )


def _gemma2(blocks: int, d: int, heads: int, kv: int, hd: int, mlp: int, *, query_scalar: int):
    return ModelShape(
        "gemma2",
        blocks,
        d,
        heads,
        kv,
        hd,
        mlp,
        256_128,
        tie_embeddings=True,
        layers_per_block=2,
        norm_eps=1e-6,
        sliding_window=4096,
        attn_softcap=50.0,
        final_softcap=30.0,
        query_pre_attn_scalar=query_scalar,
    )


def _gemma3(layers: int, d: int, heads: int, kv: int, hd: int, mlp: int, *, window: int, query_scalar: int, scale):
    return ModelShape(
        "gemma3",
        layers,
        d,
        heads,
        kv,
        hd,
        mlp,
        262_144,
        tie_embeddings=True,
        qk_norm=True,
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        rope_scaling=RopeScaling("linear", scale) if scale else None,
        norm_eps=1e-6,
        sliding_window=window,
        global_every=6,
        query_pre_attn_scalar=query_scalar,
    )


def _qwen3(layers: int, d: int, heads: int, mlp: int, *, tie: bool):
    return ModelShape(
        "qwen3",
        layers,
        d,
        heads,
        8,
        128,
        mlp,
        151_936,
        tie_embeddings=tie,
        qk_norm=True,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
    )


def _tiny(layers: int, d: int, vocab: int):
    return ModelShape("llama", layers, d, max(d // 16, 2), max(d // 32, 1), 16, 4 * d, vocab)


MODELS: dict[str, ModelShape] = {
    "llama3.1-8b": _llama3(32, 4096, 32, 14_336, rope=_LLAMA31),
    "llama3.1-70b": _llama3(80, 8192, 64, 28_672, rope=_LLAMA31),
    "llama3.1-405b": _llama3(126, 16_384, 128, 53_248, rope=_LLAMA31),
    "llama3.2-1b": _llama3(16, 2048, 32, 8192, hd=64, tie=True, rope=_LLAMA32),
    "llama3.2-3b": _llama3(28, 3072, 24, 8192, tie=True, rope=_LLAMA32),
    "gemma2-2b": _gemma2(13, 2304, 8, 4, 256, 9216, query_scalar=256),
    "gemma2-9b": _gemma2(21, 3584, 16, 8, 256, 14_336, query_scalar=256),
    "gemma2-27b": _gemma2(23, 4608, 32, 16, 128, 36_864, query_scalar=144),
    "gemma3-1b": _gemma3(26, 1152, 4, 1, 256, 6912, window=512, query_scalar=256, scale=None),
    "gemma3-4b": _gemma3(34, 2560, 8, 4, 256, 10_240, window=1024, query_scalar=256, scale=8.0),
    "gemma3-12b": _gemma3(48, 3840, 16, 8, 256, 15_360, window=1024, query_scalar=256, scale=8.0),
    "gemma3-27b": _gemma3(62, 5376, 32, 16, 128, 21_504, window=1024, query_scalar=168, scale=8.0),
    "qwen3-0.6b": _qwen3(28, 1024, 16, 3072, tie=True),
    "qwen3-1.7b": _qwen3(28, 2048, 16, 6144, tie=True),
    "qwen3-4b": _qwen3(36, 2560, 32, 9728, tie=True),
    "qwen3-8b": _qwen3(36, 4096, 32, 12_288, tie=False),
    "qwen3-14b": _qwen3(40, 5120, 40, 17_408, tie=False),
    "qwen3-32b": _qwen3(64, 5120, 64, 25_600, tie=False),
    # Made-up shapes for CPU tests, demos and benchmarks.
    "tiny-4l": _tiny(4, 64, 256),
    "tiny-2l": _tiny(2, 64, 256),
    "mid-4l": _tiny(4, 256, 32_000),
    "mid-2l": _tiny(2, 256, 32_000),
}
