"""Packed (varlen) attention: one contract, several implementations.

Every ``varlen_attention_*`` function takes
    q (T, Hq, D), k / v (T, Hkv, D) with Hq % Hkv == 0 (GQA: query head h uses kv head
    h // (Hq // Hkv)); cu_seqlens int32 (B+1,) on q's device, leading 0, strictly
    increasing, last = T (every sequence has at least one token); max_seqlen: int >= the
    longest sequence; keyword-only scale (default 1/sqrt(D)), causal (default True),
    return_lse, cu_seqlens_host (optional host list equal to cu_seqlens: lets the NPU path
    and the validation avoid a device-to-host sync).
and returns out (T, Hq, D) in q's dtype, or (out, lse) with return_lse=True, where
lse (T, Hq) float32 is the natural log-sum-exp of the scaled scores over the keys each
query may see (what ring attention needs to merge partial results). lse is a forward-only
quantity: every implementation returns it detached (flash kernels give it no gradient,
so neither does the reference, to keep CPU tests honest about that).

Sequences never see each other: token i of a sequence attends keys of the same sequence
only (and, when causal, only keys at positions <= i).

Implementations: here the portable ones, reference (per-sequence SDPA, any device,
differentiable) and batched (sequences bucketed by length, one masked SDPA per bucket: the
CPU default); in kernels/attention_cuda.py flash_attn (flash_attn_varlen_func) and
torch_varlen (torch.nn.attention.varlen.varlen_attn); in kernels/attention_npu.py npu_fusion
(``ops.npu_fusion_attention`` in TND layout; ``ops`` is torch_npu or
lmm_r1_ascend.kernels.npu_emulation). They share validate_inputs and softmax_scale from
here. Nothing here runs at import time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def validate_inputs(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host: bool) -> list[int] | None:
    """Check the contract; return the host boundaries [0, e1, ..., T] if known or needed."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"{name} must be a (tokens, heads, head_dim) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} must share tokens and head_dim")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]} (GQA)")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens must be a 1-D tensor [0, end_1, ..., T] with at least 2 entries")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"cu_seqlens must be int32 (flash-attn convention), got {cu_seqlens.dtype}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}; move it to q's device "
                         "(and pass cu_seqlens_host for the host copy)")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 1:
        raise TypeError(f"max_seqlen must be a positive Python int, got {max_seqlen!r}")
    if cu_seqlens_host is not None:
        bounds = [int(x) for x in cu_seqlens_host]
        if len(bounds) != cu_seqlens.numel():
            raise ValueError(f"cu_seqlens_host has {len(bounds)} entries but cu_seqlens has {cu_seqlens.numel()}")
    elif need_host or cu_seqlens.device.type == "cpu":
        bounds = cu_seqlens.tolist()  # a device-to-host sync when cu_seqlens lives on an accelerator
    else:
        return None  # values unchecked: checking them would cost a device sync per call
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start with 0 (flash-attn convention), got {bounds[:3]}...")
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must be strictly increasing (every sequence non-empty), got {bounds}")
    if bounds[-1] != q.shape[0]:
        raise ValueError(f"cu_seqlens ends at {bounds[-1]} but q holds {q.shape[0]} tokens")
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    if max_seqlen < longest:
        raise ValueError(f"max_seqlen={max_seqlen} is smaller than the longest sequence ({longest})")
    return bounds


