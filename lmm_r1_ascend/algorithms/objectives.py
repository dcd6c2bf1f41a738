"""Config-driven actor and critic losses for one micro-batch.

Token inputs: (B, L) padded or (T,) packed with ``cu_seqlens``; ``mask`` bool.
``normaliser`` is the *mini-batch* normaliser of ``cfg.loss_agg_mode`` (see
aggregation.loss_normaliser); None treats this batch as the whole mini-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.algorithms.losses import (
    POLICY_LOSSES,
    PolicyLossOutput,
    ValueLossOutput,
    entropy_term,
    kl_loss,
    value_loss,
)


@dataclass
class ActorLossOutput:
    """loss = policy + kl_loss_coef * kl - entropy_loss_coef * entropy (differentiable).
    forward_log_probs: set by the actor worker on an on-policy update: the detached log-probs
    of this forward (the old log-probs), packed like the inputs."""

    loss: torch.Tensor
    policy: PolicyLossOutput
    kl: torch.Tensor | None
    entropy: torch.Tensor | None
    forward_log_probs: torch.Tensor | None = None

    def metrics(self) -> dict[str, float]:
        out = {"loss/actor": float(self.loss.detach()), "loss/policy": float(self.policy.loss.detach())}
        out.update(self.policy.metrics())
        if self.kl is not None:
            out["loss/kl"] = float(self.kl.detach())
        if self.entropy is not None:
            out["policy/entropy"] = float(self.entropy.detach())
        return out


def actor_loss(
    cfg: AlgorithmConfig,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    normaliser: float | None = None,
    ref_log_probs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
    correction_weights: torch.Tensor | None = None,
) -> ActorLossOutput:
    """The actor's loss on one micro-batch, with every term aggregated the same way.

    ``ref_log_probs`` is required when ``cfg.use_kl_loss``. ``entropy`` (token
    entropies) is required when ``cfg.entropy_loss_coef != 0`` and reported otherwise.
    ``correction_weights`` (mask's shape, from ``cfg.rollout_correction``) weight the
    policy-gradient term's tokens only; KL and entropy terms are not reweighted.
    """
    agg = dict(agg_mode=cfg.loss_agg_mode, normaliser=normaliser, cu_seqlens=cu_seqlens, constant=cfg.loss_agg_constant)
    policy_fn = POLICY_LOSSES.get(cfg.policy_loss)
    policy = policy_fn(log_probs, old_log_probs, advantages, mask, weights=correction_weights,
                       **policy_fn.params(cfg), **agg)
    loss = policy.loss
    kl = None
    if cfg.use_kl_loss:
        if ref_log_probs is None:
            raise ValueError("use_kl_loss is set but no ref_log_probs were given (is the reference model loaded?)")
        kl = kl_loss(log_probs, ref_log_probs, mask, estimator=cfg.kl_loss_estimator, clamp=cfg.kl_clamp, **agg)
        loss = loss + cfg.kl_loss_coef * kl
    ent = None
    if entropy is not None:
        ent = entropy_term(entropy, mask, **agg)
        if cfg.entropy_loss_coef != 0:
            loss = loss - cfg.entropy_loss_coef * ent
    elif cfg.entropy_loss_coef != 0:
        raise ValueError(f"entropy_loss_coef={cfg.entropy_loss_coef} needs the token entropies; pass entropy=")
    return ActorLossOutput(loss=loss, policy=policy, kl=kl, entropy=ent)


def critic_loss(
    cfg: AlgorithmConfig,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    normaliser: float | None = None,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
) -> ValueLossOutput:
    """The critic's clipped value loss on one micro-batch (``cfg.value_clip``)."""
    return value_loss(
        values, old_values, returns, mask,
        value_clip=cfg.value_clip, agg_mode=cfg.loss_agg_mode, normaliser=normaliser,
        cu_seqlens=cu_seqlens, constant=cfg.loss_agg_constant,
    )
