"""Policy, value, entropy and KL losses and their aggregation, against loop references."""

from __future__ import annotations

import math

import pytest
import torch
from test_algo_reference import random_mask, ref_aggregate, ref_kl, ref_ppo_token, ref_value_token, to_rows

from lmm_r1_ascend.algorithms import (
    AGG_MODES,
    AlgorithmConfig,
    actor_loss,
    aggregate,
    broadcast_sequences,
    critic_loss,
    entropy_term,
    kl_loss,
    loss_normaliser,
    ppo_policy_loss,
    sequence_sums,
    token_counts,
    value_loss,
)

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
CONST = 16.0
TOL64 = dict(rtol=1e-9, atol=1e-12)  # float64 against Python-float loops: rounding only


def _inputs(seed, b=5, length=9, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (b,), generator=gen).tolist()
    lengths[0] = 1  # a length-1 response
    mask = random_mask(lengths, length, holes=True, gen=gen)
    mask[1] = False  # a fully masked sample
    old = -torch.rand(b, length, generator=gen, dtype=dtype) * 3
    lp = old + torch.randn(b, length, generator=gen, dtype=dtype) * 0.4  # ratios ~ 0.45 .. 2.2
    adv = torch.randn(b, length, generator=gen, dtype=dtype)
    # Plant tokens so every branch is exercised whatever the draw: ratio 2 with A > 0
    # (clipped term active) and ratio 5 with A < 0 (unclipped active; dual clip 3 binds).
    lp[0, 0], adv[0, 0] = old[0, 0] + math.log(2.0), 1.0
    t = int(mask[4].nonzero().max())
    lp[4, t], adv[4, t] = old[4, t] + math.log(5.0), -1.0
    return gen, mask, old, lp, adv


def _packed(x, mask):
    """Padded (B, L) -> packed (T,) of each row's first R_i entries, R_i = last True + 1."""
    lengths = [int(m.nonzero().max()) + 1 if m.any() else 1 for m in mask]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return torch.cat([row[:n] for row, n in zip(x, lengths)]), cu


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eps,dual", [((0.2, 0.2), None), ((0.2, 0.28), None), ((0.1, 0.3), 3.0)])
def test_ppo_loss_and_diagnostics_match_loop(rng_seed, mode, eps, dual):
    _, mask, old, lp, adv = _inputs(rng_seed)
    out = ppo_policy_loss(
        lp, old, adv, mask, eps_clip_low=eps[0], eps_clip_high=eps[1], dual_clip=dual, agg_mode=mode, constant=CONST
    )
    tok, clip, dual_hit, ratios, kls = [], 0, 0, [], []
    for row_lp, row_old, row_a, row_m in zip(to_rows(lp), to_rows(old), to_rows(adv), to_rows(mask)):
        tok.append([])
        for a, o, g, m in zip(row_lp, row_old, row_a, row_m):
            loss, c, d = ref_ppo_token(a, o, g, eps[0], eps[1], dual)
            tok[-1].append(loss)
            if m:
                clip, dual_hit = clip + c, dual_hit + d
                ratios.append(math.exp(a - o))
                kls.append(math.exp(a - o) - 1 - (a - o))
    n = len(ratios)
    assert float(out.loss) == pytest.approx(ref_aggregate(tok, to_rows(mask), mode, CONST), rel=1e-9)
    assert float(out.clip_frac) == pytest.approx(clip / n, rel=1e-9)
    assert float(out.dual_clip_frac) == pytest.approx(dual_hit / n, rel=1e-9)
    assert float(out.approx_kl) == pytest.approx(sum(kls) / n, rel=1e-9)
    assert (float(out.ratio_min), float(out.ratio_max)) == pytest.approx((min(ratios), max(ratios)), rel=1e-9)
    assert float(out.ratio_mean) == pytest.approx(sum(ratios) / n, rel=1e-9)
    assert 0 < clip < n and (dual is None or dual_hit > 0)  # planted tokens: every branch runs
    assert not out.clip_frac.requires_grad and out.loss.requires_grad is False  # inputs carry no grad here
    names = ("loss", "clip_frac", "dual_clip_frac", "approx_kl", "ratio_min", "ratio_max", "ratio_mean")
    assert set(out.metrics()) == {f"policy/{k}" for k in names}


