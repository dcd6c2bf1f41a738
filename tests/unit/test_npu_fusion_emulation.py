"""The npu_fusion_attention emulation pinned to the documented torch_npu contract (the pinned
wheel's docs; tests/vendor holds it to the wheel's schema and Meta kernels).

The independent reference here is a float64 softmax over an explicit "allowed" matrix
(`naive`), per batch element and head; it shares no code with the emulation.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmm_r1_ascend.kernels.npu_emulation import npu_fusion_attention

COMPRESSED = torch.triu(torch.ones(2048, 2048), diagonal=1).bool()
# Everything below runs in fp32 with <= 9 keys and D = 8: about 1e-6 of accumulated
# rounding at most, so 1e-5 separates "same formula" from "different masking/scale" (O(0.1)).
FP32 = dict(atol=1e-5, rtol=1e-5)


def naive(q, k, v, allowed, scale):
    """q (N1, Sq, D), k/v (N2, Skv, D), allowed (Sq, Skv) bool, True = may attend.

    Returns out (N1, Sq, D) and lse (N1, Sq) in float64.
    """
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[0] // k.shape[0]
    outs, lses = [], []
    for h in range(q.shape[0]):
        scores = (q[h] @ k[h // group].T) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        m = scores.max(dim=1, keepdim=True).values
        w = torch.exp(scores - m)
        outs.append(w / w.sum(1, keepdim=True) @ v[h // group])
        lses.append((m + torch.log(w.sum(1, keepdim=True))).squeeze(1))
    return torch.stack(outs), torch.stack(lses)


def causal(sq, skv, bottom_right=True):
    offset = skv - sq if bottom_right else 0
    return torch.arange(skv)[None, :] <= torch.arange(sq)[:, None] + offset


def tnd_batch(lengths, n1=4, n2=2, d=8, dtype=torch.float32):
    t = sum(lengths)
    ends = tuple(torch.tensor(lengths).cumsum(0).tolist())
    return (torch.randn(t, n1, d).to(dtype), torch.randn(t, n2, d).to(dtype), torch.randn(t, n2, d).to(dtype), ends)


def per_sequence_naive(q, k, v, ends, scale, causal_mask=True):
    outs, lses = [], []
    for s, e in zip((0,) + ends, ends):
        qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))
        allowed = causal(e - s, e - s) if causal_mask else torch.ones(e - s, e - s, dtype=torch.bool)
        out, lse = naive(qs, ks, vs, allowed, scale)
        outs.append(out.transpose(0, 1))
        lses.append(lse.transpose(0, 1))
    return torch.cat(outs), torch.cat(lses)


def test_tnd_causal_matches_formula_with_outputs_tuple(rng_seed):
    q, k, v, ends = tnd_batch([3, 1, 5, 2])
    scale = 1 / math.sqrt(8)
    res = npu_fusion_attention(q, k, v, 4, "TND", atten_mask=COMPRESSED, scale=scale, actual_seq_qlen=ends,
                               actual_seq_kvlen=ends, sparse_mode=3, softmax_layout="TND")
    assert len(res) == 7 and res[4:] == (0, 0, 0) and res[3].numel() == 0
    out, smax, ssum = res[:3]
    # softmax_max/sum: float32, (T, N1, 8) with the value replicated over the trailing 8
    assert smax.shape == ssum.shape == (11, 4, 8) and smax.dtype == torch.float32
    assert torch.equal(smax, smax[..., :1].expand_as(smax)) and torch.equal(ssum, ssum[..., :1].expand_as(ssum))
    want_out, want_lse = per_sequence_naive(q, k, v, ends, scale)
    torch.testing.assert_close(out.double(), want_out, **FP32)
    torch.testing.assert_close((smax[..., 0] + torch.log(ssum[..., 0])).double(), want_lse, **FP32)


def test_gradients_match_gradcheck_in_float64(rng_seed, monkeypatch):
    """TND, GQA, bottom-right causal and a length-1 sequence, against numerical derivatives.

    The op takes fp16/bf16/fp32 only (documented); gradcheck needs float64, so the dtype check
    is lifted for this test alone: the arithmetic under test is the same."""
    from lmm_r1_ascend.kernels.npu_emulation import fusion_attention as fa

    monkeypatch.setattr(fa, "_DTYPES", fa._DTYPES + (torch.float64,))
    q, k, v, ends = tnd_batch([2, 1, 3], n1=2, n2=1, d=3, dtype=torch.float64)

    def f(q, k, v):
        out, smax, ssum = npu_fusion_attention(q, k, v, 2, "TND", atten_mask=COMPRESSED, scale=0.7,
                                               actual_seq_qlen=ends, actual_seq_kvlen=ends, sparse_mode=3,
                                               softmax_layout="TND")[:3]
        return out, smax[..., 0] + torch.log(ssum[..., 0])  # lse is differentiable in the emulation

    assert torch.autograd.gradcheck(f, tuple(x.requires_grad_() for x in (q, k, v)))


@pytest.mark.parametrize("lengths,heads", [([3, 1, 5, 2], 4), ([2, 2], 4), ([1], 1)])
def test_tnd_softmax_layout_default_ntd_and_explicit_tnd(rng_seed, lengths, heads):
    """Documented: with TND input, softmax_max/sum are NTD-ordered unless softmax_layout='TND';
    the tensor's shape is (T, N, 8) either way. T != N, T == N (4 tokens, 4 heads) and T == N == 1."""
    q, k, v, ends = tnd_batch(lengths, n1=heads, n2=1)
    t = sum(lengths)
    kw = dict(atten_mask=COMPRESSED, scale=0.3, actual_seq_qlen=ends, actual_seq_kvlen=ends, sparse_mode=3)
    _, want_lse = per_sequence_naive(q, k, v, ends, 0.3)  # (T, N)
    tnd = npu_fusion_attention(q, k, v, heads, "TND", softmax_layout="TND", **kw)
    ntd = npu_fusion_attention(q, k, v, heads, "TND", **kw)
    for res in (tnd, ntd):
        assert res[1].shape == res[2].shape == (t, heads, 8)
    torch.testing.assert_close((tnd[1][..., 0] + tnd[2][..., 0].log()).double(), want_lse, **FP32)
    as_ntd = (ntd[1].reshape(heads, t, 8)[..., 0] + ntd[2].reshape(heads, t, 8)[..., 0].log()).transpose(0, 1)
    torch.testing.assert_close(as_ntd.double(), want_lse, **FP32)
    if t * heads > 1:  # a (T, N) reading of NTD data is wrong (T == N: it is the transpose)
        assert not torch.allclose((ntd[1][..., 0] + ntd[2][..., 0].log()).double(), want_lse, **FP32)


