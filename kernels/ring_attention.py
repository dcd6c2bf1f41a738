"""Ring attention over a sequence-parallel group, on the backend's own varlen kernel.

    out = ring_attention(q, k, v, shard, attention_fn=kernels.attention.fn, group=sp_group)

q (T_l, Hq, D), k / v (T_l, Hkv, D): this rank's tokens in the zigzag layout of
kernels.sequence_split (``shard``). Causal and varlen: a query sees keys of its own sequence
at or before it, exactly as single-device varlen attention over the whole (padded) row.

Forward. The k/v blocks travel around the ring (rank r sends to r + 1, receives from r - 1,
one batch_isend_irecv per step, posted before the step's compute so transfer and compute
overlap). At step t rank r holds the block of rank j = r - t. With chunks a = r, b = 2sp-1-r
of each local sequence and the received chunks j, 2sp-1-j, only these chunk pairs are not
fully masked:
  j == r: the local row, causal (chunk a on itself, b on a and itself);
  j <  r: both local chunks on chunk j, unmasked;
  j >  r: chunk b on both received chunks, unmasked.
Every other pair is skipped. Each step after the first costs every rank 2 c^2 per sequence
(the zigzag balance). All pairs are equal-length blocks, so the inner call is the backend's
varlen kernel as is (one cu_seqlens, ``causal`` True or False, ``return_lse``). Partial
outputs merge with the log-sum-exp in float32.

Backward (recompute, not autograd through the communication): k/v go around the ring again
with their float32 gradient accumulators; per block the kernel is re-run under autograd and
given the gradient w * dO (w = exp(lse_block - lse), the block's softmax share). The kernels
return lse without a gradient, so the block's own backward uses D = dO . O_block where the
full softmax needs dO . O; the missing term is rebuilt with one more call of the same kernel
on values = keys (see ``_block_backward``). After the last step the accumulators reach their
owners. Everything runs on whatever the kernel runs on; nothing happens at import.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmm_r1_ascend.kernels.sequence_split import SPShard


@dataclass(frozen=True)
class _Call:
    """One kernel call of a ring step: q rows q_idx against k/v rows k_idx, pieces cu_host."""

    q_idx: torch.Tensor | None  # None = every local row in order
    k_idx: torch.Tensor | None
    cu_host: tuple[int, ...]
    causal: bool
    groups: tuple[tuple[int, int], ...]  # output row ranges whose q rows are distinct

    def max_len(self) -> int:
        return max(b - a for a, b in zip(self.cu_host, self.cu_host[1:]))


def _halves(shard: SPShard) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    first, second = [], []
    for start, c in zip(shard.local_cu_seqlens_host, shard.chunks):
        first.append(torch.arange(start, start + c))
        second.append(torch.arange(start + c, start + 2 * c))
    return torch.cat(first), torch.cat(second), list(shard.chunks)


def _cum(sizes: list[int]) -> tuple[int, ...]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return tuple(out)


def plan_step(shard: SPShard, source: int) -> _Call:
    """The kernel call of rank shard.rank against the k/v block of rank ``source``."""
    r = shard.rank
    if source == r:
        n = shard.num_local_tokens
        return _Call(None, None, shard.local_cu_seqlens_host, True, ((0, n),))
    first, second, chunks = _halves(shard)
    n = first.numel()
    if source < r:  # both local chunks see received chunk `source` whole
        return _Call(torch.cat([first, second]), torch.cat([first, first]), _cum(chunks + chunks), False,
                     ((0, 2 * n),))
    # source > r: local chunk b sees both received chunks whole
    return _Call(torch.cat([second, second]), torch.cat([first, second]), _cum(chunks + chunks), False,
                 ((0, n), (n, 2 * n)))


def _take(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return x if idx is None else x.index_select(0, idx)


def _run(attention_fn, call: _Call, q, k, v, scale, return_lse=True):
    cu = torch.tensor(call.cu_host, dtype=torch.int32, device=q.device)
    return attention_fn(q, k, v, cu, call.max_len(), scale=scale, causal=call.causal, return_lse=return_lse,
                        cu_seqlens_host=list(call.cu_host))


def _ring_peers(group) -> tuple[int, int]:
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    if group is not None:
        nxt, prv = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prv)
    return nxt, prv


def _start_shift(send: torch.Tensor, group) -> tuple[torch.Tensor, list]:
    """Post send-to-next / receive-from-previous of ``send``; returns (buffer, requests)."""
    nxt, prv = _ring_peers(group)
    recv = torch.empty(send.shape, dtype=send.dtype, device=send.device)
    ops = [dist.P2POp(dist.isend, send, nxt, group), dist.P2POp(dist.irecv, recv, prv, group)]
    return recv, dist.batch_isend_irecv(ops)


def _wait(reqs) -> None:
    for req in reqs:
        req.wait()


def _indices_to(device, call: _Call) -> _Call:
    if call.q_idx is None or call.q_idx.device == device:
        return call
    return _Call(call.q_idx.to(device), call.k_idx.to(device), call.cu_host, call.causal, call.groups)


def _merge(out, lse, o_p, lse_p, q_idx, groups) -> None:
    """Fold partial results (o_p, lse_p) of rows q_idx into the running (out, lse), in place."""
    for a, b in groups:
        idx = torch.arange(q_idx.numel(), device=out.device)[a:b] if q_idx is None else q_idx[a:b]
        l_old, l_new_p = lse.index_select(0, idx), lse_p[a:b]
        l_new = torch.logaddexp(l_old, l_new_p)
        o = out.index_select(0, idx) * torch.exp(l_old - l_new)[..., None] \
            + o_p[a:b].float() * torch.exp(l_new_p - l_new)[..., None]
        out.index_copy_(0, idx, o)
        lse.index_copy_(0, idx, l_new)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, shard: SPShard, attention_fn: Callable, group, scale: float):
        sp = shard.sp_size
        kv = torch.stack([k, v]).contiguous()
        out = lse = None
        for step in range(sp):
            if step + 1 < sp:
                nxt_kv, reqs = _start_shift(kv, group)
            source = (shard.rank - step) % sp
            call = _indices_to(q.device, plan_step(shard, source))
            o_p, lse_p = _run(attention_fn, call, _take(q, call.q_idx), _take(kv[0], call.k_idx),
                              _take(kv[1], call.k_idx), scale)
            if out is None:  # step 0: every local row, causal on itself
                out, lse = o_p.float().clone(), lse_p.float().clone()
            else:
                _merge(out, lse, o_p, lse_p.float(), call.q_idx, call.groups)
            if step + 1 < sp:
                _wait(reqs)
                kv = nxt_kv
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.shard, ctx.attention_fn, ctx.group, ctx.scale = shard, attention_fn, group, scale
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        shard, fn, group, scale = ctx.shard, ctx.attention_fn, ctx.group, ctx.scale
        sp = shard.sp_size
        d_out = d_out.float()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        kv = torch.stack([k, v]).contiguous()
        dkv = torch.zeros(kv.shape, dtype=torch.float32, device=q.device)
        for step in range(sp):
            if step + 1 < sp:
                nxt_kv, kv_reqs = _start_shift(kv, group)
            source = (shard.rank - step) % sp
            call = _indices_to(q.device, plan_step(shard, source))
            dq_p, dk_p, dv_p = _block_backward(fn, call, q, kv[0], kv[1], out, lse, d_out, scale)
            if call.q_idx is None:
                dq += dq_p
                dkv[0] += dk_p
                dkv[1] += dv_p
            else:
                dq.index_add_(0, call.q_idx, dq_p)
                dkv[0].index_add_(0, call.k_idx, dk_p)
                dkv[1].index_add_(0, call.k_idx, dv_p)
            # The accumulators follow their block: after the last step they reach its owner.
            dkv, dkv_reqs = _start_shift(dkv, group) if sp > 1 else (dkv, [])
            _wait(dkv_reqs)
            if step + 1 < sp:
                _wait(kv_reqs)
                kv = nxt_kv
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None


def _block_backward(fn, call: _Call, q, k, v, out, lse, d_out, scale):
    """Gradients of one block's share of the merged attention w.r.t. its q, k, v rows.

    With P = exp(S - lse) the full softmax and w = exp(lse_blk - lse) per query, the block's
    autograd given g = w dO yields dV = P^T dO (right) and dS = P (dO.V - dO.O_blk), where
    the full gradient is dS = P (dO.V - dO.O). The difference P * e, e = dO.(O_blk - O) per
    query, gives dq += scale * e * w * (P_blk K) and dk += P_blk^T (scale * w * e * q): the
    output and the value gradient of the same kernel run on (q, k, values = k).
    """
    qi, ki, vi = (_take(x, idx).detach() for x, idx in ((q, call.q_idx), (k, call.k_idx), (v, call.k_idx)))
    with torch.enable_grad():
        qi.requires_grad_(True)
        ki.requires_grad_(True)
        vi.requires_grad_(True)
        o_blk, lse_blk = _run(fn, call, qi, ki, vi, scale)
        o_full = _take(out, call.q_idx)
        w = torch.exp(lse_blk.float() - _take(lse, call.q_idx))  # (n, Hq)
        do = _take(d_out, call.q_idx)
        e = (do * (o_blk.detach().float() - o_full)).sum(-1)  # (n, Hq)
        dq, dk, dv = torch.autograd.grad(o_blk, (qi, ki, vi), (w[..., None] * do).to(o_blk.dtype))
        k_as_v = ki.detach().clone().requires_grad_(True)
        pk = _run(fn, call, qi.detach(), ki.detach(), k_as_v, scale, return_lse=False)
        g = (scale * (w * e)[..., None] * qi.detach().float()).to(pk.dtype)
        (dk_corr,) = torch.autograd.grad(pk, (k_as_v,), g)
    dq = dq.float() + scale * (w * e)[..., None] * pk.detach().float()
    return dq, dk.float() + dk_corr.float(), dv.float()


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shard: SPShard, *, attention_fn: Callable,
                   group=None, scale: float | None = None) -> torch.Tensor:
    """Causal varlen attention of this rank's zigzag tokens over the whole row (see module doc).

    q (T_l, Hq, D), k / v (T_l, Hkv, D) with T_l = shard.num_local_tokens; attention_fn: a
    kernels/attention.py varlen function (it must support causal=False and return_lse).
    group: the SP process group (None: the default group), of size shard.sp_size.
    Returns (T_l, Hq, D) in q's dtype, differentiable w.r.t. q, k, v.
    """
    if q.dim() != 3 or k.shape != v.shape or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"ring_attention needs q (T, Hq, D), k/v (T, Hkv, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != shard.num_local_tokens:
        raise ValueError(f"q has {q.shape[0]} tokens but this rank's shard holds {shard.num_local_tokens}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    if world != shard.sp_size:
        raise ValueError(f"the SP group has {world} ranks but the shard was split for sp={shard.sp_size}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _RingAttention.apply(q, k, v, shard, attention_fn, group, scale)
