"""Atomic, exactly-resumable checkpoints.

Layout: <output_dir>/checkpoints/step_<N>/ with one `<name>.pt` per trained model (full
weights, written by rank 0), `<name>_engine/` (optimizer and schedule state, written by
every rank: one file for the torch engine, DeepSpeed's per-rank shards for ZeRO) and
`state.pt` (controller: RNG states, data position, step, KL controller). With Ray on
several nodes, output_dir must be on a filesystem every node sees.

Atomicity: a checkpoint is written into a hidden sibling (`.step_<N>.tmp`), state.pt last and
fsynced, then renamed into place; a step that already exists is first renamed aside
(`.step_<N>.old`, renamed back should the crash come between the two renames), and pruned checkpoints are renamed to `.step_<N>.del` before they are
deleted. Only `step_<N>` directories holding state.pt count, so a crash (kill -9, preemption)
at any point leaves either the old or the new checkpoint visible, never a partial one. Hidden
leftovers of a crashed write are removed by the next save; a write that fails with an error
(full disk, I/O error, interrupt) removes its own at once. Pruning follows a successful save only.

Fault tests kill a run inside a save by wrapping save_checkpoint from outside (tests/fault_hooks.py).
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


def rng_state(device_type: str | None = None) -> dict:
    """Every generator the run draws from: Python, NumPy, torch CPU and the accelerator's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device_type is not None:  # Backend.rng_device_type(); torch.get_device_module finds its module by name
        state["device"] = torch.get_device_module(device_type).get_rng_state_all()
    return state


def set_rng_state(state: dict, device_type: str | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device_type is not None and "device" in state:
        torch.get_device_module(device_type).set_rng_state_all(state["device"])


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (best effort: some network filesystems refuse it for directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _recover(root: Path) -> None:
    """Roll back a re-save that crashed between its two renames: `.step_N.old` becomes step_N again."""
    for old in root.glob(".step_*.old"):
        final = root / old.name[1:-len(".old")]
        if not final.exists() and (old / "state.pt").exists():
            os.replace(old, final)


def _remove(path: Path) -> None:
    """Delete a checkpoint directory: renamed out of sight first, so a crash mid-delete hides it."""
    aside = path.with_name(f".{path.name}.del")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


class CheckpointSpaceError(OSError):
    """Too little free space for the next checkpoint (checked before anything is written)."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written and trainer.on_save_error=stop: the message is one line."""


def first_line(err: BaseException) -> str:
    """An error's first meaningful line (torch's writer and Ray's wrappers add tracebacks and C++ frames)."""
    for line in str(err).strip().splitlines():
        line = line.strip()
        if line and "Traceback" not in line and not line.startswith(("File ", "frame #", "Exception raised from")):
            return f"{type(err).__name__}: {line[:300]}" if type(err).__name__ not in line else line[:300]
    return type(err).__name__


def estimate_bytes(params: int, per_param: int, *, models: int = 1) -> int:
    """A checkpoint's expected size before the first one is written: per trained model its weights
    and engine state, per_param bytes a parameter (the engine class's checkpoint_bytes_per_param).
    The first save measures the real size, which the later checks use."""
    return models * params * per_param


def directory_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files below `path` (a written checkpoint's size: the next one's expected size)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def free_bytes(path: str | os.PathLike) -> int:
    return shutil.disk_usage(path).free


def space_line(root: str | os.PathLike, need_bytes: int | None) -> str:
    """'<dir>: needs ~N bytes, M bytes free': the figures every save-failure line carries."""
    try:
        free = f"{free_bytes(root):,} bytes free"
    except OSError:
        free = "free space unknown"
    need = f"needs ~{need_bytes:,} bytes" if need_bytes else "size unknown"
    return f"{root}: {need}, {free}"


def save_checkpoint(output_dir: str | os.PathLike, step: int, state: dict[str, Any],
                    write_parts: Callable[[Path], None], keep: int = 2, device_type: str | None = None,
                    need_bytes: int | None = None) -> Path:
    """Write step `step` atomically; keep the newest `keep` checkpoints (0 = all).

    write_parts(directory) writes the models' weights and engine states into the
    not-yet-visible directory (the training ranks do it); `state` goes to state.pt.
    need_bytes: the checkpoint's expected size; CheckpointSpaceError before anything is written
    when the filesystem has less free. Whatever fails (a full disk, an I/O error, an interrupt),
    the temporary directory is removed, the previous checkpoints stay, and nothing is pruned."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    _recover(root)
    for stale in root.glob(".step_*"):  # leftovers of a crashed save or delete: never complete
        shutil.rmtree(stale, ignore_errors=True)
    if need_bytes and free_bytes(root) < need_bytes:
        raise CheckpointSpaceError(f"not enough free space for checkpoint step_{step} in "
                                   f"{space_line(root, need_bytes)}")
    final = root / f"step_{step}"
    tmp = root / f".step_{step}.tmp"
    tmp.mkdir()
    try:
        write_parts(tmp)
        torch.save({**state, "step": step, "rng": rng_state(device_type)}, tmp / "state.pt")
        _fsync(tmp / "state.pt")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write must not hold the space it took
        raise
    if final.exists():  # re-saving a step: move the old one aside, so one of them is always visible
        old = root / f".step_{step}.old"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(root)
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            _remove(old)
    return final


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    _recover(root)
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
