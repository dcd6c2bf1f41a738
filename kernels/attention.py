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

Implementations: reference (per-sequence SDPA, any device, differentiable), batched
(sequences bucketed by length, one masked SDPA per bucket: the CPU default), flash_attn
(flash_attn_varlen_func, CUDA), torch_varlen (torch.nn.attention.varlen.varlen_attn, CUDA),
npu_fusion (``ops.npu_fusion_attention`` in TND layout; ``ops`` is torch_npu or
lmm_r1_ascend.kernels.npu_emulation). Nothing here runs at import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math

import torch
import torch.nn.functional as F

_COMPRESSED_MASK_SIZE = 2048


def _validate(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host: bool) -> list[int] | None:
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


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def varlen_attention_reference(q, k, v, cu_seqlens, max_seqlen, *, scale=None, causal=True, return_lse=False,
                               cu_seqlens_host=None):
    """Per-sequence SDPA: correct and differentiable on every device (a Python loop over sequences)."""
    bounds = _validate(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=True)
    scale = _scale(q, scale)
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
    bounds = _validate(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=True)
    scale = _scale(q, scale)
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


# ---------------------------------------------------------------- flash-attn (CUDA)

def probe_flash_attn(device_type: str) -> tuple[bool, str]:
    """Whether flash_attn_varlen_func can serve this device type, and why (not)."""
    if device_type != "cuda":
        return False, f"flash_attn needs CUDA, device type is {device_type!r}"
    if importlib.util.find_spec("flash_attn") is None:
        return False, "flash_attn is not installed (pip install flash-attn, see requirements-cuda.txt)"
    try:
        flash_attn = importlib.import_module("flash_attn")
        getattr(flash_attn, "flash_attn_varlen_func")
    except Exception as exc:  # a build for another torch / CUDA raises ImportError or OSError
        return False, f"flash_attn is installed but does not import: {type(exc).__name__}: {exc}"
    if not torch.cuda.is_available():
        return False, "flash_attn is importable but no CUDA device is visible"
    return True, f"flash_attn {getattr(flash_attn, '__version__', '?')} flash_attn_varlen_func"


def _check_half(q: torch.Tensor, name: str) -> None:
    if q.device.type != "cuda":
        raise ValueError(f"{name} runs on CUDA tensors only, got {q.device}; use varlen_attention_reference")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{name} supports float16/bfloat16 only, got {q.dtype}; cast or use the reference")


def varlen_attention_flash_attn(q, k, v, cu_seqlens, max_seqlen, *, scale=None, causal=True, return_lse=False,
                                cu_seqlens_host=None):
    """flash-attn 2 ``flash_attn_varlen_func`` (CUDA, fp16/bf16; GQA native)."""
    bounds = _validate(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=False)
    _check_half(q, "flash_attn")
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as exc:
        raise RuntimeError(f"flash_attn is not importable ({exc}); use another attention implementation") from exc
    res = flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p=0.0,
                                 softmax_scale=_scale(q, scale), causal=causal, return_attn_probs=return_lse)
    if not return_lse:
        return res
    out, lse = res[0], res[1].detach().float()
    if lse.dim() == 2:  # flash-attn >= 2.4 varlen: (Hq, T)
        return out, lse.transpose(0, 1).contiguous()
    # older flash-attn: padded (B, Hq, max_seqlen); unpad per sequence
    bounds = bounds if bounds is not None else cu_seqlens.tolist()
    return out, torch.cat([lse[i, :, : e - s].transpose(0, 1) for i, (s, e) in enumerate(zip(bounds, bounds[1:]))])


# ---------------------------------------------------------------- torch.nn.attention.varlen (CUDA)

def _varlen_attn_fn():
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def probe_torch_varlen(device_type: str) -> tuple[bool, str]:
    """Whether torch.nn.attention.varlen.varlen_attn works here: import, signature, a tiny CUDA call."""
    if device_type != "cuda":
        return False, f"torch.nn.attention.varlen needs CUDA, device type is {device_type!r}"
    try:
        params = inspect.signature(_varlen_attn_fn()).parameters
    except (ImportError, AttributeError) as exc:
        return False, f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn ({exc})"
    if "window_size" not in params and "is_causal" not in params:
        return False, "varlen_attn has neither is_causal nor window_size: unknown signature"
    if not torch.cuda.is_available():
        return False, "torch.nn.attention.varlen is present but no CUDA device is visible"
    try:  # flash kernels need sm80+ and a build that includes them: try one tiny call
        x = torch.zeros(2, 1, 8, device="cuda", dtype=torch.float16)
        cu = torch.tensor([0, 2], device="cuda", dtype=torch.int32)
        varlen_attention_torch_varlen(x, x, x, cu, 2, cu_seqlens_host=[0, 2])
    except Exception as exc:
        return False, f"varlen_attn failed on this GPU: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    flag = "window_size=(-1, 0)" if "window_size" in params else "is_causal=True"
    return True, f"torch {torch.__version__} varlen_attn (causal via {flag})"


