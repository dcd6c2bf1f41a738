"""Ulysses sequence parallelism: all-to-all from sequence-split to head-split and back.

    out = ulysses_attention(q, k, v, shard, attention_fn=kernels.attention.fn, group=sp_group)

Each rank holds its zigzag share of the tokens (kernels.sequence_split) with all heads. One
all-to-all per tensor turns that into every token of the (padded) row with 1/sp of the heads
(query head h goes to rank h // (Hq / sp), kv head m to rank m // (Hkv / sp), which keeps GQA
groups together); the backend's varlen kernel runs on the whole row; one all-to-all brings
the output back to the sequence split. The all-to-all is an autograd Function whose backward
is the same exchange the other way, so gradients flow through it on purpose.

Heads (and kv heads) must divide by the SP size. Nothing runs at import.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist

from lmm_r1_ascend.kernels.sequence_split import SPShard


def check_heads(num_heads: int, num_kv_heads: int, sp_size: int) -> None:
    """Raise a ValueError naming the numbers when Ulysses cannot split these heads."""
    bad = [f"{name} = {n}" for name, n in (("attention heads", num_heads), ("kv heads", num_kv_heads)) if n % sp_size]
    if bad:
        raise ValueError(f"Ulysses sequence parallelism splits heads across the SP group: {' and '.join(bad)} "
                         f"not divisible by distributed.sequence_parallel_size = {sp_size}; use "
                         "distributed.sequence_parallel_mode=ring (any head count) or an SP size that divides them")


def _exchange(x: torch.Tensor, group) -> torch.Tensor:
    """all_to_all_single over dim 0 split into world equal parts."""
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # empty_like would keep a transposed layout
    dist.all_to_all_single(out, x, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    """(sp, ...) chunks: chunk i goes to rank i, and chunk i of the result came from rank i.
    The exchange is its own adjoint, so backward runs it on the gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _exchange(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad, ctx.group), None


def seq_to_heads(x: torch.Tensor, sp: int, group) -> torch.Tensor:
    """(T_l, H, D) local tokens, all heads -> (sp * T_l, H / sp, D) every rank's tokens in rank order."""
    t, h, d = x.shape
    chunks = x.reshape(t, sp, h // sp, d).transpose(0, 1)  # chunk i: heads of rank i
    return _AllToAll.apply(chunks, group).reshape(sp * t, h // sp, d)


def heads_to_seq(x: torch.Tensor, sp: int, group) -> torch.Tensor:
    """Inverse of seq_to_heads: (sp * T_l, H / sp, D) -> (T_l, H, D)."""
    n, hs, d = x.shape
    got = _AllToAll.apply(x.reshape(sp, n // sp, hs, d), group)  # chunk i: my tokens, heads of rank i
    return got.transpose(0, 1).reshape(n // sp, sp * hs, d)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shard: SPShard, *,
                      attention_fn: Callable, group=None, scale: float | None = None) -> torch.Tensor:
    """Causal varlen attention of this rank's zigzag tokens over the whole row, by head split.

    q (T_l, Hq, D), k / v (T_l, Hkv, D), T_l = shard.num_local_tokens; attention_fn: a
    kernels/attention.py varlen function; group: the SP group (size shard.sp_size).
    Returns (T_l, Hq, D) in q's dtype, differentiable w.r.t. q, k, v.
    """
    sp = shard.sp_size
    check_heads(q.shape[1], k.shape[1], sp)
    if q.shape[0] != shard.num_local_tokens:
        raise ValueError(f"q has {q.shape[0]} tokens but this rank's shard holds {shard.num_local_tokens}")
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    if world != sp:
        raise ValueError(f"the SP group has {world} ranks but the shard was split for sp={sp}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    order = shard.ulysses_order().to(q.device)  # rank-order row -> padded global position
    back = torch.argsort(order)
    qh, kh, vh = (seq_to_heads(x, sp, group).index_select(0, order) for x in (q, k, v))
    cu_host = list(shard.padded_cu_seqlens_host)
    cu = torch.tensor(cu_host, dtype=torch.int32, device=q.device)
    max_len = max(b - a for a, b in zip(cu_host, cu_host[1:]))
    out = attention_fn(qh, kh, vh, cu, max_len, scale=scale, causal=True, cu_seqlens_host=cu_host)
    return heads_to_seq(out.index_select(0, back), sp, group)
