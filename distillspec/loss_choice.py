"""Which distillation loss the trainer compiles for a spec: dense (both models' `[tokens, vocab]` float32 logits)
or fused (computed from hidden states block by block, `trainer.loss.fused_distillation_loss`), and the fused
loss's block sizes. JAX-free, so that `distillctl plan`'s memory estimate and the trainer decide alike."""

from __future__ import annotations

# Per device, one model's dense float32 logits `[tokens, vocab]` above this many bytes select the fused loss: the
# dense loss holds several such arrays at once (logits of both models, the gradient, the metric passes).
DENSE_LOGITS_BUDGET_BYTES = 512 * 2**20
BLOCK_TOKENS = 1024  # the fused loss's token block
BLOCK_VOCAB = 8192  # and vocabulary block


def fused_loss_wanted(tokens_per_device: int, vocab: int, budget_bytes: int = DENSE_LOGITS_BUDGET_BYTES) -> bool:
    """Whether the step should compute the loss from hidden states block by block instead of from dense logits:
    when one model's float32 logits for a device's micro-batch (`tokens_per_device × vocab × 4` bytes) exceed
    `budget_bytes`. Small models keep the dense loss (faster on CPU, no recomputation of the LM head matmul in
    the backward pass)."""
    return tokens_per_device * vocab * 4 > budget_bytes
