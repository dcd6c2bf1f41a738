"""The length-bucketed batched attention (CPU default): its bucketing and the shapes the generic
contract tests in test_attention.py do not reach (many buckets, equal-length buckets, split
buckets, long-tailed lengths), against the same independent float64 formula."""

from __future__ import annotations

import pytest
import torch

from lmm_r1_ascend.kernels import attention as att

from test_attention import assert_matches_naive


def packed(lengths, hq=4, hkv=2, d=8, dtype=torch.float32):
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    q, k, v = (torch.randn(bounds[-1], h, d).to(dtype) for h in (hq, hkv, hkv))
    return q, k, v, torch.tensor(bounds, dtype=torch.int32), bounds


def test_buckets_partition_the_sequences_by_the_waste_rule(rng_seed):
    lengths = torch.randint(1, 300, (40,)).tolist()
    budget = 60 * 60
    buckets = att.length_buckets(lengths, waste_budget=budget)
    assert sorted(i for b in buckets for i in b) == list(range(40))
    for b in buckets:
        top = lengths[b[0]]
        assert all(lengths[i] <= top and top ** 2 - lengths[i] ** 2 <= budget for i in b)
    tops = [lengths[b[0]] for b in buckets]
    assert tops == sorted(tops, reverse=True)
    # the next bucket opens only with a sequence the previous one could not take
    for prev, cur in zip(buckets, buckets[1:]):
        assert lengths[prev[0]] ** 2 - lengths[cur[0]] ** 2 > budget


def test_equal_lengths_make_one_bucket_and_the_mask_budget_splits_it():
    assert att.length_buckets([7] * 10) == [list(range(10))]
    assert att.length_buckets([7] * 4, waste_budget=0) == [list(range(4))]
    split = att.length_buckets([10] * 10, max_mask_elements=3 * 10 * 10)
    assert [len(b) for b in split] == [3, 3, 3, 1]
    with pytest.raises(ValueError, match="waste_budget"):
        att.length_buckets([3], waste_budget=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_long_tailed_lengths_match_the_formula(rng_seed, dtype, causal, monkeypatch):
    # log-normal lengths 1..80: several buckets, padded ones, a singleton, out-of-order output
    lengths = torch.distributions.LogNormal(2.5, 0.9).sample((14,)).clamp(1, 80).long().tolist()
    lengths[3] = 1
    q, k, v, cu, bounds = packed(lengths, dtype=dtype)
    monkeypatch.setattr(att, "_WASTE_BUDGET_ELEMENTS", 16 * 16 * 4 * 8)  # short test lengths, several buckets
    assert len(att.length_buckets(lengths, 16 * 16)) > 1
    assert_matches_naive(att.varlen_attention_batched, q, k, v, cu, bounds, causal=causal)


def test_equal_length_and_split_buckets_match_the_formula(rng_seed, monkeypatch):
    q, k, v, cu, bounds = packed([6, 6, 6, 6, 3], hq=6, hkv=1)
    assert_matches_naive(att.varlen_attention_batched, q, k, v, cu, bounds)
    monkeypatch.setattr(att, "_BUCKET_MAX_MASK_ELEMENTS", 2 * 6 * 6)  # buckets of <= 2 sequences
    assert_matches_naive(att.varlen_attention_batched, q, k, v, cu, bounds)


def test_equals_the_per_sequence_reference_closely(rng_seed):
    # same arithmetic per sequence (fp32 SDPA), so only kernel rounding may differ
    q, k, v, cu, bounds = packed(torch.randint(1, 60, (20,)).tolist(), hq=4, hkv=2, d=32)
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    ref = att.varlen_attention_reference(q, k, v, cu, longest)
    got = att.varlen_attention_batched(q, k, v, cu, longest)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=2e-6)
