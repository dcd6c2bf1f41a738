"""GSPO (sequence-ratio clipping, GSPO-token form) against per-sequence loop references."""

from __future__ import annotations

import math

import pytest
import torch
from test_algo_reference import ref_aggregate

from lmm_r1_ascend.algorithms import AlgorithmConfig, actor_loss, gspo_policy_loss, ppo_policy_loss
from lmm_r1_ascend.algorithms.losses import POLICY_LOSSES

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
CONST = 16.0
EPS = [(3e-4, 4e-4), (0.2, 0.28)]  # the paper's range, and a PPO-sized one
LAYOUTS = ["padded", "packed"]
TOL64 = dict(rtol=1e-9, atol=1e-12)  # float64 against Python-float loops: rounding only
LENGTHS = [1, 0, 5, 9, 3, 7, 6]  # a length-1 sequence, an empty one; seq 4 has no action token


# ---------------------------------------------------------------- reference (plain loops)


def _agg_coef(mode: str, counts: list[int]) -> list[float]:
    """Per-sequence factor that multiplies each token loss of sequence i in the aggregate."""
    n_tok, n_seq = sum(counts), sum(1 for c in counts if c > 0)
    out = []
    for c in counts:
        if c == 0:
            out.append(0.0)
        elif mode == "token-mean":
            out.append(1.0 / n_tok)
        elif mode == "seq-mean-token-mean":
            out.append(1.0 / (c * n_seq))
        elif mode == "seq-mean-token-sum":
            out.append(1.0 / n_seq)
        else:
            out.append(1.0 / (n_seq * CONST))
    return out


def ref_gspo(seqs, lo: float, hi: float, mode: str, weights=None) -> dict:
    """seqs: per sequence (lp, old, adv, mask) lists. s_i = exp(mean over the action tokens of
    lp - old); token loss max(-A s_i, -A clip(s_i, 1 - lo, 1 + hi)) (times the weight); the
    GSPO-token gradient of token t is -A_t s_i (times weight and aggregation factor) where the
    unclipped term is active, 0 where the clipped one is."""
    counts = [sum(1 for keep in m if keep) for *_, m in seqs]
    coef = _agg_coef(mode, counts)
    tok_loss, grads, ratios, kls, clipped_hits = [], [], [], [], 0
    for i, (lp, old, adv, m) in enumerate(seqs):
        idx = [t for t in range(len(m)) if m[t]]
        mean_lr = sum(lp[t] - old[t] for t in idx) / max(len(idx), 1)
        s = math.exp(mean_lr)
        row_loss, row_grad = [], []
        for t in range(len(m)):
            if not m[t]:
                row_loss.append(0.0)
                row_grad.append(0.0)
                continue
            w = 1.0 if weights is None else weights[i][t]
            unclipped = -adv[t] * s
            clipped = -adv[t] * min(max(s, 1 - lo), 1 + hi)
            clip_active = clipped > unclipped
            clipped_hits += clip_active
            row_loss.append(max(unclipped, clipped) * w)
            row_grad.append(0.0 if clip_active else -adv[t] * s * w * coef[i])
            ratios.append(s)
            kls.append(s - 1 - mean_lr)
        tok_loss.append(row_loss)
        grads.append(row_grad)
    n = max(len(ratios), 1)
    return dict(
        loss=ref_aggregate(tok_loss, [m for *_, m in seqs], mode, CONST),
        grads=grads, clip_frac=clipped_hits / n, clipped_hits=clipped_hits, n=len(ratios),
        ratio_mean=sum(ratios) / n, ratios=ratios, approx_kl=sum(kls) / n,
    )


