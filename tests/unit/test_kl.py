"""KL estimators and KL controllers against direct formulas and loops."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_algo_reference import ref_kl, to_rows

from lmm_r1_ascend.algorithms import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    compute_kl,
    make_kl_controller,
)

TOL64 = dict(rtol=1e-9, atol=1e-12)  # float64 elementwise: rounding only


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_estimators_match_loop(rng_seed, estimator, clamp):
    gen = torch.Generator().manual_seed(rng_seed)
    lp = -torch.rand(4, 7, generator=gen, dtype=torch.float64) * 4
    ref = -torch.rand(4, 7, generator=gen, dtype=torch.float64) * 4
    mask = torch.rand(4, 7, generator=gen) < 0.7
    mask[0] = False
    got = compute_kl(lp, ref, estimator, mask=mask, clamp=clamp)
    want = [
        [ref_kl(a, r, estimator, clamp) if m else 0.0 for a, r, m in zip(*row)]
        for row in zip(to_rows(lp), to_rows(ref), to_rows(mask))
    ]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **TOL64)
    if clamp is not None:
        assert got.abs().max() <= clamp


def test_k3_is_accurate_for_small_deltas():
    # exp(-d) - 1 + d cancels for small d; a naive float32 formula returns 0 or noise here.
    d = torch.tensor([1e-4, -1e-4, 3e-5, 9e-3, -0.011, 0.099, -0.101, 0.5, -3.0], dtype=torch.float32)
    got = compute_kl(d, torch.zeros_like(d), "k3")
    d64 = d.double()
    exact = (torch.expm1(-d64) + d64).float()  # float64: 52-bit mantissa absorbs the cancellation
    # float32 (eps 1.2e-7): the series is good to a few ulps; just above |d| = 0.1 the direct
    # formula loses log2(0.1 / 0.005) ~ 4 bits to cancellation, so 1e-5. A naive
    # exp(-d) - 1 + d is off by more than 1e-3 on the small entries.
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=0)
    # float64 against the exp series summed term by term in Python (no cancellation):
    # exp(-d) - 1 + d = sum_{k>=2} (-d)^k / k!, 30 terms are exact for |d| <= 3.
    d64 = torch.tensor([1e-6, -2e-4, 9e-4, -1.1e-3, 0.05, -0.3, 2.0], dtype=torch.float64)
    series = [sum((-x) ** k / math.factorial(k) for k in range(2, 30)) for x in d64.tolist()]
    got64 = compute_kl(d64, torch.zeros_like(d64), "k3")
    # relative 1e-12: direct formula loses ~log10(1 / |d|) digits just above the 1e-3 switch
    torch.testing.assert_close(got64, torch.tensor(series, dtype=torch.float64), rtol=1e-12, atol=0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-8, 8, allow_nan=False), min_size=1, max_size=20))
def test_k2_k3_non_negative_and_zero_at_equality(deltas):
    d = torch.tensor(deltas, dtype=torch.float64)
    zero = torch.zeros_like(d)
    for est in ("k2", "k3"):
        assert (compute_kl(d, zero, est) >= 0).all()
        assert compute_kl(d, d, est).eq(0).all()
    assert compute_kl(d, d, "k1").eq(0).all()


def test_k3_is_unbiased_for_kl(rng_seed):
    # Samples from pi: E[k1] = E[k3] = KL(pi || pi_ref). Categorical over 5 symbols, 200k draws.
    gen = torch.Generator().manual_seed(rng_seed)
    p = torch.softmax(torch.randn(5, generator=gen, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(5, generator=gen, dtype=torch.float64), 0)
    exact = float((p * (p / q).log()).sum())
    draws = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    lp, lq = p.log()[draws], q.log()[draws]
    for est in ("k1", "k3"):
        # Monte Carlo: std of the mean ~ std / sqrt(2e5); 6 sigma with a generous per-sample std bound
        sd = float(compute_kl(lp, lq, est).std())
        assert float(compute_kl(lp, lq, est).mean()) == pytest.approx(exact, abs=6 * sd / math.sqrt(200_000) + 1e-9)


def test_masked_garbage_does_not_leak():
    lp = torch.tensor([[-1.0, float("-inf")]])
    ref = torch.tensor([[-1.5, 0.0]])
    mask = torch.tensor([[True, False]])
    for est in ("k1", "k2", "k3"):
        out = compute_kl(lp, ref, est, mask=mask)
        assert torch.isfinite(out).all() and out[0, 1] == 0


def test_half_precision_is_computed_in_float32():
    lp = torch.tensor([-1.0, -2.0], dtype=torch.bfloat16)
    out = compute_kl(lp, lp - 0.5, "k3")
    assert out.dtype == torch.float32


def test_kl_errors():
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'.*valid names: k1, k2, k3"):
        compute_kl(torch.zeros(2), torch.zeros(2), "k4")
    with pytest.raises(ValueError, match="same shape"):
        compute_kl(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="mask"):
        compute_kl(torch.zeros(2), torch.zeros(2), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="clamp must be positive"):
        compute_kl(torch.zeros(2), torch.zeros(2), clamp=-1.0)
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]


def test_fixed_controller():
    ctl = make_kl_controller(0.001)
    assert isinstance(ctl, FixedKLController)
    for kl in (0.0, 5.0, 100.0):
        assert ctl.update(kl, 256) == 0.001


def test_adaptive_controller_matches_hand_computation():
    ctl = make_kl_controller(0.1, kl_target=0.5, kl_horizon=1000)
    assert isinstance(ctl, AdaptiveKLController)
    expected = 0.1
    for current, steps in [(0.55, 100), (2.0, 100), (0.1, 50), (0.5, 10)]:
        err = min(max(current / 0.5 - 1, -0.2), 0.2)  # 0.1, 0.2 (clipped), -0.2 (clipped), 0
        expected *= 1 + err * steps / 1000
        assert ctl.update(current, steps) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.1 * 1.01 * 1.02 * 0.99 * 1.0, rel=1e-12)


def test_controller_errors():
    with pytest.raises(ValueError, match="kl_target must be > 0"):
        AdaptiveKLController(0.1, 0.0, 100)
    with pytest.raises(ValueError, match="kl_horizon must be > 0"):
        AdaptiveKLController(0.1, 1.0, 0)
    with pytest.raises(ValueError, match="init_kl_coef"):
        FixedKLController(-1.0)
    with pytest.raises(ValueError, match="finite"):
        AdaptiveKLController(0.1, 1.0, 10).update(float("nan"), 1)
