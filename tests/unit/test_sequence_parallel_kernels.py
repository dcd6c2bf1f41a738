"""Ring and Ulysses attention (kernels/ring_attention.py, kernels/ulysses.py) on real gloo
process groups of 2 and 4 ranks, against single-device varlen attention of the whole row.

Each spawn runs every case in one process group (start-up dominates the cost): fresh random
packed batches (lengths from 1 token to several chunks, sequences shorter than one chunk,
GQA), fp32 and bf16, inner kernels reference, batched and the npu-emulated fused kernel. The
ranks write their outputs and gradients; this process reassembles the full row from the
zigzag shards and compares with the float64 per-sequence definition and with the same inner
kernel run once on the whole row (the 'unsplit' result).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.distributed as dist

from _mp_deadline import spawn_until

from lmm_r1_ascend.kernels import attention as A
from lmm_r1_ascend.kernels import npu_emulation
from lmm_r1_ascend.kernels.attention_npu import varlen_attention_npu_fusion
from lmm_r1_ascend.kernels.ring_attention import plan_step, ring_attention
from lmm_r1_ascend.kernels.sequence_split import owner_of_positions, split_packed
from lmm_r1_ascend.kernels.ulysses import check_heads, ulysses_attention

TIMEOUT_S = 60.0
INNER = {
    "reference": A.varlen_attention_reference,
    "batched": A.varlen_attention_batched,
    "npu_emulated": functools.partial(varlen_attention_npu_fusion, ops=npu_emulation),
}
# (lengths, Hq, Hkv, D): one chunk = ceil(n / 2sp) tokens
SHAPES = [
    ([1, 9, 23, 2], 4, 4, 8),     # 1-token and 2-token sequences are shorter than one chunk at sp >= 2
    ([31, 5, 64], 4, 2, 8),       # GQA 2:1; 64 = several chunks at sp=4
    ([3], 8, 4, 16),              # one short sequence
]


def _cases(sp: int):
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for inner in INNER if sp == 2 else ("reference", "npu_emulated"):  # 4 ranks on 2 cores: keep it short
            for mode in ("ring", "ulysses"):
                for s, (lengths, hq, hkv, d) in enumerate(SHAPES):
                    if mode == "ulysses" and (hq % sp or hkv % sp):
                        continue
                    cases.append((mode, inner, dtype, s))
    return cases


def _data(seed: int, shape_id: int):
    lengths, hq, hkv, d = SHAPES[shape_id]
    g = torch.Generator().manual_seed(seed)
    t = sum(lengths)
    q, k, v, dout = (torch.randn(t, h, d, generator=g) for h in (hq, hkv, hkv, hq))
    return lengths, q, k, v, dout


def _worker(rank: int, sp: int, tmp: str, seed: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=sp,
                            timeout=__import__("datetime").timedelta(seconds=TIMEOUT_S))
    try:
        results = []
        for n, (mode, inner, dtype, shape_id) in enumerate(_cases(sp)):
            lengths, q, k, v, dout = _data(seed + n, shape_id)
            shard = split_packed(lengths, sp, rank)
            leaves = [x.index_select(0, shard.index).to(dtype).requires_grad_(True) for x in (q, k, v)]
            fn = ring_attention if mode == "ring" else ulysses_attention
            out = fn(*leaves, shard, attention_fn=INNER[inner], group=None)
            # padding rows get no upstream gradient: they are dropped by every caller
            g_out = dout.index_select(0, shard.index).to(dtype) * shard.valid[:, None, None]
            out.backward(g_out)
            results.append({"out": out.detach().float(), **{f"d{c}": x.grad.float() for c, x in zip("qkv", leaves)}})
        if sp == 4:  # two SP groups of 2 inside the 4-rank world: peers are mapped to global ranks
            from lmm_r1_ascend.kernels.collectives import sequence_parallel_group

            group, sub_rank = sequence_parallel_group(2)
            for mode, fn in (("ring", ring_attention), ("ulysses", ulysses_attention)):
                lengths, q, k, v, dout = _data(seed + 1000 + rank // 2, 0)  # each group its own batch
                shard = split_packed(lengths, 2, sub_rank)
                leaves = [x.index_select(0, shard.index).requires_grad_(True) for x in (q, k, v)]
                out = fn(*leaves, shard, attention_fn=INNER["reference"], group=group)
                out.backward(dout.index_select(0, shard.index) * shard.valid[:, None, None])
                results.append({"out": out.detach(), **{f"d{c}": x.grad for c, x in zip("qkv", leaves)}})
        torch.save(results, f"{tmp}/rank{rank}.pt")
        # error path: a shard split for another SP size
        try:
            other = split_packed([4], sp + 1, 0)
            x = torch.zeros(other.num_local_tokens, 2, 4)
            ring_attention(x, x, x, other, attention_fn=INNER["reference"])
        except ValueError as exc:
            torch.save(str(exc), f"{tmp}/err{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(sp: int, tmp, seed: int) -> list[list[dict]]:
    spawn_until(_worker, (sp, str(tmp), seed), sp, 3 * TIMEOUT_S, f"{sp}-rank run")
    assert "split for sp=" in torch.load(f"{tmp}/err0.pt")
    return [torch.load(f"{tmp}/rank{r}.pt") for r in range(sp)]


def _naive(q, k, v, lengths):
    """float64 causal varlen attention by the textbook formula (independent of every kernel)."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    outs, start = [], 0
    for n in lengths:
        s = slice(start, start + n)
        scores = torch.einsum("qhd,khd->hqk", q[s], k[s]) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[s]))
        start += n
    return torch.cat(outs)


