"""Rollout-correction weights and rollout/trainer mismatch metrics, against per-token and
per-sequence Python loops written from the rollout_correction.py docstring formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmm_r1_ascend.algorithms import ROLLOUT_CORRECTIONS, CorrectionOutput, correction_weights, mismatch_metrics
from lmm_r1_ascend.algorithms.rollout_correction import check_bounds

NAMES = ["icepop", "seq_mask", "seq_tis", "token_mask", "token_tis"]
# (1, 1) keeps only ratios of exactly 1; (0, 2) never drops on the low side.
BOUNDS = [(0.5, 5.0), (0.8, 1.25), (1.0, 1.0), (0.0, 2.0)]
LAYOUTS = ["padded", "packed"]
GRID = 16.0  # log-probs and log-ratios are multiples of 1/16: exact in float32, sums included
# The weights are float32: exp of an exactly representable log-ratio is within ~1 ulp
# (1.2e-7 relative) of the float64 value. Grid log-ratios are >= 0.005 away from the log of
# every bound above, so the band tests cannot flip on rounding.
TOL32 = dict(rtol=1e-6, atol=0.0)
TOL64 = dict(rel=1e-9, abs=1e-12)  # float64 metrics against Python-float loops: rounding only


def _clamp(x: float, bound: float = 20.0) -> float:
    return max(-bound, min(bound, x))


# ---------------------------------------------------------------- references (plain loops)


def ref_weights(name: str, d: list[float], m: list[bool], low: float, high: float) -> list[float]:
    """One sequence's weights of correction ``name`` for log-ratios d (old - rollout)."""
    total = 0.0
    for x, keep in zip(d, m):
        if keep:
            total += _clamp(x)
    seq_ratio = math.exp(_clamp(total))
    out = []
    for x, keep in zip(d, m):
        if not keep:
            out.append(0.0)
            continue
        r = math.exp(_clamp(x))
        if name == "token_tis":
            w = min(r, high)
        elif name == "seq_tis":
            w = min(seq_ratio, high)
        elif name == "token_mask":
            w = 1.0 if low <= r <= high else 0.0
        elif name == "seq_mask":
            w = 1.0 if low <= seq_ratio <= high else 0.0
        elif name == "icepop":
            w = r if low <= r <= high else 0.0
        else:
            raise AssertionError(name)
        out.append(w)
    return out


def ref_product(names, seqs, low, high) -> list[list[float]]:
    out = []
    for d, m in seqs:
        w = [1.0 if keep else 0.0 for keep in m]
        for name in names:
            w = [a * b for a, b in zip(w, ref_weights(name, d, m, low, high))]
        out.append(w)
    return out


def ref_stats(weights: list[list[float]], seqs) -> tuple[float, float]:
    """(mean weight, share of zero weights) over action tokens; (0, 0) without any."""
    on = [w for row, (_, m) in zip(weights, seqs) for w, keep in zip(row, m) if keep]
    if not on:
        return 0.0, 0.0
    return sum(on) / len(on), sum(1 for w in on if w == 0.0) / len(on)


# ---------------------------------------------------------------- inputs


def _sequences(seed: int):
    """Seven sequences as Python lists (rollout log-probs, log-ratios d, mask): a length-1
    one, an empty one, one whose 3 tokens are all off the mask, the rest with random holes.
    Log-probs are on the 1/16 grid; off-mask log-ratios are huge, so a leak would show."""
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for i, n in enumerate([1, 0, 5, 9, 3, 7, 6]):
        m = (torch.rand(n, generator=gen) > 0.25).tolist()
        if n:
            m[-1] = True
        if i == 4:
            m = [False] * n
        roll = (-torch.randint(0, 48, (n,), generator=gen) / GRID).tolist()
        d = ((torch.randn(n, generator=gen) * 10).round() / GRID).tolist()
        d = [x if keep else 40.0 + x for x, keep in zip(d, m)]
        seqs.append((roll, d, m))
    # Plants, so every band decision happens whatever the draw: a length-1 sequence with
    # ratio e^3 ~ 20 (dropped / truncated everywhere), a sequence of ratio exactly 1 (kept
    # everywhere, (1, 1) included), and a token of ratio e^-3 ~ 0.05 (below every low > 0).
    seqs[0][1][0] = 3.0
    seqs[2] = (seqs[2][0], [0.0 if keep else x for x, keep in zip(seqs[2][1], seqs[2][2])], seqs[2][2])
    first = seqs[3][2].index(True)
    seqs[3][1][first] = -3.0
    return seqs


