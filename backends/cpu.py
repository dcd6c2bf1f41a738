"""CPU backend: the reference implementation every other backend is compared with."""

from __future__ import annotations

import resource
import sys
from typing import ClassVar

import torch

from lmm_r1_ascend.backends import common_kernels as ck
from lmm_r1_ascend.backends.base import Backend, KernelSet, check_overrides, choose


def _rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB
    current = peak
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux
        pass
    return current, max(peak, current)  # ru_maxrss is sampled; never report peak < current


class CpuBackend(Backend):
    name: ClassVar[str] = "cpu"
    device_type: ClassVar[str] = "cpu"
    dist_backend: ClassVar[str] = "gloo"
    ray_resource: ClassVar[str | None] = None
    visible_devices_env: ClassVar[str | None] = None
    ds_accelerator: ClassVar[str] = "cpu"
    weight_sync_transports: ClassVar[tuple[str, ...]] = ("in_process", "gloo_broadcast")
    env_vars: ClassVar[tuple[str, ...]] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    default_dtype: ClassVar[torch.dtype] = torch.float32
    runtime_overhead_gb: ClassVar[float] = 0.75  # measured
    offload_is_device_memory: ClassVar[bool] = True  # the "host" is the same RAM
    collectives_from_host: ClassVar[bool] = True  # gloo

    def rng_device_type(self) -> str | None:
        return None  # torch's host generator is the device's

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        return True, "the CPU is always there"

    def device(self, local_rank: int = 0) -> torch.device:
        if local_rank < 0:
            raise ValueError(f"local rank {local_rank} must be >= 0")
        return torch.device("cpu")  # every rank shares the one CPU device

    def device_count(self) -> int:
        return 1

    def memory_stats(self, device: torch.device | None = None) -> dict[str, int]:
        """Process RSS: `peak_allocated` is the lifetime maximum (reset_peak_memory_stats cannot reset it)."""
        current, peak = _rss_bytes()
        return {"allocated": current, "peak_allocated": peak, "reserved": current}

    def select_kernels(self, overrides: dict[str, str] | None = None,
                       dtype: torch.dtype | None = None) -> KernelSet:
        overrides = check_overrides(overrides)
        return KernelSet(
            # batched first: on a packed micro-batch (dozens of short sequences) one SDPA call per
            # sequence is mostly fixed per-call cost plus a zero-filled slice gradient per q/k/v;
            # bucketing measured faster fwd+bwd at every length mix tried (benchmarks/bench_attention_cpu.py).
            # reference stays selectable (attention=reference) as the plain per-sequence definition.
            attention=choose("attention", [ck.batched_attention_candidate(), ck.reference_attention_candidate()],
                             overrides.get("attention")),
            decode_attention=ck.decode_attention_choice("matmul", overrides.get("decode_attention")),
            logprobs=ck.logprobs_choice(overrides.get("logprobs")),
            fused_ops=ck.no_fused_ops_choice("no fused ops on CPU; transformers' own modules",
                                             overrides.get("fused_ops")),
        )