def test_ppo_gradient_matches_hand_derivative(rng_seed):
    # token-mean: d loss / d lp_t = -A_t * r_t / N where the unclipped term is active, else 0.
    _, mask, old, lp, adv = _inputs(rng_seed)
    lp = lp.clone().requires_grad_(True)
    ppo_policy_loss(lp, old, adv, mask, eps_clip_low=0.2, eps_clip_high=0.2).loss.backward()
    n = int(mask.sum())
    want = torch.zeros_like(lp)
    for i, j in mask.nonzero().tolist():
        a, o, g = float(lp[i, j].detach()), float(old[i, j]), float(adv[i, j])
        _, clipped_active, _ = ref_ppo_token(a, o, g, 0.2, 0.2, None)
        # the clipped term only wins where the ratio is outside the clip range: no gradient
        want[i, j] = 0.0 if clipped_active else -g * math.exp(a - o) / n
    torch.testing.assert_close(lp.grad, want, **TOL64)
    assert lp.grad[~mask].eq(0).all()


def test_dual_clip_bounds_negative_advantage_loss():
    lp = torch.log(torch.tensor([[10.0, 10.0, 0.5]], dtype=torch.float64))
    old = torch.zeros_like(lp)
    adv = torch.tensor([[-1.0, 1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones_like(lp, dtype=torch.bool)
    out = ppo_policy_loss(lp, old, adv, mask, dual_clip=3.0, agg_mode="seq-mean-token-sum")
    # token 0: max(10, 1.2) = 10, bounded by 3; token 1: max(-10, -1.2) = -1.2; token 2: max(0.5, 0.8) = 0.8
    assert float(out.loss) == pytest.approx(3 - 1.2 + 0.8)
    assert float(out.dual_clip_frac) == pytest.approx(1 / 3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("clip", [0.2, None])
def test_value_loss_matches_loop(rng_seed, mode, clip):
    gen, mask, old_v, v, _ = _inputs(rng_seed)
    ret = old_v + torch.randn(old_v.shape, generator=gen, dtype=torch.float64)
    out = value_loss(v, old_v, ret, mask, value_clip=clip, agg_mode=mode, constant=CONST)
    tok, hits = [], []
    for rows in zip(to_rows(v), to_rows(old_v), to_rows(ret), to_rows(mask)):
        tok.append([])
        for a, o, r, m in zip(*rows):
            loss, hit = ref_value_token(a, o, r, clip)
            tok[-1].append(loss)
            if m:
                hits.append(hit)
    assert float(out.loss) == pytest.approx(ref_aggregate(tok, to_rows(mask), mode, CONST), rel=1e-9)
    assert float(out.clip_frac) == pytest.approx(sum(hits) / len(hits), rel=1e-9)
    assert float(out.values_mean) == pytest.approx(float(v[mask].mean()), rel=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_entropy_and_kl_terms_match_loop(rng_seed, mode):
    gen, mask, ref, lp, _ = _inputs(rng_seed)
    ent = torch.rand(lp.shape, generator=gen, dtype=torch.float64) * 2
    got = entropy_term(ent, mask, agg_mode=mode, constant=CONST)
    assert float(got) == pytest.approx(ref_aggregate(to_rows(ent), to_rows(mask), mode, CONST), rel=1e-9)
    for est in ("k1", "k2", "k3"):
        got = kl_loss(lp, ref, mask, estimator=est, agg_mode=mode, constant=CONST)
        tok = [[ref_kl(a, r, est, None) for a, r in zip(*rows)] for rows in zip(to_rows(lp), to_rows(ref))]
        assert float(got) == pytest.approx(ref_aggregate(tok, to_rows(mask), mode, CONST), rel=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_packed_layout_equals_padded(rng_seed, mode):
    _, mask, old, lp, adv = _inputs(rng_seed)
    lp = lp.clone().requires_grad_(True)
    padded = ppo_policy_loss(lp, old, adv, mask, agg_mode=mode, constant=CONST)
    (g_pad,) = torch.autograd.grad(padded.loss, lp)
    lp_p, cu = _packed(lp, mask)
    mask_p, _ = _packed(mask, mask)
    old_p, adv_p = _packed(old, mask)[0], _packed(adv, mask)[0]
    for offsets in (cu, cu.tolist()):  # a tensor, or a host list (no device sync)
        packed = ppo_policy_loss(lp_p, old_p, adv_p, mask_p, agg_mode=mode, cu_seqlens=offsets, constant=CONST)
        (g_pack,) = torch.autograd.grad(packed.loss, lp)
        assert float(packed.loss.detach()) == pytest.approx(float(padded.loss.detach()), rel=1e-12)
        torch.testing.assert_close(g_pack, g_pad, **TOL64)


def test_aggregation_normaliser_and_errors():
    counts = [3, 0, 5]
    assert loss_normaliser("token-mean", counts) == 8
    assert loss_normaliser("seq-mean-token-mean", counts) == 2  # the empty sequence does not count
    assert loss_normaliser("seq-mean-token-sum-norm", counts, 100) == 200
    assert loss_normaliser("token-mean", [0, 0]) == 1.0
    assert AGG_MODES.names() == sorted(MODES)
    x, m = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"unknown loss aggregation mode 'mean'.*valid names: seq-mean-token-mean"):
        aggregate(x, m, "mean")
    with pytest.raises(ValueError, match="positive constant"):
        aggregate(x, m, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="normaliser must be > 0"):
        aggregate(x, m, "token-mean", 0.0)
    with pytest.raises(TypeError, match="bool"):
        aggregate(x, torch.ones(2, 3), "token-mean")
    with pytest.raises(ValueError, match="pass cu_seqlens"):
        aggregate(torch.ones(6), torch.ones(6, dtype=torch.bool), "token-mean")
    with pytest.raises(ValueError, match="end at T=6"):
        aggregate(torch.ones(6), torch.ones(6, dtype=torch.bool), "token-mean", cu_seqlens=torch.tensor([0, 2, 5]))


def test_empty_mask_gives_zero_loss_and_finite_grad():
    lp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for mode in MODES:
        out = ppo_policy_loss(lp, lp.detach() - 50, torch.ones(2, 3), mask, agg_mode=mode, constant=CONST)
        out.loss.backward()
        assert float(out.loss.detach()) == 0 and lp.grad.eq(0).all()
        assert math.isnan(float(out.ratio_min)) and float(out.clip_frac) == 0


def test_loss_errors():
    z, m = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(z, z, torch.zeros(2, 4), m)
    with pytest.raises(TypeError, match="bool"):
        ppo_policy_loss(z, z, z, torch.ones(2, 3))
    with pytest.raises(ValueError, match="0 < eps_clip_low < 1"):
        ppo_policy_loss(z, z, z, m, eps_clip_low=1.5)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_policy_loss(z, z, z, m, dual_clip=0.5)
    with pytest.raises(ValueError, match="value_clip must be > 0"):
        value_loss(z, z, z, m, value_clip=-0.2)


def test_actor_and_critic_loss_compose(rng_seed):
    gen, mask, old, lp, adv = _inputs(rng_seed)
    ref = old - 0.1
    ent = torch.rand(lp.shape, generator=gen, dtype=torch.float64)
    mode = "seq-mean-token-mean"
    cfg = AlgorithmConfig(
        use_kl_loss=True, kl_loss_coef=0.3, entropy_loss_coef=0.01, loss_agg_mode=mode, eps_clip_high=0.28, dual_clip=3.0
    )
    out = actor_loss(cfg, lp, old, adv, mask, ref_log_probs=ref, entropy=ent)
    pg = ppo_policy_loss(lp, old, adv, mask, eps_clip_low=0.2, eps_clip_high=0.28, dual_clip=3.0, agg_mode=mode)
    kl = kl_loss(lp, ref, mask, estimator="k3", clamp=10.0, agg_mode=mode)
    e = entropy_term(ent, mask, agg_mode=mode)
    assert float(out.loss) == pytest.approx(float(pg.loss + 0.3 * kl - 0.01 * e), rel=1e-12)
    assert {"loss/actor", "loss/policy", "loss/kl", "policy/entropy", "policy/clip_frac"} <= set(out.metrics())
    with pytest.raises(ValueError, match="no ref_log_probs"):
        actor_loss(cfg, lp, old, adv, mask, entropy=ent)
    with pytest.raises(ValueError, match="needs the token entropies"):
        actor_loss(cfg, lp, old, adv, mask, ref_log_probs=ref)
    vcfg = AlgorithmConfig(advantage_estimator="gae", value_clip=None)
    assert float(critic_loss(vcfg, lp, old, adv, mask).loss) == pytest.approx(
        float(value_loss(lp, old, adv, mask, value_clip=None).loss), rel=1e-12
    )


@pytest.mark.parametrize("mode", MODES)
def test_ppo_weights_multiply_the_token_loss(rng_seed, mode):
    gen, mask, old, lp, adv = _inputs(rng_seed)
    lp = lp.clone().requires_grad_(True)
    kw = dict(eps_clip_low=0.2, eps_clip_high=0.28, dual_clip=3.0, agg_mode=mode, constant=CONST)
    plain = ppo_policy_loss(lp, old, adv, mask, **kw)
    (g_plain,) = torch.autograd.grad(plain.loss, lp)
    ones = ppo_policy_loss(lp, old, adv, mask, weights=torch.ones_like(old), **kw)
    (g_ones,) = torch.autograd.grad(ones.loss, lp)
    assert float(ones.loss.detach()) == float(plain.loss.detach())
    torch.testing.assert_close(g_ones, g_plain, rtol=0, atol=0)
    zeros = ppo_policy_loss(lp, old, adv, mask, weights=torch.zeros_like(old), **kw)
    assert float(zeros.loss.detach()) == 0.0 and torch.autograd.grad(zeros.loss, lp)[0].eq(0).all()
    assert float(zeros.clip_frac) == float(plain.clip_frac)  # diagnostics are unweighted
    # random weights (garbage off the mask; requiring grad, which must not reach them)
    w = (torch.rand(old.shape, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    out = ppo_policy_loss(lp, old, adv, mask, weights=w, **kw)
    tok = []
    for rows in zip(to_rows(lp.detach()), to_rows(old), to_rows(adv), to_rows(w.detach())):
        tok.append([ref_ppo_token(a, o, g, 0.2, 0.28, 3.0)[0] * x for a, o, g, x in zip(*rows)])
    assert float(out.loss.detach()) == pytest.approx(ref_aggregate(tok, to_rows(mask), mode, CONST), rel=1e-9)
    g_lp, g_w = torch.autograd.grad(out.loss, [lp, w], allow_unused=True)
    assert g_w is None or g_w.eq(0).all()
    # weighting a token scales its gradient: d/d lp of w * l is w * d l / d lp
    torch.testing.assert_close(g_lp, g_plain * w.detach(), **TOL64)


def test_ppo_weights_of_the_wrong_shape_raise():
    z, m = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    for bad in (torch.ones(3), torch.ones(2, 4), torch.ones(6)):
        with pytest.raises(ValueError, match=r"weights .* must have the mask's shape"):
            ppo_policy_loss(z, z, z, m, weights=bad)


def test_broadcast_sequences_round_trips_with_sequence_sums(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    values = torch.randn(4, generator=gen, dtype=torch.float64)
    # padded: row i holds values[i] everywhere, masked-out tokens included
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True], [False, True, False]])
    spread = broadcast_sequences(values, mask)
    assert spread.shape == mask.shape
    for i in range(4):
        assert spread[i].tolist() == [float(values[i])] * 3
    torch.testing.assert_close(sequence_sums(spread, mask), values * token_counts(mask), **TOL64)
    # packed, with an empty sequence: the same per-sequence sums
    cu = [0, 2, 2, 7, 8]
    packed_mask = torch.tensor([True, True, True, False, True, True, False, True])
    spread = broadcast_sequences(values, packed_mask, cu)
    want = [float(values[i]) for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])) for _ in range(b - a)]
    assert spread.tolist() == want
    for offsets in (cu, torch.tensor(cu)):
        torch.testing.assert_close(
            sequence_sums(broadcast_sequences(values, packed_mask, offsets), packed_mask, offsets),
            values * token_counts(packed_mask, offsets), **TOL64)
    # sums -> broadcast -> sums: a per-sequence mean spread back sums to the original sums
    x = torch.randn(8, generator=gen, dtype=torch.float64)
    sums, counts = sequence_sums(x, packed_mask, cu), token_counts(packed_mask, cu)
    means = sums / counts.clamp(min=1)
    torch.testing.assert_close(sequence_sums(broadcast_sequences(means, packed_mask, cu), packed_mask, cu),
                               sums, **TOL64)
    # gradients flow back to the per-sequence values
    v = values.clone().requires_grad_(True)
    sequence_sums(broadcast_sequences(v, packed_mask, cu), packed_mask, cu).sum().backward()
    torch.testing.assert_close(v.grad, token_counts(packed_mask, cu).to(torch.float64), **TOL64)


def test_broadcast_sequences_errors():
    with pytest.raises(ValueError, match="padded layout needs"):
        broadcast_sequences(torch.ones(3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="padded layout needs"):
        broadcast_sequences(torch.ones(2), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="packed layout needs"):
        broadcast_sequences(torch.ones(3), torch.ones(4, dtype=torch.bool), [0, 1, 4])
    with pytest.raises(ValueError, match="packed layout needs"):
        broadcast_sequences(torch.ones(2), torch.ones(5, dtype=torch.bool), [0, 1, 4])


def test_a_third_registered_policy_loss_gets_its_own_parameters(monkeypatch, rng_seed):
    """A loss registered beside ppo and gspo is called with exactly what its own params() read
    from the config (no ppo clip keys, no dual_clip), its check() runs in validation, and
    a call through the registry without agg_mode uses the loss's own aggregation."""
    from lmm_r1_ascend.algorithms.losses import POLICY_LOSSES, PolicyLossFn

    seen = []

    def toy_loss(log_probs, old_log_probs, advantages, mask, *, weights=None, agg_mode, normaliser=None,
                 cu_seqlens=None, constant=None, **params):
        seen.append(dict(params, agg_mode=agg_mode))
        return ppo_policy_loss(log_probs, old_log_probs, advantages, mask, eps_clip_low=params["band"],
                               eps_clip_high=params["band"], agg_mode=agg_mode, normaliser=normaliser,
                               cu_seqlens=cu_seqlens, constant=constant, weights=weights)

    def check(algorithm_cfg):
        if algorithm_cfg.eps_clip > 0.5:
            raise ValueError("policy_loss 'toy' needs eps_clip <= 0.5")

    spec = PolicyLossFn(toy_loss, lambda algorithm_cfg: {"band": algorithm_cfg.eps_clip / 2},
                        agg_mode="seq-mean-token-sum", check=check)
    monkeypatch.setitem(POLICY_LOSSES._items, "toy", spec)
    cfg = AlgorithmConfig(policy_loss="toy", eps_clip=0.3, eps_clip_low=0.1, dual_clip=3.0,
                          loss_agg_mode="seq-mean-token-mean")
    g = torch.Generator().manual_seed(rng_seed)
    mask = torch.rand(3, 5, generator=g) > 0.3
    lp, old, adv = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    out = actor_loss(cfg, lp, old, adv, mask)
    assert seen == [{"band": pytest.approx(0.15, abs=1e-15), "agg_mode": "seq-mean-token-mean"}]
    want = ppo_policy_loss(lp, old, adv, mask, eps_clip_low=0.15, eps_clip_high=0.15, agg_mode="seq-mean-token-mean")
    torch.testing.assert_close(out.policy.loss, want.loss, **TOL64)
    POLICY_LOSSES.get("toy")(lp, old, adv, mask, band=0.1)
    assert seen[-1] == {"band": 0.1, "agg_mode": "seq-mean-token-sum"}
    with pytest.raises(ValueError, match="policy_loss 'toy' needs eps_clip <= 0.5"):
        AlgorithmConfig(policy_loss="toy", eps_clip=0.6)
