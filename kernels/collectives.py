"""Collectives: process-group set-up from a backend string, bucketed broadcast of named
tensors (the weight-sync primitive) and a ring exchange for sequence parallelism.

Pure functions over torch.distributed; nothing happens at import. Tensors travel as raw
bytes (a uint8 view of each bucket), so every dtype arrives bit-exact, whatever the
communication backend supports arithmetically (bf16, bool, complex, NaN payloads).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


def parse_backend(backend: str) -> str | dict[str, str]:
    """Validate a backend string; returns the name, or {device_type: backend} for a mixed one.

    Accepted: one registered backend name ("gloo", "nccl", "hccl", ...) or a mixed
    "device:backend,device:backend" string such as "cpu:gloo,cuda:nccl".
    """
    if not isinstance(backend, str) or not backend.strip():
        raise ValueError(f"backend must be a non-empty string such as 'gloo' or 'cpu:gloo,cuda:nccl', got {backend!r}")
    known = [b for b in dist.Backend.backend_list if b != "undefined"]

    def check_name(name: str) -> str:
        name = name.strip().lower()
        if name not in known:
            raise ValueError(
                f"unknown distributed backend {name!r} in {backend!r}; registered: {', '.join(known)} "
                "(a device plugin registers its backend when imported: import it first)"
            )
        if not dist.is_backend_available(name):
            raise ValueError(
                f"distributed backend {name!r} is registered but not available in this torch build "
                f"({torch.__version__}); install the torch build (or plugin) for that device, or use 'gloo'"
            )
        return name

    if ":" not in backend:
        if "," in backend:
            raise ValueError(f"backend {backend!r}: a list of backends must be written 'device:backend,device:backend'")
        return check_name(backend)
    pairs: dict[str, str] = {}
    for part in backend.split(","):
        device, sep, name = part.partition(":")
        device = device.strip().lower()
        if not sep or not device or not name.strip():
            raise ValueError(f"backend {backend!r}: each entry must be 'device:backend' (e.g. 'cpu:gloo'), got {part!r}")
        if device in pairs:
            raise ValueError(f"backend {backend!r}: device {device!r} is given twice")
        pairs[device] = check_name(name)
    return pairs


def init_process_group(
    backend: str,
    *,
    rank: int,
    world_size: int,
    init_method: str | None = None,
    timeout_s: float = 1800,
) -> None:
    """Create the default process group.

    Args:
        backend: see `parse_backend`.
        rank, world_size: this process's rank in [0, world_size).
        init_method: "tcp://host:port", "file:///path", or None for "env://" (then
            MASTER_ADDR and MASTER_PORT must be set).
        timeout_s: collective timeout in seconds, passed as a timedelta.
    """
    parsed = parse_backend(backend)
    canonical = parsed if isinstance(parsed, str) else ",".join(f"{d}:{b}" for d, b in parsed.items())
    for name, v in (("rank", rank), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
    if init_method is None:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise ValueError(
                f"init_method is None (env://) but {' and '.join(missing)} not set; set them "
                "or pass init_method='tcp://HOST:PORT' or 'file:///shared/path'"
            )
        init_method = "env://"
    if dist.is_initialized():
        raise RuntimeError("the default process group already exists; call destroy_process_group() first")
    dist.init_process_group(
        backend=canonical, init_method=init_method, rank=rank, world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


Meta = list[tuple[str, tuple[int, ...], torch.dtype]]  # (name, shape, dtype) per tensor, in order


@dataclass(frozen=True)
class Bucket:
    """One broadcast: tensors `indices` (positions in the metadata) of one dtype, flattened."""

    dtype: torch.dtype
    indices: tuple[int, ...]
    numels: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return sum(self.numels) * self.dtype.itemsize


def plan_buckets(meta: Meta, bucket_bytes: int) -> list[Bucket]:
    """Group tensors into per-dtype buckets of at most `bucket_bytes` (an oversize tensor goes alone).

    Deterministic in `meta` (name, shape, dtype per tensor, in order), so every rank
    derives the same plan from the broadcast metadata. Buckets are listed in the order
    they close; each dtype keeps one open bucket at a time.
    """
    plan: list[Bucket] = []
    open_: dict[torch.dtype, tuple[list[int], list[int], int]] = {}
    for i, (_, shape, dtype) in enumerate(meta):
        numel = math.prod(shape)
        size = numel * dtype.itemsize
        idx, numels, used = open_.get(dtype, ([], [], 0))
        if idx and used + size > bucket_bytes:
            plan.append(Bucket(dtype, tuple(idx), tuple(numels)))
            idx, numels, used = [], [], 0
        idx.append(i)
        numels.append(numel)
        used += size
        if used >= bucket_bytes:  # full (or one oversize tensor alone): send now
            plan.append(Bucket(dtype, tuple(idx), tuple(numels)))
            open_.pop(dtype, None)
        else:
            open_[dtype] = (idx, numels, used)
    plan.extend(Bucket(dtype, tuple(idx), tuple(numels)) for dtype, (idx, numels, _) in open_.items())
    return plan


def _broadcast_meta(tensors, src: int, group, device) -> tuple[Meta, str]:
    """Rank src sends (name, shape, dtype) per tensor and its device type; a bad src input
    fails on every rank instead of leaving the others waiting."""
    rank = dist.get_rank()
    if rank != src and tensors is not None:
        raise ValueError(f"only rank src={src} passes tensors; rank {rank} must pass None and receives them")
    payload: list = [None, "cpu", None]  # [meta, source device type, (error type, message)]
    if rank == src:
        if not isinstance(tensors, dict):
            payload[2] = ("TypeError", f"rank {src} (src) must pass a dict[str, Tensor], got {type(tensors).__name__}")
        elif bad := [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]:
            payload[2] = ("TypeError", f"tensors must map str to Tensor; bad entry {bad[0]!r}")
        else:
            payload[0] = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
            devices = {v.device for v in tensors.values()}
            if device is None and len(devices) > 1:
                payload[2] = ("ValueError", f"source tensors are on several devices {sorted(map(str, devices))}; pass device=")
            elif device is not None or devices:
                payload[1] = torch.device(device).type if device is not None else devices.pop().type
    # device=None lets torch pick the device this group's backend needs for objects.
    dist.broadcast_object_list(payload, src=src, group=group)
    if payload[2] is not None:
        kind, msg = payload[2]
        raise {"TypeError": TypeError, "ValueError": ValueError}[kind](
            msg if rank == src else f"broadcast aborted by src rank {src}: {msg}"
        )
    return payload[0], payload[1]


def _local_device(device_type: str) -> torch.device:
    acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if acc is not None and acc.type == device_type:
        return torch.device(device_type, torch.accelerator.current_device_index())
    return torch.device(device_type)


def _iter_indexed(tensors, src: int, group, device, bucket_bytes: int) -> Iterator[tuple[int, str, torch.Tensor]]:
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be an int >= 1, got {bucket_bytes!r}")
    if not dist.is_initialized():
        raise RuntimeError("no process group: call init_process_group(...) before broadcasting")
    is_src = dist.get_rank() == src
    meta, src_device_type = _broadcast_meta(tensors, src, group, device)
    values = list(tensors.values()) if is_src else None
    if device is not None:
        dev = torch.device(device)
    elif is_src:
        dev = values[0].device if values else torch.device("cpu")  # one device: checked above
    else:
        dev = _local_device(src_device_type)
    for bucket in plan_buckets(meta, bucket_bytes):
        if is_src:
            parts = [values[i].detach().reshape(-1).to(dev) for i in bucket.indices]
            flat = (parts[0] if len(parts) == 1 else torch.cat(parts)).contiguous()
        else:
            flat = torch.empty(sum(bucket.numels), dtype=bucket.dtype, device=dev)
        if bucket.nbytes:
            dist.broadcast(flat.view(torch.uint8), src=src, group=group)
        for i, piece in zip(bucket.indices, flat.split(bucket.numels)):
            name, shape, _ = meta[i]
            yield i, name, (values[i] if is_src else piece.view(shape))


def iter_broadcast_buckets(
    tensors: dict[str, torch.Tensor] | None,
    *,
    src: int = 0,
    group=None,
    device: torch.device | str | None = None,
    bucket_bytes: int = 256 << 20,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Broadcast named tensors bucket by bucket, yielding (name, tensor) as each bucket arrives.

    Every rank of `group` must run the generator to the end, in step (each bucket is a
    collective). Yield order is bucket order, not the source dict's order. Arguments and
    results as in `broadcast_named_tensors`.
    """
    for _, name, t in _iter_indexed(tensors, src, group, device, bucket_bytes):
        yield name, t


