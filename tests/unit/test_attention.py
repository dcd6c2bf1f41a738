"""Varlen attention implementations reachable on CPU against an independent float64 formula.

The independent reference (`naive_varlen`) is written out directly: per sequence and per
head, an explicit score matrix, a -inf causal mask, an explicit softmax. It never calls
SDPA or the code under test.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from lmm_r1_ascend.kernels import attention as att
from lmm_r1_ascend.kernels import attention_cuda as att_cuda
from lmm_r1_ascend.kernels import attention_npu as att_npu
from lmm_r1_ascend.kernels import npu_emulation

IMPLS = {
    "batched": att.varlen_attention_batched,
    "reference": att.varlen_attention_reference,
    "npu_fusion_emulated": functools.partial(att_npu.varlen_attention_npu_fusion, ops=npu_emulation),
}

# Tolerances against the float64 formula, by input dtype: (output, gradients).
# fp32: softmax over <= 12 keys and D = 16 products; each op adds ~6e-8 relative error,
#   so a few dozen of them stay far below 2e-5 (measured worst ~1e-6 over 240 draws).
# bf16: inputs are rounded to bf16 BEFORE the float64 formula sees them, so only the
#   implementation's arithmetic differs. The output is rounded once to bf16 (half an ulp:
#   2^-9 = 2e-3 relative; measured worst 2.6e-3 of (|x| + 1) over ~1000 draws) -> 1e-2.
#   Gradients are rounded in intermediate steps too, and dk/dv sum group x length terms
#   (MQA: 6 heads x 12 tokens), measured worst 1.6e-2 over ~1000 draws -> 4e-2.
TOL = {
    torch.float32: (dict(atol=2e-5, rtol=2e-5), dict(atol=2e-5, rtol=2e-5)),
    torch.bfloat16: (dict(atol=1e-2, rtol=1e-2), dict(atol=4e-2, rtol=4e-2)),
}
# lse is float32 in every implementation, computed from the same (rounded) inputs:
# only float32 arithmetic error remains (scores up to ~10, eps 1.2e-7).
LSE_TOL = dict(atol=2e-5, rtol=2e-5)


def naive_varlen(q, k, v, bounds, scale, causal=True):
    """float64 packed attention by the textbook formula. Returns out (T, Hq, D), lse (T, Hq)."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    out = torch.zeros_like(q)
    lse = torch.zeros(q.shape[:2], dtype=torch.float64)
    for s, e in zip(bounds, bounds[1:]):
        n = e - s
        allowed = torch.ones(n, n, dtype=torch.bool)
        if causal:
            allowed = torch.tril(allowed)
        for h in range(q.shape[1]):
            scores = (q[s:e, h] @ k[s:e, h // group].T) * scale
            scores = torch.where(allowed, scores, torch.tensor(float("-inf"), dtype=torch.float64))
            m = scores.max(dim=1, keepdim=True).values
            w = torch.exp(scores - m)
            total = w.sum(dim=1, keepdim=True)
            out[s:e, h] = (w / total) @ v[s:e, h // group]
            lse[s:e, h] = (m + torch.log(total)).squeeze(1)
    return out, lse


def random_batch(n_seqs=5, hq=4, hkv=2, d=16, dtype=torch.float32, max_len=12):
    """Fresh packed batch with at least one length-1 sequence. Returns q, k, v, cu_seqlens, bounds."""
    lengths = [1] + torch.randint(1, max_len + 1, (n_seqs - 1,)).tolist()
    lengths = [lengths[i] for i in torch.randperm(n_seqs).tolist()]
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    t = bounds[-1]
    q, k, v = (torch.randn(t, h, d).to(dtype) for h in (hq, hkv, hkv))
    return q, k, v, torch.tensor(bounds, dtype=torch.int32), bounds


def assert_matches_naive(impl, q, k, v, cu, bounds, *, causal=True, scale=None):
    """Forward, lse and grads of q, k, v of `impl` against naive_varlen in float64."""
    out_tol, grad_tol = TOL[q.dtype]
    used_scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    max_len = max(b - a for a, b in zip(bounds, bounds[1:]))
    grad_out = torch.randn(q.shape, dtype=torch.float64)

    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = impl(*leaves, cu, max_len, scale=scale, causal=causal, return_lse=True)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:2]
    (out.double() * grad_out).sum().backward()

    ref_leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    ref_out, ref_lse = naive_varlen(*ref_leaves, bounds, used_scale, causal)
    (ref_out * grad_out).sum().backward()

    torch.testing.assert_close(out.double(), ref_out.detach(), **out_tol)
    torch.testing.assert_close(lse.double(), ref_lse.detach(), **LSE_TOL)
    for name, got, want in zip("qkv", leaves, ref_leaves):
        torch.testing.assert_close(got.grad.double(), want.grad, **grad_tol, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)], ids=["mha", "gqa2", "mqa"])
