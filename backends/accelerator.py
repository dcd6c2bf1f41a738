"""Device queries every torch accelerator answers the same way, through torch.accelerator."""

from __future__ import annotations

import torch

from lmm_r1_ascend.backends.base import Backend


class AcceleratorBackend(Backend):
    """Shared by CUDA and NPU: torch.accelerator covers counting, memory (and its peak), caches and sync.

    Seeding needs nothing extra: torch.manual_seed already seeds CUDA and PrivateUse1 ("npu").
    """

    def device_count(self) -> int:
        return torch.accelerator.device_count()

    def memory_stats(self, device: torch.device | None = None) -> dict[str, int]:
        acc = torch.accelerator
        return {
            "allocated": int(acc.memory_allocated(device)),
            "peak_allocated": int(acc.max_memory_allocated(device)),
            "reserved": int(acc.memory_reserved(device)),
        }

    def reset_peak_memory_stats(self, device: torch.device | None = None) -> None:
        torch.accelerator.reset_peak_memory_stats(device)

    def empty_cache(self) -> None:
        torch.accelerator.empty_cache()

    def synchronize(self, device: torch.device | None = None) -> None:
        torch.accelerator.synchronize(device)
