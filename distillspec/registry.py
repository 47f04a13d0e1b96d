"""Model shapes users distill, named as MaxText names them.

Numbers are MaxText's own (`src/maxtext/configs/models/<name>.yml`): vocab sizes are the padded sizes MaxText
uses (Gemma 2: 256128), and `num_layers` is the length of the scanned layer stack, which is what
`layer_indices` index. Gemma 2 scans pairs of (local, global) attention layers, so its stack is half the
published depth; `layers_per_block` keeps parameter counts right.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's dimensions (widths in elements, not bytes)."""

    family: str
    num_layers: int  # entries in the scanned layer stack
    emb_dim: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    vocab_size: int
    tie_embeddings: bool = False  # MaxText `logits_via_embedding`
    layers_per_block: int = 1  # transformer layers per scanned entry (Gemma 2: 2)
    qk_norm: bool = False
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5

    def param_count(self) -> int:
        """Parameters, counting embeddings once when tied."""
        d, h, kv, hd, f = self.emb_dim, self.num_query_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
        attention = d * h * hd + 2 * d * kv * hd + h * hd * d
        mlp = 3 * d * f  # SwiGLU / GeGLU: gate, up, down
        norms = 2 * d + (2 * hd if self.qk_norm else 0)
        per_layer = attention + mlp + norms
        embed = self.vocab_size * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.num_layers * self.layers_per_block * per_layer + embed + head + d

    def with_overrides(self, **overrides: int | None) -> ModelShape:
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _llama3(layers: int, d: int, heads: int, mlp: int, *, kv: int = 8, hd: int = 128, tie: bool = False):
    return ModelShape("llama", layers, d, heads, kv, hd, mlp, 128_256, tie_embeddings=tie, rope_theta=500_000.0)


def _gemma2(blocks: int, d: int, heads: int, kv: int, hd: int, mlp: int):
    return ModelShape(
        "gemma2", blocks, d, heads, kv, hd, mlp, 256_128, tie_embeddings=True, layers_per_block=2, norm_eps=1e-6
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
    "llama3.1-8b": _llama3(32, 4096, 32, 14_336),
    "llama3.1-70b": _llama3(80, 8192, 64, 28_672),
    "llama3.1-405b": _llama3(126, 16_384, 128, 53_248),
    "llama3.2-1b": _llama3(16, 2048, 32, 8192, hd=64, tie=True),
    "llama3.2-3b": _llama3(28, 3072, 24, 8192, tie=True),
    "gemma2-2b": _gemma2(13, 2304, 8, 4, 256, 9216),
    "gemma2-9b": _gemma2(21, 3584, 16, 8, 256, 14_336),
    "gemma2-27b": _gemma2(23, 4608, 32, 16, 128, 36_864),
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
