"""Pure-torch emulation of ``torch_npu.npu_fusion_attention``.

This follows the op's DOCUMENTED contract as the pinned torch-npu 2.10.0.post4 wheel ships
it (schema in torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml, output shapes in
torch_npu/op_plugin/meta/_meta_registrations.py, parameters and constraints in
torch_npu/_op_plugin_docs.py; tests/vendor holds the emulation to all three). It is not the
hardware and says nothing about Ascend kernels' precision or speed.

Contract emulated:
- the wheel's signature: ``(query, key, value, head_num, input_layout, pse, padding_mask,
  atten_mask, scale, keep_prob, pre_tockens, next_tockens, inner_precise, prefix,
  actual_seq_qlen, actual_seq_kvlen, sparse_mode, gen_mask_parallel, sync, softmax_layout,
  sink, dropout_mask, seed, offset)``;
- layouts "TND" (packed: (T, N, D), needs ``actual_seq_qlen`` / ``actual_seq_kvlen``),
  "BSND", "BNSD", "BSH" and "SBH" (H = N * D, N from ``head_num``);
- ``actual_seq_qlen`` / ``actual_seq_kvlen``: host sequences of CUMULATIVE end offsets
  WITHOUT a leading zero (lengths 3, 5, 2 -> (3, 8, 10)), strictly increasing, last one =
  total tokens; sequence i of the queries attends sequence i of the keys only;
- ``atten_mask`` bool/uint8 where True (non-zero) means MASKED OUT; ``atten_mask=None``
  means no mask at all (not causal): sparse_mode, pre_tockens and next_tockens are ignored;
- ``sparse_mode`` 0 (the given mask plus the pre/next_tockens band), 1 (the given mask,
  band ignored), 2 (top-left causal) and 3 (bottom-right causal); 2 and 3 take the
  compressed mask ``torch.triu(torch.ones(2048, 2048), diagonal=1).bool()``;
- scale applied to q @ k^T, default 1.0 (NOT 1/sqrt(D): callers must pass it);
- GQA: query heads a multiple of key/value heads (query head h uses kv head h // group);
- ``softmax_layout`` (TND only): "" (the default) lays softmax_max / softmax_sum out in NTD
  order, "TND" in TND order. The tensors have the Meta kernel's shape (T, N, 8) either way,
  so with the default the (N, T, 8) data sits in a (T, N, 8) tensor (read it with
  ``x.reshape(N, T, 8)``).

Returns the documented 7-tuple ``(attention_out, softmax_max, softmax_sum, reserved,
seed, offset, mask_length)``. Like the hardware, softmax_max / softmax_sum are float32
and replicated over a trailing dimension of 8: shape (T, N, 8) for TND and (B, N, S, 8)
for the other layouts (N = query heads). Per (query, head): softmax_max = max of the
scaled, masked scores, softmax_sum = sum of exp(score - max), so the log-sum-exp is
``softmax_max + log(softmax_sum)``. ``reserved`` is an empty tensor; seed, offset and
mask_length are 0 (no dropout).

Documented constraints the emulation refuses (ValueError / TypeError, one line naming the
constraint; the list with its doc lines is docs/ascend.md): dtypes, equal q/k/v dtypes,
key shape = value shape, head dim 1..768, query heads 1..256 and a multiple of key/value
heads, B / S / T ranges, at most 1024 varlen sequences, mask dtype and shapes (varlen: SS
only, exactly (max Sq, max Skv), no fully masked row), keep_prob in (0, 1], sparse_mode
0..8 with the compressed mask for 2/3/4/7/8, no sparse_mode 5 for varlen and 7/8 only for
varlen, the negative pre/next_tockens rules, padding_mask unsupported, softmax_layout ""
or "TND" and only with TND. Not emulated (NotImplementedError): pse, prefix, sink,
dropout_mask, keep_prob < 1, sparse_mode 4..8.

Emulation choices where the documentation is silent: a query that sees no key (e.g.
bottom-right causal with Sq > Skv) outputs zeros with softmax_max = -inf and
softmax_sum = 0. Zero-length varlen sequences (which the docs allow) are refused: the
project never packs one. Computation runs in float32; the output has the query's dtype.
Everything is differentiable with autograd.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence

import torch

_LAYOUTS = ("TND", "BSND", "BNSD", "BSH", "SBH")
_COMPRESSED = 2048
_NO_BAND = 2147483647
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Documented ranges (torch_npu/_op_plugin_docs.py, npu_fusion_attention, 约束说明).
_MAX_HEAD_DIM = 768
_MAX_Q_HEADS = 256
_MAX_SEQ = 1 << 20          # S and varlen T: 1 ~ 1M
_MAX_BATCH = 2 << 20        # non-varlen B: 1 ~ 2M
_MAX_VARLEN_SEQS = 1024     # varlen: actual_seq_qlen holds at most 1K entries
_COMPRESSED_MODES = (2, 3, 4, 7, 8)


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


def _check_mask(atten_mask, sparse_mode, layout):
    if atten_mask is None:
        return  # documented: no mask = full attention, sparse_mode and the tockens ignored
    if not isinstance(atten_mask, torch.Tensor) or atten_mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError("atten_mask must be a bool or uint8 tensor (True / 1 = masked out)")
    if sparse_mode in _COMPRESSED_MODES:
        if tuple(atten_mask.shape) != (_COMPRESSED, _COMPRESSED) or not _is_compressed_causal(atten_mask):
            raise ValueError(f"sparse_mode={sparse_mode} takes the compressed causal mask "
                             "torch.triu(torch.ones(2048, 2048), diagonal=1).bool(), got shape "
                             f"{tuple(atten_mask.shape)} or other contents")
    elif layout == "TND" and atten_mask.dim() != 2:
        raise ValueError("with input_layout='TND' (varlen) atten_mask must be SS: 2-D (max Sq, max Skv), "
                         f"got shape {tuple(atten_mask.shape)}")


def _check_tockens(pre, nxt, sq, skv):
    """The documented rules for negative pre/next_tockens (sparse_mode 0 with a mask)."""
    if nxt < 0 and not (pre >= -nxt and -nxt < skv):
        raise ValueError(f"next_tockens={nxt} < 0 needs pre_tockens >= |next_tockens| and |next_tockens| < "
                         f"Skv={skv}; got pre_tockens={pre}")
    if pre < 0 and not (nxt >= -pre and -pre < sq):
        raise ValueError(f"pre_tockens={pre} < 0 needs next_tockens >= |pre_tockens| and |pre_tockens| < "
                         f"Sq={sq}; got next_tockens={nxt}")


def _check_inputs(query, key, value, input_layout):
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, torch.Tensor) or x.dtype not in _DTYPES:
            raise TypeError(f"{name} must be a float16, bfloat16 or float32 tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(f"query, key and value must share one dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    if key.shape != value.shape:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape")
    expected_dim = 3 if input_layout in ("TND", "BSH", "SBH") else 4
    for name, x in (("query", query), ("key", key), ("value", value)):
        if x.dim() != expected_dim:
            raise ValueError(f"input_layout={input_layout!r} expects {expected_dim}-D {name}, got {tuple(x.shape)}")


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None,
                         atten_mask=None, scale=1.0, keep_prob=1.0, pre_tockens=2147483647,
                         next_tockens=2147483647, inner_precise=0, prefix=None, actual_seq_qlen=None,
                         actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False,
                         softmax_layout="", sink=None, dropout_mask=None, seed=0, offset=0):
    """Emulate torch_npu.npu_fusion_attention (see the module docstring for the contract).

    Shapes: TND q (T1, N1, D), k/v (T2, N2, D); BSND (B, S, N, D); BNSD (B, N, S, D);
    BSH (B, S, N*D); SBH (S, B, N*D). Returns (out like query, softmax_max, softmax_sum,
    empty tensor, 0, 0, 0); softmax_max/sum are (T1, N1, 8) for TND (NTD-ordered data
    unless softmax_layout="TND"), else (B, N1, Sq, 8).
    """
    if input_layout not in _LAYOUTS:
        raise ValueError(f"input_layout={input_layout!r} is not supported; use one of {_LAYOUTS}")
    if padding_mask is not None:
        raise ValueError("padding_mask is not supported by npu_fusion_attention (documented: 暂不支持该传参)")
    if softmax_layout not in ("", "TND"):
        raise ValueError(f"softmax_layout={softmax_layout!r}: the only documented value is 'TND' (or the default '')")
    if softmax_layout and input_layout != "TND":
        raise ValueError(f"softmax_layout='TND' applies to input_layout='TND' only, not {input_layout!r}")
    for name, arg in (("pse", pse), ("prefix", prefix), ("sink", sink), ("dropout_mask", dropout_mask)):
        if arg is not None:
            raise NotImplementedError(f"{name} is not emulated (this project never passes it)")
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob={keep_prob} must be in (0, 1]")
    if keep_prob != 1.0:
        raise NotImplementedError("keep_prob < 1 (attention dropout) is not supported by the emulation")
    if sparse_mode not in range(9):
        raise ValueError(f"sparse_mode={sparse_mode} is not a valid mode (0..8)")
    if input_layout == "TND" and sparse_mode == 5:
        raise ValueError("sparse_mode=5 (prefix, uncompressed) is not supported for varlen (TND) input")
    if input_layout != "TND" and sparse_mode in (7, 8):
        raise ValueError(f"sparse_mode={sparse_mode} is a varlen outer-cut mode: input_layout='TND' only")
    _check_inputs(query, key, value, input_layout)
    _check_mask(atten_mask, sparse_mode, input_layout)
    if sparse_mode > 3:
        raise NotImplementedError(f"sparse_mode={sparse_mode} is not emulated; supported: 0, 1, 2, 3")
    if input_layout == "TND":
        return _tnd(query, key, value, head_num, atten_mask, scale, pre_tockens, next_tockens,
                    actual_seq_qlen, actual_seq_kvlen, sparse_mode, softmax_layout)
    if actual_seq_qlen is not None or actual_seq_kvlen is not None:
        raise ValueError(f"actual_seq_qlen/actual_seq_kvlen apply to input_layout='TND' only, not {input_layout!r}")

    if input_layout in ("BSH", "SBH"):
        if head_num <= 0 or query.shape[-1] % head_num:
            raise ValueError(f"query hidden size {query.shape[-1]} is not divisible by head_num={head_num}")
        q = _to_bnsd(query, input_layout, head_num, None)
        k = _to_bnsd(key, input_layout, None, q.shape[-1])
        v = _to_bnsd(value, input_layout, None, q.shape[-1])
    else:
        q, k, v = (_to_bnsd(x, input_layout, None, None) for x in (query, key, value))
    _check_heads(q.shape[1], k.shape[1], head_num, q.shape[-1], k.shape[-1])
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"query batch {q.shape[0]} != key/value batch {k.shape[0]} (B must be equal)")
    if not 1 <= q.shape[0] <= _MAX_BATCH:
        raise ValueError(f"batch B={q.shape[0]} is outside the documented 1..2M")
    for name, s_len in (("Sq", q.shape[2]), ("Skv", k.shape[2])):
        if not 1 <= s_len <= _MAX_SEQ:
            raise ValueError(f"sequence length {name}={s_len} is outside the documented 1..1M")
    b, n, sq, skv = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if atten_mask is not None and sparse_mode in (0, 1):
        allowed = ((b, n, sq, skv), (b, 1, sq, skv), (1, 1, sq, skv), (sq, skv))
        if tuple(atten_mask.shape) not in allowed:
            raise ValueError(f"atten_mask {tuple(atten_mask.shape)} is none of the documented shapes BNSS, B1SS, "
                             f"11SS, SS for (B, N, Sq, Skv) = {(b, n, sq, skv)}")
        if sparse_mode == 0:
            _check_tockens(pre_tockens, next_tockens, sq, skv)
    masked = _mask_for(sparse_mode, atten_mask, sq, skv, pre_tockens, next_tockens, q.device)
    out, smax, ssum = _attend(q, k, v, masked, scale)
    out = _from_bnsd(out.to(query.dtype), input_layout)
    return _pack_outputs(out, smax, ssum)


def _check_heads(n1, n2, head_num, dq, dk):
    if n1 != head_num:
        raise ValueError(f"head_num={head_num} but query has {n1} heads")
    if not 1 <= n1 <= _MAX_Q_HEADS:
        raise ValueError(f"query heads N={n1} are outside the documented 1..256")
    if n2 == 0 or n1 % n2:
        raise ValueError(f"query heads {n1} must be a multiple of key/value heads {n2} (GQA)")
    if dq != dk:
        raise ValueError(f"query head dim {dq} != key/value head dim {dk}")
    if not 1 <= dq <= _MAX_HEAD_DIM:
        raise ValueError(f"head dim D={dq} is outside the documented 1..768")


def _tnd(query, key, value, head_num, atten_mask, scale, pre, nxt, qlen, kvlen, sparse_mode, softmax_layout):
    _check_heads(query.shape[1], key.shape[1], head_num, query.shape[2], key.shape[2])
    for name, x in (("query", query), ("key", key)):
        if not 1 <= x.shape[0] <= _MAX_SEQ:
            raise ValueError(f"varlen {name} tokens T={x.shape[0]} are outside the documented 1..1M")
    q_ends = _cumulative("actual_seq_qlen", qlen, query.shape[0])
    kv_ends = _cumulative("actual_seq_kvlen", kvlen, key.shape[0])
    if len(q_ends) != len(kv_ends):
        raise ValueError(f"actual_seq_qlen has {len(q_ends)} sequences but actual_seq_kvlen has {len(kv_ends)}")
    if len(q_ends) > _MAX_VARLEN_SEQS:
        raise ValueError(f"actual_seq_qlen holds {len(q_ends)} sequences: varlen supports at most 1024 (1K)")
    if atten_mask is not None and sparse_mode in (0, 1):
        need = (max(b - a for a, b in zip([0] + q_ends, q_ends)), max(b - a for a, b in zip([0] + kv_ends, kv_ends)))
        if tuple(atten_mask.shape) != need:
            raise ValueError(f"varlen atten_mask must be SS with S = (max Sq, max Skv) = {need}, got "
                             f"{tuple(atten_mask.shape)}")
        if atten_mask.bool().all(dim=-1).any():
            raise ValueError("varlen atten_mask has a fully masked row: padding rows are not supported")
        if sparse_mode == 0:
            _check_tockens(pre, nxt, *need)
    outs, maxes, sums = [], [], []
    for (qs, qe), (ks, ke) in zip(zip([0] + q_ends, q_ends), zip([0] + kv_ends, kv_ends)):
        # (S, N, D) -> (N, S, D) for one sequence pair
        q, k, v = (x.transpose(0, 1) for x in (query[qs:qe], key[ks:ke], value[ks:ke]))
        masked = _mask_for(sparse_mode, atten_mask, qe - qs, ke - ks, pre, nxt, query.device, tnd_block=True)
        out, smax, ssum = _attend(q, k, v, masked, scale)
        outs.append(out.transpose(0, 1))
        maxes.append(smax)  # (N, S): NTD order
        sums.append(ssum)
    out = torch.cat(outs).to(query.dtype)
    smax, ssum = torch.cat(maxes, dim=1), torch.cat(sums, dim=1)  # (N, T)
    if softmax_layout == "TND":
        return _pack_outputs(out, smax.transpose(0, 1), ssum.transpose(0, 1))
    # Default NTD: the (N, T, 8) data in the (T, N, 8) tensor the op (and its Meta kernel) returns.
    t, n = smax.shape[1], smax.shape[0]
    res = _pack_outputs(out, smax, ssum)
    return (res[0], res[1].reshape(t, n, 8), res[2].reshape(t, n, 8), *res[3:])


def _pack_outputs(out, smax, ssum):
    replicate = (*smax.shape, 8)  # the hardware's trailing dimension of 8 equal values
    smax = smax.unsqueeze(-1).expand(replicate).contiguous()
    ssum = ssum.unsqueeze(-1).expand(replicate).contiguous()
    return out, smax, ssum, out.new_empty(0), 0, 0, 0