def varlen_attention_torch_varlen(q, k, v, cu_seqlens, max_seqlen, *, scale=None, causal=True, return_lse=False,
                                  cu_seqlens_host=None):
    """PyTorch's own varlen flash kernel (CUDA, fp16/bf16). The causal flag is probed per call."""
    _validate(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=False)
    _check_half(q, "torch_varlen")
    fn = _varlen_attn_fn()
    params = inspect.signature(fn).parameters
    kwargs = {}
    if "window_size" in params:  # torch >= 2.11
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    elif "is_causal" in params:  # torch 2.9 / 2.10
        kwargs["is_causal"] = causal
    else:
        raise RuntimeError("torch.nn.attention.varlen.varlen_attn has neither is_causal nor window_size")
    scale = _scale(q, scale)
    if "scale" in params:
        kwargs["scale"] = scale
    else:  # old signature: fixed 1/sqrt(D), so fold the wanted scale into q
        q = q * (scale * math.sqrt(q.shape[-1]))
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if return_lse:
        from torch.nn.attention.varlen import AuxRequest

        kwargs["return_aux"] = AuxRequest(lse=True)
    res = fn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kwargs)
    if not return_lse:
        return res
    out, lse = res
    lse = lse.detach().float()
    # The kernel returns (Hq, T) although some docs say (T, Hq); accept both.
    if lse.shape == (q.shape[1], q.shape[0]):
        lse = lse.transpose(0, 1).contiguous()
    return out, lse


# ---------------------------------------------------------------- npu_fusion_attention (Ascend or emulated)

@functools.lru_cache(maxsize=8)
def compressed_causal_mask(device: torch.device) -> torch.Tensor:
    """The (2048, 2048) bool mask sparse_mode 2/3 expect (True = masked), built once per device."""
    size = _COMPRESSED_MASK_SIZE
    return torch.triu(torch.ones(size, size, dtype=torch.bool, device=device), diagonal=1)


# The documented varlen limit of npu_fusion_attention: actual_seq_qlen holds at most 1K entries
# (torch_npu/_op_plugin_docs.py). Longer lists are served by one call per group of sequences.
NPU_MAX_VARLEN_SEQS = 1024


def varlen_attention_npu_fusion(q, k, v, cu_seqlens, max_seqlen, *, scale=None, causal=True, return_lse=False,
                                cu_seqlens_host=None, ops):
    """``ops.npu_fusion_attention`` in TND layout (sparse_mode=3 + compressed mask when causal).

    ops: a namespace with npu_fusion_attention (the torch_npu module, or
    lmm_r1_ascend.kernels.npu_emulation). actual_seq_qlen/kvlen are the cumulative ends
    without the leading zero, as a host tuple (from cu_seqlens_host when given: no sync).
    softmax_layout="TND" makes softmax_max / softmax_sum (T, Hq, 8) in TND order (the op's
    default is NTD order in a tensor of that same shape). A row of more than 1024 sequences
    (the op's varlen limit) runs as one call per group of 1024 sequences.
    """
    bounds = _validate(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=True)
    scale = _scale(q, scale)
    if len(bounds) - 1 <= NPU_MAX_VARLEN_SEQS:
        return _npu_fusion_call(ops, q, k, v, tuple(bounds[1:]), scale, causal, return_lse)
    outs, lses = [], []
    for g in range(0, len(bounds) - 1, NPU_MAX_VARLEN_SEQS):
        group = bounds[g:g + NPU_MAX_VARLEN_SEQS + 1]
        s, e = group[0], group[-1]
        res = _npu_fusion_call(ops, q[s:e], k[s:e], v[s:e], tuple(b - s for b in group[1:]), scale, causal,
                               return_lse)
        outs.append(res[0] if return_lse else res)
        if return_lse:
            lses.append(res[1])
    return (torch.cat(outs), torch.cat(lses)) if return_lse else torch.cat(outs)


def _npu_fusion_call(ops, q, k, v, ends: tuple[int, ...], scale: float, causal: bool, return_lse: bool):
    mask = compressed_causal_mask(q.device) if causal else None  # None = not causal
    res = ops.npu_fusion_attention(
        q, k, v, q.shape[1], "TND", atten_mask=mask, scale=scale, keep_prob=1.0,
        actual_seq_qlen=ends, actual_seq_kvlen=ends, sparse_mode=3 if causal else 0, softmax_layout="TND")
    out = res[0]
    if not return_lse:
        return out
    # (T, Hq, 8) in TND order: the value replicated over the trailing 8
    smax, ssum = res[1].detach().float()[..., 0], res[2].detach().float()[..., 0]
    return out, smax + torch.log(ssum)
