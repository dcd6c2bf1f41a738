"""Rollout/trainer mismatch: how far the rollout engine's token log-probs are from the
trainer's, and importance weights that correct the policy gradient for it.

The rollout engine (vLLM, vllm-ascend, or the trainer's own HF generate with other
kernels and dtypes) samples from a behaviour policy ``mu`` that is not exactly the
trainer's ``pi_old`` even with identical weights. With ``algorithm.old_logprobs=recompute``
the trainer recomputes ``log pi_old``; the per-token log-ratio
``d_t = log pi_old(y_t) - log mu(y_t)`` then measures the mismatch, and a correction
reweights (or masks) each token's policy-gradient loss by a function of ``exp(d_t)``:

==============  ==========================================================================
name            per-token weight (detached; 0 off the action mask)
==============  ==========================================================================
token_tis       ``min(exp(d_t), high)``            truncated IS (Ionides 2008; "TIS")
seq_tis         ``min(exp(sum_t d_t), high)``      one weight per sequence, on its tokens
token_mask      ``1 if low <= exp(d_t) <= high else 0``       (masked IS, "MIS")
seq_mask        ``1 if low <= exp(sum_t d_t) <= high else 0``, per sequence
icepop          ``exp(d_t) if low <= exp(d_t) <= high else 0`` (IcePop: IS, but a token
                whose ratio leaves the band is dropped instead of truncated)
==============  ==========================================================================

Several corrections multiply (e.g. ``[token_tis, seq_mask]``). Inputs are packed (T,)
tensors with ``cu_seqlens`` (B+1,) or padded (B, L) without; ``mask`` is bool, True on
action tokens. Log-ratios are clamped to +-20 before exp, as in the PPO loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmm_r1_ascend.algorithms.aggregation import broadcast_sequences, sequence_sums, token_counts
from lmm_r1_ascend.algorithms.kl import upcast
from lmm_r1_ascend.algorithms.registry import Registry
from lmm_r1_ascend.algorithms.whitening import masked_mean

MAX_LOG_RATIO = 20.0

MISMATCH_WARNING_CAUSES = (
    "Usual causes: the engine and the trainer run different attention kernels or dtypes (bf16 "
    "engine vs fp32 trainer; expected, small), the engine's log-probs are taken after a "
    "temperature / top-p / top-k the trainer does not apply, or the engine serves stale weights "
    "(weight sync not applied). The PPO ratio uses the trainer's recomputed log-probs "
    "(algorithm.old_logprobs=recompute); to also correct the gradient for the gap set "
    "algorithm.rollout_correction (token_tis, seq_tis, token_mask, seq_mask or icepop). "
    "The mismatch/* metrics track it every step."
)

Correction = Callable[..., torch.Tensor]
ROLLOUT_CORRECTIONS: Registry[Correction] = Registry("rollout correction", "rollout_correction")


def _check(log_ratio: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if log_ratio.shape != mask.shape:
        raise ValueError(f"log_ratio {tuple(log_ratio.shape)} must have the mask's shape {tuple(mask.shape)}")


def _masked(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 log-ratio, 0 off the mask, clamped to +-MAX_LOG_RATIO."""
    lr = upcast(log_ratio).detach().float()
    return torch.where(mask, lr, torch.zeros_like(lr)).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def _seq_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, cu_seqlens) -> torch.Tensor:
    """exp(sum of a sequence's action-token log-ratios), broadcast to its tokens."""
    total = sequence_sums(_masked(log_ratio, mask), mask, cu_seqlens).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return broadcast_sequences(total.exp(), mask, cu_seqlens)


def _on_mask(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, weights, torch.zeros_like(weights))


