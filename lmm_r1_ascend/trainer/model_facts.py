"""What the run knows about its actor checkpoint without loading it: where it lies and how
many parameters its safetensors headers declare. The run header (trainer/console.py) shows
them; the checkpointer (trainer/checkpointer.py) sizes its first save from them."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from lmm_r1_ascend.config import TrainConfig


def parameter_count(model_dir: str | os.PathLike) -> int | None:
    """Parameters in a checkpoint directory, read from its safetensors headers (no weights are
    loaded); None when it has no safetensors files."""
    total, found = 0, False
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with open(path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
        except (OSError, ValueError, struct.error):  # unreadable: the header says "size unknown", loading will say why
            return None
        found = True
        for name, spec in header.items():
            if name != "__metadata__":
                n = 1
                for dim in spec["shape"]:
                    n *= dim
                total += n
    return total if found else None


def model_dir(cfg: TrainConfig) -> Path:
    """The actor's local checkpoint directory, as the run resolves it (tiny models: their cache)."""
    from lmm_r1_ascend.models.loading import resolve_model_path
    from lmm_r1_ascend.workers.builders import resolve_actor_path

    return Path(resolve_model_path(resolve_actor_path(cfg)))