def softmax_scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def varlen_attention_reference(q, k, v, cu_seqlens, max_seqlen, *, scale=None, causal=True, return_lse=False,
                               cu_seqlens_host=None):
    """Per-sequence SDPA: correct and differentiable on every device (a Python loop over sequences)."""
    bounds = validate_inputs(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=True)
    scale = softmax_scale(q, scale)
    gqa = q.shape[1] != k.shape[1]
    outs, lses = [], []
    for s, e in zip(bounds, bounds[1:]):
        qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))  # (heads, L, D)
        # 4-D (1, heads, L, D): the fused CPU SDPA kernel only takes batched inputs (3-D falls back to math).
        out = F.scaled_dot_product_attention(qs[None], ks[None], vs[None], is_causal=causal, scale=scale,
                                             enable_gqa=gqa)[0]
        outs.append(out.transpose(0, 1))
        if return_lse:
            with torch.no_grad():
                kf = ks.float().repeat_interleave(q.shape[1] // k.shape[1], dim=0)
                scores = torch.matmul(qs.float(), kf.transpose(-1, -2)) * scale
                if causal:
                    scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
                lses.append(torch.logsumexp(scores, dim=-1).transpose(0, 1))
    out = torch.cat(outs)
    return (out, torch.cat(lses)) if return_lse else out


# ---------------------------------------------------------------- length-bucketed batched SDPA (CPU)

# Bucketing trades padding for calls. Padding a length-n sequence to a bucket's length L costs
# (L^2 - n^2) / 2 extra causal score elements per head; a separate SDPA call costs a fixed
# overhead, measured on a 2-core CPU at about the work of 128^2 score elements for 4 heads of
# width 32 (benchmarks/bench_attention_cpu.py). The budget scales with 1 / (heads * head_dim):
# wider heads make each element dearer and padding less worth it.
_WASTE_BUDGET_ELEMENTS = 128 * 128 * 4 * 32
# Most B * L * L of one bucket (its score elements per head): a bucket that would exceed it is
# split, so padded buffers and any unfused fallback stay bounded for many long sequences.
_BUCKET_MAX_MASK_ELEMENTS = 1 << 26


def length_buckets(lengths: list[int], waste_budget: float = 128 * 128,
                   max_mask_elements: int = _BUCKET_MAX_MASK_ELEMENTS) -> list[list[int]]:
    """Group sequence indices into buckets of similar length, longest first.

    A bucket opens at the longest sequence not yet placed (length L) and takes the next
    longest (length n) while L^2 - n^2 <= waste_budget (padding it wastes at most that many
    score elements per head) and B * L * L stays <= max_mask_elements. Every index appears
    in exactly one bucket; buckets are non-empty.
    """
    if waste_budget < 0:
        raise ValueError(f"waste_budget must be >= 0, got {waste_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    buckets: list[list[int]] = []
    for i in order:
        if buckets:
            top = lengths[buckets[-1][0]]
            if top * top - lengths[i] ** 2 <= waste_budget and (len(buckets[-1]) + 1) * top * top <= max_mask_elements:
                buckets[-1].append(i)
                continue
        buckets.append([i])
    return buckets


def _bucket_layout(bounds: list[int], buckets: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps between packed tokens and the buckets' padded rows, laid end to end.

    Bucket b of B_b sequences padded to L_b occupies rows [o_b, o_b + B_b * L_b) of a
    (P, ...) buffer, row o_b + i * L_b + j holding token j of its i-th sequence (j past the
    sequence's end repeats its last token). Returns gather (P,) int64: the packed token each
    padded row copies, and scatter (T,) int64: the padded row holding each packed token.
    """
    gathers, rows_of, tokens_of, offset = [], [], [], 0
    for bucket in buckets:
        starts = torch.tensor([bounds[i] for i in bucket])
        lens = torch.tensor([bounds[i + 1] - bounds[i] for i in bucket])
        top = int(lens[0])
        pos = torch.arange(top)
        gathers.append((starts[:, None] + torch.minimum(pos[None], lens[:, None] - 1)).reshape(-1))
        valid = pos[None] < lens[:, None]  # (B, L)
        rows = offset + torch.arange(len(bucket))[:, None] * top + pos[None]
        rows_of.append(rows[valid])
        tokens_of.append((starts[:, None] + pos[None])[valid])
        offset += len(bucket) * top
    scatter = torch.empty(bounds[-1], dtype=torch.long)
    scatter[torch.cat(tokens_of)] = torch.cat(rows_of)
    return torch.cat(gathers).to(device), scatter.to(device)


def _fused_cpu_lse(q: torch.Tensor) -> bool:
    """fp32 only: in bf16 the CPU flash kernel's lse carries ~6e-5 absolute error from its
    reduced-precision score arithmetic, past the float32-from-rounded-inputs contract every
    implementation meets (tests/unit/test_attention.py LSE_TOL); bf16 keeps the exact scoring."""
    return (q.device.type == "cpu" and q.dtype == torch.float32
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"))


def _sdpa_cpu_with_lse(qb, kb, vb, mask, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's CPU flash kernel, which returns the log-sum-exp beside the output (the public SDPA
    drops it; scoring the keys again for it costs a full fp32 (B, H, L, L) matrix per bucket).
    (B, H, L, D) inputs, k/v heads expanded for GQA (the op takes equal head counts); a bool
    key-padding mask becomes the additive mask the op takes. Returns out (B, Hq, L, D) in q's
    dtype and lse (B, Hq, L) float32 without gradient."""
    if kb.shape[1] != qb.shape[1]:
        rep = qb.shape[1] // kb.shape[1]
        kb, vb = kb.repeat_interleave(rep, dim=1), vb.repeat_interleave(rep, dim=1)
    additive = None
    if mask is not None:
        additive = torch.zeros(mask.shape, dtype=qb.dtype, device=qb.device).masked_fill(~mask, float("-inf"))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        qb, kb, vb, 0.0, causal, attn_mask=additive, scale=scale)
    return out, lse.detach().float()


def varlen_attention_batched(q, k, v, cu_seqlens, max_seqlen, *, scale=None, causal=True, return_lse=False,
                             cu_seqlens_host=None):
    """Length-bucketed batched SDPA: one call per bucket of similar lengths, not one per sequence.

    q, k, v are gathered once each into the buckets' padded rows (padding repeats a
    sequence's last token), each bucket runs one SDPA on a (B, H, L, D) view (causal:
    is_causal alone; non-causal: a key-padding mask), and one more gather puts the valid rows
    back in packed order. The autograd graph holds 4 gathers whatever the number of
    sequences, where the per-sequence reference holds 3B slices, each of whose backward
    materialises a full (T, H, D) zero gradient, and B SDPA calls. Causal attention needs no
    padding mask: padding sits right of every valid query, so the causal mask hides it; the
    padded query rows are dropped, so they pass no gradient back. Valid outputs equal the
    reference's up to float rounding.
    """
    bounds = validate_inputs(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=True)
    scale = softmax_scale(q, scale)
    gqa = q.shape[1] != k.shape[1]
    lengths = [e - s for s, e in zip(bounds, bounds[1:])]
    buckets = length_buckets(lengths, _WASTE_BUDGET_ELEMENTS / (q.shape[1] * q.shape[2]))
    gather, scatter = _bucket_layout(bounds, buckets, q.device)
    # index_select / split, not x[idx] / slices: their backward is one index_add and one cat,
    # where advanced indexing accumulates through index_put and each slice zero-fills a (P, H, D) grad.
    sizes = [len(bk) * lengths[bk[0]] for bk in buckets]
    padded = [torch.index_select(x, 0, gather).split(sizes) for x in (q, k, v)]  # per bucket (B * L, H, D)
    outs, lses = [], []
    fused_lse = return_lse and _fused_cpu_lse(q)
    for n, bucket in enumerate(buckets):
        b, top = len(bucket), lengths[bucket[0]]
        qb, kb, vb = (x[n].view(b, top, *x[n].shape[1:]).transpose(1, 2) for x in padded)  # (B, H, L, D)
        mask = None
        if not causal and any(lengths[i] != top for i in bucket):
            lens = torch.tensor([lengths[i] for i in bucket], device=q.device)
            mask = (torch.arange(top, device=q.device)[None] < lens[:, None])[:, None, None, :]  # (B, 1, 1, L)
        if fused_lse:
            out, lse = _sdpa_cpu_with_lse(qb, kb, vb, mask, causal, scale)
            outs.append(out.transpose(1, 2).reshape(b * top, *out.shape[1:2], out.shape[-1]))
            lses.append(lse.transpose(1, 2).reshape(b * top, -1))
            continue
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, is_causal=causal, scale=scale,
                                             enable_gqa=gqa)  # (B, Hq, L, D)
        outs.append(out.transpose(1, 2).reshape(b * top, *out.shape[1:2], out.shape[-1]))
        if return_lse:
            with torch.no_grad():
                kf = kb.float().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                scores = torch.matmul(qb.float(), kf.transpose(-1, -2)) * scale  # (B, Hq, L, L)
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf"))
                if causal:
                    scores = scores.masked_fill(torch.ones(top, top, dtype=torch.bool, device=q.device).triu(1),
                                                float("-inf"))
                lses.append(torch.logsumexp(scores, dim=-1).transpose(1, 2).reshape(b * top, -1))
    out = torch.index_select(torch.cat(outs) if len(outs) > 1 else outs[0], 0, scatter)
    if not return_lse:
        return out
    return out, torch.index_select(torch.cat(lses) if len(lses) > 1 else lses[0], 0, scatter)
