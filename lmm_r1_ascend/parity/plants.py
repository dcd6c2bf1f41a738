"""Planted divergences: deliberate attention bugs that the parity comparison must catch.

They check the harness itself (a comparison that cannot fail proves nothing). Each wraps
the varlen attention function the backend selected (kernels/attention.py contract) and is
registered for the loaded models through the same path the loader uses
(``models.forward.enable_packed_forward``), so no project file changes:

    wrong-scale  softmax scale 1.0 instead of 1/sqrt(head_dim): what the NPU fused
                 attention op computes when ``scale`` is not passed (its default is 1.0).
    leaky-mask   one causal mask over the whole packed row instead of one per sequence:
                 packed samples see the samples before them (the bug of the public Ascend
                 port of LMM-R1 that packed with plain SDPA, ASCEND.md pain point 6).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    import torch

PLANTS = {
    "wrong-scale": "attention softmax scale 1.0 instead of 1/sqrt(head_dim) (the NPU fused attention's default)",
    "leaky-mask": "one causal mask over the whole packed row: packed samples attend to earlier samples",
}


def wrong_scale(attention_fn: Callable) -> Callable:
    """``attention_fn`` with its ``scale`` argument forced to 1.0."""

    @functools.wraps(attention_fn)
    def planted(q, k, v, cu_seqlens, max_seqlen, *, scale=None, **kwargs):
        return attention_fn(q, k, v, cu_seqlens, max_seqlen, scale=1.0, **kwargs)

    return planted


def leaky_mask(attention_fn: Callable) -> Callable:
    """``attention_fn`` called as if the packed row were one sequence (boundaries dropped)."""

    import torch

    @functools.wraps(attention_fn)
    def planted(q, k, v, cu_seqlens, max_seqlen, *, cu_seqlens_host=None, **kwargs):
        total = q.shape[0]
        whole = torch.tensor([0, total], dtype=torch.int32, device=cu_seqlens.device)
        return attention_fn(q, k, v, whole, total, cu_seqlens_host=[0, total], **kwargs)

    return planted


_WRAPPERS = {"wrong-scale": wrong_scale, "leaky-mask": leaky_mask}


def apply_plant(plant: str, attention_fn: Callable, modules: Iterable[torch.nn.Module], *, name: str) -> str:
    """Register the planted version of ``attention_fn`` under ``name`` and select it for ``modules``."""
    from lmm_r1_ascend.models.forward import enable_packed_forward

    if plant not in _WRAPPERS:
        raise ValueError(f"unknown plant {plant!r}; choose one of {list(PLANTS)}")
    planted = _WRAPPERS[plant](attention_fn)
    for module in modules:
        enable_packed_forward(module, planted, name=name)
    return name