def _tensors(seqs, layout: str, dtype=torch.float32):
    """(old, rollout, mask, cu_seqlens) in the padded (B, 9) or packed (T,) layout."""
    if layout == "packed":
        old = [r + x for roll, d, _ in seqs for r, x in zip(roll, d)]
        roll = [r for roll, _, _ in seqs for r in roll]
        mask = [keep for _, _, m in seqs for keep in m]
        cu = [0]
        for s in seqs:
            cu.append(cu[-1] + len(s[2]))
        return (torch.tensor(old, dtype=dtype), torch.tensor(roll, dtype=dtype),
                torch.tensor(mask, dtype=torch.bool), torch.tensor(cu))
    width = 9
    old = torch.full((len(seqs), width), 5.0, dtype=dtype)  # padding: log-ratio 35, off the mask
    roll = torch.full((len(seqs), width), -30.0, dtype=dtype)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, (r, d, m) in enumerate(seqs):
        n = len(m)
        old[i, :n] = torch.tensor([a + b for a, b in zip(r, d)], dtype=dtype)
        roll[i, :n] = torch.tensor(r, dtype=dtype)
        mask[i, :n] = torch.tensor(m, dtype=torch.bool)
    return old, roll, mask, None


def _rows(weights: torch.Tensor, seqs, cu) -> list[torch.Tensor]:
    """Each sequence's weights, and (padded) check that the padding is 0."""
    if cu is None:
        out = []
        for i, (_, _, m) in enumerate(seqs):
            assert weights[i, len(m):].eq(0).all()
            out.append(weights[i, : len(m)])
        return out
    cu = cu.tolist()
    return [weights[a:b] for a, b in zip(cu[:-1], cu[1:])]


def _ref_seqs(seqs):
    return [(d, m) for _, d, m in seqs]


def _check_weights(out: CorrectionOutput, want: list[list[float]], seqs, cu) -> None:
    assert out.weights.dtype == torch.float32
    for got, exp in zip(_rows(out.weights, seqs, cu), want):
        torch.testing.assert_close(got, torch.tensor(exp, dtype=torch.float32), **TOL32)
    mean, frac = ref_stats(want, _ref_seqs(seqs))
    assert float(out.weight_mean) == pytest.approx(mean, rel=1e-6)
    assert float(out.masked_frac) == pytest.approx(frac, rel=1e-6)
    assert out.metrics() == {"rollout_correction/weight_mean": pytest.approx(mean, rel=1e-6),
                             "rollout_correction/masked_frac": pytest.approx(frac, rel=1e-6)}


# ---------------------------------------------------------------- corrections


def test_registry_names():
    assert ROLLOUT_CORRECTIONS.names() == NAMES


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("name", NAMES)
def test_each_correction_matches_loop(rng_seed, name, bounds, layout):
    seqs = _sequences(rng_seed)
    old, roll, mask, cu = _tensors(seqs, layout)
    out = correction_weights([name], old, roll, mask, cu, low=bounds[0], high=bounds[1])
    want = ref_product([name], _ref_seqs(seqs), *bounds)
    _check_weights(out, want, seqs, cu)
    assert out.weights[~mask].eq(0).all()
    # the planted tokens: something is always kept, and the e^3 / e^-3 ones are dropped by
    # every masking correction whose band excludes them
    kept = out.weights[mask] > 0
    assert kept.any()
    if name in ("token_mask", "seq_mask", "icepop") and bounds[1] < 20:
        assert not kept.all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "names", [["token_tis", "seq_mask"], ["icepop", "seq_tis"], ["token_mask", "seq_tis", "token_tis"]]
)
def test_product_of_corrections_matches_loop(rng_seed, names, layout):
    seqs = _sequences(rng_seed)
    old, roll, mask, cu = _tensors(seqs, layout)
    low, high = 0.8, 1.25
    out = correction_weights(names, old, roll, mask, cu, low=low, high=high)
    _check_weights(out, ref_product(names, _ref_seqs(seqs), low, high), seqs, cu)
    # and it is the elementwise product of the single corrections
    prod = torch.ones_like(out.weights)
    for name in names:
        prod = prod * correction_weights([name], old, roll, mask, cu, low=low, high=high).weights
    torch.testing.assert_close(out.weights, prod, **TOL32)


