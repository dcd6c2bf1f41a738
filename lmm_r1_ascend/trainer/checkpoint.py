"""Atomic, exactly-resumable checkpoints.

Layout: <output_dir>/checkpoints/step_<N>/ with one `<name>.pt` per trained model (full
weights, written by rank 0), `<name>_engine/` (optimizer and schedule state, written by
every rank: one file for the torch engine, DeepSpeed's per-rank shards for ZeRO) and
`state.pt` (controller: RNG states, data position, step, KL controller). With Ray on
several nodes, output_dir must be on a filesystem every node sees. A checkpoint is written into a hidden sibling directory and renamed into place,
so a crash mid-write never leaves a half checkpoint that resume would pick up.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state(device_type: str = "cpu") -> dict:
    """Every generator the run draws from: Python, NumPy, torch CPU and the accelerator's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device_type != "cpu":  # torch.get_device_module finds the accelerator module by its type name
        state["device"] = torch.get_device_module(device_type).get_rng_state_all()
    return state


def set_rng_state(state: dict, device_type: str = "cpu") -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device_type != "cpu" and "device" in state:
        torch.get_device_module(device_type).set_rng_state_all(state["device"])


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir: str | os.PathLike, step: int, state: dict[str, Any],
                    write_parts: Callable[[Path], None], keep: int = 2, device_type: str = "cpu") -> Path:
    """Write step `step` atomically; keep the newest `keep` checkpoints (0 = all).

    write_parts(directory) writes the models' weights and engine states into the
    not-yet-visible directory (the training ranks do it); `state` goes to state.pt."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f".step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_parts(tmp)
    torch.save({**state, "step": step, "rng": rng_state(device_type)}, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "state.pt").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The controller's saved state (RNG restored by the caller; weights and engine states
    are loaded by the training ranks from the same directory)."""
    path = Path(path)
    if not (path / "state.pt").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no state.pt)")
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
