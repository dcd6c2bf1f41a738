"""Reward shaping and sample filtering from DAPO (Yu et al. 2025, arXiv 2503.14476).

overlong_penalty: the soft length penalty added to the rule reward
(``reward.overlong_shaping``). informative_groups: which prompt groups carry a learning
signal, for dynamic sampling (``algorithm.dynamic_sampling``).
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer_len: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment for responses of ``lengths`` (B,) tokens.

    With ``L = max_new_tokens`` and ``C = buffer_len``: 0 up to ``L - C`` tokens, then falling
    linearly to ``-penalty`` at ``L`` (``((L - C) - len) / C * penalty``), and ``-penalty``
    beyond ``L``. Returns (B,) float32, to be added to the reward.
    """
    if not 0 < buffer_len <= max_new_tokens:
        raise ValueError(f"overlong buffer_len must be in [1, max_new_tokens={max_new_tokens}], got {buffer_len}")
    if not penalty >= 0:
        raise ValueError(f"overlong penalty must be >= 0, got {penalty}")
    n = torch.as_tensor(lengths).reshape(-1).to(torch.float32)
    start = float(max_new_tokens - buffer_len)
    ramp = (start - n) / buffer_len * penalty
    out = torch.where(n <= start, torch.zeros_like(n), ramp)
    return out.clamp(min=-float(penalty))


def informative_groups(rewards: torch.Tensor, n: int, atol: float = 1e-6) -> torch.Tensor:
    """Which groups of ``n`` consecutive samples have rewards that are not all equal.

    rewards: (B,) with B a multiple of n, group g being rows [g*n, (g+1)*n). A group whose
    rewards are all equal (within ``atol``) has zero group-relative advantage everywhere and
    teaches nothing. Returns (B // n,) bool.
    """
    r = torch.as_tensor(rewards).reshape(-1).float()
    if n < 2 or r.numel() % n:
        raise ValueError(f"informative_groups needs n >= 2 and a multiple of n rewards, got n={n}, {r.numel()}")
    groups = r.view(-1, n)
    return (groups.max(dim=1).values - groups.min(dim=1).values) > atol
