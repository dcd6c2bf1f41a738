"""Packing: cu_seqlens, restarted positions, pack/unpack, token-budget micro-batches."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmm_r1_ascend.kernels.packing import (
    PackedBatch,
    cu_seqlens_from_lengths,
    lengths_from_cu_seqlens,
    pack,
    pack_input_ids,
    position_ids_from_lengths,
    split_by_token_budget,
    unpack,
)


def _random_lengths(rnd: random.Random, n: int = 6) -> list[int]:
    return [rnd.choice([1, 1, 2, 3, 7, 16, 33]) for _ in range(n)]


# ---------------------------------------------------------------- cu_seqlens / positions


def test_cu_seqlens_and_positions_match_slow_loops(rng_seed):
    rnd = random.Random(rng_seed)
    lengths = _random_lengths(rnd)
    cu = cu_seqlens_from_lengths(lengths)
    expected_cu, total = [0], 0
    for n in lengths:
        total += n
        expected_cu.append(total)
    assert cu.dtype == torch.int32 and cu.tolist() == expected_cu
    assert lengths_from_cu_seqlens(cu) == lengths

    pos = position_ids_from_lengths(lengths)
    expected_pos = [p for n in lengths for p in range(n)]
    assert pos.dtype == torch.int64 and pos.tolist() == expected_pos


def test_bad_lengths_are_errors():
    with pytest.raises(ValueError, match=r"lengths\[1\] = 0"):
        cu_seqlens_from_lengths([3, 0, 2])
    with pytest.raises(ValueError, match=r"lengths\[0\] = -2"):
        position_ids_from_lengths([-2])
    with pytest.raises(ValueError, match="empty"):
        cu_seqlens_from_lengths([])
    with pytest.raises(TypeError, match=r"lengths\[0\] must be an int"):
        cu_seqlens_from_lengths([1.5])
    with pytest.raises(ValueError, match="start with 0"):
        lengths_from_cu_seqlens([1, 3])
    with pytest.raises(ValueError, match="strictly increasing"):
        lengths_from_cu_seqlens([0, 3, 3])


# ---------------------------------------------------------------- pack / unpack


@pytest.mark.parametrize("trailing", [(), (4,), (2, 3)])
def test_pack_unpack_round_trip(rng_seed, trailing):
    rnd = random.Random(rng_seed)
    seqs = [torch.randn(n, *trailing) for n in _random_lengths(rnd)]
    packed, cu = pack(seqs)
    assert packed.shape == (sum(s.shape[0] for s in seqs), *trailing)
    assert cu.tolist() == cu_seqlens_from_lengths([s.shape[0] for s in seqs]).tolist()
    for i, s in enumerate(seqs):  # row slice i of the packed tensor is sequence i
        assert torch.equal(packed[cu[i] : cu[i + 1]], s)
    back = unpack(packed, cu)
    assert len(back) == len(seqs) and all(torch.equal(a, b) for a, b in zip(back, seqs))
    assert [b.shape[0] for b in unpack(packed, cu.tolist())] == [s.shape[0] for s in seqs]


def test_unpack_along_other_dim(rng_seed):
    rnd = random.Random(rng_seed)
    lengths = _random_lengths(rnd)
    x = torch.randn(2, sum(lengths), 3)  # e.g. (1, T, H) logits-like layouts
    parts = unpack(x, cu_seqlens_from_lengths(lengths), dim=1)
    assert [p.shape[1] for p in parts] == lengths
    assert torch.equal(torch.cat(parts, dim=1), x)


def test_pack_errors():
    with pytest.raises(ValueError, match="no sequences"):
        pack([])
    with pytest.raises(ValueError, match="trailing dims, dtype, device must match"):
        pack([torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="trailing dims, dtype, device must match"):
        pack([torch.zeros(2), torch.zeros(2, dtype=torch.int64)])
    with pytest.raises(ValueError, match="first dim >= 1"):
        pack([torch.zeros(0, 3)])
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        pack([[1, 2]])
    with pytest.raises(ValueError, match="ends at 5 but packed has 4 tokens"):
        unpack(torch.zeros(4), [0, 2, 5])


def test_packed_batch(rng_seed):
    rnd = random.Random(rng_seed)
    lengths = _random_lengths(rnd)
    seqs = [torch.randint(0, 100, (n,)) for n in lengths]
    batch = pack_input_ids(seqs)
    assert isinstance(batch, PackedBatch)
    assert batch.input_ids.shape == (1, sum(lengths)) and batch.input_ids.dtype == torch.int64
    assert torch.equal(batch.input_ids[0], torch.cat(seqs))
    assert torch.equal(batch.position_ids[0], position_ids_from_lengths(lengths))
    assert batch.cu_seqlens_host == batch.cu_seqlens.tolist() == cu_seqlens_from_lengths(lengths).tolist()
    assert batch.max_seqlen == max(lengths) and batch.lengths == lengths and batch.num_tokens == sum(lengths)
    moved = batch.to("cpu")
    assert moved.cu_seqlens_host == batch.cu_seqlens_host and torch.equal(moved.input_ids, batch.input_ids)

    mrope = torch.arange(3 * sum(lengths)).reshape(3, -1)
    assert pack_input_ids(seqs, position_ids=mrope).position_ids.shape == (3, 1, sum(lengths))
    with pytest.raises(ValueError, match=r"\(3\|4, T\) or \(3\|4, 1, T\)"):
        pack_input_ids(seqs, position_ids=torch.zeros(1, 3 * sum(lengths), dtype=torch.int64))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        pack_input_ids([torch.zeros(3)])


# ---------------------------------------------------------------- split_by_token_budget


def test_split_examples():
    assert split_by_token_budget([3, 3, 3], 6) == [[0, 1], [2]]
    assert split_by_token_budget([2, 9, 1, 1], 4) == [[0], [1], [2, 3]]  # 9 > budget: alone
    assert split_by_token_budget([4, 4], 4) == [[0], [1]]  # exactly at the budget fits
    assert split_by_token_budget([], 4) == []
    assert split_by_token_budget([5], 4, hard_max_tokens=5) == [[0]]


def test_split_errors():
    with pytest.raises(ValueError, match=r"sequence 2 has 9 tokens, over hard_max_tokens=8"):
        split_by_token_budget([1, 2, 9], 4, hard_max_tokens=8)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 0"):
        split_by_token_budget([1, 0], 4)
    with pytest.raises(ValueError, match=r"lengths\[0\] = -1"):
        split_by_token_budget([-1], 4)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_tokens must be an int >= 1"):
            split_by_token_budget([1], bad)
    with pytest.raises(ValueError, match="hard_max_tokens must be None or an int >= 1"):
        split_by_token_budget([1], 4, hard_max_tokens=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=30), st.integers(1, 60))
def test_split_is_the_greedy_order_preserving_partition(lengths, budget):
    groups = split_by_token_budget(lengths, budget)
    # every index exactly once, in the original order
    assert [i for g in groups for i in g] == list(range(len(lengths)))
    for k, g in enumerate(groups):
        total = sum(lengths[i] for i in g)
        # within budget, or a lone over-budget sequence
        assert total <= budget or len(g) == 1
        # greedy: the next group's first sequence did not fit in this one
        if k + 1 < len(groups):
            assert total + lengths[groups[k + 1][0]] > budget


def test_split_accepts_tensor_lengths():
    assert split_by_token_budget(torch.tensor([2, 2, 2]), 4) == [[0, 1], [2]]
