"""Packed (varlen) attention through ``ops.npu_fusion_attention`` (Ascend's torch_npu, or its
pure-torch emulation lmm_r1_ascend.kernels.npu_emulation), by the contract of
kernels/attention.py: TND layout, causal via sparse_mode=3 and the compressed mask, the lse
rebuilt from the op's softmax max / sum, rows past the op's varlen limit split per group."""

from __future__ import annotations

import functools

import torch

from lmm_r1_ascend.kernels.attention import softmax_scale, validate_inputs

_COMPRESSED_MASK_SIZE = 2048


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
    bounds = validate_inputs(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=True)
    scale = softmax_scale(q, scale)
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