def ref_sequence_autograd(lp: torch.Tensor, seqs, lo, hi, mode) -> torch.Tensor:
    """Gradient wrt the flat list of log-probs of the *sequence-level* objective: per sequence
    s_i = exp(mean(lp - old)) with the gradient flowing through the mean, one loss
    max(-A_i s_i, -A_i clip(s_i)) per sequence (sequence-constant advantages), weighted by
    the aggregation as if it sat on each of its c_i tokens. lp: flat float64 leaf."""
    counts = [sum(1 for keep in m if keep) for *_, m in seqs]
    coef = _agg_coef(mode, counts)
    total = lp.new_zeros(())
    start = 0
    for i, (_, old, adv, m) in enumerate(seqs):
        idx = [start + t for t in range(len(m)) if m[t]]
        if idx:
            a = adv[m.index(True)]
            diffs = torch.stack([lp[j] - old[j - start] for j in idx])
            s = torch.exp(diffs.mean())
            f = torch.maximum(-a * s, -a * s.clamp(1 - lo, 1 + hi))
            total = total + coef[i] * len(idx) * f
        start += len(m)
    (g,) = torch.autograd.grad(total, lp)
    return g


# ---------------------------------------------------------------- inputs


def _sequences(seed: int, seq_adv: bool = False, noise: float = 0.1):
    """Per sequence (lp, old, adv, mask) Python lists (float64 values). Off-mask log-probs
    are far from old (a leak would show). Plants so every branch runs whatever the draw:
    seq 2 has lp == old (s = 1, in range), seq 3 s = e^0.5 with A = +1 (clipped active),
    seq 5 s = e^-0.5 with A = +1 (below the range but the unclipped term is the larger)."""
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for i, n in enumerate(LENGTHS):
        m = (torch.rand(n, generator=gen) > 0.25).tolist()
        if n:
            m[-1] = True
        if i == 4:
            m = [False] * n
        old = (-torch.rand(n, generator=gen, dtype=torch.float64) * 3).tolist()
        lp = (torch.tensor(old, dtype=torch.float64) + torch.randn(n, generator=gen, dtype=torch.float64) * noise)
        adv = torch.randn(n, generator=gen, dtype=torch.float64)
        if seq_adv:
            adv = adv[:1].expand(n) if n else adv
        lp, adv = lp.tolist(), adv.tolist()
        if i == 2:
            lp = list(old)
        if i in (3, 5):
            lp = [o + (0.5 if i == 3 else -0.5) for o in old]
            adv = [1.0] * n
        lp = [x if keep else x + 7.0 for x, keep in zip(lp, m)]
        seqs.append((lp, old, adv, m))
    return seqs


def _tensors(seqs, layout: str, requires_grad: bool = True):
    """(lp, old, adv, mask, cu_seqlens) tensors; lp is a float64 leaf in the flat token order
    (the packed order), so gradients of both layouts compare directly."""
    flat = [x for lp, *_ in seqs for x in lp]
    lp_flat = torch.tensor(flat, dtype=torch.float64, requires_grad=requires_grad)
    cu = [0]
    for s in seqs:
        cu.append(cu[-1] + len(s[3]))
    if layout == "packed":
        old = torch.tensor([x for _, o, _, _ in seqs for x in o], dtype=torch.float64)
        adv = torch.tensor([x for _, _, a, _ in seqs for x in a], dtype=torch.float64)
        mask = torch.tensor([x for *_, m in seqs for x in m], dtype=torch.bool)
        return lp_flat, lp_flat, old, adv, mask, torch.tensor(cu)
    width = max(LENGTHS)
    rows = []
    old = torch.full((len(seqs), width), -1.0, dtype=torch.float64)
    adv = torch.full((len(seqs), width), 3.0, dtype=torch.float64)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, (_, o, a, m) in enumerate(seqs):
        n = len(m)
        pad = torch.full((width - n,), 4.0, dtype=torch.float64)  # padding: off the mask
        rows.append(torch.cat([lp_flat[cu[i]:cu[i + 1]], pad]))
        old[i, :n] = torch.tensor(o, dtype=torch.float64)
        adv[i, :n] = torch.tensor(a, dtype=torch.float64)
        mask[i, :n] = torch.tensor(m, dtype=torch.bool)
    return lp_flat, torch.stack(rows), old, adv, mask, None


def _layout(values, layout: str, fill: float) -> torch.Tensor:
    """Per-sequence float lists as a packed (T,) or padded (B, max length) tensor."""
    if layout == "packed":
        return torch.tensor([x for row in values for x in row], dtype=torch.float64)
    out = torch.full((len(values), max(LENGTHS)), fill, dtype=torch.float64)
    for i, row in enumerate(values):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    return out


