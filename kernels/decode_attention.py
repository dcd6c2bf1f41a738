"""Decode-step attention: one new query token per sequence against its KV cache.

The contract (transformers' attention-forward layout, after the cache update):
    query (B, Hq, 1, D); key / value (B, Hkv, L, D) with Hq % Hkv == 0 (GQA: query head h
    uses kv head h // (Hq // Hkv)); attention_mask None or broadcastable to (B, 1, 1, L) or
    (B, Hq, 1, L): bool (True = attend) or additive float; keyword-only scale (default
    1/sqrt(D)). Returns out (B, 1, Hq, D) in query's dtype, contiguous.
The query token sees every key the mask lets it (causality is the cache's: it holds only
earlier positions and the token itself).

`decode_attention_matmul` is plain scores-softmax-matmul on the GQA-grouped query
(B, Hkv, G, D), so the kv heads are never repeated. Why by hand: on CPU, SDPA routes a
one-token query to its flash kernel, whose fixed cost per call dominates at decode sizes;
at the demo's shapes (B 128, 4 query / 2 kv heads, D 32) transformers' SDPA path measured
1.1-2.6 ms per call against 0.3-1.3 ms for these three ops (L 40-200); at Qwen2.5-VL-3B's
widths (16 / 2 heads, D 128, L 300-1000) this was 0.89-1.03x SDPA's speed, a CPU run of a
3B model gains nothing either way. Measured 2026-12-07 on the project's idle 2-core CPU VM, 2
threads: benchmarks/bench_decode_attention_cpu.py, results in benchmarks/results/decode_attention_cpu.txt.
Scores are softmaxed in float32 whatever the dtype, as SDPA's math path does.
"""

from __future__ import annotations

import math

import torch


def _check(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> None:
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a (batch, heads, tokens, head_dim) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if query.shape[2] != 1:
        raise ValueError(f"decode attention takes one query token per sequence, got {query.shape[2]}")
    if key.shape != value.shape:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape")
    if key.shape[0] != query.shape[0] or key.shape[3] != query.shape[3]:
        raise ValueError(f"query {tuple(query.shape)} and key/value {tuple(key.shape)} must share batch and head_dim")
    if key.shape[1] == 0 or query.shape[1] % key.shape[1]:
        raise ValueError(f"query heads {query.shape[1]} must be a multiple of key/value heads {key.shape[1]} (GQA)")
    if mask is not None:
        if mask.dim() != 4 or mask.shape[2] != 1 or mask.shape[3] != key.shape[2] \
                or mask.shape[1] not in (1, query.shape[1]) or mask.shape[0] not in (1, query.shape[0]):
            raise ValueError(f"attention_mask {tuple(mask.shape)} must broadcast to (batch, 1 or query heads, 1, "
                             f"keys) = ({query.shape[0]}, 1 or {query.shape[1]}, 1, {key.shape[2]})")


def decode_attention_matmul(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None = None, *, scale: float | None = None) -> torch.Tensor:
    """See the module docstring for the contract."""
    _check(query, key, value, attention_mask)
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    grouped = query.reshape(batch, kv_heads, groups, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale  # (B, Hkv, G, L)
    if attention_mask is not None:
        mask = attention_mask
        if mask.shape[1] != 1:  # one row per query head: group it like the query
            mask = mask.reshape(mask.shape[0], kv_heads, groups, mask.shape[-1])
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    probs = scores.softmax(-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, Hkv, G, D)
    return out.reshape(batch, 1, heads, dim)
