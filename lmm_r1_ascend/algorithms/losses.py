"""Policy (PPO clip, dual clip), value, entropy and KL losses.

All token inputs share one shape: (B, L) padded, or (T,) packed with ``cu_seqlens``;
``mask`` is bool and True on action tokens. Each loss is reduced by ``aggregate`` with a
mini-batch ``normaliser`` (see aggregation.py), so micro-batch losses add up to the
mini-batch loss. Diagnostics are detached 0-dim tensors (masked token means over the
batch given); ``metrics()`` turns them into floats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from lmm_r1_ascend.algorithms.aggregation import aggregate
from lmm_r1_ascend.algorithms.kl import compute_kl, upcast
from lmm_r1_ascend.algorithms.registry import Registry
from lmm_r1_ascend.algorithms.whitening import masked_mean

# exp() of a log-ratio beyond this is meaningless and would overflow in fp32.
MAX_LOG_RATIO = 20.0


def _check_same_shape(mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(f"{name} {tuple(t.shape)} must have the mask's shape {tuple(mask.shape)}")


def _masked_extreme(x: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    """Masked max/min as a 0-dim tensor, NaN when nothing is selected (no host sync)."""
    if x.numel() == 0:
        return torch.full((), float("nan"), dtype=x.dtype, device=x.device)
    fill = float("-inf") if largest else float("inf")
    filled = torch.where(mask, x, torch.full_like(x, fill))
    value = filled.max() if largest else filled.min()
    return torch.where(mask.any(), value, torch.full_like(value, float("nan")))


@dataclass
class PolicyLossOutput:
    """``loss`` is differentiable; the rest are detached diagnostics over action tokens.

    clip_frac: share of tokens where the clipped surrogate was the active (larger) loss.
    dual_clip_frac: share of tokens where the dual-clip bound was active (0 without it).
    approx_kl: k3 estimate of KL(old || new), ``mean((r - 1) - log r)``.
    ratio_min / ratio_max / ratio_mean: of ``r = exp(log_probs - old_log_probs)``
    (min/max are NaN when there is no action token).
    """

    loss: torch.Tensor
    clip_frac: torch.Tensor
    dual_clip_frac: torch.Tensor
    approx_kl: torch.Tensor
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor
    ratio_mean: torch.Tensor

    def metrics(self, prefix: str = "policy/") -> dict[str, float]:
        return {prefix + f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


PolicyLoss = Callable[..., PolicyLossOutput]
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss", "policy_loss")


@POLICY_LOSSES.register("ppo")
def ppo_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_clip_low: float = 0.2,
    eps_clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg_mode: str = "token-mean",
    normaliser: float | None = None,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
    constant: float | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate, per token: ``max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``.

    With ``dual_clip = c > 1`` (Ye et al. 2020), tokens with ``A < 0`` are further
    bounded: ``min(that, -c A)``, so a huge ratio cannot give an unbounded loss.
    ``r = exp(log_probs - old_log_probs)``; old log-probs come from the rollout and
    carry no gradient. Log-ratios are clamped to +-20 before exp.
    """
    _check_same_shape(mask, log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages)
    if not (0 < eps_clip_low < 1 and eps_clip_high > 0):
        raise ValueError(f"need 0 < eps_clip_low < 1 and eps_clip_high > 0, got {eps_clip_low}, {eps_clip_high}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (or None to disable), got {dual_clip}")
    lp, old, adv = upcast(log_probs), upcast(old_log_probs).detach(), upcast(advantages).detach()
    log_ratio = torch.where(mask, lp - old, torch.zeros_like(lp)).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_clip_low, 1.0 + eps_clip_high)
    token_loss = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    dual_active = torch.zeros_like(mask)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (bound < token_loss)
        token_loss = torch.where(dual_active, bound, token_loss)
    loss = aggregate(token_loss, mask, agg_mode, normaliser, cu_seqlens=cu_seqlens, constant=constant)
    with torch.no_grad():
        r = ratio.detach()
        return PolicyLossOutput(
            loss=loss,
            clip_frac=masked_mean(clip_active.to(r.dtype), mask),
            dual_clip_frac=masked_mean(dual_active.to(r.dtype), mask),
            approx_kl=masked_mean((r - 1) - log_ratio.detach(), mask),
            ratio_min=_masked_extreme(r, mask, largest=False),
            ratio_max=_masked_extreme(r, mask, largest=True),
            ratio_mean=masked_mean(r, mask),
        )


@dataclass
class ValueLossOutput:
    """``loss`` differentiable; ``clip_frac`` share of tokens where the clipped error won;
    ``values_mean`` masked mean of the new values (detached)."""

    loss: torch.Tensor
    clip_frac: torch.Tensor
    values_mean: torch.Tensor

    def metrics(self, prefix: str = "critic/") -> dict[str, float]:
        return {prefix + f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    value_clip: float | None = 0.2,
    agg_mode: str = "token-mean",
    normaliser: float | None = None,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
    constant: float | None = None,
) -> ValueLossOutput:
    """Clipped value loss: ``0.5 * agg(max((V_old + clip(V - V_old, +-c) - R)^2, (V - R)^2))``.

    Without ``value_clip`` (None) it is ``0.5 * agg((V - R)^2)``. ``old_values`` are the
    rollout's values and ``returns`` the targets; neither carries gradient.
    """
    _check_same_shape(mask, values=values, old_values=old_values, returns=returns)
    if value_clip is not None and not value_clip > 0:
        raise ValueError(f"value_clip must be > 0 (or None to disable), got {value_clip}")
    v, v_old, ret = upcast(values), upcast(old_values).detach(), upcast(returns).detach()
    err = (v - ret).square()
    clip_active = torch.zeros_like(mask)
    if value_clip is not None:
        v_clipped = v_old + (v - v_old).clamp(-value_clip, value_clip)
        err_clipped = (v_clipped - ret).square()
        clip_active = err_clipped > err
        err = torch.maximum(err, err_clipped)
    loss = 0.5 * aggregate(err, mask, agg_mode, normaliser, cu_seqlens=cu_seqlens, constant=constant)
    with torch.no_grad():
        return ValueLossOutput(
            loss=loss,
            clip_frac=masked_mean(clip_active.to(v.dtype), mask),
            values_mean=masked_mean(v.detach(), mask),
        )


def entropy_term(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    agg_mode: str = "token-mean",
    normaliser: float | None = None,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
    constant: float | None = None,
) -> torch.Tensor:
    """Aggregated token entropy (a bonus: the actor loss *subtracts* coef * this)."""
    _check_same_shape(mask, entropy=entropy)
    return aggregate(upcast(entropy), mask, agg_mode, normaliser, cu_seqlens=cu_seqlens, constant=constant)


def kl_loss(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str = "k3",
    clamp: float | None = None,
    agg_mode: str = "token-mean",
    normaliser: float | None = None,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
    constant: float | None = None,
) -> torch.Tensor:
    """Aggregated KL(pi || pi_ref) estimate, for ``use_kl_loss`` (the GRPO-style term)."""
    _check_same_shape(mask, log_probs=log_probs, ref_log_probs=ref_log_probs)
    kl = compute_kl(log_probs, ref_log_probs.detach(), estimator, mask=mask, clamp=clamp)
    return aggregate(kl, mask, agg_mode, normaliser, cu_seqlens=cu_seqlens, constant=constant)
