"""Ring attention and Ulysses on the NPU kernel set, the fused attention bound to the wheel's schema.

Two gloo ranks (spawned), each binding the pinned wheel's npu_fusion_attention schema over the
emulation and running EmulatedNpuBackend's sequence-parallel kernels (backends/base.py:
ring[npu_fusion], ulysses[npu_fusion]) forward and backward; this process reassembles the
row from the zigzag shards and compares it with the per-sequence SDPA reference on the whole
row. Ring attention merges blocks with the log-sum-exp read from softmax_max / softmax_sum, so
a misread softmax layout fails here too.
"""

from __future__ import annotations

import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmm_r1_ascend.kernels.attention import varlen_attention_reference
from lmm_r1_ascend.kernels.sequence_split import owner_of_positions, split_packed

pytestmark = pytest.mark.vendor

SP, TIMEOUT_S = 2, 60.0
CASES = [([5, 12, 3], 4, 2, 8), ([9, 1], 2, 2, 16)]  # (lengths, Hq, Hkv, D); a 1-token sequence < one chunk


def _data(case: int, seed: int):
    lengths, hq, hkv, d = CASES[case]
    g = torch.Generator().manual_seed(seed + case)
    t = sum(lengths)
    return lengths, *(torch.randn(t, h, d, generator=g) for h in (hq, hkv, hkv, hq))


def _worker(rank: int, wheel: str, tmp: str, seed: int) -> None:
    from pathlib import Path

    import npu_contract
    from lmm_r1_ascend.backends.npu import EmulatedNpuBackend

    torch.set_num_threads(1)
    npu_contract.install(npu_contract.bind(Path(wheel)))
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=SP,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        kernels = EmulatedNpuBackend().sequence_parallel_kernels()
        results = []
        for mode in ("ring", "ulysses"):
            assert kernels[mode].name == f"{mode}[npu_fusion]", kernels[mode].name
            for case in range(len(CASES)):
                lengths, q, k, v, dout = _data(case, seed)
                shard = split_packed(lengths, SP, rank)
                leaves = [x.index_select(0, shard.index).requires_grad_(True) for x in (q, k, v)]
                out = kernels[mode].fn(*leaves, shard, group=None)
                out.backward(dout.index_select(0, shard.index) * shard.valid[:, None, None])
                results.append({"out": out.detach(), **{f"d{c}": x.grad for c, x in zip("qkv", leaves)}})
        torch.save({"results": results, "calls": npu_contract.CALLS["npu_fusion_attention"]}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(wheel, tmp, seed: int) -> list[dict]:
    ctx = mp.start_processes(_worker, args=(str(wheel), str(tmp), seed), nprocs=SP, join=False, start_method="spawn")
    deadline = time.monotonic() + 3 * TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail("the 2-rank sequence-parallel run did not finish in time")
    return [torch.load(f"{tmp}/rank{r}.pt") for r in range(SP)]


def test_ring_and_ulysses_on_npu_kernels_through_the_schema(torch_npu_wheel, tmp_path, rng_seed):
    per_rank = _spawn(torch_npu_wheel, tmp_path, rng_seed)
    assert all(r["calls"] > 0 for r in per_rank)
    for n, (mode, case) in enumerate((m, c) for m in ("ring", "ulysses") for c in range(len(CASES))):
        lengths, q, k, v, dout = _data(case, rng_seed)
        t = sum(lengths)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        ref = varlen_attention_reference(*leaves, cu, max(lengths))
        ref.backward(dout)
        rank, row = owner_of_positions(lengths, SP, torch.arange(t))
        for key, want in (("out", ref.detach()), *((f"d{c}", x.grad) for c, x in zip("qkv", leaves))):
            got = torch.stack([per_rank[r]["results"][n][key][i] for r, i in zip(rank.tolist(), row.tolist())])
            # fp32: the lse merge is exact math in fp32 on O(1) values; 2e-5 covers a few roundings
            torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5, msg=lambda m, k=key, w=mode: f"{w} {k}: {m}")