def test_ratios_exactly_at_the_bounds_are_kept():
    # float32 exp(float32(log v)) is exactly v for these v, so the ratios sit on the bounds.
    low, high = 0.5, 2.0
    d = torch.tensor([math.log(0.5), math.log(2.0), math.log(0.5) - 1e-3, math.log(2.0) + 1e-3, 0.0])
    assert d.exp()[:2].tolist() == [0.5, 2.0]
    mask = torch.ones(5, dtype=torch.bool)
    zero = torch.zeros(5)
    got = {n: correction_weights([n], d, zero, mask, [0, 5], low=low, high=high).weights.tolist()
           for n in ("token_mask", "icepop", "token_tis")}
    assert got["token_mask"] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert got["icepop"] == pytest.approx([0.5, 2.0, 0.0, 0.0, 1.0])
    # token_tis only truncates from above (the low bound plays no part)
    assert got["token_tis"] == pytest.approx([0.5, 2.0, 0.5 * math.exp(-1e-3), 2.0, 1.0])
    # sequence level: one sequence per token, so the sequence ratio is the token's
    seq = {n: correction_weights([n], d, zero, mask, [0, 1, 2, 3, 4, 5], low=low, high=high).weights.tolist()
           for n in ("seq_mask", "seq_tis")}
    assert seq["seq_mask"] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert seq["seq_tis"] == pytest.approx([0.5, 2.0, 0.5 * math.exp(-1e-3), 2.0, 1.0])
    # (1, 1): only a ratio of exactly 1 survives the masks
    ones = correction_weights(["token_mask"], d, zero, mask, [0, 5], low=1.0, high=1.0).weights
    assert ones.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_equal_policies_give_weight_one(rng_seed, layout):
    seqs = _sequences(rng_seed)
    _, roll, mask, cu = _tensors(seqs, layout)
    for name in NAMES:
        out = correction_weights([name], roll, roll.clone(), mask, cu, low=1.0, high=1.0)
        assert out.weights[mask].eq(1).all() and out.weights[~mask].eq(0).all()
        assert float(out.weight_mean) == 1.0 and float(out.masked_frac) == 0.0
    out = correction_weights(NAMES, roll, roll.clone(), mask, cu, low=0.5, high=5.0)
    assert out.weights[mask].eq(1).all()


