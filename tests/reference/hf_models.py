"""Run by the test-only reference environment's Python (torch + transformers; see hack/ref/install.sh), never
imported by the tests: makes a tiny random Hugging Face model and writes what transformers computes with it.

    python hf_models.py make FAMILY OUT_DIR CONFIG_JSON SEED TOKENS_NPY [--max-shard-size SIZE]
        builds FAMILY's model from CONFIG_JSON with random weights (norm weights randomised too: Gemma's start at
        0 and Llama's at 1, so a wrong norm formula would otherwise go unseen), saves it with `save_pretrained`
        into OUT_DIR, and writes its float32 logits for the int32 tokens in TOKENS_NPY to OUT_DIR/logits.npy.
    python hf_models.py make-many JOBS_JSON
        the same for each {"family", "out", "config", "seed", "tokens", "max_shard_size"?} in the JSON list (one
        torch start-up for all of them).
    python hf_models.py logits MODEL_DIR TOKENS_NPY OUT_NPY
        loads MODEL_DIR with `from_pretrained` and writes its logits for TOKENS_NPY.
    python hf_models.py logits-many JOBS_JSON
        the same for each [MODEL_DIR, TOKENS_NPY, OUT_NPY] in the JSON list.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import transformers

CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "gemma3_mm": ("Gemma3Config", "Gemma3ForConditionalGeneration"),  # image-text: Gemma 3 4B/12B/27B on the Hub
}


def logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens.astype(np.int64)), use_cache=False)
    return out.logits.float().numpy()


def make(family: str, out_dir: str, config_json: str, seed: int, tokens_npy: str, max_shard: str | None) -> None:
    torch.manual_seed(seed)
    config_cls, model_cls = (getattr(transformers, name) for name in CLASSES[family])
    config = config_cls(**json.loads(config_json), attn_implementation="eager")
    model = model_cls(config).eval().float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if family.startswith("gemma") else 1.0))
            else:
                p.copy_(torch.randn_like(p) * (0.5 if "embed" in name else 0.15))
    kwargs = {"max_shard_size": max_shard} if max_shard else {}
    model.save_pretrained(out_dir, **kwargs)
    np.save(f"{out_dir}/logits.npy", logits(model, np.load(tokens_npy)))


def main(argv: list[str]) -> None:
    if argv[0] == "make":
        max_shard = argv[argv.index("--max-shard-size") + 1] if "--max-shard-size" in argv else None
        make(argv[1], argv[2], argv[3], int(argv[4]), argv[5], max_shard)
    elif argv[0] == "make-many":
        for job in json.loads(argv[1]):
            config = json.dumps(job["config"])
            make(job["family"], job["out"], config, job["seed"], job["tokens"], job.get("max_shard_size"))
    elif argv[0] == "logits":
        model = transformers.AutoModelForCausalLM.from_pretrained(argv[1], attn_implementation="eager").float()
        np.save(argv[3], logits(model.eval(), np.load(argv[2])))
    elif argv[0] == "logits-many":  # JSON list of [MODEL_DIR, TOKENS_NPY, OUT_NPY]
        for model_dir, tokens, out in json.loads(argv[1]):
            model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
            np.save(out, logits(model.float().eval(), np.load(tokens)))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
