"""Multi-turn samples into the experience batch: per-turn rewards as a token field.

A multi-turn sample (rollout/multi_turn.py) carries its turns' environment rewards and the
response index of each turn's last sampled token. `step_rewards` lays them out as the
ExperienceBatch's ``step_rewards`` field: (R,) float32, the turn's reward at its last sampled
token, 0 everywhere else (observation tokens included). The scalar reward of the sample is
their sum (its return: what outcome estimators credit).

    batch = ExperienceBatch(..., step_rewards=step_rewards_of(samples))   # None for single responses
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def step_rewards(sample: Any) -> torch.Tensor:
    """(R,) float32 per-turn rewards of one multi-turn RolloutSample, at its turns' last sampled tokens."""
    t = sample.trajectory
    n = int(sample.response_ids.numel())
    if len(t.turn_ends) != len(t.turn_rewards):
        raise ValueError(f"a trajectory has {len(t.turn_ends)} turn ends but {len(t.turn_rewards)} turn rewards")
    out = torch.zeros(n, dtype=torch.float32)
    for end, r in zip(t.turn_ends, t.turn_rewards):
        if not 0 <= end < n or not bool(sample.action_mask[end]):
            raise ValueError(f"turn end {end} is not a sampled token of the {n}-token response")
        out[end] += float(r)
    return out


def step_rewards_of(samples: Sequence[Any]) -> list[torch.Tensor] | None:
    """ExperienceBatch.step_rewards for `samples`: None when none is multi-turn; a mixed batch is a ValueError."""
    multi = [getattr(s, "trajectory", None) is not None for s in samples]
    if not any(multi):
        return None
    if not all(multi):
        raise ValueError("a batch mixes multi-turn and single-response samples")
    return [step_rewards(s) for s in samples]
