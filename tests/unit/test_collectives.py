"""Collectives: backend-string validation, bucket planning, and sequence-parallel groups on real gloo ranks.

The multi-process test spawns three ranks with a file:// rendezvous in tmp_path (no ports
to race for) and a short collective timeout, so a hang fails within seconds.
"""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from _mp_deadline import spawn_until

from lmm_r1_ascend.kernels import collectives as C

WORLD = 3  # odd: sp=2 cannot divide it (the error path), sp=3 is the whole world
TIMEOUT_S = 20.0


def _spawn(fn, *args) -> None:
    """Run fn(rank, *args) on WORLD processes; fail (not hang) if they outlive a deadline."""
    spawn_until(fn, args, WORLD, 3 * TIMEOUT_S, f"{WORLD}-process run")


def _worker(rank: int, tmp: str) -> None:
    """Sequence-parallel groups on 3 ranks: sp=3 is everyone, sp=1 no group, sp=2 does not divide 3."""
    torch.set_num_threads(1)
    C.init_process_group("gloo", rank=rank, world_size=WORLD, init_method=f"file://{tmp}/rdzv", timeout_s=TIMEOUT_S)
    try:
        group, sp_rank = C.sequence_parallel_group(WORLD)
        x = torch.tensor([float(rank + 1)])
        dist.all_reduce(x, group=group)
        single = C.sequence_parallel_group(1)
        try:
            C.sequence_parallel_group(2)
            err = None
        except ValueError as exc:
            err = str(exc)
        torch.save({"sum": x.item(), "sp_rank": sp_rank, "single": single, "err": err}, f"{tmp}/sp{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sequence_parallel_groups_three_ranks(tmp_path):
    _spawn(_worker, str(tmp_path))
    for r in range(WORLD):
        got = torch.load(tmp_path / f"sp{r}.pt")
        assert got["sum"] == 6.0 and got["sp_rank"] == r and got["single"] == (None, 0)
        assert "sequence_parallel_size = 2 must divide the world size 3" in got["err"]


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
        C.sequence_parallel_group(2)
    with pytest.raises(ValueError, match="sequence_parallel_size must be an int >= 1"):
        C.sequence_parallel_group(0)


def test_single_rank_group(tmp_path):
    C.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path}/rdzv", timeout_s=10)
    try:
        assert C.sequence_parallel_group(1) == (None, 0)
        with pytest.raises(RuntimeError, match="already exists"):
            C.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path}/rdzv2")
    finally:
        dist.destroy_process_group()