def test_matches_float64_formula(rng_seed, impl, dtype, heads):
    q, k, v, cu, bounds = random_batch(hq=heads[0], hkv=heads[1], dtype=dtype)
    assert_matches_naive(IMPLS[impl], q, k, v, cu, bounds)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_causal_and_explicit_scale(rng_seed, impl):
    q, k, v, cu, bounds = random_batch()
    assert_matches_naive(IMPLS[impl], q, k, v, cu, bounds, causal=False, scale=0.37)


@pytest.mark.parametrize("impl", IMPLS)
def test_single_sequence_and_all_length_one(rng_seed, impl):
    for bounds in ([0, 9], [0, 1, 2, 3]):
        t = bounds[-1]
        q, k, v = torch.randn(t, 2, 8), torch.randn(t, 1, 8), torch.randn(t, 1, 8)
        assert_matches_naive(IMPLS[impl], q, k, v, torch.tensor(bounds, dtype=torch.int32), bounds)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_perturbing_one_sequence_leaves_others_bit_identical(rng_seed, impl, dtype):
    fn = IMPLS[impl]
    q, k, v, cu, bounds = random_batch(n_seqs=4, dtype=dtype)
    victim = int(torch.randint(0, 4, ()).item())
    s, e = bounds[victim], bounds[victim + 1]
    before = fn(q, k, v, cu, 12)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[s:e] = torch.randn(x[s:e].shape).to(dtype)
    after = fn(q2, k2, v2, cu, 12)
    keep = torch.ones(q.shape[0], dtype=torch.bool)
    keep[s:e] = False
    assert torch.equal(before[keep], after[keep]), "a packed sequence changed another sequence's output"
    assert not torch.equal(before[s:e], after[s:e]), "the perturbed sequence itself must change"


