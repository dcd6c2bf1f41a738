"""Pure-torch emulation of ``torch_npu.npu_fusion_attention``.

This follows the op's DOCUMENTED contract (shared ASCEND.md, torch_npu API reference); it
is not the hardware and says nothing about Ascend kernels' precision or speed.

Contract emulated:
- layouts "TND" (packed: (T, N, D), needs ``actual_seq_qlen`` / ``actual_seq_kvlen``),
  "BSND", "BNSD", "BSH" and "SBH" (H = N * D, N from ``head_num``);
- ``actual_seq_qlen`` / ``actual_seq_kvlen``: host sequences of CUMULATIVE end offsets
  WITHOUT a leading zero (lengths 3, 5, 2 -> (3, 8, 10)), strictly increasing, last one =
  total tokens; sequence i of the queries attends sequence i of the keys only;
- ``atten_mask`` bool/uint8 where True (non-zero) means MASKED OUT; ``atten_mask=None``
  means no mask at all (not causal), whatever ``sparse_mode`` says;
- ``sparse_mode`` 0 (the given mask plus the pre/next_tockens band), 1 (the given mask,
  band ignored), 2 (top-left causal) and 3 (bottom-right causal); 2 and 3 take the
  compressed mask ``torch.triu(torch.ones(2048, 2048), diagonal=1).bool()``;
- scale applied to q @ k^T, default 1.0 (NOT 1/sqrt(D): callers must pass it);
- GQA: query heads a multiple of key/value heads (query head h uses kv head h // group).

Returns the documented 7-tuple ``(attention_out, softmax_max, softmax_sum, reserved,
seed, offset, mask_length)``. Like the hardware, softmax_max / softmax_sum are float32
and replicated over a trailing dimension of 8: shape (T, N, 8) for TND and (B, N, S, 8)
for the other layouts (N = query heads). Per (query, head): softmax_max = max of the
scaled, masked scores, softmax_sum = sum of exp(score - max), so the log-sum-exp is
``softmax_max + log(softmax_sum)``. ``reserved`` is an empty tensor; seed, offset and
mask_length are 0 (no dropout).

Emulation choices where the documentation is silent: for TND with sparse_mode 0/1 the
mask is 2-D (>= max Sq, >= max Skv) and its top-left block is applied to each sequence;
a query that sees no key (e.g. bottom-right causal with Sq > Skv) outputs zeros with
softmax_max = -inf and softmax_sum = 0. Computation runs in float32 for fp16/bf16 inputs
(float64 inputs stay float64, and then so do softmax_max / softmax_sum); the output has
the query's dtype. Everything is differentiable with autograd.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence

import torch

_LAYOUTS = ("TND", "BSND", "BNSD", "BSH", "SBH")
_COMPRESSED = 2048
_NO_BAND = 2147483647


@functools.lru_cache(maxsize=8)
def _compressed_causal(device: torch.device) -> torch.Tensor:
    return torch.triu(torch.ones(_COMPRESSED, _COMPRESSED, dtype=torch.bool, device=device), diagonal=1)


_VERIFIED_MASKS: dict[int, tuple] = {}  # id(mask) -> (weakref to it, its version, verdict)


def _is_compressed_causal(mask: torch.Tensor) -> bool:
    """Compare with the compressed causal mask once per tensor object and version: callers pass
    the same mask on every layer and step, and re-comparing 4M elements each call dominated
    emulated runs. An in-place change bumps the tensor's version, and a new tensor (even at a
    reused address) is a new object, so either is checked again."""
    cached = _VERIFIED_MASKS.get(id(mask))
    if cached is not None and cached[0]() is mask and cached[1] == mask._version:
        return cached[2]
    verdict = torch.equal(mask.bool(), _compressed_causal(mask.device))
    if len(_VERIFIED_MASKS) > 64:
        _VERIFIED_MASKS.clear()
    _VERIFIED_MASKS[id(mask)] = (weakref.ref(mask), mask._version, verdict)
    return verdict


def _cumulative(name: str, value, total: int) -> list[int]:
    """Validate a cumulative-length argument and return it as a list of ints."""
    if value is None:
        raise ValueError(f"input_layout='TND' needs {name}: cumulative end offsets, e.g. lengths 3,5,2 -> (3, 8, 10)")
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a host list/tuple of ints, not a tensor: build it on the host from the "
                        "packing metadata (reading a device tensor forces a device-to-host sync)")
    if not isinstance(value, Sequence) or len(value) == 0:
        raise TypeError(f"{name} must be a non-empty list/tuple of ints, got {type(value).__name__}")
    ends = []
    for x in value:
        if isinstance(x, bool) or not hasattr(x, "__index__"):
            raise TypeError(f"{name} must hold ints, got {x!r}")
        ends.append(int(x))
    if ends[0] <= 0:
        raise ValueError(f"{name}={tuple(ends)} starts with {ends[0]}: it takes cumulative end offsets WITHOUT the "
                         "leading zero (flash-attn cu_seqlens [0, 3, 8] -> (3, 8))")
    if any(b <= a for a, b in zip(ends, ends[1:])):
        raise ValueError(f"{name}={tuple(ends)} is not strictly increasing: it takes cumulative end offsets "
                         "(lengths 3,5,2 -> (3, 8, 10)), not per-sequence lengths")
    if ends[-1] != total:
        raise ValueError(f"{name}={tuple(ends)} ends at {ends[-1]} but the tensor holds {total} tokens: the last "
                         "cumulative offset must equal the total (per-sequence lengths are not accepted)")
    return ends


def _to_bnsd(x: torch.Tensor, layout: str, heads: int | None, head_dim: int | None) -> torch.Tensor:
    """(layout) -> (B, N, S, D). For BSH/SBH exactly one of heads / head_dim is given."""
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.permute(0, 2, 1, 3)
    if layout == "SBH":
        x = x.transpose(0, 1)
    b, s, h = x.shape
    if heads is None:
        if h % head_dim:
            raise ValueError(f"hidden size {h} of key/value is not a multiple of the head dim {head_dim}")
        heads = h // head_dim
    return x.reshape(b, s, heads, h // heads).permute(0, 2, 1, 3)


def _from_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        return x
    x = x.permute(0, 2, 1, 3)  # (B, S, N, D)
    if layout == "BSND":
        return x
    x = x.reshape(x.shape[0], x.shape[1], -1)
    return x.transpose(0, 1) if layout == "SBH" else x


def _attend(q, k, v, masked, scale):
    """q (..., N1, Sq, D), k/v (..., N2, Skv, D), masked broadcastable to (..., N1, Sq, Skv) or None.

    Returns out (..., N1, Sq, D) in the compute dtype, and max / sum (..., N1, Sq).
    """
    cdt = torch.promote_types(q.dtype, torch.float32)
    group = q.shape[-3] // k.shape[-3]
    kf = k.to(cdt).repeat_interleave(group, dim=-3)
    vf = v.to(cdt).repeat_interleave(group, dim=-3)
    scores = torch.matmul(q.to(cdt), kf.transpose(-1, -2)) * scale
    if masked is not None:
        scores = scores.masked_fill(masked, float("-inf"))
    # The max is only a stabilising shift; lse = max + log(sum) keeps the right gradient.
    smax = scores.amax(dim=-1, keepdim=True).detach()
    shift = torch.where(torch.isfinite(smax), smax, torch.zeros_like(smax))
    expo = torch.exp(scores - shift)
    ssum = expo.sum(dim=-1, keepdim=True)
    probs = expo / torch.where(ssum > 0, ssum, torch.ones_like(ssum))  # all-masked rows -> zeros
    return torch.matmul(probs, vf), smax.squeeze(-1), ssum.squeeze(-1)


def _mask_for(sparse_mode, atten_mask, sq, skv, pre, nxt, device, tnd_block=False):
    """Bool (.., Sq, Skv) True = masked, or None, for one (batch of) sequence pair(s)."""
    if atten_mask is None:
        return None
    rows = torch.arange(sq, device=device).unsqueeze(1)
    cols = torch.arange(skv, device=device).unsqueeze(0)
    if sparse_mode == 2:
        return cols > rows
    if sparse_mode == 3:
        return cols > rows + (skv - sq)
    mask = atten_mask.bool()
    if tnd_block:
        mask = mask[:sq, :skv]
    if sparse_mode == 0 and (pre != _NO_BAND or nxt != _NO_BAND):
        mask = mask | (cols - rows > nxt) | (rows - cols > pre)
    return mask


def _check_mask(atten_mask, sparse_mode, layout, pre, nxt):
    if atten_mask is None:
        if pre != _NO_BAND or nxt != _NO_BAND:
            raise NotImplementedError("pre_tockens/next_tockens without atten_mask are not emulated")
        return
    if not isinstance(atten_mask, torch.Tensor) or atten_mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError("atten_mask must be a bool or uint8 tensor (True / 1 = masked out)")
    if sparse_mode in (2, 3):
        if tuple(atten_mask.shape) != (_COMPRESSED, _COMPRESSED) or not _is_compressed_causal(atten_mask):
            raise ValueError(f"sparse_mode={sparse_mode} takes the compressed causal mask "
                             "torch.triu(torch.ones(2048, 2048), diagonal=1).bool(), got shape "
                             f"{tuple(atten_mask.shape)} or other contents")
    elif layout == "TND" and atten_mask.dim() != 2:
        raise ValueError("with input_layout='TND' and sparse_mode 0/1 atten_mask must be 2-D (max Sq, max Skv)")


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None,
                         atten_mask=None, scale=1.0, keep_prob=1.0, pre_tockens=2147483647,
                         next_tockens=2147483647, inner_precise=0, prefix=None, actual_seq_qlen=None,
                         actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False):
    """Emulate torch_npu.npu_fusion_attention (see the module docstring for the contract).

    Shapes: TND q (T1, N1, D), k/v (T2, N2, D); BSND (B, S, N, D); BNSD (B, N, S, D);
    BSH (B, S, N*D); SBH (S, B, N*D). Returns (out like query, softmax_max, softmax_sum,
    empty tensor, 0, 0, 0); softmax_max/sum are (T1, N1, 8) for TND, else (B, N1, Sq, 8).
    """
    if input_layout not in _LAYOUTS:
        raise ValueError(f"input_layout={input_layout!r} is not supported; use one of {_LAYOUTS}")
    for name, arg in (("pse", pse), ("padding_mask", padding_mask), ("prefix", prefix)):
        if arg is not None:
            raise NotImplementedError(f"{name} is not emulated (this project never passes it)")
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob={keep_prob} must be in (0, 1]")
    if keep_prob != 1.0:
        raise NotImplementedError("keep_prob < 1 (attention dropout) is not supported by the emulation")
    if sparse_mode not in range(9):
        raise ValueError(f"sparse_mode={sparse_mode} is not a valid mode (0..8)")
    if sparse_mode > 3:
        raise NotImplementedError(f"sparse_mode={sparse_mode} is not emulated; supported: 0, 1, 2, 3")
    if key.shape != value.shape:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape")
    expected_dim = 3 if input_layout in ("TND", "BSH", "SBH") else 4
    for name, x in (("query", query), ("key", key), ("value", value)):
        if x.dim() != expected_dim:
            raise ValueError(f"input_layout={input_layout!r} expects {expected_dim}-D {name}, got {tuple(x.shape)}")
    _check_mask(atten_mask, sparse_mode, input_layout, pre_tockens, next_tockens)
    if input_layout == "TND":
        return _tnd(query, key, value, head_num, atten_mask, scale, pre_tockens, next_tockens,
                    actual_seq_qlen, actual_seq_kvlen, sparse_mode)
    if actual_seq_qlen is not None or actual_seq_kvlen is not None:
        raise ValueError(f"actual_seq_qlen/actual_seq_kvlen apply to input_layout='TND' only, not {input_layout!r}")

    if input_layout in ("BSH", "SBH"):
        if query.shape[-1] % head_num:
            raise ValueError(f"query hidden size {query.shape[-1]} is not divisible by head_num={head_num}")
        q = _to_bnsd(query, input_layout, head_num, None)
        k = _to_bnsd(key, input_layout, None, q.shape[-1])
        v = _to_bnsd(value, input_layout, None, q.shape[-1])
    else:
        q, k, v = (_to_bnsd(x, input_layout, None, None) for x in (query, key, value))
    _check_heads(q.shape[1], k.shape[1], head_num, q.shape[-1], k.shape[-1])
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"query batch {q.shape[0]} != key/value batch {k.shape[0]}")
    scores_shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if atten_mask is not None and sparse_mode in (0, 1) and (
            atten_mask.dim() > 4 or atten_mask.shape[-2:] != scores_shape[-2:]
            or _broadcast(atten_mask.shape, scores_shape) != scores_shape):
        raise ValueError(f"atten_mask {tuple(atten_mask.shape)} does not fit (B, N, Sq, Skv) = {scores_shape}: "
                         "use (Sq, Skv), (1, 1, Sq, Skv), (B, 1, Sq, Skv) or (B, N, Sq, Skv)")
    masked = _mask_for(sparse_mode, atten_mask, q.shape[2], k.shape[2], pre_tockens, next_tockens, q.device)
    out, smax, ssum = _attend(q, k, v, masked, scale)
    out = _from_bnsd(out.to(query.dtype), input_layout)
    return _pack_outputs(out, smax, ssum)


def _broadcast(a, b):
    try:
        return tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        return None


def _check_heads(n1, n2, head_num, dq, dk):
    if n1 != head_num:
        raise ValueError(f"head_num={head_num} but query has {n1} heads")
    if n2 == 0 or n1 % n2:
        raise ValueError(f"query heads {n1} must be a multiple of key/value heads {n2} (GQA)")
    if dq != dk:
        raise ValueError(f"query head dim {dq} != key/value head dim {dk}")


def _tnd(query, key, value, head_num, atten_mask, scale, pre, nxt, qlen, kvlen, sparse_mode):
    _check_heads(query.shape[1], key.shape[1], head_num, query.shape[2], key.shape[2])
    q_ends = _cumulative("actual_seq_qlen", qlen, query.shape[0])
    kv_ends = _cumulative("actual_seq_kvlen", kvlen, key.shape[0])
    if len(q_ends) != len(kv_ends):
        raise ValueError(f"actual_seq_qlen has {len(q_ends)} sequences but actual_seq_kvlen has {len(kv_ends)}")
    if atten_mask is not None and sparse_mode in (0, 1):
        need = (max(b - a for a, b in zip([0] + q_ends, q_ends)), max(b - a for a, b in zip([0] + kv_ends, kv_ends)))
        if atten_mask.shape[0] < need[0] or atten_mask.shape[1] < need[1]:
            raise ValueError(f"atten_mask {tuple(atten_mask.shape)} is smaller than the longest sequences {need}")
    outs, maxes, sums = [], [], []
    for (qs, qe), (ks, ke) in zip(zip([0] + q_ends, q_ends), zip([0] + kv_ends, kv_ends)):
        # (S, N, D) -> (N, S, D) for one sequence pair
        q, k, v = (x.transpose(0, 1) for x in (query[qs:qe], key[ks:ke], value[ks:ke]))
        masked = _mask_for(sparse_mode, atten_mask, qe - qs, ke - ks, pre, nxt, query.device, tnd_block=True)
        out, smax, ssum = _attend(q, k, v, masked, scale)
        outs.append(out.transpose(0, 1))
        maxes.append(smax.transpose(0, 1))
        sums.append(ssum.transpose(0, 1))
    out = torch.cat(outs).to(query.dtype)
    return _pack_outputs(out, torch.cat(maxes), torch.cat(sums))


def _pack_outputs(out, smax, ssum):
    replicate = (*smax.shape, 8)  # the hardware's trailing dimension of 8 equal values
    smax = smax.unsqueeze(-1).expand(replicate).contiguous()
    ssum = ssum.unsqueeze(-1).expand(replicate).contiguous()
    return out, smax, ssum, out.new_empty(0), 0, 0, 0