def test_weights_are_detached_float32_for_bf16_inputs(rng_seed):
    seqs = _sequences(rng_seed)
    old, roll, mask, cu = _tensors(seqs, "packed", dtype=torch.bfloat16)
    old.requires_grad_(True)
    roll.requires_grad_(True)
    for name in NAMES:
        out = correction_weights([name], old, roll, mask, cu, low=0.5, high=5.0)
        assert out.weights.dtype == torch.float32
        assert not out.weights.requires_grad and out.weights.grad_fn is None
        assert not out.weight_mean.requires_grad and not out.masked_frac.requires_grad
        # the reference from the bf16 values as stored (the code upcasts them to float32,
        # where their difference is exact)
        d = (old.detach().double() - roll.detach().double()).tolist()
        ref = [(d[a:b], mask[a:b].tolist()) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
        want = ref_product([name], ref, 0.5, 5.0)
        for got, exp in zip(_rows(out.weights, seqs, cu), want):
            torch.testing.assert_close(got, torch.tensor(exp, dtype=torch.float32), **TOL32)


def test_all_masked_gives_zero_weights_and_metrics():
    old, roll = torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    out = correction_weights(NAMES, old, roll, mask, low=0.5, high=5.0)
    assert out.weights.eq(0).all()
    assert out.metrics() == {"rollout_correction/weight_mean": 0.0, "rollout_correction/masked_frac": 0.0}


def test_huge_log_ratios_stay_finite():
    d = torch.tensor([[200.0, -200.0, 30.0, 0.0]])
    zero = torch.zeros_like(d)
    mask = torch.ones_like(d, dtype=torch.bool)
    for name in NAMES:
        w = correction_weights([name], d, zero, mask, low=0.0, high=1e30).weights
        assert torch.isfinite(w).all()
    # clamped at +-20 before exp: icepop with an enormous band returns e^+-20
    w = correction_weights(["icepop"], d, zero, mask, low=0.0, high=1e30).weights
    torch.testing.assert_close(w, torch.tensor([[math.exp(20), math.exp(-20), math.exp(20), 1.0]]), **TOL32)
    # each token is clamped before the sequence sum: [30, -15] sums to 20 - 15 = 5, not 15
    seq = torch.tensor([30.0, -15.0, 0.0])
    w = correction_weights(["seq_tis"], seq, torch.zeros(3), torch.tensor([True, True, False]), [0, 3],
                           low=0.0, high=1e30).weights
    torch.testing.assert_close(w, torch.tensor([math.exp(5), math.exp(5), 0.0]), **TOL32)


@pytest.mark.parametrize(
    "low, high", [(1.2, 5.0), (0.5, 0.9), (-0.1, 2.0), (0.5, -1.0), (0.5, float("inf")), (float("nan"), 2.0)]
)
def test_bad_bounds_raise(low, high):
    with pytest.raises(ValueError, match=r"rollout_correction_bounds must be \[low, high\] with 0 <= low <= 1"):
        check_bounds(low, high)
    z, m = torch.zeros(4), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="rollout_correction_bounds"):
        correction_weights(["token_tis"], z, z, m, [0, 4], low=low, high=high)


def test_input_errors():
    z, m = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"unknown rollout correction 'tis'.*valid names: icepop, seq_mask, "
                                         r"seq_tis, token_mask, token_tis"):
        correction_weights(["tis"], z, z, m, low=0.5, high=5.0)
    with pytest.raises(ValueError, match="needs at least one correction"):
        correction_weights([], z, z, m, low=0.5, high=5.0)
    for name in NAMES:
        with pytest.raises(TypeError, match="mask must be a bool tensor"):
            correction_weights([name], z, z, torch.ones(2, 3), low=0.5, high=5.0)
        with pytest.raises(ValueError, match="mask's shape"):
            correction_weights([name], z, z, torch.ones(2, 4, dtype=torch.bool), low=0.5, high=5.0)


# ---------------------------------------------------------------- mismatch metrics


def ref_mismatch(seqs) -> dict[str, float]:
    """seqs: per sequence (old log-probs, rollout log-probs, mask) as Python lists."""
    p_old, p_roll, lrs, seq_sums = [], [], [], []
    for old, roll, m in seqs:
        total, any_action = 0.0, False
        for o, r, keep in zip(old, roll, m):
            if not keep:
                continue
            any_action = True
            p_old.append(math.exp(o))
            p_roll.append(math.exp(r))
            lr = _clamp(o - r)
            lrs.append(lr)
            total += lr
        if any_action:
            seq_sums.append(total)
    n = len(lrs)
    diffs = [abs(a - b) for a, b in zip(p_old, p_roll)]
    mx, my = sum(p_old) / n, sum(p_roll) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(p_old, p_roll))
    vx = sum((a - mx) ** 2 for a in p_old)
    vy = sum((b - my) ** 2 for b in p_roll)
    return {
        "mismatch/probs_diff_mean": sum(diffs) / n,
        "mismatch/probs_diff_max": max(diffs),
        "mismatch/pearson": cov / math.sqrt(vx * vy),
        "mismatch/kl": sum(math.exp(x) - 1 - x for x in lrs) / n,
        "mismatch/log_ratio_abs_max": max(abs(x) for x in lrs),
        "mismatch/seq_log_ratio_mean": sum(seq_sums) / len(seq_sums),
        "mismatch/seq_log_ratio_abs_max": max(abs(s) for s in seq_sums),
    }