def broadcast_named_tensors(
    tensors: dict[str, torch.Tensor] | None,
    *,
    src: int = 0,
    group=None,
    device: torch.device | str | None = None,
    bucket_bytes: int = 256 << 20,
) -> dict[str, torch.Tensor]:
    """Send a dict of named tensors from rank `src` to every rank of `group`, bit-exact.

    Metadata (names, shapes, dtypes, order) goes first as one pickled object; then the
    tensors go in per-dtype flat buckets of at most `bucket_bytes` (a tensor larger than
    that goes alone), one broadcast per bucket. Per-dtype buckets let receivers hand out
    aligned views without copies.

    Args:
        tensors: on src, {name: tensor} of any dtypes and shapes (0-dim, empty,
            non-contiguous allowed) on one device; on every other rank None.
        src: global rank of the sender.
        group: process group (None: the default group).
        device: where buckets are staged and received tensors live; it must be a device
            the group's backend communicates on. None: on src the tensors' device, on
            receivers the same device type (an accelerator at this process's current
            index).
        bucket_bytes: bucket size limit in bytes (>= 1).

    Returns:
        {name: tensor} in the source's order. On src these are the given tensors; elsewhere
        views into the received buckets (a kept tensor keeps its bucket alive).
    """
    got = sorted(_iter_indexed(tensors, src, group, device, bucket_bytes), key=lambda x: x[0])
    return {name: t for _, name, t in got}


def ring_exchange(send: torch.Tensor, *, group=None) -> torch.Tensor:
    """Send `send` to rank (r + 1) % W of `group` and return what rank (r - 1) % W sent.

    Every rank passes a tensor of the same shape and dtype. Uses one batch_isend_irecv,
    so no ordering of sends and receives can deadlock. With W = 1, returns a copy.
    """
    if not isinstance(send, torch.Tensor):
        raise TypeError(f"send must be a torch.Tensor, got {type(send).__name__}")
    if not dist.is_initialized():
        raise RuntimeError("no process group: call init_process_group(...) before ring_exchange")
    world = dist.get_world_size(group)
    out = torch.empty(send.shape, dtype=send.dtype, device=send.device)
    if world == 1:
        return out.copy_(send)
    rank = dist.get_rank(group)
    src_buf = send.detach().contiguous().reshape(-1).view(torch.uint8)
    dst_buf = out.reshape(-1).view(torch.uint8)
    if src_buf.numel() == 0:
        return out
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    if group is not None:
        nxt, prv = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prv)
    ops = [dist.P2POp(dist.isend, src_buf, nxt, group), dist.P2POp(dist.irecv, dst_buf, prv, group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out