def leaky_packed_attention(q, k, v, cu_seqlens, max_seqlen, *, scale=None, causal=True, return_lse=False,
                           cu_seqlens_host=None):
    """A deliberately broken implementation: one causal mask over the whole packed row."""
    qs, ks, vs = (x.transpose(0, 1) for x in (q, k, v))
    out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1]).transpose(0, 1)
    if not return_lse:
        return out
    kf = ks.float().repeat_interleave(q.shape[1] // k.shape[1], dim=0)
    scores = (qs.float() @ kf.transpose(-1, -2)) * (scale or 1 / math.sqrt(q.shape[-1]))
    scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    return out, torch.logsumexp(scores, -1).transpose(0, 1).detach()


def test_comparison_catches_sequences_seeing_each_other(rng_seed):
    q, k, v, cu, bounds = random_batch(n_seqs=4)
    with pytest.raises(AssertionError):
        assert_matches_naive(leaky_packed_attention, q, k, v, cu, bounds)
    # ...while the very same comparison accepts a single sequence, where no leak is possible.
    one = [0, bounds[-1]]
    assert_matches_naive(leaky_packed_attention, q, k, v, torch.tensor(one, dtype=torch.int32), one)


@pytest.mark.parametrize("impl", IMPLS)
def test_lse_carries_no_gradient(rng_seed, impl):
    q, k, v, cu, _ = random_batch()
    _, lse = IMPLS[impl](q.requires_grad_(), k, v, cu, 12, return_lse=True)
    assert not lse.requires_grad


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_inputs_raise_clear_errors(impl):
    fn = IMPLS[impl]
    q, k, v = torch.randn(6, 4, 8), torch.randn(6, 2, 8), torch.randn(6, 2, 8)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    cases = [
        ((q, torch.randn(6, 3, 8), torch.randn(6, 3, 8), cu, 4), {}, ValueError, "multiple of key/value heads"),
        ((q[0], k, v, cu, 4), {}, ValueError, "tokens, heads, head_dim"),
        ((q, k, v[:, :1], cu, 4), {}, ValueError, "same shape"),
        ((q, k, v, torch.tensor([0, 2, 5], dtype=torch.int32), 4), {}, ValueError, "holds 6 tokens"),
        ((q, k, v, torch.tensor([0, 4, 2, 6], dtype=torch.int32), 4), {}, ValueError, "strictly increasing"),
        ((q, k, v, torch.tensor([2, 6], dtype=torch.int32), 4), {}, ValueError, "start with 0"),
        ((q, k, v, cu.long(), 4), {}, TypeError, "int32"),
        ((q, k, v, cu, 3), {}, ValueError, "longest sequence"),
        ((q, k, v, cu, 4), {"cu_seqlens_host": [0, 6]}, ValueError, "cu_seqlens_host has 2 entries"),
    ]
    for args, kwargs, err, text in cases:
        with pytest.raises(err, match=text):
            fn(*args, **kwargs)


def test_npu_fusion_calls_the_op_by_the_documented_contract(rng_seed):
    """TND, sparse_mode=3 + compressed mask, cumulative ends without 0 from the HOST list, explicit scale."""
    calls = []

    class SpyOps:
        @staticmethod
        def npu_fusion_attention(*args, **kwargs):
            calls.append((args, kwargs))
            return npu_emulation.npu_fusion_attention(*args, **kwargs)

    q, k, v = torch.randn(7, 4, 16), torch.randn(7, 2, 16), torch.randn(7, 2, 16)
    cu = torch.tensor([0, 3, 4, 7], dtype=torch.int32)
    att_npu.varlen_attention_npu_fusion(q, k, v, cu, 3, ops=SpyOps, cu_seqlens_host=[0, 3, 4, 7])
    att_npu.varlen_attention_npu_fusion(q, k, v, cu, 3, ops=SpyOps, causal=False)
    (args, kw), (_, kw_nc) = calls
    assert args[3:] == (4, "TND")
    assert kw["actual_seq_qlen"] == (3, 4, 7) and kw["actual_seq_kvlen"] == (3, 4, 7)
    assert all(type(x) is int for x in kw["actual_seq_qlen"])
    assert kw["sparse_mode"] == 3 and kw["scale"] == pytest.approx(0.25) and kw["keep_prob"] == 1.0
    mask = kw["atten_mask"]
    assert mask.dtype == torch.bool and torch.equal(mask, torch.ones(2048, 2048, dtype=torch.bool).triu(1))
    assert kw_nc["atten_mask"] is None  # non-causal: no mask at all
    assert att_npu.compressed_causal_mask(q.device) is mask  # built once per device
    assert kw["softmax_layout"] == "TND"  # the lse is read as (T, N); the op's default is NTD order


@pytest.mark.parametrize("causal", [True, False])
def test_npu_fusion_splits_rows_past_the_varlen_sequence_limit(rng_seed, monkeypatch, causal):
    """The op takes at most 1024 varlen sequences per call (torch_npu docs); longer rows run as one
    call per group. With the limit lowered to 2: 5 sequences -> 3 calls, same math as the formula."""
    calls = []

    class CountingOps:
        @staticmethod
        def npu_fusion_attention(*args, **kwargs):
            calls.append(kwargs["actual_seq_qlen"])
            return npu_emulation.npu_fusion_attention(*args, **kwargs)

    monkeypatch.setattr(att_npu, "NPU_MAX_VARLEN_SEQS", 2)
    q, k, v, cu, bounds = random_batch(n_seqs=5)
    assert_matches_naive(functools.partial(att_npu.varlen_attention_npu_fusion, ops=CountingOps), q, k, v, cu, bounds,
                         causal=causal)
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    assert [len(c) for c in calls] == [2, 2, 1]
    assert [c[-1] for c in calls] == [sum(lengths[:2]), sum(lengths[2:4]), lengths[4]]  # ends restart per group


def test_accelerator_only_implementations_refuse_cpu_clearly():
    for probe in (att_cuda.probe_flash_attn, att_cuda.probe_torch_varlen):
        ok, why = probe("cpu")
        assert ok is False and "CUDA" in why
    q = torch.randn(4, 2, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    for fn in (att_cuda.varlen_attention_flash_attn, att_cuda.varlen_attention_torch_varlen):
        with pytest.raises(ValueError, match="CUDA tensors only"):
            fn(q, q, q, cu, 4)
