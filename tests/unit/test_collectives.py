"""Collectives: backend-string validation, bucket planning, and real 2-process gloo runs.

The multi-process tests spawn two ranks with a file:// rendezvous in tmp_path (no ports
to race for) and a short collective timeout, so a hang fails within seconds.
"""

from __future__ import annotations

import datetime
import os
import random
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmm_r1_ascend.kernels import collectives as C

WORLD = 3  # 3, not 2: with two ranks 'next' and 'previous' coincide and a reversed ring would pass
TIMEOUT_S = 20.0


def _bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (torch.equal would call NaN != NaN and -0.0 == 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _spawn(fn, *args) -> None:
    """Run fn(rank, *args) on WORLD processes; fail (not hang) if they outlive a deadline."""
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 3 * TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{WORLD}-process run did not finish in time")


def _worker(rank: int, tmp: str, bucket_bytes: int) -> None:
    """Both 2-rank scenarios in one spawn (process start-up dominates the cost)."""
    torch.set_num_threads(1)
    C.init_process_group("gloo", rank=rank, world_size=WORLD, init_method=f"file://{tmp}/rdzv", timeout_s=TIMEOUT_S)
    try:
        sent = torch.load(f"{tmp}/sent.pt") if rank == 0 else None
        got = C.broadcast_named_tensors(sent, src=0, bucket_bytes=bucket_bytes)
        # The generator form, on the same data; and an empty dict.
        streamed = list(C.iter_broadcast_buckets(sent, src=0, bucket_bytes=bucket_bytes))
        empty = C.broadcast_named_tensors({} if rank == 0 else None, src=0)
        if rank == WORLD - 1:
            torch.save({"dict": got, "order": list(got), "streamed": streamed, "empty": empty}, f"{tmp}/got.pt")
        mine = torch.load(f"{tmp}/ring{rank}.pt")
        torch.save({k: C.ring_exchange(v) for k, v in mine.items()}, f"{tmp}/ringout{rank}.pt")
    finally:
        dist.destroy_process_group()


def _state_dict(bucket_bytes: int) -> dict[str, torch.Tensor]:
    """Mixed dtypes/shapes: bf16, fp16, fp32 with NaN/-0.0/inf, int64, bool, 0-dim,
    empty, non-contiguous (transposed, strided slice), one tensor bigger than a bucket."""
    big_numel = bucket_bytes // 4 * 3  # 3 buckets' worth of fp32
    f32 = torch.randn(5, 7)
    f32[0, 0], f32[0, 1], f32[0, 2] = float("nan"), -0.0, float("inf")
    return {
        "embed.weight": torch.randn(11, 6).to(torch.bfloat16),
        "layer.0.w": torch.randn(6, 9).t(),  # non-contiguous
        "layer.0.b": f32,
        "big": torch.randn(big_numel),
        "steps": torch.randint(-(2**62), 2**62, (4, 3), dtype=torch.int64),
        "scalar": torch.tensor(3.25, dtype=torch.float16),
        "mask": torch.rand(17) > 0.5,
        "empty": torch.empty(0, 3),
        "strided": torch.randn(40)[::3],
        "half.w": torch.randn(13).to(torch.float16),
        "last.bf16": torch.randn(3, 3).to(torch.bfloat16),
    }


BUCKET_BYTES = 64  # small: several buckets per dtype, and "big" exceeds one


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Fresh random data (seeded like the rng_seed fixture), one 2-rank gloo run."""
    seed = int(os.environ.get("LMM_R1_TEST_SEED", random.randrange(2**31)))
    print(f"[seed] test_collectives two_ranks: LMM_R1_TEST_SEED={seed}")
    torch.manual_seed(seed)
    tmp = tmp_path_factory.mktemp("two_ranks")
    sent = _state_dict(BUCKET_BYTES)
    ring_in = [
        {"kv": torch.randn(4, 2, 8).to(torch.bfloat16), "idx": torch.randint(0, 10**9, (5,)),
         "nc": torch.randn(6, 4).t(), "zero_dim": torch.tensor(float(r))}
        for r in range(WORLD)
    ]
    torch.save(sent, tmp / "sent.pt")
    for r in range(WORLD):
        torch.save(ring_in[r], tmp / f"ring{r}.pt")
    _spawn(_worker, str(tmp), BUCKET_BYTES)
    ring_out = [torch.load(tmp / f"ringout{r}.pt") for r in range(WORLD)]
    return sent, torch.load(tmp / "got.pt"), ring_in, ring_out


def test_broadcast_named_tensors_two_ranks_bit_exact(two_ranks):
    sent, got = two_ranks[:2]
    plan = C.plan_buckets([(k, tuple(v.shape), v.dtype) for k, v in sent.items()], BUCKET_BYTES)
    assert len(plan) >= 6 and any(b.nbytes > BUCKET_BYTES for b in plan)  # the case really is multi-bucket
    assert got["order"] == list(sent)  # the source's order, not bucket order
    for name, ref in sent.items():
        assert _bytes_equal(got["dict"][name], ref), name  # exact bits: a copy of bytes, no arithmetic
    streamed = dict(got["streamed"])
    assert len(got["streamed"]) == len(sent) and all(_bytes_equal(streamed[k], v) for k, v in sent.items())
    assert got["empty"] == {}


def test_ring_exchange_two_ranks(two_ranks):
    ring_in, ring_out = two_ranks[2:]
    for r in range(WORLD):
        expect = ring_in[(r - 1) % WORLD]  # received from the previous rank
        for k, v in expect.items():
            assert _bytes_equal(ring_out[r][k], v), (r, k)


def test_plan_buckets_contract(rng_seed):
    dtypes = [torch.float32, torch.bfloat16, torch.int64, torch.bool]
    meta = []
    for i in range(40):
        shape = tuple(torch.randint(0, 6, (int(torch.randint(0, 3, ())),)).tolist())
        meta.append((f"t{i}", shape, dtypes[int(torch.randint(0, 4, ()))]))
    bucket_bytes = int(torch.randint(8, 200, ()))
    plan = C.plan_buckets(meta, bucket_bytes)
    seen = sorted(i for b in plan for i in b.indices)
    assert seen == list(range(len(meta)))  # every tensor exactly once
    for b in plan:
        assert all(meta[i][2] == b.dtype for i in b.indices)  # one dtype per bucket
        assert list(b.indices) == sorted(b.indices)  # source order inside a bucket
        assert b.nbytes <= bucket_bytes or len(b.indices) == 1  # only a lone tensor may exceed
        for i, n in zip(b.indices, b.numels):
            assert n == torch.Size(meta[i][1]).numel()


@pytest.mark.parametrize(
    "backend, match",
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("glooo", "unknown distributed backend 'glooo'"),
        ("gloo,gloo", "device:backend"),
        ("cpu:gloo,cpu:gloo", "given twice"),
        ("cpu:", "each entry must be 'device:backend'"),
        (":gloo", "each entry must be 'device:backend'"),
        ("cpu:gloo,cuda", "each entry must be 'device:backend'"),
        ("cpu:gloo,cuda:foo", "unknown distributed backend 'foo'"),
    ],
)
def test_bad_backend_strings(backend, match):
    with pytest.raises(ValueError, match=match):
        C.init_process_group(backend, rank=0, world_size=1, init_method="file:///nonexistent")


def test_registered_but_unavailable_backend_is_named():
    missing = [b for b in ("mpi", "ucc", "nccl", "xccl") if b in dist.Backend.backend_list and not dist.is_backend_available(b)]
    if not missing:
        pytest.skip("every registered backend is available in this torch build")
    with pytest.raises(ValueError, match=f"'{missing[0]}' is registered but not available"):
        C.parse_backend(f"cpu:gloo,dev:{missing[0]}")


def test_parse_backend_accepts_good_strings():
    assert C.parse_backend("gloo") == "gloo"
    assert C.parse_backend(" GLOO ") == "gloo"
    assert C.parse_backend("cpu:gloo") == {"cpu": "gloo"}


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(rank=2, world_size=2), ValueError, "0 <= rank < world_size"),
        (dict(rank=0, world_size=0), ValueError, "world_size >= 1"),
        (dict(rank=0.0, world_size=1), TypeError, "rank must be an int"),
        (dict(rank=0, world_size=1, timeout_s=0), ValueError, "timeout_s"),
        (dict(rank=0, world_size=1, timeout_s=-5.0), ValueError, "timeout_s"),
    ],
)
def test_bad_init_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        C.init_process_group("gloo", init_method="file:///nonexistent", **kwargs)


def test_env_init_without_master_addr_is_explained(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(ValueError, match="MASTER_ADDR not set"):
        C.init_process_group("gloo", rank=0, world_size=1)


def test_init_passes_arguments_through(monkeypatch):
    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    C.init_process_group(" CPU:Gloo ", rank=1, world_size=3, init_method="tcp://127.0.0.1:1", timeout_s=7.5)
    assert seen == dict(backend="cpu:gloo", init_method="tcp://127.0.0.1:1", rank=1, world_size=3,
                        timeout=datetime.timedelta(seconds=7.5))


def test_calls_without_process_group_are_explained():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        C.broadcast_named_tensors({"a": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="init_process_group"):
        C.ring_exchange(torch.zeros(1))
    with pytest.raises(ValueError, match="bucket_bytes"):
        C.broadcast_named_tensors({"a": torch.zeros(1)}, bucket_bytes=0)


def test_single_rank_group(tmp_path, rng_seed):
    """World size 1 in this process: broadcast returns the source dict, ring returns a copy."""
    C.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path}/rdzv", timeout_s=10)
    try:
        sd = {"w": torch.randn(3, 2), "i": torch.arange(4)}
        out = C.broadcast_named_tensors(sd)
        assert list(out) == ["w", "i"] and all(out[k] is sd[k] for k in sd)
        with pytest.raises(TypeError, match="dict"):
            C.broadcast_named_tensors([torch.zeros(1)])
        with pytest.raises(ValueError, match="several devices"):
            C.broadcast_named_tensors({"a": torch.zeros(1), "b": torch.zeros(1, device="meta")})
        x = torch.randn(5)
        y = C.ring_exchange(x)
        assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
        with pytest.raises(RuntimeError, match="already exists"):
            C.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path}/rdzv2")
    finally:
        dist.destroy_process_group()