def _in_band(ratio: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return (ratio >= low) & (ratio <= high)


@ROLLOUT_CORRECTIONS.register("token_tis")
def token_tis(log_ratio, mask, cu_seqlens=None, *, low: float, high: float) -> torch.Tensor:
    _check(log_ratio, mask)
    return _on_mask(_masked(log_ratio, mask).exp().clamp(max=high), mask)


@ROLLOUT_CORRECTIONS.register("seq_tis")
def seq_tis(log_ratio, mask, cu_seqlens=None, *, low: float, high: float) -> torch.Tensor:
    _check(log_ratio, mask)
    return _on_mask(_seq_ratio(log_ratio, mask, cu_seqlens).clamp(max=high), mask)


@ROLLOUT_CORRECTIONS.register("token_mask")
def token_mask(log_ratio, mask, cu_seqlens=None, *, low: float, high: float) -> torch.Tensor:
    _check(log_ratio, mask)
    return _on_mask(_in_band(_masked(log_ratio, mask).exp(), low, high).float(), mask)


@ROLLOUT_CORRECTIONS.register("seq_mask")
def seq_mask(log_ratio, mask, cu_seqlens=None, *, low: float, high: float) -> torch.Tensor:
    _check(log_ratio, mask)
    return _on_mask(_in_band(_seq_ratio(log_ratio, mask, cu_seqlens), low, high).float(), mask)


@ROLLOUT_CORRECTIONS.register("icepop")
def icepop(log_ratio, mask, cu_seqlens=None, *, low: float, high: float) -> torch.Tensor:
    _check(log_ratio, mask)
    ratio = _masked(log_ratio, mask).exp()
    return _on_mask(torch.where(_in_band(ratio, low, high), ratio, torch.zeros_like(ratio)), mask)


@dataclass
class CorrectionOutput:
    """weights: float32, the inputs' shape, detached, 0 off the mask. weight_mean: their
    mean over action tokens. masked_frac: share of action tokens whose weight is 0."""

    weights: torch.Tensor
    weight_mean: torch.Tensor
    masked_frac: torch.Tensor

    def metrics(self, prefix: str = "rollout_correction/") -> dict[str, float]:
        return {prefix + "weight_mean": float(self.weight_mean), prefix + "masked_frac": float(self.masked_frac)}


def check_bounds(low: float, high: float) -> None:
    """The ratio band [low, high] must contain 1 (equal policies keep every token, weight 1)."""
    if not (0 <= low <= 1 <= high < float("inf")):
        raise ValueError(f"rollout_correction_bounds must be [low, high] with 0 <= low <= 1 <= high < inf, "
                         f"got [{low}, {high}]")


def correction_weights(
    names: Sequence[str],
    old_log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    mask: torch.Tensor,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
    *,
    low: float,
    high: float,
) -> CorrectionOutput:
    """The product of the named corrections' weights for ``d = old - rollout`` log-probs."""
    check_bounds(low, high)
    if not names:
        raise ValueError("correction_weights needs at least one correction name")
    log_ratio = upcast(old_log_probs).detach() - upcast(rollout_log_probs).detach()
    weights = mask.float()
    for name in names:
        weights = weights * ROLLOUT_CORRECTIONS.get(name)(log_ratio, mask, cu_seqlens, low=low, high=high)
    with torch.no_grad():
        return CorrectionOutput(weights, masked_mean(weights, mask), masked_mean((weights == 0).float(), mask))


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation; for constant inputs 1.0 when they are equal, else 0.0."""
    xc, yc = x - x.mean(), y - y.mean()
    denom = (xc.square().sum() * yc.square().sum()).sqrt()
    if not denom > 0:
        return 1.0 if torch.equal(x, y) else 0.0
    return float((xc * yc).sum() / denom)


def mismatch_metrics(
    old_log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    mask: torch.Tensor,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
) -> dict[str, float]:
    """How far the rollout engine's token probabilities are from the trainer's, over action tokens.

    mismatch/probs_diff_mean, probs_diff_max: of |p_old - p_rollout| (p = exp(log-prob)).
    mismatch/pearson: correlation of the two token probabilities.
    mismatch/kl: k3 estimate of KL(rollout || old), mean((r - 1) - log r), r = p_old / p_rollout
        (tokens are sampled from the rollout policy, so this is unbiased).
    mismatch/log_ratio_abs_max: max |log p_old - log p_rollout|.
    mismatch/seq_log_ratio_mean, seq_log_ratio_abs_max: of the per-sequence sum of log-ratios
        (the log of the sequence-level importance ratio), over sequences with an action token.
    All 0.0 when there is no action token (and pearson 1.0). Computed in float64.
    """
    names = ("probs_diff_mean", "probs_diff_max", "pearson", "kl", "log_ratio_abs_max",
             "seq_log_ratio_mean", "seq_log_ratio_abs_max")
    if old_log_probs.shape != mask.shape or rollout_log_probs.shape != mask.shape:
        raise ValueError(f"old {tuple(old_log_probs.shape)} and rollout {tuple(rollout_log_probs.shape)} "
                         f"log-probs must have the mask's shape {tuple(mask.shape)}")
    with torch.no_grad():
        # float64: k3 of ratios within 1e-6 of 1 is below float32's resolution
        old, roll = old_log_probs.double(), rollout_log_probs.double()
        if not bool(mask.any()):
            return {f"mismatch/{n}": (1.0 if n == "pearson" else 0.0) for n in names}
        p_old, p_roll = old[mask].exp(), roll[mask].exp()
        diff = (p_old - p_roll).abs()
        lr = (old - roll)[mask].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        # float64 here too (_masked would round the log-ratios to float32)
        token_lr = torch.where(mask, old - roll, torch.zeros_like(old)).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        seq = sequence_sums(token_lr, mask, cu_seqlens)[token_counts(mask, cu_seqlens) > 0]
        return {
            "mismatch/probs_diff_mean": float(diff.mean()),
            "mismatch/probs_diff_max": float(diff.max()),
            "mismatch/pearson": _pearson(p_old, p_roll),
            "mismatch/kl": float((torch.expm1(lr) - lr).mean()),
            "mismatch/log_ratio_abs_max": float(lr.abs().max()),
            "mismatch/seq_log_ratio_mean": float(seq.mean()),
            "mismatch/seq_log_ratio_abs_max": float(seq.abs().max()),
        }
