"""From scalar rewards to advantages and returns, as the original computes them.

Order: group baseline on the scalar rewards (per estimator) -> per-token KL against the
reference -> token rewards (``-kl_coef * kl`` plus the clipped scalar on the last action
token) -> GAE with the critic's values, or discounted returns (advantages = returns) ->
advantage normalisation over all response tokens of the rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmm_r1_ascend.algorithms.advantages import discounted_returns, gae, step_token_rewards, token_rewards
from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.algorithms.kl import compute_kl
from lmm_r1_ascend.algorithms.whitening import whiten


@dataclass
class AdvantageResult:
    """All (B, L) tensors are 0 at masked positions.

    advantages: normalised as the config asks. returns: the critic's targets (never
    normalised). token_rewards: what the recursion consumed. kl: per-token KL estimate
    (zeros without reference log-probs). shaped_rewards: (B,) after the group baseline.
    mean_kl: mean over samples of each sample's mean token KL (what the adaptive KL
    controller observes), 0-dim.
    """

    advantages: torch.Tensor
    returns: torch.Tensor
    token_rewards: torch.Tensor
    kl: torch.Tensor
    shaped_rewards: torch.Tensor
    mean_kl: torch.Tensor


@torch.no_grad()
def compute_advantages(
    cfg: AlgorithmConfig,
    rewards: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    log_probs: torch.Tensor | None = None,
    ref_log_probs: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    kl_coef: float | None = None,
    step_rewards: torch.Tensor | None = None,
) -> AdvantageResult:
    """Advantages and returns for a whole rollout.

    Args:
        cfg: the algorithm config.
        rewards: (B,) float scalar rewards; samples of one prompt consecutive in
            groups of ``cfg.n_samples_per_prompt``.
        action_mask: (B, L) bool.
        log_probs, ref_log_probs: (B, L) rollout-policy and reference log-probs, for the
            KL penalty; both or neither.
        values: (B, L) critic values; required by "gae".
        kl_coef: the current KL coefficient (from the controller); default cfg.init_kl_coef.
        step_rewards: (B, L) or None: multi-turn samples' per-turn environment rewards, each at its
            turn's last sampled token (0 elsewhere; ``rewards`` is then their sum, the return).
            Estimators without a group baseline (gae, reinforce) take these, each clipped to
            reward_clip_range, in place of the scalar on the last action token, so GAE credits
            every turn's reward where it was earned; group estimators (grpo, rloo,
            reinforce_baseline, ...) baseline the return and put it on the last action token.
    """
    spec = cfg.estimator
    kl_coef = cfg.init_kl_coef if kl_coef is None else float(kl_coef)
    if (log_probs is None) != (ref_log_probs is None):
        raise ValueError("pass both log_probs and ref_log_probs to compute the KL, or neither")
    if log_probs is None and kl_coef > 0:
        raise ValueError(
            f"a KL penalty (kl_coef={kl_coef}) needs log_probs and ref_log_probs; "
            "set init_kl_coef=0 to train without a reference model"
        )
    if spec.uses_critic and values is None:
        raise ValueError(f"advantage_estimator {spec.name!r} needs critic values (B, L)")
    if not spec.uses_critic and values is not None:
        raise ValueError(f"advantage_estimator {spec.name!r} does not use critic values; do not pass them")

    shaped = rewards if spec.shape_rewards is None else spec.shape_rewards(rewards, cfg.n_samples_per_prompt)
    if log_probs is not None:
        kl = compute_kl(log_probs, ref_log_probs, cfg.kl_estimator, mask=action_mask, clamp=cfg.kl_clamp)
    else:
        kl = torch.zeros(action_mask.shape, dtype=rewards.dtype, device=rewards.device)
    if step_rewards is not None and spec.shape_rewards is None:
        tok = step_token_rewards(step_rewards, action_mask, kl=kl, kl_coef=kl_coef,
                                 reward_clip_range=cfg.reward_clip_range)
    else:
        tok = token_rewards(
            shaped, action_mask, kl=kl, kl_coef=kl_coef, reward_clip_range=cfg.reward_clip_range
        )
    if spec.uses_critic:
        advantages, returns = gae(tok, values, action_mask, cfg.gamma, cfg.lambd)
    else:
        returns = discounted_returns(tok, action_mask, cfg.gamma)
        advantages = returns
    mode = cfg.resolved_normalization
    if mode != "none":
        advantages = whiten(advantages, action_mask, center_only=(mode == "center"), eps=cfg.whiten_eps)
    counts = action_mask.sum(-1)
    per_sample = kl.sum(-1) / counts.clamp(min=1)
    mean_kl = per_sample.mean() if per_sample.numel() else per_sample.sum()
    return AdvantageResult(advantages, returns, tok, kl, shaped, mean_kl)
