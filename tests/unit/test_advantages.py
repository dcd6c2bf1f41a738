"""Advantage estimators against slow loop references (tests/unit/test_algo_reference.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_algo_reference import (
    random_mask,
    ref_gae,
    ref_group_shape,
    ref_kl,
    ref_returns,
    ref_token_rewards,
    ref_whiten,
    to_rows,
)

from lmm_r1_ascend.algorithms import (
    AlgorithmConfig,
    baseline_rewards,
    compute_advantages,
    discounted_returns,
    gae,
    group_norm_rewards,
    last_action_index,
    rloo_rewards,
    token_rewards,
    whiten,
)

# float64 inputs against Python-float loops: only rounding differs (~1e-16 relative per
# op); 1e-9 leaves room for recursions over a few dozen steps.
TOL64 = dict(rtol=1e-9, atol=1e-9)
SHAPERS = {"rloo": rloo_rewards, "mean": baseline_rewards, "norm": group_norm_rewards}


def _batch(gen, n_groups, n, max_len, holes=False, min_len=1):
    b = n_groups * n
    lengths = torch.randint(min_len, max_len + 1, (b,), generator=gen).tolist()
    mask = random_mask(lengths, max_len, holes, gen)
    return b, mask


@pytest.mark.parametrize("kind", ["rloo", "mean", "norm"])
@pytest.mark.parametrize("n", [2, 3, 8])
def test_group_shapes_match_loop(rng_seed, kind, n):
    gen = torch.Generator().manual_seed(rng_seed)
    rewards = torch.randn(5 * n, generator=gen, dtype=torch.float64)
    rewards[:n] = 0.7  # one all-equal group
    got = SHAPERS[kind](rewards, n)
    want = ref_group_shape(rewards.tolist(), n, kind)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **TOL64)
    assert got[:n].eq(0).all()  # flat group: exactly zero, not rounding noise


@pytest.mark.parametrize("kind", ["rloo", "mean", "norm"])
def test_flat_group_is_exactly_zero_in_float32(rng_seed, kind):
    # Equal float32 rewards whose float32 mean is off by an ulp: on x86 CPU the naive GRPO
    # formula turns that residue into advantages up to ~100 for 15-50% of random values
    # (checked when writing this test). Flat groups must give exactly 0 instead.
    n = 6
    flat = torch.rand(200, 1).expand(-1, n).reshape(-1)
    rewards = torch.cat([flat, torch.tensor([1.0, 0.0, 0.5, 0.5, 0.25, 0.0])])
    got = SHAPERS[kind](rewards, n)
    assert got[:-n].eq(0).all()
    assert got[-n:].abs().max() > 0.1


def test_group_norm_n2_closed_form():
    # n = 2: unbiased std = |a - b| / sqrt(2), so the shaped rewards are +-1/sqrt(2).
    got = group_norm_rewards(torch.tensor([3.0, 1.0], dtype=torch.float64), 2)
    torch.testing.assert_close(got, torch.tensor([2**-0.5, -(2**-0.5)], dtype=torch.float64), **TOL64)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 6),
    groups=st.integers(1, 4),
    data=st.data(),
)
def test_group_baselines_sum_to_zero_per_group(n, groups, data):
    values = data.draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=n * groups, max_size=n * groups))
    rewards = torch.tensor(values, dtype=torch.float64)
    for fn in (rloo_rewards, baseline_rewards):
        sums = fn(rewards, n).reshape(groups, n).sum(-1)
        # float64 sums of n values bounded by 20 in magnitude: rounding below 1e-12
        torch.testing.assert_close(sums, torch.zeros(groups, dtype=torch.float64), rtol=0, atol=1e-12)
    # rloo is the mean baseline scaled by n / (n - 1)
    scaled = baseline_rewards(rewards, n) * n / (n - 1)
    torch.testing.assert_close(rloo_rewards(rewards, n), scaled, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fn", [rloo_rewards, baseline_rewards, group_norm_rewards])
def test_group_errors(fn):
    with pytest.raises(ValueError, match="n_samples_per_prompt >= 2"):
        fn(torch.ones(4), 1)
    with pytest.raises(ValueError, match="cannot be split into groups"):
        fn(torch.ones(5), 2)
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.ones(2, 2), 2)


@pytest.mark.parametrize("holes", [False, True])
def test_token_rewards_match_loop(rng_seed, holes):
    gen = torch.Generator().manual_seed(rng_seed)
    b, mask = _batch(gen, 3, 2, 7, holes)
    mask[0] = False  # fully masked sample: gets nothing
    mask[1] = False
    mask[1, 0] = True  # length-1 response
    rewards = torch.randn(b, generator=gen, dtype=torch.float64) * 8
    kl = torch.randn(b, 7, generator=gen, dtype=torch.float64)
    got = token_rewards(rewards, mask, kl=kl, kl_coef=0.05, reward_clip_range=(-10.0, 3.0))
    want = [
        ref_token_rewards(r, m, k, 0.05, (-10.0, 3.0))
        for r, m, k in zip(rewards.tolist(), to_rows(mask), to_rows(kl))
    ]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **TOL64)
    assert got[0].eq(0).all()


def test_last_action_index():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    assert last_action_index(mask).tolist() == [1, -1, 3, 1]


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("gamma", [1.0, None])  # 1.0 takes the cumulative-sum path
def test_discounted_returns_match_loop(rng_seed, holes, gamma):
    gen = torch.Generator().manual_seed(rng_seed)
    b, mask = _batch(gen, 4, 2, 9, holes)
    mask[2] = False
    rew = torch.randn(b, 9, generator=gen, dtype=torch.float64)
    gamma = float(torch.rand((), generator=gen)) if gamma is None else gamma
    got = discounted_returns(rew, mask, gamma)
    want = [ref_returns(r, m, gamma) for r, m in zip(to_rows(rew), to_rows(mask))]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **TOL64)


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0), (None, None)])
def test_gae_matches_loop(rng_seed, holes, gamma, lam):
    gen = torch.Generator().manual_seed(rng_seed)
    if gamma is None:
        gamma, lam = (float(x) for x in torch.rand(2, generator=gen))
    b, mask = _batch(gen, 3, 3, 10, holes)
    mask[4] = False
    rew = torch.randn(b, 10, generator=gen, dtype=torch.float64)
    values = torch.randn(b, 10, generator=gen, dtype=torch.float64)
    adv, ret = gae(rew, values, mask, gamma, lam)
    want = [ref_gae(r, v, m, gamma, lam) for r, v, m in zip(to_rows(rew), to_rows(values), to_rows(mask))]
    torch.testing.assert_close(adv, torch.tensor([w[0] for w in want], dtype=torch.float64), **TOL64)
    torch.testing.assert_close(ret, torch.tensor([w[1] for w in want], dtype=torch.float64), **TOL64)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), length=st.integers(1, 12), holes=st.booleans())
def test_gae_lambda1_gamma1_is_returns_minus_values(seed, b, length, holes):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (b,), generator=gen).tolist()
    mask = random_mask(lengths, length, holes, gen)
    rew = torch.randn(b, length, generator=gen, dtype=torch.float64)
    values = torch.randn(b, length, generator=gen, dtype=torch.float64)
    adv, ret = gae(rew, values, mask, 1.0, 1.0)
    expected = torch.where(mask, discounted_returns(rew, mask, 1.0) - values, torch.zeros_like(values))
    torch.testing.assert_close(adv, expected, **TOL64)
    torch.testing.assert_close(ret, discounted_returns(rew, mask, 1.0), **TOL64)


def test_shape_errors():
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="must match action_mask"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), mask, 1.0, 1.0)
    with pytest.raises(ValueError, match="bool"):
        discounted_returns(torch.zeros(2, 3), torch.ones(2, 3), 1.0)
    with pytest.raises(ValueError, match=r"rewards \(3,\) must be \(B,\)"):
        token_rewards(torch.zeros(3), mask)


@pytest.mark.parametrize("center_only", [False, True])
def test_whiten_matches_loop(rng_seed, center_only):
    gen = torch.Generator().manual_seed(rng_seed)
    _, mask = _batch(gen, 3, 2, 6, holes=True)
    x = torch.randn(6, 6, generator=gen, dtype=torch.float64) * 3 + 1
    got = whiten(x, mask, center_only=center_only)
    want = ref_whiten(to_rows(x), to_rows(mask), center_only)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **TOL64)
    if not center_only:
        sel = got[mask]
        # float64: mean 0 and population variance 1 up to rounding
        assert abs(float(sel.mean())) < 1e-12 and abs(float(sel.var(unbiased=False)) - 1) < 1e-9


def test_whiten_constant_and_empty():
    mask = torch.tensor([[True, True, False]])
    x = torch.tensor([[2.0, 2.0, 5.0]])
    assert whiten(x, mask).eq(0).all()  # zero variance: eps floor, no NaN
    assert whiten(x, torch.zeros_like(mask)).eq(0).all()
    with pytest.raises(TypeError, match="bool"):
        whiten(x, torch.ones(1, 3))


ESTIMATORS = {
    "reinforce": None,
    "reinforce_baseline": "mean",
    "rloo": "rloo",
    "group_norm": "norm",
    "dr_grpo": "mean",
    "gae": None,
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("kl_est", ["k1", "k3"])
def test_compute_advantages_end_to_end(rng_seed, name, kl_est):
    gen = torch.Generator().manual_seed(rng_seed)
    n = 2 if name in ("rloo", "group_norm") else 4
    b, mask = _batch(gen, 3, n, 8)
    mask[-1] = False
    mask[-1, 0] = True  # a length-1 response
    rewards = torch.randint(0, 4, (b,), generator=gen).to(torch.float64) * 0.5
    rewards[:n] = 1.0  # all-equal group
    lp = -torch.rand(b, 8, generator=gen, dtype=torch.float64) * 3
    ref = lp + torch.randn(b, 8, generator=gen, dtype=torch.float64) * 0.3
    values = torch.randn(b, 8, generator=gen, dtype=torch.float64) if name == "gae" else None
    gamma, lam = (0.9, 0.8) if name == "gae" else (1.0, 1.0)
    cfg = AlgorithmConfig(
        advantage_estimator=name, n_samples_per_prompt=n, kl_estimator=kl_est, gamma=gamma, lambd=lam,
        reward_clip_range=(-0.9, 0.9),
    )
    out = compute_advantages(cfg, rewards, mask, log_probs=lp, ref_log_probs=ref, values=values, kl_coef=0.1)

    shaped = ref_group_shape(rewards.tolist(), n, ESTIMATORS[name] or "none")
    rows_m, rows_lp, rows_ref = to_rows(mask), to_rows(lp), to_rows(ref)
    kl = [[ref_kl(a, r, kl_est, 10.0) if m else 0.0 for a, r, m in zip(*row)] for row in zip(rows_lp, rows_ref, rows_m)]
    tok = [ref_token_rewards(s, m, k, 0.1, (-0.9, 0.9)) for s, m, k in zip(shaped, rows_m, kl)]
    if name == "gae":
        pairs = [ref_gae(t, v, m, gamma, lam) for t, v, m in zip(tok, to_rows(values), rows_m)]
        adv, ret = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        ret = [ref_returns(t, m, gamma) for t, m in zip(tok, rows_m)]
        adv = ret
    if name not in ("group_norm", "dr_grpo"):
        adv = ref_whiten(adv, rows_m)
    as_t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(out.shaped_rewards, as_t(shaped), **TOL64)
    torch.testing.assert_close(out.kl, as_t(kl), **TOL64)
    torch.testing.assert_close(out.token_rewards, as_t(tok), **TOL64)
    torch.testing.assert_close(out.returns, as_t(ret), **TOL64)
    torch.testing.assert_close(out.advantages, as_t(adv), **TOL64)
    per_sample = [sum(k) / max(sum(m), 1) for k, m in zip(kl, rows_m)]
    assert float(out.mean_kl) == pytest.approx(sum(per_sample) / b, rel=1e-9)


def test_compute_advantages_normalization_override_and_errors():
    mask = torch.ones(4, 3, dtype=torch.bool)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    cfg = AlgorithmConfig(n_samples_per_prompt=2, init_kl_coef=0.0, advantage_normalization="center")
    out = compute_advantages(cfg, rewards, mask)
    # shaped [0.5, -0.5, 0, 0] reach every token (gamma 1); their token mean is 0, so
    # centring leaves them as they are, and no division by the std (0.408) happens.
    torch.testing.assert_close(out.advantages, torch.tensor([[0.5] * 3, [-0.5] * 3, [0.0] * 3, [0.0] * 3]))
    with pytest.raises(ValueError, match="needs log_probs and ref_log_probs"):
        compute_advantages(AlgorithmConfig(n_samples_per_prompt=2), rewards, mask)
    with pytest.raises(ValueError, match="both log_probs and ref_log_probs"):
        compute_advantages(cfg, rewards, mask, log_probs=torch.zeros(4, 3))
    gae_cfg = AlgorithmConfig(advantage_estimator="gae", init_kl_coef=0.0)
    with pytest.raises(ValueError, match="needs critic values"):
        compute_advantages(gae_cfg, rewards, mask)
    with pytest.raises(ValueError, match="does not use critic values"):
        compute_advantages(cfg, rewards, mask, values=torch.zeros(4, 3))
