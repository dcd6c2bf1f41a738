"""Spawn a gloo test world that fails instead of hanging: shared by the multi-process tests."""

from __future__ import annotations

import time

import pytest
import torch.multiprocessing as mp


def spawn_until(fn, args: tuple, nprocs: int, deadline_s: float, what: str) -> None:
    """Run fn(rank, *args) on nprocs spawned processes; kill them and fail the test naming
    `what` if they outlive deadline_s; a rank's exception propagates (ProcessRaisedException)."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + deadline_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{what} did not finish in time")
