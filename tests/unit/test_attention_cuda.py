"""flash_attn and torch_varlen against an independent float64 formula (needs an NVIDIA GPU).

Skipped by tests/conftest.py where CUDA is absent, and here with the probe's reason
where the library is missing. The float64 formula (`naive_packed`) uses one explicit
block-diagonal causal "allowed" matrix over the packed row; it never calls SDPA.

Accuracy is judged the way flash-attn's own tests do it: the fused kernel's error
against float64 may be at most twice the error of the plain per-sequence SDPA reference
run in the same low-precision dtype on the same GPU, with a floor for draws where the
reference happens to be unusually exact.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmm_r1_ascend.kernels import attention as att
from lmm_r1_ascend.kernels import attention_cuda as att_cuda

pytestmark = pytest.mark.cuda

IMPLS = {
    "flash_attn": (att_cuda.probe_flash_attn, att_cuda.varlen_attention_flash_attn),
    "torch_varlen": (att_cuda.probe_torch_varlen, att_cuda.varlen_attention_torch_varlen),
}
# Floors on the max error relative to max(|reference|, 1). fp16 has 11 bits (half ulp
# 4.9e-4), bf16 8 bits (3.9e-3); outputs are rounded once, gradients several times and
# dk/dv sum up to group x length terms.
FLOOR = {
    torch.float16: {"out": 2e-3, "grad": 1e-2},
    torch.bfloat16: {"out": 1.6e-2, "grad": 6e-2},
}


def _impl(name):
    probe, fn = IMPLS[name]
    ok, why = probe("cuda")
    if not ok:
        pytest.skip(f"{name} unavailable here: {why}")
    return fn


def naive_packed(q, k, v, bounds, scale, causal=True):
    """float64 on CPU: q (T, Hq, D), k/v (T, Hkv, D) -> out (T, Hq, D), lse (T, Hq)."""
    q, k, v = (x.double().cpu() for x in (q, k, v))  # identity for the float64 CPU leaves passed in
    t = q.shape[0]
    seq = torch.repeat_interleave(torch.arange(len(bounds) - 1), torch.tensor(bounds).diff())
    allowed = seq[:, None] == seq[None, :]
    if causal:
        allowed &= torch.arange(t)[None, :] <= torch.arange(t)[:, None]
    group = q.shape[1] // k.shape[1]
    kh, vh = k.repeat_interleave(group, 1).transpose(0, 1), v.repeat_interleave(group, 1).transpose(0, 1)
    scores = (q.transpose(0, 1) @ kh.transpose(1, 2)) * scale  # (Hq, T, T)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse[..., None]) @ vh
    return out.transpose(0, 1), lse.transpose(0, 1)


def _batch(dtype, hq, hkv, d=64):
    lengths = [1, *torch.randint(1, 130, (5,)).tolist(), 1]
    lengths = [lengths[i] for i in torch.randperm(len(lengths)).tolist()]
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    t = bounds[-1]
    q, k, v = (torch.randn(t, h, d, device="cuda").to(dtype) for h in (hq, hkv, hkv))
    return q, k, v, torch.tensor(bounds, dtype=torch.int32, device="cuda"), bounds, max(lengths)


def _run(fn, q, k, v, cu, max_len, bounds, grad_out, causal):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = fn(*leaves, cu, max_len, causal=causal, return_lse=True, cu_seqlens_host=bounds)
    (out.float() * grad_out).sum().backward()
    return out, lse, [x.grad for x in leaves]


def _rel_err(got, want):
    return ((got.detach().double().cpu() - want).abs().max() / want.abs().max().clamp_min(1.0)).item()


@pytest.mark.parametrize("name", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_matches_float64_formula(rng_seed, name, dtype, heads, causal):
    fn = _impl(name)
    q, k, v, cu, bounds, max_len = _batch(dtype, *heads)
    grad_out = torch.randn(q.shape, device="cuda")
    out, lse, grads = _run(fn, q, k, v, cu, max_len, bounds, grad_out, causal)
    ref_out, _, ref_grads = _run(att.varlen_attention_reference, q, k, v, cu, max_len, bounds, grad_out, causal)

    leaves64 = [x.detach().double().cpu().requires_grad_(True) for x in (q, k, v)]
    want_out, want_lse = naive_packed(*leaves64, bounds, 1 / math.sqrt(q.shape[-1]), causal)
    (want_out * grad_out.double().cpu()).sum().backward()

    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:2] and not lse.requires_grad
    floor = FLOOR[dtype]
    err, ref_err = _rel_err(out, want_out.detach()), _rel_err(ref_out, want_out.detach())
    assert err <= max(2 * ref_err, floor["out"]), f"out: {name} error {err:.2e}, reference {ref_err:.2e}"
    for axis, got, ref, want in zip("qkv", grads, ref_grads, leaves64):
        err, ref_err = _rel_err(got, want.grad), _rel_err(ref, want.grad)
        assert err <= max(2 * ref_err, floor["grad"]), f"d{axis}: {name} error {err:.2e}, reference {ref_err:.2e}"
    # lse is accumulated in float32 inside the kernel from the same rounded inputs:
    # only float32 error on values of size ~log(130) + |scores| remains.
    torch.testing.assert_close(lse.double().cpu(), want_lse, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", IMPLS)
def test_perturbing_one_sequence_leaves_others_bit_identical(rng_seed, name):
    fn = _impl(name)
    q, k, v, cu, bounds, max_len = _batch(torch.bfloat16, 8, 2)
    victim = int(torch.randint(0, len(bounds) - 1, ()).item())
    s, e = bounds[victim], bounds[victim + 1]
    before = fn(q, k, v, cu, max_len, cu_seqlens_host=bounds)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[s:e] = torch.randn(x[s:e].shape, device="cuda").to(x.dtype)
    after = fn(q2, k2, v2, cu, max_len, cu_seqlens_host=bounds)
    keep = torch.ones(q.shape[0], dtype=torch.bool, device="cuda")
    keep[s:e] = False
    assert torch.equal(before[keep], after[keep]), f"{name}: a packed sequence changed another one's output"
    assert not torch.equal(before[s:e], after[s:e])


@pytest.mark.parametrize("name", IMPLS)
def test_rejects_float32_with_a_clear_error(name):
    fn = _impl(name)
    x = torch.randn(4, 2, 64, device="cuda")
    cu = torch.tensor([0, 4], dtype=torch.int32, device="cuda")
    with pytest.raises(TypeError, match="float16/bfloat16"):
        fn(x, x, x, cu, 4)


def test_probes_explain_themselves_on_cuda():
    for name, (probe, _) in IMPLS.items():
        ok, why = probe("cuda")
        assert isinstance(ok, bool) and why, f"{name}: probe must give a reason"
