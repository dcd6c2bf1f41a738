"""Slow, obvious references for the RL math (explicit Python loops), and hand-worked checks of them.

Written independently of lmm_r1_ascend.algorithms: Python floats and lists only, no
vectorised torch, so a shared bug in both is unlikely. Masked tokens are not steps.
Other test files import the ref_* helpers from here.
"""

from __future__ import annotations

import math

import pytest
import torch


def to_rows(x: torch.Tensor) -> list[list]:
    return [list(map(float if x.is_floating_point() else bool, row)) for row in x.tolist()]


def ref_group_shape(rewards: list[float], n: int, kind: str) -> list[float]:
    out = []
    for g in range(0, len(rewards), n):
        grp = rewards[g : g + n]
        mean = sum(grp) / n
        flat = max(grp) == min(grp) and kind != "none"
        for i, r in enumerate(grp):
            if flat:
                out.append(0.0)
            elif kind == "rloo":
                others = [grp[j] for j in range(n) if j != i]
                out.append(r - sum(others) / (n - 1))
            elif kind == "mean":
                out.append(r - mean)
            elif kind == "norm":
                std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (n - 1))
                out.append((r - mean) / (std + 1e-9))
            else:
                out.append(r)
    return out


def ref_kl(lp: float, ref: float, estimator: str, clamp: float | None) -> float:
    d = lp - ref
    value = {"k1": d, "k2": d * d / 2, "k3": math.exp(-d) - 1 + d}[estimator]
    if clamp is not None:
        value = min(max(value, -clamp), clamp)
    return value


def ref_token_rewards(r: float, mask: list[bool], kl: list[float] | None, coef: float, clip) -> list[float]:
    if clip is not None:
        r = min(max(r, clip[0]), clip[1])
    out = [0.0] * len(mask)
    valid = [t for t in range(len(mask)) if mask[t]]
    for t in valid:
        out[t] = -coef * kl[t] if kl is not None else 0.0
    if valid:
        out[valid[-1]] += r
    return out


def ref_returns(rew: list[float], mask: list[bool], gamma: float) -> list[float]:
    out = [0.0] * len(mask)
    running = 0.0
    for t in reversed([t for t in range(len(mask)) if mask[t]]):
        running = rew[t] + gamma * running
        out[t] = running
    return out


def ref_gae(rew: list[float], values: list[float], mask: list[bool], gamma: float, lam: float):
    adv = [0.0] * len(mask)
    ret = [0.0] * len(mask)
    valid = [t for t in range(len(mask)) if mask[t]]
    next_value, next_adv = 0.0, 0.0
    for t in reversed(valid):
        delta = rew[t] + gamma * next_value - values[t]
        next_adv = delta + gamma * lam * next_adv
        next_value = values[t]
        adv[t] = next_adv
        ret[t] = next_adv + values[t]
    return adv, ret


def ref_whiten(rows: list[list[float]], masks: list[list[bool]], center_only=False, eps=1e-8):
    flat = [x for row, m in zip(rows, masks) for x, keep in zip(row, m) if keep]
    mean = sum(flat) / max(len(flat), 1)
    var = sum((x - mean) ** 2 for x in flat) / max(len(flat), 1)
    scale = 1.0 if center_only else 1.0 / math.sqrt(max(var, eps))
    return [[(x - mean) * scale if keep else 0.0 for x, keep in zip(row, m)] for row, m in zip(rows, masks)]


def random_mask(lengths: list[int], max_len: int, holes: bool, gen: torch.Generator) -> torch.Tensor:
    """(B, max_len) bool: True for t < length, optionally with random interior holes."""
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
        if holes and n > 2:
            drop = torch.rand(n, generator=gen) < 0.25
            drop[n - 1] = False  # keep the last token so the row stays non-empty
            mask[i, :n] &= ~drop
    return mask



def ref_aggregate(loss: list[list[float]], mask: list[list[bool]], mode: str, constant=None) -> float:
    """The four aggregation modes over one whole batch, with plain loops."""
    sums, counts = [], []
    for row, m in zip(loss, mask):
        sums.append(sum(x for x, keep in zip(row, m) if keep))
        counts.append(sum(1 for keep in m if keep))
    n_tok = sum(counts)
    n_seq = sum(1 for c in counts if c > 0)
    if mode == "token-mean":
        return sum(sums) / max(n_tok, 1)
    if mode == "seq-mean-token-mean":
        return sum(s / c for s, c in zip(sums, counts) if c > 0) / max(n_seq, 1)
    if mode == "seq-mean-token-sum":
        return sum(sums) / max(n_seq, 1)
    if mode == "seq-mean-token-sum-norm":
        return sum(sums) / (n_seq * constant) if n_seq else 0.0
    raise AssertionError(mode)