def _assemble(per_rank: list[dict], lengths, sp: int, key: str, t: int) -> torch.Tensor:
    """The full-row tensor from the ranks' zigzag shards (valid rows only)."""
    rank, row = owner_of_positions(lengths, sp, torch.arange(t))
    return torch.stack([per_rank[r][key][i] for r, i in zip(rank.tolist(), row.tolist())])


# Tolerances. fp32: the merge is exact math in fp32, so ring / Ulysses differ from the float64
# definition by a few fp32 roundings of O(1) values: 2e-5 abs covers it with margin (observed
# ~1e-6). bf16: inputs and every kernel output are rounded to bf16 (8-bit mantissa, relative
# step 2^-8 = 3.9e-3); the unsplit bf16 kernel already sits ~1e-2 from float64 on O(1) outputs
# and gradients, so the split result must stay within 3x the unsplit kernel's own error
# plus one bf16 step (4e-3 relative to the largest value).
@pytest.mark.parametrize("sp", [2, 4])
def test_ring_and_ulysses_equal_single_device_varlen(sp, tmp_path):
    seed = int(torch.randint(0, 10_000, ()).item())
    got = _spawn(sp, tmp_path, seed)
    for n, (mode, inner, dtype, shape_id) in enumerate(_cases(sp)):
        lengths, q, k, v, dout = _data(seed + n, shape_id)
        t = sum(lengths)
        leaves64 = [x.double().requires_grad_(True) for x in (q, k, v)]
        ref = _naive(*leaves64, lengths)
        ref.backward(dout.double())
        expected = {"out": ref.detach(), **{f"d{c}": x.grad for c, x in zip("qkv", leaves64)}}
        unsplit = None
        if dtype != torch.float32:
            leaves = [x.to(dtype).requires_grad_(True) for x in (q, k, v)]
            cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
            o = INNER[inner](*leaves, cu, max(lengths), cu_seqlens_host=cu.tolist())
            o.backward(dout.to(dtype))
            unsplit = {"out": o.detach(), **{f"d{c}": x.grad for c, x in zip("qkv", leaves)}}
        for key, want in expected.items():
            have = _assemble([r[n] for r in got], lengths, sp, key, t).double()
            err = (have - want).abs().max().item()
            if unsplit is None:
                tol = 2e-5 * max(1.0, want.abs().max().item())
            else:
                own = (unsplit[key].double() - want).abs().max().item()
                tol = 3 * own + 4e-3 * want.abs().max().item()
            assert err <= tol, f"sp={sp} {mode} {inner} {dtype} lengths={lengths} {key}: err {err:.2e} > {tol:.2e}"
    if sp == 4:
        base = len(_cases(sp))
        for group in range(2):
            lengths, q, k, v, dout = _data(seed + 1000 + group, 0)
            leaves64 = [x.double().requires_grad_(True) for x in (q, k, v)]
            ref = _naive(*leaves64, lengths)
            ref.backward(dout.double())
            expected = {"out": ref.detach(), **{f"d{c}": x.grad for c, x in zip("qkv", leaves64)}}
            for m in range(2):  # ring, ulysses
                ranks = [got[2 * group][base + m], got[2 * group + 1][base + m]]
                for key, want in expected.items():
                    have = _assemble(ranks, lengths, 2, key, sum(lengths)).double()
                    assert (have - want).abs().max().item() <= 2e-5 * max(1.0, want.abs().max().item()), (group, m, key)


def test_zigzag_split_balances_tokens_and_causal_work():
    lengths = [1, 7, 16, 33]
    for sp in (2, 4):
        shards = [split_packed(lengths, sp, r) for r in range(sp)]
        assert len({s.num_local_tokens for s in shards}) == 1
        # every valid token exactly once
        seen = torch.cat([s.index[s.valid] for s in shards]).sort().values
        assert torch.equal(seen, torch.arange(sum(lengths)))
        # causal score elements per rank (unmasked pairs of the ring plan) are equal
        work = []
        for s in shards:
            total = 0
            for src in range(sp):
                call = plan_step(s, src)
                sizes = [b - a for a, b in zip(call.cu_host, call.cu_host[1:])]
                total += sum(n * (n + 1) // 2 if call.causal else n * n for n in sizes)
            work.append(total)
        assert max(work) - min(work) <= sum(2 * c for c in shards[0].chunks), work


def test_heads_not_divisible_name_the_numbers():
    with pytest.raises(ValueError, match=r"attention heads = 6 .*not divisible by .*sequence_parallel_size = 4"):
        check_heads(6, 2, 4)
    with pytest.raises(ValueError, match=r"kv heads = 2 not divisible by .* = 4.*ring"):
        check_heads(8, 2, 4)
    check_heads(8, 4, 4)


def test_split_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sequence_parallel_size must be an int >= 1"):
        split_packed([3], 0, 0)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\)"):
        split_packed([3], 2, 2)
    with pytest.raises(ValueError, match="at least one token"):
        split_packed([3, 0], 2, 0)
