"""`--dry-run`: check the config, the device, the model paths and every data row, then exit."""

from __future__ import annotations

from pathlib import Path

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.trainer.setup import SetupError, resolve_actor_path


def dry_run(cfg: TrainConfig, log=print) -> dict:
    """Raises SetupError / DataError / BackendUnavailable on the first problem; returns a summary."""
    from lmm_r1_ascend.data import PromptDataset, load_processors
    from lmm_r1_ascend.models.loading import resolve_model_path
    from lmm_r1_ascend.trainer.setup import MATH_PROMPT_ALIASES

    backend = get_backend(cfg.device)
    if not cfg.data.prompt_data:
        raise SetupError("data.prompt_data is empty: pass data.prompt_data=PATH.jsonl (or a list of paths)")
    for path in cfg.data.prompt_data:
        if not Path(path).exists():
            raise SetupError(f"data file not found: {path} (data.prompt_data)")
    actor = resolve_actor_path(cfg)
    if not Path(actor).exists() and not actor.startswith("tiny-"):
        raise SetupError(f"model not found: '{actor}' is not a local directory; download it first")
    tokenizer, processor = load_processors(resolve_model_path(actor))
    from lmm_r1_ascend.data import MATH_SYSTEM_PROMPT

    system = MATH_SYSTEM_PROMPT if cfg.data.system_prompt in MATH_PROMPT_ALIASES else cfg.data.system_prompt
    dataset = PromptDataset(cfg.data.prompt_data, tokenizer, processor, loader=cfg.data.loader, system_prompt=system,
                            min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels,
                            max_prompt_len=cfg.data.max_prompt_len, on_bad_line=cfg.data.on_bad_line,
                            seed=cfg.seed, shuffle=False)
    for _ in dataset:  # decode every row and image now, so a bad one fails here and not at step 300
        pass
    summary = {"device": backend.name, "actor": actor, "prompts": len(dataset), **dataset.counts}
    log(f"dry run ok: {summary}")
    return summary
