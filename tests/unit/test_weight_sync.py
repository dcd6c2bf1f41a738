"""kernels/weight_sync.py: the side group and the streamed bucketed broadcast.

Members of a stateless group need no global state, so the tests run the sender and the
receivers as threads of this process, each with its own gloo group over one TCPStore.
"""

from __future__ import annotations

import threading

import pytest
import torch

from lmm_r1_ascend.distributed.net import free_port
from lmm_r1_ascend.kernels.weight_sync import ReadyFlags, receive_buckets, send_buckets, stateless_group


def _named(rng: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    return [
        ("embed.weight", torch.randn(37, 16, generator=rng)),
        ("norm.weight", torch.randn(16, generator=rng).to(torch.bfloat16)),
        ("layers.0.q.weight", torch.randn(16, 16, generator=rng)),
        ("empty", torch.zeros(0, 3)),
        ("scalar", torch.tensor(3.5)),
        ("mask", torch.rand(9, generator=rng) > 0.5),
        ("layers.0.k.weight", torch.randn(8, 16, generator=rng).to(torch.bfloat16)),
        ("head.weight", torch.randn(37, 16, generator=rng)[:, ::2]),  # non-contiguous
    ]


def _run(world: int, sender, receiver) -> dict:
    port, results, errors = free_port(), {}, []

    def member(rank: int) -> None:
        try:
            group = stateless_group("gloo", "127.0.0.1", port, rank, world, timeout_s=60)
            results[rank] = sender(group) if rank == 0 else receiver(group)
        except BaseException as err:  # surfaced below
            errors.append((rank, err))

    threads = [threading.Thread(target=member, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a member hung"
    if errors:
        raise errors[0][1]
    return results


@pytest.mark.parametrize("bucket_bytes", [1, 200, 1 << 20])
def test_streamed_buckets_arrive_bit_exact_at_every_receiver(rng_seed, bucket_bytes):
    named = _named(torch.Generator().manual_seed(rng_seed))
    meta = [(n, tuple(t.shape), t.dtype) for n, t in named]

    def receiver(group):
        return [(n, t.clone()) for n, t in receive_buckets(group, meta, bucket_bytes=bucket_bytes)]

    out = _run(3, lambda g: send_buckets(g, meta, iter(named), bucket_bytes=bucket_bytes), receiver)
    assert out[0] == len(named)
    want = dict(named)
    for rank in (1, 2):
        got = dict(out[rank])
        assert set(got) == set(want)
        for name, t in want.items():
            assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
            assert torch.equal(got[name], t), name  # bytes travel: exact equality for every dtype


class _RecordingGroup:
    """Stands in for a ProcessGroup on the sender side: records each broadcast."""

    def __init__(self, on_send=None):
        self.sent, self.on_send = [], on_send

    def broadcast(self, tensors, opts):
        self.sent.append(tensors[0].clone())
        if self.on_send:
            self.on_send()
        return self

    def wait(self):
        return True


def test_sender_holds_only_unfinished_buckets():
    """The sender consumes a lazy iterator: a bucket leaves as soon as its last tensor exists."""
    sizes = [(f"w{i}", torch.full((256,), float(i))) for i in range(6)]  # 1 KiB each
    meta = [(n, tuple(t.shape), t.dtype) for n, t in sizes]
    made, sent_when = [], []

    def lazy():
        for name, t in sizes:
            made.append(name)
            yield name, t

    group = _RecordingGroup(on_send=lambda: sent_when.append(len(made)))
    assert send_buckets(group, meta, lazy(), bucket_bytes=2048) == 6
    assert sent_when == [2, 4, 6]  # 2 KiB buckets
    assert torch.equal(torch.cat([t.view(torch.float32) for t in group.sent]), torch.cat([t for _, t in sizes]))


def test_a_tensor_bigger_than_the_bucket_travels_alone_and_intact(rng_seed):
    """ASCEND.md ("More facts"): a bucket must hold the largest tensor, e.g. a 151,936-token embedding at
    hidden 2048 is 622 MB in bf16, over the default 256 MB bucket. The plan sends such a tensor as a
    bucket of its own (the bucket before it is closed first, the next one starts empty), and the bytes
    arrive unchanged."""
    from lmm_r1_ascend.config.schema import DistributedConfig
    from lmm_r1_ascend.kernels.collectives import plan_buckets

    default_bytes = DistributedConfig().weight_sync_bucket_mb << 20
    qwen = [("norm.weight", (2048,), torch.bfloat16), ("embed_tokens.weight", (151936, 2048), torch.bfloat16),
            ("layers.0.q.weight", (2048, 2048), torch.bfloat16)]
    plan = plan_buckets(qwen, default_bytes)  # metadata only: nothing of this size is allocated
    assert [b.indices for b in plan] == [(0,), (1,), (2,)]
    assert plan[1].nbytes == 151936 * 2048 * 2 > default_bytes  # 622 MB in one broadcast

    rng = torch.Generator().manual_seed(rng_seed)
    named = [("a", torch.randn(4, generator=rng)), ("embed", torch.randn(151, 20, generator=rng)),
             ("b", torch.randn(4, generator=rng)), ("c", torch.randn(3, generator=rng))]
    meta = [(n, tuple(t.shape), t.dtype) for n, t in named]
    bucket_bytes = 256  # the embedding is 151 * 20 * 4 = 12,080 bytes
    assert [b.indices for b in plan_buckets(meta, bucket_bytes)] == [(0,), (1,), (2, 3)]
    group = _RecordingGroup()
    assert send_buckets(group, meta, iter(named), bucket_bytes=bucket_bytes) == 4
    assert [t.numel() for t in group.sent] == [16, 12080, 28]  # bytes per broadcast
    assert torch.equal(group.sent[1].view(torch.float32).view(151, 20), named[1][1])

    out = _run(2, lambda g: send_buckets(g, meta, iter(named), bucket_bytes=bucket_bytes),
               lambda g: [(n, t.clone()) for n, t in receive_buckets(g, meta, bucket_bytes=bucket_bytes)])
    assert [n for n, _ in out[1]] == [n for n, _ in named]
    assert all(torch.equal(got, want) for (_, got), (_, want) in zip(out[1], named))


def test_sender_rejects_tensors_that_differ_from_the_announcement():
    meta = [("a", (2,), torch.float32), ("b", (3,), torch.float32)]
    with pytest.raises(ValueError, match="tensor 1 is 'c'"):
        send_buckets(_RecordingGroup(), meta, [("a", torch.zeros(2)), ("c", torch.zeros(3))], bucket_bytes=1 << 20)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        send_buckets(_RecordingGroup(), meta, [("a", torch.zeros(4))], bucket_bytes=1 << 20)
    with pytest.raises(ValueError, match="got 1 tensors, announced 2"):
        send_buckets(_RecordingGroup(), meta, [("a", torch.zeros(2))], bucket_bytes=1)
    with pytest.raises(ValueError, match="more tensors than the 2 announced"):
        send_buckets(_RecordingGroup(), meta, [("a", torch.zeros(2)), ("b", torch.zeros(3)), ("x", torch.zeros(1))],
                     bucket_bytes=1)


def test_stateless_group_rejects_bad_arguments():
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        stateless_group("gloo", "127.0.0.1", 1, 2, 2)
    with pytest.raises(ValueError, match="unknown weight-sync backend"):
        stateless_group("mpi", "127.0.0.1", free_port(), 0, 1, timeout_s=5)


def test_ready_flags_hold_the_sender_until_every_receiver_announced():
    """The sender of an asynchronous push waits for each receiver's flag of that version (and
    gives up when told to stop), so its broadcast never starts while an engine is generating."""
    port = free_port()
    sender = ReadyFlags("127.0.0.1", port, is_master=True, timeout_s=30)
    receivers = [ReadyFlags("127.0.0.1", port, is_master=False, timeout_s=30) for _ in range(2)]
    released = threading.Event()
    waiter = threading.Thread(target=lambda: (sender.wait(1, 2), released.set()))
    waiter.start()
    receivers[0].announce(1)
    receivers[1].announce(2)  # another version's flag does not count
    assert not released.wait(0.3)
    receivers[1].announce(1)
    assert released.wait(10)
    waiter.join()
    stop = threading.Event()
    stop.set()
    with pytest.raises(RuntimeError, match="stopped while waiting"):
        sender.wait(3, 1, stop=stop)
