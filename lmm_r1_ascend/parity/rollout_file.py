"""The recorded-rollout file: its layout, its fingerprint, and a checked loader.

Layout (``torch.save`` of plain types, loadable with ``weights_only=True``):
    format: ROLLOUT_FORMAT. model: a built-in model name ("demo-fre"). seed: int.
    algorithm: the AlgorithmConfig as a dict. training: optimizer and batching settings
        (actor_lr, critic_lr, adam_betas, weight_decay, max_norm, lr_scheduler, min_lr_ratio,
        lr_warmup_ratio, train_batch_size, max_epochs, max_tokens_per_micro_batch,
        temperature, total_updates).
    critic_value_head: float32 (1, H), the critic head's initial weights (drawn at random when
        the trainer loads the critic; stored so every machine replays the same start).
    steps: one dict per training step: prompt_ids / response_ids lists of int32 (P_i,) /
        (R_i,), action_mask list of bool (R_i,), log_probs list of float32 (R_i,) (what the
        rollout sampled the tokens with), rewards float32 (B,), group_ids int64 (B,),
        finish_reasons list of str.
    trainer_metrics: per step, the recording trainer's own training metrics (floats).
    recorded_with: {"torch", "transformers", "python", "date_utc"}.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

ROLLOUT_FORMAT = "lmm-r1-parity-rollout/1"
REQUIRED_KEYS = ("model", "seed", "algorithm", "training", "critic_value_head", "steps")
STEP_KEYS = ("prompt_ids", "response_ids", "action_mask", "log_probs", "rewards", "group_ids")


# The recording's training settings (its "training" dict), by config section.
TRAINING_KEYS = {
    "optim": ("actor_lr", "critic_lr", "adam_betas", "weight_decay", "max_norm", "lr_scheduler", "min_lr_ratio",
              "lr_warmup_ratio"),
    "trainer": ("train_batch_size", "max_epochs", "max_tokens_per_micro_batch"),
    "rollout": ("temperature",),
}

class ParityInputError(ValueError):
    """A user-caused problem with the parity inputs (a foreign rollout file, a bad option)."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: the rollout fingerprint stamped into every parity result."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_rollout(path: str | Path) -> dict[str, Any]:
    """Load and check a recorded rollout; adds "sha256" (of the file) and "name" (its base name).

    Raises FileNotFoundError, or ParityInputError naming what is wrong with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rollout file not found: {path} (record one with "
                                "`python -m lmm_r1_ascend.parity record --out FILE.pt`)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, or not a torch.save file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ParityInputError(f"{path} is not a readable rollout file ({type(exc).__name__}: {first})") from None
    if not isinstance(data, dict) or data.get("format") != ROLLOUT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ParityInputError(f"{path} is not a parity rollout of format {ROLLOUT_FORMAT!r} (found {found!r}): "
                               "record one with `python -m lmm_r1_ascend.parity record`")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing or not data["steps"]:
        raise ParityInputError(f"{path} lacks {missing or ['steps']}: record it again")
    for k, step in enumerate(data["steps"]):
        absent = [key for key in STEP_KEYS if key not in step]
        if absent:
            raise ParityInputError(f"{path}: step {k} lacks {absent}: record it again")
        n = len(step["response_ids"])
        for key in ("prompt_ids", "action_mask", "log_probs"):
            if len(step[key]) != n:
                raise ParityInputError(f"{path}: step {k} has {len(step[key])} {key} for {n} responses")
    data["sha256"] = file_sha256(path)
    data["name"] = path.name
    return data