@pytest.mark.parametrize("bad", ["leading_zero", "per_sequence", "tensor", "not_increasing", "short", "missing"])
def test_cumulative_lengths_without_leading_zero_are_required(rng_seed, bad):
    """Pinned: anything but cumulative ends without 0 is REJECTED (never silently misread)."""
    lengths = [3, 5, 2]
    q, k, v, ends = tnd_batch(lengths)
    assert ends == (3, 8, 10)
    given, err, text = {
        "leading_zero": ((0, 3, 8, 10), ValueError, "WITHOUT the leading zero"),
        "per_sequence": (tuple(lengths), ValueError, "not strictly increasing"),
        "tensor": (torch.tensor(ends), TypeError, "host list"),
        "not_increasing": ((3, 3, 10), ValueError, "not strictly increasing"),
        "short": ((3, 8), ValueError, "must equal the total"),
        "missing": (None, ValueError, "needs actual_seq_qlen"),
    }[bad]
    with pytest.raises(err, match=text):
        npu_fusion_attention(q, k, v, 4, "TND", scale=0.3, actual_seq_qlen=given, actual_seq_kvlen=ends)
    # per-sequence lengths that happen to increase are caught by the total check
    with pytest.raises(ValueError, match="must equal the total"):
        npu_fusion_attention(q, k, v, 4, "TND", actual_seq_qlen=(1, 2, 4), actual_seq_kvlen=(1, 2, 4))


