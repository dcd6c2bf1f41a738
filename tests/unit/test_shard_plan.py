"""The data-parallel shard plan (experience/shard_plan.py) against the contract it states,
checked by brute force: the ranks' micro-batch losses, each divided by the plan's normaliser,
padded passes weighted 0, add up to the single-process mini-batch loss for every aggregation
mode; shards cover the mini-batch in order; every rank runs the same number of passes."""

from __future__ import annotations

import pytest
import torch

from lmm_r1_ascend.algorithms.aggregation import AGG_MODES, aggregate
from lmm_r1_ascend.experience.shard_plan import shard_plan
from lmm_r1_ascend.kernels.packing import split_by_token_budget

MODES = sorted(AGG_MODES.names())


def _sample(gen: torch.Generator, n: int):
    resp = torch.randint(1, 12, (n,), generator=gen).tolist()
    lengths = [r + int(torch.randint(1, 9, (1,), generator=gen)) for r in resp]
    masks = [torch.rand(r, generator=gen) > 0.3 for r in resp]
    if n > 2:
        masks[1][:] = False  # a sequence without action tokens
    losses = [torch.randn(r, generator=gen, dtype=torch.float64) for r in resp]
    return lengths, masks, losses


def _loss(idx: list[int], masks, losses, mode: str, normaliser: float) -> torch.Tensor:
    """The aggregated loss of samples idx in the packed layout (one micro-batch)."""
    loss = torch.cat([losses[i] for i in idx])
    mask = torch.cat([masks[i] for i in idx])
    cu = torch.tensor([0] + [len(losses[i]) for i in idx]).cumsum(0)
    return aggregate(loss, mask, mode, normaliser, cu_seqlens=cu, constant=7.0)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", MODES)
def test_ranks_add_up_to_the_minibatch_loss(rng_seed, world, mode):
    gen = torch.Generator().manual_seed(rng_seed + world)
    for n in (1, world, 2 * world + 1):
        lengths, masks, losses = _sample(gen, n)
        counts = [int(m.sum()) for m in masks]
        max_tokens = max(lengths) + 5
        plan = shard_plan(lengths, counts, world, max_tokens, agg_mode=mode, constant=7.0)
        assert len(plan) == world
        # shards: contiguous, in order, disjoint, covering the mini-batch; empty only when n < world
        assert [i for r in plan for i in r.indices] == list(range(n))
        assert all(r.real for r in plan) == (n >= world)
        # equal pass counts: the largest shard's micro-batch count (a padding rank feeds sample 0)
        counts_per_rank = [len(split_by_token_budget([lengths[i] for i in r.rows], max_tokens)) for r in plan]
        assert {r.n_micro for r in plan} == {max(counts_per_rank)}
        total = torch.zeros((), dtype=torch.float64)
        for r in plan:
            micros = split_by_token_budget([lengths[i] for i in r.rows], max_tokens)
            passes = [([r.rows[k] for k in m], 1.0 if r.real else 0.0) for m in micros]
            passes += [([r.rows[k] for k in micros[0]], 0.0)] * (r.n_micro - len(micros))
            for idx, weight in passes:
                total = total + weight * _loss(idx, masks, losses, mode, r.normaliser)
        whole = aggregate(torch.cat(losses), torch.cat(masks), mode, cu_seqlens=torch.tensor(
            [0] + [len(t) for t in losses]).cumsum(0), constant=7.0)
        # float64 sums of at most ~100 terms: equal to rounding
        torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-12)


def test_a_shard_normaliser_would_break_the_sum(rng_seed):
    # the contract's first rule matters: with unit token losses, each of 2 ranks normalising by its
    # own tokens gives 1 + 1, the mini-batch token mean is 1; the plan's normaliser gives 1
    gen = torch.Generator().manual_seed(rng_seed)
    lengths, masks, losses = _sample(gen, 6)
    masks = [torch.ones_like(m) for m in masks]
    losses = [torch.ones_like(t) for t in losses]
    counts = [int(m.sum()) for m in masks]
    plan = shard_plan(lengths, counts, 2, 1000, agg_mode="token-mean")
    own = sum(_loss(r.indices, masks, losses, "token-mean", float(sum(counts[i] for i in r.indices))) for r in plan)
    planned = sum(_loss(r.indices, masks, losses, "token-mean", r.normaliser) for r in plan)
    assert float(own) == pytest.approx(2.0) and float(planned) == pytest.approx(1.0)


def test_bad_plans_are_clear_errors():
    with pytest.raises(ValueError, match="one length and one action count"):
        shard_plan([3, 4], [1], 2, 10, agg_mode="token-mean")
    with pytest.raises(ValueError, match="non-empty"):
        shard_plan([], [], 1, 10, agg_mode="token-mean")
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        shard_plan([3], [1], 0, 10, agg_mode="token-mean")
