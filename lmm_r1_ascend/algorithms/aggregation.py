"""Loss aggregation modes whose micro-batch sums add up to the mini-batch loss.

A token loss matrix is reduced in two steps. First per sequence: ``s_i = sum_t l_it``
and ``c_i = number of action tokens`` of sample ``i``. Then a mode sums a per-sequence
term and divides by a *normaliser of the whole mini-batch*:

==========================  =====================  ===================================
mode                        numerator              normaliser (whole mini-batch)
==========================  =====================  ===================================
token-mean                  sum_i s_i              N_tok = total action tokens
seq-mean-token-mean         sum_i s_i / c_i        N_seq = sequences with c_i > 0
seq-mean-token-sum          sum_i s_i              N_seq
seq-mean-token-sum-norm     sum_i s_i              N_seq * C  (Dr. GRPO; C a constant,
                                                   usually the generation max length)
==========================  =====================  ===================================

Because the numerator is a plain sum over sequences, computing it per micro-batch with
the mini-batch normaliser and adding the micro-batch losses (gradient accumulation)
gives exactly the whole mini-batch loss and gradient, however the tokens were split.

Data parallel: with gradients *averaged* over W ranks, pass ``global_normaliser / W``.
Layouts: padded ``(B, L)`` loss and mask, or packed ``(T,)`` with ``cu_seqlens`` (B+1,).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmm_r1_ascend.algorithms.registry import Registry


@dataclass(frozen=True)
class AggMode:
    """One aggregation mode: per-sequence term and mini-batch normaliser."""

    name: str
    per_sequence: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (s, c) -> (B,)
    normaliser: Callable[[int, int, float | None], float]  # (n_tok, n_seq, C) -> float


def _token_sum(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return s


def _token_mean(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.where(c > 0, s / c.clamp(min=1).to(s.dtype), torch.zeros_like(s))


def _needs_constant(n_tok: int, n_seq: int, constant: float | None) -> float:
    if constant is None or not constant > 0:
        raise ValueError(
            "loss_agg_mode 'seq-mean-token-sum-norm' (Dr. GRPO) divides by a positive constant "
            f"(loss_agg_constant, usually generate_max_len); got {constant!r}"
        )
    return n_seq * float(constant)


AGG_MODES: Registry[AggMode] = Registry("loss aggregation mode", "loss_agg_mode")
for _mode in (
    AggMode("token-mean", _token_sum, lambda n_tok, n_seq, c: float(n_tok)),
    AggMode("seq-mean-token-mean", _token_mean, lambda n_tok, n_seq, c: float(n_seq)),
    AggMode("seq-mean-token-sum", _token_sum, lambda n_tok, n_seq, c: float(n_seq)),
    AggMode("seq-mean-token-sum-norm", _token_sum, _needs_constant),
):
    AGG_MODES.register(_mode.name, _mode)


def token_counts(mask: torch.Tensor, cu_seqlens: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """Action tokens per sequence: (B,) int64 from a (B, L) mask or a packed (T,) mask."""
    return sequence_sums(mask.to(torch.int64), mask, cu_seqlens)


def sequence_sums(
    x: torch.Tensor, mask: torch.Tensor, cu_seqlens: torch.Tensor | Sequence[int] | None = None
) -> torch.Tensor:
    """Masked per-sequence sums: (B, L) -> (B,), or packed (T,) + cu_seqlens (B+1,) -> (B,).

    ``cu_seqlens`` may be a tensor or a host list (a list avoids a device->host copy).
    """
    if x.shape != mask.shape:
        raise ValueError(f"loss {tuple(x.shape)} and mask {tuple(mask.shape)} must have one shape")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    masked = torch.where(mask, x, torch.zeros_like(x))
    if cu_seqlens is None:
        if x.dim() != 2:
            raise ValueError(
                f"padded layout needs (B, L) tensors, got {tuple(x.shape)}; pass cu_seqlens for packed (T,)"
            )
        return masked.sum(-1)
    if x.dim() != 1:
        raise ValueError(f"packed layout needs (T,) tensors, got {tuple(x.shape)}")
    cu = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else [int(v) for v in cu_seqlens]
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != x.shape[0] or any(n < 0 for n in lengths):
        raise ValueError(
            f"cu_seqlens must hold B+1 offsets, start at 0, be non-decreasing and end at T={x.shape[0]}; got {cu}"
        )
    seg = torch.repeat_interleave(
        torch.arange(len(lengths), device=x.device),
        torch.tensor(lengths, device=x.device),
        output_size=x.shape[0],
    )
    return torch.zeros(len(lengths), dtype=x.dtype, device=x.device).index_add(0, seg, masked)


def loss_normaliser(mode: str, counts: Sequence[int] | torch.Tensor, constant: float | None = None) -> float:
    """The mini-batch normaliser of ``mode`` from per-sequence action-token ``counts`` (B,).

    Compute it once over the whole mini-batch and pass it to every micro-batch. Never 0:
    a mini-batch without any action token gets 1 (its losses are all 0 anyway).
    """
    spec = AGG_MODES.get(mode)
    c = torch.as_tensor(counts).reshape(-1)
    n_tok, n_seq = int(c.sum()), int((c > 0).sum())
    value = spec.normaliser(n_tok, n_seq, constant)
    return value if value > 0 else 1.0


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    normaliser: float | None = None,
    *,
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
    constant: float | None = None,
) -> torch.Tensor:
    """Reduce a token loss to a scalar per ``mode`` (see the module docstring).

    Args:
        loss: (B, L) padded or (T,) packed token losses.
        mask: bool, loss's shape; False tokens never count.
        mode: an aggregation mode name.
        normaliser: the mini-batch normaliser from ``loss_normaliser``; None means
            this batch *is* the mini-batch (computed here, with ``constant``).
        cu_seqlens: (B+1,) offsets for the packed layout.
    Returns: 0-dim tensor, differentiable in ``loss``.
    """
    spec = AGG_MODES.get(mode)
    s = sequence_sums(loss, mask, cu_seqlens)
    c = token_counts(mask, cu_seqlens)
    if normaliser is None:
        normaliser = loss_normaliser(mode, c, constant)
    elif not normaliser > 0:
        raise ValueError(f"the loss normaliser must be > 0, got {normaliser}")
    return spec.per_sequence(s, c).sum() / normaliser


def broadcast_sequences(
    values: torch.Tensor, mask: torch.Tensor, cu_seqlens: torch.Tensor | Sequence[int] | None = None
) -> torch.Tensor:
    """Spread one value per sequence (B,) over its tokens: the inverse of ``sequence_sums``.

    Returns a tensor of ``mask``'s shape ((B, L) padded, or (T,) packed with ``cu_seqlens``)
    holding ``values[i]`` on every token of sequence i (masked-out tokens included).
    """
    if cu_seqlens is None:
        if mask.dim() != 2 or values.shape != mask.shape[:1]:
            raise ValueError(f"padded layout needs (B,) values for a (B, L) mask, got {tuple(values.shape)} "
                             f"and {tuple(mask.shape)}")
        return values[:, None].expand(mask.shape)
    cu = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else [int(v) for v in cu_seqlens]
    lengths = torch.tensor([b - a for a, b in zip(cu[:-1], cu[1:])], device=values.device)
    if values.shape != lengths.shape or mask.dim() != 1 or cu[-1] != mask.shape[0]:
        raise ValueError(f"packed layout needs (B,) values, a (T,) mask and B+1 offsets ending at T; got "
                         f"{tuple(values.shape)}, {tuple(mask.shape)}, {cu}")
    return torch.repeat_interleave(values, lengths, output_size=mask.shape[0])
