"""Memory queries through torch.accelerator (torch >= 2.9), shared by the CUDA and NPU backends."""

from __future__ import annotations

import torch


def accelerator_memory_stats(device: torch.device | None) -> dict[str, int]:
    """Bytes allocated / peak allocated / reserved on one accelerator device."""
    acc = torch.accelerator
    return {
        "allocated": int(acc.memory_allocated(device)),
        "peak_allocated": int(acc.max_memory_allocated(device)),
        "reserved": int(acc.memory_reserved(device)),
    }
