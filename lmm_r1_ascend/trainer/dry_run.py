"""`--dry-run`: check the config, the device, the model paths and every data row, then exit."""

from __future__ import annotations

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.trainer.setup import prepare_data


def dry_run(cfg: TrainConfig, log=print) -> dict:
    """Raises SetupError / DataError / BackendUnavailable on the first problem; returns a summary."""
    backend = get_backend(cfg.device)
    actor, _, _, dataset = prepare_data(cfg, shuffle=False)
    for _ in dataset:  # decode every row and image now, so a bad one fails here and not at step 300
        pass
    summary = {"device": backend.name, "actor": actor, "prompts": len(dataset), **dataset.counts}
    log(f"dry run ok: {summary}")
    return summary
