"""Spawned side of tests/unit/test_deepspeed_reshard.py: ZeRO checkpoints resumed on another world size.

Phase "save": procs 0, 1 form a gloo world of 2, proc 2 a world of 1. Each trains _ds_spawn's
TinyNet for SAVE_AFTER steps under ZeRO-2 and ZeRO-3, saves the engine state and the full weights
(as the trainer's <name>.pt), then trains the remaining steps: the uninterrupted reference.
Phase "load": the worlds swap checkpoints (2 -> 1, 1 -> 2); fresh engines (another init seed)
load them and train the remaining steps. Results go to out_dir/<phase>_proc<p>.pt.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import torch

import _ds_spawn as sp

STAGES = (2, 3)


def _phase_save(rank: int, world: int, seed: int, out: Path) -> dict:
    res = {}
    for stage in STAGES:
        eng = sp._engine(stage, seed)
        sp.train_steps(eng, seed, range(sp.SAVE_AFTER), rank, world)
        where = out / f"w{world}_z{stage}"
        eng.save(where / "engine")
        full = eng.full_state_dict()
        if rank == 0:
            torch.save(full, where / "weights.pt")
        torch.distributed.barrier()
        res[stage] = sp.train_steps(eng, seed, range(sp.SAVE_AFTER, sp.STEPS), rank, world)
    return res


def _phase_load(rank: int, world: int, seed: int, out: Path) -> dict:
    res = {}
    for stage in STAGES:
        where = out / f"w{3 - world}_z{stage}"  # the other world's checkpoint
        eng = sp._engine(stage, seed + 1)
        eng.load(where / "engine", full_weights=lambda: torch.load(where / "weights.pt", weights_only=True))
        res[stage] = {"steps": eng.steps, "lr": eng.lr,
                      "rows": sp.train_steps(eng, seed, range(sp.SAVE_AFTER, sp.STEPS), rank, world)}
    return res


def run(proc: int, phase: str, ports: tuple[int, int], seed: int, out_dir: str) -> None:
    rank, world, port = (proc, 2, ports[0]) if proc < 2 else (0, 1, ports[1])
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        from deepspeed.utils import logger

        logger.setLevel(logging.WARNING)
        out = Path(out_dir)
        res = (_phase_save if phase == "save" else _phase_load)(rank, world, seed, out)
        torch.save(res, out / f"{phase}_proc{proc}.pt")
    finally:
        torch.distributed.destroy_process_group()
