"""Sequence parallelism on the model side: which ranks split a packed row, and how per-rank
results come back together (docs/sequence_parallel.md).

    sp = SequenceParallel(size, rank, group, mode, attention=backend.sequence_parallel_kernels()[mode].fn)
    enable_sequence_parallel(model, sp)   # models.forward then splits every packed forward

The packed row is built whole (positions and Qwen2.5-VL mRoPE positions restart per sample;
the vision tower runs once on all images and its embeddings are scattered into the row),
then each rank keeps its zigzag share (kernels.sequence_split) and runs the decoder on it;
attention goes through the SP kernel. Log-probs, entropies and values are computed for the
scored positions each rank holds and all-gathered (``gather_scored``) so every rank returns
the full per-sample results.

Gradient contract: every rank of an SP group computes the same loss from the gathered
results; the gather's backward keeps the gradient of the rank's own entries only (no sum over
the group), so the SUM over the SP group of the ranks' parameter gradients is the gradient of
the unsplit forward. The engines' existing data-parallel rule (loss x world size, gradients
averaged over all ranks, experience/shard_plan.py) then gives the single-process gradient,
with the ranks of one SP group fed the same shard.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lmm_r1_ascend.kernels.sequence_split import owner_of_positions

_SP: weakref.WeakKeyDictionary[torch.nn.Module, "SequenceParallel"] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SequenceParallel:
    """size / rank: the SP group and this rank's place in it; group: its process group (None:
    the default group); mode: ring | ulysses; attention: fn(q, k, v, shard, *, attention_fn, group,
    scale) (Backend.sequence_parallel_kernels()[mode].fn; the packed-attention forward passes the
    model's own varlen kernel as attention_fn, so a forced implementation is kept)."""

    size: int
    rank: int
    group: Any
    mode: str
    attention: Callable


def check_heads_for_mode(config, sp: SequenceParallel) -> None:
    """Ulysses splits heads: fail at load time, naming the numbers, when they do not divide."""
    if sp.mode != "ulysses":
        return
    from lmm_r1_ascend.kernels.ulysses import check_heads

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    check_heads(heads, int(getattr(text, "num_key_value_heads", None) or heads), sp.size)


def enable_sequence_parallel(model: torch.nn.Module, sp: SequenceParallel | None) -> None:
    """Split every packed forward of ``model`` (actor / reference LM or critic) over ``sp``.

    None or size 1 turns it off. Records the context for the model and its decoder backbone.
    """
    targets = [model] + [m for m in (getattr(model, "base_model", None), getattr(model, "model", None))
                         if isinstance(m, torch.nn.Module)]
    for m in targets:
        if sp is None or sp.size == 1:
            _SP.pop(m, None)
        else:
            _SP[m] = sp
    if sp is not None and sp.size > 1:
        check_heads_for_mode(model.config, sp)


def sequence_parallel_of(model: torch.nn.Module) -> SequenceParallel | None:
    return _SP.get(model)


class _GatherScored(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local, owner, me: int, size: int, group):
        counts = torch.bincount(owner, minlength=size).tolist()
        rest = local.shape[1:]
        buf = torch.zeros((max(counts), *rest), dtype=local.dtype, device=local.device)
        buf[: local.shape[0]] = local
        parts = [torch.empty_like(buf) for _ in range(size)]
        dist.all_gather(parts, buf, group=group)
        full = torch.empty((owner.numel(), *rest), dtype=local.dtype, device=local.device)
        dev_owner = owner.to(local.device)
        for r in range(size):
            full[dev_owner == r] = parts[r][: counts[r]]
        ctx.mine = dev_owner == me
        return full

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.mine], None, None, None, None  # own entries only: see the module docstring


def scored_rows(lengths, score_index: torch.Tensor, sp: SequenceParallel) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner rank per scored position, this rank's local rows of the positions it owns, in order)."""
    owner, row = owner_of_positions(lengths, sp.size, score_index)
    return owner, row[owner == sp.rank]


def gather_scored(local: torch.Tensor, owner: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """Every rank's (n_r, ...) results at its scored positions -> the full (n, ...) in score order."""
    return _GatherScored.apply(local, owner, sp.rank, sp.size, sp.group)