def _flat(grads) -> torch.Tensor:
    return torch.tensor([g for row in grads for g in row], dtype=torch.float64)


# ---------------------------------------------------------------- tests


def test_registered():
    assert POLICY_LOSSES.get("gspo").fn is gspo_policy_loss
    assert POLICY_LOSSES.get("gspo").agg_mode == "seq-mean-token-mean"  # the paper's sequence-level mean
    assert POLICY_LOSSES.names() == ["gspo", "ppo"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("mode", MODES)
def test_gspo_loss_gradient_and_diagnostics_match_loop(rng_seed, mode, eps, layout):
    seqs = _sequences(rng_seed)
    leaf, lp, old, adv, mask, cu = _tensors(seqs, layout)
    out = gspo_policy_loss(lp, old, adv, mask, eps_clip_low=eps[0], eps_clip_high=eps[1], agg_mode=mode,
                           cu_seqlens=cu, constant=CONST)
    want = ref_gspo(seqs, *eps, mode)
    assert float(out.loss.detach()) == pytest.approx(want["loss"], rel=1e-9, abs=1e-12)
    (grad,) = torch.autograd.grad(out.loss, leaf)
    torch.testing.assert_close(grad, _flat(want["grads"]), **TOL64)
    assert float(out.clip_frac) == pytest.approx(want["clip_frac"], rel=1e-9)
    assert float(out.ratio_mean) == pytest.approx(want["ratio_mean"], rel=1e-9)
    assert (float(out.ratio_min), float(out.ratio_max)) == pytest.approx(
        (min(want["ratios"]), max(want["ratios"])), rel=1e-9)
    assert float(out.approx_kl) == pytest.approx(want["approx_kl"], rel=1e-9, abs=1e-15)
    assert float(out.dual_clip_frac) == 0.0
    assert 0 < want["clipped_hits"] < want["n"]  # the planted sequences: both branches ran
    assert not out.clip_frac.requires_grad and out.loss.requires_grad
    assert set(out.metrics()) == {f"policy/{k}" for k in ("loss", "clip_frac", "dual_clip_frac", "approx_kl",
                                                           "ratio_min", "ratio_max", "ratio_mean")}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_gspo_token_gradient_is_the_sequence_objectives_for_sequence_advantages(rng_seed, mode, layout):
    # With one advantage per sequence, GSPO-token's gradient -A s_i grad(lp_t) (scaled) equals
    # autograd through the sequence-level objective exp(mean(lp - old)): d s_i / d lp_t =
    # s_i / c_i, and the sequence's c_i token copies of the loss cancel the 1 / c_i.
    seqs = _sequences(rng_seed, seq_adv=True)
    for eps in EPS:
        leaf, lp, old, adv, mask, cu = _tensors(seqs, layout)
        out = gspo_policy_loss(lp, old, adv, mask, eps_clip_low=eps[0], eps_clip_high=eps[1], agg_mode=mode,
                               cu_seqlens=cu)
        (grad,) = torch.autograd.grad(out.loss, leaf)
        ref_leaf = torch.tensor(leaf.tolist(), dtype=torch.float64, requires_grad=True)
        torch.testing.assert_close(grad, ref_sequence_autograd(ref_leaf, seqs, *eps, mode), **TOL64)
        # the hand formula too: unclipped tokens get -A s_i / N (token-mean), clipped ones 0
        torch.testing.assert_close(grad, _flat(ref_gspo(seqs, *eps, mode)["grads"]), **TOL64)
        # the clipped sequence (seq 3: s = e^0.5 > 1 + hi, A > 0) gets no gradient at all
        a, b = sum(LENGTHS[:3]), sum(LENGTHS[:4])
        assert grad[a:b].eq(0).all()


@pytest.mark.parametrize("mode", MODES)
def test_packed_equals_padded(rng_seed, mode):
    seqs = _sequences(rng_seed)
    results = []
    for layout in LAYOUTS:
        leaf, lp, old, adv, mask, cu = _tensors(seqs, layout)
        out = gspo_policy_loss(lp, old, adv, mask, agg_mode=mode, cu_seqlens=cu, constant=CONST)
        results.append((out, torch.autograd.grad(out.loss, leaf)[0]))
    (pad, g_pad), (pack, g_pack) = results
    assert float(pack.loss.detach()) == pytest.approx(float(pad.loss.detach()), rel=1e-12, abs=1e-15)
    torch.testing.assert_close(g_pack, g_pad, **TOL64)
    for key in ("clip_frac", "approx_kl", "ratio_min", "ratio_max", "ratio_mean"):
        assert float(getattr(pack, key)) == pytest.approx(float(getattr(pad, key)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_equal_log_probs_give_ratio_one(rng_seed, layout):
    seqs = [(list(old), old, adv, m) for _, old, adv, m in _sequences(rng_seed)]
    _, lp, old, adv, mask, cu = _tensors(seqs, layout)
    out = gspo_policy_loss(lp, old, adv, mask, agg_mode="token-mean", cu_seqlens=cu)
    assert float(out.loss.detach()) == pytest.approx(-float(adv[mask].mean()), rel=1e-12)
    assert (float(out.ratio_min), float(out.ratio_max), float(out.ratio_mean)) == (1.0, 1.0, 1.0)
    assert float(out.clip_frac) == 0.0 and float(out.approx_kl) == 0.0


def test_all_masked_batch_gives_zero_loss_without_nan():
    for layout, shape, cu in (("padded", (3, 4), None), ("packed", (7,), [0, 3, 3, 7])):
        lp = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        mask = torch.zeros(shape, dtype=torch.bool)
        for mode in MODES:
            out = gspo_policy_loss(lp, lp.detach() - 50, torch.ones(shape, dtype=torch.float64), mask,
                                   agg_mode=mode, cu_seqlens=cu, constant=CONST)
            (grad,) = torch.autograd.grad(out.loss, lp)
            assert float(out.loss.detach()) == 0.0, layout
            assert grad.eq(0).all() and torch.isfinite(grad).all()
            assert float(out.clip_frac) == 0.0 and not math.isnan(float(out.approx_kl))


@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("mode", MODES)
def test_one_action_token_per_sequence_equals_ppo(rng_seed, mode, eps):
    # s_i is then the token's own ratio: GSPO is PPO, value and gradient
    gen = torch.Generator().manual_seed(rng_seed)
    b, length = 6, 4
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[torch.arange(b), torch.randint(0, length, (b,), generator=gen)] = True
    old = -torch.rand(b, length, generator=gen, dtype=torch.float64) * 3
    lp = (old + torch.randn(b, length, generator=gen, dtype=torch.float64) * 0.3).requires_grad_(True)
    adv = torch.randn(b, length, generator=gen, dtype=torch.float64)
    kw = dict(eps_clip_low=eps[0], eps_clip_high=eps[1], agg_mode=mode, constant=CONST)
    g = gspo_policy_loss(lp, old, adv, mask, **kw)
    p = ppo_policy_loss(lp, old, adv, mask, **kw)
    assert float(g.loss.detach()) == pytest.approx(float(p.loss.detach()), rel=1e-12)
    torch.testing.assert_close(torch.autograd.grad(g.loss, lp)[0], torch.autograd.grad(p.loss, lp)[0], **TOL64)
    for key in ("clip_frac", "approx_kl", "ratio_mean", "ratio_min", "ratio_max"):
        assert float(getattr(g, key)) == pytest.approx(float(getattr(p, key)), rel=1e-12, abs=1e-15)
    # packed length-1 sequences: the same again
    g1 = gspo_policy_loss(lp[mask], old[mask], adv[mask], torch.ones(b, dtype=torch.bool),
                          cu_seqlens=list(range(b + 1)), **kw)
    assert float(g1.loss.detach()) == pytest.approx(float(p.loss.detach()), rel=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_weights_multiply_the_token_loss(rng_seed, layout):
    seqs = _sequences(rng_seed)
    mode = "seq-mean-token-mean"
    leaf, lp, old, adv, mask, cu = _tensors(seqs, layout)
    kw = dict(agg_mode=mode, cu_seqlens=cu, eps_clip_low=0.2, eps_clip_high=0.28)
    plain = gspo_policy_loss(lp, old, adv, mask, **kw)
    g_plain = torch.autograd.grad(plain.loss, leaf)[0]
    ones = gspo_policy_loss(lp, old, adv, mask, weights=torch.ones_like(old), **kw)
    assert float(ones.loss.detach()) == float(plain.loss.detach())
    torch.testing.assert_close(torch.autograd.grad(ones.loss, leaf)[0], g_plain, rtol=0, atol=0)
    zeros = gspo_policy_loss(lp, old, adv, mask, weights=torch.zeros_like(old), **kw)
    assert float(zeros.loss.detach()) == 0.0
    assert torch.autograd.grad(zeros.loss, leaf)[0].eq(0).all()
    assert float(zeros.clip_frac) == float(plain.clip_frac)  # diagnostics are unweighted
    gen = torch.Generator().manual_seed(rng_seed + 1)
    w_seq = [torch.rand(len(m), generator=gen, dtype=torch.float64).mul(2).tolist() for *_, m in seqs]
    w = _layout(w_seq, layout, fill=9.0).requires_grad_(True)  # detached inside: no gradient reaches the weights
    out = gspo_policy_loss(lp, old, adv, mask, weights=w, **kw)
    want = ref_gspo(seqs, 0.2, 0.28, mode, weights=w_seq)
    assert float(out.loss.detach()) == pytest.approx(want["loss"], rel=1e-9, abs=1e-12)
    g_leaf, g_w = torch.autograd.grad(out.loss, [leaf, w], allow_unused=True)
    torch.testing.assert_close(g_leaf, _flat(want["grads"]), **TOL64)
    assert g_w is None or g_w.eq(0).all()


def test_gspo_errors():
    z, m = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="takes no dual_clip"):
        gspo_policy_loss(z, z, z, m, dual_clip=3.0)
    with pytest.raises(ValueError, match="0 < eps_clip_low < 1"):
        gspo_policy_loss(z, z, z, m, eps_clip_low=1.0)
    with pytest.raises(ValueError, match="eps_clip_high > 0"):
        gspo_policy_loss(z, z, z, m, eps_clip_high=0.0)
    with pytest.raises(ValueError, match="weights"):
        gspo_policy_loss(z, z, z, m, weights=torch.ones(3))
    with pytest.raises(TypeError, match="bool"):
        gspo_policy_loss(z, z, z, torch.ones(2, 3))


def test_actor_loss_uses_the_gspo_clip_range():
    # every sequence has ratio 1.001 and A = +1: beyond gspo's default 1 + 4e-4 (clipped to
    # 1.0004), inside 1 + 0.01; PPO's eps_clip (here tiny) plays no part for gspo.
    old = -torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lp = old + math.log(1.001)
    adv = torch.ones_like(old)
    mask = torch.ones_like(old, dtype=torch.bool)
    mask[1, 3:] = False
    base = dict(policy_loss="gspo", loss_agg_mode="token-mean", eps_clip=1e-5)
    tight = actor_loss(AlgorithmConfig(**base), lp, old, adv, mask)
    assert float(tight.policy.clip_frac) == 1.0
    assert float(tight.loss.detach()) == pytest.approx(-1.0004, rel=1e-12)
    wide = actor_loss(AlgorithmConfig(**base, gspo_clip_high=0.01), lp, old, adv, mask)
    assert float(wide.policy.clip_frac) == 0.0
    assert float(wide.loss.detach()) == pytest.approx(-1.001, rel=1e-12)
    # and the PPO path ignores the gspo range: eps_clip 1e-5 clips 1.001 to 1.00001
    ppo = actor_loss(AlgorithmConfig(loss_agg_mode="token-mean", eps_clip=1e-5, gspo_clip_high=0.01),
                     lp, old, adv, mask)
    assert float(ppo.loss.detach()) == pytest.approx(-1.00001, rel=1e-12)
    # correction weights reach the policy term
    w = torch.full_like(old, 0.5)
    half = actor_loss(AlgorithmConfig(**base, gspo_clip_high=0.01), lp, old, adv, mask, correction_weights=w)
    assert float(half.loss.detach()) == pytest.approx(-0.5005, rel=1e-12)
