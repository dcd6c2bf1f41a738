"""Advantage estimators: group baselines, token rewards, discounted returns and GAE.

Layout: the whole rollout as padded tensors. ``B`` samples, ``L`` the longest response;
``action_mask`` (B, L) bool is True on response tokens that are actions (up to and
including the first EOS). Groups are the ``n`` samples of one prompt and must be
consecutive: sample ``i`` belongs to group ``i // n`` (how the rollout repeats prompts).

The recursions over time skip masked positions: a masked token (padding, or a token the
policy did not choose, like an environment observation) is not a step; the value that
bootstraps a step is the value of the next *unmasked* token. For the usual trailing
padding this is the textbook recursion. Masked positions get 0 in every output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmm_r1_ascend.algorithms.registry import Registry

GROUP_NORM_EPS = 1e-9  # GRPO: (r - mean) / (std + 1e-9), std unbiased (torch default)


def _groups(rewards: torch.Tensor, n: int, who: str) -> torch.Tensor:
    """(B,) -> (B // n, n), with clear errors for shapes that cannot be grouped."""
    if rewards.dim() != 1:
        raise ValueError(f"{who}: rewards must be 1-D (one scalar per sample), got shape {tuple(rewards.shape)}")
    if n < 2:
        raise ValueError(
            f"{who} compares the n samples of one prompt and needs n_samples_per_prompt >= 2, got {n}; "
            "use advantage_estimator 'reinforce' or 'gae' for one sample per prompt"
        )
    if rewards.numel() % n:
        raise ValueError(
            f"{who}: {rewards.numel()} rewards cannot be split into groups of n_samples_per_prompt={n}; "
            "every prompt must keep all of its n samples, consecutive"
        )
    return rewards.reshape(-1, n)


def _zero_flat_groups(shaped: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    """Exactly 0 for groups whose rewards are all equal.

    Rounding in the mean (e.g. three 0.1s) would otherwise leave ~1e-8 residues, which
    group_norm divides by a ~1e-9 std into advantages of order 1.
    """
    flat = (grouped.amax(-1, keepdim=True) == grouped.amin(-1, keepdim=True))
    return torch.where(flat, torch.zeros_like(shaped), shaped)


def rloo_rewards(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """RLOO: ``r_i - mean of the other n-1 rewards of the group``. (B,) -> (B,)."""
    g = _groups(rewards, n, "rloo")
    shaped = g - (g.sum(-1, keepdim=True) - g) / (n - 1)
    return _zero_flat_groups(shaped, g).reshape(-1)


def baseline_rewards(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """REINFORCE with group-mean baseline (also Dr. GRPO): ``r_i - mean``. (B,) -> (B,)."""
    g = _groups(rewards, n, "group mean baseline")
    shaped = g - g.mean(-1, keepdim=True)
    return _zero_flat_groups(shaped, g).reshape(-1)


def group_norm_rewards(rewards: torch.Tensor, n: int, eps: float = GROUP_NORM_EPS) -> torch.Tensor:
    """GRPO: ``(r_i - mean) / (std + eps)``, std with Bessel's correction. (B,) -> (B,)."""
    g = _groups(rewards, n, "group_norm")
    shaped = (g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + eps)
    return _zero_flat_groups(shaped, g).reshape(-1)


def _check_token_tensors(mask: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"action_mask must be a 2-D bool tensor (B, L), got {mask.dtype} {tuple(mask.shape)}")
    for name, t in tensors.items():
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} {tuple(t.shape)} must match action_mask {tuple(mask.shape)}")


def last_action_index(action_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True per row of (B, L) ``action_mask`` -> (B,) int64; -1 if none."""
    length = action_mask.shape[-1]
    from_end = action_mask.flip(-1).to(torch.int64).argmax(-1)
    idx = length - 1 - from_end
    return torch.where(action_mask.any(-1), idx, torch.full_like(idx, -1))


def token_rewards(
    rewards: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    reward_clip_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * kl`` on every action token, plus the (clipped)
    scalar reward on the last action token of each sample.

    Args:
        rewards: (B,) scalar reward per sample (already group-shaped if applicable).
        action_mask: (B, L) bool.
        kl: (B, L) per-token KL estimate, or None for no penalty.
        kl_coef: the penalty coefficient (fixed or from the adaptive controller).
        reward_clip_range: (low, high) clamp applied to the scalar reward.
    Returns:
        (B, L) float tensor; 0 at masked positions. A sample with no action token
        receives nothing (it contributes nothing to any loss either).
    """
    _check_token_tensors(action_mask, kl=kl)
    if rewards.shape != action_mask.shape[:1]:
        raise ValueError(f"rewards {tuple(rewards.shape)} must be (B,) with B = {action_mask.shape[0]}")
    r = rewards
    if reward_clip_range is not None:
        r = r.clamp(reward_clip_range[0], reward_clip_range[1])
    last = last_action_index(action_mask)
    scalar = torch.where(last >= 0, r, torch.zeros_like(r))
    placed = torch.zeros(action_mask.shape, dtype=r.dtype, device=action_mask.device)
    placed = placed.scatter_add(1, last.clamp(min=0).unsqueeze(1), scalar.unsqueeze(1))
    return _with_kl(placed, action_mask, kl, kl_coef)


def _with_kl(placed: torch.Tensor, action_mask: torch.Tensor, kl: torch.Tensor | None,
             kl_coef: float) -> torch.Tensor:
    """``placed`` (B, L) rewards minus ``kl_coef * kl`` on action tokens; 0 at masked positions."""
    dtype = torch.promote_types(placed.dtype, kl.dtype) if kl is not None else placed.dtype
    out = placed.to(dtype)
    if kl is not None and kl_coef != 0:
        out = out - kl_coef * kl.to(dtype)
    return torch.where(action_mask, out, torch.zeros_like(out))


def step_token_rewards(
    step_rewards: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    reward_clip_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Per-token rewards of multi-turn samples: ``-kl_coef * kl`` on every action token plus each
    turn's (clipped) environment reward where ``step_rewards`` (B, L) holds it (a turn's last
    sampled token; a turn reward of exactly 0 is no reward and is not clipped). A reward on a
    masked position is a caller error (ValueError): environment tokens earn nothing. Returns
    (B, L), 0 at masked positions."""
    _check_token_tensors(action_mask, step_rewards=step_rewards, kl=kl)
    if bool((step_rewards[~action_mask] != 0).any()):
        raise ValueError("step_rewards has a reward on a masked (environment) token; put each turn's reward on "
                         "its last sampled token")
    r = step_rewards
    if reward_clip_range is not None:  # clip the rewards only: a clamp of the zeros between them would
        r = torch.where(r != 0, r.clamp(*reward_clip_range), r)  # pay a range without 0 on every token
    return _with_kl(r, action_mask, kl, kl_coef)


def discounted_returns(token_rewards: torch.Tensor, action_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = r_t + gamma * G_{next action token}``, over action tokens only. (B, L) -> (B, L)."""
    _check_token_tensors(action_mask, token_rewards=token_rewards)
    masked = torch.where(action_mask, token_rewards, torch.zeros_like(token_rewards))
    if gamma == 1.0:  # the recipe's setting: a reverse cumulative sum, no Python loop
        out = masked.flip(-1).cumsum(-1).flip(-1)
        return torch.where(action_mask, out, torch.zeros_like(out))
    out = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        m = action_mask[:, t]
        running = torch.where(m, masked[:, t] + gamma * running, running)
        out[:, t] = torch.where(m, running, torch.zeros_like(running))
    return out


def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    action_mask: torch.Tensor,
    gamma: float,
    lambd: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    ``delta_t = r_t + gamma * V_next - V_t``, ``A_t = delta_t + gamma * lambd * A_next``,
    where "next" is the next action token (V_next = 0 and A_next = 0 after the last).
    Multi-turn rule: environment (observation) tokens are masked, so they are not steps: the
    last sampled token of turn k bootstraps from the value of the FIRST sampled token of turn
    k+1 (the state after the observation), with one discount, as if the masked tokens were
    cut out of the sequence; they get 0 advantage and 0 return.
    Args: token_rewards, values: (B, L) float; action_mask: (B, L) bool.
    Returns: (advantages, returns) both (B, L) with ``returns = advantages + values``.
    """
    _check_token_tensors(action_mask, token_rewards=token_rewards, values=values)
    values = values.to(token_rewards.dtype)
    adv = torch.zeros_like(token_rewards)
    next_value = torch.zeros_like(token_rewards[:, 0])
    next_adv = torch.zeros_like(next_value)
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        m = action_mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lambd * next_adv
        next_adv = torch.where(m, a, next_adv)
        next_value = torch.where(m, values[:, t], next_value)
        adv[:, t] = torch.where(m, a, torch.zeros_like(a))
    returns = torch.where(action_mask, adv + values, torch.zeros_like(adv))
    return adv, returns


@dataclass(frozen=True)
class AdvantageEstimator:
    """How one named estimator turns rewards into advantages.

    ``shape_rewards`` transforms the (B,) scalar rewards with a group baseline (None:
    unchanged); the token rewards are then turned into advantages by GAE with the
    critic's values (``uses_critic``) or by discounted returns (advantages = returns).
    ``whiten`` says whether the "auto" normalisation whitens the advantages.
    """

    name: str
    shape_rewards: Callable[[torch.Tensor, int], torch.Tensor] | None
    uses_critic: bool
    needs_groups: bool
    whiten: bool


ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator", "advantage_estimator")
for _spec in (
    AdvantageEstimator("gae", None, uses_critic=True, needs_groups=False, whiten=True),
    AdvantageEstimator("reinforce", None, uses_critic=False, needs_groups=False, whiten=True),
    AdvantageEstimator("reinforce_baseline", baseline_rewards, uses_critic=False, needs_groups=True, whiten=True),
    AdvantageEstimator("rloo", rloo_rewards, uses_critic=False, needs_groups=True, whiten=True),
    AdvantageEstimator("group_norm", group_norm_rewards, uses_critic=False, needs_groups=True, whiten=False),
    AdvantageEstimator("dr_grpo", baseline_rewards, uses_critic=False, needs_groups=True, whiten=False),
):
    ADVANTAGE_ESTIMATORS.register(_spec.name, _spec)
ADVANTAGE_ESTIMATORS.register("grpo", ADVANTAGE_ESTIMATORS.get("group_norm"))
