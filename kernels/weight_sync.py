"""Weight-sync transport: a side process group between a trainer and rollout engines, and
a streamed, bucketed broadcast of named tensors over it.

The group is "stateless": it never touches torch.distributed's default group, so the
trainer's own data-parallel group (DeepSpeed's) and the engines' groups (vLLM's) stay as
they are. Sender and receivers plan the same per-dtype buckets from the same metadata
(`collectives.plan_buckets`), so only (name, shape, dtype) travels out of band; the bytes
go bucket by bucket as uint8 views (bit-exact for every dtype).

The sender streams: it consumes (name, tensor) pairs in metadata order (e.g. from a
ZeRO-3 engine that gathers parameters a bucket at a time) and holds at most the buckets
still being filled, never the whole model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from lmm_r1_ascend.kernels.collectives import Meta, plan_buckets


def stateless_group(backend: str, host: str, port: int, rank: int, world_size: int, *, timeout_s: float = 1800):
    """A ProcessGroup over `world_size` processes rendezvousing at host:port (rank 0 hosts the store).

    backend: "gloo" (any device; tensors staged on CPU), "nccl" (CUDA tensors), or "hccl"
    (Ascend tensors; needs torch_npu). Every member calls this with the same host, port and
    world_size and its own rank; the call blocks until all have joined.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, int(port), world_size, is_master=rank == 0, timeout=timeout)
    store = dist.PrefixStore("lmm_r1_weight_sync", store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return _numbered(dist.ProcessGroupNCCL(store, rank, world_size, opts))
    if backend == "hccl":
        try:
            from torch_npu._C._distributed_c10d import ProcessGroupHCCL  # type: ignore[import-not-found]
        except ImportError as err:
            raise ValueError(f"backend 'hccl' needs torch_npu with CANN ({err}); use 'gloo' on other machines") from err
        # As torch_npu builds its own "hccl" groups (torch_npu/_init/registry/distributed.py in the
        # 2.10.0.post4 wheel) and vllm-ascend its netloader group: Options with _timeout. The wheel
        # also binds (store, rank, size, timeout), but Options is the form the vendor itself calls.
        opts = ProcessGroupHCCL.Options()
        opts._timeout = timeout
        return _numbered(ProcessGroupHCCL(store, rank, world_size, opts))
    raise ValueError(f"unknown weight-sync backend {backend!r}: use gloo, nccl or hccl")


def _numbered(group):
    """A device group built outside torch.distributed's helpers starts its collective sequence
    numbers, as those helpers (and vLLM's / vllm-ascend's own callers of the raw constructors) do."""
    group._set_sequence_number_for_group()
    return group


def group_broadcast(group, tensor: torch.Tensor, src: int) -> None:
    """Broadcast on a ProcessGroup object (stateless groups are unknown to dist.broadcast's rank tables)."""
    opts = dist.BroadcastOptions()
    opts.rootRank = src
    opts.rootTensor = 0
    group.broadcast([tensor], opts).wait()


def send_buckets(group, meta: Meta, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
                 bucket_bytes: int, src: int = 0, device: torch.device | str | None = None) -> int:
    """Sender side of `receive_buckets`: broadcast `named_tensors` (in `meta` order) bucket by bucket.

    meta: [(name, shape, dtype)] announced to the receivers beforehand. named_tensors must
    yield exactly those tensors in that order (checked: a mismatch raises before anything
    inconsistent is sent for that bucket). device: where buckets are staged (the group's
    communication device; None: each bucket's first tensor's device). Returns the count.
    """
    plan = plan_buckets(meta, bucket_bytes)
    owner = {i: b for b, bucket in enumerate(plan) for i in bucket.indices}
    pending: dict[int, dict[int, torch.Tensor]] = {}
    next_bucket, count = 0, 0
    for i, (name, tensor) in enumerate(named_tensors):
        if i >= len(meta):
            raise ValueError(f"send_buckets: more tensors than the {len(meta)} announced (extra {name!r})")
        want_name, want_shape, want_dtype = meta[i]
        if name != want_name or tuple(tensor.shape) != tuple(want_shape) or tensor.dtype != want_dtype:
            raise ValueError(f"send_buckets: tensor {i} is {name!r} {tuple(tensor.shape)} {tensor.dtype}, "
                             f"announced {want_name!r} {tuple(want_shape)} {want_dtype}")
        pending.setdefault(owner[i], {})[i] = tensor.detach()
        count += 1
        while next_bucket < len(plan) and len(pending.get(next_bucket, {})) == len(plan[next_bucket].indices):
            _send_one(group, plan[next_bucket], pending.pop(next_bucket), src, device)
            next_bucket += 1
    if count != len(meta):
        raise ValueError(f"send_buckets: got {count} tensors, announced {len(meta)}")
    return count


def _send_one(group, bucket, tensors: dict[int, torch.Tensor], src: int, device) -> None:
    if not bucket.nbytes:
        return
    parts = [tensors[i].reshape(-1) for i in bucket.indices]
    dev = torch.device(device) if device is not None else parts[0].device
    flat = torch.cat([p.to(dev) for p in parts]) if len(parts) > 1 else parts[0].to(dev).contiguous()
    group_broadcast(group, flat.view(torch.uint8), src)


def receive_buckets(group, meta: Meta, *, bucket_bytes: int, src: int = 0,
                    device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver side: yield (name, tensor) views into each received bucket, lazily, in bucket order.

    Every member must consume the iterator to the end (each bucket is a collective).
    """
    for bucket in plan_buckets(meta, bucket_bytes):
        flat = torch.empty(sum(bucket.numels), dtype=bucket.dtype, device=device)
        if bucket.nbytes:
            group_broadcast(group, flat.view(torch.uint8), src)
        for i, piece in zip(bucket.indices, flat.split(list(bucket.numels))):
            yield meta[i][0], piece.view(meta[i][1])


class ReadyFlags:
    """Receivers say, per weight version, that they are about to join its broadcast; the sender
    waits for all of them before starting it. An asynchronous push (trainer rank 0 sends from
    a thread while the engines finish the generations queued before the push) must not start
    the broadcast early: its timeout would run while the engines are still generating, and on
    nccl / hccl the pending collective would hold back the sender's device stream.

    A TCPStore of its own (rank 0 hosts it on `port`), independent of the group's store, so it
    works alongside any group helper (ours or vLLM's)."""

    def __init__(self, host: str, port: int, *, is_master: bool, timeout_s: float = 1800):
        self.store = dist.TCPStore(host, int(port), is_master=is_master, timeout=timedelta(seconds=timeout_s),
                                   wait_for_workers=False)

    def announce(self, version: int) -> None:
        self.store.add(f"ready/{version}", 1)

    def wait(self, version: int, count: int, *, stop: threading.Event | None = None, poll_s: float = 0.01) -> None:
        """Until `count` receivers announced `version` (no deadline: they may be generating for
        long; `stop` set raises RuntimeError, so a closing process does not wait forever)."""
        while self.store.add(f"ready/{version}", 0) < count:
            if stop is not None and stop.is_set():
                raise RuntimeError(f"weight version {version}: stopped while waiting for {count} receiver(s)")
            time.sleep(poll_s)
