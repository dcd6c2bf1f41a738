"""Collectives: process-group set-up from a backend string, the per-dtype bucket plan of the
weight-sync broadcast (its transport is kernels/weight_sync.py) and sequence-parallel groups.

Pure functions over torch.distributed; nothing happens at import. The ring and all-to-all
exchanges of sequence parallelism live with their kernels (kernels/ring_attention.py,
kernels/ulysses.py), built on batch_isend_irecv and all_to_all_single.
"""

from __future__ import annotations

import math
import os
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


def sequence_parallel_group(sp_size: int):
    """This rank's sequence-parallel group: consecutive blocks of sp_size ranks of the default group.

    Ranks [k * sp, (k + 1) * sp) form SP group k (the data-parallel replica k of the packed
    micro-batch). Every rank must call this (torch.distributed.new_group is collective over the
    default group, block by block in the same order). Returns (group, rank_in_group); with
    sp_size == 1 the group is None (no communication needed). sp_size must divide the world size.
    """
    if isinstance(sp_size, bool) or not isinstance(sp_size, int) or sp_size < 1:
        raise ValueError(f"sequence_parallel_size must be an int >= 1, got {sp_size!r}")
    if sp_size == 1:
        return None, 0
    if not dist.is_initialized():
        raise RuntimeError("no process group: call init_process_group(...) before sequence_parallel_group")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % sp_size:
        raise ValueError(f"distributed.sequence_parallel_size = {sp_size} must divide the world size {world} "
                         "(each data-parallel replica is split over sp_size ranks)")
    mine = None
    for first in range(0, world, sp_size):
        group = dist.new_group(list(range(first, first + sp_size)))
        if first <= rank < first + sp_size:
            mine = group
    return mine, rank % sp_size
