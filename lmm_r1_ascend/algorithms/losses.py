"""Policy (PPO clip, dual clip; GSPO sequence clip), value, entropy and KL losses.

All token inputs share one shape: (B, L) padded, or (T,) packed with ``cu_seqlens``;
``mask`` is bool and True on action tokens. Each loss is reduced by ``aggregate`` with a
mini-batch ``normaliser`` (see aggregation.py), so micro-batch losses add up to the
mini-batch loss. Diagnostics are detached 0-dim tensors (masked token means over the
batch given); ``metrics()`` turns them into floats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from lmm_r1_ascend.algorithms.aggregation import aggregate, broadcast_sequences, sequence_sums, token_counts
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


def _check_weights(weights: torch.Tensor | None, mask: torch.Tensor) -> None:
    if weights is not None and weights.shape != mask.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must have the mask's shape {tuple(mask.shape)}")


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


@dataclass(frozen=True)
class PolicyLossFn:
    """A registered policy loss and the parameters it owns; nothing outside this entry knows them.

    fn: the loss ``fn(log_probs, old_log_probs, advantages, mask, *, weights, agg_mode,
        normaliser, cu_seqlens, constant, **params) -> PolicyLossOutput`` (token inputs as above).
    params: the AlgorithmConfig -> fn's own keyword arguments (its clip keys), e.g. ppo's
        eps_clip_low / eps_clip_high / dual_clip from clip_low / clip_high / dual_clip.
    agg_mode: the aggregation the loss is defined with: what a call through the registry
        without ``agg_mode`` uses (a run passes its algorithm.loss_agg_mode).
    check: the AlgorithmConfig -> None, raising a one-line ValueError for a setting this loss
        rejects (gspo: dual_clip); run by AlgorithmConfig.validate.
    """

    fn: PolicyLoss
    params: Callable[[Any], Mapping[str, float | None]]
    agg_mode: str = "token-mean"
    check: Callable[[Any], None] | None = None

    def __call__(self, log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                 mask: torch.Tensor, **kwargs: Any) -> PolicyLossOutput:
        kwargs.setdefault("agg_mode", self.agg_mode)
        return self.fn(log_probs, old_log_probs, advantages, mask, **kwargs)


POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", "policy_loss")


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
    weights: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate, per token: ``max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``.

    With ``dual_clip = c > 1`` (Ye et al. 2020), tokens with ``A < 0`` are further
    bounded: ``min(that, -c A)``, so a huge ratio cannot give an unbounded loss.
    ``r = exp(log_probs - old_log_probs)``; old log-probs come from the rollout and
    carry no gradient. Log-ratios are clamped to +-20 before exp. ``weights`` (the mask's
    shape, detached; e.g. rollout-correction importance weights) multiply each token's loss.
    """
    _check_same_shape(mask, log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages)
    _check_weights(weights, mask)
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
    if weights is not None:
        token_loss = token_loss * upcast(weights).detach()
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


def gspo_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_clip_low: float = 3e-4,
    eps_clip_high: float = 4e-4,
    dual_clip: float | None = None,
    agg_mode: str = "seq-mean-token-mean",
    normaliser: float | None = None,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
    constant: float | None = None,
    weights: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): PPO clipping on a *sequence* ratio.

    ``s_i = exp(mean_t (log_probs - old_log_probs))`` over sequence i's action tokens, in its
    token form (GSPO-token) ``s_it = exp(sg(mean_lr_i) + lp_it - sg(lp_it))``: the value is
    s_i on every token and the gradient of each token is ``s_i * grad lp_it``. Per token the
    loss is ``max(-A s_it, -A clip(s_it, 1 - eps_low, 1 + eps_high))``; whole sequences are
    clipped together, so the clip range is tiny (3e-4 / 4e-4 in the paper). Packed (T,) with
    ``cu_seqlens`` or padded (B, L) rows; ``weights`` multiply the token loss. The ratio
    diagnostics are of s_i (per token).
    """
    _check_same_shape(mask, log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages)
    _check_weights(weights, mask)
    if not (0 < eps_clip_low < 1 and eps_clip_high > 0):
        raise ValueError(f"need 0 < eps_clip_low < 1 and eps_clip_high > 0, got {eps_clip_low}, {eps_clip_high}")
    if dual_clip is not None:
        raise ValueError("policy_loss 'gspo' clips sequence ratios and takes no dual_clip; set dual_clip: null")
    lp, old, adv = upcast(log_probs), upcast(old_log_probs).detach(), upcast(advantages).detach()
    token_lr = torch.where(mask, lp - old, torch.zeros_like(lp))
    counts = token_counts(mask, cu_seqlens).clamp(min=1).to(lp.dtype)
    seq_lr = (sequence_sums(token_lr.detach(), mask, cu_seqlens) / counts).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    log_s = broadcast_sequences(seq_lr, mask, cu_seqlens) + lp - lp.detach()
    ratio = torch.where(mask, log_s, torch.zeros_like(log_s)).exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_clip_low, 1.0 + eps_clip_high)
    token_loss = torch.maximum(unclipped, clipped)
    if weights is not None:
        token_loss = token_loss * upcast(weights).detach()
    loss = aggregate(token_loss, mask, agg_mode, normaliser, cu_seqlens=cu_seqlens, constant=constant)
    with torch.no_grad():
        r = ratio.detach()
        log_r = torch.where(mask, log_s.detach(), torch.zeros_like(r))
        return PolicyLossOutput(
            loss=loss,
            clip_frac=masked_mean((clipped > unclipped).to(r.dtype), mask),
            dual_clip_frac=torch.zeros((), dtype=r.dtype, device=r.device),
            approx_kl=masked_mean((r - 1) - log_r, mask),
            ratio_min=_masked_extreme(r, mask, largest=False),
            ratio_max=_masked_extreme(r, mask, largest=True),
            ratio_mean=masked_mean(r, mask),
        )


def _ppo_params(algorithm_cfg) -> dict[str, float | None]:
    return {"eps_clip_low": algorithm_cfg.clip_low, "eps_clip_high": algorithm_cfg.clip_high,
            "dual_clip": algorithm_cfg.dual_clip}


def _gspo_params(algorithm_cfg) -> dict[str, float | None]:
    return {"eps_clip_low": algorithm_cfg.gspo_clip_low, "eps_clip_high": algorithm_cfg.gspo_clip_high}


def _gspo_check(algorithm_cfg) -> None:
    if algorithm_cfg.dual_clip is not None:
        raise ValueError("policy_loss 'gspo' clips sequence ratios and takes no dual_clip; set dual_clip: null")


POLICY_LOSSES.register("ppo", PolicyLossFn(ppo_policy_loss, _ppo_params, agg_mode="token-mean"))
POLICY_LOSSES.register("gspo", PolicyLossFn(gspo_policy_loss, _gspo_params, agg_mode="seq-mean-token-mean",
                                            check=_gspo_check))


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