def _mismatch_inputs(seed: int, extreme: bool):
    """Float64 (old, rollout, mask) per sequence: probabilities in (0.05, 1), rollout
    log-probs a noisy copy (a bf16-like gap); with ``extreme`` one log-ratio of 30 (clamped)."""
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for i, n in enumerate([1, 0, 5, 9, 3, 7]):
        m = (torch.rand(n, generator=gen) > 0.25).tolist()
        if n:
            m[-1] = True
        if i == 4:
            m = [False] * n
        old = torch.log(torch.rand(n, generator=gen, dtype=torch.float64) * 0.95 + 0.05)
        roll = old + torch.randn(n, generator=gen, dtype=torch.float64) * 0.1
        old, roll = old.tolist(), roll.tolist()
        old = [o if keep else o + 50.0 for o, keep in zip(old, m)]  # off-mask garbage
        seqs.append((old, roll, m))
    if extreme:
        seqs[3][1][seqs[3][2].index(True)] -= 30.0
    return seqs


def _mismatch_tensors(seqs, layout):
    as_ratio = [(r, [o - x for o, x in zip(old, r)], m) for old, r, m in seqs]
    old, roll, mask, cu = _tensors(as_ratio, layout, dtype=torch.float64)
    # _tensors built old as roll + (old - roll); rebuild it from the exact old values
    if cu is None:
        for i, (o, _, m) in enumerate(seqs):
            old[i, : len(m)] = torch.tensor(o, dtype=torch.float64)
    else:
        old = torch.tensor([x for o, _, _ in seqs for x in o], dtype=torch.float64)
    return old, roll, mask, cu


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mismatch_metrics_match_loop(rng_seed, layout, extreme):
    seqs = _mismatch_inputs(rng_seed, extreme)
    old, roll, mask, cu = _mismatch_tensors(seqs, layout)
    got = mismatch_metrics(old, roll, mask, cu)
    want = ref_mismatch(seqs)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, **TOL64), key
        assert isinstance(got[key], float)
    p_old = [math.exp(x) for o, _, m in seqs for x, keep in zip(o, m) if keep]
    p_roll = [math.exp(x) for _, r, m in seqs for x, keep in zip(r, m) if keep]
    assert got["mismatch/pearson"] == pytest.approx(float(np.corrcoef(p_old, p_roll)[0, 1]), **TOL64)
    if extreme:
        assert got["mismatch/log_ratio_abs_max"] == 20.0


def test_mismatch_metrics_identical_and_empty(rng_seed):
    seqs = _mismatch_inputs(rng_seed, False)
    _, roll, mask, cu = _mismatch_tensors(seqs, "packed")
    same = mismatch_metrics(roll, roll.clone(), mask, cu)
    for key, value in same.items():
        assert value == (pytest.approx(1.0, rel=1e-12) if key == "mismatch/pearson" else 0.0), key
    empty = mismatch_metrics(roll, roll - 1, torch.zeros_like(mask), cu)
    assert empty == {k: (1.0 if k == "mismatch/pearson" else 0.0) for k in same}
    # a single action token: constant inputs, pearson 1 when equal and 0 when not
    one = torch.zeros_like(mask)
    one[0] = True
    assert mismatch_metrics(roll, roll.clone(), one, cu)["mismatch/pearson"] == 1.0
    assert mismatch_metrics(roll, roll - 0.1, one, cu)["mismatch/pearson"] == 0.0


def test_mismatch_metrics_bf16_and_errors():
    old = torch.log(torch.tensor([[0.5, 0.25, 0.9]])).bfloat16()
    roll = torch.log(torch.tensor([[0.5, 0.3, 0.8]])).bfloat16()
    mask = torch.tensor([[True, True, False]])
    got = mismatch_metrics(old, roll, mask)
    want = ref_mismatch([(old.double()[0].tolist(), roll.double()[0].tolist(), mask[0].tolist())])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, **TOL64), key
    with pytest.raises(ValueError, match="mask's shape"):
        mismatch_metrics(old, roll[:, :2], mask)
