"""Masked statistics and advantage whitening over all response tokens of a rollout."""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is True (0-dim). ``x`` and ``mask`` have one shape."""
    return torch.where(mask, x, torch.zeros_like(x)).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over True positions of ``mask`` (0-dim); 0 when nothing is selected."""
    count = mask.sum()
    return masked_sum(x, mask) / count.clamp(min=1)


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    center_only: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Normalise ``x`` over its masked entries: ``(x - mean) / sqrt(max(var, eps))``.

    Statistics are taken over every True position of ``mask`` at once (all response
    tokens of all samples), with the population variance. With ``center_only=True`` the
    output is only centred: ``x - mean`` (no division). Masked positions are 0 in the
    output.

    Args:
        x: float tensor, e.g. advantages (B, L) padded or (T,) packed.
        mask: bool tensor of x's shape.
    Returns:
        Tensor of x's shape and dtype.
    """
    if x.shape != mask.shape:
        raise ValueError(f"whiten: x {tuple(x.shape)} and mask {tuple(mask.shape)} must have one shape")
    if mask.dtype != torch.bool:
        raise TypeError(f"whiten: mask must be a bool tensor, got {mask.dtype}")
    mean = masked_mean(x, mask)
    centred = x - mean
    if not center_only:
        var = masked_mean(centred.square(), mask)
        out = centred * var.clamp(min=eps).rsqrt()
    else:
        out = centred
    return torch.where(mask, out, torch.zeros_like(out))
