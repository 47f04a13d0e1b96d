"""Faithful decoder-only models of the families the registry names (Llama 3.x, Qwen 3, Gemma 2, Gemma 3).

`layers` holds what the families share; `gemma` Gemma 2's paired block; `transformer` the model shell, its
config, initialisation and layer dropping.
"""

from trainer.models.layers import FEATURES
from trainer.models.transformer import (
    ModelConfig,
    Transformer,
    abstract_model,
    drop_layers,
    forward,
    forward_hidden,
    host_draws,
    host_init,
    init_model,
    set_path,
)

__all__ = [
    "FEATURES",
    "ModelConfig",
    "Transformer",
    "abstract_model",
    "drop_layers",
    "forward",
    "forward_hidden",
    "host_draws",
    "host_init",
    "set_path",
    "init_model",
]
