"""DAPO's overlong penalty and the dynamic-sampling group filter, against plain loops."""

from __future__ import annotations

import pytest
import torch

from lmm_r1_ascend.algorithms import informative_groups, overlong_penalty

# overlong_penalty returns float32; the ramp ((L - C) - len) / C * penalty is a few float32
# operations on small integers, so a few ulp (1e-7 relative) of the float64 value.
TOL32 = dict(rel=1e-6, abs=1e-7)


def ref_overlong(length: int, max_new: int, buffer: int, penalty: float) -> float:
    start = max_new - buffer
    if length <= start:
        return 0.0
    if length < max_new:
        return (start - length) / buffer * penalty
    return -penalty


def test_reference_by_hand():
    # L = 10, C = 4: 0 up to 6 tokens, then -0.25 p per token, -p from 10 on
    assert [ref_overlong(n, 10, 4, 2.0) for n in (0, 6, 7, 9, 10, 12)] == [0.0, 0.0, -0.5, -1.5, -2.0, -2.0]


@pytest.mark.parametrize("max_new, buffer, penalty", [(10, 4, 1.0), (64, 16, 0.5), (32, 32, 2.0), (8, 1, 1.0),
                                                      (20, 5, 0.0)])
def test_overlong_penalty_matches_loop(rng_seed, max_new, buffer, penalty):
    gen = torch.Generator().manual_seed(rng_seed)
    # random lengths plus every edge: 0, L - C - 1, L - C, L - C + 1, L - 1, L, beyond L
    edges = [0, max_new - buffer - 1, max_new - buffer, max_new - buffer + 1, max_new - 1, max_new, max_new + 7]
    lengths = torch.tensor([e for e in edges if e >= 0] + torch.randint(0, max_new + 5, (20,), generator=gen).tolist())
    got = overlong_penalty(lengths, max_new, buffer, penalty)
    assert got.dtype == torch.float32 and got.shape == lengths.shape
    want = [ref_overlong(n, max_new, buffer, penalty) for n in lengths.tolist()]
    assert got.tolist() == pytest.approx(want, **TOL32)


def test_overlong_penalty_edges_exactly():
    got = overlong_penalty(torch.tensor([6, 7, 10, 11]), max_new_tokens=10, buffer_len=4, penalty=1.0).tolist()
    assert got[0] == 0.0  # exactly L - C: no penalty yet
    assert got[1] == -0.25
    assert got[2] == -1.0 and got[3] == -1.0  # exactly L, and beyond: the full penalty
    # a list and a (B, 1) tensor work too; output is always (B,)
    assert overlong_penalty([6, 10], 10, 4).tolist() == [0.0, -1.0]
    assert overlong_penalty(torch.tensor([[6], [10]]), 10, 4).shape == (2,)


@pytest.mark.parametrize("buffer", [0, -1, 11])
def test_overlong_penalty_bad_buffer_raises(buffer):
    with pytest.raises(ValueError, match=r"overlong buffer_len must be in \[1, max_new_tokens=10\]"):
        overlong_penalty(torch.tensor([5]), 10, buffer)


def test_overlong_penalty_negative_penalty_raises():
    with pytest.raises(ValueError, match="overlong penalty must be >= 0"):
        overlong_penalty(torch.tensor([5]), 10, 4, penalty=-1.0)


def ref_informative(rewards: list[float], n: int, atol: float) -> list[bool]:
    out = []
    for g in range(0, len(rewards), n):
        grp = rewards[g : g + n]
        out.append(any(abs(a - b) > atol for a in grp for b in grp))
    return out


@pytest.mark.parametrize("n", [2, 4, 8])
def test_informative_groups_matches_loop(rng_seed, n):
    gen = torch.Generator().manual_seed(rng_seed)
    groups = 6
    rewards = (torch.rand(groups * n, generator=gen) > 0.5).float()  # binary rule rewards
    rewards[:n] = 1.0  # all equal: uninformative
    rewards[n : 2 * n] = 0.0
    rewards[2 * n : 3 * n] = 0.0
    rewards[3 * n - 1] = 1.0  # exactly one sample of group 2 differs: informative
    got = informative_groups(rewards, n)
    assert got.dtype == torch.bool and got.shape == (groups,)
    assert got.tolist() == ref_informative(rewards.tolist(), n, 1e-6)
    assert got[:3].tolist() == [False, False, True]
    # continuous rewards
    rewards = torch.randn(groups * n, generator=gen)
    rewards[:n] = 0.3
    assert informative_groups(rewards, n).tolist() == ref_informative(rewards.tolist(), n, 1e-6)


def test_informative_groups_atol():
    # 2^-20 ~ 9.5e-7 and 2^-19 ~ 1.9e-6 are exact in float32: on either side of atol 1e-6
    small, large = 2.0 ** -20, 2.0 ** -19
    rewards = torch.tensor([0.5, 0.5 + small, 0.5, 0.5 + large])
    assert informative_groups(rewards, 2).tolist() == [False, True]
    assert informative_groups(rewards, 2, atol=1e-5).tolist() == [False, False]
    assert informative_groups(rewards, 2, atol=0.0).tolist() == [True, True]
    # a spread of exactly atol is still "all equal within atol"
    assert informative_groups(rewards, 2, atol=small).tolist() == [False, True]
    assert informative_groups([1, 1, 0, 1], 2).tolist() == [False, True]  # ints from a list


@pytest.mark.parametrize("n, count", [(1, 4), (0, 4), (3, 4), (4, 6)])
def test_informative_groups_bad_n_raises(n, count):
    with pytest.raises(ValueError, match=r"needs n >= 2 and a multiple of n rewards"):
        informative_groups(torch.zeros(count), n)
