"""Kernel candidates shared by several backends (pure-torch ops that run everywhere)."""

from __future__ import annotations

from typing import Callable

from lmm_r1_ascend.backends.base import KernelChoice, choose


def always(reason: str) -> Callable[[], tuple[bool, str]]:
    """A probe that always succeeds with `reason`."""
    return lambda: (True, reason)


def reference_attention_candidate():
    """Per-sequence SDPA: correct and differentiable on any device, but not fused."""
    from lmm_r1_ascend.kernels.attention import varlen_attention_reference

    return ("reference", always("per-sequence SDPA; works on every device, not fused"), varlen_attention_reference)


def batched_attention_candidate():
    """Length-bucketed batched SDPA: a few masked SDPA calls per layer instead of one per sequence."""
    from lmm_r1_ascend.kernels.attention import varlen_attention_batched

    return ("batched", always("sequences bucketed by length, one masked SDPA per bucket; "
                              "no per-sequence calls or slices in the autograd graph"), varlen_attention_batched)


def decode_attention_choice(preferred: str, override: str | None = None) -> KernelChoice:
    """Decode-step attention: `matmul` (kernels/decode_attention.py) or `sdpa` (fn None:
    transformers' own SDPA path); `preferred` is tried first, the other stays selectable."""
    from lmm_r1_ascend.kernels.decode_attention import decode_attention_matmul

    candidates = {
        "matmul": ("matmul", always("scores-softmax-matmul on the GQA-grouped query; on CPU 2-4x faster per call than "
                                    "SDPA's flash kernel at the demo's widths, 0.9-1.0x at 3B's "
                                    "(2026-12-07, a 2-core VM; benchmarks/bench_decode_attention_cpu.py)"),
                   decode_attention_matmul),
        "sdpa": ("sdpa", always("transformers' SDPA path (the device's fused kernel)"), None),
    }
    order = [candidates[preferred]] + [c for name, c in candidates.items() if name != preferred]
    return choose("decode_attention", order, override)


def logprobs_choice(override: str | None = None) -> KernelChoice:
    """The chunked log-prob kernel (kernels/logprobs.py), the only implementation today."""
    from lmm_r1_ascend.kernels.logprobs import token_logprobs

    return choose("logprobs", [(
        "chunked",
        always("pure torch; fp32 logits computed a chunk of tokens at a time, recomputed in backward"),
        token_logprobs,
    )], override)


def no_fused_ops_choice(reason: str, override: str | None = None) -> KernelChoice:
    return choose("fused_ops", [("none", always(reason), None)], override)