def test_true_means_masked_out(rng_seed):
    q, k, v = torch.randn(2, 6, 4, 8), torch.randn(2, 7, 2, 8), torch.randn(2, 7, 2, 8)  # BSND
    mask = torch.rand(6, 7) < 0.4
    mask[:, 0] = False  # every query keeps at least one key
    out = npu_fusion_attention(q, k, v, 4, "BSND", atten_mask=mask, scale=0.5)[0]
    as_uint8 = npu_fusion_attention(q, k, v, 4, "BSND", atten_mask=mask.to(torch.uint8), scale=0.5)[0]
    assert torch.equal(out, as_uint8)
    # the opposite reading (True = may attend; rows with no True see everything)
    inverted = mask | ~mask.any(1, keepdim=True)
    for b in range(2):
        qb, kb, vb = (x[b].transpose(0, 1) for x in (q, k, v))
        want, _ = naive(qb, kb, vb, ~mask, 0.5)
        torch.testing.assert_close(out[b].transpose(0, 1).double(), want, **FP32)
        wrong, _ = naive(qb, kb, vb, inverted, 0.5)
        assert not torch.allclose(out[b].transpose(0, 1).double(), wrong, **FP32)


def test_sparse_mode_0_band_and_mode_1_ignoring_it(rng_seed):
    """Mode 0: mask OR the band -pre_tockens <= j - i <= next_tockens; mode 1: the mask alone."""
    q, k, v = torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8)  # BSND
    nothing = torch.zeros(6, 6, dtype=torch.bool)
    qh, kh, vh = (x[0].transpose(0, 1) for x in (q, k, v))
    out = npu_fusion_attention(q, k, v, 2, "BSND", atten_mask=nothing, scale=0.5, pre_tockens=2, next_tockens=0)[0]
    rel = torch.arange(6)[None, :] - torch.arange(6)[:, None]  # j - i
    want, _ = naive(qh, kh, vh, (rel <= 0) & (rel >= -2), 0.5)
    torch.testing.assert_close(out[0].transpose(0, 1).double(), want, **FP32)
    out1 = npu_fusion_attention(q, k, v, 2, "BSND", atten_mask=nothing, scale=0.5, pre_tockens=2, next_tockens=0,
                                sparse_mode=1)[0]
    want1, _ = naive(qh, kh, vh, ~nothing, 0.5)
    torch.testing.assert_close(out1[0].transpose(0, 1).double(), want1, **FP32)


@pytest.mark.parametrize("sq,skv", [(5, 5), (3, 7)])
def test_sparse_modes_2_and_3_are_top_left_and_bottom_right_causal(rng_seed, sq, skv):
    q, k, v = torch.randn(1, 4, sq, 8), torch.randn(1, 4, skv, 8), torch.randn(1, 4, skv, 8)  # BNSD
    for mode, bottom_right in ((3, True), (2, False)):
        out, smax, ssum = npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=COMPRESSED, scale=0.4,
                                               sparse_mode=mode)[:3]
        assert smax.shape == (1, 4, sq, 8)
        want, lse = naive(q[0], k[0], v[0], causal(sq, skv, bottom_right), 0.4)
        torch.testing.assert_close(out[0].double(), want, **FP32)
        torch.testing.assert_close((smax[..., 0] + ssum[..., 0].log())[0].double(), lse, **FP32)
    # the compressed mask is the only mask modes 2/3 accept
    with pytest.raises(ValueError, match="compressed causal mask"):
        npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=~causal(sq, skv), scale=0.4, sparse_mode=3)


def test_atten_mask_none_is_not_causal_whatever_sparse_mode(rng_seed):
    q, k, v, ends = tnd_batch([4, 3])
    out = npu_fusion_attention(q, k, v, 4, "TND", atten_mask=None, scale=0.3, actual_seq_qlen=ends,
                               actual_seq_kvlen=ends, sparse_mode=3)[0]
    full, _ = per_sequence_naive(q, k, v, ends, 0.3, causal_mask=False)
    caus, _ = per_sequence_naive(q, k, v, ends, 0.3, causal_mask=True)
    torch.testing.assert_close(out.double(), full, **FP32)
    assert not torch.allclose(out.double(), caus, **FP32)


def test_default_scale_is_one_not_inverse_sqrt_d(rng_seed):
    q, k, v, ends = tnd_batch([4, 5], d=16)
    out = npu_fusion_attention(q, k, v, 4, "TND", atten_mask=COMPRESSED, actual_seq_qlen=ends,
                               actual_seq_kvlen=ends, sparse_mode=3)[0]
    unit, _ = per_sequence_naive(q, k, v, ends, 1.0)
    usual, _ = per_sequence_naive(q, k, v, ends, 1 / math.sqrt(16))
    torch.testing.assert_close(out.double(), unit, **FP32)
    assert not torch.allclose(out.double(), usual, **FP32)