def ref_ppo_token(lp: float, old: float, adv: float, lo: float, hi: float, dual) -> tuple[float, bool, bool]:
    """PPO-clip loss of one token, and whether the clip / the dual clip was the active term."""
    ratio = math.exp(lp - old)
    unclipped = -adv * ratio
    clipped = -adv * min(max(ratio, 1 - lo), 1 + hi)
    loss = max(unclipped, clipped)
    dual_active = dual is not None and adv < 0 and -adv * dual < loss
    if dual_active:
        loss = -adv * dual
    return loss, clipped > unclipped, dual_active


def ref_value_token(v: float, v_old: float, ret: float, clip) -> tuple[float, bool]:
    err = (v - ret) ** 2
    if clip is None:
        return 0.5 * err, False
    v_clipped = v_old + min(max(v - v_old, -clip), clip)
    err_clipped = (v_clipped - ret) ** 2
    return 0.5 * max(err, err_clipped), err_clipped > err

# Hand-worked numbers, so the references themselves are pinned to the textbook formulas.


def test_reference_group_shapes_by_hand():
    r = [1.0, 0.0, 0.5, 0.5]
    # rloo: 1 - (0 + 0.5 + 0.5)/3 = 2/3; 0 - 2/3 = -2/3; 0.5 - 1.5/3 = 0; idem
    assert ref_group_shape(r, 4, "rloo") == pytest.approx([2 / 3, -2 / 3, 0.0, 0.0])
    assert ref_group_shape(r, 4, "mean") == pytest.approx([0.5, -0.5, 0.0, 0.0])
    std = math.sqrt((0.25 + 0.25) / 3)  # unbiased over 4 samples
    assert ref_group_shape(r, 4, "norm") == pytest.approx([0.5 / std, -0.5 / std, 0.0, 0.0])
    assert ref_group_shape([0.1, 0.1, 0.1], 3, "norm") == [0.0, 0.0, 0.0]


def test_reference_recursions_by_hand():
    mask = [True, False, True, True, False]
    rew = [1.0, 9.0, 2.0, 3.0, 9.0]
    # returns over valid steps 0, 2, 3 with gamma 0.5: G3 = 3, G2 = 2 + 1.5, G0 = 1 + 0.5 * 3.5
    assert ref_returns(rew, mask, 0.5) == pytest.approx([2.75, 0.0, 3.5, 3.0, 0.0])
    values = [0.5, 7.0, 1.0, 2.0, 7.0]
    adv, ret = ref_gae(rew, values, mask, gamma=1.0, lam=1.0)
    # gamma = lambda = 1: advantage = remaining reward sum - own value
    assert adv == pytest.approx([6 - 0.5, 0.0, 5 - 1.0, 3 - 2.0, 0.0])
    assert ret == pytest.approx([6.0, 0.0, 5.0, 3.0, 0.0])
    # one-step check with gamma 0.9, lambda 0: A_t = r_t + 0.9 * V_next - V_t
    adv, _ = ref_gae(rew, values, mask, gamma=0.9, lam=0.0)
    assert adv == pytest.approx([1 + 0.9 * 1.0 - 0.5, 0.0, 2 + 0.9 * 2.0 - 1.0, 3 - 2.0, 0.0])


def test_reference_token_rewards_and_kl_by_hand():
    assert ref_kl(0.0, math.log(2), "k3", None) == pytest.approx(2 - 1 - math.log(2))
    assert ref_kl(1.0, 0.0, "k2", None) == 0.5
    assert ref_token_rewards(20.0, [True, True, False], [1.0, 2.0, 3.0], 0.1, (-10, 10)) == pytest.approx(
        [-0.1, -0.2 + 10.0, 0.0]
    )


def test_reference_aggregation_and_ppo_by_hand():
    loss = [[1.0, 2.0, 9.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]]
    mask = [[True, True, False], [True, False, False], [False, False, False]]
    assert ref_aggregate(loss, mask, "token-mean") == pytest.approx(7 / 3)
    assert ref_aggregate(loss, mask, "seq-mean-token-mean") == pytest.approx((1.5 + 4) / 2)
    assert ref_aggregate(loss, mask, "seq-mean-token-sum") == pytest.approx((3 + 4) / 2)
    assert ref_aggregate(loss, mask, "seq-mean-token-sum-norm", 10) == pytest.approx(7 / 20)
    # ratio 2, A = +1: clipped at 1.2 wins (loss -1.2); A = -1: unclipped 2 wins, dual clip 1.5 caps it
    assert ref_ppo_token(math.log(2), 0.0, 1.0, 0.2, 0.2, None) == pytest.approx((-1.2, True, False))
    assert ref_ppo_token(math.log(2), 0.0, -1.0, 0.2, 0.2, 1.5) == pytest.approx((1.5, False, True))
    assert ref_value_token(1.0, 0.0, 0.0, 0.2) == pytest.approx((0.5, False))  # max(1, 0.04) / 2
    assert ref_value_token(1.0, 0.0, 1.0, 0.2) == pytest.approx((0.5 * 0.64, True))  # clipped 0.2 vs 1
