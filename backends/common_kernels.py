"""Kernel candidates shared by several backends (pure-torch ops that run everywhere)."""

from __future__ import annotations

from typing import Callable

import torch

from lmm_r1_ascend.backends.base import KernelChoice, choose


def _always(reason: str) -> Callable[[], tuple[bool, str]]:
    return lambda: (True, reason)


def reference_attention_candidate():
    """Per-sequence SDPA: correct and differentiable on any device, but not fused."""
    from lmm_r1_ascend.kernels.attention import varlen_attention_reference

    return ("reference", _always("per-sequence SDPA; works on every device, not fused"), varlen_attention_reference)


def logprobs_choice() -> KernelChoice:
    from lmm_r1_ascend.kernels.logprobs import token_logprobs

    return choose("logprobs", [(
        "chunked",
        _always("pure torch; fp32 logits computed a chunk of tokens at a time, recomputed in backward"),
        token_logprobs,
    )])


def packing_choice(host_lengths_required: bool) -> KernelChoice:
    from lmm_r1_ascend.kernels import packing

    why = ("pure torch; cumulative lengths kept on the host so the fused kernel needs no device sync"
           if host_lengths_required else "pure torch; one row, cu_seqlens, positions restarted per sequence")
    return choose("packing", [("packed", _always(why), packing)])


def collectives_choice(dist_backend: str) -> KernelChoice:
    """The collective backend (gloo / nccl / hccl) if torch.distributed knows it."""

    def probe() -> tuple[bool, str]:
        if not torch.distributed.is_available():
            return False, "torch.distributed is not built into this torch"
        for part in dist_backend.split(","):
            name = part.split(":")[-1]
            try:
                ok = torch.distributed.is_backend_available(name)
            except Exception:  # very old torch
                ok = name == "gloo" and torch.distributed.is_gloo_available()
            if not ok:
                return False, f"torch.distributed has no '{name}' backend here"
        return True, f"torch.distributed '{dist_backend}'"

    from lmm_r1_ascend.kernels import collectives

    return choose("collectives", [(dist_backend, probe, collectives)])


def no_fused_ops_choice(reason: str) -> KernelChoice:
    return choose("fused_ops", [("none", _always(reason), None)])