def test_layouts_agree_for_equal_length_batches(rng_seed):
    b, s, n1, n2, d = 3, 5, 4, 2, 8
    q, k, v = torch.randn(b, s, n1, d), torch.randn(b, s, n2, d), torch.randn(b, s, n2, d)  # BSND
    kw = dict(atten_mask=COMPRESSED, scale=0.35, sparse_mode=3)
    ref_out, ref_max, ref_sum = npu_fusion_attention(q, k, v, n1, "BSND", **kw)[:3]
    ends = tuple(range(s, b * s + 1, s))
    tnd = npu_fusion_attention(*(x.reshape(b * s, -1, d) for x in (q, k, v)), n1, "TND",
                               actual_seq_qlen=ends, actual_seq_kvlen=ends, softmax_layout="TND", **kw)
    # Same per-sequence arithmetic in both paths: 1e-6 covers matmul blocking differences.
    torch.testing.assert_close(tnd[0].reshape(b, s, n1, d), ref_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(tnd[1].reshape(b, s, n1, 8).transpose(1, 2), ref_max, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(tnd[2].reshape(b, s, n1, 8).transpose(1, 2), ref_sum, atol=1e-6, rtol=1e-6)
    others = {
        "BNSD": (lambda x: x.transpose(1, 2), lambda o: o.transpose(1, 2)),
        "BSH": (lambda x: x.reshape(b, s, -1), lambda o: o.reshape(b, s, n1, d)),
        "SBH": (lambda x: x.reshape(b, s, -1).transpose(0, 1), lambda o: o.transpose(0, 1).reshape(b, s, n1, d)),
    }
    for layout, (to, back) in others.items():
        out = npu_fusion_attention(to(q), to(k), to(v), n1, layout, **kw)[0]
        torch.testing.assert_close(back(out), ref_out, atol=1e-6, rtol=1e-6, msg=lambda m, lay=layout: f"{lay}: {m}")


def test_bf16_keeps_dtype_and_float32_statistics(rng_seed):
    q, k, v, ends = tnd_batch([2, 3], dtype=torch.bfloat16)
    out, smax, ssum = npu_fusion_attention(q, k, v, 4, "TND", atten_mask=COMPRESSED, scale=0.3,
                                           actual_seq_qlen=ends, actual_seq_kvlen=ends, sparse_mode=3)[:3]
    assert out.dtype == torch.bfloat16 and smax.dtype == ssum.dtype == torch.float32


def test_queries_seeing_no_key_give_zeros_not_nan(rng_seed):
    q, k, v = torch.randn(1, 6, 2, 8, requires_grad=True), torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8)
    out, smax, ssum = npu_fusion_attention(q, k, v, 2, "BSND", atten_mask=COMPRESSED, scale=0.3, sparse_mode=3)[:3]
    # bottom-right causal with Sq=6 > Skv=3: queries 0..2 see nothing
    assert torch.equal(out[0, :3], torch.zeros(3, 2, 8)) and torch.isinf(smax[0, :, :3]).all()
    assert torch.equal(ssum[0, :, :3], torch.zeros(2, 3, 8))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_invalid_arguments_raise_like_the_op():
    q, k, v, ends = tnd_batch([2, 2])
    tnd = dict(actual_seq_qlen=ends, actual_seq_kvlen=ends)
    cases = [
        ((q, k, v, 4, "NTD"), tnd, ValueError, "not supported"),
        ((q, k, v, 3, "TND"), tnd, ValueError, "head_num=3"),
        ((q, k[:, :1].expand(4, 3, 8), v[:, :1].expand(4, 3, 8), 4, "TND"), tnd, ValueError, "multiple of key/value"),
        ((q, k, v, 4, "TND"), dict(tnd, keep_prob=0.9), NotImplementedError, "keep_prob"),
        ((q, k, v, 4, "TND"), dict(tnd, keep_prob=0.0), ValueError, "keep_prob"),
        ((q, k, v, 4, "TND"), dict(tnd, atten_mask=COMPRESSED, sparse_mode=4), NotImplementedError, "sparse_mode=4"),
        ((q, k, v, 4, "TND"), dict(tnd, sparse_mode=9), ValueError, "sparse_mode=9"),
        ((q, k, v, 4, "TND"), dict(tnd, atten_mask=COMPRESSED.float(), sparse_mode=3), TypeError, "bool or uint8"),
        ((q, k, v, 4, "TND"), dict(tnd, pse=torch.zeros(1)), NotImplementedError, "pse"),
        ((q, k, v, 4, "TND"), dict(actual_seq_qlen=ends, actual_seq_kvlen=(4,)), ValueError, "sequences"),
        ((q[None], k[None], v[None], 4, "BSND"), tnd, ValueError, "TND' only"),
        ((q, k, v, 4, "BSND"), {}, ValueError, "4-D"),
        ((q[None], k[None], v[None], 4, "BSND"), dict(atten_mask=torch.zeros(3, 3, dtype=torch.bool)),
         ValueError, "documented shapes BNSS"),
        # documented constraints of the pinned wheel's _op_plugin_docs.py
        ((*(torch.stack([x, x]) for x in (q, k, v)), 4, "BSND"),
         dict(atten_mask=torch.zeros(1, 4, 4, 4, dtype=torch.bool)), ValueError, "documented shapes BNSS"),  # 1NSS is not one of BNSS / B1SS / 11SS / SS
        ((q.double(), k.double(), v.double(), 4, "TND"), tnd, TypeError, "float16, bfloat16 or float32"),
        ((q, k.half(), v.half(), 4, "TND"), tnd, TypeError, "share one dtype"),
        ((q, k, v, 4, "TND"), dict(tnd, padding_mask=torch.zeros(1)), ValueError, "padding_mask is not supported"),
        ((q, k, v, 4, "TND"), dict(tnd, softmax_layout="NTD"), ValueError, "only documented value"),
        ((q[None], k[None], v[None], 4, "BSND"), dict(softmax_layout="TND"), ValueError, "input_layout='TND' only"),
        ((q, k, v, 4, "TND"), dict(tnd, atten_mask=torch.zeros(4, 4, dtype=torch.bool)), ValueError,
         r"S = \(max Sq, max Skv\) = \(2, 2\)"),
        ((q, k, v, 4, "TND"), dict(tnd, atten_mask=torch.ones(2, 2, dtype=torch.bool).triu(0)), ValueError,
         "fully masked row"),
        ((q, k, v, 4, "TND"), dict(tnd, sparse_mode=5), ValueError, "not supported for varlen"),
        ((q[None], k[None], v[None], 4, "BSND"), dict(atten_mask=COMPRESSED, sparse_mode=7), ValueError,
         "TND' only"),
        ((q[None], k[None], v[None], 4, "BSND"), dict(atten_mask=torch.zeros(4, 4, dtype=torch.bool),
                                                     pre_tockens=1, next_tockens=-2), ValueError, "next_tockens=-2"),
        ((torch.randn(4, 4, 769), torch.randn(4, 2, 769), torch.randn(4, 2, 769), 4, "TND"), tnd, ValueError,
         "1..768"),
        ((torch.randn(4, 257, 8), torch.randn(4, 1, 8), torch.randn(4, 1, 8), 257, "TND"), tnd, ValueError,
         "1..256"),
        ((torch.randn(1025, 1, 8),) * 3 + (1, "TND"), dict(actual_seq_qlen=tuple(range(1, 1026)),
                                                          actual_seq_kvlen=tuple(range(1, 1026))),
         ValueError, "at most 1024"),
    ]
    for args, kwargs, err, text in cases:
        with pytest.raises(err, match=text):
            npu_fusion_attention(*args, **kwargs)


def test_compressed_mask_check_is_redone_after_an_in_place_change():
    """The emulation caches the (expensive) compressed-mask comparison per tensor and version."""
    from lmm_r1_ascend.kernels.npu_emulation import fusion_attention as fa

    mask = torch.triu(torch.ones(2048, 2048), diagonal=1).bool()
    assert fa._is_compressed_causal(mask)
    assert fa._is_compressed_causal(mask)  # cached
    mask[5, 3] = True  # now a leaky/wrong mask: the version bump forces a new comparison
    assert not fa._is_compressed_causal(mask)
    assert not fa._is_compressed_causal(torch.zeros(2048, 2048, dtype=torch.bool))
